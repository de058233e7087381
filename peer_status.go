package rafthttp

import (
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"
)

// failureType names what failed, for the peer's inactive reason: the source
// (stream, pipeline, snapshot) and the action (dial, read, write, ...).
type failureType struct {
	source string
	action string
}

// peerStatus is whether a peer is reachable, shared by all its mechanisms
// (spec §4.8). Any success activates it; any failure deactivates it and
// records why. Transitions are logged and counted.
type peerStatus struct {
	lg      *zap.Logger
	now     func() int64 // the clock of inactiveLog
	local   string
	id      string
	metrics *metrics

	mu      sync.Mutex
	active  bool
	since   time.Time
	lastErr error
	// A peer that fails as soon as it is reached (a pipeline answered
	// alternately 204 and 500) flips its status at the rate we send.
	inactiveLog logLimiter

	// writers and readers are the ends of the peer's streams, indexed by
	// streamType, for PeerStats. They are not under mu: each has a
	// single goroutine that sets it (the stream's writer or reader), and
	// they are independent of active, which any mechanism can set.
	writers, readers [streamTypeEnd]streamEnd
}

func newPeerStatus(lg *zap.Logger, now func() int64, m *metrics, local, id string) *peerStatus {
	return &peerStatus{lg: lg, now: now, metrics: m, local: local, id: id}
}

func (s *peerStatus) activate() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.active {
		return
	}
	s.lg.Info("peer became active", zap.String("peer-id", s.id))
	s.active = true
	s.since = time.Now()
	s.metrics.activePeers.WithLabelValues(s.local, s.id).Inc()
}

func (s *peerStatus) deactivate(failure failureType, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	err := fmt.Errorf("failed to %s %s on %s (%s)", failure.action, s.id, failure.source, reason)
	s.lastErr = err
	if !s.active {
		s.lg.Debug("peer deactivated again", zap.String("peer-id", s.id), zap.Error(err))
		return
	}
	if n, ok := s.inactiveLog.allow(s.now); ok {
		s.lg.Warn("peer became inactive (message send to peer failed)", zap.String("peer-id", s.id), zap.Error(err), suppressed(n))
	}
	s.active = false
	s.since = time.Time{}
	s.metrics.activePeers.WithLabelValues(s.local, s.id).Dec()
	s.metrics.disconnectedPeers.WithLabelValues(s.local, s.id).Inc()
}

// release ends an active state without counting a disconnection: the
// owner was closed on purpose (a retired remote), and the active gauge,
// which a peer with the same ID may share, must not keep its count.
func (s *peerStatus) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.active {
		return
	}
	s.active = false
	s.since = time.Time{}
	s.metrics.activePeers.WithLabelValues(s.local, s.id).Dec()
}

func (s *peerStatus) isActive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// activeSince returns when the peer last became active, or the zero time if
// it is inactive.
func (s *peerStatus) activeSince() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.since
}

// lastError returns the reason of the last deactivation, nil if none.
func (s *peerStatus) lastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// writer and reader return the ends of the stream of type t that our stream
// writer and our stream reader hold.
func (s *peerStatus) writer(t streamType) *streamEnd { return &s.writers[t] }
func (s *peerStatus) reader(t streamType) *streamEnd { return &s.readers[t] }
