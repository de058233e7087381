package rafthttp

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// TestNewServer checks the recipe's settings: the three limits at their
// documented values, and no ReadTimeout or WriteTimeout, which net/http
// counts from the start of a request and which would therefore cut
// long-lived raft requests (see NewServer).
func TestNewServer(t *testing.T) {
	h := http.NewServeMux()
	srv := NewServer(h)
	if srv.Handler != h {
		t.Errorf("Handler: got %v, want the handler given", srv.Handler)
	}
	for _, f := range []struct {
		name      string
		got, want int64
	}{
		{name: "ReadHeaderTimeout", got: int64(srv.ReadHeaderTimeout), want: int64(ServerReadHeaderTimeout)},
		{name: "IdleTimeout", got: int64(srv.IdleTimeout), want: int64(ServerIdleTimeout)},
		{name: "MaxHeaderBytes", got: int64(srv.MaxHeaderBytes), want: ServerMaxHeaderBytes},
		{name: "ReadTimeout", got: int64(srv.ReadTimeout), want: 0},
		{name: "WriteTimeout", got: int64(srv.WriteTimeout), want: 0},
	} {
		if f.got != f.want {
			t.Errorf("%s: got %d, want %d", f.name, f.got, f.want)
		}
	}
}

// serveRecipe serves h on 127.0.0.1 with the server NewServer returns, after
// adjust (shorter timeouts for a test) has edited it, until the end of the
// test; then it stops tr and shuts the server down, in that order. It
// returns the server's address.
func serveRecipe(t *testing.T, tr *Transport, h http.Handler, adjust func(*http.Server)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(h)
	srv.ErrorLog = log.New(io.Discard, "", 0)
	if adjust != nil {
		adjust(srv)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		tr.Stop()
		// Shutdown, unlike Close, waits for every connection to end,
		// those net/http lingers on after an error answer included.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
			srv.Close()
		}
		<-served
	})
	return ln.Addr().String()
}

// readUntilClosed reads conn until the server closes it, and returns what
// it read, how long that took from start, and how the read ended: nil or a
// reset for a close, a timeout if the server kept the connection open for
// ten seconds.
func readUntilClosed(conn net.Conn, r io.Reader, start time.Time) ([]byte, time.Duration, error) {
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(r)
	return got, time.Since(start), err
}

// closedByServer reports whether err ended a read because the server closed
// the connection (an EOF, which io.ReadAll reports as nil, or a reset when
// it closed with unread bytes of ours).
func closedByServer(err error) bool {
	var ne net.Error
	return err == nil || !(errors.As(err, &ne) && ne.Timeout())
}

// TestServerRecipeCutsSlowHeaders checks that a server built by NewServer
// closes, within ReadHeaderTimeout, a connection whose request headers do
// not arrive in time, whether they trickle in a byte at a time or stop, and
// that it serves headers that trickle in but arrive in time.
func TestServerRecipeCutsSlowHeaders(t *testing.T) {
	const timeout = 300 * time.Millisecond
	tr, _ := newNode(t, htLocal()).parts()
	addr := serveRecipe(t, tr, tr.Handler(), func(s *http.Server) { s.ReadHeaderTimeout = timeout })

	probe := "GET /raft/probing HTTP/1.1\r\nHost: raft\r\n\r\n"
	// 300 bytes at 20 ms a byte would take 6 s.
	padded := "GET /raft/probing HTTP/1.1\r\nHost: raft\r\nX-Padding: " + strings.Repeat("x", 250) + "\r\n\r\n"
	cases := []struct {
		name       string
		send       string
		tick       time.Duration // between bytes; zero sends all at once
		wantServed bool
	}{
		{name: "headers trickled a byte at a time", send: padded, tick: 20 * time.Millisecond},
		{name: "nothing after connecting", send: ""},
		{name: "request line then nothing", send: "GET /raft/probing HTTP/1.1\r\n"},
		// Control: trickling is not what is cut, slowness is. 44 bytes
		// at 1 ms a byte arrive well within the timeout.
		{name: "headers trickled within the timeout", send: probe, tick: time.Millisecond, wantServed: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			done := make(chan struct{})
			var wg sync.WaitGroup
			defer wg.Wait()
			defer conn.Close()
			defer close(done)
			wg.Go(func() { trickleWrite(conn, tc.send, tc.tick, done) })

			br := bufio.NewReader(conn)
			if tc.wantServed {
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("reading the response: %v", err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("status: got %d, want 200", resp.StatusCode)
				}
				return
			}
			got, took, err := readUntilClosed(conn, br, start)
			t.Logf("closed after %v (%v)", took.Round(time.Millisecond), err)
			if !closedByServer(err) {
				t.Fatalf("the server kept the connection open for %v, want it closed after %v", took, timeout)
			}
			// net/http closes without a word, or with a 400 when the
			// deadline struck within the request line.
			if len(got) != 0 && !bytes.HasPrefix(got, []byte("HTTP/1.1 400 ")) {
				t.Errorf("the server answered %q, want a close, without an answer or with a 400", got)
			}
			// The deadline starts when the server accepts the connection,
			// just as Dial returns.
			if took < timeout-50*time.Millisecond || took > timeout+2*time.Second {
				t.Errorf("closed after %v, want about %v", took, timeout)
			}
		})
	}
}

