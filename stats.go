package rafthttp

import (
	"slices"
	"time"
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
	// StreamReconnects counts stream connections made after the first one.
	StreamReconnects uint64
	// RTT is the smoothed round-trip time measured by probing, zero until
	// the first successful probe; ClockDifference is the peer's clock
	// behind ours (negative: ahead), from the same probes.
	RTT, ClockDifference time.Duration
	// ProbeHealthy reports whether the last probe succeeded, over both the
	// stream and the pipeline connections.
	ProbeHealthy bool
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
		StreamReconnects: c.reconnects.Load(),
		ProbeHealthy:     true,
	}
	// Report the stream prober's view, which measures the connections raft
	// traffic uses; fall back to the pipeline's before its first probe.
	for _, pr := range p.probers {
		healthy, srtt, drift, probes, _ := pr.snapshot()
		s.ProbeHealthy = s.ProbeHealthy && healthy
		if s.RTT == 0 && probes > 0 {
			s.RTT, s.ClockDifference = srtt, drift
		}
	}
	return s
}
