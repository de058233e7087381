package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// SnapshotMessage is a snapshot to send with [Transport.SendSnapshot]: a
// MsgSnap and the payload it stands for (etcd's database), streamed after it.
type SnapshotMessage struct {
	// Message is the MsgSnap; its To names the peer.
	Message *raftpb.Message
	// Payload supplies the payload. The transport reads it once and closes
	// it, whatever the outcome. Close may come while a Read is blocked (the
	// transfer stalled or was stopped) and must then make that Read return.
	Payload io.ReadCloser
	// PayloadSize is the exact number of bytes Payload yields. A payload
	// that ends early or runs long fails the transfer, so the receiver never
	// keeps a payload of the wrong size.
	PayloadSize int64
}

// crc32c is the table of the snapshot body's checksum, sent in the
// trailerCRC32C trailer.
var crc32c = crc32.MakeTable(crc32.Castagnoli)

// SendSnapshot sends a snapshot to the peer m.Message.To, in the background:
// POST /raft/snapshot with the length-prefixed MsgSnap and then the payload,
// streamed with constant memory whatever its size, within the Transport's
// snapshot bandwidth budget. The returned channel receives the outcome once
// (nil on success). The payload is always closed.
//
// To a peer that resumes (both sides announced snapshot-resume: see
// ResumableSnapshotStore), a transfer that breaks is attempted again, with
// backoff, from where the receiver's copy ends, for as long as that copy
// grows: the send fails once it has not grown for SnapshotProgressTimeout,
// or at once if the payload fails or the peer refuses for good. It starts
// from the receiver's copy too if an earlier SendSnapshot of the snapshot
// left one: the sender reads that part of the payload without sending it,
// and resumes if its CRC-32C matches the receiver's (a payload with the
// same index, term and size but other bytes is sent whole). At most
// 4 MiB of the payload is held in memory for sending again.
//
// Raft is told the outcome with ReportSnapshot, once per SendSnapshot (not
// per attempt), always before the channel receives it:
//   - a transfer that was started reports Finish or Failure (with
//     ReportUnreachable) from the transport's goroutine when it ends, at
//     Stop included, as etcd does;
//   - a refusal (not a MsgSnap, no payload, an unknown peer, a snapshot to
//     that peer already in flight, MaxSnapshotSends reached, the peer
//     stopping) reports Failure synchronously, in the caller's goroutine,
//     before SendSnapshot returns, as Send reports its drops; raft retries
//     later. Before Start and after Stop a refusal (ErrStopped) is not
//     reported, as Send's drops are not.
//
// Refusals are logged, rate-limited per kind (a raft retrying at once
// could otherwise log a line per attempt).
func (t *Transport) SendSnapshot(m SnapshotMessage) <-chan error {
	errc := make(chan error, 1)
	to := m.Message.GetTo()
	t.mu.RLock()
	p, known := t.peers[to]
	unusable := t.usableLocked()
	t.mu.RUnlock()
	refuse := func(kind warnKind, err error) <-chan error {
		if m.Payload != nil {
			m.Payload.Close()
		}
		t.refusedSnapshot(kind, m.Message, err, unusable == nil)
		errc <- err
		return errc
	}
	switch {
	case m.Message == nil || m.Message.GetType() != raftpb.MsgSnap:
		return refuse(warnSnapRefused, errors.New("rafthttp: SendSnapshot needs a MsgSnap"))
	case m.Payload == nil || m.PayloadSize < 0:
		return refuse(warnSnapRefused, errors.New("rafthttp: SendSnapshot needs a payload and its size"))
	case unusable != nil:
		return refuse(warnSnapRefused, unusable)
	case !known:
		return refuse(warnSnapRefused, fmt.Errorf("rafthttp: SendSnapshot to %s: %w", formatID(to), ErrMemberNotFound))
	}
	if !p.snapSending.CompareAndSwap(false, true) {
		return refuse(warnSnapBusy, fmt.Errorf("%w: a snapshot to %s is already in flight", ErrTooManySnapshots, p.idStr))
	}
	select {
	case t.snapSendSem <- struct{}{}:
	default:
		p.snapSending.Store(false)
		return refuse(warnSnapBusy, fmt.Errorf("%w: %d in flight (MaxSnapshotSends)", ErrTooManySnapshots, t.cfg.maxSnapSends))
	}
	if !p.goIfRunning("snapshot send", func() {
		err := p.sendSnapshot(m)
		// Free the slots before telling raft and the caller, who may
		// send again at once.
		<-t.snapSendSem
		p.snapSending.Store(false)
		status := raft.SnapshotFinish
		if err != nil {
			status = raft.SnapshotFailure
		}
		t.reportSnapshot(p.id, status)
		errc <- err
	}) {
		<-t.snapSendSem
		p.snapSending.Store(false)
		return refuse(warnSnapRefused, fmt.Errorf("rafthttp: SendSnapshot to %s: peer being removed: %w", p.idStr, ErrStopped))
	}
	return errc
}

