package rafthttp

import (
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// probeReadTimeout gives a probe interval of 100 ms: max(300ms - 1s, 100ms).
const probeReadTimeout = 300 * time.Millisecond

// observedLogger returns a logger whose Info and higher entries can be
// inspected.
func observedLogger() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.InfoLevel)
	return zap.New(core), logs
}

// waitLog waits for an entry with msg that satisfies keep (nil: any), and
// returns it.
func waitLog(t *testing.T, logs *observer.ObservedLogs, msg string, keep func(observer.LoggedEntry) bool) observer.LoggedEntry {
	t.Helper()
	var found observer.LoggedEntry
	waitFor(t, fmt.Sprintf("log %q", msg), func() bool {
		for _, e := range logs.FilterMessage(msg).All() {
			if keep == nil || keep(e) {
				found = e
				return true
			}
		}
		return false
	})
	return found
}

func roundTripper(name string) func(observer.LoggedEntry) bool {
	return func(e observer.LoggedEntry) bool { return e.ContextMap()["round-tripper-name"] == name }
}

func TestProbingRTT(t *testing.T) {
	reg := newObsRegisterer()
	a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.Registerer = reg; tr.ConnReadTimeout = probeReadTimeout }))
	b := newNode(t, withID(2), withConfig(func(tr *Transport) { tr.ConnReadTimeout = probeReadTimeout }))
	connect(t, a, b)

	var st PeerStats
	waitFor(t, "a healthy probe with an RTT", func() bool {
		st, _ = a.tr.PeerStatus(2)
		return st.RTT > 0 && st.ProbeHealthy
	})
	if st.RTT > time.Second {
		t.Errorf("RTT over loopback = %v, want well under a second", st.RTT)
	}
	// Same clock on both ends: the difference is within the probe's RTT.
	if d := st.ClockDifference; d < -250*time.Millisecond || d > 250*time.Millisecond {
		t.Errorf("ClockDifference = %v, want about 0", d)
	}
	t.Logf("loopback probe RTT %v, clock difference %v", st.RTT, st.ClockDifference)

	to2 := map[string]string{"To": "2"}
	count := waitMetric(t, reg, "etcd_network_peer_round_trip_time_seconds", to2, "to have samples", above(0))
	h := obsSeries(t, reg, "etcd_network_peer_round_trip_time_seconds", to2).GetHistogram()
	if mean := h.GetSampleSum() / float64(h.GetSampleCount()); mean <= 0 || mean > 1 {
		t.Errorf("mean RTT observed = %vs (%v samples), want in (0, 1]", mean, count)
	}
	// Probes continue: more samples arrive.
	waitMetric(t, reg, "etcd_network_peer_round_trip_time_seconds", to2, "to grow", above(float64(h.GetSampleCount())))
}

func TestProbingUnhealthy(t *testing.T) {
	tests := []struct {
		name string
		// peerURL returns the peer's URL; down, if not nil, takes the peer
		// down once a has seen it active.
		peerURL func(t *testing.T) (url string, down func())
	}{
		{
			name: "dead address",
			peerURL: func(t *testing.T) (string, func()) {
				return "http://" + freeAddr(t), nil
			},
		},
		{
			name: "server closed",
			peerURL: func(t *testing.T) (string, func()) {
				b := newNode(t, withID(2), withConfig(func(tr *Transport) { tr.ConnReadTimeout = probeReadTimeout }))
				if err := b.tr.AddPeer(1, []string{"http://" + freeAddr(t)}); err != nil {
					t.Fatal(err)
				}
				return b.url, b.close
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lg, logs := observedLogger()
			url, down := tt.peerURL(t)
			a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.Logger = lg; tr.ConnReadTimeout = probeReadTimeout }))
			if err := a.tr.AddPeer(2, []string{url}); err != nil {
				t.Fatal(err)
			}
			if down != nil {
				waitFor(t, "peer 2 to become active", func() bool { return !a.tr.ActiveSince(2).IsZero() })
				down()
				waitLog(t, logs, "peer became inactive (message send to peer failed)", nil)
			}
			for _, name := range []string{roundTripperNameRaftMessage, roundTripperNameSnapshot} {
				e := waitLog(t, logs, "prober detected unhealthy status", roundTripper(name))
				if e.Level != zapcore.WarnLevel {
					t.Errorf("%s: logged at %v, want warn", name, e.Level)
				}
				if _, ok := e.ContextMap()["error"]; !ok {
					t.Errorf("%s: warning without the probe error: %v", name, e.ContextMap())
				}
			}
			st, ok := a.tr.PeerStatus(2)
			if !ok {
				t.Fatal("PeerStatus(2) not found")
			}
			if st.Active || !st.ActiveSince.IsZero() || st.ProbeHealthy {
				t.Errorf("got Active %v, ActiveSince %v, ProbeHealthy %v; want inactive, zero, unhealthy",
					st.Active, st.ActiveSince, st.ProbeHealthy)
			}
			if st.LastError == nil {
				t.Error("LastError is nil, want why the peer is inactive")
			}
			if n := logs.FilterMessage("prober found high clock drift").Len(); n != 0 {
				t.Errorf("%d clock drift warnings for a peer that never answered, want 0", n)
			}
		})
	}
}

