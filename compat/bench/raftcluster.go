package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The raft cluster (scenario 9): members go.etcd.io/raft nodes configured
// as etcd configures its own (etcdserver/raft.go: 100 ms ticks, an
// election after 10 ticks, a heartbeat every tick, 1 MiB appends, 512 in
// flight, CheckQuorum, PreVote), each on a MemoryStorage with a Ready loop
// as raftexample's: append to storage, send, apply, advance.
const (
	raftTickEvery       = 100 * time.Millisecond
	raftElectionTick    = 10
	raftHeartbeatTick   = 1
	raftMaxSizePerMsg   = 1 << 20
	raftMaxInflightMsgs = 512

	// raftLeader is the member that campaigns, and that the clients
	// propose to.
	raftLeader uint64 = 1
	// proposalTimeout fails a run whose proposal is not applied by the
	// leader in time: lost, or a cluster stuck.
	proposalTimeout = 5 * time.Second
	// The log is compacted as etcd does after a snapshot (every 10,000
	// applied entries, keeping 5,000 for followers that lag), so that it
	// does not grow through the run; here never past what every member
	// has applied less those 5,000, so that no member ever needs a
	// snapshot.
	compactEvery = 10_000
	compactKeep  = 5_000
	// proposalHeader is the client ID (4 bytes) and sequence number (8)
	// at the start of every proposal.
	proposalHeader = 12
)

// raftSetup is the shape of the raft-cluster scenario.
type raftSetup struct {
	members, clients, size int
}

func (s raftSetup) String() string {
	return fmt.Sprintf("%d members, %d clients, %d B proposals", s.members, s.clients, s.size)
}

// waiter is where a client waits for its proposal: the leader's apply
// signals ch when it applies the entry whose sequence number is want.
type waiter struct {
	want atomic.Uint64
	ch   chan struct{}
}

// raftMember is one member: a raft.Node on a MemoryStorage, its Ready loop
// and what the loop has applied.
type raftMember struct {
	id      uint64
	cl      *raftCluster
	storage *raft.MemoryStorage
	rn      raft.Node
	nd      *node // its transport; set before run starts

	// Touched by the Ready loop only, read once it has stopped.
	last        []uint64 // per client, the last sequence number applied
	hash        uint32   // CRC-32C of every proposal applied, in order
	compactedAt uint64   // applied index of the last compaction

	applied   atomic.Uint64 // index of the last entry applied
	proposals atomic.Int64  // client proposals applied
	lead      atomic.Uint64 // the leader this member knows of
	term      atomic.Uint64 // its term
	sent      atomic.Int64  // messages handed to the transport

	stopc chan struct{}
	done  chan struct{}
}

// raftCluster is the members of one run, the clients' waiters and the
// first error any of them met.
type raftCluster struct {
	setup   raftSetup
	members []*raftMember
	waiters []*waiter
	pattern []byte
	fail    failures
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// raftLogger keeps raft's log lines out of the report.
var raftLogger = &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)}

func newRaftCluster(s raftSetup) *raftCluster {
	rc := &raftCluster{setup: s, pattern: make([]byte, s.size)}
	for i := range rc.pattern {
		rc.pattern[i] = byte(i*131 + 7)
	}
	for range s.clients {
		rc.waiters = append(rc.waiters, &waiter{ch: make(chan struct{}, 1)})
	}
	peers := make([]raft.Peer, s.members)
	for i := range peers {
		peers[i] = raft.Peer{ID: uint64(i + 1)}
	}
	for i := range s.members {
		m := &raftMember{
			id: uint64(i + 1), cl: rc, storage: raft.NewMemoryStorage(),
			last: make([]uint64, s.clients), stopc: make(chan struct{}), done: make(chan struct{}),
		}
		m.rn = raft.StartNode(&raft.Config{
			ID:              m.id,
			ElectionTick:    raftElectionTick,
			HeartbeatTick:   raftHeartbeatTick,
			Storage:         m.storage,
			MaxSizePerMsg:   raftMaxSizePerMsg,
			MaxInflightMsgs: raftMaxInflightMsgs,
			CheckQuorum:     true,
			PreVote:         true,
			Logger:          raftLogger,
		}, peers)
		rc.members = append(rc.members, m)
	}
	return rc
}