// refusedSnapshot logs a SendSnapshot refusal, rate-limited by kind, and,
// if report, tells raft the snapshot failed.
func (t *Transport) refusedSnapshot(kind warnKind, m *raftpb.Message, err error, report bool) {
	if t.warns != nil { // started: there is a logger and a limiter
		if n, ok := t.warns.allow(kind); ok {
			t.lg.Warn("refused to send database snapshot", zap.String("local-member-id", t.cfg.idStr),
				zap.String("remote-peer-id", formatID(m.GetTo())),
				zap.Uint64("snapshot-index", m.GetSnapshot().GetMetadata().GetIndex()), zap.Error(err), suppressed(n))
		}
	}
	if report && m.GetTo() != 0 {
		t.reportSnapshot(m.GetTo(), raft.SnapshotFailure)
	}
}

// sendSnapshot does one snapshot POST and records its outcome; the caller
// reports it to raft.
func (p *peer) sendSnapshot(m SnapshotMessage) (err error) {
	t := p.t
	start := time.Now()
	index := m.Message.GetSnapshot().GetMetadata().GetIndex()
	total := int64(messageFrameSize(m.Message)) + m.PayloadSize
	lg := p.lg.With(zap.Uint64("snapshot-index", index), zap.Int64("bytes", total), zap.String("size", humanize.IBytes(uint64(total))))
	lg.Info("sending database snapshot")
	t.metrics.snapSendInflight.WithLabelValues(p.idStr).Inc()
	defer t.metrics.snapSendInflight.WithLabelValues(p.idStr).Dec()

	var (
		u    url.URL // the URL the last request went to
		sent int64   // bytes put on the wire, over every attempt
	)
	if t.cfg.features.has(featureSnapshotResume) && p.features.load().has(featureSnapshotResume) {
		// Both sides resume: retried while it makes progress
		// (snapshot_resume.go).
		u, sent, err = p.sendResumable(m, lg)
	} else {
		u = p.picker.pick()
		body := newSnapshotBody(p, m)
		defer body.close()
		err = p.postSnapshot(u.String(), body)
		if sent = body.sent.Load(); err == nil && sent != total {
			err = fmt.Errorf("%w: sent %d of %d bytes", ErrSnapshotSize, sent, total)
		}
	}
	if err != nil {
		if n, ok := p.snapFails.allow(t.warns.now); ok {
			lg.Warn("failed to send database snapshot", zap.Error(err), suppressed(n))
		}
		if errors.Is(err, ErrMemberRemoved) {
			t.postCriticalError(ErrMemberRemoved)
		}
		p.picker.unreachable(u)
		p.status.deactivate(failureType{source: "sendMsgSnap", action: "post"}, err.Error())
		t.reportUnreachable(p.id)
		p.metrics.sentFailures.Inc()
		t.metrics.snapSendFailures.WithLabelValues(p.idStr).Inc()
		return err
	}
	took := time.Since(start)
	p.status.activate()
	lg.Info("sent database snapshot", zap.Duration("took", took),
		zap.String("rate", humanize.IBytes(uint64(float64(total)/max(took.Seconds(), 1e-9)))+"/s"))
	p.metrics.sent(1, int(sent))
	t.metrics.snapSentBytes.WithLabelValues(p.idStr).Add(float64(m.PayloadSize))
	t.metrics.snapSendSuccess.WithLabelValues(p.idStr).Inc()
	t.metrics.snapSendDuration.WithLabelValues(p.idStr).Observe(took.Seconds())
	return nil
}

// messageFrameSize is the size of m's length-prefixed frame.
func messageFrameSize(m *raftpb.Message) int {
	return frameHeaderLen + raftproto.MessageSize(m)
}

