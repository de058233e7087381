// Package rafttest runs go.etcd.io/raft/v3 members for the tests of this
// module and of its compat modules (compat/etcd37, compat/interop), which
// may import it: Go's internal rule goes by import path, not by module.
//
// A [Member] is what an application puts around raft: a raft.Node on a
// MemoryStorage and a Ready loop that persists, sends and applies in the
// order raft prescribes. It is also the transport's Raft: its methods
// Process, IsIDRemoved, ReportUnreachable and ReportSnapshot are those of
// both our Raft interface and etcd 3.7's, so the same member runs on either
// transport, and the caller wires it to one: Raft is the member, and
// [Member.Run] sends through the transport.
//
// The package does not import the library, so that the library's own
// tests (package rafthttp, whose fault scenarios share the root's member)
// can import it too.
//
// Only tests import this package: its functions take a testing.TB and
// register their cleanups on it.
package rafttest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// Config is the raft configuration of a member. Its zero value is a fast
// cluster for an idle machine: a follower campaigns after 100-200 ms.
type Config struct {
	// Tick is how often the Ready loop ticks raft. Zero means 10 ms.
	Tick time.Duration
	// ElectionTick is raft's election timeout in ticks. Zero means 10.
	// Loaded machines running the race detector want more (50 with a
	// 10 ms tick), or they see spurious elections.
	ElectionTick int
	// CheckQuorum and PreVote are raft's options of the same names.
	CheckQuorum, PreVote bool
	// Storage, if not nil, is the storage of a member that crashed: the
	// member restarts from it (raft.RestartNode), and the peers given to
	// NewMember are ignored. Nil means a new member on a new storage.
	Storage *raft.MemoryStorage
}

// Sender is the transport a member's Ready loop sends its messages
// through: our Transport and etcd 3.7's have this method.
type Sender interface {
	Send(msgs []*raftpb.Message)
}

// Applied is a committed normal entry as a member applied it.
type Applied struct {
	Index, Term uint64
	Data        string
}

// Member is one raft node on a MemoryStorage with its Ready loop. It
// records every committed entry, in order, and is the Raft its transport
// reports to. Its methods are safe for concurrent use.
type Member struct {
	t       testing.TB
	id      uint64
	tick    time.Duration
	node    raft.Node
	storage *raft.MemoryStorage

	runOnce  sync.Once
	started  bool // set by Run, under runOnce
	stopOnce sync.Once
	stopc    chan struct{}
	done     chan struct{}

	lead  atomic.Uint64 // leader as of the last SoftState
	state atomic.Uint64 // raft.StateType as of the last SoftState

	mu        sync.Mutex
	committed []*raftpb.Entry
	applied   []Applied
	data      map[string]bool // the data of the normal entries applied
	err       error           // what the Ready loop failed at, joined
}

// NewMember starts the raft node of member id of a new cluster of peers,
// or restarts it from cfg.Storage. The node runs at once, so that what a
// transport receives has a node to go to, but nothing is sent or applied
// until [Member.Run]. The node stops at the end of the test at the latest.
func NewMember(t testing.TB, id uint64, peers []uint64, cfg Config) *Member {
	t.Helper()
	if cfg.Tick == 0 {
		cfg.Tick = 10 * time.Millisecond
	}
	if cfg.ElectionTick == 0 {
		cfg.ElectionTick = 10
	}
	m := &Member{t: t, id: id, tick: cfg.Tick, storage: cfg.Storage,
		stopc: make(chan struct{}), done: make(chan struct{}), data: map[string]bool{}}
	if m.storage == nil {
		m.storage = raft.NewMemoryStorage()
	}
	rc := &raft.Config{
		ID:              id,
		ElectionTick:    cfg.ElectionTick,
		HeartbeatTick:   1,
		Storage:         m.storage,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		CheckQuorum:     cfg.CheckQuorum,
		PreVote:         cfg.PreVote,
		Logger:          &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)},
	}
	if cfg.Storage != nil {
		m.node = raft.RestartNode(rc)
	} else {
		rp := make([]raft.Peer, 0, len(peers))
		for _, p := range peers {
			rp = append(rp, raft.Peer{ID: p})
		}
		m.node = raft.StartNode(rc, rp)
	}
	// Registered before the caller builds a transport, so it runs after
	// the transport has stopped: covers a test that fails before Run.
	t.Cleanup(m.node.Stop)
	return m
}

// Run starts the Ready loop, sending through s. At the end of the test it
// is stopped ([Member.Stop]) before whatever was set up ahead of Run (the
// transport, the server), as an application shuts down, and the test fails
// if the loop failed to persist or apply. Later calls do nothing.
func (m *Member) Run(s Sender) {
	m.runOnce.Do(func() {
		m.t.Cleanup(func() {
			m.Stop()
			if err := m.Err(); err != nil {
				m.t.Errorf("raft member %d: %v", m.id, err)
			}
		})
		m.started = true
		go m.run(s)
	})
}

