package interop

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/compat/peerkit"
)

// side is one member of a test pair: our Transport, or an etcd peer
// process. Scenarios are written against it, so that each runs in both
// directions.
type side interface {
	name() string
	id() uint64
	url() string
	log() *eventLog
	snapDir() string
	// heartbeatLen is the length of the protobuf of the link heartbeat
	// this side writes on the message stream.
	heartbeatLen() int

	addPeer(t testing.TB, id uint64, url string)
	send(t testing.TB, m *raftpb.Message)
	// sendSnapshot sends m with a payload of size bytes (see
	// peerkit.NewPayload)
	// over /raft/snapshot; a snapsent event reports the outcome.
	sendSnapshot(t testing.TB, m *raftpb.Message, size int64)
	setRemoved(t testing.TB, id uint64, removed bool)
	// reject403 makes Process fail with a 403 answer, as etcd's server
	// answers a message from a removed member.
	reject403(t testing.TB, on bool)
	// blockStreams makes the side's server refuse stream requests (by
	// closing the connection); cutStreams closes the streams it serves.
	blockStreams(t testing.TB, on bool)
	cutStreams(t testing.TB)
	// activeSince is the transport's ActiveSince(id).
	activeSince(t testing.TB, id uint64) time.Time
	// alive fails the test if the side no longer answers.
	alive(t testing.TB)
}

// dumpEvents logs, if the test failed, what s reported (but the bytes of
// its streams).
func dumpEvents(t testing.TB, s side) {
	if !t.Failed() {
		return
	}
	var b strings.Builder
	for _, e := range s.log().since(0, func(e event) bool { return e.Ev != "wrote" }) {
		fmt.Fprintf(&b, "\n\t%+v", e)
	}
	t.Logf("events of %s:%s", s.name(), b.String())
}

// ---------------------------------------------------------------------------
// Our side.

// ourSide is our Transport behind an httptest server, with the same
// recording middleware (peerkit.Tap) and application (peerkit.Recorder) as
// the etcd peer program.
type ourSide struct {
	tr     *rafthttp.Transport
	rec    *peerkit.Recorder
	srv    *httptest.Server
	tap    *peerkit.Tap
	events *eventLog
	dir    string
	base   string
	errc   chan error
	stopc  chan struct{}
	wg     sync.WaitGroup
}

const ourID = 0x2a

// newOurSide starts our transport; configure, if not nil, adjusts it before
// Start.
func newOurSide(t testing.TB, clusterID uint64, configure func(*rafthttp.Transport)) *ourSide {
	t.Helper()
	return newOurSideServed(t, clusterID, configure, nil)
}

// newOurSideServed is newOurSide whose server's handler (behind the Tap)
// serve returns for the started transport; nil means the transport's
// Handler on /raft and /raft/.
func newOurSideServed(t testing.TB, clusterID uint64, configure func(*rafthttp.Transport), serve func(*rafthttp.Transport) http.Handler) *ourSide {
	t.Helper()
	s := &ourSide{events: &eventLog{}, dir: t.TempDir(), errc: make(chan error, 1), stopc: make(chan struct{})}
	s.rec = peerkit.NewRecorder(s.events.add)
	s.tr = &rafthttp.Transport{
		ID:            ourID,
		ClusterID:     clusterID,
		Raft:          recRaft{s.rec},
		Logger:        zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel)).Named("ours"),
		ErrorC:        s.errc,
		SnapshotStore: rafthttp.DirSnapshotStore{Dir: s.dir},
		DialRetryMin:  50 * time.Millisecond,
		DialRetryMax:  200 * time.Millisecond,
	}
	s.srv = httptest.NewUnstartedServer(nil)
	s.srv.Config.ConnContext = peerkit.ConnContext
	s.base = "http://" + s.srv.Listener.Addr().String()
	s.tr.URLs = []string{s.base}
	if configure != nil {
		configure(s.tr)
	}
	if err := s.tr.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	var h http.Handler
	if serve != nil {
		h = serve(s.tr)
	} else {
		mux := http.NewServeMux()
		mux.Handle(rafthttp.RaftPrefix, s.tr.Handler())
		mux.Handle(rafthttp.RaftPrefix+"/", s.tr.Handler())
		h = mux
	}
	s.tap = peerkit.NewTap(h, s.events.add)
	s.srv.Config.Handler = s.tap
	s.srv.Start()
	s.wg.Go(func() {
		for {
			select {
			case err := <-s.errc:
				s.events.add(event{Ev: "errorc", Err: err.Error()})
			case <-s.stopc:
				return
			}
		}
	})
	t.Cleanup(func() {
		dumpEvents(t, s)
		s.tr.Stop()
		s.srv.CloseClientConnections()
		s.srv.Close()
		close(s.stopc)
		s.wg.Wait()
	})
	return s
}

