package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// commit is a batch of committed entries for the key-value store, which
// closes applyDoneC once it has applied them.
type commit struct {
	data       []string
	applyDoneC chan<- struct{}
}

// raftNode is raftexample's raft member: it turns proposals into a stream
// of committed entries, through a raft.Node, a write-ahead log, a snapshot
// directory and the rafthttp transport.
type raftNode struct {
	proposeC    <-chan string             // writes to propose, gob-encoded kv
	confChangeC <-chan *raftpb.ConfChange // membership changes to propose
	commitC     chan<- *commit            // committed writes, nil for a snapshot to load
	errorC      chan<- error              // why raft stopped, if it failed

	id          int      // this member's raft ID
	peers       []string // peer URLs of members 1 to n, from --cluster
	join        bool     // join a running cluster rather than start one
	waldir      string   // the write-ahead log's directory
	snapdir     string   // snapshot payloads' directory
	getSnapshot func() ([]byte, error)

	confState     *raftpb.ConfState
	snapshotIndex uint64
	appliedIndex  uint64

	node        raft.Node
	raftStorage *raft.MemoryStorage
	wal         *wal

	snapshotter      *snapshotter
	snapshotterReady chan *snapshotter // receives snapshotter once the log is replayed

	snapCount      uint64 // entries applied between snapshots
	catchUpEntries uint64 // entries kept in memory behind a snapshot
	transport      *rafthttp.Transport
	peerServer     *http.Server
	stopc          chan struct{} // closed when the proposal channels were closed
	httpstopc      chan struct{} // closed to stop the peer server
	httpdonec      chan struct{} // closed when the peer server has stopped

	removedMu sync.Mutex
	removed   map[uint64]bool // members removed while this one ran

	logger *zap.Logger
}

// Defaults of raftexample: a snapshot every 10,000 applied entries, and
// 10,000 entries kept behind it for followers that lag a little.
const (
	defaultSnapshotCount          uint64 = 10000
	defaultSnapshotCatchUpEntries uint64 = 10000
)

// clusterID is raftexample's: members refuse requests from other clusters.
const clusterID = 0x1000

// newRaftNode starts a raft member and returns the channels it publishes
// on: committed entries (those of the log replayed first, then new ones;
// nil asks the store to load the newest snapshot), the error that stopped
// it, and the snapshotter, sent once the log has been replayed. Proposals
// come in on proposeC and confChangeC; closing proposeC stops the member,
// which then closes commitC and errorC.
func newRaftNode(id int, peers []string, join bool, snapCount, catchUpEntries uint64, getSnapshot func() ([]byte, error),
	proposeC <-chan string, confChangeC <-chan *raftpb.ConfChange,
) (<-chan *commit, <-chan error, <-chan *snapshotter) {
	commitC := make(chan *commit)
	errorC := make(chan error)

	rc := &raftNode{
		proposeC:       proposeC,
		confChangeC:    confChangeC,
		commitC:        commitC,
		errorC:         errorC,
		id:             id,
		peers:          peers,
		join:           join,
		waldir:         fmt.Sprintf("raftexample-%d", id),
		snapdir:        fmt.Sprintf("raftexample-%d-snap", id),
		getSnapshot:    getSnapshot,
		snapCount:      snapCount,
		catchUpEntries: catchUpEntries,
		stopc:          make(chan struct{}),
		httpstopc:      make(chan struct{}),
		httpdonec:      make(chan struct{}),
		removed:        map[uint64]bool{},

		logger: newLogger(),

		snapshotterReady: make(chan *snapshotter, 1),
		// The rest is set once the log has been replayed.
	}
	go rc.startRaft()
	return commitC, errorC, rc.snapshotterReady
}

