package rafthttp

import (
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Lost messages.
//
// No message is lost without raft being told (design.md §4): raft then
// probes the follower, or sends its snapshot again, instead of waiting for
// an answer that will not come. reportDrop is where a message we were
// given to send and will not deliver is told to raft (ReportUnreachable,
// and ReportSnapshot(SnapshotFailure) for a MsgSnap), counted
// (rafthttp_dropped_messages_total by peer, type and reason,
// PeerStats.Dropped, and peer_sent_failures_total where etcd counts it),
// and, for Send's own drops, logged (rate-limited). Raft is told first, so
// that whoever sees the count finds raft told. From the moment Stop begins
// raft is told nothing (reporting), as with etcd: raft is stopping too.
//
// Every place a message can be lost, with its reason label:
//
//   - Transport.send (transport.go): the recipient is neither a peer nor a
//     remote (unknown_peer, under Peer "unknown"; logged at Debug there).
//     Messages to 0 and to raft's local threads are skipped, neither told
//     nor counted: they were never the network's (skippedLocal). Before
//     Start and once Stop has begun, Send drops what it is given silently.
//   - peer.send (peer.go) and remote.send (remote.go): the queue the
//     message is for is full (queue_full), or the member's send budget has
//     no room for it (budget_exceeded); these are warned of. The member is
//     paused by Pause or CutPeer (paused): counted only, since a cut
//     network loses messages silently and raft must find out as it would
//     (etcd's Pause drops without a word).
//   - streamWriter.run (stream_writer.go, through lost and discard): a
//     failed write loses its whole batch (send_failed); a lost connection
//     loses what its queue holds, and a message queued just as the writer
//     let go of its connection is lost too (conn_closed). A lost
//     connection that loses no message still tells raft the peer is
//     unreachable, once. The connection's loss is logged and counted as
//     one send failure there, however many messages went with it.
//   - pipeline.send (pipeline.go): the POST failed (send_failed; logged at
//     Debug there, with the error).
//   - pipeline.abandon, through pipeline.drain and peer.stop: a peer that
//     RemovePeer stopped (removed), or a remote learnt from a request that
//     expired or was evicted (retired), held the message on a queue or in
//     a POST. Counted under Peer "unknown", since the member's series go
//     with it; logged once per member, by drain.
//   - Stop (transport.go), remote.stop and peer.stop once Stop has begun:
//     what is still queued is dropped, neither told nor counted.
//   - SendSnapshot (snapshot_sender.go) loses no message: a refusal or a
//     failed transfer is an outcome, given to the caller's channel and to
//     raft by ReportSnapshot (a failed transfer also ReportUnreachable and
//     a send failure), and is not counted as a dropped message.
//   - On the receiving side a full queue does not drop: the stream reader
//     stops reading and TCP pushes back to the sender. Only a proposal
//     that finds propc full is dropped (streamReader.decodeLoop,
//     stream_reader.go: recv_full, counted and logged, not told: raft drops
//     proposals without a leader anyway); a paused peer's received
//     messages are discarded there too.

// dropSite is how the place that lost a message counts and logs it, where
// the places genuinely differ. Sites build one where the drop happens and
// pass its address: the constructors below are small enough to inline, so
// it stays on the stack, and a drop allocates nothing
// (TestSendDropNoAllocs).
type dropSite struct {
	// metrics are the series of the member the message was for. Nil counts
	// the drop under unknownPeerLabel: the member is not known, or it has
	// stopped and its series went with it.
	metrics *peerMetrics
	// sendFailure also counts the drop in peer_sent_failures_total, as
	// etcd counts each message Send or a POST fails to send. A stream
	// writer counts one failure per lost connection instead, however many
	// messages it loses with it.
	sendFailure bool
	// untold tells raft nothing: Pause and CutPeer play a network that
	// loses messages without a word.
	untold bool
	// log is the warning the drop logs; its zero value logs nothing, for
	// the drops whose cause is logged where it is seen.
	log dropLog
}

// reportDrop reports the loss of a message of type typ to member to, for
// reason (a Reason label, metrics.go), as site says: it tells raft, counts
// the drop and logs it. It never blocks: Send calls it.
func (t *Transport) reportDrop(to uint64, typ raftpb.MessageType, reason string, site *dropSite) {
	if !site.untold {
		t.reportUnreachable(to)
		if typ == raftpb.MsgSnap {
			t.reportSnapshot(to, raft.SnapshotFailure)
		}
	}
	if pm := site.metrics; pm != nil {
		if site.sendFailure {
			pm.sentFailures.Inc()
		}
		pm.drop(typ, reason)
	} else {
		t.metrics.droppedMessages.WithLabelValues(unknownPeerLabel, typ.String(), reason).Inc()
	}
	if l := site.log.limit; l != nil {
		// Tested here, so that a drop the limiter holds back costs no
		// call: under a flood of sends, that is nearly every drop.
		if n, ok := l.allow(t.warns.now); ok {
			site.log.warn(typ, reason, n)
		}
	}
}

// dropLog is the warning of the messages Send drops for a member, one line
// per warnInterval (warnlog.go) with the count of those suppressed: a
// flood of sends to a full queue must not log a line each.
type dropLog struct {
	limit  *logLimiter // the member's limiter; nil: no warning
	lg     *zap.Logger
	status *peerStatus // the line says whether the member is active
	// channel is the peer's channel the message was for. A remote has its
	// pipeline only and is worded as etcd words a remote's drops (remote
	// set): no channel, and the text, not a field, says whether it is
	// active.
	channel string
	remote  bool
}

// warn logs the drop the limiter let through, with n, the count of those
// it held back.
func (l *dropLog) warn(typ raftpb.MessageType, reason string, n int64) {
	if l.remote {
		msg := "dropped Raft message since sending buffer is full (overloaded network)"
		if l.status.isActive() {
			msg = "dropped internal Raft message since sending buffer is full (overloaded network)"
		}
		l.lg.Warn(msg, zap.Stringer("message-type", typ), zap.String("reason", reason), suppressed(n))
		return
	}
	l.lg.Warn("dropped internal Raft message since sending buffer is full",
		zap.Stringer("message-type", typ), zap.String("remote-peer-name", l.channel), zap.String("reason", reason),
		zap.Bool("remote-peer-active", l.status.isActive()), suppressed(n))
}

// sendDrop is the dropSite of Send's drops to p, for the queue of channel
// (pick): told, counted as a send failure, and warned of.
func (p *peer) sendDrop(channel string) *dropSite {
	return &dropSite{metrics: &p.metrics, sendFailure: true,
		log: dropLog{limit: &p.drops, lg: p.lg, status: p.status, channel: channel}}
}

// sendDrop is the dropSite of Send's drops to r, as a peer's, worded as
// etcd's remote.
func (r *remote) sendDrop() *dropSite {
	return &dropSite{metrics: &r.pipeline.metrics, sendFailure: true,
		log: dropLog{limit: &r.drops, lg: r.lg, status: r.status, remote: true}}
}

// pausedDrop is the dropSite of what a paused member is given: counted
// under pm, nothing else.
func pausedDrop(pm *peerMetrics) *dropSite { return &dropSite{metrics: pm, untold: true} }

// reportUnreachable and reportSnapshot are where every delivery failure
// reaches raft: reportDrop's, and the outcomes that are not drops (a lost
// stream connection, a snapshot transfer). Once Stop has begun they report
// nothing: raft is shutting down too (as with etcd, which reports nothing
// after Stop), and the failures Stop itself causes (aborted writes,
// cancelled POSTs) are not the peer's.
func (t *Transport) reportUnreachable(id uint64) {
	if t.reporting() {
		t.Raft.ReportUnreachable(id)
	}
}

// reportSnapshot tells raft how a snapshot to id ended; see
// reportUnreachable.
func (t *Transport) reportSnapshot(id uint64, status raft.SnapshotStatus) {
	if t.reporting() {
		t.Raft.ReportSnapshot(id, status)
	}
}

// reporting says whether failures reach raft: not once Stop has begun.
func (t *Transport) reporting() bool { return !t.stopping() }

// stopping reports whether Transport.Stop has begun: Stop cancels t.ctx
// under t.mu as it marks itself stopped. It takes no lock, so that it can
// be asked with t.mu held (Send's drops are).
func (t *Transport) stopping() bool { return t.ctx != nil && t.ctx.Err() != nil }

// skippedLocal warns, rate-limited, that Send was given m, a message to one
// of raft's local storage threads: an application that does not route them
// to its storage goroutines leaves raft waiting for its writes.
func (t *Transport) skippedLocal(m *raftpb.Message) {
	n, ok := t.localLog.allow(t.warns.now)
	if !ok {
		return
	}
	target := "LocalAppendThread"
	if m.GetTo() == raft.LocalApplyThread {
		target = "LocalApplyThread"
	}
	t.lg.Warn("ignored message to a raft local storage thread: with AsyncStorageWrites, hand it to the storage goroutines, not to Send",
		zap.Stringer("type", m.GetType()), zap.String("target", target), suppressed(n))
}
