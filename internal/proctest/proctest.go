// Package proctest runs the example programs as processes for their tests:
// it builds a binary, starts it with its output in a file, stops it with a
// signal, and talks HTTP to it. examples/raftkv and examples/raftexample
// share it (Go's internal rule lets the nested modules import it).
package proctest

import (
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Build builds the main package in the current directory into a temporary
// directory, as name, with the race detector if race is set (so that the
// processes are checked too), and returns its path. It skips the test if
// there is no go tool.
func Build(t testing.TB, name string, race bool) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to build the binary: %v", err)
	}
	bin := filepath.Join(t.TempDir(), name)
	args := []string{"build", "-o", bin}
	if race {
		args = append(args, "-race")
	}
	out, err := exec.Command(goTool, append(args, ".")...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// FreePorts returns n distinct ports that were free on 127.0.0.1.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close() // held until all are chosen, so that they differ
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// WaitFor polls cond every 20 ms until it holds, failing the test after
// timeout with what() describing what was awaited and last seen.
func WaitFor(t testing.TB, timeout time.Duration, what func() string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("timed out after %v waiting for %s", timeout, what())
		case <-tick.C:
		}
	}
}

// Proc is a running program, logging to a file, so that no goroutine of
// the test copies its output.
type Proc struct {
	t      testing.TB
	cmd    *exec.Cmd
	log    string
	exited chan struct{}
	err    error // Wait's, once exited is closed
}

// Start starts bin with args in dir ("" for the test's own directory), its
// output appended to logPath. The process is killed, and waited for, at
// the end of the test.
func Start(t testing.TB, bin, dir, logPath string, args ...string) *Proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := &Proc{t: t, cmd: exec.Command(bin, args...), log: logPath, exited: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
	})
	return p
}

// Wait waits up to timeout for the process to exit and returns Wait's
// error; the test fails if it does not exit.
func (p *Proc) Wait(timeout time.Duration) error {
	p.t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.exited:
		return p.err
	case <-timer.C:
		p.t.Fatalf("process did not exit within %v", timeout)
		return nil
	}
}

// Kill sends sig and waits up to 30 s for the process to exit.
func (p *Proc) Kill(sig os.Signal) error {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Fatal(err)
	}
	return p.Wait(30 * time.Second)
}

// Exited is closed once the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Err is the process's exit error (Wait's), once Exited is closed.
func (p *Proc) Err() error { return p.err }

// Output returns what the process has logged so far.
func (p *Proc) Output() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// HTTPClient opens a connection per request, so that no idle connection
// (and its goroutines) outlives a test.
var HTTPClient = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Do makes a request and returns the status and body; status 0 and the
// error's text on a failure to connect.
func Do(method, url, body string) (int, string) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return 0, err.Error()
	}
	resp, err := HTTPClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
