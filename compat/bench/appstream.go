package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"syscall"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// appSpec is the shape of the MsgApps of a scenario.
type appSpec struct {
	entries int // entries per message
	size    int // bytes of data per entry, at least 16
}

func (s appSpec) String() string { return fmt.Sprintf("%dx%dB", s.entries, s.size) }

// payloadBytes is the entry data one message carries.
func (s appSpec) payloadBytes() int64 { return int64(s.entries) * int64(s.size) }

// Terms of the two phases of a stream: the warm-up, whose messages are only
// counted, and the measurement, whose messages are checked one by one. The
// change of term makes the first measured message a full MsgApp on the
// msgappv2 stream, and every later one an AppEntries record.
const (
	warmTerm    uint64 = 1
	measureTerm uint64 = 2
)

// spotEvery: every spotEvery-th measured message has all its entry data
// compared with the pattern (the others have their stamps checked).
const spotEvery = 64

// appStream sends MsgApps from one node to another with at most window in
// flight, and checks what the receiver's raft is handed: the sender takes a
// window slot per message, the receiver frees it.
//
// Measured messages are built anew for every Send (fresh), as raft's Ready
// hands the transport a new Message, each field in an allocation of its
// own, with entries that raft allocated when they were proposed; or they
// come from a ring of 2×window prebuilt messages that are restamped in
// place, so that the sending side allocates nothing: a slot is reused only
// after its previous message was delivered (delivery is in order, which
// the receiver checks), hence after the transport is done with it. Every
// entry's data carries its index in its first and last 8 bytes; the rest is
// a fixed pattern.
type appStream struct {
	from, to uint64
	spec     appSpec
	fresh    bool // a new message per Send; otherwise the ring
	window
	pattern []byte
	batch   []*raftpb.Message
	ring    []*ringSlot
	next    int    // next ring slot to use
	index   uint64 // index of the last entry sent

	// The receiver's state, guarded by window.mu.
	expect uint64 // Index the next measured message must carry
	got    int64  // measured messages received
}

type ringSlot struct {
	m      *raftpb.Message
	index  uint64
	commit uint64
	ents   []uint64 // entry indexes, pointed to by the entries
}

// newAppStream returns a stream of MsgApps of spec's shape from from to to,
// with at most window in flight; fresh says whether each measured message
// is built anew (see appStream).
func newAppStream(from, to uint64, spec appSpec, window int, fresh bool) *appStream {
	s := &appStream{
		from: from, to: to, spec: spec, fresh: fresh, window: newWindow(window),
		pattern: make([]byte, spec.size),
		batch:   make([]*raftpb.Message, 1),
	}
	for i := range s.pattern {
		s.pattern[i] = byte(i*131 + 7)
	}
	if fresh {
		return s
	}
	term := measureTerm
	for range 2 * cap(s.slots) {
		sl := &ringSlot{ents: make([]uint64, spec.entries)}
		m := &raftpb.Message{
			Type: raftpb.MsgApp.Enum(), To: proto.Uint64(to), From: proto.Uint64(from),
			Term: &term, LogTerm: &term, Index: &sl.index, Commit: &sl.commit,
		}
		for j := range spec.entries {
			m.Entries = append(m.Entries, &raftpb.Entry{
				Term: &term, Index: &sl.ents[j], Type: raftpb.EntryNormal.Enum(),
				Data: bytes.Clone(s.pattern),
			})
		}
		sl.m = m
		s.ring = append(s.ring, sl)
	}
	return s
}

// stamp writes idx into the first and last 8 bytes of data.
func stamp(data []byte, idx uint64) {
	binary.BigEndian.PutUint64(data, idx)
	binary.BigEndian.PutUint64(data[len(data)-8:], idx)
}

// receive is the receiver's raft handling a MsgApp of the stream: it checks
// it and frees its window slot.
func (s *appStream) receive(m *raftpb.Message) { s.deliver(m, s.check) }

// check checks m; s.mu is held. It allocates nothing unless m is wrong.
func (s *appStream) check(m *raftpb.Message) error {
	if measured, err := s.checkMsgApp(m, s.from, s.to, s.spec.entries); !measured {
		return err
	}
	base := m.GetIndex()
	if base != s.expect || m.GetLogTerm() != measureTerm || m.GetCommit() != base {
		return fmt.Errorf("measured MsgApp #%d: got index %d logterm %d commit %d, want index %d logterm %d commit %d",
			s.got, base, m.GetLogTerm(), m.GetCommit(), s.expect, measureTerm, s.expect)
	}
	if err := checkMeasuredEntries(m, base, s.spec, s.pattern, s.got%spotEvery == 0); err != nil {
		return err
	}
	s.expect = base + uint64(s.spec.entries)
	s.got++
	return nil
}

// warmUp sends freshly built warm-up messages for d, then waits for them
// all to be delivered. They may travel any way (the streams may still be
// attaching); they are only counted.
func (s *appStream) warmUp(ctx context.Context, n *node, d time.Duration) error {
	sent := int64(0)
	for start := time.Now(); time.Since(start) < d; {
		if err := s.acquire(ctx); err != nil {
			return err
		}
		m := &raftpb.Message{
			Type: raftpb.MsgApp.Enum(), To: proto.Uint64(s.to), From: proto.Uint64(s.from),
			Term: proto.Uint64(warmTerm), LogTerm: proto.Uint64(warmTerm), Index: proto.Uint64(s.index), Commit: proto.Uint64(s.index),
		}
		for range s.spec.entries {
			s.index++
			data := bytes.Clone(s.pattern)
			stamp(data, s.index)
			m.Entries = append(m.Entries, &raftpb.Entry{Term: proto.Uint64(warmTerm), Index: proto.Uint64(s.index), Type: raftpb.EntryNormal.Enum(), Data: data})
		}
		s.batch[0] = m
		n.send(s.batch)
		sent++
	}
	if err := s.drain(ctx); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if s.warmGot != sent {
		return fmt.Errorf("warm-up: %d messages delivered, want %d", s.warmGot, sent)
	}
	// The measurement continues the log where the warm-up left it.
	s.expect = s.index
	return nil
}

