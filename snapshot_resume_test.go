package rafthttp

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/raftkit/rafthttp/faultnet"
)

// Tests of resumable snapshot transfers (snapshot_resume.go) and of the
// snapshot bandwidth budget. Helpers are prefixed with resume.

// resumeNoFeature is what a member announces with the snapshot-resume
// extension switched off: the rest of what we support.
var resumeNoFeature = supportedFeatures &^ (1 << featureSnapshotResume)

// newResumeProxy starts a faultnet proxy to a free loopback address, on
// which the receiver is to listen.
func newResumeProxy(t testing.TB) (proxy *faultnet.Proxy, recvAddr string) {
	t.Helper()
	recvAddr = freeAddr(t)
	fn := faultnet.New(1)
	t.Cleanup(fn.Close)
	proxy, err := fn.Proxy(recvAddr)
	if err != nil {
		t.Fatal(err)
	}
	return proxy, recvAddr
}

// newResumeSender is member 1, with a store (so that it announces
// snapshot-resume, unless resume is false), reaching member 2 through
// proxyURL.
func newResumeSender(t testing.TB, resume bool, proxyURL string, opts ...nodeOption) *testNode {
	t.Helper()
	opts = append([]nodeOption{withID(1), withStore(DirSnapshotStore{Dir: t.TempDir()})}, opts...)
	if !resume {
		opts = append(opts, withConfig(func(tr *Transport) { tr.announce = &resumeNoFeature }))
	}
	a := newNode(t, opts...)
	if err := a.tr.AddPeer(2, []string{proxyURL}); err != nil {
		t.Fatal(err)
	}
	return a
}

// newResumeReceiver is member 2, with a DirSnapshotStore in dir, listening
// on addr and reaching member 1 at senderURL.
func newResumeReceiver(t testing.TB, dir, addr, senderURL string, opts ...nodeOption) *testNode {
	t.Helper()
	b := newNode(t, append([]nodeOption{withID(2), withStore(DirSnapshotStore{Dir: dir}), listenOn(addr)}, opts...)...)
	if err := b.tr.AddPeer(1, []string{senderURL}); err != nil {
		t.Fatal(err)
	}
	return b
}

// waitResumeLinked waits until the sender's streams from the receiver are
// up (it dialled them, through the proxy, and read the receiver's
// announcement) and, if resume, until it knows the receiver resumes.
func waitResumeLinked(t testing.TB, a *testNode, resume bool) {
	t.Helper()
	waitFor(t, "the sender's streams from the receiver", func() bool {
		s, ok := a.tr.PeerStatus(2)
		return ok && s.Streams[0].Reader.Up && s.Streams[1].Reader.Up
	})
	waitFeatures(t, a, 2, featureCRC32CTrailer)
	if resume {
		waitFeatures(t, a, 2, featureSnapshotResume)
	}
}

// The sizes of TestSnapshotResume1GiB.
const (
	resumeBigSize  = 1 << 30
	resumeBigEvery = 100 << 20 // the link resets after every this many bytes to the receiver
	resumeBigSeed  = 0x5eed
)

// The child process of TestSnapshotResume1GiB: the environment that makes
// it the receiver (its listening address, and the sender's URL), and what
// it prints for the parent.
const (
	resumeChildAddrEnv   = "RAFTHTTP_TEST_SNAPSHOT_RESUME_RECEIVER_ADDR"
	resumeChildSenderEnv = "RAFTHTTP_TEST_SNAPSHOT_RESUME_SENDER_URL"
	resumeChildReady     = "resume-child: ready"  // its RSS baseline is taken
	resumeChildStored    = "resume-child: stored" // then the stored payload's size and CRC-32C
)

// TestSnapshotResume1GiB: a 1 GiB snapshot through a link that resets its
// connections after every 100 MiB the sender sends arrives intact (its
// CRC-32C compared with the generator's) in one SendSnapshot, raft told
// once, with at most 1.2 times the payload on the wire (all the proxy
// delivered to the receiver: POSTs, queries and streams), and the
// receiver's peak RSS growing by less than 32 MiB on the way, the bound
// TestSnapshot1GiB sets for a whole transfer without faults.
//
// On Linux the receiver runs in a fresh process (the test binary
// re-executed), so that its peak RSS measures the receive alone: not
// what earlier tests left behind, nor the proxy (the network), nor the
// sender, whose memory for resuming is its replay ring, at most
// snapshotResumeWindow (TestReplayRing, TestSnapshotResumeRingBound).
// Under -race, ThreadSanitizer's shadow of every page touched would
// otherwise count three times over.
func TestSnapshotResume1GiB(t *testing.T) {
	if testing.Short() {
		t.Skip("1 GiB transfer: skipped with -short")
	}
	if addr := os.Getenv(resumeChildAddrEnv); addr != "" {
		resumeBigReceive(t, addr, os.Getenv(resumeChildSenderEnv))
		return
	}
	proxy, recvAddr := newResumeProxy(t)
	a := newResumeSender(t, true, proxy.URL(), withLogger(nil))

	var (
		stored func() (int64, uint32) // the receiver's payload, once the receive is over
		child  *exec.Cmd
		lines  <-chan string
	)
	if runtime.GOOS == "linux" {
		child = exec.Command(os.Args[0], "-test.run=^TestSnapshotResume1GiB$", "-test.count=1", "-test.v", "-test.timeout=5m")
		child.Env = append(os.Environ(), resumeChildAddrEnv+"="+recvAddr, resumeChildSenderEnv+"="+a.url)
		lines = resumeStartChild(t, child)
		resumeExpect(t, lines, resumeChildReady)
		stored = func() (int64, uint32) { return resumeParseStored(t, resumeExpect(t, lines, resumeChildStored)) }
	} else {
		dir := t.TempDir()
		b := newResumeReceiver(t, dir, recvAddr, a.url, withLogger(nil))
		stored = func() (int64, uint32) {
			if got := b.raft.recv(t); got.GetType() != raftpb.MsgSnap || got.GetSnapshot().GetMetadata().GetIndex() != 12 {
				t.Errorf("raft got %v, want the MsgSnap at index 12", got)
			}
			return snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(12))
		}
	}
	waitResumeLinked(t, a, true)

	proxy.ResetEvery(faultnet.ClientToServer, resumeBigEvery)
	before := proxy.Stats()
	gen := newSnapGen(resumeBigSeed, resumeBigSize)
	start := time.Now()
	err := receive(t, snapSend(a, 2, 12, gen, resumeBigSize), 4*time.Minute, "the outcome of SendSnapshot")
	took := time.Since(start)
	if err != nil {
		t.Fatalf("SendSnapshot: %v", err)
	}
	n, sum := stored()
	if child != nil {
		if err := child.Wait(); err != nil {
			t.Errorf("the receiver's process: %v", err)
		}
	}
	st := proxy.Stats()
	wire := st.ToServer - before.ToServer
	resumed := metricValue(t, gathered(t, a.tr.metrics.snapResume.sends), "", nil)
	saved := metricValue(t, gathered(t, a.tr.metrics.snapResume.savedBytes), "", nil)
	t.Logf("sent 1 GiB in %v through %d resets: %.1f MiB on the wire to the receiver (%.3fx the payload); %v attempts resumed, %.0f MiB that restarting from zero would have sent again",
		took, st.Resets, float64(wire)/(1<<20), float64(wire)/resumeBigSize, resumed, saved/(1<<20))
	if st.Resets < resumeBigSize/resumeBigEvery {
		t.Errorf("the link was reset %d times, want %d", st.Resets, resumeBigSize/resumeBigEvery)
	}
	if maxWire := int64(resumeBigSize) * 12 / 10; wire > maxWire {
		t.Errorf("%d bytes on the wire, want at most %d (1.2x the payload)", wire, maxWire)
	}
	if resumed < float64(st.Resets) {
		t.Errorf("%v attempts resumed, want one per reset (%d)", resumed, st.Resets)
	}
	if n != resumeBigSize || sum != gen.crc {
		t.Errorf("the receiver stored %d bytes with CRC-32C %08x, want %d with %08x", n, sum, int64(resumeBigSize), gen.crc)
	}
	if reps := a.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFinish}) {
		t.Errorf("snapshot reports = %v, want one Finish for 2", reps)
	}
}

