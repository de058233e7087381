// Package peerkit is the part of the etcd peer programs
// (../etcdpeer35, ../etcdpeer36, ../etcdpeer37) that does not depend on the
// etcd release line, and the recording pieces the interoperability tests
// (../interop) share with them.
//
// A peer program runs etcd's own raft HTTP transport (package
// go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp) of one etcd line behind
// an HTTP server on a loopback port, the way an etcd member serves it
// (etcd's peer listener with its read and write deadlines), and lets a test
// drive it over stdin and stdout. Its main calls [Run] with the [Adapter] of
// its line, which is all that differs between the lines (the raftpb package,
// messages by value or by pointer). Messages cross the Adapter as protobuf
// bytes, never as raftpb structs, so this package imports neither etcd nor
// raft, only the standard library.
//
// # Protocol
//
// Flags: -id and -cluster (member and cluster IDs, decimal), -snapdir (where
// etcd's Snapshotter saves received snapshots) and -read-timeout (etcd's
// rafthttp.ConnReadTimeout; etcd's default, 5 s, unless set).
//
// Standard output carries events ([Event]), one JSON object per line. The
// first is {"ev":"listening","url":...,"version":...}. Every command is
// answered by {"ev":"reply","seq":N,...} with "err" set if it failed.
// Asynchronous events:
//
//	process     Raft.Process got a message: "msg" is its protobuf, hex
//	unreachable Raft.ReportUnreachable("id")
//	snapreport  Raft.ReportSnapshot("id", "status")
//	errorc      a value arrived on the Transport's ErrorC: "err"
//	snapsent    a snapshot given to SendSnapshot ended: "seq" of the
//	            command, "ok" what its CloseNotify said
//	http        the server answered a request: "method", "path", "status"
//	            (-1: refused because streams are blocked), "conn" a serial
//	wrote       the server wrote bytes to a stream response: "path",
//	            "conn", "data" (hex), in the order written
//	streamend   the handler of the stream request "conn" returned: etcd's
//	            stream writer has let go of the connection
//	request     the handler of a request other than a stream returned
//	            (after its "http" event): "method", "path", "conn";
//	            "header", the request's header as Go's server leaves it
//	            (Transfer-Encoding and Trailer taken out); "chunked", sent
//	            with chunked transfer coding; "trailer", every trailer key
//	            the request declared with the values that followed its
//	            body (null if none did); "len", the body bytes the handler
//	            read; "eof", whether it read to the end
//	applied     the raft member (see raftstart) applied a committed normal
//	            entry: "index", "term", "data" (hex)
//
// Standard input carries commands ([Command]), one JSON object per line,
// each with a "seq" and an "op":
//
//	addpeer      AddPeer("id", "urls")
//	removepeer   RemovePeer("id")
//	send         Send the message whose protobuf is "msg" (hex)
//	snapshot     SendSnapshot of the MsgSnap "msg" with a payload of "size"
//	             bytes (see [NewPayload])
//	removed      make IsIDRemoved("id") answer "on"
//	reject403    make Process fail with etcd's 403 ("on")
//	blockstreams while "on", stream requests are refused by closing the
//	             connection before etcd sees them
//	cutstreams   close the connections of the streams being served
//	status       reply with ActiveSince("id") ("since", unix nanoseconds, 0
//	             if inactive) and ActivePeers ("peers")
//	raftstart    start a raft member of the line's raft library on the
//	             transport ([RaftAdapter]; lines without one fail it):
//	             member -id of a new cluster of "peers", ticking every
//	             "tickms" milliseconds, "election" ticks; from then on
//	             Process hands messages to it instead of reporting them
//	propose      propose "data" (hex); fails if raft dropped it
//	raftstatus   reply with the member's view of "lead" and "term"
//	rafttransfer ask the leader to hand the lead to member "id"
//	raftstop     stop the raft member
//	stop         Stop the raft member and the transport, close the
//	             server, reply, and exit
//
// The program also exits when standard input ends.
package peerkit

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// Event is one line of a peer program's output, and what the tests record
// of either side (see the package documentation for the kinds).
type Event struct {
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
	Index   uint64 `json:"index,omitempty"`
	Term    uint64 `json:"term,omitempty"`
	Lead    uint64 `json:"lead,omitempty"`
	// The "request" event's: what the request carried and what of its
	// body the handler read.
	Header  map[string][]string `json:"header,omitempty"`
	Trailer map[string][]string `json:"trailer,omitempty"`
	Chunked bool                `json:"chunked,omitempty"`
	Len     int64               `json:"len,omitempty"`
	EOF     bool                `json:"eof,omitempty"`
}