// measurement is what one measured phase of a stream did.
type measurement struct {
	msgs    int64
	elapsed time.Duration // from the first send to the last delivery
	mallocs uint64        // heap allocations of the whole process
	bytes   uint64        // bytes allocated on the heap, whole process
	gcs     uint32        // GC cycles completed
	cpu     time.Duration // user+system CPU of the whole process
	posts   int64         // pipeline POSTs that carried the messages (scenario 8)
}

func (m measurement) perSecond() float64 { return float64(m.msgs) / m.elapsed.Seconds() }

func (m measurement) allocsPerMsg() float64 { return float64(m.mallocs) / float64(m.msgs) }

func (m measurement) bytesPerMsg() float64 { return float64(m.bytes) / float64(m.msgs) }

// gcsPerMillion is the GC cycles per million messages.
func (m measurement) gcsPerMillion() float64 { return float64(m.gcs) * 1e6 / float64(m.msgs) }

// memCounters are the allocation counters a measurement takes the
// difference of.
type memCounters struct {
	mallocs, bytes uint64
	gcs            uint32
}

func readMemCounters() memCounters {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return memCounters{mallocs: ms.Mallocs, bytes: ms.TotalAlloc, gcs: ms.NumGC}
}

// since fills m's allocation figures with what happened since c0.
func (m *measurement) since(c0 memCounters) {
	c := readMemCounters()
	m.mallocs, m.bytes, m.gcs = c.mallocs-c0.mallocs, c.bytes-c0.bytes, c.gcs-c0.gcs
}

func (m measurement) cpuPerMsg() time.Duration { return m.cpu / time.Duration(max(m.msgs, 1)) }

// measure sends measured messages until d has passed or stop is closed
// (whichever is given), waits for all of them to be delivered and checks
// them. It must follow warmUp.
func (s *appStream) measure(ctx context.Context, n *node, d time.Duration, stop <-chan struct{}) (measurement, error) {
	mem0, cpu0 := readMemCounters(), cpuTime()
	start := time.Now()
	var sent int64
	for done := false; !done; {
		if err := s.acquire(ctx); err != nil {
			return measurement{}, err
		}
		s.batch[0] = s.nextMeasured()
		n.send(s.batch)
		sent++
		if sent%32 == 0 {
			if stop != nil {
				select {
				case <-stop:
					done = true
				default:
				}
			} else {
				done = time.Since(start) >= d
			}
		}
	}
	if err := s.drain(ctx); err != nil {
		return measurement{}, err
	}
	res := measurement{msgs: sent, elapsed: time.Since(start), cpu: cpuTime() - cpu0}
	res.since(mem0)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return measurement{}, s.err
	}
	if s.got != sent {
		return measurement{}, fmt.Errorf("%d measured messages delivered, want %d", s.got, sent)
	}
	return res, nil
}

// nextMeasured returns the message that continues the log: built anew,
// or the next ring slot restamped.
func (s *appStream) nextMeasured() *raftpb.Message {
	if s.fresh {
		return s.newMeasured()
	}
	sl := s.ring[s.next]
	s.next = (s.next + 1) % len(s.ring)
	sl.index, sl.commit = s.index, s.index
	for j := range sl.ents {
		s.index++
		sl.ents[j] = s.index
		stamp(sl.m.Entries[j].Data, s.index)
	}
	return sl.m
}

// newMeasured builds the message that continues the log as raft would: a
// new Message whose fields are each allocated (raft's send sets them with
// new), and new entries with new data, as a proposal allocates them.
func (s *appStream) newMeasured() *raftpb.Message {
	ents := make([]*raftpb.Entry, s.spec.entries)
	base := s.index
	for j := range ents {
		s.index++
		data := make([]byte, len(s.pattern))
		copy(data, s.pattern)
		stamp(data, s.index)
		ents[j] = &raftpb.Entry{Term: new(measureTerm), Index: new(s.index), Type: raftpb.EntryNormal.Enum(), Data: data}
	}
	return &raftpb.Message{
		Type: raftpb.MsgApp.Enum(), To: new(s.to), From: new(s.from), Term: new(measureTerm),
		LogTerm: new(measureTerm), Index: new(base), Commit: new(base), Entries: ents,
	}
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// errStalled is why a watchdog gives up on a run.
var errStalled = errors.New("no message delivered for 10 s")

// watchdog cancels the returned context when progress stops moving for
// 10 s; the returned stop function ends the watchdog.
func watchdog(parent context.Context, progress func() int64) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		last, lastAt := progress(), time.Now()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if p := progress(); p != last {
					last, lastAt = p, time.Now()
				} else if time.Since(lastAt) > 10*time.Second {
					cancel(errStalled)
					return
				}
			}
		}
	}()
	return ctx, func() {
		close(done)
		<-finished
		cancel(nil)
	}
}
