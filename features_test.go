package rafthttp

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
)

func TestParseFeatures(t *testing.T) {
	crc := featureSet(1 << featureCRC32CTrailer)
	for _, tc := range []struct {
		name string
		in   string
		want featureSet
	}{
		{"empty", "", 0},
		{"ours", "crc32c-trailer", crc},
		{"spaces and tabs around tokens", " \tcrc32c-trailer\t ", crc},
		{"unknown tokens ignored", "resumable-snapshot,crc32c-trailer,zstd-msgappv2", crc},
		{"only unknown tokens", "resumable-snapshot, zstd", 0},
		{"empty tokens", ",,crc32c-trailer,,", crc},
		{"repeated token", "crc32c-trailer,crc32c-trailer", crc},
		{"case matters", "CRC32C-Trailer", 0},
		{"a prefix is another token", "crc32c-trailer-v2,crc32c", 0},
		{"inner space is not a separator", "crc32c-trailer foo", 0},
		{"just under the bound", strings.Repeat(" ", maxFeaturesHeader-len("crc32c-trailer")) + "crc32c-trailer", crc},
		{"over the bound ignored whole", strings.Repeat(" ", maxFeaturesHeader) + "crc32c-trailer", 0},
		{"invalid UTF-8", "\xff\xfe,crc32c-trailer", crc},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := parseFeatures(tc.in); got != tc.want {
				t.Errorf("parseFeatures(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

func TestFeaturesOf(t *testing.T) {
	crc := featureSet(1 << featureCRC32CTrailer)
	for _, tc := range []struct {
		name   string
		values []string
		want   featureSet
	}{
		{"absent: an etcd peer", nil, 0},
		{"one line", []string{"crc32c-trailer"}, crc},
		{"several lines are one list", []string{"zstd", "crc32c-trailer"}, crc},
		{"several lines over the bound together", []string{strings.Repeat("x", maxFeaturesHeader/2), strings.Repeat("y", maxFeaturesHeader/2), "crc32c-trailer"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for _, v := range tc.values {
				h.Add(headerFeatures, v)
			}
			if got := featuresOf(h); got != tc.want {
				t.Errorf("featuresOf(%q) = %q, want %q", tc.values, got, tc.want)
			}
		})
	}
}

// oursAnnounce is the announcement this version sends, and
// oursAnnounceNoStore its announcement without a ResumableSnapshotStore.
const (
	oursAnnounce        = "crc32c-trailer,identity-refusal,snapshot-resume,pipeline-batch"
	oursAnnounceNoStore = "crc32c-trailer,identity-refusal,pipeline-batch"
)

// TestFeatureSetString: the announcement we send, byte for byte, and that
// every known feature has a token that parses back to it.
func TestFeatureSetString(t *testing.T) {
	if got, want := supportedFeatures.String(), oursAnnounce; got != want {
		t.Errorf("supportedFeatures = %q, want %q", got, want)
	}
	if got := featureSet(0).String(); got != "" {
		t.Errorf("empty set = %q, want \"\"", got)
	}
	all := featureSet(1<<numFeatures - 1)
	if got := parseFeatures(all.String()); got != all {
		t.Errorf("parseFeatures(%q) = %q, want every feature", all.String(), got)
	}
	for f := range numFeatures {
		if tok := featureTokens[f]; tok == "" || strings.ContainsAny(tok, ", \t") || tok != strings.ToLower(tok) {
			t.Errorf("feature %d has token %q: want a lowercase token without separators", f, tok)
		}
	}
}

// TestPeerFeaturesLearn: the latest announcement wins, and an absent one
// (an etcd member restarted in the place of ours) resets what was known.
func TestPeerFeaturesLearn(t *testing.T) {
	var pf peerFeatures
	for _, step := range []struct {
		name   string
		header string // "" sends no header
		want   featureSet
	}{
		{"ours announces", oursAnnounce, supportedFeatures},
		{"ours without a resumable store", oursAnnounceNoStore, resumeNoFeature},
		{"a newer version adds unknown features", oursAnnounce + ",zstd", supportedFeatures},
		{"restarted as etcd: no header", "", 0},
		{"ours again", oursAnnounce, supportedFeatures},
	} {
		h := http.Header{}
		if step.header != "" {
			h.Set(headerFeatures, step.header)
		}
		pf.learn(h, zap.NewNop(), monoNanos)
		if got := pf.load(); got != step.want {
			t.Errorf("%s: features = %q, want %q", step.name, got, step.want)
		}
	}
	var remote *peerFeatures // a remote's pipeline has none
	remote.learn(http.Header{headerFeatures: {"crc32c-trailer"}}, zap.NewNop(), monoNanos)
	if got := remote.load(); got != 0 {
		t.Errorf("nil peerFeatures = %q, want the empty set", got)
	}
}

func FuzzParseFeatures(f *testing.F) {
	for _, seed := range []string{
		"", "crc32c-trailer", " crc32c-trailer ,zstd", ",,,", "crc32c-trailer,crc32c-trailer",
		"CRC32C-TRAILER", "\xff\x00,crc32c-trailer", strings.Repeat("crc32c-trailer,", 100),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, v string) {
		s := parseFeatures(v)
		if s&^(1<<numFeatures-1) != 0 {
			t.Fatalf("parseFeatures(%q) = %b: bits of no feature", v, s)
		}
		// What we parse, we can announce again to the same effect.
		if again := parseFeatures(s.String()); again != s {
			t.Fatalf("parseFeatures(%q) = %q, which parses back to %q", v, s, again)
		}
		if len(v) > maxFeaturesHeader && s != 0 {
			t.Fatalf("parseFeatures read %d bytes, over the bound", len(v))
		}
		if s.has(featureCRC32CTrailer) && !strings.Contains(v, featureTokens[featureCRC32CTrailer]) {
			t.Fatalf("parseFeatures(%q) found a token that is not there", v)
		}
	})
}

// snapSeen records what a snapshot receiver got: the sender's announcement
// and the CRC-32C trailer, read once the handler has read the body to its
// end.
type snapSeen struct {
	mu       sync.Mutex
	posts    int
	features []string
	trailer  []string
}

func (s *snapSeen) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r)
		if r.URL.Path != RaftSnapshotPrefix {
			return
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		s.posts++
		s.features = append(s.features, r.Header.Get(headerFeatures))
		s.trailer = append(s.trailer, r.Trailer.Get(trailerCRC32C))
	})
}

