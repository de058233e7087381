package rafthttp

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The remote tests run a transport for member a1 (newNode with htLocal) and play
// members posting to its handler. Forged IDs start at rtForged; rtMember is
// a real member joining, that a1 does not know yet.
const (
	rtForged = 0x10000
	rtMember = 0xe1
)

// rtPost POSTs a heartbeat from member from to h, as from would, announcing
// urls in X-PeerURLs, and checks that it is taken.
func rtPost(t testing.TB, h http.Handler, from uint64, urls string) {
	t.Helper()
	m := &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(from), To: proto.Uint64(htLocalID),
		Term: proto.Uint64(1)}
	req := httptest.NewRequest(http.MethodPost, RaftPrefix, bytes.NewReader(htMarshal(t, m)))
	req.Header = htHeaders(htPipeline)
	req.Header.Set("X-Server-From", formatID(from))
	req.Header.Set("X-PeerURLs", urls)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNoContent {
		t.Errorf("POST from %s: got %d (%q), want 204", formatID(from), rec.Code, rec.Body.String())
	}
}

// rtAnswer is a message from a1 to member to, as raft's answer to a
// heartbeat.
func rtAnswer(to uint64) *raftpb.Message {
	return &raftpb.Message{Type: raftpb.MsgHeartbeatResp.Enum(), From: proto.Uint64(htLocalID), To: proto.Uint64(to),
		Term: proto.Uint64(1)}
}

// rtMemberServer is a member's peer server: it records the messages POSTed
// to /raft and answers 204. Other routes answer 404, as for an unknown
// sender, so a peer of it falls back to the pipeline.
type rtMemberServer struct {
	srv *httptest.Server

	mu   sync.Mutex
	msgs []*raftpb.Message
}

func newRTMemberServer(t testing.TB) *rtMemberServer {
	t.Helper()
	s := &rtMemberServer{}
	s.srv = newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != RaftPrefix {
			w.Header().Set(headerServerVersion, DefaultServerVersion)
			http.Error(w, "error sender not found", http.StatusNotFound)
			return
		}
		body, err := io.ReadAll(r.Body)
		m := &raftpb.Message{}
		if err != nil || proto.Unmarshal(body, m) != nil {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		s.mu.Lock()
		s.msgs = append(s.msgs, m)
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	})
	return s
}

// received counts the messages to member to that reached the server.
func (s *rtMemberServer) received(to uint64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		if m.GetTo() == to {
			n++
		}
	}
	return n
}

// total counts the messages that reached the server.
func (s *rtMemberServer) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

// rtSeries counts the series of a collector.
func rtSeries(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 1024)
	go func() {
		c.Collect(ch)
		close(ch)
	}()
	n := 0
	for range ch {
		n++
	}
	return n
}

// rtPipelineWorkers counts the pipeline worker goroutines alive in the
// process, from the stacks of all goroutines: a measure of what remotes cost
// that does not trust the transport's own bookkeeping.
func rtPipelineWorkers() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	// A worker is the closure (*pipeline).start launches; inlined into
	// remote.start or peer.start its frame is named after them too.
	n := 0
	for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
		if bytes.Contains(g, []byte(".(*pipeline).start.func")) {
			n++
		}
	}
	return n
}

// rtRemotes returns the number of remotes, and of those learnt from
// requests that are running or stopping (the count the cap applies to).
func rtRemotes(tr *Transport) (all, learnt int) {
	tr.mu.RLock()
	defer tr.mu.RUnlock()
	return len(tr.remotes), tr.requestRemotes
}

// rtIsLearnt reports whether id is a remote learnt from a request (as
// opposed to absent, or the user's).
func rtIsLearnt(tr *Transport, id uint64) bool {
	tr.mu.RLock()
	defer tr.mu.RUnlock()
	r, ok := tr.remotes[id]
	return ok && r.fromRequest
}

// rtFlood POSTs n heartbeats from forged IDs first, first+1, ... to h from
// workers goroutines, every one naming url, and has tr answer each, as raft
// would. It returns when all are done.
func rtFlood(t testing.TB, tr *Transport, h http.Handler, first uint64, n, workers int, url string) {
	t.Helper()
	var next atomic.Uint64
	next.Store(first)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				id := next.Add(1) - 1
				if id >= first+uint64(n) {
					return
				}
				rtPost(t, h, id, url)
				tr.Send([]*raftpb.Message{rtAnswer(id)})
			}
		})
	}
	wg.Wait()
}

