package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
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
//     SaveSnapshot would have saved it, and the MsgSnap goes to raft. The
//     receiver then remembers that raft got it: if the answer is lost with
//     the connection, the sender's next resume query finds the whole
//     payload in, and its POST of the envelope alone is answered 204
//     without raft getting the MsgSnap twice.
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
