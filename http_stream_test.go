package rafthttp

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The handler tests of the stream route; their helpers are in http_test.go.

// TestServeStream is the table of stream GETs the handler must refuse, and
// how: paths, versions, cluster IDs, X-Raft-To, unknown and removed peers.
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
		if p, ok := e.tr.get(htPeerID); ok && (p.writers[streamTypeMessage].isWorking() || p.writers[streamTypeMsgAppV2].isWorking()) {
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

// htStreamNode serves the transport under test, watched by srv, with b2 as
// a peer whose streams the test dials, and returns it and the peer b2. Its
// reads time out after a minute, so that the streams last the test.
func htStreamNode(t *testing.T, srv *htServer) (*testNode, *peer) {
	t.Helper()
	n := newNode(t, htLocal(), srv.serving(), withConfig(func(tr *Transport) { tr.ConnReadTimeout = time.Minute }))
	htAddPeer(t, n.tr)
	p, _ := n.tr.get(htPeerID)
	return n, p
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
			this: func(p *peer) *streamWriter { return p.writers[streamTypeMessage] }, other: func(p *peer) *streamWriter { return p.writers[streamTypeMsgAppV2] }},
		{name: "msgapp", path: "/raft/stream/msgapp/b2",
			msg: &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: proto.Uint64(htPeerID), From: proto.Uint64(htLocalID), Term: proto.Uint64(7),
				LogTerm: proto.Uint64(6), Index: proto.Uint64(20), Commit: proto.Uint64(19),
				Entries: []*raftpb.Entry{{Term: proto.Uint64(7), Index: proto.Uint64(21), Data: []byte("x")}}},
			read: func(r io.Reader) (*raftpb.Message, int, error) {
				return newMsgAppV2Decoder(r, htPeerID, htLocalID, 1<<20).decode()
			},
			this: func(p *peer) *streamWriter { return p.writers[streamTypeMsgAppV2] }, other: func(p *peer) *streamWriter { return p.writers[streamTypeMessage] }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := &htServer{}
			n, p := htStreamNode(t, srv)
			tr, client := n.tr, n.client(t)

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
	n, p := htStreamNode(t, srv)
	tr, client := n.tr, n.client(t)

	msg, cancelMsg := htDialStream(t, client, n.url, "/raft/stream/message/b2")
	defer cancelMsg()
	app, cancelApp := htDialStream(t, client, n.url, "/raft/stream/msgapp/b2")
	defer cancelApp()
	waitFor(t, "both writers to take their streams", func() bool {
		return p.writers[streamTypeMessage].isWorking() && p.writers[streamTypeMsgAppV2].isWorking()
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
	n, p := htStreamNode(t, srv)
	tr, client := n.tr, n.client(t)

	first, cancelFirst := htDialStream(t, client, n.url, "/raft/stream/message/b2")
	defer cancelFirst()
	waitFor(t, "the writer to take the first stream", p.writers[streamTypeMessage].isWorking)
	second, cancelSecond := htDialStream(t, client, n.url, "/raft/stream/message/b2")
	defer cancelSecond()
	if b, err := io.ReadAll(first.Body); err != nil || len(b) != 0 {
		t.Errorf("first stream: got %q, %v, want a clean end without data", b, err)
	}
	waitFor(t, "the first handler to return", func() bool { return srv.inflight.Load() == 1 })
	if !p.writers[streamTypeMessage].isWorking() {
		t.Error("the writer stopped working, want it on the second stream")
	}
	tr.Send([]*raftpb.Message{{Type: raftpb.MsgVote.Enum(), To: proto.Uint64(htPeerID), From: proto.Uint64(htLocalID), Term: proto.Uint64(9)}})
	got, _, err := newMessageDecoder(second.Body, 1<<20).decode()
	if err != nil || got.GetType() != raftpb.MsgVote || got.GetTerm() != 9 {
		t.Errorf("second stream: got %v, %v, want the MsgVote of term 9", got, err)
	}
}
