package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"net/http"
	"time"

	"github.com/dustin/go-humanize"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// SnapshotStore keeps the payloads of received snapshots (the database a
// MsgSnap stands for, which travels after it on /raft/snapshot).
type SnapshotStore interface {
	// SaveSnapshot reads the payload of the snapshot m announces from r
	// until EOF and returns once it is durable. On error nothing may be
	// kept. r must not be used after SaveSnapshot returns, nor the bytes
	// r's WriteTo hands to a Write after that Write returns (io.Writer's
	// rule): the transport reuses its buffers. ctx ends if the sender goes away; a payload saved after that is
	// not handed to raft (the sender reports the snapshot failed, and raft
	// sends it again, at the same index or a later one).
	SaveSnapshot(ctx context.Context, m *raftpb.Message, r io.Reader) error
}

// errNoSnapshotStore answers a snapshot POST to a transport configured
// without a SnapshotStore. Its text is quoted in the 500 body, so it has
// no "rafthttp: " prefix (see errors.go).
var errNoSnapshotStore = errors.New("no snapshot store configured")

// serveSnapshot handles POST /raft/snapshot: a length-prefixed MsgSnap, then
// the payload to the end of the body (spec §2.3). The payload is stored
// durably before raft sees the MsgSnap.
func (t *Transport) serveSnapshot(w http.ResponseWriter, r *http.Request) {
	// An answer before the end of the body is a refusal or a failure; close
	// the connection with it, or net/http reads up to 256 KiB more of a
	// body that may be trickling in before the sender hears of it.
	refuse := func(msg string, code int) {
		w.Header().Set("Connection", "close")
		http.Error(w, msg, code)
	}
	const unknownSender = "UNKNOWN_SNAPSHOT_SENDER"
	start := time.Now()
	if !allowMethod(w, r, http.MethodPost) {
		t.metrics.snapRecvFailures.WithLabelValues(unknownSender).Inc()
		return
	}
	rh, ok := t.admit(w, r)
	if !ok {
		t.metrics.snapRecvFailures.WithLabelValues(unknownSender).Inc()
		return
	}
	t.addRemoteFromRequest(&rh)
	t.learnFeatures(&rh)

	// Beyond etcd: a bound on concurrent receives, answered with a status
	// any sender reads as a failure, so raft retries later.
	select {
	case t.snapRecvSem <- struct{}{}:
		defer func() { <-t.snapRecvSem }()
	default:
		w.Header().Set("Retry-After", "1")
		refuse(ErrTooManySnapshots.Error(), http.StatusServiceUnavailable)
		t.metrics.snapRecvFailures.WithLabelValues(unknownSender).Inc()
		return
	}

	// The body is read through a reader that fails a transfer making no
	// progress for the progress timeout, and that checks the sender's
	// CRC-32C trailer, when there is one, at the end of the body: a
	// mismatch becomes a read error, so the store keeps nothing.
	//
	// Its first bytes, the MsgSnap envelope, come from the sender's memory
	// right behind the headers, as a pipeline POST's body does: the first
	// byte gets the pipeline's grace (at most the progress timeout), not
	// the progress timeout (30 s by default) a transfer may pause for. A
	// client that sends headers and then nothing would otherwise hold one
	// of the few receive slots that long.
	rc := http.NewResponseController(w)
	paced := newPacedBody(r.Body, rc, t.cfg.snapProgressTimeout)
	paced.first = min(t.cfg.pipelineTimeout, t.cfg.snapProgressTimeout)
	src := &snapshotSource{r: paced, trailer: r, crc: crc32.New(crc32c)}
	var hdr [frameHeaderLen]byte
	// The envelope and its decode hold the receive budget until Process
	// has returned.
	ch := recvCharger{budget: t.budget, ctx: r.Context()}
	defer ch.refund()
	m, n, err := readMessageFrame(src, hdr[:], t.cfg.maxEnvelopeBytes, &ch)
	if err != nil {
		err = unexpectedEOF(err) // a body that ends before its envelope
		if n, ok := t.warns.allow(warnMalformed); ok {
			t.lg.Warn("failed to decode Raft message", zap.Error(err), suppressed(n))
		}
		if errors.Is(err, errBudgetFull) {
			w.Header().Set("Retry-After", "1")
			refuse(err.Error(), http.StatusServiceUnavailable)
		} else {
			refuse(fmt.Sprintf("failed to decode raft message (%v)", err), http.StatusBadRequest)
		}
		t.metrics.snapRecvFailures.WithLabelValues(unknownSender).Inc()
		return
	}
	if !t.checkMessageFrom(w, r, &rh, m) {
		t.metrics.snapRecvFailures.WithLabelValues(unknownSender).Inc()
		return
	}
	// Metrics are labelled only with members we know (see receivedFrom).
	from := unknownSender
	pm, known := t.receivedFrom(m.GetFrom())
	if known {
		from = formatID(m.GetFrom())
		pm.received(0, n)
	}
	if m.GetType() != raftpb.MsgSnap {
		if n, ok := t.warns.allow(warnMalformed); ok {
			t.lg.Warn("unexpected Raft message type", zap.Stringer("message-type", m.GetType()), suppressed(n))
		}
		refuse("wrong raft message type", http.StatusBadRequest)
		t.metrics.snapRecvFailures.WithLabelValues(from).Inc()
		return
	}
	// Beyond etcd: a resumable transfer (snapshot_resume.go) appends to a
	// partial payload instead of calling SaveSnapshot.
	var part *partial
	if r.Header.Get(headerSnapshotID) != "" {
		var code int
		var msg string
		if part, code, msg = t.beginPartial(r, &rh, m, src.crc.Sum32(), paced); code == http.StatusNoContent {
			// Raft got this MsgSnap from an earlier attempt, whose answer
			// the sender did not read: it hears now that it succeeded.
			t.lg.Info("database snapshot already received and processed; answering the sender's retry",
				zap.String("remote-snapshot-sender-id", from), zap.Uint64("incoming-snapshot-index", m.GetSnapshot().GetMetadata().GetIndex()))
			w.WriteHeader(http.StatusNoContent)
			return
		} else if code != 0 {
			if n, ok := t.warns.allow(warnSnapshot); ok {
				t.lg.Warn("refused resumable database snapshot", zap.String("remote-snapshot-sender-id", from),
					zap.Int("status", code), zap.String("reason", msg), suppressed(n))
			}
			refuse(msg, code)
			t.metrics.snapRecvFailures.WithLabelValues(from).Inc()
			return
		}
		if part != nil {
			defer t.partials.release(part, part.recv) // raft got it, or we panicked
		}
	}
	index := m.GetSnapshot().GetMetadata().GetIndex()
	t.metrics.snapRecvInflight.WithLabelValues(from).Inc()
	defer t.metrics.snapRecvInflight.WithLabelValues(from).Dec()
	t.lg.Info("receiving database snapshot", zap.String("remote-snapshot-sender-id", from),
		zap.Uint64("incoming-snapshot-index", index), zap.Int("incoming-snapshot-message-size-bytes", n),
		zap.String("incoming-snapshot-message-size", humanize.Bytes(uint64(n))))

	body := &countingReader{r: src}
	err = errNoSnapshotStore
	kept := false // a resumable transfer broke, its partial kept
	if t.SnapshotStore != nil {
		// The network is read ahead of the store in a goroutine of its
		// own, so that receiving and writing overlap.
		var pool bufferPool = &snapReadAheadPool
		if part != nil {
			// Its read-ahead buffers, if an earlier receive left them.
			pool = part.takeBuffers()
		}
		ra := newReadAhead(src, snapReadAheadSize, snapReadAheadDepth, pool, func() {
			_ = rc.SetReadDeadline(time.Now()) // unblocks a read when the store gave up early
		})
		defer ra.stop() // should the store panic (net/http recovers)
		body.r = ra
		if part != nil {
			if part.size.Load() > 0 {
				t.metrics.snapResume.receives.WithLabelValues(from).Inc()
				t.lg.Info("resuming incoming database snapshot", zap.String("remote-snapshot-sender-id", from),
					zap.Uint64("incoming-snapshot-index", index), zap.Int64("offset", part.size.Load()))
			}
			kept, err = t.partials.receive(r, part, body, ra)
		} else {
			err = t.SnapshotStore.SaveSnapshot(r.Context(), m, body)
			ra.recycle() // the store is done with it (not on a panic: then only stop, deferred)
		}
	}
	if kept {
		t.lg.Info("incoming database snapshot interrupted; partial payload kept for resuming",
			zap.String("remote-snapshot-sender-id", from), zap.Uint64("incoming-snapshot-index", index),
			zap.Int64("received-bytes", body.n), zap.Int64("kept-bytes", part.size.Load()), zap.Error(err))
		// A sender that resumes reads 503 as "again later": the sender
		// is usually gone, but the receiver may be what broke it (Stop).
		w.Header().Set("Retry-After", "1")
		refuse(fmt.Sprintf("snapshot transfer interrupted; %d bytes kept for resuming (%v)", part.size.Load(), err),
			http.StatusServiceUnavailable)
		t.metrics.snapRecvFailures.WithLabelValues(from).Inc()
		return
	}
	if err != nil {
		if n, ok := t.warns.allow(warnSnapshot); ok {
			t.lg.Warn("failed to save incoming database snapshot", zap.Uint64("incoming-snapshot-index", index), zap.Error(err), suppressed(n))
		}
		refuse(fmt.Sprintf("failed to save KV snapshot (%v)", err), http.StatusInternalServerError)
		t.metrics.snapRecvFailures.WithLabelValues(from).Inc()
		return
	}
	if r.Context().Err() != nil {
		// The sender gave up (or went) while the store was making the
		// payload durable. Raft must not get the MsgSnap: Process would
		// run with a dead context, and the sender has already reported
		// the snapshot failed to its raft, which sends it again. The
		// payload stays stored; the retry replaces it (DirSnapshotStore).
		// The answer, which nobody may read, says so. A sender that
		// resumes has not given up: its next attempt learns that the
		// whole payload is in, and brings raft the MsgSnap.
		if part != nil {
			t.partials.end(part, part.recv, partialSaved)
		}
		if n, ok := t.warns.allow(warnSnapshot); ok {
			t.lg.Warn("sender gave up before the incoming database snapshot was saved; not processed",
				zap.String("remote-snapshot-sender-id", from), zap.Uint64("incoming-snapshot-index", index),
				zap.Duration("took", time.Since(start)), zap.NamedError("cause", context.Cause(r.Context())), suppressed(n))
		}
		refuse("the sender went away before the snapshot was saved", http.StatusServiceUnavailable)
		t.metrics.snapRecvFailures.WithLabelValues(from).Inc()
		return
	}
	if known {
		pm.received(1, int(body.n))
	}
	t.metrics.snapReceivedBytes.WithLabelValues(from).Add(float64(body.n))
	t.lg.Info("received and saved database snapshot", zap.String("remote-snapshot-sender-id", from),
		zap.Uint64("incoming-snapshot-index", index), zap.Int64("incoming-snapshot-size-bytes", body.n),
		zap.String("incoming-snapshot-size", humanize.Bytes(uint64(body.n))), zap.Duration("download-took", time.Since(start)))

	if err := t.Raft.Process(r.Context(), m); err != nil {
		if t.answerProcessError(w, err, fmt.Sprintf("failed to process raft message (%v)", err)) {
			t.metrics.snapRecvFailures.WithLabelValues(from).Inc()
		}
		return
	}
	if part != nil {
		// Should the answer be lost, the sender's next attempt must not
		// bring raft the MsgSnap again.
		t.partials.end(part, part.recv, partialDelivered)
	}
	w.WriteHeader(http.StatusNoContent)
	t.metrics.snapRecvSuccess.WithLabelValues(from).Inc()
	t.metrics.snapRecvDuration.WithLabelValues(from).Observe(time.Since(start).Seconds())
}

