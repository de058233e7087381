package rafthttp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// Pipeline batches (featurePipelineBatch, token "pipeline-batch").
//
// A pipeline POST costs a request and an answer through net/http, far more
// than encoding a small message; with a few workers each waiting for its
// answer, that cost bounds the pipeline's rate. To a peer that announced
// the feature, a worker that takes a message off the queue also takes,
// without waiting, what else is queued already, and POSTs them together:
//
//	POST /raft/batch
//	Content-Type: application/protobuf
//	Content-Length: the body's length
//	body: 1 to batchMaxMessages frames, batchMaxBytes in all at most,
//	      each a message as the message stream frames it (appendMessageFrame):
//	      its protobuf length as a big-endian uint64, then its protobuf bytes
//
// The headers are a single POST's. The receiver decodes and checks every
// message (size, encoding, and with PeerIdentity each one's From) before
// it hands any to raft; a body that fails is refused whole, answered as a
// single POST would be (400, 403, 412, 413, 503), and no message of it is
// processed. It then hands the messages to Process in order, and answers
// 204 once raft has them all. If Process fails for the k-th (from 0), the
// answer is the single POST's to that failure (500, or the error's own,
// such as etcd's 403 for a removed member) with X-Rafthttp-Batch-Processed:
// k, since the k before it were processed. The sender counts those as sent
// and reports each of the others to raft as lost, once; an answer without
// that header, or none, means none was processed, as for a single POST.
//
// The route is not /raft, so that no etcd member, and no proxy that knows
// etcd's routes, could ever read a batch as one message. A MsgSnap is never
// batched: it keeps its own POST, timeouts and report. A lone message goes
// to /raft, byte for byte as to any peer.

const (
	// batchMaxMessages bounds the messages of one batch, on both sides:
	// the receiver refuses more (400).
	batchMaxMessages = 64
	// batchMaxBytes bounds a batch's body, on both sides: the receiver
	// refuses more (413). A message whose frame alone is larger goes on
	// its own to /raft.
	batchMaxBytes = 1 << 20
)

// errBatchFrames is the error of a batch body that is not a sequence of
// 1 to batchMaxMessages whole frames.
var errBatchFrames = errors.New("rafthttp: malformed pipeline batch")

// batch is the messages one pipeline worker sends in one POST; each worker
// reuses its own.
type batch struct {
	msgs  []*raftpb.Message
	bytes int // the frames' total length, the body's
	// next is a message gather took off the queue but could not add (a
	// MsgSnap, or one that would overflow batchMaxBytes): the worker sends
	// it next.
	next *raftpb.Message
}

// batching says whether the pipeline may send batches: both sides
// announced featurePipelineBatch (a remote's pipeline never does).
func (pl *pipeline) batching() bool {
	return pl.t.cfg.features.has(featurePipelineBatch) && pl.features.load().has(featurePipelineBatch)
}

// gather makes b the batch that starts with m, taking what else the queue
// already holds, in order, without waiting, while it fits the bounds. It
// reports whether b holds more than m; if not, b is left empty and m is
// the caller's to send as a single POST. b.next may be set either way.
func (b *batch) gather(pl *pipeline, m *raftpb.Message) bool {
	b.bytes = frameHeaderLen + raftproto.MessageSize(m)
	if m.GetType() == raftpb.MsgSnap || b.bytes > batchMaxBytes {
		return false
	}
	b.msgs = append(b.msgs[:0], m)
	for len(b.msgs) < batchMaxMessages {
		var n *raftpb.Message
		select {
		case n = <-pl.msgc:
		default:
		}
		if n == nil {
			break
		}
		size := frameHeaderLen + raftproto.MessageSize(n)
		if n.GetType() == raftpb.MsgSnap || b.bytes+size > batchMaxBytes {
			b.next = n
			break
		}
		b.msgs = append(b.msgs, n)
		b.bytes += size
	}
	if len(b.msgs) == 1 {
		b.reset()
		return false
	}
	return true
}

// reset forgets the batch's messages, keeping its slice: no message stays
// alive until the next batch.
func (b *batch) reset() {
	clear(b.msgs)
	b.msgs = b.msgs[:0]
}

