package robustness

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/raftkit/rafthttp"
)

// runConfig is one run: everything it does follows from it, the fault
// schedule and the clients' choices from the seed.
type runConfig struct {
	Seed    int64         `json:"seed"`
	Members int           `json:"members"`
	Chaos   time.Duration `json:"chaos"` // how long the clients run under the nemesis
	Clean   time.Duration `json:"clean"` // how long they run in the fault-free final phase
	Clients int           `json:"clients"`
	Keys    int           `json:"keys"`
	// SnapPath is how snapshots travel: snapSend or snapInline.
	SnapPath string `json:"snap_path"`
	// NoFaults keeps the nemesis idle.
	NoFaults bool `json:"no_faults,omitempty"`
	// Tamper, if set, breaks the transport, once, in the final phase.
	Tamper tamperKind `json:"tamper,omitempty"`
	// OutDir is where a failed run writes its history and fault schedule;
	// "" writes nothing.
	OutDir string `json:"-"`
}

// newRunConfig is the configuration of seed on a cluster of members, with
// the nemesis running for chaos. The seed picks how snapshots travel.
func newRunConfig(seed int64, members int, chaos time.Duration) runConfig {
	cfg := runConfig{Seed: seed, Members: members, Chaos: chaos, Clean: 2 * time.Second,
		Clients: members + 1, Keys: 12, SnapPath: snapSend}
	if rand.New(rand.NewPCG(uint64(seed), 0x736e6170)).IntN(2) == 1 {
		cfg.SnapPath = snapInline
	}
	return cfg
}

// electionTick is raft's election timeout in ticks: 300-600 ms, which a
// loaded machine running the race detector does not miss by accident.
func (runConfig) electionTick() int { return 30 }

// runResult is what a run saw, and which checks failed.
type runResult struct {
	Config             runConfig             `json:"config"`
	Ops                opCounts              `json:"ops"`
	Faults             map[faultKind]int     `json:"faults"`
	Restarts           int64                 `json:"restarts"`
	SnapshotsInstalled int64                 `json:"snapshots_installed"`
	SnapshotsSent      int64                 `json:"snapshots_sent"`
	Linearizable       porcupine.CheckResult `json:"linearizable"`
	LostWrites         int                   `json:"lost_writes"`
	Violations         []violation           `json:"violations"`
	// Inconclusive lists what could not be checked: a member whose streams
	// broke in the final phase, a linearizability check that timed out.
	Inconclusive []string      `json:"inconclusive,omitempty"`
	Tampered     string        `json:"tampered,omitempty"`
	Elapsed      time.Duration `json:"elapsed"`
	Artifacts    string        `json:"artifacts,omitempty"`

	plan    []faultStep
	events  []faultEvent
	ops     []porcupine.Operation
	linInfo porcupine.LinearizationInfo
}

// failed says whether a check failed.
func (r *runResult) failed() bool {
	return len(r.Violations) > 0 || r.Linearizable == porcupine.Illegal
}

// checks returns the names of the checks that failed, each once.
func (r *runResult) checks() []string {
	var out []string
	for _, v := range r.Violations {
		if !slices.Contains(out, v.Check) {
			out = append(out, v.Check)
		}
	}
	return out
}

// Timeouts of the phases of a run. Generous: they bound a failure, and a
// loaded two-core machine running the race detector is slow.
const (
	leaderTimeout   = 30 * time.Second
	convergeTimeout = 60 * time.Second
	quietWindow     = time.Second      // counts unchanged this long: nothing in flight
	quietTimeout    = 30 * time.Second // for the counts to settle
	balanceTimeout  = 15 * time.Second // for every message of the final phase to be accounted for
	linTimeout      = 3 * time.Minute  // for porcupine
)

