package rafthttp

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
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

func TestServePipeline(t *testing.T) {
	valid := newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1"))
	validBody := func(t *testing.T) io.Reader { return bytes.NewReader(htMarshal(t, valid)) }
	small := func(tr *Transport) { tr.MaxMessageBytes = 1024 }
	pad := func(m *raftpb.Message, n int) { m.Context = make([]byte, n) }
	sized := func(n int, unsized bool) func(t *testing.T) io.Reader {
		return func(t *testing.T) io.Reader {
			_, b := htPadded(t, newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1")), n, pad)
			if unsized {
				return htUnsized{bytes.NewReader(b)}
			}
			return bytes.NewReader(b)
		}
	}
	tooLarge := httpErr("raft message too large")
	cid := withCID(nil)
	// gotMessage checks that raft got exactly the message sent.
	gotMessage := func(want *raftpb.Message) func(t *testing.T, e *htEnv) {
		return func(t *testing.T, e *htEnv) {
			select {
			case got := <-e.raft.msgc:
				if !proto.Equal(got, want) {
					t.Errorf("Process got %v, want %v", got, want)
				}
			default:
				t.Error("Process got no message")
			}
		}
	}
	gotSize := func(n int) func(t *testing.T, e *htEnv) {
		return func(t *testing.T, e *htEnv) {
			select {
			case got := <-e.raft.msgc:
				if len(got.GetContext()) == 0 || len(htMarshal(t, got)) != n {
					t.Errorf("Process got a message of %d bytes, want %d", len(htMarshal(t, got)), n)
				}
			default:
				t.Error("Process got no message")
			}
		}
	}

	cases := []htCase{
		{name: "GET", method: http.MethodGet, wantCode: 405, wantBody: httpErr("Method Not Allowed"),
			wantHeader: map[string]string{"Allow": "POST", "X-Etcd-Cluster-ID": ""}, check: htNoProcess},
		{name: "PUT", method: http.MethodPut, wantCode: 405, wantBody: httpErr("Method Not Allowed"),
			wantHeader: map[string]string{"Allow": "POST", "X-Etcd-Cluster-ID": ""}, check: htNoProcess},
		{name: "DELETE", method: http.MethodDelete, wantCode: 405, wantBody: httpErr("Method Not Allowed"),
			wantHeader: map[string]string{"Allow": "POST", "X-Etcd-Cluster-ID": ""}, check: htNoProcess},
		{name: "success", wantCode: 204, wantHeader: cid,
			setup: func(t *testing.T, e *htEnv) {
				// 204 only once raft has the message: nothing may be
				// written when Process runs (on the handler's goroutine).
				e.raft.setProcess(func(ctx context.Context, m *raftpb.Message) error {
					if e.rec.Code != http.StatusOK || e.rec.Body.Len() != 0 {
						t.Errorf("response written before Process: status %d", e.rec.Code)
					}
					e.raft.msgc <- m
					return nil
				})
			},
			check: gotMessage(valid)},
		{name: "newer server version", header: setHeader("X-Server-Version", "3.8.0"), wantCode: 204, wantHeader: cid, check: gotMessage(valid)},
		{name: "pre-release and build are ignored", header: setHeader("X-Server-Version", "3.7.0-rc.1+git.abc"), wantCode: 204, wantHeader: cid, check: gotMessage(valid)},
		{name: "missing min cluster version means 2.0.0", header: delHeader("X-Min-Cluster-Version"), wantCode: 204, wantHeader: cid, check: gotMessage(valid)},
		{name: "empty body is an empty message", body: func(*testing.T) io.Reader { return http.NoBody }, wantCode: 204, wantHeader: cid,
			check: gotMessage(&raftpb.Message{})},
		{name: "garbage protobuf", body: func(*testing.T) io.Reader { return strings.NewReader("\xff\xff\xff\xff garbage") },
			wantCode: 400, wantBody: httpErr("error unmarshalling raft message"), wantHeader: cid, check: htNoProcess},
		{name: "truncated protobuf", body: func(t *testing.T) io.Reader {
			b := htMarshal(t, valid)
			return bytes.NewReader(b[:len(b)-3])
		}, wantCode: 400, wantBody: httpErr("error unmarshalling raft message"), wantHeader: cid, check: htNoProcess},
		{name: "reader error", body: func(*testing.T) io.Reader { return &htFailingReader{} },
			wantCode: 400, wantBody: httpErr("error reading raft message"), wantHeader: cid, check: htNoProcess},
		{name: "body of MaxMessageBytes with length", configure: small, body: sized(1024, false), wantCode: 204, wantHeader: cid, check: gotSize(1024)},
		{name: "body of MaxMessageBytes chunked", configure: small, body: sized(1024, true), wantCode: 204, wantHeader: cid, check: gotSize(1024)},
		{name: "body over MaxMessageBytes with length", configure: small, body: sized(1025, false), wantCode: 413, wantBody: tooLarge, wantHeader: cid, check: htNoProcess},
		{name: "body over MaxMessageBytes chunked", configure: small, body: sized(1025, true), wantCode: 413, wantBody: tooLarge, wantHeader: cid, check: htNoProcess},
		{name: "huge body chunked", configure: small, body: func(*testing.T) io.Reader {
			return htUnsized{io.LimitReader(zeroReader{}, 64<<20)}
		}, wantCode: 413, wantBody: tooLarge, wantHeader: cid, check: htNoProcess},
		{name: "Process error that writes its response",
			setup: func(t *testing.T, e *htEnv) {
				e.raft.setProcess(func(context.Context, *raftpb.Message) error { return htRemovedError{} })
			},
			wantCode: 403, wantBody: htRemovedBody, wantHeader: withCID(map[string]string{"Content-Type": "application/json"})},
		{name: "wrapped Process error that writes its response",
			setup: func(t *testing.T, e *htEnv) {
				e.raft.setProcess(func(context.Context, *raftpb.Message) error {
					return fmt.Errorf("step: %w", htRemovedError{})
				})
			},
			wantCode: 403, wantBody: htRemovedBody, wantHeader: withCID(map[string]string{"Content-Type": "application/json"})},
	}
	cases = append(cases, htVersionCases(nil)...)
	for _, tc := range cases {
		if tc.check == nil && tc.wantCode == 412 {
			tc.check = htNoProcess
		}
		t.Run(tc.name, func(t *testing.T) {
			htRun(t, tc, htPipeline, http.MethodPost, "/raft", validBody)
		})
	}
}

// zeroReader is an endless stream of zeros.
type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestServePipelineProcessErrorRecorder checks, without a network, what the
// pipeline handler does when Process fails: it answers 500, flushes, and
// aborts the connection by panicking with http.ErrAbortHandler.
func TestServePipelineProcessErrorRecorder(t *testing.T) {
	tr, fr := newNode(t, htLocal()).parts()
	fr.setProcess(func(context.Context, *raftpb.Message) error { return errors.New("raft is down") })
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/raft", bytes.NewReader(htMarshal(t, newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1")))))
	req.Header = htHeaders(htPipeline)

	var p any
	func() {
		defer func() { p = recover() }()
		tr.Handler().ServeHTTP(rec, req)
	}()
	if p != http.ErrAbortHandler {
		t.Errorf("panic: got %v, want http.ErrAbortHandler", p)
	}
	htCheckResponse(t, rec, 500, httpErr("error processing raft message"), withCID(nil))
	if !rec.Flushed {
		t.Error("the 500 was not flushed before the abort")
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

// TestServePipelineProcessErrorAbortsConnection checks over a real
// connection that a plain Process error gives 500 and closes the
// connection, so the client cannot reuse it, and that the handler panics
// with nothing but http.ErrAbortHandler.
func TestServePipelineProcessErrorAbortsConnection(t *testing.T) {
	srv := &htServer{}
	n := newNode(t, htLocal(), srv.serving())
	fr := n.raft
	fr.setProcess(func(_ context.Context, m *raftpb.Message) error {
		if string(m.GetContext()) == "fail" {
			return errors.New("raft is down")
		}
		return nil
	})
	client := n.client(t)

	// post sends one message and reports the response and whether it went
	// over a reused connection.
	post := func(ctxData string) (code int, body string, reused bool, err error) {
		m := newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 10)
		m.Context = []byte(ctxData)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) { reused = info.Reused },
		})
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url+"/raft", bytes.NewReader(htMarshal(t, m)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = htHeaders(htPipeline)
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", reused, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), reused, err
	}

	if code, _, _, err := post("ok"); err != nil || code != 204 {
		t.Fatalf("first POST: got %d, %v, want 204", code, err)
	}
	// Control: a successful POST leaves the connection reusable.
	if code, _, reused, err := post("ok"); err != nil || code != 204 || !reused {
		t.Fatalf("second POST: got %d, reused %v, %v, want 204 on a reused connection", code, reused, err)
	}
	code, body, _, err := post("fail")
	switch {
	case code == 0:
		t.Logf("failing POST: the connection closed before the response: %v", err)
	case code != 500:
		t.Errorf("failing POST: got status %d, want 500", code)
	case !strings.HasPrefix(httpErr("error processing raft message"), body):
		t.Errorf("failing POST: got body %q, want (a prefix of) %q", body, httpErr("error processing raft message"))
	}
	if code, _, reused, err := post("ok"); err != nil || code != 204 || reused {
		t.Errorf("POST after the failure: got %d, reused %v, %v, want 204 on a new connection", code, reused, err)
	}
	waitFor(t, "handlers to return", func() bool { return srv.inflight.Load() == 0 })
	panics, logged := srv.state()
	if len(panics) != 1 || panics[0] != http.ErrAbortHandler {
		t.Errorf("handler panics: got %v, want [http.ErrAbortHandler]", panics)
	}
	if strings.Contains(logged, "panic") {
		t.Errorf("net/http logged a panic: %s", logged)
	}
}