// TestRequestRemotesFloodDoesNotLockOutMember floods a1 with POSTs from 200
// made-up members, far beyond maxRequestRemotes, then has a real new member
// post: a1's answer to it must reach its server, not be dropped as sent to
// an unknown peer. Before remotes learnt from requests could be evicted,
// the first 64 forged IDs kept every place, and the answer was dropped.
func TestRequestRemotesFloodDoesNotLockOutMember(t *testing.T) {
	tr, fr := newNode(t, htLocal()).parts()
	h := tr.Handler()
	flood := newRTMemberServer(t)
	member := newRTMemberServer(t)

	rtFlood(t, tr, h, rtForged, 200, 4, flood.srv.URL)
	all, learnt := rtRemotes(tr)
	t.Logf("after the flood: %d remotes, %d learnt; forged answers delivered: %d", all, learnt, flood.total())
	if all != maxRequestRemotes || learnt != maxRequestRemotes {
		t.Fatalf("after the flood: %d remotes, %d learnt, want %d of each", all, learnt, maxRequestRemotes)
	}

	rtPost(t, h, rtMember, member.srv.URL)
	if !rtIsLearnt(tr, rtMember) {
		t.Fatal("the member's POST did not make it a remote")
	}
	unknown := map[string]string{"Peer": unknownPeerLabel, "Reason": dropUnknownPeer}
	unknownBefore := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", unknown)
	tr.Send([]*raftpb.Message{rtAnswer(rtMember)})
	waitFor(t, "the answer to reach the member", func() bool { return member.received(rtMember) == 1 })
	if n := fr.unreachableCount(rtMember); n != 0 {
		t.Errorf("ReportUnreachable(member) called %d times, want 0", n)
	}
	if got := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", unknown) - unknownBefore; got != 0 {
		t.Errorf("the answer was dropped as to an unknown peer (%v drops)", got)
	}
	if all, learnt := rtRemotes(tr); all != maxRequestRemotes || learnt != maxRequestRemotes {
		t.Errorf("after the member: %d remotes, %d learnt, want %d of each", all, learnt, maxRequestRemotes)
	}
}

// TestRequestRemotesGoroutinesBounded checks that a concurrent flood of
// forged members never has more pipeline workers alive than the cap allows:
// an evicted remote's workers end before its replacement's start. The
// workers are counted from goroutine stacks while the flood runs.
func TestRequestRemotesGoroutinesBounded(t *testing.T) {
	tr, _ := newNode(t, htLocal()).parts()
	h := tr.Handler()
	flood := newRTMemberServer(t)
	bound := maxRequestRemotes * DefaultPipelineWorkers
	goroutinesBefore := runtime.NumGoroutine()

	done := make(chan struct{})
	var samples, maxWorkers, maxLearnt int
	var sampler sync.WaitGroup
	sampler.Go(func() {
		for {
			w := rtPipelineWorkers()
			_, learnt := rtRemotes(tr)
			samples++
			maxWorkers = max(maxWorkers, w)
			maxLearnt = max(maxLearnt, learnt)
			select {
			case <-done:
				return
			default:
			}
		}
	})
	rtFlood(t, tr, h, rtForged, 300, 8, flood.srv.URL)
	close(done)
	sampler.Wait()

	goroutinesAfter := runtime.NumGoroutine()
	t.Logf("%d samples: at most %d pipeline workers (bound %d), %d learnt remotes (cap %d); goroutines %d before, %d after",
		samples, maxWorkers, bound, maxLearnt, maxRequestRemotes, goroutinesBefore, goroutinesAfter)
	if maxWorkers > bound {
		t.Errorf("saw %d pipeline workers, want at most %d", maxWorkers, bound)
	}
	if maxLearnt > maxRequestRemotes {
		t.Errorf("saw %d learnt remotes, want at most %d", maxLearnt, maxRequestRemotes)
	}
	// The last remotes' workers may not have run yet: wait for them.
	waitFor(t, fmt.Sprintf("%d pipeline workers after the flood (a full cap)", bound), func() bool {
		return rtPipelineWorkers() == bound
	})
	// The remotes' series went with them: a bounded number is left.
	if n := rtSeries(tr.metrics.sentBytes); n > maxRequestRemotes {
		t.Errorf("%d sent_bytes series, want at most %d", n, maxRequestRemotes)
	}
}