// runOnce runs cfg and checks it; t only provides the temporary directory
// and the goroutine baseline.
func runOnce(t testing.TB, cfg runConfig) *runResult {
	start := time.Now()
	res := &runResult{Config: cfg, Faults: map[faultKind]int{}}
	ignore := goleak.IgnoreCurrent()
	dir := t.TempDir()
	logPath := filepath.Join(dir, "transport.log")
	logger, closeLog, err := fileLogger(logPath)
	if err != nil {
		t.Fatal(err)
	}
	var tp *tamper
	if cfg.Tamper != "" {
		tp = &tamper{kind: cfg.Tamper}
	}
	h := newHistory()
	c, err := newCluster(cfg, dir, logger, tp)
	if err != nil {
		closeLog()
		t.Fatal(err)
	}
	res.drive(c, h)
	c.close()
	res.Restarts, res.SnapshotsInstalled, res.SnapshotsSent = c.restarts.Load(), c.snapshotsInstalled.Load(), c.snapshotsSent.Load()
	res.Violations = append(res.Violations, c.violations...)
	if tp != nil {
		res.Tampered = tp.acted()
	}
	if err := goleak.Find(ignore); err != nil {
		res.Violations = append(res.Violations, violation{"goroutines", err.Error()})
	}

	res.ops = h.close()
	res.Ops = h.counts
	res.Linearizable, res.linInfo = porcupine.CheckOperationsVerbose(kvModel, res.ops, linTimeout)
	switch res.Linearizable {
	case porcupine.Illegal:
		res.Violations = append(res.Violations, violation{"linearizability", "the history is not linearizable (see history.html)"})
	case porcupine.Unknown:
		res.Inconclusive = append(res.Inconclusive, fmt.Sprintf("linearizability: porcupine gave up after %v", linTimeout))
	}
	closeLog()
	res.Elapsed = time.Since(start)
	if (res.failed() || len(res.Inconclusive) > 0) && cfg.OutDir != "" {
		if err := res.writeArtifacts(logPath); err != nil {
			t.Errorf("writing the artifacts of seed %d: %v", cfg.Seed, err)
		}
	}
	return res
}

// fileLogger returns a logger of the transports' warnings, to path.
func fileLogger(path string) (*zap.Logger, func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	enc := zap.NewDevelopmentEncoderConfig()
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(f), zapcore.WarnLevel)
	return zap.New(core), func() { f.Close() }, nil
}

// violate records a failed check of the run itself.
func (r *runResult) violate(check, format string, args ...any) {
	r.Violations = append(r.Violations, violation{check, fmt.Sprintf(format, args...)})
}

// drive runs the phases of a run on c and makes the checks that need the
// cluster up: the chaos phase, the heal and catch-up, the fault-free final
// phase framed by two pauses of every Ready loop, then the comparison of
// the members' states.
func (r *runResult) drive(c *cluster, h *history) {
	ctx := context.Background()
	if !waitFor(ctx, leaderTimeout, func() bool { return c.leader() != 0 }) {
		r.violate("liveness", "no leader within %v of the start", leaderTimeout)
		return
	}

	// Chaos: clients under the nemesis.
	if !r.Config.NoFaults {
		r.plan = planFaults(r.Config.Seed, r.Config.Members, r.Config.Chaos)
	}
	nm := &nemesis{c: c, h: h}
	stopClients := c.startClients(h, r.Config.Seed, 0)
	if len(r.plan) > 0 {
		if err := nm.run(ctx, r.plan); err != nil {
			r.violate("nemesis", "%v", err)
		}
	} else {
		sleepCtx(ctx, r.Config.Chaos)
	}
	stopClients()
	if err := nm.heal(); err != nil {
		r.violate("nemesis", "final heal: %v", err)
	}
	r.events = nm.events
	for _, ev := range nm.events {
		r.Faults[ev.Kind]++
		if ev.Also != "" {
			r.Faults[ev.Also]++ // a slow or resetting network under the step's fault
		}
	}
	if !waitFor(ctx, convergeTimeout, c.converged) {
		r.violate("liveness", "the members did not catch up within %v of the heal", convergeTimeout)
		r.compareStates(c, h)
		return
	}

	// The baseline of the final phase: nothing in flight.
	resume := c.freezeAll()
	base, ok := r.settle(c)
	resume()
	if !ok {
		r.compareStates(c, h)
		return
	}
	if c.tamper != nil {
		c.tamper.armed.Store(true)
	}

	// The final phase: clients on a healed network.
	stopClients = c.startClients(h, r.Config.Seed, 1)
	sleepCtx(ctx, r.Config.Clean)
	stopClients()
	resume, ok = c.quiesce(convergeTimeout)
	if !ok {
		r.violate("liveness", "the members did not catch up within %v of the final phase", convergeTimeout)
		resume = c.freezeAll()
	}
	defer resume()
	r.balance(c, base)
	r.compareStates(c, h)
	for _, d := range c.acct.extraDeliveries() {
		r.violate("accounting", "%s", d)
	}
}

