package etcd37

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	etcdhttp "go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// idPrefix is the URI SAN prefix of the members' certificates when they
// carry an identity.
const idPrefix = "spiffe://cluster.test/member/"

// pki issues the certificates of a mutual-TLS test: a CA, and per member one
// certificate for both ends (etcd uses its peer certificate as server and
// as client), with IP SAN 127.0.0.1 and, optionally, the member's identity
// as a URI SAN.
type pki struct {
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "cluster CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &pki{dir: t.TempDir(), cert: cert, key: key, pool: x509.NewCertPool()}
	p.pool.AddCert(cert)
	p.write(t, "ca.pem", &pem.Block{Type: "CERTIFICATE", Bytes: der})
	return p
}

func (p *pki) write(t *testing.T, name string, b *pem.Block) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(b), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// issue returns member id's certificate, speaking for it if withIdentity,
// and the paths of its PEM files.
func (p *pki) issue(t *testing.T, id uint64, withIdentity bool) (cert tls.Certificate, certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(id) + 100), Subject: pkix.Name{CommonName: fmt.Sprint("member ", id)},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	if withIdentity {
		u, err := url.Parse(idPrefix + types.ID(id).String())
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = []*url.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = p.write(t, fmt.Sprintf("member-%d.pem", id), &pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyFile = p.write(t, fmt.Sprintf("member-%d-key.pem", id), &pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	return cert, certFile, keyFile
}

// statusTap records the status of every answer to a POST /raft.
type statusTap struct {
	mu       sync.Mutex
	statuses []int
}

type statusWriter struct {
	http.ResponseWriter
	code *int
}

func (w *statusWriter) WriteHeader(code int) {
	*w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *statusTap) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != rafthttp.RaftPrefix {
			h.ServeHTTP(w, r)
			return
		}
		code := http.StatusOK
		h.ServeHTTP(&statusWriter{ResponseWriter: w, code: &code}, r)
		s.mu.Lock()
		s.statuses = append(s.statuses, code)
		s.mu.Unlock()
	})
}

func (s *statusTap) all() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]int(nil), s.statuses...)
}

// counterValue sums the series of a counter with the given labels.
func counterValue(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			matched := 0
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v == l.GetValue() {
					matched++
				}
			}
			if matched == len(labels) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