// Stop ends the Ready loop and stops the node, as a crash would but
// cleanly; the transport is left to the caller. It is idempotent, and a
// Run after it starts nothing.
func (m *Member) Stop() {
	m.stopOnce.Do(func() {
		close(m.stopc)
		// Once.Do returns after Run's function has, so started is settled.
		m.runOnce.Do(func() {})
		if m.started {
			<-m.done
		}
		m.node.Stop()
	})
}

func (m *Member) run(s Sender) {
	defer close(m.done)
	ticker := time.NewTicker(m.tick)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			m.node.Tick()
		case rd := <-m.node.Ready():
			if err := m.handleReady(s, rd); err != nil {
				m.mu.Lock()
				m.err = errors.Join(m.err, err)
				m.mu.Unlock()
			}
			m.node.Advance()
		case <-m.stopc:
			return
		}
	}
}

// handleReady persists, sends and applies one Ready, in the order raft's
// documentation prescribes. A snapshot only replaces the storage's: no
// test compacts its log, so none carries application state.
func (m *Member) handleReady(s Sender, rd raft.Ready) error {
	if rd.SoftState != nil {
		m.lead.Store(rd.SoftState.Lead)
		m.state.Store(uint64(rd.SoftState.RaftState))
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := m.storage.ApplySnapshot(rd.Snapshot); err != nil {
			return fmt.Errorf("applying a snapshot: %w", err)
		}
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := m.storage.SetHardState(rd.HardState); err != nil {
			return fmt.Errorf("setting the hard state: %w", err)
		}
	}
	if err := m.storage.Append(rd.Entries); err != nil {
		return fmt.Errorf("appending entries: %w", err)
	}
	s.Send(rd.Messages)
	for _, e := range rd.CommittedEntries {
		if err := m.apply(e); err != nil {
			return fmt.Errorf("entry %d: %w", e.GetIndex(), err)
		}
	}
	return nil
}

// apply records a committed entry and applies a configuration change.
func (m *Member) apply(e *raftpb.Entry) error {
	m.mu.Lock()
	m.committed = append(m.committed, e)
	if e.GetType() == raftpb.EntryNormal {
		m.applied = append(m.applied, Applied{Index: e.GetIndex(), Term: e.GetTerm(), Data: string(e.GetData())})
		if len(e.GetData()) > 0 {
			m.data[string(e.GetData())] = true
		}
	}
	m.mu.Unlock()
	switch e.GetType() {
	case raftpb.EntryConfChange:
		var cc raftpb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return fmt.Errorf("decoding a ConfChange: %w", err)
		}
		m.node.ApplyConfChange(&cc)
	case raftpb.EntryConfChangeV2:
		var cc raftpb.ConfChangeV2
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return fmt.Errorf("decoding a ConfChangeV2: %w", err)
		}
		m.node.ApplyConfChange(&cc)
	}
	return nil
}

// ID is the member's raft ID.
func (m *Member) ID() uint64 { return m.id }

// Node is the member's raft node, for proposals, leadership transfers and
// its status.
func (m *Member) Node() raft.Node { return m.node }

// Lead is the leader as the member last saw it (0: none).
func (m *Member) Lead() uint64 { return m.lead.Load() }

// State is the member's role as it last saw it.
func (m *Member) State() raft.StateType { return raft.StateType(m.state.Load()) }

// IsLeader says whether the member last saw itself lead.
func (m *Member) IsLeader() bool { return m.State() == raft.StateLeader }

// Storage is the member's storage: what a restart (Config.Storage) starts
// from.
func (m *Member) Storage() *raft.MemoryStorage { return m.storage }

// Committed returns every entry committed so far, of every type, in order.
func (m *Member) Committed() []*raftpb.Entry {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.committed)
}

// Applied returns the normal entries applied so far, in order, the empty
// ones raft appends on taking the lead included.
func (m *Member) Applied() []Applied {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.applied)
}

// Has says whether every datum has been applied, in a normal entry.
func (m *Member) Has(data ...string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, d := range data {
		if !m.data[d] {
			return false
		}
	}
	return true
}

// Err is what the Ready loop failed to persist or apply so far, joined;
// nil if nothing.
func (m *Member) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Process hands a received message to the node.
func (m *Member) Process(ctx context.Context, msg *raftpb.Message) error {
	return m.node.Step(ctx, msg)
}

// IsIDRemoved is false: these clusters never remove a member.
func (m *Member) IsIDRemoved(uint64) bool { return false }

// ReportUnreachable tells the node a message to id was lost.
func (m *Member) ReportUnreachable(id uint64) { m.node.ReportUnreachable(id) }

// ReportSnapshot tells the node how a snapshot sent to id fared.
func (m *Member) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	m.node.ReportSnapshot(id, status)
}

// Eventually polls cond every 5 ms until it holds, and fails the test if
// it still does not after timeout.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			if cond() { // it may have come true while the timer fired
				return
			}
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
	}
}
