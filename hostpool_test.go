package rafthttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3/raftpb"
)

// requestLog records, for the requests a host serves, the remote address
// of each pipeline POST and the time of each probe.
type requestLog struct {
	mu     sync.Mutex
	posts  []string // RemoteAddr of each POST /raft
	probes []time.Time
}

func (l *requestLog) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		switch {
		case r.Method == http.MethodPost && r.URL.Path == RaftPrefix:
			l.posts = append(l.posts, r.RemoteAddr)
		case r.URL.Path == ProbingPrefix:
			l.probes = append(l.probes, time.Now())
		}
		l.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

// postConns returns the distinct connections the POSTs came on.
func (l *requestLog) postConns() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := slices.Clone(l.posts)
	slices.Sort(c)
	return slices.Compact(c)
}

// probesSince returns the times of the probes after mark.
func (l *requestLog) probesSince(mark time.Time) []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []time.Time
	for _, p := range l.probes {
		if p.After(mark) {
			out = append(out, p)
		}
	}
	return out
}

// hostPair is host x, serving one group per cluster as member 1, and
// host y, whose member 2 of each group has x as a peer (x has no peers:
// y's streams to it stay down, its pipeline and probes reach it).
type hostPair struct {
	x, y   *muxHost
	ys     map[uint64]*Transport
	xr, yr map[uint64]*fakeRaft
	log    *requestLog // what x serves
}

// twoHosts builds a hostPair of clusters, y built with yOpts.
func twoHosts(t *testing.T, clusters []uint64, yOpts ...muxHostOption) *hostPair {
	t.Helper()
	hp := &hostPair{log: &requestLog{}, ys: map[uint64]*Transport{}, xr: map[uint64]*fakeRaft{}, yr: map[uint64]*fakeRaft{}}
	hp.x = newMuxHost(t, wrapMux(hp.log.wrap))
	hp.y = newMuxHost(t, yOpts...)
	for _, c := range clusters {
		hp.xr[c], hp.yr[c] = newFakeRaft(), newFakeRaft()
		hp.x.addGroup(t, c, 1, hp.xr[c])
		hp.ys[c] = hp.y.addGroup(t, c, 2, hp.yr[c])
		addPeer(t, hp.ys[c], 1, hp.x.url)
	}
	return hp
}

// postSnap sends a MsgSnap, which the pipeline posts, from y's member of
// cluster c to x's, and waits until y's pipeline has its answer: its
// connection is then back in the idle pool.
func (hp *hostPair) postSnap(t *testing.T, c, index uint64) {
	t.Helper()
	n := len(hp.yr[c].snapshotReports())
	hp.ys[c].Send([]*raftpb.Message{newMsg(raftpb.MsgSnap, 2, 1, index)})
	if m := hp.xr[c].recv(t); m.GetType() != raftpb.MsgSnap {
		t.Fatalf("group %x got %v, want the MsgSnap", c, m.GetType())
	}
	waitFor(t, "the MsgSnap to be reported sent", func() bool { return len(hp.yr[c].snapshotReports()) > n })
}

// TestHostPoolSharesPipelineConnections posts from two groups in turn to
// the same host: with a HostPool both use one keep-alive connection, where
// Transports of their own each open theirs.
func TestHostPoolSharesPipelineConnections(t *testing.T) {
	for _, tc := range []struct {
		name      string
		opts      []muxHostOption
		wantConns func(int) bool
		want      string
	}{
		// No probe on the pool's pipeline client during the test: a
		// probe in flight would take a second connection.
		{"pooled", []muxHostOption{withPool(func(hp *HostPool) { hp.ProbeInterval = time.Hour })},
			func(n int) bool { return n == 1 }, "1"},
		{"unpooled", []muxHostOption{unpooled()}, func(n int) bool { return n >= 2 }, "at least 2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clusters := []uint64{0xa, 0xb}
			hp := twoHosts(t, clusters, tc.opts...)
			for i := range 5 {
				for _, c := range clusters {
					hp.postSnap(t, c, uint64(i+1))
				}
			}
			if conns := hp.log.postConns(); !tc.wantConns(len(conns)) {
				t.Errorf("10 POSTs of 2 groups came on %d connections %v, want %s", len(conns), conns, tc.want)
			}
		})
	}
}

