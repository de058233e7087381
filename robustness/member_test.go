package robustness

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
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

// How a member compacts its log: a snapshot every snapshotEvery entries
// applied, keeping keepEntries before it. Aggressive on purpose: a member
// cut off for a second, or restarted, catches up by snapshot.
const (
	snapshotEvery = 40
	keepEntries   = 10
)

// How snapshots travel (runConfig.SnapPath).
const (
	// snapSend is etcd's way: the MsgSnap without its data goes through
	// Transport.SendSnapshot, with the state as the payload, which the
	// receiver's DirSnapshotStore keeps until raft applies the snapshot.
	snapSend = "sendsnapshot"
	// snapInline is raftexample's: the MsgSnap carries the state in its
	// data, and leaves through Send like any message (by the pipeline).
	snapInline = "inline"
)

// errStopped fails the requests a member had when it stopped.
var errStopped = errors.New("member stopped")

// disk is what a member keeps across a restart, as a disk would: raft's
// storage (hard state, entries, snapshot with the state machine in its
// data) and the directory of its snapshot store. A member persists before
// it sends (handleReady), so what is here is what a crash leaves.
type disk struct {
	storage *raft.MemoryStorage
	snapDir string
}

// writeResult is the outcome of a write, as the member applied it.
type writeResult struct{ ok bool }

// node is one incarnation of a member: a raft node on the member's disk,
// its Ready loop, its transport and its HTTP server. A restart is a new
// node on the same disk and address.
type node struct {
	c    *cluster
	id   uint64
	disk *disk
	addr string // host:port the server listens on

	rn      raft.Node
	tr      *rafthttp.Transport
	reg     *prometheus.Registry
	srv     *http.Server
	served  chan struct{} // closed when srv.Serve returned
	stopc   chan struct{} // closed by stop: the Ready loop ends
	done    chan struct{} // closed when the Ready loop ended
	freezec chan chan struct{}
	trDone  chan struct{} // closed once the transport has stopped
	snapWG  sync.WaitGroup
	stopped sync.Once

	lead          atomic.Uint64
	role          atomic.Uint64 // raft.StateType
	snapsInFlight atomic.Int64  // SendSnapshots whose outcome is not in

	mu        sync.Mutex
	state     *kvState
	confState *raftpb.ConfState
	snapIndex uint64
	writes    map[uint64]chan writeResult
	reads     map[uint64]chan uint64
	applied   chan struct{} // closed and replaced when state.Index moves
	readSeq   uint64
}