// saveSnap records a snapshot received from the leader in the log. Its
// payload is already durable: the transport stored it in the snap
// directory before raft saw the MsgSnap.
func (rc *raftNode) saveSnap(snap *raftpb.Snapshot) error {
	md := snap.GetMetadata()
	if len(snap.GetData()) > 0 {
		// Sent inside the MsgSnap, as etcd's rafthttp does for Send;
		// our members use SendSnapshot, but a payload is a payload.
		if err := rc.snapshotter.SaveSnap(md, snap.GetData()); err != nil {
			return err
		}
	}
	if !rc.snapshotter.hasPayload(md.GetIndex()) {
		return fmt.Errorf("snapshot %d: no payload in %s", md.GetIndex(), rc.snapdir)
	}
	if err := rc.wal.SaveSnapshot(md); err != nil {
		return err
	}
	rc.snapshotter.setNewest(md)
	return nil
}

// entriesToApply drops the committed entries already applied (those
// replayed before a snapshot was loaded, for instance).
func (rc *raftNode) entriesToApply(ents []*raftpb.Entry) []*raftpb.Entry {
	if len(ents) == 0 {
		return nil
	}
	first := ents[0].GetIndex()
	if first > rc.appliedIndex+1 {
		log.Fatalf("raftexample: committed entry %d comes after applied entry %d with a gap", first, rc.appliedIndex)
	}
	if skip := rc.appliedIndex + 1 - first; skip < uint64(len(ents)) {
		return ents[skip:]
	}
	return nil
}

// publishEntries applies conf changes and hands the writes among ents to
// the key-value store. It returns a channel closed once the store has
// applied them (nil if there were none), and false if this member must
// stop: it was removed, or it is stopping.
func (rc *raftNode) publishEntries(ents []*raftpb.Entry) (<-chan struct{}, bool) {
	if len(ents) == 0 {
		return nil, true
	}

	data := make([]string, 0, len(ents))
	for _, e := range ents {
		switch e.GetType() {
		case raftpb.EntryNormal:
			// A new leader's first entry is empty; it changes nothing.
			if len(e.GetData()) > 0 {
				data = append(data, string(e.GetData()))
			}
		case raftpb.EntryConfChange:
			var cc raftpb.ConfChange
			if err := proto.Unmarshal(e.GetData(), &cc); err != nil {
				log.Fatalf("raftexample: entry %d: ConfChange: %v", e.GetIndex(), err)
			}
			rc.confState = rc.node.ApplyConfChange(&cc)
			if !rc.applyMembership(&cc) {
				return nil, false
			}
		}
	}

	var applyDoneC chan struct{}
	if len(data) > 0 {
		applyDoneC = make(chan struct{}, 1)
		select {
		case rc.commitC <- &commit{data, applyDoneC}:
		case <-rc.stopc:
			return nil, false
		}
	}

	rc.appliedIndex = ents[len(ents)-1].GetIndex()
	return applyDoneC, true
}

// applyMembership tells the transport about an applied conf change. It
// returns false if the change removed this member.
func (rc *raftNode) applyMembership(cc *raftpb.ConfChange) bool {
	id := cc.GetNodeId()
	switch cc.GetType() {
	case raftpb.ConfChangeAddNode:
		// The members of the bootstrap carry no URL: they come from
		// --cluster. The transport has no peer for this member itself.
		if len(cc.GetContext()) > 0 && id != uint64(rc.id) {
			if err := rc.transport.AddPeer(id, []string{string(cc.GetContext())}); err != nil {
				log.Printf("raftexample: member %d added with peer URL %q: %v", id, cc.GetContext(), err)
			}
		}
	case raftpb.ConfChangeRemoveNode:
		if id == uint64(rc.id) {
			log.Printf("raftexample: this member (%d) was removed from the cluster; shutting down", id)
			return false
		}
		rc.removedMu.Lock()
		rc.removed[id] = true
		rc.removedMu.Unlock()
		rc.transport.RemovePeer(id)
	}
	return true
}

