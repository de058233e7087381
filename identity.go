package rafthttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Peer identity (issue 20). With mutual TLS as etcd does it, a certificate
// is not bound to a member: anyone holding one the cluster's CA signed may
// claim to be any member in X-Server-From, open streams in its name and
// receive what is meant for it. When Transport.PeerIdentity is set, a
// verified certificate speaks for one member, and for that one only:
//
//   - Inbound (checkPeerIdentity, from checkRequest, which every raft route
//     runs): a request to the pipeline, a stream or the snapshot route must
//     come with a client certificate the server verified, whose member is
//     the one the request names: its X-Server-From and, for a stream, the
//     member in its path, to whom the stream carries messages. The message
//     in a pipeline or snapshot body must be from that member too
//     (checkMessageFrom), and so must the messages on the streams we dial
//     (the stream reader), except those raft forwards on another member's
//     behalf (fromSpeaksFor). /raft/probing stays open: it answers a health
//     probe and carries nothing of raft's.
//   - Outbound (verifyServerIdentity): the TLS handshake of every connection
//     we dial for member n, by a stream reader, the pipeline, a snapshot or
//     a prober, fails unless the server's certificate speaks for n, before
//     a byte of a request is written. Each peer and remote then has HTTP
//     clients of its own (clientsFor), so that a connection made to one
//     member is never reused for another at the same address.
//
// Refusals are counted (rafthttp_peer_identity_refused_total, by route and
// reason) and logged, rate-limited. Transport.ClientRootCAs, set with or
// without PeerIdentity, gives each new connection we dial the trust roots
// of the moment (dialTLS), so that a CA bundle rotates without a restart;
// the server side does the same with tls.Config.GetConfigForClient.

// Routes of rafthttp_peer_identity_refused_total: the raft routes refusing
// a request, and our own dials refusing a server.
const (
	identityRoutePipeline = "pipeline"
	identityRouteStream   = "stream"
	identityRouteSnapshot = "snapshot"
	identityRouteDial     = "dial"
)

// Reasons of rafthttp_peer_identity_refused_total.
const (
	// identityNoCertificate: a request without a client certificate (or
	// not over TLS).
	identityNoCertificate = "no_certificate"
	// identityUnverified: a certificate whose chain was not verified (a
	// server with tls.RequireAnyClientCert, a client with
	// InsecureSkipVerify): what it says cannot be trusted.
	identityUnverified = "unverified"
	// identityNone: PeerIdentity found no member in the certificate.
	identityNone = "no_identity"
	// identityMismatch: the certificate speaks for another member than the
	// one the request names (X-Server-From, a stream's path) or the one
	// dialled.
	identityMismatch = "mismatch"
	// identityMessageFrom: a message's From names another member than the
	// certificate of the connection it came on.
	identityMessageFrom = "message_from"
)

// IdentityFromURISAN returns a Transport.PeerIdentity that reads the member
// ID from the certificate's URI SAN, SPIFFE's convention: the URI must be
// prefix followed by the member ID in hex (1 to 16 digits, either case,
// not zero). With prefix "spiffe://cluster.example/member/", the URI
// spiffe://cluster.example/member/a1 speaks for member 0xa1. Like an X.509
// SVID, the certificate must carry exactly one URI SAN: one with more is
// refused whatever they say, so that no certificate speaks for two members.
// The prefix is compared byte for byte with the URI as Go renders it
// (url.URL.String), so it should be in that form, and end with "/" unless
// the ID directly follows something else that ends a segment. An empty
// prefix gives a PeerIdentity that refuses every certificate. Errors wrap
// ErrNoPeerIdentity.
func IdentityFromURISAN(prefix string) func(cert *x509.Certificate) (uint64, error) {
	return func(cert *x509.Certificate) (uint64, error) {
		if prefix == "" {
			return 0, fmt.Errorf("%w: IdentityFromURISAN was given an empty prefix", ErrNoPeerIdentity)
		}
		switch len(cert.URIs) {
		case 0:
			return 0, fmt.Errorf("%w: no URI SAN", ErrNoPeerIdentity)
		case 1:
		default:
			return 0, fmt.Errorf("%w: %d URI SANs, exactly one allowed", ErrNoPeerIdentity, len(cert.URIs))
		}
		u := cert.URIs[0].String()
		rest, ok := strings.CutPrefix(u, prefix)
		if !ok {
			return 0, fmt.Errorf("%w: URI SAN %s does not start with %q", ErrNoPeerIdentity, clip(u, clipQuoted), prefix)
		}
		id, err := parseMemberID(rest)
		if err != nil {
			return 0, fmt.Errorf("%w: URI SAN %s: %w", ErrNoPeerIdentity, clip(u, clipQuoted), err)
		}
		return id, nil
	}
}

