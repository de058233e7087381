package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
)

// row is one line of the report's table.
type row struct {
	label  string
	metric string
	format string // of one value
	better string // "higher" or "lower"
}

func rows(cfg *config) []row {
	w := cfg.window
	return []row{
		{fmt.Sprintf("1. small MsgApp %s, window %d, fresh messages: msg/s", cfg.small, w), "small.rate", "%.0f", "higher"},
		{fmt.Sprintf("1r. small MsgApp %s, prebuilt ring: msg/s", cfg.small), "ring.small.rate", "%.0f", "higher"},
		{fmt.Sprintf("2. large MsgApp %s, window %d, fresh messages: MB/s", cfg.large, w), "large.mbps", "%.1f", "higher"},
		{"2. large MsgApp, fresh messages: msg/s", "large.rate", "%.0f", "higher"},
		{"2. large MsgApp, fresh messages: cores busy", "large.cores", "%.2f", "higher"},
		{fmt.Sprintf("2r. large MsgApp %s, prebuilt ring: MB/s", cfg.large), "ring.large.mbps", "%.1f", "higher"},
		{"3. heartbeat RTT idle p50 (µs)", "hb.idle.p50", "%.1f", "lower"},
		{"3. heartbeat RTT idle p99 (µs)", "hb.idle.p99", "%.1f", "lower"},
		{"3. heartbeat RTT under large MsgApp load p50 (µs)", "hb.load.p50", "%.1f", "lower"},
		{"3. heartbeat RTT under large MsgApp load p99 (µs)", "hb.load.p99", "%.1f", "lower"},
		{"3. large MsgApp MB/s during the loaded heartbeat runs", "hb.load.mbps", "%.1f", "higher"},
		{fmt.Sprintf("4. snapshot %s: MB/s", mibString(cfg.snapSize)), "snap.mbps", "%.1f", "higher"},
		{"4. snapshot: peak RSS growth (MiB)", "snap.rss", "%.1f", "lower"},
		{fmt.Sprintf("5. allocs per message, %s fresh (sender's included)", cfg.small), "small.allocs", "%.1f", "lower"},
		{fmt.Sprintf("5. bytes allocated per message, %s fresh", cfg.small), "small.bytes", "%.0f", "lower"},
		{fmt.Sprintf("5. GC cycles per million messages, %s fresh", cfg.small), "small.gcs", "%.0f", "lower"},
		{fmt.Sprintf("5. CPU per message, %s fresh (µs)", cfg.small), "small.cpu", "%.2f", "lower"},
		{fmt.Sprintf("5. allocs per message, %s fresh", cfg.large), "large.allocs", "%.1f", "lower"},
		{fmt.Sprintf("5. CPU per message, %s fresh (µs)", cfg.large), "large.cpu", "%.2f", "lower"},
		{fmt.Sprintf("5r. allocs per message, %s ring", cfg.small), "ring.small.allocs", "%.1f", "lower"},
		{fmt.Sprintf("5r. CPU per message, %s ring (µs)", cfg.small), "ring.small.cpu", "%.2f", "lower"},
		{fmt.Sprintf("5r. allocs per message, %s ring", cfg.large), "ring.large.allocs", "%.1f", "lower"},
		{fmt.Sprintf("5r. CPU per message, %s ring (µs)", cfg.large), "ring.large.cpu", "%.2f", "lower"},
		{fmt.Sprintf("7. open loop %s, no window: delivered msg/s", cfg.small), "open.rate", "%.0f", "higher"},
		{"7. open loop: sent messages neither delivered nor reported (%)", "open.unreported", "%.2f", "lower"},
		{fmt.Sprintf("8. pipeline only (streams refused) %s, window %d: msg/s", cfg.small, pipelineWindow), "pipe.rate", "%.0f", "higher"},
		{"8. pipeline only: allocs per message", "pipe.allocs", "%.1f", "lower"},
		{"8. pipeline only: CPU per message (µs)", "pipe.cpu", "%.2f", "lower"},
		{"8. pipeline only: messages per POST", "pipe.perpost", "%.2f", "higher"},
		{fmt.Sprintf("9. raft cluster (%s): commits/s", cfg.raft), "raft.rate", "%.0f", "higher"},
		{"9. raft cluster: commit latency p50 (µs)", "raft.p50", "%.0f", "lower"},
		{"9. raft cluster: commit latency p99 (µs)", "raft.p99", "%.0f", "lower"},
		{"9. raft cluster: commit latency p99.9 (µs)", "raft.p999", "%.0f", "lower"},
		{"9. raft cluster: CPU cores used", "raft.cores", "%.2f", "lower"},
		{"9. raft cluster: CPU per commit (µs)", "raft.cpu", "%.1f", "lower"},
		{"9. raft cluster: allocs per commit", "raft.allocs", "%.1f", "lower"},
		{"9. raft cluster: bytes allocated per commit", "raft.bytes", "%.0f", "lower"},
		{"9. raft cluster: GC cycles per 1,000 commits", "raft.gcs", "%.2f", "lower"},
		{"9. raft cluster: transport messages per commit", "raft.msgs", "%.1f", "lower"},
		{fmt.Sprintf("10. many peers (%d members, %d links): heartbeat RTT p50 (µs)", cfg.peers, cfg.peers*(cfg.peers-1)), "peers.p50", "%.0f", "lower"},
		{"10. many peers: heartbeat RTT p99 (µs)", "peers.p99", "%.0f", "lower"},
		{"10. many peers: CPU per link (µs/s)", "peers.cpu", "%.1f", "lower"},
		{"10. many peers: goroutines per link", "peers.goroutines", "%.1f", "lower"},
		{"10. many peers: RSS per link (KB)", "peers.rss", "%.1f", "lower"},
		{"10. many peers: live heap per link (KB)", "peers.heap", "%.1f", "lower"},
	}
}