// TestServePipelineAddsRemote checks when a POST from an unknown member makes
// it a remote: X-Server-From and X-PeerURLs both valid, before the body is
// even read; malformed headers are ignored.
func TestServePipelineAddsRemote(t *testing.T) {
	stranger := func(urls string) func(http.Header) {
		return func(h http.Header) {
			h.Set("X-Server-From", "c3")
			if urls == "" {
				h.Del("X-PeerURLs")
			} else {
				h.Set("X-PeerURLs", urls)
			}
		}
	}
	cases := []struct {
		name       string
		header     func(http.Header)
		garbage    bool // send a body that does not unmarshal
		knownPeer  bool // c3 is a peer already
		wantRemote bool
	}{
		{name: "from and URLs", header: stranger("http://127.0.0.1:2380"), wantRemote: true},
		{name: "several URLs", header: stranger("http://127.0.0.1:2380,https://10.0.0.3:2380"), wantRemote: true},
		{name: "added before the body is read", header: stranger("http://127.0.0.1:2380"), garbage: true, wantRemote: true},
		{name: "no URLs", header: stranger("")},
		{name: "URL without scheme", header: stranger("bad")},
		{name: "URL with a path", header: stranger("http://x:1/path")},
		{name: "one bad URL among good ones", header: stranger("http://127.0.0.1:2380,ftp://x:1")},
		{name: "too many URLs", header: stranger(strings.Repeat("http://a:1,", 100) + "http://a:1")},
		{name: "malformed from", header: func(h http.Header) { stranger("http://127.0.0.1:2380")(h); h.Set("X-Server-From", "zz") }},
		{name: "no from", header: func(h http.Header) { stranger("http://127.0.0.1:2380")(h); h.Del("X-Server-From") }},
		{name: "from zero", header: func(h http.Header) { stranger("http://127.0.0.1:2380")(h); h.Set("X-Server-From", "0") }},
		{name: "from ourselves", header: func(h http.Header) { stranger("http://127.0.0.1:2380")(h); h.Set("X-Server-From", "a1") }},
		{name: "known peer", header: stranger("http://127.0.0.1:2380"), knownPeer: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr, fr := newNode(t, htLocal()).parts()
			if tc.knownPeer {
				if err := tr.AddPeer(htStranger, []string{"http://" + freeAddr(t)}); err != nil {
					t.Fatal(err)
				}
			}
			body := htMarshal(t, newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1")))
			wantCode := 204
			if tc.garbage {
				body, wantCode = []byte("\xff\xff\xff"), 400
			}
			req := httptest.NewRequest(http.MethodPost, "/raft", bytes.NewReader(body))
			req.Header = htHeaders(htPipeline)
			tc.header(req.Header)
			rec := httptest.NewRecorder()
			tr.Handler().ServeHTTP(rec, req)
			if rec.Code != wantCode {
				t.Errorf("status: got %d, want %d (body %q)", rec.Code, wantCode, rec.Body.String())
			}
			if wantCode == 204 {
				fr.recv(t)
			}
			if got := htHasRemote(tr, htStranger); got != tc.wantRemote {
				t.Errorf("remote c3 exists: got %v, want %v", got, tc.wantRemote)
			}
			tr.mu.RLock()
			n := len(tr.remotes)
			tr.mu.RUnlock()
			if want := map[bool]int{true: 1}[tc.wantRemote]; n != want {
				t.Errorf("remotes: got %d, want %d", n, want)
			}
		})
	}
}

