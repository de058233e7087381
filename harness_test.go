package rafthttp

// The one harness of the root package's tests: the fake raft, the node
// constructor newNode and its options, an in-memory network for tests in a
// synctest bubble, a fake peer server, the message factory newMsg, the
// metric reader metricValue, a snapshot store that keeps what it is given,
// and waitFor. Helpers that serve one file's tests stay in that file.

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"
)

// fakeRaft records what the transport hands to raft. Process sends every
// message to msgc (buffered generously) unless processFn overrides it.
type fakeRaft struct {
	msgc chan *raftpb.Message

	mu          sync.Mutex
	processFn   func(ctx context.Context, m *raftpb.Message) error
	removed     map[uint64]bool
	unreachable map[uint64]int
	snapshots   []snapshotReport
}

// snapshotReport is one ReportSnapshot call.
type snapshotReport struct {
	id     uint64
	status raft.SnapshotStatus
}

// newFakeRaft returns a fakeRaft that delivers every message to msgc.
func newFakeRaft() *fakeRaft {
	return &fakeRaft{msgc: make(chan *raftpb.Message, 1<<16), removed: map[uint64]bool{}, unreachable: map[uint64]int{}}
}

// Process hands m to processFn if set, else to msgc.
func (r *fakeRaft) Process(ctx context.Context, m *raftpb.Message) error {
	r.mu.Lock()
	fn := r.processFn
	r.mu.Unlock()
	if fn != nil {
		return fn(ctx, m)
	}
	select {
	case r.msgc <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// IsIDRemoved reports whether setRemoved(id) was called.
func (r *fakeRaft) IsIDRemoved(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.removed[id]
}

// ReportUnreachable counts the call (unreachableCount).
func (r *fakeRaft) ReportUnreachable(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.unreachable[id]++
}

// ReportSnapshot records the call (snapshotReports).
func (r *fakeRaft) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snapshots = append(r.snapshots, snapshotReport{id, status})
}

// setProcess makes fn handle what Process gets from now on.
func (r *fakeRaft) setProcess(fn func(ctx context.Context, m *raftpb.Message) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.processFn = fn
}

// setRemoved marks id as removed from the cluster.
func (r *fakeRaft) setRemoved(id uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed[id] = true
}

// unreachableCount is how many times id was reported unreachable.
func (r *fakeRaft) unreachableCount(id uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreachable[id]
}

// snapshotReports returns the ReportSnapshot calls so far, in order.
func (r *fakeRaft) snapshotReports() []snapshotReport {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]snapshotReport(nil), r.snapshots...)
}

// recv waits for the next processed message.
func (r *fakeRaft) recv(t testing.TB) *raftpb.Message {
	t.Helper()
	return receive(t, r.msgc, 10*time.Second, "a message to reach raft")
}

