package rafthttp

import (
	"hash/maphash"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// Warnings a peer can set off are rate-limited (design §9): a peer sending
// thousands of bad requests or dropping thousands of messages a second must
// not write a log line for each, and a log line per event would make an
// overload worse. Each kind of warning gets one line per warnInterval, and
// the line that gets through carries the count of those suppressed before
// it ("suppressed"). Kinds are a small fixed set, so the memory a flood can
// make us use is fixed too. No timer flushes a count: what a flood left
// uncounted is reported by the next line of its kind, whenever that comes.
//
// One type does the limiting, logLimiter. The Transport keeps one per kind
// of warning a request can set off (warnLimits, below); a peer, a remote,
// their pipelines, stream readers and writers and status each keep their
// own for what they log, which is bounded as the peers are.
//
// Call sites test first and build the line only when it goes out:
//
//	if n, ok := t.warns.allow(warnMalformed); ok {
//		t.lg.Warn("...", zap.Error(err), suppressed(n))
//	}
//
// so that a suppressed warning costs an atomic add and no allocation (zap's
// variadic fields would escape to the heap).

// warnInterval is how often a kind of warning may be logged.
const warnInterval = time.Second

// monoStart anchors monoNanos.
var monoStart = time.Now()

// monoNanos is the clock of the limiters: nanoseconds on the monotonic
// clock, so that a wall clock stepped back (NTP) cannot silence warnings
// until it catches up. It is never zero, which logLimiter reads as "never
// logged".
func monoNanos() int64 { return int64(time.Since(monoStart)) + 1 }

// suppressed is the field that reports what a limiter held back.
func suppressed(n int64) zap.Field { return zap.Int64("suppressed", n) }

// logLimiter lets one line through per warnInterval and counts the rest. Its
// zero value is ready to use. It takes no lock: callers on several
// goroutines race for the line with a compare-and-swap.
type logLimiter struct {
	last       atomic.Int64 // the clock when the last line went out; 0 if none did
	suppressed atomic.Int64 // calls since that line, this one included
}

// allow reports whether to log now, and how many calls went unlogged since
// the last line. now is the clock (monoNanos but in tests); it must not
// return 0.
//
// While calls come in bulk it reads the clock only every 64th call (the
// clock read was a quarter of a flooded sender's time); the first few after
// a line always look. Counting stays exact: each call adds itself once, and
// the line that gets through takes the whole count, itself aside.
func (l *logLimiter) allow(now func() int64) (int64, bool) {
	n := l.suppressed.Add(1)
	if n > 16 && n%64 != 0 {
		return 0, false
	}
	t := now()
	last := l.last.Load()
	if last != 0 && t-last < int64(warnInterval) || !l.last.CompareAndSwap(last, t) {
		return 0, false
	}
	return l.suppressed.Swap(0) - 1, true
}

// warnKind is a kind of warning a request, or a call the application may
// repeat in a loop, can set off; each is limited on its own, so that a
// flood of one does not hide another.
type warnKind uint8

const (
	warnVersion       warnKind = iota // failed the version check
	warnClusterID                     // cluster ID mismatch
	warnPeerIdentity                  // client certificate does not speak for the member named (identity.go)
	warnBadRequest                    // malformed path or header
	warnUnknownSender                 // a stream from a member removed, unknown, or not for us
	warnReadBody                      // body unreadable: reset, too large, too slow
	warnMalformed                     // body not a raft message, or the wrong one
	warnProcess                       // Raft.Process failed a message from a request
	warnSnapshot                      // snapshot not saved
	warnSnapBusy                      // SendSnapshot refused: one in flight to the peer, or MaxSnapshotSends reached
	warnSnapRefused                   // SendSnapshot refused: invalid, unknown peer, stopped
	numWarnKinds
)

// Kinds below numSourceKinds are limited per source as well
// (warnLimits.allowFrom). They say a member is misconfigured (wrong cluster,
// too old, a certificate that does not speak for it), and the operator must
// see each such member, even while another floods us.
const numSourceKinds = warnPeerIdentity + 1

// sourceSlots is the number of sources a kind in numSourceKinds tells
// apart. Sources are hashed into this many slots, a fixed table, so that an
// attacker with many addresses cannot grow it; those sharing a slot share its
// limit and its count. At worst, then, such a kind logs sourceSlots lines a
// second.
const sourceSlots = 16

// warnLimits are the limiters of the warnings a request can set off: one per
// kind, and per source slot for the kinds that tell sources apart.
type warnLimits struct {
	now     func() int64 // the limiters' clock
	kinds   [numWarnKinds]logLimiter
	seed    maphash.Seed // random, so that no one can aim at another's slot
	sources [numSourceKinds][sourceSlots]sourceLimiter
}

// sourceLimiter is a slot of a per-source table: the limiter of whatever
// source hashed here last.
type sourceLimiter struct {
	key atomic.Uint64
	logLimiter
}

func newWarnLimits(now func() int64) *warnLimits {
	if now == nil {
		now = monoNanos
	}
	return &warnLimits{now: now, seed: maphash.MakeSeed()}
}

// allow is logLimiter.allow for a kind.
func (w *warnLimits) allow(k warnKind) (int64, bool) {
	return w.kinds[k].allow(w.now)
}

// allowFrom is allow for a request from remoteAddr (http.Request.RemoteAddr):
// kinds below numSourceKinds are limited per source, the others as allow
// does. The count a line carries is then of its slot: its source's
// warnings, and those of any other source sharing the slot since.
func (w *warnLimits) allowFrom(k warnKind, remoteAddr string) (int64, bool) {
	if k >= numSourceKinds {
		return w.allow(k)
	}
	h := sourceKey(w.seed, remoteAddr)
	s := &w.sources[k][h%sourceSlots]
	// A source new to the slot takes it over, window and count with it: a
	// line is due to it no sooner than to the source it displaced.
	if s.key.Load() != h {
		s.key.Store(h)
	}
	return s.allow(w.now)
}

// sourceKey hashes the host of a "host:port" address, the port aside (each
// connection has its own). An IPv6 host counts by its /64, as one machine
// commonly has a whole /64 to pick addresses from. Anything else (a unix
// socket's "@" or "") is one source.
func sourceKey(seed maphash.Seed, remoteAddr string) uint64 {
	var a netip.Addr
	// net/http sets RemoteAddr from the connection, so it parses unless
	// the listener is not TCP; skip the parse (whose error allocates) for
	// what cannot be an IP address and port.
	if strings.IndexByte(remoteAddr, ':') > 0 {
		if ap, err := netip.ParseAddrPort(remoteAddr); err == nil {
			a = ap.Addr().Unmap()
		}
	}
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			a = p.Addr()
		}
	}
	b := a.As16()
	return maphash.Bytes(seed, b[:])
}
