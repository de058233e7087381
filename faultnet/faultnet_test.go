package faultnet

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// target is a TCP server whose accepted connections the test takes and
// drives itself.
type target struct {
	ln    net.Listener
	conns chan net.Conn
	wg    sync.WaitGroup

	mu       sync.Mutex
	all      []net.Conn
	accepted int
}

func newTarget(t *testing.T) *target {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tg := &target{ln: ln, conns: make(chan net.Conn, 64)}
	tg.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tg.mu.Lock()
			tg.all = append(tg.all, c)
			tg.accepted++
			tg.mu.Unlock()
			tg.conns <- c
		}
	})
	t.Cleanup(tg.close)
	return tg
}

func (tg *target) close() {
	tg.ln.Close()
	tg.wg.Wait()
	tg.mu.Lock()
	defer tg.mu.Unlock()
	for _, c := range tg.all {
		c.Close()
	}
}

func (tg *target) addr() string { return tg.ln.Addr().String() }

func (tg *target) acceptedCount() int {
	tg.mu.Lock()
	defer tg.mu.Unlock()
	return tg.accepted
}

// accept returns the next connection the proxy dialled to the target.
func (tg *target) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-tg.conns:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("timed out waiting for the proxy to dial the target")
		return nil
	}
}

func startProxy(t *testing.T, n *Network, target string) *Proxy {
	t.Helper()
	p, err := n.Proxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// connect dials the proxy and returns both ends: the client's and the
// target's.
func connect(t *testing.T, p *Proxy, tg *target) (client, server net.Conn) {
	t.Helper()
	client = dial(t, p.Addr())
	return client, tg.accept(t)
}

// readN reads n bytes from c within timeout.
func readN(c net.Conn, n int, timeout time.Duration) ([]byte, error) {
	if err := c.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, n)
	k, err := io.ReadFull(c, buf)
	return buf[:k], err
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

// expect reads len(want) bytes and checks them.
func expect(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	got, err := readN(c, len(want), 5*time.Second)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read: got %q, %v; want %q", got, err, want)
	}
}

// expectSilence checks that nothing arrives on c for d and that the
// connection is still open: the read times out, it neither ends nor fails.
func expectSilence(t *testing.T, c net.Conn, d time.Duration) {
	t.Helper()
	got, err := readN(c, 1, d)
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: got %q, %v; want nothing until the deadline", got, err)
	}
}

// expectReset checks that c was reset: a read fails with ECONNRESET.
func expectReset(t *testing.T, c net.Conn) {
	t.Helper()
	got, err := readN(c, 1, 5*time.Second)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("read: got %q, %v; want a connection reset", got, err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, 0))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestProxyForwards checks the healthy path: a megabyte each way at once
// arrives intact, the counters see it, and a FIN passes both ways, after
// which the link is gone.
func TestProxyForwards(t *testing.T) {
	n := New(1)
	tg := newTarget(t)
	p := startProxy(t, n, tg.addr())
	client, server := connect(t, p, tg)

	const size = 1 << 20
	up, down := randomBytes(1, size), randomBytes(2, size)
	var wg sync.WaitGroup
	var upGot, downGot []byte
	var upErr, downErr error
	wg.Go(func() { upGot, upErr = readN(server, size, 10*time.Second) })
	wg.Go(func() { downGot, downErr = readN(client, size, 10*time.Second) })
	wg.Go(func() { client.Write(up) })
	wg.Go(func() { server.Write(down) })
	wg.Wait()
	if upErr != nil || !bytes.Equal(upGot, up) {
		t.Errorf("client to server: got %d bytes (%v), equal %v; want the %d bytes sent", len(upGot), upErr, bytes.Equal(upGot, up), size)
	}
	if downErr != nil || !bytes.Equal(downGot, down) {
		t.Errorf("server to client: got %d bytes (%v), equal %v; want the %d bytes sent", len(downGot), downErr, bytes.Equal(downGot, down), size)
	}
	if s := p.Stats(); s.ToServer != size || s.ToClient != size || s.Accepted != 1 || s.Live != 1 || s.Swallowed != 0 {
		t.Errorf("got %+v, want %d bytes each way over 1 live connection, nothing swallowed", s, size)
	}

	client.(*net.TCPConn).CloseWrite()
	if b, err := readN(server, 1, 5*time.Second); err != io.EOF {
		t.Errorf("server read after the client's FIN: got %q, %v; want EOF", b, err)
	}
	server.(*net.TCPConn).CloseWrite()
	if b, err := readN(client, 1, 5*time.Second); err != io.EOF {
		t.Errorf("client read after the server's FIN: got %q, %v; want EOF", b, err)
	}
	waitFor(t, "the link to end", func() bool { return p.Stats().Live == 0 })
}

