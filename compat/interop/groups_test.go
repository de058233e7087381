package interop

import (
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/compat/peerkit"
)

// otherGroup is a second raft group (cluster otherCluster) of our member:
// its Transport shares our side's listener through a Mux, and its one
// peer, whose member ID is the etcd peer's, runs on its own server. Its
// messages carry term otherTerm, which no message of the etcd pair does.
type otherGroup struct {
	shared, peer       *rafthttp.Transport
	sharedLog, peerLog *eventLog
	srv                *httptest.Server
}

const (
	otherCluster = 0x2000
	otherTerm    = 777
)

func newOtherGroup(t *testing.T) *otherGroup {
	t.Helper()
	g := &otherGroup{sharedLog: &eventLog{}, peerLog: &eventLog{}}
	newTr := func(log *eventLog, name string) *rafthttp.Transport {
		tr := &rafthttp.Transport{ID: ourID, ClusterID: otherCluster, Raft: recRaft{peerkit.NewRecorder(log.add)},
			Logger:       zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named(name),
			DialRetryMin: 50 * time.Millisecond, DialRetryMax: 200 * time.Millisecond}
		return tr
	}
	g.shared = newTr(g.sharedLog, "other-shared")
	g.peer = newTr(g.peerLog, "other-peer")
	g.peer.ID = etcdID // the etcd peer's ID, in another cluster: only the cluster ID tells them apart
	g.srv = httptest.NewServer(nil)
	g.peer.URLs = []string{g.srv.URL}
	for _, tr := range []*rafthttp.Transport{g.shared, g.peer} {
		if err := tr.Start(); err != nil {
			t.Fatal(err)
		}
	}
	g.srv.Config.Handler = g.peer.Handler()
	t.Cleanup(func() {
		g.shared.Stop()
		g.peer.Stop()
		g.srv.CloseClientConnections()
		g.srv.Close()
	})
	return g
}

// connect makes the group's two members peers, ours at url.
func (g *otherGroup) connect(t *testing.T, url string) {
	t.Helper()
	if err := g.shared.AddPeer(etcdID, []string{g.srv.URL}); err != nil {
		t.Fatal(err)
	}
	if err := g.peer.AddPeer(ourID, []string{url}); err != nil {
		t.Fatal(err)
	}
}

// traffic sends heartbeats each way in the group every 10 ms until the
// returned function (idempotent) is called.
func (g *otherGroup) traffic() (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
			case <-done:
				return
			}
			g.peer.Send([]*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum(), From: u64(etcdID), To: u64(ourID), Term: u64(otherTerm)}})
			g.shared.Send([]*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum(), From: u64(ourID), To: u64(etcdID), Term: u64(otherTerm)}})
		}
	})
	var once sync.Once
	return func() {
		once.Do(func() { close(done) })
		wg.Wait()
	}
}

