package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// pipelineWindow is how many messages the pipeline-only scenario keeps in
// flight. Both transports queue at most 64 messages for the pipeline (etcd's
// pipelineBufSize, our DefaultPipelineQueueSize) and drop what does not
// fit: a queued message has not been delivered yet, so with at most 64
// undelivered no send can find the queue full. 64 is far more than the 4
// POSTs each transport makes at once (etcd's connPerPipeline, our
// DefaultPipelineWorkers), so the window is not what limits the rate.
const pipelineWindow = 64

// pipeStream sends MsgApps of one shape from a to b with at most
// pipelineWindow in flight, a new message for each send as raft builds
// them, and checks what b's raft gets. The pipeline's concurrent POSTs
// deliver out of order, so each measured message is checked on its own
// (the index stamped in its data, all its data) and ticked off in a bitmap
// by its index: a duplicate, a message never sent or one missing at the end
// is an error.
type pipeStream struct {
	spec    appSpec
	pattern []byte
	batch   []*raftpb.Message
	index   uint64 // index of the last entry sent
	window

	// The receiver's state, guarded by window.mu.
	base uint64   // Index of the first measured message
	seen []uint64 // bitmap of measured messages delivered, by (Index-base)/entries
	got  int64    // measured messages delivered
}

func newPipeStream(spec appSpec) *pipeStream {
	s := &pipeStream{spec: spec, pattern: make([]byte, spec.size),
		window: newWindow(pipelineWindow), batch: make([]*raftpb.Message, 1)}
	for i := range s.pattern {
		s.pattern[i] = byte(i*131 + 7)
	}
	return s
}

// next builds the message that continues the log, in term.
func (s *pipeStream) next(term uint64) *raftpb.Message {
	m := &raftpb.Message{
		Type: raftpb.MsgApp.Enum(), To: proto.Uint64(idB), From: proto.Uint64(idA),
		Term: proto.Uint64(term), LogTerm: proto.Uint64(term), Index: proto.Uint64(s.index), Commit: proto.Uint64(s.index),
		Entries: make([]*raftpb.Entry, 0, s.spec.entries),
	}
	for range s.spec.entries {
		s.index++
		data := bytes.Clone(s.pattern)
		stamp(data, s.index)
		m.Entries = append(m.Entries, &raftpb.Entry{Term: proto.Uint64(term), Index: proto.Uint64(s.index),
			Type: raftpb.EntryNormal.Enum(), Data: data})
	}
	return m
}

// receive is b's raft: it checks m and frees its window slot.
func (s *pipeStream) receive(m *raftpb.Message) { s.deliver(m, s.check) }

// check checks m; s.mu is held.
func (s *pipeStream) check(m *raftpb.Message) error {
	if measured, err := s.checkMsgApp(m, idA, idB, s.spec.entries); !measured {
		return err
	}
	base := m.GetIndex()
	if base < s.base || (base-s.base)%uint64(s.spec.entries) != 0 || m.GetLogTerm() != measureTerm || m.GetCommit() != base {
		return fmt.Errorf("measured MsgApp: index %d logterm %d commit %d, want an index from %d in steps of %d, logterm %d, commit = index",
			base, m.GetLogTerm(), m.GetCommit(), s.base, s.spec.entries, measureTerm)
	}
	if err := checkMeasuredEntries(m, base, s.spec, s.pattern, true); err != nil {
		return err
	}
	n := (base - s.base) / uint64(s.spec.entries)
	for uint64(len(s.seen))*64 <= n {
		s.seen = append(s.seen, 0)
	}
	if s.seen[n/64]&(1<<(n%64)) != 0 {
		return fmt.Errorf("measured MsgApp at index %d delivered twice", base)
	}
	s.seen[n/64] |= 1 << (n % 64)
	s.got++
	return nil
}

// send sends messages of term until d has passed and waits until they are
// all delivered; it returns how many it sent.
func (s *pipeStream) send(ctx context.Context, n *node, term uint64, d time.Duration) (int64, error) {
	var sent int64
	for start := time.Now(); time.Since(start) < d; {
		if err := s.acquire(ctx); err != nil {
			return sent, err
		}
		s.batch[0] = s.next(term)
		n.send(s.batch)
		sent++
	}
	return sent, s.drain(ctx)
}

