package rafthttp

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/xiang90/probing"
	"go.uber.org/zap"
)

// Round tripper names, as etcd labels its probers in logs.
const (
	roundTripperNameRaftMessage = "ROUND_TRIPPER_RAFT_MESSAGE"
	roundTripperNameSnapshot    = "ROUND_TRIPPER_SNAPSHOT"
)

// Probing timings (spec §4.9). The first health check comes after
// statusErrorInterval; then a peer is checked every statusErrorInterval while
// unhealthy and every statusMonitoringInterval while healthy, which also
// rate-limits the warnings.
const (
	statusErrorInterval      = 5 * time.Second
	statusMonitoringInterval = 30 * time.Second
	// maxClockDrift is the clock difference beyond which a warning is
	// logged, etcd's threshold, now in both directions.
	maxClockDrift = time.Second
)

// prober probes one peer over one round tripper: a GET of /raft/probing on
// the peer's current URL every interval, with the round-trip time smoothed as
// etcd's prober does, and the clock difference estimated from the peer's
// answer. etcd uses github.com/xiang90/probing's prober, whose probes cannot
// be cancelled and whose goroutines outlive Remove; this one runs as a
// goroutine of its peer, so Stop waits for it. The wire protocol is the
// library's, whose handler serves our /raft/probing. A HostPool's probers
// probe a host instead, for every peer there (hostpool.go).
type prober struct {
	name     string
	rt       http.RoundTripper
	interval time.Duration
	lg       *zap.Logger
	// target is the URL to probe; report is told each probe's outcome
	// (err nil: a success, with the smoothed RTT), outside mu.
	target func() url.URL
	report func(u url.URL, err error, srtt time.Duration)

	mu        sync.Mutex
	healthy   bool
	srtt      time.Duration
	clockDiff time.Duration
	lastErr   error
	probes    int
	failures  int
}

// newProber returns the prober of peer p over rt: it probes the peer's
// current URL, moves the peer's URL picker on when a probe fails, and
// feeds its round-trip histogram.
func newProber(p *peer, name string, rt http.RoundTripper) *prober {
	// etcd probes every ConnReadTimeout - 1 s; never faster than every
	// 100 ms, whatever the read timeout.
	interval := max(p.t.cfg.readTimeout-time.Second, 100*time.Millisecond)
	return &prober{name: name, rt: rt, interval: interval, lg: p.lg, target: p.picker.pick,
		report: func(u url.URL, err error, srtt time.Duration) {
			if err != nil {
				p.picker.unreachable(u)
				return
			}
			// etcd observes the smoothed RTT on its monitor's 5 s/30 s
			// schedule; every probe gives a finer histogram for the same
			// dashboards.
			p.t.metrics.roundTripTime.WithLabelValues(p.idStr).Observe(srtt.Seconds())
		}}
}

// run probes until ctx ends, checking and reporting health on the monitor's
// schedule.
func (pr *prober) run(ctx context.Context) {
	probe := time.NewTicker(pr.interval)
	defer probe.Stop()
	monitor := time.NewTimer(pr.errorInterval())
	defer monitor.Stop()
	for {
		select {
		case <-probe.C:
			pr.probeOnce(ctx)
		case <-monitor.C:
			monitor.Reset(pr.monitorOnce())
		case <-ctx.Done():
			return
		}
	}
}

// probeOnce makes one probe and records its outcome; ctx is run's.
func (pr *prober) probeOnce(ctx context.Context) {
	u := pr.target()
	pctx, cancel := context.WithTimeout(ctx, pr.interval)
	defer cancel()
	start := time.Now()
	health, err := pr.get(pctx, u.String()+ProbingPrefix)
	rtt := time.Since(start)
	if ctx.Err() != nil {
		return // stopping
	}
	pr.mu.Lock()
	pr.probes++
	if err != nil {
		pr.failures++
		pr.healthy = false
		pr.lastErr = err
	} else {
		pr.healthy = true
		pr.lastErr = nil
		if pr.srtt == 0 {
			pr.srtt = rtt
		} else {
			pr.srtt = pr.srtt*7/8 + rtt/8
		}
		pr.clockDiff = time.Since(health.Now) - pr.srtt/2
	}
	srtt := pr.srtt
	pr.mu.Unlock()
	pr.report(u, err, srtt)
}

// maxProbeBody bounds a probe answer: a small JSON object.
const maxProbeBody = 1 << 10

func (pr *prober) get(ctx context.Context, u string) (probing.Health, error) {
	var h probing.Health
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return h, err
	}
	resp, err := pr.rt.RoundTrip(req)
	if err != nil {
		return h, err
	}
	defer drainClose(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return h, fmt.Errorf("probe answered %s", resp.Status)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxProbeBody)).Decode(&h); err != nil {
		return h, fmt.Errorf("probe answer: %w", err)
	}
	if !h.OK {
		return h, fmt.Errorf("probe answered not OK")
	}
	return h, nil
}

// errorInterval and monitoringInterval are etcd's 5 s and 30 s, shortened
// for probe intervals below a second (short read timeouts, as in tests).
func (pr *prober) errorInterval() time.Duration {
	return min(statusErrorInterval, 5*pr.interval)
}

func (pr *prober) monitoringInterval() time.Duration {
	return min(statusMonitoringInterval, 30*pr.interval)
}

// monitorOnce reports the peer's probing health and returns when to look
// again.
func (pr *prober) monitorOnce() time.Duration {
	pr.mu.Lock()
	healthy, srtt, drift, lastErr, probes := pr.healthy, pr.srtt, pr.clockDiff, pr.lastErr, pr.probes
	pr.mu.Unlock()
	if probes == 0 {
		return pr.errorInterval()
	}
	if !healthy {
		pr.lg.Warn("prober detected unhealthy status", zap.String("round-tripper-name", pr.name),
			zap.Duration("rtt", srtt), zap.Error(lastErr))
		return pr.errorInterval()
	}
	if drift > maxClockDrift || drift < -maxClockDrift {
		pr.lg.Warn("prober found high clock drift", zap.String("round-tripper-name", pr.name),
			zap.Duration("clock-drift", drift), zap.Duration("rtt", srtt))
	}
	return pr.monitoringInterval()
}

// snapshot returns the prober's view: healthy, smoothed RTT and clock
// difference.
func (pr *prober) snapshot() (healthy bool, srtt, clockDiff time.Duration, probes, failures int) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.healthy, pr.srtt, pr.clockDiff, pr.probes, pr.failures
}
