package rafthttp

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3/raftpb"
)

// idPrefix is the URI SAN prefix of the identity tests' certificates:
// spiffe://cluster.test/member/<hex ID>.
const idPrefix = "spiffe://cluster.test/member/"

// memberURI is the URI SAN that speaks for member id.
func memberURI(t testing.TB, id uint64) *url.URL {
	t.Helper()
	u, err := url.Parse(idPrefix + formatID(id))
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// issueMember returns a certificate of ca that speaks for member (its one
// URI SAN); member 0 gives one without a URI SAN.
func (ca *testCA) issueMember(t *testing.T, serial int64, server bool, member uint64) *tls.Certificate {
	t.Helper()
	return ca.issueWith(t, serial, server, func(c *x509.Certificate) {
		if member != 0 {
			c.URIs = []*url.URL{memberURI(t, member)}
		}
	})
}

// handshakes records, for each TLS handshake an endpoint accepted, the
// serial of the certificate it was shown and the common name of the root
// that verified it.
type handshakes struct {
	mu   sync.Mutex
	seen []handshake
}

type handshake struct {
	serial int64
	root   string
}

func (h *handshakes) record(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
		return errors.New("test: a handshake without a verified certificate")
	}
	chain := cs.VerifiedChains[0]
	h.mu.Lock()
	h.seen = append(h.seen, handshake{cs.PeerCertificates[0].SerialNumber.Int64(), chain[len(chain)-1].Subject.CommonName})
	h.mu.Unlock()
	return nil
}

func (h *handshakes) all() []handshake {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.seen)
}

// serials are the serials of every accepted handshake.
func (h *handshakes) serials() []int64 {
	var out []int64
	for _, s := range h.all() {
		out = append(out, s.serial)
	}
	return out
}

// idOpts are the options of an idNode.
type idOpts struct {
	member    uint64 // the member its certificates speak for; 0: its own ID
	anonymous bool   // certificates without a URI SAN, speaking for no member
	check     bool   // PeerIdentity set (IdentityFromURISAN(idPrefix))
	rotating  bool   // roots by ClientRootCAs, else by TLSClientConfig.RootCAs
}

// idNode is a transport served over mutual TLS whose certificates speak
// for a member, and whose trust roots can change while it runs: its server
// asks for them on every handshake (GetConfigForClient), and its transport
// on every dial when rotating (ClientRootCAs). Serials are id*100 (server)
// and id*100+1 (client).
type idNode struct {
	*testNode
	reg                    *prometheus.Registry
	serverCert, clientCert atomic.Pointer[tls.Certificate]
	roots                  atomic.Pointer[x509.CertPool]
	rootAsks               atomic.Int64 // calls of ClientRootCAs
	clientsSeen            handshakes   // client certificates our server accepted
	serversSeen            handshakes   // server certificates our transport accepted
	requests               atomic.Int64 // requests that reached the handler
	serverLog              syncBuffer
}

func newIDNode(t *testing.T, id uint64, ca *testCA, o idOpts, opts ...nodeOption) *idNode {
	t.Helper()
	member := o.member
	switch {
	case o.anonymous:
		member = 0
	case member == 0:
		member = id
	}
	n := &idNode{reg: prometheus.NewRegistry()}
	n.roots.Store(ca.pool)
	n.serverCert.Store(ca.issueMember(t, int64(id)*100, true, member))
	n.clientCert.Store(ca.issueMember(t, int64(id)*100+1, false, member))
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return n.serverCert.Load(), nil }
	server := &tls.Config{
		GetCertificate: getCert,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				ClientAuth:       tls.RequireAndVerifyClientCert,
				ClientCAs:        n.roots.Load(),
				GetCertificate:   getCert,
				VerifyConnection: n.clientsSeen.record,
				// A resumed session would not be verified against
				// the ClientCAs of the moment (README "TLS").
				SessionTicketsDisabled: true,
			}, nil
		},
	}
	client := &tls.Config{
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return n.clientCert.Load(), nil },
		VerifyConnection:     n.serversSeen.record,
	}
	if !o.rotating {
		client.RootCAs = ca.pool
	}
	configure := func(tr *Transport) {
		tr.Registerer = n.reg
		if o.rotating {
			tr.ClientRootCAs = func() *x509.CertPool {
				n.rootAsks.Add(1)
				return n.roots.Load()
			}
		}
		if o.check {
			tr.PeerIdentity = IdentityFromURISAN(idPrefix)
		}
	}
	count := func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			n.requests.Add(1)
			h.ServeHTTP(w, r)
		})
	}
	n.testNode = newNode(t, append([]nodeOption{withID(id), withTLS(server, client), withServerLog(&n.serverLog),
		wrapHandler(count), withConfig(configure)}, opts...)...)
	return n
}

// refused is the value of rafthttp_peer_identity_refused_total for route
// and reason.
func (n *idNode) refused(t testing.TB, route, reason string) float64 {
	t.Helper()
	return metricValue(t, n.reg, "rafthttp_peer_identity_refused_total", map[string]string{"Route": route, "Reason": reason})
}

func idTestNodes(ns ...*idNode) []*testNode {
	out := make([]*testNode, len(ns))
	for i, n := range ns {
		out[i] = n.testNode
	}
	return out
}