func TestServeStream(t *testing.T) {
	peer := func(t *testing.T, e *htEnv) { htAddPeer(t, e.tr) }
	noBody := func(*testing.T) io.Reader { return nil }
	vh := map[string]string{"X-Server-Version": "3.7.0"}
	hdr := withCID(vh)
	noRemote := func(t *testing.T, e *htEnv) {
		if htHasRemote(e.tr, htStranger) {
			t.Error("got a remote for c3, want none")
		}
	}
	notWorking := func(t *testing.T, e *htEnv) {
		if p, ok := e.tr.get(htPeerID); ok && (p.writer.isWorking() || p.msgAppV2Writer.isWorking()) {
			t.Error("a stream writer of b2 is working, want none")
		}
	}
	method405 := func(m string) htCase {
		return htCase{name: m, method: m, setup: peer, wantCode: 405, wantBody: httpErr("Method Not Allowed"),
			wantHeader: map[string]string{"Allow": "GET", "X-Server-Version": ""}, check: notWorking}
	}
	cases := []htCase{
		method405(http.MethodPost),
		method405(http.MethodPut),
		method405(http.MethodDelete),
		{name: "unknown stream type", path: "/raft/stream/foo/b2", setup: peer, wantCode: 404, wantBody: httpErr("invalid path"), wantHeader: hdr},
		{name: "msgappv2 is not a path segment", path: "/raft/stream/msgappv2/b2", setup: peer, wantCode: 404, wantBody: httpErr("invalid path"), wantHeader: hdr},
		{name: "no stream type", path: "/raft/stream/b2", setup: peer, wantCode: 404, wantBody: httpErr("invalid path"), wantHeader: hdr},
		{name: "extra segment", path: "/raft/stream/message/b2/x", setup: peer, wantCode: 404, wantBody: httpErr("invalid path"), wantHeader: hdr},
		{name: "non-hex sender", path: "/raft/stream/message/zz", setup: peer, wantCode: 404, wantBody: httpErr("invalid from"), wantHeader: hdr},
		{name: "empty sender", path: "/raft/stream/msgapp/", setup: peer, wantCode: 404, wantBody: httpErr("invalid from"), wantHeader: hdr},
		{name: "17-digit sender", path: "/raft/stream/message/000000000000000b2", setup: peer, wantCode: 404, wantBody: httpErr("invalid from"), wantHeader: hdr},
		{name: "removed peer", setup: func(t *testing.T, e *htEnv) { peer(t, e); e.raft.setRemoved(htPeerID) },
			wantCode: 410, wantBody: httpErr("removed member"), wantHeader: hdr, check: notWorking},
		{name: "removed stranger", path: "/raft/stream/msgapp/c3", setup: func(t *testing.T, e *htEnv) { e.raft.setRemoved(htStranger) },
			wantCode: 410, wantBody: httpErr("removed member"), wantHeader: hdr, check: noRemote},
		{name: "removed is checked before X-Raft-To", header: setHeader("X-Raft-To", "ff"),
			setup:    func(t *testing.T, e *htEnv) { peer(t, e); e.raft.setRemoved(htPeerID) },
			wantCode: 410, wantBody: httpErr("removed member"), wantHeader: hdr},
		{name: "unknown sender", path: "/raft/stream/message/c3", header: delHeader("X-PeerURLs"), setup: peer,
			wantCode: 404, wantBody: httpErr("error sender not found"), wantHeader: hdr, check: noRemote},
		{name: "unknown sender with URLs becomes a remote", path: "/raft/stream/message/c3", header: setHeader("X-Server-From", "c3"), setup: peer,
			wantCode: 404, wantBody: httpErr("error sender not found"), wantHeader: hdr,
			check: func(t *testing.T, e *htEnv) {
				if !htHasRemote(e.tr, htStranger) {
					t.Error("got no remote for c3, want one")
				}
			}},
		{name: "unknown sender with bad URLs", path: "/raft/stream/message/c3", setup: peer,
			header:   func(h http.Header) { h.Set("X-Server-From", "c3"); h.Set("X-PeerURLs", "http://x:1/path") },
			wantCode: 404, wantBody: httpErr("error sender not found"), wantHeader: hdr, check: noRemote},
		{name: "X-Raft-To is checked after the peer lookup", path: "/raft/stream/message/c3", header: setHeader("X-Raft-To", "ff"), setup: peer,
			wantCode: 404, wantBody: httpErr("error sender not found"), wantHeader: hdr},
		{name: "wrong X-Raft-To", header: setHeader("X-Raft-To", "b2"), setup: peer,
			wantCode: 412, wantBody: httpErr("to field mismatch"), wantHeader: hdr, check: notWorking},
		{name: "missing X-Raft-To", header: delHeader("X-Raft-To"), setup: peer,
			wantCode: 412, wantBody: httpErr("to field mismatch"), wantHeader: hdr, check: notWorking},
		{name: "uppercase X-Raft-To", header: setHeader("X-Raft-To", "A1"), setup: peer,
			wantCode: 412, wantBody: httpErr("to field mismatch"), wantHeader: hdr, check: notWorking},
		{name: "zero-padded X-Raft-To", path: "/raft/stream/msgapp/b2", header: setHeader("X-Raft-To", "0a1"), setup: peer,
			wantCode: 412, wantBody: httpErr("to field mismatch"), wantHeader: hdr, check: notWorking},
	}
	for _, tc := range htVersionCases(vh) {
		tc.setup, tc.check = peer, notWorking
		cases = append(cases, tc)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			htRun(t, tc, htStream, http.MethodGet, "/raft/stream/message/b2", noBody)
		})
	}
}