// rtt measures one round trip of one byte through the proxy.
func rtt(t *testing.T, client, server net.Conn) time.Duration {
	t.Helper()
	start := time.Now()
	write(t, client, []byte{1})
	expect(t, server, []byte{1})
	write(t, server, []byte{2})
	expect(t, client, []byte{2})
	return time.Since(start)
}

// TestProxyLatency checks that the latency is added to each direction, with
// the jitter within its bounds, and that Heal removes it.
func TestProxyLatency(t *testing.T) {
	for _, tc := range []struct {
		name            string
		latency, jitter time.Duration
	}{
		{"fixed", 80 * time.Millisecond, 0},
		{"jitter", 80 * time.Millisecond, 30 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := New(7)
			tg := newTarget(t)
			p := startProxy(t, n, tg.addr())
			client, server := connect(t, p, tg)
			base := rtt(t, client, server)

			p.SetLatency(tc.latency, tc.jitter)
			lo, hi := 2*(tc.latency-tc.jitter), 2*(tc.latency+tc.jitter)
			// Slack for scheduling on a loaded machine under -race.
			const slack = 150 * time.Millisecond
			var total time.Duration
			const rounds = 6
			for range rounds {
				d := rtt(t, client, server)
				total += d
				if d < lo || d > hi+slack {
					t.Errorf("round trip took %v, want between %v and %v", d, lo, hi+slack)
				}
			}
			p.Heal()
			healed := rtt(t, client, server)
			t.Logf("round trip: %v without latency, %v on average with %v±%v each way, %v after Heal",
				base, total/rounds, tc.latency, tc.jitter, healed)
			if healed >= lo {
				t.Errorf("round trip after Heal took %v, want below %v", healed, lo)
			}
		})
	}
}

// TestProxyJitterSeeded checks that jitter is drawn within bounds from the
// seed: the same seed and creation order give the same delays, another seed
// others.
func TestProxyJitterSeeded(t *testing.T) {
	tg := newTarget(t)
	draws := func(seed int64) []time.Duration {
		n := New(seed)
		startProxy(t, n, tg.addr()) // a first proxy, so the second has rank 1
		p := startProxy(t, n, tg.addr())
		p.SetLatency(50*time.Millisecond, 20*time.Millisecond)
		out := make([]time.Duration, 100)
		for i := range out {
			p.mu.Lock()
			out[i] = p.delayLocked()
			p.mu.Unlock()
		}
		return out
	}
	a, b, c := draws(42), draws(42), draws(43)
	distinct := map[time.Duration]bool{}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("draw %d: got %v and %v with the same seed, want equal", i, a[i], b[i])
		}
		if a[i] < 30*time.Millisecond || a[i] > 70*time.Millisecond {
			t.Errorf("draw %d: got %v, want within 50ms±20ms", i, a[i])
		}
		distinct[a[i]] = true
	}
	if len(distinct) < 50 {
		t.Errorf("got %d distinct delays in 100 draws, want jitter to vary them", len(distinct))
	}
	same := 0
	for i := range a {
		if a[i] == c[i] {
			same++
		}
	}
	if same > 10 {
		t.Errorf("seeds 42 and 43 drew %d equal delays of 100, want different sequences", same)
	}
}