// TestIdentityFromURISAN reads member IDs from URI SANs, SPIFFE's way:
// exactly one URI SAN, the prefix, then the ID and nothing more.
func TestIdentityFromURISAN(t *testing.T) {
	uris := func(ss ...string) *x509.Certificate {
		c := &x509.Certificate{}
		for _, s := range ss {
			u, err := url.Parse(s)
			if err != nil {
				t.Fatal(err)
			}
			c.URIs = append(c.URIs, u)
		}
		return c
	}
	tests := []struct {
		name   string
		prefix string
		cert   *x509.Certificate
		want   uint64 // 0: refused
	}{
		{name: "member", prefix: idPrefix, cert: uris(idPrefix + "a1"), want: 0xa1},
		{name: "upper case ID", prefix: idPrefix, cert: uris(idPrefix + "A1"), want: 0xa1},
		{name: "leading zeros", prefix: idPrefix, cert: uris(idPrefix + "00a1"), want: 0xa1},
		{name: "largest ID", prefix: idPrefix, cert: uris(idPrefix + "ffffffffffffffff"), want: 1<<64 - 1},
		{name: "DNS SANs do not count", prefix: idPrefix, cert: &x509.Certificate{DNSNames: []string{"a1.member"}, URIs: uris(idPrefix + "b2").URIs}, want: 0xb2},
		{name: "no URI SAN", prefix: idPrefix, cert: &x509.Certificate{DNSNames: []string{"a1"}}},
		{name: "two URI SANs", prefix: idPrefix, cert: uris(idPrefix+"a1", idPrefix+"a1")},
		{name: "two URI SANs, one elsewhere", prefix: idPrefix, cert: uris(idPrefix+"a1", "spiffe://other/x")},
		{name: "another trust domain", prefix: idPrefix, cert: uris("spiffe://other.test/member/a1")},
		{name: "prefix only", prefix: idPrefix, cert: uris(idPrefix)},
		{name: "ID zero", prefix: idPrefix, cert: uris(idPrefix + "0")},
		{name: "17 digits", prefix: idPrefix, cert: uris(idPrefix + "1ffffffffffffffff")},
		{name: "not hex", prefix: idPrefix, cert: uris(idPrefix + "a1x")},
		{name: "deeper path", prefix: idPrefix, cert: uris(idPrefix + "a1/b2")},
		{name: "dot segments", prefix: idPrefix, cert: uris(idPrefix + "../member/a1")},
		{name: "escaped digit", prefix: idPrefix, cert: uris(idPrefix + "%61%31")},
		{name: "query", prefix: idPrefix, cert: uris(idPrefix + "a1?x=1")},
		{name: "signed", prefix: idPrefix, cert: uris(idPrefix + "+a1")},
		{name: "hex prefix", prefix: idPrefix, cert: uris(idPrefix + "0xa1")},
		{name: "trust domain case differs", prefix: idPrefix, cert: uris("spiffe://CLUSTER.test/member/a1")},
		{name: "empty prefix", prefix: "", cert: uris("a1")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IdentityFromURISAN(tc.prefix)(tc.cert)
			switch {
			case tc.want == 0 && err == nil:
				t.Errorf("got member %x, want an error", got)
			case tc.want == 0 && !errors.Is(err, ErrNoPeerIdentity):
				t.Errorf("got error %v, want one wrapping ErrNoPeerIdentity", err)
			case tc.want != 0 && (err != nil || got != tc.want):
				t.Errorf("got member %x, %v; want %x", got, err, tc.want)
			}
		})
	}
}

// TestIdentityFromDNSSAN reads member IDs from DNS SANs under a suffix:
// exactly one name under it, one label, the ID.
func TestIdentityFromDNSSAN(t *testing.T) {
	const suffix = "members.cluster.test"
	tests := []struct {
		name   string
		suffix string
		names  []string
		want   uint64 // 0: refused
	}{
		{name: "member", suffix: suffix, names: []string{"a1." + suffix}, want: 0xa1},
		{name: "beside host names", suffix: suffix, names: []string{"node-1.cluster.test", "b2." + suffix, "localhost"}, want: 0xb2},
		{name: "case ignored", suffix: suffix, names: []string{"A1.Members.Cluster.TEST"}, want: 0xa1},
		{name: "suffix given with its dot", suffix: "." + suffix, names: []string{"a1." + suffix}, want: 0xa1},
		{name: "upper-case suffix", suffix: strings.ToUpper(suffix), names: []string{"a1." + suffix}, want: 0xa1},
		{name: "none under the suffix", suffix: suffix, names: []string{"a1.cluster.test"}},
		{name: "the suffix itself", suffix: suffix, names: []string{suffix}},
		{name: "two members", suffix: suffix, names: []string{"a1." + suffix, "b2." + suffix}},
		{name: "the same member twice", suffix: suffix, names: []string{"a1." + suffix, "A1." + suffix}},
		{name: "wildcard", suffix: suffix, names: []string{"*." + suffix}},
		{name: "wildcard beside a member", suffix: suffix, names: []string{"a1." + suffix, "*." + suffix}},
		{name: "deeper name", suffix: suffix, names: []string{"x.a1." + suffix}},
		{name: "ends like the suffix", suffix: suffix, names: []string{"a1.xmembers.cluster.test"}},
		{name: "ID zero", suffix: suffix, names: []string{"0." + suffix}},
		{name: "not hex", suffix: suffix, names: []string{"node1." + suffix}},
		{name: "no DNS SAN", suffix: suffix},
		{name: "empty suffix", suffix: "", names: []string{"a1"}},
		{name: "a dot alone", suffix: ".", names: []string{"a1."}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := IdentityFromDNSSAN(tc.suffix)(&x509.Certificate{DNSNames: tc.names})
			switch {
			case tc.want == 0 && err == nil:
				t.Errorf("got member %x, want an error", got)
			case tc.want == 0 && !errors.Is(err, ErrNoPeerIdentity):
				t.Errorf("got error %v, want one wrapping ErrNoPeerIdentity", err)
			case tc.want != 0 && (err != nil || got != tc.want):
				t.Errorf("got member %x, %v; want %x", got, err, tc.want)
			}
		})
	}
}

