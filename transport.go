package rafthttp

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
)

// Raft is the application side of the transport: the callbacks through which
// received messages and delivery failures reach the raft node. Every method
// may be called from several goroutines at once. Process may block (raft's
// node.Step does until the node accepts the message); the transport stays
// correct when it does, and proposals (MsgProp) are processed on their own
// goroutine so that a node without a leader cannot hold up the rest.
type Raft interface {
	// Process hands one received message to raft. ctx is cancelled when the
	// peer or the request the message came with goes away. If the error
	// returned has a method WriteTo(http.ResponseWriter) (found with
	// errors.As), HTTP handlers let it write the response, as etcd's 403 for
	// a removed member; any other error answers 500.
	Process(ctx context.Context, m *raftpb.Message) error
	// IsIDRemoved reports whether the member id was removed from the
	// cluster; its stream dials are then refused with 410 Gone.
	IsIDRemoved(id uint64) bool
	// ReportUnreachable tells raft that a message to id was lost.
	ReportUnreachable(id uint64)
	// ReportSnapshot tells raft how a snapshot sent to id ended.
	ReportSnapshot(id uint64, status raft.SnapshotStatus)
}

// Transport carries raft messages between the members of one cluster over
// HTTP, speaking etcd's peer protocol byte for byte.
//
// Fill in the exported fields, call Start, mount Handler on an http.Server,
// add peers, call Send from the raft Ready loop, and Stop at the end. Fields
// must not change after Start. A zero field means the documented default.
// All methods are safe for concurrent use, and safe (as no-ops or errors)
// after Stop.
type Transport struct {
	// ID is this member's ID. Required, non-zero.
	ID uint64
	// ClusterID is the cluster's ID. Requests from another cluster are
	// refused with 412. Required, non-zero.
	ClusterID uint64
	// URLs are this member's advertised peer URLs, sent in X-PeerURLs so
	// that a member that does not know us yet can answer. Optional.
	URLs []string
	// Raft receives messages and delivery reports. Required.
	Raft Raft
	// Logger receives the transport's logs. Nil means no logging.
	Logger *zap.Logger
	// ErrorC, if not nil, receives critical errors: ErrMemberRemoved when a
	// peer says this member was removed. Sends are non-blocking, so give it
	// a buffer (etcd uses 1).
	ErrorC chan error
	// TLSClientConfig is used to dial https and unixs peers. Nil means the
	// default configuration.
	TLSClientConfig *tls.Config
	// PeerIdentity, if set, binds certificates to members: it returns the
	// member a verified peer certificate speaks for (an error, or 0, if
	// none). Nil, the default, checks nothing, as etcd: any certificate
	// the CA signed then speaks for any member. When set, a request to
	// the pipeline, a stream or the snapshot route must come with a client
	// certificate the server verified (tls.RequireAndVerifyClientCert)
	// that speaks for the member its X-Server-From names, for a stream
	// also for the member in its path, and the message it carries must be
	// from that member; others are refused (403, or 412 to a POST from a
	// sender that would read 403 as its removal, as etcd does), counted
	// in rafthttp_peer_identity_refused_total and logged. Each connection
	// we dial to member n must present a certificate that speaks for n, or
	// its handshake fails before a request is sent; messages on the
	// streams we dial from n must be from n. Peer URLs must then be https
	// or unixs. IdentityFromURISAN and IdentityFromDNSSAN read two common
	// conventions. It is called for every request and handshake, from
	// several goroutines at once. README "TLS" says how to turn it on in a
	// running cluster.
	PeerIdentity func(cert *x509.Certificate) (memberID uint64, err error)
	// ClientRootCAs, if set, returns the roots that verify the servers we
	// dial, asked for each new connection in place of
	// TLSClientConfig.RootCAs, so that a CA bundle can be rotated without
	// a restart; established connections keep the roots they were
	// verified with. It must return a pool: nil fails the dial (nil would
	// mean the system's roots). It is called from several goroutines at
	// once. Nil means TLSClientConfig.RootCAs, fixed. It cannot be
	// combined with Proxy (net/http makes the handshake through a proxy
	// itself, with TLSClientConfig) nor with
	// TLSClientConfig.InsecureSkipVerify, and it turns TLS session
	// resumption off (a resumed session is not verified again). The
	// server side's counterpart is tls.Config.GetConfigForClient (README
	// "TLS").
	ClientRootCAs func() *x509.CertPool
	// HostPool, if set, is shared with the Transports of the process's
	// other raft groups: the pipeline's connections to each member host,
	// one prober per host, and the pacing of stream dials per host come
	// from it (see HostPool). Its owner closes it, after the Transports
	// that use it have stopped. TLSClientConfig, ClientRootCAs, Proxy and
	// DialTimeout are then the pool's, and must be left zero here; it
	// cannot be combined with PeerIdentity. Nil, the default, shares
	// nothing.
	HostPool *HostPool
	// Proxy selects a proxy for peer requests, as http.Transport.Proxy.
	// Nil means none: unlike etcd, proxy environment variables are ignored
	// unless set here (http.ProxyFromEnvironment).
	Proxy func(*http.Request) (*url.URL, error)
	// SnapshotStore keeps the payloads of snapshots received on
	// /raft/snapshot. Nil means such snapshots are refused (500); a MsgSnap
	// sent through Send still arrives by the pipeline. One that is also a
	// ResumableSnapshotStore (DirSnapshotStore is) lets transfers between
	// members of this library resume after a break, in both directions:
	// give every member one.
	SnapshotStore SnapshotStore
	// Registerer, if not nil, gets this Transport's Prometheus collectors
	// (etcd's metric names, unless MetricsNamespace says otherwise) at
	// Start; Stop unregisters them.
	Registerer prometheus.Registerer
	// MetricsNamespace is the first component of the collectors' names.
	// Zero means DefaultMetricsNamespace, "etcd": etcd_network_active_peers
	// and the rest of etcd's names, which existing dashboards expect, and
	// our own additions as rafthttp_dropped_messages_total and so on. Any
	// other value replaces etcd in etcd's names (foo_network_active_peers)
	// and comes before our additions (foo_rafthttp_dropped_messages_total),
	// so that two Transports can register on one Registerer. It must be a
	// valid Prometheus name component: [a-zA-Z_][a-zA-Z0-9_]*.
	MetricsNamespace string

	// DialTimeout bounds connecting to a peer. Zero means
	// DefaultDialTimeout.
	DialTimeout time.Duration
	// ConnReadTimeout is how long a stream may stay silent before it is
	// redialled. Zero means DefaultConnReadTimeout. etcd peers send link
	// heartbeats every 5/3 s, so with etcd peers keep it at 5 s or more.
	ConnReadTimeout time.Duration
	// ConnWriteTimeout bounds one write to a stream. Zero means
	// DefaultConnWriteTimeout.
	ConnWriteTimeout time.Duration
	// PipelineTimeout bounds one pipeline POST, except of a MsgSnap, which
	// is bounded by its progress instead (SnapshotProgressTimeout). Zero
	// means DefaultPipelineTimeout. As a receiver, the pipeline handler
	// gives a request body this long to start and then requires it to
	// arrive at 1 KiB/s or faster, so that a client trickling bytes cannot
	// hold a handler for ever. The snapshot handler gives a snapshot body
	// as long (or SnapshotProgressTimeout, if shorter) for its first bytes.
	PipelineTimeout time.Duration
	// DialRetryMin and DialRetryMax bound the stream redial backoff. Zero
	// means DefaultDialRetryMin and DefaultDialRetryMax.
	DialRetryMin, DialRetryMax time.Duration

	// ServerVersion is the version announced in X-Server-Version: strict
	// "X.Y.Z", at least 3.0. Zero means DefaultServerVersion.
	ServerVersion string
	// MinClusterVersion is announced in X-Min-Cluster-Version. Zero means
	// DefaultMinClusterVersion.
	MinClusterVersion string

	// MaxMessageBytes bounds one received message, on streams and the
	// pipeline. Zero means DefaultMaxMessageBytes (32 MiB), where etcd
	// reads up to 512 MiB: raft's appends are bounded by its MaxSizePerMsg
	// (etcd uses 1 MiB) plus one entry, and etcd refuses requests over a
	// few MiB, so 32 MiB leaves ample room. A MsgSnap given to Send
	// carries its whole snapshot in one message: applications that send
	// larger snapshots that way raise this and MaxReceiveBytes (or use
	// SendSnapshot and a SnapshotStore, which stream the payload).
	MaxMessageBytes int
	// MaxReceiveBytes bounds the bytes that messages received from peers
	// hold at once, Transport-wide: each is charged its wire size plus what
	// decoding it allocates (at most 32 times its size plus 8 KiB), from
	// before that is allocated until Raft.Process returns for it. When the
	// budget is full, stream readers wait (TCP pushes back on the sender),
	// and pipeline and snapshot requests wait up to a second and then get
	// 503, which senders report to raft as a failure. A message that cannot
	// fit even alone is refused (413). Small messages (heartbeats, votes,
	// one-entry appends: 1 KiB or less with their decode) are not charged;
	// their queues bound them by count. Besides it, each stream reader holds
	// the one frame it is reading (up to MaxMessageBytes, peers only), and
	// each snapshot being received 2 MiB of read-ahead. Zero means
	// DefaultMaxReceiveBytes (64 MiB); it must be at least MaxMessageBytes
	// and MaxSnapshotEnvelopeBytes.
	MaxReceiveBytes int
	// MaxSnapshotEnvelopeBytes bounds the MsgSnap envelope of a received
	// snapshot. Zero means DefaultMaxSnapshotEnvelopeBytes.
	MaxSnapshotEnvelopeBytes int
	// SnapshotSendRate is the initial snapshot bandwidth budget, in bytes
	// per second: one budget shared by every outgoing snapshot of the
	// Transport (SendSnapshot payloads), so that with MaxSnapshotSends in
	// flight they share it rather than each taking this much.
	// SetSnapshotSendRate changes it while the Transport runs, for the
	// transfers in flight too. Zero means no limit. Our receivers cut off
	// bodies that arrive slower than 1 KiB/s on average (after a grace
	// period), so keep it well above that times MaxSnapshotSends.
	SnapshotSendRate int64
	// SnapshotProgressTimeout fails a snapshot transfer, in either
	// direction, that moves no byte for this long: a SendSnapshot, and a
	// MsgSnap given to Send (which the pipeline posts). A SendSnapshot to a
	// peer that resumes retries a broken transfer until the receiver's
	// copy has not grown for this long. Once a sender has
	// sent the last byte, nothing moves while the receiver makes the
	// payload durable; the answer is then awaited this long plus a second
	// per 10 MiB sent (a disk writing 10 MiB/s). Zero means
	// DefaultSnapshotProgressTimeout. As a receiver, the snapshot handler
	// applies it only once the body has started: its first bytes, the
	// MsgSnap envelope, which senders (ours and etcd's) write from memory
	// right behind the headers, must come within PipelineTimeout (if
	// shorter), so that a client sending headers and then nothing does not
	// hold one of MaxSnapshotReceives slots for the whole progress
	// timeout. Once this long has passed since the headers, the body must
	// also have arrived at 1 KiB/s or faster on average.
	SnapshotProgressTimeout time.Duration
	// MaxSnapshotSends and MaxSnapshotReceives bound the snapshots in flight
	// at once in each direction; more are refused (a receiver answers 503)
	// and raft retries later. At most one snapshot is sent to a peer at a
	// time. Zero means DefaultMaxSnapshotSends and
	// DefaultMaxSnapshotReceives.
	MaxSnapshotSends, MaxSnapshotReceives int
	// MaxSnapshotPartials, MaxSnapshotPartialBytes and SnapshotPartialTTL
	// bound what a receiver keeps of interrupted transfers for resuming
	// (with a SnapshotStore that is a ResumableSnapshotStore, from peers
	// that resume): at most one partial payload per sender, at most
	// MaxSnapshotPartials and MaxSnapshotPartialBytes in all (the oldest
	// goes first), each for SnapshotPartialTTL after its transfer broke.
	// Partials are dropped when their transfer completes (leaving, for
	// SnapshotPartialTTL, a record without bytes, so that a sender whose
	// answer was lost learns the snapshot arrived and raft does not get it
	// twice), when another snapshot from the same sender begins, and at
	// Stop; they do not outlive the process. Zero means DefaultMaxSnapshotPartials,
	// DefaultMaxSnapshotPartialBytes and DefaultSnapshotPartialTTL.
	MaxSnapshotPartials     int
	MaxSnapshotPartialBytes int64
	SnapshotPartialTTL      time.Duration
	// StreamQueueSize, PipelineQueueSize, PipelineWorkers, RecvQueueSize
	// and PropQueueSize size each peer's queues and workers. Zero means the
	// Default of the same name.
	StreamQueueSize, PipelineQueueSize, PipelineWorkers, RecvQueueSize, PropQueueSize int
	// MaxPeerSendBytes bounds, per peer and per remote, the bytes of the
	// messages Send has queued to it that are not yet written: queued on
	// its streams or pipeline, encoded by a stream writer but not yet
	// written to the connection, or in a pipeline POST not yet answered.
	// Each message is charged about its encoded size (the data of its
	// entries, snapshot and context, plus a small constant per entry). A
	// message that would take the peer over the limit is dropped and
	// reported to raft as any other drop (reason budget_exceeded; raft
	// then probes the follower rather than stream to it), unless nothing
	// is charged to the peer at the time: a message larger than the limit
	// is still sent, alone. Messages of 1 KiB or less (heartbeats, votes,
	// responses, appends of a few small entries) are neither charged nor
	// dropped for the budget, so that appends never crowd them out; their
	// queues bound them by count, to at most StreamQueueSize×2 +
	// PipelineQueueSize KiB per peer. Without the budget, a follower that
	// reads slowly could make one peer hold gigabytes: StreamQueueSize
	// appends of raft's MaxSizePerMsg per stream. Zero means
	// DefaultMaxPeerSendBytes (64 MiB), which does not hold back a
	// follower that keeps up; raise it for a link whose bandwidth-delay
	// product comes near it.
	MaxPeerSendBytes int

	// Test hooks, zero meaning the constant: maxRequestRemotes and
	// requestRemoteIdleTimeout.
	maxRequestRemotes int
	requestRemoteIdle time.Duration
	// announce, if set before Start, replaces supportedFeatures as what
	// we announce and use: tests play a peer of another version.
	announce *featureSet

	cfg     config
	lg      *zap.Logger
	metrics *metrics
	warns   *warnLimits // rate-limit the warnings peers can set off (warnlog.go)

	// logClock, if set before Start, is the clock of the warning limiters:
	// tests set it to see what a flood logs without waiting for it.
	logClock func() int64
	// netDial, if set before Start, dials every connection of the HTTP
	// clients in place of a net.Dialer: tests put nodes on an in-memory
	// network, where a synctest bubble can hold them.
	netDial func(ctx context.Context, network, addr string) (net.Conn, error)

	snapSendSem, snapRecvSem chan struct{} // snapshot concurrency limits
	snapRate                 *snapshotRate // the outgoing snapshots' bandwidth budget
	partials                 *partials     // partial payloads kept for resuming (snapshot_resume.go)
	budget                   *recvBudget   // bytes held by received messages (budget.go)

	// shared are the HTTP clients every peer and remote dials with, unless
	// PeerIdentity gives each its own (clientsFor, dial.go).
	shared *clients
	bulk   *bulkClock // when MsgApps last streamed (sched.go)

	ctx    context.Context // cancelled by Stop
	cancel context.CancelFunc

	// bg holds the goroutines that are neither a peer's nor a remote's:
	// the idle-remote janitor, and the retiring of an evicted remote by
	// the request that evicted it. Stop waits for them.
	bg       sync.WaitGroup
	evictLog logLimiter // rate-limits the eviction warning (warnlog.go)
	localLog logLimiter // rate-limits the warning of Send given raft's local messages

	// stopDone is closed when the first Stop has finished; later and
	// concurrent Stops (and RemovePeers that find the peer gone to a Stop)
	// wait for it.
	stopDone chan struct{}
	// removing counts peers taken out of the map by RemovePeer and
	// RemoveAllPeers that are still stopping, so that a concurrent Stop
	// waits for them too.
	removing sync.WaitGroup
	// handlers counts requests inside the raft routes (see gated): they
	// call Raft and the SnapshotStore, and Stop waits for them.
	handlers sync.WaitGroup

	mu      sync.RWMutex // guards the fields below
	started bool
	stopped bool
	peers   map[uint64]*peer
	remotes map[uint64]*remote
	// requestRemotes counts the remotes learnt from requests that exist,
	// running or still stopping: at most maxRequestRemotes.
	requestRemotes int
	janitorRunning bool // expireIdleRemotes runs
}

