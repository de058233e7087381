package robustness

import (
	"bytes"
	"context"
	"fmt"
	"io"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// A member's side of its transport: what it sends, what it is given, and
// what the transport counted as dropped.

// send gives the Ready's messages to the transport, a MsgSnap to
// SendSnapshot if the run sends snapshots that way, counting them all.
func (n *node) send(msgs []*raftpb.Message) {
	out := make([]*raftpb.Message, 0, len(msgs))
	for _, m := range msgs {
		if m.GetType() == raftpb.MsgSnap && n.c.cfg.SnapPath == snapSend {
			n.sendSnapshot(m)
			continue
		}
		out = append(out, m)
	}
	n.c.acct.sent(out)
	n.tr.Send(out)
}

// sendSnapshot sends a MsgSnap as etcd does: the message without the
// state, then the state as the payload.
func (n *node) sendSnapshot(m *raftpb.Message) {
	data := m.GetSnapshot().GetData()
	env := proto.Clone(m).(*raftpb.Message)
	env.Snapshot.Data = nil
	n.c.acct.sent([]*raftpb.Message{env})
	n.snapsInFlight.Add(1)
	outcome := n.tr.SendSnapshot(rafthttp.SnapshotMessage{Message: env,
		Payload: io.NopCloser(bytes.NewReader(data)), PayloadSize: int64(len(data))})
	to := m.GetTo()
	n.snapWG.Go(func() {
		defer n.snapsInFlight.Add(-1)
		select {
		case err := <-outcome:
			if err != nil {
				n.c.acct.snapFailed(to)
			} else {
				n.c.snapshotsSent.Add(1)
			}
		case <-n.trDone:
			select {
			case err := <-outcome:
				if err != nil {
					n.c.acct.snapFailed(to)
				}
			default:
				n.c.violate("member", fmt.Sprintf("member %d: SendSnapshot to %d never told its outcome, though the transport stopped", n.id, to))
			}
		}
	})
}

// drops returns what the member's transport counted as dropped, by the
// member the messages were for: its drops of messages to a peer count for
// that peer, the proposals it dropped on receipt (recv_full) for itself.
func (n *node) drops() (map[uint64]uint64, error) {
	mfs, err := n.reg.Gather()
	if err != nil {
		return nil, err
	}
	out := map[uint64]uint64{}
	for _, mf := range mfs {
		if mf.GetName() != "rafthttp_dropped_messages_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var peer uint64
			var reason string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "Peer":
					if _, err := fmt.Sscanf(l.GetValue(), "%x", &peer); err != nil {
						peer = 0 // "unknown"
					}
				case "Reason":
					reason = l.GetValue()
				}
			}
			to := peer
			if reason == "recv_full" {
				to = n.id
			}
			out[to] += uint64(m.GetCounter().GetValue())
		}
	}
	return out, nil
}

// The Raft the transport reports to.

// Process hands a received message to raft, through the run's tamper hook
// (the broken transports of the tests that prove the checks can fail),
// counting what is delivered.
func (n *node) Process(ctx context.Context, m *raftpb.Message) error {
	msgs := []*raftpb.Message{m}
	if t := n.c.tamper; t != nil {
		msgs = t.deliver(n.id, m)
	}
	for _, d := range msgs {
		n.c.acct.processed(n.id, d)
		if err := n.rn.Step(ctx, d); err != nil {
			return err
		}
	}
	return nil
}

// IsIDRemoved is false: the cluster never removes a member.
func (n *node) IsIDRemoved(uint64) bool { return false }

// ReportUnreachable tells raft a message to id was lost.
func (n *node) ReportUnreachable(id uint64) { n.rn.ReportUnreachable(id) }

// ReportSnapshot tells raft how a snapshot to id fared.
func (n *node) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	n.rn.ReportSnapshot(id, status)
}
