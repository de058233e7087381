package rafthttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
)

// muxHost is a process serving several raft groups: one listener whose
// handler is a Mux, and (unless built unpooled) one HostPool its groups'
// Transports dial with.
type muxHost struct {
	mux  *Mux
	pool *HostPool // nil: the Transports share nothing
	srv  *httptest.Server
	url  string
}

// muxHostOption adjusts a host built by newMuxHost.
type muxHostOption func(*muxHost)

// unpooled gives the host's Transports no HostPool.
func unpooled() muxHostOption { return func(h *muxHost) { h.pool = nil } }

// withPool adjusts the host's HostPool before its first use.
func withPool(fn func(*HostPool)) muxHostOption {
	return func(h *muxHost) {
		if h.pool != nil {
			fn(h.pool)
		}
	}
}

// wrapMux puts a middleware in front of the host's Mux.
func wrapMux(wrap func(http.Handler) http.Handler) muxHostOption {
	return func(h *muxHost) { h.srv.Config.Handler = wrap(h.srv.Config.Handler) }
}

// newMuxHost starts a host on 127.0.0.1. At the end of the test, after
// its groups' Transports have stopped (their cleanups come later, so run
// first), its server closes and its pool is closed.
func newMuxHost(t testing.TB, opts ...muxHostOption) *muxHost {
	t.Helper()
	h := &muxHost{mux: &Mux{Logger: zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel))},
		pool: &HostPool{Logger: zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)),
			DialRetryMin: 10 * time.Millisecond, DialRetryMax: 100 * time.Millisecond}}
	h.srv = httptest.NewUnstartedServer(h.mux)
	h.url = "http://" + h.srv.Listener.Addr().String()
	for _, o := range opts {
		o(h)
	}
	h.srv.Start()
	t.Cleanup(func() {
		h.srv.CloseClientConnections()
		h.srv.Close()
		if h.pool != nil {
			h.pool.Close()
		}
	})
	return h
}

// addGroup starts a Transport for member id of cluster, with raft r (a new
// fakeRaft if nil) and the host's pool, adjusted by fields, and serves it
// on the host's Mux. It is stopped at the end of the test.
func (h *muxHost) addGroup(t testing.TB, cluster, id uint64, r Raft, fields ...func(*Transport)) *Transport {
	t.Helper()
	if r == nil {
		r = newFakeRaft()
	}
	tr := &Transport{ID: id, ClusterID: cluster, Raft: r, URLs: []string{h.url}, HostPool: h.pool,
		Logger:       zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)),
		DialRetryMin: 10 * time.Millisecond, DialRetryMax: 100 * time.Millisecond}
	for _, fn := range fields {
		fn(tr)
	}
	if err := tr.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(tr.Stop)
	if err := h.mux.Add(tr); err != nil {
		t.Fatalf("Mux.Add: %v", err)
	}
	return tr
}