func mibString(n int64) string {
	if n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
}

func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// writeReport prints the machine, the configuration and the table of
// medians as Markdown.
func writeReport(w io.Writer, cfg *config, res results, took time.Duration, others float64) {
	fmt.Fprintln(w, "## Machine")
	fmt.Fprintln(w)
	for _, l := range machine() {
		fmt.Fprintf(w, "- %s\n", l)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Configuration")
	fmt.Fprintln(w)
	kinds := make([]string, len(cfg.kinds))
	for i, k := range cfg.kinds {
		kinds[i] = string(k)
	}
	fmt.Fprintf(w, "- runs per transport: %d, interleaved (%s); scenarios: %s\n", cfg.runs, strings.Join(kinds, ", "), strings.Join(cfg.scenarios, ", "))
	fmt.Fprintf(w, "- window %d MsgApps; small %s for %v, large %s for %v per run; heartbeats %v idle and %v loaded per run; raw TCP %v per shape per run; warm-up %v\n",
		cfg.window, cfg.small, cfg.smallTime, cfg.large, cfg.largeTime, cfg.hbTime, cfg.hbTime, cfg.rawTime, cfg.warmup)
	fmt.Fprintf(w, "- open loop %v per run; pipeline only (streams refused) %s with window %d for %v per run\n",
		cfg.openTime, cfg.small, pipelineWindow, cfg.pipeTime)
	fmt.Fprintf(w, "- raft cluster: %s, %v per run after %v of warm-up; many peers: %d members, %v per run after %v\n",
		cfg.raft, cfg.raftTime, cfg.raftWarm, cfg.peers, cfg.peersTime, cfg.peersWarm)
	fmt.Fprintf(w, "- snapshot payload %s (%d bytes)\n", mibString(cfg.snapSize), cfg.snapSize)
	fmt.Fprintf(w, "- total time %v; other processes kept %.2f cores busy on average meanwhile\n", took.Round(100*time.Millisecond), others)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Results (medians)")
	fmt.Fprintln(w)
	table := [][]string{{"scenario", "ours (median)", "etcd (median)", "ours/etcd", "raw", "better"}}
	for _, r := range rows(cfg) {
		col := func(c string) (float64, string) {
			v := res[r.metric][c]
			if len(v) == 0 {
				return 0, "—"
			}
			m := median(v)
			return m, group(fmt.Sprintf(r.format, m))
		}
		o, os := col(string(ours))
		e, es := col(string(etcd))
		_, rs := col("raw")
		if os == "—" && es == "—" && rs == "—" {
			continue
		}
		ratio := "—"
		if os != "—" && es != "—" && e != 0 {
			ratio = fmt.Sprintf("%.2f", o/e)
		}
		table = append(table, []string{r.label, os, es, ratio, rs, r.better})
	}
	writeTable(w, table)
	if cfg.runs < 2 {
		return
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Spread across runs (min – max)")
	fmt.Fprintln(w)
	spread := [][]string{{"scenario", "ours", "etcd", "raw"}}
	for _, r := range rows(cfg) {
		cells := []string{r.label}
		for _, c := range []string{string(ours), string(etcd), "raw"} {
			v := res[r.metric][c]
			if len(v) == 0 {
				cells = append(cells, "—")
				continue
			}
			cells = append(cells, group(fmt.Sprintf(r.format, slices.Min(v)))+" – "+group(fmt.Sprintf(r.format, slices.Max(v))))
		}
		if cells[1] != "—" || cells[2] != "—" || cells[3] != "—" {
			spread = append(spread, cells)
		}
	}
	writeTable(w, spread)
}

// group puts thousands separators in the integer part of a number.
func group(s string) string {
	intPart, frac, _ := strings.Cut(s, ".")
	neg := strings.HasPrefix(intPart, "-")
	intPart = strings.TrimPrefix(intPart, "-")
	var b strings.Builder
	for i, c := range intPart {
		if i > 0 && (len(intPart)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	out := b.String()
	if neg {
		out = "-" + out
	}
	if frac != "" {
		out += "." + frac
	}
	return out
}

// writeTable prints a Markdown table with aligned columns; the first row
// is the header, numbers are right-aligned.
func writeTable(w io.Writer, t [][]string) {
	widths := make([]int, len(t[0]))
	for _, r := range t {
		for i, c := range r {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	line := func(r []string) {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-len([]rune(c)))
			if i == 0 || (i == len(r)-1 && t[0][i] == "better") {
				b.WriteString(" " + c + pad + " |")
			} else {
				b.WriteString(" " + pad + c + " |")
			}
		}
		fmt.Fprintln(w, b.String())
	}
	line(t[0])
	var b strings.Builder
	b.WriteString("|")
	for i, n := range widths {
		if i == 0 || (i == len(widths)-1 && t[0][i] == "better") {
			b.WriteString(strings.Repeat("-", n+2) + "|")
		} else {
			b.WriteString(strings.Repeat("-", n+1) + ":|")
		}
	}
	fmt.Fprintln(w, b.String())
	for _, r := range t[1:] {
		line(r)
	}
}

// machine describes where the command runs.
func machine() []string {
	out := []string{
		fmt.Sprintf("go: %s %s/%s, GOMAXPROCS %d", runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.GOMAXPROCS(0)),
		fmt.Sprintf("CPU: %s, nproc %d", cpuModel(), runtime.NumCPU()),
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		out = append(out, "kernel: Linux "+strings.TrimSpace(string(b)))
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var deps []string
		for _, d := range bi.Deps {
			switch d.Path {
			case "go.etcd.io/etcd/server/v3", "go.etcd.io/raft/v3", "google.golang.org/protobuf":
				deps = append(deps, d.Path+" "+d.Version)
			case "github.com/raftkit/rafthttp":
				v := "this tree"
				if d.Replace != nil {
					v = "replaced by " + d.Replace.Path
				}
				deps = append(deps, d.Path+" ("+v+")")
			}
		}
		if len(deps) > 0 {
			out = append(out, "modules: "+strings.Join(deps, ", "))
		}
	}
	out = append(out, "date: "+time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	return out
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// loadProbe is a reading of how busy the machine is: the CPU time all
// processes have used (from /proc/stat) and this process has used.
type loadProbe struct {
	at         time.Time
	busy, self time.Duration
	ok         bool
}

func probeLoad() loadProbe {
	p := loadProbe{at: time.Now(), self: cpuTime()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return p
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return p
	}
	var total, idle int64
	for i, s := range f[1:] {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return p
		}
		total += v
		if i == 3 || i == 4 { // idle, iowait
			idle += v
		}
	}
	const userHZ = 100 // clock ticks per second of /proc/stat
	p.busy = time.Duration(total-idle) * time.Second / userHZ
	p.ok = true
	return p
}

// othersSince is the number of cores other processes kept busy, on
// average, since p0: a measurement taken while it is well above 0 shared
// the machine.
func othersSince(p0 loadProbe) float64 {
	p1 := probeLoad()
	if !p0.ok || !p1.ok {
		return -1
	}
	wall := p1.at.Sub(p0.at).Seconds()
	if wall <= 0 {
		return -1
	}
	return max(((p1.busy-p0.busy)-(p1.self-p0.self)).Seconds()/wall, 0)
}