// Start validates the configuration and prepares the transport. It must be
// called once, before any other method.
func (t *Transport) Start() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.started {
		return ErrAlreadyStarted
	}
	cfg, err := t.validate()
	if err != nil {
		return err
	}
	if err := t.applyHostPool(&cfg); err != nil {
		return err
	}
	t.cfg = cfg
	t.lg = t.Logger
	if t.lg == nil {
		t.lg = zap.NewNop()
	}
	t.warns = newWarnLimits(t.logClock)
	t.metrics = newMetrics(cfg.metricsNamespace)
	t.metrics.queueDepth.t.Store(t)
	if t.Registerer != nil {
		if err := t.metrics.register(t.Registerer); err != nil {
			return fmt.Errorf("rafthttp: registering metrics: %w", err)
		}
	}
	t.bulk = newBulkClock()
	t.shared = newClients(t, t.dialTLSConfig(0, nil), true)
	t.ctx, t.cancel = context.WithCancel(context.Background())
	t.stopDone = make(chan struct{})
	t.peers = make(map[uint64]*peer)
	t.remotes = make(map[uint64]*remote)
	t.snapSendSem = make(chan struct{}, cfg.maxSnapSends)
	t.snapRecvSem = make(chan struct{}, cfg.maxSnapRecvs)
	t.budget = newRecvBudget(int64(cfg.maxReceiveBytes))
	t.snapRate = newSnapshotRate(t.SnapshotSendRate, t.metrics)
	t.partials = newPartials(t)
	t.started = true
	return nil
}