func announcing(s featureSet) func(*Transport) {
	return func(tr *Transport) { tr.announce = &s }
}

// trailerOnly is what a member of this version announces without a
// ResumableSnapshotStore, and what one of the version before announced.
const trailerOnly = featureSet(1 << featureCRC32CTrailer)

// TestFeatureNegotiationSnapshotTrailer: the CRC-32C trailer travels only
// when both sides announced it; a side that announces nothing (as etcd)
// sends no header, and what each side learnt of the other, from the stream
// dials, is what the other announced. The payload is stored either way.
func TestFeatureNegotiationSnapshotTrailer(t *testing.T) {
	const size = 256 << 10
	for _, tc := range []struct {
		name             string
		sender, receiver featureSet
		wantTrailer      bool
	}{
		{"both announce", trailerOnly, trailerOnly, true},
		{"receiver announces nothing", trailerOnly, 0, false},
		{"sender announces nothing", 0, trailerOnly, false},
		{"neither announces", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var seen snapSeen
			a := newNode(t, withID(1), withConfig(announcing(tc.sender)))
			b := newNode(t, withID(2), withConfig(announcing(tc.receiver)), withStore(DirSnapshotStore{Dir: dir}), wrapHandler(seen.wrap))
			connect(t, a, b)
			// Each side has dialled the other's streams, so each has read
			// the other's answer and request.
			waitStreamsUp(t, a, b)
			pa, _ := a.tr.get(2)
			pb, _ := b.tr.get(1)
			if got := pa.features.load(); got != tc.receiver {
				t.Errorf("sender learnt %q, want the receiver's %q", got, tc.receiver)
			}
			if got := pb.features.load(); got != tc.sender {
				t.Errorf("receiver learnt %q, want the sender's %q", got, tc.sender)
			}
			if st, _ := a.tr.PeerStatus(2); st.Features != tc.receiver.String() {
				t.Errorf("PeerStats.Features = %q, want %q", st.Features, tc.receiver.String())
			}

			payload := snapBytes(7, size)
			if err := snapWait(t, snapSend(a, 2, 12, io.NopCloser(bytes.NewReader(payload)), size)); err != nil {
				t.Fatalf("SendSnapshot: %v", err)
			}
			seen.mu.Lock()
			posts, features, trailer := seen.posts, seen.features, seen.trailer
			seen.mu.Unlock()
			if posts != 1 {
				t.Fatalf("receiver saw %d snapshot POSTs, want 1", posts)
			}
			if got, want := features[0], tc.sender.String(); got != want {
				t.Errorf("announcement on the POST = %q, want %q", got, want)
			}
			if got := trailer[0] != ""; got != tc.wantTrailer {
				t.Errorf("trailer %q sent: %v, want %v", trailer[0], got, tc.wantTrailer)
			}
			data, err := os.ReadFile(DirSnapshotStore{Dir: dir}.Path(12))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, payload) {
				t.Errorf("stored %d bytes, want the %d sent", len(data), len(payload))
			}
		})
	}
}

