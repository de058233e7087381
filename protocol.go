package rafthttp

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"go.uber.org/zap"
)

// The peer protocol, as etcd speaks it (spec §2, §6): the routes, every
// header name, member and cluster IDs, the checks a request must pass, the
// headers we send, and what the answers to our requests mean. The handlers
// (http.go), the senders (pipeline.go, snapshot_sender.go) and the dialer
// (stream_reader.go) call into it; semver is in version.go, and the feature
// negotiation in features.go.

// The paths of the raft routes, etcd's (spec §2).
const (
	// RaftPrefix is the pipeline path, and the prefix of all the others.
	RaftPrefix = "/raft"
	// ProbingPrefix is the path of the health probe.
	ProbingPrefix = RaftPrefix + "/probing"
	// RaftStreamPrefix is the prefix of the stream paths,
	// RaftStreamPrefix/{msgapp,message}/<sender ID in hex>.
	RaftStreamPrefix = RaftPrefix + "/stream"
	// RaftSnapshotPrefix is the path snapshots are POSTed to.
	RaftSnapshotPrefix = RaftPrefix + "/snapshot"
)

// snapshotResumePath is where a sender asks a receiver how much of a
// snapshot's payload it holds (snapshot_resume.go). Beyond etcd: asked
// only of peers that announced featureSnapshotResume.
const snapshotResumePath = RaftSnapshotPrefix + "/resume"

// pipelineBatchPath is where several pipeline messages are POSTed at once
// (pipeline_batch.go). Beyond etcd: used only with peers that announced
// featurePipelineBatch. A route of its own, so that no etcd member or proxy
// could ever take a batch for one message.
const pipelineBatchPath = RaftPrefix + "/batch"

// Header names of the raft HTTP protocol (spec §2.1). They are facts of the
// wire format shared with etcd peers.
const (
	// headerServerFrom carries the sender's member ID in hex.
	headerServerFrom = "X-Server-From"
	// headerServerVersion carries the sender's (or responder's) etcd-style
	// server version, e.g. "3.7.0".
	headerServerVersion = "X-Server-Version"
	// headerMinClusterVersion carries the oldest cluster version the sender
	// can work with, "3.0.0" for every 3.x release.
	headerMinClusterVersion = "X-Min-Cluster-Version"
	// headerClusterID carries the cluster ID in lowercase hex; requests from
	// another cluster are refused.
	headerClusterID = "X-Etcd-Cluster-ID"
	// headerRaftTo carries, on stream dials, the member ID the dialer expects
	// to reach.
	headerRaftTo = "X-Raft-To"
	// headerPeerURLs carries the sender's advertised peer URLs joined with
	// ",", so the receiver can reach a member it does not know yet.
	headerPeerURLs = "X-PeerURLs"

	// Beyond etcd's headers, which etcd ignores:

	// headerFeatures carries the announcement: feature tokens separated by
	// commas. Unknown tokens are ignored, so that a newer peer can announce
	// features we do not know.
	headerFeatures = "X-Rafthttp-Features"
	// trailerCRC32C carries the CRC-32C (Castagnoli) of the whole snapshot
	// body (envelope and payload), as 8 lowercase hex digits. It is sent only
	// to a peer that announced featureCRC32CTrailer (features.go), so an etcd
	// peer gets etcd's bytes.
	trailerCRC32C = "X-Rafthttp-Crc32c"
	// headerRefused marks an answer refusing a request for a reason of
	// ours that etcd has no status for; its one value today is
	// refusedPeerIdentity (identity.go).
	headerRefused = "X-Rafthttp-Refused"

	// The headers of resumable snapshot transfers (featureSnapshotResume,
	// snapshot_resume.go has their formats and testdata/wire their
	// golden bytes), sent only to peers that announced the feature.

	// headerSnapshotID names the payload a resumable POST or a query is
	// about: "index=I term=T size=S envelope=C" (decimal, C the CRC-32C
	// of the envelope frame in 8 lowercase hex digits).
	headerSnapshotID = "X-Rafthttp-Snapshot-Id"
	// headerSnapshotOffset is, on a resumable POST, the payload offset its
	// body's payload part starts at; on an answer to a query, how much of
	// the payload the receiver holds. Decimal.
	headerSnapshotOffset = "X-Rafthttp-Snapshot-Offset"
	// headerSnapshotCRC is the CRC-32C of the payload before the offset,
	// 8 lowercase hex digits, next to headerSnapshotOffset on a POST and
	// on the answer to a resume query.
	headerSnapshotCRC = "X-Rafthttp-Snapshot-Crc32c"
	// headerSnapshotProgress makes a query a progress stream: the answer
	// (200) is a line with the offset the receiver holds each time it has
	// written another this many bytes (decimal) of the payload, until the
	// transfer ends.
	headerSnapshotProgress = "X-Rafthttp-Snapshot-Progress"
	// trailerPayloadCRC32C is the trailer of a resumable POST: the CRC-32C
	// of the whole payload, from its first byte, whatever the offset the
	// POST started at.
	trailerPayloadCRC32C = "X-Rafthttp-Payload-Crc32c"

	// headerBatchProcessed is, on the answer refusing a pipeline batch
	// once Process has failed for one of its messages, how many of its
	// messages raft took before that one (decimal): the sender reports
	// the others as lost (pipeline_batch.go).
	headerBatchProcessed = "X-Rafthttp-Batch-Processed"
)