// Handler returns the HTTP handler of the raft routes: /raft, /raft/stream/,
// /raft/snapshot and /raft/probing. Mount it so that it sees every path
// under /raft, for example mux.Handle("/raft", h) and mux.Handle("/raft/", h).
// Each call returns a new handler.
func (t *Transport) Handler() http.Handler {
	return newHandler(t)
}

// Send sends messages to their recipients (m.To). It never blocks: a message
// that cannot be queued, or whose recipient is neither a peer nor a remote,
// is dropped, counted, and reported to raft (ReportUnreachable, and
// ReportSnapshot(Failure) for MsgSnap). A call that dropped a message for a
// full queue yields the processor once before returning (runtime.Gosched),
// so that the queue's writer gets to run. The messages must not be modified
// after Send: they are read later, by the goroutine that encodes them.
//
// Messages to 0 are skipped. So are messages to raft's local storage
// threads, raft.LocalAppendThread and raft.LocalApplyThread (MsgStorageAppend
// and MsgStorageApply, which raft puts in Ready.Messages when
// AsyncStorageWrites is on): they never reach the network, are not reported
// to raft (no member is unreachable) and are not counted as dropped (the
// transport lost nothing; they were never its to deliver). They are the
// application's to hand to its storage goroutines, and raft makes no
// progress until it does, so Send logs a warning when it gets one, at most
// once a second.
func (t *Transport) Send(msgs []*raftpb.Message) {
	if t.send(msgs) {
		yieldAfterFullQueue()
	}
}