// waitFeatures waits until a has learnt that peer announced f.
func waitFeatures(t testing.TB, a *testNode, peer uint64, f feature) {
	t.Helper()
	waitFor(t, "the peer's features to be known", func() bool {
		p, ok := a.tr.get(peer)
		return ok && p.features.load().has(f)
	})
}

// TestFeaturesLearntFromRequests: a configured peer's pipeline and snapshot
// requests teach us its announcement, an etcd request (no header) resets
// it, and every answer, an error included, carries ours.
func TestFeaturesLearntFromRequests(t *testing.T) {
	routes := []struct {
		name string
		kind htKind
		path string
		body func(t *testing.T) io.Reader
	}{
		{"pipeline", htPipeline, "/raft", func(t *testing.T) io.Reader {
			return bytes.NewReader(htMarshal(t, newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 10)))
		}},
		{"snapshot", htSnapshot, "/raft/snapshot", func(t *testing.T) io.Reader {
			return bytes.NewReader(append(htEnvelope(t, newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12)), "payload"...))
		}},
	}
	for _, rt := range routes {
		for _, tc := range []struct {
			name     string
			header   func(http.Header)
			before   featureSet // what we knew of the peer before
			wantCode int
			want     featureSet
		}{
			{"ours announces", setHeader("X-Rafthttp-Features", oursAnnounce), 0, http.StatusNoContent, supportedFeatures},
			{"ours without a resumable store", setHeader("X-Rafthttp-Features", oursAnnounceNoStore), supportedFeatures, http.StatusNoContent, resumeNoFeature},
			{"etcd announces nothing", nil, supportedFeatures, http.StatusNoContent, 0},
			{"refused request teaches nothing", func(h http.Header) {
				h.Set("X-Etcd-Cluster-ID", "1")
				h.Set("X-Rafthttp-Features", "crc32c-trailer")
			}, 0, http.StatusPreconditionFailed, 0},
		} {
			t.Run(rt.name+"/"+tc.name, func(t *testing.T) {
				htRun(t, htCase{
					header: tc.header,
					setup: func(t *testing.T, e *htEnv) {
						htAddPeer(t, e.tr)
						p, _ := e.tr.get(htPeerID)
						p.features.v.Store(uint32(tc.before))
					},
					wantCode:   tc.wantCode,
					anyBody:    true,
					wantHeader: map[string]string{"X-Rafthttp-Features": oursAnnounce}, // memStore resumes
					check: func(t *testing.T, e *htEnv) {
						p, _ := e.tr.get(htPeerID)
						if got := p.features.load(); got != tc.want {
							t.Errorf("learnt %q, want %q", got, tc.want)
						}
					},
				}, rt.kind, http.MethodPost, rt.path, rt.body)
			})
		}
	}
}

