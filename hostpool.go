package rafthttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"go.uber.org/zap"
)

// HostPool is what the Transports of several raft groups in one process
// share to reach the same member hosts, without a byte of difference on
// the wire: each group keeps its own streams, which etcd peers expect, and
// shares
//
//   - the pipeline's HTTP connections (POSTs, snapshots): one keep-alive
//     pool per host, whichever group posts;
//   - probing: one prober per host and kind (over a fresh connection, as
//     a stream dials, and over the pipeline's), where each group probes
//     each of its peers; every group's peers at that host read its round
//     trip time, health and clock difference (PeerStats, and each
//     Transport's round-trip histogram);
//   - the pacing of stream dials: while a host refuses connections, one
//     stream dial at a time is let through to it, at most one per backoff
//     wait (DialRetryMin doubling to DialRetryMax, jittered), whatever the
//     number of groups dialling; the first connection that succeeds lets
//     the others through at once.
//
// A host is a peer URL's scheme and host:port (or socket). Set the same
// HostPool on every Transport of the process, before Start; leave their
// TLSClientConfig, ClientRootCAs, Proxy and DialTimeout zero, since the
// pool's apply. Its zero value is ready to use, with the defaults below.
// Fields must not change once a Transport has started with it. The pool's
// owner calls Close once the Transports that use it have stopped; a
// Transport that stops leaves it, and what the others use, running.
//
// A Transport without a HostPool shares nothing, as before: one prober per
// peer and kind, its own pipeline connections and its own dial backoff per
// stream.
type HostPool struct {
	// TLSClientConfig is used to dial https and unixs peers, as
	// Transport.TLSClientConfig. Nil means the default configuration.
	TLSClientConfig *tls.Config
	// ClientRootCAs, if set, gives the roots that verify the servers
	// dialled, asked for each new connection, as Transport.ClientRootCAs.
	ClientRootCAs func() *x509.CertPool
	// Proxy selects a proxy for peer requests, as Transport.Proxy. Nil
	// means none.
	Proxy func(*http.Request) (*url.URL, error)
	// DialTimeout bounds connecting to a host. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// DialRetryMin and DialRetryMax bound the wait between stream dials to
	// a host that refused the last one. Zero means DefaultDialRetryMin and
	// DefaultDialRetryMax. Each Transport's own DialRetryMin and
	// DialRetryMax still pace each of its streams.
	DialRetryMin, DialRetryMax time.Duration
	// ProbeInterval is how often each host is probed. Zero means
	// DefaultConnReadTimeout - 1 s (4 s), etcd's interval.
	ProbeInterval time.Duration
	// Logger receives the probers' warnings (a host unhealthy, a clock
	// drift), once per host rather than once per group. Nil means no
	// logging.
	Logger *zap.Logger

	// netDial, if set before first use, dials in place of a net.Dialer
	// (tests).
	netDial dialFunc

	mu      sync.Mutex
	state   poolState
	initErr error // why the pool cannot be used, from its first use
	// Built at first use (init):
	dc       dialConfig // the pool's dial settings, stream dials gated
	tls      *tls.Config
	pipeline *http.Transport
	probeRT  *http.Transport // fresh connection per probe, as a stream dials
	unix     []*unixTransport
	lg       *zap.Logger
	interval time.Duration
	hosts    map[string]*poolHost // guarded by mu
}

// poolState is where a HostPool is in its life.
type poolState uint8

const (
	poolNew poolState = iota
	poolRunning
	poolClosed
)

// errPoolClosed refuses to start a Transport on a closed HostPool.
var errPoolClosed = errors.New("rafthttp: HostPool closed")

// checkHostPool returns what, in t's own fields, conflicts with its
// HostPool.
func (t *Transport) checkHostPool() []error {
	var errs []error
	if t.TLSClientConfig != nil || t.ClientRootCAs != nil || t.Proxy != nil || t.DialTimeout != 0 {
		errs = append(errs, errors.New("with HostPool set, TLSClientConfig, ClientRootCAs, Proxy and DialTimeout are the pool's: leave them zero"))
	}
	if t.PeerIdentity != nil {
		// A connection verified for one member must serve no other, and a
		// process's member IDs differ from group to group.
		errs = append(errs, errors.New("HostPool cannot be combined with PeerIdentity: each member needs connections of its own"))
	}
	return errs
}

