package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/raftkit/rafthttp/faultnet"
)

// faultKind names what the nemesis does to the cluster.
type faultKind string

// The faults, each healed at the end of its step.
const (
	// faultPartition cuts a minority off from the majority, both ways
	// (the minority holds the leader half the time).
	faultPartition faultKind = "partition"
	// faultOneWay stops what a minority sends to the others, or what it
	// receives from them.
	faultOneWay faultKind = "one-way"
	// faultLatency delays every chunk on the links of some members.
	faultLatency faultKind = "latency"
	// faultBandwidth caps the links of some members.
	faultBandwidth faultKind = "bandwidth"
	// faultReset resets the connections of some members' links at once and
	// then every few KiB.
	faultReset faultKind = "reset"
	// faultStall black-holes the links of a member: connections stay open
	// and carry nothing, until the stream read timeouts notice.
	faultStall faultKind = "stall"
	// faultRestart stops a member (Ready loop, raft, transport, server)
	// and restarts it from its disk.
	faultRestart faultKind = "restart"
	// faultSnapshot cuts a follower off until the leader has compacted its
	// log past the follower's, so that it catches up by snapshot.
	faultSnapshot faultKind = "snapshot"
)

// faultKinds lists the kinds in the order of the table.
var faultKinds = []faultKind{faultPartition, faultOneWay, faultLatency, faultBandwidth, faultReset, faultStall,
	faultRestart, faultSnapshot}

// faultStep is one step of a schedule: a quiet gap, then a fault held for
// a while, then a heal. A schedule is a function of the seed, the number of
// members and the chaos time (planFaults); which members it hits also
// depends on who leads when it starts.
type faultStep struct {
	Kind faultKind     `json:"kind"`
	Gap  time.Duration `json:"gap"`
	Hold time.Duration `json:"hold"`
	// Size is how many members the fault hits; Leader puts the leader
	// among them (if there is one, and never for faultSnapshot); Pick seeds
	// the choice of the others.
	Size   int    `json:"size"`
	Leader bool   `json:"leader"`
	Pick   uint64 `json:"pick"`
	// Inbound (faultOneWay) cuts what the group receives rather than what
	// it sends.
	Inbound bool `json:"inbound,omitempty"`
	// Latency and Jitter (faultLatency), Bandwidth in bytes per second
	// (faultBandwidth), ResetEvery in bytes (faultReset).
	Latency    time.Duration `json:"latency,omitempty"`
	Jitter     time.Duration `json:"jitter,omitempty"`
	Bandwidth  int64         `json:"bandwidth,omitempty"`
	ResetEvery int64         `json:"reset_every,omitempty"`
	// Also, if set, is a slow or resetting network on every link during
	// the step, on top of the fault.
	Also faultKind `json:"also,omitempty"`
}

// faultEvent is a step as it was carried out, with times in the history's
// clock.
type faultEvent struct {
	Step    int       `json:"step"`
	Kind    faultKind `json:"kind"`
	Also    faultKind `json:"also,omitempty"`
	Start   int64     `json:"start_ns"`
	End     int64     `json:"end_ns"`
	Members []uint64  `json:"members"`
	Leader  uint64    `json:"leader"`
	Note    string    `json:"note,omitempty"`
}