// addPeer adds member id at url as a peer of tr.
func addPeer(t testing.TB, tr *Transport, id uint64, url string) {
	t.Helper()
	if err := tr.AddPeer(id, []string{url}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
}

// waitPeerStreams waits until tr has both streams up both ways with id.
func waitPeerStreams(t testing.TB, tr *Transport, id uint64) {
	t.Helper()
	waitFor(t, fmt.Sprintf("streams of %x with %x", tr.ID, id), func() bool {
		s, ok := tr.PeerStatus(id)
		return ok && s.StreamsUp()
	})
}

// TestMuxDispatch serves two groups on one listener, each with a member
// of its own elsewhere: what each remote member sends reaches its own
// group's raft, by the streams and by the pipeline, and a member of a
// cluster the listener does not serve is refused (412), as etcd refuses
// one.
func TestMuxDispatch(t *testing.T) {
	host := newMuxHost(t)
	const clusterA, clusterB, clusterC = 0xa1, 0xb2, 0xc3
	rafts := map[uint64]*fakeRaft{clusterA: newFakeRaft(), clusterB: newFakeRaft()}
	served := map[uint64]*Transport{}
	for _, c := range []uint64{clusterA, clusterB} {
		served[c] = host.addGroup(t, c, 1, rafts[c])
	}
	if got := host.mux.Groups(); len(got) != 2 || got[0] != clusterA || got[1] != clusterB {
		t.Fatalf("Groups() = %x, want [%x %x]", got, clusterA, clusterB)
	}

	remotes := map[uint64]*testNode{}
	for _, c := range []uint64{clusterA, clusterB} {
		n := newNode(t, withID(2), withClusterID(c))
		remotes[c] = n
		addPeer(t, served[c], 2, n.url)
		addPeer(t, n.tr, 1, host.url)
		waitPeerStreams(t, n.tr, 1)
		waitPeerStreams(t, served[c], 2)
	}
	for _, tc := range []struct {
		name    string
		cluster uint64
		typ     raftpb.MessageType // MsgSnap leaves by the pipeline, the others by the streams
	}{
		{"A by stream", clusterA, raftpb.MsgHeartbeat},
		{"B by stream", clusterB, raftpb.MsgApp},
		{"A by pipeline", clusterA, raftpb.MsgSnap},
		{"B by pipeline", clusterB, raftpb.MsgSnap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			remotes[tc.cluster].tr.Send([]*raftpb.Message{newMsg(tc.typ, 2, 1, 7, withCommit(tc.cluster))})
			m := rafts[tc.cluster].recv(t)
			if m.GetType() != tc.typ || m.GetCommit() != tc.cluster {
				t.Errorf("group %x got %v (commit %x), want its own %v", tc.cluster, m.GetType(), m.GetCommit(), tc.typ)
			}
		})
	}
	for c, r := range rafts {
		if n := len(r.msgc); n != 0 {
			t.Errorf("group %x got %d messages more than was sent to it", c, n)
		}
	}

	stranger := newNode(t, withID(2), withClusterID(clusterC))
	addPeer(t, stranger.tr, 1, host.url)
	stranger.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 2, 1, 1)})
	waitFor(t, "the stranger to be refused", func() bool {
		s, _ := stranger.tr.PeerStatus(1)
		return s.LastError != nil && strings.Contains(s.LastError.Error(), ErrClusterIDMismatch.Error())
	})
}