// sendBatch POSTs b to /raft/batch and reports the outcome as send does
// for each message: what the peer processed is sent, anything else is
// reported to raft as lost, once. It releases the messages' send budget
// and forgets them.
func (pl *pipeline) sendBatch(ctx context.Context, b *batch) {
	defer func() {
		for _, m := range b.msgs {
			pl.budget.releaseMsg(m)
		}
		b.reset()
	}()
	body := make([]byte, 0, b.bytes)
	for _, m := range b.msgs {
		body = appendMessageFrame(body, m)
	}
	u := pl.picker.pick()
	h, err := pl.post(ctx, u.String(), pipelineBatchPath, b.msgs[0].GetType(), len(b.msgs), body)
	if err == nil {
		pl.status.activate()
		pl.metrics.sent(len(b.msgs), len(body))
		return
	}
	done := batchProcessed(h, len(b.msgs))
	if done > 0 {
		n := 0
		for _, m := range b.msgs[:done] {
			n += frameHeaderLen + raftproto.MessageSize(m)
		}
		pl.metrics.sent(done, n)
	}
	lost := b.msgs[done:]
	if ctx.Err() != nil {
		// The owner is stopping: not the peer's failure.
		for _, m := range lost {
			pl.abandon(m)
		}
		return
	}
	pl.status.deactivate(failureType{source: chanPipeline, action: "write"}, err.Error())
	pl.picker.unreachable(u)
	for _, m := range lost {
		pl.t.reportDrop(pl.to, m.GetType(), dropSendFailed, &dropSite{metrics: &pl.metrics, sendFailure: true})
	}
	if errors.Is(err, ErrMemberRemoved) {
		pl.t.postCriticalError(ErrMemberRemoved)
	}
	pl.lg.Debug("failed to send messages over the pipeline", zap.Int("messages", len(b.msgs)),
		zap.Int("processed", done), zap.Error(err))
}

// batchProcessed reads how many of a refused batch's n messages the peer
// processed from the answer's header h (nil: no answer). Anything but a
// count below n means none: reporting a processed message again is
// harmless to raft, leaving a lost one unreported is not.
func batchProcessed(h http.Header, n int) int {
	v := h.Get(headerBatchProcessed)
	if v == "" || len(v) > 4 {
		return 0
	}
	k, err := strconv.Atoi(v)
	if err != nil || k < 0 || k >= n || strconv.Itoa(k) != v {
		return 0
	}
	return k
}

// decodeBatch decodes a batch body: every length is bounded (by limit,
// and by what is left of the body) before anything is allocated for it,
// and every decode is charged to ch. frames gets each message's frame
// length, in order; it is reused if it has room.
func decodeBatch(body []byte, limit uint64, ch *recvCharger, msgs []*raftpb.Message, frames []int) ([]*raftpb.Message, []int, error) {
	msgs, frames = msgs[:0], frames[:0]
	for len(body) > 0 {
		if len(msgs) == batchMaxMessages {
			return nil, nil, fmt.Errorf("%w: more than %d messages", errBatchFrames, batchMaxMessages)
		}
		if len(body) < frameHeaderLen {
			return nil, nil, fmt.Errorf("%w: %d bytes after the last frame", errBatchFrames, len(body))
		}
		l := binary.BigEndian.Uint64(body)
		if l > limit {
			return nil, nil, fmt.Errorf("message of %d bytes, limit %d: %w", l, limit, ErrExceedSizeLimit)
		}
		if l > uint64(len(body)-frameHeaderLen) {
			return nil, nil, fmt.Errorf("%w: a frame of %d bytes with %d left", errBatchFrames, l, len(body)-frameHeaderLen)
		}
		m, _, err := raftproto.UnmarshalMessageCharged(body[frameHeaderLen:frameHeaderLen+int(l)], ch)
		if err != nil {
			return nil, nil, err
		}
		msgs = append(msgs, m)
		frames = append(frames, frameHeaderLen+int(l))
		body = body[frameHeaderLen+int(l):]
	}
	if len(msgs) == 0 {
		return nil, nil, fmt.Errorf("%w: no message", errBatchFrames)
	}
	return msgs, frames, nil
}

// serveBatch handles POST /raft/batch: the messages of a pipeline batch,
// handed to Process in order (see the top of this file). Every check of a
// single POST applies, to the body as a whole and to each message.
func (t *Transport) serveBatch(w http.ResponseWriter, r *http.Request) {
	// As a single POST's: bounded, read at its length, and charged to
	// the receive budget with its decodes until the last Process returns.
	ch := recvCharger{budget: t.budget, ctx: r.Context()}
	defer ch.refund()
	rh, body, ok := t.readPipelineBody(w, r, batchMaxBytes, &ch, "message batch")
	if !ok {
		return
	}
	var msgsBuf [8]*raftpb.Message
	var framesBuf [8]int
	msgs, frames, err := decodeBatch(body, t.cfg.maxMessageBytes, &ch, msgsBuf[:0], framesBuf[:0])
	if err != nil {
		if n, ok := t.warns.allow(warnMalformed); ok {
			t.lg.Warn("failed to unmarshal Raft message batch", zap.Error(err), suppressed(n))
		}
		refuseBody(w, err, "error unmarshalling raft message batch")
		return
	}
	for _, m := range msgs {
		if !t.checkMessageFrom(w, r, &rh, m) {
			return
		}
	}
	for i, m := range msgs {
		if pm, known := t.receivedFrom(m.GetFrom()); known {
			pm.received(1, frames[i])
		}
		if err := t.Raft.Process(r.Context(), m); err != nil {
			w.Header().Set(headerBatchProcessed, strconv.Itoa(i))
			if t.answerProcessError(w, err, "error processing raft message") {
				// As for a single POST: close the connection.
				_ = http.NewResponseController(w).Flush()
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
	// 204 only once raft has every message.
	w.WriteHeader(http.StatusNoContent)
}