func (s *ourSide) name() string      { return "ours" }
func (s *ourSide) id() uint64        { return ourID }
func (s *ourSide) url() string       { return s.base }
func (s *ourSide) log() *eventLog    { return s.events }
func (s *ourSide) snapDir() string   { return s.dir }
func (s *ourSide) heartbeatLen() int { return 2 }

func (s *ourSide) addPeer(t testing.TB, id uint64, url string) {
	t.Helper()
	if err := s.tr.AddPeer(id, []string{url}); err != nil {
		t.Fatalf("AddPeer: %v", err)
	}
}

func (s *ourSide) send(_ testing.TB, m *raftpb.Message) { s.tr.Send([]*raftpb.Message{m}) }

func (s *ourSide) sendSnapshot(_ testing.TB, m *raftpb.Message, size int64) {
	errc := s.tr.SendSnapshot(rafthttp.SnapshotMessage{Message: m, Payload: peerkit.NewPayload(size), PayloadSize: size})
	s.wg.Go(func() {
		err := <-errc
		e := event{Ev: "snapsent", OK: err == nil}
		if err != nil {
			e.Err = err.Error()
		}
		s.events.add(e)
	})
}

func (s *ourSide) setRemoved(_ testing.TB, id uint64, removed bool) { s.rec.SetRemoved(id, removed) }
func (s *ourSide) reject403(_ testing.TB, on bool)                  { s.rec.Reject403(on) }
func (s *ourSide) blockStreams(_ testing.TB, on bool)               { s.tap.BlockStreams(on) }
func (s *ourSide) cutStreams(testing.TB)                            { s.tap.CutStreams() }

func (s *ourSide) activeSince(_ testing.TB, id uint64) time.Time { return s.tr.ActiveSince(id) }

func (s *ourSide) alive(t testing.TB) {
	t.Helper()
	resp, err := http.Get(s.base + rafthttp.ProbingPrefix)
	if err != nil {
		t.Fatalf("our server does not answer: %v", err)
	}
	resp.Body.Close()
}

// recRaft is our Transport's Raft: it hands what the transport reports to
// the recorder the etcd peer program uses too, messages as protobuf.
type recRaft struct{ rec *peerkit.Recorder }

func (r recRaft) Process(_ context.Context, m *raftpb.Message) error {
	b, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	return r.rec.Process(b)
}

func (r recRaft) IsIDRemoved(id uint64) bool  { return r.rec.IsIDRemoved(id) }
func (r recRaft) ReportUnreachable(id uint64) { r.rec.ReportUnreachable(id) }
func (r recRaft) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	r.rec.ReportSnapshot(id, int(status))
}

// ---------------------------------------------------------------------------
// The etcd side.

// line is an etcd release line and the peer program built on it.
type line struct {
	name string // "3.5"
	dir  string // the program's module, beside this one
	// heartbeatLen is the protobuf length of etcd's link heartbeat on the
	// message stream: its raftpb encodes zero fields differently per line.
	heartbeatLen int
}

var lines = []line{
	{name: "3.5", dir: "etcdpeer35", heartbeatLen: 30},
	{name: "3.6", dir: "etcdpeer36", heartbeatLen: 20},
	{name: "3.7", dir: "etcdpeer37", heartbeatLen: 2},
}

