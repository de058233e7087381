// Command tracewait reads an execution trace written by the bench command
// (-trace) and shows where the longest waits of one goroutine went: for
// each, what ran on the Ps meanwhile and which GC phases overlapped. It is
// how compat/BENCHMARKS.md explains the heartbeat's tail under load:
//
//	cd compat/bench
//	go run . -only ours -scenarios heartbeat -runs 1 -hb-time 1s -trace /tmp/hb.trace
//	go run ./tracewait -skip 2s /tmp/hb.trace      # the loaded runs
//	go run ./tracewait -until 1.3s /tmp/hb.trace   # the idle run
//
// By default the goroutine is the bench's heartbeat sender, waiting for
// each answer (a wait is one round trip). With -count it counts instead
// how often goroutines blocked, yielded and entered system calls, by where
// (how compat/BENCHMARKS.md compares the transports in the raft cluster):
//
//	go run . -only ours -scenarios raft -runs 1 -raft-time 1s -trace /tmp/raft.trace
//	go run ./tracewait -count -top 12 /tmp/raft.trace
package main

import (
	"cmp"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "tracewait:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("tracewait", flag.ContinueOnError)
	fn := fs.String("wait", "main.runHeartbeat.func", "a function on the waiting goroutine's stack when it blocks")
	skip := fs.Duration("skip", 0, "ignore the first part of the trace (the idle heartbeat runs, say)")
	until := fs.Duration("until", 0, "ignore the trace after this point (0: to the end)")
	top := fs.Int("top", 5, "how many of the longest waits to show")
	count := fs.Bool("count", false, "instead, count every goroutine's blocks, yields and system calls by where they happened (compat/BENCHMARKS.md, issue 17)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return errors.New("usage: tracewait [-wait func] [-skip d] [-top n] trace.out")
	}
	f, err := os.Open(fs.Arg(0))
	if err != nil {
		return err
	}
	defer f.Close()
	evs, err := readAll(f)
	if err != nil {
		return err
	}
	if *count {
		countStates(out, evs, *skip, *until, *top)
		return nil
	}
	waits := findWaits(evs, *fn, *skip, *until)
	if len(waits) == 0 {
		return fmt.Errorf("no wait of a goroutine with %q on its stack", *fn)
	}
	slices.SortFunc(waits, func(a, b window) int { return cmp.Compare(b.end-b.start, a.end-a.start) })
	fmt.Fprintf(out, "%d waits; the %d longest:\n", len(waits), min(*top, len(waits)))
	for _, w := range waits[:min(*top, len(waits))] {
		describe(out, evs, w)
	}
	return nil
}

// event is what tracewait keeps of a trace event.
type event struct {
	t        trace.Time
	kind     trace.EventKind
	g        trace.GoID // the goroutine a transition is about
	from, to trace.GoState
	reason   string
	stack    string // the first functions of the stack, outside the runtime
	rng      string // a range's name
}

func readAll(r io.Reader) ([]event, error) {
	tr, err := trace.NewReader(r)
	if err != nil {
		return nil, err
	}
	var evs []event
	for {
		e, err := tr.ReadEvent()
		if err == io.EOF {
			return evs, nil
		}
		if err != nil {
			return nil, err
		}
		ev := event{t: e.Time(), kind: e.Kind()}
		switch e.Kind() {
		case trace.EventRangeBegin, trace.EventRangeEnd:
			ev.rng = e.Range().Name
		case trace.EventStateTransition:
			st := e.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			ev.g = st.Resource.Goroutine()
			ev.from, ev.to = st.Goroutine()
			ev.reason = st.Reason
			ev.stack = label(st.Stack)
		default:
			continue
		}
		evs = append(evs, ev)
	}
}

// label names a stack by its first two functions outside the runtime and
// the standard library's plumbing.
func label(s trace.Stack) string {
	var fns []string
	for f := range s.Frames() {
		name := f.Func
		if slices.ContainsFunc([]string{"runtime.", "internal/", "syscall.", "io.", "bufio.", "net.", "net/http", "sync.", "time."},
			func(p string) bool { return strings.HasPrefix(name, p) }) {
			continue
		}
		fns = append(fns, strings.TrimPrefix(name, "github.com/raftkit/rafthttp."))
		if len(fns) == 2 {
			break
		}
	}
	return strings.Join(fns, " < ")
}

// window is one wait: from the goroutine blocking to its being woken.
type window struct {
	g          trace.GoID
	start, end trace.Time
}

