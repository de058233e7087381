package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/client/pkg/v3/types"
	etcdhttp "go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	stats "go.etcd.io/etcd/server/v3/etcdserver/api/v2stats"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"

	"github.com/raftkit/rafthttp"
)

// kind is the transport a node runs.
type kind string

const (
	ours kind = "ours"
	etcd kind = "etcd"
)

const clusterID = 0x1000

// IDs of the two members of every pair: a sends, b receives.
const (
	idA uint64 = 1
	idB uint64 = 2
)

// failures keeps the first error a run finds, from any goroutine.
type failures struct {
	mu    sync.Mutex
	first error
	count int
}

func (f *failures) add(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first == nil {
		f.first = err
	}
	f.count++
}

func (f *failures) err() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.first == nil {
		return nil
	}
	if f.count > 1 {
		return fmt.Errorf("%w (and %d more errors)", f.first, f.count-1)
	}
	return f.first
}

// handler is what a node's raft does with a message its transport hands it.
type handler func(n *node, m *raftpb.Message) error

// sink is the Raft of a node, for both transports: their Raft interfaces
// have the same methods.
type sink struct {
	n           *node
	handle      handler
	fail        *failures
	unreachable atomic.Int64
	snapReports chan raft.SnapshotStatus
	// onUnreachable, if set before the node has peers, is told of each
	// report too (a raft node's ReportUnreachable).
	onUnreachable func(id uint64)
}

var (
	_ rafthttp.Raft = (*sink)(nil)
	_ etcdhttp.Raft = (*sink)(nil)
)

func (s *sink) Process(_ context.Context, m *raftpb.Message) error {
	if s.handle == nil {
		s.fail.add(fmt.Errorf("node %d: unexpected %s", s.n.id, m.GetType()))
		return nil
	}
	if err := s.handle(s.n, m); err != nil {
		s.fail.add(fmt.Errorf("node %d: %w", s.n.id, err))
	}
	return nil
}

func (s *sink) IsIDRemoved(uint64) bool { return false }
func (s *sink) ReportUnreachable(id uint64) {
	s.unreachable.Add(1)
	if s.onUnreachable != nil {
		s.onUnreachable(id)
	}
}
func (s *sink) ReportSnapshot(_ uint64, status raft.SnapshotStatus) {
	select {
	case s.snapReports <- status:
	default:
	}
}

// tap sits in front of a node's handler and counts what the HTTP server
// serves, without wrapping the ResponseWriter (both transports use its
// Flusher): pipeline POSTs, and stream handlers started and ended
// (msgappv2 streams are served on /raft/stream/msgapp/). The stream counts
// tell when etcd's streams are up, which its transport does not say (ours
// says so in PeerStats: see streamsUp), and prove that no stream of either
// kind reconnected during a measurement.
//
// With refuseStreams, it answers every stream request itself with a 404
// without X-Server-Version, as a server that does not serve the stream
// routes, which both transports read as a peer too old for streams (etcd's
// errUnsupportedStreamType, our ErrUnsupportedStreamType), so they keep
// sending by the pipeline without marking the peer inactive, and keep
// redialling. The 404 carries the X-Rafthttp-Features the node announced
// on its last pipeline answer, if any (none for etcd), as every answer of
// a server of ours does: without it, each refused dial would tell our
// sender that the peer announces nothing, and turn its batches off until
// the next pipeline answer.
//
// Pipeline batches (POST /raft/batch, ours only) are counted apart, with
// the messages their bodies carry (frames, counted as the body is read).
type tap struct {
	next           http.Handler
	refuseStreams  bool
	pipelinePosts  atomic.Int64 // POST /raft: one message each
	batchPosts     atomic.Int64 // POST /raft/batch
	batchMsgs      atomic.Int64 // messages framed in the batches' bodies
	streamsBegun   atomic.Int64
	streamsEnded   atomic.Int64
	msgAppV2Begun  atomic.Int64
	streamsRefused atomic.Int64
	announced      atomic.Pointer[string]
}

// headerFeatures is our transport's announcement header (etcd sends none).
const headerFeatures = "X-Rafthttp-Features"