// resumeStartChild starts the receiver's process and returns its output,
// line by line; the child is killed at the end of the test if still
// running, and its output logged if the test failed.
func resumeStartChild(t *testing.T, child *exec.Cmd) <-chan string {
	t.Helper()
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = child.Stdout
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	var all strings.Builder
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			select {
			case lines <- sc.Text():
			default: // nobody reads any more
			}
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		if child.ProcessState == nil {
			_ = child.Process.Kill()
			_ = child.Wait()
		}
		<-done
		for _, line := range strings.Split(all.String(), "\n") {
			if strings.Contains(line, "snapshot_resume_test.go") {
				t.Log("receiver: " + strings.TrimSpace(line))
			}
		}
		if t.Failed() {
			t.Logf("the receiver's output:\n%s", all.String())
		}
	})
	return lines
}

// resumeExpect waits for the child's line that starts with prefix, and
// returns the rest of it.
func resumeExpect(t *testing.T, lines <-chan string, prefix string) string {
	t.Helper()
	timer := time.NewTimer(4 * time.Minute)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("the receiver's process ended before saying %q", prefix)
			}
			if rest, found := strings.CutPrefix(line, prefix); found {
				return rest
			}
		case <-timer.C:
			t.Fatalf("timed out waiting for the receiver to say %q", prefix)
		}
	}
}

// resumeParseStored reads the size and CRC-32C the child reports.
func resumeParseStored(t *testing.T, rest string) (int64, uint32) {
	t.Helper()
	f := strings.Fields(rest)
	if len(f) != 2 {
		t.Fatalf("the receiver reported %q, want a size and a CRC", rest)
	}
	n, err1 := strconv.ParseInt(f[0], 10, 64)
	sum, err2 := strconv.ParseUint(f[1], 16, 32)
	if err1 != nil || err2 != nil {
		t.Fatalf("the receiver reported %q, want a size and a CRC", rest)
	}
	return n, uint32(sum)
}

// resumeBigReceive is the receiver's process of TestSnapshotResume1GiB:
// it waits for the sender's MsgSnap, checking its peak RSS on the way, and
// reports what it stored.
func resumeBigReceive(t *testing.T, addr, senderURL string) {
	const maxGrowth = 32 << 20
	dir := t.TempDir()
	b := newResumeReceiver(t, dir, addr, senderURL, withLogger(nil))
	waitFor(t, "the sender to dial our streams", func() bool {
		s, ok := b.tr.PeerStatus(1)
		return ok && s.Streams[0].Writer.Up && s.Streams[1].Writer.Up
	})
	baseline, rssOK := snapRSSBaseline(t)
	fmt.Println(resumeChildReady)
	got := receive(t, b.raft.msgc, 4*time.Minute, "the MsgSnap")
	var growth int64
	if rssOK {
		growth = snapProcStatusBytes(t, "VmHWM") - baseline
	}
	if got.GetType() != raftpb.MsgSnap || got.GetSnapshot().GetMetadata().GetIndex() != 12 {
		t.Errorf("raft got %v, want the MsgSnap at index 12", got)
	}
	resumed := metricValue(t, gathered(t, b.tr.metrics.snapResume.receives), "", nil)
	n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(12))
	fmt.Printf("%s %d %08x\n", resumeChildStored, n, sum)
	t.Logf("received 1 GiB, %v POSTs resuming a partial payload", resumed)
	if rssOK {
		t.Logf("peak RSS grew by %.1f MiB during the receive (baseline %.1f MiB)", float64(growth)/(1<<20), float64(baseline)/(1<<20))
		if growth >= maxGrowth {
			t.Errorf("peak RSS grew by %d bytes, want < %d", growth, maxGrowth)
		}
	} else {
		t.Log("peak RSS not measured: needs Linux and a writable /proc/self/clear_refs")
	}
	if files := snapDirFiles(t, dir); len(files) != 1 {
		t.Errorf("store directory holds %q, want only the snapshot", files)
	}
}

// plantPartial makes tr keep, for the sender from, a partial payload of
// the snapshot m (with a payload of size bytes) holding prefix, as a
// transfer cut off after len(prefix) bytes leaves it.
func plantPartial(t testing.TB, tr *Transport, from uint64, m *raftpb.Message, size int64, prefix []byte) {
	t.Helper()
	id := newSnapshotID(m, appendMessageFrame(nil, m), size)
	p, err := tr.partials.begin(t.Context(), from, resumeStart{id: id}, m, func() {})
	if err != nil {
		t.Fatalf("planting a partial payload: %v", err)
	}
	if _, err := (&partialWriter{ps: tr.partials, p: p}).Write(prefix); err != nil {
		t.Fatalf("planting a partial payload: %v", err)
	}
	tr.partials.end(p, p.recv, partialKeep)
}

// TestSnapshotResumeOffRestartsFromZero is TestSnapshotResume1GiB with
// the sender's announcement of snapshot-resume switched off: each
// SendSnapshot is etcd's single POST, which the first reset fails, and
// raft's next one (three here) starts again from byte zero, its bytes
// before the reset lost; the receiver keeps nothing. At 100 MiB a
// connection, the 1 GiB payload never gets through, however many times
// raft sends it again.
func TestSnapshotResumeOffRestartsFromZero(t *testing.T) {
	if testing.Short() {
		t.Skip("300 MiB of transfers: skipped with -short")
	}
	const retries = 3
	proxy, recvAddr := newResumeProxy(t)
	a := newResumeSender(t, false, proxy.URL(), withLogger(nil))
	dir := t.TempDir()
	b := newResumeReceiver(t, dir, recvAddr, a.url, withLogger(nil))
	waitResumeLinked(t, a, false)
	proxy.ResetEvery(faultnet.ClientToServer, resumeBigEvery)
	before := proxy.Stats()

	for i := range retries {
		gen := newSnapGen(resumeBigSeed, resumeBigSize) // raft's next MsgSnap: the payload from the start
		err := receive(t, snapSend(a, 2, 12, gen, resumeBigSize), time.Minute, "the outcome of SendSnapshot")
		if err == nil {
			t.Fatalf("send %d succeeded through a link reset every %d MiB", i+1, resumeBigEvery>>20)
		}
		t.Logf("send %d failed: %v", i+1, err)
		snapWaitRecvFailed(t, b, float64(i+1))
	}
	st := proxy.Stats()
	wire := st.ToServer - before.ToServer
	t.Logf("%d sends failed through %d resets: %.1f MiB on the wire to the receiver, %.2fx the payload, nothing kept",
		retries, st.Resets, float64(wire)/(1<<20), float64(wire)/resumeBigSize)
	if st.Resets != retries {
		t.Errorf("the link was reset %d times, want %d (one per send)", st.Resets, retries)
	}
	if least := int64(retries * resumeBigEvery); wire < least {
		t.Errorf("%d bytes on the wire, want at least %d: each send restarting from zero", wire, least)
	}
	if reps := a.raft.snapshotReports(); len(reps) != retries {
		t.Errorf("snapshot reports = %v, want %d Failures", reps, retries)
	}
	if got := metricValue(t, gathered(t, a.tr.metrics.snapResume.sends), "", nil); got != 0 {
		t.Errorf("%v attempts resumed, want none", got)
	}
	if files := snapDirFiles(t, dir); len(files) != 0 {
		t.Errorf("store directory holds %q, want nothing", files)
	}
	if got := metricValue(t, gathered(t, b.tr.metrics.snapResume.partials), "", nil); got != 0 {
		t.Errorf("the receiver keeps %v partial payloads, want none", got)
	}
}

