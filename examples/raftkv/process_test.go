package main

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/raftkit/rafthttp/internal/proctest"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The process helpers are shared with examples/raftexample.
var (
	freePorts = proctest.FreePorts
	waitFor   = proctest.WaitFor
	do        = proctest.Do
)

// proc is one raftkv process.
type proc = proctest.Proc

// buildBinary builds raftkv into a temporary directory.
func buildBinary(t *testing.T) string { return proctest.Build(t, "raftkv", false) }

// startProc starts bin with args, logging to logPath (appended to).
func startProc(t *testing.T, bin, logPath string, args ...string) *proc {
	return proctest.Start(t, bin, "", logPath, args...)
}

// put writes key=value through the API at api, retrying until the member
// accepts it (there may be no leader yet, or an election under way).
func put(t *testing.T, api, key, value string) {
	t.Helper()
	var code int
	var body string
	waitFor(t, 30*time.Second, func() string {
		return fmt.Sprintf("PUT %s/%s to succeed (last answer: %d %q)", api, key, code, body)
	}, func() bool {
		code, body = do(http.MethodPut, api+"/"+key, value)
		return code == http.StatusNoContent
	})
}

// waitValue waits until the API at api serves key with value.
func waitValue(t *testing.T, api, key, value string) {
	t.Helper()
	var code int
	var body string
	waitFor(t, 30*time.Second, func() string {
		return fmt.Sprintf("GET %s/%s to return %q (last answer: %d %q)", api, key, value, code, body)
	}, func() bool {
		code, body = do(http.MethodGet, api+"/"+key, "")
		return code == http.StatusOK && body == value
	})
}

// TestMultiProcess runs three raftkv processes on loopback, writes through
// one and reads from the others, kills one with SIGKILL, writes while it is
// down, restarts it on its data dir and checks that it serves everything,
// what was written before and while it was down; that --cluster-id and
// --snapshot-count took effect; then it stops them all with SIGTERM, which
// must end each with status 0.
func TestMultiProcess(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 6)
	var urls []string
	for i := range 3 {
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", ports[i]))
	}
	cluster := strings.Join(urls, ",")
	api := func(i int) string { return fmt.Sprintf("http://127.0.0.1:%d", ports[3+i]) }
	args := func(i int) []string {
		return []string{"--id", strconv.Itoa(i + 1), "--cluster", cluster, "--port", strconv.Itoa(ports[3+i]),
			"--data-dir", filepath.Join(dir, fmt.Sprintf("data-%d", i+1)), "--tick", "50ms",
			"--cluster-id", "0x2a", "--snapshot-count", "20"}
	}
	logOf := func(i int) string { return filepath.Join(dir, fmt.Sprintf("member-%d.log", i+1)) }
	procs := make([]*proc, 3)
	for i := range procs {
		procs[i] = startProc(t, bin, logOf(i), args(i)...)
	}
	defer func() {
		if t.Failed() {
			for i, p := range procs {
				t.Logf("member %d output:\n%s", i+1, p.Output())
			}
		}
	}()

	put(t, api(0), "before", "written before the crash")
	for i := range 3 {
		waitValue(t, api(i), "before", "written before the crash")
	}

	if err := procs[2].Kill(syscall.SIGKILL); err == nil {
		t.Fatalf("member 3 after SIGKILL: got a clean exit, want killed")
	}
	const n = 20
	for k := range n {
		put(t, api(k%2), fmt.Sprintf("down-%02d", k), fmt.Sprintf("written while member 3 was down, %d", k))
	}
	waitValue(t, api(1), "down-00", "written while member 3 was down, 0")

	// Restart on the same data dir and ports. A port may be held for a
	// moment by another connection: start again until it is bound.
	waitFor(t, 30*time.Second, func() string { return "member 3 to restart" }, func() bool {
		procs[2] = startProc(t, bin, logOf(2), args(2)...)
		ok := true
		waitFor(t, 10*time.Second, func() string { return "member 3 to serve or exit" }, func() bool {
			select {
			case <-procs[2].Exited():
				ok = false
				return true
			default:
			}
			code, _ := do(http.MethodGet, api(2)+"/before", "")
			return code != 0
		})
		return ok
	})
	if out := procs[2].Output(); !strings.Contains(out, "member 3: restarting from data dir") {
		t.Errorf("restarted member 3 logged %q, want it to restart from its data dir", out)
	}
	for k := range n {
		waitValue(t, api(2), fmt.Sprintf("down-%02d", k), fmt.Sprintf("written while member 3 was down, %d", k))
	}
	waitValue(t, api(2), "before", "written before the crash")

	// The restarted member takes writes too (raft forwards them).
	put(t, api(2), "after", "written through the restarted member")
	for i := range 3 {
		waitValue(t, api(i), "after", "written through the restarted member")
	}

	// The flags reached the members: the transport answers with the
	// cluster ID given, and the 20 writes made each member snapshot,
	// which the default count, 1,000, would not.
	resp, err := proctest.HTTPClient.Post(urls[0]+"/raft", "application/protobuf", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("X-Etcd-Cluster-ID"); got != "2a" {
		t.Errorf("member 1 answers with cluster ID %q, want 2a (--cluster-id 0x2a)", got)
	}
	for i := range 3 {
		if snaps, _ := filepath.Glob(filepath.Join(dir, fmt.Sprintf("data-%d", i+1), "snap", "*.snap.db")); len(snaps) == 0 {
			t.Errorf("member %d made no snapshot; want one every 20 entries (--snapshot-count 20)", i+1)
		}
	}

	for i, p := range procs {
		if err := p.Kill(syscall.SIGTERM); err != nil {
			t.Errorf("member %d after SIGTERM: %v, want exit status 0", i+1, err)
		}
	}
}