// TestSharedListener puts our member of the etcd pair's cluster behind a
// Mux that serves a second group of ours on the same listener (another
// cluster, in which the same member IDs talk, with traffic of its own
// throughout), and runs an etcd 3.7 peer against it, both ways: every
// message type crosses (the message stream's, MsgApp over msgappv2, a
// MsgSnap over the pipeline, a snapshot over /raft/snapshot in etcd's
// format), every answer our listener gave was a success, and neither group
// got a message of the other.
func TestSharedListener(t *testing.T) {
	var l line
	for _, x := range lines {
		if x.name == "3.7" {
			l = x
		}
	}
	for _, d := range directions {
		t.Run(d.name, func(t *testing.T) {
			t.Parallel()
			other := newOtherGroup(t)
			serve := func(tr *rafthttp.Transport) http.Handler {
				m := &rafthttp.Mux{Logger: zaptest.NewLogger(t).Named("mux")}
				for _, g := range []*rafthttp.Transport{tr, other.shared} {
					if err := m.Add(g); err != nil {
						t.Fatal(err)
					}
				}
				return m
			}
			p := &pair{ours: newOurSideServed(t, clusterID, nil, serve), etcd: newEtcdSide(t, l, clusterID)}
			other.connect(t, p.ours.url())
			stop := other.traffic()
			defer stop()
			snd, rcv := d.pick(p)
			connectAndWait(t, p)
			// The other group's peer has the etcd peer's ID, so our Tap's
			// record of stream writes mixes the two: ask our Transport.
			eventually(t, "our streams with the etcd peer", func() bool {
				s, ok := p.ours.tr.PeerStatus(etcdID)
				return ok && s.StreamsUp()
			})

			// The message stream's types, none by the pipeline.
			from := rcv.log().mark()
			msgs := streamMessages(snd.id(), rcv.id())
			for _, m := range msgs {
				snd.send(t, m)
			}
			checkProcessed(t, rcv, from, msgs)
			if n := rcv.log().count(from, isPipelinePost); n != 0 {
				t.Errorf("%s got %d pipeline POSTs, want 0: the messages must use the message stream", rcv.name(), n)
			}

			// MsgApp, over msgappv2, in order.
			from = rcv.log().mark()
			apps := []*raftpb.Message{
				{Type: raftpb.MsgApp.Enum(), From: u64(snd.id()), To: u64(rcv.id()), Term: u64(2), LogTerm: u64(2), Index: u64(10), Commit: u64(9),
					Entries: []*raftpb.Entry{{Term: u64(2), Index: u64(11), Data: []byte("e11")}}},
				{Type: raftpb.MsgApp.Enum(), From: u64(snd.id()), To: u64(rcv.id()), Term: u64(2), LogTerm: u64(2), Index: u64(11), Commit: u64(11),
					Entries: []*raftpb.Entry{{Term: u64(2), Index: u64(12), Data: []byte("e12")}}},
			}
			for _, m := range apps {
				snd.send(t, m)
			}
			eventually(t, "the MsgApps to reach raft", func() bool { return rcv.log().count(from, isEv("process")) >= len(apps) })
			if got := rcv.log().processed(t, from); len(got) != 2 || !sameMessage(got[0], apps[0]) || !sameMessage(got[1], apps[1]) {
				t.Errorf("%s processed %v, want %v", rcv.name(), got, apps)
			}

			// MsgSnap, by one pipeline POST.
			from = rcv.log().mark()
			snap := snapMessage(snd.id(), rcv.id())
			snd.send(t, snap)
			checkProcessed(t, rcv, from, []*raftpb.Message{snap})
			waitAnswers(t, rcv, from, isPipelinePost, 1)
			eventually(t, "the MsgSnap to be reported finished", func() bool {
				return snd.log().count(0, func(e event) bool {
					return e.Ev == "snapreport" && e.ID == rcv.id() && e.Status == int(raft.SnapshotFinish)
				}) == 1
			})

			// A snapshot over /raft/snapshot, in etcd's format.
			from = rcv.log().mark()
			m := snapMessage(snd.id(), rcv.id())
			const size = 64<<10 + 7
			snd.sendSnapshot(t, m, size)
			eventually(t, "the snapshot send to end", func() bool { return snd.log().count(0, isEv("snapsent")) > 0 })
			if e := snd.log().since(0, isEv("snapsent"))[0]; !e.OK {
				t.Fatalf("%s failed to send the snapshot: %s", snd.name(), e.Err)
			}
			checkProcessed(t, rcv, from, []*raftpb.Message{m})
			waitAnswers(t, rcv, from, isHTTP("POST", rafthttp.RaftSnapshotPrefix), 1)
			checkSnapshotRequest(t, p, snd, rcv, from, m, size)

			stop()
			// Our listener served both groups and refused nothing.
			for _, e := range p.ours.log().since(0, isEv("http")) {
				if e.Status != http.StatusOK && e.Status != http.StatusNoContent {
					t.Errorf("our listener answered %s %s with %d, want only 200 and 204", e.Method, e.Path, e.Status)
				}
			}
			// Neither group got the other's messages.
			for _, m := range p.ours.log().processed(t, 0) {
				if m.GetTerm() == otherTerm {
					t.Errorf("the etcd pair's group processed %v of the other group", m)
				}
			}
			for name, log := range map[string]*eventLog{"ours": other.sharedLog, "its peer": other.peerLog} {
				got := log.processed(t, 0)
				if len(got) == 0 {
					t.Errorf("the other group's member (%s) processed nothing", name)
				}
				for _, m := range got {
					if m.GetTerm() != otherTerm || m.GetType() != raftpb.MsgHeartbeat {
						t.Errorf("the other group's member (%s) processed %v, not of its group", name, m)
					}
				}
			}
		})
	}
}