// receive waits for a value on c, failing the test after within; what
// names the value in the failure.
func receive[T any](t testing.TB, c <-chan T, within time.Duration, what string) T {
	t.Helper()
	timer := time.NewTimer(within)
	defer timer.Stop()
	select {
	case v := <-c:
		return v
	case <-timer.C:
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

// ---------------------------------------------------------------------------
// Nodes.

// testNode is a Transport under test, its fake raft, and (unless it was
// built unserved) the HTTP server that serves its Handler.
type testNode struct {
	tr   *Transport
	raft *fakeRaft        // nil if the transport was given another Raft
	srv  *httptest.Server // nil if unserved
	url  string           // srv's URL, "" if unserved
	mem  *memNet          // the in-memory network the node is on; nil: loopback
}

// testClusterID is the cluster of every node unless withClusterID says
// otherwise.
const testClusterID = 0x1000

// nodeConfig is what newNode's options set.
type nodeConfig struct {
	fields    []func(*Transport) // applied in order, after the defaults
	unserved  bool
	addr      string                            // listen address; "": a fresh port
	wraps     []func(http.Handler) http.Handler // around the Handler, first innermost
	serverTLS *tls.Config                       // serve over TLS with this
	errorLog  io.Writer                         // the server's ErrorLog
	mem       *memNet                           // serve and dial on it
}

// nodeOption adjusts a node built by newNode.
type nodeOption func(*nodeConfig)

// withID sets Transport.ID (default 1).
func withID(id uint64) nodeOption {
	return withConfig(func(tr *Transport) { tr.ID = id })
}

// withClusterID sets Transport.ClusterID (default testClusterID).
func withClusterID(id uint64) nodeOption {
	return withConfig(func(tr *Transport) { tr.ClusterID = id })
}

// withRaft sets Transport.Raft in place of the node's fakeRaft; the node's
// raft field is then nil unless r is a *fakeRaft.
func withRaft(r Raft) nodeOption {
	return withConfig(func(tr *Transport) { tr.Raft = r })
}

// withLogger sets Transport.Logger (default: the test's log at Info, so that
// floods of Debug lines do not drown a failure's output). nil means no log.
func withLogger(l *zap.Logger) nodeOption {
	return withConfig(func(tr *Transport) { tr.Logger = l })
}

// withDialRetry sets DialRetryMin and DialRetryMax (default 10 ms and
// 100 ms, so that streams come up quickly).
func withDialRetry(lo, hi time.Duration) nodeOption {
	return withConfig(func(tr *Transport) { tr.DialRetryMin, tr.DialRetryMax = lo, hi })
}

// withRegisterer sets Transport.Registerer (default none).
func withRegisterer(r prometheus.Registerer) nodeOption {
	return withConfig(func(tr *Transport) { tr.Registerer = r })
}

// withStore sets Transport.SnapshotStore (default none).
func withStore(s SnapshotStore) nodeOption {
	return withConfig(func(tr *Transport) { tr.SnapshotStore = s })
}

// withConfig adjusts the transport before Start: for the fields no option
// names (limits, timeouts, ErrorC ...).
func withConfig(fn func(*Transport)) nodeOption {
	return func(c *nodeConfig) {
		if fn != nil {
			c.fields = append(c.fields, fn)
		}
	}
}

// withTLS serves the node over TLS with server and makes its transport dial
// with client; the node's URL is https.
func withTLS(server, client *tls.Config) nodeOption {
	return func(c *nodeConfig) {
		c.serverTLS = server
		c.fields = append(c.fields, func(tr *Transport) { tr.TLSClientConfig = client })
	}
}

// listenOn serves the node on addr, which a server that just closed may
// have used, instead of a fresh port.
func listenOn(addr string) nodeOption {
	return func(c *nodeConfig) { c.addr = addr }
}

// wrapHandler puts a middleware in front of the transport's handler, for
// tests that watch or tamper with requests before the transport sees them.
// A later wrap is further out.
func wrapHandler(wrap func(http.Handler) http.Handler) nodeOption {
	return func(c *nodeConfig) {
		if wrap != nil {
			c.wraps = append(c.wraps, wrap)
		}
	}
}

// withServerLog sends what the node's http.Server logs (handshake errors,
// panics) to w.
func withServerLog(w io.Writer) nodeOption {
	return func(c *nodeConfig) { c.errorLog = w }
}

// unserved builds a transport that no server serves and that advertises no
// URL: for tests that call its Handler directly or play its peers with a
// fake server.
func unserved() nodeOption {
	return func(c *nodeConfig) { c.unserved = true }
}

// onMemNet puts the node on mn: its server listens there and its transport
// dials there, so that the node can run in a synctest bubble.
func onMemNet(mn *memNet) nodeOption {
	return func(c *nodeConfig) { c.mem = mn }
}

// options bundles opts into one option: a preset of a file's tests.
func options(opts ...nodeOption) nodeOption {
	return func(c *nodeConfig) {
		for _, o := range opts {
			o(c)
		}
	}
}

// nodeOptions applies opts to a fresh config.
func nodeOptions(opts []nodeOption) nodeConfig {
	var c nodeConfig
	for _, o := range opts {
		o(&c)
	}
	return c
}

// newNode starts a transport, by default with ID 1 in cluster
// testClusterID and a fakeRaft, behind a real HTTP server on 127.0.0.1 that
// it advertises; opts change any of that. The transport is stopped, then
// its server closed, at the end of the test (close).
func newNode(t testing.TB, opts ...nodeOption) *testNode {
	t.Helper()
	c := nodeOptions(opts)
	fr := newFakeRaft()
	n := &testNode{mem: c.mem}
	n.tr = &Transport{ID: 1, ClusterID: testClusterID, Raft: fr,
		Logger:       zaptest.NewLogger(t, zaptest.Level(zapcore.InfoLevel)),
		DialRetryMin: 10 * time.Millisecond, DialRetryMax: 100 * time.Millisecond}
	var l net.Listener
	if !c.unserved {
		l = n.listen(t, c.addr)
		scheme := "http://"
		if c.serverTLS != nil {
			scheme = "https://"
			l = tls.NewListener(l, c.serverTLS)
		}
		n.url = scheme + l.Addr().String()
		n.tr.URLs = []string{n.url}
	}
	for _, fn := range c.fields {
		fn(n.tr)
	}
	if n.mem != nil {
		n.tr.netDial = n.mem.dial
	}
	n.raft, _ = n.tr.Raft.(*fakeRaft)
	if err := n.tr.Start(); err != nil {
		if l != nil {
			l.Close()
		}
		t.Fatalf("Start: %v", err)
	}
	if l != nil {
		h := n.tr.Handler()
		for _, wrap := range c.wraps {
			h = wrap(h)
		}
		n.srv = startServer(l, h, c.errorLog)
	}
	t.Cleanup(n.close)
	return n
}

// parts returns the node's transport and fake raft, for tests that need
// nothing else of it.
func (n *testNode) parts() (*Transport, *fakeRaft) { return n.tr, n.raft }

// listen opens the node's listener: on its memNet, on addr, or on a fresh
// loopback port.
func (n *testNode) listen(t testing.TB, addr string) net.Listener {
	t.Helper()
	switch {
	case n.mem != nil:
		return n.mem.listen()
	case addr != "":
		return listenAgain(t, addr)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// close stops the transport, then the server (the order raftexample uses).
// It may be called more than once.
func (n *testNode) close() {
	n.tr.Stop()
	if n.srv != nil {
		n.srv.CloseClientConnections()
		n.srv.Close()
	}
}

// newClient returns an HTTP client with connections of its own, closed at
// the end of the test.
func newClient(t testing.TB) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// client is newClient for n's network: it reaches n, and the nodes and
// fake peers on n's memNet.
func (n *testNode) client(t testing.TB) *http.Client {
	c := newClient(t)
	if n.mem != nil {
		c.Transport.(*http.Transport).DialContext = n.mem.dial
	}
	return c
}

// dial opens a raw connection to n's server, closed at the end of the test.
func (n *testNode) dial(t testing.TB) net.Conn {
	t.Helper()
	addr := n.srv.Listener.Addr().String()
	var c net.Conn
	var err error
	if n.mem != nil {
		c, err = n.mem.dial(t.Context(), "tcp", addr)
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// startServer serves h on l with an httptest.Server, which tracks its
// connections so that tests can cut them (CloseClientConnections).
func startServer(l net.Listener, h http.Handler, errorLog io.Writer) *httptest.Server {
	srv := &httptest.Server{Listener: l, Config: &http.Server{Handler: h}}
	if errorLog != nil {
		srv.Config.ErrorLog = log.New(errorLog, "", 0)
	}
	srv.Start()
	return srv
}

// newFakePeer serves h on 127.0.0.1 until the end of the test: a peer whose
// answers the test writes. Its client connections are closed first, so that
// handlers blocked until their request's context ends return (a server
// cancels that context when its client goes only once the body was read).
func newFakePeer(t testing.TB, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	return serveFakePeer(t, httptest.NewServer(h))
}

// serveFakePeer closes srv at the end of the test, its client connections
// first.
func serveFakePeer(t testing.TB, srv *httptest.Server) *httptest.Server {
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
	})
	return srv
}

// listenAgain listens on addr, which a server that just closed used: the
// port may take a moment to become free again.
func listenAgain(t testing.TB, addr string) net.Listener {
	t.Helper()
	var l net.Listener
	waitFor(t, "listening on "+addr, func() bool {
		var err error
		l, err = net.Listen("tcp", addr)
		return err == nil
	})
	return l
}

// connect adds every node as a peer of every other.
func connect(t testing.TB, nodes ...*testNode) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			if err := a.tr.AddPeer(b.tr.ID, []string{b.url}); err != nil {
				t.Fatalf("AddPeer: %v", err)
			}
		}
	}
}

// connectStreams connects the nodes (connect), then waits until the stream
// writers of each to every other have attached (waitStreams): from then on
// what they send each other leaves by the streams.
func connectStreams(t testing.TB, nodes ...*testNode) {
	t.Helper()
	connect(t, nodes...)
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				waitStreams(t, a, b)
			}
		}
	}
}