// TestProxyBandwidth checks the cap: each direction, loaded at once, runs at
// the cap within 20%, so the cap is per direction and not shared by them.
func TestProxyBandwidth(t *testing.T) {
	const (
		bw   = 256 << 10
		size = 320 << 10 // 1.25 s at the cap
	)
	n := New(1)
	tg := newTarget(t)
	p := startProxy(t, n, tg.addr())
	p.SetBandwidth(bw)
	client, server := connect(t, p, tg)

	var wg sync.WaitGroup
	var upTook, downTook time.Duration
	var upErr, downErr error
	start := time.Now()
	wg.Go(func() {
		_, upErr = readN(server, size, 10*time.Second)
		upTook = time.Since(start)
	})
	wg.Go(func() {
		_, downErr = readN(client, size, 10*time.Second)
		downTook = time.Since(start)
	})
	wg.Go(func() { client.Write(make([]byte, size)) })
	wg.Go(func() { server.Write(make([]byte, size)) })
	wg.Wait()
	if upErr != nil || downErr != nil {
		t.Fatalf("reads: %v, %v", upErr, downErr)
	}
	for _, d := range []struct {
		name string
		took time.Duration
	}{{"client to server", upTook}, {"server to client", downTook}} {
		rate := float64(size) / d.took.Seconds()
		t.Logf("%s: %d bytes in %v: %.0f bytes/s, cap %d", d.name, size, d.took, rate, bw)
		if rate < 0.8*bw || rate > 1.2*bw {
			t.Errorf("%s: got %.0f bytes/s, want %d ±20%%", d.name, rate, bw)
		}
	}
}

// TestProxyBlackhole checks that a black hole swallows both directions of a
// live connection, which stays open, and accepts new connections without
// answering or forwarding them; lifting it resets both, and new connections
// work again.
func TestProxyBlackhole(t *testing.T) {
	for _, lift := range []struct {
		name string
		fn   func(*Proxy)
	}{
		{"Blackhole(false)", func(p *Proxy) { p.Blackhole(false) }},
		{"Heal", (*Proxy).Heal},
	} {
		t.Run(lift.name, func(t *testing.T) {
			n := New(1)
			tg := newTarget(t)
			p := startProxy(t, n, tg.addr())
			client, server := connect(t, p, tg)
			write(t, client, []byte("ping"))
			expect(t, server, []byte("ping"))

			p.Blackhole(true)
			write(t, client, []byte("lost"))
			write(t, server, []byte("lost too"))
			expectSilence(t, server, 300*time.Millisecond)
			expectSilence(t, client, 100*time.Millisecond)

			late := dial(t, p.Addr())
			write(t, late, []byte("hello?"))
			expectSilence(t, late, 200*time.Millisecond)
			if got := tg.acceptedCount(); got != 1 {
				t.Errorf("target accepted %d connections, want 1: a black hole must not forward new ones", got)
			}
			waitFor(t, "every byte to be swallowed", func() bool { return p.Stats().Swallowed == int64(len("lost")+len("lost too")+len("hello?")) })
			if s := p.Stats(); s.Live != 2 || s.ToServer != 4 || s.ToClient != 0 {
				t.Errorf("got %+v, want 2 live connections and only the 4 bytes before the black hole forwarded", s)
			}

			lift.fn(p)
			expectReset(t, client)
			expectReset(t, late)
			expectReset(t, server)
			c2, s2 := connect(t, p, tg)
			write(t, c2, []byte("again"))
			expect(t, s2, []byte("again"))
		})
	}
}

// TestProxyPartition checks each partition: a cut direction delivers
// nothing, holding the bytes, while the other flows; after Heal the held
// bytes arrive, in order. The connection stays open throughout.
func TestProxyPartition(t *testing.T) {
	for _, dir := range []Direction{ClientToServer, ServerToClient, BothWays} {
		t.Run(dir.String(), func(t *testing.T) {
			n := New(1)
			tg := newTarget(t)
			p := startProxy(t, n, tg.addr())
			client, server := connect(t, p, tg)
			p.Partition(dir)

			write(t, client, []byte("up-1"))
			write(t, server, []byte("down-1"))
			if dir&ClientToServer != 0 {
				expectSilence(t, server, 300*time.Millisecond)
			} else {
				expect(t, server, []byte("up-1"))
			}
			if dir&ServerToClient != 0 {
				expectSilence(t, client, 300*time.Millisecond)
			} else {
				expect(t, client, []byte("down-1"))
			}
			write(t, client, []byte("up-2"))
			write(t, server, []byte("down-2"))

			p.Heal()
			if dir&ClientToServer != 0 {
				expect(t, server, []byte("up-1up-2"))
			} else {
				expect(t, server, []byte("up-2"))
			}
			if dir&ServerToClient != 0 {
				expect(t, client, []byte("down-1down-2"))
			} else {
				expect(t, client, []byte("down-2"))
			}
			if s := p.Stats(); s.Swallowed != 0 || s.Live != 1 {
				t.Errorf("got %+v, want nothing swallowed and the connection still live", s)
			}
		})
	}
}