// htDialStream opens a stream from b2 on the server at url, of the type in
// path, and returns the response; cancel ends the request.
func htDialStream(t *testing.T, client *http.Client, url, path string) (*http.Response, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+path, nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	req.Header = htHeaders(htStream)
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("GET %s: %v", path, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, cancel
}

// TestServeStreamAttach checks the 200 of the stream handler over a real
// connection: the headers are flushed at once (there is no heartbeat for a
// minute, so the response arrives only if they are), the writer of the
// requested type takes the connection and writes to it, and cancelling the
// request makes the handler return.
func TestServeStreamAttach(t *testing.T) {
	cases := []struct {
		name  string
		path  string
		typ   streamType
		msg   *raftpb.Message
		read  func(r io.Reader) (*raftpb.Message, int, error)
		other func(p *peer) *streamWriter
		this  func(p *peer) *streamWriter
	}{
		{name: "message", path: "/raft/stream/message/b2",
			msg:  &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(htPeerID), From: proto.Uint64(htLocalID), Term: proto.Uint64(7), Commit: proto.Uint64(3)},
			read: func(r io.Reader) (*raftpb.Message, int, error) { return newMessageDecoder(r, 1<<20).decode() },
			this: func(p *peer) *streamWriter { return p.writer }, other: func(p *peer) *streamWriter { return p.msgAppV2Writer }},
		{name: "msgapp", path: "/raft/stream/msgapp/b2",
			msg: &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: proto.Uint64(htPeerID), From: proto.Uint64(htLocalID), Term: proto.Uint64(7),
				LogTerm: proto.Uint64(6), Index: proto.Uint64(20), Commit: proto.Uint64(19),
				Entries: []*raftpb.Entry{{Term: proto.Uint64(7), Index: proto.Uint64(21), Data: []byte("x")}}},
			read: func(r io.Reader) (*raftpb.Message, int, error) {
				return newMsgAppV2Decoder(r, htPeerID, htLocalID, 1<<20).decode()
			},
			this: func(p *peer) *streamWriter { return p.msgAppV2Writer }, other: func(p *peer) *streamWriter { return p.writer }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := &htServer{}
			n := newNode(t, htLocal(), srv.serving(), withConfig(func(tr *Transport) { tr.ConnReadTimeout = time.Minute }))
			tr := n.tr
			htAddPeer(t, tr)
			client := n.client(t)
			p, _ := tr.get(htPeerID)

			resp, cancel := htDialStream(t, client, n.url, tc.path)
			defer cancel()
			if resp.StatusCode != 200 {
				t.Fatalf("status: got %d, want 200", resp.StatusCode)
			}
			for k, want := range map[string]string{"Content-Type": "", "X-Server-Version": "3.7.0", "X-Etcd-Cluster-Id": "beef1000"} {
				if got := resp.Header.Values(k); (want == "" && len(got) != 0) || (want != "" && (len(got) != 1 || got[0] != want)) {
					t.Errorf("header %s: got %q, want %q", k, got, want)
				}
			}
			if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
				t.Errorf("transfer encoding: got %q, want [chunked]", resp.TransferEncoding)
			}
			waitFor(t, "the writer to take the stream", tc.this(p).isWorking)
			if tc.other(p).isWorking() {
				t.Error("the writer of the other stream type is working, want it idle")
			}

			tr.Send([]*raftpb.Message{tc.msg})
			got, _, err := tc.read(resp.Body)
			if err != nil {
				t.Fatalf("reading the stream: %v", err)
			}
			if got.GetType() != tc.msg.GetType() || got.GetFrom() != htLocalID || got.GetTo() != htPeerID ||
				got.GetTerm() != 7 || got.GetCommit() != tc.msg.GetCommit() || len(got.GetEntries()) != len(tc.msg.GetEntries()) {
				t.Errorf("stream carried %v, want %v", got, tc.msg)
			}

			cancel()
			waitFor(t, "the writer to let go of the stream", func() bool { return !tc.this(p).isWorking() })
			waitFor(t, "the handler to return", func() bool { return srv.inflight.Load() == 0 })
			if panics, _ := srv.state(); len(panics) != 0 {
				t.Errorf("handler panics: got %v, want none", panics)
			}
		})
	}
}