// TestHostPoolProbesOncePerHost runs ten groups whose peers share a host:
// with a HostPool the host is probed by two probers (one per kind) at the
// pool's interval, not by two per group, and every group's peer reads
// their view.
func TestHostPoolProbesOncePerHost(t *testing.T) {
	const interval = 50 * time.Millisecond
	clusters := make([]uint64, 10)
	for i := range clusters {
		clusters[i] = uint64(0x100 + i)
	}
	hp := twoHosts(t, clusters, withPool(func(hp *HostPool) { hp.ProbeInterval = interval }))
	ys, log := hp.ys, hp.log
	if n := proberGoroutines(); n != 2 {
		t.Errorf("%d prober goroutines run, want 2: one per kind for the one host", n)
	}
	mark := time.Now()
	const probes = 20
	waitFor(t, "probes", func() bool { return len(log.probesSince(mark)) >= probes })
	got := log.probesSince(mark)[:probes]
	// Two probers at one probe each per interval: 20 probes take at
	// least 9 intervals. Twenty probers would make them in one.
	if took := got[probes-1].Sub(mark); took < 8*interval {
		t.Errorf("%d probes of the host came within %v, want no sooner than %v: more than two probers probe it", probes, took, 8*interval)
	}
	for _, c := range clusters {
		waitFor(t, "the host's probes to reach every group's peer", func() bool {
			s, _ := ys[c].PeerStatus(1)
			return s.ProbeHealthy && s.RTT > 0
		})
	}
}

// TestHostPoolProbeMetricsPerGroup registers two groups' collectors on one
// registry, each under a group label (what Mux's documentation advises):
// both register, and the host's probes feed each group's round-trip
// histogram under its label.
func TestHostPoolProbeMetricsPerGroup(t *testing.T) {
	reg := prometheus.NewRegistry()
	names := map[uint64]string{0xa: "meta", 0xb: "data"}
	x := newMuxHost(t)
	y := newMuxHost(t, withPool(func(hp *HostPool) { hp.ProbeInterval = 20 * time.Millisecond }))
	for c, name := range names {
		x.addGroup(t, c, 1, nil)
		tr := y.addGroup(t, c, 2, nil, func(tr *Transport) {
			tr.Registerer = prometheus.WrapRegistererWith(prometheus.Labels{"group": name}, reg)
		})
		addPeer(t, tr, 1, x.url)
	}
	for _, name := range names {
		waitFor(t, "round trips observed under group "+name, func() bool {
			return metricValue(t, reg, "etcd_network_peer_round_trip_time_seconds", map[string]string{"group": name, "To": "1"}) > 0
		})
	}
}

// TestHostPoolStopOneGroup stops one of two groups sharing a pool: the
// other keeps the host's probers and its pipeline connection; once it
// stops too, the host's probers end.
func TestHostPoolStopOneGroup(t *testing.T) {
	hp := twoHosts(t, []uint64{0xa, 0xb}, withPool(func(hp *HostPool) { hp.ProbeInterval = time.Hour }))
	ys, log := hp.ys, hp.log
	post := func(c, i uint64) {
		t.Helper()
		hp.postSnap(t, c, i)
	}
	post(0xa, 1)
	post(0xb, 2)
	before := log.postConns()
	if n := proberGoroutines(); n != 2 {
		t.Fatalf("%d prober goroutines run, want 2", n)
	}
	ys[0xa].Stop()
	if n := proberGoroutines(); n != 2 {
		t.Errorf("%d prober goroutines run after one group stopped, want the host's 2", n)
	}
	post(0xb, 3)
	if after := log.postConns(); !slices.Equal(after, before) || len(after) != 1 {
		t.Errorf("POSTs came on %v, then on %v: want one connection, kept when the other group stopped", before, after)
	}
	ys[0xb].Stop()
	if n := proberGoroutines(); n != 0 {
		t.Errorf("%d prober goroutines run once no group uses the host, want 0", n)
	}
}

