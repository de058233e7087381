package rafthttp

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// TestAccountingUnderChurn sends messages from a to b while a removes and
// re-adds b again and again, so that streams are torn down and dialled anew
// and queues are dropped mid-flow: every message must be delivered to b's
// Process or reported to a's raft. (Messages lost inside a TCP connection
// that breaks after a successful write are beyond any transport without
// acknowledgements; churn here ends connections in order, so none are.)
// Reports are one per lost message, plus one per failed stream connection
// that lost none: the count of reports can only overstate the losses by
// those few.
func TestAccountingUnderChurn(t *testing.T) {
	const total = 20000
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connect(t, a, b)
	waitStreams(t, a, b)

	var mu sync.Mutex
	delivered := map[uint64]int{}
	b.raft.setProcess(func(_ context.Context, m *raftpb.Message) error {
		if m.GetFrom() == 1 {
			mu.Lock()
			delivered[m.GetCommit()]++
			mu.Unlock()
		}
		return nil
	})

	done := make(chan struct{})
	var churn sync.WaitGroup
	var churns int
	churn.Go(func() {
		for {
			select {
			case <-done:
				return
			case <-time.After(15 * time.Millisecond): // churn's pace
			}
			a.tr.RemovePeer(2)
			if err := a.tr.AddPeer(2, []string{b.url}); err != nil {
				t.Error(err)
			}
			churns++
		}
	})
	for i := uint64(1); i <= total; i++ {
		var m *raftpb.Message
		switch i % 3 {
		case 0: // full MsgApp on the msgappv2 stream (LogTerm != Term)
			m = &raftpb.Message{Type: raftpb.MsgApp.Enum(), Term: proto.Uint64(2), LogTerm: proto.Uint64(1), Index: proto.Uint64(i)}
		case 1:
			m = &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), Term: proto.Uint64(2)}
		default:
			m = &raftpb.Message{Type: raftpb.MsgVoteResp.Enum(), Term: proto.Uint64(2)}
		}
		m.From, m.To, m.Commit = proto.Uint64(1), proto.Uint64(2), proto.Uint64(i)
		a.tr.Send([]*raftpb.Message{m})
		if i%32 == 0 {
			time.Sleep(50 * time.Microsecond) // pace the sender, not a wait
		}
	}
	close(done)
	churn.Wait()

	count := func() (deliveredN, dup, reported int) {
		mu.Lock()
		defer mu.Unlock()
		for _, n := range delivered {
			deliveredN++
			dup += n - 1
		}
		return deliveredN, dup, a.raft.unreachableCount(2)
	}
	deadline := time.Now().Add(10 * time.Second)
	for d, _, r := count(); d+r < total && time.Now().Before(deadline); d, _, r = count() {
		time.Sleep(time.Millisecond) // poll
	}
	d, dup, r := count()
	t.Logf("%d sent over %d churns: %d delivered, %d reported, %d reported and delivered too", total, churns, d, r, d+r-total)
	if dup != 0 {
		t.Errorf("%d messages delivered twice", dup)
	}
	if d > total {
		t.Errorf("%d delivered of %d sent", d, total)
	}
	if d+r < total {
		t.Errorf("%d messages neither delivered nor reported", total-d-r)
	}
}
