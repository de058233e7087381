package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// Defaults of a member's configuration, which the command line can change.
const (
	// defaultClusterID is the cluster ID of a member not told another.
	// Members of clusters with another ID refuse our requests, and we
	// theirs.
	defaultClusterID = 0x6b76
	// defaultSnapshotEvery is how many applied entries trigger a snapshot.
	defaultSnapshotEvery = 1000
)

// memberConfig configures one member.
type memberConfig struct {
	// ID is the member's raft ID, non-zero.
	ID uint64
	// DataDir holds the member's bolt database and snapshot payloads. It is
	// created if missing.
	DataDir string
	// PeerListener is where the member serves the raft transport, and
	// PeerURL the URL the other members reach it at.
	PeerListener net.Listener
	PeerURL      string
	// Peers are the peer URLs of the cluster's initial members, this one
	// included. A new member bootstraps the cluster with them, unless Join
	// is set; in any case the transport adds them as peers.
	Peers map[uint64]string
	// Join makes a new member join an existing cluster (it must have been
	// added with a ConfChange) instead of bootstrapping one.
	Join bool
	// ClusterID is the cluster's ID, the same on every member. Zero means
	// defaultClusterID.
	ClusterID uint64

	// Tick is raft's tick; ElectionTicks and HeartbeatTicks count ticks.
	Tick                          time.Duration
	ElectionTicks, HeartbeatTicks int
	// SnapshotEvery is how many applied entries trigger a snapshot (zero:
	// defaultSnapshotEvery), and KeepEntries how many entries before it the
	// log keeps (zero: 100), so that a slightly lagging follower catches up
	// without a snapshot.
	SnapshotEvery, KeepEntries uint64

	// ConnReadTimeout and DialRetryMax are passed to the transport (zero:
	// its defaults).
	ConnReadTimeout, DialRetryMax time.Duration
	// Logger receives the transport's logs and raft's; nil means none.
	Logger *zap.Logger
	// Fatal is called with the message of a raft panic, before the panic.
	// The command line uses it to exit with one line instead of a stack
	// trace; nil means panic as raft does.
	Fatal func(msg string)
}