// TestProxyPartitionBackPressure checks that a partition holds a bounded
// amount: the sender's writes block once the buffers fill, as TCP's do when
// nothing is acknowledged.
func TestProxyPartitionBackPressure(t *testing.T) {
	n := New(1)
	tg := newTarget(t)
	p := startProxy(t, n, tg.addr())
	client, _ := connect(t, p, tg)
	p.Partition(ClientToServer)
	client.SetWriteDeadline(time.Now().Add(500 * time.Millisecond))
	const size = 256 << 20
	k, err := client.Write(make([]byte, size))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("write of %d bytes into a partition: got %d written, %v; want it to block until the deadline", size, k, err)
	}
	t.Logf("a partitioned direction took %d bytes (proxy buffers and the kernel's) before the writer blocked", k)
}

// TestProxyResetConns checks that every live connection is reset at both ends
// and that the proxy keeps serving.
func TestProxyResetConns(t *testing.T) {
	n := New(1)
	tg := newTarget(t)
	p := startProxy(t, n, tg.addr())
	var clients, servers []net.Conn
	for range 3 {
		c, s := connect(t, p, tg)
		write(t, c, []byte("x"))
		expect(t, s, []byte("x"))
		clients, servers = append(clients, c), append(servers, s)
	}
	if got := p.Stats().Live; got != 3 {
		t.Fatalf("got %d live connections, want 3", got)
	}
	p.ResetConns()
	for i := range clients {
		expectReset(t, clients[i])
		expectReset(t, servers[i])
	}
	if got := p.Stats().Live; got != 0 {
		t.Errorf("got %d live connections after ResetConns, want 0", got)
	}
	c, s := connect(t, p, tg)
	write(t, c, []byte("after"))
	expect(t, s, []byte("after"))
}

// TestFaultnetResetEvery checks that ResetEvery delivers exactly the bytes
// up to each mark, then resets every connection, new ones included, once
// per mark; bytes the other way do not count; off (or healed), nothing is
// reset.
func TestFaultnetResetEvery(t *testing.T) {
	for _, tc := range []struct {
		name string
		off  func(*Proxy)
	}{
		{"ResetEvery(0)", func(p *Proxy) { p.ResetEvery(ClientToServer, 0) }},
		{"Heal", (*Proxy).Heal},
	} {
		t.Run(tc.name, func(t *testing.T) { testResetEvery(t, tc.off) })
	}
}

// testResetEvery is TestFaultnetResetEvery with off turning ResetEvery off.
func testResetEvery(t *testing.T, off func(*Proxy)) {
	const every = 100 << 10
	n := New(1)
	tg := newTarget(t)
	p := startProxy(t, n, tg.addr())
	p.ResetEvery(ClientToServer, every)

	// Bytes to the client do not count.
	c, s := connect(t, p, tg)
	down := randomBytes(3, 2*every)
	write(t, s, down)
	expect(t, c, down)

	for i := range 2 {
		data := randomBytes(uint64(10+i), 3*every/2)
		go c.Write(data) // fails once the connection is reset
		got, err := readN(s, len(data), 5*time.Second)
		if !errors.Is(err, syscall.ECONNRESET) || !bytes.Equal(got, data[:every]) {
			t.Fatalf("connection %d: the target read %d bytes (%v), the first %d equal: %v; want exactly %d, then a reset",
				i, len(got), err, every, bytes.Equal(got[:min(len(got), every)], data[:min(len(got), every)]), every)
		}
		expectReset(t, c)
		c, s = connect(t, p, tg)
	}
	if st := p.Stats(); st.Resets != 2 || st.ToServer != 2*every {
		t.Errorf("got %+v, want 2 resets after %d bytes to the server", st, 2*every)
	}

	off(p)
	data := randomBytes(20, 2*every)
	write(t, c, data)
	expect(t, s, data)
	if st := p.Stats(); st.Resets != 2 || st.Live != 1 {
		t.Errorf("got %+v with ResetEvery off, want no more resets and the connection live", st)
	}
}

