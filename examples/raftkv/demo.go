package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// demoConfig configures the demo tour.
type demoConfig struct {
	// Keys is the number of keys written in the bulk phase; a quarter as
	// many more are written while a follower is down.
	Keys int
	// Out receives the tour's narration.
	Out io.Writer
	// Terminal makes the progress bar one line redrawn with \r; otherwise a
	// few progress lines are printed.
	Terminal bool
	// InFlight is the number of proposals in flight at once (default 256).
	InFlight int
	// Logger receives the members' logs; nil means none.
	Logger *zap.Logger
}

// Timings of the demo.
const (
	demoTick        = 50 * time.Millisecond // elections take 0.5 to 1 s
	demoStepTimeout = 30 * time.Second      // bound of every wait of the tour
	demoPutTimeout  = 5 * time.Second       // bound of one proposal
	demoPutAttempts = 5
)

// demo is the state of a tour: its members and what it measured.
type demo struct {
	cfg     demoConfig
	dir     string
	out     io.Writer
	base    memberConfig
	members map[uint64]*member
	urls    map[uint64]string
	checks  []string

	writes    []writeResult
	latencyOn uint64 // the member whose proposals were timed
}

// writeResult is what one write phase measured.
type writeResult struct {
	label     string
	keys      int
	took      time.Duration
	latencies []time.Duration
	retries   int64
}

// runDemo runs the tour: three members in this process, each with its own
// HTTP server on 127.0.0.1 and its own data directory in a temporary
// directory that is removed at the end. It returns an error if any check
// failed.
func runDemo(ctx context.Context, cfg demoConfig) (err error) {
	if cfg.InFlight <= 0 {
		cfg.InFlight = 256
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	dir, err := os.MkdirTemp("", "raftkv-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	snapEvery := uint64(min(1000, max(cfg.Keys/4, 10)))
	d := &demo{
		cfg: cfg, dir: dir, out: cfg.Out, members: map[uint64]*member{}, urls: map[uint64]string{},
		base: memberConfig{
			Tick: demoTick, ElectionTicks: 10, HeartbeatTicks: 1,
			SnapshotEvery: snapEvery, KeepEntries: max(snapEvery/10, 1),
			// Probes every second, so that RTTs show; fast redials.
			ConnReadTimeout: 2 * time.Second, DialRetryMax: 500 * time.Millisecond,
			Logger: cfg.Logger,
		},
	}
	defer d.stopAll()
	defer func() {
		if err != nil {
			fmt.Fprintf(d.out, "\nFAILED: %v\n", err)
		}
	}()

	d.printf("raftkv demo: a replicated key-value store on go.etcd.io/raft/v3 over rafthttp\n")
	d.printf("data dirs in %s (removed at the end); snapshot every %d entries, %d kept behind it\n\n",
		dir, d.base.SnapshotEvery, d.base.KeepEntries)
	steps := []func(context.Context) error{d.stepStart, d.stepWrite, d.stepAddMember, d.stepRestart, d.stepCheck}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return err
		}
	}
	d.summary()
	d.printChecks()
	return nil
}

func (d *demo) printf(format string, args ...any) { fmt.Fprintf(d.out, format, args...) }

// pass records a passed check.
func (d *demo) pass(what string) { d.checks = append(d.checks, what) }

// listen opens a peer listener on 127.0.0.1 (a free port if addr is "").
func listen(addr string) (net.Listener, string, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	return l, "http://" + l.Addr().String(), nil
}

// start starts member id on lis.
func (d *demo) start(id uint64, lis net.Listener, join bool) (*member, error) {
	c := d.base
	c.ID, c.PeerListener, c.PeerURL, c.Join = id, lis, d.urls[id], join
	c.DataDir = filepath.Join(d.dir, strconv.FormatUint(id, 10))
	c.Peers = maps.Clone(d.urls)
	m, err := startMember(c)
	if err != nil {
		return nil, fmt.Errorf("starting member %d: %w", id, err)
	}
	d.members[id] = m
	return m, nil
}

// stopAll stops every member, in parallel.
func (d *demo) stopAll() {
	var wg sync.WaitGroup
	for _, m := range d.members {
		wg.Go(m.Stop)
	}
	wg.Wait()
}

// ids returns the running members' IDs in order.
func (d *demo) ids() []uint64 { return slices.Sorted(maps.Keys(d.members)) }