// handler is member id's Raft.Process: the node steps the message.
func (rc *raftCluster) handler(id uint64) handler {
	m := rc.members[id-1]
	return func(_ *node, msg *raftpb.Message) error {
		if err := m.rn.Step(context.Background(), msg); err != nil && !errors.Is(err, raft.ErrStopped) {
			return err
		}
		return nil
	}
}

// run is the member's Ready loop.
func (m *raftMember) run() {
	defer close(m.done)
	tick := time.NewTicker(raftTickEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			m.rn.Tick()
		case rd := <-m.rn.Ready():
			if err := m.ready(rd); err != nil {
				m.cl.fail.add(fmt.Errorf("member %d: %w", m.id, err))
			}
			m.rn.Advance()
		case <-m.stopc:
			return
		}
	}
}

// ready persists, sends and applies what rd holds.
func (m *raftMember) ready(rd raft.Ready) error {
	if rd.SoftState != nil {
		m.lead.Store(rd.SoftState.Lead)
	}
	if rd.HardState != nil && !raft.IsEmptyHardState(rd.HardState) {
		if err := m.storage.SetHardState(rd.HardState); err != nil {
			return err
		}
		m.term.Store(rd.HardState.GetTerm())
	}
	if rd.Snapshot != nil && !raft.IsEmptySnap(rd.Snapshot) {
		return fmt.Errorf("unexpected snapshot at index %d", rd.Snapshot.GetMetadata().GetIndex())
	}
	if err := m.storage.Append(rd.Entries); err != nil {
		return err
	}
	if len(rd.Messages) > 0 {
		m.nd.send(rd.Messages)
		m.sent.Add(int64(len(rd.Messages)))
	}
	for _, e := range rd.CommittedEntries {
		if err := m.apply(e); err != nil {
			return err
		}
		m.applied.Store(e.GetIndex())
	}
	return m.maybeCompact()
}

// apply applies one committed entry: a proposal must be its client's next,
// intact; the leader tells the client.
func (m *raftMember) apply(e *raftpb.Entry) error {
	switch e.GetType() {
	case raftpb.EntryConfChange:
		var cc raftpb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return err
		}
		m.rn.ApplyConfChange(&cc)
		return nil
	case raftpb.EntryNormal:
	default:
		return fmt.Errorf("entry %d of type %s", e.GetIndex(), e.GetType())
	}
	d := e.GetData()
	if len(d) == 0 {
		return nil // a new leader's empty entry
	}
	rc := m.cl
	if len(d) != rc.setup.size {
		return fmt.Errorf("entry %d: %d bytes, want %d", e.GetIndex(), len(d), rc.setup.size)
	}
	c, seq := binary.BigEndian.Uint32(d), binary.BigEndian.Uint64(d[4:])
	if int(c) >= len(m.last) {
		return fmt.Errorf("entry %d: client %d, want below %d", e.GetIndex(), c, len(m.last))
	}
	if seq != m.last[c]+1 {
		return fmt.Errorf("entry %d: client %d's proposal %d applied after its %d", e.GetIndex(), c, seq, m.last[c])
	}
	if !bytes.Equal(d[proposalHeader:], rc.pattern[proposalHeader:]) {
		return fmt.Errorf("entry %d: client %d's proposal %d damaged", e.GetIndex(), c, seq)
	}
	m.last[c] = seq
	m.hash = crc32.Update(m.hash, crc32c, d)
	m.proposals.Add(1)
	if m.id == raftLeader {
		if w := rc.waiters[c]; w.want.Load() == seq {
			select {
			case w.ch <- struct{}{}:
			default:
			}
		}
	}
	return nil
}

// maybeCompact compacts the log every compactEvery applied entries (see
// compactEvery).
func (m *raftMember) maybeCompact() error {
	applied := m.applied.Load()
	if applied-m.compactedAt < compactEvery {
		return nil
	}
	low := applied
	for _, o := range m.cl.members {
		low = min(low, o.applied.Load())
	}
	if low <= compactKeep {
		return nil
	}
	m.compactedAt = applied
	if err := m.storage.Compact(low - compactKeep); err != nil && !errors.Is(err, raft.ErrCompacted) {
		return err
	}
	return nil
}

