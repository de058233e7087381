package rafthttp

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Resumable snapshot transfers (featureSnapshotResume), between members
// that both announced the feature: a receiver announces it only if its
// SnapshotStore is a ResumableSnapshotStore. etcd peers, and ours without
// the feature, get etcd's single POST, byte for byte.
//
// The receiver writes the payload of a resumable transfer to a
// PartialSnapshot, keeps it when the connection breaks (within the bounds
// of partials), and lets the sender's next attempt append the rest. On
// the wire (headers in protocol.go, golden bytes in
// testdata/wire/snapshot_resume.golden):
//
//   - Before each attempt the sender asks where to resume: GET
//     /raft/snapshot/resume with X-Rafthttp-Snapshot-Id naming the payload
//     (snapshotID). The receiver first cuts off a transfer from that sender
//     still under way (the sender has given up on it: its connection is
//     broken, however healthy it may look from here), then answers 204
//     with how much of the payload it holds, X-Rafthttp-Snapshot-Offset,
//     and the CRC-32C of that much, X-Rafthttp-Snapshot-Crc32c (0 and
//     00000000 for nothing).
//   - The attempt is etcd's POST /raft/snapshot, chunked: the envelope,
//     then the payload from the offset on, with X-Rafthttp-Snapshot-Id,
//     -Offset and -Crc32c, and a trailer X-Rafthttp-Payload-Crc32c, the
//     CRC-32C of the whole payload from its first byte (the CRC-32C
//     trailer of the body, if negotiated, still covers this body). The
//     receiver appends only to a partial that holds exactly that much with
//     that CRC, else answers 409 and the sender asks again; offset 0
//     starts afresh, dropping any partial of that sender. Once the whole
//     payload is in and matches the trailer, the partial is committed, as
//     SaveSnapshot would have saved it, and the MsgSnap goes to raft.
//   - While a POST is under way, the sender follows how far the receiver
//     has written: the same GET with X-Rafthttp-Snapshot-Progress: S is
//     answered 200 with a stream of lines, each the offset the receiver
//     holds (decimal, then "\n"), one at once and one each time it has
//     written another S bytes, until the transfer ends. These offsets keep
//     the sender's replay ring, below, from overflowing; one stream per
//     attempt costs the receiver a small write per S bytes.
//
// The sender reads the payload once: it cannot rewind it. What it reads
// goes through a replay ring of snapshotResumeWindow bytes, and it never
// reads more than that ahead of what the receiver has confirmed writing;
// so whatever a break loses on the way (socket buffers, proxies, the
// receiver's read-ahead) is still in the ring, and the next attempt sends
// it again from there. A SendSnapshot retried by raft (a new payload
// reader) resumes too: the sender reads the receiver's part of the new
// payload locally, without sending it, and resumes only if its CRC-32C
// matches the receiver's, since a snapshot with the same ID need not have
// the same payload (etcd's database moves on while the raft snapshot
// stays). The whole payload's CRC-32C is checked at the end, so a resumed
// payload is as safe as one sent at once.
//
// The retry belongs to the transport: within one SendSnapshot, an attempt
// that breaks (a reset, a stall, a refused dial) is followed by another,
// after a backoff (DialRetryMin doubling to DialRetryMax), as long as the
// receiver's copy grew within the last SnapshotProgressTimeout. raft
// hears of the snapshot once, when the transport gives up or succeeds;
// meanwhile raft keeps the follower in StateSnapshot and sends it nothing
// else. After a Failure raft probes the follower and, at its next
// heartbeat response, sends a MsgSnap again; the application's next
// SendSnapshot of the same snapshot resumes from the receiver's partial,
// while it lasts (SnapshotPartialTTL), and a newer snapshot starts from
// zero, the receiver dropping the old partial.

// snapshotResumeWindow bounds how far a resumable sender reads ahead of
// what the receiver has confirmed writing: the size of its replay ring
// (for payloads larger than it), so its memory per snapshot, and its
// throughput to about a window per round trip (4 MiB in 50 ms is
// 80 MiB/s).
const snapshotResumeWindow = 4 << 20

// minProgressStep bounds the step of a progress stream from below, and so
// the lines it writes: 16 Ki per GiB at most.
const minProgressStep = 64 << 10