// poll calls cond every few milliseconds until it holds, the step timeout
// passes, or ctx ends; it also fails if a member's Ready loop failed.
func (d *demo) poll(ctx context.Context, what string, cond func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, demoStepTimeout)
	defer cancel()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		for _, id := range d.ids() {
			if err := d.members[id].Err(); err != nil {
				return fmt.Errorf("member %d: %w", id, err)
			}
		}
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			if err := context.Cause(ctx); errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("timed out after %v waiting for %s", demoStepTimeout, what)
			}
			return ctx.Err()
		case <-t.C:
		}
	}
}

// leader returns the member every running member follows, once they agree
// and it says it leads.
func (d *demo) leader(ctx context.Context) (*member, error) {
	var lead *member
	err := d.poll(ctx, "the members to agree on a leader", func() bool {
		var id uint64
		for _, m := range d.members {
			l := m.Leader()
			if l == 0 || (id != 0 && l != id) {
				return false
			}
			id = l
		}
		lead = d.members[id]
		return lead != nil && lead.IsLeader()
	})
	return lead, err
}

// caughtUp waits until every member has applied what the leader has and
// holds the same state.
func (d *demo) caughtUp(ctx context.Context, what string) error {
	return d.poll(ctx, what, func() bool {
		var applied uint64
		var hash string
		for i, id := range d.ids() {
			m := d.members[id]
			a, h := m.Applied(), m.state.hash()
			if i > 0 && (a != applied || h != hash) {
				return false
			}
			applied, hash = a, h
		}
		return true
	})
}

func (d *demo) stepStart(ctx context.Context) error {
	d.printf("[1/5] starting members 1, 2 and 3, each with its own HTTP server and data dir\n")
	lis := map[uint64]net.Listener{}
	for id := uint64(1); id <= 3; id++ {
		l, u, err := listen("")
		if err != nil {
			for _, l := range lis {
				l.Close()
			}
			return err
		}
		lis[id], d.urls[id] = l, u
	}
	start := time.Now()
	for id := uint64(1); id <= 3; id++ {
		if _, err := d.start(id, lis[id], false); err != nil {
			for j := id + 1; j <= 3; j++ {
				lis[j].Close()
			}
			return err
		}
		d.printf("      member %d  peer URL %s\n", id, d.urls[id])
	}
	lead, err := d.leader(ctx)
	if err != nil {
		return err
	}
	d.printf("      member %d elected leader in %v (term %d)\n\n", lead.id, time.Since(start).Round(time.Millisecond), lead.Term())
	d.pass(fmt.Sprintf("member %d elected leader", lead.id))
	return nil
}

func key(i int) string   { return fmt.Sprintf("key-%07d", i) }
func value(i int) string { return fmt.Sprintf("value-%07d-%08x", i, uint32(i)*2654435761) }

// write writes keys [from, to) through the leader, InFlight proposals at a
// time, showing progress. A proposal that fails (a leader change, a
// timeout) is retried through the leader of the moment.
func (d *demo) write(ctx context.Context, label string, from, to int) (writeResult, error) {
	res := writeResult{label: label, keys: to - from, latencies: make([]time.Duration, to-from)}
	lead, err := d.leader(ctx)
	if err != nil {
		return res, err
	}
	d.latencyOn = lead.id
	var (
		leadMu   sync.Mutex
		done     atomic.Int64
		retries  atomic.Int64
		errOnce  sync.Once
		firstErr error
	)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	var wg sync.WaitGroup
	for range min(d.cfg.InFlight, to-from) {
		wg.Go(func() {
			for i := range jobs {
				var err error
				for attempt := 1; attempt <= demoPutAttempts; attempt++ {
					leadMu.Lock()
					via := lead
					leadMu.Unlock()
					pctx, pcancel := context.WithTimeout(ctx, demoPutTimeout)
					start := time.Now()
					err = via.Put(pctx, key(i), value(i))
					took := time.Since(start)
					pcancel()
					if err == nil {
						res.latencies[i-from] = took
						done.Add(1)
						break
					}
					if ctx.Err() != nil {
						break
					}
					retries.Add(1)
					if l, lerr := d.leader(ctx); lerr == nil {
						leadMu.Lock()
						lead = l
						leadMu.Unlock()
					}
				}
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("writing %s: %w", key(i), err); cancel() })
				}
			}
		})
	}

	start := time.Now()
	stopProgress := d.progress(&done, res.keys, start)