// TestMuxRefusals checks that a request for no group served gets what a
// lone Transport of another cluster answers it (etcd's answers), but for
// the headers that would name a cluster or announce features.
func TestMuxRefusals(t *testing.T) {
	const served = 0xabc
	lone, _ := newNode(t, unserved(), withClusterID(served)).parts()
	grouped, _ := newNode(t, unserved(), withClusterID(served)).parts()
	mux := &Mux{}
	if err := mux.Add(grouped); err != nil {
		t.Fatal(err)
	}
	versions := map[string]string{headerServerVersion: "3.7.0", headerMinClusterVersion: "3.0.0", headerServerFrom: "2"}
	with := func(extra map[string]string) map[string]string {
		h := map[string]string{}
		for k, v := range versions {
			h[k] = v
		}
		for k, v := range extra {
			if v == "" {
				delete(h, k)
				continue
			}
			h[k] = v
		}
		return h
	}
	streamPath := RaftStreamPrefix + "/message/2"
	for _, tc := range []struct {
		name         string
		method, path string
		headers      map[string]string
		wantStatus   int
	}{
		{"pipeline, another cluster", http.MethodPost, RaftPrefix, with(map[string]string{headerClusterID: "def"}), http.StatusPreconditionFailed},
		{"pipeline, no cluster ID", http.MethodPost, RaftPrefix, with(nil), http.StatusPreconditionFailed},
		{"pipeline, served cluster in upper case", http.MethodPost, RaftPrefix, with(map[string]string{headerClusterID: "ABC"}), http.StatusPreconditionFailed},
		{"pipeline, served cluster zero-padded", http.MethodPost, RaftPrefix, with(map[string]string{headerClusterID: "0abc"}), http.StatusPreconditionFailed},
		{"pipeline, cluster 0", http.MethodPost, RaftPrefix, with(map[string]string{headerClusterID: "0"}), http.StatusPreconditionFailed},
		{"pipeline, wrong method", http.MethodGet, RaftPrefix, with(map[string]string{headerClusterID: "def"}), http.StatusMethodNotAllowed},
		{"pipeline, no versions", http.MethodPost, RaftPrefix, map[string]string{headerClusterID: "def"}, http.StatusPreconditionFailed},
		{"pipeline, too new", http.MethodPost, RaftPrefix, with(map[string]string{headerClusterID: "def", headerMinClusterVersion: "3.8.0", headerServerVersion: "3.8.0"}), http.StatusPreconditionFailed},
		{"stream, another cluster", http.MethodGet, streamPath, with(map[string]string{headerClusterID: "def", headerRaftTo: "1"}), http.StatusPreconditionFailed},
		{"stream, wrong method", http.MethodPost, streamPath, with(map[string]string{headerClusterID: "def"}), http.StatusMethodNotAllowed},
		{"stream, no versions", http.MethodGet, streamPath, map[string]string{headerClusterID: "def"}, http.StatusPreconditionFailed},
		{"snapshot, another cluster", http.MethodPost, RaftSnapshotPrefix, with(map[string]string{headerClusterID: "def"}), http.StatusPreconditionFailed},
		{"snapshot, wrong method", http.MethodPut, RaftSnapshotPrefix, with(map[string]string{headerClusterID: "def"}), http.StatusMethodNotAllowed},
		{"snapshot resume, another cluster", http.MethodGet, snapshotResumePath, with(map[string]string{headerClusterID: "def"}), http.StatusPreconditionFailed},
		{"unknown route", http.MethodGet, RaftPrefix + "/nothing", with(map[string]string{headerClusterID: "def"}), http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			answer := func(h http.Handler) *httptest.ResponseRecorder {
				r := httptest.NewRequest(tc.method, tc.path, strings.NewReader(""))
				for k, v := range tc.headers {
					r.Header.Set(k, v)
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				return w
			}
			want, got := answer(lone.Handler()), answer(mux)
			if got.Code != tc.wantStatus || want.Code != tc.wantStatus {
				t.Fatalf("status: Mux %d, lone Transport %d, want %d", got.Code, want.Code, tc.wantStatus)
			}
			if got.Body.String() != want.Body.String() {
				t.Errorf("body: Mux %q, lone Transport %q", got.Body.String(), want.Body.String())
			}
			for _, k := range []string{"Allow", "Content-Type", "X-Content-Type-Options", headerServerVersion} {
				if g, w := got.Header().Get(k), want.Header().Get(k); g != w {
					t.Errorf("header %s: Mux %q, lone Transport %q", k, g, w)
				}
			}
			for _, k := range []string{headerClusterID, headerFeatures} {
				if v := got.Header().Get(k); v != "" {
					t.Errorf("header %s: Mux %q, want none: the answer is for no group", k, v)
				}
			}
		})
	}

	t.Run("probing", func(t *testing.T) {
		w := httptest.NewRecorder()
		mux.ServeHTTP(w, httptest.NewRequest(http.MethodGet, ProbingPrefix, nil))
		var h struct{ OK bool }
		if err := json.Unmarshal(w.Body.Bytes(), &h); w.Code != http.StatusOK || err != nil || !h.OK {
			t.Errorf("probe answered %d %q (%v), want 200 and OK", w.Code, w.Body.String(), err)
		}
	})
}

