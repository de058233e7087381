// Package faultnet is a fault-injecting TCP network for tests: partitions,
// one-way partitions, latency with jitter, bandwidth caps, black holes and
// connection resets between the members of a cluster, all in one process
// on 127.0.0.1. It depends on the standard library alone, and knows
// nothing of raft or HTTP: it forwards bytes.
//
// # Proxies
//
// A [Proxy] listens on a port of its own and forwards every connection it
// accepts to one target address. A test points a client at the proxy
// instead of the target (for rafthttp, a peer URL) and injects faults at
// run time:
//
//   - [Proxy.SetLatency] delays every chunk of bytes, with seeded jitter;
//   - [Proxy.SetBandwidth] caps the bytes per second of each direction;
//   - [Proxy.Partition] stops forwarding one direction or both: bytes in
//     flight are held, as TCP holds unacknowledged data, and the sender
//     feels back pressure once the buffers fill; they are delivered after a
//     heal, and the connections stay open;
//   - [Proxy.Blackhole] swallows every byte, both ways, and accepts new
//     connections without ever answering them: a stalled stream that stays
//     open;
//   - [Proxy.ResetConns] resets every live connection (RST, not FIN), and
//     [Proxy.ResetEvery] does so each time another n bytes have crossed in
//     one direction, as a link that drops its connections now and then;
//   - [Proxy.Heal] clears every fault.
//
// A connection that lost bytes to a black hole has a hole in its byte
// stream, which no real network produces (TCP either delivers in order or
// breaks the connection): when the black hole is lifted, such connections
// are reset rather than resumed.
//
// # Members
//
// A [Mesh] is a cluster's network: one Proxy per ordered pair of members,
// so that member a reaches member b at Mesh.URL(a, b) and faults on the way
// from a to b leave every other pair alone. Its faults are named by
// members rather than by connections: [Mesh.Partition] splits the members
// in two groups, [Mesh.PartitionOneWay] stops what one group sends to the
// other, [Mesh.Isolate] cuts one member off, and [Mesh.Links] gives the
// proxies of one member's pairs, to make that member's links slow.
// Package github.com/raftkit/rafthttp/rafthttptest builds a cluster of
// rafthttp transports on a Mesh.
//
// # Reproducibility
//
// Jitter comes from a random generator seeded from the [Network]'s seed
// and the Proxy's creation rank, so a test that creates its proxies in the
// same order draws the same delays for the same chunks (what reaches a
// proxy, and when, is up to the operating system's scheduler, so a run is
// not replayed exactly).
//
// # Resources
//
// Every goroutine a Proxy starts is owned by it: [Proxy.Close] stops them
// all and waits for them, and [Network.Close] closes every proxy of the
// network. All methods are safe for concurrent use, and report problems as
// errors: nothing in the package panics on what it is given.
package faultnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Direction names the directions of the bytes of a proxied connection: a
// set of ClientToServer and ServerToClient. The zero value is neither.
type Direction uint8

const (
	// ClientToServer is the direction of the bytes the dialer sends to the
	// target (requests, for HTTP).
	ClientToServer Direction = 1 << iota
	// ServerToClient is the direction of the bytes the target sends back
	// (responses, and the data of a stream the dialer reads).
	ServerToClient
	// BothWays is both directions.
	BothWays = ClientToServer | ServerToClient
)

