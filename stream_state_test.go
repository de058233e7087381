package rafthttp

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
)

// errWriterTest is the failure the writerState scripts feed to onWritten and
// onProbed.
var errWriterTest = errors.New("test: write failed")

// writerEvent is one line of a writerState script: an event to feed the
// state, and how its answer must read. Events:
//
//   - attach, stop: onAttach, onStop;
//   - msg, msg-hb: onMessage with a MsgApp or a MsgHeartbeat;
//   - written, write-fails: onWritten with nil or errWriterTest;
//   - tick, gone, poke, reprobe: onTick, onGone, onPoke, onReprobe;
//   - probe-ok, probe-fails: onProbed with nil or errWriterTest;
//   - drained N: onDrained(N);
//   - armed: which channels run would wait on besides the queue.
type writerEvent struct {
	event, want string
}

// playWriter feeds ev to s and renders the state's answer.
func playWriter(s *writerState, ev string) (string, error) {
	probe := func(ok bool) string {
		if ok {
			return "probe"
		}
		return "skip"
	}
	switch ev {
	case "attach":
		replace, reconnect := s.onAttach()
		out := "attached"
		if replace {
			out = "replaced"
		}
		if reconnect {
			out += ", reconnect"
		}
		return out, nil
	case "stop":
		if s.onStop() {
			return "release", nil
		}
		return "nothing", nil
	case "msg", "msg-hb":
		typ := raftpb.MsgApp
		if ev == "msg-hb" {
			typ = raftpb.MsgHeartbeat
		}
		if !s.onMessage(typ) {
			return "discard", nil
		}
		return fmt.Sprintf("batch %d", len(s.batch)), nil
	case "written":
		return renderStep(s.onWritten(nil)), nil
	case "write-fails":
		return renderStep(s.onWritten(errWriterTest)), nil
	case "tick":
		return probe(s.onTick()), nil
	case "gone":
		return probe(s.onGone()), nil
	case "poke":
		return probe(s.onPoke()), nil
	case "reprobe":
		return probe(s.onReprobe()), nil
	case "probe-ok":
		return renderStep(s.onProbed(nil)), nil
	case "probe-fails":
		return renderStep(s.onProbed(errWriterTest)), nil
	case "armed":
		var armed []string
		if s.wantsTicks() {
			armed = append(armed, "ticks")
		}
		if s.wantsGone() {
			armed = append(armed, "gone")
		}
		if s.wantsReprobe() {
			armed = append(armed, "reprobe")
		}
		if len(armed) == 0 {
			return "none", nil
		}
		return strings.Join(armed, " "), nil
	}
	var n int
	if _, err := fmt.Sscanf(ev, "drained %d", &n); err == nil {
		if s.onDrained(n) {
			return "report unreachable", nil
		}
		return "no report", nil
	}
	return "", fmt.Errorf("unknown event %q", ev)
}

// renderStep writes a writerStep as the scripts expect it: "ok" for the zero
// step, else its parts in the order run carries them out.
func renderStep(st writerStep) string {
	var parts []string
	if len(st.lost) > 0 {
		var lost []string
		for _, typ := range st.lost {
			lost = append(lost, typ.String())
		}
		parts = append(parts, "lost "+strings.Join(lost, " "))
	}
	if st.err != nil {
		if !errors.Is(st.err, errWriterTest) {
			parts = append(parts, fmt.Sprintf("fail %s with the wrong error %v", st.action, st.err))
		} else {
			parts = append(parts, "fail "+st.action)
		}
	} else if st.action != "" {
		parts = append(parts, "action "+st.action+" without a failure")
	}
	if st.rearm {
		parts = append(parts, "rearm")
	}
	if len(parts) == 0 {
		return "ok"
	}
	return strings.Join(parts, ", ")
}

// reprobeRun is the script of the maxReprobes reprobes that a successful
// probe after gone or a poke arms: each rearms the timer but the last.
func reprobeRun() []writerEvent {
	var evs []writerEvent
	for i := range maxReprobes {
		want := "rearm"
		if i == maxReprobes-1 {
			want = "ok"
		}
		evs = append(evs, writerEvent{"reprobe", "probe"}, writerEvent{"probe-ok", want})
	}
	return evs
}