// TestProxyDeadTarget checks that a connection to a proxy whose target does
// not listen is reset at once.
func TestProxyDeadTarget(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	p := startProxy(t, New(1), dead)
	c, err := net.Dial("tcp", p.Addr())
	if errors.Is(err, syscall.ECONNRESET) {
		return // reset before connect returned
	}
	if err != nil {
		t.Fatalf("dial: got %v, want a connection or a reset", err)
	}
	defer c.Close()
	expectReset(t, c)
}

// TestProxyCloseLeavesNoGoroutine closes a network whose proxies have
// connections in every state (held by a partition, in a black hole, delayed
// and rate-limited mid-transfer, blocked on a full queue) and checks that no
// goroutine is left and that the addresses no longer accept.
func TestProxyCloseLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	tg := newTarget(t)
	n := New(1)
	held, err := n.Proxy(tg.addr())
	if err != nil {
		t.Fatal(err)
	}
	hole, err := n.Proxy(tg.addr())
	if err != nil {
		t.Fatal(err)
	}
	slow, err := n.Proxy(tg.addr())
	if err != nil {
		t.Fatal(err)
	}

	c1, _ := connect(t, held, tg)
	held.Partition(BothWays)
	c1.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
	c1.Write(make([]byte, 64<<20)) // fills the queue: the reader blocks

	c2, _ := connect(t, hole, tg)
	hole.Blackhole(true)
	write(t, c2, []byte("gone"))
	dial(t, hole.Addr()) // accepted under the black hole

	c3, _ := connect(t, slow, tg)
	slow.SetLatency(time.Second, 0)
	slow.SetBandwidth(1 << 10)
	write(t, c3, make([]byte, 4<<10))
	waitFor(t, "the black hole to swallow", func() bool { return hole.Stats().Swallowed == 4 })

	n.Close()
	for _, p := range []*Proxy{held, hole, slow} {
		if s := p.Stats(); s.Live != 0 {
			t.Errorf("proxy %s: got %d live connections after Close, want 0", p.Addr(), s.Live)
		}
		if c, err := net.Dial("tcp", p.Addr()); err == nil {
			c.Close()
			t.Errorf("proxy %s still accepts after Close", p.Addr())
		}
	}
	if _, err := n.Proxy(tg.addr()); !errors.Is(err, ErrClosed) {
		t.Errorf("Proxy after Close: got %v, want ErrClosed", err)
	}
	for _, c := range []net.Conn{c1, c2, c3} {
		c.Close()
	}
	tg.close()
}

// TestNetworkProxyErrors checks what Network.Proxy refuses, with an error:
// a target that is not host:port, and any target after Close.
func TestNetworkProxyErrors(t *testing.T) {
	closed := New(1)
	closed.Close()
	for _, tc := range []struct {
		name   string
		n      *Network
		target string
		want   error // nil: any error
	}{
		{name: "empty target", n: New(1), target: ""},
		{name: "no port", n: New(1), target: "127.0.0.1"},
		{name: "a URL", n: New(1), target: "http://127.0.0.1:80"},
		{name: "closed network", n: closed, target: "127.0.0.1:80", want: ErrClosed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.n.Close()
			p, err := tc.n.Proxy(tc.target)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				if p != nil {
					p.Close()
				}
				t.Fatalf("Proxy(%q): got %v, want an error (%v)", tc.target, err, tc.want)
			}
		})
	}
}

// TestNetworkZeroValue checks that a zero Network makes working proxies.
func TestNetworkZeroValue(t *testing.T) {
	var n Network
	defer n.Close()
	tg := newTarget(t)
	p := startProxy(t, &n, tg.addr())
	client, server := connect(t, p, tg)
	write(t, client, []byte("zero"))
	expect(t, server, []byte("zero"))
}

