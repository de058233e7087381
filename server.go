package rafthttp

import (
	"net/http"
	"time"
)

// The settings of the peer listener's http.Server, as [NewServer] applies
// them. They are exported for servers built elsewhere (a framework's, or one
// built around an existing literal): copy them onto it.
//
// A zero http.Server has no header timeout and no idle timeout: a client
// that sends its request headers a byte at a time, or opens connections and
// leaves them idle, holds a connection (and a goroutine) for ever. These
// values cut such clients off without ever cutting what raft peers do: they
// send their request headers at once, and their long-lived stream responses
// are neither reading headers nor idle.
const (
	// ServerReadHeaderTimeout bounds the request headers: on a new
	// connection from when it is accepted, or with TLS from the end of the
	// handshake (which net/http bounds by this value too), and on a
	// kept-alive one from the first bytes of the next request. Peers write their headers at once;
	// 10 s is our client's TLS handshake timeout and the default
	// PipelineTimeout, by which a pipeline POST has given up anyway, and
	// leaves room for a few TCP retransmissions (1 s, 2 s, 4 s) on a lossy
	// link.
	ServerReadHeaderTimeout = 10 * time.Second
	// ServerIdleTimeout closes a kept-alive connection that carries no
	// request for this long. Only pipeline POSTs, snapshots and probes
	// reuse connections; a stream's connection is busy with its response
	// for as long as it lives, so this never applies to it. It is longer
	// than the 90 s after which our client (and Go's default client)
	// closes its own idle connections, so that the client closes first: a
	// POST written just as the server closes its connection fails, as Go's
	// client retries a POST only if none of it was written yet.
	ServerIdleTimeout = 2 * time.Minute
	// ServerMaxHeaderBytes bounds the request headers, down from net/http's
	// 1 MiB. A peer's headers take a few hundred bytes (X-PeerURLs grows
	// by some 30 bytes per URL), so 64 KiB leaves a wide margin for
	// proxies' additions while a client can make the server hold 16 times
	// less per connection.
	ServerMaxHeaderBytes = 64 << 10
)

// NewServer returns an http.Server for the peer listener, serving h: the
// Transport's Handler, or a mux that mounts it on /raft and /raft/. It sets
// ReadHeaderTimeout, IdleTimeout and MaxHeaderBytes to the Server constants
// above, so that slow or idle clients are cut off. Set anything else (Addr,
// TLSConfig, ErrorLog, BaseContext) on the result before serving.
//
// ReadTimeout and WriteTimeout stay zero on purpose: net/http counts both
// from the start of a request, and the raft routes bound their own reads and
// writes. The pipeline and snapshot handlers give a body a grace to start and
// then require a minimum rate (see PipelineTimeout and
// SnapshotProgressTimeout); the stream handler lifts any read deadline, as a
// stream lives for hours, and a stream's writer bounds each write by
// ConnWriteTimeout. A WriteTimeout would moreover fail the answer to a
// snapshot whose transfer and fsync outlast it. If you mount other handlers
// on this server, they get none of this: bound their bodies yourself, or
// serve them from another server with a ReadTimeout.
func NewServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: ServerReadHeaderTimeout,
		IdleTimeout:       ServerIdleTimeout,
		MaxHeaderBytes:    ServerMaxHeaderBytes,
	}
}