// postSnapshot makes the POST. The request fails if the transfer makes no
// progress for the progress timeout, or if no answer comes within
// snapshotAnswerTimeout of the last byte; there is no limit on its total
// time. The error of a resumable attempt (body.res set) that the receiver
// answered is an answeredError.
func (p *peer) postSnapshot(base string, body *snapshotBody) error {
	t := p.t
	ctx, cancel := context.WithCancelCause(p.ctx)
	defer cancel(nil)
	body.ctx = ctx
	body.watch = newProgressWatch(t.cfg.snapProgressTimeout, snapshotAnswerTimeout(t.cfg.snapProgressTimeout, body.total),
		func(err error) { cancel(err) })
	// RoundTrip does not return until its writer goroutine is done with the
	// body: a payload Read that blocks (a stalled producer) must be broken
	// by closing the payload, or neither a stall nor Stop could end the
	// transfer. A resumable attempt closes it only if a Read is blocked in
	// it: the next attempt reads on.
	onCancel := body.closePayload
	if body.res != nil {
		onCancel = body.res.s.cancelPayloadRead
	}
	defer context.AfterFunc(ctx, onCancel)()

	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+RaftSnapshotPrefix, body)
	if err != nil {
		return err
	}
	// Chunked, as etcd sends it (its body is a pipe, of unknown length),
	// which also lets a trailer follow.
	req.ContentLength = -1
	req.Header.Set("Content-Type", "application/octet-stream")
	t.setHeaders(req.Header)
	if t.cfg.features.has(featureCRC32CTrailer) && p.features.load().has(featureCRC32CTrailer) {
		req.Trailer = http.Header{trailerCRC32C: nil}
		body.trailer = req.Trailer
		body.bodyCRC = true
	}
	if body.res != nil {
		body.res.setHeaders(req)
		body.trailer = req.Trailer
	}

	resp, err := p.clients.pipeline.RoundTrip(req)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil && ctx.Err() != nil {
			return cause
		}
		if berr := body.err.Load(); berr != nil {
			return *berr
		}
		return err
	}
	defer drainClose(resp.Body)
	p.features.learn(resp.Header, p.lg, t.warns.now)
	if body.res != nil {
		return body.res.answerError(resp, base)
	}
	q := sentRequest{kind: postRequest, t: t, lg: p.lg, refused: &p.pipeline.refused, base: base}
	return q.answerError(resp)
}

// snapshotBody is the body of a snapshot POST: the envelope, then the
// payload, checked against its declared size, throttled, checksummed, and
// watched for progress. Only the HTTP client's writer goroutine reads it.
type snapshotBody struct {
	envelope []byte
	payload  io.ReadCloser
	left     int64 // payload bytes still expected
	rate     *snapshotRate
	ctx      context.Context // the request's, set by postSnapshot
	crc      hash.Hash32
	trailer  http.Header // the trailers declared; nil if none
	bodyCRC  bool        // the peer takes the CRC-32C trailer
	total    int64       // bytes of the whole body, envelope included
	sent     atomic.Int64
	err      atomic.Pointer[error] // why reading failed, if it did
	watch    *progressWatch        // set before the body is read
	res      *resumeAttempt        // a resumable attempt: the payload comes from it (snapshot_resume.go)

	closeOnce sync.Once // guards closing the payload
}

// snapshotChunk is the largest read the body serves at once: the unit of
// throttling and of progress. Throttled bodies use smaller reads
// (snapshotRate.chunk), so that each read takes a fraction of a second.
const snapshotChunk = 1 << 20

func newSnapshotBody(p *peer, m SnapshotMessage) *snapshotBody {
	return &snapshotBody{
		envelope: appendMessageFrame(nil, m.Message),
		payload:  m.Payload,
		left:     m.PayloadSize,
		total:    int64(messageFrameSize(m.Message)) + m.PayloadSize,
		rate:     p.t.snapRate,
		crc:      crc32.New(crc32c),
	}
}

func (b *snapshotBody) close() {
	if b.watch != nil {
		b.watch.stop()
	}
	b.closePayload()
}

// closePayload closes the payload once; it may run while a Read is blocked
// in it, to unblock it.
func (b *snapshotBody) closePayload() { b.closeOnce.Do(func() { b.payload.Close() }) }

