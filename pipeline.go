package rafthttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// pipeline sends messages one HTTP POST each (POST /raft), with a few
// workers so that a slow POST does not hold up the next; to a peer that
// announced featurePipelineBatch, several queued messages per POST
// (pipeline_batch.go). It is the fallback when streams are down, the path
// of MsgSnap, and all a remote has.
type pipeline struct {
	t       *Transport
	to      uint64
	lg      *zap.Logger
	status  *peerStatus
	picker  *urlPicker
	metrics peerMetrics
	msgc    chan *raftpb.Message
	// rt is the owner's pipeline client (clients.pipeline).
	rt http.RoundTripper
	// budget is the owner's send budget: a message's charge is
	// released once its POST is over.
	budget  *sendBudget
	refused logLimiter // POSTs refused (412): each message sent would log
	// features is where the owner keeps what the remote announced, learnt
	// from its answers; nil for a remote (request-learnt members get no
	// extensions).
	features *peerFeatures

	// gone is the drop reason of the messages the pipeline still holds
	// when its owner stops (dropRemoved, dropRetired); abandoned counts
	// them.
	gone      string
	abandoned atomic.Int64
}

func newPipeline(t *Transport, to uint64, lg *zap.Logger, status *peerStatus, picker *urlPicker, m peerMetrics, gone string) *pipeline {
	return &pipeline{t: t, to: to, lg: lg, status: status, picker: picker, metrics: m, gone: gone,
		msgc: make(chan *raftpb.Message, t.cfg.pipelineQueue)}
}

// start launches the workers under wg; they end when ctx is cancelled, which
// also aborts the POSTs in flight. The owner stops the pipeline by
// cancelling ctx, waiting on wg, and then calling drain: every message the
// pipeline held, in flight or queued, is then reported to raft as a drop,
// unless the Transport is stopping (see abandon).
//
// owner ("peer" or "remote") goes into the workers' profile labels.
func (pl *pipeline) start(ctx context.Context, wg *sync.WaitGroup, owner string) {
	for range pl.t.cfg.pipelineWorkers {
		goLabelled(wg, formatID(pl.to), owner+" pipeline", func() {
			var b batch
			for {
				// A message gather took off the queue and left for later
				// goes first, whatever ctx says: send abandons it if the
				// owner is stopping, so that it is reported like the rest.
				m := b.next
				b.next = nil
				if m == nil {
					select {
					case m = <-pl.msgc:
					case <-ctx.Done():
						return
					}
				}
				if pl.batching() && b.gather(pl, m) {
					pl.sendBatch(ctx, &b)
					continue
				}
				pl.send(ctx, m)
				pl.budget.releaseMsg(m)
			}
		})
	}
}

// send POSTs m and reports the outcome (spec §4.5).
func (pl *pipeline) send(ctx context.Context, m *raftpb.Message) {
	body := raftproto.AppendMessage(make([]byte, 0, raftproto.MessageSize(m)), m)
	u := pl.picker.pick()
	_, err := pl.post(ctx, u.String(), RaftPrefix, m.GetType(), 1, body)
	if err != nil && ctx.Err() != nil {
		// The owner is stopping: not the peer's failure.
		pl.abandon(m)
		return
	}
	isSnap := m.GetType() == raftpb.MsgSnap
	if err != nil {
		pl.status.deactivate(failureType{source: chanPipeline, action: "write"}, err.Error())
		pl.picker.unreachable(u)
		pl.t.reportDrop(pl.to, m.GetType(), dropSendFailed, &dropSite{metrics: &pl.metrics, sendFailure: true})
		if errors.Is(err, ErrMemberRemoved) {
			pl.t.postCriticalError(ErrMemberRemoved)
		}
		pl.lg.Debug("failed to send message over the pipeline", zap.Stringer("message-type", m.GetType()), zap.Error(err))
		return
	}
	pl.status.activate()
	if isSnap {
		pl.t.reportSnapshot(pl.to, raft.SnapshotFinish)
	}
	pl.metrics.sent(1, len(body))
}

