package rafthttp

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3/raftpb"
)

// metrics holds one Transport's Prometheus collectors. They carry etcd's
// names, types and labels (spec §8) so that existing dashboards keep working,
// and they belong to the Transport, not to the process: two Transports in one
// process each register on their own Registerer. Collectors count whether or
// not they are registered, so the code paths never check.
type metrics struct {
	activePeers       *prometheus.GaugeVec
	disconnectedPeers *prometheus.CounterVec
	sentBytes         *prometheus.CounterVec
	receivedBytes     *prometheus.CounterVec
	sentFailures      *prometheus.CounterVec
	receivedFailures  *prometheus.CounterVec
	droppedMessages   *prometheus.CounterVec
	streamReconnects  *prometheus.CounterVec
	queueDepth        *queueCollector
	snapSendSuccess   *prometheus.CounterVec
	snapSendFailures  *prometheus.CounterVec
	snapSendInflight  *prometheus.GaugeVec
	snapSendDuration  *prometheus.HistogramVec
	snapRecvSuccess   *prometheus.CounterVec
	snapRecvFailures  *prometheus.CounterVec
	snapRecvInflight  *prometheus.GaugeVec
	snapRecvDuration  *prometheus.HistogramVec
	snapSentBytes     *prometheus.CounterVec
	snapReceivedBytes *prometheus.CounterVec
	roundTripTime     *prometheus.HistogramVec
	identityRefused   *prometheus.CounterVec
	snapResume        snapResumeMetrics
	collectors        []prometheus.Collector
}

// snapResumeMetrics are the collectors of resumable snapshots and of the
// snapshot bandwidth budget (snapshot_resume.go), all our additions.
type snapResumeMetrics struct {
	sends       *prometheus.CounterVec // attempts that resumed, by peer (To)
	savedBytes  *prometheus.CounterVec // payload bytes those did not send again (To)
	receives    *prometheus.CounterVec // POSTs that resumed a partial payload, by sender (From)
	rateLimit   prometheus.Gauge       // the bandwidth budget, bytes per second; 0: none
	partials    prometheus.Gauge       // partial payloads kept
	partialSize prometheus.Gauge       // their bytes
}

// unknownPeerLabel labels drops to members that are not peers: one series
// for all of them, as their IDs come from raft messages, not configuration.
const unknownPeerLabel = "unknown"

// Drop reasons, the "Reason" label of rafthttp_dropped_messages_total.
const (
	dropQueueFull   = "queue_full"   // the send queue of the chosen channel was full
	dropConnClosed  = "conn_closed"  // queued on a stream whose connection was lost
	dropPaused      = "paused"       // the peer was paused (CutPeer, Pause)
	dropRecvFull    = "recv_full"    // receive queue full (proposals only; others push back)
	dropSendFailed  = "send_failed"  // a pipeline POST or stream write failed
	dropUnknownPeer = "unknown_peer" // Send named a member the transport does not know
	dropRetired     = "retired"      // held by a remote learnt from a request when it expired or was evicted (Peer "unknown")
	dropRemoved     = "removed"      // held by a peer's queues when RemovePeer stopped it (Peer "unknown")
)

// dropBudgetExceeded is the drop reason of a message that Send refused
// because its peer's send budget (MaxPeerSendBytes) had no room for it.
const dropBudgetExceeded = "budget_exceeded"

