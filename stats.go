package rafthttp

import (
	"slices"
	"sync/atomic"
	"time"
)

// The stream types, as [StreamStats.Type] names them (and the queue-depth
// metric, stream_msgappv2 and stream_message).
const (
	// StreamMsgAppV2 is the stream that carries log appends (MsgApp), in
	// etcd's compact msgappv2 encoding.
	StreamMsgAppV2 = "msgappv2"
	// StreamMessage is the stream that carries every other message:
	// heartbeats, votes, append responses.
	StreamMessage = "message"
)

// PeerStats is what the transport knows of one peer, for programs that do
// not run Prometheus: what etcd's leader and follower stats gave, without
// its v2 store.
type PeerStats struct {
	// ID is the peer's member ID.
	ID uint64
	// Active reports whether the peer is reachable; ActiveSince is when it
	// last became so (zero while inactive).
	Active      bool
	ActiveSince time.Time
	// LastError is why the peer last turned inactive, nil if it never did.
	LastError error
	// MessagesSent and BytesSent count what reached the network (streams,
	// pipeline and snapshots; bytes include framing and link heartbeats).
	MessagesSent, BytesSent uint64
	// MessagesReceived and BytesReceived count what was read from the
	// peer's streams (and its pipeline and snapshot requests).
	MessagesReceived, BytesReceived uint64
	// Dropped counts messages to or from the peer that were not delivered.
	Dropped uint64
	// QueuedBytes is what is charged to the peer's send budget now: the
	// bytes of the messages queued to it and not yet written (see
	// Transport.MaxPeerSendBytes; messages of 1 KiB or less are not
	// counted).
	QueuedBytes uint64
	// StreamReconnects counts stream connections made after the first one.
	StreamReconnects uint64
	// RTT is the smoothed round-trip time measured by probing, zero until
	// the first successful probe; ClockDifference is the peer's clock
	// behind ours (negative: ahead), from the same probes.
	RTT, ClockDifference time.Duration
	// ProbeHealthy reports whether the last probe succeeded, over both the
	// stream and the pipeline connections.
	ProbeHealthy bool
	// Streams is the state of the peer's two streams: Streams[0] is
	// StreamMsgAppV2, Streams[1] StreamMessage, always in that order. While
	// a stream is down in the direction a message would take, the message
	// goes by the pipeline (MsgApp falls back to the message stream first).
	Streams [2]StreamStats
	// Features is what the peer last announced in X-Rafthttp-Features, as
	// the comma-separated tokens of the extensions this version knows
	// (unknown ones left out): "" for an etcd peer, or one not heard from
	// yet. An extension is used with the peer only when both sides
	// announced it. A string, not a slice, keeps PeerStats comparable.
	Features string
}

// StreamStats is the state of one stream type with a peer, in each
// direction. Each direction is its own long-lived HTTP connection, dialled
// by the member that receives on it.
type StreamStats struct {
	// Type is StreamMsgAppV2 or StreamMessage.
	Type string
	// Writer is our end of the connection the peer dialled to us, on which
	// our stream writer sends it messages: up from when the writer attaches
	// the connection until the writer lets go of it (a write or link
	// heartbeat failed, the peer dialled a new one, or the peer was
	// removed).
	Writer StreamState
	// Reader is our end of the connection we dialled to the peer, from which
	// our stream reader receives its messages: up from when the peer
	// answered the dial until the connection ends (closed, silent for
	// ConnReadTimeout, or unreadable).
	Reader StreamState
}

// StreamState says whether one end of a stream is up, and since when.
type StreamState struct {
	// Up reports whether the connection is attached.
	Up bool
	// Since is when the connection attached, so that a reconnection shows
	// as a later Since; zero while down.
	Since time.Time
}

// StreamsUp reports whether both streams are up in both directions: the
// steady state, in which every message but MsgSnap leaves by a stream. Tests
// and benchmarks wait for it rather than for [PeerStats.Active], which the
// first stream, or a pipeline POST, already sets.
func (s PeerStats) StreamsUp() bool {
	for _, st := range s.Streams {
		if !st.Writer.Up || !st.Reader.Up {
			return false
		}
	}
	return true
}

// PeerStatus returns the stats of one peer, and false if it is not a peer.
func (t *Transport) PeerStatus(id uint64) (PeerStats, bool) {
	p, ok := t.get(id)
	if !ok {
		return PeerStats{}, false
	}
	return p.stats(), true
}

// Stats returns the stats of every peer, ordered by ID.
func (t *Transport) Stats() []PeerStats {
	t.mu.RLock()
	peers := make([]*peer, 0, len(t.peers))
	for _, p := range t.peers {
		peers = append(peers, p)
	}
	t.mu.RUnlock()
	out := make([]PeerStats, 0, len(peers))
	for _, p := range peers {
		out = append(out, p.stats())
	}
	slices.SortFunc(out, func(a, b PeerStats) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

func (p *peer) stats() PeerStats {
	c := p.metrics.c
	s := PeerStats{
		ID:               p.id,
		Active:           p.status.isActive(),
		ActiveSince:      p.status.activeSince(),
		LastError:        p.status.lastError(),
		MessagesSent:     c.msgsSent.Load(),
		BytesSent:        c.bytesSent.Load(),
		MessagesReceived: c.msgsReceived.Load(),
		BytesReceived:    c.bytesReceived.Load(),
		Dropped:          c.dropped.Load(),
		QueuedBytes:      uint64(max(p.queued.inUse(), 0)),
		StreamReconnects: c.reconnects.Load(),
		ProbeHealthy:     true,
		Features:         p.features.load().String(),
	}
	for i, typ := range streamTypes {
		s.Streams[i] = StreamStats{Type: typ.statsName(), Writer: p.status.writer(typ).state(), Reader: p.status.reader(typ).state()}
	}
	// Report the stream prober's view, which measures the connections raft
	// traffic uses; fall back to the pipeline's before its first probe.
	for _, pr := range p.currentProbers() {
		healthy, srtt, drift, probes, _ := pr.snapshot()
		s.ProbeHealthy = s.ProbeHealthy && healthy
		if s.RTT == 0 && probes > 0 {
			s.RTT, s.ClockDifference = srtt, drift
		}
	}
	return s
}

// streamEnd records whether one end of a stream is up and since when, for
// PeerStats. The writer or reader that owns the end sets it when it attaches
// or loses a connection, never per message; Stats reads it from any
// goroutine, hence the atomic.
type streamEnd struct {
	since atomic.Pointer[time.Time] // nil while down
}

// up records that the end attached a connection now. It allocates the time
// it stores, once per connection.
func (e *streamEnd) up() {
	now := time.Now()
	e.since.Store(&now)
}

// down records that the end lost its connection.
func (e *streamEnd) down() { e.since.Store(nil) }

func (e *streamEnd) state() StreamState {
	if t := e.since.Load(); t != nil {
		return StreamState{Up: true, Since: *t}
	}
	return StreamState{}
}

// ActiveSince returns when the peer's connection last became active, or the
// zero time if it is inactive or unknown.
func (t *Transport) ActiveSince(id uint64) time.Time {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if p, ok := t.peers[id]; ok {
		return p.status.activeSince()
	}
	return time.Time{}
}

// ActivePeers returns the number of peers (not remotes) that are active.
func (t *Transport) ActivePeers() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n := 0
	for _, p := range t.peers {
		if p.status.isActive() {
			n++
		}
	}
	return n
}