// startClients starts the run's clients, each with its own generator drawn
// from the seed and the phase; the returned function stops them and waits.
func (c *cluster) startClients(h *history, seed int64, phase uint64) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range c.cfg.Clients {
		idx := int(phase)*c.cfg.Clients + i // unique in the run: it numbers the client's requests
		rng := rand.New(rand.NewPCG(uint64(seed), uint64(idx)))
		wg.Go(func() { c.runClient(ctx, h, idx, rng) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// settle waits, with every Ready loop paused, until the accounting has not
// moved for quietWindow and no SendSnapshot is in flight, and returns it.
func (r *runResult) settle(c *cluster) (accountingState, bool) {
	var last accountingState
	var since time.Time
	var err error
	ok := waitFor(context.Background(), quietTimeout, func() bool {
		var now accountingState
		if now, err = c.accountingNow(); err != nil {
			return true
		}
		if last.tallies == nil || !equalTallies(now.tallies, last.tallies) || c.snapshotsInFlight() > 0 {
			last, since = now, time.Now()
			return false
		}
		return time.Since(since) >= quietWindow
	})
	switch {
	case err != nil:
		r.violate("accounting", "reading the transports' counts: %v", err)
		return last, false
	case !ok:
		r.violate("accounting", "messages still moving %v after every member paused", quietTimeout)
		return last, false
	}
	return last, true
}

func equalTallies(a, b map[uint64]tally) bool {
	if len(a) != len(b) {
		return false
	}
	for to, t := range a {
		if b[to] != t {
			return false
		}
	}
	return true
}

// balance checks the final phase's accounting, once every Ready loop is
// paused: the messages sent to each member since base were processed by
// it, dropped or failed as snapshots, exactly. If a stream connection to a
// member did not survive the phase, what its TCP buffers held was lost
// without a report, as with any transport on TCP: that member's count is
// reported inconclusive instead.
func (r *runResult) balance(c *cluster, base accountingState) {
	balanced := func(now accountingState, to uint64) bool {
		d := now.tallies[to].minus(base.tallies[to])
		return d.sent == d.processed+d.dropped+d.snapFailed
	}
	// Wait until every count balances, or until the counts have not moved
	// for twice the quiet window: then nothing is in flight any more, and
	// an imbalance stays.
	var now, last accountingState
	var since time.Time
	var err error
	waitFor(context.Background(), balanceTimeout, func() bool {
		if now, err = c.accountingNow(); err != nil {
			return true
		}
		if c.snapshotsInFlight() > 0 {
			return false
		}
		all := true
		for _, to := range c.ids {
			all = all && balanced(now, to)
		}
		if all {
			return true
		}
		if last.tallies == nil || !equalTallies(now.tallies, last.tallies) {
			last, since = now, time.Now()
			return false
		}
		return time.Since(since) >= 2*quietWindow
	})
	if err != nil {
		r.violate("accounting", "reading the transports' counts: %v", err)
		return
	}
	for _, to := range c.ids {
		if balanced(now, to) {
			continue
		}
		d := now.tallies[to].minus(base.tallies[to])
		accounted := d.processed + d.dropped + d.snapFailed
		what := fmt.Sprintf("messages to %d in the final phase: %d sent, %d processed, %d dropped, %d snapshots failed: ",
			to, d.sent, d.processed, d.dropped, d.snapFailed)
		if accounted < d.sent {
			what += fmt.Sprintf("%d neither delivered nor reported", d.sent-accounted)
		} else {
			what += fmt.Sprintf("%d more delivered or reported than sent", accounted-d.sent)
		}
		var broke []string
		for _, from := range c.ids {
			if from != to && !sameStreams(base.writers[pair{from, to}], now.writers[pair{from, to}]) {
				broke = append(broke, fmt.Sprintf("%d→%d", from, to))
			}
		}
		if len(broke) > 0 {
			r.Inconclusive = append(r.Inconclusive, fmt.Sprintf("%s (stream connections broke: %s)", what, strings.Join(broke, ", ")))
			continue
		}
		r.violate("accounting", "%s", what)
	}
}

// sameStreams says whether both stream connections were up at both
// moments, and the same connections.
func sameStreams(a, b [2]rafthttp.StreamState) bool {
	for i := range a {
		if !a[i].Up || !b[i].Up || !a[i].Since.Equal(b[i].Since) {
			return false
		}
	}
	return true
}

// compareStates checks that every member holds the state of the lowest
// member ID, and that each holds every acknowledged write, with its
// outcome.
func (r *runResult) compareStates(c *cluster, h *history) {
	nodes := c.running()
	if len(nodes) == 0 {
		return
	}
	states := map[uint64]*kvState{}
	for _, n := range nodes {
		states[n.id] = n.snapshotState()
	}
	ref := nodes[0].id
	for _, n := range nodes[1:] {
		if d := states[ref].diff(states[n.id]); d != "" {
			r.violate("state", "member %d differs from member %d: %s", n.id, ref, d)
		}
	}
	for id, st := range states {
		if st.Undecodable > 0 {
			r.violate("state", "member %d applied %d entries that are not commands", id, st.Undecodable)
		}
	}
	h.mu.Lock()
	acked := slices.Clone(h.acked)
	h.mu.Unlock()
	for _, w := range acked {
		var missing []string
		for _, n := range nodes {
			ok, applied := states[n.id].Results[w.ID]
			switch {
			case !applied:
				missing = append(missing, fmt.Sprintf("member %d lacks it", n.id))
			case ok != w.OK:
				missing = append(missing, fmt.Sprintf("member %d applied it with outcome %v", n.id, ok))
			}
		}
		if len(missing) > 0 {
			r.LostWrites++
			if r.LostWrites <= 10 {
				r.violate("lost-write", "write %#x on %s, acknowledged with outcome %v: %s", w.ID, w.Key, w.OK, strings.Join(missing, ", "))
			}
		}
	}
}

// writeArtifacts writes what a failed run leaves for its investigation:
// report.txt (the configuration, the failed checks and how to replay),
// history.json, history.html (porcupine's visualization, the faults
// annotated), faults.json (the schedule and what was done) and the
// transports' warnings.
func (r *runResult) writeArtifacts(logPath string) error {
	dir := filepath.Join(r.Config.OutDir, fmt.Sprintf("seed-%d-members-%d-%s", r.Config.Seed, r.Config.Members, time.Now().Format("20060102-150405")))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	r.Artifacts = dir
	var sb strings.Builder
	fmt.Fprintf(&sb, "seed %d, %d members, chaos %v, snapshots by %s\n\n", r.Config.Seed, r.Config.Members, r.Config.Chaos, r.Config.SnapPath)
	for _, v := range r.Violations {
		fmt.Fprintf(&sb, "FAILED %s: %s\n", v.Check, v.Detail)
	}
	for _, s := range r.Inconclusive {
		fmt.Fprintf(&sb, "inconclusive: %s\n", s)
	}
	fmt.Fprintf(&sb, "\nreplay: %s\n", r.replay())
	files := map[string][]byte{"report.txt": []byte(sb.String())}
	type op struct {
		Client int      `json:"client"`
		Call   int64    `json:"call_ns"`
		Return int64    `json:"return_ns"`
		Input  kvInput  `json:"input"`
		Output kvOutput `json:"output"`
		Meta   opMeta   `json:"meta"`
	}
	ops := make([]op, 0, len(r.ops))
	for _, o := range r.ops {
		ops = append(ops, op{o.ClientId, o.Call, o.Return, o.Input.(kvInput), o.Output.(kvOutput), o.Metadata.(opMeta)})
	}
	var err error
	if files["history.json"], err = json.MarshalIndent(ops, "", " "); err != nil {
		return err
	}
	if files["faults.json"], err = json.MarshalIndent(struct {
		Config runConfig    `json:"config"`
		Plan   []faultStep  `json:"plan"`
		Done   []faultEvent `json:"done"`
	}{r.Config, r.plan, r.events}, "", " "); err != nil {
		return err
	}
	if files["result.json"], err = json.MarshalIndent(r, "", " "); err != nil {
		return err
	}
	if files["transport.log"], err = os.ReadFile(logPath); err != nil {
		return err
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	var notes []porcupine.Annotation
	for _, ev := range r.events {
		notes = append(notes, porcupine.Annotation{Tag: "nemesis", Start: ev.Start, End: ev.End,
			Description: fmt.Sprintf("%s %v", ev.Kind, ev.Members), Details: ev.Note})
	}
	r.linInfo.AddAnnotations(notes)
	return porcupine.VisualizePath(kvModel, r.linInfo, filepath.Join(dir, "history.html"))
}

// replay is the command that runs this seed again.
func (r *runResult) replay() string {
	return fmt.Sprintf("make robustness SEED=%d MEMBERS=%d CHAOS=%v", r.Config.Seed, r.Config.Members, r.Config.Chaos)
}