// refusedPeerIdentity is the X-Rafthttp-Refused value of a request refused
// because its client certificate does not speak for the member it names.
const refusedPeerIdentity = "peer-identity"

// maxIDLen is the longest hex ID parseID accepts: a uint64 needs at most 16
// hex digits, and etcd never sends leading zeros.
const maxIDLen = 16

// formatID renders a member or cluster ID the way the wire expects it:
// lowercase hex without leading zeros.
func formatID(id uint64) string {
	return strconv.FormatUint(id, 16)
}

// parseID parses a hex member or cluster ID from a header or URL. Like etcd
// it accepts upper case (base-16 ParseUint); it rejects empty strings and
// strings longer than 16 bytes. Errors wrap ErrInvalidHeader.
func parseID(s string) (uint64, error) {
	if s == "" {
		return 0, fmt.Errorf("%w: empty ID", ErrInvalidHeader)
	}
	if len(s) > maxIDLen {
		return 0, fmt.Errorf("%w: ID %s is %d bytes long, at most %d allowed", ErrInvalidHeader, clip(s, clipQuoted), len(s), maxIDLen)
	}
	id, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: ID %s is not hexadecimal", ErrInvalidHeader, clip(s, clipQuoted))
	}
	return id, nil
}

// requestHeaders is what the protocol headers of a request to us say,
// parsed once, as it arrives (parseRequestHeaders), for every check and
// handler that reads them.
type requestHeaders struct {
	// from is X-Server-From, the sender's ID; fromErr says why there is
	// none (absent or malformed).
	from    uint64
	fromErr error
	// serverVersion and minClusterVersion are X-Server-Version and
	// X-Min-Cluster-Version; an absent (or empty) header means "2.0.0", as
	// in etcd. A malformed one, on which etcd panics, leaves both zero and
	// sets versionErr, which wraps both ErrInvalidHeader and
	// ErrIncompatibleVersion, so that handlers answer 412 "incompatible
	// version".
	serverVersion, minClusterVersion semver
	versionErr                       error
	// clusterID and raftTo are X-Etcd-Cluster-ID and X-Raft-To as sent:
	// etcd compares them as strings.
	clusterID, raftTo string
	// peerURLs is X-PeerURLs, as parsePeerURLsHeader reads it: hasPeerURLs
	// is false if the header is absent or empty, and peerURLsErr set if it
	// is present but invalid.
	peerURLs    []url.URL
	hasPeerURLs bool
	peerURLsErr error
	// features is the sender's X-Rafthttp-Features announcement.
	features featureSet
	// rawFrom and rawServerVersion are X-Server-From and X-Server-Version
	// as sent, for the log line of a refused request.
	rawFrom, rawServerVersion string
	// identity is the member the request's client certificate speaks
	// for, once checkPeerIdentity has passed it; 0 while it has not, and
	// when PeerIdentity is off.
	identity uint64
}

