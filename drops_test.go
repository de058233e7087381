package rafthttp

import (
	"fmt"
	"slices"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
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

// TestReportDrop checks what reportDrop does for each kind of place that
// loses a message: what raft is told, where the drop is counted, and what
// is logged.
func TestReportDrop(t *testing.T) {
	const peerWarning = "dropped internal Raft message since sending buffer is full"
	tests := []struct {
		name   string
		typ    raftpb.MessageType
		reason string
		remote bool // the drop is the remote's, not the peer's
		site   func(p *peer, r *remote) *dropSite
		active bool // the member is active
		stop   bool // Stop has begun

		wantUnreachable int
		wantSnapFailure bool
		wantDrops       float64 // under the member's label (and in PeerStats.Dropped)
		wantUnknown     float64 // under Peer "unknown"
		wantFailures    float64 // peer_sent_failures_total
		wantLog         string  // the warning; "" for none
		wantFields      map[string]any
	}{
		{name: "Send's drop to a peer", typ: raftpb.MsgApp, reason: dropQueueFull,
			site:            func(p *peer, _ *remote) *dropSite { return p.sendDrop(chanStreamMsg) },
			wantUnreachable: 1, wantDrops: 1, wantFailures: 1, wantLog: peerWarning,
			wantFields: map[string]any{"message-type": "MsgApp", "remote-peer-name": chanStreamMsg,
				"reason": dropQueueFull, "remote-peer-active": false, "suppressed": int64(0)}},
		{name: "a MsgSnap fails the snapshot too", typ: raftpb.MsgSnap, reason: dropBudgetExceeded, active: true,
			site:            func(p *peer, _ *remote) *dropSite { return p.sendDrop(chanPipeline) },
			wantUnreachable: 1, wantSnapFailure: true, wantDrops: 1, wantFailures: 1, wantLog: peerWarning,
			wantFields: map[string]any{"message-type": "MsgSnap", "remote-peer-name": chanPipeline,
				"reason": dropBudgetExceeded, "remote-peer-active": true, "suppressed": int64(0)}},
		{name: "Send's drop to an inactive remote", typ: raftpb.MsgHeartbeat, reason: dropQueueFull, remote: true,
			site:            func(_ *peer, r *remote) *dropSite { return r.sendDrop() },
			wantUnreachable: 1, wantDrops: 1, wantFailures: 1,
			wantLog:    "dropped Raft message since sending buffer is full (overloaded network)",
			wantFields: map[string]any{"message-type": "MsgHeartbeat", "reason": dropQueueFull, "suppressed": int64(0)}},
		{name: "Send's drop to an active remote", typ: raftpb.MsgApp, reason: dropBudgetExceeded, remote: true, active: true,
			site:            func(_ *peer, r *remote) *dropSite { return r.sendDrop() },
			wantUnreachable: 1, wantDrops: 1, wantFailures: 1,
			wantLog:    "dropped internal Raft message since sending buffer is full (overloaded network)",
			wantFields: map[string]any{"message-type": "MsgApp", "reason": dropBudgetExceeded, "suppressed": int64(0)}},
		{name: "a stream writer's loss: no send failure, no warning", typ: raftpb.MsgApp, reason: dropConnClosed,
			site:            func(p *peer, _ *remote) *dropSite { return &dropSite{metrics: &p.metrics} },
			wantUnreachable: 1, wantDrops: 1},
		{name: "a failed POST: no warning", typ: raftpb.MsgSnap, reason: dropSendFailed, remote: true,
			site:            func(_ *peer, r *remote) *dropSite { return &dropSite{metrics: &r.pipeline.metrics, sendFailure: true} },
			wantUnreachable: 1, wantSnapFailure: true, wantDrops: 1, wantFailures: 1},
		{name: "no series: counted as unknown", typ: raftpb.MsgVote, reason: dropRemoved,
			site:            func(*peer, *remote) *dropSite { return &dropSite{} },
			wantUnreachable: 1, wantUnknown: 1},
		{name: "paused: counted, not told", typ: raftpb.MsgSnap, reason: dropPaused,
			site:      func(p *peer, _ *remote) *dropSite { return pausedDrop(&p.metrics) },
			wantDrops: 1},
		{name: "once Stop has begun: counted, not told", typ: raftpb.MsgSnap, reason: dropQueueFull, stop: true,
			site:      func(p *peer, _ *remote) *dropSite { return p.sendDrop(chanPipeline) },
			wantDrops: 1, wantFailures: 1, wantLog: peerWarning,
			wantFields: map[string]any{"message-type": "MsgSnap", "remote-peer-name": chanPipeline,
				"reason": dropQueueFull, "remote-peer-active": false, "suppressed": int64(0)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.WarnLevel)
			tr, fr := newNode(t, htLocal(), withLogger(zap.New(core))).parts()
			p := stoppedPeer(t, tr)
			if err := tr.AddRemote(htStranger, []string{"http://" + freeAddr(t)}); err != nil {
				t.Fatal(err)
			}
			tr.mu.RLock()
			r := tr.remotes[htStranger]
			tr.mu.RUnlock()
			to, status, pm := p.id, p.status, &p.metrics
			if tt.remote {
				to, status, pm = r.id, r.status, &r.pipeline.metrics
			}
			if tt.active {
				status.activate()
			}
			if tt.stop {
				tr.cancel() // what Stop does first, under t.mu
			}

			tr.reportDrop(to, tt.typ, tt.reason, tt.site(p, r))

			if got := fr.unreachableCount(to); got != tt.wantUnreachable {
				t.Errorf("ReportUnreachable called %d times, want %d", got, tt.wantUnreachable)
			}
			var wantSnaps []snapshotReport
			if tt.wantSnapFailure {
				wantSnaps = []snapshotReport{{to, raft.SnapshotFailure}}
			}
			if got := fr.snapshotReports(); fmt.Sprint(got) != fmt.Sprint(wantSnaps) {
				t.Errorf("snapshot reports %v, want %v", got, wantSnaps)
			}
			for _, c := range []struct {
				peer string
				want float64
			}{{formatID(to), tt.wantDrops}, {unknownPeerLabel, tt.wantUnknown}} {
				labels := map[string]string{"Peer": c.peer, "Type": tt.typ.String(), "Reason": tt.reason}
				if got := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", labels); got != c.want {
					t.Errorf("dropped_messages_total%v = %v, want %v", labels, got, c.want)
				}
			}
			if got := float64(pm.c.dropped.Load()); got != tt.wantDrops {
				t.Errorf("PeerStats.Dropped = %v, want %v", got, tt.wantDrops)
			}
			if got := metricValue(t, gathered(t, tr.metrics.sentFailures), "", map[string]string{"To": formatID(to)}); got != tt.wantFailures {
				t.Errorf("peer_sent_failures_total = %v, want %v", got, tt.wantFailures)
			}
			var got []string
			for _, e := range logs.All() {
				got = append(got, e.Message)
			}
			var want []string
			if tt.wantLog != "" {
				want = []string{tt.wantLog}
			}
			if !slices.Equal(got, want) {
				t.Fatalf("logged %q, want %q", got, want)
			}
			if tt.wantLog != "" {
				fields := logs.All()[0].ContextMap()
				delete(fields, "local-member-id") // the member's logger's own
				delete(fields, "remote-peer-id")
				if fmt.Sprint(fields) != fmt.Sprint(tt.wantFields) {
					t.Errorf("warning fields %v, want %v", fields, tt.wantFields)
				}
			}
		})
	}
}