// send is Send; it reports whether a message was dropped for a full queue.
func (t *Transport) send(msgs []*raftpb.Message) (full bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	for _, m := range msgs {
		to := m.GetTo()
		if to == 0 {
			continue
		}
		if p, ok := t.peers[to]; ok {
			full = p.send(m) || full
			continue
		}
		if r, ok := t.remotes[to]; ok {
			full = r.send(m) || full
			continue
		}
		if !t.started || t.stopped {
			continue // nothing to tell: no peers yet, or shutting down
		}
		// Checked here, past the lookups, so that messages to members pay
		// nothing for it: AddPeer and AddRemote refuse these IDs.
		if raft.IsLocalMsgTarget(to) {
			t.skippedLocal(m)
			continue
		}
		// Not a peer (yet): raft is told, as for any other drop.
		t.reportDrop(to, m.GetType(), dropUnknownPeer, &dropSite{})
		if ce := t.lg.Check(zap.DebugLevel, "ignored message send request; unknown remote peer target"); ce != nil {
			ce.Write(zap.Stringer("type", m.GetType()), zap.String("unknown-target-peer-id", formatID(to)))
		}
	}
	return full
}

// usableLocked returns why the transport cannot take new members, if it
// cannot. t.mu must be held.
func (t *Transport) usableLocked() error {
	if !t.started {
		return ErrNotStarted
	}
	if t.stopped {
		return ErrStopped
	}
	return nil
}