// TestMuxAdd checks what Add refuses.
func TestMuxAdd(t *testing.T) {
	stopped, _ := newNode(t, unserved(), withClusterID(0x30)).parts()
	stopped.Stop()
	served, _ := newNode(t, unserved(), withClusterID(0x40)).parts()
	same, _ := newNode(t, unserved(), withClusterID(0x40), withID(2)).parts()
	mux := &Mux{}
	if err := mux.Add(served); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		tr   *Transport
		want error
	}{
		{"nil", nil, ErrNotStarted},
		{"not started", &Transport{ID: 1, ClusterID: 0x50, Raft: newFakeRaft()}, ErrNotStarted},
		{"stopped", stopped, ErrStopped},
		{"cluster served already", same, ErrGroupExists},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := mux.Add(tc.tr); !errors.Is(err, tc.want) {
				t.Errorf("Add = %v, want %v", err, tc.want)
			}
		})
	}
	if got := mux.Groups(); len(got) != 1 || got[0] != 0x40 {
		t.Errorf("Groups() = %x, want [40]", got)
	}
	if tr, ok := mux.Transport(0x40); !ok || tr != served {
		t.Errorf("Transport(0x40) = %p, %v; want the one added", tr, ok)
	}
	if mux.Remove(0x99) {
		t.Error("Remove of a cluster not served reported true")
	}
}

// TestMuxRemove removes a group whose streams are up and whose raft holds
// a request: the request's Process is told to give up, Remove returns only
// once it has, the streams the group served end, and the remote member's
// redials are refused (412). Added back, the group serves again.
func TestMuxRemove(t *testing.T) {
	host := newMuxHost(t)
	const cluster = 0x77
	r := newFakeRaft()
	entered := make(chan struct{})
	gaveUp := make(chan error, 1)
	r.setProcess(func(ctx context.Context, m *raftpb.Message) error {
		if m.GetType() != raftpb.MsgSnap {
			return nil
		}
		close(entered)
		<-ctx.Done() // a raft that blocks until told to give up
		gaveUp <- ctx.Err()
		return ctx.Err()
	})
	tr := host.addGroup(t, cluster, 1, r)
	remote := newNode(t, withID(2), withClusterID(cluster))
	addPeer(t, tr, 2, remote.url)
	addPeer(t, remote.tr, 1, host.url)
	waitPeerStreams(t, remote.tr, 1)
	waitPeerStreams(t, tr, 2)

	remote.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 2, 1, 5)}) // by the pipeline: a request in the Mux
	receive(t, entered, 10*time.Second, "the MsgSnap to reach raft")
	removed := make(chan bool, 1)
	go func() { removed <- host.mux.Remove(cluster) }()
	if err := receive(t, gaveUp, 10*time.Second, "Process to be told to give up"); !errors.Is(err, context.Canceled) {
		t.Errorf("Process's context ended with %v, want context.Canceled", err)
	}
	if !receive(t, removed, 10*time.Second, "Remove to return") {
		t.Fatal("Remove reported the group not served")
	}
	// Remove waited for the stream handlers: the group's writers have let
	// go of the streams the remote member dialled.
	s, _ := tr.PeerStatus(2)
	for _, st := range s.Streams {
		if st.Writer.Up {
			t.Errorf("stream %s: the group's writer still holds the stream after Remove", st.Type)
		}
	}
	waitFor(t, "the remote member's redials to be refused", func() bool {
		s, _ := remote.tr.PeerStatus(1)
		return s.LastError != nil && strings.Contains(s.LastError.Error(), ErrClusterIDMismatch.Error()) &&
			!s.Streams[0].Reader.Up && !s.Streams[1].Reader.Up
	})
	// The Transport runs on; served again, its streams come back.
	if err := host.mux.Add(tr); err != nil {
		t.Fatalf("Add after Remove: %v", err)
	}
	waitPeerStreams(t, tr, 2)
	waitPeerStreams(t, remote.tr, 1)
}