// TestSendToRemoteReportsFull checks that Send's drops to a remote are
// reported as a peer's, and that a drop for a full queue, and only that,
// makes send report full (so that Send yields to the pipeline's workers).
func TestSendToRemoteReportsFull(t *testing.T) {
	const size = 4 << 10 // charged to the send budget
	tests := []struct {
		name      string
		configure func(*Transport)
		prepare   func(*Transport, *remote) // before the Send under test
		wantFull  bool
		wantDrop  string // the drop's reason; "" for none
		wantTold  int    // ReportUnreachable calls
	}{
		{name: "queued", wantFull: false},
		{name: "queue full", configure: func(tr *Transport) { tr.PipelineQueueSize = 1 },
			prepare:  func(tr *Transport, _ *remote) { tr.send([]*raftpb.Message{rtAnswer(htPeerID)}) },
			wantFull: true, wantDrop: dropQueueFull, wantTold: 1},
		{name: "budget exceeded: no yield", configure: func(tr *Transport) { tr.MaxPeerSendBytes = size + size/2 },
			prepare: func(tr *Transport, _ *remote) {
				tr.send([]*raftpb.Message{chargedMsg(raftpb.MsgApp, htLocalID, htPeerID, 1, size)})
			},
			wantFull: false, wantDrop: dropBudgetExceeded, wantTold: 1},
		{name: "paused: counted only", prepare: func(_ *Transport, r *remote) { r.paused.Store(true) },
			wantFull: false, wantDrop: dropPaused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, fr := newNode(t, htLocal(), withConfig(tt.configure)).parts()
			r := stoppedRemote(t, tr)
			if tt.prepare != nil {
				tt.prepare(tr, r)
			}
			before := r.pipeline.metrics.c.dropped.Load()
			full := tr.send([]*raftpb.Message{chargedMsg(raftpb.MsgApp, htLocalID, htPeerID, 2, size)})
			if full != tt.wantFull {
				t.Errorf("send reported full %v, want %v", full, tt.wantFull)
			}
			wantDrops := 0.0
			if tt.wantDrop != "" {
				wantDrops = 1
			}
			if got := float64(r.pipeline.metrics.c.dropped.Load() - before); got != wantDrops {
				t.Errorf("%v drops, want %v", got, wantDrops)
			}
			if tt.wantDrop != "" {
				labels := map[string]string{"Peer": r.idStr, "Type": "MsgApp", "Reason": tt.wantDrop}
				if got := metricValue(t, gathered(t, tr.metrics.droppedMessages), "", labels); got != 1 {
					t.Errorf("dropped_messages_total%v = %v, want 1", labels, got)
				}
			}
			if got := fr.unreachableCount(htPeerID); got != tt.wantTold {
				t.Errorf("ReportUnreachable called %d times, want %d", got, tt.wantTold)
			}
		})
	}
}