// applyHostPool puts t's HostPool, if any, into service for t: it is
// initialised on first use, and its dial settings replace t's in c.
func (t *Transport) applyHostPool(c *config) error {
	hp := t.HostPool
	if hp == nil {
		return nil
	}
	if err := hp.use(); err != nil {
		return err
	}
	c.pool = hp
	c.tlsClient, c.clientRoots, c.dialTimeout = hp.tls, hp.dc.clientRoots, hp.dc.timeout
	return nil
}

// use initialises the pool on its first call and reports whether a
// Transport may start with it.
func (hp *HostPool) use() error {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	switch hp.state {
	case poolClosed:
		return errPoolClosed
	case poolRunning:
		return hp.initErr
	}
	hp.state = poolRunning
	hp.initErr = hp.init()
	return hp.initErr
}

// init validates the fields and builds the shared clients. hp.mu is held.
func (hp *HostPool) init() error {
	var errs []error
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DialTimeout", hp.DialTimeout}, {"DialRetryMin", hp.DialRetryMin}, {"DialRetryMax", hp.DialRetryMax},
		{"ProbeInterval", hp.ProbeInterval}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", d.name))
		}
	}
	lo, hi := orDefault(hp.DialRetryMin, DefaultDialRetryMin), orDefault(hp.DialRetryMax, DefaultDialRetryMax)
	if hi < lo {
		errs = append(errs, errors.New("DialRetryMax must not be below DialRetryMin"))
	}
	if hp.ClientRootCAs != nil {
		if hp.Proxy != nil {
			errs = append(errs, errors.New("ClientRootCAs cannot be combined with Proxy"))
		}
		if hp.TLSClientConfig != nil && hp.TLSClientConfig.InsecureSkipVerify {
			errs = append(errs, errors.New("ClientRootCAs needs verified certificates: TLSClientConfig.InsecureSkipVerify must be false"))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("rafthttp: invalid HostPool: %w", err)
	}
	hp.lg = hp.Logger
	if hp.lg == nil {
		hp.lg = zap.NewNop()
	}
	hp.interval = orDefault(hp.ProbeInterval, DefaultConnReadTimeout-time.Second)
	hp.dc = dialConfig{timeout: orDefault(hp.DialTimeout, DefaultDialTimeout), proxy: hp.Proxy,
		clientRoots: hp.ClientRootCAs, netDial: hp.netDial}
	hp.tls = hp.TLSClientConfig
	if hp.ClientRootCAs != nil {
		hp.tls = &tls.Config{}
		if hp.TLSClientConfig != nil {
			hp.tls = hp.TLSClientConfig.Clone()
		}
	}
	var u *unixTransport
	hp.pipeline, u = newRoundTripper(hp.dc, nil, 0, 0, rtPipeline, hp.tls)
	hp.unix = append(hp.unix, u)
	// The probe over a fresh connection measures what a stream dial
	// meets; probes are not paced by the gates, which they would only
	// delay.
	hp.probeRT, u = newRoundTripper(hp.dc, nil, DefaultConnReadTimeout, DefaultConnWriteTimeout, rtStream, hp.tls)
	hp.unix = append(hp.unix, u)
	hp.dc.gates = newDialGates(lo, hi)
	hp.hosts = map[string]*poolHost{}
	return nil
}

// Close stops the pool's probers, waits for them, and closes its idle
// connections. Call it once the Transports that use the pool have
// stopped: one still running then keeps its streams and its pipeline
// (which dials anew), but its peers are no longer probed. A Transport
// cannot start with a closed pool. Idempotent.
func (hp *HostPool) Close() {
	hp.mu.Lock()
	running := hp.state == poolRunning && hp.initErr == nil
	hp.state = poolClosed
	hosts := hp.hosts
	hp.hosts = nil
	hp.mu.Unlock()
	if !running {
		return
	}
	for _, h := range hosts {
		h.stop()
	}
	hp.pipeline.CloseIdleConnections()
	hp.probeRT.CloseIdleConnections()
	for _, u := range hp.unix {
		u.closeIdleConnections()
	}
}

