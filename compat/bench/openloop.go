package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// openResult is one open-loop run (scenario 7).
type openResult struct {
	sent, delivered, reported int64
	elapsed                   time.Duration // first send to last delivery
}

// unreported is the share of sent messages that neither reached b's raft
// nor were reported to a's raft as unreachable, in percent.
func (r openResult) unreported() float64 {
	if r.sent == 0 {
		return 0
	}
	return 100 * float64(r.sent-r.delivered-r.reported) / float64(r.sent)
}

func (r openResult) perSecond() float64 { return float64(r.delivered) / r.elapsed.Seconds() }

// openRing is how many distinct messages the open-loop sender cycles
// through. They are never modified once built, so a message may be queued
// more than once at a time.
const openRing = 1 << 14

// runOpenLoop is scenario 7: a sends b MsgApps of spec's shape as fast as
// Send returns, with no window, for d. b's raft checks each message it gets
// (sender, type, entries, the index stamped in each entry's data), in any
// order. When deliveries stop, every message sent must have been delivered
// or reported to a's raft (ReportUnreachable is called once per dropped
// message by both transports); the rest were lost silently.
func runOpenLoop(k kind, cfg *config, spec appSpec, d time.Duration) (openResult, error) {
	msgs := make([]*raftpb.Message, openRing)
	term := uint64(measureTerm)
	for i := range msgs {
		idx := uint64(i) * uint64(spec.entries)
		m := &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: proto.Uint64(idB), From: proto.Uint64(idA),
			Term: proto.Uint64(term), LogTerm: proto.Uint64(term), Index: proto.Uint64(idx), Commit: proto.Uint64(0)}
		for j := range spec.entries {
			data := make([]byte, spec.size)
			stamp(data, idx+1+uint64(j))
			m.Entries = append(m.Entries, &raftpb.Entry{Term: proto.Uint64(term), Index: proto.Uint64(idx + 1 + uint64(j)),
				Type: raftpb.EntryNormal.Enum(), Data: data})
		}
		msgs[i] = m
	}
	var (
		delivered atomic.Int64
		last      atomic.Int64 // unix nanoseconds of the last delivery
		mu        sync.Mutex
		bad       error
	)
	check := func(m *raftpb.Message) error {
		if m.GetType() != raftpb.MsgApp || m.GetFrom() != idA || m.GetTo() != idB || m.GetTerm() != term {
			return fmt.Errorf("got %s from %d to %d term %d", m.GetType(), m.GetFrom(), m.GetTo(), m.GetTerm())
		}
		if len(m.GetEntries()) != spec.entries {
			return fmt.Errorf("message %d has %d entries, want %d", m.GetIndex(), len(m.GetEntries()), spec.entries)
		}
		for j, e := range m.GetEntries() {
			want := m.GetIndex() + 1 + uint64(j)
			data := e.GetData()
			if e.GetIndex() != want || len(data) != spec.size ||
				binary.BigEndian.Uint64(data) != want || !bytes.Equal(data[len(data)-8:], data[:8]) {
				return fmt.Errorf("message %d: entry %d damaged (index %d, %d bytes)", m.GetIndex(), j, e.GetIndex(), len(data))
			}
		}
		return nil
	}
	p, err := newPair(k, cfg.dir, nil, func(_ *node, m *raftpb.Message) error {
		if err := check(m); err != nil {
			mu.Lock()
			if bad == nil {
				bad = err
			}
			mu.Unlock()
		}
		delivered.Add(1)
		last.Store(time.Now().UnixNano())
		return nil
	})
	if err != nil {
		return openResult{}, err
	}
	defer p.stop()
	reported0 := p.a.raft.unreachable.Load()

	one := make([]*raftpb.Message, 1)
	var sent int64
	start := time.Now()
	for time.Since(start) < d {
		for range 64 {
			one[0] = msgs[sent%openRing]
			p.a.send(one)
			sent++
		}
	}
	// Wait until everything is accounted for, or nothing has moved for a
	// second (what is missing then was lost without a word).
	prev, still := int64(-1), time.Now()
	poll := time.NewTicker(5 * time.Millisecond)
	defer poll.Stop()
	for {
		got := delivered.Load() + p.a.raft.unreachable.Load() - reported0
		if got >= sent {
			break
		}
		if got != prev {
			prev, still = got, time.Now()
		} else if time.Since(still) > time.Second {
			break
		}
		<-poll.C
	}
	r := openResult{sent: sent, delivered: delivered.Load(), reported: p.a.raft.unreachable.Load() - reported0,
		elapsed: time.Unix(0, last.Load()).Sub(start)}
	mu.Lock()
	defer mu.Unlock()
	if r.delivered == 0 {
		return r, errors.New("nothing delivered")
	}
	return r, errors.Join(bad, p.fail.err())
}