// abandon reports to raft a message the pipeline will not send because its
// owner stopped (RemovePeer, or a learnt remote retired), as any other drop
// is reported: ReportUnreachable, and ReportSnapshot(Failure) for a
// MsgSnap, so that raft does not wait for ever on a snapshot. It is counted
// under the "unknown" peer label: the owner's own series go with it.
//
// At Stop nothing is reported or counted, as in etcd: raft is stopping too,
// and may no longer take reports.
func (pl *pipeline) abandon(m *raftpb.Message) {
	if pl.t.stopping() {
		return
	}
	pl.t.reportDrop(pl.to, m.GetType(), pl.gone, &dropSite{}) // logged in bulk by drain
	pl.abandoned.Add(1)
}

// drain, called by the owner once the workers have ended, abandons the
// messages still queued, and logs how many the pipeline abandoned in all.
// The owner is out of the Transport's maps by then, so Send adds no more.
func (pl *pipeline) drain() {
	for {
		select {
		case m := <-pl.msgc:
			pl.budget.releaseMsg(m)
			pl.abandon(m)
		default:
			if n := pl.abandoned.Load(); n > 0 {
				pl.lg.Info("dropped the messages left on the queues of a stopped peer; reported to raft",
					zap.Int64("dropped", n), zap.String("reason", pl.gone))
			}
			return
		}
	}
}

// post makes one POST to route (RaftPrefix: one message of type typ;
// pipelineBatchPath: n messages) and maps the answer to an error. It
// returns the answer's header when there was an answer.
func (pl *pipeline) post(ctx context.Context, base, route string, typ raftpb.MessageType, n int, body []byte) (http.Header, error) {
	var rd io.Reader
	if typ == raftpb.MsgSnap {
		// A MsgSnap may carry a whole state machine (raftexample style)
		// and take as long as its size needs, but it must keep moving,
		// and be answered in time once sent, as a SendSnapshot body must
		// (progressWatch): a peer that takes it and never answers would
		// otherwise hold this worker, and raft's snapshot, for ever.
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		progress := pl.t.cfg.snapProgressTimeout
		wb := &watchedBody{r: bytes.NewReader(body)}
		wb.watch = newProgressWatch(progress, snapshotAnswerTimeout(progress, int64(len(body))), func(err error) { cancel(err) })
		defer wb.watch.stop()
		rd = wb
	} else {
		// Anything else is small: bounded as a whole.
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, pl.t.cfg.pipelineTimeout)
		defer cancel()
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+route, rd)
	if err != nil {
		return nil, fmt.Errorf("building pipeline request: %w", err)
	}
	// A Content-Length, not chunked, as etcd sends it (NewRequest sets it
	// only for the readers it knows).
	req.ContentLength = int64(len(body))
	req.Header["Content-Type"] = contentTypeProtobuf
	pl.t.setHeaders(req.Header)
	start := time.Now()
	resp, err := pl.rt.RoundTrip(req)
	if err != nil {
		if ctx.Err() != nil {
			// Why the request was cut: a stall, the timeout, the owner
			// stopping.
			return nil, fmt.Errorf("%w (%v)", context.Cause(ctx), err)
		}
		return nil, err
	}
	defer drainClose(resp.Body)
	pl.features.learn(resp.Header, pl.lg, pl.t.warns.now)
	q := sentRequest{kind: postRequest, t: pl.t, lg: pl.lg, refused: &pl.refused, base: base}
	if err := q.answerError(resp); err != nil {
		return resp.Header, err
	}
	if ce := pl.lg.Check(zap.DebugLevel, "sent message over the pipeline"); ce != nil {
		ce.Write(zap.Stringer("message-type", typ), zap.Int("messages", n), zap.Duration("took", time.Since(start)))
	}
	return resp.Header, nil
}

// watchedBody is the body of a pipeline POST carrying a MsgSnap: the
// encoded message, read through a progressWatch.
type watchedBody struct {
	r     *bytes.Reader
	watch *progressWatch
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if n > 0 {
		b.watch.touch()
	}
	if b.r.Len() == 0 {
		b.watch.sent()
	}
	return n, err
}

// contentTypeProtobuf is the Content-Type of a pipeline POST, as etcd sends
// it; shared, read-only, as sentHeaders are.
var contentTypeProtobuf = []string{"application/protobuf"}