// binDir holds the peer programs built by this test binary (see TestMain).
var binDir string

type build struct {
	once sync.Once
	path string
	err  error
	out  []byte
	took time.Duration
}

var builds sync.Map // line name → *build

// peerBinary builds the peer program of l once per test binary.
func peerBinary(t testing.TB, l line) string {
	t.Helper()
	v, _ := builds.LoadOrStore(l.name, &build{})
	b := v.(*build)
	b.once.Do(func() {
		start := time.Now()
		b.path = filepath.Join(binDir, l.dir)
		cmd := exec.Command("go", "build", "-o", b.path, ".")
		cmd.Dir = filepath.Join("..", l.dir)
		cmd.Env = append(os.Environ(), "GOWORK=off")
		b.out, b.err = cmd.CombinedOutput()
		b.took = time.Since(start)
	})
	if b.err != nil {
		t.Fatalf("building the etcd %s peer: %v\n%s", l.name, b.err, b.out)
	}
	return b.path
}

// etcdSide is an etcd peer program, driven over its stdin and stdout.
type etcdSide struct {
	l       line
	myID    uint64
	version string
	base    string
	events  *eventLog
	dir     string

	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *syncBuffer
	seq    atomic.Int64

	mu      sync.Mutex // guards waiting and the writes to stdin
	waiting map[int64]chan event
	exited  chan struct{} // closed when stdout ends
}

const etcdID = 0xbeef

func newEtcdSide(t testing.TB, l line, clusterID uint64) *etcdSide {
	t.Helper()
	return newEtcdSideID(t, l, clusterID, etcdID)
}

// newEtcdSideID is newEtcdSide with member ID id.
func newEtcdSideID(t testing.TB, l line, clusterID, id uint64) *etcdSide {
	t.Helper()
	bin := peerBinary(t, l)
	s := &etcdSide{l: l, myID: id, events: &eventLog{}, dir: t.TempDir(), stderr: &syncBuffer{},
		waiting: map[int64]chan event{}, exited: make(chan struct{})}
	s.cmd = exec.Command(bin, "-id", fmt.Sprint(id), "-cluster", fmt.Sprint(clusterID), "-snapdir", s.dir)
	s.cmd.Stderr = s.stderr
	var err error
	if s.stdin, err = s.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := s.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("starting the etcd %s peer: %v", l.name, err)
	}
	listening := make(chan event, 1)
	go s.readEvents(stdout, listening)
	t.Cleanup(func() { s.close(t) })
	select {
	case e := <-listening:
		s.base, s.version = e.URL, e.Version
	case <-s.exited:
		t.Fatalf("the etcd %s peer exited at start:\n%s", l.name, s.stderr.tail())
	case <-time.After(waitTimeout):
		t.Fatalf("the etcd %s peer did not start", l.name)
	}
	if !strings.HasPrefix(s.version, l.name+".") {
		t.Fatalf("the etcd %s peer runs etcd %s", l.name, s.version)
	}
	return s
}

func (s *etcdSide) readEvents(stdout io.Reader, listening chan<- event) {
	defer close(s.exited)
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 1<<16), 64<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			s.events.add(event{Ev: "garbage", Err: sc.Text()})
			continue
		}
		switch e.Ev {
		case "listening":
			listening <- e
		case "reply":
			s.mu.Lock()
			c := s.waiting[e.Seq]
			delete(s.waiting, e.Seq)
			s.mu.Unlock()
			if c != nil {
				c <- e
			}
		default:
			s.events.add(e)
		}
	}
}

// do sends c and returns the reply, failing the test if the program
// reports an error or does not answer.
func (s *etcdSide) do(t testing.TB, c peerkit.Command) event {
	t.Helper()
	e, err := s.try(c)
	if err != nil {
		t.Fatalf("etcd %s peer, %s: %v\n%s", s.l.name, c.Op, err, s.stderr.tail())
	}
	return e
}