// TestWriterState is the specification of a stream writer's decisions, as
// scripts of events and the state's answers (see writerEvent).
func TestWriterState(t *testing.T) {
	tests := []struct {
		name   string
		script []writerEvent
	}{
		{
			name: "a message with no connection is discarded",
			script: []writerEvent{
				{"armed", "none"},
				{"msg", "discard"},
				{"tick", "skip"},
				{"poke", "skip"},
				{"gone", "skip"},
				{"stop", "nothing"},
			},
		},
		{
			name: "attach arms the heartbeat and the request's end",
			script: []writerEvent{
				{"attach", "attached"},
				{"armed", "ticks gone"},
				{"msg", "batch 1"},
			},
		},
		{
			name: "a second attach replaces the connection and is a reconnect",
			script: []writerEvent{
				{"attach", "attached"},
				{"attach", "replaced, reconnect"},
				{"armed", "ticks gone"},
			},
		},
		{
			name: "an attach after a failure is a reconnect, not a replacement",
			script: []writerEvent{
				{"attach", "attached"},
				{"tick", "probe"},
				{"probe-fails", "fail heartbeat"},
				{"attach", "attached, reconnect"},
			},
		},
		{
			name: "messages join the batch until it is written",
			script: []writerEvent{
				{"attach", "attached"},
				{"msg", "batch 1"},
				{"msg-hb", "batch 2"},
				{"msg", "batch 3"},
				{"written", "ok"},
				{"msg", "batch 1"},
			},
		},
		{
			name: "the heartbeat is skipped once after a write",
			script: []writerEvent{
				{"attach", "attached"},
				{"msg", "batch 1"},
				{"written", "ok"},
				{"tick", "skip"},
				{"tick", "probe"},
				{"probe-ok", "ok"},
				{"tick", "probe"},
				{"probe-ok", "ok"},
				{"armed", "ticks gone"},
			},
		},
		{
			name: "a new connection starts idle",
			script: []writerEvent{
				{"attach", "attached"},
				{"msg", "batch 1"},
				{"written", "ok"},
				{"attach", "replaced, reconnect"},
				{"tick", "probe"},
			},
		},
		{
			name: "a failed write loses every message of its batch",
			script: []writerEvent{
				{"attach", "attached"},
				{"msg", "batch 1"},
				{"msg-hb", "batch 2"},
				{"msg", "batch 3"},
				{"write-fails", "lost MsgApp MsgHeartbeat MsgApp, fail write"},
				{"drained 0", "no report"},
				{"armed", "none"},
				{"msg", "discard"},
				{"stop", "nothing"},
			},
		},
		{
			name: "a failed heartbeat that lost nothing reports the peer unreachable",
			script: []writerEvent{
				{"attach", "attached"},
				{"tick", "probe"},
				{"probe-fails", "fail heartbeat"},
				{"drained 0", "report unreachable"},
				{"armed", "none"},
			},
		},
		{
			name: "a failure that drains messages reports only them",
			script: []writerEvent{
				{"attach", "attached"},
				{"tick", "probe"},
				{"probe-fails", "fail heartbeat"},
				{"drained 2", "no report"},
			},
		},
		{
			name: "gone probes, then reprobes maxReprobes times and stops",
			script: slices.Concat([]writerEvent{
				{"attach", "attached"},
				{"gone", "probe"},
				{"armed", "ticks"},
				{"probe-ok", "rearm"},
				{"armed", "ticks reprobe"},
			}, reprobeRun(), []writerEvent{
				{"armed", "ticks"},
				{"reprobe", "skip"},
				{"gone", "skip"},
			}),
		},
		{
			name: "a poke probes and reprobes like gone",
			script: slices.Concat([]writerEvent{
				{"attach", "attached"},
				{"poke", "probe"},
				{"probe-ok", "rearm"},
				{"armed", "ticks gone reprobe"},
			}, reprobeRun(), []writerEvent{
				{"armed", "ticks gone"},
				{"poke", "probe"},
			}),
		},
		{
			name: "a poke while reprobing is ignored",
			script: []writerEvent{
				{"attach", "attached"},
				{"gone", "probe"},
				{"probe-ok", "rearm"},
				{"poke", "skip"},
				{"reprobe", "probe"},
				{"probe-ok", "rearm"},
				{"poke", "skip"},
			},
		},
		{
			name: "gone while reprobing restarts the count",
			script: slices.Concat([]writerEvent{
				{"attach", "attached"},
				{"poke", "probe"},
				{"probe-ok", "rearm"},
				{"reprobe", "probe"},
				{"probe-ok", "rearm"},
				{"gone", "probe"},
				{"probe-ok", "rearm"},
			}, reprobeRun(), []writerEvent{
				{"armed", "ticks"},
			}),
		},
		{
			name: "a new connection cancels the reprobes",
			script: []writerEvent{
				{"attach", "attached"},
				{"gone", "probe"},
				{"probe-ok", "rearm"},
				{"attach", "replaced, reconnect"},
				{"armed", "ticks gone"},
				{"reprobe", "skip"},
				{"poke", "probe"},
			},
		},
		{
			name: "a failed probe after gone is a write failure",
			script: []writerEvent{
				{"attach", "attached"},
				{"gone", "probe"},
				{"probe-fails", "fail write"},
				{"drained 1", "no report"},
				{"armed", "none"},
			},
		},
		{
			name: "a failed reprobe is a write failure and ends the reprobes",
			script: []writerEvent{
				{"attach", "attached"},
				{"gone", "probe"},
				{"probe-ok", "rearm"},
				{"reprobe", "probe"},
				{"probe-fails", "fail write"},
				{"drained 0", "report unreachable"},
				{"armed", "none"},
				{"reprobe", "skip"},
			},
		},
		{
			name: "a failed poke probe is a write failure",
			script: []writerEvent{
				{"attach", "attached"},
				{"poke", "probe"},
				{"probe-fails", "fail write"},
			},
		},
		{
			name: "stop releases an attached connection once",
			script: []writerEvent{
				{"attach", "attached"},
				{"gone", "probe"},
				{"probe-ok", "rearm"},
				{"stop", "release"},
				{"armed", "none"},
				{"stop", "nothing"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newWriterState()
			for i, ev := range tc.script {
				got, err := playWriter(&s, ev.event)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if got != ev.want {
					t.Fatalf("step %d (%s): got %q, want %q", i, ev.event, got, ev.want)
				}
			}
		})
	}
}

// TestWriterStateBatch checks where a batch ends: at maxBatch messages, a
// writer that never finds its queue empty still flushes.
func TestWriterStateBatch(t *testing.T) {
	tests := []struct {
		name     string
		messages int  // messages fed before asking
		written  bool // the batch was written, then one more message fed
		wantMore bool
	}{
		{name: "one message takes more", messages: 1, wantMore: true},
		{name: "one short of maxBatch takes more", messages: maxBatch - 1, wantMore: true},
		{name: "maxBatch messages end the batch", messages: maxBatch, wantMore: false},
		{name: "a written batch starts afresh", messages: maxBatch, written: true, wantMore: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newWriterState()
			s.onAttach()
			for range tc.messages {
				if !s.onMessage(raftpb.MsgApp) {
					t.Fatal("a message was discarded with a connection attached")
				}
			}
			if tc.written {
				if st := s.onWritten(nil); renderStep(st) != "ok" {
					t.Fatalf("a written batch: got %s, want ok", renderStep(st))
				}
				s.onMessage(raftpb.MsgApp)
			}
			if got := s.takeMore(); got != tc.wantMore {
				t.Errorf("takeMore() = %t, want %t (batch of %d)", got, tc.wantMore, len(s.batch))
			}
		})
	}
}