// TestBadInput runs the binary with bad command lines and data dirs: each
// must fail with one line on stderr, naming the problem, and a non-zero
// exit status; never a stack trace.
func TestBadInput(t *testing.T) {
	bin := buildBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 2)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	port := strconv.Itoa(ports[1])
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := strconv.Itoa(busy.Addr().(*net.TCPAddr).Port)

	mkdir := func(name string) string {
		d := filepath.Join(dir, name)
		if err := os.MkdirAll(d, 0o750); err != nil {
			t.Fatal(err)
		}
		return d
	}
	garbage := mkdir("garbage")
	if err := os.WriteFile(filepath.Join(garbage, dbFile), []byte("this is not a bolt database\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// Valid databases with content no member could have written.
	withStorage := func(name string, f func(s *diskStorage) error) string {
		d := mkdir(name)
		s, err := openStorage(filepath.Join(d, dbFile))
		if err != nil {
			t.Fatal(err)
		}
		defer s.close()
		if err := f(s); err != nil {
			t.Fatal(err)
		}
		return d
	}
	otherMember := withStorage("other", func(s *diskStorage) error { return s.setID(2) })
	badLog := withStorage("badlog", func(s *diskStorage) error {
		return s.save(&raftpb.HardState{Term: proto.Uint64(2), Commit: proto.Uint64(10)}, nil, nil)
	})

	member := func(extra ...string) []string {
		return append([]string{"--id", "1", "--cluster", peerURL, "--port", port}, extra...)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
		code int
	}{
		{"unknown flag", []string{"--bogus"}, "flag provided but not defined: -bogus", 2},
		{"no flags", nil, "--id is required", 2},
		{"id not in cluster", []string{"--id", "4", "--cluster", peerURL + ",http://127.0.0.1:1,http://127.0.0.1:2", "--port", port},
			"--id 4 is not in --cluster, which lists members 1 to 3", 2},
		{"cluster URL without scheme", []string{"--id", "1", "--cluster", "127.0.0.1:1", "--port", port}, "is not a peer URL", 2},
		{"no port", []string{"--id", "1", "--cluster", peerURL}, "--port 0", 2},
		{"unexpected argument", member("extra"), `unexpected argument "extra"`, 2},
		{"API port in use", []string{"--id", "1", "--cluster", peerURL, "--port", busyPort, "--data-dir", mkdir("p1")}, "address already in use", 1},
		{"peer port in use", []string{"--id", "1", "--cluster", "http://127.0.0.1:" + busyPort, "--port", port, "--data-dir", mkdir("p2")},
			"address already in use", 1},
		{"garbage database", member("--data-dir", garbage), "not a valid raftkv database (invalid database): the data dir is corrupt", 1},
		{"data dir is a file", member("--data-dir", notDir), "is not a directory", 1},
		{"data dir of another member", member("--data-dir", otherMember), "belongs to member 2, not 1", 1},
		{"log contradicts HardState", member("--data-dir", badLog), "commit index 10 outside the log [0, 0]: the data dir is corrupt", 1},
		{"cluster ID not a number", member("--cluster-id", "kv"), `invalid value "kv" for flag -cluster-id: want a number, decimal or 0x hex`, 2},
		{"cluster ID zero", member("--cluster-id", "0x0"), "--cluster-id 0: want a non-zero ID", 2},
		{"snapshot count zero", member("--snapshot-count", "0"), "--snapshot-count 0: want at least 1", 2},
		{"demo with bad keys", []string{"demo", "--keys", "many"}, `invalid value "many" for flag -keys`, 2},
		{"demo with too few keys", []string{"demo", "--keys", "10"}, "--keys 10: want at least 100", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(bin, tc.args...)
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("got %v, want exit status %d", err, tc.code)
			}
			if got := ee.ExitCode(); got != tc.code {
				t.Errorf("got exit status %d, want %d", got, tc.code)
			}
			msg := stderr.String()
			if lines := strings.Count(strings.TrimSuffix(msg, "\n"), "\n") + 1; lines != 1 || !strings.HasSuffix(msg, "\n") {
				t.Errorf("got %d lines on stderr, want 1: %q", lines, msg)
			}
			if !strings.HasPrefix(msg, "raftkv: ") || !strings.Contains(msg, tc.want) {
				t.Errorf("got stderr %q, want a line starting with \"raftkv: \" containing %q", msg, tc.want)
			}
			if strings.Contains(msg, "goroutine ") || strings.Contains(msg, "panic") {
				t.Errorf("got a stack trace: %q", msg)
			}
			if stdout.Len() != 0 {
				t.Errorf("got stdout %q, want nothing", stdout.String())
			}
		})
	}
}