feed:
	for i := from; i < to; i++ {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	res.took = time.Since(start)
	res.retries = retries.Load()
	stopProgress()
	if firstErr != nil {
		return res, firstErr
	}
	return res, ctx.Err()
}

// progress shows the progress of a write phase until the returned function
// is called: a bar redrawn in place on a terminal, a line per quarter
// otherwise.
func (d *demo) progress(done *atomic.Int64, total int, start time.Time) (stop func()) {
	line := func(n int64) string {
		rate := float64(n) / max(time.Since(start).Seconds(), 1e-9)
		return fmt.Sprintf("%s/%s keys  %s writes/s", humanize.Comma(n), humanize.Comma(int64(total)), humanize.Comma(int64(rate)))
	}
	bar := func(n int64) string {
		const width = 30
		full := int(n * width / int64(total))
		return "[" + strings.Repeat("#", full) + strings.Repeat(".", width-full) + "] "
	}
	quit, ended := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(ended)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		nextQuarter := int64(1)
		for {
			select {
			case <-quit:
				n := done.Load()
				if d.cfg.Terminal {
					d.printf("\r      %s%-44s\n", bar(n), line(n))
				} else if nextQuarter <= 4 {
					d.printf("      %s\n", line(n))
				}
				return
			case <-t.C:
				n := done.Load()
				if d.cfg.Terminal {
					// Padded, so that a shorter line covers a longer one.
					d.printf("\r      %s%-44s", bar(n), line(n))
					continue
				}
				if nextQuarter < 4 && n >= int64(total)*nextQuarter/4 {
					d.printf("      %s\n", line(n))
					for nextQuarter < 4 && n >= int64(total)*nextQuarter/4 {
						nextQuarter++
					}
				}
			}
		}
	}()
	return func() { close(quit); <-ended }
}

// printWrite prints what a write phase measured.
func (d *demo) printWrite(r writeResult) {
	p50, p99 := percentiles(r.latencies)
	d.printf("      %s keys in %v: %s writes/s, commit latency p50 %v p99 %v",
		humanize.Comma(int64(r.keys)), r.took.Round(time.Millisecond), humanize.Comma(int64(r.rate())), p50, p99)
	if r.retries > 0 {
		d.printf(", %d retried", r.retries)
	}
	d.printf("\n")
}

func (r writeResult) rate() float64 { return float64(r.keys) / max(r.took.Seconds(), 1e-9) }

// percentiles returns the 50th and 99th percentiles of ds.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	if len(ds) == 0 {
		return 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	round := func(d time.Duration) time.Duration { return d.Round(10 * time.Microsecond) }
	return round(s[len(s)*50/100]), round(s[min(len(s)-1, len(s)*99/100)])
}

func (d *demo) stepWrite(ctx context.Context) error {
	lead, err := d.leader(ctx)
	if err != nil {
		return err
	}
	d.printf("[2/5] writing %s keys through member %d, the leader, %d proposals in flight\n",
		humanize.Comma(int64(d.cfg.Keys)), lead.id, min(d.cfg.InFlight, d.cfg.Keys))
	res, err := d.write(ctx, "bulk writes", 0, d.cfg.Keys)
	if err != nil {
		return err
	}
	d.writes = append(d.writes, res)
	d.printWrite(res)
	if err := d.caughtUp(ctx, "every member to apply the writes"); err != nil {
		return err
	}
	for _, id := range d.ids() {
		if n := d.members[id].state.len(); n != d.cfg.Keys {
			return fmt.Errorf("member %d holds %d keys, want %d", id, n, d.cfg.Keys)
		}
	}
	d.printf("      every member applied them (index %d)\n\n", lead.Applied())
	d.pass(fmt.Sprintf("%s writes applied on every member", humanize.Comma(int64(d.cfg.Keys))))
	return nil
}