// IdentityFromDNSSAN returns a Transport.PeerIdentity that reads the member
// ID from a DNS SAN <ID>.<suffix>, the ID in hex (1 to 16 digits, either
// case, not zero): with suffix "members.cluster.example", the DNS name
// a1.members.cluster.example speaks for member 0xa1. Names are compared
// without regard to case. The certificate may carry other DNS names (its
// host names), but exactly one under the suffix, and that one must be an ID
// and nothing more: a certificate with two, or with a wildcard or a deeper
// name under the suffix, is refused, so that no certificate speaks for two
// members. A leading dot of suffix is ignored; an empty suffix gives a
// PeerIdentity that refuses every certificate. Errors wrap
// ErrNoPeerIdentity.
func IdentityFromDNSSAN(suffix string) func(cert *x509.Certificate) (uint64, error) {
	dotted := "." + strings.ToLower(strings.TrimPrefix(suffix, "."))
	return func(cert *x509.Certificate) (uint64, error) {
		if dotted == "." {
			return 0, fmt.Errorf("%w: IdentityFromDNSSAN was given an empty suffix", ErrNoPeerIdentity)
		}
		var id uint64
		var found string
		for _, name := range cert.DNSNames {
			label, ok := cutSuffixFold(name, dotted)
			if !ok {
				continue
			}
			if found != "" {
				return 0, fmt.Errorf("%w: two DNS SANs under %q: %s and %s", ErrNoPeerIdentity, dotted[1:],
					clip(found, clipQuoted), clip(name, clipQuoted))
			}
			found = name
			var err error
			if id, err = parseMemberID(label); err != nil {
				return 0, fmt.Errorf("%w: DNS SAN %s: %w", ErrNoPeerIdentity, clip(name, clipQuoted), err)
			}
		}
		if found == "" {
			return 0, fmt.Errorf("%w: no DNS SAN under %q", ErrNoPeerIdentity, dotted[1:])
		}
		return id, nil
	}
}

// cutSuffixFold is strings.CutSuffix, ignoring ASCII case; suffix is lower
// case.
func cutSuffixFold(s, suffix string) (string, bool) {
	if len(s) < len(suffix) || !strings.EqualFold(s[len(s)-len(suffix):], suffix) {
		return "", false
	}
	return s[:len(s)-len(suffix)], true
}

// parseMemberID parses the member ID in a SAN: 1 to 16 hex digits, either
// case, not zero, and nothing else.
func parseMemberID(s string) (uint64, error) {
	if s == "" || len(s) > maxIDLen {
		return 0, fmt.Errorf("member ID %s is not 1 to %d hex digits", clip(s, clipQuoted), maxIDLen)
	}
	id, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("member ID %s is not hexadecimal", clip(s, clipQuoted))
	}
	if id == 0 {
		return 0, errors.New("member ID 0 names no member")
	}
	return id, nil
}

// identityRoute names the raft route of a request to us in the metric: the
// handlers that call checkRequest serve these paths (a resumable
// snapshot's queries count with the snapshot route).
func identityRoute(p string) string {
	switch p {
	case RaftPrefix, pipelineBatchPath:
		return identityRoutePipeline
	case RaftSnapshotPrefix, snapshotResumePath:
		return identityRouteSnapshot
	}
	return identityRouteStream
}

// checkPeerIdentity is the identity check of checkRequest: with
// PeerIdentity set, the request's client certificate, verified by the
// server, must speak for the member its X-Server-From names and, on a
// stream route, for the member its path names (the stream's messages go to
// that member). It records that member in rh.identity for the checks of
// the message the body carries (checkMessageFrom), and answers the request
// itself when it refuses it. With PeerIdentity nil it passes every request.
func (t *Transport) checkPeerIdentity(w http.ResponseWriter, r *http.Request, rh *requestHeaders) bool {
	if t.cfg.peerIdentity == nil {
		return true
	}
	route := identityRoute(r.URL.Path)
	id, reason, detail := t.requestIdentity(r, rh, route)
	if reason != "" {
		t.refuseIdentity(w, r, rh, route, reason, detail)
		return false
	}
	rh.identity = id
	return true
}

// requestIdentity returns the member r's client certificate speaks for, or
// why r is refused (a reason for the metric, a detail for the answer).
func (t *Transport) requestIdentity(r *http.Request, rh *requestHeaders, route string) (id uint64, reason, detail string) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return 0, identityNoCertificate, "no client certificate"
	}
	if len(r.TLS.VerifiedChains) == 0 {
		// A server that asks for certificates without verifying them
		// (tls.RequireAnyClientCert) lets anyone write any SAN.
		return 0, identityUnverified, "the client certificate was not verified by the server"
	}
	id, err := t.cfg.peerIdentity(r.TLS.PeerCertificates[0])
	switch {
	case err != nil:
		return 0, identityNone, "the client certificate names no member: " + err.Error()
	case id == 0:
		return 0, identityNone, "the client certificate names no member: PeerIdentity returned 0"
	}
	if rh.fromErr != nil || rh.from != id {
		return id, identityMismatch, fmt.Sprintf("the client certificate speaks for member %s, not for X-Server-From %s",
			formatID(id), clip(rh.rawFrom, clipQuoted))
	}
	if route == identityRouteStream {
		// The path's last element is the member the stream is for; a
		// malformed one is left to the handler, which answers 404.
		if to, err := parseID(path.Base(r.URL.Path)); err == nil && to != id {
			return id, identityMismatch, fmt.Sprintf("the client certificate speaks for member %s, not for the stream of member %s",
				formatID(id), formatID(to))
		}
	}
	return id, "", ""
}

