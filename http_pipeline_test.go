package rafthttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The handler tests of the pipeline route; their helpers are in http_test.go.

// TestServePipeline is the table of POST /raft requests and the answers
// they must get: methods, versions, cluster IDs, bodies and their sizes,
// and what raft sees.
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