func (t *tap) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/raft":
		t.pipelinePosts.Add(1)
		defer t.learnAnnouncement(w)
	case r.Method == http.MethodPost && r.URL.Path == "/raft/batch":
		t.batchPosts.Add(1)
		r.Body = &frameCounter{ReadCloser: r.Body, frames: &t.batchMsgs}
		defer t.learnAnnouncement(w)
	case strings.HasPrefix(r.URL.Path, "/raft/stream/") && t.refuseStreams:
		t.streamsRefused.Add(1)
		if a := t.announced.Load(); a != nil {
			w.Header().Set(headerFeatures, *a)
		}
		http.NotFound(w, r)
		return
	case strings.HasPrefix(r.URL.Path, "/raft/stream/"):
		t.streamsBegun.Add(1)
		if strings.HasPrefix(r.URL.Path, "/raft/stream/msgapp/") {
			t.msgAppV2Begun.Add(1)
		}
		defer t.streamsEnded.Add(1)
	}
	t.next.ServeHTTP(w, r)
}

// learnAnnouncement keeps what the node announced on an answer it served.
func (t *tap) learnAnnouncement(w http.ResponseWriter) {
	if v := w.Header().Get(headerFeatures); v != "" {
		if a := t.announced.Load(); a == nil || *a != v {
			t.announced.Store(&v)
		}
	}
}

// frameCounter counts the frames of a pipeline batch's body as it is read:
// each a big-endian uint64 length, then that many bytes.
type frameCounter struct {
	io.ReadCloser
	frames *atomic.Int64
	hdr    [8]byte
	nh     int    // bytes of hdr read
	left   uint64 // bytes of the current frame still to come
}

func (c *frameCounter) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	for b := p[:n]; len(b) > 0; {
		if c.left > 0 {
			k := min(uint64(len(b)), c.left)
			c.left -= k
			b = b[k:]
			continue
		}
		k := copy(c.hdr[c.nh:], b)
		c.nh += k
		b = b[k:]
		if c.nh == len(c.hdr) {
			c.left, c.nh = binary.BigEndian.Uint64(c.hdr[:]), 0
			c.frames.Add(1)
		}
	}
	return n, err
}

// openStreams is the number of stream handlers running now.
func (t *tap) openStreams() int64 { return t.streamsBegun.Load() - t.streamsEnded.Load() }

// node is one member: a transport of either kind behind a real http.Server
// on 127.0.0.1.
type node struct {
	id, peer uint64
	kind     kind
	url      string
	dir      string // where received snapshots are kept
	raft     *sink
	tap      *tap
	srv      *http.Server
	served   chan struct{} // closed when Serve returns
	ours     *rafthttp.Transport
	etcd     *etcdhttp.Transport
}

// newNode starts a node of kind k; snapshots it receives go to dir. With
// refuseStreams its server refuses every stream (see tap).
func newNode(k kind, id, peer uint64, dir string, h handler, f *failures, refuseStreams bool) (*node, error) {
	n := &node{id: id, peer: peer, kind: k, dir: dir, served: make(chan struct{})}
	n.raft = &sink{n: n, handle: h, fail: f, snapReports: make(chan raft.SnapshotStatus, 16)}
	var (
		ln  net.Listener
		err error
		h2  http.Handler
	)
	switch k {
	case ours:
		// Ours on an ordinary listener (compat/README.md explains why).
		if ln, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return nil, err
		}
		n.url = "http://" + ln.Addr().String()
		n.ours = &rafthttp.Transport{
			ID: id, ClusterID: clusterID, URLs: []string{n.url}, Raft: n.raft,
			SnapshotStore: rafthttp.DirSnapshotStore{Dir: dir},
		}
		if err := n.ours.Start(); err != nil {
			ln.Close()
			return nil, err
		}
		h2 = n.ours.Handler()
	case etcd:
		// etcd on its peer listener, with its per-Read and per-Write
		// deadlines, as an etcd member serves its peers.
		if ln, err = etcdhttp.NewListener(url.URL{Scheme: "http", Host: "127.0.0.1:0"}, &transport.TLSInfo{}); err != nil {
			return nil, err
		}
		n.url = "http://" + ln.Addr().String()
		lg := zap.NewNop()
		idStr := types.ID(id).String()
		n.etcd = &etcdhttp.Transport{
			Logger:      lg,
			DialTimeout: 2 * time.Second,
			ID:          types.ID(id),
			URLs:        types.MustNewURLs([]string{n.url}),
			ClusterID:   types.ID(clusterID),
			Raft:        n.raft,
			Snapshotter: snap.New(lg, dir),
			ServerStats: stats.NewServerStats("", idStr),
			LeaderStats: stats.NewLeaderStats(lg, idStr),
			ErrorC:      make(chan error, 1),
		}
		if err := n.etcd.Start(); err != nil {
			ln.Close()
			return nil, err
		}
		h2 = n.etcd.Handler()
	default:
		return nil, fmt.Errorf("unknown transport %q", k)
	}
	mux := http.NewServeMux()
	mux.Handle("/raft", h2)
	mux.Handle("/raft/", h2)
	n.tap = &tap{next: mux, refuseStreams: refuseStreams}
	// etcd's peer server settings.
	n.srv = &http.Server{Handler: n.tap, ReadTimeout: 5 * time.Minute, ErrorLog: log.New(io.Discard, "", 0)}
	go func() {
		defer close(n.served)
		n.srv.Serve(ln)
	}()
	return n, nil
}

