package rafthttp

import "errors"

// Error texts follow one rule: every error this package defines starts with
// "rafthttp: ", so that a log line or a wrapped error says where it came from,
// except the texts that are written into HTTP response bodies. Those are wire
// bytes, kept byte for byte: "incompatible version" and "cluster ID mismatch"
// are etcd's 412 bodies, which etcd peers match exactly to classify our
// answers; "stopped" is the 503 body of a transport not serving, and
// errNoSnapshotStore is quoted in a 500 body. One more keeps etcd's text:
// ErrMemberRemoved, the value of ErrorC, which applications compare.
//
// Errors built on the fly with fmt.Errorf wrap a sentinel wherever a caller
// may act on them, and so carry its prefix. Those that
// describe a peer's unexpected answer keep etcd's words ("unhandled http
// status 502", "unexpected http status ... while posting to ..."), so that
// logs, PeerStatus and SendSnapshot's outcome read as etcd's do. Errors of
// net/http (a refused connection, say) pass through unchanged: their
// *url.Error already names the request.
//
// Test for the sentinels with [errors.Is]: the transport wraps them with
// context (peer, URL, operation) as they travel up.
var (
	// ErrClusterIDMismatch means the remote belongs to another cluster: its
	// X-Etcd-Cluster-ID differs from ours. Its text is the 412 body etcd
	// sends, hence no prefix.
	ErrClusterIDMismatch = errors.New("cluster ID mismatch")

	// ErrIncompatibleVersion means the remote's X-Server-Version or
	// X-Min-Cluster-Version rules out talking to it. Its text is the 412 body
	// etcd sends, hence no prefix.
	ErrIncompatibleVersion = errors.New("incompatible version")

	// ErrStopped means the transport, or the peer an operation was for, has
	// been stopped. Its text is the body of the 503 the raft routes answer
	// while the transport does not serve, hence no prefix.
	ErrStopped = errors.New("stopped")

	// ErrNotStarted means a method that needs a started transport (AddPeer,
	// AddRemote) was called before Start.
	ErrNotStarted = errors.New("rafthttp: Transport not started")

	// ErrAlreadyStarted means Start was called a second time.
	ErrAlreadyStarted = errors.New("rafthttp: Transport already started")

	// ErrMemberRemoved means the remote told us that this member has been
	// removed from the cluster (410 on a stream dial, 403 on a POST, unless
	// the 403 is marked as an identity refusal: ErrPeerIdentity). It is
	// posted to Transport.ErrorC. Its text is etcd's, without the prefix:
	// an application moving from etcd's transport may compare ErrorC's
	// texts, and compat/interop checks that both transports post the same.
	ErrMemberRemoved = errors.New("the member has been permanently removed from the cluster")

	// ErrMemberNotFound means a message or snapshot names a peer this
	// transport does not know.
	ErrMemberNotFound = errors.New("rafthttp: member not found")

	// ErrUnsupportedStreamType means the remote's version does not serve the
	// stream type we dialled.
	ErrUnsupportedStreamType = errors.New("rafthttp: unsupported stream type")

	// ErrExceedSizeLimit means a length read from the wire is above the limit
	// for its frame; nothing was allocated for it. The text is etcd's, which
	// happens to follow the prefix rule.
	ErrExceedSizeLimit = errors.New("rafthttp: error limit exceeded")

	// ErrMalformedFrame means bytes from the wire do not form a valid frame or
	// protobuf message.
	ErrMalformedFrame = errors.New("rafthttp: malformed frame")

	// ErrInvalidURL means a peer URL failed validation (scheme, host:port,
	// path). See parseURLs.
	ErrInvalidURL = errors.New("rafthttp: invalid peer URL")

	// ErrInvalidHeader means a request or response header from a peer could
	// not be parsed (a malformed version or ID). etcd crashes on some of
	// these; we answer them with an error.
	ErrInvalidHeader = errors.New("rafthttp: invalid header")

	// ErrSnapshotChecksum means a received snapshot's payload does not match
	// the CRC-32C its sender computed: it was corrupted on the way.
	ErrSnapshotChecksum = errors.New("rafthttp: snapshot checksum mismatch")

	// ErrSnapshotStalled means a snapshot transfer made no progress for the
	// progress timeout.
	ErrSnapshotStalled = errors.New("rafthttp: snapshot transfer made no progress")

	// ErrTooManySnapshots means the limit of concurrent snapshots was
	// reached; raft retries later.
	ErrTooManySnapshots = errors.New("rafthttp: too many concurrent snapshots")

	// ErrSnapshotSize means a payload did not have its declared size.
	ErrSnapshotSize = errors.New("rafthttp: snapshot payload size differs from the declared size")

	// ErrPeerIdentity means a connection or request was refused because a
	// certificate does not speak for the member concerned (see
	// Transport.PeerIdentity): we refused the server we dialled as member
	// n, or a peer answered that it refused our request (an answer marked
	// X-Rafthttp-Refused: peer-identity). Unlike another 403 on a POST, such
	// an answer is not taken to mean that this member was removed.
	ErrPeerIdentity = errors.New("rafthttp: peer identity refused")

	// ErrNoPeerIdentity means a certificate names no member: what
	// IdentityFromURISAN and IdentityFromDNSSAN return for a certificate
	// without the SAN they read, with two, or with one that is not a
	// member ID.
	ErrNoPeerIdentity = errors.New("rafthttp: certificate names no member")

	// ErrGroupExists means Mux.Add was given a Transport whose cluster ID
	// the Mux already serves.
	ErrGroupExists = errors.New("rafthttp: Mux already serves a group with this cluster ID")
)

// postCriticalError posts err to ErrorC without blocking.
func (t *Transport) postCriticalError(err error) {
	if t.ErrorC == nil {
		return
	}
	select {
	case t.ErrorC <- err:
	default:
	}
}