// resumeCounted is a payload that counts the bytes read from it.
type resumeCounted struct {
	r io.Reader
	n atomic.Int64
}

func (c *resumeCounted) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *resumeCounted) Close() error { return nil }

// TestSnapshotSendBudget: two snapshots in flight, to two peers, share
// the Transport's budget of 8 MiB/s: together within 10% of it, each
// within 20% of half of it; lowered to 2 MiB/s while they run, the budget
// holds both to it from a second later on; lifted, they finish, intact.
// With and without resuming (whose bodies replay from the ring and read
// the payload through it).
//
// It runs in a synctest bubble, over a memNet: rates are measured on the
// bubble's clock, which two loaded cores cannot stretch.
func TestSnapshotSendBudget(t *testing.T) {
	for _, tc := range []struct {
		name   string
		resume bool
	}{
		{"etcd's POST", false},
		{"resumable", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const (
					budget = 8 << 20
					lower  = 2 << 20
					size   = 24 << 20
				)
				mn := &memNet{}
				senderOpts := []nodeOption{withID(1), onMemNet(mn), withConfig(func(tr *Transport) { tr.SnapshotSendRate = budget })}
				if tc.resume {
					senderOpts = append(senderOpts, withStore(DirSnapshotStore{Dir: t.TempDir()}))
				}
				a := newNode(t, senderOpts...)
				dirs := map[uint64]string{2: t.TempDir(), 3: t.TempDir()}
				b := newNode(t, withID(2), onMemNet(mn), withStore(DirSnapshotStore{Dir: dirs[2]}))
				c := newNode(t, withID(3), onMemNet(mn), withStore(DirSnapshotStore{Dir: dirs[3]}))
				connect(t, a, b, c)
				for _, id := range []uint64{2, 3} {
					waitFeatures(t, a, id, featureCRC32CTrailer)
					if tc.resume {
						waitFeatures(t, a, id, featureSnapshotResume)
					}
				}

				payloads := map[uint64]*resumeCounted{}
				errcs := map[uint64]<-chan error{}
				for i, id := range []uint64{2, 3} {
					payloads[id] = &resumeCounted{r: newSnapGen(uint64(60+i), size)}
					errcs[id] = snapSend(a, id, 12, payloads[id], size)
				}
				counts := func() (int64, int64) { return payloads[2].n.Load(), payloads[3].n.Load() }
				// rates measures each snapshot's rate over d from now.
				rates := func(d time.Duration) (float64, float64) {
					b0, c0 := counts()
					time.Sleep(d) // the bubble's clock
					b1, c1 := counts()
					return float64(b1-b0) / d.Seconds(), float64(c1-c0) / d.Seconds()
				}
				check := func(phase string, limit float64, rb, rc float64) {
					t.Helper()
					t.Logf("%s: %.2f and %.2f MiB/s, %.2f MiB/s together, for a budget of %.0f MiB/s",
						phase, rb/(1<<20), rc/(1<<20), (rb+rc)/(1<<20), limit/(1<<20))
					if dev := (rb + rc - limit) / limit; dev < -0.10 || dev > 0.10 {
						t.Errorf("%s: together %.2f MiB/s, want within 10%% of %.0f MiB/s", phase, (rb+rc)/(1<<20), limit/(1<<20))
					}
					for _, r := range []float64{rb, rc} {
						if dev := (r - limit/2) / (limit / 2); dev < -0.20 || dev > 0.20 {
							t.Errorf("%s: one snapshot at %.2f MiB/s, want within 20%% of half the budget", phase, r/(1<<20))
						}
					}
				}

				time.Sleep(500 * time.Millisecond) // under way
				rb, rc := rates(2 * time.Second)
				check("sharing", budget, rb, rc)
				if got := metricValue(t, gathered(t, a.tr.metrics.snapResume.rateLimit), "", nil); got != budget {
					t.Errorf("the budget gauge reads %v, want %d", got, budget)
				}

				if err := a.tr.SetSnapshotSendRate(lower); err != nil {
					t.Fatalf("SetSnapshotSendRate: %v", err)
				}
				rb, rc = rates(time.Second) // the second the change may take
				t.Logf("the second after lowering the budget: %.2f and %.2f MiB/s", rb/(1<<20), rc/(1<<20))
				if rb+rc > 1.1*lower {
					t.Errorf("the second after lowering the budget: %.2f MiB/s together, want at most %.2f: slowed within the second",
						(rb+rc)/(1<<20), 1.1*lower/(1<<20))
				}
				rb, rc = rates(2 * time.Second)
				check("lowered", lower, rb, rc)

				if err := a.tr.SetSnapshotSendRate(0); err != nil {
					t.Fatalf("SetSnapshotSendRate: %v", err)
				}
				for _, id := range []uint64{2, 3} {
					if err := snapWait(t, errcs[id]); err != nil {
						t.Fatalf("SendSnapshot to %d: %v", id, err)
					}
					n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dirs[id]}.Path(12))
					if want := newSnapGen(uint64(58+id), size); n != size || sum != resumeGenCRC(want) {
						t.Errorf("%d stored %d bytes with CRC %08x, want %d with %08x", id, n, sum, size, resumeGenCRC(want))
					}
				}
			})
		})
	}
}

// resumeGenCRC drains g and returns the CRC-32C of its bytes.
func resumeGenCRC(g *snapGen) uint32 {
	if _, err := io.Copy(io.Discard, g); err != nil {
		panic(err)
	}
	return g.crc
}

// TestSetSnapshotSendRate: the budget's contract outside a transfer.
func TestSetSnapshotSendRate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		started bool
		stopped bool
		rate    int64
		wantErr error // nil: success; errAny: any error
		gauge   float64
	}{
		{name: "before Start", rate: 1 << 20, wantErr: ErrNotStarted},
		{name: "set", started: true, rate: 1 << 20, gauge: 1 << 20},
		{name: "lifted", started: true, rate: 0, gauge: 0},
		{name: "negative", started: true, rate: -1, wantErr: errAny, gauge: 4 << 20},
		{name: "after Stop", started: true, stopped: true, rate: 1 << 20, gauge: 1 << 20},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := &Transport{ID: 1, ClusterID: testClusterID, Raft: newFakeRaft(), SnapshotSendRate: 4 << 20}
			if tc.started {
				if err := tr.Start(); err != nil {
					t.Fatal(err)
				}
				defer tr.Stop()
			}
			if tc.stopped {
				tr.Stop()
			}
			err := tr.SetSnapshotSendRate(tc.rate)
			switch {
			case tc.wantErr == nil && err != nil, tc.wantErr == errAny && err == nil,
				tc.wantErr != nil && tc.wantErr != errAny && !errors.Is(err, tc.wantErr):
				t.Fatalf("SetSnapshotSendRate(%d) = %v, want %v", tc.rate, err, tc.wantErr)
			}
			if !tc.started {
				return
			}
			if got := metricValue(t, gathered(t, tr.metrics.snapResume.rateLimit), "", nil); got != tc.gauge {
				t.Errorf("the budget gauge reads %v, want %v", got, tc.gauge)
			}
		})
	}
}

// errAny stands for any error in a table's expectations.
var errAny = errors.New("any error")

