package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestBenchQuick runs every scenario once at tiny sizes, with both
// transports, and checks that the report has a figure for each of them
// in every row (and raw TCP where it applies): the command still works.
func TestBenchQuick(t *testing.T) {
	cfg := quickConfig()
	cfg.dir = t.TempDir()
	cfg.smallTime, cfg.largeTime, cfg.hbTime, cfg.rawTime = 100*time.Millisecond, 100*time.Millisecond, 100*time.Millisecond, 50*time.Millisecond
	var progress, out bytes.Buffer
	cfg.progress = &progress
	if err := run(&cfg, &out); err != nil {
		t.Fatalf("run: %v\nprogress:\n%s", err, progress.String())
	}
	report := out.String()
	for _, r := range rows(&cfg) {
		var line string
		for l := range strings.Lines(report) {
			if strings.HasPrefix(l, "| "+r.label+" ") {
				line = l
			}
		}
		if line == "" {
			t.Errorf("report has no row %q:\n%s", r.label, report)
			continue
		}
		cells := strings.Split(strings.Trim(strings.TrimSpace(line), "|"), "|")
		if len(cells) != 6 {
			t.Errorf("row %q has %d cells, want 6: %q", r.label, len(cells), line)
			continue
		}
		for i, col := range []string{"ours", "etcd", "ours/etcd"} {
			v := strings.TrimSpace(cells[i+1])
			if col == "ours/etcd" && isZero(cells[2]) {
				continue // no ratio to a zero (messages lost unreported, no GC in a tiny run)
			}
			if v == "—" || v == "" {
				t.Errorf("row %q: no %s figure: %q", r.label, col, line)
			}
		}
		// Raw references: TCP for the MsgApp rates, a TCP ping-pong for
		// the idle heartbeat, a file write + fsync for the snapshot.
		wantRaw := map[string]bool{"small.rate": true, "large.mbps": true, "large.rate": true,
			"hb.idle.p50": true, "hb.idle.p99": true, "snap.mbps": true}[r.metric]
		if got := strings.TrimSpace(cells[4]) != "—"; got != wantRaw {
			t.Errorf("row %q: raw figure present %v, want %v: %q", r.label, got, wantRaw, line)
		}
	}
	for _, want := range []string{"go: go1.", "CPU: ", "nproc ", "go.etcd.io/etcd/server/v3 v3.7.3"} {
		if !strings.Contains(report, want) {
			t.Errorf("report does not mention %q:\n%s", want, report)
		}
	}
	if t.Failed() {
		t.Logf("progress:\n%s", progress.String())
	}
}