// TestProxySetLatencyBounds checks that SetLatency takes any value without
// panicking: negative values mean zero, huge ones a day, and every draw is
// within the bounds.
func TestProxySetLatencyBounds(t *testing.T) {
	const forever = time.Duration(1<<63 - 1)
	tg := newTarget(t)
	p := startProxy(t, New(1), tg.addr())
	for _, tc := range []struct {
		name               string
		latency, jitter    time.Duration
		wantLatency, wantJ time.Duration
		wantLow, wantHigh  time.Duration
	}{
		{name: "negative", latency: -time.Second, jitter: -time.Second, wantLow: 0, wantHigh: 0},
		{name: "jitter above latency", latency: time.Millisecond, jitter: time.Second, wantJ: time.Second,
			wantLatency: time.Millisecond, wantLow: 0, wantHigh: time.Second + time.Millisecond},
		{name: "huge", latency: forever, jitter: forever, wantLatency: maxDelay, wantJ: maxDelay,
			wantLow: 0, wantHigh: 2 * maxDelay},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p.SetLatency(tc.latency, tc.jitter)
			p.mu.Lock()
			defer p.mu.Unlock()
			if p.latency != tc.wantLatency || p.jitter != tc.wantJ {
				t.Errorf("got latency %v jitter %v, want %v and %v", p.latency, p.jitter, tc.wantLatency, tc.wantJ)
			}
			for range 100 {
				if d := p.delayLocked(); d < tc.wantLow || d > tc.wantHigh {
					t.Fatalf("drew %v, want within [%v, %v]", d, tc.wantLow, tc.wantHigh)
				}
			}
		})
	}
}

// partitionOf returns what p holds.
func partitionOf(p *Proxy) Direction {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.partition
}

// newMesh returns a mesh of members 1..n whose targets are addresses
// nothing needs to listen on: the tests using it dial no proxy.
func newMesh(t *testing.T, n *Network, members int) *Mesh {
	t.Helper()
	targets := map[uint64]string{}
	for id := range uint64(members) {
		targets[id+1] = fmt.Sprintf("127.0.0.1:%d", 9000+id+1)
	}
	m, err := n.Mesh(targets)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(n.Close)
	return m
}

// TestMeshPartitions checks which directions of which proxies each
// partition of a three-member mesh holds: member a's bytes to b go client
// to server on proxy (a, b) and server to client on proxy (b, a).
func TestMeshPartitions(t *testing.T) {
	const (
		c2s  = ClientToServer
		s2c  = ServerToClient
		both = BothWays
	)
	type want map[pair]Direction // proxies not listed hold nothing
	for _, tc := range []struct {
		name string
		do   func(*Mesh) error
		want want
	}{
		{name: "nothing", do: func(*Mesh) error { return nil }, want: want{}},
		{
			name: "one way, 1 to 2",
			do:   func(m *Mesh) error { return m.PartitionOneWay([]uint64{1}, []uint64{2}) },
			want: want{{1, 2}: c2s, {2, 1}: s2c},
		},
		{
			name: "one way, 2 to 1",
			do:   func(m *Mesh) error { return m.PartitionOneWay([]uint64{2}, []uint64{1}) },
			want: want{{2, 1}: c2s, {1, 2}: s2c},
		},
		{
			name: "one way each, adding up",
			do: func(m *Mesh) error {
				return errors.Join(m.PartitionOneWay([]uint64{1}, []uint64{2}), m.PartitionOneWay([]uint64{2}, []uint64{1}))
			},
			want: want{{1, 2}: both, {2, 1}: both},
		},
		{
			name: "what 1 receives",
			do:   func(m *Mesh) error { return m.PartitionOneWay([]uint64{2, 3}, []uint64{1}) },
			want: want{{2, 1}: c2s, {1, 2}: s2c, {3, 1}: c2s, {1, 3}: s2c},
		},
		{
			name: "a member in both groups is not cut from itself",
			do:   func(m *Mesh) error { return m.PartitionOneWay([]uint64{1, 2}, []uint64{1, 2}) },
			want: want{{1, 2}: both, {2, 1}: both},
		},
		{
			name: "groups {1} and {2, 3}",
			do:   func(m *Mesh) error { return m.Partition([]uint64{1}, []uint64{2, 3}) },
			want: want{{1, 2}: both, {2, 1}: both, {1, 3}: both, {3, 1}: both},
		},
		{
			name: "isolate 3",
			do:   func(m *Mesh) error { return m.Isolate(3) },
			want: want{{1, 3}: both, {3, 1}: both, {2, 3}: both, {3, 2}: both},
		},
		{
			name: "isolate, then heal",
			do: func(m *Mesh) error {
				err := m.Isolate(3)
				m.Heal()
				return err
			},
			want: want{},
		},
		{
			name: "heal, then partition again",
			do: func(m *Mesh) error {
				err := m.Isolate(3)
				m.Heal()
				return errors.Join(err, m.PartitionOneWay([]uint64{3}, []uint64{1}))
			},
			want: want{{3, 1}: c2s, {1, 3}: s2c},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t, New(1), 3)
			if err := tc.do(m); err != nil {
				t.Fatal(err)
			}
			for _, from := range m.Members() {
				for _, to := range m.Members() {
					if from == to {
						continue
					}
					if got := partitionOf(m.Proxy(from, to)); got != tc.want[pair{from, to}] {
						t.Errorf("proxy (%d, %d): got %v held, want %v", from, to, got, tc.want[pair{from, to}])
					}
				}
			}
		})
	}
}

