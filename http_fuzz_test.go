package rafthttp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// The handler fuzz targets serve fuzzed requests (method, path, the peer
// headers and the body) through the Handler of one started transport per
// target and check that nothing panics (but the pipeline's deliberate
// http.ErrAbortHandler), that the status is one the route documents, that
// the answer is small and carries the headers the protocol promises.

// htFuzzRemoved is a member the fuzz transports' raft reports as removed.
const htFuzzRemoved = 0xd4

// htFuzzMaxRemotes bounds the remotes fuzzed requests may create: every
// request with a new X-Server-From and valid X-PeerURLs adds one, with its
// pipeline goroutines, and nothing removes remotes (see the report on this).
const htFuzzMaxRemotes = 32

// newFuzzTransport starts the transport a fuzz target shares between its
// inputs: member a1 with, if withPeer, the peer b2. Its raft succeeds at
// once unless the message's Context asks otherwise ("fail": a plain error,
// "removed": an error that writes a 403). Its snapshot store reads the
// whole payload and fails for the snapshot index 0xdead.
func newFuzzTransport(f *testing.F, withPeer bool) (*Transport, http.Handler) {
	fr := newFakeRaft()
	fr.setRemoved(htFuzzRemoved)
	fr.setProcess(func(_ context.Context, m *raftpb.Message) error {
		switch string(m.GetContext()) {
		case "fail":
			return errors.New("raft is down")
		case "removed":
			return htRemovedError{}
		}
		return nil
	})
	tr := newNode(f, withID(htLocalID), withClusterID(htClusterID), unserved(), withRaft(fr), withLogger(nil),
		withStore(htFuzzStore{}), withDialRetry(100*time.Millisecond, time.Second), withConfig(func(tr *Transport) {
			tr.MaxMessageBytes = 1 << 20
			tr.MaxSnapshotEnvelopeBytes = 1 << 20
		})).tr
	if withPeer {
		if err := tr.AddPeer(htPeerID, []string{"http://" + freeAddr(f)}); err != nil {
			f.Fatalf("AddPeer: %v", err)
		}
	}
	return tr, tr.Handler()
}

// htFuzzStore discards payloads.
type htFuzzStore struct{}

func (htFuzzStore) SaveSnapshot(_ context.Context, m *raftpb.Message, r io.Reader) error {
	if _, err := io.Copy(io.Discard, r); err != nil {
		return err
	}
	if m.GetSnapshot().GetMetadata().GetIndex() == 0xdead {
		return errors.New("disk full")
	}
	return nil
}

// htFuzzDropRemotes stops and forgets the transport's remotes once there are
// too many, so that a long fuzz run stays within bounded memory.
func htFuzzDropRemotes(tr *Transport) {
	tr.mu.Lock()
	if len(tr.remotes) <= htFuzzMaxRemotes {
		tr.mu.Unlock()
		return
	}
	rs := tr.remotes
	tr.remotes = make(map[uint64]*remote)
	tr.mu.Unlock()
	for _, r := range rs {
		r.stop()
	}
}

// htIsToken reports whether s is a valid HTTP method (an RFC 9110 token).
func htIsToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// htFuzzRequest builds the request of a fuzz input, or reports that no
// server could receive one like it. Its context is already cancelled, so
// that a stream the handler attaches is given back at once.
func htFuzzRequest(method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs string, body []byte) (*http.Request, bool) {
	if !htIsToken(method) || !strings.HasPrefix(path, "/") {
		return nil, false
	}
	u := &url.URL{Path: path}
	h := http.Header{}
	for name, v := range map[string]string{"X-Server-Version": serverVersion, "X-Min-Cluster-Version": minClusterVersion,
		"X-Etcd-Cluster-ID": clusterID, "X-Server-From": from, "X-Raft-To": raftTo, "X-PeerURLs": peerURLs} {
		if v != "" {
			h.Set(name, v)
		}
	}
	req := &http.Request{Method: method, URL: u, RequestURI: u.RequestURI(), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: io.NopCloser(bytes.NewReader(body)), ContentLength: int64(len(body)),
		Host: "a1.example:2380", RemoteAddr: "192.0.2.2:40000"}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return req.WithContext(ctx), true
}