// TestCheckerRejects proves that the receiver's check of measured MsgApps
// catches what a broken transport could deliver: each case hands the
// checker one altered copy of the next message and expects an error.
func TestCheckerRejects(t *testing.T) {
	spec := appSpec{entries: 3, size: 40}
	for _, tc := range []struct {
		name  string
		alter func(m *raftpb.Message)
		want  string // in the error; "" means no error
	}{
		{name: "intact", alter: func(*raftpb.Message) {}},
		{name: "wrong index", alter: func(m *raftpb.Message) { m.Index = proto.Uint64(m.GetIndex() + 1) }, want: "want index"},
		{name: "wrong logterm", alter: func(m *raftpb.Message) { m.LogTerm = proto.Uint64(warmTerm) }, want: "logterm"},
		{name: "wrong commit", alter: func(m *raftpb.Message) { m.Commit = proto.Uint64(0) }, want: "commit"},
		{name: "wrong term", alter: func(m *raftpb.Message) { m.Term = proto.Uint64(7) }, want: "term 7"},
		{name: "wrong sender", alter: func(m *raftpb.Message) { m.From = proto.Uint64(9) }, want: "from 9"},
		{name: "wrong type", alter: func(m *raftpb.Message) { m.Type = raftpb.MsgHeartbeat.Enum() }, want: "want MsgApp"},
		{name: "entry lost", alter: func(m *raftpb.Message) { m.Entries = m.Entries[:2] }, want: "has 2 entries"},
		{name: "entry index", alter: func(m *raftpb.Message) { m.Entries[1].Index = proto.Uint64(99) }, want: "got index 99"},
		{name: "entry truncated", alter: func(m *raftpb.Message) { m.Entries[2].Data = m.Entries[2].Data[:39] }, want: "39 bytes"},
		{name: "stamp", alter: func(m *raftpb.Message) { m.Entries[0].Data[0] ^= 1 }, want: "stamped"},
		{name: "data", alter: func(m *raftpb.Message) { m.Entries[2].Data[20] ^= 1 }, want: "differs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newAppStream(idA, idB, spec, 4, false)
			s.index, s.expect = 10, 10
			m := proto.Clone(s.nextMeasured()).(*raftpb.Message)
			tc.alter(m)
			s.slots <- struct{}{}
			s.receive(m)
			switch {
			case tc.want == "" && s.err != nil:
				t.Fatalf("got error %v, want none", s.err)
			case tc.want != "" && (s.err == nil || !strings.Contains(s.err.Error(), tc.want)):
				t.Fatalf("got error %v, want one containing %q", s.err, tc.want)
			}
			if len(s.slots) != 0 {
				t.Errorf("got %d slots taken after delivery, want 0", len(s.slots))
			}
		})
	}
	t.Run("duplicate", func(t *testing.T) {
		s := newAppStream(idA, idB, spec, 4, false)
		m := proto.Clone(s.nextMeasured()).(*raftpb.Message)
		s.slots <- struct{}{}
		s.receive(m)
		if s.err != nil {
			t.Fatalf("first delivery: got error %v, want none", s.err)
		}
		s.receive(m)
		if s.err == nil {
			t.Fatal("second delivery of the same message: got no error, want one")
		}
	})
}

// TestPipeCheckerRejects proves that the pipeline-only scenario's check
// takes messages in any order but catches damage, duplicates and messages
// that were never sent.
func TestPipeCheckerRejects(t *testing.T) {
	spec := appSpec{entries: 1, size: 40}
	// measured returns a stream past its warm-up and its next two measured
	// messages, as a sends them.
	measured := func() (*pipeStream, *raftpb.Message, *raftpb.Message) {
		s := newPipeStream(spec)
		s.next(warmTerm)
		s.base = s.index
		return s, s.next(measureTerm), s.next(measureTerm)
	}
	deliver := func(s *pipeStream, m *raftpb.Message) {
		s.slots <- struct{}{}
		s.receive(m)
	}
	t.Run("out of order", func(t *testing.T) {
		s, m1, m2 := measured()
		deliver(s, m2)
		deliver(s, m1)
		if s.err != nil || s.got != 2 {
			t.Fatalf("got %d delivered, error %v; want 2, none", s.got, s.err)
		}
	})
	for _, tc := range []struct {
		name  string
		alter func(m *raftpb.Message)
		want  string
	}{
		{name: "before the measurement", alter: func(m *raftpb.Message) { m.Index = proto.Uint64(m.GetIndex() - 1) }, want: "want an index from"},
		{name: "wrong commit", alter: func(m *raftpb.Message) { m.Commit = proto.Uint64(0) }, want: "commit"},
		{name: "wrong term", alter: func(m *raftpb.Message) { m.Term = proto.Uint64(7) }, want: "term 7"},
		{name: "wrong sender", alter: func(m *raftpb.Message) { m.From = proto.Uint64(9) }, want: "from 9"},
		{name: "entry lost", alter: func(m *raftpb.Message) { m.Entries = nil }, want: "has 0 entries"},
		{name: "entry index", alter: func(m *raftpb.Message) { m.Entries[0].Index = proto.Uint64(99) }, want: "got index 99"},
		{name: "stamp", alter: func(m *raftpb.Message) { m.Entries[0].Data[0] ^= 1 }, want: "stamped"},
		{name: "data", alter: func(m *raftpb.Message) { m.Entries[0].Data[20] ^= 1 }, want: "differs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, m1, _ := measured()
			tc.alter(m1)
			deliver(s, m1)
			if s.err == nil || !strings.Contains(s.err.Error(), tc.want) {
				t.Fatalf("got error %v, want one containing %q", s.err, tc.want)
			}
		})
	}
	t.Run("duplicate", func(t *testing.T) {
		s, m1, _ := measured()
		deliver(s, m1)
		deliver(s, proto.Clone(m1).(*raftpb.Message))
		if s.err == nil || !strings.Contains(s.err.Error(), "twice") {
			t.Fatalf("got error %v, want one containing %q", s.err, "twice")
		}
	})
}

