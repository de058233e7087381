package rafthttp

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The handler tests run a transport for member a1 of cluster beef1000 and
// play member b2 talking to it. The IDs contain hex letters so that the
// case-sensitivity of the ID checks is visible.
const (
	htLocalID   = 0xa1
	htPeerID    = 0xb2
	htStranger  = 0xc3 // a member the transport does not know
	htClusterID = 0xbeef1000
)

// htLocal is the preset of the transport under test: member a1 of cluster
// beef1000, unserved (requests go through its Handler), and retrying its
// dials to b2, which nothing serves, at a modest pace.
func htLocal() nodeOption {
	return options(withID(htLocalID), withClusterID(htClusterID), unserved(),
		withDialRetry(50*time.Millisecond, 500*time.Millisecond))
}

// htEnv is one started transport under test, not served: requests go
// through its Handler with httptest recorders.
type htEnv struct {
	tr    *Transport
	raft  *fakeRaft
	store *memStore
	rec   *httptest.ResponseRecorder
}

// htAddPeer adds member b2 at an address nothing listens on: its stream
// writers can be dialled by our requests, and its readers fail quietly.
func htAddPeer(t testing.TB, tr *Transport) {
	t.Helper()
	if err := tr.AddPeer(htPeerID, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
}

// The kinds of request an etcd member sends.
type htKind int

const (
	htPipeline htKind = iota
	htSnapshot
	htStream
)

// htHeaders returns the headers etcd 3.7.3 member b2 sends to a1 with a
// request of kind k (spec §2.1). The header names are spelled out rather
// than taken from the production constants: they are the wire contract.
func htHeaders(k htKind) http.Header {
	h := http.Header{}
	h.Set("X-Server-From", "b2")
	h.Set("X-Server-Version", "3.7.3")
	h.Set("X-Min-Cluster-Version", "3.0.0")
	h.Set("X-Etcd-Cluster-ID", "beef1000")
	h.Set("X-PeerURLs", "http://127.0.0.1:2380")
	switch k {
	case htPipeline:
		h.Set("Content-Type", "application/protobuf")
	case htSnapshot:
		h.Set("Content-Type", "application/octet-stream")
	case htStream:
		h.Set("X-Raft-To", "a1")
	}
	return h
}

// setHeader and delHeader build the header edits of the table cases.
func setHeader(name, value string) func(http.Header) {
	return func(h http.Header) { h.Set(name, value) }
}

func delHeader(name string) func(http.Header) {
	return func(h http.Header) { h.Del(name) }
}

func htMarshal(t testing.TB, m *raftpb.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatalf("proto.Marshal: %v", err)
	}
	return b
}

// htPadded returns m, padded with pad so that it marshals to exactly size
// bytes, and its encoding.
func htPadded(t testing.TB, m *raftpb.Message, size int, pad func(m *raftpb.Message, n int)) (*raftpb.Message, []byte) {
	t.Helper()
	for n := 0; n <= size; n++ {
		pad(m, n)
		b := htMarshal(t, m)
		if len(b) == size {
			return m, b
		}
		if len(b) > size {
			break
		}
	}
	t.Fatalf("cannot pad the message to %d bytes", size)
	return nil, nil
}

// htEnvelope frames m as the head of a snapshot body: its length as a
// big-endian uint64, then its protobuf bytes (spec §3.5).
func htEnvelope(t testing.TB, m *raftpb.Message) []byte {
	b := htMarshal(t, m)
	return append(binary.BigEndian.AppendUint64(nil, uint64(len(b))), b...)
}

// htUnsized hides the length of a body, so that the request goes out (and
// is read) as it would with chunked transfer encoding.
type htUnsized struct{ r io.Reader }

func (u htUnsized) Read(p []byte) (int, error) { return u.r.Read(p) }

// htFailingReader yields some bytes, then an error.
type htFailingReader struct{ sent bool }

func (f *htFailingReader) Read(p []byte) (int, error) {
	if !f.sent {
		f.sent = true
		return copy(p, "\x08\x03"), nil
	}
	return 0, errors.New("connection reset by peer")
}

// htRemovedError is the error etcd's Process returns for a message from a
// removed member: it writes its own 403 with a JSON body.
type htRemovedError struct{}

const htRemovedBody = `{"message":"the member has been permanently removed from the cluster"}` + "\n"

func (htRemovedError) Error() string {
	return "the member has been permanently removed from the cluster"
}

func (htRemovedError) WriteTo(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusForbidden)
	io.WriteString(w, htRemovedBody)
}

// htCase is one request to a handler and the response it must get.
type htCase struct {
	name      string
	method    string                       // default: the route's method
	path      string                       // default: the route's path
	header    func(http.Header)            // edits htHeaders of the route
	body      func(t *testing.T) io.Reader // default: the route's valid body
	configure func(*Transport)             // before Start
	noStore   bool                         // run without a SnapshotStore
	storeErr  error                        // what the SnapshotStore returns
	setup     func(t *testing.T, e *htEnv)

	wantCode   int
	wantBody   string            // exactly; http.Error bodies end in "\n"
	anyBody    bool              // do not compare the body: check does
	wantHeader map[string]string // "" means the header must be absent
	check      func(t *testing.T, e *htEnv)
}

