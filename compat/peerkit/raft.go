package peerkit

import (
	"encoding/hex"
	"errors"
	"time"
)

// RaftConfig is what the raftstart command starts a raft member with.
type RaftConfig struct {
	ID            uint64   // the member's raft ID, the transport's member ID
	Peers         []uint64 // every member of the new cluster, ID included
	ElectionTick  int
	HeartbeatTick int
	Tick          time.Duration // how often the member ticks
}

// Applied is a committed normal entry, as the member applied it.
type Applied struct {
	Index, Term uint64
	Data        []byte
}

// RaftAdapter is what an [Adapter] implements, optionally, to run a raft
// member of its line's raft library on its Transport: the raftstart,
// propose, raftstatus and raftstop commands (see the package
// documentation).
type RaftAdapter interface {
	// StartRaft starts a new member of a new cluster (MemoryStorage, a
	// Ready loop ticking every cfg.Tick) that sends its messages with tr
	// and calls apply, from the Ready loop, for every committed normal
	// entry in order.
	StartRaft(cfg RaftConfig, tr Transport, apply func(Applied)) (RaftNode, error)
}

// RaftNode is a running raft member, messages as protobuf bytes.
type RaftNode interface {
	// Step hands a message the transport received to raft.
	Step(msg []byte) error
	// Propose proposes data; it fails if raft dropped the proposal.
	Propose(data []byte) error
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status int)
	// Status is the member's view of the leader and term.
	Status() (lead, term uint64)
	// TransferLeader asks the leader to hand the lead to member to.
	TransferLeader(to uint64)
	// Stop stops the Ready loop and the node.
	Stop()
}

var errNoRaft = errors.New("this peer program runs no raft member")

// doRaft runs the raft commands.
func (s *session) doRaft(a Adapter, cfg Config, c Command, reply *Event) error {
	switch c.Op {
	case "raftstart":
		ra, ok := a.(RaftAdapter)
		if !ok {
			return errors.New("this etcd line cannot run a raft member")
		}
		if s.node != nil {
			return errors.New("a raft member runs already")
		}
		rc := RaftConfig{ID: cfg.ID, Peers: c.Peers, ElectionTick: c.Election, HeartbeatTick: 1,
			Tick: time.Duration(c.TickMS) * time.Millisecond}
		if rc.ElectionTick == 0 {
			rc.ElectionTick = 10
		}
		if rc.Tick == 0 {
			rc.Tick = 100 * time.Millisecond
		}
		n, err := ra.StartRaft(rc, s.tr, func(e Applied) {
			s.out.emit(Event{Ev: "applied", Index: e.Index, Term: e.Term, Data: hex.EncodeToString(e.Data)})
		})
		if err != nil {
			return err
		}
		s.node = n
		s.rec.attach(n)
	case "propose":
		if s.node == nil {
			return errNoRaft
		}
		b, err := hex.DecodeString(c.Data)
		if err != nil {
			return err
		}
		return s.node.Propose(b)
	case "raftstatus":
		if s.node == nil {
			return errNoRaft
		}
		reply.Lead, reply.Term = s.node.Status()
	case "rafttransfer":
		if s.node == nil {
			return errNoRaft
		}
		s.node.TransferLeader(c.ID)
	case "raftstop":
		s.stopRaft()
	}
	return nil
}

// stopRaft stops the raft member, if one runs; messages received later
// are recorded again.
func (s *session) stopRaft() {
	if s.node == nil {
		return
	}
	s.rec.attach(nil)
	s.node.Stop()
	s.node = nil
}