// startNode starts an incarnation of member id on d, listening on addr
// ("" for a new port): a new member of a new cluster of peers if d is
// empty, else a restart from d.
func startNode(c *cluster, id uint64, d *disk, addr string, peers []uint64) (*node, error) {
	n := &node{c: c, id: id, disk: d, stopc: make(chan struct{}), done: make(chan struct{}),
		freezec: make(chan chan struct{}), trDone: make(chan struct{}), served: make(chan struct{}),
		writes: map[uint64]chan writeResult{}, reads: map[uint64]chan uint64{}, applied: make(chan struct{})}
	restart := !isEmptyStorage(d.storage)
	if err := n.recover(); err != nil {
		return nil, err
	}
	ln, err := listen(addr)
	if err != nil {
		return nil, fmt.Errorf("member %d: %w", id, err)
	}
	n.addr = ln.Addr().String()
	rc := &raft.Config{
		ID:              id,
		ElectionTick:    c.cfg.electionTick(),
		HeartbeatTick:   3,
		Storage:         d.storage,
		MaxSizePerMsg:   64 << 10,
		MaxInflightMsgs: 64,
		CheckQuorum:     true,
		PreVote:         true,
		Logger:          &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)},
	}
	if restart {
		n.rn = raft.RestartNode(rc)
	} else {
		rp := make([]raft.Peer, 0, len(peers))
		for _, p := range peers {
			rp = append(rp, raft.Peer{ID: p})
		}
		n.rn = raft.StartNode(rc, rp)
	}
	n.reg = prometheus.NewRegistry()
	n.tr = &rafthttp.Transport{
		ID: id, ClusterID: 0x7262, URLs: []string{"http://" + n.addr}, Raft: n,
		Logger: c.logger.With(zap.Uint64("member", id)), Registerer: n.reg,
		SnapshotStore:    rafthttp.DirSnapshotStore{Dir: d.snapDir},
		DialTimeout:      time.Second,
		ConnReadTimeout:  connReadTimeout,
		ConnWriteTimeout: 2 * connReadTimeout,
		PipelineTimeout:  2 * connReadTimeout,
		DialRetryMin:     10 * time.Millisecond,
		DialRetryMax:     200 * time.Millisecond,
	}
	if err := n.tr.Start(); err != nil {
		n.rn.Stop()
		ln.Close()
		return nil, fmt.Errorf("member %d: %w", id, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/raft", n.tr.Handler())
	mux.Handle("/raft/", n.tr.Handler())
	n.srv = rafthttp.NewServer(mux)
	go func() {
		defer close(n.served)
		_ = n.srv.Serve(ln) // http.ErrServerClosed at stop
	}()
	return n, nil
}

// connReadTimeout is the transports' ConnReadTimeout: a stalled stream is
// dropped after it. Long enough that a loaded two-core machine running the
// race detector does not drop healthy streams.
const connReadTimeout = time.Second

// isEmptyStorage says whether s is a new member's storage.
func isEmptyStorage(s *raft.MemoryStorage) bool {
	hs, _, _ := s.InitialState()
	last, _ := s.LastIndex()
	return raft.IsEmptyHardState(hs) && last == 0
}

// listen listens on addr, or on a new port of 127.0.0.1 if addr is "". A
// restarted member's address may still be held for a moment by the
// connections of its last incarnation, so it is tried for a while.
func listen(addr string) (net.Listener, error) {
	if addr == "" {
		return net.Listen("tcp", "127.0.0.1:0")
	}
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ln, err := net.Listen("tcp", addr)
		if err == nil || time.Now().After(deadline) {
			return ln, err
		}
		<-tick.C
	}
}

// recover rebuilds the state machine from the disk's snapshot; raft then
// hands the committed entries after it to the Ready loop again.
func (n *node) recover() error {
	snap, err := n.disk.storage.Snapshot()
	if err != nil {
		return err
	}
	st, err := decodeKVState(snap.GetData())
	if err != nil {
		return fmt.Errorf("member %d: %w", n.id, err)
	}
	n.state = st
	n.snapIndex = snap.GetMetadata().GetIndex()
	n.confState = proto.Clone(snap.GetMetadata().GetConfState()).(*raftpb.ConfState)
	if n.state.Index < n.snapIndex {
		n.state.Index = n.snapIndex
	}
	return nil
}

// run is the Ready loop.
func (n *node) run() {
	defer close(n.done)
	ticker := time.NewTicker(raftTick)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			n.rn.Tick()
		case rd := <-n.rn.Ready():
			if err := n.handleReady(rd); err != nil {
				n.c.violate("member", fmt.Sprintf("member %d: %v", n.id, err))
			}
			n.rn.Advance()
		case resume := <-n.freezec:
			select {
			case <-resume:
			case <-n.stopc:
				return
			}
		case <-n.stopc:
			return
		}
	}
}

// raftTick is the raft tick of the members.
const raftTick = 10 * time.Millisecond

// freeze parks the Ready loop between two Readys, so that the member sends
// nothing and its raft does not tick, until resume is closed. Received
// messages are still stepped.
func (n *node) freeze() (resume chan struct{}) {
	resume = make(chan struct{})
	select {
	case n.freezec <- resume:
	case <-n.done:
	}
	return resume
}