// withDefaults fills in zero fields.
func (c memberConfig) withDefaults() memberConfig {
	if c.Tick == 0 {
		c.Tick = 100 * time.Millisecond
	}
	if c.ElectionTicks == 0 {
		c.ElectionTicks = 10
	}
	if c.HeartbeatTicks == 0 {
		c.HeartbeatTicks = 1
	}
	if c.ClusterID == 0 {
		c.ClusterID = defaultClusterID
	}
	if c.SnapshotEvery == 0 {
		c.SnapshotEvery = defaultSnapshotEvery
	}
	if c.KeepEntries == 0 {
		c.KeepEntries = 100
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	return c
}

// Errors a member's operations return.
var (
	errStopped = errors.New("member stopped")
	errRemoved = errors.New("member was removed from the cluster")
)

// member is one raft member of the key-value store: a raft node, its
// durable storage, its transport behind an HTTP server, and the Ready loop
// that ties them together.
type member struct {
	cfg       memberConfig
	id        uint64
	disk      *diskStorage
	mem       *raft.MemoryStorage
	node      raft.Node
	tr        *rafthttp.Transport
	registry  *prometheus.Registry
	srv       *http.Server
	snapStore rafthttp.DirSnapshotStore
	state     *kvState
	errc      chan error // the transport's ErrorC

	// Owned by the Ready loop.
	confState    *raftpb.ConfState
	appliedIndex uint64
	snapIndex    uint64

	// Published by the Ready loop.
	applied   atomic.Uint64
	lead      atomic.Uint64
	raftState atomic.Uint64 // raft.StateType

	// What was reloaded from disk at start.
	fresh            bool   // nothing: a new data dir
	reloadedSnapshot uint64 // index of the snapshot reloaded, 0 if none
	reloadedEntries  int

	// Snapshot figures.
	snapshotsMade     atomic.Uint64
	snapshotsApplied  atomic.Uint64 // received from a leader
	lastSnapshotIndex atomic.Uint64 // last received snapshot's index
	lastSnapshotBytes atomic.Int64  // and its payload size
	snapshotSends     atomic.Uint64
	snapshotSendFails atomic.Uint64

	waitMu  sync.Mutex
	waiters map[uint64]chan struct{}

	stopc    chan struct{}
	done     chan struct{} // closed when the Ready loop has ended
	errMu    sync.Mutex
	err      error // why the Ready loop ended on its own
	stopOnce sync.Once
	wg       sync.WaitGroup // HTTP server and snapshot watchers
}

// snapDir is where a data directory keeps snapshot payloads, named as
// DirSnapshotStore names them: the transport stores received payloads
// there, and the member writes its own there too.
func snapDir(dataDir string) string { return filepath.Join(dataDir, "snap") }

// startMember opens (or creates) the member's data directory, reloads its
// state, and starts its raft node, transport, HTTP server and Ready loop.
// On error everything started is stopped again; the listener is closed in
// any case once the member stops.
func startMember(cfg memberConfig) (_ *member, err error) {
	cfg = cfg.withDefaults()
	m := &member{
		cfg: cfg, id: cfg.ID, mem: raft.NewMemoryStorage(), state: newKVState(),
		snapStore: rafthttp.DirSnapshotStore{Dir: snapDir(cfg.DataDir)},
		waiters:   map[uint64]chan struct{}{}, errc: make(chan error, 1),
		stopc: make(chan struct{}), done: make(chan struct{}),
	}
	var cleanup []func()
	defer func() {
		if err != nil {
			cfg.PeerListener.Close()
			for _, f := range slices.Backward(cleanup) {
				f()
			}
		}
	}()

	if fi, err := os.Stat(cfg.DataDir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("data dir %s is not a directory", cfg.DataDir)
	}
	if err := os.MkdirAll(m.snapStore.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	if m.disk, err = openStorage(filepath.Join(cfg.DataDir, dbFile)); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	cleanup = append(cleanup, func() { m.disk.close() })
	p, err := m.disk.load()
	if err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}
	switch {
	case p.id == 0:
		if err := m.disk.setID(cfg.ID); err != nil {
			return nil, fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
		}
	case p.id != cfg.ID:
		return nil, fmt.Errorf("data dir %s belongs to member %d, not %d", cfg.DataDir, p.id, cfg.ID)
	}
	if err := m.reload(p); err != nil {
		return nil, fmt.Errorf("data dir %s: %w", cfg.DataDir, err)
	}

	m.registry = prometheus.NewRegistry()
	m.tr = &rafthttp.Transport{
		ID: cfg.ID, ClusterID: cfg.ClusterID, URLs: []string{cfg.PeerURL}, Raft: m,
		Logger: cfg.Logger, ErrorC: m.errc, SnapshotStore: m.snapStore, Registerer: m.registry,
		ConnReadTimeout: cfg.ConnReadTimeout, DialRetryMax: cfg.DialRetryMax,
	}
	if m.tr.DialRetryMax != 0 && m.tr.DialRetryMax < rafthttp.DefaultDialRetryMin {
		m.tr.DialRetryMin = m.tr.DialRetryMax
	}
	if err := m.tr.Start(); err != nil {
		return nil, err
	}
	cleanup = append(cleanup, m.tr.Stop)

	rc := &raft.Config{
		ID:              cfg.ID,
		ElectionTick:    cfg.ElectionTicks,
		HeartbeatTick:   cfg.HeartbeatTicks,
		Storage:         m.mem,
		Applied:         m.appliedIndex,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		CheckQuorum:     true,
		PreVote:         true,
		Logger:          &raftLogger{lg: cfg.Logger.Sugar(), fatal: cfg.Fatal},
	}
	if p.fresh() && !cfg.Join {
		var peers []raft.Peer
		for _, id := range slices.Sorted(maps.Keys(cfg.Peers)) {
			peers = append(peers, raft.Peer{ID: id, Context: []byte(cfg.Peers[id])})
		}
		m.node = raft.StartNode(rc, peers)
	} else {
		m.node = raft.RestartNode(rc)
	}
	cleanup = append(cleanup, m.node.Stop)

	// Talk to every member we know of: the initial ones and those the
	// reloaded state knows. Conf changes add the others as they apply.
	peers := m.state.memberURLs()
	for id, u := range cfg.Peers {
		if _, ok := peers[id]; !ok {
			peers[id] = u
		}
	}
	for id, u := range peers {
		if id == cfg.ID || m.state.isRemoved(id) {
			continue
		}
		if err := m.tr.AddPeer(id, []string{u}); err != nil {
			return nil, fmt.Errorf("peer %d: %w", id, err)
		}
	}

	mux := http.NewServeMux()
	h := m.tr.Handler()
	mux.Handle("/raft", h)
	mux.Handle("/raft/", h)
	// The transport's server recipe: header and idle timeouts that cut off
	// slow and idle clients, and none that would cut a stream.
	m.srv = rafthttp.NewServer(mux)
	lis := cfg.PeerListener
	m.wg.Go(func() { m.srv.Serve(lis) })
	go m.run()
	return m, nil
}

// reload rebuilds the member's state from what was persisted: raft's
// MemoryStorage from the snapshot, HardState and entries, and the key-value
// state from the snapshot's payload. Committed entries after the snapshot
// are applied again by the Ready loop, as raft hands them over (Config.Applied
// is the snapshot's index).
func (m *member) reload(p persisted) error {
	m.fresh = p.fresh()
	if p.snapshot != nil {
		idx := p.snapshot.GetMetadata().GetIndex()
		st, err := m.readPayload(idx)
		if err != nil {
			return err
		}
		m.state.replace(st)
		if err := m.mem.ApplySnapshot(p.snapshot); err != nil {
			return fmt.Errorf("snapshot %d: %w", idx, err)
		}
		m.confState = cloneConfState(p.snapshot.GetMetadata().GetConfState())
		m.appliedIndex, m.snapIndex, m.reloadedSnapshot = idx, idx, idx
		m.applied.Store(idx)
	}
	if p.hardState != nil {
		if err := m.mem.SetHardState(p.hardState); err != nil {
			return err
		}
	}
	m.reloadedEntries = len(p.entries)
	return m.mem.Append(p.entries)
}

// readPayload reads and decodes the snapshot payload of index.
func (m *member) readPayload(index uint64) (*kvState, error) {
	b, err := os.ReadFile(m.snapStore.Path(index))
	if err != nil {
		return nil, fmt.Errorf("payload of snapshot %d: %w", index, err)
	}
	st, err := decodeState(b)
	if err != nil {
		return nil, fmt.Errorf("payload of snapshot %d: %w", index, err)
	}
	return st, nil
}

// Process implements rafthttp.Raft.
func (m *member) Process(ctx context.Context, msg *raftpb.Message) error {
	return m.node.Step(ctx, msg)
}

// IsIDRemoved implements rafthttp.Raft.
func (m *member) IsIDRemoved(id uint64) bool { return m.state.isRemoved(id) }

// ReportUnreachable implements rafthttp.Raft.
func (m *member) ReportUnreachable(id uint64) { m.node.ReportUnreachable(id) }

// ReportSnapshot implements rafthttp.Raft.
func (m *member) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	m.node.ReportSnapshot(id, status)
}