// hostKey names the host of a peer URL: scheme and host:port, or socket.
func hostKey(u url.URL) string { return u.Scheme + "://" + u.Host }

// poolHost is a host some peers of the pool's Transports are at: its two
// probers, and the peers that read them.
type poolHost struct {
	key     string
	probers [2]*prober
	cancel  context.CancelFunc
	wg      sync.WaitGroup

	mu   sync.Mutex
	subs map[*peer]url.URL // the peers at the host, with their URL there
}

// acquire subscribes p, whose URL u is at the host, to the host, starting
// its probers if it is new. It returns nil once the pool is closed.
func (hp *HostPool) acquire(p *peer, u url.URL) *poolHost {
	hp.mu.Lock()
	defer hp.mu.Unlock()
	if hp.state != poolRunning {
		return nil
	}
	key := hostKey(u)
	h := hp.hosts[key]
	if h == nil {
		h = hp.newHost(key, u)
		hp.hosts[key] = h
	}
	h.mu.Lock()
	h.subs[p] = u
	h.mu.Unlock()
	return h
}

// release unsubscribes p from h, and stops h once no peer is left.
func (hp *HostPool) release(p *peer, h *poolHost) {
	hp.mu.Lock()
	h.mu.Lock()
	delete(h.subs, p)
	last := len(h.subs) == 0
	h.mu.Unlock()
	if last && hp.hosts[h.key] == h {
		delete(hp.hosts, h.key)
	} else {
		last = false // Close took it, and stops it
	}
	hp.mu.Unlock()
	if last {
		h.stop()
	}
}

// newHost builds the entry of a host and starts its probers, as
// goroutines of the entry, which stop waits for. hp.mu is held.
func (hp *HostPool) newHost(key string, u url.URL) *poolHost {
	h := &poolHost{key: key, subs: map[*peer]url.URL{}}
	var ctx context.Context
	ctx, h.cancel = context.WithCancel(context.Background())
	target := url.URL{Scheme: u.Scheme, Host: u.Host}
	lg := hp.lg.With(zap.String("remote-host", key))
	for i, k := range []struct {
		name string
		rt   http.RoundTripper
	}{{roundTripperNameRaftMessage, hp.probeRT}, {roundTripperNameSnapshot, hp.pipeline}} {
		pr := &prober{name: k.name, rt: k.rt, interval: hp.interval, lg: lg,
			target: func() url.URL { return target }, report: h.report}
		h.probers[i] = pr
		goLabelled(&h.wg, key, "host prober "+k.name, func() { pr.run(ctx) })
	}
	return h
}

// report hands a probe's outcome to every peer at the host, as a peer's
// own prober does: a failure moves its URL picker on, a success feeds its
// Transport's round-trip histogram. Under h.mu, so that a peer that left
// gets nothing more.
func (h *poolHost) report(_ url.URL, err error, srtt time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for p, u := range h.subs {
		if err != nil {
			p.picker.unreachable(u)
			continue
		}
		p.t.metrics.roundTripTime.WithLabelValues(p.idStr).Observe(srtt.Seconds())
	}
}

// stop ends the host's probers and waits for them.
func (h *poolHost) stop() {
	h.cancel()
	h.wg.Wait()
}

// joinHosts subscribes p to the hosts of urls, in place of those it was at,
// if its Transport has a HostPool. Once p is stopping it joins nothing.
func (p *peer) joinHosts(urls []url.URL) {
	p.mu.Lock()
	old := p.joinHostsLocked(urls)
	p.mu.Unlock()
	// Left after joining, so that a host the peer stays at keeps its
	// probers (and what they measured).
	for _, h := range old {
		p.t.cfg.pool.release(p, h)
	}
}

// joinHostsLocked is joinHosts with p.mu held; it returns the hosts p was
// at, for the caller to release once p.mu is released.
func (p *peer) joinHostsLocked(urls []url.URL) (old map[string]*poolHost) {
	hp := p.t.cfg.pool
	if hp == nil || p.stopping {
		return nil
	}
	old = p.hosts
	p.hosts = make(map[string]*poolHost, len(urls))
	for _, u := range urls {
		if _, ok := p.hosts[hostKey(u)]; ok {
			continue
		}
		if h := hp.acquire(p, u); h != nil {
			p.hosts[h.key] = h
		}
	}
	return old
}

