package rafthttp

import (
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

func TestDropLogAllow(t *testing.T) {
	type step struct {
		calls     int  // allow calls made
		rewind    bool // before them, move the last line back past the window
		wantLogs  int  // calls that said log
		wantCount int64
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"the first drop logs", []step{{calls: 1, wantLogs: 1, wantCount: 0}}},
		{"drops within a second are counted for the next line", []step{
			{calls: 6, wantLogs: 1, wantCount: 0},
			{calls: 1, rewind: true, wantLogs: 1, wantCount: 5},
		}},
		{"in bulk the clock is read every 64th drop", []step{
			{calls: 1, wantLogs: 1},
			{calls: 100},
			// Calls 101 to 127 do not look at the clock; the 128th does.
			{calls: 27, rewind: true},
			{calls: 1, wantLogs: 1, wantCount: 127},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d dropLog
			for i, s := range tt.steps {
				if s.rewind {
					d.last.Store(time.Now().Add(-2 * time.Second).UnixNano())
				}
				logs := 0
				var count int64
				for range s.calls {
					if n, ok := d.allow(); ok {
						logs++
						count = n
					}
				}
				if logs != s.wantLogs || count != s.wantCount {
					t.Fatalf("step %d: %d lines (last counting %d), want %d (counting %d)", i, logs, count, s.wantLogs, s.wantCount)
				}
			}
		})
	}
}

func TestDropCounterCache(t *testing.T) {
	m := newMetrics()
	pm := m.forPeer("7")
	tests := []struct {
		name   string
		typ    raftpb.MessageType
		reason string
	}{
		{"cached", raftpb.MsgApp, dropQueueFull},
		{"cached, another reason", raftpb.MsgHeartbeat, dropPaused},
		{"type beyond the cache", raftpb.MessageType(dropTypes + 3), dropQueueFull},
		{"reason not in the list", raftpb.MsgVote, "something_else"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for range 3 {
				pm.drop(tt.typ, tt.reason)
			}
			got := metricSum(t, m.droppedMessages, map[string]string{"Peer": "7", "Type": tt.typ.String(), "Reason": tt.reason})
			if got != 3 {
				t.Errorf("dropped_messages_total{%s,%s} = %v, want 3", tt.typ, tt.reason, got)
			}
			if pm.dropCounter(tt.typ, tt.reason) != m.droppedMessages.WithLabelValues("7", tt.typ.String(), tt.reason) {
				t.Error("cached counter is not the vector's child")
			}
		})
	}
}