// run is the Ready loop: it ticks raft, and persists, sends and applies
// each Ready in the order raft's contract prescribes.
func (m *member) run() {
	defer close(m.done)
	ticker := time.NewTicker(m.cfg.Tick)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			m.node.Tick()
		case rd := <-m.node.Ready():
			if err := m.handleReady(rd); err != nil {
				m.setErr(err)
				return
			}
			m.node.Advance()
		case err := <-m.errc:
			m.setErr(err)
			return
		case <-m.stopc:
			return
		}
	}
}

func (m *member) setErr(err error) {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	if m.err == nil {
		m.err = err
	}
}

// Err returns why the member's Ready loop ended on its own, if it did.
func (m *member) Err() error {
	m.errMu.Lock()
	defer m.errMu.Unlock()
	return m.err
}

// Done is closed when the member's Ready loop has ended, on Stop or on a
// fatal error (see Err).
func (m *member) Done() <-chan struct{} { return m.done }

func (m *member) handleReady(rd raft.Ready) error {
	if rd.SoftState != nil {
		m.lead.Store(rd.SoftState.Lead)
		m.raftState.Store(uint64(rd.SoftState.RaftState))
	}
	// A snapshot from the leader: its payload is already durable in the
	// snap directory (the transport stores it before raft sees the
	// MsgSnap). Decode it before persisting anything, so that a bad one is
	// refused whole.
	var restored *kvState
	if !raft.IsEmptySnap(rd.Snapshot) {
		var err error
		if restored, err = m.readPayload(rd.Snapshot.GetMetadata().GetIndex()); err != nil {
			return err
		}
	}
	// Persist (fsynced), then update the in-memory log, then send.
	if err := m.disk.save(rd.HardState, rd.Entries, rd.Snapshot); err != nil {
		return fmt.Errorf("persisting raft state: %w", err)
	}
	if restored != nil {
		if err := m.mem.ApplySnapshot(rd.Snapshot); err != nil {
			return fmt.Errorf("applying snapshot: %w", err)
		}
		m.restore(rd.Snapshot, restored)
	}
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := m.mem.SetHardState(rd.HardState); err != nil {
			return err
		}
	}
	if err := m.mem.Append(rd.Entries); err != nil {
		return fmt.Errorf("appending entries: %w", err)
	}
	m.send(rd.Messages)
	removed, err := m.apply(rd.CommittedEntries)
	if err != nil {
		return err
	}
	if err := m.maybeSnapshot(); err != nil {
		return fmt.Errorf("snapshot: %w", err)
	}
	if removed {
		return errRemoved
	}
	return nil
}

