package main

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raftkit/rafthttp/internal/proctest"
)

// The process helpers are shared with examples/raftkv.
var (
	freePorts = proctest.FreePorts
	waitFor   = proctest.WaitFor
	startProc = proctest.Start
	do        = proctest.Do
)

// proc is one raftexample process.
type proc = proctest.Proc

// buildBinary builds raftexample, with the race detector when the tests
// have it, so that the processes are checked too.
func buildBinary(t *testing.T) string { return proctest.Build(t, "raftexample", raceEnabled) }

// writeTimeout bounds how long a write may take to become visible.
const writeTimeout = 30 * time.Second

// putAll writes every key through the API at api and waits until that
// member serves them all. A raftexample PUT answers before its proposal is
// committed, and a proposal caught in an election is lost, so each missing
// key is written again every few seconds, as a client of raftexample must.
func putAll(t *testing.T, api string, kvs map[string]string) {
	t.Helper()
	missing := map[string]bool{}
	for k := range kvs {
		missing[k] = true
	}
	var lastPut time.Time
	var code int
	var body string
	waitFor(t, writeTimeout, func() string {
		return fmt.Sprintf("%d keys written through %s to be served (last PUT answer: %d %q)", len(missing), api, code, body)
	}, func() bool {
		if time.Since(lastPut) > 3*time.Second {
			for k := range missing {
				if code, body = do(http.MethodPut, api+"/"+k, kvs[k]); code != http.StatusNoContent {
					break
				}
			}
			lastPut = time.Now()
		}
		for k := range missing {
			if c, v := do(http.MethodGet, api+"/"+k, ""); c == http.StatusOK && v == kvs[k] {
				delete(missing, k)
			}
		}
		return len(missing) == 0
	})
}

// waitAll waits until the API at api serves every key with its value.
func waitAll(t *testing.T, api string, kvs map[string]string) {
	t.Helper()
	var key, got string
	waitFor(t, writeTimeout, func() string {
		return fmt.Sprintf("%s to serve every key (/%s: got %q, want %q)", api, key, got, kvs[key])
	}, func() bool {
		for k, v := range kvs {
			var code int
			if code, got = do(http.MethodGet, api+"/"+k, ""); code != http.StatusOK || got != v {
				key = k
				return false
			}
		}
		return true
	})
}

// keys returns n key-value pairs named prefix-i.
func keys(prefix string, n int) map[string]string {
	kvs := map[string]string{}
	for i := range n {
		kvs[fmt.Sprintf("%s-%02d", prefix, i)] = fmt.Sprintf("value %d of %s", i, prefix)
	}
	return kvs
}

// merge returns the union of maps.
func merge(ms ...map[string]string) map[string]string {
	all := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			all[k] = v
		}
	}
	return all
}

// What a member logs as it opens and replays its write-ahead log.
var (
	openedRE   = regexp.MustCompile(`opening the write-ahead log of member \d+ at snapshot (\d+)`)
	replayedRE = regexp.MustCompile(`replayed the write-ahead log of member \d+: (\d+) entries, term (\d+), commit (\d+)`)
)