// The errors of resuming. They stay within the transport, which retries or
// gives up, and reach SendSnapshot's channel when it gives up.
var (
	// errResumeConflict: the receiver does not hold what a resumable POST
	// said it would append to (409). The sender asks again.
	errResumeConflict = errors.New("rafthttp: the receiver does not hold the payload to resume")
	// errResumeRewind: the receiver holds less than the replay ring
	// reaches back to (it lost its partial), and the payload cannot be
	// read again. raft sends the snapshot again, from the start.
	errResumeRewind = errors.New("rafthttp: cannot resume a snapshot transfer before the replay ring")
	// errResumeMismatch: the receiver's partial is of another payload
	// with the same ID, found once part of ours was read to compare. The
	// next SendSnapshot of this ID starts from zero.
	errResumeMismatch = errors.New("rafthttp: the receiver's partial payload differs from ours")
	// errResumeLater: the receiver answered a resumable POST 503: it
	// broke off (it keeps what it got) or does not serve now.
	errResumeLater = errors.New("rafthttp: the receiver asks to resume later")
	// errAttemptOver: a body read after its attempt ended.
	errAttemptOver = errors.New("rafthttp: snapshot attempt over")
)

// ---------------------------------------------------------------------------
// Wire formats.

// snapshotID names a payload for resuming: the snapshot's index and term,
// the payload's size, and the CRC-32C of the envelope frame, which covers
// the rest of the MsgSnap (its sender and term, the snapshot's data and
// configuration). Two transfers with the same ID are taken to be of the
// same snapshot; whether their payloads are the same is checked by CRC-32C
// before one resumes the other.
type snapshotID struct {
	index, term uint64
	size        int64
	envelope    uint32
}

// newSnapshotID is the ID of the transfer of m, whose envelope frame is
// envelope, with a payload of size bytes.
func newSnapshotID(m *raftpb.Message, envelope []byte, size int64) snapshotID {
	md := m.GetSnapshot().GetMetadata()
	return snapshotID{index: md.GetIndex(), term: md.GetTerm(), size: size, envelope: crc32.Checksum(envelope, crc32c)}
}

// String formats id as X-Rafthttp-Snapshot-Id carries it.
func (id snapshotID) String() string {
	b := make([]byte, 0, 96)
	b = strconv.AppendUint(append(b, "index="...), id.index, 10)
	b = strconv.AppendUint(append(b, " term="...), id.term, 10)
	b = strconv.AppendInt(append(b, " size="...), id.size, 10)
	b = appendCRC(append(b, " envelope="...), id.envelope)
	return string(b)
}

// appendCRC appends a CRC-32C as crcOf formats it.
func appendCRC(b []byte, sum uint32) []byte {
	const hex = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hex[sum>>shift&0xf])
	}
	return b
}

// maxSnapshotIDLen bounds X-Rafthttp-Snapshot-Id: its longest valid value
// is 88 bytes.
const maxSnapshotIDLen = 128

// parseSnapshotID reads X-Rafthttp-Snapshot-Id strictly: the four fields in
// order, one space apart, decimals without sign or leading zeros, the CRC
// in 8 lowercase hex digits; so a valid value has one spelling, String's.
// Errors wrap ErrInvalidHeader.
func parseSnapshotID(s string) (snapshotID, error) {
	bad := func(why string) (snapshotID, error) {
		return snapshotID{}, fmt.Errorf("%w: %s %s: %s", ErrInvalidHeader, headerSnapshotID, clip(s, clipQuoted), why)
	}
	if len(s) > maxSnapshotIDLen {
		return bad("too long")
	}
	keys := [4]string{"index", "term", "size", "envelope"}
	var vals [4]string
	rest := s
	for i, k := range keys {
		field := rest
		if i < len(keys)-1 {
			var ok bool
			if field, rest, ok = strings.Cut(rest, " "); !ok {
				return bad("want index=, term=, size= and envelope=")
			}
		}
		v, ok := strings.CutPrefix(field, k+"=")
		if !ok {
			return bad("want " + k + "= at field " + strconv.Itoa(i+1))
		}
		vals[i] = v
	}
	var id snapshotID
	var err error
	if id.index, err = parseDecimal(vals[0]); err != nil {
		return bad("index: " + err.Error())
	}
	if id.term, err = parseDecimal(vals[1]); err != nil {
		return bad("term: " + err.Error())
	}
	if id.size, err = parseOffset(vals[2], math.MaxInt64); err != nil {
		return bad("size: " + err.Error())
	}
	if id.envelope, err = parseCRCStrict(vals[3]); err != nil {
		return bad("envelope: " + err.Error())
	}
	return id, nil
}