// TestRequestRemotesSparesUserRemotes checks that a remote the user added
// survives a flood of forged members, which evicts learnt remotes, and the
// idle timeout, which closes them; and that AddRemote of a learnt remote
// makes it the user's, at the user's URLs.
func TestRequestRemotesSparesUserRemotes(t *testing.T) {
	const user = 0xd1
	tests := []struct {
		name string
		// setup makes user a remote of tr, the user's server at url and
		// a stale server at stale; it runs before the flood, or after if
		// afterFlood.
		setup      func(t *testing.T, tr *Transport, h http.Handler, url, stale string)
		afterFlood bool
	}{
		{name: "added with AddRemote", setup: func(t *testing.T, tr *Transport, _ http.Handler, url, _ string) {
			if err := tr.AddRemote(user, []string{url}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "added with AddRemote at the cap", afterFlood: true, setup: func(t *testing.T, tr *Transport, _ http.Handler, url, _ string) {
			if err := tr.AddRemote(user, []string{url}); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "learnt, then adopted with AddRemote", setup: func(t *testing.T, tr *Transport, h http.Handler, url, stale string) {
			rtPost(t, h, user, stale)
			if !rtIsLearnt(tr, user) {
				t.Fatal("the POST did not make a learnt remote")
			}
			if err := tr.AddRemote(user, []string{url}); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.requestRemoteIdle = 200 * time.Millisecond })).parts()
			h := tr.Handler()
			flood := newRTMemberServer(t)
			userSrv := newRTMemberServer(t)
			stale := newRTMemberServer(t)
			if !tc.afterFlood {
				tc.setup(t, tr, h, userSrv.srv.URL, stale.srv.URL)
			}
			rtFlood(t, tr, h, rtForged, 2*maxRequestRemotes, 4, flood.srv.URL)
			if tc.afterFlood {
				tc.setup(t, tr, h, userSrv.srv.URL, stale.srv.URL)
			}
			waitFor(t, "the learnt remotes to expire", func() bool {
				all, learnt := rtRemotes(tr)
				return all == 1 && learnt == 0
			})
			if !htHasRemote(tr, user) || rtIsLearnt(tr, user) {
				t.Fatal("the user's remote is gone, or counted as learnt")
			}
			tr.Send([]*raftpb.Message{rtAnswer(user)})
			waitFor(t, "the message to reach the user's remote", func() bool { return userSrv.received(user) == 1 })
			if n := stale.received(user); n != 0 {
				t.Errorf("%d messages went to the URL the request gave, want 0", n)
			}
			if n := fr.unreachableCount(user); n != 0 {
				t.Errorf("ReportUnreachable(user) called %d times, want 0", n)
			}
			if w := rtPipelineWorkers(); w != DefaultPipelineWorkers {
				t.Errorf("%d pipeline workers left, want the user's remote's %d", w, DefaultPipelineWorkers)
			}
		})
	}
}

// TestRequestRemoteThenAddPeer checks what happens to a learnt remote when
// the member becomes a peer, as before remotes expired: AddPeer succeeds,
// Send goes to the peer, and the remote stays until it is closed as idle,
// which leaves the peer and its metric series alone.
func TestRequestRemoteThenAddPeer(t *testing.T) {
	tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.requestRemoteIdle = 500 * time.Millisecond })).parts()
	h := tr.Handler()
	learntAt := newRTMemberServer(t)
	peerAt := newRTMemberServer(t)

	rtPost(t, h, rtMember, learntAt.srv.URL)
	if err := tr.AddPeer(rtMember, []string{peerAt.srv.URL}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
	if !rtIsLearnt(tr, rtMember) {
		t.Error("AddPeer removed the learnt remote; it used to stay")
	}
	// The member's requests find the peer; the remote is not touched.
	rtPost(t, h, rtMember, learntAt.srv.URL)
	tr.Send([]*raftpb.Message{rtAnswer(rtMember)})
	waitFor(t, "the answer to reach the peer's URL", func() bool { return peerAt.received(rtMember) == 1 })

	waitFor(t, "the idle remote to close", func() bool { all, learnt := rtRemotes(tr); return all == 0 && learnt == 0 })
	if _, ok := tr.get(rtMember); !ok {
		t.Fatal("the peer went with the remote")
	}
	if n := learntAt.received(rtMember); n != 0 {
		t.Errorf("%d messages went through the remote, want 0: peers come first", n)
	}
	if got := seriesNaming(t, gathered(t, tr.metrics.sentBytes), formatID(rtMember)); len(got) == 0 {
		t.Error("closing the remote deleted the peer's sent_bytes series")
	}
	tr.Send([]*raftpb.Message{rtAnswer(rtMember)})
	waitFor(t, "the next answer to reach the peer", func() bool { return peerAt.received(rtMember) == 2 })
	if n := fr.unreachableCount(rtMember); n != 0 {
		t.Errorf("ReportUnreachable(member) called %d times, want 0", n)
	}
}

