package rafthttp

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// Defaults of the Transport's configuration fields, used where a field is
// left zero.
const (
	// DefaultDialTimeout bounds a TCP (and TLS) connect. etcd's default is
	// 1 s + election timeout, about 2 s.
	DefaultDialTimeout = 2 * time.Second
	// DefaultConnReadTimeout is how long a stream may stay silent before
	// the reader drops it and redials. Writers send link heartbeats every
	// third of it. etcd's value, which etcd peers assume.
	DefaultConnReadTimeout = 5 * time.Second
	// DefaultConnWriteTimeout bounds one write or flush on a stream.
	DefaultConnWriteTimeout = 5 * time.Second
	// DefaultPipelineTimeout bounds one pipeline POST other than a MsgSnap:
	// a hung peer must not hold the pipeline's workers (etcd has no bound).
	DefaultPipelineTimeout = 10 * time.Second
	// DefaultDialRetryMin and DefaultDialRetryMax bound the backoff between
	// stream dials: it starts at the minimum, doubles per failure with
	// jitter, and resets on success.
	DefaultDialRetryMin = 100 * time.Millisecond
	DefaultDialRetryMax = 2 * time.Second
	// DefaultServerVersion is the etcd version we announce. Peers check it
	// by major.minor; 3.7 is the newest line we are compatible with.
	DefaultServerVersion = "3.7.0"
	// DefaultMinClusterVersion is the minimum cluster version we announce,
	// what every etcd 3.x release sends.
	DefaultMinClusterVersion = "3.0.0"
	// DefaultStreamQueueSize is each stream writer's queue, etcd's
	// streamBufSize: enough for a burst of a few thousand messages while the
	// connection drains.
	DefaultStreamQueueSize = 4096
	// DefaultPipelineQueueSize is the pipeline's queue, etcd's value. The
	// pipeline is the fallback path and carries MsgSnap; it is not meant for
	// bulk traffic.
	DefaultPipelineQueueSize = 64
	// DefaultPipelineWorkers is the number of concurrent pipeline POSTs per
	// peer, etcd's connPerPipeline.
	DefaultPipelineWorkers = 4
	// DefaultRecvQueueSize is the queue between each of a peer's stream
	// readers and Raft.Process. When it is full the reader stops reading,
	// and TCP pushes back to the sender, where a drop is reported to raft.
	DefaultRecvQueueSize = 4096
	// DefaultPropQueueSize is the queue of received proposals, etcd's
	// maxPendingProposals. Proposals that find it full are dropped (raft
	// drops proposals without a leader anyway); the drop is counted.
	DefaultPropQueueSize = 4096
	// DefaultMaxPeerSendBytes bounds the bytes queued to send to one peer
	// (see Transport.MaxPeerSendBytes): 64 appends of etcd's 1 MiB
	// MaxSizePerMsg, half a second of a 1 Gbit/s link, well above the
	// bandwidth-delay product of a healthy follower's link (10 Gbit/s at
	// 10 ms round trip is 12.5 MB), and an eighth of the 512 MiB that
	// etcd's raft flow control (MaxInflightMsgs 512 × MaxSizePerMsg 1 MiB)
	// lets one slow follower hold.
	DefaultMaxPeerSendBytes = 64 << 20
	// DefaultMetricsNamespace is the namespace of the collectors when
	// Transport.MetricsNamespace is zero: etcd's, so that etcd's dashboards
	// work.
	DefaultMetricsNamespace = "etcd"
)