// parseRequestHeaders reads every protocol header of a request. It never
// fails: what is absent or malformed is recorded in the result, and the
// handlers decide what it costs the request.
func parseRequestHeaders(h http.Header) requestHeaders {
	rh := requestHeaders{
		// Get, not a map index: the canonical key is "X-Etcd-Cluster-Id".
		clusterID:        h.Get(headerClusterID),
		raftTo:           h.Get(headerRaftTo),
		features:         featuresOf(h),
		rawFrom:          h.Get(headerServerFrom),
		rawServerVersion: h.Get(headerServerVersion),
	}
	rh.from, rh.fromErr = parseID(rh.rawFrom)
	if rh.serverVersion, rh.versionErr = headerVersion(h, headerServerVersion); rh.versionErr == nil {
		if rh.minClusterVersion, rh.versionErr = headerVersion(h, headerMinClusterVersion); rh.versionErr != nil {
			rh.serverVersion = semver{}
		}
	}
	rh.peerURLs, rh.hasPeerURLs, rh.peerURLsErr = parsePeerURLsHeader(h)
	return rh
}

// defaultHeaderVersion is what etcd assumes when a version header is absent:
// etcd 2.0 sent none.
const defaultHeaderVersion = "2.0.0"

// headerVersion parses the version header name of h (a request's, or the
// answer to a stream dial), as requestHeaders describes.
func headerVersion(h http.Header, name string) (semver, error) {
	s := h.Get(name)
	if s == "" {
		s = defaultHeaderVersion
	}
	v, err := parseSemver(s)
	if err != nil {
		return semver{}, fmt.Errorf("%w: %s: %w", ErrIncompatibleVersion, name, err)
	}
	return v, nil
}

// checkVersions is the version check every handler runs first (spec
// §6.1): the remote's server version must not be older than our minimum
// cluster version, and its minimum cluster version must not be newer than
// our server version, both by major.minor. Errors wrap
// ErrIncompatibleVersion and say which side is too low.
func (rh *requestHeaders) checkVersions(localServer, localMinCluster semver) error {
	if rh.versionErr != nil {
		return rh.versionErr
	}
	if compareMajorMinor(rh.serverVersion, localMinCluster) < 0 {
		return fmt.Errorf("%w: remote version is too low: remote server version %s, local minimum cluster version %s",
			ErrIncompatibleVersion, rh.serverVersion, localMinCluster)
	}
	if compareMajorMinor(rh.minClusterVersion, localServer) > 0 {
		return fmt.Errorf("%w: local version is too low: remote minimum cluster version %s, local server version %s",
			ErrIncompatibleVersion, rh.minClusterVersion, localServer)
	}
	return nil
}

// checkClusterID refuses requests from other clusters: X-Etcd-Cluster-ID
// must equal the canonical form of local exactly, as etcd compares strings
// (an upper-case or zero-padded ID is a mismatch). A missing header is a
// mismatch. Errors wrap ErrClusterIDMismatch.
func (rh *requestHeaders) checkClusterID(local uint64) error {
	want := formatID(local)
	if rh.clusterID == "" {
		return fmt.Errorf("%w: local %s, remote sent no %s", ErrClusterIDMismatch, want, headerClusterID)
	}
	if rh.clusterID != want {
		return fmt.Errorf("%w: local %s, remote %s", ErrClusterIDMismatch, want, clip(rh.clusterID, clipQuoted))
	}
	return nil
}

// parsePeerURLsHeader reads the X-PeerURLs header: the value split on ","
// and validated by parseURLs. present is false, with no error, when the
// header is absent or empty; a present but invalid header gives present true
// and an error wrapping both ErrInvalidHeader and ErrInvalidURL.
func parsePeerURLsHeader(h http.Header) (urls []url.URL, present bool, err error) {
	v := h.Get(headerPeerURLs)
	if v == "" {
		return nil, false, nil
	}
	// Count before splitting so that a huge header is refused without
	// building a huge slice.
	if n := strings.Count(v, ",") + 1; n > maxURLCount {
		return nil, true, fmt.Errorf("%w: %s: %w: %d URLs given, at most %d allowed",
			ErrInvalidHeader, headerPeerURLs, ErrInvalidURL, n, maxURLCount)
	}
	urls, err = parseURLs(strings.Split(v, ","))
	if err != nil {
		return nil, true, fmt.Errorf("%w: %s: %w", ErrInvalidHeader, headerPeerURLs, err)
	}
	return urls, true, nil
}

// sentHeaders are headers with their values, each key in canonical form
// and each value a slice built once and shared by every request or answer
// that carries it: neither net/http nor we write to a header's values once
// set, so sharing them is safe, and setting them costs no allocation on the
// pipeline's path (one POST per message).
type sentHeaders []struct {
	key string
	val []string
}

