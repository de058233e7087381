package rafthttp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// testCA issues certificates for the TLS tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// issue returns a certificate with the given serial number for a server
// (IP SAN 127.0.0.1 and the DNS names given) or a client.
func (ca *testCA) issue(t *testing.T, serial int64, server bool, dnsNames ...string) *tls.Certificate {
	t.Helper()
	return ca.issueWith(t, serial, server, func(c *x509.Certificate) {
		if server {
			c.DNSNames = dnsNames
		}
	})
}

// issueWith is issue with edit applied to the certificate's template
// before it is signed.
func (ca *testCA) issueWith(t *testing.T, serial int64, server bool, edit func(*x509.Certificate)) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "member"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// certSerials records the serial numbers of the certificates a TLS endpoint
// was shown, in order.
type certSerials struct {
	mu      sync.Mutex
	serials []int64
}

func (s *certSerials) record(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) > 0 {
		s.mu.Lock()
		s.serials = append(s.serials, cs.PeerCertificates[0].SerialNumber.Int64())
		s.mu.Unlock()
	}
	return nil
}

func (s *certSerials) all() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.serials)
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// tlsNode is a transport served over mutual TLS: its server requires a client
// certificate from trust, and its transport dials with one. Both of its
// certificates can be swapped at any time.
type tlsNode struct {
	*testNode
	serverCert, clientCert atomic.Pointer[tls.Certificate]
	clientsSeen            certSerials // client certificates our server verified
	serversSeen            certSerials // server certificates our transport verified
	serverLog              syncBuffer  // the http.Server's error log (handshake errors)
	plainRequests          atomic.Int64
}

// newTLSNode starts transport id with certificates issued by ca (serials
// id*100 for the server, id*100+1 for the client) and trusting only trust.
func newTLSNode(t *testing.T, id uint64, ca *testCA, trust *x509.CertPool, opts ...nodeOption) *tlsNode {
	t.Helper()
	n := &tlsNode{}
	n.serverCert.Store(ca.issue(t, int64(id)*100, true))
	n.clientCert.Store(ca.issue(t, int64(id)*100+1, false))
	server := &tls.Config{
		ClientAuth:       tls.RequireAndVerifyClientCert,
		ClientCAs:        trust,
		GetCertificate:   func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return n.serverCert.Load(), nil },
		VerifyConnection: n.clientsSeen.record,
	}
	client := &tls.Config{
		RootCAs: trust,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return n.clientCert.Load(), nil
		},
		VerifyConnection: n.serversSeen.record,
	}
	countPlain := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
				n.plainRequests.Add(1)
			}
			h.ServeHTTP(w, r)
		})
	}
	n.testNode = newNode(t, append([]nodeOption{withID(id), withTLS(server, client), withServerLog(&n.serverLog), wrapHandler(countPlain)}, opts...)...)
	return n
}

func tlsTestNodes(ns ...*tlsNode) []*testNode {
	out := make([]*testNode, len(ns))
	for i, n := range ns {
		out[i] = n.testNode
	}
	return out
}

// recvFrom waits for a message from `from`, failing on any other.
func recvFrom(t *testing.T, n *testNode, from uint64, typ raftpb.MessageType) {
	t.Helper()
	m := n.raft.recv(t)
	if m.GetFrom() != from || m.GetType() != typ {
		t.Errorf("node %d got %v from %d, want %v from %d", n.tr.ID, m.GetType(), m.GetFrom(), typ, from)
	}
}