// TestServeStreamPeerRemovedEndsResponse checks that removing the peer ends
// its open stream responses. The writer aborts a stream it stops (it may be
// blocked on a remote that does not read), so the end may be abrupt.
func TestServeStreamPeerRemovedEndsResponse(t *testing.T) {
	srv := &htServer{}
	n := newNode(t, htLocal(), srv.serving(), withConfig(func(tr *Transport) { tr.ConnReadTimeout = time.Minute }))
	tr := n.tr
	htAddPeer(t, tr)
	client := n.client(t)
	p, _ := tr.get(htPeerID)

	msg, cancelMsg := htDialStream(t, client, n.url, "/raft/stream/message/b2")
	defer cancelMsg()
	app, cancelApp := htDialStream(t, client, n.url, "/raft/stream/msgapp/b2")
	defer cancelApp()
	waitFor(t, "both writers to take their streams", func() bool {
		return p.writer.isWorking() && p.msgAppV2Writer.isWorking()
	})

	tr.RemovePeer(htPeerID)
	for name, resp := range map[string]*http.Response{"message": msg, "msgapp": app} {
		if b, err := io.ReadAll(resp.Body); (err != nil && !errors.Is(err, io.ErrUnexpectedEOF)) || len(b) != 0 {
			t.Errorf("%s stream: got %q, %v, want the end of the response without data", name, b, err)
		}
	}
	waitFor(t, "the handlers to return", func() bool { return srv.inflight.Load() == 0 })
}