// checkMessageFrom refuses m, the message of a pipeline or snapshot
// request that passed checkPeerIdentity, if its From is another member than
// the certificate's (see fromSpeaksFor): X-Server-From is only a header,
// and raft believes From. It answers the request itself when it refuses.
func (t *Transport) checkMessageFrom(w http.ResponseWriter, r *http.Request, rh *requestHeaders, m *raftpb.Message) bool {
	if rh.identity == 0 || fromSpeaksFor(m, rh.identity) {
		return true
	}
	t.refuseIdentity(w, r, rh, identityRoute(r.URL.Path), identityMessageFrom,
		fmt.Sprintf("the client certificate speaks for member %s, not for the message's sender %s",
			formatID(rh.identity), formatID(m.GetFrom())))
	return false
}

// fromSpeaksFor reports whether m, received over a connection whose
// certificate speaks for member id, may carry its From: raft sets From to
// the sending member, except on the messages a follower forwards to its
// leader on another member's behalf (a proposal or a read index request
// keeps the From of the member that sent it; a leadership transfer's From
// names the transferee).
func fromSpeaksFor(m *raftpb.Message, id uint64) bool {
	if m.GetFrom() == id {
		return true
	}
	switch m.GetType() {
	case raftpb.MsgProp, raftpb.MsgReadIndex, raftpb.MsgTransferLeader:
		return true
	}
	return false
}

// refuseIdentity answers a request refused by the identity check, counts it
// and logs it (rate-limited per source: each misconfigured member must be
// seen). The answer is 403 with detail in its body and X-Rafthttp-Refused:
// peer-identity, except to a POST whose sender did not announce
// featureIdentityRefusal: etcd, and our versions before it, read any 403
// on a POST as "this member was removed" and stop, so that a member whose
// certificate is not ready would be shut down instead of refused. Those get
// 412, which they report as an unhandled precondition failure, body
// quoted. A stream dial's 403 is only an unhandled status to every dialer.
func (t *Transport) refuseIdentity(w http.ResponseWriter, r *http.Request, rh *requestHeaders, route, reason, detail string) {
	t.metrics.identityRefused.WithLabelValues(route, reason).Inc()
	if n, ok := t.warns.allowFrom(warnPeerIdentity, r.RemoteAddr); ok {
		t.lg.Warn("refused request whose client certificate does not speak for the member it names",
			zap.String("route", route), zap.String("reason", reason), zap.String("detail", detail),
			zap.String("remote-peer-server-name", clip(rh.rawFrom, clipPlain)),
			zap.String("remote-addr", clip(r.RemoteAddr, clipPlain)), suppressed(n))
	}
	h := w.Header()
	h.Set(headerRefused, refusedPeerIdentity)
	if route == identityRouteSnapshot {
		// As the snapshot handler's other refusals: do not read on a body
		// that may be large.
		h.Set("Connection", "close")
	}
	code := http.StatusForbidden
	if route != identityRouteStream && !rh.features.has(featureIdentityRefusal) {
		code = http.StatusPreconditionFailed
	}
	http.Error(w, identityRefusalPrefix+detail, code)
}

// identityRefusalPrefix starts the body of an identity refusal, which goes
// on to say why.
const identityRefusalPrefix = "peer identity refused: "

// verifyServerIdentity is the identity check of a connection we dial to
// member id, run in its TLS handshake (tls.Config.VerifyConnection), after
// the chain was verified: the server's certificate must speak for id. A
// refusal is counted and logged, rate-limited by lim (one per member's
// clients), and fails the handshake, so that no request is sent.
func (t *Transport) verifyServerIdentity(cs tls.ConnectionState, id uint64, lim *logLimiter) error {
	reason, err := t.serverIdentityError(cs, id)
	if err == nil {
		return nil
	}
	t.metrics.identityRefused.WithLabelValues(identityRouteDial, reason).Inc()
	if n, ok := lim.allow(t.warns.now); ok {
		t.lg.Warn("refused peer whose server certificate does not speak for the member dialled",
			zap.String("local-member-id", t.cfg.idStr), zap.String("remote-peer-id", formatID(id)),
			zap.String("reason", reason), zap.Error(err), suppressed(n))
	}
	return err
}