func TestTLSMutualCluster(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	var nodes []*tlsNode
	for id := uint64(1); id <= 3; id++ {
		nodes = append(nodes, newTLSNode(t, id, ca, ca.pool, withStore(&memStore{})))
	}
	connect(t, tlsTestNodes(nodes...)...)
	for _, n := range nodes {
		for _, m := range nodes {
			if n != m {
				waitStreams(t, n.testNode, m.testNode)
			}
		}
	}

	for _, from := range nodes {
		for _, to := range nodes {
			if from == to {
				continue
			}
			f, d := from.tr.ID, to.tr.ID
			// MsgApp takes the msgappv2 stream, MsgHeartbeat the message
			// stream, MsgSnap the pipeline.
			for _, typ := range []raftpb.MessageType{raftpb.MsgApp, raftpb.MsgHeartbeat, raftpb.MsgSnap} {
				m := newMsg(typ, f, d, 1)
				if typ == raftpb.MsgSnap {
					m.Snapshot = newSnapshot(1, d, 1, 0).Message.Snapshot
				}
				from.tr.Send([]*raftpb.Message{m})
				recvFrom(t, to.testNode, f, typ)
			}
		}
	}
	if err := <-nodes[0].tr.SendSnapshot(newSnapshot(1, 2, 4, 10000)); err != nil {
		t.Errorf("SendSnapshot over TLS: %v", err)
	}
	recvFrom(t, nodes[1].testNode, 1, raftpb.MsgSnap)

	for _, n := range nodes {
		if got := n.plainRequests.Load(); got != 0 {
			t.Errorf("node %d served %d requests without a verified client certificate", n.tr.ID, got)
		}
		for _, m := range nodes {
			if n == m {
				continue
			}
			if !slices.Contains(n.clientsSeen.all(), int64(m.tr.ID)*100+1) {
				t.Errorf("node %d never verified node %d's client certificate", n.tr.ID, m.tr.ID)
			}
			if !slices.Contains(n.serversSeen.all(), int64(m.tr.ID)*100) {
				t.Errorf("node %d never verified node %d's server certificate", n.tr.ID, m.tr.ID)
			}
		}
	}
}

func TestTLSUntrustedPeerRefused(t *testing.T) {
	ca, other := newTestCA(t, "cluster CA"), newTestCA(t, "another CA")
	a := newTLSNode(t, 1, ca, ca.pool)
	b := newTLSNode(t, 2, ca, ca.pool)
	// c trusts the cluster's CA, but its own certificates come from another.
	c := newTLSNode(t, 3, other, ca.pool)
	connect(t, a.testNode, b.testNode, c.testNode)
	waitStreams(t, a.testNode, b.testNode)
	waitStreams(t, b.testNode, a.testNode)

	c.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 3, 1, 1)})
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 3, 1)})
	waitFor(t, "c to report a unreachable", func() bool { return c.raft.unreachableCount(1) > 0 })
	waitFor(t, "a to report c unreachable", func() bool { return a.raft.unreachableCount(3) > 0 })
	waitFor(t, "a's server to log a certificate handshake error", func() bool {
		for _, l := range strings.Split(a.serverLog.String(), "\n") {
			if strings.Contains(l, "TLS handshake error") && strings.Contains(l, "certificate") {
				return true
			}
		}
		return false
	})
	// Each failed dial records its error; wait for one that names TLS.
	waitFor(t, "c to record the TLS failure reaching a", func() bool {
		st, _ := c.tr.PeerStatus(1)
		return st.LastError != nil && strings.Contains(st.LastError.Error(), "tls")
	})
	waitFor(t, "a to record the certificate failure reaching c", func() bool {
		st, _ := a.tr.PeerStatus(3)
		return st.LastError != nil && strings.Contains(st.LastError.Error(), "certificate")
	})

	// A trusted peer still gets through; nothing from or to c did.
	b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 2, 1, 1)})
	recvFrom(t, a.testNode, 2, raftpb.MsgHeartbeat)
	if n := len(c.raft.msgc); n != 0 {
		t.Errorf("c received %d messages, want 0", n)
	}
	for _, n := range []*tlsNode{a, b} {
		st, _ := n.tr.PeerStatus(3)
		if st.Active || st.MessagesReceived != 0 {
			t.Errorf("node %d: c is active %v with %d messages received, want inactive with none", n.tr.ID, st.Active, st.MessagesReceived)
		}
		p, _ := n.tr.get(3)
		if p.writers[streamTypeMessage].isWorking() || p.writers[streamTypeMsgAppV2].isWorking() {
			t.Errorf("node %d: c's streams attached", n.tr.ID)
		}
		if slices.Contains(n.clientsSeen.all(), 301) {
			t.Errorf("node %d accepted c's client certificate", n.tr.ID)
		}
	}
}

