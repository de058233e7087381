package rafthttptest

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// heartbeat returns a MsgHeartbeat from from to to, told apart by commit.
func heartbeat(from, to, commit uint64) *raftpb.Message {
	return &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(from), To: proto.Uint64(to),
		Commit: proto.Uint64(commit)}
}

// withCommit matches the messages of the given commit.
func withCommit(commit uint64) func(*raftpb.Message) bool {
	return func(m *raftpb.Message) bool { return m.GetCommit() == commit }
}

// TestRecorderZeroValue checks that a zero Recorder records each callback.
func TestRecorderZeroValue(t *testing.T) {
	var r Recorder
	if r.IsIDRemoved(2) || r.Unreachable(2) != 0 || len(r.Messages()) != 0 || len(r.Snapshots()) != 0 {
		t.Fatal("a zero Recorder has recorded something")
	}
	ms := []*raftpb.Message{heartbeat(2, 1, 1), heartbeat(3, 1, 2)}
	for _, m := range ms {
		if err := r.Process(t.Context(), m); err != nil {
			t.Fatalf("Process: %v", err)
		}
	}
	r.ReportUnreachable(2)
	r.ReportUnreachable(2)
	r.ReportUnreachable(3)
	r.ReportSnapshot(3, raft.SnapshotFailure)
	r.ReportSnapshot(2, raft.SnapshotFinish)
	r.SetRemoved(4)

	if got := r.Messages(); !slices.Equal(got, ms) {
		t.Errorf("Messages: got %v, want %v", got, ms)
	}
	for _, tc := range []struct {
		id          uint64
		unreachable int
		removed     bool
	}{{id: 2, unreachable: 2}, {id: 3, unreachable: 1}, {id: 4, removed: true}} {
		if got := r.Unreachable(tc.id); got != tc.unreachable {
			t.Errorf("Unreachable(%d): got %d, want %d", tc.id, got, tc.unreachable)
		}
		if got := r.IsIDRemoved(tc.id); got != tc.removed {
			t.Errorf("IsIDRemoved(%d): got %v, want %v", tc.id, got, tc.removed)
		}
	}
	want := []SnapshotReport{{ID: 3, Status: raft.SnapshotFailure}, {ID: 2, Status: raft.SnapshotFinish}}
	if got := r.Snapshots(); !slices.Equal(got, want) {
		t.Errorf("Snapshots: got %v, want %v", got, want)
	}
}

// TestRecorderWait checks Wait: it finds a message already recorded or
// waits for one, skips those that do not match, and gives up when its
// context ends.
func TestRecorderWait(t *testing.T) {
	for _, tc := range []struct {
		name    string
		before  []uint64 // commits recorded before Wait
		after   []uint64 // commits recorded while Wait waits
		match   func(*raftpb.Message) bool
		want    uint64 // the commit of the message returned
		wantErr error
	}{
		{name: "already there", before: []uint64{1, 2, 3}, match: withCommit(2), want: 2},
		{name: "the first of two", before: []uint64{7, 7}, match: withCommit(7), want: 7},
		{name: "nil matches anything", before: []uint64{5, 6}, want: 5},
		{name: "arrives later", before: []uint64{1}, after: []uint64{2, 3}, match: withCommit(3), want: 3},
		{name: "nothing yet, nil match", after: []uint64{9}, want: 9},
		{name: "never arrives", before: []uint64{1}, after: []uint64{2}, match: withCommit(3), wantErr: context.DeadlineExceeded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r Recorder
			for _, c := range tc.before {
				r.Process(t.Context(), heartbeat(2, 1, c))
			}
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for _, c := range tc.after {
					r.Process(t.Context(), heartbeat(2, 1, c))
				}
			}()
			defer func() { <-done }()
			m, err := r.Wait(ctx, tc.match)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, %v; want error %v", m, err, tc.wantErr)
			}
			if tc.wantErr == nil && m.GetCommit() != tc.want {
				t.Errorf("got the message of commit %d, want %d", m.GetCommit(), tc.want)
			}
		})
	}
}

// TestRecorderWaitMatchMayCallRecorder checks that a match function may
// call the Recorder's methods without deadlocking.
func TestRecorderWaitMatchMayCallRecorder(t *testing.T) {
	var r Recorder
	r.Process(t.Context(), heartbeat(2, 1, 1))
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	m, err := r.Wait(ctx, func(*raftpb.Message) bool { return len(r.Messages()) == 1 })
	if err != nil || m.GetCommit() != 1 {
		t.Fatalf("got %v, %v; want the message of commit 1", m, err)
	}
}
