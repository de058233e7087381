package rafthttp

import (
	"context"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

// TestSendBudgetSlowFollower is issue 15's scenario: a leader sends 1 MiB
// appends as fast as it can to a follower that reads 1 MiB/s. Without a
// budget in bytes, the 4,096-message queue would hold up to 4 GiB; with it,
// the leader's heap stays within the budget plus a small constant, the
// stream stays up, every drop is reported to raft, and the budget's
// accounting is back at zero once the follower is removed.
//
// The heap is the whole process's: both transports and the proxy. Beyond
// what is charged to the budget it holds the append being built (1 MiB),
// the stream writer's encoder buffer (up to a message, 1 MiB), the
// follower's frame and decoded append, the proxy's buffers (512 KiB a
// direction) and the transports' own growth: heapSlack allows 4 MiB over
// the budget for all of it. Measured: the peak is 8.5-9.6 MiB over the
// heap before the flood, with 7 MiB charged (seven appends: an eighth
// does not fit in 8 MiB), so 1.6 MiB over the budget at most.
func TestSendBudgetSlowFollower(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for seconds")
	}
	const (
		budget    = 8 << 20
		msgSize   = 1 << 20
		rate      = 1 << 20 // bytes per second the follower reads
		flood     = 3 * time.Second
		heapSlack = 4 << 20
	)
	fnet := newFaultNet(t, 15)
	quiet := func(tr *Transport) { tr.Logger = zaptest.NewLogger(t, zaptest.Level(zapcore.WarnLevel)) }
	leader := newNode(t, withID(1), withConfig(func(tr *Transport) { quiet(tr); tr.MaxPeerSendBytes = budget }))
	follower := newNode(t, withID(2), withConfig(quiet))
	// The follower's raft keeps nothing: its heap is the transport's.
	var processed atomic.Int64
	follower.raft.setProcess(func(context.Context, *raftpb.Message) error {
		processed.Add(1)
		return nil
	})
	// The follower dials the leader's streams through the proxy, so
	// what the leader writes to it crosses the proxy at rate.
	proxy, err := fnet.Proxy(leader.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	proxy.SetBandwidth(rate)
	if err := leader.tr.AddPeer(2, []string{follower.url}); err != nil {
		t.Fatal(err)
	}
	if err := follower.tr.AddPeer(1, []string{proxy.URL()}); err != nil {
		t.Fatal(err)
	}
	waitStreams(t, leader, follower)
	p, _ := leader.tr.get(2)
	st0, _ := leader.tr.PeerStatus(2)

	// The heap in use is sampled after a collection, every 100 ms, from
	// before the flood until after it, with the sender held between two
	// Sends: the appends it drops are garbage at once, and those it makes
	// while a collection marks survive that collection, which would count
	// megabytes of garbage as in use.
	var sending sync.Mutex
	heapInUse := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := heapInUse()
	var (
		peak    atomic.Uint64
		charged atomic.Int64 // the most charged to the follower at a sample
		stop    = make(chan struct{})
		wg      sync.WaitGroup
	)
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			sending.Lock()
			h := heapInUse()
			sending.Unlock()
			if h > peak.Load() {
				peak.Store(h)
			}
			if c := p.queued.inUse(); c > charged.Load() {
				charged.Store(c)
			}
		}
	})

	// Consecutive appends in one term, each with an entry of its own, as
	// a leader sends them: a queued append holds its megabyte.
	sent := 0
	start := time.Now()
	for time.Since(start) < flood {
		sending.Lock()
		leader.tr.Send([]*raftpb.Message{chargedMsg(raftpb.MsgApp, 1, 2, uint64(sent), msgSize)})
		sending.Unlock()
		sent++
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)

	st, _ := leader.tr.PeerStatus(2)
	budgetDrops := metricValue(t, gathered(t, leader.tr.metrics.droppedMessages), "", map[string]string{"Peer": "2", "Reason": dropBudgetExceeded})
	drops := st.Dropped - st0.Dropped
	t.Logf("%d appends of 1 MiB sent in %v; %d processed by the follower; %d dropped, %v for the budget; "+
		"most charged at a sample %.1f MiB; heap in use %.1f MiB before, peak %.1f MiB (+%.1f MiB)",
		sent, elapsed.Round(time.Millisecond), processed.Load(), drops, budgetDrops,
		float64(charged.Load())/(1<<20), float64(base)/(1<<20), float64(peak.Load())/(1<<20),
		(float64(peak.Load())-float64(base))/(1<<20))

	if limit := base + budget + heapSlack; peak.Load() > limit {
		t.Errorf("heap in use peaked at %d bytes, over %d (%d before, budget %d, slack %d)",
			peak.Load(), limit, base, budget, heapSlack)
	}
	if most := charged.Load(); most > budget {
		t.Errorf("%d bytes charged at a sample, over the budget %d", most, budget)
	}
	if budgetDrops == 0 {
		t.Error("no message was dropped for the budget")
	}
	if processed.Load() == 0 {
		t.Error("the follower processed nothing: the stream did not carry on")
	}
	if !st.Streams[0].Writer.Up || st.Streams[0].Writer.Since != st0.Streams[0].Writer.Since {
		t.Error("the msgappv2 stream to the slow follower broke during the flood")
	}

	leader.tr.RemovePeer(2)
	if got := p.queued.inUse(); got != 0 {
		t.Errorf("%d bytes still charged after RemovePeer, want 0", got)
	}
	if reported, counted := leader.raft.unreachableCount(2), p.metrics.c.dropped.Load(); uint64(reported) != counted {
		t.Errorf("raft told of %d drops, %d counted", reported, counted)
	}
}