// loadSnapshot returns the newest snapshot the log records whose payload
// is in the snap directory, or nil for none (a new member, or one that
// never snapshotted).
func (rc *raftNode) loadSnapshot() *raftpb.Snapshot {
	if !walExist(rc.waldir) {
		return nil
	}
	walSnaps, err := validSnapshotEntries(rc.waldir)
	if err != nil {
		log.Fatalf("raftexample: listing the snapshots of %s: %v", rc.waldir, err)
	}
	snapshot, err := rc.snapshotter.LoadNewestAvailable(walSnaps)
	if err != nil && !errors.Is(err, errNoSnapshot) {
		log.Fatalf("raftexample: loading a snapshot: %v", err)
	}
	return snapshot
}

// openWAL creates the log if this member is new, and opens it for a replay
// from snapshot.
func (rc *raftNode) openWAL(snapshot *raftpb.Snapshot) *wal {
	if !walExist(rc.waldir) {
		if err := createWAL(rc.waldir); err != nil {
			log.Fatalf("raftexample: creating the write-ahead log in %s: %v", rc.waldir, err)
		}
	}
	md := snapshot.GetMetadata()
	log.Printf("raftexample: opening the write-ahead log of member %d at snapshot %d (term %d)", rc.id, md.GetIndex(), md.GetTerm())
	w, err := openWAL(rc.waldir, md)
	if err != nil {
		log.Fatalf("raftexample: opening the write-ahead log in %s: %v", rc.waldir, err)
	}
	return w
}

// replayWAL rebuilds raft's storage from the newest snapshot and the log
// after it, so that raft restarts where it stopped.
func (rc *raftNode) replayWAL() *wal {
	snapshot := rc.loadSnapshot()
	w := rc.openWAL(snapshot)
	hs, ents, err := w.ReadAll()
	if err != nil {
		log.Fatalf("raftexample: replaying the write-ahead log in %s: %v", rc.waldir, err)
	}
	log.Printf("raftexample: replayed the write-ahead log of member %d: %d entries, term %d, commit %d",
		rc.id, len(ents), hs.GetTerm(), hs.GetCommit())
	rc.raftStorage = raft.NewMemoryStorage()
	if snapshot != nil {
		if err := rc.raftStorage.ApplySnapshot(snapshot); err != nil {
			log.Fatalf("raftexample: snapshot %d: %v", snapshot.GetMetadata().GetIndex(), err)
		}
	}
	if err := rc.raftStorage.SetHardState(hs); err != nil {
		log.Fatalf("raftexample: %v", err)
	}
	if err := rc.raftStorage.Append(ents); err != nil {
		log.Fatalf("raftexample: %v", err)
	}
	return w
}

// writeError stops the member after a failure, which it passes on.
func (rc *raftNode) writeError(err error) {
	rc.stopHTTP()
	close(rc.commitC)
	rc.errorC <- err
	close(rc.errorC)
	rc.node.Stop()
}

// startRaft replays the log, then starts the raft node, the transport and
// the peer server.
func (rc *raftNode) startRaft() {
	if err := os.MkdirAll(rc.snapdir, 0o750); err != nil {
		log.Fatalf("raftexample: creating the snapshot directory: %v", err)
	}
	rc.snapshotter = newSnapshotter(rc.snapdir)

	oldwal := walExist(rc.waldir)
	rc.wal = rc.replayWAL()

	// The key-value store may now load the newest snapshot.
	rc.snapshotterReady <- rc.snapshotter

	rpeers := make([]raft.Peer, len(rc.peers))
	for i := range rpeers {
		rpeers[i] = raft.Peer{ID: uint64(i + 1)}
	}
	c := &raft.Config{
		ID:                        uint64(rc.id),
		ElectionTick:              10,
		HeartbeatTick:             1,
		Storage:                   rc.raftStorage,
		MaxSizePerMsg:             1024 * 1024,
		MaxInflightMsgs:           256,
		MaxUncommittedEntriesSize: 1 << 30,
	}

	if oldwal || rc.join {
		rc.node = raft.RestartNode(c)
	} else {
		rc.node = raft.StartNode(c, rpeers)
	}

	rc.transport = &rafthttp.Transport{
		Logger:    rc.logger,
		ID:        uint64(rc.id),
		ClusterID: clusterID,
		Raft:      rc,
		ErrorC:    make(chan error, 1),
		// Snapshots from the leader arrive on /raft/snapshot; their
		// payloads go to the snap directory.
		SnapshotStore: rc.snapshotter.store,
	}
	if err := rc.transport.Start(); err != nil {
		log.Fatalf("raftexample: starting the transport: %v", err)
	}
	for i := range rc.peers {
		if i+1 != rc.id {
			if err := rc.transport.AddPeer(uint64(i+1), []string{rc.peers[i]}); err != nil {
				log.Fatalf("raftexample: --cluster: member %d: %v", i+1, err)
			}
		}
	}
	rc.peerServer = rafthttp.NewServer(rc.transport.Handler())

	go rc.serveRaft()
	go rc.serveChannels()
}