// String returns "none", "client->server", "server->client" or "both
// ways".
func (d Direction) String() string {
	switch d {
	case 0:
		return "none"
	case ClientToServer:
		return "client->server"
	case ServerToClient:
		return "server->client"
	case BothWays:
		return "both ways"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// index is the slot of a single direction in per-direction arrays.
func (d Direction) index() int {
	if d == ServerToClient {
		return 1
	}
	return 0
}

// ErrClosed is returned by Network.Proxy, Network.Mesh and Mesh.Add after
// Network.Close.
var ErrClosed = errors.New("faultnet: network closed")

// Network creates proxies that share a seed, and closes them together. The
// zero value is a Network with seed 0. It is safe for concurrent use.
type Network struct {
	seed int64

	mu      sync.Mutex
	proxies []*Proxy
	closed  bool
}

// New returns a Network whose proxies draw their jitter from seed.
func New(seed int64) *Network { return &Network{seed: seed} }

// Proxy starts a proxy that listens on 127.0.0.1 on a free port and forwards
// each connection to target, a host:port address. No fault is set. The
// proxy lives until its Close or the Network's.
func (n *Network) Proxy(target string) (*Proxy, error) {
	if err := checkAddr(target); err != nil {
		return nil, err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, ErrClosed
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultnet: listen: %w", err)
	}
	rank := uint64(len(n.proxies))
	p := newProxy(ln, target, rand.New(rand.NewPCG(uint64(n.seed), rank)))
	n.proxies = append(n.proxies, p)
	return p, nil
}

// checkTarget returns the error Proxy would return for target, without
// making a proxy.
func (n *Network) checkTarget(target string) error {
	if err := checkAddr(target); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	return nil
}

// checkAddr checks that target is a host:port address with a port.
func checkAddr(target string) error {
	_, port, err := net.SplitHostPort(target)
	if err == nil && port == "" {
		err = errors.New("missing port")
	}
	if err != nil {
		return fmt.Errorf("faultnet: target %q: %w", target, err)
	}
	return nil
}

// Close closes every proxy of the network, waiting for their goroutines.
// Later calls to Proxy fail with ErrClosed. It is idempotent.
func (n *Network) Close() {
	n.mu.Lock()
	n.closed = true
	proxies := n.proxies
	n.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range proxies {
		wg.Go(p.Close)
	}
	wg.Wait()
}

// chunkSize is the most a proxy reads from a connection at once.
const chunkSize = 32 << 10

// queuedChunks is how many chunks a direction of a connection holds between
// its reader and its writer: what a held (partitioned) or delayed direction
// buffers before it stops reading and the sender feels back pressure.
const queuedChunks = 16

// freeChunks is how many chunk buffers a proxy keeps for reuse: those of a
// few links' full queues.
const freeChunks = 4 * queuedChunks

// maxDelay bounds the latency and the jitter a proxy takes, so that no sum
// of them overflows a time.Duration: a day is beyond any test's patience.
const maxDelay = 24 * time.Hour

// Proxy forwards the connections accepted on its address to its target,
// injecting the faults set on it. It starts with no fault. Proxies are made
// by Network.Proxy (and Network.Mesh); the zero value is not usable. Its
// methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener
	dialer net.Dialer

	ctx    context.Context // cancelled by Close: aborts dials to the target
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine of the proxy

	mu        sync.Mutex
	rng       *rand.Rand
	latency   time.Duration
	jitter    time.Duration
	bandwidth int64        // bytes per second per direction; 0 is unlimited
	pace      [2]time.Time // per direction: when the link is free again
	partition Direction
	blackhole bool
	// ResetEvery: every connection is reset when forwarded[resetDir]
	// reaches resetNext, which then moves on by resetEvery (0: off).
	resetDir   Direction
	resetEvery int64
	resetNext  int64
	resets     int
	changed    chan struct{} // closed and replaced when a fault changes
	links      map[*link]struct{}
	closed     bool
	accepted   int

	forwarded [2]atomic.Int64
	swallowed atomic.Int64
	free      chan []byte // chunk buffers done with, for any link to reuse

	closeOnce sync.Once
}

func newProxy(ln net.Listener, target string, rng *rand.Rand) *Proxy {
	p := &Proxy{target: target, ln: ln, rng: rng, changed: make(chan struct{}), links: map[*link]struct{}{},
		dialer: net.Dialer{Timeout: 5 * time.Second}, free: make(chan []byte, freeChunks)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Go(p.acceptLoop)
	return p
}

// Addr returns the proxy's listening address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// URL returns "http://" + Addr(). The proxy forwards bytes, so TLS passes
// through it too: for a target that serves TLS, use "https://" + Addr().
func (p *Proxy) URL() string { return "http://" + p.Addr() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// SetLatency delays every chunk of bytes, in both directions, by d plus a
// uniformly drawn jitter in [-jitter, +jitter] (never below zero), so a
// round trip takes twice that. Order is preserved: a chunk is never
// delivered before the one read before it. Chunks already read keep the
// delay they were given. Negative values mean zero; values above a day
// mean a day. SetLatency(0, 0) removes the latency.
func (p *Proxy) SetLatency(d, jitter time.Duration) {
	p.update(func() {
		p.latency, p.jitter = min(max(d, 0), maxDelay), min(max(jitter, 0), maxDelay)
	})
}

// SetBandwidth caps each direction at bytesPerSec, shared by all the
// proxy's connections as a link's capacity is. Zero or less removes the cap.
// Bytes cross the capped link in slices of a twentieth of a second's worth
// (at least 512 bytes), so a cap is smooth at the scale of a tenth of a
// second.
func (p *Proxy) SetBandwidth(bytesPerSec int64) {
	p.update(func() {
		p.bandwidth = max(bytesPerSec, 0)
		p.pace = [2]time.Time{}
	})
}

// Partition stops forwarding in the given directions, ClientToServer,
// ServerToClient or BothWays, and lets the others flow: it replaces the
// proxy's partition, and Partition(0) lifts it. Bytes
// of a stopped direction are held, not dropped, and flow again once the
// direction is healed; until then, once the proxy's buffers for the
// connection fill, the sender's writes block. New connections are still
// accepted and dialled through, so that a one-way partition lets the other
// direction work.
func (p *Proxy) Partition(dir Direction) {
	p.update(func() { p.partition = dir & BothWays })
}

// Blackhole, when on, swallows every byte in both directions, of live and
// new connections, which stay open: a new connection is accepted and never
// answered. Turning it off resets the connections that lost bytes.
func (p *Proxy) Blackhole(on bool) {
	p.update(func() { p.blackhole = on })
	if !on {
		p.resetTainted()
	}
}

// Heal clears every fault and resets the connections that lost bytes to a
// black hole. Held bytes flow again.
func (p *Proxy) Heal() {
	p.update(func() {
		p.latency, p.jitter, p.bandwidth, p.pace = 0, 0, 0, [2]time.Time{}
		p.partition, p.blackhole = 0, false
		p.resetEvery = 0
	})
	p.resetTainted()
}

// ResetEvery resets every live connection each time the proxy has
// forwarded another n bytes in dir (ClientToServer or ServerToClient),
// counted from this call: the bytes up to the mark are delivered, none
// after it. n <= 0 turns it off.
func (p *Proxy) ResetEvery(dir Direction, n int64) {
	p.update(func() {
		p.resetDir, p.resetEvery = dir&BothWays, max(n, 0)
		if dir != ClientToServer && dir != ServerToClient {
			p.resetEvery = 0
		}
		p.resetNext = p.forwarded[p.resetDir.index()].Load() + p.resetEvery
	})
}

// resetQuota bounds n, the bytes about to be delivered in dir, to those
// before the next ResetEvery mark.
func (p *Proxy) resetQuota(dir Direction, n int) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.resetEvery == 0 || dir != p.resetDir {
		return n
	}
	return int(min(int64(n), max(p.resetNext-p.forwarded[dir.index()].Load(), 0)))
}

// delivered counts n bytes delivered in dir, and reports whether they
// reached the ResetEvery mark, moving it on if so.
func (p *Proxy) delivered(dir Direction, n int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	total := p.forwarded[dir.index()].Add(int64(n))
	if p.resetEvery == 0 || dir != p.resetDir || total < p.resetNext {
		return false
	}
	p.resetNext += p.resetEvery
	p.resets++
	return true
}

// ResetConns resets every live connection: both of its TCP connections
// (the client's and the one to the target) are closed with SO_LINGER 0, so
// that each end gets a RST, as when a middlebox drops the connection's
// state. Faults stay as they are, and new connections are accepted.
func (p *Proxy) ResetConns() {
	for _, l := range p.liveLinks() {
		l.close(true)
	}
}

// Close stops accepting, resets every connection and waits until every
// goroutine of the proxy has ended. Afterwards its address refuses
// connections, as a member that is down does. It is idempotent.
func (p *Proxy) Close() {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.cancel()
		p.ln.Close()
		p.ResetConns()
		p.wg.Wait()
	})
}