// stop ends the Ready loop, then the node.
func (m *raftMember) stop() {
	select {
	case <-m.stopc:
		return
	default:
	}
	close(m.stopc)
	<-m.done
	m.rn.Stop()
}

// raftClient proposes to the leader, one proposal at a time, each waiting
// for the leader to apply it.
type raftClient struct {
	id    uint32
	acked uint64          // sequence number of its last proposal applied
	lat   []time.Duration // commit latencies measured
}

// Phases of a run, as the clients see them.
const (
	phaseWarm int32 = iota
	phaseMeasure
	phaseStop
)

// run proposes until the phase says stop; a proposal that fails or is not
// applied in time ends the run with an error.
func (c *raftClient) run(ctx context.Context, rc *raftCluster, phase *atomic.Int32) {
	leader, w := rc.members[raftLeader-1], rc.waiters[c.id]
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for phase.Load() != phaseStop {
		seq := c.acked + 1
		data := make([]byte, rc.setup.size)
		copy(data, rc.pattern)
		binary.BigEndian.PutUint32(data, c.id)
		binary.BigEndian.PutUint64(data[4:], seq)
		w.want.Store(seq)
		start := time.Now()
		if err := leader.rn.Propose(ctx, data); err != nil {
			rc.fail.add(fmt.Errorf("client %d: proposal %d: %w", c.id, seq, err))
			return
		}
		timer.Reset(proposalTimeout)
		select {
		case <-w.ch:
		case <-timer.C:
			rc.fail.add(fmt.Errorf("client %d: proposal %d not applied by the leader within %v", c.id, seq, proposalTimeout))
			return
		case <-ctx.Done():
			return
		}
		d := time.Since(start)
		c.acked = seq
		if phase.Load() == phaseMeasure {
			c.lat = append(c.lat, d)
		}
	}
}

// raftResult is one run of the raft-cluster scenario.
type raftResult struct {
	measurement                  // msgs: commits measured
	p50, p99, p999 time.Duration // commit latency
	transportMsgs  int64         // messages the members handed their transports meanwhile
	acked          int64         // proposals acknowledged in the run, warm-up included
}

