package rafthttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// rtKind says what an HTTP client carries. A stream type's row in the
// streams table says which stream kind its reader dials with.
type rtKind int

const (
	rtStream       rtKind = iota // streams read as the network delivers (the bulk stream)
	rtSlicedStream               // streams read in slices while bulk traffic streams (slicedConn)
	rtPipeline                   // POSTs, snapshots and the snapshot prober
)

// dialFunc dials a connection, as net.Dialer.DialContext.
type dialFunc = func(ctx context.Context, network, addr string) (net.Conn, error)

// dialConfig is what the HTTP clients dial with: the Transport's own
// settings, or those of its HostPool (hostpool.go), fixed at Start.
type dialConfig struct {
	timeout     time.Duration
	proxy       func(*http.Request) (*url.URL, error)
	clientRoots func() *x509.CertPool
	netDial     dialFunc // nil: a net.Dialer
	// gates, if not nil, pace the stream dials per host (a HostPool's).
	gates *dialGates
}

// dialConfig returns the settings the Transport's clients dial with.
func (t *Transport) dialConfig() dialConfig {
	if t.cfg.pool != nil {
		return t.cfg.pool.dc
	}
	return dialConfig{timeout: t.cfg.dialTimeout, proxy: t.Proxy, clientRoots: t.cfg.clientRoots, netDial: t.netDial}
}

// clients are the HTTP clients members are dialled with: one per stream
// type, of the kind its row in the streams table says (no idle
// connections, per-Read/Write deadlines), and the pipeline's (keep-alive
// connections, no deadlines; POSTs, snapshots and the snapshot prober),
// with their unix-socket transports. The Transport's own (shared) serve
// every peer and remote, unless PeerIdentity gives each its own (clientsFor).
// With a HostPool, the pipeline's is the pool's, shared with the other
// Transports of the pool (pooled), and closed by the pool alone.
type clients struct {
	streams  [streamTypeEnd]*http.Transport // nil in a remote's
	pipeline *http.Transport
	pooled   bool             // pipeline is a HostPool's
	unix     []*unixTransport // of the clients that are ours to close
}

// newClients builds a set of clients whose TLS handshakes use tc (and
// ClientRootCAs, if set); a remote's (withStreams false) has no stream
// clients.
func newClients(t *Transport, tc *tls.Config, withStreams bool) *clients {
	c := &clients{}
	dc := t.dialConfig()
	var u *unixTransport
	if withStreams {
		for _, typ := range streamTypes {
			c.streams[typ], u = newRoundTripper(dc, t.bulk, t.cfg.readTimeout, t.cfg.writeTimeout, streams[typ].client, tc)
			c.unix = append(c.unix, u)
		}
	}
	if t.cfg.pool != nil {
		c.pipeline, c.pooled = t.cfg.pool.pipeline, true
		return c
	}
	c.pipeline, u = newRoundTripper(dc, t.bulk, 0, 0, rtPipeline, tc)
	c.unix = append(c.unix, u)
	return c
}

// clientsFor returns the clients to dial member id with: the shared ones,
// unless PeerIdentity is set. Then the member gets clients of its own,
// whose handshakes check that the server speaks for id and whose
// connections serve no other member; its owner closes their idle
// connections when it stops (closeIdleConnectionsOf).
func (t *Transport) clientsFor(id uint64, withStreams bool) *clients {
	if t.cfg.peerIdentity == nil {
		return t.shared
	}
	return newClients(t, t.dialTLSConfig(id, new(logLimiter)), withStreams)
}

// closeIdleConnectionsOf closes the idle connections of c, the clients of a
// member that stopped, unless they are the shared ones, which Stop closes.
func (t *Transport) closeIdleConnectionsOf(c *clients) {
	if c != t.shared {
		c.closeIdleConnections()
	}
}

// closeIdleConnections closes the idle connections of every client of c,
// but a HostPool's, which other Transports may be using.
func (c *clients) closeIdleConnections() {
	for _, typ := range streamTypes {
		if c.streams[typ] != nil {
			c.streams[typ].CloseIdleConnections()
		}
	}
	if !c.pooled {
		c.pipeline.CloseIdleConnections()
	}
	for _, u := range c.unix {
		u.closeIdleConnections()
	}
}