// TestSnapshotPartialBounds: what a receiver keeps of interrupted
// transfers is bounded in count, bytes and age, one per sender, and
// dropped at Stop; a dropped partial's file is removed. Partials are
// planted as interrupted transfers leave them, a second apart on the
// bubble's clock.
func TestSnapshotPartialBounds(t *testing.T) {
	type plant struct {
		from, index uint64
		held        int // bytes of the payload held
	}
	for _, tc := range []struct {
		name     string
		count    int
		bytes    int64
		ttl      time.Duration
		plants   []plant
		wait     time.Duration // after the last plant
		stop     bool
		want     map[uint64]uint64 // sender -> index of the partial kept
		wantHeld int64
	}{
		{name: "within the bounds", plants: []plant{{11, 12, 1 << 10}, {12, 12, 2 << 10}},
			want: map[uint64]uint64{11: 12, 12: 12}, wantHeld: 3 << 10},
		{name: "count: the oldest goes", count: 2, plants: []plant{{11, 12, 1 << 10}, {12, 12, 1 << 10}, {13, 12, 1 << 10}},
			want: map[uint64]uint64{12: 12, 13: 12}, wantHeld: 2 << 10},
		{name: "bytes: the oldest goes", bytes: 3 << 10, plants: []plant{{11, 12, 2 << 10}, {12, 12, 2 << 10}},
			want: map[uint64]uint64{12: 12}, wantHeld: 2 << 10},
		{name: "bytes: too large alone", bytes: 1 << 10, plants: []plant{{11, 12, 2 << 10}},
			want: map[uint64]uint64{}},
		{name: "age: kept until the TTL", ttl: time.Minute, plants: []plant{{11, 12, 1 << 10}}, wait: time.Minute - time.Millisecond,
			want: map[uint64]uint64{11: 12}, wantHeld: 1 << 10},
		{name: "age: expired", ttl: time.Minute, plants: []plant{{11, 12, 1 << 10}, {12, 12, 1 << 10}}, wait: time.Minute - time.Second/2,
			want: map[uint64]uint64{12: 12}, wantHeld: 1 << 10},
		{name: "one per sender: a newer snapshot replaces it", plants: []plant{{11, 12, 2 << 10}, {11, 13, 1 << 10}},
			want: map[uint64]uint64{11: 13}, wantHeld: 1 << 10},
		{name: "dropped at Stop", plants: []plant{{11, 12, 1 << 10}, {12, 12, 1 << 10}}, stop: true,
			want: map[uint64]uint64{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				dir := t.TempDir()
				tr, _ := newNode(t, withID(2), unserved(), withStore(DirSnapshotStore{Dir: dir}), withConfig(func(tr *Transport) {
					tr.MaxSnapshotPartials, tr.MaxSnapshotPartialBytes, tr.SnapshotPartialTTL = tc.count, tc.bytes, tc.ttl
				})).parts()
				for i, pl := range tc.plants {
					if i > 0 {
						time.Sleep(time.Second)
					}
					m := newMsg(raftpb.MsgSnap, pl.from, 2, pl.index)
					plantPartial(t, tr, pl.from, m, 1<<20, snapBytes(pl.from, pl.held))
				}
				time.Sleep(tc.wait)
				synctest.Wait() // expiry timers that are due have run
				if tc.stop {
					tr.Stop()
				}

				got := map[uint64]uint64{}
				tr.partials.mu.Lock()
				for from, p := range tr.partials.bySender {
					if p.kept {
						got[from] = p.id.index
					}
				}
				tr.partials.mu.Unlock()
				if !maps.Equal(got, tc.want) {
					t.Errorf("kept (sender: index) %v, want %v", got, tc.want)
				}
				if held := metricValue(t, gathered(t, tr.metrics.snapResume.partialSize), "", nil); held != float64(tc.wantHeld) {
					t.Errorf("snapshot_partial_bytes reads %v, want %d", held, tc.wantHeld)
				}
				if n := metricValue(t, gathered(t, tr.metrics.snapResume.partials), "", nil); n != float64(len(tc.want)) {
					t.Errorf("snapshot_partials reads %v, want %d", n, len(tc.want))
				}
				if files := snapDirFiles(t, dir); len(files) != len(tc.want) {
					t.Errorf("store directory holds %q, want %d partial files", files, len(tc.want))
				}
			})
		})
	}
}

// resumeKept returns how much of the payload of the sender from's
// partial the receiver tr keeps, 0 if none is kept.
func resumeKept(tr *Transport, from uint64) int64 {
	tr.partials.mu.Lock()
	defer tr.partials.mu.Unlock()
	if p := tr.partials.bySender[from]; p != nil && p.kept {
		return p.size.Load()
	}
	return 0
}

var errResumeTestPayload = errors.New("test payload: read error")

// TestSnapshotResumeAcrossSends: a send whose payload fails halfway leaves
// the receiver a partial payload, and raft's next send of the snapshot (a
// new payload reader) resumes from it, reading the receiver's part of the
// payload locally and sending only the rest, if the CRC-32C of that part
// matches. A payload with the same snapshot ID but other bytes is caught
// by the CRC: when the ring still holds what was read, the send starts
// again from zero at once; when not, it fails, and the next send starts
// from zero without asking. Either way the receiver stores the payload of
// the send that succeeded, byte for byte.
func TestSnapshotResumeAcrossSends(t *testing.T) {
	for _, tc := range []struct {
		name      string
		size      int64
		failAt    int64 // the first send's payload fails after this many bytes
		same      bool  // the next sends' payload is the first's
		sends     int   // sends after the first, the last succeeding
		wantResum bool  // the send that succeeds resumes
	}{
		{name: "same payload, within the ring", size: 2 << 20, failAt: 1 << 20, same: true, sends: 1, wantResum: true},
		{name: "same payload, beyond the ring", size: 16 << 20, failAt: 12 << 20, same: true, sends: 1, wantResum: true},
		{name: "other payload, within the ring", size: 2 << 20, failAt: 1 << 20, sends: 1},
		{name: "other payload, beyond the ring", size: 16 << 20, failAt: 12 << 20, sends: 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a := newNode(t, withID(1), withStore(DirSnapshotStore{Dir: t.TempDir()}))
			b := newNode(t, withID(2), withStore(DirSnapshotStore{Dir: dir}))
			connect(t, a, b)
			waitFeatures(t, a, 2, featureSnapshotResume)

			first := &snapFailAfter{r: newSnapGen(70, tc.size), n: tc.failAt, err: errResumeTestPayload}
			if err := snapWait(t, snapSend(a, 2, 12, io.NopCloser(first), tc.size)); !errors.Is(err, errResumeTestPayload) {
				t.Fatalf("first send: %v, want the payload's error", err)
			}
			var kept int64
			waitFor(t, "the receiver to keep the partial payload", func() bool { kept = resumeKept(b.tr, 1); return kept > 0 })
			t.Logf("the first send failed after %d MiB read; the receiver keeps %d bytes", tc.failAt>>20, kept)

			seed := uint64(70)
			if !tc.same {
				seed = 71
			}
			var err error
			for i := range tc.sends {
				err = snapWait(t, snapSend(a, 2, 12, newSnapGen(seed, tc.size), tc.size))
				if i < tc.sends-1 {
					if !errors.Is(err, errResumeMismatch) {
						t.Fatalf("send %d: %v, want %v", i+2, err, errResumeMismatch)
					}
					continue
				}
				if err != nil {
					t.Fatalf("send %d: %v", i+2, err)
				}
			}
			resumed := metricValue(t, gathered(t, a.tr.metrics.snapResume.sends), "", nil)
			saved := metricValue(t, gathered(t, a.tr.metrics.snapResume.savedBytes), "", nil)
			received := metricValue(t, gathered(t, b.tr.metrics.snapReceivedBytes), "", nil)
			wantReceived := float64(tc.size)
			if tc.wantResum {
				wantReceived -= float64(kept)
				if resumed != 1 || saved != float64(kept) {
					t.Errorf("%v attempts resumed, %v bytes saved; want 1 and %d", resumed, saved, kept)
				}
			} else if resumed != 0 {
				t.Errorf("%v attempts resumed, want none", resumed)
			}
			if received != wantReceived {
				t.Errorf("the successful POST carried %v payload bytes, want %v", received, wantReceived)
			}
			n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(12))
			if want := resumeGenCRC(newSnapGen(seed, tc.size)); n != tc.size || sum != want {
				t.Errorf("stored %d bytes with CRC %08x, want %d with %08x", n, sum, tc.size, want)
			}
			if files := snapDirFiles(t, dir); len(files) != 1 {
				t.Errorf("store directory holds %q, want only the snapshot", files)
			}
			if reps := a.raft.snapshotReports(); reps[len(reps)-1] != (snapshotReport{2, raft.SnapshotFinish}) || len(reps) != tc.sends+1 {
				t.Errorf("snapshot reports = %v, want a Failure per failed send, then Finish", reps)
			}
		})
	}
}