// htFuzzStatuses lists, by mux pattern, the statuses a route may answer
// (spec §2 and Appendix C). "" is the mux's own 404. 503 is ours: the
// receive budget is full, or (snapshots) the sender went away before the
// store returned (the fuzzed requests come with their context done).
var htFuzzStatuses = map[string][]int{
	RaftPrefix:             {204, 400, 403, 405, 412, 413, 500, 503},
	pipelineBatchPath:      {204, 400, 403, 405, 412, 413, 500, 503},
	RaftStreamPrefix + "/": {200, 404, 405, 410, 412},
	RaftSnapshotPrefix:     {204, 400, 403, 405, 409, 500, 412, 503},
	snapshotResumePath:     {200, 204, 400, 404, 405, 412, 503}, // 404: the store does not resume
	ProbingPrefix:          {200},
	"":                     {404},
}

// htFuzzServe serves one fuzz input and checks the invariants.
func htFuzzServe(t *testing.T, tr *Transport, h http.Handler, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs string, body []byte) {
	req, ok := htFuzzRequest(method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs, body)
	if !ok {
		return
	}
	defer htFuzzDropRemotes(tr)
	_, pattern := h.(*http.ServeMux).Handler(req)

	type result struct {
		panic any
		stack []byte
	}
	rec := httptest.NewRecorder()
	w := &closedStreamRecorder{ResponseRecorder: rec, ctx: req.Context()}
	done := make(chan result, 1)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- result{p, debug.Stack()}
				return
			}
			done <- result{}
		}()
		h.ServeHTTP(w, req)
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s %q: the handler did not return", method, path)
	}

	// What serving a request allocates is bounded by what decoding its
	// body may cost, plus the fixed cost of a request (the recorder, a
	// remote the request creates, read-ahead buffers): an amplifying body
	// shows up as a multiple of its size.
	runtime.ReadMemStats(&after)
	if got, bound := after.TotalAlloc-before.TotalAlloc, uint64(raftproto.MaxCostPerByte*len(body))+1<<20; got > bound {
		t.Fatalf("%s %q: serving a %d-byte body allocated %d bytes, bound %d", method, path, len(body), got, bound)
	}

	code, respBody := rec.Code, rec.Body.String()
	if res.panic != nil {
		// Only the pipeline's deliberate abort after a 500 may panic.
		if res.panic != http.ErrAbortHandler || (pattern != RaftPrefix && pattern != pipelineBatchPath) || code != 500 || respBody != "error processing raft message\n" {
			t.Fatalf("%s %q: handler panicked (status %d, body %q): %v\n%s", method, path, code, respBody, res.panic, res.stack)
		}
	}

	if code == http.StatusMovedPermanently || code == http.StatusTemporaryRedirect || code == http.StatusPermanentRedirect {
		// The mux redirects unclean paths ("//", "/..") and /raft/stream,
		// whatever the route.
		if rec.Header().Get("Location") == "" {
			t.Fatalf("%s %q: %d without a Location", method, path, code)
		}
		if max := 1024 + 3*len(path); len(respBody) > max {
			t.Fatalf("%s %q: redirect body of %d bytes, want at most %d", method, path, len(respBody), max)
		}
		return
	}
	allowed, known := htFuzzStatuses[pattern]
	if !known {
		t.Fatalf("%s %q: routed to unexpected pattern %q", method, path, pattern)
	}
	if !containsInt(allowed, code) {
		t.Fatalf("%s %q (route %q): got status %d, want one of %v (body %q)", method, path, pattern, code, allowed, respBody)
	}
	if len(respBody) > 1024 {
		t.Fatalf("%s %q: got a body of %d bytes, want at most 1 KiB", method, path, len(respBody))
	}
	if pattern == pipelineBatchPath {
		// The count of a batch's processed messages comes only with a
		// refusal from Process (500, or the error's own 403), and is
		// below the messages a batch may hold.
		v, present := rec.Header()[http.CanonicalHeaderKey(headerBatchProcessed)]
		if present != (code == 500 || (code == 403 && respBody == htRemovedBody)) {
			t.Fatalf("%s %q: status %d with %s %q", method, path, code, headerBatchProcessed, v)
		}
		if k, err := strconv.Atoi(strings.Join(v, ",")); present && (err != nil || k < 0 || k >= batchMaxMessages || strconv.Itoa(k) != v[0]) {
			t.Fatalf("%s %q: %s %q, want one count below %d", method, path, headerBatchProcessed, v, batchMaxMessages)
		}
	}
	switch code {
	case 204:
		if respBody != "" {
			t.Fatalf("%s %q: 204 with body %q", method, path, respBody)
		}
	case 412:
		if pattern != RaftStreamPrefix+"/" || respBody != "to field mismatch\n" {
			if respBody != "incompatible version\n" && respBody != "cluster ID mismatch\n" {
				t.Fatalf("%s %q: 412 with body %q", method, path, respBody)
			}
		}
	}
	if code != 405 && pattern != "" && pattern != ProbingPrefix {
		if got := rec.Header().Get("X-Etcd-Cluster-ID"); got != "beef1000" {
			t.Fatalf("%s %q: status %d with X-Etcd-Cluster-ID %q, want beef1000", method, path, code, got)
		}
		if pattern == RaftStreamPrefix+"/" {
			if got := rec.Header().Get("X-Server-Version"); got != DefaultServerVersion {
				t.Fatalf("%s %q: status %d with X-Server-Version %q, want %s", method, path, code, got, DefaultServerVersion)
			}
			if code == 200 && rec.Header().Get("Content-Type") != "" {
				t.Fatalf("%s %q: stream 200 with Content-Type %q", method, path, rec.Header().Get("Content-Type"))
			}
		}
	}
}