// Command is one line of a peer program's input.
type Command struct {
	Seq  int64    `json:"seq"`
	Op   string   `json:"op"`
	ID   uint64   `json:"id,omitempty"`
	URLs []string `json:"urls,omitempty"`
	Msg  string   `json:"msg,omitempty"`
	Size int64    `json:"size,omitempty"`
	On   bool     `json:"on,omitempty"`
	// raftstart and propose
	Peers    []uint64 `json:"peers,omitempty"`
	Election int      `json:"election,omitempty"`
	TickMS   int      `json:"tickms,omitempty"`
	Data     string   `json:"data,omitempty"`
}

// Config is what a peer program is started with.
type Config struct {
	ID        uint64 // member ID
	ClusterID uint64
	SnapDir   string // where etcd's Snapshotter saves received snapshots
	// ReadTimeout is etcd's rafthttp.ConnReadTimeout; zero leaves etcd's
	// default.
	ReadTimeout time.Duration
}

// Raft is what etcd's rafthttp.Raft reports to, messages as protobuf bytes.
// [Recorder] implements it.
type Raft interface {
	Process(msg []byte) error
	IsIDRemoved(id uint64) bool
	ReportUnreachable(id uint64)
	ReportSnapshot(id uint64, status int)
}

// Adapter is the part of a peer program that depends on its etcd line.
type Adapter interface {
	// Version is the version of etcd the program is built with.
	Version() string
	// Start sets etcd's rafthttp.ConnReadTimeout to cfg.ReadTimeout (if
	// not zero), opens etcd's peer listener (rafthttp.NewListener) on
	// 127.0.0.1, any port, and starts etcd's Transport as member cfg.ID of
	// cluster cfg.ClusterID, announcing the listener's URL and reporting to
	// raft. The caller serves the Transport's Handler on the listener.
	Start(cfg Config, raft Raft) (Transport, net.Listener, error)
}

// Transport is etcd's rafthttp.Transport, with member IDs as uint64 and
// messages as protobuf bytes.
type Transport interface {
	// Handler serves etcd's peer endpoints (/raft and below).
	Handler() http.Handler
	// ErrorC is the Transport's ErrorC.
	ErrorC() <-chan error
	AddPeer(id uint64, urls []string)
	RemovePeer(id uint64)
	// Send decodes msg and sends it.
	Send(msg []byte) error
	// SendSnapshot decodes the MsgSnap msg and sends it with a payload of
	// size bytes read from payload; sent yields what etcd's snap.Message
	// CloseNotify says.
	SendSnapshot(msg []byte, payload io.ReadCloser, size int64) (sent <-chan bool, err error)
	// ActiveSince is the zero time if the peer is not active.
	ActiveSince(id uint64) time.Time
	ActivePeers() int
	Stop()
}

// Run is the main function of a peer program: it parses the flags, starts
// the transport of a and serves the protocol on stdin and stdout (see
// [Serve]). It exits the process with status 1 if that fails.
func Run(a Adapter) {
	fs := flag.NewFlagSet(os.Args[0], flag.ExitOnError)
	id := fs.Uint64("id", 0, "member ID")
	cluster := fs.Uint64("cluster", 0, "cluster ID")
	snapDir := fs.String("snapdir", "", "snapshot directory")
	readTimeout := fs.Duration("read-timeout", 0, "etcd's rafthttp.ConnReadTimeout (0: etcd's default)")
	fs.Parse(os.Args[1:])
	err := errors.New("-id, -cluster and -snapdir are required")
	if *id != 0 && *cluster != 0 && *snapDir != "" {
		cfg := Config{ID: *id, ClusterID: *cluster, SnapDir: *snapDir, ReadTimeout: *readTimeout}
		err = Serve(a, cfg, os.Stdin, os.Stdout)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdpeer:", err)
		os.Exit(1)
	}
}