// planFaults draws the schedule of a run from its seed: steps until the
// chaos time is used up.
func planFaults(seed int64, members int, chaos time.Duration) []faultStep {
	rng := rand.New(rand.NewPCG(uint64(seed), 0x6e656d65736973))
	minority := (members - 1) / 2
	var plan []faultStep
	for used := time.Duration(0); ; {
		s := faultStep{
			Kind:   faultKinds[rng.IntN(len(faultKinds))],
			Gap:    time.Duration(200+rng.IntN(600)) * time.Millisecond,
			Hold:   time.Duration(500+rng.IntN(2000)) * time.Millisecond,
			Size:   1 + rng.IntN(minority),
			Leader: rng.IntN(2) == 0,
			Pick:   rng.Uint64(),
		}
		switch s.Kind {
		case faultOneWay:
			s.Inbound = rng.IntN(2) == 0
		case faultLatency:
			s.Size = 1 + rng.IntN(members)
			s.Latency = time.Duration(10+rng.IntN(140)) * time.Millisecond
			s.Jitter = s.Latency / 2
		case faultBandwidth:
			s.Size = 1 + rng.IntN(members)
			s.Bandwidth = int64(16<<10 + rng.IntN(240<<10))
		case faultReset:
			s.Size = 1 + rng.IntN(members)
			s.ResetEvery = int64(4<<10 + rng.IntN(60<<10))
		case faultStall:
			s.Size = 1
		case faultSnapshot:
			s.Size, s.Leader = 1, false
		}
		if rng.IntN(5) == 0 && s.Kind != faultLatency && s.Kind != faultBandwidth && s.Kind != faultReset {
			s.Also = []faultKind{faultLatency, faultReset}[rng.IntN(2)]
			s.Latency = time.Duration(5+rng.IntN(40)) * time.Millisecond
			s.Jitter = s.Latency / 2
			s.ResetEvery = int64(16<<10 + rng.IntN(112<<10))
		}
		if used+s.Gap+s.Hold > chaos && len(plan) > 0 {
			return plan
		}
		used += s.Gap + s.Hold
		plan = append(plan, s)
		if used >= chaos {
			return plan
		}
	}
}

// group resolves the members a step hits: the leader first if the step
// wants it, then others in an order drawn from the step's Pick.
func (c *cluster) group(s faultStep, lead uint64) []uint64 {
	rng := rand.New(rand.NewPCG(s.Pick, 0x67726f7570))
	others := slices.Clone(c.ids)
	rng.Shuffle(len(others), func(i, j int) { others[i], others[j] = others[j], others[i] })
	var g []uint64
	if s.Leader && lead != 0 {
		g = append(g, lead)
	}
	for _, id := range others {
		if len(g) >= s.Size {
			break
		}
		if s.Kind == faultSnapshot && id == lead {
			continue
		}
		if !slices.Contains(g, id) {
			g = append(g, id)
		}
	}
	slices.Sort(g)
	return g
}

// nemesis carries out a schedule on a cluster.
type nemesis struct {
	c      *cluster
	h      *history
	events []faultEvent
}

// run carries out plan, step after step, until it is done or ctx ends;
// every step is healed before the next, and before run returns.
func (nm *nemesis) run(ctx context.Context, plan []faultStep) error {
	for i, s := range plan {
		if !sleepCtx(ctx, s.Gap) {
			return nil
		}
		lead := nm.c.leader()
		g := nm.c.group(s, lead)
		ev := faultEvent{Step: i, Kind: s.Kind, Also: s.Also, Start: nm.h.now(), Members: g, Leader: lead}
		note, err := nm.inject(ctx, s, g, lead)
		healErr := nm.heal()
		ev.End, ev.Note = nm.h.now(), note
		nm.events = append(nm.events, ev)
		if err != nil {
			return fmt.Errorf("fault step %d (%s): %w", i, s.Kind, err)
		}
		if healErr != nil {
			return fmt.Errorf("healing step %d (%s): %w", i, s.Kind, healErr)
		}
	}
	return nil
}

