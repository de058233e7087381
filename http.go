package rafthttp

import (
	"context"
	"errors"
	"io"
	"net/http"
	"path"
	"strings"
	"sync/atomic"
	"time"

	"github.com/xiang90/probing"
	"go.uber.org/zap"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// writerToResponse is implemented by errors from Raft.Process that write
// their own HTTP response, as etcd's 403 for a message from a removed member.
type writerToResponse interface {
	WriteTo(w http.ResponseWriter)
}

// allowMethod answers 405, with the Allow header naming method, a request
// whose method is not method, and reports whether the request may go on.
func allowMethod(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	w.Header().Set("Allow", method)
	http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
	return false
}

// answerProcessError answers a request whose message Raft.Process refused
// with err: an error that writes its own response (writerToResponse) writes
// it; any other is logged (rate-limited) and answered 500 with body. It
// reports whether it answered 500, which the caller may follow up.
func (t *Transport) answerProcessError(w http.ResponseWriter, err error, body string) bool {
	var wtr writerToResponse
	if errors.As(err, &wtr) {
		wtr.WriteTo(w)
		return false
	}
	if n, ok := t.warns.allow(warnProcess); ok {
		t.lg.Warn("failed to process Raft message", zap.Error(err), suppressed(n))
	}
	http.Error(w, body, http.StatusInternalServerError)
	return true
}

// newHandler builds the mux of the raft routes.
func newHandler(t *Transport) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(RaftPrefix, t.gated(t.servePipeline))
	mux.HandleFunc(RaftStreamPrefix+"/", t.gated(t.serveStream))
	mux.HandleFunc(RaftSnapshotPrefix, t.gated(t.serveSnapshot))
	mux.HandleFunc(pipelineBatchPath, t.gated(t.serveBatch))
	mux.HandleFunc(snapshotResumePath, t.gated(t.serveSnapshotResume))
	mux.Handle(ProbingPrefix, probing.NewHandler())
	return mux
}

// gated admits a request to a raft route only while the transport runs, and
// makes Stop wait for it: these routes call Raft and the SnapshotStore, and
// nothing of ours may call them once Stop has returned. The request's
// context ends when the transport stops, so that a handler blocked in
// Process or SaveSnapshot lets go. Before Start and after Stop the routes
// answer 503, which senders read as a failure to retry.
func (t *Transport) gated(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		t.mu.RLock()
		if !t.started || t.stopped {
			t.mu.RUnlock()
			http.Error(w, ErrStopped.Error(), http.StatusServiceUnavailable)
			return
		}
		t.handlers.Add(1) // under t.mu, so never after Stop's Wait began
		t.mu.RUnlock()
		defer t.handlers.Done()
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		defer context.AfterFunc(t.ctx, cancel)()
		h(w, r.WithContext(ctx))
	}
}

// checkRequest runs the checks every POST handler and the stream handler
// share after the method check (spec §6.1) on the request's headers rh:
// version compatibility, then the cluster ID, then, with PeerIdentity set,
// that the client certificate speaks for the member the request names
// (checkPeerIdentity, identity.go). It answers the request itself on
// failure.
func (t *Transport) checkRequest(w http.ResponseWriter, r *http.Request, rh *requestHeaders) bool {
	if err := rh.checkVersions(t.cfg.serverVersion, t.cfg.minClusterVersion); err != nil {
		if n, ok := t.warns.allowFrom(warnVersion, r.RemoteAddr); ok {
			t.lg.Warn("failed version compatibility check",
				zap.String("local-member-server-version", t.cfg.serverVersion.String()),
				zap.String("remote-peer-server-name", clip(rh.rawFrom, clipPlain)),
				zap.String("remote-peer-server-version", clip(rh.rawServerVersion, clipPlain)),
				zap.String("remote-addr", clip(r.RemoteAddr, clipPlain)), zap.Error(err), suppressed(n))
		}
		http.Error(w, ErrIncompatibleVersion.Error(), http.StatusPreconditionFailed)
		return false
	}
	if err := rh.checkClusterID(t.cfg.clusterID); err != nil {
		if n, ok := t.warns.allowFrom(warnClusterID, r.RemoteAddr); ok {
			t.lg.Warn("request cluster ID mismatch",
				zap.String("local-member-cluster-id", t.cfg.clusterIDStr),
				zap.String("remote-peer-cluster-id", clip(rh.clusterID, clipPlain)),
				zap.String("remote-addr", clip(r.RemoteAddr, clipPlain)), suppressed(n))
		}
		http.Error(w, ErrClusterIDMismatch.Error(), http.StatusPreconditionFailed)
		return false
	}
	return t.checkPeerIdentity(w, r, rh)
}