// TestRequestRemoteEviction checks which learnt remote makes room for a new
// one at the cap: the least recently used, where a request from the member
// and a Send to it are uses.
func TestRequestRemoteEviction(t *testing.T) {
	const a, b, c, d, e = rtForged + 0xa, rtForged + 0xb, rtForged + 0xc, rtForged + 0xd, rtForged + 0xe
	tests := []struct {
		name    string
		use     func(t *testing.T, tr *Transport, h http.Handler, url string) // after a, b, c are learnt in that order
		evicted uint64
	}{
		{name: "the oldest goes", use: func(*testing.T, *Transport, http.Handler, string) {}, evicted: a},
		{name: "a Send keeps it", evicted: b, use: func(_ *testing.T, tr *Transport, _ http.Handler, _ string) {
			tr.Send([]*raftpb.Message{rtAnswer(a)})
		}},
		{name: "a request keeps it", evicted: b, use: func(t *testing.T, _ *Transport, h http.Handler, url string) {
			rtPost(t, h, a, url)
		}},
		{name: "the user's are not candidates", evicted: b, use: func(t *testing.T, tr *Transport, h http.Handler, url string) {
			if err := tr.AddRemote(a, []string{url}); err != nil {
				t.Fatal(err)
			}
			rtPost(t, h, e, url) // takes the place a freed
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.maxRequestRemotes = 3 })).parts()
			h := tr.Handler()
			srv := newRTMemberServer(t)
			for _, id := range []uint64{a, b, c} {
				rtPost(t, h, id, srv.srv.URL)
				// Uses are stamped on the monotonic clock: make sure the
				// next one is later.
				stamp := monoNanos()
				waitFor(t, "the clock to move", func() bool { return monoNanos() > stamp })
			}
			tc.use(t, tr, h, srv.srv.URL)
			rtPost(t, h, d, srv.srv.URL)
			for _, id := range []uint64{a, b, c, d} {
				if got, want := htHasRemote(tr, id), id != tc.evicted; got != want {
					t.Errorf("remote %s exists: got %v, want %v", formatID(id), got, want)
				}
			}
		})
	}
}

// TestRetiredRemoteReportsDrops checks that the messages a learnt remote
// held when it was closed, queued or being posted, are reported to raft as
// drops (a MsgSnap as a failed snapshot too), counted, and that its workers
// and metric series are gone.
func TestRetiredRemoteReportsDrops(t *testing.T) {
	const victim, next = rtForged + 1, rtForged + 2
	tests := []struct {
		name      string
		configure func(*Transport)
		retire    func(t *testing.T, tr *Transport, h http.Handler, url string)
	}{
		{name: "evicted for a new remote", configure: func(tr *Transport) { tr.maxRequestRemotes = 1 },
			retire: func(t *testing.T, tr *Transport, h http.Handler, url string) { rtPost(t, h, next, url) }},
		{name: "closed when idle", configure: func(tr *Transport) { tr.requestRemoteIdle = 300 * time.Millisecond },
			retire: func(*testing.T, *Transport, http.Handler, string) {}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, fr := newNode(t, htLocal(), withConfig(tc.configure)).parts()
			h := tr.Handler()
			var posts atomic.Int32
			hung := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
				posts.Add(1)
				_, _ = io.Copy(io.Discard, r.Body)
				<-r.Context().Done() // never answers
			})
			other := newRTMemberServer(t)
			rtPost(t, h, victim, hung.URL)
			const sent = 10
			msgs := []*raftpb.Message{{Type: raftpb.MsgSnap.Enum(), From: proto.Uint64(htLocalID), To: proto.Uint64(victim),
				Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(1), Term: proto.Uint64(1)}}}}
			for len(msgs) < sent {
				msgs = append(msgs, rtAnswer(victim))
			}
			tr.Send(msgs)
			waitFor(t, "every worker to be stuck in a POST", func() bool { return posts.Load() == DefaultPipelineWorkers })

			tc.retire(t, tr, h, other.srv.URL)
			waitFor(t, "the remote to be closed", func() bool { return !htHasRemote(tr, victim) })
			waitFor(t, "every message to be reported", func() bool { return fr.unreachableCount(victim) >= sent })
			if n := fr.unreachableCount(victim); n != sent {
				t.Errorf("ReportUnreachable(victim) called %d times, want %d", n, sent)
			}
			if got, want := fr.snapshotReports(), []snapshotReport{{victim, raft.SnapshotFailure}}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("snapshot reports: got %v, want %v", got, want)
			}
			if got := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", map[string]string{"Peer": unknownPeerLabel, "Reason": dropRetired}); got != sent {
				t.Errorf("%v drops counted as retired, want %d", got, sent)
			}
			// The series go after the remote's retirement has returned,
			// which its reports precede.
			waitFor(t, "the series of the closed remote to go", func() bool {
				return len(seriesNaming(t, gathered(t, tr.metrics.sentBytes), formatID(victim))) == 0
			})
			waitFor(t, "the closed remote's workers to end", func() bool {
				_, learnt := rtRemotes(tr)
				return rtPipelineWorkers() == learnt*DefaultPipelineWorkers
			})
		})
	}
}