func (d *demo) stepAddMember(ctx context.Context) error {
	const id = 4
	lead, err := d.leader(ctx)
	if err != nil {
		return err
	}
	d.printf("[3/5] adding member %d with a ConfChange; its log starts empty, and the leader compacted its log\n", id)
	lis, u, err := listen("")
	if err != nil {
		return err
	}
	d.urls[id] = u
	start := time.Now()
	m4, err := d.start(id, lis, true)
	if err != nil {
		return err
	}
	cctx, cancel := context.WithTimeout(ctx, demoStepTimeout)
	err = lead.AddMember(cctx, id, u)
	cancel()
	if err != nil {
		return fmt.Errorf("adding member %d: %w", id, err)
	}
	d.printf("      ConfChange applied: member %d (%s) is a voter\n", id, u)
	if err := d.caughtUp(ctx, fmt.Sprintf("member %d to catch up", id)); err != nil {
		return err
	}
	took := time.Since(start)
	recv := metricSum(m4.registry, "etcd_network_snapshot_receive_success")
	// The leader counts its send once it has read the receiver's answer,
	// which the receiver writes after raft took the snapshot: member 4
	// can have caught up a moment before. Give the answer time to arrive.
	sent := metricSum(lead.registry, "etcd_network_snapshot_send_success")
	for deadline := time.Now().Add(5 * time.Second); sent == 0 && recv > 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // poll with a deadline
		sent = metricSum(lead.registry, "etcd_network_snapshot_send_success")
	}
	if m4.snapshotsApplied.Load() == 0 || recv == 0 || sent == 0 {
		return fmt.Errorf("member %d caught up without a snapshot over /raft/snapshot (applied %d, received %v, leader sent %v)",
			id, m4.snapshotsApplied.Load(), recv, sent)
	}
	d.printf("      member %d received a snapshot over /raft/snapshot (index %d, %s), then the log up to index %d\n",
		id, m4.lastSnapshotIndex.Load(), humanize.IBytes(uint64(m4.lastSnapshotBytes.Load())), m4.Applied())
	d.printf("      caught up in %v: %s keys, state hash %.16s, the leader's\n\n",
		took.Round(time.Millisecond), humanize.Comma(int64(m4.state.len())), m4.state.hash())
	d.pass(fmt.Sprintf("member %d joined and caught up through /raft/snapshot", id))
	return nil
}

func (d *demo) stepRestart(ctx context.Context) error {
	lead, err := d.leader(ctx)
	if err != nil {
		return err
	}
	var f *member
	for _, id := range d.ids() {
		if id != lead.id && id <= 3 {
			f = d.members[id]
			break
		}
	}
	if f == nil {
		return errors.New("no follower to restart")
	}
	more := max(d.cfg.Keys/4, 1)
	d.printf("[4/5] stopping member %d (a follower: raft node, transport and HTTP server), writing %s more keys, restarting it\n",
		f.id, humanize.Comma(int64(more)))
	addr := strings.TrimPrefix(d.urls[f.id], "http://")
	stoppedAt := f.Applied()
	f.Stop()
	delete(d.members, f.id)
	d.printf("      member %d stopped at index %d\n", f.id, stoppedAt)

	res, err := d.write(ctx, "writes, a follower down", d.cfg.Keys, d.cfg.Keys+more)
	if err != nil {
		return err
	}
	d.writes = append(d.writes, res)
	d.printWrite(res)

	// The member comes back on its address. A connection of another
	// program may hold the port for a moment (it came from the ephemeral
	// range): retry until the step times out.
	var lis net.Listener
	err = d.poll(ctx, fmt.Sprintf("address %s to be free again", addr), func() bool {
		lis, _, err = listen(addr)
		return err == nil
	})
	if err != nil {
		return fmt.Errorf("restarting member %d: %w", f.id, err)
	}
	start := time.Now()
	r, err := d.start(f.id, lis, false)
	if err != nil {
		return err
	}
	d.printf("      member %d restarted from its data dir: snapshot at index %d + %d log entries reloaded\n",
		r.id, r.reloadedSnapshot, r.reloadedEntries)
	if err := d.caughtUp(ctx, fmt.Sprintf("member %d to catch up", r.id)); err != nil {
		return err
	}
	how := "through the log"
	if r.snapshotsApplied.Load() > 0 {
		how = fmt.Sprintf("through a snapshot (index %d) and the log", r.lastSnapshotIndex.Load())
	}
	d.printf("      caught up %s to index %d in %v\n\n", how, r.Applied(), time.Since(start).Round(time.Millisecond))
	d.pass(fmt.Sprintf("member %d restarted from its data dir and caught up", r.id))
	return nil
}