func (s *etcdSide) try(c peerkit.Command) (event, error) {
	c.Seq = s.seq.Add(1)
	b, err := json.Marshal(c)
	if err != nil {
		return event{}, err
	}
	reply := make(chan event, 1)
	s.mu.Lock()
	s.waiting[c.Seq] = reply
	_, err = s.stdin.Write(append(b, '\n'))
	s.mu.Unlock()
	if err != nil {
		return event{}, err
	}
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	var e event
	select {
	case e = <-reply:
	case <-s.exited:
		// The program may have answered just before exiting (stop does):
		// readEvents hands the reply over before it closes exited.
		select {
		case e = <-reply:
		default:
			return event{}, errors.New("the program exited")
		}
	case <-timer.C:
		return event{}, errors.New("no reply")
	}
	if e.Err != "" {
		return e, errors.New(e.Err)
	}
	return e, nil
}

// close stops the program: a stop command, then the end of its input, then
// a kill if it still runs.
func (s *etcdSide) close(t testing.TB) {
	_, stopErr := s.try(peerkit.Command{Op: "stop"})
	s.stdin.Close()
	timer := time.NewTimer(waitTimeout)
	defer timer.Stop()
	select {
	case <-s.exited:
	case <-timer.C:
		s.cmd.Process.Kill()
		<-s.exited
	}
	waitErr := s.cmd.Wait()
	if stopErr != nil || waitErr != nil {
		t.Errorf("the etcd %s peer did not stop cleanly (stop: %v, exit: %v)", s.l.name, stopErr, waitErr)
	}
	if t.Failed() {
		dumpEvents(t, s)
		t.Logf("etcd %s peer log (tail):\n%s", s.l.name, s.stderr.tail())
	}
}

func (s *etcdSide) name() string      { return "etcd-" + s.version }
func (s *etcdSide) id() uint64        { return s.myID }
func (s *etcdSide) url() string       { return s.base }
func (s *etcdSide) log() *eventLog    { return s.events }
func (s *etcdSide) snapDir() string   { return s.dir }
func (s *etcdSide) heartbeatLen() int { return s.l.heartbeatLen }

func (s *etcdSide) addPeer(t testing.TB, id uint64, url string) {
	t.Helper()
	s.do(t, peerkit.Command{Op: "addpeer", ID: id, URLs: []string{url}})
}

func (s *etcdSide) send(t testing.TB, m *raftpb.Message) {
	t.Helper()
	s.do(t, peerkit.Command{Op: "send", Msg: hexMessage(t, m)})
}

func (s *etcdSide) sendSnapshot(t testing.TB, m *raftpb.Message, size int64) {
	t.Helper()
	s.do(t, peerkit.Command{Op: "snapshot", Msg: hexMessage(t, m), Size: size})
}

func (s *etcdSide) setRemoved(t testing.TB, id uint64, removed bool) {
	t.Helper()
	s.do(t, peerkit.Command{Op: "removed", ID: id, On: removed})
}

func (s *etcdSide) reject403(t testing.TB, on bool) {
	t.Helper()
	s.do(t, peerkit.Command{Op: "reject403", On: on})
}

func (s *etcdSide) blockStreams(t testing.TB, on bool) {
	t.Helper()
	s.do(t, peerkit.Command{Op: "blockstreams", On: on})
}

func (s *etcdSide) cutStreams(t testing.TB) {
	t.Helper()
	s.do(t, peerkit.Command{Op: "cutstreams"})
}

func (s *etcdSide) activeSince(t testing.TB, id uint64) time.Time {
	t.Helper()
	e := s.do(t, peerkit.Command{Op: "status", ID: id})
	if e.Since == 0 {
		return time.Time{}
	}
	return time.Unix(0, e.Since)
}

func (s *etcdSide) alive(t testing.TB) {
	t.Helper()
	s.do(t, peerkit.Command{Op: "status"})
}

func hexMessage(t testing.TB, m *raftpb.Message) string {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// syncBuffer collects a program's stderr.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// tail returns the last 16 KiB written.
func (b *syncBuffer) tail() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) > 16<<10 {
		s = "..." + s[len(s)-16<<10:]
	}
	return s
}
