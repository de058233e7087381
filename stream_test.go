package rafthttp

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// getLog records the stream GETs a fake peer server receives.
type getLog struct {
	mu   sync.Mutex
	reqs []*http.Request // clones, without bodies
	at   []time.Time
}

func (l *getLog) add(r *http.Request) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reqs = append(l.reqs, r.Clone(context.Background()))
	l.at = append(l.at, time.Now())
}

// count returns how many GETs of path (all paths if "") arrived.
func (l *getLog) count(path string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.reqs {
		if path == "" || r.URL.Path == path {
			n++
		}
	}
	return n
}

// times returns when the GETs of path arrived.
func (l *getLog) times(path string) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []time.Time
	for i, r := range l.reqs {
		if r.URL.Path == path {
			out = append(out, l.at[i])
		}
	}
	return out
}

// first returns the first GET of path, or nil.
func (l *getLog) first(path string) *http.Request {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, r := range l.reqs {
		if r.URL.Path == path {
			return r
		}
	}
	return nil
}

// TestStreamStalledRedial is spec §12 W1: a peer that answers the stream GET
// and then goes silent, with the TCP connection open, must be detected
// within the read timeout; the reader drops the stream, the peer turns
// inactive, and the stream is redialled. etcd takes minutes (TCP
// keep-alive).
func TestStreamStalledRedial(t *testing.T) {
	const readTimeout = 300 * time.Millisecond
	var gets getLog
	srv := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !strings.HasPrefix(r.URL.Path, RaftStreamPrefix+"/") {
			http.Error(w, "not a stream", http.StatusNotFound)
			return
		}
		gets.add(r)
		w.Header().Set(headerServerVersion, DefaultServerVersion)
		w.WriteHeader(http.StatusOK)
		http.NewResponseController(w).Flush()
		<-r.Context().Done() // silence, with the connection open
	})
	tr, _ := newNode(t, withID(1), unserved(), withConfig(func(tr *Transport) {
		tr.ConnReadTimeout = readTimeout
		// A redial delay long enough to observe the inactive status.
		tr.DialRetryMin, tr.DialRetryMax = 200*time.Millisecond, 200*time.Millisecond
	})).parts()
	if err := tr.AddPeer(2, []string{srv.URL}); err != nil {
		t.Fatal(err)
	}
	const path = RaftStreamPrefix + "/message/1"
	waitFor(t, "the first stream GETs", func() bool { return gets.count(path) >= 1 && gets.count("") >= 2 })
	waitFor(t, "the peer to become active", func() bool { return !tr.ActiveSince(2).IsZero() })
	gets.mu.Lock()
	earliest := gets.at[0] // of both readers' first GETs
	gets.mu.Unlock()
	waitFor(t, "the peer to become inactive", func() bool { return tr.ActiveSince(2).IsZero() })
	inactive := time.Since(earliest)
	waitFor(t, "a second stream GET", func() bool { return gets.count(path) >= 2 })
	times := gets.times(path)
	redial := times[1].Sub(times[0])
	t.Logf("silent stream detected (peer inactive) %v after the GET; redialled after %v (read timeout %v)",
		inactive, redial, readTimeout)
	if inactive < readTimeout {
		t.Errorf("peer turned inactive %v after the GET, before the %v read timeout", inactive, readTimeout)
	}
	if redial > 3*readTimeout {
		t.Errorf("got the second GET %v after the first, want within %v", redial, 3*readTimeout)
	}
	p, _ := tr.get(2)
	if err := p.status.lastError(); err == nil || !strings.Contains(err.Error(), "read") {
		t.Errorf("got inactive reason %v, want a read failure", err)
	}
}

