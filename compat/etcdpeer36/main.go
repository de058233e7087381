// Command etcdpeer runs etcd's own raft HTTP transport (package
// go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp) of one etcd release line
// behind an HTTP server on a loopback port, the way an etcd member serves it
// (etcd's peer listener with its read and write deadlines), and lets a test
// drive it over stdin and stdout. It is the etcd side of the interoperability
// tests of github.com/raftkit/rafthttp, which it does not import.
//
// This file is identical in compat/etcdpeer35, etcdpeer36 and etcdpeer37;
// what differs between the etcd lines (raftpb types, value or pointer
// messages) lives in etcd.go.
//
// # Protocol
//
// Flags: -id and -cluster (member and cluster IDs, decimal), -snapdir (where
// etcd's Snapshotter saves received snapshots) and -read-timeout (etcd's
// rafthttp.ConnReadTimeout; 5 s, etcd's default, unless set).
//
// Standard output carries events, one JSON object per line. The first is
// {"ev":"listening","url":...,"version":...}. Every command is answered by
// {"ev":"reply","seq":N,...} with "err" set if it failed. Asynchronous
// events:
//
//	process     Raft.Process got a message: "msg" is its protobuf, hex
//	unreachable Raft.ReportUnreachable(id)
//	snapreport  Raft.ReportSnapshot(id, status)
//	errorc      a value arrived on the Transport's ErrorC: "err"
//	snapsent    a snapshot given to SendSnapshot ended: "seq" of the
//	            command, "ok" what its CloseNotify said
//	http        the server answered a request: "method", "path", "status"
//	            (-1: refused because streams are blocked), "conn" a serial
//	wrote       the server wrote bytes to a stream response: "path",
//	            "conn", "data" (hex), in the order written
//	streamend   the handler of the stream request "conn" returned: etcd's
//	            stream writer has let go of the connection
//
// Standard input carries commands, one JSON object per line, each with a
// "seq" and an "op":
//
//	addpeer     AddPeer(id, urls)
//	removepeer  RemovePeer(id)
//	send        Send the message whose protobuf is "msg" (hex)
//	snapshot    SendSnapshot of the MsgSnap "msg" with a payload of "size"
//	            bytes, byte i being byte(i % 251)
//	removed     make IsIDRemoved(id) answer "on"
//	reject403   make Process fail with etcd's 403 ("on")
//	blockstreams while "on", stream requests are refused by closing the
//	            connection before etcd sees them
//	cutstreams  close the connections of the streams being served
//	status      reply with ActiveSince(id) ("since", unix nanoseconds, 0 if
//	            inactive) and ActivePeers ("peers")
//	stop        Stop the transport, close the server, reply, and exit
//
// The program also exits when standard input ends.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.uber.org/zap"
)

// event is one line of output.
type event struct {
	Ev      string `json:"ev"`
	Seq     int64  `json:"seq,omitempty"`
	Err     string `json:"err,omitempty"`
	URL     string `json:"url,omitempty"`
	Version string `json:"version,omitempty"`
	ID      uint64 `json:"id,omitempty"`
	Msg     string `json:"msg,omitempty"`
	Status  int    `json:"status,omitempty"`
	OK      bool   `json:"ok,omitempty"`
	Method  string `json:"method,omitempty"`
	Path    string `json:"path,omitempty"`
	Conn    int64  `json:"conn,omitempty"`
	Data    string `json:"data,omitempty"`
	Since   int64  `json:"since,omitempty"`
	Peers   int    `json:"peers,omitempty"`
}

// command is one line of input.
type command struct {
	Seq  int64    `json:"seq"`
	Op   string   `json:"op"`
	ID   uint64   `json:"id"`
	URLs []string `json:"urls"`
	Msg  string   `json:"msg"`
	Size int64    `json:"size"`
	On   bool     `json:"on"`
}

