package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// streamReader dials one stream type from one peer and hands what it decodes
// to the peer's receive queues. It redials with bounded, jittered
// exponential backoff, rotating through the peer's URLs, until the peer
// stops.
type streamReader struct {
	p     *peer
	typ   streamType
	recvc chan received // this stream's lane to raft, proposals aside
}

func newStreamReader(p *peer, typ streamType) *streamReader {
	return &streamReader{p: p, typ: typ, recvc: make(chan received, p.t.cfg.recvQueue)}
}

func (r *streamReader) run(ctx context.Context) {
	p, t := r.p, r.p.t
	lg := p.lg.With(zap.Stringer("stream-reader-type", r.typ))
	lg.Info("started stream reader with remote peer")
	defer lg.Info("stopped stream reader with remote peer")

	bo := newBackoff(t.cfg.dialRetryMin, t.cfg.dialRetryMax)
	timer := time.NewTimer(0)
	defer timer.Stop()
	<-timer.C
	connected := 0
	// The remote can end each stream as soon as it is up, as often as the
	// backoff, reset by each success, lets us redial.
	var lostLog logLimiter
	for {
		u := p.picker.pick()
		body, err := r.dial(ctx, u.String())
		switch {
		case ctx.Err() != nil:
			if body != nil {
				body.Close()
			}
			return
		case err != nil:
			p.picker.unreachable(u)
			if !errors.Is(err, ErrUnsupportedStreamType) {
				p.status.deactivate(failureType{source: r.typ.String(), action: "dial"}, err.Error())
			}
			lg.Debug("failed to dial stream", zap.String("address", u.String()), zap.Error(err))
		default:
			connected++
			if connected > 1 {
				p.metrics.reconnect("reader " + r.typ.String())
			}
			p.status.activate()
			p.status.reader(r.typ).up()
			lg.Info("established TCP streaming connection with remote peer")
			err = r.decodeLoop(ctx, body)
			p.status.reader(r.typ).down()
			body.Close()
			if ctx.Err() != nil {
				return
			}
			if n, ok := lostLog.allow(t.warns.now); ok {
				lg.Warn("lost TCP streaming connection with remote peer", zap.Error(err), suppressed(n))
			}
			// The remote may be gone: have our writers check their
			// connections to it now rather than at their next write.
			p.pokeWriters()
			// A clean end (the remote closed or replaced the stream) is
			// not a failure of the peer; a timeout or garbage is.
			if !cleanStreamEnd(err) {
				p.status.deactivate(failureType{source: r.typ.String(), action: "read"}, err.Error())
			}
			bo.reset()
		}

		timer.Reset(bo.next())
		select {
		case <-timer.C:
		case <-ctx.Done():
			return
		}
	}
}

// backoff paces a stream reader's redials. The bound on the wait starts at
// min, doubles after each wait up to max, and starts over at min once a
// stream was up; each wait is drawn from the upper half of the bound, so
// that the readers of many peers that failed together do not redial
// together. One reader owns it: it is not safe for concurrent use.
type backoff struct {
	min, max time.Duration
	cur      time.Duration // the bound of the next wait
	// randN returns a uniform duration in [0, n): rand.N, or a fixed
	// source in tests.
	randN func(n time.Duration) time.Duration
}

// newBackoff returns a backoff between lo and hi, drawing from math/rand/v2.
func newBackoff(lo, hi time.Duration) backoff {
	return backoff{min: lo, max: hi, cur: lo, randN: rand.N[time.Duration]}
}

// next returns how long to wait before the next dial, in [cur/2, cur], and
// doubles the bound for the wait after it.
func (b *backoff) next() time.Duration {
	wait := b.cur/2 + b.randN(b.cur/2+1)
	b.cur = min(2*b.cur, b.max)
	return wait
}

// reset starts the bound over at min: the last dial gave a stream that was
// up, so the next failure is not part of a run of them.
func (b *backoff) reset() { b.cur = b.min }

// cleanStreamEnd reports whether err, which ended the reads of a stream
// body, is an orderly end rather than a failure of the peer: only a failure
// marks the peer inactive. What reaches here, from net/http's client body:
//
//   - io.EOF: the remote ended the chunked body, as it does when it replaces
//     the stream or stops. Clean.
//   - net.ErrClosed, inside a *net.OpError: we closed the body, and with it
//     the connection, while a read was blocked. Clean: it is our doing.
//   - context.Canceled: our request's context ended. Clean; run returns
//     before asking, but the answer must not depend on that.
//   - io.ErrUnexpectedEOF: the connection ended inside the chunked body (the
//     remote's process died, or a proxy cut it). A failure, as in etcd.
//   - os.ErrDeadlineExceeded, connection resets, ErrMalformedFrame,
//     ErrExceedSizeLimit: failures.
//
// http.ErrBodyReadAfterClose and io.ErrClosedPipe, reads after a local
// Close of a body or pipe, count as clean too, like net.ErrClosed. net/http
// gives a read after Close of a client body an unexported error ("http: read
// on closed response body") that errors.Is cannot match; run never reads a
// body after closing it, so it cannot arrive here.
func cleanStreamEnd(err error) bool {
	for _, clean := range []error{io.EOF, net.ErrClosed, context.Canceled, http.ErrBodyReadAfterClose, io.ErrClosedPipe} {
		if errors.Is(err, clean) {
			return true
		}
	}
	return false
}