// TestStreamReaderDialRequest checks the stream dial request: GET of
// /raft/stream/{message,msgapp}/<local ID in hex> with the common headers and
// X-Raft-To.
func TestStreamReaderDialRequest(t *testing.T) {
	var gets getLog
	srv := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		gets.add(r)
		w.Header().Set(headerServerVersion, DefaultServerVersion)
		http.Error(w, "error sender not found", http.StatusNotFound)
	})
	tr, _ := newNode(t, withID(0x1f), unserved(), withConfig(func(tr *Transport) {
		tr.ClusterID = 0xABCDEF
		tr.URLs = []string{"http://127.0.0.1:2380", "http://10.0.0.1:2380"}
	})).parts()
	if err := tr.AddPeer(0x2a, []string{srv.URL}); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/raft/stream/message/1f", "/raft/stream/msgapp/1f"} {
		waitFor(t, "a GET of "+path, func() bool { return gets.first(path) != nil })
		r := gets.first(path)
		if r.Method != http.MethodGet {
			t.Errorf("%s: got method %s, want GET", path, r.Method)
		}
		for h, want := range map[string]string{
			headerRaftTo:            "2a",
			headerClusterID:         "abcdef",
			headerServerFrom:        "1f",
			headerServerVersion:     DefaultServerVersion,
			headerMinClusterVersion: DefaultMinClusterVersion,
			headerPeerURLs:          "http://10.0.0.1:2380,http://127.0.0.1:2380",
		} {
			if got := r.Header.Get(h); got != want {
				t.Errorf("%s: got %s %q, want %q", path, h, got, want)
			}
		}
	}
	if n := gets.count(""); n < 2 {
		t.Errorf("got %d GETs, want at least 2", n)
	}
}

// TestStreamReaderDialResult checks how the dialer maps the stream
// response (spec §2.6), calling dial directly.
func TestStreamReaderDialResult(t *testing.T) {
	tests := []struct {
		name     string
		version  string // X-Server-Version of the response; "-" for none
		status   int
		body     string
		ok       bool
		wantErr  error // if not nil, the error must wrap it
		errText  string
		critical bool // ErrMemberRemoved posted to ErrorC
	}{
		{name: "200", version: DefaultServerVersion, status: 200, ok: true},
		{name: "200 from an older 3.x", version: "3.5.17", status: 200, ok: true},
		{name: "410 removed", version: DefaultServerVersion, status: 410, body: "removed member", wantErr: ErrMemberRemoved, critical: true},
		{name: "404", version: DefaultServerVersion, status: 404, body: "error sender not found", errText: "failed to find local node"},
		{name: "412 incompatible version", version: DefaultServerVersion, status: 412, body: "incompatible version", wantErr: ErrIncompatibleVersion},
		{name: "412 cluster ID mismatch", version: DefaultServerVersion, status: 412, body: "cluster ID mismatch", wantErr: ErrClusterIDMismatch},
		{name: "412 to field mismatch", version: DefaultServerVersion, status: 412, body: "to field mismatch", errText: "unhandled error"},
		{name: "405", version: DefaultServerVersion, status: 405, body: "Method Not Allowed", errText: "unhandled http status 405"},
		{name: "500", version: DefaultServerVersion, status: 500, errText: "unhandled http status 500"},
		{name: "404 without version (etcd 2.0)", version: "-", status: 404, wantErr: ErrUnsupportedStreamType},
		{name: "200 from etcd 2.0", version: "2.0.0", status: 200, wantErr: ErrUnsupportedStreamType},
		{name: "200 with a garbage version", version: "garbage", status: 200, wantErr: ErrIncompatibleVersion},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.version != "-" {
					w.Header().Set(headerServerVersion, tc.version)
				}
				if tc.status == http.StatusOK {
					w.WriteHeader(http.StatusOK)
					return // the stream ends at once; dial only sees the headers
				}
				http.Error(w, tc.body, tc.status)
			})
			errc := make(chan error, 1)
			// The peer's own readers dial a dead address; dial is called
			// directly on the fake server.
			tr, _ := newNode(t, withID(1), unserved(), withConfig(func(tr *Transport) { tr.ErrorC = errc })).parts()
			if err := tr.AddPeer(2, []string{"http://" + freeAddr(t)}); err != nil {
				t.Fatal(err)
			}
			p, _ := tr.get(2)
			for _, r := range []*streamReader{p.readers[streamTypeMessage], p.readers[streamTypeMsgAppV2]} {
				body, err := r.dial(context.Background(), srv.URL)
				if body != nil {
					body.Close()
				}
				if tc.ok {
					if err != nil || body == nil {
						t.Errorf("%s: got error %v, want a stream", r.typ, err)
					}
					continue
				}
				if err == nil {
					t.Errorf("%s: got a stream, want an error", r.typ)
					continue
				}
				if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
					t.Errorf("%s: got %v, want an error wrapping %v", r.typ, err, tc.wantErr)
				}
				if tc.errText != "" && !strings.Contains(err.Error(), tc.errText) {
					t.Errorf("%s: got %v, want an error containing %q", r.typ, err, tc.errText)
				}
				if !errors.Is(tc.wantErr, ErrUnsupportedStreamType) && errors.Is(err, ErrUnsupportedStreamType) {
					t.Errorf("%s: got %v, want it not to be taken for an unsupported stream type", r.typ, err)
				}
			}
			select {
			case err := <-errc:
				if !tc.critical {
					t.Errorf("got %v on ErrorC, want nothing", err)
				} else if !errors.Is(err, ErrMemberRemoved) {
					t.Errorf("got %v on ErrorC, want ErrMemberRemoved", err)
				}
			default:
				if tc.critical {
					t.Error("got nothing on ErrorC, want ErrMemberRemoved")
				}
			}
		})
	}
}