// output serialises events on stdout.
type output struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *output) emit(e event) {
	b, err := json.Marshal(e)
	if err != nil {
		panic(err) // only plain fields: cannot happen
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.w.Write(b)
	o.w.WriteByte('\n')
	o.w.Flush()
}

// recorder is the application side of etcd's Transport: what the Raft
// callbacks do, and the switches the test flips.
type recorder struct {
	out *output

	mu        sync.Mutex
	removed   map[uint64]bool
	reject403 bool
}

func (r *recorder) process(msg []byte) error {
	r.mu.Lock()
	reject := r.reject403
	r.mu.Unlock()
	if reject {
		return errRemovedMember{}
	}
	r.out.emit(event{Ev: "process", Msg: hex.EncodeToString(msg)})
	return nil
}

func (r *recorder) isIDRemoved(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.removed[id]
}

func (r *recorder) reportUnreachable(id uint64) { r.out.emit(event{Ev: "unreachable", ID: id}) }

func (r *recorder) reportSnapshot(id uint64, status int) {
	r.out.emit(event{Ev: "snapreport", ID: id, Status: status})
}

// errRemovedMember is what etcd's server answers a message from a removed
// member with: it writes its own 403 response.
type errRemovedMember struct{}

func (errRemovedMember) Error() string { return "cannot process message from removed member" }

func (errRemovedMember) WriteTo(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusForbidden)
	fmt.Fprintln(w, `{"message":"cannot process message from removed member"}`)
}

// server wraps etcd's handler: it reports every answer and every byte
// written to a stream, and can refuse or cut streams.
type server struct {
	out     *output
	handler http.Handler

	serial  atomic.Int64
	mu      sync.Mutex
	blocked bool
	streams map[net.Conn]bool
}

type connKey struct{}

func isStream(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/raft/stream/") }

func (s *server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	conn := s.serial.Add(1)
	if isStream(r) {
		nc, _ := r.Context().Value(connKey{}).(net.Conn)
		s.mu.Lock()
		blocked := s.blocked
		if !blocked && nc != nil {
			s.streams[nc] = true
		}
		s.mu.Unlock()
		if blocked {
			s.out.emit(event{Ev: "http", Method: r.Method, Path: r.URL.Path, Status: -1, Conn: conn})
			if nc != nil {
				nc.Close()
			}
			panic(http.ErrAbortHandler)
		}
		defer func() {
			s.mu.Lock()
			delete(s.streams, nc)
			s.mu.Unlock()
			s.out.emit(event{Ev: "streamend", Path: r.URL.Path, Conn: conn})
		}()
	}
	rw := &recWriter{ResponseWriter: w, s: s, r: r, conn: conn, stream: isStream(r)}
	defer rw.done()
	s.handler.ServeHTTP(rw, r)
}

func (s *server) block(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blocked = on
}

func (s *server) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.streams {
		c.Close()
	}
}

// recWriter reports what the handler answers.
type recWriter struct {
	http.ResponseWriter
	s      *server
	r      *http.Request
	conn   int64
	stream bool
	status int
}

func (w *recWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
		w.s.out.emit(event{Ev: "http", Method: w.r.Method, Path: w.r.URL.Path, Status: code, Conn: w.conn})
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *recWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.stream && w.status == http.StatusOK && len(b) > 0 {
		w.s.out.emit(event{Ev: "wrote", Path: w.r.URL.Path, Conn: w.conn, Data: hex.EncodeToString(b)})
	}
	return w.ResponseWriter.Write(b)
}

func (w *recWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

func (w *recWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *recWriter) done() {
	if w.status == 0 {
		w.status = http.StatusOK
		w.s.out.emit(event{Ev: "http", Method: w.r.Method, Path: w.r.URL.Path, Status: http.StatusOK, Conn: w.conn})
	}
}

// payload yields size bytes, byte i being byte(i % 251).
type payload struct {
	off, size int64
}

func (p *payload) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	n := int64(len(b))
	if rest := p.size - p.off; n > rest {
		n = rest
	}
	for i := range n {
		b[i] = byte((p.off + i) % 251)
	}
	p.off += n
	return int(n), nil
}

func (p *payload) Close() error { return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "etcdpeer:", err)
		os.Exit(1)
	}
}