// restore replaces the state machine with a snapshot received from the
// leader, and adds the peers it knows of.
func (m *member) restore(snap *raftpb.Snapshot, st *kvState) {
	idx := snap.GetMetadata().GetIndex()
	m.state.replace(st)
	m.confState = cloneConfState(snap.GetMetadata().GetConfState())
	m.appliedIndex, m.snapIndex = idx, idx
	m.applied.Store(idx)
	m.snapshotsApplied.Add(1)
	m.lastSnapshotIndex.Store(idx)
	if fi, err := os.Stat(m.snapStore.Path(idx)); err == nil {
		m.lastSnapshotBytes.Store(fi.Size())
	}
	for id, u := range st.memberURLs() {
		if id != m.id {
			m.addPeer(id, u)
		}
	}
	m.cfg.Logger.Info("applied snapshot from leader", zap.Uint64("index", idx))
}

// send hands the messages to the transport, except MsgSnap, which goes
// with its payload through SendSnapshot, as etcd does. The transport
// reports the snapshot's outcome to raft.
func (m *member) send(msgs []*raftpb.Message) {
	out := make([]*raftpb.Message, 0, len(msgs))
	for _, msg := range msgs {
		if msg.GetType() == raftpb.MsgSnap {
			m.sendSnapshot(msg)
			continue
		}
		out = append(out, msg)
	}
	m.tr.Send(out)
}

// sendSnapshot sends the state as of the last applied entry, as etcd's
// merged snapshots do, rather than the stored snapshot raft names: that one
// may predate the ConfChange that added the recipient, and raft refuses a
// snapshot whose ConfState lacks the member restoring it. The leader's raft
// accepts the newer index when the follower answers.
func (m *member) sendSnapshot(msg *raftpb.Message) {
	to := msg.GetTo()
	term, err := m.mem.Term(m.appliedIndex)
	var data []byte
	if err == nil {
		data, err = m.state.encode()
	}
	if err != nil {
		m.cfg.Logger.Warn("cannot send snapshot", zap.Uint64("to", to), zap.Error(err))
		m.snapshotSendFails.Add(1)
		m.node.ReportSnapshot(to, raft.SnapshotFailure)
		return
	}
	merged := proto.Clone(msg).(*raftpb.Message)
	merged.Snapshot = &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
		Index: proto.Uint64(m.appliedIndex), Term: proto.Uint64(term),
		ConfState: cloneConfState(m.confState),
	}}
	m.snapshotSends.Add(1)
	errc := m.tr.SendSnapshot(rafthttp.SnapshotMessage{
		Message: merged, Payload: io.NopCloser(bytes.NewReader(data)), PayloadSize: int64(len(data)),
	})
	// The transport always delivers the outcome, at the latest when it
	// stops, so this goroutine ends before Stop returns.
	m.wg.Go(func() {
		if err := <-errc; err != nil {
			m.snapshotSendFails.Add(1)
		}
	})
}