// TestPeerIdentityRequests runs the identity check on each raft route, with
// the connection state of the request set by the test: which certificate,
// verified or not, against which claims (X-Server-From, the stream's path,
// the message's From), and what the answer and the metric say.
func TestPeerIdentityRequests(t *testing.T) {
	verified := func(member uint64) func(t *testing.T) *tls.ConnectionState {
		return func(t *testing.T) *tls.ConnectionState {
			c := &x509.Certificate{}
			if member != 0 {
				c.URIs = []*url.URL{memberURI(t, member)}
			}
			return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}, VerifiedChains: [][]*x509.Certificate{{c}}}
		}
	}
	unverified := func(t *testing.T) *tls.ConnectionState {
		cs := verified(htPeerID)(t)
		cs.VerifiedChains = nil
		return cs
	}
	noTLS := func(*testing.T) *tls.ConnectionState { return nil }
	ours := setHeader("X-Rafthttp-Features", oursAnnounce) // etcd's headers (htHeaders) announce nothing
	claim := func(from string) func(http.Header) {
		return func(h http.Header) {
			h.Set("X-Rafthttp-Features", oursAnnounce)
			h.Set("X-Server-From", from)
		}
	}
	msg := func(typ raftpb.MessageType, from uint64) func(t *testing.T) io.Reader {
		return func(t *testing.T) io.Reader { return bytes.NewReader(htMarshal(t, newMsg(typ, from, htLocalID, 1))) }
	}
	snap := func(from uint64) func(t *testing.T) io.Reader {
		return func(t *testing.T) io.Reader {
			return bytes.NewReader(append(htEnvelope(t, newMsg(raftpb.MsgSnap, from, htLocalID, 12)), "payload"...))
		}
	}
	batch := func(froms ...uint64) func(t *testing.T) io.Reader {
		return func(t *testing.T) io.Reader {
			var b []byte
			for i, from := range froms {
				typ := raftpb.MsgHeartbeat
				if from != htPeerID {
					typ = raftpb.MsgVoteResp
				}
				b = appendMessageFrame(b, newMsg(typ, from, htLocalID, uint64(i+1)))
			}
			return bytes.NewReader(b)
		}
	}
	forwarded := func(t *testing.T) io.Reader {
		return bytes.NewReader(append(appendMessageFrame(nil, newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 1)),
			appendMessageFrame(nil, newMsg(raftpb.MsgProp, htStranger, htLocalID, 2))...))
	}
	// htBatch is POST /raft/batch, with a pipeline POST's headers.
	const htBatch = htKind(100)
	const streamB2, streamC3 = "/raft/stream/message/b2", "/raft/stream/msgapp/c3"
	tests := []struct {
		name     string
		kind     htKind
		path     string // default: the kind's route
		off      bool   // PeerIdentity nil
		conn     func(t *testing.T) *tls.ConnectionState
		header   func(http.Header)
		body     func(t *testing.T) io.Reader
		wantCode int
		// wantReason is the refusal counted, with route the kind's; ""
		// for none.
		wantReason string
		processed  bool // the message reached raft
	}{
		{name: "pipeline from the certificate's member", kind: htPipeline, conn: verified(htPeerID), header: ours,
			body: msg(raftpb.MsgHeartbeat, htPeerID), wantCode: http.StatusNoContent, processed: true},
		{name: "pipeline claiming another member", kind: htPipeline, conn: verified(htPeerID), header: claim("c3"),
			body: msg(raftpb.MsgHeartbeat, htStranger), wantCode: http.StatusForbidden, wantReason: identityMismatch},
		{name: "pipeline claiming another member, from etcd", kind: htPipeline, conn: verified(htPeerID), header: setHeader("X-Server-From", "c3"),
			body: msg(raftpb.MsgHeartbeat, htStranger), wantCode: http.StatusPreconditionFailed, wantReason: identityMismatch},
		{name: "pipeline without X-Server-From", kind: htPipeline, conn: verified(htPeerID), header: delHeader("X-Server-From"),
			body: msg(raftpb.MsgHeartbeat, htPeerID), wantCode: http.StatusPreconditionFailed, wantReason: identityMismatch},
		{name: "pipeline message from another member", kind: htPipeline, conn: verified(htPeerID), header: ours,
			body: msg(raftpb.MsgVoteResp, htStranger), wantCode: http.StatusForbidden, wantReason: identityMessageFrom},
		{name: "pipeline forwarded proposal", kind: htPipeline, conn: verified(htPeerID), header: ours,
			body: msg(raftpb.MsgProp, htStranger), wantCode: http.StatusNoContent, processed: true},
		{name: "pipeline forwarded read index", kind: htPipeline, conn: verified(htPeerID), header: ours,
			body: msg(raftpb.MsgReadIndex, htStranger), wantCode: http.StatusNoContent, processed: true},
		{name: "pipeline forwarded leadership transfer", kind: htPipeline, conn: verified(htPeerID), header: ours,
			body: msg(raftpb.MsgTransferLeader, htStranger), wantCode: http.StatusNoContent, processed: true},
		{name: "pipeline over plain HTTP", kind: htPipeline, conn: noTLS, header: ours,
			body: msg(raftpb.MsgHeartbeat, htPeerID), wantCode: http.StatusForbidden, wantReason: identityNoCertificate},
		{name: "pipeline with an unverified certificate", kind: htPipeline, conn: unverified, header: ours,
			body: msg(raftpb.MsgHeartbeat, htPeerID), wantCode: http.StatusForbidden, wantReason: identityUnverified},
		{name: "pipeline with a certificate naming no member", kind: htPipeline, conn: verified(0), header: ours,
			body: msg(raftpb.MsgHeartbeat, htPeerID), wantCode: http.StatusForbidden, wantReason: identityNone},
		{name: "pipeline claiming another member, check off", kind: htPipeline, off: true, conn: verified(htPeerID), header: claim("c3"),
			body: msg(raftpb.MsgVoteResp, htStranger), wantCode: http.StatusNoContent, processed: true},

		{name: "batch from the certificate's member", kind: htBatch, conn: verified(htPeerID), header: ours,
			body: batch(htPeerID, htPeerID), wantCode: http.StatusNoContent, processed: true},
		{name: "batch with one message from another member", kind: htBatch, conn: verified(htPeerID), header: ours,
			body: batch(htPeerID, htStranger, htPeerID), wantCode: http.StatusForbidden, wantReason: identityMessageFrom},
		{name: "batch with a forwarded proposal", kind: htBatch, conn: verified(htPeerID), header: ours,
			body: forwarded, wantCode: http.StatusNoContent, processed: true},
		{name: "batch claiming another member", kind: htBatch, conn: verified(htPeerID), header: claim("c3"),
			body: batch(htStranger), wantCode: http.StatusForbidden, wantReason: identityMismatch},

		{name: "stream of another member", kind: htStream, path: streamC3, conn: verified(htPeerID), header: claim("c3"),
			wantCode: http.StatusForbidden, wantReason: identityMismatch},
		{name: "stream of another member, honest X-Server-From", kind: htStream, path: streamC3, conn: verified(htPeerID), header: ours,
			wantCode: http.StatusForbidden, wantReason: identityMismatch},
		{name: "stream of another member, from etcd", kind: htStream, path: streamC3, conn: verified(htPeerID), header: setHeader("X-Server-From", "c3"),
			wantCode: http.StatusForbidden, wantReason: identityMismatch},
		{name: "stream without a certificate", kind: htStream, path: streamB2, conn: noTLS, header: ours,
			wantCode: http.StatusForbidden, wantReason: identityNoCertificate},
		{name: "stream with a malformed path is the handler's", kind: htStream, path: "/raft/stream/message/xyz", conn: verified(htPeerID), header: ours,
			wantCode: http.StatusNotFound},

		{name: "snapshot from the certificate's member", kind: htSnapshot, conn: verified(htPeerID), header: ours,
			body: snap(htPeerID), wantCode: http.StatusNoContent, processed: true},
		{name: "snapshot claiming another member", kind: htSnapshot, conn: verified(htPeerID), header: claim("c3"),
			body: snap(htStranger), wantCode: http.StatusForbidden, wantReason: identityMismatch},
		{name: "snapshot claiming another member, from etcd", kind: htSnapshot, conn: verified(htPeerID), header: setHeader("X-Server-From", "c3"),
			body: snap(htStranger), wantCode: http.StatusPreconditionFailed, wantReason: identityMismatch},
		{name: "snapshot from another member", kind: htSnapshot, conn: verified(htPeerID), header: ours,
			body: snap(htStranger), wantCode: http.StatusForbidden, wantReason: identityMessageFrom},
	}
	routes := map[htKind]struct{ method, path, route string }{
		htPipeline: {http.MethodPost, RaftPrefix, identityRoutePipeline},
		htBatch:    {http.MethodPost, pipelineBatchPath, identityRoutePipeline},
		htStream:   {http.MethodGet, streamB2, identityRouteStream},
		htSnapshot: {http.MethodPost, RaftSnapshotPrefix, identityRouteSnapshot},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			store := &memStore{}
			tr, fr := newNode(t, htLocal(), withRegisterer(reg), withStore(store), withConfig(func(tr *Transport) {
				if !tc.off {
					tr.PeerIdentity = IdentityFromURISAN(idPrefix)
				}
			})).parts()
			for _, id := range []uint64{htPeerID, htStranger} {
				if err := tr.AddPeer(id, []string{"https://" + freeAddr(t)}); err != nil {
					t.Fatal(err)
				}
			}
			rt := routes[tc.kind]
			p := rt.path
			if tc.path != "" {
				p = tc.path
			}
			var body io.Reader = http.NoBody
			if tc.body != nil {
				body = tc.body(t)
			}
			req := httptest.NewRequest(rt.method, p, body)
			req.Header = htHeaders(tc.kind)
			tc.header(req.Header)
			req.TLS = tc.conn(t)
			rec := httptest.NewRecorder()
			tr.Handler().ServeHTTP(rec, req)

			if rec.Code != tc.wantCode {
				t.Errorf("status %d, want %d (body %q)", rec.Code, tc.wantCode, rec.Body.String())
			}
			marked := rec.Header().Get("X-Rafthttp-Refused")
			refusal := strings.HasPrefix(rec.Body.String(), "peer identity refused: ")
			if want := tc.wantReason != ""; (marked == "peer-identity") != want || refusal != want {
				t.Errorf("X-Rafthttp-Refused %q, body %q: want an identity refusal %v", marked, rec.Body.String(), want)
			}
			for _, route := range []string{identityRoutePipeline, identityRouteStream, identityRouteSnapshot} {
				for _, reason := range []string{identityNoCertificate, identityUnverified, identityNone, identityMismatch, identityMessageFrom} {
					want := 0.0
					if route == rt.route && reason == tc.wantReason {
						want = 1
					}
					got := metricValue(t, reg, "rafthttp_peer_identity_refused_total", map[string]string{"Route": route, "Reason": reason})
					if got != want {
						t.Errorf("rafthttp_peer_identity_refused_total{Route=%s,Reason=%s} = %v, want %v", route, reason, got, want)
					}
				}
			}
			if got := len(fr.msgc) > 0; got != tc.processed {
				t.Errorf("raft got a message: %v, want %v", got, tc.processed)
			}
			if tc.kind == htSnapshot && !tc.processed {
				if saved, _ := store.saved(); len(saved) != 0 {
					t.Errorf("the store saved %d snapshots of a refused request, want none", len(saved))
				}
			}
		})
	}
}