// waitFor polls cond until it holds or the deadline passes. In a synctest
// bubble both the poll and the deadline are on the bubble's clock.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitStreams waits until a's stream writers to each of peers have attached
// the streams the peer dialled, as PeerStats reports them: from then on,
// while they last, what a sends them leaves by the streams (a writer
// reports up only after the transport would pick it). It asks nothing of
// a's readers, which tests whose nodes cannot all reach each other do not
// wait for; waitStreamsUp does.
func waitStreams(t testing.TB, a *testNode, peers ...*testNode) {
	t.Helper()
	for _, b := range peers {
		waitFor(t, "streams to be attached", func() bool {
			s, ok := a.tr.PeerStatus(b.tr.ID)
			if !ok {
				return false
			}
			for _, st := range s.Streams {
				if !st.Writer.Up {
					return false
				}
			}
			return true
		})
	}
}

// waitStreamsUp waits until every node has both streams up in both
// directions with every other (PeerStats.StreamsUp).
func waitStreamsUp(t testing.TB, nodes ...*testNode) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a == b {
				continue
			}
			waitFor(t, "streams to be up both ways", func() bool {
				s, ok := a.tr.PeerStatus(b.tr.ID)
				return ok && s.StreamsUp()
			})
		}
	}
}

// freeAddr returns a loopback address nothing listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// ---------------------------------------------------------------------------
// An in-memory network, for synctest.

