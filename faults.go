package rafthttp

// Fault injection. These hooks let a test, or an operator drill, cut this
// member off from its peers without touching the network, as etcd's own
// failure tests do with its transport. What a paused peer drops is not
// reported to raft: the point is to look like a partition, and a
// partition reports nothing either.

// Pause makes every peer drop what it is given to send and what it
// receives, without reporting, as etcd's Pause does for its failure tests.
func (t *Transport) Pause() {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, p := range t.peers {
		p.pause()
	}
}

// Resume undoes Pause.
func (t *Transport) Resume() {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, p := range t.peers {
		p.resume()
	}
}

// CutPeer pauses one peer (and remote) as Pause does; MendPeer undoes it.
func (t *Transport) CutPeer(id uint64) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if p, ok := t.peers[id]; ok {
		p.pause()
	}
	if r, ok := t.remotes[id]; ok {
		r.pause()
	}
}

// MendPeer resumes a peer cut with CutPeer.
func (t *Transport) MendPeer(id uint64) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if p, ok := t.peers[id]; ok {
		p.resume()
	}
	if r, ok := t.remotes[id]; ok {
		r.resume()
	}
}
