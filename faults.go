package rafthttp

// Fault injection. These hooks let a test, or an operator drill, cut this
// member off from its peers without touching the network, as etcd's own
// failure tests do with its transport. What a paused peer drops is not
// reported to raft: the point is to look like a partition, and a
// partition reports nothing either.

// Pause makes every peer drop what it is given to send and what it
// receives, without reporting, as etcd's Pause does for its failure tests.
func (t *Transport) Pause() { t.setPaused(true) }

// Resume undoes Pause.
func (t *Transport) Resume() { t.setPaused(false) }

// CutPeer pauses one peer (and remote) as Pause does; MendPeer undoes it.
func (t *Transport) CutPeer(id uint64) { t.setPeerPaused(id, true) }

// MendPeer resumes a peer cut with CutPeer.
func (t *Transport) MendPeer(id uint64) { t.setPeerPaused(id, false) }

// setPaused pauses or resumes every peer (remotes are left alone, as etcd's
// Pause leaves them).
func (t *Transport) setPaused(paused bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, p := range t.peers {
		p.paused.Store(paused)
	}
}

// setPeerPaused pauses or resumes the peer and the remote of id.
func (t *Transport) setPeerPaused(id uint64, paused bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if p, ok := t.peers[id]; ok {
		p.paused.Store(paused)
	}
	if r, ok := t.remotes[id]; ok {
		r.paused.Store(paused)
	}
}
