// Command bench runs github.com/raftkit/rafthttp ("ours") and etcd 3.7's own
// raft transport (go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp v3.7.3)
// side by side, in one process, on the same scenarios, interleaved (ours,
// etcd, ours, etcd, ...), and prints the medians with the ratio ours/etcd,
// next to raw TCP on loopback as the physical reference:
//
//  1. small MsgApp (1 entry of 128 B): messages/s with at most -window in
//     flight, over the msgappv2 stream (consecutive indexes in one term;
//     the receiver's Raft.Process checks and counts each message and frees
//     its window slot);
//  2. large MsgApp (64 entries of 1 KiB): MB/s of entry data, same window;
//  3. heartbeat round trip p50/p99: a sends MsgHeartbeat, b's Process
//     answers at once with MsgHeartbeatResp; idle, and while large MsgApps
//     stream a→b at full speed;
//  4. a snapshot (default 512 MiB, generated, never in memory): MB/s and
//     the peak RSS growth of the process (VmHWM after resetting it through
//     /proc/self/clear_refs), ours with SendSnapshot and DirSnapshotStore,
//     etcd with snap.Message and its Snapshotter, into a temporary
//     directory;
//  5. heap allocations (runtime.MemStats.Mallocs) and CPU time of the whole
//     process per delivered message, for the two MsgApp shapes;
//  6. raw TCP: the same msgappv2 AppEntries records written over a plain
//     loopback connection to a reader that only parses their lengths;
//  7. open loop: small MsgApps sent as fast as Send returns, no window:
//     messages/s delivered, and the share lost without a report to raft;
//  8. pipeline only: the small MsgApps of 1 (a new message per send) with
//     both servers refusing every stream, so that both transports fall back
//     to one POST per message: messages/s delivered with at most 64 in
//     flight, allocations and CPU per message.
//
// Every node is a transport behind a real http.Server on 127.0.0.1: etcd's
// on its peer listener (rafthttp.NewListener), as an etcd member serves it;
// ours on a plain net.Listen. Each pair of nodes is new for each run. Every
// delivered message is checked (counts, order, indexes, stamps in each
// entry's data, and all the data of every 64th message), no message may
// leave the streams (pipeline POSTs are counted by a middleware; in 8, every
// message must be its own POST) and no stream may reconnect during a
// measurement (stream handlers counted by the middleware; for ours, its
// PeerStats, which also say when a pair's streams are up); a run that fails a check stops the command with an error
// instead of a number.
//
// Usage:
//
//	go run . [-runs 5] [-quick] [-only ours|etcd] [-scenarios small,large,heartbeat,snapshot,raw,open,pipeline]
//	         [-cpuprofile f] [-memprofile f] ...
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"time"
)

// config is what a run of the command does.
type config struct {
	runs      int
	window    int
	small     appSpec
	large     appSpec
	smallTime time.Duration // per run of scenario 1
	largeTime time.Duration // per run of scenario 2
	hbTime    time.Duration // per run of scenario 3, idle and loaded each
	rawTime   time.Duration // per run of scenario 6, per shape
	openTime  time.Duration // per run of scenario 7
	pipeTime  time.Duration // per run of scenario 8
	warmup    time.Duration // before each measurement
	snapSize  int64
	kinds     []kind
	scenarios []string
	dir       string // parent of the temporary directories
	progress  io.Writer
}

var allScenarios = []string{"small", "large", "heartbeat", "snapshot", "raw", "open", "pipeline"}

func defaultConfig() config {
	return config{
		runs:      5,
		window:    512,
		small:     appSpec{entries: 1, size: 128},
		large:     appSpec{entries: 64, size: 1024},
		smallTime: 4 * time.Second,
		largeTime: 4 * time.Second,
		hbTime:    3 * time.Second,
		rawTime:   2 * time.Second,
		openTime:  3 * time.Second,
		pipeTime:  3 * time.Second,
		warmup:    300 * time.Millisecond,
		snapSize:  512 << 20,
		kinds:     []kind{ours, etcd},
		scenarios: allScenarios,
	}
}