// sleepCtx waits for d, and says false if ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// links returns the proxies of the links of the members of g, each once.
func (nm *nemesis) links(g []uint64) ([]*faultnet.Proxy, error) {
	var out []*faultnet.Proxy
	for _, id := range g {
		ps, err := nm.c.mesh.Links(id)
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			if !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out, nil
}

// inject applies a step's fault to g and holds it; it returns a note on
// what happened.
func (nm *nemesis) inject(ctx context.Context, s faultStep, g []uint64, lead uint64) (string, error) {
	c := nm.c
	rest := c.others(g)
	switch s.Also {
	case faultLatency:
		for _, id := range c.ids {
			if err := nm.eachLink([]uint64{id}, func(p *faultnet.Proxy) { p.SetLatency(s.Latency, s.Jitter) }); err != nil {
				return "", err
			}
		}
	case faultReset:
		if err := nm.eachLink(c.ids, func(p *faultnet.Proxy) { p.ResetEvery(faultnet.ServerToClient, s.ResetEvery) }); err != nil {
			return "", err
		}
	}
	var note string
	switch s.Kind {
	case faultPartition:
		if err := c.mesh.Partition(g, rest); err != nil {
			return "", err
		}
	case faultOneWay:
		from, to := g, rest
		if s.Inbound {
			from, to = rest, g
		}
		if err := c.mesh.PartitionOneWay(from, to); err != nil {
			return "", err
		}
		note = fmt.Sprintf("%v cannot reach %v", from, to)
	case faultLatency:
		if err := nm.eachLink(g, func(p *faultnet.Proxy) { p.SetLatency(s.Latency, s.Jitter) }); err != nil {
			return "", err
		}
		note = fmt.Sprintf("%v ± %v", s.Latency, s.Jitter)
	case faultBandwidth:
		if err := nm.eachLink(g, func(p *faultnet.Proxy) { p.SetBandwidth(s.Bandwidth) }); err != nil {
			return "", err
		}
		note = fmt.Sprintf("%d KiB/s", s.Bandwidth>>10)
	case faultReset:
		if err := nm.eachLink(g, func(p *faultnet.Proxy) {
			p.ResetConns()
			p.ResetEvery(faultnet.ServerToClient, s.ResetEvery)
		}); err != nil {
			return "", err
		}
		note = fmt.Sprintf("then every %d KiB", s.ResetEvery>>10)
	case faultStall:
		if err := nm.eachLink(g, func(p *faultnet.Proxy) { p.Blackhole(true) }); err != nil {
			return "", err
		}
	case faultRestart:
		for _, id := range g {
			c.kill(id)
		}
	case faultSnapshot:
		return nm.forceSnapshot(ctx, s, g)
	}
	sleepCtx(ctx, s.Hold)
	return note, nil
}

// forceSnapshot cuts the follower g[0] off and holds the cut until the
// leader's log starts after the follower's last entry (at least s.Hold,
// at most 10 s): healed, the follower can only catch up by snapshot.
func (nm *nemesis) forceSnapshot(ctx context.Context, s faultStep, g []uint64) (string, error) {
	c := nm.c
	if len(g) == 0 {
		return "no follower", nil
	}
	f := g[0]
	if err := c.mesh.Partition(g, c.others(g)); err != nil {
		return "", err
	}
	installed := c.snapshotsInstalled.Load()
	sleepCtx(ctx, s.Hold)
	behind := func() bool {
		fn, lead := c.node(f), c.leader()
		if fn == nil || lead == 0 || lead == f {
			return false
		}
		ln := c.node(lead)
		if ln == nil {
			return false
		}
		first, _ := ln.disk.storage.FirstIndex()
		last, _ := fn.disk.storage.LastIndex()
		return first > last+1
	}
	ok := waitFor(ctx, 10*time.Second, behind)
	if !ok {
		return "the leader's log did not move past the follower's in time", nil
	}
	return fmt.Sprintf("member %d behind the leader's compacted log (%d snapshots installed so far)", f, installed), nil
}

// eachLink applies fn to the proxies of the links of g.
func (nm *nemesis) eachLink(g []uint64, fn func(*faultnet.Proxy)) error {
	ps, err := nm.links(g)
	if err != nil {
		return err
	}
	for _, p := range ps {
		fn(p)
	}
	return nil
}

// heal lifts every fault of the network (the mesh's Heal leaves a proxy's
// ResetEvery on, so it is turned off here) and restarts the members that
// are down.
func (nm *nemesis) heal() error {
	nm.c.mesh.Heal()
	if err := nm.eachLink(nm.c.ids, func(p *faultnet.Proxy) { p.ResetEvery(faultnet.ServerToClient, 0) }); err != nil {
		return err
	}
	for _, id := range nm.c.ids {
		if err := nm.c.restart(id); err != nil {
			return err
		}
	}
	return nil
}