// Serve starts the transport of a with cfg, serves it behind a [Tap] on
// etcd's peer listener, writes events to out and runs the commands read
// from in, until a stop command or the end of in.
func Serve(a Adapter, cfg Config, in io.Reader, out io.Writer) error {
	o := &output{w: bufio.NewWriter(out)}
	s := &session{out: o, rec: NewRecorder(o.emit)}
	tr, ln, err := a.Start(cfg, s.rec)
	if err != nil {
		return err
	}
	s.tr = tr
	s.tap = NewTap(tr.Handler(), o.emit)
	hs := &http.Server{
		Handler:     s.tap,
		ReadTimeout: 5 * time.Minute, // etcd's peer server
		ConnContext: ConnContext,
	}
	var wg sync.WaitGroup
	wg.Go(func() { hs.Serve(ln) })
	stopErrc := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case err := <-tr.ErrorC():
				o.emit(Event{Ev: "errorc", Err: err.Error()})
			case <-stopErrc:
				return
			}
		}
	})
	o.emit(Event{Ev: "listening", URL: "http://" + ln.Addr().String(), Version: a.Version()})

	stop := func() {
		s.stopRaft()
		tr.Stop()
		hs.Close()
		close(stopErrc)
		wg.Wait()
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var c Command
		if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
			o.emit(Event{Ev: "reply", Err: "bad command: " + err.Error()})
			continue
		}
		reply := Event{Ev: "reply", Seq: c.Seq}
		if c.Op == "stop" {
			stop()
			o.emit(reply)
			return nil
		}
		do := s.do
		switch c.Op {
		case "raftstart", "propose", "raftstatus", "rafttransfer", "raftstop":
			do = func(c Command, reply *Event) error { return s.doRaft(a, cfg, c, reply) }
		}
		if err := do(c, &reply); err != nil {
			reply.Err = err.Error()
		}
		o.emit(reply)
	}
	stop()
	return sc.Err()
}

// session runs the commands.
type session struct {
	out *output
	rec *Recorder
	tr  Transport
	tap *Tap
	// node is the raft member, if raftstart started one.
	node RaftNode
}

// do runs c (but stop), filling in reply.
func (s *session) do(c Command, reply *Event) error {
	switch c.Op {
	case "addpeer":
		s.tr.AddPeer(c.ID, c.URLs)
	case "removepeer":
		s.tr.RemovePeer(c.ID)
	case "send":
		b, err := hex.DecodeString(c.Msg)
		if err != nil {
			return err
		}
		return s.tr.Send(b)
	case "snapshot":
		b, err := hex.DecodeString(c.Msg)
		if err != nil {
			return err
		}
		sent, err := s.tr.SendSnapshot(b, NewPayload(c.Size), c.Size)
		if err != nil {
			return err
		}
		go func() { s.out.emit(Event{Ev: "snapsent", Seq: c.Seq, OK: <-sent}) }()
	case "removed":
		s.rec.SetRemoved(c.ID, c.On)
	case "reject403":
		s.rec.Reject403(c.On)
	case "blockstreams":
		s.tap.BlockStreams(c.On)
	case "cutstreams":
		s.tap.CutStreams()
	case "status":
		if since := s.tr.ActiveSince(c.ID); !since.IsZero() {
			reply.Since = since.UnixNano()
		}
		reply.Peers = s.tr.ActivePeers()
	default:
		return fmt.Errorf("unknown op %q", c.Op)
	}
	return nil
}

// output serialises events, one JSON object a line.
type output struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func (o *output) emit(e Event) {
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