// TestMutualTLS runs our Transport (member 1) and etcd 3.7's (member 2)
// over mutual TLS, each served on its own TLS listener (etcd's: its peer
// listener, with client certificate authentication). With our identity
// check off, they talk as two etcd members do, whatever SANs the
// certificates carry. With it on, an etcd member whose certificate speaks
// for it is talked to as before; one whose certificate names no member is
// refused both ways, and refused its POSTs with 412, not the 403 that
// etcd would take for its removal: it keeps running, ErrorC silent.
func TestMutualTLS(t *testing.T) {
	tests := []struct {
		name         string
		check        bool // our PeerIdentity
		etcdIdentity bool // etcd's certificate carries its URI SAN
		refused      bool
	}{
		{name: "check off, no identities", check: false, etcdIdentity: false},
		{name: "check off, identities", check: false, etcdIdentity: true},
		{name: "check on, etcd's certificate speaks for it", check: true, etcdIdentity: true},
		{name: "check on, etcd's certificate names no member", check: true, etcdIdentity: false, refused: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := newPKI(t)
			ourCert, _, _ := p.issue(t, 1, true)
			_, etcdCertFile, etcdKeyFile := p.issue(t, 2, tc.etcdIdentity)

			// etcd, member 2, on its TLS peer listener.
			etcdLogs := &logBuffer{}
			etcdLg := newLogger(etcdLogs, "etcd-2")
			tlsInfo := transport.TLSInfo{CertFile: etcdCertFile, KeyFile: etcdKeyFile,
				TrustedCAFile: filepath.Join(p.dir, "ca.pem"), ClientCertAuth: true, Logger: etcdLg}
			etcdLn, err := etcdhttp.NewListener(url.URL{Scheme: "https", Host: "127.0.0.1:0"}, &tlsInfo)
			if err != nil {
				t.Fatalf("etcd NewListener: %v", err)
			}
			etcdURL := "https://" + etcdLn.Addr().String()
			etcdRaft := newRecordingRaft()
			etcdErrc := make(chan error, 1)
			etcdTr := &etcdhttp.Transport{
				Logger: etcdLg, DialTimeout: 2 * time.Second, TLSInfo: tlsInfo,
				ID: types.ID(2), URLs: types.MustNewURLs([]string{etcdURL}), ClusterID: types.ID(clusterID),
				Raft: etcdRaft, ServerStats: stats.NewServerStats("", "2"), LeaderStats: stats.NewLeaderStats(etcdLg, "2"),
				ErrorC: etcdErrc,
			}
			if err := etcdTr.Start(); err != nil {
				etcdLn.Close()
				t.Fatalf("etcd Start: %v", err)
			}
			// Counts the requests that reach etcd's handler (etcd's stream
			// handler needs an http.Flusher: no streamWatch here).
			var etcdRequests atomic.Int64
			etcdH := etcdTr.Handler()
			etcdSrv := &http.Server{Handler: mount(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				etcdRequests.Add(1)
				etcdH.ServeHTTP(w, r)
			}))}
			etcdServed := make(chan struct{})
			go func() {
				defer close(etcdServed)
				etcdSrv.Serve(etcdLn)
			}()

			// Ours, member 1.
			ourLogs := &logBuffer{}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ourURL := "https://" + ln.Addr().String()
			reg := prometheus.NewRegistry()
			ourRaft := newRecordingRaft()
			ourErrc := make(chan error, 1)
			tr := &rafthttp.Transport{ID: 1, ClusterID: clusterID, URLs: []string{ourURL}, Raft: ourRaft,
				Logger: newLogger(ourLogs, "ours-1"), Registerer: reg, ErrorC: ourErrc,
				TLSClientConfig: &tls.Config{Certificates: []tls.Certificate{ourCert}, RootCAs: p.pool}}
			if tc.check {
				tr.PeerIdentity = rafthttp.IdentityFromURISAN(idPrefix)
			}
			if err := tr.Start(); err != nil {
				ln.Close()
				t.Fatalf("Start: %v", err)
			}
			tap := &statusTap{}
			ourWatch := newStreamWatch()
			ourSrv := &http.Server{Handler: mount(tap.wrap(ourWatch.wrap(tr.Handler())))}
			ourServed := make(chan struct{})
			go func() {
				defer close(ourServed)
				ourSrv.Serve(tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{ourCert},
					ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: p.pool}))
			}()
			t.Cleanup(func() {
				tr.Stop()
				etcdTr.Stop()
				ourSrv.Close()
				etcdSrv.Close()
				<-ourServed
				<-etcdServed
				if t.Failed() {
					t.Logf("logs of ours:\n%s\nlogs of etcd:\n%s", ourLogs, etcdLogs)
				}
			})

			if err := tr.AddPeer(2, []string{etcdURL}); err != nil {
				t.Fatal(err)
			}
			etcdTr.AddPeer(types.ID(1), []string{ourURL})

			if !tc.refused {
				eventually(t, "streams up both ways over mutual TLS", func() bool {
					s, ok := tr.PeerStatus(2)
					return ok && s.StreamsUp() && ourWatch.get("msgapp").open == 1 && ourWatch.get("message").open == 1
				})
				for _, m := range []*raftpb.Message{
					{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(1)},
					{Type: raftpb.MsgApp.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(1), Index: proto.Uint64(3)},
					{Type: raftpb.MsgSnap.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(1),
						Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(5), Term: proto.Uint64(1)}}},
				} {
					tr.Send([]*raftpb.Message{m})
					receiveType(t, etcdRaft, "etcd", m.GetType(), 1)
					etcdTr.Send([]*raftpb.Message{{Type: m.GetType().Enum(), From: proto.Uint64(2), To: proto.Uint64(1),
						Term: m.Term, Index: m.Index, Snapshot: m.Snapshot}})
					receiveType(t, ourRaft, "ours", m.GetType(), 2)
				}
				if got := counterValue(t, reg, "rafthttp_peer_identity_refused_total", nil); got != 0 {
					t.Errorf("identity refusals: %v, want none", got)
				}
				return
			}

			// Refused: our dials fail in the handshake, etcd's stream
			// dials get 403, its POSTs 412.
			eventually(t, "our dials to etcd refused", func() bool {
				return counterValue(t, reg, "rafthttp_peer_identity_refused_total",
					map[string]string{"Route": "dial", "Reason": "no_identity"}) >= 2
			})
			eventually(t, "etcd's stream dials refused", func() bool {
				return counterValue(t, reg, "rafthttp_peer_identity_refused_total",
					map[string]string{"Route": "stream", "Reason": "no_identity"}) >= 2
			})
			etcdTr.Send([]*raftpb.Message{{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(2), To: proto.Uint64(1), Term: proto.Uint64(1)}})
			eventually(t, "etcd's pipeline POST refused", func() bool { return len(tap.all()) > 0 })
			eventually(t, "etcd to report member 1 unreachable", func() bool { return etcdRaft.unreachableCount(1) > 0 })
			for _, code := range tap.all() {
				if code != http.StatusPreconditionFailed {
					t.Errorf("etcd's POST answered %d, want 412 (etcd reads a 403 as its removal)", code)
				}
			}
			if n := etcdRequests.Load(); n != 0 {
				t.Errorf("%d of our requests reached etcd, want none", n)
			}
			if n := len(ourRaft.msgc); n != 0 {
				t.Errorf("our raft got %d messages from etcd, want none", n)
			}
			select {
			case err := <-etcdErrc:
				t.Errorf("etcd's ErrorC got %v, want nothing: a refusal is not a removal", err)
			default:
			}
			select {
			case err := <-ourErrc:
				t.Errorf("our ErrorC got %v, want nothing", err)
			default:
			}
			if st, _ := tr.PeerStatus(2); st.LastError == nil || !strings.Contains(st.LastError.Error(), "peer identity refused") {
				t.Errorf("our LastError for etcd: %v, want an identity refusal", st.LastError)
			}
		})
	}
}

// receiveType waits for a message of type typ from `from` on r.
func receiveType(t *testing.T, r *recordingRaft, who string, typ raftpb.MessageType, from uint64) {
	t.Helper()
	select {
	case m := <-r.msgc:
		if m.GetType() != typ || m.GetFrom() != from {
			t.Fatalf("%s received %v from %d, want %v from %d", who, m.GetType(), m.GetFrom(), typ, from)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s received no %v from %d", who, typ, from)
	}
}