func TestTLSCertificateRotation(t *testing.T) {
	tests := []struct {
		name string
		// rotate swaps a certificate, returning the new serial and where
		// the handshakes that show it are recorded.
		rotate func(t *testing.T, ca *testCA, a, b *tlsNode) (int64, *certSerials)
		old    int64
	}{
		{
			name: "client certificate",
			rotate: func(t *testing.T, ca *testCA, a, b *tlsNode) (int64, *certSerials) {
				a.clientCert.Store(ca.issue(t, 111, false))
				return 111, &b.clientsSeen
			},
			old: 101,
		},
		{
			name: "server certificate",
			rotate: func(t *testing.T, ca *testCA, a, b *tlsNode) (int64, *certSerials) {
				b.serverCert.Store(ca.issue(t, 222, true))
				return 222, &a.serversSeen
			},
			old: 200,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newTestCA(t, "cluster CA")
			a := newTLSNode(t, 1, ca, ca.pool)
			b := newTLSNode(t, 2, ca, ca.pool)
			connect(t, a.testNode, b.testNode)
			waitStreams(t, a.testNode, b.testNode)
			waitStreams(t, b.testNode, a.testNode)

			serial, seen := tt.rotate(t, ca, a, b)
			before := seen.all()
			if !slices.Contains(before, tt.old) || slices.Contains(before, serial) {
				t.Fatalf("before rotation, handshakes showed %v, want %d and not %d", before, tt.old, serial)
			}
			reconnects0 := func() uint64 { st, _ := a.tr.PeerStatus(2); return st.StreamReconnects }()
			// Force new connections from a to b: b drops every client
			// connection, and a's readers redial, with no restart.
			b.srv.CloseClientConnections()
			waitFor(t, "a handshake with the new certificate", func() bool {
				return slices.Contains(seen.all()[len(before):], serial)
			})
			waitFor(t, "a's readers to reconnect", func() bool {
				st, _ := a.tr.PeerStatus(2)
				return st.StreamReconnects >= reconnects0+2
			})
			waitStreams(t, b.testNode, a.testNode)
			b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 2, 1, 1)})
			recvFrom(t, a.testNode, 2, raftpb.MsgApp)
			snap := newMsg(raftpb.MsgSnap, 1, 2, 1)
			snap.Snapshot = newSnapshot(1, 2, 1, 0).Message.Snapshot
			a.tr.Send([]*raftpb.Message{snap})
			recvFrom(t, b.testNode, 1, raftpb.MsgSnap)
		})
	}
}

// TestTLSUnixSockets sends over unix:// and unixs:// peer URLs, whose host is
// the name of the socket.
func TestTLSUnixSockets(t *testing.T) {
	tests := []struct {
		scheme string
		tls    bool
	}{
		{"unix", false},
		{"unixs", true},
	}
	for _, tt := range tests {
		t.Run(tt.scheme, func(t *testing.T) {
			t.Chdir(t.TempDir()) // the socket name is relative
			ca := newTestCA(t, "cluster CA")
			var clientTLS *tls.Config
			if tt.tls {
				clientTLS = &tls.Config{RootCAs: ca.pool}
			}
			a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.TLSClientConfig = clientTLS }))
			b := newNode(t, withID(2))
			l, err := net.Listen("unix", "b.sock")
			if err != nil {
				t.Fatal(err)
			}
			if tt.tls {
				l = tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*ca.issue(t, 5, true, "b.sock")}})
			}
			var opened atomic.Int64
			srv := &http.Server{Handler: b.tr.Handler(), ConnState: func(_ net.Conn, s http.ConnState) {
				if s == http.StateNew {
					opened.Add(1)
				}
			}}
			served := make(chan struct{})
			go func() {
				defer close(served)
				srv.Serve(l)
			}()
			t.Cleanup(func() {
				srv.Close()
				<-served
			})

			if err := a.tr.AddPeer(2, []string{tt.scheme + "://b.sock"}); err != nil {
				t.Fatal(err)
			}
			if err := b.tr.AddPeer(1, []string{a.url}); err != nil {
				t.Fatal(err)
			}
			// b's writers attach once a's readers dialled it over the socket.
			waitStreams(t, b, a)
			b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 2, 1, 1)})
			recvFrom(t, a, 2, raftpb.MsgApp)

			streams := opened.Load()
			const n = 5
			for i := range uint64(n) {
				snap := newMsg(raftpb.MsgSnap, 1, 2, i)
				snap.Snapshot = newSnapshot(1, 2, i, 0).Message.Snapshot
				a.tr.Send([]*raftpb.Message{snap}) // by the pipeline
				recvFrom(t, b, 1, raftpb.MsgSnap)
				// Raft hears SnapshotFinish once the POST's answer is
				// read, its connection back in the pool: only then may
				// the next POST be expected to reuse it.
				waitFor(t, "the POST to be answered", func() bool { return len(a.raft.snapshotReports()) > int(i) })
			}
			// Pipeline POSTs made one after another reuse kept-alive
			// connections, as they do over TCP. A POST may still open one
			// when the previous answer's connection is not back in the
			// pool yet, but not every POST.
			if extra := opened.Load() - streams; extra >= n {
				t.Errorf("%d sequential pipeline POSTs over %s opened %d connections, want fewer", n, tt.scheme, extra)
			}
		})
	}
}

