package main

// The raft member of the peer (peerkit.RaftAdapter), on this line's raft
// library: go.etcd.io/etcd/raft/v3.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"sync"
	"time"

	"go.etcd.io/etcd/raft/v3"
	"go.etcd.io/etcd/raft/v3/raftpb"

	"github.com/raftkit/rafthttp/compat/peerkit"
)

var _ peerkit.RaftAdapter = etcd{}

func (etcd) StartRaft(cfg peerkit.RaftConfig, tr peerkit.Transport, apply func(peerkit.Applied)) (peerkit.RaftNode, error) {
	et, ok := tr.(etcdTransport)
	if !ok {
		return nil, fmt.Errorf("not this line's transport: %T", tr)
	}
	var peers []raft.Peer
	for _, id := range cfg.Peers {
		peers = append(peers, raft.Peer{ID: id})
	}
	n := &raftNode{storage: raft.NewMemoryStorage(), tr: et, apply: apply, tick: cfg.Tick,
		stopc: make(chan struct{}), done: make(chan struct{})}
	n.node = raft.StartNode(&raft.Config{
		ID:              cfg.ID,
		ElectionTick:    cfg.ElectionTick,
		HeartbeatTick:   cfg.HeartbeatTick,
		Storage:         n.storage,
		MaxSizePerMsg:   1 << 20,
		MaxInflightMsgs: 256,
		CheckQuorum:     true,
		PreVote:         true,
		Logger:          &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)},
	}, peers)
	go n.run()
	return n, nil
}

// raftNode is a raft.Node with its MemoryStorage and Ready loop.
type raftNode struct {
	node    raft.Node
	storage *raft.MemoryStorage
	tr      etcdTransport
	apply   func(peerkit.Applied)
	tick    time.Duration

	stopc    chan struct{}
	done     chan struct{}
	stopOnce sync.Once
}

func (n *raftNode) run() {
	defer close(n.done)
	ticker := time.NewTicker(n.tick)
	defer ticker.Stop()
	for {
		select {
		case <-ticker.C:
			n.node.Tick()
		case rd := <-n.node.Ready():
			if err := n.handleReady(rd); err != nil {
				fmt.Fprintln(log.Writer(), "etcdpeer: raft:", err)
			}
			n.node.Advance()
		case <-n.stopc:
			return
		}
	}
}

// handleReady persists, sends and applies one Ready, in that order.
func (n *raftNode) handleReady(rd raft.Ready) error {
	if !raft.IsEmptyHardState(rd.HardState) {
		if err := n.storage.SetHardState(rd.HardState); err != nil {
			return err
		}
	}
	if err := n.storage.Append(rd.Entries); err != nil {
		return err
	}
	if len(rd.Messages) > 0 {
		n.tr.tr.Send(rd.Messages)
	}
	for _, e := range rd.CommittedEntries {
		switch e.Type {
		case raftpb.EntryNormal:
			n.apply(peerkit.Applied{Index: e.Index, Term: e.Term, Data: e.Data})
		case raftpb.EntryConfChange:
			var cc raftpb.ConfChange
			if err := cc.Unmarshal(e.Data); err != nil {
				return err
			}
			n.node.ApplyConfChange(cc)
		}
	}
	return nil
}

func (n *raftNode) Step(b []byte) error {
	var m raftpb.Message
	if err := m.Unmarshal(b); err != nil {
		return err
	}
	return n.node.Step(context.TODO(), m)
}

func (n *raftNode) Propose(data []byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := n.node.Propose(ctx, data)
	if errors.Is(err, raft.ErrProposalDropped) {
		return errors.New("proposal dropped")
	}
	return err
}

func (n *raftNode) ReportUnreachable(id uint64) { n.node.ReportUnreachable(id) }
func (n *raftNode) ReportSnapshot(id uint64, status int) {
	n.node.ReportSnapshot(id, raft.SnapshotStatus(status))
}

func (n *raftNode) Status() (lead, term uint64) {
	st := n.node.Status()
	return st.Lead, st.Term
}

func (n *raftNode) TransferLeader(to uint64) {
	n.node.TransferLeadership(context.TODO(), n.node.Status().Lead, to)
}

func (n *raftNode) Stop() {
	n.stopOnce.Do(func() {
		close(n.stopc)
		<-n.done
		n.node.Stop()
	})
}
