package rafthttp_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"sync"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// exampleCA is a cluster's certificate authority, made up on the spot. A
// real cluster loads its CA and each member's certificate and key from
// files (tls.LoadX509KeyPair, x509.CertPool.AppendCertsFromPEM).
type exampleCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newExampleCA() (*exampleCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "example cluster CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &exampleCA{cert: cert, key: key, pool: pool}, nil
}

// memberCert issues a member's certificate. As etcd's peer certificates
// usually are, it is both a server certificate (the member's listener, at
// 127.0.0.1 here) and a client certificate (its dials to other members).
func (ca *exampleCA) memberCert(serial int64, name string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// clientNames records the common name of the client certificate of each
// request a member's listener serves.
type clientNames struct {
	mu    sync.Mutex
	names map[string]bool
}

// wrap records r's client certificate, then lets h serve r.
func (c *clientNames) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			c.mu.Lock()
			c.names[r.TLS.PeerCertificates[0].Subject.CommonName] = true
			c.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

// Mutual TLS, as etcd's --peer-client-cert-auth: each member's listener
// requires a client certificate signed by the cluster's CA, and each
// Transport presents its member's certificate, through TLSClientConfig,
// when it dials https peer URLs (streams, pipeline, snapshots and probes
// alike). The server side is the application's own http.Server.
func ExampleTransport_mutualTLS() {
	const clusterID = 0x1000
	ca, err := newExampleCA()
	if err != nil {
		fmt.Println(err)
		return
	}
	r1, r2 := newExampleRaft(), newExampleRaft()
	trs := [2]*rafthttp.Transport{}
	var urls [2]string
	seen := &clientNames{names: map[string]bool{}}
	for i, r := range []rafthttp.Raft{r1, r2} {
		id := uint64(i + 1)
		cert, err := ca.memberCert(int64(id+1), fmt.Sprintf("member-%d", id))
		if err != nil {
			fmt.Println(err)
			return
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Println(err)
			return
		}
		urls[i] = "https://" + ln.Addr().String()
		trs[i] = &rafthttp.Transport{
			ID: id, ClusterID: clusterID, Raft: r, URLs: []string{urls[i]},
			// Client side: trust the cluster's CA, present our certificate.
			TLSClientConfig: &tls.Config{RootCAs: ca.pool, Certificates: []tls.Certificate{cert}},
		}
		if err := trs[i].Start(); err != nil {
			fmt.Println(err)
			return
		}
		// Server side: require a client certificate from the cluster's CA.
		srv := rafthttp.NewServer(seen.wrap(trs[i].Handler()))
		srv.TLSConfig = &tls.Config{
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    ca.pool,
		}
		// Handshakes refused below would be logged to stderr.
		srv.ErrorLog = log.New(io.Discard, "", 0)
		go srv.ServeTLS(ln, "", "")
		defer srv.Close()
	}
	tr1, tr2 := trs[0], trs[1]
	// Deferred after the servers, so run before them.
	defer tr1.Stop()
	defer tr2.Stop()
	if err := tr1.AddPeer(2, []string{urls[1]}); err != nil {
		fmt.Println(err)
		return
	}
	if err := tr2.AddPeer(1, []string{urls[0]}); err != nil {
		fmt.Println(err)
		return
	}

	tr1.Send([]*raftpb.Message{{
		Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(2),
	}})
	select {
	case m := <-r2.received:
		fmt.Println("delivered over mutual TLS:", m.GetType())
	case <-time.After(10 * time.Second):
		fmt.Println("timed out")
		return
	}
	seen.mu.Lock()
	fmt.Println("member 2 was dialled with member-1's certificate:", seen.names["member-1"])
	seen.mu.Unlock()

	// A client that trusts the CA but has no certificate of its own is
	// turned away during the handshake.
	noCert := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}}
	defer noCert.CloseIdleConnections()
	resp, err := noCert.Get(urls[1] + "/raft/probing")
	if err == nil {
		resp.Body.Close()
	}
	fmt.Println("refused without a client certificate:", err != nil)
	// Output:
	// delivered over mutual TLS: MsgHeartbeat
	// member 2 was dialled with member-1's certificate: true
	// refused without a client certificate: true
}