// TestServeStreamReplacedConnection checks that a second dial of the same
// stream type replaces the first: the first response ends and the writer
// keeps working on the second.
func TestServeStreamReplacedConnection(t *testing.T) {
	srv := &htServer{}
	n := newNode(t, htLocal(), srv.serving(), withConfig(func(tr *Transport) { tr.ConnReadTimeout = time.Minute }))
	tr := n.tr
	htAddPeer(t, tr)
	client := n.client(t)
	p, _ := tr.get(htPeerID)

	first, cancelFirst := htDialStream(t, client, n.url, "/raft/stream/message/b2")
	defer cancelFirst()
	waitFor(t, "the writer to take the first stream", p.writer.isWorking)
	second, cancelSecond := htDialStream(t, client, n.url, "/raft/stream/message/b2")
	defer cancelSecond()
	if b, err := io.ReadAll(first.Body); err != nil || len(b) != 0 {
		t.Errorf("first stream: got %q, %v, want a clean end without data", b, err)
	}
	waitFor(t, "the first handler to return", func() bool { return srv.inflight.Load() == 1 })
	if !p.writer.isWorking() {
		t.Error("the writer stopped working, want it on the second stream")
	}
	tr.Send([]*raftpb.Message{{Type: raftpb.MsgVote.Enum(), To: proto.Uint64(htPeerID), From: proto.Uint64(htLocalID), Term: proto.Uint64(9)}})
	got, _, err := newMessageDecoder(second.Body, 1<<20).decode()
	if err != nil || got.GetType() != raftpb.MsgVote || got.GetTerm() != 9 {
		t.Errorf("second stream: got %v, %v, want the MsgVote of term 9", got, err)
	}
}