// parseDecimal reads an unsigned decimal with one spelling: digits only, no
// leading zero but in "0".
func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 20 {
		return 0, errors.New("not a decimal of 1 to 20 digits")
	}
	if s[0] == '0' && len(s) > 1 {
		return 0, errors.New("leading zero")
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("not a decimal")
		}
	}
	return strconv.ParseUint(s, 10, 64)
}

// parseOffset reads a decimal (parseDecimal) of at most limit.
func parseOffset(s string, limit int64) (int64, error) {
	v, err := parseDecimal(s)
	if err != nil {
		return 0, err
	}
	if v > uint64(limit) {
		return 0, fmt.Errorf("%d is over %d", v, limit)
	}
	return int64(v), nil
}

// parseCRCStrict reads a CRC-32C as crcOf writes it: 8 lowercase hex
// digits.
func parseCRCStrict(s string) (uint32, error) {
	if len(s) != 8 {
		return 0, errors.New("not 8 hex digits")
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return 0, errors.New("not lowercase hex")
		}
	}
	v, err := strconv.ParseUint(s, 16, 32)
	return uint32(v), err
}

// resumeQuery is a GET /raft/snapshot/resume about the payload id: a
// resume query (step 0) or a progress stream reporting every step bytes.
type resumeQuery struct {
	id   snapshotID
	step int64
}

// parseResumeQuery reads the headers of a query. Errors wrap
// ErrInvalidHeader.
func parseResumeQuery(h http.Header) (resumeQuery, error) {
	id, err := parseSnapshotID(h.Get(headerSnapshotID))
	if err != nil {
		return resumeQuery{}, err
	}
	q := resumeQuery{id: id}
	if v := h.Get(headerSnapshotProgress); v != "" {
		if q.step, err = parseOffset(v, math.MaxInt64); err != nil || q.step == 0 {
			if err == nil {
				err = errors.New("zero")
			}
			return resumeQuery{}, fmt.Errorf("%w: %s %s: %w", ErrInvalidHeader, headerSnapshotProgress, clip(v, clipQuoted), err)
		}
	}
	return q, nil
}

// resumeStart is what the headers of a resumable POST say: the payload,
// the offset its body's payload part starts at, and the CRC-32C of the
// payload before that.
type resumeStart struct {
	id     snapshotID
	offset int64
	crc    uint32
}

// parseResumeStart reads the headers of a resumable POST. Errors wrap
// ErrInvalidHeader.
func parseResumeStart(h http.Header) (resumeStart, error) {
	id, err := parseSnapshotID(h.Get(headerSnapshotID))
	if err != nil {
		return resumeStart{}, err
	}
	off, crc, err := parseResumePoint(h, id.size)
	if err != nil {
		return resumeStart{}, err
	}
	return resumeStart{id: id, offset: off, crc: crc}, nil
}

// parseResumePoint reads X-Rafthttp-Snapshot-Offset (at most size) and
// X-Rafthttp-Snapshot-Crc32c. Errors wrap ErrInvalidHeader.
func parseResumePoint(h http.Header, size int64) (int64, uint32, error) {
	ov, cv := h.Get(headerSnapshotOffset), h.Get(headerSnapshotCRC)
	off, err := parseOffset(ov, size)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %s %s: %w", ErrInvalidHeader, headerSnapshotOffset, clip(ov, clipQuoted), err)
	}
	crc, err := parseCRCStrict(cv)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %s %s: %w", ErrInvalidHeader, headerSnapshotCRC, clip(cv, clipQuoted), err)
	}
	if off == 0 && crc != 0 {
		return 0, 0, fmt.Errorf("%w: %s %s for offset 0, want 00000000", ErrInvalidHeader, headerSnapshotCRC, cv)
	}
	return off, crc, nil
}

// setResumePoint sets X-Rafthttp-Snapshot-Offset and -Crc32c on h.
func setResumePoint(h http.Header, off int64, crc uint32) {
	h.Set(headerSnapshotOffset, strconv.FormatInt(off, 10))
	h.Set(headerSnapshotCRC, string(appendCRC(nil, crc)))
}

// ---------------------------------------------------------------------------
// Sending.

// replayRing holds the last bytes read from a payload, payload[lo:hi], in
// a circular buffer, with the CRC-32C of payload[:lo] and of payload[:hi],
// so that an attempt can send again from any offset in between and prove
// what comes before it. A ring of capacity 0 holds nothing.
type replayRing struct {
	buf          []byte
	lo, hi       int64
	crcLo, crcHi uint32
}

