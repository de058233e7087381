package rafttest

import (
	"fmt"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/raftkit/rafthttp"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
)

// TestMemberCommits runs clusters of members on our transport: they elect
// a leader, every member applies the same sequence, each datum once, and
// Stop ends a member whether or not its loop ran.
func TestMemberCommits(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
		cfg  Config
	}{
		{name: "one member", size: 1},
		{name: "three members", size: 3},
		{name: "three members, check quorum and prevote", size: 3,
			cfg: Config{ElectionTick: 20, CheckQuorum: true, PreVote: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ids []uint64
			for i := range tc.size {
				ids = append(ids, uint64(i+1))
			}
			var members []*Member
			var nets []*ourTransport
			for _, id := range ids {
				m := NewMember(t, id, ids, tc.cfg)
				members = append(members, m)
				nets = append(nets, serve(t, id, m))
			}
			for _, a := range nets {
				for _, b := range nets {
					if a != b {
						if err := a.tr.AddPeer(b.tr.ID, []string{b.url}); err != nil {
							t.Fatalf("AddPeer: %v", err)
						}
					}
				}
			}
			for i, m := range members {
				m.Run(nets[i].tr)
			}

			var lead *Member
			Eventually(t, 10*time.Second, "a leader all members follow", func() bool {
				for _, m := range members {
					if m.Lead() == 0 || m.Lead() != members[0].Lead() {
						return false
					}
				}
				lead = members[members[0].Lead()-1]
				return lead.IsLeader()
			})
			var data []string
			for i := range 10 {
				d := fmt.Sprintf("datum-%d", i)
				data = append(data, d)
				if err := lead.Node().Propose(t.Context(), []byte(d)); err != nil {
					t.Fatalf("Propose: %v", err)
				}
			}
			Eventually(t, 10*time.Second, "every member to apply the data", func() bool {
				for _, m := range members {
					if !m.Has(data...) || len(m.Applied()) != len(members[0].Applied()) {
						return false
					}
				}
				return true
			})

			want := members[0].Applied()
			var got []string
			for _, a := range want {
				if a.Data != "" {
					got = append(got, a.Data)
				}
			}
			if !slices.Equal(got, data) {
				t.Errorf("applied data %q, want %q", got, data)
			}
			for _, m := range members[1:] {
				if got := m.Applied(); !slices.Equal(got, want) {
					t.Errorf("member %d applied %v, want member 1's %v", m.ID(), got, want)
				}
			}
			if m := members[0]; m.Has("never proposed") {
				t.Errorf("member %d has a datum never proposed", m.ID())
			}
			// The first entries are the members' ConfChanges (one per
			// peer given to StartNode), applied as such.
			for _, m := range members {
				committed := m.Committed()
				if len(committed) < tc.size+len(data) {
					t.Fatalf("member %d committed %d entries, want at least %d", m.ID(), len(committed), tc.size+len(data))
				}
				for i, e := range committed[:tc.size] {
					var cc raftpb.ConfChange
					if e.GetType() != raftpb.EntryConfChange || proto.Unmarshal(e.GetData(), &cc) != nil || cc.GetNodeId() != ids[i] {
						t.Errorf("member %d: entry %d is %v, want the ConfChange adding %d", m.ID(), i, e, ids[i])
					}
				}
				if voters := m.Node().Status().Config.Voters[0]; len(voters) != tc.size {
					t.Errorf("member %d: %d voters, want %d", m.ID(), len(voters), tc.size)
				}
				if err := m.Err(); err != nil {
					t.Errorf("member %d: %v", m.ID(), err)
				}
			}
			for _, m := range members {
				m.Stop()
				m.Stop()
			}
		})
	}
}

// TestMemberStopWithoutRun stops a member whose loop never ran: Stop
// returns, and a Run after it starts nothing (goleak checks no goroutine
// is left).
func TestMemberStopWithoutRun(t *testing.T) {
	m := NewMember(t, 1, []uint64{1}, Config{})
	m.Stop()
	m.Run(nopSender{})
	if m.Lead() != 0 || len(m.Committed()) != 0 {
		t.Errorf("a member never run saw lead %d and committed %d entries, want nothing", m.Lead(), len(m.Committed()))
	}
}

// nopSender drops every message.
type nopSender struct{}

func (nopSender) Send([]*raftpb.Message) {}

// TestMemberRestart crashes a member of a one-member cluster and restarts
// it from its storage: it keeps its log, takes the lead again and applies
// what follows.
func TestMemberRestart(t *testing.T) {
	m := NewMember(t, 1, []uint64{1}, Config{})
	m.Run(nopSender{})
	Eventually(t, 10*time.Second, "the member to lead", m.IsLeader)
	if err := m.Node().Propose(t.Context(), []byte("before")); err != nil {
		t.Fatalf("Propose: %v", err)
	}
	Eventually(t, 10*time.Second, "the proposal to be applied", func() bool { return m.Has("before") })
	m.Stop()

	r := NewMember(t, 1, nil, Config{Storage: m.Storage()})
	r.Run(nopSender{})
	Eventually(t, 10*time.Second, "the restarted member to lead", r.IsLeader)
	if err := r.Node().Propose(t.Context(), []byte("after")); err != nil {
		t.Fatalf("Propose: %v", err)
	}
	Eventually(t, 10*time.Second, "the proposal to be applied", func() bool { return r.Has("before", "after") })
	voters := r.Node().Status().Config.Voters[0]
	if _, ok := voters[1]; len(voters) != 1 || !ok {
		t.Errorf("restarted member's voters %v, want member 1 alone", voters)
	}
}

// ourTransport is our Transport behind an HTTP server on 127.0.0.1, as an
// application serves it.
type ourTransport struct {
	tr  *rafthttp.Transport
	url string
}

// serve starts our Transport for member m, stopped with its server at the
// end of the test after m's Ready loop.
func serve(t *testing.T, id uint64, m *Member) *ourTransport {
	t.Helper()
	srv := httptest.NewUnstartedServer(nil)
	o := &ourTransport{url: "http://" + srv.Listener.Addr().String()}
	o.tr = &rafthttp.Transport{ID: id, ClusterID: 0x1000, Raft: m, URLs: []string{o.url}, Logger: zaptest.NewLogger(t),
		DialRetryMin: 10 * time.Millisecond, DialRetryMax: 100 * time.Millisecond}
	if err := o.tr.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	srv.Config.Handler = o.tr.Handler()
	srv.Start()
	t.Cleanup(func() {
		o.tr.Stop()
		srv.CloseClientConnections()
		srv.Close()
	})
	return o
}
