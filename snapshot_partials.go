package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// The receiving side of resumable snapshot transfers (snapshot_resume.go
// has the protocol and the sending side): the partial payloads a Transport
// keeps, the resumable receive that serveSnapshot hands a resumable POST
// to, and GET /raft/snapshot/resume.

// partials keeps a Transport's partial payloads: for each sender, the one
// of the resumable transfer it is sending now (active), or the one kept
// after its transfer broke, until the sender resumes it, another snapshot
// from the sender replaces it, it expires, the bounds push it out (the
// oldest first), or the transport stops.
type partials struct {
	store    ResumableSnapshotStore // nil: this transport does not resume
	maxCount int
	maxBytes int64
	ttl      time.Duration
	m        *snapResumeMetrics

	mu        sync.Mutex
	closed    bool
	bySender  map[uint64]*partial
	kept      int   // partials kept (not active)
	keptBytes int64 // their bytes
}

// partial is a sender's partial payload.
type partial struct {
	from uint64
	id   snapshotID
	w    PartialSnapshot
	size atomic.Int64 // bytes written
	// crc is the CRC-32C of the bytes written: the active receive's while
	// it runs, then partials.mu's.
	crc uint32

	// Guarded by partials.mu:
	recv *partialRecv // the receive appending to it; nil while kept
	kept bool
	// saved: the payload is committed (in the store under its final
	// name), but its request ended before raft got the MsgSnap; kept so
	// that the sender's next attempt, which the resume query tells that
	// the whole payload is in, has raft get it.
	saved bool
	// delivered: raft got the MsgSnap too, and the partial is only a
	// record of it (deliveredLocked): the sender may not have heard, its
	// answer lost with the connection, and its next attempt is answered
	// without raft getting the MsgSnap twice.
	delivered bool
	gen       uint64 // counts the times it was kept, so that a stale expiry does nothing
	keptAt    time.Time
	expiry    *time.Timer
	wake      chan struct{} // closed, and replaced, when size reaches waitMin or the partial changes hands
	// bufs are the read-ahead buffers of the receive that broke, kept
	// for the next: a resumed receive then makes no garbage of 2 MiB.
	bufs []*[]byte

	waitMin atomic.Int64 // the least size a progress query waits for; MaxInt64: none
}

// partialRecv is the receive appending to a partial.
type partialRecv struct {
	cutOff func()        // fails its body reads: the sender gave up on it
	done   chan struct{} // closed when the partial is kept, committed or dropped
}

func newPartials(t *Transport) *partials {
	ps := &partials{maxCount: t.cfg.snapPartials, maxBytes: t.cfg.snapPartialBytes, ttl: t.cfg.snapPartialTTL,
		m: &t.metrics.snapResume, bySender: map[uint64]*partial{}}
	if rs, ok := t.SnapshotStore.(ResumableSnapshotStore); ok && t.cfg.features.has(featureSnapshotResume) {
		ps.store = rs
	}
	return ps
}

// begin starts a resumable receive from the sender from: it appends to the
// sender's partial if that is the one st resumes, or starts a new one for
// m if st starts at 0. A receive from the sender still under way is cut
// off first. cutOff fails the new receive's body reads.
func (ps *partials) begin(ctx context.Context, from uint64, st resumeStart, m *raftpb.Message, cutOff func()) (*partial, error) {
	for {
		ps.mu.Lock()
		if ps.closed {
			ps.mu.Unlock()
			return nil, ErrStopped
		}
		old := ps.bySender[from]
		if old != nil && old.recv != nil {
			if err := ps.cutOffLocked(ctx, old); err != nil {
				return nil, err
			}
			continue
		}
		if st.offset > 0 {
			if old == nil || old.id != st.id || old.size.Load() != st.offset || old.crc != st.crc {
				ps.mu.Unlock()
				return nil, fmt.Errorf("%w: resuming %v at %d", errResumeConflict, st.id, st.offset)
			}
			if old.delivered {
				ps.mu.Unlock()
				return nil, errSnapshotDelivered
			}
			// A saved one (offset: the whole payload) is taken as it is:
			// the receive has only raft to tell.
			ps.unkeepLocked(old)
			old.recv = &partialRecv{cutOff: cutOff, done: make(chan struct{})}
			ps.wakeLocked(old)
			ps.mu.Unlock()
			return old, nil
		}
		if old != nil {
			ps.dropLocked(old)
		}
		ps.mu.Unlock()
		w, err := ps.store.CreatePartial(m)
		if err != nil {
			return nil, err
		}
		p := &partial{from: from, id: st.id, w: w, wake: make(chan struct{}),
			recv: &partialRecv{cutOff: cutOff, done: make(chan struct{})}}
		p.waitMin.Store(math.MaxInt64)
		ps.mu.Lock()
		if ps.closed || ps.bySender[from] != nil { // Stop, or another request raced us
			closed := ps.closed
			ps.mu.Unlock()
			_ = w.Discard()
			if closed {
				return nil, ErrStopped
			}
			continue
		}
		ps.bySender[from] = p
		ps.mu.Unlock()
		return p, nil
	}
}