// TestWriterStateFailedBatchOfMaxBatch checks that a full batch that fails
// is lost whole: one report per message.
func TestWriterStateFailedBatchOfMaxBatch(t *testing.T) {
	s := newWriterState()
	s.onAttach()
	for s.takeMore() {
		s.onMessage(raftpb.MsgApp)
	}
	st := s.onWritten(errWriterTest)
	if len(st.lost) != maxBatch || st.action != "write" || st.err == nil {
		t.Fatalf("got %d lost, action %q, err %v; want %d lost, action write, an error", len(st.lost), st.action, st.err, maxBatch)
	}
	if s.onDrained(0) {
		t.Error("onDrained(0) after a lost batch asks for another report")
	}
}

// fixedRand is a backoff random source that returns the same end of the
// range every time.
func fixedRand(highest bool) func(time.Duration) time.Duration {
	return func(n time.Duration) time.Duration {
		if highest {
			return n - 1
		}
		return 0
	}
}

// TestBackoff checks the waits between redials: a bound that starts at min,
// doubles up to max and resets, with jitter over its upper half.
func TestBackoff(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		name    string
		lo, hi  time.Duration
		highest bool   // the random source gives its highest value, else 0
		ops     string // "n" draws a wait, "r" resets
		want    []time.Duration
	}{
		{name: "the bound doubles up to max", lo: 100 * ms, hi: 2000 * ms, highest: true, ops: "nnnnnnn",
			want: []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 2000 * ms, 2000 * ms}},
		{name: "the least jitter waits half the bound", lo: 100 * ms, hi: 2000 * ms, ops: "nnnnnnn",
			want: []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, 1000 * ms, 1000 * ms}},
		{name: "max equal to min never grows", lo: time.Second, hi: time.Second, highest: true, ops: "nnn",
			want: []time.Duration{time.Second, time.Second, time.Second}},
		{name: "a max not a power of two of min caps the doubling", lo: 300 * ms, hi: 1000 * ms, highest: true, ops: "nnnn",
			want: []time.Duration{300 * ms, 600 * ms, 1000 * ms, 1000 * ms}},
		{name: "reset starts over at min", lo: 100 * ms, hi: 2000 * ms, highest: true, ops: "nnnrnn",
			want: []time.Duration{100 * ms, 200 * ms, 400 * ms, 100 * ms, 200 * ms}},
		{name: "reset at the cap starts over", lo: 100 * ms, hi: 400 * ms, highest: true, ops: "nnnnrn",
			want: []time.Duration{100 * ms, 200 * ms, 400 * ms, 400 * ms, 100 * ms}},
		{name: "an odd bound rounds the jitter down", lo: 3, hi: 3, highest: true, ops: "n",
			want: []time.Duration{2}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackoff(tc.lo, tc.hi)
			b.randN = fixedRand(tc.highest)
			var got []time.Duration
			for _, op := range tc.ops {
				switch op {
				case 'n':
					got = append(got, b.next())
				case 'r':
					b.reset()
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("waits: got %v, want %v", got, tc.want)
			}
		})
	}
}