// addRemoteFromRequest lets a member we do not know yet get answers: if a
// POST names its sender (X-Server-From) and the sender's URLs, the sender
// becomes a remote (spec §2.2 step 4). Malformed headers, on which etcd
// panics, are logged and ignored.
func (t *Transport) addRemoteFromRequest(rh *requestHeaders) {
	if rh.fromErr != nil {
		return
	}
	t.addRemoteFromHeader(rh, rh.from)
}

// addRemoteFromHeader makes from a remote reachable at the request's
// X-PeerURLs, if it carries valid ones, or marks the remote used if it
// exists. Remotes learnt this way are capped and expire (addRequestRemote,
// remote.go): the checks a request passes are not secrets, and each remote
// costs goroutines and metric series.
func (t *Transport) addRemoteFromHeader(rh *requestHeaders, from uint64) {
	if !rh.hasPeerURLs {
		return
	}
	if rh.peerURLsErr != nil {
		if n, ok := t.warns.allow(warnBadRequest); ok {
			t.lg.Warn("ignored invalid peer URLs from request", zap.String("remote-peer-id", formatID(from)), zap.Error(rh.peerURLsErr), suppressed(n))
		}
		return
	}
	switch err := t.addRequestRemote(from, rh.peerURLs); {
	case err == nil, errors.Is(err, ErrStopped):
	case errors.Is(err, errTooManyRemotes):
		// Every request of a flood would log this: keep it at Debug.
		t.lg.Debug("ignored remote from request", zap.String("remote-peer-id", formatID(from)), zap.Error(err))
	default:
		if n, ok := t.warns.allow(warnBadRequest); ok {
			t.lg.Warn("failed to add remote from request", zap.String("remote-peer-id", formatID(from)), zap.Error(err), suppressed(n))
		}
	}
}

// learnFeatures records the announcement of a request that passed
// checkRequest, if its X-Server-From names a configured peer.
func (t *Transport) learnFeatures(rh *requestHeaders) {
	if rh.fromErr != nil {
		return
	}
	if p, ok := t.get(rh.from); ok {
		p.features.record(rh.features, p.lg, t.warns.now)
	}
}

// receivedFrom returns the metrics of the sender of a message, if it is a
// known peer. Labels come only from configured members, never from what a
// request claims, so a hostile client cannot blow up metric cardinality.
func (t *Transport) receivedFrom(id uint64) (peerMetrics, bool) {
	if p, ok := t.get(id); ok {
		return p.metrics, true
	}
	return peerMetrics{}, false
}

// admit answers with our cluster ID and features, parses the request's
// headers once and runs checkRequest: what every raft route does first.
// If ok is false, the request has been answered.
func (t *Transport) admit(w http.ResponseWriter, r *http.Request) (rh requestHeaders, ok bool) {
	w.Header().Set(headerClusterID, t.cfg.clusterIDStr)
	t.announceFeatures(w.Header())
	rh = parseRequestHeaders(r.Header)
	return rh, t.checkRequest(w, r, &rh)
}

// readPipelineBody is the prologue of the pipeline's routes, POST /raft
// and POST /raft/batch: the method and admit checks, what the request
// tells of its sender, and the body. Unlike etcd, which reads any size, the
// body is bounded by limit, allocated once at its length, and charged to
// ch, which the caller refunds once the last Process returns. what ("message"
// or "message batch") names the body in refusals and logs. If ok is false,
// the request has been answered.
func (t *Transport) readPipelineBody(w http.ResponseWriter, r *http.Request, limit int64, ch *recvCharger, what string) (rh requestHeaders, body []byte, ok bool) {
	if !allowMethod(w, r, http.MethodPost) {
		return rh, nil, false
	}
	if rh, ok = t.admit(w, r); !ok {
		return rh, nil, false
	}
	t.addRemoteFromRequest(&rh)
	t.learnFeatures(&rh)
	if r.ContentLength > limit {
		http.Error(w, "raft "+what+" too large", http.StatusRequestEntityTooLarge)
		return rh, nil, false
	}
	rc := http.NewResponseController(w)
	body, err := readBody(newPacedBody(r.Body, rc, t.cfg.pipelineTimeout), r.ContentLength, limit, ch)
	if err != nil {
		if n, ok := t.warns.allow(warnReadBody); ok {
			t.lg.Warn("failed to read Raft "+what, zap.Error(err), suppressed(n))
		}
		refuseBody(w, err, "error reading raft "+what)
		return rh, nil, false
	}
	return rh, body, true
}