// cutOffLocked cuts off the receive appending to p and waits until it has
// let go of p, or ctx ends. ps.mu is held on entry and released on return.
func (ps *partials) cutOffLocked(ctx context.Context, p *partial) error {
	r := p.recv
	ps.mu.Unlock()
	r.cutOff()
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// grew records n bytes written to p, waking the progress queries it
// satisfies.
func (ps *partials) grew(p *partial, n int) {
	if p.size.Add(int64(n)) >= p.waitMin.Load() {
		ps.mu.Lock()
		ps.wakeLocked(p)
		ps.mu.Unlock()
	}
}

// wakeLocked wakes the progress queries waiting on p.
func (ps *partials) wakeLocked(p *partial) {
	close(p.wake)
	p.wake = make(chan struct{})
	p.waitMin.Store(math.MaxInt64)
}

// How a resumable receive ends for its partial.
type partialOutcome uint8

const (
	partialKeep      partialOutcome = iota // the transfer broke: keep it for the next attempt
	partialDrop                            // it failed for good: discard it
	partialCommitted                       // the store has it and raft got the MsgSnap: forget it
	partialSaved                           // the store has it, raft did not get the MsgSnap: keep it for the next attempt
	partialDelivered                       // the store has it and raft got the MsgSnap: keep a record for the sender's next attempt
)

// errSnapshotDelivered: a resumable POST resumes a payload whose MsgSnap
// raft already got, from an attempt whose answer the sender did not read.
// The POST is answered as a success, and raft is not told again.
var errSnapshotDelivered = errors.New("rafthttp: snapshot already delivered")

// end lets go of p after its receive r, as o says. It does nothing if r
// no longer holds p (release after end).
func (ps *partials) end(p *partial, r *partialRecv, o partialOutcome) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if p.recv != r || r == nil {
		return
	}
	p.recv = nil
	defer close(r.done)
	ps.wakeLocked(p)
	switch {
	case o == partialDelivered && !ps.closed:
		ps.deliveredLocked(p)
	case o == partialCommitted, o == partialDelivered:
		if ps.bySender[p.from] == p {
			delete(ps.bySender, p.from)
		}
	case o == partialSaved && !ps.closed:
		p.saved = true
		ps.keepLocked(p)
	case o == partialKeep && !ps.closed && p.size.Load() > 0:
		ps.keepLocked(p)
	default:
		ps.dropLocked(p)
	}
}

// release ends the receive r of p, if it still holds it, as committed:
// for a handler that returns (or panics) past the point where it would
// have ended it.
func (ps *partials) release(p *partial, r *partialRecv) { ps.end(p, r, partialCommitted) }

// keepLocked keeps p, which no receive holds, until it expires or the
// bounds push it out.
func (ps *partials) keepLocked(p *partial) {
	p.kept = true
	p.keptAt = time.Now()
	p.gen++
	gen := p.gen
	p.expiry = time.AfterFunc(ps.ttl, func() { ps.expire(p, gen) })
	ps.kept++
	ps.keptBytes += p.heldBytes()
	for ps.kept > ps.maxCount || ps.keptBytes > ps.maxBytes {
		var oldest *partial
		for _, q := range ps.bySender {
			if q.kept && (oldest == nil || q.keptAt.Before(oldest.keptAt)) {
				oldest = q
			}
		}
		ps.dropLocked(oldest)
	}
	ps.gaugesLocked()
}