// AddPeer adds a member and starts talking to it: its streams are dialled and
// served, and Send reaches it. Adding a known peer does nothing. Invalid URLs
// are an error, and so is calling it after Stop (ErrStopped).
func (t *Transport) AddPeer(id uint64, urls []string) error {
	return t.addMember(id, urls, t.checkPeerIDLocked, func(us []url.URL) {
		p := newPeer(t, id, us)
		p.start()
		t.peers[id] = p
		t.lg.Info("added remote peer", zap.String("local-member-id", t.cfg.idStr),
			zap.String("remote-peer-id", formatID(id)), zap.String("remote-peer-urls", urlsString(us)))
	})
}

// addMember is what AddPeer and AddRemote share: it parses urls, takes
// t.mu, runs check on id, and calls add with the URLs unless id is already
// a peer (adding a known peer does nothing).
func (t *Transport) addMember(id uint64, urls []string, check func(uint64) error, add func([]url.URL)) error {
	us, err := parseURLs(urls)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := check(id); err != nil {
		return err
	}
	if err := t.checkIdentityURLs(us); err != nil {
		return err
	}
	if _, ok := t.peers[id]; ok {
		return nil
	}
	add(us)
	return nil
}

// checkPeerIDLocked refuses to add a peer once Stop has begun or before
// Start, and refuses the IDs no member may have. t.mu must be held.
func (t *Transport) checkPeerIDLocked(id uint64) error {
	if err := t.usableLocked(); err != nil {
		return err
	}
	// raft's local storage threads have IDs of their own, which no member
	// may take: Send never sends to them.
	if id == 0 || id == t.cfg.id || raft.IsLocalMsgTarget(id) {
		return fmt.Errorf("rafthttp: AddPeer: invalid member ID %s", formatID(id))
	}
	return nil
}

