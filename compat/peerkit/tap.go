package peerkit

import (
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Tap is the recording middleware in front of a transport's handler, on
// either side of an interoperability test: it reports every answer (an
// "http" event), every byte written to a stream response ("wrote"), the
// end of every stream handler ("streamend") and, for the other requests,
// what the request carried (headers, trailer) and what of its body the
// handler read ("request"); and it can refuse new stream requests and cut
// the open ones.
//
// Refusing and cutting streams reach the connections only if the
// http.Server's ConnContext is [ConnContext].
type Tap struct {
	handler http.Handler
	report  func(Event)
	serial  atomic.Int64 // numbers the requests: Event.Conn

	mu      sync.Mutex
	blocked bool
	streams map[net.Conn]bool // the connections of the streams being served
}

// NewTap returns a Tap in front of handler that reports to report.
func NewTap(handler http.Handler, report func(Event)) *Tap {
	return &Tap{handler: handler, report: report, streams: map[net.Conn]bool{}}
}

type connKey struct{}

// ConnContext is the http.Server ConnContext a [Tap] needs: it keeps the
// connection in the context of its requests.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

func isStream(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/raft/stream/") }

func (t *Tap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conn := t.serial.Add(1)
	stream := isStream(r)
	if stream {
		nc, _ := r.Context().Value(connKey{}).(net.Conn)
		t.mu.Lock()
		blocked := t.blocked
		if !blocked && nc != nil {
			t.streams[nc] = true
		}
		t.mu.Unlock()
		if blocked {
			t.report(Event{Ev: "http", Method: r.Method, Path: r.URL.Path, Status: -1, Conn: conn})
			if nc != nil {
				nc.Close()
			}
			panic(http.ErrAbortHandler)
		}
		defer func() {
			t.mu.Lock()
			delete(t.streams, nc)
			t.mu.Unlock()
			t.report(Event{Ev: "streamend", Path: r.URL.Path, Conn: conn})
		}()
	}
	if !stream {
		body := &countingBody{ReadCloser: r.Body}
		if r.Body != http.NoBody { // which handlers may test for
			r.Body = body
		}
		// Deferred first, so it runs after the answer's report: by then
		// the handler is done with the body, and the server has filled
		// in the trailer if the handler read to the end.
		defer func() {
			t.report(Event{Ev: "request", Method: r.Method, Path: r.URL.Path, Conn: conn,
				Header: r.Header.Clone(), Trailer: r.Trailer.Clone(), Chunked: slices.Contains(r.TransferEncoding, "chunked"),
				Len: body.n.Load(), EOF: body.eof.Load()})
		}()
	}
	rw := &tapWriter{ResponseWriter: w, t: t, r: r, conn: conn, stream: stream}
	defer rw.done()
	t.handler.ServeHTTP(rw, r)
}

// countingBody counts what a handler reads of a request body. A handler
// may read from another goroutine, hence the atomics.
type countingBody struct {
	io.ReadCloser
	n   atomic.Int64
	eof atomic.Bool
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	if err == io.EOF {
		b.eof.Store(true)
	}
	return n, err
}

// BlockStreams makes the Tap refuse the stream requests it gets while on,
// by closing their connection before the handler sees them.
func (t *Tap) BlockStreams(on bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.blocked = on
}

// CutStreams closes the connections of the streams being served.
func (t *Tap) CutStreams() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.streams {
		c.Close()
	}
}

// tapWriter reports what the handler answers.
type tapWriter struct {
	http.ResponseWriter
	t      *Tap
	r      *http.Request
	conn   int64
	stream bool
	status int
}

func (w *tapWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		w.t.report(Event{Ev: "http", Method: w.r.Method, Path: w.r.URL.Path, Status: code, Conn: w.conn})
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *tapWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.stream && w.status == http.StatusOK && len(b) > 0 {
		w.t.report(Event{Ev: "wrote", Path: w.r.URL.Path, Conn: w.conn, Data: hex.EncodeToString(b)})
	}
	return w.ResponseWriter.Write(b)
}

func (w *tapWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

func (w *tapWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// done reports a handler that returned without writing anything: the
// server answers 200.
func (w *tapWriter) done() {
	if w.status == 0 {
		w.status = http.StatusOK
		w.t.report(Event{Ev: "http", Method: w.r.Method, Path: w.r.URL.Path, Status: http.StatusOK, Conn: w.conn})
	}
}