// deliveredLocked keeps p, whose MsgSnap raft got, as a record of that:
// if the answer was lost with the connection, the sender's next attempt
// finds (resumePoint) that the whole payload is in, sends the envelope
// alone, and is answered without raft getting the MsgSnap a second time
// (begin). The record holds no bytes and counts against no bound (there is
// one per sender at most); it goes when the sender's next snapshot begins,
// after the partials' TTL, or at Stop.
func (ps *partials) deliveredLocked(p *partial) {
	p.saved, p.delivered = true, true
	p.gen++
	gen := p.gen
	p.expiry = time.AfterFunc(ps.ttl, func() { ps.expire(p, gen) })
}

// unkeepLocked takes p out of the kept partials, if it is one.
func (ps *partials) unkeepLocked(p *partial) {
	if !p.kept {
		return
	}
	p.kept = false
	p.expiry.Stop()
	ps.kept--
	ps.keptBytes -= p.heldBytes()
	ps.gaugesLocked()
}

// heldBytes is what p holds apart from the store's snapshots: nothing once
// saved under its final name. ps.mu must be held.
func (p *partial) heldBytes() int64 {
	if p.saved {
		return 0
	}
	return p.size.Load()
}

// dropLocked forgets p, which no receive holds, and discards it unless it
// is saved (committed: the store's snapshot now).
func (ps *partials) dropLocked(p *partial) {
	ps.unkeepLocked(p)
	if p.delivered {
		p.expiry.Stop()
	}
	if ps.bySender[p.from] == p {
		delete(ps.bySender, p.from)
	}
	if !p.saved {
		_ = p.w.Discard()
	}
	for _, b := range p.bufs {
		snapReadAheadPool.Put(b)
	}
	p.bufs = nil
	ps.wakeLocked(p)
}

func (ps *partials) gaugesLocked() {
	ps.m.partials.Set(float64(ps.kept))
	ps.m.partialSize.Set(float64(ps.keptBytes))
}

// expire drops p if it is still kept as it was when its timer was set.
func (ps *partials) expire(p *partial, gen uint64) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	if ps.closed || !(p.kept || p.delivered) || p.gen != gen {
		return
	}
	ps.dropLocked(p)
}

// close drops every kept partial; partials that receives still hold are
// dropped when they end. Stop calls it once the handlers have returned.
func (ps *partials) close() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.closed = true
	for _, p := range ps.bySender {
		if p.recv == nil {
			ps.dropLocked(p)
		}
	}
}

// resumePoint answers a resume query from the sender from about id: it
// cuts off the sender's receive still under way, if any, and returns how
// much of the payload the sender's partial holds and its CRC-32C (0 if it
// has none of id).
func (ps *partials) resumePoint(ctx context.Context, from uint64, id snapshotID) (int64, uint32, error) {
	for {
		ps.mu.Lock()
		p := ps.bySender[from]
		if p != nil && p.recv != nil {
			if err := ps.cutOffLocked(ctx, p); err != nil {
				return 0, 0, err
			}
			continue
		}
		var (
			off int64
			crc uint32
		)
		if p != nil && p.id == id {
			off, crc = p.size.Load(), p.crc
		}
		ps.mu.Unlock()
		return off, crc, nil
	}
}

// watch is a progress stream's look at the partial of the sender from:
// how much of the payload id it holds, whether a receive appends to it
// still, and, if so, a channel closed once it holds target bytes or the
// receive ends. size is 0 and active false if the sender's partial is not
// of id.
func (ps *partials) watch(from uint64, id snapshotID, target int64) (size int64, active bool, wake <-chan struct{}) {
	ps.mu.Lock()
	p := ps.bySender[from]
	if p == nil || p.id != id {
		ps.mu.Unlock()
		return 0, false, nil
	}
	size, active = p.size.Load(), p.recv != nil
	if !active || size >= target {
		ps.mu.Unlock()
		return size, active, closedChan
	}
	if target < p.waitMin.Load() {
		p.waitMin.Store(target)
	}
	wake = p.wake
	ps.mu.Unlock()
	// grew adds, then compares with waitMin; we stored waitMin, and now
	// look at the size: one of us sees the other.
	if size = p.size.Load(); size >= target {
		return size, true, closedChan
	}
	return size, true, wake
}