// resumeRequest sends a request from member 1 to n's path with the
// headers hdr on top of a peer's, and a chunked body followed by trailer
// if body is not nil, and returns the status, the headers and the body of
// the answer.
func resumeRequest(t testing.TB, n *testNode, method, path string, hdr map[string]string, body io.Reader, trailer http.Header) (int, http.Header, string) {
	t.Helper()
	if body != nil {
		body = io.MultiReader(body) // no Len: chunked, so that a trailer may follow
	}
	req, err := http.NewRequestWithContext(t.Context(), method, n.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = snapPeerHeader(1)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	req.Trailer = trailer
	resp, err := newClient(t).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// TestServeSnapshotResume: the answers of GET /raft/snapshot/resume.
func TestServeSnapshotResume(t *testing.T) {
	m := newMsg(raftpb.MsgSnap, 1, 2, 12)
	id := newSnapshotID(m, appendMessageFrame(nil, m), 1<<20)
	held := snapBytes(80, 1<<10)
	other := id
	other.index = 13
	for _, tc := range []struct {
		name     string
		store    SnapshotStore // nil: a DirSnapshotStore
		plant    bool          // the receiver keeps held of m's payload from member 1
		method   string        // "": GET
		hdr      map[string]string
		wantCode int
		wantHdr  map[string]string
		wantBody string // "": not checked
	}{
		{name: "nothing held", hdr: map[string]string{headerSnapshotID: id.String()},
			wantCode: http.StatusNoContent, wantHdr: map[string]string{headerSnapshotOffset: "0", headerSnapshotCRC: "00000000"}},
		{name: "a partial held", plant: true, hdr: map[string]string{headerSnapshotID: id.String()},
			wantCode: http.StatusNoContent, wantHdr: map[string]string{headerSnapshotOffset: "1024", headerSnapshotCRC: crcOf(crc32.Checksum(held, snapCRCTable))}},
		{name: "a partial of another snapshot", plant: true, hdr: map[string]string{headerSnapshotID: other.String()},
			wantCode: http.StatusNoContent, wantHdr: map[string]string{headerSnapshotOffset: "0", headerSnapshotCRC: "00000000"}},
		{name: "progress of a kept partial", plant: true, hdr: map[string]string{headerSnapshotID: id.String(), headerSnapshotProgress: "65536"},
			wantCode: http.StatusOK, wantBody: "1024\n"},
		{name: "progress of nothing", hdr: map[string]string{headerSnapshotID: id.String(), headerSnapshotProgress: "65536"},
			wantCode: http.StatusOK, wantBody: "0\n"},
		{name: "no ID", hdr: map[string]string{}, wantCode: http.StatusBadRequest},
		{name: "malformed ID", hdr: map[string]string{headerSnapshotID: "index=12"}, wantCode: http.StatusBadRequest},
		{name: "malformed progress step", hdr: map[string]string{headerSnapshotID: id.String(), headerSnapshotProgress: "0x10"}, wantCode: http.StatusBadRequest},
		{name: "no sender", hdr: map[string]string{headerSnapshotID: id.String(), headerServerFrom: ""}, wantCode: http.StatusBadRequest},
		{name: "another cluster", hdr: map[string]string{headerSnapshotID: id.String(), headerClusterID: "1"}, wantCode: http.StatusPreconditionFailed},
		{name: "a store that does not resume", store: snapBrokenStore{}, hdr: map[string]string{headerSnapshotID: id.String()}, wantCode: http.StatusNotFound},
		{name: "POST", method: http.MethodPost, hdr: map[string]string{headerSnapshotID: id.String()}, wantCode: http.StatusMethodNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := tc.store
			if store == nil {
				store = DirSnapshotStore{Dir: t.TempDir()}
			}
			b := newNode(t, withID(2), withStore(store))
			if tc.plant {
				plantPartial(t, b.tr, 1, m, 1<<20, held)
			}
			method := cmp.Or(tc.method, http.MethodGet)
			code, h, body := resumeRequest(t, b, method, snapshotResumePath, tc.hdr, nil, nil)
			if code != tc.wantCode {
				t.Fatalf("answered %d %q, want %d", code, body, tc.wantCode)
			}
			for k, v := range tc.wantHdr {
				if got := h.Get(k); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			if tc.wantCode == http.StatusOK && body != tc.wantBody {
				t.Errorf("body %q, want %q", body, tc.wantBody)
			}
			// As on every raft route, the method is checked first (spec §2.3).
			if got := h.Get(headerFeatures); code != http.StatusMethodNotAllowed && got != b.tr.cfg.featuresHeader {
				t.Errorf("answer announces %q, want %q", got, b.tr.cfg.featuresHeader)
			}
		})
	}
}

// TestSnapshotResumePOSTRefused: resumable POSTs that cannot go on are
// refused before their payload is read, and leave the partial held as it
// was; a fresh one (offset 0) to a store that does not resume is an
// ordinary snapshot.
func TestSnapshotResumePOSTRefused(t *testing.T) {
	m := newMsg(raftpb.MsgSnap, 1, 2, 12)
	env := appendMessageFrame(nil, m)
	const size = 4 << 10
	payload := snapBytes(81, size)
	id := newSnapshotID(m, env, size)
	held := crc32.Checksum(payload[:1<<10], snapCRCTable)
	point := func(off int64, crc uint32) map[string]string {
		h := map[string]string{headerSnapshotID: id.String()}
		h[headerSnapshotOffset] = strconv.FormatInt(off, 10)
		h[headerSnapshotCRC] = crcOf(crc)
		return h
	}
	for _, tc := range []struct {
		name     string
		resumes  bool // the receiver's store resumes
		hdr      map[string]string
		from     int64 // the payload's bytes in the body start here
		wantCode int
		wantKept int64 // what the receiver keeps after
	}{
		{name: "resuming past what is held", resumes: true, hdr: point(2<<10, held), from: 2 << 10, wantCode: http.StatusConflict, wantKept: 1 << 10},
		{name: "resuming with another CRC", resumes: true, hdr: point(1<<10, held^1), from: 1 << 10, wantCode: http.StatusConflict, wantKept: 1 << 10},
		{name: "resuming another snapshot", resumes: true, hdr: func() map[string]string {
			h := point(1<<10, held)
			o := id
			o.size++
			h[headerSnapshotID] = o.String()
			return h
		}(), from: 1 << 10, wantCode: http.StatusConflict, wantKept: 1 << 10},
		{name: "an ID not the envelope's", resumes: true, hdr: func() map[string]string {
			h := point(1<<10, held)
			o := id
			o.envelope++
			h[headerSnapshotID] = o.String()
			return h
		}(), from: 1 << 10, wantCode: http.StatusBadRequest, wantKept: 1 << 10},
		{name: "malformed resume point", resumes: true, hdr: map[string]string{headerSnapshotID: id.String(), headerSnapshotOffset: "x"},
			wantCode: http.StatusBadRequest, wantKept: 1 << 10},
		{name: "resuming where it is held", resumes: true, hdr: point(1<<10, held), from: 1 << 10, wantCode: http.StatusNoContent},
		{name: "resuming to a store that does not", hdr: point(1<<10, held), from: 1 << 10, wantCode: http.StatusConflict},
		{name: "from zero to a store that does not resume", hdr: point(0, 0), wantCode: http.StatusNoContent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var store SnapshotStore = &memStore{}
			if !tc.resumes {
				store = newSnapProbe(&memStore{}) // a wrapper: not a ResumableSnapshotStore
			}
			b := newNode(t, withID(2), withStore(store))
			if tc.resumes {
				plantPartial(t, b.tr, 1, m, size, payload[:1<<10])
			}
			body := append(append([]byte(nil), env...), payload[tc.from:]...)
			trailer := http.Header{trailerPayloadCRC32C: {crcOf(crc32.Checksum(payload, snapCRCTable))}}
			code, _, resp := resumeRequest(t, b, http.MethodPost, RaftSnapshotPrefix, tc.hdr, bytes.NewReader(body), trailer)
			if code != tc.wantCode {
				t.Fatalf("answered %d %q, want %d", code, resp, tc.wantCode)
			}
			if tc.resumes {
				if got := resumeKept(b.tr, 1); got != tc.wantKept {
					t.Errorf("the receiver keeps %d bytes, want %d", got, tc.wantKept)
				}
			}
			if tc.wantCode == http.StatusNoContent {
				if got := b.raft.recv(t); got.GetType() != raftpb.MsgSnap {
					t.Errorf("raft got %v, want the MsgSnap", got)
				}
			}
		})
	}
}

// TestSnapshotResumeCutsOffSilentTransfer: a resumable transfer whose
// sender went silent, its connection open (a half-open connection: the
// sender has given up on it, the receiver cannot tell), is cut off by the
// sender's next resume query, which is answered at once with what was
// received, instead of after the receiver's progress timeout; the silent
// request is answered 503: resume later.
//
// It runs in a synctest bubble, over a memNet: "at once" is on the
// bubble's clock.
func TestSnapshotResumeCutsOffSilentTransfer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := &memNet{}
		b := newNode(t, withID(2), onMemNet(mn), withStore(DirSnapshotStore{Dir: t.TempDir()}))
		m := newMsg(raftpb.MsgSnap, 1, 2, 12)
		env := appendMessageFrame(nil, m)
		const size, sent = 1 << 20, 256 << 10
		payload := snapBytes(82, size)
		id := newSnapshotID(m, env, size)

		c := b.dial(t)
		var head bytes.Buffer
		fmt.Fprintf(&head, "POST %s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n", RaftSnapshotPrefix, b.srv.Listener.Addr())
		h := snapPeerHeader(1)
		h.Set(headerSnapshotID, id.String())
		setResumePoint(h, 0, 0)
		if err := h.Write(&head); err != nil {
			t.Fatal(err)
		}
		head.WriteString("\r\n")
		go func() { // net.Pipe: writes wait for the reader
			_, _ = c.Write(head.Bytes())
			for _, chunk := range [][]byte{env, payload[:sent]} {
				_, _ = fmt.Fprintf(c, "%x\r\n%s\r\n", len(chunk), chunk)
			}
		}()
		waitFor(t, "the receiver to hold what was sent", func() bool {
			b.tr.partials.mu.Lock()
			defer b.tr.partials.mu.Unlock()
			p := b.tr.partials.bySender[1]
			return p != nil && p.size.Load() == sent
		})

		start := time.Now()
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, b.url+snapshotResumePath, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = snapPeerHeader(1)
		req.Header.Set(headerSnapshotID, id.String())
		resp, err := b.client(t).Do(req)
		if err != nil {
			t.Fatalf("resume query: %v", err)
		}
		resp.Body.Close()
		took := time.Since(start)
		t.Logf("the resume query was answered %v after it was sent, the silent transfer cut off", took)
		if resp.StatusCode != http.StatusNoContent || resp.Header.Get(headerSnapshotOffset) != strconv.Itoa(sent) ||
			resp.Header.Get(headerSnapshotCRC) != crcOf(crc32.Checksum(payload[:sent], snapCRCTable)) {
			t.Errorf("answered %d, offset %q, CRC %q; want 204, %d and the CRC of what was sent", resp.StatusCode,
				resp.Header.Get(headerSnapshotOffset), resp.Header.Get(headerSnapshotCRC), sent)
		}
		if took >= time.Second {
			t.Errorf("answered after %v, want at once (the progress timeout is %v)", took, DefaultSnapshotProgressTimeout)
		}
		if code, _ := snapReadResponse(t, c); code != http.StatusServiceUnavailable {
			t.Errorf("the silent transfer was answered %d, want %d", code, http.StatusServiceUnavailable)
		}
		if got := resumeKept(b.tr, 1); got != sent {
			t.Errorf("the receiver keeps %d bytes, want %d", got, sent)
		}
	})
}