func containsInt(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// htFuzzMarshal marshals a seed message.
func htFuzzMarshal(m *raftpb.Message) []byte {
	b, err := proto.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func htFuzzEnvelope(m *raftpb.Message, payload string) []byte {
	b := htFuzzMarshal(m)
	return append(append(binary.BigEndian.AppendUint64(nil, uint64(len(b))), b...), payload...)
}

// Seed header values: what etcd 3.7.3 member b2 sends.
const (
	seedVersion = "3.7.3"
	seedMin     = "3.0.0"
	seedCID     = "beef1000"
	seedFrom    = "b2"
	seedTo      = "a1"
	seedURLs    = "http://127.0.0.1:2380"
)

func FuzzServePipeline(f *testing.F) {
	tr, h := newFuzzTransport(f, false)
	app := htFuzzMarshal(newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1")))
	withContext := func(c string) []byte {
		m := newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 10)
		m.Context = []byte(c)
		return htFuzzMarshal(m)
	}
	post := func(version, min, cid, from, urls string, body []byte) {
		f.Add("POST", "/raft", version, min, cid, from, "", urls, body)
	}
	post(seedVersion, seedMin, seedCID, seedFrom, seedURLs, app)
	post(seedVersion, seedMin, seedCID, "c3", seedURLs, app)
	post(seedVersion, seedMin, seedCID, seedFrom, seedURLs, nil)
	post(seedVersion, seedMin, seedCID, seedFrom, seedURLs, withContext("fail"))
	post(seedVersion, seedMin, seedCID, seedFrom, seedURLs, withContext("removed"))
	post(seedVersion, seedMin, seedCID, seedFrom, seedURLs, []byte("\xff\xff\xff\xff"))
	post(seedVersion, seedMin, seedCID, seedFrom, seedURLs, bytes.Repeat([]byte{0x0a, 0x80, 0x80, 0x80, 0x01}, 4))
	post("", seedMin, seedCID, seedFrom, seedURLs, app)
	post("garbage", seedMin, seedCID, seedFrom, seedURLs, app)
	post("v3.7.0", seedMin, seedCID, seedFrom, seedURLs, app)
	post(strings.Repeat("3", 300), seedMin, seedCID, seedFrom, seedURLs, app)
	post("99999999999999999999.0.0", "3.8.0", seedCID, seedFrom, seedURLs, app)
	post(seedVersion, seedMin, "BEEF1000", seedFrom, seedURLs, app)
	post(seedVersion, seedMin, seedCID, "c3", "bad", app)
	post(seedVersion, seedMin, seedCID, "c3", "http://x:1/path,unix:///tmp/s", app)
	post(seedVersion, seedMin, seedCID, "ffffffffffffffff", strings.Repeat("http://a:1,", 70), app)
	f.Add("GET", "/raft", seedVersion, seedMin, seedCID, seedFrom, "", seedURLs, []byte(nil))
	f.Add("POST", "/raft/../raft", seedVersion, seedMin, seedCID, seedFrom, "", seedURLs, app)
	f.Add("POST", "/raft/probing", "", "", "", "", "", "", []byte(nil))
	f.Fuzz(func(t *testing.T, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs string, body []byte) {
		htFuzzServe(t, tr, h, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs, body)
	})
}

func FuzzServeBatch(f *testing.F) {
	tr, h := newFuzzTransport(f, false)
	msg := func(commit uint64, c string) *raftpb.Message {
		m := newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withCommit(commit), withEntry("put x=1"))
		if c != "" {
			m.Context = []byte(c)
		}
		return m
	}
	frame := func(ms ...*raftpb.Message) []byte {
		var b []byte
		for _, m := range ms {
			b = appendMessageFrame(b, m)
		}
		return b
	}
	post := func(cid, from string, body []byte) {
		f.Add("POST", "/raft/batch", seedVersion, seedMin, cid, from, "", seedURLs, body)
	}
	two := frame(msg(1, ""), msg(2, ""))
	post(seedCID, seedFrom, two)
	post(seedCID, seedFrom, frame(msg(1, ""), msg(2, "fail"), msg(3, "")))
	post(seedCID, seedFrom, frame(msg(1, ""), msg(2, "removed")))
	post(seedCID, seedFrom, frame(msg(1, "fail")))
	post(seedCID, seedFrom, nil)
	post(seedCID, seedFrom, two[:len(two)-1])
	post(seedCID, seedFrom, two[:5])
	post(seedCID, seedFrom, append(binary.BigEndian.AppendUint64(nil, 1<<63), 0x08))
	post(seedCID, seedFrom, make([]byte, 8*(batchMaxMessages+1)))
	post(seedCID, seedFrom, append(binary.BigEndian.AppendUint64(nil, 4), 0xff, 0xff, 0xff, 0xff))
	post(seedCID, "c3", two)
	post("BEEF1000", seedFrom, two)
	f.Add("GET", "/raft/batch", seedVersion, seedMin, seedCID, seedFrom, "", seedURLs, []byte(nil))
	f.Fuzz(func(t *testing.T, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs string, body []byte) {
		htFuzzServe(t, tr, h, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs, body)
	})
}

func FuzzServeStream(f *testing.F) {
	tr, h := newFuzzTransport(f, true)
	get := func(path, version, min, cid, from, to, urls string) {
		f.Add("GET", path, version, min, cid, from, to, urls, []byte(nil))
	}
	get("/raft/stream/message/b2", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/msgapp/b2", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/msgapp/B2", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/message/c3", seedVersion, seedMin, seedCID, "c3", seedTo, seedURLs)
	get("/raft/stream/message/c3", seedVersion, seedMin, seedCID, "c3", seedTo, "http://x:1/path")
	get("/raft/stream/message/d4", seedVersion, seedMin, seedCID, "d4", seedTo, seedURLs)
	get("/raft/stream/message/b2", seedVersion, seedMin, seedCID, seedFrom, "A1", seedURLs)
	get("/raft/stream/msgappv2/b2", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/foo/1", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/message/zz", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/message/", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/message/b2/x", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream//message/b2", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/message/b2", "garbage", seedMin, seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/message/b2", seedVersion, "3.8.0", seedCID, seedFrom, seedTo, seedURLs)
	get("/raft/stream/message/b2", seedVersion, seedMin, "0beef1000", seedFrom, seedTo, seedURLs)
	get("/raft/stream", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs)
	f.Add("POST", "/raft/stream/message/b2", seedVersion, seedMin, seedCID, seedFrom, seedTo, seedURLs, []byte("x"))
	f.Fuzz(func(t *testing.T, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs string, body []byte) {
		htFuzzServe(t, tr, h, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs, body)
	})
}

func FuzzServeSnapshot(f *testing.F) {
	tr, h := newFuzzTransport(f, false)
	snap := newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12)
	failing := newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12)
	failing.Snapshot.Metadata.Index = proto.Uint64(0xdead)
	rejected := newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12)
	rejected.Context = []byte("fail")
	removed := newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12)
	removed.Context = []byte("removed")
	post := func(version, cid, from, urls string, body []byte) {
		f.Add("POST", "/raft/snapshot", version, seedMin, cid, from, "", urls, body)
	}
	post(seedVersion, seedCID, seedFrom, seedURLs, htFuzzEnvelope(snap, "database bytes"))
	post(seedVersion, seedCID, seedFrom, seedURLs, htFuzzEnvelope(snap, ""))
	post(seedVersion, seedCID, seedFrom, seedURLs, htFuzzEnvelope(failing, "database bytes"))
	post(seedVersion, seedCID, seedFrom, seedURLs, htFuzzEnvelope(rejected, "database bytes"))
	post(seedVersion, seedCID, seedFrom, seedURLs, htFuzzEnvelope(removed, "database bytes"))
	post(seedVersion, seedCID, seedFrom, seedURLs, htFuzzEnvelope(newMsg(raftpb.MsgApp, htPeerID, htLocalID, 10, withEntry("put x=1")), "x"))
	post(seedVersion, seedCID, seedFrom, seedURLs, nil)
	post(seedVersion, seedCID, seedFrom, seedURLs, []byte{0, 0, 0})
	post(seedVersion, seedCID, seedFrom, seedURLs, binary.BigEndian.AppendUint64(nil, 1<<63))
	post(seedVersion, seedCID, seedFrom, seedURLs, binary.BigEndian.AppendUint64(nil, 1<<20+1))
	post(seedVersion, seedCID, seedFrom, seedURLs, append(binary.BigEndian.AppendUint64(nil, 1<<20), "short"...))
	post(seedVersion, seedCID, seedFrom, seedURLs, append(binary.BigEndian.AppendUint64(nil, 4), 0xff, 0xff, 0xff, 0xff))
	post("garbage", seedCID, seedFrom, seedURLs, htFuzzEnvelope(snap, "x"))
	post(seedVersion, "", seedFrom, seedURLs, htFuzzEnvelope(snap, "x"))
	post(seedVersion, seedCID, "c3", "http://[::1]:2380,bad", htFuzzEnvelope(snap, "x"))
	f.Add("PUT", "/raft/snapshot", seedVersion, seedMin, seedCID, seedFrom, "", seedURLs, []byte(nil))
	f.Add("POST", "/raft/snapshot/", seedVersion, seedMin, seedCID, seedFrom, "", seedURLs, []byte(nil))
	f.Add("GET", "/raft/snapshot/resume", seedVersion, seedMin, seedCID, seedFrom, "", seedURLs, []byte(nil))
	f.Add("POST", "/raft/snapshot/resume", seedVersion, seedMin, seedCID, seedFrom, "", seedURLs, []byte(nil))
	f.Add("GET", "/raft/snapshot/resume", seedVersion, seedMin, "1", seedFrom, "", seedURLs, []byte(nil))
	f.Fuzz(func(t *testing.T, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs string, body []byte) {
		htFuzzServe(t, tr, h, method, path, serverVersion, minClusterVersion, clusterID, from, raftTo, peerURLs, body)
	})
}

// closedStreamRecorder records a response whose connection is gone: the
// request's context is done, and once a stream has been answered 200 its
// body writes fail, as writes to a closed connection do. A stream handler
// that attached must then let go of the response.
type closedStreamRecorder struct {
	*httptest.ResponseRecorder
	ctx context.Context
}

func (w *closedStreamRecorder) Write(p []byte) (int, error) {
	if w.Code == http.StatusOK && w.ctx.Err() != nil {
		return 0, errors.New("write on a closed connection")
	}
	return w.ResponseRecorder.Write(p)
}