// TestMuxAddRemoveUnderTraffic posts messages to several groups from many
// goroutines while groups are removed and added back: each answer is 204
// (the message reached that group's raft, and no other's) or 412 (the
// group was not served at that moment), and nothing races.
func TestMuxAddRemoveUnderTraffic(t *testing.T) {
	host := newMuxHost(t, unpooled())
	const groups = 4
	type group struct {
		tr  *Transport
		got atomic.Int64
		bad atomic.Int64 // messages of another group
	}
	gs := make([]*group, groups)
	for i := range gs {
		g := &group{}
		cluster := uint64(0x100 + i)
		r := newFakeRaft()
		r.setProcess(func(_ context.Context, m *raftpb.Message) error {
			if m.GetCommit() != cluster {
				g.bad.Add(1)
			}
			g.got.Add(1)
			return nil
		})
		g.tr = host.addGroup(t, cluster, 1, r)
		gs[i] = g
	}
	client := newClient(t)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(t.Context())
	var answers [600]atomic.Int64
	var sent [groups]atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			for n := 0; ctx.Err() == nil; n++ {
				i := (w + n) % groups
				cluster := uint64(0x100 + i)
				body, err := proto.Marshal(newMsg(raftpb.MsgHeartbeat, 2, 1, 1, withCommit(cluster)))
				if err != nil {
					t.Error(err)
					return
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, host.url+RaftPrefix, strings.NewReader(string(body)))
				for k, v := range map[string]string{headerClusterID: formatID(cluster), headerServerVersion: "3.7.0",
					headerMinClusterVersion: "3.0.0", headerServerFrom: "2"} {
					req.Header.Set(k, v)
				}
				resp, err := client.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						t.Errorf("POST: %v", err)
					}
					return
				}
				drainClose(resp.Body)
				answers[resp.StatusCode].Add(1)
				if resp.StatusCode == http.StatusNoContent {
					sent[i].Add(1)
				}
			}
		})
	}
	// Remove and add back the groups in turn, 20 times, while the posts
	// go on; wait for traffic between the turns.
	for n := range 20 {
		g := gs[n%groups]
		before := answers[http.StatusNoContent].Load() + answers[http.StatusPreconditionFailed].Load()
		if !host.mux.Remove(g.tr.ClusterID) {
			t.Fatalf("Remove %x: not served", g.tr.ClusterID)
		}
		waitFor(t, "posts while a group is out", func() bool {
			return answers[http.StatusNoContent].Load()+answers[http.StatusPreconditionFailed].Load() > before+8
		})
		if err := host.mux.Add(g.tr); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	for code := range answers {
		if n := answers[code].Load(); n > 0 && code != http.StatusNoContent && code != http.StatusPreconditionFailed {
			t.Errorf("%d answers %d, want only 204 and 412", n, code)
		}
	}
	if answers[http.StatusPreconditionFailed].Load() == 0 || answers[http.StatusNoContent].Load() == 0 {
		t.Errorf("answers: %d × 204, %d × 412; want both", answers[http.StatusNoContent].Load(), answers[http.StatusPreconditionFailed].Load())
	}
	for i, g := range gs {
		if g.bad.Load() != 0 {
			t.Errorf("group %d processed %d messages of other groups", i, g.bad.Load())
		}
		// A post in flight when the posters stopped may have been
		// processed without its answer being read.
		if got, want := g.got.Load(), sent[i].Load(); got < want || got > want+8 {
			t.Errorf("group %d processed %d messages, was answered 204 for %d", i, got, want)
		}
	}
}

