package peerkit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestServeCommands runs each command against a fake transport: it must
// make the matching Transport call and answer with a reply of its sequence
// number.
func TestServeCommands(t *testing.T) {
	since := time.Unix(0, 1234567)
	tests := []struct {
		name      string
		since     time.Time
		peers     int
		cmd       Command
		wantCalls []string
		wantErr   string // a substring of reply.Err; "" for none
		wantSince int64
		wantPeers int
	}{
		{name: "addpeer", cmd: Command{Op: "addpeer", ID: 7, URLs: []string{"http://127.0.0.1:1"}},
			wantCalls: []string{"AddPeer(7, [http://127.0.0.1:1])"}},
		{name: "removepeer", cmd: Command{Op: "removepeer", ID: 7}, wantCalls: []string{"RemovePeer(7)"}},
		{name: "send", cmd: Command{Op: "send", Msg: "0802"}, wantCalls: []string{"Send(0802)"}},
		{name: "send/bad-hex", cmd: Command{Op: "send", Msg: "zz"}, wantErr: "invalid byte"},
		{name: "send/refused", cmd: Command{Op: "send", Msg: "ff"}, wantCalls: []string{"Send(ff)"}, wantErr: errFakeRefused.Error()},
		{name: "snapshot", cmd: Command{Op: "snapshot", Msg: "0807", Size: 600}, wantCalls: []string{"SendSnapshot(0807, 600)"}},
		{name: "snapshot/bad-hex", cmd: Command{Op: "snapshot", Msg: "0", Size: 1}, wantErr: "odd length"},
		{name: "status/active", since: since, peers: 2, cmd: Command{Op: "status", ID: 7},
			wantCalls: []string{"ActiveSince(7)"}, wantSince: since.UnixNano(), wantPeers: 2},
		{name: "status/inactive", cmd: Command{Op: "status", ID: 7}, wantCalls: []string{"ActiveSince(7)"}},
		{name: "unknown-op", cmd: Command{Op: "nope"}, wantErr: `unknown op "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := newFakeTransport(nil)
			tr.since, tr.peers = tt.since, tt.peers
			d := serve(t, &fakeAdapter{tr: tr})
			reply := d.do(t, tt.cmd)
			if tt.wantErr == "" && reply.Err != "" || !strings.Contains(reply.Err, tt.wantErr) {
				t.Errorf("reply error %q, want one containing %q", reply.Err, tt.wantErr)
			}
			if got := tr.recorded(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("transport calls %q, want %q", got, tt.wantCalls)
			}
			if reply.Since != tt.wantSince || reply.Peers != tt.wantPeers {
				t.Errorf("reply since %d, peers %d; want %d, %d", reply.Since, reply.Peers, tt.wantSince, tt.wantPeers)
			}
		})
	}
}

// TestServeSnapshot checks the payload handed to SendSnapshot and the
// snapsent event that reports the outcome.
func TestServeSnapshot(t *testing.T) {
	tr := newFakeTransport(nil)
	d := serve(t, &fakeAdapter{tr: tr})
	const size = 1000
	reply := d.do(t, Command{Op: "snapshot", Msg: "08", Size: size})
	if reply.Err != "" {
		t.Fatalf("snapshot: %s", reply.Err)
	}
	sent := d.wait(t, "the snapsent event", isEv("snapsent"))
	if sent.Seq != reply.Seq || !sent.OK {
		t.Errorf("snapsent seq %d ok %v, want seq %d ok true", sent.Seq, sent.OK, reply.Seq)
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if len(tr.payloads) != 1 || len(tr.payloads[0]) != size {
		t.Fatalf("got %d payloads, want one of %d bytes", len(tr.payloads), size)
	}
	for i, b := range tr.payloads[0] {
		if want := PayloadByte(int64(i)); b != want {
			t.Fatalf("payload byte %d is %#x, want %#x", i, b, want)
		}
	}
}

// TestServeStart checks what Serve hands the adapter and its first event.
func TestServeStart(t *testing.T) {
	a := &fakeAdapter{tr: newFakeTransport(nil)}
	d := serve(t, a)
	cfg, raft := a.started()
	if cfg != testConfig {
		t.Errorf("adapter started with %+v, want %+v", cfg, testConfig)
	}
	if _, ok := raft.(*Recorder); !ok {
		t.Errorf("adapter got a Raft of type %T, want *Recorder", raft)
	}
	first := d.all()[0]
	if first.Ev != "listening" || first.Version != fakeVersion || !strings.HasPrefix(first.URL, "http://127.0.0.1:") {
		t.Errorf("first event %+v, want listening on http://127.0.0.1:<port>, version %s", first, fakeVersion)
	}
}

// TestServeStartError checks that Serve fails with the adapter's error.
func TestServeStartError(t *testing.T) {
	boom := errors.New("boom")
	err := Serve(&fakeAdapter{startErr: boom}, testConfig, strings.NewReader(""), io.Discard)
	if !errors.Is(err, boom) {
		t.Errorf("Serve returned %v, want %v", err, boom)
	}
}

// TestServeEnd checks both ways Serve ends: a stop command (answered after
// the transport stopped) and the end of the input. Either way the
// transport is stopped and the server closed.
func TestServeEnd(t *testing.T) {
	for _, byStop := range []bool{true, false} {
		name := map[bool]string{true: "stop", false: "end-of-input"}[byStop]
		t.Run(name, func(t *testing.T) {
			tr := newFakeTransport(nil)
			d := serve(t, &fakeAdapter{tr: tr})
			url := d.all()[0].URL
			if byStop {
				reply := d.do(t, Command{Op: "stop"})
				if reply.Err != "" {
					t.Errorf("stop: %s", reply.Err)
				}
			} else {
				d.in.Close()
			}
			select {
			case <-d.served:
				if d.err != nil {
					t.Errorf("Serve returned %v, want nil", d.err)
				}
			case <-time.After(waitTimeout):
				t.Fatal("Serve did not return")
			}
			select {
			case <-tr.stopped:
			default:
				t.Error("the transport was not stopped")
			}
			if _, err := net.Dial("tcp", strings.TrimPrefix(url, "http://")); err == nil {
				t.Errorf("the server still accepts connections after Serve returned")
			}
		})
	}
}

// TestServeBadCommand checks that a line that is not a command gets an
// error reply, and that the next command still runs.
func TestServeBadCommand(t *testing.T) {
	tr := newFakeTransport(nil)
	d := serve(t, &fakeAdapter{tr: tr})
	d.writeLine(t, "not json")
	bad := d.wait(t, "the reply to a bad line", isEv("reply"))
	if bad.Seq != 0 || !strings.HasPrefix(bad.Err, "bad command: ") {
		t.Errorf("reply %+v, want seq 0 and a bad command error", bad)
	}
	if reply := d.do(t, Command{Op: "removepeer", ID: 3}); reply.Err != "" {
		t.Errorf("removepeer after a bad line: %s", reply.Err)
	}
	if got, want := tr.recorded(), []string{"RemovePeer(3)"}; !slices.Equal(got, want) {
		t.Errorf("transport calls %q, want %q", got, want)
	}
}

// TestServeReports checks that what the transport reports (Raft callbacks,
// ErrorC) comes out as events, and that the removed and reject403 commands
// switch what the Raft answers.
func TestServeReports(t *testing.T) {
	a := &fakeAdapter{tr: newFakeTransport(nil)}
	d := serve(t, a)
	_, raft := a.started()

	if err := raft.Process([]byte{0x08, 0x01}); err != nil {
		t.Fatalf("Process: %v", err)
	}
	raft.ReportUnreachable(5)
	raft.ReportSnapshot(6, 1)
	a.tr.errc <- errors.New("boom")
	for _, want := range []Event{
		{Ev: "process", Msg: "0801"},
		{Ev: "unreachable", ID: 5},
		{Ev: "snapreport", ID: 6, Status: 1},
		{Ev: "errorc", Err: "boom"},
	} {
		d.wait(t, want.Ev+" event", func(e Event) bool { return reflect.DeepEqual(e, want) })
	}

	d.do(t, Command{Op: "removed", ID: 9, On: true})
	if !raft.IsIDRemoved(9) || raft.IsIDRemoved(8) {
		t.Errorf("IsIDRemoved(9), (8) = %v, %v after removed 9; want true, false", raft.IsIDRemoved(9), raft.IsIDRemoved(8))
	}
	d.do(t, Command{Op: "removed", ID: 9, On: false})
	if raft.IsIDRemoved(9) {
		t.Error("IsIDRemoved(9) = true after removed 9 off")
	}

	d.do(t, Command{Op: "reject403", On: true})
	err := raft.Process([]byte{0x08, 0x02})
	w, ok := err.(interface{ WriteTo(http.ResponseWriter) })
	if !ok {
		t.Fatalf("Process with reject403 on returned %v, want an error that writes its answer", err)
	}
	rec := httptest.NewRecorder()
	w.WriteTo(rec)
	if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "removed member") {
		t.Errorf("the refusal answers %d %q, want 403 about a removed member", rec.Code, rec.Body.String())
	}
	d.do(t, Command{Op: "reject403", On: false})
	if err := raft.Process([]byte{0x08, 0x03}); err != nil {
		t.Errorf("Process with reject403 off: %v", err)
	}
	d.wait(t, "the message processed after reject403 off", func(e Event) bool { return reflect.DeepEqual(e, Event{Ev: "process", Msg: "0803"}) })
	if n := d.count(isEv("process")); n != 2 {
		t.Errorf("%d process events, want 2 (none for the refused message)", n)
	}
}

// TestServeStreams checks that Serve puts a Tap in front of the
// transport's handler, on the adapter's listener, and that blockstreams
// and cutstreams reach it.
func TestServeStreams(t *testing.T) {
	tr := newFakeTransport(streamHandler())
	d := serve(t, &fakeAdapter{tr: tr})
	base := d.all()[0].URL
	c := client(t)
	const path = "/raft/stream/message/1"

	d.do(t, Command{Op: "blockstreams", On: true})
	if resp, err := c.Get(base + path); err == nil {
		resp.Body.Close()
		t.Fatalf("a stream request while blocked got %s, want the connection closed", resp.Status)
	}
	d.wait(t, "the refused stream", func(e Event) bool { return e.Ev == "http" && e.Path == path && e.Status == -1 })
	d.do(t, Command{Op: "blockstreams", On: false})

	resp, err := c.Get(base + path)
	if err != nil {
		t.Fatalf("stream request: %v", err)
	}
	defer resp.Body.Close()
	buf := make([]byte, 4)
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "abcd" {
		t.Fatalf("read %q (%v) from the stream, want abcd", buf, err)
	}
	d.do(t, Command{Op: "cutstreams"})
	if _, err := io.ReadAll(resp.Body); err == nil {
		t.Error("the stream body ended cleanly after cutstreams, want an error")
	}
	end := d.wait(t, "the end of the stream", isEv("streamend"))
	if end.Path != path {
		t.Errorf("streamend of %q, want %q", end.Path, path)
	}
}

// TestServeRequests checks that what the Tap records of a request reaches
// the program's output intact: the "request" event of a chunked POST with
// a trailer, decoded from its JSON line, carries the trailer's value, the
// body's length and the headers. It is the control of the interop tests
// that find no trailer on what we send etcd.
func TestServeRequests(t *testing.T) {
	tr := newFakeTransport(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}))
	d := serve(t, &fakeAdapter{tr: tr})
	base := d.all()[0].URL
	req, err := http.NewRequest("POST", base+"/raft/snapshot", io.MultiReader(strings.NewReader("envelope+payload")))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Rafthttp-Features", "crc32c-trailer")
	req.Trailer = http.Header{"X-Rafthttp-Crc32c": {"0a1b2c3d"}}
	resp, err := client(t).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	e := d.wait(t, "the request event", isEv("request"))
	if e.Method != "POST" || e.Path != "/raft/snapshot" || !e.Chunked || e.Len != int64(len("envelope+payload")) || !e.EOF {
		t.Errorf("request event %+v, want POST /raft/snapshot, chunked, 16 bytes read to the end", e)
	}
	if got := http.Header(e.Trailer).Get("X-Rafthttp-Crc32c"); got != "0a1b2c3d" {
		t.Errorf("trailer %v, want X-Rafthttp-Crc32c 0a1b2c3d", e.Trailer)
	}
	if got := http.Header(e.Header).Get("X-Rafthttp-Features"); got != "crc32c-trailer" {
		t.Errorf("X-Rafthttp-Features %q, want crc32c-trailer", got)
	}
}

// TestTap checks the events the Tap reports for one request.
func TestTap(t *testing.T) {
	const stream = "/raft/stream/msgappv2/1"
	tests := []struct {
		name    string
		method  string
		path    string
		handler http.HandlerFunc
		want    []Event // Conn left out
	}{
		{
			name: "no-content", method: "POST", path: "/raft",
			handler: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) },
			want: []Event{
				{Ev: "http", Method: "POST", Path: "/raft", Status: 204},
				{Ev: "request", Method: "POST", Path: "/raft"},
			},
		},
		{
			name: "nothing-written", method: "GET", path: "/raft/probing",
			handler: func(w http.ResponseWriter, r *http.Request) {},
			want: []Event{
				{Ev: "http", Method: "GET", Path: "/raft/probing", Status: 200},
				{Ev: "request", Method: "GET", Path: "/raft/probing"},
			},
		},
		{
			name: "body-but-no-stream", method: "GET", path: "/raft/probing",
			handler: func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "{}") },
			want: []Event{
				{Ev: "http", Method: "GET", Path: "/raft/probing", Status: 200},
				{Ev: "request", Method: "GET", Path: "/raft/probing"},
			},
		},
		{
			name: "stream", method: "GET", path: stream,
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK)
				w.Write([]byte{0x00})
				w.Write(nil)
				w.(http.Flusher).Flush()
				w.Write([]byte{0x01, 0x02})
			},
			want: []Event{
				{Ev: "http", Method: "GET", Path: stream, Status: 200},
				{Ev: "wrote", Path: stream, Data: "00"},
				{Ev: "wrote", Path: stream, Data: "0102"},
				{Ev: "streamend", Path: stream},
			},
		},
		{
			name: "stream-refused", method: "GET", path: stream,
			handler: func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusPreconditionFailed)
				io.WriteString(w, "cluster ID mismatch")
			},
			want: []Event{
				{Ev: "http", Method: "GET", Path: stream, Status: 412},
				{Ev: "streamend", Path: stream},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			events := make(chan Event, 16)
			tap := NewTap(tt.handler, func(e Event) { events <- e })
			srv := httptest.NewUnstartedServer(tap)
			srv.Config.ConnContext = ConnContext
			srv.Start()
			defer srv.Close()
			req, err := http.NewRequest(tt.method, srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			srv.Close() // every handler has returned
			close(events)
			var got []Event
			for e := range events {
				if e.Conn != 1 {
					t.Errorf("event %+v numbered conn %d, want 1", e, e.Conn)
				}
				e.Conn = 0
				e.Header = nil // the client's: TestTapRequest checks them
				got = append(got, e)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("events\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// TestTapRequest checks what the Tap's "request" event says of a request
// and its body: the headers, the trailer, the transfer coding, and how much
// of the body the handler read.
func TestTapRequest(t *testing.T) {
	const size = 100
	const trailerKey = "X-Rafthttp-Crc32c"
	readAll := func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	}
	for _, tc := range []struct {
		name    string
		chunked bool        // sent with an unknown length
		trailer http.Header // the request's trailer, values included
		handler http.HandlerFunc
		want    Event // Ev, Method, Path, Conn and Header left out
	}{
		{name: "content length, read to the end", handler: readAll,
			want: Event{Len: size, EOF: true}},
		{name: "chunked, no trailer", chunked: true, handler: readAll,
			want: Event{Chunked: true, Len: size, EOF: true}},
		{name: "chunked with a trailer", chunked: true, trailer: http.Header{trailerKey: {"0a1b2c3d"}}, handler: readAll,
			want: Event{Chunked: true, Trailer: map[string][]string{trailerKey: {"0a1b2c3d"}}, Len: size, EOF: true}},
		{name: "trailer declared, body read in part", chunked: true, trailer: http.Header{trailerKey: {"0a1b2c3d"}},
			handler: func(w http.ResponseWriter, r *http.Request) {
				io.CopyN(io.Discard, r.Body, 10)
				w.WriteHeader(http.StatusNoContent)
			},
			want: Event{Chunked: true, Trailer: map[string][]string{trailerKey: nil}, Len: 10}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			events := make(chan Event, 16)
			srv := httptest.NewServer(NewTap(tc.handler, func(e Event) { events <- e }))
			defer srv.Close()
			var body io.Reader = bytes.NewReader(make([]byte, size))
			if tc.chunked {
				body = io.MultiReader(body) // no Len: the client cannot know the length
			}
			req, err := http.NewRequest("POST", srv.URL+"/raft/snapshot", body)
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("X-Rafthttp-Features", "crc32c-trailer")
			req.Trailer = tc.trailer
			resp, err := client(t).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			srv.Close() // every handler has returned
			close(events)
			var got []Event
			for e := range events {
				if e.Ev == "request" {
					got = append(got, e)
				}
			}
			if len(got) != 1 {
				t.Fatalf("%d request events, want 1", len(got))
			}
			e := got[0]
			if e.Method != "POST" || e.Path != "/raft/snapshot" || e.Conn != 1 {
				t.Errorf("request event for %s %s conn %d, want POST /raft/snapshot conn 1", e.Method, e.Path, e.Conn)
			}
			if f := http.Header(e.Header).Get("X-Rafthttp-Features"); f != "crc32c-trailer" {
				t.Errorf("X-Rafthttp-Features %q, want %q", f, "crc32c-trailer")
			}
			wantCL := ""
			if !tc.chunked {
				wantCL = fmt.Sprint(size)
			}
			if cl := http.Header(e.Header).Get("Content-Length"); cl != wantCL {
				t.Errorf("Content-Length %q, want %q", cl, wantCL)
			}
			if tr, ok := e.Header["Trailer"]; ok {
				t.Errorf("header Trailer %q kept, want it in the trailer's keys", tr)
			}
			e.Ev, e.Method, e.Path, e.Conn, e.Header = "", "", "", 0, nil
			if !reflect.DeepEqual(e, tc.want) {
				t.Errorf("request event\n%+v\nwant\n%+v", e, tc.want)
			}
		})
	}
}

// TestPayload reads payloads in odd-sized pieces.
func TestPayload(t *testing.T) {
	for _, size := range []int64{0, 1, 250, 251, 252, 1000} {
		p := NewPayload(size)
		var got []byte
		buf := make([]byte, 7)
		for {
			n, err := p.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("size %d: Read: %v", size, err)
			}
		}
		if int64(len(got)) != size {
			t.Fatalf("size %d: read %d bytes", size, len(got))
		}
		for i, b := range got {
			if b != byte(i%251) {
				t.Fatalf("size %d: byte %d is %#x, want %#x", size, i, b, byte(i%251))
			}
		}
		if err := p.Close(); err != nil {
			t.Errorf("size %d: Close: %v", size, err)
		}
	}
}