// RemovePeer stops talking to a peer and waits until all its goroutines have
// ended and its connections are closed. Unknown ids are ignored.
func (t *Transport) RemovePeer(id uint64) {
	t.mu.Lock()
	if t.awaitStopLocked() {
		return
	}
	p, ok := t.peers[id]
	if ok {
		delete(t.peers, id)
		t.removing.Add(1) // under t.mu, before any Stop can wait
	}
	t.mu.Unlock()
	if !ok {
		t.logger().Warn("skipped removing already removed peer", zap.String("remote-peer-id", formatID(id)))
		return
	}
	defer t.removing.Done()
	p.stop()
	t.metrics.forgetPeer(t.cfg.idStr, formatID(id))
	t.lg.Info("removed remote peer", zap.String("local-member-id", t.cfg.idStr),
		zap.String("removed-remote-peer-id", formatID(id)))
}

// awaitStopLocked, called with t.mu held, reports whether Stop has begun.
// If it has, it releases t.mu and waits for Stop to end first: Stop has
// every peer, and a removal returns only when the peer is gone, as it
// promises.
func (t *Transport) awaitStopLocked() bool {
	if !t.stopped {
		return false
	}
	done := t.stopDone
	t.mu.Unlock()
	<-done
	return true
}

// logger is the logger to use from methods that may run before Start.
func (t *Transport) logger() *zap.Logger {
	if t.lg == nil {
		return zap.NewNop()
	}
	return t.lg
}