// closedChan is a channel that is always ready.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// streamProgress answers a progress stream: a line with the offset the
// sender from's partial of id holds, at once and whenever it has grown by
// step, until its receive ends (then a last line) or the request does.
func (ps *partials) streamProgress(w http.ResponseWriter, r *http.Request, from uint64, id snapshotID, step int64) {
	step = max(step, minProgressStep)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	var buf [24]byte
	last := int64(-1)
	for {
		size, active, wake := ps.watch(from, id, last+step)
		if size > last {
			if _, err := w.Write(append(strconv.AppendInt(buf[:0], size, 10), '\n')); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
			last = size
		}
		if !active {
			return
		}
		select {
		case <-wake:
		case <-r.Context().Done():
			return
		}
	}
}

// partialWriter appends what a resumable receive reads to its partial,
// keeping its size and CRC-32C.
type partialWriter struct {
	ps *partials
	p  *partial
}

// storeError is a failure of the store's writes, which no resume can get
// past.
type storeError struct{ error }

func (e storeError) Unwrap() error { return e.error }

func (w *partialWriter) Write(b []byte) (int, error) {
	if int64(len(b)) > w.p.id.size-w.p.size.Load() {
		return 0, fmt.Errorf("%w: more than declared", ErrSnapshotSize)
	}
	n, err := w.p.w.Write(b)
	w.p.crc = crc32.Update(w.p.crc, crc32c, b[:n])
	w.ps.grew(w.p, n)
	if err != nil {
		return n, storeError{err}
	}
	if n < len(b) {
		return n, storeError{io.ErrShortWrite}
	}
	return n, nil
}

// takeBuffers returns the read-ahead pool of a receive that appends to p:
// the buffers an earlier receive left with p first, then the shared pool.
// Only the receive holding p calls it.
func (p *partial) takeBuffers() *bufStash {
	s := &bufStash{bufs: p.bufs, fallback: &snapReadAheadPool}
	p.bufs = nil
	return s
}

// receive appends what src yields to p, then, at its end, checks the
// payload's size and CRC-32C (the trailer of r) and commits it. A transfer
// that breaks keeps p (kept reports it), and with it the buffers of ra,
// src's read-ahead, whose pool is p's (takeBuffers); any other failure
// drops it.
func (ps *partials) receive(r *http.Request, p *partial, src io.Reader, ra *readAhead) (kept bool, err error) {
	// When the request ends (the connection failed, or Stop), the body
	// is cut off, and what was read of it still goes to p: a read error
	// cancels the request at once, with the read-ahead holding bytes.
	stop := context.AfterFunc(r.Context(), p.recv.cutOff)
	_, err = io.Copy(&partialWriter{ps: ps, p: p}, src)
	stop()
	ra.recycle() // nothing reads it any more; its buffers go to its bufStash
	stash, _ := ra.pool.(*bufStash)
	if err == nil {
		err = p.check(r.Trailer)
	}
	if err == nil && !p.isSaved(ps) {
		if err = p.w.Commit(r.Context()); err != nil {
			err = storeError{err}
		}
	}
	var se storeError
	switch {
	case err == nil:
		// Saved: the caller ends the receive once raft has the MsgSnap
		// (partialCommitted), or could not give it (partialSaved).
		stash.release()
	case !errors.As(err, &se) && !errors.Is(err, ErrSnapshotChecksum) && !errors.Is(err, ErrSnapshotSize):
		// The connection broke, stalled or was cut off: what arrived
		// is good, and the sender's next attempt brings the rest.
		p.bufs, stash.bufs = stash.bufs, nil // before end: from then on, p is another receive's
		ps.end(p, p.recv, partialKeep)
		return true, err
	default:
		stash.release()
		ps.end(p, p.recv, partialDrop)
	}
	return false, err
}

// isSaved reports whether p's payload is committed already.
func (p *partial) isSaved(ps *partials) bool {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	return p.saved
}