// snapshotSource reads a snapshot body (paced, so a stalled or trickling
// sender is cut off) and checks the CRC-32C trailer at the end of it.
type snapshotSource struct {
	r       io.Reader
	trailer *http.Request
	crc     hash.Hash32
}

func (s *snapshotSource) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	s.crc.Write(p[:n])
	if err == io.EOF {
		if want := s.trailer.Trailer.Get(trailerCRC32C); want != "" {
			sum, perr := parseCRC(want)
			if perr != nil || sum != s.crc.Sum32() {
				return n, fmt.Errorf("%w: trailer %q, body %s", ErrSnapshotChecksum, clip(want, clipPlain), crcOf(s.crc.Sum32()))
			}
		}
	}
	return n, err
}

// The read-ahead of a snapshot being received: up to snapReadAheadDepth
// buffers of snapReadAheadSize (2 MiB in all) between the goroutine reading
// the network and the store, to absorb the store's stalls (page cache
// writeback). Small buffers, hence small writes: large ones made the
// store's writes erratically slow (compat/BENCHMARKS.md has the runs).
const (
	snapReadAheadSize  = 32 << 10
	snapReadAheadDepth = 64
)

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// WriteTo lets io.Copy reach the read-ahead's WriteTo.
func (c *countingReader) WriteTo(w io.Writer) (int64, error) {
	n, err := io.Copy(w, c.r)
	c.n += n
	return n, err
}