// Limits on what is received. Each length read from the wire is checked
// before anything is allocated for the frame it bounds.
const (
	// DefaultMaxMessageBytes bounds one received message (see
	// Transport.MaxMessageBytes for why 32 MiB, not etcd's 512 MiB).
	DefaultMaxMessageBytes = 32 << 20

	// DefaultMaxReceiveBytes bounds what received messages hold at once
	// (see Transport.MaxReceiveBytes).
	DefaultMaxReceiveBytes = 64 << 20

	// DefaultMaxSnapshotEnvelopeBytes bounds the MsgSnap envelope at the head
	// of a snapshot body, etcd's snapshotLimitByte since 3.6.14 and 3.7.1
	// (64 MiB). The database bytes after it are not part of the envelope.
	DefaultMaxSnapshotEnvelopeBytes = 64 << 20
)

// Snapshot defaults.
const (
	// DefaultSnapshotProgressTimeout is how long a snapshot transfer may go
	// without moving a byte before it fails. Once the body is sent, the
	// wait for the answer (the receiver is making the payload durable) has
	// a bound of its own: this plus a second per 10 MiB sent.
	DefaultSnapshotProgressTimeout = 30 * time.Second
	// DefaultMaxSnapshotSends and DefaultMaxSnapshotReceives bound the
	// snapshots in flight at once, per Transport, in each direction. A
	// snapshot is big; several at once compete for disk and network with
	// the raft traffic that keeps the cluster alive.
	DefaultMaxSnapshotSends    = 4
	DefaultMaxSnapshotReceives = 4
	// DefaultMaxSnapshotPartials, DefaultMaxSnapshotPartialBytes and
	// DefaultSnapshotPartialTTL bound the partial payloads a receiver keeps
	// for resuming (see Transport.MaxSnapshotPartials): one per sender at
	// most, four in all, 16 GiB in all (two of etcd's largest databases),
	// each for ten minutes after its transfer broke, long enough for raft to
	// send the snapshot again after a short outage.
	DefaultMaxSnapshotPartials     = 4
	DefaultMaxSnapshotPartialBytes = 16 << 30
	DefaultSnapshotPartialTTL      = 10 * time.Minute
)