// serverIdentityError says why cs, the state of a handshake with a server
// dialled as member id, is refused: a reason for the metric and an error
// wrapping ErrPeerIdentity; nil if it is not.
func (t *Transport) serverIdentityError(cs tls.ConnectionState, id uint64) (string, error) {
	switch {
	case len(cs.PeerCertificates) == 0:
		return identityNoCertificate, fmt.Errorf("%w: member %s presented no certificate", ErrPeerIdentity, formatID(id))
	case len(cs.VerifiedChains) == 0:
		return identityUnverified, fmt.Errorf("%w: the certificate of member %s was not verified", ErrPeerIdentity, formatID(id))
	}
	got, err := t.cfg.peerIdentity(cs.PeerCertificates[0])
	switch {
	case err != nil:
		return identityNone, fmt.Errorf("%w: the certificate of the server dialled as member %s names no member: %w",
			ErrPeerIdentity, formatID(id), err)
	case got == 0:
		return identityNone, fmt.Errorf("%w: the certificate of the server dialled as member %s names no member (PeerIdentity returned 0)",
			ErrPeerIdentity, formatID(id))
	case got != id:
		return identityMismatch, fmt.Errorf("%w: the server dialled as member %s has a certificate that speaks for member %s",
			ErrPeerIdentity, formatID(id), formatID(got))
	}
	return "", nil
}

// dialTLSConfig returns the TLS configuration of the connections dialled to
// member id: TLSClientConfig (or its HostPool's) itself when neither
// PeerIdentity nor ClientRootCAs is set (etcd's behaviour), else a clone of
// it (or of the zero configuration) whose VerifyConnection checks, with
// PeerIdentity set and id not 0, that the server speaks for id, then runs
// TLSClientConfig's own VerifyConnection. lim rate-limits the refusals'
// log lines.
func (t *Transport) dialTLSConfig(id uint64, lim *logLimiter) *tls.Config {
	if t.cfg.peerIdentity == nil && t.cfg.clientRoots == nil {
		return t.cfg.tlsClient
	}
	c := &tls.Config{}
	if t.cfg.tlsClient != nil {
		c = t.cfg.tlsClient.Clone()
	}
	if t.cfg.peerIdentity == nil || id == 0 {
		return c
	}
	own := c.VerifyConnection
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if err := t.verifyServerIdentity(cs, id, lim); err != nil {
			return err
		}
		if own != nil {
			return own(cs)
		}
		return nil
	}
	return c
}

// errNoClientRoots fails a dial for which Transport.ClientRootCAs returned
// nil: nil would mean the system's roots, which are not the cluster's.
var errNoClientRoots = errors.New("rafthttp: ClientRootCAs returned no certificate pool")

// tlsHandshakeTimeout bounds the TLS handshake of a connection we dial,
// http.Transport's TLSHandshakeTimeout, which applies to the handshakes
// net/http makes itself; dialTLS applies it to its own.
const tlsHandshakeTimeout = 10 * time.Second

// dialTLS returns the DialTLSContext of an HTTP client whose trust roots
// are asked of roots for each new connection (Transport.ClientRootCAs): it
// dials with dial, then makes the handshake with a clone of cfg whose
// RootCAs is the pool of the moment, ServerName the dialled host unless cfg
// names one (as net/http does), and no ClientSessionCache (a resumed
// session is not verified against the roots again). Verification is
// crypto/tls's own, then cfg's VerifyConnection (the identity check).
func dialTLS(dial func(ctx context.Context, network, addr string) (net.Conn, error), cfg *tls.Config,
	roots func() *x509.CertPool,
) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		pool := roots()
		if pool == nil {
			return nil, errNoClientRoots
		}
		c := cfg.Clone()
		c.RootCAs = pool
		c.ClientSessionCache = nil
		if c.ServerName == "" {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			c.ServerName = host
		}
		raw, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(raw, c)
		hctx, cancel := context.WithTimeout(ctx, tlsHandshakeTimeout)
		defer cancel()
		if err := tc.HandshakeContext(hctx); err != nil {
			raw.Close()
			return nil, err
		}
		return tc, nil
	}
}

// checkIdentityURLs refuses, when PeerIdentity is set, peer URLs over which
// no certificate would be presented (http, unix): the member reached there
// could not be told from any other.
func (t *Transport) checkIdentityURLs(us []url.URL) error {
	if t.cfg.peerIdentity == nil {
		return nil
	}
	for _, u := range us {
		if u.Scheme != "https" && u.Scheme != "unixs" {
			return fmt.Errorf("%w: URL %s: with PeerIdentity set, peer URLs must be https or unixs",
				ErrInvalidURL, clip(u.String(), clipQuoted))
		}
	}
	return nil
}