// addPeer adds a member to the transport, logging failures.
func (m *member) addPeer(id uint64, u string) {
	if err := m.tr.AddPeer(id, []string{u}); err != nil && !errors.Is(err, rafthttp.ErrStopped) {
		m.cfg.Logger.Warn("cannot add peer", zap.Uint64("peer", id), zap.String("url", u), zap.Error(err))
	}
}

// apply applies committed entries to the state machine and tells waiting
// proposers. It reports whether this member was removed.
func (m *member) apply(ents []*raftpb.Entry) (removed bool, err error) {
	for _, e := range ents {
		idx := e.GetIndex()
		if idx <= m.appliedIndex {
			continue
		}
		switch e.GetType() {
		case raftpb.EntryNormal:
			if len(e.GetData()) == 0 {
				break // raft's empty entry of a new term
			}
			var c command
			if err := json.Unmarshal(e.GetData(), &c); err != nil {
				return false, fmt.Errorf("entry %d: %w", idx, err)
			}
			if err := m.state.apply(c); err != nil {
				return false, fmt.Errorf("entry %d: %w", idx, err)
			}
			m.notify(c.ID)
		case raftpb.EntryConfChange, raftpb.EntryConfChangeV2:
			var cc raftpb.ConfChangeI
			var proposal uint64
			if e.GetType() == raftpb.EntryConfChange {
				var v1 raftpb.ConfChange
				if err := proto.Unmarshal(e.GetData(), &v1); err != nil {
					return false, fmt.Errorf("entry %d: ConfChange: %w", idx, err)
				}
				cc, proposal = &v1, v1.GetId()
			} else {
				var v2 raftpb.ConfChangeV2
				if err := proto.Unmarshal(e.GetData(), &v2); err != nil {
					return false, fmt.Errorf("entry %d: ConfChangeV2: %w", idx, err)
				}
				cc = &v2
			}
			m.confState = cloneConfState(m.node.ApplyConfChange(cc))
			v2 := cc.AsV2()
			for _, c := range v2.GetChanges() {
				if m.applyMembership(c.GetType(), c.GetNodeId(), string(v2.GetContext())) {
					removed = true
				}
			}
			m.notify(proposal)
		}
		m.appliedIndex = idx
	}
	m.applied.Store(m.appliedIndex)
	return removed, nil
}

// applyMembership updates the members' URLs and the transport's peers
// after a conf change of member id, whose Context is url. It reports whether
// this member was removed.
func (m *member) applyMembership(typ raftpb.ConfChangeType, id uint64, url string) (removedSelf bool) {
	switch typ {
	case raftpb.ConfChangeAddNode, raftpb.ConfChangeAddLearnerNode:
		if url != "" && !m.state.isRemoved(id) {
			m.state.addMember(id, url)
			if id != m.id {
				m.addPeer(id, url)
			}
		}
	case raftpb.ConfChangeRemoveNode:
		m.state.removeMember(id)
		if id == m.id {
			return true
		}
		m.tr.RemovePeer(id)
	case raftpb.ConfChangeUpdateNode:
		if url != "" {
			m.state.addMember(id, url)
			if id != m.id {
				if err := m.tr.UpdatePeer(id, []string{url}); err != nil {
					m.cfg.Logger.Warn("cannot update peer", zap.Uint64("peer", id), zap.Error(err))
				}
			}
		}
	}
	return false
}