// TestRequestRemoteURLs checks whose URLs a remote sends to when requests
// name others: a learnt remote follows the latest request, so that a
// forged request naming a real member's ID cannot point it elsewhere for
// good, while the user's remotes keep the user's URLs.
func TestRequestRemoteURLs(t *testing.T) {
	tests := []struct {
		name     string
		add      func(t *testing.T, tr *Transport, h http.Handler, first string)
		wantLast bool // the message goes to the second URL
	}{
		{name: "learnt remote follows the latest request", wantLast: true,
			add: func(t *testing.T, _ *Transport, h http.Handler, first string) { rtPost(t, h, rtMember, first) }},
		{name: "the user's remote keeps its URLs",
			add: func(t *testing.T, tr *Transport, _ http.Handler, first string) {
				if err := tr.AddRemote(rtMember, []string{first}); err != nil {
					t.Fatal(err)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newNode(t, htLocal()).parts()
			h := tr.Handler()
			first, second := newRTMemberServer(t), newRTMemberServer(t)
			tc.add(t, tr, h, first.srv.URL)
			rtPost(t, h, rtMember, second.srv.URL)
			tr.Send([]*raftpb.Message{rtAnswer(rtMember)})
			want, notWant := first, second
			if tc.wantLast {
				want, notWant = second, first
			}
			waitFor(t, "the message to arrive", func() bool { return want.received(rtMember) == 1 })
			if n := notWant.received(rtMember); n != 0 {
				t.Errorf("%d messages went to the other URL, want 0", n)
			}
		})
	}
}

// TestSweepIdleRemotes checks the janitor's sweep on a clock the test sets:
// which remotes it closes, and when it asks to wake next.
func TestSweepIdleRemotes(t *testing.T) {
	const idle = time.Hour // the janitor itself never fires in the test
	const user = 0xd1
	tests := []struct {
		name     string
		unused   []time.Duration // how long each learnt remote was unused at the sweep
		userIdle bool            // a user's remote, unused for 2*idle, exists too
		wantLeft int             // learnt remotes left
		wantNext time.Duration
		wantMore bool
	}{
		{name: "none idle", unused: []time.Duration{time.Minute, 10 * time.Minute}, wantLeft: 2,
			wantNext: idle - 10*time.Minute, wantMore: true},
		{name: "one idle", unused: []time.Duration{idle, 20 * time.Minute}, wantLeft: 1,
			wantNext: idle - 20*time.Minute, wantMore: true},
		{name: "all idle", unused: []time.Duration{idle, 2 * idle}, wantNext: idle},
		{name: "the user's never expire", unused: []time.Duration{2 * idle}, userIdle: true, wantNext: idle},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.requestRemoteIdle = idle })).parts()
			h := tr.Handler()
			srv := newRTMemberServer(t)
			if tc.userIdle {
				if err := tr.AddRemote(user, []string{srv.srv.URL}); err != nil {
					t.Fatal(err)
				}
			}
			for i := range tc.unused {
				rtPost(t, h, rtForged+uint64(i), srv.srv.URL)
			}
			now := monoNanos() + int64(3*idle)
			tr.mu.RLock()
			for id, r := range tr.remotes {
				unused := 2 * idle
				if id != user {
					unused = tc.unused[id-rtForged]
				}
				r.lastUsed.Store(now - int64(unused))
			}
			tr.mu.RUnlock()

			next, more := tr.sweepIdleRemotes(now)
			if next != tc.wantNext || more != tc.wantMore {
				t.Errorf("sweep: got (%v, %v), want (%v, %v)", next, more, tc.wantNext, tc.wantMore)
			}
			all, learnt := rtRemotes(tr)
			if learnt != tc.wantLeft || all != tc.wantLeft+map[bool]int{true: 1}[tc.userIdle] {
				t.Errorf("left: %d remotes, %d learnt; want %d learnt", all, learnt, tc.wantLeft)
			}
			if tc.userIdle && !htHasRemote(tr, user) {
				t.Error("the user's remote was closed")
			}
		})
	}
}