// memNet is an in-memory network: listeners by address, connections made of
// net.Pipe. A synctest bubble advances its clock only when every goroutine
// in it is durably blocked, which a goroutine blocked on a real socket never
// is; on a memNet, nodes, fake peers and clients block on channels instead,
// so that timeouts and rates can be tested on the bubble's clock, exactly.
// Create it, and everything on it, inside the bubble.
type memNet struct {
	mu        sync.Mutex
	listeners map[string]*memListener
	hosts     int // listeners made so far
	dials     int // dials made so far, for the clients' ports
}

// memListener is a listener of a memNet. Dials hand it the server ends of
// their pipes.
type memListener struct {
	addr      *net.TCPAddr
	connc     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
}

// memConn is one end of a pipe, with the addresses of a TCP connection, so
// that code that logs or parses them sees what it would in production.
type memConn struct {
	net.Conn
	local, remote net.Addr
}

// LocalAddr is the address of this end.
func (c memConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the address of the other end.
func (c memConn) RemoteAddr() net.Addr { return c.remote }

// listen returns a listener at a fresh address of the network.
func (mn *memNet) listen() *memListener {
	mn.mu.Lock()
	defer mn.mu.Unlock()
	if mn.listeners == nil {
		mn.listeners = map[string]*memListener{}
	}
	mn.hosts++
	l := &memListener{addr: &net.TCPAddr{IP: net.IPv4(10, 0, byte(mn.hosts>>8), byte(mn.hosts)), Port: 2380},
		connc: make(chan net.Conn), closed: make(chan struct{})}
	mn.listeners[l.addr.String()] = l
	return l
}

// dial connects to the listener at addr, or fails as a refused TCP dial
// would. Its signature is net.Dialer.DialContext's.
func (mn *memNet) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	mn.mu.Lock()
	l := mn.listeners[addr]
	mn.dials++
	client := &net.TCPAddr{IP: net.IPv4(10, 1, 0, 1), Port: 1024 + mn.dials%60000}
	mn.mu.Unlock()
	refused := &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
	if l == nil {
		return nil, refused
	}
	c, s := net.Pipe()
	select {
	case l.connc <- memConn{Conn: s, local: l.addr, remote: client}:
		return memConn{Conn: c, local: client, remote: l.addr}, nil
	case <-l.closed:
	case <-ctx.Done():
		refused.Err = ctx.Err()
	}
	c.Close()
	s.Close()
	return nil, refused
}