// htRun serves tc on a fresh transport and checks the response.
func htRun(t *testing.T, tc htCase, kind htKind, method, path string, body func(t *testing.T) io.Reader) {
	store := &memStore{err: tc.storeErr}
	tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) {
		if !tc.noStore {
			tr.SnapshotStore = store
		}
		if tc.configure != nil {
			tc.configure(tr)
		}
	})).parts()
	e := &htEnv{tr: tr, raft: fr, store: store, rec: httptest.NewRecorder()}
	if tc.setup != nil {
		tc.setup(t, e)
	}
	if tc.method != "" {
		method = tc.method
	}
	if tc.path != "" {
		path = tc.path
	}
	if tc.body != nil {
		body = tc.body
	}
	req := httptest.NewRequest(method, path, body(t))
	req.Header = htHeaders(kind)
	if tc.header != nil {
		tc.header(req.Header)
	}
	tr.Handler().ServeHTTP(e.rec, req)
	wantBody := tc.wantBody
	if tc.anyBody {
		wantBody = e.rec.Body.String()
	}
	htCheckResponse(t, e.rec, tc.wantCode, wantBody, tc.wantHeader)
	if tc.check != nil {
		tc.check(t, e)
	}
}

// htCheckResponse checks status, body and headers. Error responses (4xx and
// 5xx) must carry http.Error's headers unless wantHeader names a
// Content-Type of its own.
func htCheckResponse(t *testing.T, rec *httptest.ResponseRecorder, wantCode int, wantBody string, wantHeader map[string]string) {
	t.Helper()
	if rec.Code != wantCode {
		t.Errorf("status: got %d, want %d (body %q)", rec.Code, wantCode, rec.Body.String())
	}
	if got := rec.Body.String(); got != wantBody {
		t.Errorf("body: got %q, want %q", got, wantBody)
	}
	want := map[string]string{}
	if _, ok := wantHeader["Content-Type"]; !ok && wantCode >= 400 {
		want["Content-Type"] = "text/plain; charset=utf-8"
		want["X-Content-Type-Options"] = "nosniff"
	}
	for k, v := range wantHeader {
		want[k] = v
	}
	for k, v := range want {
		got, present := rec.Header()[http.CanonicalHeaderKey(k)]
		switch {
		case v == "" && present:
			t.Errorf("header %s: got %q, want it absent", k, got)
		case v != "" && (len(got) != 1 || got[0] != v):
			t.Errorf("header %s: got %q, want [%q]", k, got, v)
		}
	}
}

// htHasRemote reports whether the transport has a remote with that id.
func htHasRemote(tr *Transport, id uint64) bool {
	tr.mu.RLock()
	defer tr.mu.RUnlock()
	_, ok := tr.remotes[id]
	return ok
}

// htNoProcess fails if raft got a message.
func htNoProcess(t *testing.T, e *htEnv) {
	t.Helper()
	if n := len(e.raft.msgc); n != 0 {
		t.Errorf("Process got %d messages, want none", n)
	}
}

func httpErr(msg string) string { return msg + "\n" }

// withCID merges the cluster ID response header into h.
func withCID(h map[string]string) map[string]string {
	out := map[string]string{"X-Etcd-Cluster-ID": "beef1000"}
	for k, v := range h {
		out[k] = v
	}
	return out
}

// htVersionCases are the version and cluster-ID failures every handler
// answers 412 after the method check (spec §6.1).
func htVersionCases(extra map[string]string) []htCase {
	iv, cm := httpErr("incompatible version"), httpErr("cluster ID mismatch")
	h := withCID(extra)
	return []htCase{
		{name: "missing server version", header: delHeader("X-Server-Version"), wantCode: 412, wantBody: iv, wantHeader: h},
		{name: "garbage server version", header: setHeader("X-Server-Version", "garbage"), wantCode: 412, wantBody: iv, wantHeader: h},
		{name: "v-prefixed server version", header: setHeader("X-Server-Version", "v3.7.0"), wantCode: 412, wantBody: iv, wantHeader: h},
		{name: "300-byte server version", header: setHeader("X-Server-Version", "3.7."+strings.Repeat("9", 296)), wantCode: 412, wantBody: iv, wantHeader: h},
		{name: "server version below 3.0", header: setHeader("X-Server-Version", "2.3.8"), wantCode: 412, wantBody: iv, wantHeader: h},
		{name: "min cluster version 3.8.0", header: setHeader("X-Min-Cluster-Version", "3.8.0"), wantCode: 412, wantBody: iv, wantHeader: h},
		{name: "garbage min cluster version", header: setHeader("X-Min-Cluster-Version", "3.0"), wantCode: 412, wantBody: iv, wantHeader: h},
		{name: "wrong cluster ID", header: setHeader("X-Etcd-Cluster-ID", "beef1001"), wantCode: 412, wantBody: cm, wantHeader: h},
		{name: "missing cluster ID", header: delHeader("X-Etcd-Cluster-ID"), wantCode: 412, wantBody: cm, wantHeader: h},
		{name: "uppercase cluster ID", header: setHeader("X-Etcd-Cluster-ID", "BEEF1000"), wantCode: 412, wantBody: cm, wantHeader: h},
		{name: "zero-padded cluster ID", header: setHeader("X-Etcd-Cluster-ID", "0beef1000"), wantCode: 412, wantBody: cm, wantHeader: h},
		{name: "version is checked before cluster ID", header: func(h http.Header) {
			h.Set("X-Server-Version", "2.3.8")
			h.Set("X-Etcd-Cluster-ID", "1")
		}, wantCode: 412, wantBody: iv, wantHeader: h},
	}
}