func TestProxyEnvIgnored(t *testing.T) {
	dead := "http://" + freeAddr(t)
	for _, k := range []string{"HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"} {
		t.Setenv(k, dead)
	}
	t.Setenv("NO_PROXY", "")
	t.Setenv("no_proxy", "")
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connectStreams(t, a, b)
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 1)})
	recvFrom(t, b, 1, raftpb.MsgHeartbeat)
	snap := newMsg(raftpb.MsgSnap, 2, 1, 1)
	snap.Snapshot = newSnapshot(1, 1, 1, 0).Message.Snapshot
	b.tr.Send([]*raftpb.Message{snap})
	recvFrom(t, a, 2, raftpb.MsgSnap)
	// Go's environment proxy never applies to loopback targets, so traffic
	// flowing here does not prove much on its own: check that neither
	// round tripper consults a proxy at all.
	rts := map[string]*http.Transport{"pipeline": a.tr.shared.pipeline}
	for _, typ := range streamTypes {
		rts[typ.String()] = a.tr.shared.streams[typ]
	}
	for name, tr := range rts {
		switch {
		case tr == nil:
			t.Errorf("%s round tripper: got nil, want an *http.Transport", name)
		case tr.Proxy != nil:
			t.Errorf("%s round tripper: got a Proxy func, want none", name)
		}
	}
}

func TestProxyFunc(t *testing.T) {
	b := newNode(t, withID(2))
	// The proxy records what it is asked for and hands it to b.
	var (
		mu      sync.Mutex
		proxied []string
	)
	bh := b.tr.Handler()
	proxy := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		proxied = append(proxied, r.Method+" "+r.URL.String())
		mu.Unlock()
		if !r.URL.IsAbs() {
			http.Error(w, "not a proxy request", http.StatusBadRequest)
			return
		}
		bh.ServeHTTP(w, r)
	})
	proxyURL, err := url.Parse(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int64
	a := newNode(t, withID(1), withConfig(func(tr *Transport) {
		tr.ConnReadTimeout = time.Second // probes every 100 ms
		tr.Proxy = func(r *http.Request) (*url.URL, error) {
			asked.Add(1)
			if "http://"+r.URL.Host == b.url {
				return proxyURL, nil
			}
			return nil, nil
		}
	}))
	connect(t, a, b)
	waitStreams(t, b, a) // a's readers reached b through the proxy
	b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 2, 1, 1), newMsg(raftpb.MsgHeartbeat, 2, 1, 1)})
	// The two take different streams: their order is not kept.
	var got []raftpb.MessageType
	for range 2 {
		m := a.raft.recv(t)
		if m.GetFrom() != 2 {
			t.Errorf("a got a message from %d, want 2", m.GetFrom())
		}
		got = append(got, m.GetType())
	}
	slices.Sort(got)
	if want := []raftpb.MessageType{raftpb.MsgApp, raftpb.MsgHeartbeat}; !slices.Equal(got, want) {
		t.Errorf("a got %v, want %v", got, want)
	}
	snap := newMsg(raftpb.MsgSnap, 1, 2, 1)
	snap.Snapshot = newSnapshot(1, 2, 1, 0).Message.Snapshot
	a.tr.Send([]*raftpb.Message{snap})
	recvFrom(t, b, 1, raftpb.MsgSnap)

	want := []string{
		"GET " + b.url + "/raft/stream/msgapp/1",
		"GET " + b.url + "/raft/stream/message/1",
		"POST " + b.url + "/raft",
		"GET " + b.url + "/raft/probing",
	}
	waitFor(t, "the proxy to see every kind of request", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, w := range want {
			if !slices.Contains(proxied, w) {
				return false
			}
		}
		return true
	})
	if asked.Load() == 0 {
		t.Error("the Proxy function was never called")
	}
}