// check checks, once the body has ended, that the partial holds the whole
// payload and that its CRC-32C is the trailer's.
func (p *partial) check(trailer http.Header) error {
	if size := p.size.Load(); size != p.id.size {
		return fmt.Errorf("%w: %d bytes short", ErrSnapshotSize, p.id.size-size)
	}
	v := trailer.Get(trailerPayloadCRC32C)
	sum, err := parseCRCStrict(v)
	if err != nil || sum != p.crc {
		return fmt.Errorf("%w: payload trailer %q, payload %s", ErrSnapshotChecksum, clip(v, clipPlain), crcOf(p.crc))
	}
	return nil
}

// beginPartial starts the resumable receive a POST's headers ask for, once
// its envelope m (whose frame has the CRC-32C envelope) is read: it returns
// the partial to append to, or, if the request cannot go on, the status
// and body of the refusal (204, and no body, if raft already got the
// MsgSnap: the POST is a retry after a lost answer). A transport that does not resume takes a
// transfer that starts at 0 as an ordinary one (nil partial).
func (t *Transport) beginPartial(r *http.Request, rh *requestHeaders, m *raftpb.Message, envelope uint32, body *pacedBody) (*partial, int, string) {
	st, err := parseResumeStart(r.Header)
	if err != nil {
		return nil, http.StatusBadRequest, fmt.Sprintf("malformed snapshot resume headers (%v)", err)
	}
	md := m.GetSnapshot().GetMetadata()
	if st.id.index != md.GetIndex() || st.id.term != md.GetTerm() || st.id.envelope != envelope {
		return nil, http.StatusBadRequest, fmt.Sprintf("snapshot resume headers (%v) do not match the envelope", st.id)
	}
	if t.partials.store == nil {
		if st.offset == 0 {
			return nil, 0, ""
		}
		return nil, http.StatusConflict, "snapshot resume not supported"
	}
	if rh.fromErr != nil {
		return nil, http.StatusBadRequest, fmt.Sprintf("snapshot resume needs %s (%v)", headerServerFrom, rh.fromErr)
	}
	p, err := t.partials.begin(r.Context(), rh.from, st, m, body.cutOff)
	switch {
	case errors.Is(err, errResumeConflict):
		return nil, http.StatusConflict, err.Error()
	case errors.Is(err, errSnapshotDelivered):
		return nil, http.StatusNoContent, ""
	case errors.Is(err, ErrStopped):
		return nil, http.StatusServiceUnavailable, ErrStopped.Error()
	case err != nil:
		return nil, http.StatusInternalServerError, fmt.Sprintf("failed to save KV snapshot (%v)", err)
	}
	return p, 0, ""
}

// serveSnapshotResume handles GET /raft/snapshot/resume, a sender's
// question about a resumable transfer (see the top of this file): a resume
// query, or a progress stream if it carries X-Rafthttp-Snapshot-Progress.
func (t *Transport) serveSnapshotResume(w http.ResponseWriter, r *http.Request) {
	if !allowMethod(w, r, http.MethodGet) {
		return
	}
	rh, ok := t.admit(w, r)
	if !ok {
		return
	}
	t.learnFeatures(&rh)
	if t.partials.store == nil {
		http.Error(w, "snapshot resume not supported", http.StatusNotFound)
		return
	}
	if rh.fromErr != nil {
		http.Error(w, fmt.Sprintf("snapshot resume needs %s (%v)", headerServerFrom, rh.fromErr), http.StatusBadRequest)
		return
	}
	q, err := parseResumeQuery(r.Header)
	if err != nil {
		if n, ok := t.warns.allowFrom(warnBadRequest, r.RemoteAddr); ok {
			t.lg.Warn("malformed snapshot resume query", zap.String("remote-addr", clip(r.RemoteAddr, clipPlain)), zap.Error(err), suppressed(n))
		}
		http.Error(w, fmt.Sprintf("malformed snapshot resume query (%v)", err), http.StatusBadRequest)
		return
	}
	if q.step > 0 {
		t.partials.streamProgress(w, r, rh.from, q.id, q.step)
		return
	}
	off, crc, err := t.partials.resumePoint(r.Context(), rh.from, q.id)
	if err != nil {
		http.Error(w, ErrStopped.Error(), http.StatusServiceUnavailable)
		return
	}
	setResumePoint(w.Header(), off, crc)
	w.WriteHeader(http.StatusNoContent)
}