// findWaits returns every wait of a goroutine that blocked with fn on its
// stack, between skip and until (0: the end).
func findWaits(evs []event, fn string, skip, until time.Duration) []window {
	if len(evs) == 0 {
		return nil
	}
	first := evs[0].t
	blocked := map[trace.GoID]trace.Time{}
	var ws []window
	for _, e := range evs {
		at := time.Duration(e.t - first)
		if e.kind != trace.EventStateTransition || at < skip || (until > 0 && at > until) {
			continue
		}
		if e.to == trace.GoWaiting && strings.Contains(e.stack, fn) {
			blocked[e.g] = e.t
		}
		if e.from == trace.GoWaiting && e.to == trace.GoRunnable {
			if t, ok := blocked[e.g]; ok {
				ws = append(ws, window{g: e.g, start: t, end: e.t})
				delete(blocked, e.g)
			}
		}
	}
	return ws
}

// describe prints what ran during w: the goroutines with the most running
// time in it, the longest single runs, and the ranges (GC phases) that
// began in it.
func describe(out io.Writer, evs []event, w window) {
	fmt.Fprintf(out, "\nwait of g%d: %v\n", w.g, time.Duration(w.end-w.start))
	type agg struct {
		g       trace.GoID
		label   string
		total   time.Duration
		longest time.Duration
	}
	labels := map[trace.GoID]string{}
	running := map[trace.GoID]trace.Time{}
	byG := map[trace.GoID]*agg{}
	var rangeNames []string
	ranges := map[string]int{}
	rangeFirst := map[string]trace.Time{}
	for _, e := range evs {
		if e.t > w.end {
			break
		}
		if e.kind == trace.EventRangeBegin && e.t >= w.start {
			if ranges[e.rng] == 0 {
				rangeNames = append(rangeNames, e.rng)
				rangeFirst[e.rng] = e.t
			}
			ranges[e.rng]++
			continue
		}
		if e.kind != trace.EventStateTransition {
			continue
		}
		if e.stack != "" {
			labels[e.g] = e.stack
		}
		if e.to == trace.GoRunning {
			running[e.g] = e.t
		}
		if e.from == trace.GoRunning {
			t0, ok := running[e.g]
			delete(running, e.g)
			if !ok || e.t < w.start {
				continue
			}
			d := time.Duration(e.t - max(t0, w.start))
			a := byG[e.g]
			if a == nil {
				a = &agg{g: e.g}
				byG[e.g] = a
			}
			a.label, a.total, a.longest = labels[e.g], a.total+d, max(a.longest, d)
		}
	}
	for _, name := range rangeNames {
		fmt.Fprintf(out, "  %8.3f ms  %s begins (%d times in the wait)\n", float64(rangeFirst[name]-w.start)/1e6, name, ranges[name])
	}
	aggs := make([]*agg, 0, len(byG))
	for _, a := range byG {
		aggs = append(aggs, a)
	}
	slices.SortFunc(aggs, func(a, b *agg) int { return cmp.Compare(b.total, a.total) })
	for _, a := range aggs[:min(6, len(aggs))] {
		name := a.label
		if name == "" {
			name = "(runtime)"
		}
		fmt.Fprintf(out, "  g%-6d ran %10v (longest run %10v)  %s\n", a.g, a.total, a.longest, name)
	}
}

// countStates prints how often goroutines blocked, yielded and entered a
// system call between skip and until (0: the end), by reason and by the
// stack they did it from (label), the top most frequent of each.
func countStates(out io.Writer, evs []event, skip, until time.Duration, top int) {
	if len(evs) == 0 {
		return
	}
	first := evs[0].t
	counts := map[string]map[string]int{"blocks": {}, "yields": {}, "system calls": {}}
	for _, e := range evs {
		at := time.Duration(e.t - first)
		if e.kind != trace.EventStateTransition || e.from != trace.GoRunning || at < skip || (until > 0 && at > until) {
			continue
		}
		switch e.to {
		case trace.GoWaiting:
			counts["blocks"][e.reason+" @ "+e.stack]++
		case trace.GoRunnable:
			counts["yields"][e.reason+" @ "+e.stack]++
		case trace.GoSyscall:
			counts["system calls"][e.stack]++
		}
	}
	for _, kind := range []string{"blocks", "yields", "system calls"} {
		type kv struct {
			k string
			n int
		}
		var kvs []kv
		total := 0
		for k, n := range counts[kind] {
			kvs = append(kvs, kv{k, n})
			total += n
		}
		slices.SortFunc(kvs, func(a, b kv) int { return cmp.Or(cmp.Compare(b.n, a.n), cmp.Compare(a.k, b.k)) })
		fmt.Fprintf(out, "%s: %d\n", kind, total)
		for _, x := range kvs[:min(top, len(kvs))] {
			fmt.Fprintf(out, "%10d  %s\n", x.n, x.k)
		}
	}
}