// TestSendDropNoAllocs checks that Send's drops cost no allocation once
// their warning has gone out: a flood of sends to a full queue drops
// nearly every message (compat/BENCHMARKS.md, open loop).
func TestSendDropNoAllocs(t *testing.T) {
	const size = 4 << 10 // charged to the send budget
	charged := chargedMsg(raftpb.MsgApp, htLocalID, htPeerID, 1, size)
	small := rtAnswer(htPeerID)
	tests := []struct {
		name      string
		configure func(*Transport)
		member    func(*testing.T, *Transport) *peerCounters // adds b2, stopped, as a peer or a remote
		fill      *raftpb.Message                            // sent first, and queued
		m         *raftpb.Message                            // then dropped
	}{
		{name: "peer, queue full", configure: func(tr *Transport) { tr.PipelineQueueSize = 1 },
			member: func(t *testing.T, tr *Transport) *peerCounters { return stoppedPeer(t, tr).metrics.c }, fill: small, m: small},
		{name: "peer, budget exceeded", configure: func(tr *Transport) { tr.MaxPeerSendBytes = size + size/2 },
			member: func(t *testing.T, tr *Transport) *peerCounters { return stoppedPeer(t, tr).metrics.c }, fill: charged, m: charged},
		{name: "peer, paused",
			member: func(t *testing.T, tr *Transport) *peerCounters {
				p := stoppedPeer(t, tr)
				tr.CutPeer(htPeerID)
				return p.metrics.c
			}, m: small},
		{name: "remote, queue full", configure: func(tr *Transport) { tr.PipelineQueueSize = 1 },
			member: func(t *testing.T, tr *Transport) *peerCounters { return stoppedRemote(t, tr).pipeline.metrics.c }, fill: small, m: small},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr, _ := newNode(t, htLocal(), withConfig(func(tr *Transport) {
				tr.logClock = func() int64 { return 1 } // one warning, at the first drop
				if tt.configure != nil {
					tt.configure(tr)
				}
			})).parts()
			counters := tt.member(t, tr)
			if tt.fill != nil {
				tr.send([]*raftpb.Message{tt.fill})
			}
			msgs := []*raftpb.Message{tt.m}
			before := counters.dropped.Load()
			if a := testing.AllocsPerRun(100, func() { tr.send(msgs) }); a != 0 {
				t.Errorf("%v allocations per drop, want 0", a)
			}
			if n := counters.dropped.Load() - before; n != 101 { // AllocsPerRun runs once more to warm up
				t.Errorf("%d drops, want 101: the test did not drop", n)
			}
		})
	}
}
