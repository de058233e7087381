package main

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// heartbeatEvery is how often every member of the many-peers scenario
// sends a heartbeat to each of its peers: etcd's 100 ms tick with
// HeartbeatTick 1.
const heartbeatEvery = 100 * time.Millisecond

// peersResult is one run of the many-peers scenario (10).
type peersResult struct {
	links             int
	rtts              int
	p50, p99          time.Duration
	cpuPerLink        float64 // µs of CPU per second, per link
	goroutinesPerLink float64
	rssPerLink        float64 // bytes
	heapPerLink       float64 // bytes, live heap after a GC
}

// linkCount counts one ordered pair's heartbeats: sent from a to b, and
// the answers a got back.
type linkCount struct {
	sent, answered atomic.Int64
}

// rttLog collects one member's round trips; Process runs on several of its
// transport's goroutines at once.
type rttLog struct {
	mu   sync.Mutex
	rtts []time.Duration
}

// runManyPeers is scenario 10: n members of kind k in one process, every
// member a peer of every other (n(n-1) links), each sending every other a
// MsgHeartbeat every heartbeatEvery (one Send with them all, as a raft
// leader's Ready would, from a random phase), which the receiver's raft
// answers at once with MsgHeartbeatResp. The sender stamps the heartbeat's
// Commit with the time it was sent, and the answer carries it back. It
// measures, for d after warmup: the round trips' p50 and p99, the CPU of
// the process per link, and the goroutines, RSS and live heap the cluster
// added to the process, per link. Before any figure: every heartbeat sent
// was answered, all by the streams, none of which reconnected, and nothing
// was reported unreachable.
func runManyPeers(k kind, cfg *config, n int, warmup, d time.Duration) (peersResult, error) {
	runtime.GC()
	debug.FreeOSMemory()
	g0 := runtime.NumGoroutine()
	rss0, _ := procStatus("VmRSS")
	heap0 := liveHeap()

	epoch := time.Now()
	counts := make([]linkCount, (n+1)*(n+1)) // [from*(n+1)+to]
	logs := make([]rttLog, n+1)
	var measuring atomic.Bool
	h := func(id uint64) handler {
		return func(nd *node, m *raftpb.Message) error {
			from := m.GetFrom()
			if m.GetTo() != id || from == 0 || from > uint64(n) || from == id || m.GetTerm() != 1 {
				return fmt.Errorf("%s from %d to %d term %d", m.GetType(), from, m.GetTo(), m.GetTerm())
			}
			switch m.GetType() {
			case raftpb.MsgHeartbeat:
				nd.send([]*raftpb.Message{{
					Type: raftpb.MsgHeartbeatResp.Enum(), To: new(from), From: new(id),
					Term: new(uint64(1)), Commit: new(m.GetCommit()),
				}})
			case raftpb.MsgHeartbeatResp:
				rtt := time.Since(epoch) - time.Duration(m.GetCommit())
				counts[id*uint64(n+1)+from].answered.Add(1)
				if measuring.Load() {
					l := &logs[id]
					l.mu.Lock()
					l.rtts = append(l.rtts, rtt)
					l.mu.Unlock()
				}
			default:
				return fmt.Errorf("unexpected %s", m.GetType())
			}
			return nil
		}
	}
	c, err := newCluster(k, n, cfg.dir, h, nil)
	if err != nil {
		return peersResult{}, err
	}
	defer c.stop()

	stop := make(chan struct{})
	var senders sync.WaitGroup
	for _, nd := range c.nodes {
		peers := c.peersOf(nd)
		senders.Go(func() {
			t := time.NewTimer(rand.N(heartbeatEvery))
			defer t.Stop()
			for {
				select {
				case <-stop:
					return
				case <-t.C:
				}
				t.Reset(heartbeatEvery)
				msgs := make([]*raftpb.Message, len(peers))
				now := uint64(time.Since(epoch))
				for i, to := range peers {
					msgs[i] = &raftpb.Message{
						Type: raftpb.MsgHeartbeat.Enum(), To: new(to), From: new(nd.id),
						Term: new(uint64(1)), Commit: new(now),
					}
					counts[nd.id*uint64(n+1)+to].sent.Add(1)
				}
				nd.send(msgs)
			}
		})
	}
	stopSenders := func() {
		select {
		case <-stop:
		default:
			close(stop)
			senders.Wait()
		}
	}
	defer stopSenders()

	if err := pause(warmup, c.fail); err != nil {
		return peersResult{}, fmt.Errorf("warm-up: %w", err)
	}
	links0 := c.linkState()
	cpu0, start := cpuTime(), time.Now()
	measuring.Store(true)
	pauseErr := pause(d, c.fail)
	measuring.Store(false)
	elapsed, cpu := time.Since(start), cpuTime()-cpu0
	goroutines := runtime.NumGoroutine() - n // the senders are the benchmark's
	heap := liveHeap()
	if cfg.peersHeapProfile != "" {
		if err := writeHeapProfile(fmt.Sprintf("%s.%s", cfg.peersHeapProfile, k)); err != nil {
			return peersResult{}, err
		}
	}
	rss, _ := procStatus("VmRSS")
	stopSenders()
	if pauseErr != nil {
		return peersResult{}, pauseErr
	}
	// Every heartbeat must be answered.
	unanswered := func() (int64, string) {
		var missing int64
		where := ""
		for from := 1; from <= n; from++ {
			for to := 1; to <= n; to++ {
				lc := &counts[from*(n+1)+to]
				if d := lc.sent.Load() - lc.answered.Load(); d != 0 {
					missing += d
					if where == "" {
						where = fmt.Sprintf(" (first: %d→%d, %d of %d)", from, to, d, lc.sent.Load())
					}
				}
			}
		}
		return missing, where
	}
	if err := waitUntil(5*time.Second, func() bool { m, _ := unanswered(); return m == 0 }); err != nil {
		m, where := unanswered()
		return peersResult{}, fmt.Errorf("%d heartbeats unanswered%s: %w (%v)", m, where, err, c.fail.err())
	}
	if err := errors.Join(c.checkLinks(links0), c.fail.err()); err != nil {
		return peersResult{}, err
	}
	var rtts []time.Duration
	for i := range logs {
		l := &logs[i]
		l.mu.Lock()
		rtts = append(rtts, l.rtts...)
		l.mu.Unlock()
	}
	if len(rtts) == 0 {
		return peersResult{}, errors.New("no heartbeat round trip measured")
	}
	slices.Sort(rtts)
	links := c.links()
	return peersResult{
		links: links, rtts: len(rtts),
		p50: percentile(rtts, 50), p99: percentile(rtts, 99),
		cpuPerLink:        cpu.Seconds() / elapsed.Seconds() / float64(links) * 1e6,
		goroutinesPerLink: float64(goroutines-g0) / float64(links),
		rssPerLink:        float64(rss-rss0) / float64(links),
		heapPerLink:       float64(heap-heap0) / float64(links),
	}, nil
}

// writeHeapProfile writes the heap profile (in use after the last GC) to
// path.
func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	return errors.Join(pprof.Lookup("heap").WriteTo(f, 0), f.Close())
}

// liveHeap is the bytes of heap objects and goroutine stacks in use after
// a collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc + ms.StackInuse)
}