// newSentHeaders returns the headers every request we send carries (spec
// §2.1, and our features), and those every answer carries (our features,
// announced unless we announce nothing, as etcd sends no such header).
func newSentHeaders(c *config) (requests, answers sentHeaders) {
	add := func(hs sentHeaders, key, val string) sentHeaders {
		if val == "" {
			return hs
		}
		return append(hs, struct {
			key string
			val []string
		}{http.CanonicalHeaderKey(key), []string{val}})
	}
	requests = add(requests, headerServerFrom, c.idStr)
	requests = add(requests, headerServerVersion, c.serverVersion.String())
	requests = add(requests, headerMinClusterVersion, c.minClusterVersion.String())
	requests = add(requests, headerClusterID, c.clusterIDStr)
	requests = add(requests, headerPeerURLs, c.urlsHeader)
	requests = add(requests, headerFeatures, c.featuresHeader)
	answers = add(answers, headerFeatures, c.featuresHeader)
	return requests, answers
}

// set puts the headers on h.
func (hs sentHeaders) set(h http.Header) {
	for _, kv := range hs {
		h[kv.key] = kv.val
	}
}

// setHeaders sets the headers every request we send carries.
func (t *Transport) setHeaders(h http.Header) { t.cfg.sent.set(h) }

// announceFeatures sets our X-Rafthttp-Features on an answer.
func (t *Transport) announceFeatures(h http.Header) { t.cfg.announce.set(h) }

// clipLen is how much of a string a peer sent we keep for a log line or an
// error text: enough to recognise it, while a peer that sends megabytes
// cannot put them in our logs.
const clipLen = 64

// clipStyle is how clip renders the string it bounds.
type clipStyle uint8

const (
	// clipPlain keeps the string as it is and marks a cut with "...": for
	// log fields, which the logger escapes itself.
	clipPlain clipStyle = iota
	// clipQuoted quotes the string (Go syntax, as %q) and follows a cut
	// with its full length, "...(N bytes)": for error texts, in which it
	// must stand apart from the words around it.
	clipQuoted
)

// clip bounds s, a string a peer sent, to clipLen bytes, rendered in style.
func clip(s string, style clipStyle) string {
	cut := len(s) > clipLen
	if style == clipQuoted {
		if !cut {
			return fmt.Sprintf("%q", s)
		}
		return fmt.Sprintf("%q...(%d bytes)", s[:clipLen], len(s))
	}
	if !cut {
		return s
	}
	return s[:clipLen] + "..."
}

// requestKind is which of our requests an answer is to: dials and POSTs
// read some statuses differently, and log refusals in etcd's words for each.
type requestKind uint8

const (
	// dialRequest is a stream dial, GET /raft/stream/...: 200 opens it.
	dialRequest requestKind = iota + 1
	// postRequest is a pipeline or snapshot POST: 204 is success.
	postRequest
)

// sentRequest is what answerError needs to know of the request an answer
// is to.
type sentRequest struct {
	kind    requestKind
	t       *Transport
	lg      *zap.Logger // where refusals are logged
	refused *logLimiter // limits those lines: every message sent may earn one
	peer    string      // the remote's ID in hex, which a dial's 404 names
	base    string      // the URL posted to, which a POST's unexpected status names
}