// htServer watches the server of the transport under test: the requests
// in its handler, the panics that leave the handler, and what net/http
// logs.
type htServer struct {
	inflight atomic.Int32

	mu     sync.Mutex
	panics []any
	log    bytes.Buffer
}

// serving serves the transport under test through the watcher.
func (s *htServer) serving() nodeOption {
	return options(func(c *nodeConfig) { c.unserved = false }, wrapHandler(s.wrap), withServerLog(s))
}

// wrap counts the requests in h and records the panics that leave it.
func (s *htServer) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.inflight.Add(1)
		defer s.inflight.Add(-1)
		defer func() {
			if p := recover(); p != nil {
				s.mu.Lock()
				s.panics = append(s.panics, p)
				s.mu.Unlock()
				panic(p)
			}
		}()
		h.ServeHTTP(w, r)
	})
}

// Write is the server's error log.
func (s *htServer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.Write(p)
}

// state returns the panics and the log so far.
func (s *htServer) state() (panics []any, log string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]any(nil), s.panics...), s.log.String()
}

func TestServeProbing(t *testing.T) {
	tr, _ := newNode(t, htLocal()).parts()
	h := tr.Handler()
	for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		t.Run(method, func(t *testing.T) {
			// No version or cluster headers: probing checks nothing.
			req := httptest.NewRequest(method, "/raft/probing", nil)
			rec := httptest.NewRecorder()
			before := time.Now()
			h.ServeHTTP(rec, req)
			if rec.Code != 200 {
				t.Errorf("status: got %d, want 200", rec.Code)
			}
			b := rec.Body.String()
			if !strings.Contains(b, `"OK":true`) || !strings.HasSuffix(b, "}\n") {
				t.Errorf("body: got %q, want a JSON object with \"OK\":true and a newline", b)
			}
			var health struct {
				OK  bool
				Now time.Time
			}
			if err := json.Unmarshal(rec.Body.Bytes(), &health); err != nil {
				t.Fatalf("body %q: %v", b, err)
			}
			if !health.OK || health.Now.Before(before.Add(-time.Second)) || health.Now.After(time.Now().Add(time.Second)) {
				t.Errorf("body: got %+v, want OK and the current time", health)
			}
			if got := rec.Header().Get("Content-Type"); got != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type: got %q, want %q", got, "text/plain; charset=utf-8")
			}
		})
	}
}

func TestServeHTTPUnknownPath(t *testing.T) {
	tr, _ := newNode(t, htLocal()).parts()
	h := tr.Handler()
	for _, path := range []string{"/raft/other", "/raft/", "/raft/snapshot/x", "/raft/probing/x", "/", "/version"} {
		t.Run(path, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, path, strings.NewReader("x"))
			req.Header = htHeaders(htPipeline)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			htCheckResponse(t, rec, 404, httpErr("404 page not found"), map[string]string{"X-Etcd-Cluster-ID": ""})
		})
	}
}

// TestServeHTTPStoppedTransport checks that the handlers still answer once
// the transport is stopped: a stream dial finds no peer, and a POST still
// reaches raft (the application decides when to stop serving).
func TestServeHTTPStoppedTransport(t *testing.T) {
	tr, fr := newNode(t, htLocal()).parts()
	htAddPeer(t, tr)
	tr.Stop()
	h := tr.Handler()

	// After Stop nothing calls raft: every raft route answers 503, which
	// a sender reads as a failure to retry.
	for _, tc := range []struct {
		name, method, path string
		kind               htKind
		body               []byte
	}{
		{"stream", http.MethodGet, "/raft/stream/message/b2", htStream, nil},
		{"pipeline", http.MethodPost, "/raft", htPipeline, htMarshal(t, newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1")))},
		{"snapshot", http.MethodPost, "/raft/snapshot", htSnapshot, htEnvelope(t, newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest(tc.method, tc.path, bytes.NewReader(tc.body))
			req.Header = htHeaders(tc.kind)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			htCheckResponse(t, rec, 503, httpErr(ErrStopped.Error()), nil)
		})
	}
	if htHasRemote(tr, htPeerID) {
		t.Error("a stopped transport added a remote")
	}
	select {
	case m := <-fr.msgc:
		t.Errorf("a stopped transport processed %v", m)
	default:
	}
}
