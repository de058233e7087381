package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"
)

// window bounds the messages a stream has in flight and checks what the
// receiver's raft gets: the part the ordered streams (appStream) and the
// pipeline-only one (pipeStream) share. A stream takes a slot per message
// sent (acquire) and its receiver frees one per message delivered
// (deliver).
type window struct {
	slots     chan struct{}
	delivered atomic.Int64 // messages handed to the receiver's raft, both phases

	mu      sync.Mutex // guards err, warmGot, and the owning stream's receiver state
	err     error      // first bad message
	warmGot int64      // warm-up messages delivered
}

func newWindow(n int) window { return window{slots: make(chan struct{}, n)} }

// acquire takes a window slot, unless ctx ends first.
func (w *window) acquire(ctx context.Context) error {
	select {
	case w.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("window stuck with %d messages in flight: %w", len(w.slots), context.Cause(ctx))
	}
}

// drain waits until every message sent was delivered.
func (w *window) drain(ctx context.Context) error {
	n := cap(w.slots)
	for i := range n {
		if err := w.acquire(ctx); err != nil {
			return fmt.Errorf("draining (%d of %d slots back): %w", i, n, err)
		}
	}
	for range n {
		<-w.slots
	}
	return nil
}

// deliver is the receiver's raft handling m: check, called with w.mu held,
// records the first bad message, and m frees its slot. A message with no
// slot to free was never sent, or is delivered twice.
func (w *window) deliver(m *raftpb.Message, check func(*raftpb.Message) error) {
	w.mu.Lock()
	if err := check(m); err != nil && w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
	w.delivered.Add(1)
	select {
	case <-w.slots:
	default:
		w.mu.Lock()
		if w.err == nil {
			w.err = fmt.Errorf("message %d delivered with no message in flight (duplicate?)", m.GetIndex())
		}
		w.mu.Unlock()
	}
}

// checkMsgApp checks what every message of a stream must be, a MsgApp of
// entries entries from from to to, in the warm-up's term (counted) or the
// measurement's; w.mu is held. It reports whether m is a measured message
// left to check; if not, err says what was wrong, if anything.
func (w *window) checkMsgApp(m *raftpb.Message, from, to uint64, entries int) (measured bool, err error) {
	if m.GetType() != raftpb.MsgApp || m.GetFrom() != from || m.GetTo() != to {
		return false, fmt.Errorf("got %s from %d to %d, want MsgApp from %d to %d", m.GetType(), m.GetFrom(), m.GetTo(), from, to)
	}
	if len(m.Entries) != entries {
		return false, fmt.Errorf("MsgApp at index %d has %d entries, want %d", m.GetIndex(), len(m.Entries), entries)
	}
	switch m.GetTerm() {
	case warmTerm:
		w.warmGot++
		return false, nil
	case measureTerm:
		return true, nil
	default:
		return false, fmt.Errorf("MsgApp of term %d, want %d or %d", m.GetTerm(), warmTerm, measureTerm)
	}
}

// checkMeasuredEntries checks the entries of a measured MsgApp at base:
// their indexes, term and type, the index stamped in their data, and, if
// full, the rest of the data against pattern.
func checkMeasuredEntries(m *raftpb.Message, base uint64, spec appSpec, pattern []byte, full bool) error {
	for j, e := range m.Entries {
		idx := base + uint64(j) + 1
		d := e.GetData()
		if e.GetIndex() != idx || e.GetTerm() != measureTerm || e.GetType() != raftpb.EntryNormal || len(d) != spec.size {
			return fmt.Errorf("entry %d of MsgApp at %d: got index %d term %d type %s %d bytes, want index %d term %d EntryNormal %d bytes",
				j, base, e.GetIndex(), e.GetTerm(), e.GetType(), len(d), idx, measureTerm, spec.size)
		}
		if binary.BigEndian.Uint64(d) != idx || binary.BigEndian.Uint64(d[len(d)-8:]) != idx {
			return fmt.Errorf("entry %d: data stamped %d/%d, want %d", idx, binary.BigEndian.Uint64(d), binary.BigEndian.Uint64(d[len(d)-8:]), idx)
		}
		if full && !bytes.Equal(d[8:len(d)-8], pattern[8:len(d)-8]) {
			return fmt.Errorf("entry %d: data differs from what was sent", idx)
		}
	}
	return nil
}