func (b *snapshotBody) Read(p []byte) (int, error) {
	n, err := b.read(p)
	if n > 0 {
		b.crc.Write(p[:n])
		b.sent.Add(int64(n))
		b.watch.touch()
	}
	if err == io.EOF {
		// The trailers, if the peer takes them, go out after the last
		// chunk.
		if b.bodyCRC {
			b.trailer.Set(trailerCRC32C, crcOf(b.crc.Sum32()))
		}
		if b.res != nil {
			b.trailer.Set(trailerPayloadCRC32C, crcOf(b.res.s.ring.crcHi))
		}
		b.watch.sent()
	} else if err != nil {
		b.err.CompareAndSwap(nil, &err)
	}
	return n, err
}

func (b *snapshotBody) read(p []byte) (int, error) {
	if len(b.envelope) > 0 {
		n := copy(p, b.envelope)
		b.envelope = b.envelope[n:]
		return n, nil
	}
	if b.res != nil {
		return b.res.read(b.ctx, p)
	}
	if b.left == 0 {
		// The payload must end where it said it would.
		var one [1]byte
		if n, err := b.payload.Read(one[:]); n > 0 || (err != nil && err != io.EOF) {
			if err == nil {
				err = fmt.Errorf("%w: more than declared", ErrSnapshotSize)
			}
			return 0, err
		}
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), b.left, int64(b.rate.chunk()))]
	if err := b.rate.wait(b.ctx, len(p)); err != nil {
		return 0, err
	}
	n, err := b.payload.Read(p)
	b.left -= int64(n)
	if err == io.EOF {
		if b.left > 0 {
			return n, fmt.Errorf("%w: %d bytes short", ErrSnapshotSize, b.left)
		}
		err = nil
	}
	return n, err
}

// snapshotRate is the bandwidth budget of a Transport's outgoing snapshots
// (SnapshotSendRate, SetSnapshotSendRate): one token bucket that every
// snapshot body draws from, whatever its peer, so that the snapshots in
// flight share the budget instead of each having its own, and a change
// applies to all of them at their next read.
type snapshotRate struct {
	lim   *rate.Limiter
	bps   atomic.Int64 // the budget; 0: none
	gauge prometheus.Gauge
}

// snapshotRateBurst is the bucket's depth: the most a body takes at once,
// and what an idle budget lets through at once.
const snapshotRateBurst = 64 << 10

func newSnapshotRate(bps int64, m *metrics) *snapshotRate {
	r := &snapshotRate{lim: rate.NewLimiter(rate.Inf, snapshotRateBurst), gauge: m.snapResume.rateLimit}
	r.set(bps)
	return r
}

// set changes the budget; 0 removes it. A body waiting for its turn at the
// old rate waits at most a sixteenth of a second's worth of the old budget
// (chunk) before the new one applies.
func (r *snapshotRate) set(bps int64) {
	lim := rate.Inf
	if bps > 0 {
		lim = rate.Limit(bps)
	}
	r.lim.SetLimit(lim)
	r.bps.Store(bps)
	r.gauge.Set(float64(bps))
}

// chunk is the largest read a snapshot body makes at once: under a budget,
// a sixteenth of a second's worth of it (between 1 KiB and the burst), so
// that the snapshots sharing it interleave finely and a change of the
// budget applies within a fraction of a second; without one,
// snapshotChunk.
func (r *snapshotRate) chunk() int {
	bps := r.bps.Load()
	if bps == 0 {
		return snapshotChunk
	}
	return int(min(max(bps/16, 1<<10), snapshotRateBurst))
}