// validMetricsNamespace reports whether ns can start a Prometheus metric
// name. Colons, allowed in metric names, are left out: Prometheus reserves
// them for recording rules.
func validMetricsNamespace(ns string) bool {
	if ns == "" {
		return false
	}
	for i, c := range ns {
		switch {
		case c == '_', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case '0' <= c && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}

// newMetrics builds the collectors of a Transport whose metric namespace is
// ns (see Transport.MetricsNamespace).
func newMetrics(ns string) *metrics {
	const sub = "network"
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help}, labels)
	}
	hist := func(name, help string, buckets []float64, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help, Buckets: buckets}, labels)
	}
	// Our additions, which etcd lacks, live under their own prefix so they
	// can never collide with a future etcd metric. Under etcd's namespace
	// that prefix stands alone, as it always has; under another it follows
	// the namespace, so that each Transport's names are its own.
	oursNS, oursSub := "rafthttp", ""
	if ns != DefaultMetricsNamespace {
		oursNS, oursSub = ns, "rafthttp"
	}
	ours := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: oursNS, Subsystem: oursSub, Name: name, Help: help}, labels)
	}
	snapBuckets := prometheus.ExponentialBuckets(0.1, 2, 10)
	m := &metrics{
		activePeers:       gauge("active_peers", "The current number of active peer connections.", "Local", "Remote"),
		disconnectedPeers: counter("disconnected_peers_total", "The total number of disconnected peers.", "Local", "Remote"),
		sentBytes:         counter("peer_sent_bytes_total", "The total number of bytes sent to peers.", "To"),
		receivedBytes:     counter("peer_received_bytes_total", "The total number of bytes received from peers.", "From"),
		sentFailures:      counter("peer_sent_failures_total", "The total number of send failures from peers.", "To"),
		receivedFailures:  counter("peer_received_failures_total", "The total number of receive failures from peers.", "From"),
		snapSendSuccess:   counter("snapshot_send_success", "Total number of successful snapshot sends", "To"),
		snapSendFailures:  counter("snapshot_send_failures", "Total number of snapshot send failures", "To"),
		snapSendInflight:  gauge("snapshot_send_inflights_total", "Total number of inflight snapshot sends", "To"),
		snapSendDuration:  hist("snapshot_send_total_duration_seconds", "Total latency distributions of v3 snapshot sends", snapBuckets, "To"),
		snapRecvSuccess:   counter("snapshot_receive_success", "Total number of successful snapshot receives", "From"),
		snapRecvFailures:  counter("snapshot_receive_failures", "Total number of snapshot receive failures", "From"),
		snapRecvInflight:  gauge("snapshot_receive_inflights_total", "Total number of inflight snapshot receives", "From"),
		snapRecvDuration:  hist("snapshot_receive_total_duration_seconds", "Total latency distributions of v3 snapshot receives", snapBuckets, "From"),
		roundTripTime: hist("peer_round_trip_time_seconds", "Round-Trip-Time histogram between peers",
			prometheus.ExponentialBuckets(0.0001, 2, 16), "To"),

		droppedMessages:   ours("dropped_messages_total", "Messages dropped, by peer, message type and reason. Raft was told of each (ReportUnreachable or ReportSnapshot), except dropped proposals.", "Peer", "Type", "Reason"),
		streamReconnects:  ours("stream_reconnects_total", "Stream connections established after the first, by peer and stream.", "Peer", "Stream"),
		snapSentBytes:     ours("snapshot_sent_bytes_total", "Snapshot payload bytes sent, by peer.", "To"),
		snapReceivedBytes: ours("snapshot_received_bytes_total", "Snapshot payload bytes received, by peer.", "From"),
		// Labelled by route and reason only, never by the member a
		// request claims: a client cannot grow it.
		identityRefused: ours("peer_identity_refused_total", "Requests and connections refused because a certificate does not speak for the member concerned (Transport.PeerIdentity), by route (pipeline, stream, snapshot: requests to us; dial: servers we dialled) and reason.", "Route", "Reason"),
		queueDepth: &queueCollector{desc: prometheus.NewDesc(prometheus.BuildFQName(oursNS, oursSub, "queue_depth"),
			"Messages waiting in a peer's send or receive queue, sampled when scraped.", []string{"Peer", "Queue"}, nil),
			bytesDesc: prometheus.NewDesc(prometheus.BuildFQName(oursNS, oursSub, "send_queue_bytes"),
				"Bytes of the messages queued to a peer and not yet written, charged to its send budget (MaxPeerSendBytes; messages of 1 KiB or less are not counted), sampled when scraped.",
				[]string{"Peer"}, nil)},
	}
	oursGauge := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: oursNS, Subsystem: oursSub, Name: name, Help: help})
	}
	m.snapResume = snapResumeMetrics{
		sends:       ours("snapshot_send_resumed_total", "Snapshot transfer attempts that resumed where the receiver's copy of the payload ended, by peer.", "To"),
		savedBytes:  ours("snapshot_send_resumed_bytes_total", "Snapshot payload bytes that resumed attempts did not send again, by peer.", "To"),
		receives:    ours("snapshot_receive_resumed_total", "Snapshot transfers received that resumed a partial payload kept from an interrupted one, by sender.", "From"),
		rateLimit:   oursGauge("snapshot_send_rate_limit_bytes", "The bandwidth budget shared by all outgoing snapshots, in bytes per second; 0 means none (SnapshotSendRate, SetSnapshotSendRate)."),
		partials:    oursGauge("snapshot_partials", "Partial snapshot payloads kept for resuming, from interrupted transfers."),
		partialSize: oursGauge("snapshot_partial_bytes", "Bytes of the partial snapshot payloads kept for resuming."),
	}
	m.collectors = []prometheus.Collector{
		m.activePeers, m.disconnectedPeers, m.sentBytes, m.receivedBytes, m.sentFailures, m.receivedFailures,
		m.snapSendSuccess, m.snapSendFailures, m.snapSendInflight, m.snapSendDuration,
		m.snapRecvSuccess, m.snapRecvFailures, m.snapRecvInflight, m.snapRecvDuration, m.roundTripTime,
		m.droppedMessages, m.streamReconnects, m.snapSentBytes, m.snapReceivedBytes, m.queueDepth, m.identityRefused,
		m.snapResume.sends, m.snapResume.savedBytes, m.snapResume.receives, m.snapResume.rateLimit,
		m.snapResume.partials, m.snapResume.partialSize,
	}
	return m
}