// handleReady persists, sends and applies one Ready, in raft's order.
func (n *node) handleReady(rd raft.Ready) error {
	if rd.SoftState != nil {
		n.lead.Store(rd.SoftState.Lead)
		n.role.Store(uint64(rd.SoftState.RaftState))
	}
	if !raft.IsEmptySnap(rd.Snapshot) {
		if err := n.installSnapshot(rd.Snapshot); err != nil {
			return err
		}
	}
	if rd.HardState != nil && !raft.IsEmptyHardState(rd.HardState) {
		if err := n.disk.storage.SetHardState(rd.HardState); err != nil {
			return fmt.Errorf("hard state: %w", err)
		}
	}
	if err := n.disk.storage.Append(rd.Entries); err != nil {
		return fmt.Errorf("appending: %w", err)
	}
	n.readStates(rd.ReadStates)
	n.send(rd.Messages)
	for _, e := range rd.CommittedEntries {
		if err := n.apply(e); err != nil {
			return err
		}
	}
	return n.maybeCompact()
}

// installSnapshot makes a snapshot from the leader the member's state: on
// disk first, then in the state machine.
func (n *node) installSnapshot(snap *raftpb.Snapshot) error {
	idx := snap.GetMetadata().GetIndex()
	data := snap.GetData()
	if len(data) == 0 {
		// Sent with SendSnapshot: the payload is in the store.
		var err error
		if data, err = os.ReadFile(rafthttp.DirSnapshotStore{Dir: n.disk.snapDir}.Path(idx)); err != nil {
			return fmt.Errorf("payload of snapshot %d: %w", idx, err)
		}
		snap = proto.Clone(snap).(*raftpb.Snapshot)
		snap.Data = data
	}
	st, err := decodeKVState(data)
	if err != nil {
		return fmt.Errorf("snapshot %d: %w", idx, err)
	}
	if err := n.disk.storage.ApplySnapshot(snap); err != nil {
		return fmt.Errorf("applying snapshot %d: %w", idx, err)
	}
	n.mu.Lock()
	n.state = st
	n.snapIndex = idx
	n.confState = proto.Clone(snap.GetMetadata().GetConfState()).(*raftpb.ConfState)
	for id, ch := range n.writes {
		if ok, done := st.Results[id]; done {
			ch <- writeResult{ok}
			delete(n.writes, id)
		}
	}
	n.advancedLocked()
	n.mu.Unlock()
	n.c.snapshotsInstalled.Add(1)
	return nil
}

// apply applies a committed entry and answers the write that waits for it.
func (n *node) apply(e *raftpb.Entry) error {
	switch e.GetType() {
	case raftpb.EntryConfChange:
		var cc raftpb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return fmt.Errorf("entry %d: a ConfChange: %w", e.GetIndex(), err)
		}
		cs := n.rn.ApplyConfChange(&cc)
		n.mu.Lock()
		n.confState = cs
		n.mu.Unlock()
	case raftpb.EntryConfChangeV2:
		var cc raftpb.ConfChangeV2
		if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
			return fmt.Errorf("entry %d: a ConfChangeV2: %w", e.GetIndex(), err)
		}
		cs := n.rn.ApplyConfChange(&cc)
		n.mu.Lock()
		n.confState = cs
		n.mu.Unlock()
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if e.GetIndex() <= n.state.Index {
		return nil // covered by a snapshot the member restored
	}
	if e.GetIndex() != n.state.Index+1 {
		return fmt.Errorf("entry %d applied after entry %d", e.GetIndex(), n.state.Index)
	}
	if id, ok, isCmd := n.state.apply(e); isCmd {
		if ch := n.writes[id]; ch != nil {
			ch <- writeResult{ok}
			delete(n.writes, id)
		}
	}
	n.advancedLocked()
	return nil
}

// advancedLocked wakes whoever waits for the applied index to move.
func (n *node) advancedLocked() {
	close(n.applied)
	n.applied = make(chan struct{})
}