// fakeAnnouncer is a peer that answers pipeline and snapshot POSTs with
// 204 and its announcement, and never answers a stream dial, so that those
// answers are the only ones we learn from.
type fakeAnnouncer struct {
	announce string // "" sends no header

	mu       sync.Mutex
	posts    map[string]int
	trailers []string // the snapshot trailers received
}

func (f *fakeAnnouncer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		<-r.Context().Done() // a stream dial: no answer until it is cut
		return
	}
	_, _ = io.Copy(io.Discard, r.Body)
	f.mu.Lock()
	f.posts[r.URL.Path]++
	if r.URL.Path == RaftSnapshotPrefix {
		f.trailers = append(f.trailers, r.Trailer.Get(trailerCRC32C))
	}
	f.mu.Unlock()
	if f.announce != "" {
		w.Header().Set(headerFeatures, f.announce)
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *fakeAnnouncer) count(path string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.posts[path]
}

// TestFeaturesLearntFromAnswers: the answers to our pipeline and snapshot
// POSTs teach us the peer's announcement, and the first snapshot to a peer
// we have not heard from carries no trailer.
func TestFeaturesLearntFromAnswers(t *testing.T) {
	for _, tc := range []struct {
		name     string
		snapshot bool // else a pipeline POST
		announce string
		before   featureSet
		want     featureSet
	}{
		{"pipeline answer announces", false, oursAnnounce, 0, supportedFeatures},
		{"pipeline answer from etcd", false, "", supportedFeatures, 0},
		{"snapshot answer announces", true, oursAnnounce, 0, supportedFeatures},
		{"snapshot answer from etcd", true, "", supportedFeatures, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fake := &fakeAnnouncer{announce: tc.announce, posts: map[string]int{}}
			srv := httptest.NewServer(fake)
			t.Cleanup(srv.Close) // after the node's cleanup, which cuts the dials
			a := newNode(t, withID(1))
			if err := a.tr.AddPeer(2, []string{srv.URL}); err != nil {
				t.Fatal(err)
			}
			p, _ := a.tr.get(2)
			p.features.v.Store(uint32(tc.before))
			if !tc.snapshot {
				// The streams never come up: the heartbeat goes by the pipeline.
				a.tr.Send([]*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(1)}})
				waitFor(t, "the pipeline POST", func() bool { return fake.count(RaftPrefix) > 0 })
				waitFor(t, "the features to be learnt", func() bool { return p.features.load() == tc.want })
				return
			}
			payload := []byte("payload")
			if err := snapWait(t, snapSend(a, 2, 12, io.NopCloser(bytes.NewReader(payload)), int64(len(payload)))); err != nil {
				t.Fatalf("SendSnapshot: %v", err)
			}
			if got := p.features.load(); got != tc.want {
				t.Errorf("learnt %q, want %q", got, tc.want)
			}
			fake.mu.Lock()
			defer fake.mu.Unlock()
			if wantTrailer := tc.before.has(featureCRC32CTrailer); len(fake.trailers) != 1 || (fake.trailers[0] != "") != wantTrailer {
				t.Errorf("trailers %q, want one, present: %v", fake.trailers, wantTrailer)
			}
		})
	}
}

// BenchmarkPeerFeaturesLearn is what every pipeline POST and answer pays to
// learn an unchanged announcement.
func BenchmarkPeerFeaturesLearn(b *testing.B) {
	for _, bc := range []struct {
		name string
		h    http.Header
	}{
		{"ours", http.Header{headerFeatures: {oursAnnounce}}},
		{"etcd", http.Header{}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var pf peerFeatures
			lg := zap.NewNop()
			b.ReportAllocs()
			for b.Loop() {
				pf.learn(bc.h, lg, monoNanos)
			}
		})
	}
}