// config is the Transport's configuration with defaults applied, fixed at
// Start.
type config struct {
	id, clusterID                     uint64
	idStr, clusterIDStr               string
	urls                              []url.URL
	urlsHeader                        string
	dialTimeout                       time.Duration
	readTimeout, writeTimeout         time.Duration
	pipelineTimeout                   time.Duration
	dialRetryMin, dialRetryMax        time.Duration
	serverVersion, minClusterVersion  semver
	maxMessageBytes, maxEnvelopeBytes uint64
	maxReceiveBytes                   uint64
	maxPeerSendBytes                  uint64
	streamQueue, pipelineQueue        int
	pipelineWorkers                   int
	recvQueue, propQueue              int
	snapProgressTimeout               time.Duration
	maxSnapSends, maxSnapRecvs        int
	snapPartials                      int
	snapPartialBytes                  int64
	snapPartialTTL                    time.Duration
	maxRequestRemotes                 int
	requestRemoteIdle                 time.Duration
	metricsNamespace                  string
	// peerIdentity and clientRoots are PeerIdentity and ClientRootCAs
	// (identity.go); tlsClient is TLSClientConfig. With a HostPool,
	// clientRoots, tlsClient and dialTimeout are the pool's.
	peerIdentity func(*x509.Certificate) (uint64, error)
	clientRoots  func() *x509.CertPool
	tlsClient    *tls.Config
	// pool is HostPool, in use (hostpool.go).
	pool *HostPool
	// features is what we announce and use (features.go);
	// featuresHeader its formatted announcement.
	features       featureSet
	featuresHeader string
	// sent is every header our requests carry, and announce the one our
	// answers carry, built once (newSentHeaders).
	sent     sentHeaders
	announce sentHeaders
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// validate checks the exported fields and returns the configuration with
// defaults applied, reporting every problem at once.
func (t *Transport) validate() (config, error) {
	var errs []error
	c := config{
		id: t.ID, clusterID: t.ClusterID,
		idStr: formatID(t.ID), clusterIDStr: formatID(t.ClusterID),
		dialTimeout:     orDefault(t.DialTimeout, DefaultDialTimeout),
		readTimeout:     orDefault(t.ConnReadTimeout, DefaultConnReadTimeout),
		writeTimeout:    orDefault(t.ConnWriteTimeout, DefaultConnWriteTimeout),
		pipelineTimeout: orDefault(t.PipelineTimeout, DefaultPipelineTimeout),
		dialRetryMin:    orDefault(t.DialRetryMin, DefaultDialRetryMin),
		dialRetryMax:    orDefault(t.DialRetryMax, DefaultDialRetryMax),
		streamQueue:     orDefault(t.StreamQueueSize, DefaultStreamQueueSize),
		pipelineQueue:   orDefault(t.PipelineQueueSize, DefaultPipelineQueueSize),
		pipelineWorkers: orDefault(t.PipelineWorkers, DefaultPipelineWorkers),
		recvQueue:       orDefault(t.RecvQueueSize, DefaultRecvQueueSize),
		propQueue:       orDefault(t.PropQueueSize, DefaultPropQueueSize),

		snapProgressTimeout: orDefault(t.SnapshotProgressTimeout, DefaultSnapshotProgressTimeout),
		maxSnapSends:        orDefault(t.MaxSnapshotSends, DefaultMaxSnapshotSends),
		maxSnapRecvs:        orDefault(t.MaxSnapshotReceives, DefaultMaxSnapshotReceives),
		snapPartials:        orDefault(t.MaxSnapshotPartials, DefaultMaxSnapshotPartials),
		snapPartialBytes:    orDefault(t.MaxSnapshotPartialBytes, DefaultMaxSnapshotPartialBytes),
		snapPartialTTL:      orDefault(t.SnapshotPartialTTL, DefaultSnapshotPartialTTL),
		maxRequestRemotes:   orDefault(t.maxRequestRemotes, maxRequestRemotes),
		requestRemoteIdle:   orDefault(t.requestRemoteIdle, requestRemoteIdleTimeout),
		metricsNamespace:    orDefault(t.MetricsNamespace, DefaultMetricsNamespace),
		peerIdentity:        t.PeerIdentity,
		clientRoots:         t.ClientRootCAs,
		tlsClient:           t.TLSClientConfig,
	}
	if t.HostPool != nil {
		errs = append(errs, t.checkHostPool()...)
	}
	if t.PeerIdentity != nil || t.ClientRootCAs != nil {
		if t.TLSClientConfig != nil && t.TLSClientConfig.InsecureSkipVerify {
			errs = append(errs, errors.New("PeerIdentity and ClientRootCAs need verified certificates: TLSClientConfig.InsecureSkipVerify must be false"))
		}
	}
	if t.ClientRootCAs != nil && t.Proxy != nil {
		errs = append(errs, errors.New("ClientRootCAs cannot be combined with Proxy: net/http makes the TLS handshake through a proxy itself, with TLSClientConfig.RootCAs"))
	}
	if !validMetricsNamespace(c.metricsNamespace) {
		errs = append(errs, fmt.Errorf("MetricsNamespace %q is not a Prometheus name component ([a-zA-Z_][a-zA-Z0-9_]*)", c.metricsNamespace))
	}
	if t.SnapshotSendRate < 0 {
		errs = append(errs, errors.New("SnapshotSendRate must not be negative"))
	}
	if t.MaxSnapshotPartialBytes < 0 {
		errs = append(errs, errors.New("MaxSnapshotPartialBytes must not be negative"))
	}
	if t.ID == 0 {
		errs = append(errs, errors.New("ID must be non-zero"))
	}
	if t.ClusterID == 0 {
		errs = append(errs, errors.New("ClusterID must be non-zero"))
	}
	if t.Raft == nil {
		errs = append(errs, errors.New("Raft must be set"))
	}
	if len(t.URLs) > 0 {
		urls, err := parseURLs(t.URLs)
		if err != nil {
			errs = append(errs, fmt.Errorf("URLs: %w", err))
		}
		c.urls, c.urlsHeader = urls, urlsString(urls)
	}
	var err error
	if c.serverVersion, err = parseSemver(orDefault(t.ServerVersion, DefaultServerVersion)); err != nil {
		errs = append(errs, fmt.Errorf("ServerVersion: %w", err))
	} else if c.serverVersion.major < 3 {
		errs = append(errs, fmt.Errorf("ServerVersion %s: etcd peers refuse versions below 3.0", c.serverVersion))
	}
	if c.minClusterVersion, err = parseSemver(orDefault(t.MinClusterVersion, DefaultMinClusterVersion)); err != nil {
		errs = append(errs, fmt.Errorf("MinClusterVersion: %w", err))
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"DialTimeout", t.DialTimeout}, {"ConnReadTimeout", t.ConnReadTimeout}, {"ConnWriteTimeout", t.ConnWriteTimeout},
		{"PipelineTimeout", t.PipelineTimeout}, {"DialRetryMin", t.DialRetryMin}, {"DialRetryMax", t.DialRetryMax},
		{"SnapshotProgressTimeout", t.SnapshotProgressTimeout}, {"SnapshotPartialTTL", t.SnapshotPartialTTL}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", d.name))
		}
	}
	if c.dialRetryMax < c.dialRetryMin {
		errs = append(errs, errors.New("DialRetryMax must not be below DialRetryMin"))
	}
	// Lengths are compared with uint64 wire values and converted to int
	// for allocation: keep them within 32-bit ints.
	const maxLimit = 1<<31 - 1
	for _, l := range []struct {
		name string
		v    int
		dst  *uint64
		def  uint64
	}{{"MaxMessageBytes", t.MaxMessageBytes, &c.maxMessageBytes, DefaultMaxMessageBytes},
		{"MaxSnapshotEnvelopeBytes", t.MaxSnapshotEnvelopeBytes, &c.maxEnvelopeBytes, DefaultMaxSnapshotEnvelopeBytes},
		{"MaxReceiveBytes", t.MaxReceiveBytes, &c.maxReceiveBytes, DefaultMaxReceiveBytes},
		{"MaxPeerSendBytes", t.MaxPeerSendBytes, &c.maxPeerSendBytes, DefaultMaxPeerSendBytes}} {
		switch {
		case l.v < 0 || l.v > maxLimit:
			errs = append(errs, fmt.Errorf("%s must be between 0 and %d", l.name, maxLimit))
		case l.v == 0:
			*l.dst = l.def
		default:
			*l.dst = uint64(l.v)
		}
	}
	if c.maxReceiveBytes < max(c.maxMessageBytes, c.maxEnvelopeBytes) {
		errs = append(errs, errors.New("MaxReceiveBytes must be at least MaxMessageBytes and MaxSnapshotEnvelopeBytes"))
	}
	for _, q := range []struct {
		name string
		v    int
	}{{"StreamQueueSize", t.StreamQueueSize}, {"PipelineQueueSize", t.PipelineQueueSize},
		{"PipelineWorkers", t.PipelineWorkers}, {"RecvQueueSize", t.RecvQueueSize}, {"PropQueueSize", t.PropQueueSize},
		{"MaxSnapshotSends", t.MaxSnapshotSends}, {"MaxSnapshotReceives", t.MaxSnapshotReceives},
		{"MaxSnapshotPartials", t.MaxSnapshotPartials}} {
		if q.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", q.name))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return config{}, fmt.Errorf("rafthttp: invalid Transport: %w", err)
	}
	c.features = t.localFeatures()
	if c.maxReceiveBytes < batchMaxBytes {
		c.features &^= 1 << featurePipelineBatch // a batch could never fit
	}
	c.featuresHeader = c.features.String()
	c.sent, c.announce = newSentHeaders(&c)
	return c, nil
}