// Stats is what a proxy has done since it started.
type Stats struct {
	// Accepted counts the connections accepted, those a black hole
	// accepted included.
	Accepted int
	// Live is the number of connections open now.
	Live int
	// Forwarded is ToServer + ToClient.
	Forwarded int64
	// ToServer counts the bytes delivered from clients to the target.
	ToServer int64
	// ToClient counts the bytes delivered from the target to clients.
	ToClient int64
	// Swallowed counts the bytes lost to a black hole, both ways. Bytes
	// held by a partition are not lost: they are counted when delivered.
	Swallowed int64
	// Resets counts the times ResetEvery reset the connections.
	Resets int
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	p.mu.Lock()
	s := Stats{Accepted: p.accepted, Live: len(p.links), Resets: p.resets}
	p.mu.Unlock()
	s.ToServer = p.forwarded[ClientToServer.index()].Load()
	s.ToClient = p.forwarded[ServerToClient.index()].Load()
	s.Forwarded = s.ToServer + s.ToClient
	s.Swallowed = p.swallowed.Load()
	return s
}

// update changes faults under the lock and wakes every waiting writer.
func (p *Proxy) update(fn func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fn()
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *Proxy) liveLinks() []*link {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*link, 0, len(p.links))
	for l := range p.links {
		out = append(out, l)
	}
	return out
}