// TestSnapshotResumeGivesUp: a resumable send retries a broken transfer
// while the receiver's copy grows, and gives up once it has not grown for
// the progress timeout: with the receiver gone halfway, the send fails
// the progress timeout after the receiver's last confirmed progress (a
// fraction of a second before it went), having retried until then, and
// raft is told once; a payload that stalls is no network fault, and fails
// the send with ErrSnapshotStalled after the progress timeout, without
// retrying, the receiver keeping what it got.
//
// It runs in a synctest bubble, over a memNet: the timeouts are on the
// bubble's clock.
func TestSnapshotResumeGivesUp(t *testing.T) {
	const (
		progress = 2 * time.Second
		size     = 16 << 20
		rate     = 4 << 20 // the receiver's progress is confirmed every MiB: a quarter of a second
	)
	for _, tc := range []struct {
		name    string
		stall   bool // the payload stalls, rather than the receiver going
		wantErr error
	}{
		{name: "the receiver goes"},
		{name: "the payload stalls", stall: true, wantErr: ErrSnapshotStalled},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				mn := &memNet{}
				a := newNode(t, withID(1), onMemNet(mn), withStore(DirSnapshotStore{Dir: t.TempDir()}),
					withConfig(func(tr *Transport) { tr.SnapshotProgressTimeout, tr.SnapshotSendRate = progress, rate }))
				b := newNode(t, withID(2), onMemNet(mn), withStore(DirSnapshotStore{Dir: t.TempDir()}))
				connect(t, a, b)
				waitFeatures(t, a, 2, featureSnapshotResume)

				limit := int64(size)
				if tc.stall {
					limit = 6 << 20
				}
				gate := newSnapGate(t, newSnapGen(83, size), limit)
				errc := snapSend(a, 2, 12, gate, size)
				waitFor(t, "the receiver to hold 6 MiB", func() bool {
					b.tr.partials.mu.Lock()
					defer b.tr.partials.mu.Unlock()
					p := b.tr.partials.bySender[1]
					return p != nil && p.size.Load() >= 6<<20
				})
				last := time.Now() // the receiver's last progress, within a quarter of a second
				if !tc.stall {
					b.close()
				}
				err := snapWait(t, errc)
				took := time.Since(last)
				t.Logf("gave up %v after the receiver's last progress: %v", took, err)
				if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) {
					t.Fatalf("SendSnapshot yielded %v, want an error (%v)", err, tc.wantErr)
				}
				if took < progress-progress/4 || took > progress+progress/4 {
					t.Errorf("gave up %v after the last progress, want about %v", took, progress)
				}
				if reps := a.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFailure}) {
					t.Errorf("snapshot reports = %v, want one Failure", reps)
				}
				if !gate.isClosed() {
					t.Error("payload not closed")
				}
				if tc.stall {
					waitFor(t, "the receiver to keep the partial payload", func() bool { return resumeKept(b.tr, 1) >= 6<<20 })
				}
			})
		})
	}
}

