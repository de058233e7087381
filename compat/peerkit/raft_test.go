package peerkit

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeRaftAdapter is a fakeAdapter that can run a fakeNode.
type fakeRaftAdapter struct {
	*fakeAdapter

	mu   sync.Mutex
	cfg  RaftConfig
	tr   Transport
	node *fakeNode
}

func (a *fakeRaftAdapter) StartRaft(cfg RaftConfig, tr Transport, apply func(Applied)) (RaftNode, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cfg, a.tr = cfg, tr
	a.node = &fakeNode{apply: apply}
	return a.node, nil
}

func (a *fakeRaftAdapter) started() (RaftConfig, Transport, *fakeNode) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg, a.tr, a.node
}

// fakeNode records its calls; Propose applies the data at once, as entry
// (len(calls), 3), and fails on "drop".
type fakeNode struct {
	apply func(Applied)

	mu    sync.Mutex
	calls []string
}

func (n *fakeNode) record(format string, args ...any) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.calls = append(n.calls, fmt.Sprintf(format, args...))
	return len(n.calls)
}

func (n *fakeNode) recorded() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.calls)
}

func (n *fakeNode) Step(msg []byte) error {
	n.record("Step(%x)", msg)
	return nil
}

func (n *fakeNode) Propose(data []byte) error {
	i := n.record("Propose(%s)", data)
	if string(data) == "drop" {
		return errors.New("proposal dropped")
	}
	n.apply(Applied{Index: uint64(i), Term: 3, Data: data})
	return nil
}

func (n *fakeNode) ReportUnreachable(id uint64) { n.record("ReportUnreachable(%d)", id) }
func (n *fakeNode) ReportSnapshot(id uint64, status int) {
	n.record("ReportSnapshot(%d, %d)", id, status)
}
func (n *fakeNode) Status() (lead, term uint64) { return 2, 3 }
func (n *fakeNode) TransferLeader(to uint64)    { n.record("TransferLeader(%d)", to) }
func (n *fakeNode) Stop()                       { n.record("Stop") }

// TestServeRaft runs the raft commands against a fake raft member: the
// member gets the configuration, what the transport receives and reports,
// the proposals, and reports what it applies.
func TestServeRaft(t *testing.T) {
	a := &fakeRaftAdapter{fakeAdapter: &fakeAdapter{tr: newFakeTransport(nil)}}
	d := serveAdapter(t, a, a.fakeAdapter)
	_, raft := a.fakeAdapter.started()

	d.do(t, Command{Op: "raftstart", Peers: []uint64{1, 2, 0xbeef}, Election: 50, TickMS: 10})
	cfg, tr, node := a.started()
	want := RaftConfig{ID: testConfig.ID, Peers: []uint64{1, 2, 0xbeef}, ElectionTick: 50, HeartbeatTick: 1, Tick: 10 * time.Millisecond}
	if !slices.Equal(cfg.Peers, want.Peers) || cfg.ID != want.ID || cfg.ElectionTick != want.ElectionTick ||
		cfg.HeartbeatTick != want.HeartbeatTick || cfg.Tick != want.Tick {
		t.Errorf("StartRaft got %+v, want %+v", cfg, want)
	}
	if tr != a.tr {
		t.Errorf("StartRaft got transport %v, want the adapter's", tr)
	}
	if reply := d.do(t, Command{Op: "raftstart", Peers: []uint64{1}}); !strings.Contains(reply.Err, "runs already") {
		t.Errorf("a second raftstart answers %q, want an error about the running member", reply.Err)
	}

	if err := raft.Process([]byte{0x08, 0x01}); err != nil {
		t.Fatalf("Process: %v", err)
	}
	raft.ReportUnreachable(5)
	raft.ReportSnapshot(6, 1)
	if reply := d.do(t, Command{Op: "propose", Data: "6869"}); reply.Err != "" {
		t.Errorf("propose: %v", reply.Err)
	}
	if reply := d.do(t, Command{Op: "propose", Data: "64726f70"}); !strings.Contains(reply.Err, "dropped") {
		t.Errorf("a dropped proposal answers %q, want an error", reply.Err)
	}
	if reply := d.do(t, Command{Op: "propose", Data: "z"}); reply.Err == "" {
		t.Error("a proposal in bad hex answers no error")
	}
	if reply := d.do(t, Command{Op: "raftstatus"}); reply.Lead != 2 || reply.Term != 3 {
		t.Errorf("raftstatus answers lead %d, term %d; want 2, 3", reply.Lead, reply.Term)
	}
	d.do(t, Command{Op: "rafttransfer", ID: 7})
	d.wait(t, "the applied event", func(e Event) bool { return reflect.DeepEqual(e, Event{Ev: "applied", Index: 4, Term: 3, Data: "6869"}) })
	if n := d.count(isEv("process")); n != 0 {
		t.Errorf("%d process events while raft runs, want 0", n)
	}
	for _, want := range []Event{{Ev: "unreachable", ID: 5}, {Ev: "snapreport", ID: 6, Status: 1}} {
		d.wait(t, want.Ev+" event", func(e Event) bool { return reflect.DeepEqual(e, want) })
	}

	d.do(t, Command{Op: "raftstop"})
	if err := raft.Process([]byte{0x08, 0x02}); err != nil {
		t.Fatalf("Process after raftstop: %v", err)
	}
	d.wait(t, "the message processed after raftstop", func(e Event) bool { return reflect.DeepEqual(e, Event{Ev: "process", Msg: "0802"}) })
	if reply := d.do(t, Command{Op: "raftstatus"}); !strings.Contains(reply.Err, "no raft member") {
		t.Errorf("raftstatus after raftstop answers %q, want an error", reply.Err)
	}
	wantCalls := []string{"Step(0801)", "ReportUnreachable(5)", "ReportSnapshot(6, 1)", "Propose(hi)", "Propose(drop)",
		"TransferLeader(7)", "Stop"}
	if got := node.recorded(); !slices.Equal(got, wantCalls) {
		t.Errorf("node calls %q, want %q", got, wantCalls)
	}
}

// TestServeRaftUnsupported: a line without a RaftAdapter fails raftstart,
// and the other raft commands fail while no member runs.
func TestServeRaftUnsupported(t *testing.T) {
	d := serve(t, &fakeAdapter{tr: newFakeTransport(nil)})
	tests := []struct {
		cmd     Command
		wantErr string
	}{
		{Command{Op: "raftstart", Peers: []uint64{1}}, "cannot run a raft member"},
		{Command{Op: "propose", Data: "00"}, "no raft member"},
		{Command{Op: "raftstatus"}, "no raft member"},
		{Command{Op: "rafttransfer", ID: 1}, "no raft member"},
	}
	for _, tt := range tests {
		t.Run(tt.cmd.Op, func(t *testing.T) {
			if reply := d.do(t, tt.cmd); !strings.Contains(reply.Err, tt.wantErr) {
				t.Errorf("%s answers %q, want an error containing %q", tt.cmd.Op, reply.Err, tt.wantErr)
			}
		})
	}
	if reply := d.do(t, Command{Op: "raftstop"}); reply.Err != "" {
		t.Errorf("raftstop with no member answers %q, want no error", reply.Err)
	}
}