// TestBackoffJitterBounds checks, with the production random source, that
// every wait lies in the upper half of its bound, and that the source is
// asked for the whole half, both ends included.
func TestBackoffJitterBounds(t *testing.T) {
	tests := []struct {
		name   string
		lo, hi time.Duration
	}{
		{name: "defaults", lo: DefaultDialRetryMin, hi: DefaultDialRetryMax},
		{name: "tiny", lo: 1, hi: 7},
		{name: "fixed", lo: 50 * time.Millisecond, hi: 50 * time.Millisecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackoff(tc.lo, tc.hi)
			production := b.randN
			var asked time.Duration
			b.randN = func(n time.Duration) time.Duration {
				asked = n
				return production(n)
			}
			for i := range 200 {
				bound := b.cur
				wait := b.next()
				if wait < bound/2 || wait > bound {
					t.Fatalf("draw %d: wait %v outside [%v, %v]", i, wait, bound/2, bound)
				}
				if asked != bound/2+1 {
					t.Fatalf("draw %d: asked the source for [0, %v), want [0, %v)", i, asked, bound/2+1)
				}
				if b.cur != min(2*bound, tc.hi) {
					t.Fatalf("draw %d: next bound %v, want %v", i, b.cur, min(2*bound, tc.hi))
				}
				if i%17 == 16 {
					b.reset()
				}
			}
		})
	}
}