// append adds p, read from the payload at hi, pushing out the oldest bytes
// as needed.
func (r *replayRing) append(p []byte) {
	r.crcHi = crc32.Update(r.crcHi, crc32c, p)
	c := int64(len(r.buf))
	if over := r.hi - r.lo + int64(len(p)) - c; over > 0 {
		held := min(over, r.hi-r.lo)
		r.drop(held)
		if head := over - held; head > 0 { // p is longer than the ring
			r.crcLo = crc32.Update(r.crcLo, crc32c, p[:head])
			r.lo += head
			r.hi += head
			p = p[head:]
		}
	}
	for len(p) > 0 {
		n := copy(r.buf[r.hi%c:], p)
		p = p[n:]
		r.hi += int64(n)
	}
}

// drop forgets the n oldest bytes held.
func (r *replayRing) drop(n int64) {
	c := int64(len(r.buf))
	for n > 0 {
		i := r.lo % c
		k := min(n, c-i)
		r.crcLo = crc32.Update(r.crcLo, crc32c, r.buf[i:i+k])
		r.lo += k
		n -= k
	}
}

// crcAt returns the CRC-32C of payload[:off]; lo <= off <= hi.
func (r *replayRing) crcAt(off int64) uint32 {
	if off == r.hi {
		return r.crcHi
	}
	c := int64(len(r.buf))
	crc := r.crcLo
	for o := r.lo; o < off; {
		i := o % c
		k := min(off-o, c-i)
		crc = crc32.Update(crc, crc32c, r.buf[i:i+k])
		o += k
	}
	return crc
}

// readAt copies payload bytes from off (lo <= off < hi) into p.
func (r *replayRing) readAt(p []byte, off int64) int {
	c := int64(len(r.buf))
	p = p[:min(int64(len(p)), r.hi-off)]
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.buf[(off+int64(n))%c:])
		n += k
	}
	return n
}

// resumableSend is one SendSnapshot to a peer that resumes. Its ring and
// ended are used by one goroutine at a time: the send's, between
// attempts, and an attempt's body reader (resumeAttempt.read), which the
// attempt waits out before it ends.
type resumableSend struct {
	p        *peer
	lg       *zap.Logger
	id       snapshotID
	envelope []byte
	payload  io.ReadCloser
	ring     replayRing
	freeRing func() // frees ring.buf, once no attempt can read it
	polls    bool   // the payload is larger than the ring: reading ahead needs confirmations
	ended    bool   // the payload was seen to end at its size
	fresh    bool   // the receiver's partial is known to differ: start from zero, without asking

	hi          atomic.Int64 // ring.hi, for the poller
	confirmed   atomic.Int64 // the receiver holds payload[:confirmed]
	confirmedAt atomic.Int64 // monoNanos of the start, or of the last advance of confirmed
	confirmc    chan struct{}
	needc       chan struct{}

	reading    atomic.Bool // a payload Read is in progress
	payloadErr atomic.Pointer[error]
	closeOnce  sync.Once
}

func newResumableSend(p *peer, m SnapshotMessage, lg *zap.Logger) *resumableSend {
	env := appendMessageFrame(nil, m.Message)
	s := &resumableSend{
		p:        p,
		lg:       lg,
		id:       newSnapshotID(m.Message, env, m.PayloadSize),
		envelope: env,
		payload:  m.Payload,
		polls:    m.PayloadSize > snapshotResumeWindow,
		confirmc: make(chan struct{}, 1),
		needc:    make(chan struct{}, 1),
	}
	s.ring.buf, s.freeRing = allocRing(int(min(m.PayloadSize, snapshotResumeWindow)))
	s.confirmedAt.Store(monoNanos())
	// Only this send touches resumeBad: one snapshot at a time per peer.
	if p.resumeBad == s.id {
		s.fresh, p.resumeBad = true, snapshotID{}
	}
	return s
}

// poke wakes whoever waits on c, without blocking.
func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

func (s *resumableSend) closePayload() { s.closeOnce.Do(func() { s.payload.Close() }) }

// failPayload records the payload's failure, which no attempt can get past.
func (s *resumableSend) failPayload(err error) { s.payloadErr.CompareAndSwap(nil, &err) }

// cancelPayloadRead runs when an attempt's request ends early: a payload
// Read blocked then is a stalled producer, which only closing the payload
// unblocks, and which fails the send.
func (s *resumableSend) cancelPayloadRead() {
	if s.reading.Load() {
		s.failPayload(ErrSnapshotStalled)
		s.closePayload()
	}
}