// quickConfig runs every scenario once at tiny sizes: a smoke test.
func quickConfig() config {
	c := defaultConfig()
	c.runs = 1
	c.smallTime, c.largeTime, c.hbTime, c.rawTime = 150*time.Millisecond, 150*time.Millisecond, 150*time.Millisecond, 100*time.Millisecond
	c.openTime, c.pipeTime = 150*time.Millisecond, 150*time.Millisecond
	c.warmup = 30 * time.Millisecond
	c.snapSize = 2<<20 + 7
	return c
}

func main() {
	if err := mainErr(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func mainErr() error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, "smoke mode: one run of every scenario at tiny sizes (other flags still apply)")
	runs := fs.Int("runs", 0, "runs of each scenario per transport (default 5)")
	window := fs.Int("window", 0, "MsgApps in flight at most (default 512)")
	smallTime := fs.Duration("small-time", 0, "duration of each small MsgApp run (default 4s)")
	largeTime := fs.Duration("large-time", 0, "duration of each large MsgApp run (default 4s)")
	hbTime := fs.Duration("hb-time", 0, "duration of each heartbeat run, idle and loaded each (default 3s)")
	rawTime := fs.Duration("raw-time", 0, "duration of each raw TCP run, per shape (default 2s)")
	openTime := fs.Duration("open-time", 0, "duration of each open-loop run (default 3s)")
	pipeTime := fs.Duration("pipeline-time", 0, "duration of each pipeline-only run (default 3s)")
	warmup := fs.Duration("warmup", 0, "warm-up before each measurement (default 300ms)")
	snapMiB := fs.Float64("snapshot-mib", 0, "snapshot payload in MiB (default 512)")
	only := fs.String("only", "", "run only these transports: ours, etcd, or both comma-separated")
	scen := fs.String("scenarios", "", "comma-separated subset of "+strings.Join(allScenarios, ","))
	dir := fs.String("dir", "", "parent of the temporary snapshot directories (default the system temp dir)")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	memProfile := fs.String("memprofile", "", "write an allocation profile (pprof allocs) at the end to this file")
	traceFile := fs.String("trace", "", "write an execution trace of the whole run to this file (go tool trace)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	cfg := defaultConfig()
	if *quick {
		cfg = quickConfig()
	}
	setInt := func(dst *int, v int) {
		if v > 0 {
			*dst = v
		}
	}
	setDur := func(dst *time.Duration, v time.Duration) {
		if v > 0 {
			*dst = v
		}
	}
	setInt(&cfg.runs, *runs)
	setInt(&cfg.window, *window)
	setDur(&cfg.smallTime, *smallTime)
	setDur(&cfg.largeTime, *largeTime)
	setDur(&cfg.hbTime, *hbTime)
	setDur(&cfg.rawTime, *rawTime)
	setDur(&cfg.openTime, *openTime)
	setDur(&cfg.pipeTime, *pipeTime)
	setDur(&cfg.warmup, *warmup)
	if *snapMiB > 0 {
		cfg.snapSize = int64(*snapMiB * (1 << 20))
	}
	if *only != "" {
		cfg.kinds = nil
		for _, k := range strings.Split(*only, ",") {
			if k != string(ours) && k != string(etcd) {
				return fmt.Errorf("-only: unknown transport %q", k)
			}
			cfg.kinds = append(cfg.kinds, kind(k))
		}
	}
	if *scen != "" {
		cfg.scenarios = nil
		for _, s := range strings.Split(*scen, ",") {
			if !slices.Contains(allScenarios, s) {
				return fmt.Errorf("-scenarios: unknown scenario %q", s)
			}
			cfg.scenarios = append(cfg.scenarios, s)
		}
	}
	cfg.dir = *dir
	cfg.progress = os.Stderr

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *traceFile != "" {
		f, err := os.Create(*traceFile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		defer trace.Stop()
	}
	err := run(&cfg, os.Stdout)
	if *memProfile != "" {
		f, ferr := os.Create(*memProfile)
		if ferr != nil {
			return errors.Join(err, ferr)
		}
		defer f.Close()
		runtime.GC()
		err = errors.Join(err, pprof.Lookup("allocs").WriteTo(f, 0))
	}
	return err
}

// results holds every run's figures: metric → column → values.
type results map[string]map[string][]float64

func (r results) add(metric, column string, v float64) {
	if r[metric] == nil {
		r[metric] = map[string][]float64{}
	}
	r[metric][column] = append(r[metric][column], v)
}

const mb = 1e6 // MB/s are 10^6 bytes per second

// run runs the configured scenarios and writes the report to out; progress
// lines go to cfg.progress.
func run(cfg *config, out io.Writer) error {
	if cfg.window <= 0 || cfg.runs <= 0 || cfg.small.size < 16 || cfg.large.size < 16 {
		return errors.New("runs and window must be positive, entries at least 16 bytes")
	}
	progress := cfg.progress
	if progress == nil {
		progress = io.Discard
	}
	begin := time.Now()
	// Each progress line ends with the cores other processes used since
	// the previous line: a figure measured while the machine was shared.
	last := probeLoad()
	start := last
	logf := func(format string, args ...any) {
		others := othersSince(last)
		last = probeLoad()
		fmt.Fprintf(progress, "[%6.1fs] %s  [others: %.2f cores]\n", time.Since(begin).Seconds(), fmt.Sprintf(format, args...), others)
	}
	res := results{}
	has := func(s string) bool { return slices.Contains(cfg.scenarios, s) }

	for _, sc := range []struct {
		name string
		spec appSpec
		d    time.Duration
	}{{"small", cfg.small, cfg.smallTime}, {"large", cfg.large, cfg.largeTime}} {
		if !has(sc.name) {
			continue
		}
		for i := range cfg.runs {
			for _, k := range cfg.kinds {
				m, err := runThroughput(k, cfg, sc.spec, sc.d)
				if err != nil {
					return fmt.Errorf("%s MsgApp %s, %s, run %d: %w", sc.name, sc.spec, k, i+1, err)
				}
				mbps := m.perSecond() * float64(sc.spec.payloadBytes()) / mb
				res.add(sc.name+".rate", string(k), m.perSecond())
				res.add(sc.name+".mbps", string(k), mbps)
				res.add(sc.name+".allocs", string(k), m.allocsPerMsg())
				res.add(sc.name+".cpu", string(k), float64(m.cpuPerMsg())/1e3)
				logf("%-5s MsgApp %-8s run %d/%d %s: %9.0f msg/s %8.1f MB/s  %6.1f allocs/msg  %6.2f µs CPU/msg  (%d msgs in %v)",
					sc.name, sc.spec, i+1, cfg.runs, k, m.perSecond(), mbps, m.allocsPerMsg(), float64(m.cpuPerMsg())/1e3, m.msgs, m.elapsed.Round(time.Millisecond))
			}
		}
	}
	if has("heartbeat") {
		for _, loaded := range []bool{false, true} {
			name := map[bool]string{false: "idle", true: "load"}[loaded]
			for i := range cfg.runs {
				for _, k := range cfg.kinds {
					r, err := runHeartbeat(k, cfg, loaded, cfg.hbTime)
					if err != nil {
						return fmt.Errorf("heartbeat %s, %s, run %d: %w", name, k, i+1, err)
					}
					res.add("hb."+name+".p50", string(k), float64(r.p50)/1e3)
					res.add("hb."+name+".p99", string(k), float64(r.p99)/1e3)
					line := fmt.Sprintf("heartbeat %-4s run %d/%d %s: p50 %8.1f µs  p99 %8.1f µs  (%d round trips)",
						name, i+1, cfg.runs, k, float64(r.p50)/1e3, float64(r.p99)/1e3, r.pings)
					if loaded {
						mbps := r.load.perSecond() * float64(cfg.large.payloadBytes()) / mb
						res.add("hb.load.mbps", string(k), mbps)
						line += fmt.Sprintf("  while MsgApp %s at %.1f MB/s (%d msgs in %v)", cfg.large, mbps, r.load.msgs, r.load.elapsed.Round(time.Millisecond))
					}
					logf("%s", line)
				}
				if !loaded && has("raw") {
					r, err := runPingPong(cfg.hbTime)
					if err != nil {
						return fmt.Errorf("raw TCP ping-pong, run %d: %w", i+1, err)
					}
					res.add("hb.idle.p50", "raw", float64(r.p50)/1e3)
					res.add("hb.idle.p99", "raw", float64(r.p99)/1e3)
					logf("raw TCP ping-pong %d B run %d/%d: p50 %8.1f µs  p99 %8.1f µs  (%d round trips)",
						pingFrame, i+1, cfg.runs, float64(r.p50)/1e3, float64(r.p99)/1e3, r.pings)
				}
			}
		}
	}
	if has("snapshot") {
		crc, err := payloadCRC(cfg.snapSize)
		if err != nil {
			return err
		}
		for i := range cfg.runs {
			for j, k := range cfg.kinds {
				r, err := runSnapshot(k, cfg, uint64(100+i*len(cfg.kinds)+j), crc)
				if err != nil {
					return fmt.Errorf("snapshot, %s, run %d: %w", k, i+1, err)
				}
				mbps := float64(cfg.snapSize) / r.elapsed.Seconds() / mb
				res.add("snap.mbps", string(k), mbps)
				rss := "n/a"
				if r.rssGrow >= 0 {
					res.add("snap.rss", string(k), float64(r.rssGrow)/(1<<20))
					rss = fmt.Sprintf("%.1f MiB", float64(r.rssGrow)/(1<<20))
				}
				logf("snapshot %.0f MiB run %d/%d %s: %8.1f MB/s in %v, peak RSS growth %s",
					float64(cfg.snapSize)/(1<<20), i+1, cfg.runs, k, mbps, r.elapsed.Round(time.Millisecond), rss)
			}
			if has("raw") {
				d, err := runFileWrite(cfg)
				if err != nil {
					return fmt.Errorf("file write, run %d: %w", i+1, err)
				}
				mbps := float64(cfg.snapSize) / d.Seconds() / mb
				res.add("snap.mbps", "raw", mbps)
				logf("file write + fsync %.0f MiB run %d/%d: %8.1f MB/s in %v",
					float64(cfg.snapSize)/(1<<20), i+1, cfg.runs, mbps, d.Round(time.Millisecond))
			}
		}
	}
	if has("raw") {
		for i := range cfg.runs {
			for _, sc := range []struct {
				name string
				spec appSpec
			}{{"small", cfg.small}, {"large", cfg.large}} {
				m, err := runRaw(sc.spec, cfg.rawTime)
				if err != nil {
					return fmt.Errorf("raw TCP %s, run %d: %w", sc.spec, i+1, err)
				}
				mbps := m.perSecond() * float64(sc.spec.payloadBytes()) / mb
				res.add(sc.name+".rate", "raw", m.perSecond())
				res.add(sc.name+".mbps", "raw", mbps)
				logf("raw TCP %-8s run %d/%d: %10.0f msg/s %8.1f MB/s", sc.spec, i+1, cfg.runs, m.perSecond(), mbps)
			}
		}
	}
	if has("open") {
		for i := range cfg.runs {
			for _, k := range cfg.kinds {
				r, err := runOpenLoop(k, cfg, cfg.small, cfg.openTime)
				if err != nil {
					return fmt.Errorf("open loop, %s, run %d: %w", k, i+1, err)
				}
				res.add("open.rate", string(k), r.perSecond())
				res.add("open.unreported", string(k), r.unreported())
				logf("open loop %-8s run %d/%d %s: %9.0f msg/s delivered; sent %d, delivered %d, reported %d, lost unreported %d (%.2f%%)",
					cfg.small, i+1, cfg.runs, k, r.perSecond(), r.sent, r.delivered, r.reported, r.sent-r.delivered-r.reported, r.unreported())
			}
		}
	}
	if has("pipeline") {
		for i := range cfg.runs {
			for _, k := range cfg.kinds {
				m, err := runPipelineOnly(k, cfg, cfg.small, cfg.pipeTime)
				if err != nil {
					return fmt.Errorf("pipeline only, %s, run %d: %w", k, i+1, err)
				}
				res.add("pipe.rate", string(k), m.perSecond())
				res.add("pipe.allocs", string(k), m.allocsPerMsg())
				res.add("pipe.cpu", string(k), float64(m.cpuPerMsg())/1e3)
				logf("pipeline only %-8s run %d/%d %s: %9.0f msg/s  %6.1f allocs/msg  %6.2f µs CPU/msg  (%d msgs in %v, one POST each)",
					cfg.small, i+1, cfg.runs, k, m.perSecond(), m.allocsPerMsg(), float64(m.cpuPerMsg())/1e3, m.msgs, m.elapsed.Round(time.Millisecond))
			}
		}
	}
	writeReport(out, cfg, res, time.Since(begin), othersSince(start))
	return nil
}
