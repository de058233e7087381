// Command bench runs github.com/raftkit/rafthttp ("ours") and etcd 3.7's own
// raft transport (go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp v3.7.3)
// side by side, in one process, on the same scenarios, interleaved (ours,
// etcd, ours, etcd, ...), and prints the medians with the ratio ours/etcd,
// next to raw TCP on loopback as the physical reference:
//
//  1. small MsgApp (1 entry of 128 B): messages/s with at most -window in
//     flight, over the msgappv2 stream (consecutive indexes in one term;
//     the receiver's Raft.Process checks and counts each message and frees
//     its window slot); each message, its entries and their data built
//     anew for its Send, as raft's Ready hands them over;
//  2. large MsgApp (64 entries of 1 KiB): MB/s of entry data, same window;
//     1r and 2r (-scenarios ring): the same from a ring of prebuilt
//     messages restamped in place, which allocates nothing on the sending
//     side;
//  3. heartbeat round trip p50/p99: a sends MsgHeartbeat, b's Process
//     answers at once with MsgHeartbeatResp; idle, and while large MsgApps
//     stream a→b at full speed;
//  4. a snapshot (default 512 MiB, generated, never in memory): MB/s and
//     the peak RSS growth of the process (VmHWM after resetting it through
//     /proc/self/clear_refs), ours with SendSnapshot and DirSnapshotStore,
//     etcd with snap.Message and its Snapshotter, into a temporary
//     directory;
//  5. heap allocations (runtime.MemStats.Mallocs), bytes allocated, GC
//     cycles and CPU time of the whole process per delivered message, for
//     the two MsgApp shapes;
//  6. raw TCP: the same msgappv2 AppEntries records written over a plain
//     loopback connection to a reader that only parses their lengths;
//  7. open loop: small MsgApps sent as fast as Send returns, no window:
//     messages/s delivered, and the share lost without a report to raft;
//  8. pipeline only: the small MsgApps of 1 (a new message per send) with
//     both servers refusing every stream, so that both transports fall back
//     to their pipelines (etcd: one POST per message; ours: batches of what
//     is queued, to a peer that announced pipeline-batch): messages/s
//     delivered with at most 64 in flight, allocations and CPU per message,
//     messages per POST;
//  9. a raft cluster: 3 go.etcd.io/raft members with etcd's settings, each
//     with a MemoryStorage and a Ready loop, 64 closed-loop clients
//     proposing 128 B to the leader and waiting for it to apply their
//     proposal: commits/s, commit latency p50/p99/p99.9, CPU, allocations
//     and GC cycles per commit;
//  10. many peers: 25 members (600 links), each sending a heartbeat to
//     every other every 100 ms, answered at once: round trip p50/p99, CPU,
//     goroutines, RSS and live heap per link.
//
// Every node is a transport behind a real http.Server on 127.0.0.1: etcd's
// on its peer listener (rafthttp.NewListener), as an etcd member serves it;
// ours on a plain net.Listen. Each pair of nodes is new for each run. Every
// delivered message is checked (counts, order, indexes, stamps in each
// entry's data, and all the data of every 64th message), no message may
// leave the streams (pipeline POSTs are counted by a middleware; in 8, every
// message must be on the wire once: its own POST, or a frame of one of our
// batches, counted apart) and no stream may reconnect during a
// measurement (stream handlers counted by the middleware; for ours, its
// PeerStats, which also say when a pair's streams are up); a run that fails a check stops the command with an error
// instead of a number.
//
// Usage:
//
//	go run . [-runs 3] [-quick] [-only ours|etcd] [-scenarios small,large,ring,heartbeat,snapshot,raw,open,pipeline,raft,peers]
//	         [-cpuprofile f] [-memprofile f] [-trace f] ...
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
	raft      raftSetup     // scenario 9
	raftTime  time.Duration // per run of scenario 9
	raftWarm  time.Duration // before each measurement of scenario 9
	peers     int           // members of scenario 10
	peersTime time.Duration // per run of scenario 10
	peersWarm time.Duration // before each measurement of scenario 10
	// peersHeapProfile, if set, is where scenario 10 writes a heap
	// profile during each run (suffixed with the transport's name).
	peersHeapProfile string
	snapSize         int64
	kinds            []kind
	scenarios        []string
	dir              string // parent of the temporary directories
	progress         io.Writer
}