// TestReadFrames checks the raw TCP reader against records built by
// appEntriesFrame, and that it refuses a record of another shape.
func TestReadFrames(t *testing.T) {
	spec := appSpec{entries: 4, size: 100}
	frame, err := appEntriesFrame(spec)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		stream  []byte
		read    int64
		wantErr bool
	}{
		{name: "three records", stream: bytes.Repeat(frame, 3), read: 3},
		{name: "empty", stream: nil, read: 0},
		{name: "truncated", stream: append(bytes.Clone(frame), frame[:10]...), read: 1, wantErr: true},
		{name: "bad type", stream: append([]byte{0x02}, frame[1:]...), read: 0, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n, err := readFrames(bufioReader(tc.stream), spec)
			if n != tc.read || (err != nil) != tc.wantErr {
				t.Fatalf("got %d records, error %v; want %d records, error %v", n, err, tc.read, tc.wantErr)
			}
		})
	}
}

// isZero reports whether a report cell holds the number zero, however
// formatted.
func isZero(cell string) bool {
	v, err := strconv.ParseFloat(strings.ReplaceAll(strings.TrimSpace(cell), ",", ""), 64)
	return err == nil && v == 0
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

func TestOpenResultUnreported(t *testing.T) {
	tests := []struct {
		name string
		r    openResult
		want float64
	}{
		{"all delivered", openResult{sent: 100, delivered: 100}, 0},
		{"drops reported", openResult{sent: 100, delivered: 60, reported: 40}, 0},
		{"some lost silently", openResult{sent: 200, delivered: 150, reported: 20}, 15},
		{"nothing sent", openResult{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.r.unreported(); got != tt.want {
				t.Errorf("unreported() = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestLinkChanges checks that a measurement's link check catches a stream
// of ours that went down or attached anew, as PeerStats reports it, as
// well as what the middleware counts.
func TestLinkChanges(t *testing.T) {
	t0 := time.Now()
	up := rafthttp.StreamState{Up: true, Since: t0}
	var before linkState
	for i := range before.streams {
		before.streams[i] = [2]rafthttp.StreamStats{
			{Type: rafthttp.StreamMsgAppV2, Writer: up, Reader: up},
			{Type: rafthttp.StreamMessage, Writer: up, Reader: up},
		}
	}
	for _, tc := range []struct {
		name   string
		change func(s *linkState)
		want   string // in the error; "" means no error
	}{
		{name: "nothing", change: func(*linkState) {}},
		{name: "Since read again", change: func(s *linkState) {
			// The same instant without its monotonic reading is no change.
			s.streams[0][0].Writer.Since = t0.Round(0)
		}},
		{name: "writer reattached", change: func(s *linkState) {
			s.streams[1][0].Writer.Since = t0.Add(time.Millisecond)
		}, want: "node b: msgappv2 stream"},
		{name: "reader down", change: func(s *linkState) {
			s.streams[0][1].Reader = rafthttp.StreamState{}
		}, want: "node a: message stream"},
		{name: "stream handler ended", change: func(s *linkState) { s.ended[0]++ }, want: "streams ended"},
		{name: "pipeline POST", change: func(s *linkState) { s.posts[1]++ }, want: "pipeline POSTs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			after := before
			tc.change(&after)
			err := linkChanges(before, after)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got error %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestRaftApplyRejects proves that the raft cluster's apply check catches
// what a lost, repeated, reordered or damaged proposal looks like, and
// that the leader tells the waiting client of its own proposal only.
func TestRaftApplyRejects(t *testing.T) {
	const size = 40
	newMember := func(id uint64) (*raftMember, *raftCluster) {
		rc := &raftCluster{setup: raftSetup{members: 1, clients: 2, size: size}, pattern: make([]byte, size)}
		for i := range rc.pattern {
			rc.pattern[i] = byte(i*131 + 7)
		}
		for range rc.setup.clients {
			rc.waiters = append(rc.waiters, &waiter{ch: make(chan struct{}, 1)})
		}
		m := &raftMember{id: id, cl: rc, last: make([]uint64, rc.setup.clients)}
		rc.members = []*raftMember{m}
		return m, rc
	}
	proposal := func(rc *raftCluster, client uint32, seq uint64) *raftpb.Entry {
		d := bytes.Clone(rc.pattern)
		binary.BigEndian.PutUint32(d, client)
		binary.BigEndian.PutUint64(d[4:], seq)
		return &raftpb.Entry{Index: proto.Uint64(seq + 10), Term: proto.Uint64(2), Type: raftpb.EntryNormal.Enum(), Data: d}
	}
	for _, tc := range []struct {
		name  string
		alter func(e *raftpb.Entry)
		want  string // in the error; "" means none
	}{
		{name: "the next proposal", alter: func(*raftpb.Entry) {}},
		{name: "a proposal lost before it", alter: func(e *raftpb.Entry) { binary.BigEndian.PutUint64(e.Data[4:], 3) }, want: "applied after its 1"},
		{name: "a proposal applied twice", alter: func(e *raftpb.Entry) { binary.BigEndian.PutUint64(e.Data[4:], 1) }, want: "applied after its 1"},
		{name: "damaged", alter: func(e *raftpb.Entry) { e.Data[size-1] ^= 1 }, want: "damaged"},
		{name: "truncated", alter: func(e *raftpb.Entry) { e.Data = e.Data[:size-1] }, want: "39 bytes"},
		{name: "unknown client", alter: func(e *raftpb.Entry) { binary.BigEndian.PutUint32(e.Data, 7) }, want: "client 7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, rc := newMember(raftLeader)
			if err := m.apply(proposal(rc, 1, 1)); err != nil {
				t.Fatalf("first proposal: %v", err)
			}
			rc.waiters[1].want.Store(2)
			e := proposal(rc, 1, 2)
			tc.alter(e)
			err := m.apply(e)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("got error %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got error %v, want one containing %q", err, tc.want)
			}
			told := len(rc.waiters[1].ch) == 1
			if told != (tc.want == "") {
				t.Errorf("client told %v, want %v", told, tc.want == "")
			}
		})
	}
	t.Run("a follower tells no client", func(t *testing.T) {
		m, rc := newMember(raftLeader + 1)
		rc.waiters[0].want.Store(1)
		if err := m.apply(proposal(rc, 0, 1)); err != nil {
			t.Fatal(err)
		}
		if len(rc.waiters[0].ch) != 0 {
			t.Error("a follower's apply told the client")
		}
	})
}

// TestFrameCounter: the tap counts the frames of a batch body whatever the
// sizes of the reads that carry it.
func TestFrameCounter(t *testing.T) {
	var body []byte
	for _, n := range []int{0, 1, 7, 300, 8} {
		body = binary.BigEndian.AppendUint64(body, uint64(n))
		body = append(body, bytes.Repeat([]byte{0xaa}, n)...)
	}
	for _, tc := range []struct {
		name string
		read int
	}{
		{name: "a byte at a time", read: 1},
		{name: "3 bytes", read: 3},
		{name: "8 bytes", read: 8},
		{name: "all at once", read: len(body)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			c := &frameCounter{ReadCloser: io.NopCloser(bytes.NewReader(body)), frames: &n}
			buf := make([]byte, tc.read)
			for {
				if _, err := c.Read(buf); err != nil {
					break
				}
			}
			if got := n.Load(); got != 5 {
				t.Errorf("counted %d frames, want 5", got)
			}
		})
	}
}