// maybeCompact snapshots the state and compacts the log every
// snapshotEvery entries.
func (n *node) maybeCompact() error {
	n.mu.Lock()
	idx := n.state.Index
	if idx < n.snapIndex+snapshotEvery {
		n.mu.Unlock()
		return nil
	}
	data, err := n.state.encode()
	cs := proto.Clone(n.confState).(*raftpb.ConfState)
	n.mu.Unlock()
	if err != nil {
		return err
	}
	if _, err := n.disk.storage.CreateSnapshot(idx, cs, data); err != nil {
		if errors.Is(err, raft.ErrSnapOutOfDate) {
			return nil
		}
		return fmt.Errorf("snapshot at %d: %w", idx, err)
	}
	n.mu.Lock()
	n.snapIndex = idx
	n.mu.Unlock()
	if idx > keepEntries {
		if err := n.disk.storage.Compact(idx - keepEntries); err != nil && !errors.Is(err, raft.ErrCompacted) {
			return fmt.Errorf("compacting to %d: %w", idx-keepEntries, err)
		}
	}
	return nil
}

// readStates answers the reads whose index raft confirmed.
func (n *node) readStates(rs []raft.ReadState) {
	if len(rs) == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, r := range rs {
		if len(r.RequestCtx) != 8 {
			continue
		}
		id := binary.BigEndian.Uint64(r.RequestCtx)
		if ch := n.reads[id]; ch != nil {
			ch <- r.Index
			delete(n.reads, id)
		}
	}
}

// propose proposes a write and waits until this member applied it. An
// error leaves the outcome unknown.
func (n *node) propose(ctx context.Context, c command) (bool, error) {
	data, err := json.Marshal(c)
	if err != nil {
		return false, err
	}
	ch := make(chan writeResult, 1)
	n.mu.Lock()
	n.writes[c.ID] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.writes, c.ID)
		n.mu.Unlock()
	}()
	if err := n.rn.Propose(ctx, data); err != nil {
		return false, err
	}
	select {
	case r := <-ch:
		return r.ok, nil
	case <-ctx.Done():
		return false, ctx.Err()
	case <-n.stopc:
		return false, errStopped
	}
}

// read is a linearizable read: it asks raft for a read index (ReadIndex,
// which the leader confirms with a quorum), waits until this member has
// applied up to it, and reads the local state.
func (n *node) read(ctx context.Context, key string) (string, error) {
	ch := make(chan uint64, 1)
	n.mu.Lock()
	n.readSeq++
	id := n.readSeq
	n.reads[id] = ch
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.reads, id)
		n.mu.Unlock()
	}()
	var rctx [8]byte
	binary.BigEndian.PutUint64(rctx[:], id)
	if err := n.rn.ReadIndex(ctx, rctx[:]); err != nil {
		return "", err
	}
	var idx uint64
	select {
	case idx = <-ch:
	case <-ctx.Done():
		return "", ctx.Err()
	case <-n.stopc:
		return "", errStopped
	}
	for {
		n.mu.Lock()
		if n.state.Index >= idx {
			v := n.state.KV[key]
			n.mu.Unlock()
			return v, nil
		}
		moved := n.applied
		n.mu.Unlock()
		select {
		case <-moved:
		case <-ctx.Done():
			return "", ctx.Err()
		case <-n.stopc:
			return "", errStopped
		}
	}
}

// snapshotState returns a copy of the state machine.
func (n *node) snapshotState() *kvState {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state.clone()
}

// appliedIndex returns the index of the last entry applied.
func (n *node) appliedIndex() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.state.Index
}

// stop ends the incarnation as a crash would, but cleanly: the Ready loop,
// the raft node, the transport (which waits for its goroutines), the HTTP
// server, then the watchers of snapshot outcomes. Requests waiting on the
// member fail with errStopped. Idempotent.
func (n *node) stop() {
	n.stopped.Do(func() {
		close(n.stopc)
		<-n.done
		n.rn.Stop()
		n.tr.Stop()
		close(n.trDone)
		n.srv.Close()
		<-n.served
		n.snapWG.Wait()
	})
}