var allScenarios = []string{"small", "large", "ring", "heartbeat", "snapshot", "raw", "open", "pipeline", "raft", "peers"}

func defaultConfig() config {
	return config{
		runs:      3,
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
		raft:      raftSetup{members: 3, clients: 64, size: 128},
		raftTime:  5 * time.Second,
		raftWarm:  time.Second,
		peers:     25,
		peersTime: 5 * time.Second,
		peersWarm: time.Second,
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
	c.raft.clients = 8
	c.raftTime, c.raftWarm = 300*time.Millisecond, 100*time.Millisecond
	c.peers = 4
	c.peersTime, c.peersWarm = 300*time.Millisecond, 200*time.Millisecond
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
	runs := fs.Int("runs", 0, "runs of each scenario per transport (default 3)")
	window := fs.Int("window", 0, "MsgApps in flight at most (default 512)")
	smallTime := fs.Duration("small-time", 0, "duration of each small MsgApp run (default 4s)")
	largeTime := fs.Duration("large-time", 0, "duration of each large MsgApp run (default 4s)")
	hbTime := fs.Duration("hb-time", 0, "duration of each heartbeat run, idle and loaded each (default 3s)")
	rawTime := fs.Duration("raw-time", 0, "duration of each raw TCP run, per shape (default 2s)")
	openTime := fs.Duration("open-time", 0, "duration of each open-loop run (default 3s)")
	pipeTime := fs.Duration("pipeline-time", 0, "duration of each pipeline-only run (default 3s)")
	warmup := fs.Duration("warmup", 0, "warm-up before each measurement of scenarios 1-8 (default 300ms)")
	raftTime := fs.Duration("raft-time", 0, "duration of each raft-cluster run (default 5s)")
	raftClients := fs.Int("raft-clients", 0, "closed-loop clients of the raft cluster (default 64)")
	peersTime := fs.Duration("peers-time", 0, "duration of each many-peers run (default 5s)")
	peers := fs.Int("peers", 0, "members of the many-peers scenario (default 25)")
	peersHeap := fs.String("peers-heapprofile", "", "write a heap profile during each many-peers run to this file, suffixed .ours or .etcd")
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
	setDur(&cfg.raftTime, *raftTime)
	setInt(&cfg.raft.clients, *raftClients)
	setDur(&cfg.peersTime, *peersTime)
	setInt(&cfg.peers, *peers)
	cfg.peersHeapProfile = *peersHeap
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
		name, scenario string
		spec           appSpec
		d              time.Duration
		fresh          bool
	}{
		{"small", "small", cfg.small, cfg.smallTime, true},
		{"large", "large", cfg.large, cfg.largeTime, true},
		{"ring.small", "ring", cfg.small, cfg.smallTime, false},
		{"ring.large", "ring", cfg.large, cfg.largeTime, false},
	} {
		if !has(sc.scenario) {
			continue
		}
		variant := map[bool]string{true: "fresh", false: "ring"}[sc.fresh]
		for i := range cfg.runs {
			for _, k := range cfg.kinds {
				m, err := runThroughput(k, cfg, sc.spec, sc.d, sc.fresh)
				if err != nil {
					return fmt.Errorf("MsgApp %s (%s), %s, run %d: %w", sc.spec, variant, k, i+1, err)
				}
				mbps := m.perSecond() * float64(sc.spec.payloadBytes()) / mb
				res.add(sc.name+".rate", string(k), m.perSecond())
				res.add(sc.name+".mbps", string(k), mbps)
				res.add(sc.name+".allocs", string(k), m.allocsPerMsg())
				res.add(sc.name+".bytes", string(k), m.bytesPerMsg())
				res.add(sc.name+".gcs", string(k), m.gcsPerMillion())
				res.add(sc.name+".cpu", string(k), float64(m.cpuPerMsg())/1e3)
				res.add(sc.name+".cores", string(k), m.cpu.Seconds()/m.elapsed.Seconds())
				logf("MsgApp %-8s %-5s run %d/%d %s: %9.0f msg/s %8.1f MB/s  %6.1f allocs/msg  %7.0f B/msg  %5.0f GCs/M msgs  %6.2f µs CPU/msg  %.2f cores  (%d msgs in %v)",
					sc.spec, variant, i+1, cfg.runs, k, m.perSecond(), mbps, m.allocsPerMsg(), m.bytesPerMsg(), m.gcsPerMillion(),
					float64(m.cpuPerMsg())/1e3, m.cpu.Seconds()/m.elapsed.Seconds(), m.msgs, m.elapsed.Round(time.Millisecond))
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
				res.add("pipe.perpost", string(k), float64(m.msgs)/float64(m.posts))
				logf("pipeline only %-8s run %d/%d %s: %9.0f msg/s  %6.1f allocs/msg  %6.2f µs CPU/msg  (%d msgs in %v, %d POSTs: %.2f msgs/POST)",
					cfg.small, i+1, cfg.runs, k, m.perSecond(), m.allocsPerMsg(), float64(m.cpuPerMsg())/1e3, m.msgs, m.elapsed.Round(time.Millisecond),
					m.posts, float64(m.msgs)/float64(m.posts))
			}
		}
	}
	if has("raft") {
		for i := range cfg.runs {
			for _, k := range cfg.kinds {
				r, err := runRaftCluster(k, cfg, cfg.raft, cfg.raftWarm, cfg.raftTime)
				if err != nil {
					return fmt.Errorf("raft cluster, %s, run %d: %w", k, i+1, err)
				}
				cores := r.cpu.Seconds() / r.elapsed.Seconds()
				res.add("raft.rate", string(k), r.perSecond())
				res.add("raft.p50", string(k), float64(r.p50)/1e3)
				res.add("raft.p99", string(k), float64(r.p99)/1e3)
				res.add("raft.p999", string(k), float64(r.p999)/1e3)
				res.add("raft.cores", string(k), cores)
				res.add("raft.cpu", string(k), float64(r.cpuPerMsg())/1e3)
				res.add("raft.allocs", string(k), r.allocsPerMsg())
				res.add("raft.bytes", string(k), r.bytesPerMsg())
				res.add("raft.gcs", string(k), r.gcsPerMillion()/1e3)
				res.add("raft.msgs", string(k), float64(r.transportMsgs)/float64(r.msgs))
				logf("raft cluster %s run %d/%d %s: %7.0f commits/s  latency p50 %6.0f p99 %6.0f p99.9 %6.0f µs  %.2f cores  %5.1f µs CPU/commit  %5.1f allocs  %5.0f B  %.2f GCs per 1k commits  %.1f msgs/commit  (%d commits in %v)",
					cfg.raft, i+1, cfg.runs, k, r.perSecond(), float64(r.p50)/1e3, float64(r.p99)/1e3, float64(r.p999)/1e3,
					cores, float64(r.cpuPerMsg())/1e3, r.allocsPerMsg(), r.bytesPerMsg(), r.gcsPerMillion()/1e3,
					float64(r.transportMsgs)/float64(r.msgs), r.msgs, r.elapsed.Round(time.Millisecond))
			}
		}
	}
	if has("peers") {
		for i := range cfg.runs {
			for _, k := range cfg.kinds {
				r, err := runManyPeers(k, cfg, cfg.peers, cfg.peersWarm, cfg.peersTime)
				if err != nil {
					return fmt.Errorf("many peers, %s, run %d: %w", k, i+1, err)
				}
				res.add("peers.p50", string(k), float64(r.p50)/1e3)
				res.add("peers.p99", string(k), float64(r.p99)/1e3)
				res.add("peers.cpu", string(k), r.cpuPerLink)
				res.add("peers.goroutines", string(k), r.goroutinesPerLink)
				res.add("peers.rss", string(k), r.rssPerLink/1e3)
				res.add("peers.heap", string(k), r.heapPerLink/1e3)
				logf("many peers %d members (%d links) run %d/%d %s: heartbeat RTT p50 %7.0f p99 %7.0f µs  CPU %5.0f µs/s per link  %.1f goroutines, RSS %.0f KB, heap %.0f KB per link  (%d round trips)",
					cfg.peers, r.links, i+1, cfg.runs, k, float64(r.p50)/1e3, float64(r.p99)/1e3, r.cpuPerLink,
					r.goroutinesPerLink, r.rssPerLink/1e3, r.heapPerLink/1e3, r.rtts)
			}
		}
	}
	writeReport(out, cfg, res, time.Since(begin), othersSince(start))
	return nil
}
