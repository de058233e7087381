package peerkit

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAdapter starts a fakeTransport on a plain loopback listener.
type fakeAdapter struct {
	tr       *fakeTransport
	startErr error

	mu   sync.Mutex
	cfg  Config
	raft Raft
}

const fakeVersion = "9.9.9-fake"

func (a *fakeAdapter) Version() string { return fakeVersion }

func (a *fakeAdapter) Start(cfg Config, raft Raft) (Transport, net.Listener, error) {
	if a.startErr != nil {
		return nil, nil, a.startErr
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.cfg, a.raft = cfg, raft
	return a.tr, ln, nil
}

func (a *fakeAdapter) started() (Config, Raft) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.cfg, a.raft
}

// fakeTransport records the calls Serve makes, as strings.
type fakeTransport struct {
	handler http.Handler
	errc    chan error
	stopped chan struct{}
	stop    sync.Once

	mu       sync.Mutex
	calls    []string
	payloads [][]byte // what SendSnapshot read from its payloads
	since    time.Time
	peers    int
}

func newFakeTransport(handler http.Handler) *fakeTransport {
	if handler == nil {
		handler = http.NotFoundHandler()
	}
	return &fakeTransport{handler: handler, errc: make(chan error), stopped: make(chan struct{})}
}

// errFakeRefused is what the fake's Send answers the message ff with.
var errFakeRefused = errors.New("fake: message refused")

func (f *fakeTransport) record(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
}

func (f *fakeTransport) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeTransport) Handler() http.Handler            { return f.handler }
func (f *fakeTransport) ErrorC() <-chan error             { return f.errc }
func (f *fakeTransport) AddPeer(id uint64, urls []string) { f.record("AddPeer(%d, %v)", id, urls) }
func (f *fakeTransport) RemovePeer(id uint64)             { f.record("RemovePeer(%d)", id) }
func (f *fakeTransport) ActivePeers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.peers
}

func (f *fakeTransport) Send(msg []byte) error {
	f.record("Send(%x)", msg)
	if hex.EncodeToString(msg) == "ff" {
		return errFakeRefused
	}
	return nil
}

func (f *fakeTransport) SendSnapshot(msg []byte, payload io.ReadCloser, size int64) (<-chan bool, error) {
	f.record("SendSnapshot(%x, %d)", msg, size)
	b, err := io.ReadAll(payload)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.payloads = append(f.payloads, b)
	f.mu.Unlock()
	sent := make(chan bool, 1)
	sent <- true
	return sent, nil
}

func (f *fakeTransport) ActiveSince(id uint64) time.Time {
	f.record("ActiveSince(%d)", id)
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.since
}

func (f *fakeTransport) Stop() { f.stop.Do(func() { close(f.stopped) }) }

// driver is a running Serve: its input, and the events it wrote.
type driver struct {
	adapter *fakeAdapter
	in      *io.PipeWriter
	served  chan struct{} // closed when Serve has returned ...
	err     error         // ... this
	read    chan struct{}

	mu     sync.Mutex
	events []Event
	seq    int64
}

var testConfig = Config{ID: 0xbeef, ClusterID: 0x1000, SnapDir: "/nonexistent/snap", ReadTimeout: 7 * time.Second}

// serve runs Serve with a over pipes, until the test ends.
func serve(t *testing.T, a *fakeAdapter) *driver {
	t.Helper()
	return serveAdapter(t, a, a)
}

// serveAdapter is serve with run, an Adapter built on a.
func serveAdapter(t *testing.T, run Adapter, a *fakeAdapter) *driver {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	s := &driver{adapter: a, in: inW, served: make(chan struct{}), read: make(chan struct{})}
	go func() {
		s.err = Serve(run, testConfig, inR, outW)
		outW.Close()
		close(s.served)
	}()
	go func() {
		defer close(s.read)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			var e Event
			if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
				e = Event{Ev: "garbage", Err: sc.Text()}
			}
			s.mu.Lock()
			s.events = append(s.events, e)
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		inW.Close()
		select {
		case <-s.served:
		case <-time.After(waitTimeout):
			t.Errorf("Serve did not return at the end of its input")
		}
		outR.Close()
		<-s.read
	})
	s.wait(t, "the listening event", func(e Event) bool { return e.Ev == "listening" })
	return s
}

const waitTimeout = 10 * time.Second

// wait returns the first event that matches keep, waiting for it.
func (s *driver) wait(t *testing.T, what string, keep func(Event) bool) Event {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		for _, e := range s.all() {
			if keep(e) {
				return e
			}
		}
		select {
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s; events: %+v", what, s.all())
		}
	}
}

func (s *driver) all() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

func (s *driver) count(keep func(Event) bool) int {
	n := 0
	for _, e := range s.all() {
		if keep(e) {
			n++
		}
	}
	return n
}

// writeLine writes one line of input.
func (s *driver) writeLine(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(s.in, line+"\n"); err != nil {
		t.Fatalf("writing a command: %v", err)
	}
}

// do sends c with the next sequence number and returns its reply.
func (s *driver) do(t *testing.T, c Command) Event {
	t.Helper()
	s.mu.Lock()
	s.seq++
	c.Seq = s.seq
	s.mu.Unlock()
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	s.writeLine(t, string(b))
	return s.wait(t, "the reply to "+c.Op, func(e Event) bool { return e.Ev == "reply" && e.Seq == c.Seq })
}

func isEv(kind string) func(Event) bool { return func(e Event) bool { return e.Ev == kind } }

// client makes one connection per request, so that a request never
// retries on a connection the server closed.
func client(t *testing.T) *http.Client {
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: waitTimeout}
}

// streamHandler answers POST /raft with 204 and stream requests with 200
// and the bytes "ab" then "cd", then holds the stream until the request
// ends.
func streamHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/raft/stream/") {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		w.WriteHeader(http.StatusOK)
		for _, b := range []string{"ab", "cd"} {
			w.Write([]byte(b))
			w.(http.Flusher).Flush()
		}
		<-r.Context().Done()
	})
}