// readPayload reads the payload, unless ctx has ended (checked after
// reading is flagged, so that cancelPayloadRead sees a Read that begins
// as it runs).
func (s *resumableSend) readPayload(ctx context.Context, p []byte) (int, error) {
	s.reading.Store(true)
	defer s.reading.Store(false)
	if ctx.Err() != nil {
		return 0, context.Cause(ctx)
	}
	n, err := s.payload.Read(p)
	if err != nil && err != io.EOF {
		s.failPayload(err)
	}
	return n, err
}

// appended records n bytes read from the payload into the ring.
func (s *resumableSend) appended(p []byte) {
	s.ring.append(p)
	s.hi.Store(s.ring.hi)
	if s.polls && s.ring.hi-s.confirmed.Load() >= int64(len(s.ring.buf))/2 {
		poke(s.needc)
	}
}

// confirm records that the receiver holds payload[:off].
func (s *resumableSend) confirm(off int64) {
	for {
		c := s.confirmed.Load()
		if off <= c {
			return
		}
		if s.confirmed.CompareAndSwap(c, off) {
			break
		}
	}
	s.confirmedAt.Store(monoNanos())
	poke(s.confirmc)
}

// checkEnd checks, once, that the payload ends at its declared size.
func (s *resumableSend) checkEnd(ctx context.Context) error {
	if s.ended {
		return nil
	}
	var one [1]byte
	n, err := s.readPayload(ctx, one[:])
	switch {
	case n > 0:
		err = fmt.Errorf("%w: more than declared", ErrSnapshotSize)
		s.failPayload(err)
		return err
	case err == io.EOF:
		s.ended = true
		return nil
	case err == nil:
		// A Read may return nothing and no error; read again next time.
		return nil
	}
	return err
}

// waitWindow waits until the payload may be read further: until less than
// the ring's capacity is unconfirmed.
func (s *resumableSend) waitWindow(ctx context.Context) error {
	for s.ring.hi-s.confirmed.Load() >= int64(len(s.ring.buf)) {
		poke(s.needc)
		select {
		case <-s.confirmc:
		case <-ctx.Done():
			return context.Cause(ctx)
		}
	}
	return nil
}

// sendResumable is SendSnapshot's transfer to a peer that resumes: attempts
// until one succeeds, one fails for good, or the receiver's copy has not
// grown for the progress timeout (as each attempt's resume query finds).
// It returns the URL of the last attempt and the bytes put on the wire by
// all of them.
func (p *peer) sendResumable(m SnapshotMessage, lg *zap.Logger) (u url.URL, sent int64, err error) {
	t := p.t
	s := newResumableSend(p, m, lg)
	defer s.freeRing() // every attempt has finished: none reads the ring
	defer s.closePayload()
	// Stop and RemovePeer unblock a payload Read for good.
	defer context.AfterFunc(p.ctx, s.closePayload)()
	backoff := t.cfg.dialRetryMin
	var timer *time.Timer
	for attempt := 1; ; attempt++ {
		u = p.picker.pick()
		before := s.confirmed.Load()
		n, retry, aerr := s.attempt(u.String(), err)
		sent += n
		if aerr == nil {
			return u, sent, nil
		}
		err = aerr
		if !retry {
			return u, sent, err
		}
		p.picker.unreachable(u)
		if s.confirmed.Load() > before {
			backoff = t.cfg.dialRetryMin
		}
		if n, ok := p.snapFails.allow(t.warns.now); ok {
			lg.Warn("database snapshot transfer interrupted; resuming", zap.Int("attempt", attempt),
				zap.Int64("receiver-holds-bytes", s.confirmed.Load()), zap.Duration("retry-in", backoff), zap.Error(err), suppressed(n))
		}
		if timer == nil {
			timer = time.NewTimer(backoff)
			defer timer.Stop()
		} else {
			timer.Reset(backoff)
		}
		select {
		case <-timer.C:
		case <-p.ctx.Done():
			return u, sent, fmt.Errorf("%w (after %w)", context.Cause(p.ctx), err)
		}
		backoff = min(2*backoff, t.cfg.dialRetryMax)
	}
}