// send hands msgs to the transport. Callers reuse their slice: both
// transports read it only during the call.
func (n *node) send(msgs []*raftpb.Message) {
	if n.ours != nil {
		n.ours.Send(msgs)
	} else {
		n.etcd.Send(msgs)
	}
}

func (n *node) addPeer(id uint64, u string) error {
	if n.ours != nil {
		return n.ours.AddPeer(id, []string{u})
	}
	n.etcd.AddPeer(types.ID(id), []string{u})
	return nil
}

func (n *node) activeSince(id uint64) time.Time {
	if n.ours != nil {
		return n.ours.ActiveSince(id)
	}
	return n.etcd.ActiveSince(types.ID(id))
}

// sendSnapshot sends a MsgSnap with its payload and returns a channel that
// gets the outcome.
func (n *node) sendSnapshot(m *raftpb.Message, payload io.ReadCloser, size int64) <-chan error {
	if n.ours != nil {
		return n.ours.SendSnapshot(rafthttp.SnapshotMessage{Message: m, Payload: payload, PayloadSize: size})
	}
	sm := snap.NewMessage(m, payload, size)
	n.etcd.SendSnapshot(sm)
	errc := make(chan error, 1)
	go func() {
		if !<-sm.CloseNotify() {
			errc <- errors.New("etcd: snapshot not sent")
			return
		}
		errc <- nil
	}()
	return errc
}

// stopTransport stops the transport; close stops the HTTP server. A pair is
// stopped transports first, so that no stream is redialled while it goes.
func (n *node) stopTransport() {
	if n.ours != nil {
		n.ours.Stop()
	} else {
		n.etcd.Stop()
	}
}

func (n *node) close() {
	n.srv.Close()
	<-n.served
}

// pair is two connected nodes of one kind: a (id 1) and b (id 2).
type pair struct {
	a, b *node
	fail *failures
}

// newPair starts two nodes of kind k, makes them peers of each other and
// waits until both have their two streams to the other up. ha and hb are
// their raft handlers; b keeps received snapshots in dir.
func newPair(k kind, dir string, ha, hb handler) (*pair, error) {
	p, err := startPair(k, dir, ha, hb, false)
	if err != nil {
		return nil, err
	}
	err = waitUntil(10*time.Second, func() bool { return p.a.streamsUp() && p.b.streamsUp() })
	if err != nil {
		err = fmt.Errorf("%s pair: streams not up: %w (a: %s; b: %s)", k, err, p.a.streamsState(), p.b.streamsState())
		p.stop()
		return nil, err
	}
	return p, nil
}

// streamsUp reports whether the node has both streams with its peer up in
// both directions. Ours says so (PeerStats.StreamsUp): each of its writers
// has attached the stream the peer dialled, and each of its readers is
// connected to the peer. etcd's transport keeps its stream state to itself,
// so for it the tap stands in: the peer is active, and has dialled both
// streams to us, whose handlers still run (each hands its stream to etcd's
// writer at once).
func (n *node) streamsUp() bool {
	if n.ours != nil {
		s, ok := n.ours.PeerStatus(n.peer)
		return ok && s.StreamsUp()
	}
	return !n.activeSince(n.peer).IsZero() && n.tap.openStreams() >= 2 && n.tap.msgAppV2Begun.Load() > 0
}

// streamsState describes what streamsUp looks at, for an error.
func (n *node) streamsState() string {
	if n.ours != nil {
		s, _ := n.ours.PeerStatus(n.peer)
		var b strings.Builder
		for i, st := range s.Streams {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s writer up %v reader up %v", st.Type, st.Writer.Up, st.Reader.Up)
		}
		return b.String()
	}
	return fmt.Sprintf("active %v, open streams %d, msgappv2 dials %d",
		!n.activeSince(n.peer).IsZero(), n.tap.openStreams(), n.tap.msgAppV2Begun.Load())
}