// TestPeerIdentityImpostor: member 2's valid certificate cannot send as
// member 3 on any route, nor receive member 3's streams, and member 2
// cannot put member 3's name on the messages it sends: a real transport
// with ID 3 holding member 2's certificates talks to member 1, which checks
// identities; the honest member 2 runs beside it.
func TestPeerIdentityImpostor(t *testing.T) {
	ca := newTestCA(t, "cluster CA")
	a := newIDNode(t, 1, ca, idOpts{check: true}, withStore(&memStore{}))
	b := newIDNode(t, 2, ca, idOpts{})
	errc := make(chan error, 1)
	mallory := newIDNode(t, 3, ca, idOpts{member: 2}, withConfig(func(tr *Transport) { tr.ErrorC = errc }))
	connect(t, idTestNodes(a, b)...)
	if err := a.tr.AddPeer(3, []string{mallory.url}); err != nil {
		t.Fatal(err)
	}
	if err := mallory.tr.AddPeer(1, []string{a.url}); err != nil {
		t.Fatal(err)
	}
	waitStreamsUp(t, a.testNode, b.testNode)

	// As member 3, on every route: its stream dials (GET
	// /raft/stream/*/3), a heartbeat by the pipeline (its streams are
	// down) and a snapshot.
	waitFor(t, "member 1 to refuse the impostor's stream dials", func() bool {
		return a.refused(t, identityRouteStream, identityMismatch) >= 2
	})
	mallory.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 3, 1, 1)})
	waitFor(t, "the impostor's heartbeat to be reported unreachable", func() bool { return mallory.raft.unreachableCount(1) > 0 })
	if err := snapWait(t, snapSend(mallory.testNode, 1, 5, io.NopCloser(strings.NewReader("payload")), 7)); !errors.Is(err, ErrPeerIdentity) {
		t.Errorf("SendSnapshot as member 3: %v, want ErrPeerIdentity", err)
	}
	for _, route := range []string{identityRoutePipeline, identityRouteSnapshot} {
		if got := a.refused(t, route, identityMismatch); got < 1 {
			t.Errorf("%s refusals counted: %v, want at least 1", route, got)
		}
	}
	st, _ := mallory.tr.PeerStatus(1)
	if st.LastError == nil || !strings.Contains(st.LastError.Error(), "peer identity refused") {
		t.Errorf("the impostor's view of member 1: LastError %v, want an identity refusal", st.LastError)
	}
	select {
	case err := <-errc:
		t.Errorf("the impostor's ErrorC got %v: a refusal is not a removal", err)
	default:
	}
	p3, _ := a.tr.get(3)
	for _, typ := range streamTypes {
		if p3.writers[typ].isWorking() {
			t.Errorf("member 1 attached a %v stream for member 3", typ)
		}
	}

	// Member 2's certificate, honest X-Server-From, member 3's stream.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: ca.pool, Certificates: []tls.Certificate{*b.clientCert.Load()}}}}
	t.Cleanup(client.CloseIdleConnections)
	req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, a.url+"/raft/stream/message/3", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = htHeaders(htStream)
	req.Header.Set("X-Server-From", "2")
	req.Header.Set("X-Etcd-Cluster-ID", formatID(testClusterID))
	req.Header.Set("X-Raft-To", "1")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readErrorBody(resp.Body)
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(body, "not for the stream of member 3") {
		t.Errorf("member 2 dialling member 3's stream: %d %q, want 403 naming the stream's member", resp.StatusCode, body)
	}

	// Member 2 itself, putting member 3's name on what it sends: a vote
	// on the message stream is dropped, a snapshot by the pipeline
	// refused; its own messages arrive.
	b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgVoteResp, 3, 1, 1)})
	forged := newMsg(raftpb.MsgSnap, 3, 1, 1)
	forged.Snapshot = newSnapshot(3, 1, 1, 0).Message.Snapshot
	b.tr.Send([]*raftpb.Message{forged})
	waitFor(t, "the forged snapshot to be reported failed", func() bool {
		return slices.ContainsFunc(b.raft.snapshotReports(), func(r snapshotReport) bool { return r.id == 1 })
	})
	b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 2, 1, 1)})
	recvFrom(t, a.testNode, 2, raftpb.MsgHeartbeat) // the same stream as the vote: after it
	for _, c := range []struct{ route, reason string }{
		{identityRouteStream, identityMessageFrom}, {identityRoutePipeline, identityMessageFrom},
	} {
		if got := a.refused(t, c.route, c.reason); got != 1 {
			t.Errorf("refusals %s/%s: %v, want 1", c.route, c.reason, got)
		}
	}
	if n := len(a.raft.msgc); n != 0 {
		t.Errorf("member 1's raft got %d more messages, want none from the impostor or the forger", n)
	}
	if strings.Contains(a.serverLog.String(), "panic") {
		t.Errorf("member 1's server log: %s", a.serverLog.String())
	}
}

