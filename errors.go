package rafthttp

import "errors"

// Sentinel errors. Test for them with [errors.Is]: the transport wraps them
// with context (peer, URL, operation) as they travel up.
//
// Where etcd sends an error's text on the wire (the bodies of 412 responses),
// the text here is exactly etcd's, so that etcd peers classify our answers as
// they classify their own.
var (
	// ErrClusterIDMismatch means the remote belongs to another cluster: its
	// X-Etcd-Cluster-ID differs from ours. Its text is the 412 body etcd sends.
	ErrClusterIDMismatch = errors.New("cluster ID mismatch")

	// ErrIncompatibleVersion means the remote's X-Server-Version or
	// X-Min-Cluster-Version rules out talking to it. Its text is the 412 body
	// etcd sends.
	ErrIncompatibleVersion = errors.New("incompatible version")

	// ErrMemberRemoved means the remote told us that this member has been
	// removed from the cluster (410 on a stream dial, 403 on a POST). It is
	// posted to Transport.ErrorC.
	ErrMemberRemoved = errors.New("the member has been permanently removed from the cluster")

	// ErrMemberNotFound means a message or snapshot names a peer this
	// transport does not know.
	ErrMemberNotFound = errors.New("member not found")

	// ErrUnsupportedStreamType means the remote's version does not serve the
	// stream type we dialled.
	ErrUnsupportedStreamType = errors.New("unsupported stream type")

	// ErrStopped means the transport, or the peer an operation was for, has
	// been stopped.
	ErrStopped = errors.New("stopped")

	// ErrExceedSizeLimit means a length read from the wire is above the limit
	// for its frame; nothing was allocated for it. The text is etcd's.
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
)