// stop stops the peer server and the transport, closes the channels and
// stops raft.
func (rc *raftNode) stop() {
	rc.stopHTTP()
	close(rc.commitC)
	close(rc.errorC)
	rc.node.Stop()
}

// stopHTTP stops the transport, then the peer server, and waits for it.
func (rc *raftNode) stopHTTP() {
	rc.transport.Stop()
	close(rc.httpstopc)
	rc.peerServer.Close()
	<-rc.httpdonec
}

// publishSnapshot has the key-value store load a snapshot received from
// the leader, which replaces everything applied before.
func (rc *raftNode) publishSnapshot(snapshotToSave *raftpb.Snapshot) {
	if raft.IsEmptySnap(snapshotToSave) {
		return
	}
	md := snapshotToSave.GetMetadata()
	log.Printf("raftexample: applying snapshot %d (term %d) received from the leader", md.GetIndex(), md.GetTerm())

	if md.GetIndex() <= rc.appliedIndex {
		log.Fatalf("raftexample: snapshot %d is not after applied entry %d", md.GetIndex(), rc.appliedIndex)
	}
	rc.commitC <- nil // the store loads the newest snapshot, this one

	rc.confState = md.GetConfState()
	rc.snapshotIndex = md.GetIndex()
	rc.appliedIndex = md.GetIndex()
}

// maybeTriggerSnapshot snapshots the key-value store once snapCount
// entries were applied since the last snapshot, and compacts raft's log,
// keeping catchUpEntries entries for followers that lag a little.
func (rc *raftNode) maybeTriggerSnapshot(applyDoneC <-chan struct{}) {
	if rc.appliedIndex-rc.snapshotIndex <= rc.snapCount {
		return
	}

	// The store must hold every entry applied before it is snapshotted.
	if applyDoneC != nil {
		select {
		case <-applyDoneC:
		case <-rc.stopc:
			return
		}
	}

	log.Printf("raftexample: snapshotting at applied entry %d (last snapshot %d)", rc.appliedIndex, rc.snapshotIndex)
	data, err := rc.getSnapshot()
	if err != nil {
		log.Fatalf("raftexample: snapshot of the key-value store: %v", err)
	}
	// The payload stays in its file (written next), out of raft's
	// storage: a leader streams it from there with SendSnapshot.
	snap, err := rc.raftStorage.CreateSnapshot(rc.appliedIndex, rc.confState, nil)
	if err != nil {
		log.Fatalf("raftexample: %v", err)
	}
	if err := rc.saveOwnSnap(snap.GetMetadata(), data); err != nil {
		log.Fatalf("raftexample: saving snapshot %d: %v", rc.appliedIndex, err)
	}

	compactIndex := uint64(1)
	if rc.appliedIndex > rc.catchUpEntries {
		compactIndex = rc.appliedIndex - rc.catchUpEntries
	}
	if err := rc.raftStorage.Compact(compactIndex); err != nil {
		if !errors.Is(err, raft.ErrCompacted) {
			log.Fatalf("raftexample: compacting the log at %d: %v", compactIndex, err)
		}
	} else {
		log.Printf("raftexample: compacted the log up to entry %d", compactIndex)
	}

	rc.snapshotIndex = rc.appliedIndex
}