// register registers every collector on r, undoing the registrations made so
// far if one fails.
func (m *metrics) register(r prometheus.Registerer) error {
	for i, c := range m.collectors {
		if err := r.Register(c); err != nil {
			for _, done := range m.collectors[:i] {
				r.Unregister(done)
			}
			return err
		}
	}
	return nil
}

func (m *metrics) unregister(r prometheus.Registerer) {
	for _, c := range m.collectors {
		r.Unregister(c)
	}
}

// forgetPeer deletes every series labelled with the peer, so a removed member
// leaves no stale series behind.
func (m *metrics) forgetPeer(local, id string) {
	m.activePeers.DeleteLabelValues(local, id)
	m.disconnectedPeers.DeleteLabelValues(local, id)
	for _, v := range []*prometheus.CounterVec{m.sentBytes, m.receivedBytes, m.sentFailures, m.receivedFailures,
		m.snapSendSuccess, m.snapSendFailures, m.snapRecvSuccess, m.snapRecvFailures, m.snapSentBytes, m.snapReceivedBytes,
		m.snapResume.sends, m.snapResume.savedBytes, m.snapResume.receives} {
		v.DeleteLabelValues(id)
	}
	m.snapSendInflight.DeleteLabelValues(id)
	m.snapRecvInflight.DeleteLabelValues(id)
	m.snapSendDuration.DeleteLabelValues(id)
	m.snapRecvDuration.DeleteLabelValues(id)
	m.roundTripTime.DeleteLabelValues(id)
	m.droppedMessages.DeletePartialMatch(prometheus.Labels{"Peer": id})
	m.streamReconnects.DeletePartialMatch(prometheus.Labels{"Peer": id})
}