// runRaftCluster is scenario 9: a raft cluster of s.members on transports
// of kind k, s.clients closed-loop clients proposing s.size bytes to the
// leader and each waiting for the leader to apply its proposal, for d
// after warmup. Before any figure: the leader stayed the same in the same
// term, every message went by the streams, none reconnected or was
// reported unreachable, and every member applied every acknowledged
// proposal exactly once, in each client's order, intact, to the same
// state (CRC-32C of the proposals in applied order).
func runRaftCluster(k kind, cfg *config, s raftSetup, warmup, d time.Duration) (raftResult, error) {
	rc := newRaftCluster(s)
	stopMembers := func() {
		for _, m := range rc.members {
			m.stop()
		}
	}
	c, err := newCluster(k, s.members, cfg.dir, rc.handler, func(nd *node) {
		m := rc.members[nd.id-1]
		nd.raft.onUnreachable = func(id uint64) { m.rn.ReportUnreachable(id) }
	})
	if err != nil {
		stopMembers()
		return raftResult{}, err
	}
	stopped := false
	teardown := func() {
		if !stopped {
			stopped = true
			c.stop()
			stopMembers()
		}
	}
	defer teardown()
	for i, m := range rc.members {
		m.nd = c.nodes[i]
		go m.run()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// raft refuses to campaign with configuration changes left to apply:
	// the bootstrap's, one per member.
	if err := waitUntil(10*time.Second, func() bool { return rc.members[raftLeader-1].applied.Load() >= uint64(s.members) }); err != nil {
		return raftResult{}, fmt.Errorf("bootstrap not applied: %w", err)
	}
	if err := rc.members[raftLeader-1].rn.Campaign(ctx); err != nil {
		return raftResult{}, err
	}
	if err := waitUntil(10*time.Second, func() bool {
		for _, m := range rc.members {
			if m.lead.Load() != raftLeader {
				return false
			}
		}
		return true
	}); err != nil {
		return raftResult{}, fmt.Errorf("member %d not elected: %w (%v)", raftLeader, err, errors.Join(c.fail.err(), rc.fail.err()))
	}

	var (
		phase   atomic.Int32
		clients = make([]*raftClient, s.clients)
		wg      sync.WaitGroup
	)
	for i := range clients {
		cl := &raftClient{id: uint32(i)}
		clients[i] = cl
		wg.Go(func() { cl.run(ctx, rc, &phase) })
	}
	stopClients := func() {
		phase.Store(phaseStop)
		wg.Wait()
	}
	if err := pause(warmup, &rc.fail); err != nil {
		cancel()
		stopClients()
		return raftResult{}, fmt.Errorf("warm-up: %w", err)
	}
	leader := rc.members[raftLeader-1]
	term0 := leader.term.Load()
	links0 := c.linkState()
	sent0 := rc.sent()
	mem0, cpu0 := readMemCounters(), cpuTime()
	start := time.Now()
	phase.Store(phaseMeasure)
	pauseErr := pause(d, &rc.fail)
	phase.Store(phaseStop)
	res := raftResult{measurement: measurement{elapsed: time.Since(start), cpu: cpuTime() - cpu0}}
	res.since(mem0)
	res.transportMsgs = rc.sent() - sent0
	stopClients()
	if pauseErr != nil {
		return raftResult{}, pauseErr
	}

	// Every acknowledged proposal must reach every member.
	for _, cl := range clients {
		res.acked += int64(cl.acked)
	}
	if err := waitUntil(10*time.Second, func() bool {
		for _, m := range rc.members {
			if m.proposals.Load() < res.acked {
				return false
			}
		}
		return true
	}); err != nil {
		var got []int64
		for _, m := range rc.members {
			got = append(got, m.proposals.Load())
		}
		return raftResult{}, fmt.Errorf("members applied %v proposals, want %d each: %w (%v)", got, res.acked, err, rc.fail.err())
	}
	var errs []error
	for _, m := range rc.members {
		if m.lead.Load() != raftLeader || m.term.Load() != term0 {
			errs = append(errs, fmt.Errorf("member %d: leader %d in term %d after the measurement, want %d in term %d",
				m.id, m.lead.Load(), m.term.Load(), raftLeader, term0))
		}
	}
	errs = append(errs, c.checkLinks(links0), c.fail.err(), rc.fail.err())
	if err := errors.Join(errs...); err != nil {
		return raftResult{}, err
	}
	teardown()
	for _, m := range rc.members {
		if m.hash != leader.hash || m.proposals.Load() != res.acked {
			errs = append(errs, fmt.Errorf("member %d applied %d proposals (CRC-32C %08x), the leader %d (%08x)",
				m.id, m.proposals.Load(), m.hash, leader.proposals.Load(), leader.hash))
		}
		for i, cl := range clients {
			if m.last[i] != cl.acked {
				errs = append(errs, fmt.Errorf("member %d applied client %d's proposals up to %d, want %d", m.id, i, m.last[i], cl.acked))
				break
			}
		}
	}
	errs = append(errs, rc.fail.err())
	if err := errors.Join(errs...); err != nil {
		return raftResult{}, err
	}
	var lat []time.Duration
	for _, cl := range clients {
		lat = append(lat, cl.lat...)
	}
	if len(lat) == 0 {
		return raftResult{}, errors.New("no proposal committed during the measurement")
	}
	slices.Sort(lat)
	res.msgs = int64(len(lat))
	res.p50, res.p99, res.p999 = percentile(lat, 50), percentile(lat, 99), percentileMille(lat, 999)
	return res, nil
}

// sent is the number of messages every member has handed its transport.
func (rc *raftCluster) sent() int64 {
	var n int64
	for _, m := range rc.members {
		n += m.sent.Load()
	}
	return n
}

// pause waits d, or less if f records an error meanwhile.
func pause(d time.Duration, f *failures) error {
	end := time.Now().Add(d)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(end) {
		if err := f.err(); err != nil {
			return err
		}
		<-tick.C
	}
	return f.err()
}

// percentileMille of sorted durations, nearest rank, p in thousandths.
func percentileMille(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 999) / 1000
	return sorted[max(i-1, 0)]
}