// newRoundTripper builds an HTTP client of the given kind, dialling as dc
// says, whose TLS handshakes use tc. Streams get no idle connections (each
// is long-lived) and per-Read/Write deadlines on the connection itself, so
// that a silent stream fails within the read timeout (etcd installs these
// deadlines where Go ignores them); sliced streams look at the socket every
// busyPollInterval while MsgApps stream (bulk is the clock they look at).
// Stream dials wait at dc's gates, if any. The pipeline keeps connections
// alive between POSTs. With ClientRootCAs set, the client makes its TLS
// handshakes itself (dialTLS), with the roots of the moment. It has no side
// effect: the caller keeps the unix-socket client it returns, to close it
// with the HTTP client.
func newRoundTripper(dc dialConfig, bulk *bulkClock, rd, wr time.Duration, kind rtKind, tc *tls.Config) (*http.Transport, *unixTransport) {
	netDial := (&net.Dialer{Timeout: dc.timeout, KeepAlive: 30 * time.Second}).DialContext
	if dc.netDial != nil {
		netDial = dc.netDial
	}
	if dc.gates != nil && kind != rtPipeline {
		netDial = dc.gates.wrap(netDial)
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := netDial(ctx, network, addr)
		if err != nil || (rd == 0 && wr == 0) {
			return c, err
		}
		if kind == rtSlicedStream {
			return newSlicedConn(c, rd, wr, bulk), nil
		}
		return &deadlineConn{Conn: c, rd: rd, wr: wr}, nil
	}
	tr := &http.Transport{
		Proxy:               dc.proxy,
		DialContext:         dial,
		TLSHandshakeTimeout: tlsHandshakeTimeout,
		TLSClientConfig:     tc,
		MaxIdleConnsPerHost: -1,
	}
	var tlsDial func(dialFunc) dialFunc
	if roots := dc.clientRoots; roots != nil {
		// validate refuses a Proxy with ClientRootCAs: every https
		// connection is then dialled here, none by net/http itself.
		tlsDial = func(raw dialFunc) dialFunc { return dialTLS(raw, tc, roots) }
		tr.DialTLSContext = tlsDial(dial)
	}
	if kind == rtPipeline {
		tr.MaxIdleConnsPerHost = 1024
		tr.IdleConnTimeout = 90 * time.Second
		// Snapshots go this way: bigger buffers, fewer system calls.
		tr.WriteBufferSize = 64 << 10
		tr.ReadBufferSize = 64 << 10
	}
	u := &unixTransport{base: tr, tlsDial: tlsDial, bySocket: map[string]*http.Transport{}}
	tr.RegisterProtocol("unix", unixScheme{u, "http"})
	tr.RegisterProtocol("unixs", unixScheme{u, "https"})
	return tr, u
}

// unixTransport serves unix:// and unixs:// peer URLs: the host part names
// the socket, and the request goes over it as http or https. Each socket
// gets its own clone of the base transport, kept so that its connections
// are reused, and closed at Stop.
type unixTransport struct {
	base *http.Transport
	// tlsDial, if not nil, makes a DialTLSContext of a raw dial
	// (ClientRootCAs): each socket's clone gets one over the socket.
	tlsDial  func(dialFunc) dialFunc
	mu       sync.Mutex
	bySocket map[string]*http.Transport
}

// unixScheme is a unixTransport seen through one scheme.
type unixScheme struct {
	u      *unixTransport
	scheme string
}

func (s unixScheme) RoundTrip(req *http.Request) (*http.Response, error) {
	r2 := req.Clone(req.Context())
	r2.URL.Scheme = s.scheme
	return s.u.forSocket(req.URL.Host).RoundTrip(r2)
}

func (u *unixTransport) forSocket(socket string) *http.Transport {
	u.mu.Lock()
	defer u.mu.Unlock()
	if tr, ok := u.bySocket[socket]; ok {
		return tr
	}
	tr := u.base.Clone()
	dial := u.base.DialContext
	tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dial(ctx, "unix", socket)
	}
	if u.tlsDial != nil {
		// The clone's DialTLSContext would dial the base's way, over TCP.
		tr.DialTLSContext = u.tlsDial(tr.DialContext)
	}
	u.bySocket[socket] = tr
	return tr
}

// closeIdleConnections closes the idle connections of every socket's
// transport.
func (u *unixTransport) closeIdleConnections() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, tr := range u.bySocket {
		tr.CloseIdleConnections()
	}
}

// deadlineConn sets a fresh deadline before every Read and Write, so that a
// silent or stuck stream fails within the timeout. A message stream's
// connection is a slicedConn (sched.go), which reads in slices instead.
type deadlineConn struct {
	net.Conn
	rd, wr time.Duration // zero: no deadline
}

// Read reads from the connection within the read timeout.
func (c *deadlineConn) Read(b []byte) (int, error) {
	if c.rd > 0 {
		if err := c.Conn.SetReadDeadline(time.Now().Add(c.rd)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Read(b)
}

// Write writes to the connection within the write timeout.
func (c *deadlineConn) Write(b []byte) (int, error) {
	if c.wr > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.wr)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(b)
}