// fakeProbingPeer serves /raft/probing with a clock offset from ours, and
// nothing else.
func fakeProbingPeer(t *testing.T, offset time.Duration) string {
	t.Helper()
	srv := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != ProbingPrefix {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"OK":true,"Now":%q}`, time.Now().Add(offset).Format(time.RFC3339Nano))
	})
	return srv.URL
}

func TestProbingClockDrift(t *testing.T) {
	tests := []struct {
		name      string
		offset    time.Duration // the peer's clock minus ours
		wantDrift time.Duration // ClockDifference: our clock minus the peer's
		warn      bool
	}{
		{"peer behind", -2 * time.Second, 2 * time.Second, true},
		// etcd warns only when the peer is behind; we warn both ways.
		{"peer ahead", 2 * time.Second, -2 * time.Second, true},
		{"in sync", 0, 0, false},
	}
	const tolerance = 250 * time.Millisecond
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lg, logs := observedLogger()
			url := fakeProbingPeer(t, tt.offset)
			a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.Logger = lg; tr.ConnReadTimeout = probeReadTimeout }))
			if err := a.tr.AddPeer(2, []string{url}); err != nil {
				t.Fatal(err)
			}
			var st PeerStats
			waitFor(t, "healthy probes", func() bool {
				st, _ = a.tr.PeerStatus(2)
				return st.ProbeHealthy && st.RTT > 0
			})
			if d := st.ClockDifference - tt.wantDrift; d < -tolerance || d > tolerance {
				t.Errorf("ClockDifference = %v, want %v ± %v", st.ClockDifference, tt.wantDrift, tolerance)
			}
			if !tt.warn {
				return
			}
			for _, name := range []string{roundTripperNameRaftMessage, roundTripperNameSnapshot} {
				e := waitLog(t, logs, "prober found high clock drift", roundTripper(name))
				drift, ok := e.ContextMap()["clock-drift"].(time.Duration)
				if !ok {
					t.Fatalf("%s: warning without a clock-drift duration: %v", name, e.ContextMap())
				}
				if d := drift - tt.wantDrift; d < -tolerance || d > tolerance {
					t.Errorf("%s: clock-drift = %v, want %v ± %v", name, drift, tt.wantDrift, tolerance)
				}
			}
		})
	}
}

func TestProbingFollowsUpdatePeer(t *testing.T) {
	a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.ConnReadTimeout = probeReadTimeout }))
	b := newNode(t, withID(2))
	if err := a.tr.AddPeer(2, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "failed probes", func() bool {
		probes, failures := probeCounts(a.tr, 2)
		return probes > 0 && failures == probes
	})
	if err := a.tr.UpdatePeer(2, []string{b.url}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "healthy probes at the new URL", func() bool {
		st, _ := a.tr.PeerStatus(2)
		return st.ProbeHealthy && st.RTT > 0
	})
}

// probeCounts sums the probes made to peer id, and the failed ones.
func probeCounts(tr *Transport, id uint64) (probes, failures int) {
	p, ok := tr.get(id)
	if !ok {
		return 0, 0
	}
	for _, pr := range p.probers {
		_, _, _, n, f := pr.snapshot()
		probes += n
		failures += f
	}
	return probes, failures
}

// proberGoroutines counts the goroutines running a prober.
func proberGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), ".(*prober).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func TestProbingStopsWithPeer(t *testing.T) {
	leaks := goleak.IgnoreCurrent()
	base := proberGoroutines()
	a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.ConnReadTimeout = probeReadTimeout }))
	b := newNode(t, withID(2))
	if err := a.tr.AddPeer(2, []string{b.url}); err != nil {
		t.Fatal(err)
	}
	if err := a.tr.AddPeer(3, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "probes of both peers", func() bool {
		p2, _ := probeCounts(a.tr, 2)
		p3, _ := probeCounts(a.tr, 3)
		return p2 > 0 && p3 > 0
	})
	if got := proberGoroutines() - base; got != 4 {
		t.Errorf("with 2 peers, %d prober goroutines, want 4 (two round trippers each)", got)
	}
	a.tr.RemovePeer(2)
	if got := proberGoroutines() - base; got != 2 {
		t.Errorf("after RemovePeer, %d prober goroutines, want 2", got)
	}
	a.close()
	if got := proberGoroutines() - base; got != 0 {
		t.Errorf("after Stop, %d prober goroutines, want 0", got)
	}
	b.close()
	goleak.VerifyNone(t, leaks)
}