// TestHostPoolUpdatePeer moves a peer to another host: the pool probes the
// new host, and no longer the old one once no peer is there.
func TestHostPoolUpdatePeer(t *testing.T) {
	x1, x2 := newMuxHost(t), newMuxHost(t)
	y := newMuxHost(t, withPool(func(hp *HostPool) { hp.ProbeInterval = 20 * time.Millisecond }))
	const cluster = 0xc
	x1.addGroup(t, cluster, 1, nil)
	x2.addGroup(t, cluster+1, 1, nil) // served there under another cluster until the move
	tr := y.addGroup(t, cluster, 2, nil)
	addPeer(t, tr, 1, x1.url)
	hosts := func() []string {
		y.pool.mu.Lock()
		defer y.pool.mu.Unlock()
		var ks []string
		for k := range y.pool.hosts {
			ks = append(ks, k)
		}
		return ks
	}
	if got := hosts(); len(got) != 1 || got[0] != x1.url {
		t.Fatalf("pool hosts %v, want [%s]", got, x1.url)
	}
	if err := tr.UpdatePeer(1, []string{x2.url}); err != nil {
		t.Fatal(err)
	}
	if got := hosts(); len(got) != 1 || got[0] != x2.url {
		t.Errorf("pool hosts after UpdatePeer %v, want [%s]", got, x2.url)
	}
	waitFor(t, "probes of the new host", func() bool {
		s, _ := tr.PeerStatus(1)
		return s.ProbeHealthy && s.RTT > 0
	})
}

// TestHostPoolConfig checks what Start refuses of a Transport with a
// HostPool, and of the pool.
func TestHostPoolConfig(t *testing.T) {
	closed := &HostPool{}
	closed.Close()
	for _, tc := range []struct {
		name string
		pool *HostPool
		set  func(*Transport)
		want string
	}{
		{"own TLS config", &HostPool{}, func(tr *Transport) { tr.TLSClientConfig = &tls.Config{} }, "are the pool's"},
		{"own dial timeout", &HostPool{}, func(tr *Transport) { tr.DialTimeout = time.Second }, "are the pool's"},
		{"own proxy", &HostPool{}, func(tr *Transport) { tr.Proxy = http.ProxyFromEnvironment }, "are the pool's"},
		{"peer identity", &HostPool{}, func(tr *Transport) { tr.PeerIdentity = IdentityFromURISAN("spiffe://x/") }, "PeerIdentity"},
		{"closed pool", closed, nil, errPoolClosed.Error()},
		{"negative dial timeout", &HostPool{DialTimeout: -1}, nil, "DialTimeout must not be negative"},
		{"retry bounds reversed", &HostPool{DialRetryMin: time.Second, DialRetryMax: time.Millisecond}, nil, "DialRetryMax must not be below"},
		{"roots with a proxy", &HostPool{ClientRootCAs: func() *x509.CertPool { return nil }, Proxy: http.ProxyFromEnvironment}, nil, "cannot be combined with Proxy"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &Transport{ID: 1, ClusterID: 1, Raft: newFakeRaft(), HostPool: tc.pool}
			if tc.set != nil {
				tc.set(tr)
			}
			err := tr.Start()
			if err == nil {
				tr.Stop()
				t.Fatal("Start succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start = %v, want an error saying %q", err, tc.want)
			}
			tc.pool.Close()
		})
	}
}