// saveOwnSnap makes a snapshot of this member durable: the payload first,
// then the log, rewritten to start at the snapshot (a crash between the two
// leaves a payload nothing refers to, never a record without a payload),
// then the payloads of older snapshots are removed.
func (rc *raftNode) saveOwnSnap(md *raftpb.SnapshotMetadata, payload []byte) error {
	if err := rc.snapshotter.SaveSnap(md, payload); err != nil {
		return err
	}
	// The entries after the snapshot that raft has, committed or not: the
	// log must keep them.
	var ents []*raftpb.Entry
	last, err := rc.raftStorage.LastIndex()
	if err != nil {
		return err
	}
	if last > md.GetIndex() {
		if ents, err = rc.raftStorage.Entries(md.GetIndex()+1, last+1, math.MaxUint64); err != nil {
			return err
		}
	}
	if err := rc.wal.Rewrite(md, ents); err != nil {
		return err
	}
	rc.snapshotter.setNewest(md)
	rc.snapshotter.purgeBefore(md.GetIndex())
	return nil
}

// serveChannels runs the member: a goroutine proposes what comes in on
// the proposal channels, and the Ready loop persists, sends and publishes
// what raft hands over.
func (rc *raftNode) serveChannels() {
	snap, err := rc.raftStorage.Snapshot()
	if err != nil {
		log.Fatalf("raftexample: %v", err)
	}
	rc.confState = snap.GetMetadata().GetConfState()
	rc.snapshotIndex = snap.GetMetadata().GetIndex()
	rc.appliedIndex = snap.GetMetadata().GetIndex()

	defer rc.wal.Close()

	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()

	go func() {
		var confChangeCount uint64
		for rc.proposeC != nil && rc.confChangeC != nil {
			select {
			case prop, ok := <-rc.proposeC:
				if !ok {
					rc.proposeC = nil
					continue
				}
				// Blocks until raft takes it: while there is no
				// leader, for instance.
				rc.node.Propose(context.Background(), []byte(prop))
			case cc, ok := <-rc.confChangeC:
				if !ok {
					rc.confChangeC = nil
					continue
				}
				confChangeCount++
				cc.Id = new(confChangeCount)
				rc.node.ProposeConfChange(context.Background(), cc)
			}
		}
		// The proposal channels were closed: stop.
		close(rc.stopc)
	}()

	for {
		select {
		case <-ticker.C:
			rc.node.Tick()

		case rd := <-rc.node.Ready():
			// A snapshot is recorded before the HardState and entries
			// that follow it, so that a restart can start from it.
			if !raft.IsEmptySnap(rd.Snapshot) {
				if err := rc.saveSnap(rd.Snapshot); err != nil {
					log.Fatalf("raftexample: saving snapshot %d: %v", rd.Snapshot.GetMetadata().GetIndex(), err)
				}
			}
			if err := rc.wal.Save(rd.HardState, rd.Entries); err != nil {
				log.Fatalf("raftexample: writing the write-ahead log: %v", err)
			}
			if !raft.IsEmptySnap(rd.Snapshot) {
				if err := rc.raftStorage.ApplySnapshot(rd.Snapshot); err != nil {
					log.Fatalf("raftexample: snapshot %d: %v", rd.Snapshot.GetMetadata().GetIndex(), err)
				}
				rc.publishSnapshot(rd.Snapshot)
			}
			if err := rc.raftStorage.Append(rd.Entries); err != nil {
				log.Fatalf("raftexample: %v", err)
			}
			rc.transport.Send(rc.processMessages(rd.Messages))
			applyDoneC, ok := rc.publishEntries(rc.entriesToApply(rd.CommittedEntries))
			if !ok {
				rc.stop()
				return
			}
			rc.maybeTriggerSnapshot(applyDoneC)
			rc.node.Advance()

		case err := <-rc.transport.ErrorC:
			rc.writeError(err)
			return

		case <-rc.stopc:
			rc.stop()
			return
		}
	}
}

