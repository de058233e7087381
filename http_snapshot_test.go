package rafthttp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The handler tests of the snapshot route; their helpers are in http_test.go.

// TestServeSnapshot is the table of POST /raft/snapshot requests and the
// answers they must get: envelopes, payloads, limits and store failures.
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