// TestDialGates runs 40 dialers of one host, each redialling 10 ms after a
// failure, against a host that refuses them for 10 s and then comes back:
// after the first failure, one dial at a time goes through, at most one per
// backoff wait; once the host is back, every dialer gets through at the
// next turn.
func TestDialGates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const dialers = 40
		g := newDialGates(100*time.Millisecond, time.Second)
		g.randN = func(time.Duration) time.Duration { return 0 } // waits of cur/2: 50, 100, 200, 400, 500 ms...
		var down atomic.Bool
		down.Store(true)
		var calls, inflight, maxInflight atomic.Int64
		gated := g.wrap(func(ctx context.Context, _, _ string) (net.Conn, error) {
			calls.Add(1)
			n := inflight.Add(1)
			defer inflight.Add(-1)
			for {
				m := maxInflight.Load()
				if n <= m || maxInflight.CompareAndSwap(m, n) {
					break
				}
			}
			time.Sleep(time.Millisecond) // a dial takes a moment
			if down.Load() {
				return nil, errors.New("connection refused")
			}
			c1, c2 := net.Pipe()
			c2.Close()
			return c1, nil
		})
		var wg sync.WaitGroup
		var through atomic.Int64
		for range dialers {
			wg.Go(func() {
				for {
					c, err := gated(t.Context(), "tcp", "host:1")
					if err == nil {
						c.Close()
						through.Add(1)
						return
					}
					time.Sleep(10 * time.Millisecond) // the dialer's own backoff
				}
			})
		}
		synctest.Wait()
		burst := calls.Load() // every dialer's first try, before the host was known down
		maxInflight.Store(0)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		// At 51, 152, 353 and 754 ms, then every 501 ms (a wait and a
		// dial): 22 in 10 s. Ungated, each dialer would try 900 times.
		if n := calls.Load() - burst; n < 18 || n > 24 {
			t.Errorf("%d dials in 10 s after the first failures, want 18 to 24: one per backoff wait", n)
		}
		if n := maxInflight.Load(); n != 1 {
			t.Errorf("%d dials in flight at once to the failing host, want 1", n)
		}
		down.Store(false)
		time.Sleep(600 * time.Millisecond) // the next turn comes within 500 ms
		synctest.Wait()
		if n := through.Load(); n != dialers {
			t.Errorf("%d of %d dialers got through within 600 ms of the host's return", n, dialers)
		}
		wg.Wait()
		if len(g.hosts) != 0 {
			t.Errorf("the gates still track %d hosts, want none: the host is up", len(g.hosts))
		}
	})
}

// TestDialGatesCancel checks that a dial waiting at a gate gives up when
// its context ends, and that a cancelled dial says nothing of the host.
func TestDialGatesCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newDialGates(time.Second, 10*time.Second)
		fail := g.wrap(func(ctx context.Context, _, _ string) (net.Conn, error) { return nil, errors.New("refused") })
		if _, err := fail(t.Context(), "tcp", "h:1"); err == nil {
			t.Fatal("dial succeeded")
		}
		ctx, cancel := context.WithCancel(t.Context())
		errc := make(chan error, 1)
		go func() {
			_, err := fail(ctx, "tcp", "h:1")
			errc <- err
		}()
		synctest.Wait()
		cancel()
		synctest.Wait()
		select {
		case err := <-errc:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("waiting dial = %v, want context.Canceled", err)
			}
		default:
			t.Fatal("a dial waiting at the gate did not give up when its context ended")
		}
	})
}