// fakePeer is newFakePeer on the network.
func (mn *memNet) fakePeer(t testing.TB, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	return serveFakePeer(t, startServer(mn.listen(), h, nil))
}

// Accept waits for a dial.
func (l *memListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.connc:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close stops accepting; dials to it fail from then on.
func (l *memListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Addr is the listener's address on the network.
func (l *memListener) Addr() net.Addr { return l.addr }

// ---------------------------------------------------------------------------
// Messages, snapshots and metrics.

// msgOption adjusts a message built by newMsg.
type msgOption func(*raftpb.Message)

// newMsg is the message factory of the tests: a message of type typ from
// `from` to `to` at term 1, whose log position (LogTerm, Index) is
// (1, index) and whose Commit is index. A MsgSnap carries a snapshot of the
// log up to index, with from and to as voters. opts change the rest.
func newMsg(typ raftpb.MessageType, from, to, index uint64, opts ...msgOption) *raftpb.Message {
	m := &raftpb.Message{Type: typ.Enum(), From: proto.Uint64(from), To: proto.Uint64(to), Term: proto.Uint64(1),
		LogTerm: proto.Uint64(1), Index: proto.Uint64(index), Commit: proto.Uint64(index)}
	if typ == raftpb.MsgSnap {
		m.Snapshot = &raftpb.Snapshot{Data: []byte("state"), Metadata: &raftpb.SnapshotMetadata{
			Index: proto.Uint64(index), Term: proto.Uint64(1), ConfState: &raftpb.ConfState{Voters: []uint64{from, to}}}}
	}
	for _, o := range opts {
		o(m)
	}
	return m
}

// withCommit sets Commit, so that tests can tell messages apart by it.
func withCommit(commit uint64) msgOption {
	return func(m *raftpb.Message) { m.Commit = proto.Uint64(commit) }
}

// withEntry appends an entry at the message's term, after its log position
// and the entries before it.
func withEntry(data string) msgOption {
	return func(m *raftpb.Message) {
		i := m.GetIndex() + uint64(len(m.Entries)) + 1
		m.Entries = append(m.Entries, &raftpb.Entry{Term: proto.Uint64(m.GetTerm()), Index: proto.Uint64(i), Data: []byte(data)})
	}
}

// newSnapshot is a SnapshotMessage of newMsg(MsgSnap, from, to, index) with
// a payload of n bytes.
func newSnapshot(from, to, index uint64, n int) SnapshotMessage {
	return SnapshotMessage{Message: newMsg(raftpb.MsgSnap, from, to, index),
		Payload: io.NopCloser(bytes.NewReader(bytes.Repeat([]byte{'s'}, n))), PayloadSize: int64(n)}
}

// memStore is a SnapshotStore that keeps what it is given in memory.
type memStore struct {
	err error // returned after reading the payload, if set

	mu       sync.Mutex
	msgs     []*raftpb.Message
	payloads [][]byte
}

// SaveSnapshot reads the whole payload, then keeps it, or fails with err.
func (s *memStore) SaveSnapshot(_ context.Context, m *raftpb.Message, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.err != nil {
		return s.err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	s.payloads = append(s.payloads, b)
	return nil
}

// CreatePartial makes memStore a ResumableSnapshotStore: the partial
// payload is a buffer, committed as SaveSnapshot keeps a payload.
func (s *memStore) CreatePartial(m *raftpb.Message) (PartialSnapshot, error) {
	return &memPartial{s: s, m: m}, nil
}

// memPartial is a memStore's partial payload.
type memPartial struct {
	s   *memStore
	m   *raftpb.Message
	buf []byte
}

func (p *memPartial) Write(b []byte) (int, error) {
	p.buf = append(p.buf, b...)
	return len(b), nil
}

// Commit keeps the payload, or fails with the store's err.
func (p *memPartial) Commit(context.Context) error {
	if p.s.err != nil {
		return p.s.err
	}
	p.s.mu.Lock()
	defer p.s.mu.Unlock()
	p.s.msgs = append(p.s.msgs, p.m)
	p.s.payloads = append(p.s.payloads, p.buf)
	return nil
}

func (p *memPartial) Discard() error {
	p.buf = nil
	return nil
}

// saved returns the messages and payloads kept so far.
func (s *memStore) saved() ([]*raftpb.Message, [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*raftpb.Message(nil), s.msgs...), append([][]byte(nil), s.payloads...)
}

// metricValue adds up the series of the family name gathered from g (every
// family, if name is "") whose labels include match: a counter's or gauge's
// value, a histogram's sample count. It is 0 if there is none. Read a
// registry to see what a scrape sees, names included; read gathered(c) for
// one of the transport's collectors.
func metricValue(t testing.TB, g prometheus.Gatherer, name string, match map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if name != "" && mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !labelsInclude(m, match) {
				continue
			}
			switch {
			case m.Counter != nil:
				sum += m.GetCounter().GetValue()
			case m.Gauge != nil:
				sum += m.GetGauge().GetValue()
			case m.Histogram != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			default:
				t.Fatalf("series %s%v has no value", mf.GetName(), m.GetLabel())
			}
		}
	}
	return sum
}

// seriesNaming lists the series gathered from g that have a label whose
// value is v, one line each (family, then labels).
func seriesNaming(t testing.TB, g prometheus.Gatherer, v string) []string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var found []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == v {
					found = append(found, mf.GetName()+" "+m.String())
					break
				}
			}
		}
	}
	return found
}

// labelsInclude reports whether m has every label of match.
func labelsInclude(m *dto.Metric, match map[string]string) bool {
	found := 0
	for _, l := range m.GetLabel() {
		if v, ok := match[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(match)
}

// gathered is a Gatherer of c alone (a registry of its own), for reading a
// collector the transport did not register anywhere.
func gathered(t testing.TB, c prometheus.Collector) prometheus.Gatherer {
	t.Helper()
	r := prometheus.NewRegistry()
	if err := r.Register(c); err != nil {
		t.Fatalf("registering %T to read it: %v", c, err)
	}
	return r
}

// waitMetric waits until metricValue(g, name, match) satisfies cond, and
// returns it; what describes cond in the failure.
func waitMetric(t testing.TB, g prometheus.Gatherer, name string, match map[string]string, what string, cond func(float64) bool) float64 {
	t.Helper()
	var v float64
	waitFor(t, name+" "+what, func() bool {
		v = metricValue(t, g, name, match)
		return cond(v)
	})
	return v
}

// above is a condition of waitMetric: more than x.
func above(x float64) func(float64) bool { return func(v float64) bool { return v > x } }
