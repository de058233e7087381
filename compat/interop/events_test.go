package interop

import (
	"encoding/hex"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp/compat/peerkit"
	"github.com/raftkit/rafthttp/internal/rafttest"
)

// event is something one side of a test reported. Both sides, the etcd
// peer (over its stdout) and our transport, report the same kinds (see
// ../peerkit for the list), so that a scenario reads the same whichever
// side sends.
type event = peerkit.Event

// eventLog is the ordered record of one side's events.
type eventLog struct {
	mu     sync.Mutex
	events []event
}

func (l *eventLog) add(e event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.events = append(l.events, e)
}

// mark returns a position in the log, for the "since" arguments below.
func (l *eventLog) mark() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.events)
}

// since returns the events from position from on that match keep.
func (l *eventLog) since(from int, keep func(event) bool) []event {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []event
	for _, e := range l.events[from:] {
		if keep(e) {
			out = append(out, e)
		}
	}
	return out
}

func (l *eventLog) count(from int, keep func(event) bool) int {
	return len(l.since(from, keep))
}

// processed returns the messages Raft.Process got from position from on.
func (l *eventLog) processed(t testing.TB, from int) []*raftpb.Message {
	t.Helper()
	var out []*raftpb.Message
	for _, e := range l.since(from, isEv("process")) {
		out = append(out, decodeHexMessage(t, e.Msg))
	}
	return out
}

// written returns, per stream response (by Conn, in order of first write),
// the bytes the server wrote to the streams whose path starts with prefix,
// from position from on.
func (l *eventLog) written(t testing.TB, from int, prefix string) [][]byte {
	t.Helper()
	var order []int64
	byConn := map[int64][]byte{}
	for _, e := range l.since(from, func(e event) bool { return e.Ev == "wrote" && strings.HasPrefix(e.Path, prefix) }) {
		b, err := hex.DecodeString(e.Data)
		if err != nil {
			t.Fatalf("bad hex in event %+v: %v", e, err)
		}
		if _, ok := byConn[e.Conn]; !ok {
			order = append(order, e.Conn)
		}
		byConn[e.Conn] = append(byConn[e.Conn], b...)
	}
	out := make([][]byte, 0, len(order))
	for _, c := range order {
		out = append(out, byConn[c])
	}
	return out
}

func isEv(kind string) func(event) bool { return func(e event) bool { return e.Ev == kind } }

// isHTTP matches the server's answers to method on paths starting with
// prefix.
func isHTTP(method, prefix string) func(event) bool {
	return func(e event) bool { return e.Ev == "http" && e.Method == method && strings.HasPrefix(e.Path, prefix) }
}

// isPipelinePost matches the server's answers to POST /raft.
func isPipelinePost(e event) bool { return e.Ev == "http" && e.Method == "POST" && e.Path == "/raft" }

func decodeHexMessage(t testing.TB, h string) *raftpb.Message {
	t.Helper()
	b, err := hex.DecodeString(h)
	if err != nil {
		t.Fatalf("bad hex message: %v", err)
	}
	m := &raftpb.Message{}
	if err := proto.Unmarshal(b, m); err != nil {
		t.Fatalf("unmarshalling a reported message: %v", err)
	}
	return m
}

// waitTimeout bounds every wait for an event. Generous: the machine has two
// cores and the race detector slows everything down.
const waitTimeout = 20 * time.Second

// eventually polls cond until it holds, failing the test after waitTimeout.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	rafttest.Eventually(t, waitTimeout, what, cond)
}

// idle lets d pass, for the tests whose point is that nothing happens for a
// while (a stream staying up past its read timeout).
func idle(t testing.TB, d time.Duration) {
	t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-t.Context().Done():
	}
}