// FuzzMux serves fuzzed requests through a Mux of two groups, the fuzz
// transport's (cluster beef1000, with a peer) and another (cluster
// beef2000): nothing panics (but the pipeline's deliberate abort), a
// request for a served cluster gets its group's answer (carrying its
// cluster ID), and any other gets a refusal that names no cluster: 405,
// 412 with etcd's bodies, the mux's 404 or redirect, or the probe's 200.
func FuzzMux(f *testing.F) {
	tr, _ := newFuzzTransport(f, true)
	other, _ := newNode(f, withID(htLocalID), withClusterID(0xbeef2000), unserved(), withLogger(nil)).parts()
	mux := &Mux{}
	for _, g := range []*Transport{tr, other} {
		if err := mux.Add(g); err != nil {
			f.Fatal(err)
		}
	}
	app := htFuzzMarshal(newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1")))
	for _, cid := range []string{seedCID, "beef2000", "BEEF1000", "0beef1000", "0", "", strings.Repeat("f", 100)} {
		f.Add("POST", "/raft", seedVersion, seedMin, cid, seedFrom, "", seedURLs, app)
		f.Add("GET", "/raft/stream/message/b2", seedVersion, seedMin, cid, seedFrom, seedTo, seedURLs, []byte(nil))
		f.Add("POST", "/raft/snapshot", seedVersion, seedMin, cid, seedFrom, "", seedURLs, htFuzzEnvelope(newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12), "db"))
		f.Add("GET", "/raft/snapshot/resume", seedVersion, seedMin, cid, seedFrom, "", seedURLs, []byte(nil))
		f.Add("PUT", "/raft", seedVersion, seedMin, cid, seedFrom, "", seedURLs, []byte(nil))
		f.Add("GET", "/raft/stream/message/b2", "garbage", seedMin, cid, seedFrom, seedTo, seedURLs, []byte(nil))
	}
	f.Add("GET", "/raft/probing", "", "", "", "", "", "", []byte(nil))
	f.Add("GET", "/raft/nothing", seedVersion, seedMin, "beef2000", seedFrom, "", seedURLs, []byte(nil))
	f.Add("GET", "/raft/../raft/probing", "", "", "", "", "", "", []byte(nil))
	served := map[string]bool{seedCID: true, "beef2000": true}
	f.Fuzz(func(t *testing.T, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs string, body []byte) {
		req, ok := htFuzzRequest(method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs, body)
		if !ok {
			return
		}
		defer htFuzzDropRemotes(tr)
		rec := httptest.NewRecorder()
		w := &closedStreamRecorder{ResponseRecorder: rec, ctx: req.Context()}
		panicked := make(chan any, 1)
		go func() {
			defer func() { panicked <- recover() }()
			mux.ServeHTTP(w, req)
		}()
		var p any
		select {
		case p = <-panicked:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s %q: the handler did not return", method, path)
		}
		code, respBody := rec.Code, rec.Body.String()
		if p != nil && (p != http.ErrAbortHandler || code != 500) {
			t.Fatalf("%s %q: handler panicked (status %d, body %q): %v", method, path, code, respBody, p)
		}
		if len(respBody) > 1024+3*len(path) {
			t.Fatalf("%s %q: got a body of %d bytes", method, path, len(respBody))
		}
		group := served[req.Header.Get(headerClusterID)] && req.URL.Path != ProbingPrefix
		switch got := rec.Header().Get(headerClusterID); {
		case group && code != 405 && code != 404 && code < 300 && got != req.Header.Get(headerClusterID):
			t.Fatalf("%s %q for cluster %q: status %d with X-Etcd-Cluster-ID %q, want the group's", method, path, clusterID, code, got)
		case !group && got != "":
			t.Fatalf("%s %q for cluster %q: status %d names cluster %q, want none", method, path, clusterID, code, got)
		}
		if group {
			return
		}
		switch code {
		case 200:
			if req.URL.Path != ProbingPrefix {
				t.Fatalf("%s %q for cluster %q: 200 from no group", method, path, clusterID)
			}
		case 301, 307, 308, 404, 405:
		case 412:
			if respBody != "incompatible version\n" && respBody != "cluster ID mismatch\n" {
				t.Fatalf("%s %q: 412 with body %q", method, path, respBody)
			}
		default:
			t.Fatalf("%s %q for cluster %q (not served): status %d, body %q", method, path, clusterID, code, respBody)
		}
	})
}