// attempt makes one attempt at base: it asks where to resume, then POSTs
// the rest of the payload. It returns the bytes the POST put on the wire,
// and whether another attempt may succeed where this one failed. It gives
// up before the POST if the receiver's copy has not grown for the progress
// timeout (the resume query is what can tell, the receiver keeping what
// an attempt delivered before it broke); last is the error of the attempt
// before, if any.
func (s *resumableSend) attempt(base string, last error) (sent int64, retry bool, err error) {
	p := s.p
	off, crc, err := s.position(base)
	if idle := time.Duration(monoNanos() - s.confirmedAt.Load()); idle >= p.t.cfg.snapProgressTimeout && last != nil &&
		(err == nil || s.retryable(err)) {
		return 0, false, fmt.Errorf("%w: the receiver's copy has not grown for %v (last attempt: %w)", ErrSnapshotStalled, idle.Round(time.Millisecond), last)
	}
	if err != nil {
		return 0, s.retryable(err), err
	}
	if off > 0 {
		p.t.metrics.snapResume.sends.WithLabelValues(p.idStr).Inc()
		p.t.metrics.snapResume.savedBytes.WithLabelValues(p.idStr).Add(float64(off))
		s.lg.Info("resuming database snapshot", zap.Int64("offset", off), zap.String("skipped", humanize.IBytes(uint64(off))))
	}
	a := &resumeAttempt{s: s, off: off, crc: crc, pos: off}
	body := &snapshotBody{
		envelope: s.envelope,
		payload:  s.payload,
		rate:     p.t.snapRate,
		crc:      crc32.New(crc32c),
		total:    int64(len(s.envelope)) + s.id.size - off,
		res:      a,
	}
	ctx, cancel := context.WithCancel(p.ctx)
	var wg sync.WaitGroup
	if s.polls {
		wg.Go(func() { s.follow(ctx, base) })
	}
	err = p.postSnapshot(base, body)
	cancel()
	wg.Wait()
	a.finish()
	sent = body.sent.Load()
	if err == nil && sent != body.total {
		err = fmt.Errorf("%w: sent %d of %d bytes", ErrSnapshotSize, sent, body.total)
		return sent, false, err
	}
	if err == nil {
		s.confirm(s.id.size)
		return sent, false, nil
	}
	return sent, s.retryable(err), err
}

// retryable says whether another attempt may succeed after err: not if the
// peer or transport is stopping, the payload failed, or the receiver
// refused (but for 409, and for 503: it broke off, or is at its limit of
// snapshots, which the attempt it cut off may hold a moment longer); yes
// if the connection or the dial failed, or the transfer stalled, even
// once the whole body was sent: the next resume query tells whether the
// receiver has it all (it saved the payload, and raft gets the MsgSnap
// with the next attempt) or not.
func (s *resumableSend) retryable(err error) bool {
	var answered answeredError
	switch {
	case s.p.ctx.Err() != nil, s.payloadErr.Load() != nil:
		return false
	case errors.Is(err, errResumeConflict), errors.Is(err, errResumeLater), errors.Is(err, ErrTooManySnapshots):
		return true
	case errors.As(err, &answered), errors.Is(err, errResumeRewind), errors.Is(err, errResumeMismatch), errors.Is(err, ErrSnapshotSize):
		return false
	}
	return true
}

// answeredError is the receiver's answer refusing a request of a resumable
// transfer, which another attempt would not change.
type answeredError struct{ error }

func (e answeredError) Unwrap() error { return e.error }

// position asks the receiver at base how much of the payload it holds, and
// brings the ring there: it reads on to that offset if the payload is not
// read that far yet (a SendSnapshot raft retried: the receiver kept what an
// earlier one sent), and checks the CRC-32C of what comes before it. It
// returns where the attempt starts, and the CRC-32C of what precedes it.
func (s *resumableSend) position(base string) (int64, uint32, error) {
	var (
		off int64
		crc uint32
		err error
	)
	if s.fresh {
		s.fresh = false
	} else if off, crc, err = s.p.snapshotQuery(s.p.ctx, base, s.id); err != nil {
		return 0, 0, err
	}
	if off > s.ring.hi {
		if err := s.skipTo(off); err != nil {
			return 0, 0, err
		}
	}
	if off < s.ring.lo {
		return 0, 0, fmt.Errorf("%w: the receiver holds %d bytes, the ring starts at %d", errResumeRewind, off, s.ring.lo)
	}
	if s.ring.crcAt(off) != crc {
		if s.ring.lo > 0 {
			s.p.resumeBad = s.id
			return 0, 0, fmt.Errorf("%w: CRC-32C of the first %d bytes %s, the receiver's %s", errResumeMismatch, off, crcOf(s.ring.crcAt(off)), crcOf(crc))
		}
		s.lg.Warn("the receiver's partial database snapshot differs from ours; sending it whole",
			zap.Int64("receiver-holds-bytes", off), zap.String("receiver-crc32c", crcOf(crc)))
		off = 0
	}
	s.confirm(off)
	return off, s.ring.crcAt(off), nil
}