// servePipeline handles POST /raft: one message per request (spec §2.2).
func (t *Transport) servePipeline(w http.ResponseWriter, r *http.Request) {
	ch := recvCharger{budget: t.budget, ctx: r.Context()}
	defer ch.refund()
	rh, body, ok := t.readPipelineBody(w, r, int64(t.cfg.maxMessageBytes), &ch, "message")
	if !ok {
		return
	}
	m, _, err := raftproto.UnmarshalMessageCharged(body, &ch)
	if err != nil {
		if n, ok := t.warns.allow(warnMalformed); ok {
			t.lg.Warn("failed to unmarshal Raft message", zap.Error(err), suppressed(n))
		}
		refuseBody(w, err, "error unmarshalling raft message")
		return
	}
	if !t.checkMessageFrom(w, r, &rh, m) {
		return
	}
	pm, known := t.receivedFrom(m.GetFrom())
	if known {
		pm.received(1, len(body))
	}
	if err := t.Raft.Process(r.Context(), m); err != nil {
		if t.answerProcessError(w, err, "error processing raft message") {
			// Close the connection, as etcd does: the sender must not
			// reuse a connection whose peer could not take its message.
			_ = http.NewResponseController(w).Flush()
			panic(http.ErrAbortHandler)
		}
		return
	}
	// 204 only once raft has the message.
	w.WriteHeader(http.StatusNoContent)
}

// minBodyRate is the slowest average rate, in bytes per second, at which a
// request body may arrive once its grace period is over: a body trickling
// in a byte a second would otherwise hold a handler for ever.
const minBodyRate = 1 << 10

// pacedBody reads a request body under a moving read deadline: each read
// must come within timeout of the one before, and the body as a whole must
// arrive at minBodyRate or faster after a grace of timeout. If first is set
// (and shorter than timeout), the body's first byte must come within first
// of the start.
type pacedBody struct {
	r       io.Reader
	rc      *http.ResponseController
	timeout time.Duration
	first   time.Duration
	start   time.Time
	n       int64
	cut     atomic.Bool // cutOff was called
}

// errBodyCutOff is what a pacedBody reads once cut off.
var errBodyCutOff = errors.New("rafthttp: request body cut off")

// cutOff makes the body's reads fail from now on, a read in progress
// included. It may be called from any goroutine.
func (b *pacedBody) cutOff() {
	b.cut.Store(true) // before the deadline: a Read that sets its own after this sees the flag
	_ = b.rc.SetReadDeadline(time.Now())
}

func newPacedBody(r io.Reader, rc *http.ResponseController, timeout time.Duration) *pacedBody {
	return &pacedBody{r: r, rc: rc, timeout: timeout, start: time.Now()}
}