// cloneConfState returns a copy of cs, empty if cs is nil.
func cloneConfState(cs *raftpb.ConfState) *raftpb.ConfState {
	if cs == nil {
		return &raftpb.ConfState{}
	}
	return proto.Clone(cs).(*raftpb.ConfState)
}

// maybeSnapshot makes a snapshot every SnapshotEvery applied entries: the
// payload file first (fsynced), then the metadata in the database, then
// the log is compacted, keeping KeepEntries entries for lagging followers.
func (m *member) maybeSnapshot() error {
	if m.appliedIndex-m.snapIndex < m.cfg.SnapshotEvery {
		return nil
	}
	idx := m.appliedIndex
	data, err := m.state.encode()
	if err != nil {
		return err
	}
	// Write the payload exactly as a received one would be: through the
	// snapshot store, which fsyncs and renames it into place.
	envelope := &raftpb.Message{Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(idx)}}}
	if err := m.snapStore.SaveSnapshot(context.Background(), envelope, bytes.NewReader(data)); err != nil {
		return err
	}
	snap, err := m.mem.CreateSnapshot(idx, m.confState, nil)
	if err != nil {
		return err
	}
	first, err := m.mem.FirstIndex()
	if err != nil {
		return err
	}
	compact := first
	if idx > m.cfg.KeepEntries && idx-m.cfg.KeepEntries > first {
		compact = idx - m.cfg.KeepEntries
	}
	if err := m.disk.saveSnapshot(snap, first, compact); err != nil {
		return err
	}
	if compact > first {
		if err := m.mem.Compact(compact); err != nil {
			return err
		}
	}
	m.snapIndex = idx
	m.snapshotsMade.Add(1)
	m.purgeSnapshots(idx)
	return nil
}

// purgeSnapshots removes payload files older than the two newest, keeping
// keep whatever happens.
func (m *member) purgeSnapshots(keep uint64) {
	names, err := filepath.Glob(filepath.Join(m.snapStore.Dir, "*.snap.db"))
	if err != nil {
		return
	}
	slices.Sort(names) // %016x names sort by index
	if len(names) <= 2 {
		return
	}
	for _, n := range names[:len(names)-2] {
		if n != m.snapStore.Path(keep) {
			os.Remove(n)
		}
	}
}

// wait registers a waiter for the proposal id.
func (m *member) wait(id uint64) chan struct{} {
	ch := make(chan struct{})
	m.waitMu.Lock()
	m.waiters[id] = ch
	m.waitMu.Unlock()
	return ch
}

func (m *member) unwait(id uint64) {
	m.waitMu.Lock()
	delete(m.waiters, id)
	m.waitMu.Unlock()
}

// notify wakes the waiter of proposal id, if this member has one.
func (m *member) notify(id uint64) {
	m.waitMu.Lock()
	ch, ok := m.waiters[id]
	delete(m.waiters, id)
	m.waitMu.Unlock()
	if ok {
		close(ch)
	}
}

// newProposalID returns a random non-zero proposal ID.
func newProposalID() uint64 {
	for {
		if id := rand.Uint64(); id != 0 {
			return id
		}
	}
}

// awaitApplied waits until the proposal registered as ch is applied here.
func (m *member) awaitApplied(ctx context.Context, ch chan struct{}) error {
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-m.done:
		if err := m.Err(); err != nil {
			return err
		}
		return errStopped
	}
}

// propose proposes a command and waits until this member has applied it.
// Proposals through a follower are forwarded to the leader by raft.
func (m *member) propose(ctx context.Context, c command) error {
	c.ID = newProposalID()
	data, err := json.Marshal(c)
	if err != nil {
		return err
	}
	ch := m.wait(c.ID)
	defer m.unwait(c.ID)
	if err := m.node.Propose(ctx, data); err != nil {
		return err
	}
	return m.awaitApplied(ctx, ch)
}

// Put sets key to value through raft and returns once it is applied here.
func (m *member) Put(ctx context.Context, key, value string) error {
	return m.propose(ctx, command{Op: opPut, Key: key, Value: value})
}