// skipTo reads the payload on to off, without sending it: the receiver
// holds it, if the CRC-32C agrees. A payload that stalls for the progress
// timeout fails the send.
func (s *resumableSend) skipTo(off int64) error {
	t := s.p.t
	w := newProgressWatch(t.cfg.snapProgressTimeout, t.cfg.snapProgressTimeout, func(error) {
		s.failPayload(ErrSnapshotStalled)
		s.closePayload()
	})
	defer w.stop()
	buf := make([]byte, min(off-s.ring.hi, 256<<10))
	for s.ring.hi < off {
		n, err := s.readPayload(s.p.ctx, buf[:min(int64(len(buf)), off-s.ring.hi)])
		if n > 0 {
			s.appended(buf[:n])
			w.touch()
		}
		if err == io.EOF && s.ring.hi < off {
			err = fmt.Errorf("%w: %d bytes short", ErrSnapshotSize, s.id.size-s.ring.hi)
			s.failPayload(err)
		}
		if err != nil && err != io.EOF {
			if perr := s.payloadErr.Load(); perr != nil {
				return *perr
			}
			return err
		}
	}
	return nil
}

// follow keeps the attempt's sender reading: once half the ring is
// unconfirmed, it follows the receiver's progress stream at base,
// confirming the offsets it reports, and follows it again should it end
// while the attempt goes on (the POST had not reached the receiver yet, or
// the stream broke). It returns when ctx ends, with its attempt.
func (s *resumableSend) follow(ctx context.Context, base string) {
	var (
		pause time.Duration
		timer *time.Timer
	)
	half := int64(len(s.ring.buf)) / 2
	for {
		if s.hi.Load()-s.confirmed.Load() < half {
			select {
			case <-s.needc:
				continue
			case <-ctx.Done():
				return
			}
		}
		advanced := s.p.followProgress(ctx, base, s.id, max(half/2, minProgressStep), s.confirm)
		if ctx.Err() != nil {
			return
		}
		if advanced {
			pause = 0
			continue
		}
		// Nothing new: wait a little before following again. The POST's
		// own progress watch judges stalls.
		pause = min(max(2*pause, 10*time.Millisecond), 500*time.Millisecond)
		if timer == nil {
			timer = time.NewTimer(pause)
			defer timer.Stop()
		} else {
			timer.Reset(pause)
		}
		select {
		case <-timer.C:
		case <-ctx.Done():
			return
		}
	}
}

// followProgress follows the progress stream of the payload id at base
// (GET /raft/snapshot/resume with X-Rafthttp-Snapshot-Progress: step),
// calling confirm with each offset it reports, until the stream ends or
// ctx does. It reports whether the offsets grew.
func (p *peer) followProgress(ctx context.Context, base string, id snapshotID, step int64, confirm func(int64)) (advanced bool) {
	t := p.t
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+snapshotResumePath, nil)
	if err != nil {
		return false
	}
	t.setHeaders(req.Header)
	req.Header.Set(headerSnapshotID, id.String())
	req.Header.Set(headerSnapshotProgress, strconv.FormatInt(step, 10))
	// The stream dials as the msgappv2 reader (and the stream prober)
	// does: small buffers, and a read deadline, after which a silent
	// stream is followed again.
	resp, err := p.clients.streams[streamTypeMsgAppV2].RoundTrip(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	p.features.learn(resp.Header, p.lg, t.warns.now)
	if resp.StatusCode != http.StatusOK {
		return false
	}
	br := bufio.NewReaderSize(resp.Body, 64)
	first := int64(-1)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return advanced
		}
		off, err := parseOffset(string(line[:len(line)-1]), id.size)
		if err != nil {
			return advanced
		}
		if first < 0 {
			first = off
		}
		advanced = advanced || off > first
		confirm(off)
	}
}