// answerError maps resp, the answer to q, to an error, nil for success, as
// etcd maps answers (spec §2.6):
//
//	status  dial                           POST
//	200     success                        unexpected
//	204     unhandled                      success
//	403     unhandled                      ErrMemberRemoved
//	403/412 marked X-Rafthttp-Refused: peer-identity: ErrPeerIdentity, logged
//	404     the remote does not know us    unexpected
//	410     ErrMemberRemoved, logged       unexpected
//	412     by the body: ErrIncompatibleVersion or ErrClusterIDMismatch,
//	        logged, or an unhandled error
//	503     unhandled                      ErrTooManySnapshots if the body
//	                                       says so, else unexpected
//	other   unhandled                      unexpected
//
// A failure's body is read (a little of it) and closed; a success's is
// left to the caller. Posting ErrMemberRemoved to ErrorC is the caller's
// call too: it knows whether it is stopping.
func (q sentRequest) answerError(resp *http.Response) error {
	code := resp.StatusCode
	success := http.StatusNoContent
	if q.kind == dialRequest {
		success = http.StatusOK
	}
	switch {
	case code == success:
		return nil
	case resp.Header.Get(headerRefused) == refusedPeerIdentity &&
		(code == http.StatusForbidden || code == http.StatusPreconditionFailed):
		// Our certificate does not speak for us in the remote's eyes:
		// refused, not removed.
		body := strings.TrimPrefix(readErrorBody(resp.Body), identityRefusalPrefix)
		if len(body) > maxRefusalText {
			body = body[:maxRefusalText] + "..."
		}
		if n, ok := q.refused.allow(q.t.warns.now); ok {
			q.lg.Error("request sent was refused by remote peer: our certificate does not speak for this member in its eyes",
				zap.String("reason", body), suppressed(n))
		}
		return fmt.Errorf("%w by the remote: %q", ErrPeerIdentity, body)
	case code == http.StatusPreconditionFailed:
		return q.preconditionError(readErrorBody(resp.Body))
	case code == http.StatusForbidden && q.kind == postRequest:
		// What a Process error that writes its own response (etcd's, for
		// a message from a removed member) answers.
		drainClose(resp.Body)
		return ErrMemberRemoved
	case code == http.StatusGone && q.kind == dialRequest:
		drainClose(resp.Body)
		if n, ok := q.refused.allow(q.t.warns.now); ok {
			q.lg.Error("the remote says this member was removed from the cluster", suppressed(n))
		}
		return ErrMemberRemoved
	case code == http.StatusNotFound && q.kind == dialRequest:
		drainClose(resp.Body)
		return fmt.Errorf("peer %s failed to find local node %s", q.peer, q.t.cfg.idStr)
	case code == http.StatusServiceUnavailable && q.kind == postRequest:
		// Our snapshot receivers answer 503 when at their limit.
		if readErrorBody(resp.Body) == ErrTooManySnapshots.Error() {
			return ErrTooManySnapshots
		}
	default:
		drainClose(resp.Body)
	}
	if q.kind == dialRequest {
		return fmt.Errorf("unhandled http status %d", code)
	}
	return fmt.Errorf("unexpected http status %s while posting to %q", http.StatusText(code), q.base)
}

// preconditionError maps the body of a 412 to its error, logging the two
// refusals etcd names.
func (q sentRequest) preconditionError(body string) error {
	var err error
	switch body {
	case ErrIncompatibleVersion.Error():
		err = ErrIncompatibleVersion
	case ErrClusterIDMismatch.Error():
		err = ErrClusterIDMismatch
	default:
		return fmt.Errorf("unhandled error %q when precondition failed", body)
	}
	n, ok := q.refused.allow(q.t.warns.now)
	if !ok {
		return err
	}
	localCID := zap.String("local-member-cluster-id", q.t.cfg.clusterIDStr)
	switch {
	case q.kind == dialRequest && err == ErrIncompatibleVersion:
		q.lg.Warn("request sent was ignored by remote peer due to server version incompatibility", suppressed(n))
	case q.kind == dialRequest:
		q.lg.Warn("request sent was ignored by remote peer due to cluster ID mismatch", localCID, suppressed(n))
	case err == ErrIncompatibleVersion:
		q.lg.Error("request sent was ignored by peer", zap.Error(ErrIncompatibleVersion), suppressed(n))
	default:
		q.lg.Error("request sent was ignored due to cluster ID mismatch", localCID, suppressed(n))
	}
	return err
}

// maxErrorBody bounds how much of an error response we read.
const maxErrorBody = 4 << 10

// maxRefusalText bounds how much of a peer's refusal (an identity refusal's
// body) goes into an error and a log line: enough for the reason the
// refusing member gives.
const maxRefusalText = 256

// readErrorBody reads and closes a (short) error response body, one trailing
// newline trimmed, as http.Error adds it.
func readErrorBody(rc io.ReadCloser) string {
	defer drainClose(rc)
	b, _ := io.ReadAll(io.LimitReader(rc, maxErrorBody))
	return strings.TrimSuffix(string(b), "\n")
}

// drainClose reads a little of a body before closing it, so that a short
// response lets its keep-alive connection be reused.
func drainClose(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, maxErrorBody))
	rc.Close()
}