// runPipelineOnly is scenario 8: the small MsgApps of scenario 1 from a to
// b, with both servers refusing every stream (see tap), so that both
// transports fall back to their pipelines: etcd's POSTs each message
// alone, ours too to a peer that does not announce pipeline-batch, and
// batches what its queue holds to one that does (ours); pipelineWindow in
// flight. All messages must be delivered, each once, intact, each on the
// wire once (POSTs to b and the messages framed in its batches are counted
// apart, by the tap), with no stream ever served and nothing reported
// unreachable.
func runPipelineOnly(k kind, cfg *config, spec appSpec, d time.Duration) (measurement, error) {
	s := newPipeStream(spec)
	p, err := newRefusedPair(k, cfg.dir, nil, func(_ *node, m *raftpb.Message) error {
		s.receive(m)
		return nil
	})
	if err != nil {
		return measurement{}, err
	}
	defer p.stop()
	ctx, stopWatch := watchdog(context.Background(), s.delivered.Load)
	defer stopWatch()
	// The warm-up opens the pipelines' keep-alive connections.
	warm, err := s.send(ctx, p.a, warmTerm, cfg.warmup)
	if err != nil {
		return measurement{}, fmt.Errorf("warm-up: %w", err)
	}
	s.mu.Lock()
	s.base = s.index
	warmErr, warmGot := s.err, s.warmGot
	s.mu.Unlock()
	if warmErr != nil {
		return measurement{}, warmErr
	}
	if warmGot != warm {
		return measurement{}, fmt.Errorf("warm-up: %d messages delivered, want %d", warmGot, warm)
	}
	posts0 := [2]int64{p.a.tap.pipelinePosts.Load() + p.a.tap.batchPosts.Load(), p.b.tap.pipelinePosts.Load()}
	batches0, batchMsgs0 := p.b.tap.batchPosts.Load(), p.b.tap.batchMsgs.Load()
	unreachable0 := [2]int64{p.a.raft.unreachable.Load(), p.b.raft.unreachable.Load()}

	mem0, cpu0 := readMemCounters(), cpuTime()
	start := time.Now()
	sent, err := s.send(ctx, p.a, measureTerm, d)
	if err != nil {
		return measurement{}, err
	}
	res := measurement{msgs: sent, elapsed: time.Since(start), cpu: cpuTime() - cpu0}
	res.since(mem0)
	singles := p.b.tap.pipelinePosts.Load() - posts0[1]
	batches, batched := p.b.tap.batchPosts.Load()-batches0, p.b.tap.batchMsgs.Load()-batchMsgs0
	res.posts = singles + batches

	var errs []error
	s.mu.Lock()
	errs = append(errs, s.err)
	if s.got != sent {
		errs = append(errs, fmt.Errorf("%d measured messages delivered, want %d", s.got, sent))
	}
	s.mu.Unlock()
	// Every message on the wire once: alone in a POST /raft, or framed in
	// a batch (ours, to a peer that announced pipeline-batch); etcd sends
	// one POST per message.
	if singles+batched != sent {
		errs = append(errs, fmt.Errorf("node b served %d single POSTs and %d batches of %d messages in all for %d messages sent, want each message on the wire once",
			singles, batches, batched, sent))
	}
	if k == etcd && batches != 0 {
		errs = append(errs, fmt.Errorf("node b served %d batch POSTs from etcd, want none", batches))
	}
	if batches > batched {
		errs = append(errs, fmt.Errorf("node b served %d batch POSTs carrying %d messages, want at least one each", batches, batched))
	}
	if posts := p.a.tap.pipelinePosts.Load() + p.a.tap.batchPosts.Load() - posts0[0]; posts != 0 {
		errs = append(errs, fmt.Errorf("node a served %d pipeline POSTs, want 0", posts))
	}
	for i, n := range []*node{p.a, p.b} {
		if begun := n.tap.streamsBegun.Load(); begun != 0 {
			errs = append(errs, fmt.Errorf("node %s served %d streams, want 0 (all refused)", "ab"[i:i+1], begun))
		}
		if u := n.raft.unreachable.Load() - unreachable0[i]; u != 0 {
			errs = append(errs, fmt.Errorf("node %s reported its peer unreachable %d times during the measurement, want 0", "ab"[i:i+1], u))
		}
	}
	errs = append(errs, p.fail.err())
	return res, errors.Join(errs...)
}