// processMessages returns the messages for Transport.Send, and sends each
// MsgSnap itself with SendSnapshot. As in raftexample, a MsgSnap gets the
// current ConfState: the snapshot's may predate a conf change, such as the
// one that added the member it is for.
func (rc *raftNode) processMessages(ms []*raftpb.Message) []*raftpb.Message {
	out := make([]*raftpb.Message, 0, len(ms))
	for _, m := range ms {
		if m.GetType() == raftpb.MsgSnap {
			m.Snapshot.Metadata.ConfState = proto.Clone(rc.confState).(*raftpb.ConfState)
			rc.sendSnapshot(m)
			continue
		}
		out = append(out, m)
	}
	return out
}

// sendSnapshot sends a MsgSnap with its payload, streamed from the
// payload's file on /raft/snapshot. The transport tells raft the outcome
// (ReportSnapshot); a payload that cannot be opened is reported here.
func (rc *raftNode) sendSnapshot(m *raftpb.Message) {
	index := m.GetSnapshot().GetMetadata().GetIndex()
	f, err := os.Open(rc.snapshotter.store.Path(index))
	var size int64
	if err == nil {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			size = fi.Size()
		} else {
			f.Close()
		}
	}
	if err != nil {
		log.Printf("raftexample: cannot send snapshot %d to member %d: %v", index, m.GetTo(), err)
		rc.node.ReportSnapshot(m.GetTo(), raft.SnapshotFailure)
		return
	}
	m.Snapshot.Data = nil // the payload follows the message
	errc := rc.transport.SendSnapshot(rafthttp.SnapshotMessage{Message: m, Payload: f, PayloadSize: size})
	to := m.GetTo()
	go func() {
		// The transport sends the outcome once, at Stop at the latest.
		if err := <-errc; err != nil {
			log.Printf("raftexample: snapshot %d to member %d: %v", index, to, err)
		} else {
			log.Printf("raftexample: sent snapshot %d (%d bytes) to member %d", index, size, to)
		}
	}()
}

// serveRaft serves the transport on this member's peer URL until
// stopHTTP.
func (rc *raftNode) serveRaft() {
	u, err := url.Parse(rc.peers[rc.id-1])
	if err != nil {
		log.Fatalf("raftexample: --cluster: member %d: %v", rc.id, err)
	}
	ln, err := net.Listen("tcp", u.Host)
	if err != nil {
		log.Fatalf("raftexample: listening for peers: %v", err)
	}

	err = rc.peerServer.Serve(ln)
	select {
	case <-rc.httpstopc:
	default:
		log.Fatalf("raftexample: serving peers: %v", err)
	}
	close(rc.httpdonec)
}

// Process implements rafthttp.Raft: a message from a peer goes to raft.
func (rc *raftNode) Process(ctx context.Context, m *raftpb.Message) error {
	return rc.node.Step(ctx, m)
}

// IsIDRemoved implements rafthttp.Raft. Beyond raftexample, which answers
// false, it knows the members removed while this one ran, so that the
// transport refuses them (410) and they learn that they were removed.
func (rc *raftNode) IsIDRemoved(id uint64) bool {
	rc.removedMu.Lock()
	defer rc.removedMu.Unlock()
	return rc.removed[id]
}

// ReportUnreachable implements rafthttp.Raft.
func (rc *raftNode) ReportUnreachable(id uint64) { rc.node.ReportUnreachable(id) }

// ReportSnapshot implements rafthttp.Raft.
func (rc *raftNode) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	rc.node.ReportSnapshot(id, status)
}