func TestServeSnapshot(t *testing.T) {
	snap := newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12)
	payload := bytes.Repeat([]byte("database bytes "), 1000)
	body := func(env []byte, rest []byte, unsized bool) func(t *testing.T) io.Reader {
		return func(t *testing.T) io.Reader {
			r := io.MultiReader(bytes.NewReader(env), bytes.NewReader(rest))
			if unsized {
				return htUnsized{r}
			}
			return bytes.NewReader(append(append([]byte(nil), env...), rest...))
		}
	}
	envOf := func(m *raftpb.Message) []byte { return htEnvelope(t, m) }
	cid := withCID(nil)
	decodeErr := func(inner string) string { return httpErr("failed to decode raft message (" + inner + ")") }
	nothingSaved := func(t *testing.T, e *htEnv) {
		htNoProcess(t, e)
		if msgs, _ := e.store.saved(); len(msgs) != 0 {
			t.Errorf("store got %d snapshots, want none", len(msgs))
		}
	}
	saved := func(wantPayload []byte) func(t *testing.T, e *htEnv) {
		return func(t *testing.T, e *htEnv) {
			msgs, payloads := e.store.saved()
			if len(msgs) != 1 {
				t.Fatalf("store got %d snapshots, want 1", len(msgs))
			}
			if !proto.Equal(msgs[0], snap) {
				t.Errorf("store got message %v, want %v", msgs[0], snap)
			}
			if !bytes.Equal(payloads[0], wantPayload) {
				t.Errorf("store got %d payload bytes, want the %d sent", len(payloads[0]), len(wantPayload))
			}
			select {
			case m := <-e.raft.msgc:
				if !proto.Equal(m, snap) {
					t.Errorf("Process got %v, want %v", m, snap)
				}
			default:
				t.Error("Process got no message")
			}
		}
	}
	snapPad := func(m *raftpb.Message, n int) { m.Snapshot.Data = make([]byte, n) }
	sizedEnv := func(n int) []byte {
		_, b := htPadded(t, newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12), n, snapPad)
		return append(binary.BigEndian.AppendUint64(nil, uint64(n)), b...)
	}
	hugePrefix := binary.BigEndian.AppendUint64(nil, 1<<63)
	smallEnv := func(tr *Transport) { tr.MaxSnapshotEnvelopeBytes = 1024 }
	msgApp := newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1"))
	garbage := append(binary.BigEndian.AppendUint64(nil, 4), 0xff, 0xff, 0xff, 0xff)

	cases := []htCase{
		{name: "GET", method: http.MethodGet, wantCode: 405, wantBody: httpErr("Method Not Allowed"),
			wantHeader: map[string]string{"Allow": "POST", "X-Etcd-Cluster-ID": ""}, check: htNoProcess},
		{name: "PUT", method: http.MethodPut, wantCode: 405, wantBody: httpErr("Method Not Allowed"),
			wantHeader: map[string]string{"Allow": "POST"}, check: htNoProcess},
		{name: "DELETE", method: http.MethodDelete, wantCode: 405, wantBody: httpErr("Method Not Allowed"),
			wantHeader: map[string]string{"Allow": "POST"}, check: htNoProcess},
		{name: "success", wantCode: 204, wantHeader: cid,
			setup: func(t *testing.T, e *htEnv) {
				// The payload is durable before raft sees the MsgSnap.
				e.raft.setProcess(func(_ context.Context, m *raftpb.Message) error {
					if msgs, _ := e.store.saved(); len(msgs) != 1 {
						t.Errorf("Process ran with %d snapshots saved, want 1", len(msgs))
					}
					e.raft.msgc <- m
					return nil
				})
			},
			check: saved(payload)},
		{name: "success chunked", body: body(envOf(snap), payload, true),
			wantCode: 204, wantHeader: cid, check: saved(payload)},
		{name: "empty payload", body: body(envOf(snap), nil, false),
			wantCode: 204, wantHeader: cid, check: saved(nil)},
		{name: "empty body", body: body(nil, nil, false),
			wantCode: 400, wantBody: decodeErr("unexpected EOF"), wantHeader: cid, check: nothingSaved},
		{name: "short length prefix", body: body([]byte{0, 0, 0}, nil, false),
			wantCode: 400, wantBody: decodeErr("unexpected EOF"), wantHeader: cid, check: nothingSaved},
		{name: "truncated envelope", body: body(envOf(snap)[:20], nil, true),
			wantCode: 400, wantBody: decodeErr("unexpected EOF"), wantHeader: cid, check: nothingSaved},
		{name: "garbage envelope", body: body(garbage, payload, false),
			wantCode: 400, anyBody: true, wantHeader: cid, check: func(t *testing.T, e *htEnv) {
				nothingSaved(t, e)
				if b := e.rec.Body.String(); !strings.HasPrefix(b, "failed to decode raft message (") || !strings.Contains(b, ErrMalformedFrame.Error()) {
					t.Errorf("body: got %q, want a decode error naming %q", b, ErrMalformedFrame)
				}
			}},
		{name: "envelope of the limit", configure: smallEnv, body: body(sizedEnv(1024), payload, true),
			wantCode: 204, wantHeader: cid, check: func(t *testing.T, e *htEnv) {
				if msgs, payloads := e.store.saved(); len(msgs) != 1 || !bytes.Equal(payloads[0], payload) {
					t.Errorf("store got %d snapshots, want 1 with the payload", len(msgs))
				}
			}},
		{name: "envelope over the limit", configure: smallEnv, body: body(sizedEnv(1025), payload, true),
			wantCode: 400, anyBody: true, wantHeader: cid, check: htLimitBody(nothingSaved)},
		{name: "huge length prefix", body: body(hugePrefix, payload, true),
			wantCode: 400, anyBody: true, wantHeader: cid, check: htLimitBody(nothingSaved)},
		{name: "not a MsgSnap", body: body(envOf(msgApp), payload, false),
			wantCode: 400, wantBody: httpErr("wrong raft message type"), wantHeader: cid, check: nothingSaved},
		{name: "no snapshot store", noStore: true, wantCode: 500, wantBody: httpErr("failed to save KV snapshot (no snapshot store configured)"),
			wantHeader: cid, check: htNoProcess},
		{name: "store error", storeErr: errors.New("disk full"),
			wantCode: 500, wantBody: httpErr("failed to save KV snapshot (disk full)"), wantHeader: cid, check: htNoProcess},
		{name: "Process error", setup: func(t *testing.T, e *htEnv) {
			e.raft.setProcess(func(context.Context, *raftpb.Message) error { return errors.New("raft is down") })
		},
			wantCode: 500, wantBody: httpErr("failed to process raft message (raft is down)"), wantHeader: cid},
		{name: "Process error that writes its response", setup: func(t *testing.T, e *htEnv) {
			e.raft.setProcess(func(context.Context, *raftpb.Message) error { return htRemovedError{} })
		},
			wantCode: 403, wantBody: htRemovedBody, wantHeader: withCID(map[string]string{"Content-Type": "application/json"})},
	}
	for _, tc := range htVersionCases(nil) {
		tc.check = htNoProcess
		cases = append(cases, tc)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			htRun(t, tc, htSnapshot, http.MethodPost, "/raft/snapshot", body(envOf(snap), payload, false))
		})
	}
}

// htLimitBody checks a 400 that reports the envelope limit, then runs next.
func htLimitBody(next func(t *testing.T, e *htEnv)) func(t *testing.T, e *htEnv) {
	return func(t *testing.T, e *htEnv) {
		b := e.rec.Body.String()
		if !strings.HasPrefix(b, "failed to decode raft message (") || !strings.HasSuffix(b, ")\n") ||
			!strings.Contains(b, ErrExceedSizeLimit.Error()) {
			t.Errorf("body: got %q, want a decode error naming %q", b, ErrExceedSizeLimit)
		}
		next(t, e)
	}
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
