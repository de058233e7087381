// Package rafthttp carries raft messages between the members of a cluster
// built on go.etcd.io/raft/v3, over HTTP, speaking etcd's peer protocol byte
// for byte: a member using it can talk to etcd 3.5, 3.6 and 3.7 members.
//
// # Overview
//
// Each pair of members keeps two long-lived HTTP streams in each direction
// (msgappv2 for log appends, message for everything else), falls back to one
// POST per message (the pipeline) when they are down, and moves snapshots as
// one streamed POST. The package is etcd's rafthttp rebuilt as a library:
// configuration is per Transport (no globals), nothing panics on what a peer
// or a caller sends, a silent stream is noticed within the read timeout, every
// dropped message is reported to raft and counted, and metrics go to a
// Prometheus registry you choose, under etcd's names unless
// Transport.MetricsNamespace says otherwise.
//
// # Embedding
//
// The application owns the raft node, the HTTP server and the storage. The
// contract, in order:
//
//  1. Fill in a [Transport]: ID, ClusterID, your [Raft] implementation, and
//     optionally URLs (your advertised peer URLs), Logger, ErrorC,
//     TLSClientConfig (with PeerIdentity and ClientRootCAs), SnapshotStore
//     and Registerer. Zero values of the other
//     fields mean the documented defaults.
//  2. Call [Transport.Start]. It validates the configuration and returns an
//     error instead of panicking.
//  3. Mount [Transport.Handler] on your own http.Server so that it sees every
//     path under /raft (mux.Handle("/raft", h) and mux.Handle("/raft/", h)).
//     Build that server with [NewServer], or copy its settings onto yours: a
//     zero http.Server never cuts off a client that sends its headers a byte
//     at a time, nor closes idle connections, and a ReadTimeout or
//     WriteTimeout would count against requests that live for hours.
//  4. Call [Transport.AddPeer] for every other member, and again (or
//     [Transport.RemovePeer], [Transport.UpdatePeer]) as configuration changes
//     commit.
//  5. In the raft Ready loop, after persisting the Ready's state, call
//     [Transport.Send] with the Ready's messages. Send never blocks. With
//     raft's AsyncStorageWrites, the messages to raft.LocalAppendThread and
//     raft.LocalApplyThread are for your storage goroutines, not the
//     network: Send skips them, reports and counts nothing, and logs a
//     warning (at most one a second), since raft waits for them to be
//     processed. Of the Responses they carry, pass those to other members to
//     Send and those to this member to the node's Step (Send treats this
//     member's own ID as an unknown peer's).
//  6. Received messages arrive through [Raft].Process, which should call the
//     node's Step. Delivery failures arrive through ReportUnreachable and
//     ReportSnapshot; pass them to the node. IsIDRemoved refuses streams from
//     removed members.
//  7. Treat a value on ErrorC (ErrMemberRemoved) as fatal for this member.
//  8. At shutdown call [Transport.Stop], then shut the HTTP server down. Stop
//     returns once every goroutine the transport started has ended.
//
// # Concurrency
//
// Every method of Transport is safe for concurrent use. Per peer the
// transport runs two stream writers, two stream readers, a few pipeline
// workers (PipelineWorkers, default 4), two probers (none with a HostPool,
// which probes each host once for all groups) and three loops calling
// Raft.Process: one for proposals, so that a node without a leader, which
// blocks proposals, cannot hold up votes and appends, and one for each
// stream, so that appends backed up on the msgappv2 stream do not delay
// heartbeats and votes on the message stream. Raft
// callbacks may be called from several goroutines at once, and
// ReportUnreachable may be called from inside Send.
//
// # Performance
//
// Encoding allocates nothing. Decoding allocates what raft keeps, and
// little else: each entry lives in an allocation of its own with its bytes
// (its Data aliases them), so that an entry raft or the application keeps
// keeps nothing else alive, and costs no more than protobuf's own decoding
// of it. While appends stream at full
// speed, heartbeats and votes are not held up behind them by Go's
// scheduler, which polls the network rarely when every core is busy: while
// appends move at bulk rates (64 MB/s or more, measured), the loops give
// way now and then and message streams look at their socket often
// (sched.go says how and where); a raft cluster's small appends pay for
// none of it. A snapshot being received is
// read from the network ahead of the store, so that receiving and writing
// overlap. Figures, and what is left, are in compat/BENCHMARKS.md.
//
// # Back-pressure and dropping
//
// Send puts each message on a bounded queue (stream or pipeline) and never
// waits. Each peer also has a budget in bytes for what is queued to it and
// not yet written (MaxPeerSendBytes, 64 MiB), so that a follower that reads
// slowly cannot make its queues hold gigabytes of appends. A message that
// finds its queue full, or the budget without room for it, is dropped,
// ReportUnreachable is called (and ReportSnapshot(SnapshotFailure) for a
// MsgSnap), and the drop is counted by peer, type and reason; a Send that
// dropped for a full queue yields the processor once before returning, so
// that the goroutine draining the queue runs before the caller queues more.
// When a peer is removed (RemovePeer, RemoveAllPeers), each message its
// queues still held, or its pipeline was posting, is reported the same way
// before RemovePeer returns, and counted (reason "removed"); so is what a
// remote learnt from a request held when it is closed ("retired"). Once Stop
// has begun nothing is reported, as in etcd: raft is stopping too. On the
// receiving side a full queue does not drop: the stream reader stops
// reading and TCP pushes back to the sender, where the drop, if any, is
// reported. Only proposals may be dropped
// at the receiver (raft drops proposals without a leader anyway); those drops
// are counted and logged.
//
// # Wire compatibility
//
// Routes: POST /raft (one protobuf message per request), GET
// /raft/stream/{msgapp,message}/<sender hex ID> (long-lived, chunked), POST
// /raft/snapshot (a length-prefixed MsgSnap, then the payload to the end of
// the body) and /raft/probing. Headers: X-Server-From, X-Server-Version
// (ServerVersion, default 3.7.0), X-Min-Cluster-Version (3.0.0),
// X-Etcd-Cluster-ID, X-Raft-To and X-PeerURLs, as etcd sends and checks them.
// Frames are byte-identical to etcd's; decoders accept the encodings of etcd
// 3.5, 3.6 and 3.7 and bound every length before allocating.
//
// Extensions beyond etcd are negotiated: every request and answer carries
// X-Rafthttp-Features (which etcd ignores), each peer's latest announcement
// is kept (PeerStats.Features), and an extension is used only when both
// sides announced it. The extensions today are the CRC-32C trailer on
// snapshot bodies; identity-refusal: a sender that announces it reads a
// 403 marked X-Rafthttp-Refused: peer-identity as a refusal of its
// certificate, not as its removal; and resumable snapshots (announced by a
// member whose SnapshotStore is a ResumableSnapshotStore), which add GET
// /raft/snapshot/resume and headers on the snapshot POST; and pipeline
// batches: several queued messages in one POST /raft/batch
// (pipeline_batch.go). etcd announces nothing, so it gets etcd's bytes.
//
// # Snapshots
//
// SendSnapshot streams a payload of any size with constant memory. To a
// peer that resumes, a transfer cut short is retried within the same
// SendSnapshot, from where the receiver's copy ends, for as long as that
// copy grows (SnapshotProgressTimeout); raft hears of the snapshot once,
// as with etcd, and a SendSnapshot that raft retries after a failure
// resumes as well, once the CRC-32C of the part the receiver holds
// matches. All outgoing snapshots share one bandwidth budget
// (SnapshotSendRate, SetSnapshotSendRate).
//
// # Peer identity
//
// With mutual TLS as etcd does it, any certificate the cluster's CA signed
// may speak for any member. Set [Transport.PeerIdentity] (for example to
// [IdentityFromURISAN], SPIFFE's convention) and each certificate speaks
// for one member: requests must come from the member they name, messages
// from the member whose certificate brought them, and a member dialled
// must present its own certificate. [Transport.ClientRootCAs] gives each
// new connection we dial the trust roots of the moment, so that a CA
// bundle rotates without a restart. Both are off by default; the README's
// TLS section says what is checked and how to turn the check on in a
// running cluster.
//
// # Many raft groups
//
// A process that runs several raft groups (a metadata group and a data
// group, or one per shard) gives each group a Transport of its own, with
// the group's ClusterID, and serves them all on one listener with a [Mux]:
// it dispatches each request by its X-Etcd-Cluster-ID, which every peer
// request carries, so that to its peers, etcd members included, each group
// is a cluster of its own and nothing changes on the wire. /raft/probing
// is answered once for all; a request for a cluster not served gets
// etcd's 412. Groups are added ([Mux.Add]) and removed ([Mux.Remove])
// while requests flow: Remove ends the group's requests, its served
// streams with them, waits for them, and leaves the Transport for its
// owner to Stop. Give the Transports one [HostPool] as well: groups that
// talk to the same member host then share the pipeline's connections, one
// prober per host (instead of two per peer of each group), and the pacing
// of stream dials to a host that is down (one dial at a time, on one
// backoff), while each group keeps its own streams. Stats are per
// Transport; for metrics, give each group's Transport the registry wrapped
// with a label of its own (prometheus.WrapRegistererWith). What a group
// costs, and what bounds it, is in compat/BENCHMARKS.md ("Many groups").
//
// # Where things live
//
//   - transport.go: the Transport's life (Start, Stop, membership, Send,
//     Handler); config.go: every Default and the validation of the fields;
//     dial.go: the HTTP clients and connections we dial; identity.go: peer
//     identity and the trust roots of our dials; faults.go: Pause and
//     CutPeer.
//   - peer.go, remote.go: a member we talk to, and one we only answer;
//     streams.go: the table of stream types (a new stream type is a row
//     there plus a codec); stream_writer.go, stream_reader.go: the two ends
//     of a stream; pipeline.go: POST /raft; pipeline_batch.go: POST
//     /raft/batch, both ends and its wire format.
//   - coder.go, msgappv2_codec.go: the two stream codecs (compression of
//     msgappv2 would go in its codec, switched on by a feature);
//     internal/raftproto: the protobuf codec and what decoding costs.
//   - protocol.go: routes, headers, IDs, the checks on requests and the
//     meaning of answers; features.go: negotiation (a new extension is a
//     feature token there, used only when the peer announced it too);
//     version.go: semver; errors.go: every exported error.
//   - http.go: the raft handlers (server.go: the http.Server recipe);
//     mux.go: several groups' Transports behind one listener (Mux);
//     hostpool.go: what their Transports share per member host
//     (HostPool: pipeline connections, probers, stream dial gates);
//     snapshot_sender.go, snapshot_receive.go, snapshot_store.go,
//     readahead.go: snapshots; snapshot_resume.go: the sending side of
//     resumable transfers, snapshot_resume_wire.go their wire format,
//     snapshot_resume_progress.go the resume query and progress stream,
//     snapshot_ring.go the replay ring (whose memory ringmem_*.go maps);
//     snapshot_partials.go: their receiving side (the partial payloads
//     kept, GET /raft/snapshot/resume).
//   - drops.go: the one place a lost message is told to raft, counted and
//     logged; budget.go: what received messages may hold; send_budget.go:
//     what may be queued to a peer; warnlog.go: rate-limited warnings.
//   - sched.go: every measure taken about Go's scheduler, and where each
//     is applied; metrics.go, stats.go, peer_status.go, probing_status.go:
//     what is observed.
//   - internal/rafttest: a raft member for tests, shared with compat/.
//   - faultnet (public): a fault-injecting TCP network for tests, a proxy
//     per ordered pair of members (Mesh), whose faults include a reset
//     every n bytes; rafthttptest (public): clusters of Transports behind
//     real HTTP servers, wired through a Mesh, for the tests of
//     applications.
//   - robustness/ (a nested module, tests only): raft members on our
//     transports under a seeded nemesis, their clients' history checked
//     for linearizability with porcupine, and the transport's accounting.
package rafthttp
