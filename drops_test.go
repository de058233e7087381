package rafthttp

import (
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

func TestDropCounterCache(t *testing.T) {
	m := newMetrics(DefaultMetricsNamespace)
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
			got := metricValue(t, gathered(t, m.droppedMessages), "", map[string]string{"Peer": "7", "Type": tt.typ.String(), "Reason": tt.reason})
			if got != 3 {
				t.Errorf("dropped_messages_total{%s,%s} = %v, want 3", tt.typ, tt.reason, got)
			}
			if pm.dropCounter(tt.typ, tt.reason) != m.droppedMessages.WithLabelValues("7", tt.typ.String(), tt.reason) {
				t.Error("cached counter is not the vector's child")
			}
		})
	}
}
