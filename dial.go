package rafthttp

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// rtKind says what an HTTP client carries. A stream type's row in the
// streams table says which stream kind its reader dials with.
type rtKind int

const (
	rtStream       rtKind = iota // streams read as the network delivers (the bulk stream)
	rtSlicedStream               // streams read in slices while bulk traffic streams (deadlineConn)
	rtPipeline                   // POSTs, snapshots and the snapshot prober
)

// newRoundTripper builds an HTTP client of the given kind. Streams get no
// idle connections (each is long-lived) and per-Read/Write deadlines on the
// connection itself, so that a silent stream fails within the read timeout
// (etcd installs these deadlines where Go ignores them); sliced streams
// look at the socket every busyPollInterval while MsgApps stream. The
// pipeline keeps connections alive between POSTs.
func newRoundTripper(t *Transport, rd, wr time.Duration, kind rtKind) *http.Transport {
	d := &net.Dialer{Timeout: t.cfg.dialTimeout, KeepAlive: 30 * time.Second}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil || (rd == 0 && wr == 0) {
			return c, err
		}
		dc := &deadlineConn{Conn: c, rd: rd, wr: wr}
		if kind == rtSlicedStream {
			dc.bulk = t.bulk
		}
		return dc, nil
	}
	tr := &http.Transport{
		Proxy:               t.Proxy,
		DialContext:         dial,
		TLSHandshakeTimeout: 10 * time.Second,
		TLSClientConfig:     t.TLSClientConfig,
		MaxIdleConnsPerHost: -1,
	}
	if kind == rtPipeline {
		tr.MaxIdleConnsPerHost = 1024
		tr.IdleConnTimeout = 90 * time.Second
		// Snapshots go this way: bigger buffers, fewer system calls.
		tr.WriteBufferSize = 64 << 10
		tr.ReadBufferSize = 64 << 10
	}
	u := &unixTransport{base: tr, bySocket: map[string]*http.Transport{}}
	tr.RegisterProtocol("unix", unixScheme{u, "http"})
	tr.RegisterProtocol("unixs", unixScheme{u, "https"})
	t.unixRts = append(t.unixRts, u)
	return tr
}

// unixTransport serves unix:// and unixs:// peer URLs: the host part names
// the socket, and the request goes over it as http or https. Each socket
// gets its own clone of the base transport, kept so that its connections
// are reused, and closed at Stop.
type unixTransport struct {
	base     *http.Transport
	mu       sync.Mutex
	bySocket map[string]*http.Transport
}

// unixScheme is a unixTransport seen through one scheme.
type unixScheme struct {
	u      *unixTransport
	scheme string
}

func (s unixScheme) RoundTrip(req *http.Request) (*http.Response, error) {
	r2 := req.Clone(req.Context())
	r2.URL.Scheme = s.scheme
	return s.u.forSocket(req.URL.Host).RoundTrip(r2)
}

func (u *unixTransport) forSocket(socket string) *http.Transport {
	u.mu.Lock()
	defer u.mu.Unlock()
	if tr, ok := u.bySocket[socket]; ok {
		return tr
	}
	tr := u.base.Clone()
	dial := u.base.DialContext
	tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dial(ctx, "unix", socket)
	}
	u.bySocket[socket] = tr
	return tr
}

// closeIdleConnections closes the idle connections of every socket's
// transport.
func (u *unixTransport) closeIdleConnections() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, tr := range u.bySocket {
		tr.CloseIdleConnections()
	}
}

// deadlineConn sets a fresh deadline before every Read and Write, so that a
// silent or stuck stream fails within the timeout.
//
// A message stream's connection also has the transport's bulk clock: while
// MsgApps stream, its Read waits for the network in slices of
// busyPollInterval and tries the socket again after each, rather than
// relying on the network poller alone, which busy cores consult only every
// 10 ms (see yield.go). A read that finds data returns at once either way.
type deadlineConn struct {
	net.Conn
	rd, wr time.Duration
	bulk   *bulkClock  // message streams only
	kicked atomic.Bool // the bulk clock ended a wait
}

func (c *deadlineConn) Read(b []byte) (int, error) {
	if c.bulk == nil {
		if c.rd > 0 {
			if err := c.Conn.SetReadDeadline(time.Now().Add(c.rd)); err != nil {
				return 0, err
			}
		}
		return c.Conn.Read(b)
	}
	now := time.Now()
	var deadline time.Time // zero: none
	if c.rd > 0 {
		deadline = now.Add(c.rd)
	}
	for {
		n, again, err := c.readSlice(b, now, deadline)
		if !again {
			return n, err
		}
		now = time.Now()
		if !deadline.IsZero() && !now.Before(deadline) {
			return n, err
		}
	}
}

// readSlice reads with the transport's read deadline if bulk traffic is
// quiet, or within the next busyPollInterval if not. It asks for another
// slice (again) when the slice, or a wake from the bulk clock, ended the
// read with nothing read.
func (c *deadlineConn) readSlice(b []byte, now, deadline time.Time) (n int, again bool, err error) {
	busy := c.bulk.busy(now)
	if !busy {
		// A stamp that starts bulk traffic either comes before the
		// registration, and the second look sees it, or after, and wakes
		// this read (through its deadline, or kicked if it comes before
		// the deadline is set below).
		c.kicked.Store(false)
		c.bulk.wait(c)
		defer c.bulk.done(c)
		busy = c.bulk.busy(time.Now())
	}
	wait := deadline
	if busy {
		wait = now.Add(busyPollInterval)
		if !deadline.IsZero() && deadline.Before(wait) {
			wait = deadline
		}
	}
	if err := c.Conn.SetReadDeadline(wait); err != nil {
		return 0, false, err
	}
	if !busy && c.kicked.Load() {
		return 0, true, nil
	}
	n, err = c.Conn.Read(b)
	if n > 0 || err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		return n, false, err
	}
	return n, busy || c.kicked.Load(), err
}

func (c *deadlineConn) Write(b []byte) (int, error) {
	if c.wr > 0 {
		if err := c.Conn.SetWriteDeadline(time.Now().Add(c.wr)); err != nil {
			return 0, err
		}
	}
	return c.Conn.Write(b)
}