// RemoveAllPeers removes every peer, as RemovePeer does.
func (t *Transport) RemoveAllPeers() {
	t.mu.Lock()
	if t.awaitStopLocked() {
		return
	}
	peers := t.peers
	if peers != nil {
		t.peers = make(map[uint64]*peer)
	}
	t.removing.Add(1)
	t.mu.Unlock()
	defer t.removing.Done()
	stopPeers(peers)
	for id := range peers {
		t.metrics.forgetPeer(t.cfg.idStr, formatID(id))
	}
}

// stopPeers stops peers in parallel: each stop waits for a stream writer
// to let go of its connection, and those waits need not add up.
func stopPeers(peers map[uint64]*peer) {
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Go(p.stop)
	}
	wg.Wait()
}

// UpdatePeer replaces a peer's URLs. Unknown ids are an error wrapping
// ErrMemberNotFound.
func (t *Transport) UpdatePeer(id uint64, urls []string) error {
	us, err := parseURLs(urls)
	if err != nil {
		return err
	}
	t.mu.RLock()
	p, ok := t.peers[id]
	err = t.checkIdentityURLs(us)
	t.mu.RUnlock()
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("rafthttp: UpdatePeer %s: %w", formatID(id), ErrMemberNotFound)
	}
	p.update(us)
	t.lg.Info("updated remote peer", zap.String("local-member-id", t.cfg.idStr),
		zap.String("updated-remote-peer-id", formatID(id)), zap.String("updated-remote-peer-urls", urlsString(us)))
	return nil
}

// Stop stops every peer and remote, closes their connections and waits until
// every goroutine the transport started has ended, and every call it makes
// to Raft or the SnapshotStore has returned, including those of requests in
// the raft routes (whose contexts it cancels) and of peers being removed.
// After Stop returns, the transport calls neither again: Send drops
// silently, the raft routes answer 503, and AddPeer returns ErrStopped.
// Messages still queued are dropped without being reported, as etcd does:
// raft is shutting down too; from the moment Stop begins, no failure is
// reported to raft. Every call, concurrent ones included, returns
// only when all that is done.
func (t *Transport) Stop() {
	t.mu.Lock()
	if !t.started {
		t.mu.Unlock()
		return
	}
	if t.stopped {
		done := t.stopDone
		t.mu.Unlock()
		<-done
		return
	}
	t.stopped = true
	// Cancelled under the lock, so that stopping() and stopped agree.
	t.cancel()
	peers, remotes := t.peers, t.remotes
	t.peers, t.remotes = map[uint64]*peer{}, map[uint64]*remote{}
	t.mu.Unlock()
	defer close(t.stopDone)

	var wg sync.WaitGroup
	for _, r := range remotes {
		wg.Go(r.stop)
	}
	stopPeers(peers)
	wg.Wait()
	t.removing.Wait()
	t.handlers.Wait()
	t.bg.Wait()
	t.partials.close() // after the handlers, which park what they received
	t.shared.closeIdleConnections()
	if t.Registerer != nil {
		t.metrics.unregister(t.Registerer)
	}
}

// get returns the peer with the given id, if any.
func (t *Transport) get(id uint64) (*peer, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	p, ok := t.peers[id]
	return p, ok
}
