package rafthttp

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// Where a resumable transfer stands: the resume query before each attempt,
// and the progress stream that confirms what the receiver wrote during one.

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