func (b *pacedBody) Read(p []byte) (int, error) {
	deadline := time.Now().Add(b.timeout)
	if paced := b.start.Add(b.timeout + time.Duration(b.n)*time.Second/minBodyRate); paced.Before(deadline) {
		deadline = paced
	}
	if first := b.start.Add(b.first); b.first > 0 && b.n == 0 && first.Before(deadline) {
		deadline = first
	}
	if err := b.rc.SetReadDeadline(deadline); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return 0, err
	}
	if b.cut.Load() { // after our deadline: a cutOff that came before it is seen here
		return 0, errBodyCutOff
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	if err == io.EOF {
		// The body is in. Lift the deadline: once the body is read,
		// net/http reads on in the background, and a timeout there
		// would cancel the request's context while the handler still
		// works (an fsync, Process), then end the keep-alive connection.
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// refuseBody answers a request whose body could not be read or decoded:
// 413 if it is too large for us, 503 (retry later) if the receive budget
// has no room for it now, 400 otherwise.
func refuseBody(w http.ResponseWriter, err error, msg string) {
	switch {
	case errors.Is(err, ErrExceedSizeLimit):
		http.Error(w, "raft message too large", http.StatusRequestEntityTooLarge)
	case errors.Is(err, errBudgetFull):
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many raft messages being received", http.StatusServiceUnavailable)
	default:
		http.Error(w, msg, http.StatusBadRequest)
	}
}

// readBody reads a request body of length bytes (-1: unknown) to EOF,
// refusing more than limit with ErrExceedSizeLimit, and charging what it
// allocates to ch before allocating it (see readFrameBody).
func readBody(r io.Reader, length, limit int64, ch *recvCharger) ([]byte, error) {
	if length > limit {
		return nil, ErrExceedSizeLimit
	}
	if length >= 0 {
		return readFrameBody(r, length, ch)
	}
	ch.wire, ch.held = 0, 0
	return readChunked(r, -1, limit, ch)
}

// serveStream handles GET /raft/stream/{msgapp,message}/<from>: the
// response stays open and carries our messages to the member that dialled it
// (spec §2.4). The order of checks is etcd's.
func (t *Transport) serveStream(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	// Every answer from here on carries our version, so that an older
	// dialer does not mistake an error for "stream type unsupported".
	w.Header().Set(headerServerVersion, t.cfg.serverVersion.String())
	rh, ok := t.admit(w, r)
	if !ok {
		return
	}

	dir, last := path.Split(r.URL.Path)
	typ, ok := parseStreamType(strings.TrimPrefix(path.Clean(dir), RaftStreamPrefix+"/"))
	if !ok || path.Clean(dir) != RaftStreamPrefix+"/"+typ.endpoint() {
		t.lg.Debug("ignored unexpected streaming request path", zap.String("path", clip(r.URL.Path, clipPlain)))
		http.Error(w, "invalid path", http.StatusNotFound)
		return
	}
	from, err := parseID(last)
	if err != nil {
		if n, ok := t.warns.allow(warnBadRequest); ok {
			t.lg.Warn("failed to parse path into ID", zap.String("path", clip(r.URL.Path, clipPlain)), zap.Error(err), suppressed(n))
		}
		http.Error(w, "invalid from", http.StatusNotFound)
		return
	}
	if t.Raft.IsIDRemoved(from) {
		if n, ok := t.warns.allow(warnUnknownSender); ok {
			t.lg.Warn("rejected stream from remote peer because it was removed", zap.String("remote-peer-id-from", formatID(from)), suppressed(n))
		}
		http.Error(w, "removed member", http.StatusGone)
		return
	}
	p, ok := t.get(from)
	if !ok {
		// The dialer may know of us before we know of it: let it at least
		// reach us through the pipeline. Its ID is the one in the path.
		t.addRemoteFromHeader(&rh, from)
		if n, ok := t.warns.allow(warnUnknownSender); ok {
			t.lg.Warn("failed to find remote peer in cluster", zap.String("remote-peer-id-stream-handler", formatID(from)), suppressed(n))
		}
		http.Error(w, "error sender not found", http.StatusNotFound)
		return
	}
	if rh.raftTo != t.cfg.idStr {
		if n, ok := t.warns.allow(warnUnknownSender); ok {
			t.lg.Warn("ignored streaming request; ID mismatch", zap.String("remote-peer-id-header", clip(rh.raftTo, clipPlain)), suppressed(n))
		}
		http.Error(w, "to field mismatch", http.StatusPreconditionFailed)
		return
	}
	p.features.record(rh.features, p.lg, t.warns.now)

	c := newOutgoingConn(typ, w)
	// A stream lives for hours: lift any read deadline the server set
	// (http.Server.ReadTimeout), whose expiry would end the request.
	if err := c.rc.SetReadDeadline(time.Time{}); err != nil && !errors.Is(err, http.ErrNotSupported) {
		return
	}
	w.WriteHeader(http.StatusOK)
	if err := c.rc.Flush(); err != nil {
		return
	}
	if !p.attachOutgoingConn(c) {
		return // the peer stopped: returning closes the response
	}
	// The writer owns the response now. Wait until it lets go, telling it
	// if the request's context ends first (see streamWriter.run).
	select {
	case <-c.released:
	case <-r.Context().Done():
		if errors.Is(context.Cause(r.Context()), errGroupRemoved) {
			c.abort() // our doing, not the remote's: the writer must let go
		}
		c.remoteGone()
		<-c.released
	}
}