// resetTainted resets the connections that lost bytes, unless a black hole
// is (again) in force.
func (p *Proxy) resetTainted() {
	p.mu.Lock()
	if p.blackhole {
		p.mu.Unlock()
		return
	}
	var tainted []*link
	for l := range p.links {
		if l.tainted.Load() {
			tainted = append(tainted, l)
		}
	}
	p.mu.Unlock()
	for _, l := range tainted {
		l.close(true)
	}
}

// delayLocked draws the delay of a chunk read now. p.mu must be held.
func (p *Proxy) delayLocked() time.Duration {
	d := p.latency
	if p.jitter > 0 {
		d += time.Duration(p.rng.Int64N(int64(2*p.jitter)+1)) - p.jitter
	}
	return max(d, 0)
}

// readFaults is what a reader needs when it has read a chunk: whether to
// swallow it, and otherwise when it may be delivered.
func (p *Proxy) readFaults() (swallow bool, deliverAt time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blackhole {
		return true, time.Time{}
	}
	return false, time.Now().Add(p.delayLocked())
}

// writeFaults is what a writer needs before it delivers bytes in dir:
// whether to swallow them, whether the direction is held, and the channel
// closed at the next change of faults.
func (p *Proxy) writeFaults(dir Direction) (swallow, held bool, changed <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.blackhole, p.partition&dir != 0, p.changed
}

// reserve books the link in dir for up to n bytes and returns how many
// bytes may go, and when they will have crossed it (zero: at once). Slices
// are small enough that a cap is smooth (a twentieth of a second's worth).
func (p *Proxy) reserve(dir Direction, n int) (int, time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.bandwidth == 0 {
		return n, time.Time{}
	}
	slice := min(int64(n), max(p.bandwidth/20, 512))
	now := time.Now()
	start := p.pace[dir.index()]
	if start.Before(now) {
		start = now
	}
	end := start.Add(time.Duration(float64(slice) / float64(p.bandwidth) * float64(time.Second)))
	p.pace[dir.index()] = end
	return int(slice), end
}

func (p *Proxy) acceptLoop() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// A persistent error (out of descriptors): do not spin.
			select {
			case <-time.After(10 * time.Millisecond):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		// The accept loop is itself counted in wg, so Add cannot race
		// with Close's Wait.
		p.wg.Go(func() { p.serve(c.(*net.TCPConn)) })
	}
}

// link is one proxied connection: the client's, and the one dialled to the
// target (nil while accepted under a black hole).
type link struct {
	p       *Proxy
	client  *net.TCPConn
	server  *net.TCPConn // guarded by p.mu
	done    chan struct{}
	once    sync.Once
	tainted atomic.Bool  // bytes were swallowed
	ended   atomic.Int32 // directions that ended cleanly (FIN passed on)
}

// serve proxies one accepted connection.
func (p *Proxy) serve(c *net.TCPConn) {
	l := &link{p: p, client: c, done: make(chan struct{})}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		reset(c)
		return
	}
	p.links[l] = struct{}{}
	p.accepted++
	swallow := p.blackhole
	p.mu.Unlock()

	if swallow {
		// Never answered, never forwarded: swallow what the client
		// sends, and keep the connection until it is reset.
		l.tainted.Store(true)
		buf := make([]byte, chunkSize)
		for {
			n, err := c.Read(buf)
			p.swallowed.Add(int64(n))
			if err != nil {
				return
			}
		}
	}

	s, err := p.dialer.DialContext(p.ctx, "tcp", p.target)
	if err != nil {
		// Nothing listens there: the client sees its connection reset,
		// the closest a proxy can come to a refused connection.
		l.close(true)
		return
	}
	p.mu.Lock()
	select {
	case <-l.done: // reset while dialling
		p.mu.Unlock()
		reset(s.(*net.TCPConn))
		return
	default:
	}
	l.server = s.(*net.TCPConn)
	p.mu.Unlock()
	l.pipe(ClientToServer, l.client, l.server)
	l.pipe(ServerToClient, l.server, l.client)
}