// snapshotQuery asks the receiver at base how much of the payload id it
// holds, and the CRC-32C of that much (GET /raft/snapshot/resume). An
// answer other than 204 is an answeredError.
func (p *peer) snapshotQuery(ctx context.Context, base string, id snapshotID) (int64, uint32, error) {
	t := p.t
	ctx, cancel := context.WithTimeout(ctx, t.cfg.pipelineTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+snapshotResumePath, nil)
	if err != nil {
		return 0, 0, err
	}
	t.setHeaders(req.Header)
	req.Header.Set(headerSnapshotID, id.String())
	resp, err := p.clients.pipeline.RoundTrip(req)
	if err != nil {
		return 0, 0, err
	}
	defer drainClose(resp.Body)
	p.features.learn(resp.Header, p.lg, t.warns.now)
	q := sentRequest{kind: postRequest, t: t, lg: p.lg, refused: &p.pipeline.refused, base: base}
	if err := q.answerError(resp); err != nil {
		return 0, 0, answeredError{err}
	}
	off, crc, err := parseResumePoint(resp.Header, id.size)
	if err != nil {
		return 0, 0, answeredError{err}
	}
	return off, crc, nil
}

// resumeAttempt is the payload part of one attempt's body: from off, the
// ring's bytes, then the payload's.
type resumeAttempt struct {
	s   *resumableSend
	off int64  // where the attempt starts
	crc uint32 // the CRC-32C of payload[:off]

	mu   sync.Mutex // held by read; finish takes it to wait out a read in progress
	pos  int64      // the next payload byte to send
	done bool
}

// setHeaders puts the resume headers and the payload trailer on req.
func (a *resumeAttempt) setHeaders(req *http.Request) {
	req.Header.Set(headerSnapshotID, a.s.id.String())
	setResumePoint(req.Header, a.off, a.crc)
	if req.Trailer == nil {
		req.Trailer = http.Header{}
	}
	req.Trailer[trailerPayloadCRC32C] = nil
}

// answerError maps the answer to the attempt's POST: 409 means the
// receiver's partial is not what the attempt resumed (errResumeConflict),
// 503 that the receiver is at its limit (ErrTooManySnapshots) or broke
// off (errResumeLater); other refusals are etcd's
// (sentRequest.answerError) and final.
func (a *resumeAttempt) answerError(resp *http.Response, base string) error {
	switch resp.StatusCode {
	case http.StatusConflict:
		return fmt.Errorf("%w: %s", errResumeConflict, clip(readErrorBody(resp.Body), clipQuoted))
	case http.StatusServiceUnavailable:
		body := readErrorBody(resp.Body)
		if body == ErrTooManySnapshots.Error() {
			return ErrTooManySnapshots
		}
		return fmt.Errorf("%w: %s", errResumeLater, clip(body, clipQuoted))
	}
	p := a.s.p
	q := sentRequest{kind: postRequest, t: p.t, lg: p.lg, refused: &p.pipeline.refused, base: base}
	if err := q.answerError(resp); err != nil {
		return answeredError{err}
	}
	return nil
}

// finish ends the attempt once its POST has returned and its context
// ended: it waits for a read in progress (which the ended context or the
// closed payload returns from) and makes later ones fail, since the HTTP
// client may still hold the body.
func (a *resumeAttempt) finish() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.done = true
}

// read serves the payload part of the body: bytes of the ring from pos on,
// then new bytes of the payload, read through the ring, within the window
// and the bandwidth budget.
func (a *resumeAttempt) read(ctx context.Context, p []byte) (int, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.done {
		return 0, errAttemptOver
	}
	s := a.s
	rate := s.p.t.snapRate
	if a.pos == s.id.size {
		if err := s.checkEnd(ctx); err != nil {
			return 0, err
		}
		if !s.ended {
			return 0, nil
		}
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), s.id.size-a.pos, int64(rate.chunk()))]
	if a.pos < s.ring.hi {
		p = p[:min(int64(len(p)), s.ring.hi-a.pos)]
		if err := rate.wait(ctx, len(p)); err != nil {
			return 0, err
		}
		n := s.ring.readAt(p, a.pos)
		a.pos += int64(n)
		return n, nil
	}
	if err := s.waitWindow(ctx); err != nil {
		return 0, err
	}
	p = p[:min(int64(len(p)), s.confirmed.Load()+int64(len(s.ring.buf))-s.ring.hi)]
	if err := rate.wait(ctx, len(p)); err != nil {
		return 0, err
	}
	n, err := s.readPayload(ctx, p)
	if n > 0 {
		s.appended(p[:n])
		a.pos += int64(n)
	}
	if err == io.EOF {
		if a.pos < s.id.size {
			err = fmt.Errorf("%w: %d bytes short", ErrSnapshotSize, s.id.size-a.pos)
			s.failPayload(err)
			return n, err
		}
		s.ended = true
		err = nil
	}
	return n, err
}