func run() error {
	id := flag.Uint64("id", 0, "member ID")
	cluster := flag.Uint64("cluster", 0, "cluster ID")
	snapDir := flag.String("snapdir", "", "snapshot directory")
	readTimeout := flag.Duration("read-timeout", rafthttp.DefaultConnReadTimeout, "etcd's rafthttp.ConnReadTimeout")
	flag.Parse()
	if *id == 0 || *cluster == 0 || *snapDir == "" {
		return errors.New("-id, -cluster and -snapdir are required")
	}
	rafthttp.ConnReadTimeout = *readTimeout

	cfg := zap.NewDevelopmentConfig()
	cfg.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	lg, err := cfg.Build()
	if err != nil {
		return err
	}
	out := &output{w: bufio.NewWriter(os.Stdout)}
	rec := &recorder{out: out, removed: map[uint64]bool{}}

	// The listener etcd serves its peers on, with its per-Read and
	// per-Write deadlines.
	ln, err := rafthttp.NewListener(url.URL{Scheme: "http", Host: "127.0.0.1:0"}, &transport.TLSInfo{})
	if err != nil {
		return err
	}
	self := "http://" + ln.Addr().String()
	idStr := types.ID(*id).String()
	tr := &rafthttp.Transport{
		Logger:      lg,
		DialTimeout: 2 * time.Second, // etcd's default: 1 s + the election timeout
		ID:          types.ID(*id),
		URLs:        types.MustNewURLs([]string{self}),
		ClusterID:   types.ID(*cluster),
		Raft:        etcdRaft{rec},
		Snapshotter: snap.New(lg, *snapDir),
		ServerStats: stats.NewServerStats("", idStr),
		LeaderStats: stats.NewLeaderStats(lg, idStr),
		ErrorC:      make(chan error, 1),
	}
	if err := tr.Start(); err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(rafthttp.RaftPrefix, tr.Handler())
	mux.Handle(rafthttp.RaftPrefix+"/", tr.Handler())
	srv := &server{out: out, handler: mux, streams: map[net.Conn]bool{}}
	hs := &http.Server{
		Handler:     srv,
		ReadTimeout: 5 * time.Minute, // etcd's peer server
		ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, connKey{}, c) },
		ErrorLog:    nil,
	}
	go hs.Serve(ln)

	stopErrc := make(chan struct{})
	go func() {
		for {
			select {
			case err := <-tr.ErrorC:
				out.emit(event{Ev: "errorc", Err: err.Error()})
			case <-stopErrc:
				return
			}
		}
	}()
	out.emit(event{Ev: "listening", URL: self, Version: etcdVersion})

	stop := func() {
		tr.Stop()
		hs.Close()
		close(stopErrc)
	}
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 64<<20)
	for in.Scan() {
		var c command
		if err := json.Unmarshal(in.Bytes(), &c); err != nil {
			out.emit(event{Ev: "reply", Err: "bad command: " + err.Error()})
			continue
		}
		reply := event{Ev: "reply", Seq: c.Seq}
		switch c.Op {
		case "addpeer":
			tr.AddPeer(types.ID(c.ID), c.URLs)
		case "removepeer":
			tr.RemovePeer(types.ID(c.ID))
		case "send":
			err = withMessage(c.Msg, func(b []byte) error { return sendMessage(tr, b) })
		case "snapshot":
			err = withMessage(c.Msg, func(b []byte) error {
				done, err := sendSnapshot(tr, b, &payload{size: c.Size}, c.Size)
				if err == nil {
					go func() { out.emit(event{Ev: "snapsent", Seq: c.Seq, OK: <-done}) }()
				}
				return err
			})
		case "removed":
			rec.mu.Lock()
			rec.removed[c.ID] = c.On
			rec.mu.Unlock()
		case "reject403":
			rec.mu.Lock()
			rec.reject403 = c.On
			rec.mu.Unlock()
		case "blockstreams":
			srv.block(c.On)
		case "cutstreams":
			srv.cut()
		case "status":
			if since := tr.ActiveSince(types.ID(c.ID)); !since.IsZero() {
				reply.Since = since.UnixNano()
			}
			reply.Peers = tr.ActivePeers()
		case "stop":
			stop()
			out.emit(reply)
			return nil
		default:
			err = fmt.Errorf("unknown op %q", c.Op)
		}
		if err != nil {
			reply.Err = err.Error()
			err = nil
		}
		out.emit(reply)
	}
	stop()
	return in.Err()
}

func withMessage(h string, f func([]byte) error) error {
	b, err := hex.DecodeString(h)
	if err != nil {
		return err
	}
	return f(b)
}