// leaveHosts unsubscribes p from its hosts; p is stopping.
func (p *peer) leaveHosts() {
	hp := p.t.cfg.pool
	if hp == nil {
		return
	}
	p.mu.Lock()
	old := p.hosts
	p.hosts = nil
	p.mu.Unlock()
	for _, h := range old {
		hp.release(p, h)
	}
}

// currentProbers returns the probers whose view PeerStats reports: the
// peer's own, or, with a HostPool, those of the host of its current URL
// (none if the pool is closed).
func (p *peer) currentProbers() []*prober {
	if p.t.cfg.pool == nil {
		return p.probers[:]
	}
	key := hostKey(p.picker.pick())
	p.mu.Lock()
	defer p.mu.Unlock()
	if h := p.hosts[key]; h != nil {
		return h.probers[:]
	}
	return nil
}

// dialGates pace the dials of streams per host (HostPool): while a host
// refuses connections, one dial at a time goes through to it, and no
// sooner than a backoff wait after the last failure; the others wait for
// its outcome. A host is tracked only while it fails: the map holds no
// healthy host.
type dialGates struct {
	min, max time.Duration
	randN    func(n time.Duration) time.Duration

	mu    sync.Mutex
	hosts map[string]*dialGate // the failing hosts, by dialled address
}

// dialGate is one failing host.
type dialGate struct {
	bo      backoff
	next    time.Time     // no dial before
	probing bool          // a dial is in flight, let through since the host failed
	changed chan struct{} // closed, and replaced, when next or probing changes
}

func newDialGates(lo, hi time.Duration) *dialGates {
	return &dialGates{min: lo, max: hi, randN: rand.N[time.Duration], hosts: map[string]*dialGate{}}
}

// wrap returns dial with its dials passing the gates.
func (g *dialGates) wrap(dial dialFunc) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		key := network + "://" + addr
		probe, err := g.wait(ctx, key)
		if err != nil {
			return nil, err
		}
		c, err := dial(ctx, network, addr)
		g.done(ctx, key, probe, err)
		return c, err
	}
}

// wait returns when a dial to key may go: at once if the host is not
// failing; else once it is its turn (probe true). It fails only when ctx
// ends.
func (g *dialGates) wait(ctx context.Context, key string) (probe bool, err error) {
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		g.mu.Lock()
		h := g.hosts[key]
		if h == nil {
			g.mu.Unlock()
			return false, nil
		}
		wait := time.Until(h.next)
		if !h.probing && wait <= 0 {
			h.probing = true
			g.mu.Unlock()
			return true, nil
		}
		changed, probing := h.changed, h.probing
		g.mu.Unlock()
		var fire <-chan time.Time
		if !probing {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			fire = timer.C
		}
		select {
		case <-changed:
		case <-fire:
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// done records the outcome of a dial to key that wait let through: a
// success forgets the host (everyone dials); a failure starts (or, for
// the dial let through as a probe, extends) its backoff. A dial that
// started before the host was known to fail adds nothing: it is the same
// outage. A dial its own context ended says nothing of the host.
func (g *dialGates) done(ctx context.Context, key string, probe bool, err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	h := g.hosts[key]
	switch {
	case err == nil:
		if h != nil {
			delete(g.hosts, key)
			close(h.changed)
		}
	case ctx.Err() != nil:
		if probe && h != nil {
			h.probing = false
			h.signal()
		}
	case h == nil:
		h = &dialGate{bo: backoff{min: g.min, max: g.max, cur: g.min, randN: g.randN}, changed: make(chan struct{})}
		h.next = time.Now().Add(h.bo.next())
		g.hosts[key] = h
	case probe:
		h.probing = false
		h.next = time.Now().Add(h.bo.next())
		h.signal()
	}
}

// signal wakes the dials waiting at the gate. g.mu is held.
func (h *dialGate) signal() {
	close(h.changed)
	h.changed = make(chan struct{})
}