// resumeSlowStore is a DirSnapshotStore whose partial payloads take perMiB
// per MiB written: a slow disk.
type resumeSlowStore struct {
	DirSnapshotStore
	perMiB time.Duration
}

func (s resumeSlowStore) CreatePartial(m *raftpb.Message) (PartialSnapshot, error) {
	p, err := s.DirSnapshotStore.CreatePartial(m)
	if err != nil {
		return nil, err
	}
	return &resumeSlowPartial{PartialSnapshot: p, perMiB: s.perMiB}, nil
}

type resumeSlowPartial struct {
	PartialSnapshot
	perMiB time.Duration
}

func (p *resumeSlowPartial) Write(b []byte) (int, error) {
	time.Sleep(p.perMiB * time.Duration(len(b)) / (1 << 20)) // the bubble's clock: a disk's pace
	return p.PartialSnapshot.Write(b)
}

// resumeLead is a payload that records how far ahead of the receiver's
// partial payload the sender reads it.
type resumeLead struct {
	r       io.Reader
	read    int64 // only the reading goroutine touches it
	held    func() int64
	maxLead int64
}

func (l *resumeLead) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.read += int64(n)
	l.maxLead = max(l.maxLead, l.read-l.held())
	return n, err
}

func (l *resumeLead) Close() error { return nil }

// TestSnapshotResumeWindow: to a receiver slower than the network, a
// resumable sender reads the payload at most snapshotResumeWindow ahead of
// what the receiver holds, whatever the size of the payload: its replay
// ring, its memory for resuming, never overflows. (On a memNet, whose
// connections buffer nothing, the receiver's 2 MiB read-ahead holds the
// sender back first; through a real network's buffers, the window does:
// the resets of TestSnapshotResume1GiB lose nothing the ring does not
// hold.)
//
// It runs in a synctest bubble, over a memNet, the receiver's disk pacing
// on the bubble's clock.
func TestSnapshotResumeWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := &memNet{}
		const size = 64 << 20
		a := newNode(t, withID(1), onMemNet(mn), withStore(DirSnapshotStore{Dir: t.TempDir()}))
		dir := t.TempDir()
		b := newNode(t, withID(2), onMemNet(mn), withStore(resumeSlowStore{DirSnapshotStore: DirSnapshotStore{Dir: dir}, perMiB: 10 * time.Millisecond}))
		connect(t, a, b)
		waitFeatures(t, a, 2, featureSnapshotResume)

		gen := newSnapGen(84, size)
		payload := &resumeLead{r: gen, held: func() int64 {
			b.tr.partials.mu.Lock()
			defer b.tr.partials.mu.Unlock()
			if p := b.tr.partials.bySender[1]; p != nil {
				return p.size.Load()
			}
			return 0
		}}
		start := time.Now()
		if err := snapWait(t, snapSend(a, 2, 12, payload, size)); err != nil {
			t.Fatalf("SendSnapshot: %v", err)
		}
		t.Logf("%d MiB to a receiver writing 100 MiB/s in %v; the sender read at most %.2f MiB ahead of it (window %d MiB)",
			size>>20, time.Since(start), float64(payload.maxLead)/(1<<20), snapshotResumeWindow>>20)
		if payload.maxLead > snapshotResumeWindow {
			t.Errorf("the sender read %d bytes ahead of the receiver, want at most the window, %d", payload.maxLead, snapshotResumeWindow)
		}
		if n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(12)); n != size || sum != gen.crc {
			t.Errorf("stored %d bytes with CRC %08x, want %d with %08x", n, sum, size, gen.crc)
		}
	})
}

// TestSnapshotResumeThroughResets is TestSnapshotResume1GiB made small,
// for -short: 48 MiB through a link reset after every 8 MiB.
func TestSnapshotResumeThroughResets(t *testing.T) {
	const size, every = 48 << 20, 8 << 20
	proxy, recvAddr := newResumeProxy(t)
	a := newResumeSender(t, true, proxy.URL())
	dir := t.TempDir()
	b := newResumeReceiver(t, dir, recvAddr, a.url)
	waitResumeLinked(t, a, true)
	proxy.ResetEvery(faultnet.ClientToServer, every)
	before := proxy.Stats()
	gen := newSnapGen(85, size)
	if err := snapWait(t, snapSend(a, 2, 12, gen, size)); err != nil {
		t.Fatalf("SendSnapshot: %v", err)
	}
	st := proxy.Stats()
	wire := st.ToServer - before.ToServer
	resumed := metricValue(t, gathered(t, a.tr.metrics.snapResume.sends), "", nil)
	t.Logf("%d resets, %v attempts resumed, %.1f MiB on the wire (%.3fx)", st.Resets, resumed, float64(wire)/(1<<20), float64(wire)/size)
	if st.Resets < size/every-1 || resumed < float64(st.Resets) {
		t.Errorf("%d resets, %v attempts resumed; want at least %d, each resumed", st.Resets, resumed, size/every-1)
	}
	if wire > size*12/10 {
		t.Errorf("%d bytes on the wire, want at most 1.2x the payload", wire)
	}
	if got := metricValue(t, gathered(t, b.tr.metrics.snapResume.receives), "", nil); got != resumed {
		t.Errorf("the receiver counted %v resumed receives, the sender %v", got, resumed)
	}
	if n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(12)); n != size || sum != gen.crc {
		t.Errorf("stored %d bytes with CRC %08x, want %d with %08x", n, sum, size, gen.crc)
	}
	if reps := a.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFinish}) {
		t.Errorf("snapshot reports = %v, want one Finish", reps)
	}
}

// TestSnapshotResumeSenderStopped: stopping a sender in the middle of a
// resumable transfer ends it at once, as it does etcd's POST (the
// outcome on the channel, the payload closed, raft not told), and the
// receiver keeps what it got for the next sender's attempt.
func TestSnapshotResumeSenderStopped(t *testing.T) {
	a := newNode(t, withID(1), withStore(DirSnapshotStore{Dir: t.TempDir()}))
	b := newNode(t, withID(2), withStore(DirSnapshotStore{Dir: t.TempDir()}))
	connect(t, a, b)
	waitFeatures(t, a, 2, featureSnapshotResume)
	const size = 16 << 20
	gate := newSnapGate(t, newSnapGen(86, size), 6<<20)
	errc := snapSend(a, 2, 12, gate, size)
	gate.waitReached(t)
	start := time.Now()
	a.tr.Stop()
	if took := time.Since(start); took >= 2*time.Second {
		t.Errorf("Stop took %v with a resumable transfer in flight, want < 2s", took)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("SendSnapshot yielded nil after Stop, want an error")
		}
	default:
		t.Fatal("SendSnapshot's channel is empty after Stop returned, want the outcome")
	}
	if !gate.isClosed() {
		t.Error("payload not closed after Stop")
	}
	if reps := a.raft.snapshotReports(); len(reps) != 0 {
		t.Errorf("snapshot reports = %v after Stop, want none", reps)
	}
	waitFor(t, "the receiver to keep the partial payload", func() bool { return resumeKept(b.tr, 1) > 0 })
}

// resumeHoldStore is a DirSnapshotStore whose first commit, once done,
// holds on until its request ends (the sender gave up waiting for the
// answer): a slow disk's fsync.
type resumeHoldStore struct {
	DirSnapshotStore
	held *atomic.Bool
}

func (s resumeHoldStore) CreatePartial(m *raftpb.Message) (PartialSnapshot, error) {
	p, err := s.DirSnapshotStore.CreatePartial(m)
	if err != nil {
		return nil, err
	}
	return &resumeHoldPartial{PartialSnapshot: p, held: s.held}, nil
}