// Delete deletes key through raft and returns once it is applied here.
func (m *member) Delete(ctx context.Context, key string) error {
	return m.propose(ctx, command{Op: opDelete, Key: key})
}

// Get returns key's value as this member has applied it (a local, possibly
// stale, read).
func (m *member) Get(key string) (string, bool) { return m.state.get(key) }

// changeMembership proposes a ConfChange and waits until it is applied here.
func (m *member) changeMembership(ctx context.Context, typ raftpb.ConfChangeType, id uint64, url string) error {
	cc := &raftpb.ConfChange{Type: typ.Enum(), NodeId: proto.Uint64(id), Id: proto.Uint64(newProposalID())}
	if url != "" {
		cc.Context = []byte(url)
	}
	ch := m.wait(cc.GetId())
	defer m.unwait(cc.GetId())
	if err := m.node.ProposeConfChange(ctx, cc); err != nil {
		return err
	}
	return m.awaitApplied(ctx, ch)
}

// AddMember adds member id, reachable at url, to the cluster.
func (m *member) AddMember(ctx context.Context, id uint64, url string) error {
	return m.changeMembership(ctx, raftpb.ConfChangeAddNode, id, url)
}

// RemoveMember removes member id from the cluster.
func (m *member) RemoveMember(ctx context.Context, id uint64) error {
	return m.changeMembership(ctx, raftpb.ConfChangeRemoveNode, id, "")
}

// Leader returns the leader this member knows of (0 if none).
func (m *member) Leader() uint64 { return m.lead.Load() }

// IsLeader reports whether this member is the leader.
func (m *member) IsLeader() bool { return raft.StateType(m.raftState.Load()) == raft.StateLeader }

// Applied returns the index of the last entry applied.
func (m *member) Applied() uint64 { return m.applied.Load() }

// Term returns the member's current term.
func (m *member) Term() uint64 { return m.node.Status().GetTerm() }

// Stop stops the member as a crash would, but cleanly: the Ready loop, the
// raft node, the transport, the HTTP server, then the database. Everything
// acknowledged before is on disk. Idempotent.
func (m *member) Stop() {
	m.stopOnce.Do(func() {
		close(m.stopc)
		<-m.done
		m.node.Stop()
		m.tr.Stop()
		m.srv.Close()
		m.wg.Wait()
		if err := m.disk.close(); err != nil {
			m.setErr(fmt.Errorf("closing the database: %w", err))
		}
	})
}

// raftLogger adapts raft's logger to zap. Panics keep raft's semantics
// (raft relies on them not returning) but can first report through fatal.
type raftLogger struct {
	lg    *zap.SugaredLogger
	fatal func(msg string)
}

func (l *raftLogger) Debug(v ...any)                 { l.lg.Debug(v...) }
func (l *raftLogger) Debugf(format string, v ...any) { l.lg.Debugf(format, v...) }
func (l *raftLogger) Info(v ...any)                  { l.lg.Info(v...) }
func (l *raftLogger) Infof(format string, v ...any)  { l.lg.Infof(format, v...) }
func (l *raftLogger) Warning(v ...any)               { l.lg.Warn(v...) }
func (l *raftLogger) Warningf(format string, v ...any) {
	l.lg.Warnf(format, v...)
}
func (l *raftLogger) Error(v ...any)                 { l.lg.Error(v...) }
func (l *raftLogger) Errorf(format string, v ...any) { l.lg.Errorf(format, v...) }
func (l *raftLogger) Fatal(v ...any)                 { l.die(fmt.Sprint(v...)) }
func (l *raftLogger) Fatalf(format string, v ...any) { l.die(fmt.Sprintf(format, v...)) }
func (l *raftLogger) Panic(v ...any)                 { l.die(fmt.Sprint(v...)) }
func (l *raftLogger) Panicf(format string, v ...any) { l.die(fmt.Sprintf(format, v...)) }

func (l *raftLogger) die(msg string) {
	if l.fatal != nil {
		l.fatal(msg)
	}
	panic(msg)
}
