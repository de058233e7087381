package rafthttp

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// trickleBody yields one byte of b per tick until the test ends.
type trickleBody struct {
	b    []byte
	tick time.Duration
	ctx  context.Context
}

func (r *trickleBody) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	select {
	case <-time.After(r.tick):
	case <-r.ctx.Done():
		return 0, r.ctx.Err()
	}
	p[0] = r.b[0]
	r.b = r.b[1:]
	return 1, nil
}

// trickleNode serves the transport under test on a memNet of its own,
// watched by the htServer it returns, with the given PipelineTimeout and
// SnapshotProgressTimeout and a store in the directory it returns. Call it
// in a synctest bubble.
func trickleNode(t *testing.T, pipeline, progress time.Duration) (*testNode, *htServer, string) {
	t.Helper()
	srv := &htServer{}
	dir := t.TempDir()
	n := newNode(t, htLocal(), srv.serving(), onMemNet(&memNet{}), withStore(DirSnapshotStore{Dir: dir}), withConfig(func(tr *Transport) {
		tr.PipelineTimeout = pipeline
		tr.SnapshotProgressTimeout = progress
	}))
	return n, srv, dir
}

// trickleRefused sends req and returns how long it took to be refused (an
// error status, or the connection closed).
func trickleRefused(t *testing.T, client *http.Client, req *http.Request) time.Duration {
	t.Helper()
	start := time.Now()
	resp, err := client.Do(req)
	took := time.Since(start)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Errorf("status %d, want a refusal (4xx/5xx) or a closed connection", resp.StatusCode)
		}
	}
	t.Logf("cut off after %v (%v)", took.Round(time.Millisecond), err)
	return took
}

// trickleNothingKept checks what a body cut off must leave: the handler
// returned, raft got nothing, and the store in dir kept nothing.
func trickleNothingKept(t *testing.T, n *testNode, srv *htServer, dir string) {
	t.Helper()
	waitFor(t, "the handler to return", func() bool { return srv.inflight.Load() == 0 })
	select {
	case m := <-n.raft.msgc:
		t.Errorf("raft got %v from a body that never completed", m.GetType())
	default:
	}
	if files, _ := os.ReadDir(dir); len(files) != 0 {
		t.Errorf("the store kept %d files, want none", len(files))
	}
}

// TestTrickleBodyCutOff checks that a POST body trickling in a byte at a
// time is cut off once its grace (PipelineTimeout, SnapshotProgressTimeout)
// is over, on both POST routes: a handler is not held for ever by a slow
// client, although each byte alone is progress.
//
// Each case runs in a synctest bubble, over a memNet: the times are
// measured on the bubble's clock, which two loaded cores cannot stretch.
func TestTrickleBodyCutOff(t *testing.T) {
	const grace = 300 * time.Millisecond
	snap := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), To: proto.Uint64(htLocalID), From: proto.Uint64(htPeerID),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(5), Term: proto.Uint64(1)}}}
	tests := []struct {
		name string
		kind htKind
		path string
		head []byte // sent at once, before the trickle
	}{
		{name: "pipeline", kind: htPipeline, path: RaftPrefix},
		// A valid envelope, then a payload that trickles.
		{name: "snapshot", kind: htSnapshot, path: RaftSnapshotPrefix, head: appendMessageFrame(nil, snap)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n, srv, dir := trickleNode(t, grace, grace)
				client := n.client(t)
				// 200 bytes a second, a fifth of the slowest rate allowed;
				// 4 KiB would take 20 s.
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				body := io.MultiReader(bytes.NewReader(tc.head), &trickleBody{b: make([]byte, 4096), tick: 5 * time.Millisecond, ctx: ctx})
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url+tc.path, body)
				if err != nil {
					t.Fatal(err)
				}
				req.Header = htHeaders(tc.kind)
				took := trickleRefused(t, client, req)
				if took > 2*time.Second {
					t.Errorf("the trickling body was served for %v, want it cut off about %v after the start", took, grace)
				}
				trickleNothingKept(t, n, srv, dir)
			})
		})
	}
}

// silentBody sends nothing until the test ends.
type silentBody struct{ ctx context.Context }

func (r silentBody) Read([]byte) (int, error) {
	<-r.ctx.Done()
	return 0, r.ctx.Err()
}

// TestSnapshotBodyFirstBytesGrace checks that a snapshot body must start
// within the first-byte grace (PipelineTimeout, when shorter than
// SnapshotProgressTimeout), and that once its first bytes are in, the
// progress timeout applies: a sender's payload may pause that long.
//
// Each case runs in a synctest bubble, over a memNet: the times are
// measured on the bubble's clock, which two loaded cores cannot stretch.
func TestSnapshotBodyFirstBytesGrace(t *testing.T) {
	const (
		grace    = 200 * time.Millisecond // PipelineTimeout
		progress = 2 * time.Second        // SnapshotProgressTimeout
		// Lateness allowed: less than half the gap between the two, so
		// that a body given the progress timeout instead of the grace
		// fails the first case.
		slack = (progress - grace) / 2
	)
	cases := []struct {
		name string
		head []byte        // sent at once after the headers, then nothing
		want time.Duration // when the body is cut off
	}{
		{name: "nothing after the headers", want: grace},
		{name: "the envelope, then nothing", head: appendMessageFrame(nil, newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12)), want: progress},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				n, srv, dir := trickleNode(t, grace, progress)
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				body := io.MultiReader(bytes.NewReader(tc.head), silentBody{ctx})
				req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.url+RaftSnapshotPrefix, body)
				if err != nil {
					t.Fatal(err)
				}
				req.Header = htHeaders(htSnapshot)
				took := trickleRefused(t, n.client(t), req)
				if took < tc.want-50*time.Millisecond || took > tc.want+slack {
					t.Errorf("the body was cut off after %v, want about %v", took, tc.want)
				}
				trickleNothingKept(t, n, srv, dir)
			})
		})
	}
}
