package proctest

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestFreePorts: the ports differ and can be listened on.
func TestFreePorts(t *testing.T) {
	ports := FreePorts(t, 3)
	seen := map[int]bool{}
	for _, p := range ports {
		if p == 0 || seen[p] {
			t.Fatalf("ports %v: want three distinct non-zero ports", ports)
		}
		seen[p] = true
	}
}

// TestDo: the status and body of an answer; status 0 when nothing listens.
func TestDo(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		w.Write([]byte(r.Method))
	}))
	defer srv.Close()
	if code, body := Do(http.MethodPut, srv.URL, "x"); code != http.StatusTeapot || body != http.MethodPut {
		t.Errorf("got %d %q, want 418 %q", code, body, http.MethodPut)
	}
	if code, _ := Do(http.MethodGet, "http://127.0.0.1:1/", ""); code != 0 {
		t.Errorf("got status %d from a closed port, want 0", code)
	}
}

// TestProc runs this test binary as a child: it logs to its file, exits on
// its own (Wait) or on a signal (Kill).
func TestProc(t *testing.T) {
	if os.Getenv("PROCTEST_CHILD") == "sleep" {
		time.Sleep(time.Minute) // the child: waits to be killed
		return
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	t.Run("exits", func(t *testing.T) {
		p := Start(t, self, "", filepath.Join(dir, "a.log"), "-test.run=^$")
		if err := p.Wait(30 * time.Second); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		if out := p.Output(); !strings.Contains(out, "PASS") {
			t.Errorf("output %q, want PASS in it", out)
		}
	})
	t.Run("killed", func(t *testing.T) {
		t.Setenv("PROCTEST_CHILD", "sleep")
		p := Start(t, self, "", filepath.Join(dir, "b.log"), "-test.run=^TestProc$")
		if err := p.Kill(syscall.SIGKILL); err == nil {
			t.Fatal("Kill: got nil, want the error of a killed process")
		}
	})
	WaitFor(t, time.Second, func() string { return "true" }, func() bool { return true })
}