type resumeHoldPartial struct {
	PartialSnapshot
	held *atomic.Bool
}

func (p *resumeHoldPartial) Commit(ctx context.Context) error {
	if err := p.PartialSnapshot.Commit(ctx); err != nil {
		return err
	}
	if p.held.CompareAndSwap(false, true) {
		<-ctx.Done()
	}
	return nil
}

// TestSnapshotResumeSavedNotProcessed: when the sender gives up waiting for
// the answer after the whole body (the receiver's disk is slow), the
// receiver saves the payload but cannot give raft the MsgSnap, its request
// over; the sender's next attempt learns from the resume query that the
// whole payload is in, and sends the envelope alone, with which the
// receiver gives raft the MsgSnap, once.
func TestSnapshotResumeSavedNotProcessed(t *testing.T) {
	const progress = 300 * time.Millisecond
	dir := t.TempDir()
	var held atomic.Bool
	a := newNode(t, withID(1), withStore(DirSnapshotStore{Dir: t.TempDir()}), withConfig(func(tr *Transport) { tr.SnapshotProgressTimeout = progress }))
	b := newNode(t, withID(2), withStore(resumeHoldStore{DirSnapshotStore: DirSnapshotStore{Dir: dir}, held: &held}))
	connect(t, a, b)
	waitFeatures(t, a, 2, featureSnapshotResume)

	const size = 1 << 20
	gen := newSnapGen(87, size)
	if err := snapWait(t, snapSend(a, 2, 12, gen, size)); err != nil {
		t.Fatalf("SendSnapshot: %v", err)
	}
	if !held.Load() {
		t.Fatal("the store's commit did not hold on: the case was not played")
	}
	checkResumedWhole(t, a, b, size)
	if n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(12)); n != size || sum != gen.crc {
		t.Errorf("stored %d bytes with CRC %08x, want %d with %08x", n, sum, size, gen.crc)
	}
	if got := resumeKept(b.tr, 1); got != 0 {
		t.Errorf("the receiver still keeps %d bytes for the sender, want nothing", got)
	}
}

// TestPeerIdentityResumeRoute: with PeerIdentity set, GET
// /raft/snapshot/resume goes through the identity check of the other raft
// routes: a certificate cannot ask about, or cut off, another member's
// transfer; refusals count under the snapshot route.
func TestPeerIdentityResumeRoute(t *testing.T) {
	m := newMsg(raftpb.MsgSnap, htPeerID, htLocalID, 12)
	id := newSnapshotID(m, appendMessageFrame(nil, m), 1<<20)
	for _, tc := range []struct {
		name       string
		from       uint64 // X-Server-From
		wantCode   int
		wantReason string
	}{
		{name: "the certificate's member", from: htPeerID, wantCode: http.StatusNoContent},
		{name: "another member", from: htStranger, wantCode: http.StatusForbidden, wantReason: identityMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			tr, _ := newNode(t, htLocal(), withRegisterer(reg), withStore(&memStore{}), withConfig(func(tr *Transport) {
				tr.PeerIdentity = IdentityFromURISAN(idPrefix)
			})).parts()
			req := httptest.NewRequest(http.MethodGet, snapshotResumePath, nil)
			req.Header = htHeaders(htSnapshot)
			req.Header.Set("X-Server-From", formatID(tc.from))
			req.Header.Set("X-Rafthttp-Features", oursAnnounce)
			req.Header.Set(headerSnapshotID, id.String())
			cert := &x509.Certificate{URIs: []*url.URL{memberURI(t, htPeerID)}}
			req.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}, VerifiedChains: [][]*x509.Certificate{{cert}}}
			rec := httptest.NewRecorder()
			tr.Handler().ServeHTTP(rec, req)
			if rec.Code != tc.wantCode {
				t.Fatalf("status %d, want %d (body %q)", rec.Code, tc.wantCode, rec.Body.String())
			}
			if tc.wantReason == "" {
				return
			}
			if got := metricValue(t, reg, "rafthttp_peer_identity_refused_total", map[string]string{"Route": identityRouteSnapshot, "Reason": tc.wantReason}); got != 1 {
				t.Errorf("rafthttp_peer_identity_refused_total{Route=snapshot,Reason=%s} = %v, want 1", tc.wantReason, got)
			}
		})
	}
}

// TestSnapshotResumeAnswerLost: the connection of a resumable transfer
// breaks after the receiver's raft got the MsgSnap, before the sender read
// the answer. The sender's next attempt learns from the resume query that
// the receiver has the whole payload, and the receiver answers it without
// handing raft the MsgSnap again: one SendSnapshot, one MsgSnap processed,
// one Finish. (The robustness suite found it: the payload was sent again
// from zero and raft got the MsgSnap twice, or, beyond the replay ring, the
// send failed and raft sent the whole snapshot again.)
func TestSnapshotResumeAnswerLost(t *testing.T) {
	tests := []struct {
		name string
		size int64
	}{
		{name: "within the replay ring", size: 256 << 10},
		{name: "beyond the replay ring", size: snapshotResumeWindow + 2<<20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var lost atomic.Bool
			loseAnswer := func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path != RaftSnapshotPrefix || r.Header.Get(headerSnapshotID) == "" || !lost.CompareAndSwap(false, true) {
						h.ServeHTTP(w, r)
						return
					}
					h.ServeHTTP(&mutedResponse{ResponseWriter: w, header: http.Header{}}, r)
					panic(http.ErrAbortHandler) // the connection breaks: the answer is lost
				})
			}
			a := newNode(t, withID(1), withStore(DirSnapshotStore{Dir: t.TempDir()}))
			b := newNode(t, withID(2), withStore(DirSnapshotStore{Dir: t.TempDir()}), wrapHandler(loseAnswer))
			connect(t, a, b)
			waitFeatures(t, a, 2, featureSnapshotResume)

			gen := newSnapGen(91, tc.size)
			if err := snapWait(t, snapSend(a, 2, 12, gen, tc.size)); err != nil {
				t.Fatalf("SendSnapshot: %v", err)
			}
			if !lost.Load() {
				t.Fatal("no answer was lost: the case was not played")
			}
			checkResumedWhole(t, a, b, tc.size)
		})
	}
}

// checkResumedWhole checks the end of a send from a to b of the snapshot
// at index 12 whose second attempt found the whole payload in: one Finish
// reported, raft at b given the MsgSnap exactly once, and the attempt
// counted as resuming all size bytes.
func checkResumedWhole[N int | int64](t *testing.T, a, b *testNode, size N) {
	t.Helper()
	if reps := a.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFinish}) {
		t.Errorf("snapshot reports = %v, want one Finish", reps)
	}
	if got := b.raft.recv(t); got.GetType() != raftpb.MsgSnap || got.GetSnapshot().GetMetadata().GetIndex() != 12 {
		t.Errorf("raft got %v, want the MsgSnap at index 12", got)
	}
	if snaps := snapProcessed(b); len(snaps) != 0 {
		t.Errorf("raft got %d more MsgSnaps, want the one", len(snaps))
	}
	if resumed := metricValue(t, gathered(t, a.tr.metrics.snapResume.savedBytes), "", nil); resumed != float64(size) {
		t.Errorf("the resumed attempt skipped %v bytes, want the whole payload, %d", resumed, size)
	}
}

// mutedResponse swallows a handler's answer: status, body and flushes.
type mutedResponse struct {
	http.ResponseWriter
	header http.Header
}

func (w *mutedResponse) Header() http.Header         { return w.header }
func (w *mutedResponse) WriteHeader(int)             {}
func (w *mutedResponse) Write(p []byte) (int, error) { return len(p), nil }
func (w *mutedResponse) FlushError() error           { return nil }
func (w *mutedResponse) Unwrap() http.ResponseWriter { return w.ResponseWriter }