// chunk is a piece of one direction's byte stream, or its end.
type chunk struct {
	data []byte
	at   time.Time // when it may be delivered
	end  bool      // the source ended here
	err  error     // how it ended: io.EOF for a FIN, else a reset
}

// pipe forwards src to dst with two goroutines: a reader that reads chunks
// and stamps them with their delivery time, and a writer that delivers
// them, honouring partitions and the bandwidth cap. The reader keeps
// reading while the writer waits, up to queuedChunks.
func (l *link) pipe(dir Direction, src, dst *net.TCPConn) {
	q := make(chan chunk, queuedChunks)
	l.p.wg.Go(func() { l.read(src, q, l.p.free) })
	l.p.wg.Go(func() { l.write(dir, dst, q, l.p.free) })
}

func (l *link) read(src *net.TCPConn, q chan<- chunk, free chan []byte) {
	var buf []byte
	for {
		if buf == nil {
			select {
			case buf = <-free: // a buffer the writer is done with
			default:
				buf = make([]byte, chunkSize)
			}
		}
		n, err := src.Read(buf)
		if n > 0 {
			swallow, at := l.p.readFaults()
			if swallow {
				l.tainted.Store(true)
				l.p.swallowed.Add(int64(n))
			} else {
				// A full read hands its buffer over, to come back
				// through the proxy's free list; a small one is
				// copied, so that the queue holds what a connection
				// has in flight rather than chunkSize per read. Either
				// way a fast link makes no garbage, nor do links that
				// come and go, which would swell the heap of the
				// process under test.
				c := chunk{at: at}
				if n >= chunkSize/4 {
					c.data, buf = buf[:n], nil
				} else {
					c.data = append([]byte(nil), buf[:n]...)
				}
				select {
				case q <- c:
				case <-l.done:
					return
				}
			}
		}
		if err != nil {
			if swallow, _ := l.p.readFaults(); swallow {
				l.tainted.Store(true) // the end is swallowed too
				return
			}
			select {
			case q <- chunk{end: true, err: err}:
			case <-l.done:
			}
			return
		}
	}
}

func (l *link) write(dir Direction, dst *net.TCPConn, q <-chan chunk, free chan<- []byte) {
	recycle := func(b []byte) {
		if cap(b) == chunkSize {
			select {
			case free <- b[:chunkSize]:
			default:
			}
		}
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	wait := func(until time.Time) bool {
		d := time.Until(until)
		if d <= 0 {
			return true
		}
		timer.Reset(d)
		select {
		case <-timer.C:
			return true
		case <-l.done:
			return false
		}
	}
	for {
		var c chunk
		select {
		case c = <-q:
		case <-l.done:
			return
		}
		if !wait(c.at) {
			return
		}
		data := c.data
		for {
			// Faults are checked per slice, so that a partition or black
			// hole set mid-chunk takes effect at once.
			swallow, held, changed := l.p.writeFaults(dir)
			if swallow {
				l.tainted.Store(true)
				l.p.swallowed.Add(int64(len(data)))
				c.end = false // an end is swallowed too
				break
			}
			if held {
				select {
				case <-changed:
				case <-l.done:
					return
				}
				continue
			}
			if len(data) == 0 {
				break
			}
			n, until := l.p.reserve(dir, len(data))
			if !wait(until) {
				return
			}
			n = l.p.resetQuota(dir, n)
			if n > 0 {
				if _, err := dst.Write(data[:n]); err != nil {
					l.close(true)
					return
				}
			}
			if l.p.delivered(dir, n) {
				l.p.ResetConns()
				return
			}
			data = data[n:]
		}
		recycle(c.data)
		if !c.end {
			continue
		}
		if !errors.Is(c.err, io.EOF) {
			l.close(true) // pass a reset on
			return
		}
		if err := dst.CloseWrite(); err != nil {
			l.close(true)
			return
		}
		if l.ended.Add(1) == 2 {
			l.close(false)
		}
		return
	}
}

// close ends the link: both connections are closed (reset: with a RST) and
// its goroutines return. Idempotent.
func (l *link) close(rst bool) {
	l.once.Do(func() {
		p := l.p
		p.mu.Lock()
		close(l.done)
		delete(p.links, l)
		s := l.server
		p.mu.Unlock()
		for _, c := range []*net.TCPConn{l.client, s} {
			if c == nil {
				continue
			}
			if rst {
				reset(c)
			} else {
				c.Close()
			}
		}
	})
}

// reset closes c with a RST.
func reset(c *net.TCPConn) {
	_ = c.SetLinger(0)
	c.Close()
}