// TestPeerIdentityDial: a member dialling member 3 refuses a server whose
// certificate speaks for another member in the TLS handshake, so that no
// request reaches it, whether its roots are fixed or asked per dial, for a
// peer (streams, pipeline, snapshot, probes) and for a remote (pipeline).
func TestPeerIdentityDial(t *testing.T) {
	tests := []struct {
		name     string
		member   uint64 // whom the server's certificates speak for; 0: nobody
		remote   bool   // AddRemote rather than AddPeer
		rotating bool   // ClientRootCAs
	}{
		{name: "peer speaking for 3", member: 3},
		{name: "peer presenting 2's certificate", member: 2},
		{name: "peer presenting 2's certificate, rotating roots", member: 2, rotating: true},
		{name: "peer presenting a certificate naming no member", member: 0},
		{name: "remote speaking for 3", member: 3, remote: true},
		{name: "remote presenting 2's certificate", member: 2, remote: true},
		{name: "remote presenting 2's certificate, rotating roots", member: 2, remote: true, rotating: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ca := newTestCA(t, "cluster CA")
			a := newIDNode(t, 1, ca, idOpts{check: true, rotating: tc.rotating}, withConfig(func(tr *Transport) {
				tr.ConnReadTimeout = time.Second // probes every 100 ms
			}))
			c := newIDNode(t, 3, ca, idOpts{member: tc.member, anonymous: tc.member == 0}, withStore(&memStore{}))
			if err := c.tr.AddPeer(1, []string{a.url}); err != nil {
				t.Fatal(err)
			}
			add := a.tr.AddPeer
			if tc.remote {
				add = a.tr.AddRemote
			}
			if err := add(3, []string{c.url}); err != nil {
				t.Fatal(err)
			}
			a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 3, 1)})

			if tc.member == 3 {
				recvFrom(t, c.testNode, 1, raftpb.MsgHeartbeat)
				if !tc.remote {
					waitFor(t, "member 1's streams from 3", func() bool {
						st, _ := a.tr.PeerStatus(3)
						return st.Streams[0].Reader.Up && st.Streams[1].Reader.Up
					})
				}
				if got := a.refused(t, identityRouteDial, identityMismatch) + a.refused(t, identityRouteDial, identityNone); got != 0 {
					t.Errorf("dials refused: %v, want 0", got)
				}
				return
			}

			reason := identityMismatch
			if tc.member == 0 {
				reason = identityNone
			}
			// A peer's two readers, two probers, pipeline and a snapshot
			// each dial; a remote's pipeline.
			want := 1.0
			if !tc.remote {
				want = 4
				if err := snapWait(t, snapSend(a.testNode, 3, 5, io.NopCloser(strings.NewReader("payload")), 7)); !errors.Is(err, ErrPeerIdentity) {
					t.Errorf("SendSnapshot: %v, want ErrPeerIdentity", err)
				}
				waitFor(t, "member 1 to record the refusal", func() bool {
					st, _ := a.tr.PeerStatus(3)
					return st.LastError != nil && strings.Contains(st.LastError.Error(), "peer identity refused")
				})
			}
			waitFor(t, "member 1 to refuse member 3's server", func() bool {
				return a.refused(t, identityRouteDial, reason) >= want
			})
			waitFor(t, "the heartbeat to be reported unreachable", func() bool { return a.raft.unreachableCount(3) > 0 })
			if n := c.requests.Load(); n != 0 {
				t.Errorf("%d requests reached the server, want none", n)
			}
			if n := len(c.raft.msgc); n != 0 {
				t.Errorf("the server's raft got %d messages, want none", n)
			}
			if tc.rotating && a.rootAsks.Load() == 0 {
				t.Error("ClientRootCAs was never asked")
			}
		})
	}
}