// TestMeshLayout checks the proxies of a mesh: one per ordered pair, each
// forwarding to the address of the member it reaches, created in a fixed
// order (so the same seed draws the same jitter), and the accessors.
func TestMeshLayout(t *testing.T) {
	n := New(42)
	m := newMesh(t, n, 3)
	if got, want := m.Members(), []uint64{1, 2, 3}; !slices.Equal(got, want) {
		t.Errorf("Members: got %v, want %v", got, want)
	}
	for _, from := range m.Members() {
		for _, to := range m.Members() {
			p := m.Proxy(from, to)
			if from == to {
				if p != nil || m.URL(from, to) != "" {
					t.Errorf("got a proxy from %d to itself", from)
				}
				continue
			}
			if want := fmt.Sprintf("127.0.0.1:%d", 9000+to); p.Target() != want {
				t.Errorf("proxy (%d, %d): target %s, want %s", from, to, p.Target(), want)
			}
			if m.URL(from, to) != "http://"+p.Addr() {
				t.Errorf("URL(%d, %d): got %s, want http://%s", from, to, m.URL(from, to), p.Addr())
			}
		}
	}
	for _, tc := range []struct {
		name     string
		from, to uint64
	}{
		{name: "unknown from", from: 4, to: 1},
		{name: "unknown to", from: 1, to: 4},
		{name: "zero", from: 0, to: 0},
	} {
		if m.Proxy(tc.from, tc.to) != nil || m.URL(tc.from, tc.to) != "" {
			t.Errorf("%s: got a proxy from %d to %d", tc.name, tc.from, tc.to)
		}
	}

	links, err := m.Links(2)
	if err != nil {
		t.Fatal(err)
	}
	wantLinks := []*Proxy{m.Proxy(2, 1), m.Proxy(1, 2), m.Proxy(2, 3), m.Proxy(3, 2)}
	if !slices.Equal(links, wantLinks) {
		t.Errorf("Links(2): got %v, want the proxies (2, 1), (1, 2), (2, 3), (3, 2): %v", links, wantLinks)
	}

	// The creation order, hence each proxy's seed, depends on the targets
	// alone: a second mesh of the same members on the same seed draws the
	// same delays on the same pair.
	m2 := newMesh(t, New(42), 3)
	for _, pm := range []*Mesh{m, m2} {
		pm.Proxy(2, 3).SetLatency(50*time.Millisecond, 20*time.Millisecond)
	}
	p1, p2 := m.Proxy(2, 3), m2.Proxy(2, 3)
	for i := range 20 {
		p1.mu.Lock()
		d1 := p1.delayLocked()
		p1.mu.Unlock()
		p2.mu.Lock()
		d2 := p2.delayLocked()
		p2.mu.Unlock()
		if d1 != d2 {
			t.Fatalf("draw %d: got %v and %v from two meshes on seed 42, want equal", i, d1, d2)
		}
	}
}

// liveProxies counts the proxies of n that are not closed.
func liveProxies(n *Network) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	live := 0
	for _, p := range n.proxies {
		p.mu.Lock()
		if !p.closed {
			live++
		}
		p.mu.Unlock()
	}
	return live
}