// newRefusedPair starts two nodes of kind k that refuse each other's
// streams (see tap), makes them peers of each other and waits until each
// has refused at least two stream dials of the other (which has two stream
// readers). No stream can ever attach, so every message goes by a pipeline
// POST.
func newRefusedPair(k kind, dir string, ha, hb handler) (*pair, error) {
	p, err := startPair(k, dir, ha, hb, true)
	if err != nil {
		return nil, err
	}
	err = waitUntil(10*time.Second, func() bool {
		return p.a.tap.streamsRefused.Load() >= 2 && p.b.tap.streamsRefused.Load() >= 2
	})
	if err != nil {
		err = fmt.Errorf("%s pair: stream dials not seen: %w (refused %d/%d)", k, err,
			p.a.tap.streamsRefused.Load(), p.b.tap.streamsRefused.Load())
		p.stop()
		return nil, err
	}
	return p, nil
}

// startPair starts the two nodes of a pair and makes them peers of each
// other.
func startPair(k kind, dir string, ha, hb handler, refuseStreams bool) (*pair, error) {
	p := &pair{fail: &failures{}}
	var err error
	if p.a, err = newNode(k, idA, idB, dir, ha, p.fail, refuseStreams); err != nil {
		return nil, err
	}
	if p.b, err = newNode(k, idB, idA, dir, hb, p.fail, refuseStreams); err != nil {
		p.a.stopTransport()
		p.a.close()
		return nil, err
	}
	if err := errors.Join(p.a.addPeer(idB, p.b.url), p.b.addPeer(idA, p.a.url)); err != nil {
		p.stop()
		return nil, err
	}
	return p, nil
}

func (p *pair) stop() {
	var wg sync.WaitGroup
	wg.Go(p.a.stopTransport)
	wg.Go(p.b.stopTransport)
	wg.Wait()
	p.a.close()
	p.b.close()
}

// linkState is what must not change while a measurement runs: no pipeline
// POST (everything goes over the streams), no stream handler ended (no
// reconnect), nothing reported unreachable; and, for ours, no stream end
// down or attached anew (PeerStats).
type linkState struct {
	posts, ended, unreachable [2]int64
	streams                   [2][2]rafthttp.StreamStats
}

func (p *pair) linkState() linkState {
	var s linkState
	for i, n := range []*node{p.a, p.b} {
		s.posts[i] = n.tap.pipelinePosts.Load() + n.tap.batchPosts.Load()
		s.ended[i] = n.tap.streamsEnded.Load()
		s.unreachable[i] = n.raft.unreachable.Load()
		if n.ours != nil {
			st, _ := n.ours.PeerStatus(n.peer)
			s.streams[i] = st.Streams
		}
	}
	return s
}

// checkLink reports what changed since before.
func (p *pair) checkLink(before linkState) error { return linkChanges(before, p.linkState()) }

// linkChanges reports what changed from before to after.
func linkChanges(before, after linkState) error {
	var errs []error
	for i, name := range []string{"a", "b"} {
		if d := after.posts[i] - before.posts[i]; d != 0 {
			errs = append(errs, fmt.Errorf("node %s served %d pipeline POSTs during the measurement, want 0 (messages left the streams)", name, d))
		}
		if d := after.ended[i] - before.ended[i]; d != 0 {
			errs = append(errs, fmt.Errorf("node %s: %d streams ended during the measurement, want 0", name, d))
		}
		if d := after.unreachable[i] - before.unreachable[i]; d != 0 {
			errs = append(errs, fmt.Errorf("node %s reported its peer unreachable %d times during the measurement, want 0", name, d))
		}
		for j, st := range after.streams[i] {
			was := before.streams[i][j]
			if !sameEnd(st.Writer, was.Writer) || !sameEnd(st.Reader, was.Reader) {
				errs = append(errs, fmt.Errorf("node %s: %s stream went from writer %+v reader %+v to writer %+v reader %+v during the measurement, want no change",
					name, st.Type, was.Writer, was.Reader, st.Writer, st.Reader))
			}
		}
	}
	return errors.Join(errs...)
}

// sameEnd reports whether a stream end is in the same state, on the same
// connection.
func sameEnd(a, b rafthttp.StreamState) bool { return a.Up == b.Up && a.Since.Equal(b.Since) }

// waitUntil polls cond every millisecond until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("condition not met within %v", timeout)
		}
		<-tick.C
	}
	return nil
}