// exchange sends a message each way over the streams, and a snapshot from
// a to b by the pipeline, and waits for them.
func exchange(t *testing.T, a, b *idNode) {
	t.Helper()
	waitStreamsUp(t, a.testNode, b.testNode)
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, a.tr.ID, b.tr.ID, 1)})
	recvFrom(t, b.testNode, a.tr.ID, raftpb.MsgApp)
	b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, b.tr.ID, a.tr.ID, 1)})
	recvFrom(t, a.testNode, b.tr.ID, raftpb.MsgApp)
	snap := newMsg(raftpb.MsgSnap, a.tr.ID, b.tr.ID, 1)
	snap.Snapshot = newSnapshot(a.tr.ID, b.tr.ID, 1, 0).Message.Snapshot
	a.tr.Send([]*raftpb.Message{snap})
	recvFrom(t, b.testNode, a.tr.ID, raftpb.MsgSnap)
}

// reconnect makes a and b drop every connection they served, and waits
// until each has redialled both streams from the other: the connections
// in use are then new, each verified by a handshake made since.
func reconnect(t *testing.T, a, b *idNode) {
	t.Helper()
	reconnects := func(n, peer *idNode) uint64 {
		st, _ := n.tr.PeerStatus(peer.tr.ID)
		return st.StreamReconnects
	}
	ra, rb := reconnects(a, b), reconnects(b, a)
	a.srv.CloseClientConnections()
	b.srv.CloseClientConnections()
	waitFor(t, "both to redial both streams", func() bool {
		return reconnects(a, b) >= ra+2 && reconnects(b, a) >= rb+2
	})
}