// wait takes n bytes from the budget, waiting until it has them or ctx
// ends.
func (r *snapshotRate) wait(ctx context.Context, n int) error {
	if r.bps.Load() == 0 {
		return nil
	}
	for n > 0 { // a read sized before the budget shrank may exceed the burst
		k := min(n, snapshotRateBurst)
		if err := r.lim.WaitN(ctx, k); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// SetSnapshotSendRate changes the bandwidth budget shared by all outgoing
// snapshots, in bytes per second (see SnapshotSendRate, its initial
// value): the snapshots in flight take the new budget within a fraction of
// a second. Zero removes the limit. It fails on a negative rate, and
// before Start (ErrNotStarted); after Stop it does nothing.
func (t *Transport) SetSnapshotSendRate(bytesPerSec int64) error {
	if bytesPerSec < 0 {
		return errors.New("rafthttp: SetSnapshotSendRate: negative rate")
	}
	t.mu.RLock()
	started := t.started
	t.mu.RUnlock()
	if !started {
		return ErrNotStarted
	}
	t.snapRate.set(bytesPerSec)
	return nil
}

// crcOf formats a CRC-32C as the trailer carries it.
func crcOf(sum uint32) string { return fmt.Sprintf("%08x", sum) }

// parseCRC reads a trailer value.
func parseCRC(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 16, 32)
	return uint32(v), err
}

// progressWatch ends a transfer that makes no progress: the body of a
// snapshot POST, or of a pipeline POST carrying a MsgSnap (both carry a
// snapshot, and may take as long as their size needs, so neither has an
// overall timeout). It has two phases.
//
// While the body is being sent, the body's reader calls touch for every
// read; no read for the progress timeout is a stall. Reads block while the
// connection cannot take more (TCP pushes back), so a receiver that stops
// reading stalls the body too.
//
// Once the last byte is read (sent), nothing moves until the answer comes:
// the receiver is making the payload durable (a store fsyncs it) and then
// hands the MsgSnap to raft. That wait is not a stall and gets its own
// bound, answer (snapshotAnswerTimeout), which grows with the size sent.
//
// stalled is called at most once, with why (ErrSnapshotStalled, wrapped
// for the answer phase), from a timer goroutine, never after stop returns.
// It must be quick and must not call stop.
type progressWatch struct {
	last      atomic.Int64 // monoNanos of the last read, or of the end of the body
	allowed   atomic.Int64 // how long may pass after last, in nanoseconds
	answering atomic.Bool  // the body is sent
	answer    time.Duration
	stalled   func(error)

	mu    sync.Mutex // guards timer (the first check may run before AfterFunc returns) and done
	timer *time.Timer
	done  bool // the transfer is over: the watch stands down
}

func newProgressWatch(progress, answer time.Duration, stalled func(error)) *progressWatch {
	w := &progressWatch{answer: answer, stalled: stalled}
	w.last.Store(monoNanos())
	w.allowed.Store(int64(progress))
	w.mu.Lock()
	w.timer = time.AfterFunc(progress, w.check)
	w.mu.Unlock()
	return w
}

// touch records progress: a read of the body returned bytes. It costs an
// atomic store; only the timer, when it fires, looks at the clock of the
// last one.
func (w *progressWatch) touch() { w.last.Store(monoNanos()) }

// sent records that the last byte of the body was read: from now on, the
// answer is awaited. Idempotent.
func (w *progressWatch) sent() {
	if !w.answering.CompareAndSwap(false, true) {
		return
	}
	// allowed first: a check that sees the new allowed with the old last,
	// or the reverse, finds no stall where there is none (answer is never
	// shorter than the progress timeout).
	w.allowed.Store(int64(w.answer))
	w.last.Store(monoNanos())
}

// check runs when the timer fires: it calls stalled if the allowed time has
// passed since the last progress, and otherwise waits for the rest of it.
func (w *progressWatch) check() {
	w.mu.Lock()
	if w.done {
		w.mu.Unlock()
		return
	}
	allowed := time.Duration(w.allowed.Load())
	idle := time.Duration(monoNanos() - w.last.Load())
	if idle < allowed {
		w.timer.Reset(allowed - idle)
		w.mu.Unlock()
		return
	}
	w.done = true
	err := ErrSnapshotStalled
	if w.answering.Load() {
		err = fmt.Errorf("%w: no answer within %v of the last byte sent", ErrSnapshotStalled, allowed)
	}
	// Under mu, so that stop, once returned, has no stalled call behind
	// it. stalled only cancels a context.
	w.stalled(err)
	w.mu.Unlock()
}

// stop ends the watch; stalled is not called after it returns.
func (w *progressWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.done = true
	w.timer.Stop()
}

// snapshotAnswerRate is the rate, in bytes per second, at which the wait
// for a snapshot's answer expects the receiver's disk to make what it was
// sent durable. A store writes the payload as it arrives, but mostly into
// the page cache; the fsync at the end may have to write all of it. 10 MiB/s
// is well below what the disks raft members run on write sequentially, so
// a slow disk is waited for; a receiver that is stuck for good is still
// given up on, and the peer's snapshot slot freed, in a bounded time.
const snapshotAnswerRate = 10 << 20

// snapshotAnswerTimeout is how long a snapshot's sender waits for the
// answer once the last of its size bytes is sent: the progress timeout (for
// the receiver's Process, a directory fsync, the network) plus the time to
// write size bytes at snapshotAnswerRate.
func snapshotAnswerTimeout(progress time.Duration, size int64) time.Duration {
	return progress + time.Duration(float64(size)/snapshotAnswerRate*float64(time.Second))
}