// TestMeshErrors checks that the Mesh refuses bad input with an error,
// leaving itself and its network as they were.
func TestMeshErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		do   func(*Network, *Mesh) error
		want error // nil: any error
	}{
		{name: "Add member 0", do: func(_ *Network, m *Mesh) error { return m.Add(0, "127.0.0.1:1") }},
		{name: "Add a member twice", do: func(_ *Network, m *Mesh) error { return m.Add(2, "127.0.0.1:1") }},
		{name: "Add a bad target", do: func(_ *Network, m *Mesh) error { return m.Add(4, "nowhere") }},
		{name: "Add after Close", want: ErrClosed, do: func(n *Network, m *Mesh) error {
			n.Close()
			return m.Add(4, "127.0.0.1:1")
		}},
		{name: "Mesh with a bad target", do: func(n *Network, _ *Mesh) error {
			_, err := n.Mesh(map[uint64]string{5: "127.0.0.1:1", 6: "127.0.0.1:2", 7: ":"})
			return err
		}},
		{name: "Mesh of one bad target", do: func(n *Network, _ *Mesh) error {
			_, err := n.Mesh(map[uint64]string{5: "bad"})
			return err
		}},
		{name: "Mesh after Close", want: ErrClosed, do: func(n *Network, _ *Mesh) error {
			n.Close()
			_, err := n.Mesh(map[uint64]string{5: "127.0.0.1:1"})
			return err
		}},
		{name: "PartitionOneWay from an unknown member", want: ErrUnknownMember, do: func(_ *Network, m *Mesh) error {
			return m.PartitionOneWay([]uint64{4}, []uint64{1})
		}},
		{name: "PartitionOneWay to an unknown member", want: ErrUnknownMember, do: func(_ *Network, m *Mesh) error {
			return m.PartitionOneWay([]uint64{1}, []uint64{2, 4})
		}},
		{name: "Partition with an unknown member", want: ErrUnknownMember, do: func(_ *Network, m *Mesh) error {
			return m.Partition([]uint64{1, 0}, []uint64{2})
		}},
		{name: "Isolate an unknown member", want: ErrUnknownMember, do: func(_ *Network, m *Mesh) error {
			return m.Isolate(4)
		}},
		{name: "Links of an unknown member", want: ErrUnknownMember, do: func(_ *Network, m *Mesh) error {
			_, err := m.Links(4)
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := New(1)
			m := newMesh(t, n, 3)
			live := liveProxies(n)
			err := tc.do(n, m)
			if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("got %v, want an error (%v)", err, tc.want)
			}
			if got, want := m.Members(), []uint64{1, 2, 3}; !slices.Equal(got, want) {
				t.Errorf("members after the error: got %v, want %v", got, want)
			}
			if got := liveProxies(n); got != live && !errors.Is(err, ErrClosed) {
				t.Errorf("got %d live proxies after the error, want the %d before", got, live)
			}
			for _, from := range m.Members() {
				for _, to := range m.Members() {
					if p := m.Proxy(from, to); p != nil && partitionOf(p) != 0 {
						t.Errorf("proxy (%d, %d) holds %v after the error, want nothing", from, to, partitionOf(p))
					}
				}
			}
		})
	}
}

// TestMeshPartitionOneWayBytes checks PartitionOneWay on live connections
// dialled both ways: member 1's bytes to member 2 are held, on the
// connection 1 dialled (its requests) and on the one 2 dialled (its
// answers), while 2's bytes reach 1 on both; after Heal the held bytes
// arrive.
func TestMeshPartitionOneWayBytes(t *testing.T) {
	n := New(1)
	t.Cleanup(n.Close)
	tg1, tg2 := newTarget(t), newTarget(t)
	m, err := n.Mesh(map[uint64]string{1: tg1.addr(), 2: tg2.addr()})
	if err != nil {
		t.Fatal(err)
	}
	// c12 is 1's end of the connection 1 dialled to 2, s12 2's end.
	c12, s12 := connect(t, m.Proxy(1, 2), tg2)
	c21, s21 := connect(t, m.Proxy(2, 1), tg1)
	if err := m.PartitionOneWay([]uint64{1}, []uint64{2}); err != nil {
		t.Fatal(err)
	}
	write(t, c12, []byte("1 asks"))
	write(t, s21, []byte("1 answers"))
	write(t, s12, []byte("2 answers"))
	write(t, c21, []byte("2 asks"))
	expect(t, c12, []byte("2 answers"))
	expect(t, s21, []byte("2 asks"))
	expectSilence(t, s12, 200*time.Millisecond)
	expectSilence(t, c21, 100*time.Millisecond)

	m.Heal()
	expect(t, s12, []byte("1 asks"))
	expect(t, c21, []byte("1 answers"))
}