// TestTrustRootRotation rotates the cluster's CA on both sides of a
// running pair, without a restart: each server asks for the client CAs on
// every handshake (tls.Config.GetConfigForClient), each transport for its
// roots on every dial (ClientRootCAs). New connections verify against the
// new roots; once the old CA is dropped, a certificate it issued is
// refused, as a server's certificate and as a client's. Both check peer
// identity, which rotates with the certificates.
func TestTrustRootRotation(t *testing.T) {
	tests := []struct {
		name string
		// revert gives a or b a certificate of the old CA again and
		// returns its serial.
		revert func(t *testing.T, oldCA *testCA, a, b *idNode) int64
		// refuser is the side whose verification refuses it.
		refuser func(a, b *idNode) *handshakes
		// refusal is how the refusal shows: in a's view of b, or in
		// b's server log.
		refusal func(a, b *idNode) string
	}{
		{
			name: "server certificate of the old CA",
			revert: func(t *testing.T, oldCA *testCA, _, b *idNode) int64 {
				b.serverCert.Store(oldCA.issueMember(t, 290, true, 2))
				return 290
			},
			refuser: func(a, _ *idNode) *handshakes { return &a.serversSeen },
			refusal: func(a, _ *idNode) string {
				st, _ := a.tr.PeerStatus(2)
				if st.LastError == nil {
					return ""
				}
				return st.LastError.Error()
			},
		},
		{
			name: "client certificate of the old CA",
			revert: func(t *testing.T, oldCA *testCA, a, _ *idNode) int64 {
				a.clientCert.Store(oldCA.issueMember(t, 191, false, 1))
				return 191
			},
			refuser: func(_, b *idNode) *handshakes { return &b.clientsSeen },
			refusal: func(_, b *idNode) string { return b.serverLog.String() },
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			oldCA, newCA := newTestCA(t, "old CA"), newTestCA(t, "new CA")
			a := newIDNode(t, 1, oldCA, idOpts{check: true, rotating: true})
			b := newIDNode(t, 2, oldCA, idOpts{check: true, rotating: true})
			connect(t, idTestNodes(a, b)...)
			exchange(t, a, b)

			// Trust both CAs, then move to certificates of the new one.
			both := oldCA.pool.Clone()
			both.AddCert(newCA.cert)
			for _, n := range []*idNode{a, b} {
				n.roots.Store(both)
			}
			for _, n := range []*idNode{a, b} {
				id := n.tr.ID
				n.serverCert.Store(newCA.issueMember(t, int64(id)*100+10, true, id))
				n.clientCert.Store(newCA.issueMember(t, int64(id)*100+11, false, id))
			}
			reconnect(t, a, b)
			exchange(t, a, b)

			// Drop the old CA.
			asks := a.rootAsks.Load()
			var mark [4]int
			sides := []*handshakes{&a.serversSeen, &a.clientsSeen, &b.serversSeen, &b.clientsSeen}
			for i, h := range sides {
				mark[i] = len(h.all())
			}
			for _, n := range []*idNode{a, b} {
				n.roots.Store(newCA.pool)
			}
			reconnect(t, a, b)
			exchange(t, a, b)
			for i, h := range sides {
				since := h.all()[mark[i]:]
				if len(since) == 0 {
					t.Errorf("side %d: no handshake since the old CA was dropped", i)
				}
				for _, s := range since {
					if s.root != "new CA" || s.serial%100 < 10 {
						t.Errorf("side %d: accepted certificate %d verified by %q, want a new one verified by the new CA", i, s.serial, s.root)
					}
				}
			}
			if a.rootAsks.Load() == asks {
				t.Error("ClientRootCAs was not asked for the new connections")
			}

			// A certificate of the old CA is refused now.
			serial := tc.revert(t, oldCA, a, b)
			b.srv.CloseClientConnections() // a redials b
			waitFor(t, "the old CA's certificate to be refused", func() bool {
				return strings.Contains(tc.refusal(a, b), "x509: certificate signed by unknown authority")
			})
			if slices.Contains(tc.refuser(a, b).serials(), serial) {
				t.Errorf("the old CA's certificate %d was accepted", serial)
			}
			st, _ := a.tr.PeerStatus(2)
			for _, s := range st.Streams {
				if s.Reader.Up {
					t.Errorf("a's %s reader from b is up over an old certificate", s.Type)
				}
			}
		})
	}
}

// TestPeerIdentityConfig: what Start refuses, and the peer URLs refused
// once PeerIdentity is set (no certificate would be shown over them).
func TestPeerIdentityConfig(t *testing.T) {
	roots := func() *x509.CertPool { return x509.NewCertPool() }
	insecure := &tls.Config{InsecureSkipVerify: true}
	proxy := func(*http.Request) (*url.URL, error) { return nil, nil }
	tests := []struct {
		name    string
		set     func(tr *Transport)
		wantErr string // "" for none
	}{
		{name: "PeerIdentity", set: func(tr *Transport) { tr.PeerIdentity = IdentityFromURISAN(idPrefix) }},
		{name: "ClientRootCAs", set: func(tr *Transport) { tr.ClientRootCAs = roots }},
		{name: "PeerIdentity with a Proxy", set: func(tr *Transport) {
			tr.PeerIdentity = IdentityFromURISAN(idPrefix)
			tr.Proxy = proxy
		}},
		{name: "InsecureSkipVerify alone", set: func(tr *Transport) { tr.TLSClientConfig = insecure }},
		{name: "PeerIdentity with InsecureSkipVerify", wantErr: "InsecureSkipVerify", set: func(tr *Transport) {
			tr.PeerIdentity = IdentityFromURISAN(idPrefix)
			tr.TLSClientConfig = insecure
		}},
		{name: "ClientRootCAs with InsecureSkipVerify", wantErr: "InsecureSkipVerify", set: func(tr *Transport) {
			tr.ClientRootCAs = roots
			tr.TLSClientConfig = insecure
		}},
		{name: "ClientRootCAs with a Proxy", wantErr: "Proxy", set: func(tr *Transport) {
			tr.ClientRootCAs = roots
			tr.Proxy = proxy
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := &Transport{ID: 1, ClusterID: 1, Raft: newFakeRaft()}
			tc.set(tr)
			err := tr.Start()
			defer tr.Stop()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("Start: %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("Start: %v, want an error naming %s", err, tc.wantErr)
			}
		})
	}

	urlTests := []struct {
		name  string
		url   string
		check bool
		ok    bool
	}{
		{name: "https, check on", url: "https://127.0.0.1:2380", check: true, ok: true},
		{name: "unixs, check on", url: "unixs://peer.sock", check: true, ok: true},
		{name: "http, check on", url: "http://127.0.0.1:2380", check: true},
		{name: "unix, check on", url: "unix://peer.sock", check: true},
		{name: "http, check off", url: "http://127.0.0.1:2380", ok: true},
	}
	for _, tc := range urlTests {
		t.Run(tc.name, func(t *testing.T) {
			tr := newNode(t, unserved(), withConfig(func(tr *Transport) {
				if tc.check {
					tr.PeerIdentity = IdentityFromURISAN(idPrefix)
				}
			})).tr
			if err := tr.AddPeer(2, []string{"https://127.0.0.1:2381"}); err != nil {
				t.Fatal(err)
			}
			errs := map[string]error{
				"AddPeer":    tr.AddPeer(3, []string{tc.url}),
				"AddRemote":  tr.AddRemote(4, []string{tc.url}),
				"UpdatePeer": tr.UpdatePeer(2, []string{tc.url}),
				"request":    tr.addRequestRemote(5, parseURLsForTest(t, tc.url)),
			}
			for what, err := range errs {
				switch {
				case tc.ok && err != nil:
					t.Errorf("%s(%s): %v, want nil", what, tc.url, err)
				case !tc.ok && !errors.Is(err, ErrInvalidURL):
					t.Errorf("%s(%s): %v, want ErrInvalidURL", what, tc.url, err)
				}
			}
		})
	}
}

