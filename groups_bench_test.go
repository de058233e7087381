package rafthttp

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// BenchmarkGroupsIdle measures what a raft group costs when idle: 1, 10
// and 100 groups of three members on three hosts (one process), each host
// one listener (a Mux) serving a member of every group, with and without a
// HostPool shared by its Transports. It reports, per group and per peer
// (a group of three has six member-peer pairs), the goroutines, live heap
// and goroutine stacks, TCP connections open, and CPU time per second of
// wall time: first with nothing sent (streams with their link heartbeats,
// and probes), then with raft's heartbeats of an idle group (the leader to
// each follower and back every 100 ms, etcd's default). It runs once
// whatever b.N (use -benchtime=1x); its windows are idleWindow long.
// compat/BENCHMARKS.md ("Many groups") has the figures.
//
// The queues=256 runs give each peer queues of 256 messages
// (StreamQueueSize, RecvQueueSize, PropQueueSize) instead of 4096: the
// queues' buffers are most of a pair's heap.
func BenchmarkGroupsIdle(b *testing.B) {
	for _, pooled := range []bool{true, false} {
		for _, groups := range []int{1, 10, 100} {
			name := fmt.Sprintf("pool=%v/groups=%d", pooled, groups)
			b.Run(name, func(b *testing.B) { benchGroupsIdle(b, pooled, groups, 0) })
		}
	}
	for _, groups := range []int{10, 100} {
		name := fmt.Sprintf("pool=true/queues=256/groups=%d", groups)
		b.Run(name, func(b *testing.B) { benchGroupsIdle(b, true, groups, 256) })
	}
}

// idleWindow is how long each CPU measurement lasts: two probe intervals
// (4 s), five link heartbeat periods (5/3 s).
const idleWindow = 8 * time.Second

// echoRaft answers a MsgHeartbeat with a MsgHeartbeatResp, as a follower's
// raft does, and takes everything else.
type echoRaft struct {
	tr        atomic.Pointer[Transport]
	heartbeat atomic.Int64 // MsgHeartbeatResp received
}

func (r *echoRaft) Process(_ context.Context, m *raftpb.Message) error {
	switch m.GetType() {
	case raftpb.MsgHeartbeat:
		r.tr.Load().Send([]*raftpb.Message{{Type: raftpb.MsgHeartbeatResp.Enum(), From: m.To, To: m.From, Term: m.Term}})
	case raftpb.MsgHeartbeatResp:
		r.heartbeat.Add(1)
	}
	return nil
}

func (r *echoRaft) IsIDRemoved(uint64) bool                    { return false }
func (r *echoRaft) ReportUnreachable(uint64)                   {}
func (r *echoRaft) ReportSnapshot(uint64, raft.SnapshotStatus) {}

// connCount counts the TCP connections a server accepted and holds.
type connCount struct{ accepted, open atomic.Int64 }

// countConns counts the host's connections in c.
func countConns(c *connCount) muxHostOption {
	return func(h *muxHost) {
		h.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
			switch s {
			case http.StateNew:
				c.accepted.Add(1)
				c.open.Add(1)
			case http.StateClosed, http.StateHijacked:
				c.open.Add(-1)
			}
		}
	}
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// memNow returns the live heap and the goroutine stacks after a GC.
func memNow() (heap, stack uint64) {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc, ms.StackInuse
}

// benchGroupsIdle measures groups groups; queues, if not 0, sizes each
// peer's queues.
func benchGroupsIdle(b *testing.B, pooled bool, groups, queues int) {
	baseG := runtime.NumGoroutine()
	baseHeap, baseStack := memNow()
	var conns connCount
	hosts := make([]*muxHost, 3)
	for i := range hosts {
		opts := []muxHostOption{countConns(&conns), withPool(func(hp *HostPool) { hp.Logger = nil })}
		if !pooled {
			opts = append(opts, unpooled())
		}
		hosts[i] = newMuxHost(b, opts...)
		hosts[i].mux.Logger = nil
	}
	rafts := make([][]*echoRaft, groups)
	trs := make([][]*Transport, groups)
	for g := range groups {
		for i, h := range hosts {
			r := &echoRaft{}
			tr := h.addGroup(b, groupCluster(g), uint64(i+1), r, func(tr *Transport) {
				tr.Logger = nil
				tr.StreamQueueSize, tr.RecvQueueSize, tr.PropQueueSize = queues, queues, queues
			})
			r.tr.Store(tr)
			rafts[g], trs[g] = append(rafts[g], r), append(trs[g], tr)
		}
		for i, tr := range trs[g] {
			for j, h := range hosts {
				if i != j {
					addPeer(b, tr, uint64(j+1), h.url)
				}
			}
		}
	}
	for g := range groups {
		for i, tr := range trs[g] {
			for j := range hosts {
				if i != j {
					waitPeerStreams(b, tr, uint64(j+1))
				}
			}
		}
	}
	pairs := float64(groups * 3 * 2)
	perPair := func(v float64) float64 { return v / pairs }

	// Transport idle: link heartbeats and probes only.
	acc0, cpu0, wall0 := conns.accepted.Load(), cpuTime(b), time.Now()
	idle(idleWindow)
	cpuIdle := float64(cpuTime(b)-cpu0) / float64(time.Since(wall0))
	newConns := float64(conns.accepted.Load()-acc0) / time.Since(wall0).Seconds()

	// An idle raft group: the leader (member 1) heartbeats each follower
	// every 100 ms, and each answers.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
			for g := range groups {
				trs[g][0].Send([]*raftpb.Message{
					{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(1)},
					{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(3), Term: proto.Uint64(1)},
				})
			}
		}
	}()
	cpu1, wall1 := cpuTime(b), time.Now()
	idle(idleWindow)
	cpuBeats := float64(cpuTime(b)-cpu1) / float64(time.Since(wall1))
	cancel()
	<-done
	var answered int64
	for g := range groups {
		answered += rafts[g][0].heartbeat.Load()
	}
	if want := int64(groups) * 2 * int64(idleWindow/(100*time.Millisecond)) * 8 / 10; answered < want {
		b.Errorf("%d heartbeats answered, want at least %d", answered, want)
	}

	gs := runtime.NumGoroutine() - baseG
	heap, stack := memNow()
	b.ReportMetric(perPair(float64(gs)), "goroutines/pair")
	b.ReportMetric(perPair(float64(heap-baseHeap)), "heapB/pair")
	b.ReportMetric(perPair(float64(stack-baseStack)), "stackB/pair")
	b.ReportMetric(perPair(float64(conns.open.Load())), "conns/pair")
	b.ReportMetric(newConns, "newconns/s")
	b.ReportMetric(perPair(cpuIdle*1e6), "idle-cpu-µs/s/pair")
	b.ReportMetric(perPair(cpuBeats*1e6), "heartbeat-cpu-µs/s/pair")
	b.Logf("%d groups, pool %v: %d goroutines, heap %d KiB, stacks %d KiB, %d connections open, %.1f new/s, CPU %.2f%% idle, %.2f%% with heartbeats",
		groups, pooled, gs, (heap-baseHeap)>>10, (stack-baseStack)>>10, conns.open.Load(), newConns, cpuIdle*100, cpuBeats*100)
	for range b.N {
		// Runs once, whatever b.N: what it measures is a state.
	}
}

// idle lets the measured window pass: nothing is awaited, the transports
// are left alone for d.
func idle(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	<-t.C
}