// TestCluster runs raftexample as etcd's README does, one process per
// member on loopback: three members; writes; member 3 killed with SIGKILL;
// writes while it is down, enough for the others to snapshot and compact
// past it; member 3 restarted on its data directories, catching up through
// a snapshot sent with Transport.SendSnapshot; every key read back from
// every member; member 4 added with POST /4 and started with --join, caught
// up through a snapshot too; and removed with DELETE /4, after which it
// stops.
func TestCluster(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 8) // peer and API ports of members 1 to 4
	peerURL := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", ports[2*(i-1)]) }
	api := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", ports[2*(i-1)+1]) }
	var urls []string
	for i := 1; i <= 4; i++ {
		urls = append(urls, peerURL(i))
	}
	// Small snapshot figures, so that a few dozen writes make the members
	// snapshot and compact their logs.
	args := func(i int, extra ...string) []string {
		return append([]string{"--id", strconv.Itoa(i), "--cluster", strings.Join(urls[:max(i, 3)], ","),
			"--port", strconv.Itoa(ports[2*(i-1)+1]), "--snapshot-count", "10", "--snapshot-catchup-entries", "3"}, extra...)
	}
	logOf := func(i int) string { return filepath.Join(dir, fmt.Sprintf("member-%d.log", i)) }
	procs := map[int]*proc{}
	start := func(i int, extra ...string) { procs[i] = startProc(t, bin, dir, logOf(i), args(i, extra...)...) }
	defer func() {
		for i := 1; i <= 4; i++ {
			if p := procs[i]; p != nil && strings.Contains(p.Output(), "WARNING: DATA RACE") {
				t.Errorf("member %d reported a data race", i)
			}
		}
		if t.Failed() || os.Getenv("RAFTEXAMPLE_TEST_LOGS") != "" {
			for i := 1; i <= 4; i++ {
				if p := procs[i]; p != nil {
					t.Logf("member %d output:\n%s", i, p.Output())
				}
			}
		}
	}()
	for i := 1; i <= 3; i++ {
		start(i)
	}

	// Enough for every member to make a snapshot of its own, so that
	// member 3 restarts from one.
	before := keys("before", 15)
	putAll(t, api(1), before)
	for i := 1; i <= 3; i++ {
		waitAll(t, api(i), before)
	}

	// Member 3 has applied them all; once its snapshot is done (it logs
	// the compaction that follows), kill it.
	waitFor(t, writeTimeout, func() string { return "member 3 to snapshot" }, func() bool {
		return strings.Contains(procs[3].Output(), "compacted the log up to entry")
	})
	if err := procs[3].Kill(syscall.SIGKILL); err == nil {
		t.Fatal("member 3 after SIGKILL: got a clean exit, want killed")
	}
	down1, down2 := keys("down-through-1", 20), keys("down-through-2", 20)
	putAll(t, api(1), down1)
	putAll(t, api(2), down2)

	// Restart on the same data directories and ports. Should a port still
	// be held for a moment, the process exits: start it again.
	waitFor(t, writeTimeout, func() string { return "member 3 to restart" }, func() bool {
		start(3)
		served := true
		waitFor(t, 10*time.Second, func() string { return "member 3 to serve or exit" }, func() bool {
			select {
			case <-procs[3].Exited():
				served = false
				return true
			default:
			}
			code, _ := do(http.MethodGet, api(3)+"/before-00", "")
			return code != 0
		})
		return served
	})
	all := merge(before, down1, down2)
	waitAll(t, api(3), all)
	out3 := procs[3].Output()
	if m := openedRE.FindAllStringSubmatch(out3, -1); len(m) < 2 || m[len(m)-1][1] == "0" {
		t.Errorf("member 3 opened its log at %q, want it to restart from a snapshot of its own", m)
	}
	if m := replayedRE.FindAllStringSubmatch(out3, -1); len(m) < 2 || m[len(m)-1][2] == "0" {
		t.Errorf("member 3 logged replays %q, want the last one, after the restart, to find the term it had", m)
	}
	if !strings.Contains(out3, "received from the leader") {
		t.Errorf("member 3 did not log a snapshot received from the leader; want it to catch up through one")
	}
	if !strings.Contains(procs[1].Output()+procs[2].Output(), "to member 3") {
		t.Errorf("neither member 1 nor 2 logged sending a snapshot to member 3")
	}
	// The restarted member takes writes too: raft forwards them.
	after := keys("after", 3)
	putAll(t, api(3), after)
	all = merge(all, after)
	for i := 1; i <= 3; i++ {
		waitAll(t, api(i), all)
	}

	// Add member 4, then start it. A POST answers before the conf change
	// is committed, so it is repeated until member 4 catches up.
	waitFor(t, writeTimeout, func() string { return "member 4 to join" }, func() bool {
		if code, body := do(http.MethodPost, api(1)+"/4", peerURL(4)); code != http.StatusNoContent {
			t.Fatalf("POST /4: got %d %q, want 204", code, body)
		}
		if procs[4] == nil {
			start(4, "--join")
		}
		timer := time.NewTimer(10 * time.Second)
		defer timer.Stop()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			if code, _ := do(http.MethodGet, api(4)+"/after-00", ""); code == http.StatusOK {
				return true
			}
			select {
			case <-timer.C:
				return false // the POST may have been lost: again
			case <-procs[4].Exited():
				t.Fatalf("member 4 exited: %v", procs[4].Err())
			case <-tick.C:
			}
		}
	})
	waitAll(t, api(4), all)
	if !strings.Contains(procs[4].Output(), "received from the leader") {
		t.Errorf("member 4 did not log a snapshot received from the leader; want it to join through one")
	}
	// Member 4 takes writes, and every member serves them.
	joined := keys("joined", 3)
	putAll(t, api(4), joined)
	all = merge(all, joined)
	for i := 1; i <= 4; i++ {
		waitAll(t, api(i), all)
	}

	// Remove member 4: it learns it, by applying the conf change or from
	// the others' refusal (410), and stops.
	if code, body := do(http.MethodDelete, api(2)+"/4", ""); code != http.StatusNoContent {
		t.Fatalf("DELETE /4: got %d %q, want 204", code, body)
	}
	procs[4].Wait(writeTimeout)
	if out := procs[4].Output(); !strings.Contains(out, "removed") {
		t.Errorf("member 4 exited without saying it was removed")
	}
	put := map[string]string{"after-removal": "written by three members"}
	putAll(t, api(1), put)
	for i := 1; i <= 3; i++ {
		waitAll(t, api(i), put)
	}
}
