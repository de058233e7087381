package robustness

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

var (
	flagDuration = flag.Duration("robust.duration", 0,
		"run seed after seed for this long and print the table (0: the short suite, or the seed of -robust.seed alone)")
	flagSeed    = flag.Int64("robust.seed", 0, "the first seed (0: one from the clock with -robust.duration, the short suite's otherwise)")
	flagMembers = flag.String("robust.members", "3,5", "cluster sizes, taken in turn")
	flagChaos   = flag.Duration("robust.chaos", 20*time.Second, "how long each seed runs under the nemesis (with -robust.duration or -robust.seed)")
	flagOut     = flag.String("robust.out", filepath.Join(os.TempDir(), "rafthttp-robustness"),
		"where a failed seed writes its history, fault schedule and report")
)

// shortChaos is how long each seed of the short suite runs under the
// nemesis.
const shortChaos = 6 * time.Second

// TestRobustness runs seeds of the robustness check (doc.go). Without flags
// it is the short suite of go test: one seed on 3 members and one on 5 (the
// first only with -short). With -robust.seed it replays that seed; with
// -robust.duration it runs seed after seed for that long and prints the
// table (make robustness).
func TestRobustness(t *testing.T) {
	sizes, err := parseMembers(*flagMembers)
	if err != nil {
		t.Fatal(err)
	}
	var results []*runResult
	run := func(cfg runConfig) {
		name := fmt.Sprintf("seed=%d/members=%d", cfg.Seed, cfg.Members)
		t.Run(name, func(t *testing.T) {
			cfg.OutDir = *flagOut
			res := runOnce(t, cfg)
			results = append(results, res)
			fmt.Fprintln(os.Stdout, res.line())
			for _, ev := range res.events {
				t.Logf("fault %d at %v for %v: %s %v (leader %d) %s", ev.Step, time.Duration(ev.Start).Round(time.Millisecond),
					time.Duration(ev.End-ev.Start).Round(time.Millisecond), ev.Kind, ev.Members, ev.Leader, ev.Note)
			}
			if res.failed() {
				t.Errorf("seed %d on %d members failed: %s", cfg.Seed, cfg.Members, strings.Join(res.checks(), ", "))
				for _, v := range res.Violations {
					t.Logf("%s: %s", v.Check, v.Detail)
				}
				t.Logf("history, schedule and report in %s; replay with: %s", res.Artifacts, res.replay())
			}
		})
	}
	switch {
	case *flagDuration > 0:
		seed := *flagSeed
		if seed == 0 {
			seed = time.Now().UnixNano() % 1_000_000
		}
		start := time.Now()
		for i := 0; time.Since(start) < *flagDuration; i++ {
			run(newRunConfig(seed+int64(i), sizes[i%len(sizes)], *flagChaos))
		}
	case *flagSeed != 0:
		for _, m := range sizes {
			run(newRunConfig(*flagSeed, m, *flagChaos))
		}
	default:
		run(newRunConfig(1, 3, shortChaos))
		if !testing.Short() {
			run(newRunConfig(2, 5, shortChaos))
		}
	}
	printTable(os.Stdout, results)
}

// parseMembers reads a comma-separated list of cluster sizes.
func parseMembers(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("-robust.members: %q is not a cluster size", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// line is a one-line summary of a run.
func (r *runResult) line() string {
	status := "ok"
	if r.failed() {
		status = "FAILED " + strings.Join(r.checks(), ",")
	}
	faults := 0
	for _, n := range r.Faults {
		faults += n
	}
	return fmt.Sprintf("seed %d, %d members, snapshots by %s: %d ops (%d unknown), %d faults, %d restarts, %d snapshots installed, linearizable %s, %d lost writes, %d inconclusive, %v: %s",
		r.Config.Seed, r.Config.Members, r.Config.SnapPath, r.Ops.Gets+r.Ops.Puts+r.Ops.CASes, r.Ops.Unknown, faults,
		r.Restarts, r.SnapshotsInstalled, r.Linearizable, r.LostWrites, len(r.Inconclusive), r.Elapsed.Round(100*time.Millisecond), status)
}

// printTable prints the totals of the runs.
func printTable(w io.Writer, results []*runResult) {
	if len(results) == 0 {
		return
	}
	var ops opCounts
	faults := map[faultKind]int{}
	bySize := map[int]int{}
	var restarts, installed, sent int64
	var violations, lost, inconclusive, failedSeeds int
	lin := map[porcupine.CheckResult]int{}
	var elapsed time.Duration
	for _, r := range results {
		ops.Gets += r.Ops.Gets
		ops.Puts += r.Ops.Puts
		ops.CASes += r.Ops.CASes
		ops.Unknown += r.Ops.Unknown
		ops.FailedReads += r.Ops.FailedReads
		for k, n := range r.Faults {
			faults[k] += n
		}
		bySize[r.Config.Members]++
		restarts += r.Restarts
		installed += r.SnapshotsInstalled
		sent += r.SnapshotsSent
		violations += len(r.Violations)
		lost += r.LostWrites
		inconclusive += len(r.Inconclusive)
		lin[r.Linearizable]++
		elapsed += r.Elapsed
		if r.failed() {
			failedSeeds++
		}
	}
	var sizes []string
	for _, m := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9} {
		if bySize[m] > 0 {
			sizes = append(sizes, fmt.Sprintf("%d on %d members", bySize[m], m))
		}
	}
	var fk []string
	total := 0
	for _, k := range faultKinds {
		fk = append(fk, fmt.Sprintf("%s %d", k, faults[k]))
		total += faults[k]
	}
	fmt.Fprintf(w, "\nrobustness: %d seeds in %v\n", len(results), elapsed.Round(time.Second))
	fmt.Fprintf(w, "  %-24s %d (%s)\n", "seeds", len(results), strings.Join(sizes, ", "))
	fmt.Fprintf(w, "  %-24s %d (get %d, put %d, cas %d; %d writes of unknown outcome; %d reads unanswered, not counted)\n",
		"operations", ops.Gets+ops.Puts+ops.CASes, ops.Gets, ops.Puts, ops.CASes, ops.Unknown, ops.FailedReads)
	fmt.Fprintf(w, "  %-24s %d (%s)\n", "faults injected", total, strings.Join(fk, ", "))
	fmt.Fprintf(w, "  %-24s %d restarts, %d snapshots installed (%d sent with SendSnapshot)\n", "members", restarts, installed, sent)
	fmt.Fprintf(w, "  %-24s %d ok, %d illegal, %d unknown (checker timed out)\n", "linearizability", lin[porcupine.Ok], lin[porcupine.Illegal], lin[porcupine.Unknown])
	fmt.Fprintf(w, "  %-24s %d\n", "violations", violations)
	fmt.Fprintf(w, "  %-24s %d\n", "lost acknowledged writes", lost)
	fmt.Fprintf(w, "  %-24s %d\n", "inconclusive checks", inconclusive)
	fmt.Fprintf(w, "  %-24s %d\n", "failed seeds", failedSeeds)
}