// pacedResponse is a stream response that takes pace to accept each write,
// as the connection to a follower that reads slowly but steadily, and
// enforces the write deadline set on it, as a connection does. Its first
// write waits until gate is closed; onWrite, if set, is called at each
// write, once past the gate.
type pacedResponse struct {
	h         http.Header
	pace      time.Duration
	entered   chan struct{} // closed at the first write
	gate      chan struct{}
	enterOnce sync.Once
	onWrite   func()

	mu       sync.Mutex
	deadline time.Time
	writes   int
}

func (r *pacedResponse) Header() http.Header { return r.h }
func (r *pacedResponse) WriteHeader(int)     {}

func (r *pacedResponse) SetWriteDeadline(d time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deadline = d
	return nil
}

// expired reports whether the deadline has passed.
func (r *pacedResponse) expired() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.deadline.IsZero() && time.Now().After(r.deadline)
}

func (r *pacedResponse) Write(b []byte) (int, error) {
	r.enterOnce.Do(func() { close(r.entered) })
	<-r.gate
	if r.onWrite != nil {
		r.onWrite()
	}
	time.Sleep(r.pace) // the follower reading b: bandwidth, not a wait for an event
	if r.expired() {
		return 0, os.ErrDeadlineExceeded
	}
	r.mu.Lock()
	r.writes++
	r.mu.Unlock()
	return len(b), nil
}

func (r *pacedResponse) FlushError() error {
	if r.expired() {
		return os.ErrDeadlineExceeded
	}
	return nil
}

// TestStreamWriterDeadlinePerLargeMessage: a batch of large messages to a
// follower that reads steadily but takes longer than the write timeout for
// the whole batch is written, not failed: the timeout bounds the write of
// each large message, not the batch. (A budget in bytes makes such batches
// the common case behind a slow follower: up to MaxPeerSendBytes of them.)
func TestStreamWriterDeadlinePerLargeMessage(t *testing.T) {
	const (
		timeout = 400 * time.Millisecond
		pace    = 100 * time.Millisecond // per write of a message: a quarter of the timeout
		msgs    = 6                      // 600 ms in all: half as long again as the timeout
		size    = 300 << 10              // over encoderWriteThreshold: one write per message
	)
	tr, fr := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.ConnWriteTimeout = timeout })).parts()
	htAddPeer(t, tr)
	p, _ := tr.get(htPeerID)
	w := p.writers[streamTypeMsgAppV2]
	resp := &pacedResponse{h: http.Header{}, pace: pace, entered: make(chan struct{}), gate: make(chan struct{})}
	if !w.attach(newOutgoingConn(streamTypeMsgAppV2, resp)) {
		t.Fatal("attach refused")
	}
	waitFor(t, "the writer to attach", w.isWorking)
	send := func(i int) {
		tr.Send([]*raftpb.Message{chargedMsg(raftpb.MsgApp, htLocalID, htPeerID, uint64(i), size)})
	}
	send(0)
	<-resp.entered // writing the first: the others queue, to go in one batch
	for i := 1; i < msgs; i++ {
		send(i)
	}
	close(resp.gate)
	waitFor(t, "the batch to be written or lost", func() bool { return p.queued.inUse() == 0 })
	if n := fr.unreachableCount(htPeerID); n != 0 {
		t.Errorf("%d messages lost, want none", n)
	}
	resp.mu.Lock()
	writes := resp.writes
	resp.mu.Unlock()
	if writes != msgs {
		t.Errorf("%d writes, want %d", writes, msgs)
	}
	if !w.isWorking() {
		t.Error("the writer detached from a follower that reads steadily")
	}
}

// TestStreamWriterReleasesAsItWrites: a batch gives back each message's
// charge once the encoder has written it through, not at the end of the
// batch. A sender that keeps the queue full can make one batch last for
// maxBatch messages; released at its end, it held the whole batch charged,
// and BenchmarkSendMsgApp (512 appends of 64 KiB in flight, 32 MiB) hit
// the 64 MiB budget.
func TestStreamWriterReleasesAsItWrites(t *testing.T) {
	const (
		msgs = 5
		size = 300 << 10 // over encoderWriteThreshold: one write per message
	)
	tr, fr := newNode(t, htLocal()).parts()
	htAddPeer(t, tr)
	p, _ := tr.get(htPeerID)
	w := p.writers[streamTypeMsgAppV2]
	var (
		mu   sync.Mutex
		seen []int64 // charged at each write
	)
	resp := &pacedResponse{h: http.Header{}, entered: make(chan struct{}), gate: make(chan struct{}),
		onWrite: func() {
			mu.Lock()
			defer mu.Unlock()
			seen = append(seen, p.queued.inUse())
		}}
	if !w.attach(newOutgoingConn(streamTypeMsgAppV2, resp)) {
		t.Fatal("attach refused")
	}
	waitFor(t, "the writer to attach", w.isWorking)
	msg := func(i int) *raftpb.Message { return chargedMsg(raftpb.MsgApp, htLocalID, htPeerID, uint64(i), size) }
	tr.Send([]*raftpb.Message{msg(0)})
	<-resp.entered // writing the first: the others queue, to go in one batch
	for i := 1; i < msgs; i++ {
		tr.Send([]*raftpb.Message{msg(i)})
	}
	close(resp.gate)
	waitFor(t, "the batch to be written", func() bool { return p.queued.inUse() == 0 })
	if n := fr.unreachableCount(htPeerID); n != 0 {
		t.Fatalf("%d messages lost, want none", n)
	}
	mu.Lock()
	defer mu.Unlock()
	c := sendCharge(msg(0))
	want := make([]int64, msgs)
	for i := range want {
		want[i] = int64(msgs-i) * c // the messages not yet written
	}
	if !slices.Equal(seen, want) {
		t.Errorf("charged at each write: %v, want %v", seen, want)
	}
}