// TestHostPoolDialGateStreams runs ten groups whose peer host is down: the
// pool lets their stream dials through one at a time, on its backoff;
// when the host comes up, every group's streams come up at once.
func TestHostPoolDialGateStreams(t *testing.T) {
	addr := freeAddr(t)
	var mu sync.Mutex
	var dials []time.Time
	y := newMuxHost(t, withPool(func(hp *HostPool) {
		hp.ProbeInterval = time.Hour
		hp.DialRetryMin, hp.DialRetryMax = 40*time.Millisecond, 400*time.Millisecond
		hp.netDial = func(ctx context.Context, network, a string) (net.Conn, error) {
			if a == addr {
				mu.Lock()
				dials = append(dials, time.Now())
				mu.Unlock()
			}
			return (&net.Dialer{}).DialContext(ctx, network, a)
		}
	}))
	dialsSince := func(mark time.Time) int {
		mu.Lock()
		defer mu.Unlock()
		n := 0
		for _, d := range dials {
			if d.After(mark) {
				n++
			}
		}
		return n
	}
	clusters := make([]uint64, 10)
	ys := map[uint64]*Transport{}
	for i := range clusters {
		clusters[i] = uint64(0x200 + i)
		ys[clusters[i]] = y.addGroup(t, clusters[i], 2, nil)
		addPeer(t, ys[clusters[i]], 1, "http://"+addr)
	}
	waitFor(t, "the host to be known down", func() bool {
		y.pool.dc.gates.mu.Lock()
		defer y.pool.dc.gates.mu.Unlock()
		return y.pool.dc.gates.hosts["tcp://"+addr] != nil
	})
	mark := time.Now()
	// Six dials, the first of which may have passed the gate before it
	// closed: the other five waited at least 20+40+80+160 ms. Twenty
	// readers without the gate would make them within 10 ms.
	waitFor(t, "dials to the host that is down", func() bool { return dialsSince(mark) >= 6 })
	if took := time.Since(mark); took < 300*time.Millisecond {
		t.Errorf("6 stream dials within %v of the host going down, want no sooner than 300ms: the pool's gate did not pace them", took)
	}

	x := &muxHost{mux: &Mux{}}
	x.srv = startServer(listenAgain(t, addr), x.mux, nil)
	x.url = "http://" + addr
	t.Cleanup(func() {
		x.srv.CloseClientConnections()
		x.srv.Close()
	})
	for _, c := range clusters {
		xt := x.addGroup(t, c, 1, nil)
		addPeer(t, xt, 2, y.url)
	}
	for _, c := range clusters {
		waitPeerStreams(t, ys[c], 1)
	}
}

// servedTLS serves the host over TLS with cfg; its URL is https.
func servedTLS(cfg *tls.Config) muxHostOption {
	return func(h *muxHost) {
		h.srv.Listener = tls.NewListener(h.srv.Listener, cfg)
		h.url = "https://" + h.srv.Listener.Addr().String()
	}
}

// TestHostPoolTLS runs two groups between two hosts over mutual TLS, the
// pool's TLSClientConfig dialling for both: streams, pipeline and probes
// all present the client certificate and verify the server's.
func TestHostPoolTLS(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	var plain atomic.Int64
	countPlain := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
				plain.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}
	hosts := make([]*muxHost, 2)
	for i := range hosts {
		server := &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.pool,
			Certificates: []tls.Certificate{*ca.issue(t, int64(i+1)*100, true)}}
		client := &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{*ca.issue(t, int64(i+1)*100+1, false)}}
		hosts[i] = newMuxHost(t, servedTLS(server), wrapMux(countPlain), withPool(func(hp *HostPool) {
			hp.TLSClientConfig = client
			hp.ProbeInterval = 50 * time.Millisecond
		}))
	}
	rafts := map[[2]uint64]*fakeRaft{}
	for _, c := range []uint64{0xa, 0xb} {
		trs := make([]*Transport, 2)
		for i, h := range hosts {
			rafts[[2]uint64{c, uint64(i + 1)}] = newFakeRaft()
			trs[i] = h.addGroup(t, c, uint64(i+1), rafts[[2]uint64{c, uint64(i + 1)}])
		}
		addPeer(t, trs[0], 2, hosts[1].url)
		addPeer(t, trs[1], 1, hosts[0].url)
		waitPeerStreams(t, trs[0], 2)
		waitPeerStreams(t, trs[1], 1)
		for _, typ := range []raftpb.MessageType{raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap} {
			trs[0].Send([]*raftpb.Message{newMsg(typ, 1, 2, 1)})
			if m := rafts[[2]uint64{c, 2}].recv(t); m.GetType() != typ {
				t.Errorf("group %x got %v, want %v", c, m.GetType(), typ)
			}
		}
		waitFor(t, "probes over TLS", func() bool {
			s, _ := trs[0].PeerStatus(2)
			return s.ProbeHealthy && s.RTT > 0
		})
	}
	if n := plain.Load(); n != 0 {
		t.Errorf("%d requests came without a verified client certificate", n)
	}
}