// TestStreamUnsupportedKeepsStatus checks that a remote that does not serve
// our streams (an etcd 2.0 peer: 404 without X-Server-Version) does not make
// the peer inactive: its pipeline works, and that is what status reflects.
func TestStreamUnsupportedKeepsStatus(t *testing.T) {
	var gets getLog
	srv := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == RaftPrefix {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		gets.add(r)
		http.Error(w, "404 page not found", http.StatusNotFound) // no version header
	})
	tr, r := newNode(t, withID(1), unserved()).parts()
	if err := tr.AddPeer(2, []string{srv.URL}); err != nil {
		t.Fatal(err)
	}
	tr.Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 1, 2, 10, withCommit(1))}) // by the pipeline
	waitFor(t, "the snapshot report", func() bool { return len(r.snapshotReports()) == 1 })
	if tr.ActiveSince(2).IsZero() {
		t.Fatal("the peer is inactive after a successful POST")
	}
	// Let the readers fail a few more times.
	n := gets.count("")
	waitFor(t, "more stream dials", func() bool { return gets.count("") >= n+4 })
	if tr.ActiveSince(2).IsZero() {
		t.Error("the peer turned inactive because the remote does not serve streams")
	}
	p, _ := tr.get(2)
	if err := p.status.lastError(); err != nil {
		t.Errorf("got inactive reason %v, want none", err)
	}
}

// TestStreamGarbageVersionNoCrash is spec §12 W5: a 200 answer with a
// malformed X-Server-Version crashes etcd's dialer. Ours fails the dial and
// keeps redialling.
func TestStreamGarbageVersionNoCrash(t *testing.T) {
	var gets getLog
	srv := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		gets.add(r)
		w.Header().Set(headerServerVersion, "garbage")
		w.WriteHeader(http.StatusOK)
	})
	tr, _ := newNode(t, withID(1), unserved()).parts()
	if err := tr.AddPeer(2, []string{srv.URL}); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/raft/stream/message/1", "/raft/stream/msgapp/1"} {
		waitFor(t, "three dials of "+path, func() bool { return gets.count(path) >= 3 })
	}
	p, _ := tr.get(2)
	if err := p.status.lastError(); err == nil || !strings.Contains(err.Error(), "dial") {
		t.Errorf("got inactive reason %v, want a dial failure", err)
	}
	if !tr.ActiveSince(2).IsZero() {
		t.Error("the peer is active although no stream was accepted")
	}
}