// queueCollector reports the length of every peer's queues, and the bytes
// charged to its send budget, when scraped: sampling at scrape time costs
// the hot path nothing.
type queueCollector struct {
	desc      *prometheus.Desc // rafthttp_queue_depth
	bytesDesc *prometheus.Desc // rafthttp_send_queue_bytes
	t         atomic.Pointer[Transport]
}

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.desc
	ch <- c.bytesDesc
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	t := c.t.Load()
	if t == nil {
		return
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	var qs []queueDepth
	for _, p := range t.peers {
		var queued int64
		qs, queued = p.queueDepths(qs[:0])
		for _, q := range qs {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(q.n), p.idStr, q.name)
		}
		ch <- prometheus.MustNewConstMetric(c.bytesDesc, prometheus.GaugeValue, float64(queued), p.idStr)
	}
}

// peerMetrics is one peer's instrumentation: its Prometheus series,
// cached so the hot path adds to a counter without a label lookup, and plain
// counters for Stats.
type peerMetrics struct {
	all                                                      *metrics
	id                                                       string
	sentBytes, receivedBytes, sentFailures, receivedFailures prometheus.Counter
	c                                                        *peerCounters
	drops                                                    *dropCounters
}

// dropCounters caches a peer's dropped_messages_total children by message
// type and reason, so that a drop costs an atomic addition rather than a
// label lookup: under a flood of sends the lookup took a third of the
// sender's time (compat/bench, open loop).
type dropCounters [dropTypes][len(dropReasons)]atomic.Pointer[prometheus.Counter]

// dropTypes bounds the message types cached; others are looked up.
const dropTypes = 32

// dropReasons are the reasons a drop is counted under.
var dropReasons = [...]string{dropQueueFull, dropConnClosed, dropPaused, dropRecvFull, dropSendFailed, dropUnknownPeer, dropBudgetExceeded}

// dropCounter returns the drop counter child for typ and reason.
func (pm peerMetrics) dropCounter(typ raftpb.MessageType, reason string) prometheus.Counter {
	r := -1
	for i, name := range dropReasons {
		if name == reason {
			r = i
			break
		}
	}
	if pm.drops == nil || r < 0 || typ < 0 || int(typ) >= dropTypes {
		return pm.all.droppedMessages.WithLabelValues(pm.id, typ.String(), reason)
	}
	slot := &pm.drops[typ][r]
	if c := slot.Load(); c != nil {
		return *c
	}
	c := pm.all.droppedMessages.WithLabelValues(pm.id, typ.String(), reason)
	slot.Store(&c)
	return c
}

// peerCounters are the totals Stats reports.
type peerCounters struct {
	msgsSent, bytesSent, msgsReceived, bytesReceived atomic.Uint64
	dropped, reconnects                              atomic.Uint64
}

func (m *metrics) forPeer(id string) peerMetrics {
	return peerMetrics{
		all:              m,
		id:               id,
		sentBytes:        m.sentBytes.WithLabelValues(id),
		receivedBytes:    m.receivedBytes.WithLabelValues(id),
		sentFailures:     m.sentFailures.WithLabelValues(id),
		receivedFailures: m.receivedFailures.WithLabelValues(id),
		c:                new(peerCounters),
		drops:            new(dropCounters),
	}
}

// sent records messages and bytes that reached the network.
func (pm peerMetrics) sent(msgs, bytes int) {
	pm.sentBytes.Add(float64(bytes))
	pm.c.msgsSent.Add(uint64(msgs))
	pm.c.bytesSent.Add(uint64(bytes))
}

// received records messages and bytes read from the network.
func (pm peerMetrics) received(msgs, bytes int) {
	pm.receivedBytes.Add(float64(bytes))
	pm.c.msgsReceived.Add(uint64(msgs))
	pm.c.bytesReceived.Add(uint64(bytes))
}

// drop records a message that was not delivered, by type and reason.
func (pm peerMetrics) drop(typ raftpb.MessageType, reason string) {
	pm.dropCounter(typ, reason).Inc()
	pm.c.dropped.Add(1)
}

// reconnect records a stream connection established after the first.
func (pm peerMetrics) reconnect(stream string) {
	pm.all.streamReconnects.WithLabelValues(pm.id, stream).Inc()
	pm.c.reconnects.Add(1)
}