// TestPeerIdentityOff: with neither PeerIdentity nor ClientRootCAs set,
// every member is dialled with the Transport's clients, with
// TLSClientConfig as given and net/http's own handshake: etcd's way.
func TestPeerIdentityOff(t *testing.T) {
	tests := []struct {
		name      string
		set       func(tr *Transport)
		own       bool // each member gets its own clients
		customTLS bool // the clients make their handshakes (dialTLS)
	}{
		{name: "off", set: func(*Transport) {}},
		{name: "PeerIdentity", set: func(tr *Transport) { tr.PeerIdentity = IdentityFromURISAN(idPrefix) }, own: true},
		{name: "ClientRootCAs", set: func(tr *Transport) { tr.ClientRootCAs = x509.NewCertPool }, customTLS: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &tls.Config{ServerName: "peer"}
			tr := newNode(t, unserved(), withConfig(func(tr *Transport) {
				tr.TLSClientConfig = cfg
				tc.set(tr)
			})).tr
			if err := tr.AddPeer(2, []string{"https://" + freeAddr(t)}); err != nil {
				t.Fatal(err)
			}
			if err := tr.AddRemote(3, []string{"https://" + freeAddr(t)}); err != nil {
				t.Fatal(err)
			}
			p, _ := tr.get(2)
			tr.mu.RLock()
			r := tr.remotes[3]
			tr.mu.RUnlock()
			if got := p.clients != tr.shared || r.clients != tr.shared; got != tc.own {
				t.Errorf("members have clients of their own: %v, want %v", got, tc.own)
			}
			if got := p.pipeline.rt != p.clients.pipeline || r.pipeline.rt != r.clients.pipeline; got {
				t.Error("a pipeline does not post with its owner's client")
			}
			c := p.clients
			rts := []*http.Transport{c.pipeline, c.streams[streamTypeMsgAppV2], c.streams[streamTypeMessage]}
			for _, rt := range rts {
				if got := rt.TLSClientConfig == cfg; got != (!tc.own && !tc.customTLS) {
					t.Errorf("TLSClientConfig passed as given: %v, want %v", got, !tc.own && !tc.customTLS)
				}
				if got := rt.DialTLSContext != nil; got != tc.customTLS {
					t.Errorf("DialTLSContext set: %v, want %v", got, tc.customTLS)
				}
			}
			if tc.own && r.clients.streams[streamTypeMessage] != nil {
				t.Error("a remote has stream clients")
			}
		})
	}
}

// TestDialTLSNoRoots: a ClientRootCAs that returns nil fails the dial before
// it is made (nil would mean the system's roots).
func TestDialTLSNoRoots(t *testing.T) {
	var dialled atomic.Bool
	raw := func(context.Context, string, string) (net.Conn, error) {
		dialled.Store(true)
		return nil, errors.New("test: not to be dialled")
	}
	_, err := dialTLS(raw, &tls.Config{}, func() *x509.CertPool { return nil })(t.Context(), "tcp", "127.0.0.1:2380")
	if !errors.Is(err, errNoClientRoots) || dialled.Load() {
		t.Errorf("dial with no roots: %v (dialled %v), want errNoClientRoots before dialling", err, dialled.Load())
	}
}

// TestPeerIdentityUnixSockets: over unixs://, the server's certificate is
// checked for its member as over TCP, and the roots are asked per dial; the
// handshake's server name is the socket's.
func TestPeerIdentityUnixSockets(t *testing.T) {
	tests := []struct {
		name   string
		member uint64 // whom b's socket certificate speaks for
	}{
		{name: "speaks for the member", member: 2},
		{name: "speaks for another", member: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Chdir(t.TempDir()) // the socket name is relative
			ca := newTestCA(t, "cluster CA")
			reg := prometheus.NewRegistry()
			var asks atomic.Int64
			a := newNode(t, withID(1), withRegisterer(reg), withConfig(func(tr *Transport) {
				tr.TLSClientConfig = &tls.Config{}
				tr.ClientRootCAs = func() *x509.CertPool {
					asks.Add(1)
					return ca.pool
				}
				tr.PeerIdentity = IdentityFromURISAN(idPrefix)
			}))
			b := newNode(t, withID(2))
			l, err := net.Listen("unix", "b.sock")
			if err != nil {
				t.Fatal(err)
			}
			cert := ca.issueWith(t, 5, true, func(c *x509.Certificate) {
				c.DNSNames = []string{"b.sock"}
				c.URIs = []*url.URL{memberURI(t, tc.member)}
			})
			var requests atomic.Int64
			srv := startServer(tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{*cert}}),
				http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					requests.Add(1)
					b.tr.Handler().ServeHTTP(w, r)
				}), io.Discard)
			t.Cleanup(func() {
				srv.CloseClientConnections()
				srv.Close()
			})
			if err := a.tr.AddPeer(2, []string{"unixs://b.sock"}); err != nil {
				t.Fatal(err)
			}
			if err := b.tr.AddPeer(1, []string{a.url}); err != nil {
				t.Fatal(err)
			}
			if tc.member == 2 {
				waitStreams(t, b, a) // a's readers dialled b over the socket
				b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 2, 1, 1)})
				recvFrom(t, a, 2, raftpb.MsgApp)
			} else {
				waitFor(t, "a to refuse b's socket certificate", func() bool {
					return metricValue(t, reg, "rafthttp_peer_identity_refused_total",
						map[string]string{"Route": identityRouteDial, "Reason": identityMismatch}) >= 2
				})
				if n := requests.Load(); n != 0 {
					t.Errorf("%d requests reached b's socket, want none", n)
				}
			}
			if asks.Load() == 0 {
				t.Error("ClientRootCAs was never asked")
			}
		})
	}
}