// trickleWrite writes s to w a byte per tick (all at once if tick is zero)
// until it is written, a write fails or done is closed.
func trickleWrite(w io.Writer, s string, tick time.Duration, done <-chan struct{}) {
	if tick == 0 {
		io.WriteString(w, s)
		return
	}
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for i := range len(s) {
		select {
		case <-ticker.C:
		case <-done:
			return
		}
		if _, err := io.WriteString(w, s[i:i+1]); err != nil {
			return
		}
	}
}

// TestServerRecipeLimitsHeaderBytes checks that a server built by NewServer
// refuses request headers beyond MaxHeaderBytes with 431, and serves
// headers well within it.
func TestServerRecipeLimitsHeaderBytes(t *testing.T) {
	tr, _ := newNode(t, htLocal()).parts()
	addr := serveRecipe(t, tr, tr.Handler(), nil)
	cases := []struct {
		name    string
		padding int // bytes of an extra header
		want    int
	}{
		{name: "8 KiB of headers", padding: 8 << 10, want: http.StatusOK},
		{name: "twice the limit", padding: 2 * ServerMaxHeaderBytes, want: http.StatusRequestHeaderFieldsTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, "http://"+addr+ProbingPrefix, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Padding", strings.Repeat("x", tc.padding))
			resp, err := newClient(t).Do(req)
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("status: got %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
}

// TestServerRecipeClosesIdleConnections checks that a server built by
// NewServer closes a kept-alive connection that carries no new request for
// IdleTimeout, after each kind of request that reuses connections.
func TestServerRecipeClosesIdleConnections(t *testing.T) {
	const idle = 300 * time.Millisecond
	tr, fr := newNode(t, htLocal()).parts()
	addr := serveRecipe(t, tr, tr.Handler(), func(s *http.Server) { s.IdleTimeout = idle })

	pipelineBody, err := proto.Marshal(newMsg(raftpb.MsgHeartbeat, htPeerID, htLocalID, 10))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		method string
		path   string
		kind   htKind
		body   []byte
		want   int
	}{
		{name: "after a probe", method: http.MethodGet, path: ProbingPrefix, want: http.StatusOK},
		{name: "after a pipeline POST", method: http.MethodPost, path: RaftPrefix, kind: htPipeline, body: pipelineBody, want: http.StatusNoContent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			req, err := http.NewRequest(tc.method, "http://"+addr+tc.path, bytes.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if tc.body != nil {
				req.Header = htHeaders(tc.kind)
			}
			if err := req.Write(conn); err != nil {
				t.Fatalf("writing the request: %v", err)
			}
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, req)
			if err != nil {
				t.Fatalf("reading the response: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || resp.Close {
				t.Fatalf("got status %d, close %v, want %d on a kept-alive connection", resp.StatusCode, resp.Close, tc.want)
			}
			got, took, err := readUntilClosed(conn, br, time.Now())
			t.Logf("idle connection closed after %v (%v)", took.Round(time.Millisecond), err)
			if !closedByServer(err) || len(got) != 0 {
				t.Fatalf("got %q, %v after %v, want the idle connection closed after %v", got, err, took, idle)
			}
			// The server starts the idle timer as it finishes the response,
			// a little before the response is read here.
			if took < idle/2 || took > idle+2*time.Second {
				t.Errorf("closed after %v, want about %v", took, idle)
			}
		})
	}
	select {
	case <-fr.msgc:
	default:
		t.Error("the pipeline POST did not reach raft")
	}
}

// TestServerRecipeKeepsQuietStreams checks that the recipe's timeouts do not
// cut a stream that carries only link heartbeats: every timeout NewServer
// sets is shrunk below the stream's heartbeat interval, and the stream
// still carries a message after many of those timeouts.
func TestServerRecipeKeepsQuietStreams(t *testing.T) {
	const (
		readTimeout = 300 * time.Millisecond // link heartbeats every 100 ms
		cut         = 50 * time.Millisecond  // every timeout the recipe sets
		quiet       = 1500 * time.Millisecond
	)
	shrink := func(s *http.Server) {
		for _, d := range []*time.Duration{&s.ReadHeaderTimeout, &s.IdleTimeout, &s.ReadTimeout, &s.WriteTimeout} {
			if *d > 0 {
				*d = cut
			}
		}
	}
	cases := []struct {
		name   string
		path   string
		msg    *raftpb.Message
		dec    func(r io.Reader) decoder
		writer func(p *peer) *streamWriter
	}{
		{name: "message", path: RaftStreamPrefix + "/message/b2",
			msg:    &raftpb.Message{Type: raftpb.MsgVote.Enum(), To: proto.Uint64(htPeerID), From: proto.Uint64(htLocalID), Term: proto.Uint64(9)},
			dec:    func(r io.Reader) decoder { return newMessageDecoder(r, 1<<20) },
			writer: func(p *peer) *streamWriter { return p.writers[streamTypeMessage] }},
		{name: "msgapp", path: RaftStreamPrefix + "/msgapp/b2",
			msg: &raftpb.Message{Type: raftpb.MsgApp.Enum(), To: proto.Uint64(htPeerID), From: proto.Uint64(htLocalID), Term: proto.Uint64(7),
				LogTerm: proto.Uint64(6), Index: proto.Uint64(20), Commit: proto.Uint64(19),
				Entries: []*raftpb.Entry{{Term: proto.Uint64(7), Index: proto.Uint64(21), Data: []byte("x")}}},
			dec:    func(r io.Reader) decoder { return newMsgAppV2Decoder(r, htPeerID, htLocalID, 1<<20) },
			writer: func(p *peer) *streamWriter { return p.writers[streamTypeMsgAppV2] }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr, _ := newNode(t, htLocal(), withConfig(func(tr *Transport) { tr.ConnReadTimeout = readTimeout })).parts()
			htAddPeer(t, tr)
			addr := serveRecipe(t, tr, tr.Handler(), shrink)
			p, _ := tr.get(htPeerID)

			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+tc.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = htHeaders(htStream)
			resp, err := newClient(t).Do(req)
			if err != nil {
				t.Fatalf("GET %s: %v", tc.path, err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status: got %d, want 200", resp.StatusCode)
			}

			dec := tc.dec(resp.Body)
			start := time.Now()
			heartbeats := 0
			for time.Since(start) < quiet {
				m, _, err := dec.decode()
				if err != nil {
					t.Fatalf("the stream ended after %v and %d link heartbeats: %v", time.Since(start).Round(time.Millisecond), heartbeats, err)
				}
				if !isLinkHeartbeat(m) {
					t.Fatalf("got %v on a quiet stream, want only link heartbeats", m)
				}
				heartbeats++
			}
			t.Logf("%d link heartbeats in %v, with every server timeout at %v", heartbeats, time.Since(start).Round(time.Millisecond), cut)
			if heartbeats < 5 {
				t.Errorf("%d link heartbeats in %v, want one every %v", heartbeats, quiet, readTimeout/3)
			}
			if !tc.writer(p).isWorking() {
				t.Error("the stream's writer is not working, want it holding the stream")
			}

			tr.Send([]*raftpb.Message{tc.msg})
			for {
				m, _, err := dec.decode()
				if err != nil {
					t.Fatalf("reading the message after the quiet time: %v", err)
				}
				if isLinkHeartbeat(m) {
					continue
				}
				if m.GetType() != tc.msg.GetType() || m.GetTerm() != tc.msg.GetTerm() {
					t.Errorf("got %v, want %v", m, tc.msg)
				}
				break
			}
		})
	}
}