func (d *demo) stepCheck(ctx context.Context) error {
	want := d.cfg.Keys + max(d.cfg.Keys/4, 1)
	d.printf("[5/5] checking that every member holds the same state\n")
	if err := d.caughtUp(ctx, "every member to hold the same state"); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "      member\tapplied index\tkeys\tstate hash (SHA-256 of the sorted map)\t\n")
	for _, id := range d.ids() {
		m := d.members[id]
		fmt.Fprintf(tw, "      %d\t%d\t%s\t%.16s…\t\n", id, m.Applied(), humanize.Comma(int64(m.state.len())), m.state.hash())
	}
	tw.Flush()
	for _, id := range d.ids() {
		m := d.members[id]
		if n := m.state.len(); n != want {
			return fmt.Errorf("member %d holds %d keys, want %d", id, n, want)
		}
		for _, i := range []int{0, d.cfg.Keys - 1, d.cfg.Keys, want - 1} {
			if v, _ := m.Get(key(i)); v != value(i) {
				return fmt.Errorf("member %d: %s = %q, want %q", id, key(i), v, value(i))
			}
		}
	}
	d.printf("\n")
	d.pass(fmt.Sprintf("all %d members hold identical state (%s keys)", len(d.members), humanize.Comma(int64(want))))
	return nil
}

// summary prints the measurements and the leader's transport figures.
func (d *demo) summary() {
	lead := d.members[d.latencyOn]
	d.printf("summary\n")
	tw := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	for _, w := range d.writes {
		p50, p99 := percentiles(w.latencies)
		fmt.Fprintf(tw, "  %s\t%s keys in %v\t%s writes/s\tcommit latency p50 %v\tp99 %v\n", w.label,
			humanize.Comma(int64(w.keys)), w.took.Round(time.Millisecond), humanize.Comma(int64(w.rate())), p50, p99)
	}
	tw.Flush()
	d.printf("  (latency: from Propose to applied on member %d, the proposing leader)\n", d.latencyOn)
	var made []string
	for _, id := range d.ids() {
		made = append(made, fmt.Sprintf("member %d: %d", id, d.members[id].snapshotsMade.Load()))
	}
	d.printf("  snapshots made (since each member's last start): %s\n", strings.Join(made, ", "))
	if lead == nil {
		return
	}
	d.printf("\n  transport of the leader, member %d (Transport.Stats and its snapshot metrics):\n", lead.id)
	tw = tabwriter.NewWriter(d.out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "  peer\tmsgs sent\tbytes sent\tmsgs recv\tbytes recv\tdropped\tRTT\treconnects\tsnapshots sent\t\n")
	for _, s := range lead.tr.Stats() {
		rtt := "-"
		if s.RTT > 0 {
			rtt = s.RTT.Round(time.Microsecond).String()
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%d\t%s\t%d\t%v\t\n", s.ID,
			humanize.Comma(int64(s.MessagesSent)), humanize.IBytes(s.BytesSent),
			humanize.Comma(int64(s.MessagesReceived)), humanize.IBytes(s.BytesReceived),
			s.Dropped, rtt, s.StreamReconnects,
			metricSum(lead.registry, "etcd_network_snapshot_send_success", "To", strconv.FormatUint(s.ID, 16)))
	}
	tw.Flush()
	var recv []string
	for _, id := range d.ids() {
		if n := metricSum(d.members[id].registry, "etcd_network_snapshot_receive_success"); n > 0 {
			recv = append(recv, fmt.Sprintf("member %d: %v", id, n))
		}
	}
	d.printf("  snapshots received over /raft/snapshot: %s\n", strings.Join(recv, ", "))
}

// printChecks lists the checks that passed.
func (d *demo) printChecks() {
	d.printf("\nchecks\n")
	for _, c := range d.checks {
		d.printf("  ok  %s\n", c)
	}
	d.printf("all %d checks passed\n", len(d.checks))
}

// metricSum returns the sum of the counter name's series in reg, optionally
// only those with the label pair given as labelName, labelValue.
func metricSum(reg *prometheus.Registry, name string, label ...string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return 0
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			if len(label) == 2 {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == label[0] && lp.GetValue() != label[1] {
						continue series
					}
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}
