package rafthttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// pipeline sends messages one HTTP POST each (POST /raft), with a few
// workers so that a slow POST does not hold up the next. It is the fallback
// when streams are down, the path of MsgSnap, and all a remote has.
type pipeline struct {
	t       *Transport
	to      uint64
	lg      *zap.Logger
	status  *peerStatus
	picker  *urlPicker
	metrics peerMetrics
	msgc    chan *raftpb.Message
	// budget is the owner's send budget: a message's charge is
	// released once its POST is over.
	budget  *sendBudget
	refused logLimiter // POSTs refused (412): each message sent would log
}

func newPipeline(t *Transport, to uint64, lg *zap.Logger, status *peerStatus, picker *urlPicker, m peerMetrics) *pipeline {
	return &pipeline{t: t, to: to, lg: lg, status: status, picker: picker, metrics: m,
		msgc: make(chan *raftpb.Message, t.cfg.pipelineQueue)}
}

// start launches the workers under wg; they end when ctx is cancelled, which
// also aborts the POSTs in flight. Queued messages are then dropped
// unreported, as the owner is stopping.
func (pl *pipeline) start(ctx context.Context, wg *sync.WaitGroup) {
	for range pl.t.cfg.pipelineWorkers {
		wg.Go(func() {
			for {
				select {
				case m := <-pl.msgc:
					pl.send(ctx, m)
					pl.budget.releaseMsg(m)
				case <-ctx.Done():
					return
				}
			}
		})
	}
}

// send POSTs m and reports the outcome (spec §4.5).
func (pl *pipeline) send(ctx context.Context, m *raftpb.Message) {
	body := raftproto.AppendMessage(make([]byte, 0, raftproto.MessageSize(m)), m)
	u := pl.picker.pick()
	err := pl.post(ctx, u.String(), m, body)
	if ctx.Err() != nil {
		// The owner is stopping. A retired remote's raft goes on and is
		// told; at Stop raft is going too.
		if errors.Is(context.Cause(ctx), errRemoteRetired) && pl.t.ctx.Err() == nil {
			pl.retiredDrop(m)
		}
		return
	}
	isSnap := m.GetType() == raftpb.MsgSnap
	if err != nil {
		pl.status.deactivate(failureType{source: chanPipeline, action: "write"}, err.Error())
		pl.picker.unreachable(u)
		pl.t.reportUnreachable(pl.to)
		if isSnap {
			pl.t.reportSnapshot(pl.to, raft.SnapshotFailure)
		}
		pl.metrics.sentFailures.Inc()
		pl.metrics.drop(m.GetType(), dropSendFailed)
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

// retiredDrop reports to raft a message that a retired remote will not
// send. It is counted under the "unknown" peer label: the remote's own
// series go with it.
func (pl *pipeline) retiredDrop(m *raftpb.Message) {
	pl.t.reportUnreachable(pl.to)
	if m.GetType() == raftpb.MsgSnap {
		pl.t.reportSnapshot(pl.to, raft.SnapshotFailure)
	}
	pl.t.metrics.droppedMessages.WithLabelValues(unknownPeerLabel, m.GetType().String(), dropRetired).Inc()
}

// post makes one POST /raft and maps the answer to an error.
func (pl *pipeline) post(ctx context.Context, base string, m *raftpb.Message, body []byte) error {
	// A MsgSnap may carry a whole state machine (raftexample style) and
	// take as long as it takes; anything else is small and bounded.
	if m.GetType() != raftpb.MsgSnap {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, pl.t.cfg.pipelineTimeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/raft", bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building pipeline request: %w", err)
	}
	req.Header.Set("Content-Type", "application/protobuf")
	pl.t.setHeaders(req.Header)
	start := time.Now()
	resp, err := pl.t.pipelineRt.RoundTrip(req)
	if err != nil {
		return err
	}
	defer drainClose(resp.Body)
	if err := checkPostResponse(pl.t, pl.lg, &pl.refused, resp, base); err != nil {
		return err
	}
	if ce := pl.lg.Check(zap.DebugLevel, "sent message over the pipeline"); ce != nil {
		ce.Write(zap.Stringer("message-type", m.GetType()), zap.Duration("took", time.Since(start)))
	}
	return nil
}

// checkPostResponse maps the answer to a pipeline or snapshot POST to an
// error, as etcd does (spec §2.6): 204 is success, 403 means this member was
// removed, 412 carries a reason in its body, anything else is unexpected.
// The refusals it logs go through refused.
func checkPostResponse(t *Transport, lg *zap.Logger, refused *logLimiter, resp *http.Response, base string) error {
	switch resp.StatusCode {
	case http.StatusNoContent:
		return nil
	case http.StatusForbidden:
		return ErrMemberRemoved
	case http.StatusServiceUnavailable:
		// Our snapshot receivers answer 503 when at their limit.
		if body := readErrorBody(resp.Body); body == ErrTooManySnapshots.Error() {
			return ErrTooManySnapshots
		}
		return fmt.Errorf("unexpected http status %s while posting to %q", http.StatusText(resp.StatusCode), base)
	case http.StatusPreconditionFailed:
		switch body := readErrorBody(resp.Body); body {
		case ErrIncompatibleVersion.Error():
			if n, ok := refused.allow(t.warns.now); ok {
				lg.Error("request sent was ignored by peer", zap.Error(ErrIncompatibleVersion), suppressed(n))
			}
			return ErrIncompatibleVersion
		case ErrClusterIDMismatch.Error():
			if n, ok := refused.allow(t.warns.now); ok {
				lg.Error("request sent was ignored due to cluster ID mismatch",
					zap.String("local-member-cluster-id", t.cfg.clusterIDStr), suppressed(n))
			}
			return ErrClusterIDMismatch
		default:
			return fmt.Errorf("unhandled error %q when precondition failed", body)
		}
	default:
		return fmt.Errorf("unexpected http status %s while posting to %q", http.StatusText(resp.StatusCode), base)
	}
}