// dial opens the stream and returns its body. On a non-200 answer it returns
// an error mapped as etcd maps them (spec §2.6).
func (r *streamReader) dial(ctx context.Context, base string) (io.ReadCloser, error) {
	p, t := r.p, r.p.t
	u := base + "/raft/stream/" + r.typ.endpoint() + "/" + t.cfg.idStr
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("building stream request: %w", err)
	}
	t.setHeaders(req.Header)
	req.Header.Set(headerRaftTo, p.idStr)
	resp, err := p.clients.streams[r.typ].RoundTrip(req)
	if err != nil {
		return nil, err
	}
	// Whatever the answer, it is the remote's latest announcement.
	p.features.learn(resp.Header, p.lg, t.warns.now)

	// The version check comes first, before the status (spec §2.6): an
	// older remote that does not serve this type answers 404.
	remoteVersion, err := headerVersion(resp.Header, headerServerVersion)
	if err != nil {
		drainClose(resp.Body)
		return nil, err
	}
	if !supportsStream(t.cfg.serverVersion, remoteVersion, r.typ) {
		drainClose(resp.Body)
		return nil, fmt.Errorf("%w: %s at version %s", ErrUnsupportedStreamType, r.typ, remoteVersion)
	}

	q := sentRequest{kind: dialRequest, t: t, lg: p.lg, refused: &p.refused, peer: p.idStr}
	if err := q.answerError(resp); err != nil {
		if errors.Is(err, ErrMemberRemoved) {
			t.postCriticalError(ErrMemberRemoved)
		}
		return nil, err
	}
	return resp.Body, nil
}

// recvFlushEvery bounds how many received messages a stream reader counts
// before publishing them to its metrics.
const recvFlushEvery = 256

// decodeLoop decodes messages until the stream fails and hands them on:
// proposals to propc, dropped if it is full; everything else to the stream's
// own recvc, where a full queue makes the reader wait, and TCP push back to
// the sender.
func (r *streamReader) decodeLoop(ctx context.Context, body io.Reader) error {
	p := r.p
	// What a decode holds of the receive budget travels with its message
	// and is released once Process has returned for it; the decoder
	// waits for room, so a full budget stops this stream's reads.
	ch := recvCharger{budget: p.t.budget, ctx: ctx, wait: true}
	dec := r.typ.desc().newDecoder(body, decoderConfig{
		local: p.t.cfg.id, remote: p.id, limit: p.t.cfg.maxMessageBytes, charger: ch,
	})
	y := p.t.bulkYielder(r.typ)
	// Counters are added up here and published with the last message
	// read from the connection so far, before it is handed on (or every
	// recvFlushEvery messages): three atomic additions per message were a
	// visible part of the profile.
	var msgs, bytes int
	defer func() { p.metrics.received(msgs, bytes) }()
	// With PeerIdentity set, the server we dialled speaks for the peer: so
	// must the messages it sends (fromSpeaksFor).
	checkFrom := p.t.cfg.peerIdentity != nil
	for {
		y.tick()
		m, n, err := dec.decode()
		if err != nil {
			return err
		}
		bytes += n
		y.add(n)
		heartbeat := isLinkHeartbeat(m)
		if !heartbeat {
			msgs++
		}
		if msgs >= recvFlushEvery || dec.buffered() == 0 {
			p.metrics.received(msgs, bytes)
			msgs, bytes = 0, 0
		}
		rm := received{m: m, charge: dec.charged()}
		if heartbeat {
			continue
		}
		if p.paused.Load() {
			p.t.budget.release(rm.charge)
			continue
		}
		if checkFrom && !fromSpeaksFor(m, p.id) {
			p.t.budget.release(rm.charge)
			r.refuseFrom(m)
			continue
		}
		if m.GetType() == raftpb.MsgProp {
			select {
			case p.propc <- rm:
			default:
				p.t.budget.release(rm.charge)
				p.metrics.receivedFailures.Inc()
				p.metrics.drop(raftpb.MsgProp, dropRecvFull)
				if k, ok := p.drops.allow(p.t.warns.now); ok {
					p.lg.Warn("dropped internal Raft message since receiving buffer is full (overloaded network)",
						zap.Stringer("message-type", m.GetType()), suppressed(k))
				}
			}
			continue
		}
		// Try without waiting first: a two-case select costs more than a
		// send to a queue with room, the common case.
		select {
		case r.recvc <- rm:
		default:
			select {
			case r.recvc <- rm:
			case <-ctx.Done():
				p.t.budget.release(rm.charge)
				return ctx.Err()
			}
		}
	}
}

// refuseFrom drops m, a message on the stream from a member whose
// certificate speaks for the peer but whose From names another member,
// counting and logging it (rate-limited): X-Server-From and the
// certificate are checked, and raft believes From. Raft is not told: the
// message was never the peer's to send.
func (r *streamReader) refuseFrom(m *raftpb.Message) {
	p := r.p
	p.t.metrics.identityRefused.WithLabelValues(identityRouteStream, identityMessageFrom).Inc()
	if n, ok := p.identityLog.allow(p.t.warns.now); ok {
		p.lg.Warn("dropped message whose sender is not the member whose certificate the stream's server presented",
			zap.Stringer("stream-reader-type", r.typ), zap.Stringer("message-type", m.GetType()),
			zap.String("message-from", formatID(m.GetFrom())), suppressed(n))
	}
}
