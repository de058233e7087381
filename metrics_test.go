package rafthttp

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The Prometheus testutil package cannot be imported here: it needs a module
// (github.com/kylelemons/godebug) that go.sum does not list. The helpers
// below read gathered families instead, which is what a scrape sees.

// obsRegisterer is a real registry that remembers which collectors were
// registered on it and unregistered from it.
type obsRegisterer struct {
	*prometheus.Registry

	mu           sync.Mutex
	registered   []prometheus.Collector
	unregistered []prometheus.Collector
}

func newObsRegisterer() *obsRegisterer {
	return &obsRegisterer{Registry: prometheus.NewRegistry()}
}

func (r *obsRegisterer) Register(c prometheus.Collector) error {
	err := r.Registry.Register(c)
	if err == nil {
		r.mu.Lock()
		r.registered = append(r.registered, c)
		r.mu.Unlock()
	}
	return err
}

func (r *obsRegisterer) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := r.Register(c); err != nil {
			panic(err)
		}
	}
}

func (r *obsRegisterer) Unregister(c prometheus.Collector) bool {
	ok := r.Registry.Unregister(c)
	if ok {
		r.mu.Lock()
		r.unregistered = append(r.unregistered, c)
		r.mu.Unlock()
	}
	return ok
}

func (r *obsRegisterer) counts() (registered, unregistered int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.registered), len(r.unregistered)
}

// obsDesc is what a collector's descriptor says: name and variable labels.
type obsDesc struct {
	name   string
	labels []string
}

var obsDescRE = regexp.MustCompile(`fqName: "([^"]*)".*variableLabels: \{([^}]*)\}`)

// describedMetrics lists the descriptors of every collector registered on r.
func (r *obsRegisterer) describedMetrics(t *testing.T) map[string]obsDesc {
	t.Helper()
	r.mu.Lock()
	cs := slices.Clone(r.registered)
	r.mu.Unlock()
	out := map[string]obsDesc{}
	for _, c := range cs {
		ch := make(chan *prometheus.Desc, 16)
		go func() {
			c.Describe(ch)
			close(ch)
		}()
		for d := range ch {
			m := obsDescRE.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("cannot parse descriptor %s", d)
			}
			var labels []string
			if m[2] != "" {
				labels = strings.Split(m[2], ",")
			}
			out[m[1]] = obsDesc{name: m[1], labels: labels}
		}
	}
	return out
}

// obsFamilies gathers g into a map by metric name.
func obsFamilies(t testing.TB, g prometheus.Gatherer) map[string]*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	out := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		out[mf.GetName()] = mf
	}
	return out
}

// obsLabels returns a series' labels as a map.
func obsLabels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}

// obsSeries finds the series of the named metric whose labels are exactly
// labels, or nil.
func obsSeries(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	mf, ok := obsFamilies(t, g)[name]
	if !ok {
		return nil
	}
	for _, m := range mf.GetMetric() {
		ls := obsLabels(m)
		if len(ls) != len(labels) {
			continue
		}
		match := true
		for k, v := range labels {
			if ls[k] != v {
				match = false
				break
			}
		}
		if match {
			return m
		}
	}
	return nil
}

// obsMetricSpec is one documented metric (spec §8, and our additions).
type obsMetricSpec struct {
	name    string
	typ     dto.MetricType
	labels  []string
	buckets []float64 // histograms only
}

func obsExpBuckets(start float64, n int) []float64 {
	out := make([]float64, n)
	for i := range out {
		out[i] = start * math.Pow(2, float64(i))
	}
	return out
}

var (
	obsSnapBuckets = obsExpBuckets(0.1, 10)    // 0.1 s … 51.2 s
	obsRTTBuckets  = obsExpBuckets(0.0001, 16) // 0.1 ms … 3.2768 s
)

var obsMetricSpecs = []obsMetricSpec{
	{"etcd_network_active_peers", dto.MetricType_GAUGE, []string{"Local", "Remote"}, nil},
	{"etcd_network_disconnected_peers_total", dto.MetricType_COUNTER, []string{"Local", "Remote"}, nil},
	{"etcd_network_peer_sent_bytes_total", dto.MetricType_COUNTER, []string{"To"}, nil},
	{"etcd_network_peer_received_bytes_total", dto.MetricType_COUNTER, []string{"From"}, nil},
	{"etcd_network_peer_sent_failures_total", dto.MetricType_COUNTER, []string{"To"}, nil},
	{"etcd_network_peer_received_failures_total", dto.MetricType_COUNTER, []string{"From"}, nil},
	{"etcd_network_snapshot_send_success", dto.MetricType_COUNTER, []string{"To"}, nil},
	{"etcd_network_snapshot_send_inflights_total", dto.MetricType_GAUGE, []string{"To"}, nil},
	{"etcd_network_snapshot_send_failures", dto.MetricType_COUNTER, []string{"To"}, nil},
	{"etcd_network_snapshot_send_total_duration_seconds", dto.MetricType_HISTOGRAM, []string{"To"}, obsSnapBuckets},
	{"etcd_network_snapshot_receive_success", dto.MetricType_COUNTER, []string{"From"}, nil},
	{"etcd_network_snapshot_receive_inflights_total", dto.MetricType_GAUGE, []string{"From"}, nil},
	{"etcd_network_snapshot_receive_failures", dto.MetricType_COUNTER, []string{"From"}, nil},
	{"etcd_network_snapshot_receive_total_duration_seconds", dto.MetricType_HISTOGRAM, []string{"From"}, obsSnapBuckets},
	{"etcd_network_peer_round_trip_time_seconds", dto.MetricType_HISTOGRAM, []string{"To"}, obsRTTBuckets},
	{"rafthttp_dropped_messages_total", dto.MetricType_COUNTER, []string{"Peer", "Type", "Reason"}, nil},
	{"rafthttp_stream_reconnects_total", dto.MetricType_COUNTER, []string{"Peer", "Stream"}, nil},
	{"rafthttp_snapshot_sent_bytes_total", dto.MetricType_COUNTER, []string{"To"}, nil},
	{"rafthttp_snapshot_received_bytes_total", dto.MetricType_COUNTER, []string{"From"}, nil},
	{"rafthttp_queue_depth", dto.MetricType_GAUGE, []string{"Peer", "Queue"}, nil},
	{"rafthttp_send_queue_bytes", dto.MetricType_GAUGE, []string{"Peer"}, nil},
	{"rafthttp_peer_identity_refused_total", dto.MetricType_COUNTER, []string{"Route", "Reason"}, nil},
	{"rafthttp_snapshot_send_resumed_total", dto.MetricType_COUNTER, []string{"To"}, nil},
	{"rafthttp_snapshot_send_resumed_bytes_total", dto.MetricType_COUNTER, []string{"To"}, nil},
	{"rafthttp_snapshot_receive_resumed_total", dto.MetricType_COUNTER, []string{"From"}, nil},
	{"rafthttp_snapshot_send_rate_limit_bytes", dto.MetricType_GAUGE, nil, nil},
	{"rafthttp_snapshot_partials", dto.MetricType_GAUGE, nil, nil},
	{"rafthttp_snapshot_partial_bytes", dto.MetricType_GAUGE, nil, nil},
}

// obsPostJunk posts a body to a node's snapshot route without any of the
// headers a peer sends, which the receiver must count as a failure.
func obsPostJunk(t *testing.T, url string) {
	t.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Post(url+RaftSnapshotPrefix, "application/octet-stream", strings.NewReader("junk"))
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode < 400 {
		t.Fatalf("junk snapshot POST answered %s, want an error", resp.Status)
	}
}

// TestMetricsEveryDocumentedMetric drives traffic, drops, snapshots, probes
// and reconnects between two transports, then checks that every documented
// metric is registered with etcd's exact name and labels, and that each one
// that has series carries etcd's type, labels and buckets.
func TestMetricsEveryDocumentedMetric(t *testing.T) {
	regA, regB := newObsRegisterer(), newObsRegisterer()
	a := newNode(t, withID(1), withConfig(func(tr *Transport) {
		tr.Registerer = regA
		tr.ConnReadTimeout = time.Second
		tr.SnapshotStore = &memStore{} // a resumable store: a announces snapshot-resume
	}))
	b := newNode(t, withID(2), withConfig(func(tr *Transport) {
		tr.Registerer = regB
		tr.ConnReadTimeout = time.Second
		tr.SnapshotStore = &memStore{}
		tr.PropQueueSize = 1
	}))
	// b's raft holds proposals, so that its proposal queue overflows.
	b.raft.setProcess(func(ctx context.Context, m *raftpb.Message) error {
		if m.GetType() == raftpb.MsgProp {
			<-ctx.Done()
			return ctx.Err()
		}
		b.raft.msgc <- m
		return nil
	})
	if err := a.tr.AddPeer(3, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	connectStreams(t, a, b)

	for i := range uint64(5) {
		a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, i), newMsg(raftpb.MsgHeartbeat, 1, 2, i)})
		b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgAppResp, 2, 1, i)})
	}
	for range 10 {
		b.raft.recv(t)
	}
	for range 5 {
		a.raft.recv(t)
	}
	for i := range uint64(5) {
		a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgProp, 1, 2, i)})
	}
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 3, 1)}) // dropped: 3 is down
	// b holds the first KiB of the snapshot, as if an earlier transfer
	// had broken there: the send resumes.
	snap := newSnapshot(1, 2, 7, 4096)
	plantPartial(t, b.tr, 1, snap.Message, snap.PayloadSize, bytes.Repeat([]byte{'s'}, 1024))
	waitFeatures(t, a, 2, featureSnapshotResume)
	if err := <-a.tr.SendSnapshot(snap); err != nil {
		t.Fatalf("SendSnapshot to 2: %v", err)
	}
	if err := <-a.tr.SendSnapshot(newSnapshot(1, 3, 8, 16)); err == nil {
		t.Fatal("SendSnapshot to the dead peer 3 succeeded")
	}
	obsPostJunk(t, b.url)
	b.srv.CloseClientConnections() // a's readers from b reconnect

	waitMetric(t, regA, "rafthttp_dropped_messages_total", map[string]string{"Peer": "3", "Type": "MsgHeartbeat", "Reason": dropSendFailed}, "> 0", above(0))
	waitMetric(t, regB, "rafthttp_dropped_messages_total", map[string]string{"Peer": "1", "Type": "MsgProp", "Reason": dropRecvFull}, "> 0", above(0))
	waitMetric(t, regA, "etcd_network_peer_round_trip_time_seconds", map[string]string{"To": "2"}, "to have samples", above(0))
	waitMetric(t, regA, "rafthttp_stream_reconnects_total", map[string]string{"Peer": "2", "Stream": "reader stream Message"}, "> 0", above(0))
	waitMetric(t, regB, "etcd_network_snapshot_receive_success", map[string]string{"From": "1"}, "> 0", above(0))

	t.Run("registered", func(t *testing.T) {
		for _, reg := range []*obsRegisterer{regA, regB} {
			described := reg.describedMetrics(t)
			for _, want := range obsMetricSpecs {
				got, ok := described[want.name]
				if !ok {
					t.Errorf("%s: not registered", want.name)
					continue
				}
				if !slices.Equal(got.labels, want.labels) {
					t.Errorf("%s: got labels %v, want %v", want.name, got.labels, want.labels)
				}
			}
			for name := range described {
				if !slices.ContainsFunc(obsMetricSpecs, func(s obsMetricSpec) bool { return s.name == name }) {
					t.Errorf("%s: registered but not documented", name)
				}
			}
		}
	})

	t.Run("gathered", func(t *testing.T) {
		fams := obsFamilies(t, regA)
		for name, mf := range obsFamilies(t, regB) {
			if mine, ok := fams[name]; ok {
				mf = &dto.MetricFamily{Name: mf.Name, Help: mf.Help, Type: mf.Type, Metric: append(slices.Clone(mine.Metric), mf.Metric...)}
			}
			fams[name] = mf
		}
		for _, want := range obsMetricSpecs {
			mf, ok := fams[want.name]
			if !ok && want.name == "rafthttp_peer_identity_refused_total" {
				continue // needs mutual TLS: TestPeerIdentityInbound gathers it
			}
			if !ok {
				t.Errorf("%s: no series gathered", want.name)
				continue
			}
			if mf.GetType() != want.typ {
				t.Errorf("%s: got type %v, want %v", want.name, mf.GetType(), want.typ)
			}
			for _, m := range mf.GetMetric() {
				var names []string
				for _, l := range m.GetLabel() {
					names = append(names, l.GetName())
				}
				slices.Sort(names)
				wantNames := slices.Sorted(slices.Values(want.labels))
				if !slices.Equal(names, wantNames) {
					t.Errorf("%s: series has labels %v, want %v", want.name, names, wantNames)
				}
				if want.buckets == nil {
					continue
				}
				var bounds []float64
				for _, b := range m.GetHistogram().GetBucket() {
					bounds = append(bounds, b.GetUpperBound())
				}
				if !slices.EqualFunc(bounds, want.buckets, func(x, y float64) bool { return math.Abs(x-y) < 1e-12 }) {
					t.Errorf("%s: got buckets %v, want %v", want.name, bounds, want.buckets)
				}
			}
		}
	})
}

func TestMetricsTrafficBytes(t *testing.T) {
	regA, regB := newObsRegisterer(), newObsRegisterer()
	a := newNode(t, withID(1), withRegisterer(regA))
	b := newNode(t, withID(2), withRegisterer(regB))
	connect(t, a, b)
	waitStreams(t, a, b)

	to2, from1 := map[string]string{"To": "2"}, map[string]string{"From": "1"}
	sent0 := metricValue(t, regA, "etcd_network_peer_sent_bytes_total", to2)
	recv0 := metricValue(t, regB, "etcd_network_peer_received_bytes_total", from1)
	big := newMsg(raftpb.MsgApp, 1, 2, 1)
	big.Entries = []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(2), Data: bytes.Repeat([]byte{'x'}, 10000)}}
	a.tr.Send([]*raftpb.Message{big})
	b.raft.recv(t)
	// Heartbeats add bytes too; the entry alone is 10000.
	waitMetric(t, regA, "etcd_network_peer_sent_bytes_total", to2, "to grow by the entry", above(sent0+10000))
	if got := metricValue(t, regB, "etcd_network_peer_received_bytes_total", from1); got < recv0+10000 {
		t.Errorf("received bytes from 1 = %v, want at least %v", got, recv0+10000)
	}
	// Only the sender counts sent bytes, only the receiver received ones.
	if got := metricValue(t, regB, "etcd_network_peer_sent_bytes_total", map[string]string{"To": "1"}); got >= 10000 {
		t.Errorf("b's sent bytes to 1 = %v, want less than the entry b never sent", got)
	}
}

func TestMetricsActivePeers(t *testing.T) {
	reg := newObsRegisterer()
	a := newNode(t, withID(1), withRegisterer(reg))
	b := newNode(t, withID(2))
	connect(t, a, b)
	// Once every stream is up, nothing but b's death can change a's view.
	waitStreams(t, a, b)
	waitStreams(t, b, a)
	labels := map[string]string{"Local": "1", "Remote": "2"}
	waitMetric(t, reg, "etcd_network_active_peers", labels, "= 1", func(v float64) bool { return v == 1 })
	disconnected0 := metricValue(t, reg, "etcd_network_disconnected_peers_total", labels)

	b.close() // the peer's transport and server die
	waitMetric(t, reg, "etcd_network_active_peers", labels, "= 0", func(v float64) bool { return v == 0 })
	// At least one disconnect. A stream b was dialling as it stopped may
	// still have attached to a (active again) just before it broke: a
	// second disconnect is then real, not a miscount.
	if got := metricValue(t, reg, "etcd_network_disconnected_peers_total", labels); got < disconnected0+1 {
		t.Errorf("disconnected_peers_total = %v, want at least %v", got, disconnected0+1)
	}
	if got := a.tr.ActivePeers(); got != 0 {
		t.Errorf("ActivePeers() = %d, want 0", got)
	}
}

func TestMetricsDroppedMessages(t *testing.T) {
	tests := []struct {
		name   string
		reason string
		// setup returns the URL of the peer to send to, and, if not nil,
		// what tells that the first message is stuck in flight.
		setup func(t *testing.T) (string, func() bool)
		// failure is whether the drop counts as a send failure.
		failure bool
		// pipelineDepth is what the pipeline queue holds in the end.
		pipelineDepth float64
	}{
		{
			name:   "send failed",
			reason: dropSendFailed,
			setup: func(t *testing.T) (string, func() bool) {
				return "http://" + freeAddr(t), nil
			},
			failure: true,
		},
		{
			name:   "paused",
			reason: dropPaused,
			setup: func(t *testing.T) (string, func() bool) {
				return newNode(t, withID(2)).url, nil
			},
		},
		{
			name:   "queue full",
			reason: dropQueueFull,
			setup: func(t *testing.T) (string, func() bool) {
				// A peer whose pipeline never answers; its streams never
				// come up, so everything queues on the pipeline.
				quit := make(chan struct{})
				var posts atomic.Int64
				srv := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == RaftPrefix {
						posts.Add(1)
						io.Copy(io.Discard, r.Body)
						select {
						case <-r.Context().Done():
						case <-quit:
						}
						return
					}
					http.NotFound(w, r)
				})
				t.Cleanup(func() { close(quit) }) // before the server closes
				return srv.URL, func() bool { return posts.Load() > 0 }
			},
			failure:       true,
			pipelineDepth: 1, // the one worker is stuck; one waits behind it
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := newObsRegisterer()
			a := newNode(t, withID(1), withConfig(func(tr *Transport) {
				tr.Registerer = reg
				tr.PipelineQueueSize = 1
				tr.PipelineWorkers = 1
			}))
			url, stuck := tt.setup(t)
			if err := a.tr.AddPeer(2, []string{url}); err != nil {
				t.Fatal(err)
			}
			if tt.reason == dropPaused {
				a.tr.CutPeer(2)
			}
			const n = 5
			for i := range uint64(n) {
				a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, i)})
				if i == 0 && stuck != nil {
					waitFor(t, "the first message in flight", stuck)
				}
			}
			drop := map[string]string{"Peer": "2", "Type": "MsgHeartbeat", "Reason": tt.reason}
			dropped := waitMetric(t, reg, "rafthttp_dropped_messages_total", drop, "> 0", above(0))
			if dropped > n {
				t.Errorf("dropped = %v, want at most %d", dropped, n)
			}
			failures := metricValue(t, reg, "etcd_network_peer_sent_failures_total", map[string]string{"To": "2"})
			switch {
			case tt.failure && failures < 1:
				t.Errorf("sent_failures_total = %v, want at least 1", failures)
			case !tt.failure && failures != 0:
				t.Errorf("sent_failures_total = %v, want 0", failures)
			}
			waitMetric(t, reg, "rafthttp_queue_depth", map[string]string{"Peer": "2", "Queue": "pipeline"}, fmt.Sprint("= ", tt.pipelineDepth), func(v float64) bool { return v == tt.pipelineDepth })
			st, _ := a.tr.PeerStatus(2)
			if st.Dropped < uint64(dropped) {
				t.Errorf("PeerStatus.Dropped = %d, want at least the %v counted", st.Dropped, dropped)
			}
		})
	}
}

func TestMetricsReceivedFailures(t *testing.T) {
	reg := newObsRegisterer()
	a := newNode(t, withID(1))
	b := newNode(t, withID(2), withConfig(func(tr *Transport) { tr.Registerer = reg; tr.PropQueueSize = 1 }))
	held := make(chan struct{}, 1)
	b.raft.setProcess(func(ctx context.Context, m *raftpb.Message) error {
		held <- struct{}{}
		<-ctx.Done() // raft without a leader holds proposals
		return ctx.Err()
	})
	connect(t, a, b)
	waitStreams(t, a, b)
	from1 := map[string]string{"From": "1"}
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgProp, 1, 2, 0)})
	<-held // raft holds the first proposal
	if v := metricValue(t, reg, "etcd_network_peer_received_failures_total", from1); v != 0 {
		t.Fatalf("received_failures_total = %v before any drop, want 0", v)
	}
	for i := range uint64(9) {
		a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgProp, 1, 2, i+1)})
	}
	// Of the 9 more, one waits in the queue of 1: 8 are dropped.
	drop := map[string]string{"Peer": "1", "Type": "MsgProp", "Reason": dropRecvFull}
	waitMetric(t, reg, "rafthttp_dropped_messages_total", drop, "= 8", func(v float64) bool { return v >= 8 })
	if v := metricValue(t, reg, "rafthttp_dropped_messages_total", drop); v != 8 {
		t.Errorf("dropped_messages_total = %v, want 8", v)
	}
	if v := metricValue(t, reg, "etcd_network_peer_received_failures_total", from1); v != 8 {
		t.Errorf("received_failures_total = %v, want 8", v)
	}
	if v := metricValue(t, reg, "rafthttp_queue_depth", map[string]string{"Peer": "1", "Queue": "prop"}); v != 1 {
		t.Errorf("queue_depth{Queue=prop} = %v, want 1", v)
	}
}

func TestMetricsStreamReconnects(t *testing.T) {
	regA, regB := newObsRegisterer(), newObsRegisterer()
	a := newNode(t, withID(1), withRegisterer(regA))
	b := newNode(t, withID(2), withRegisterer(regB))
	connectStreams(t, a, b)
	for _, s := range []string{"reader stream Message", "reader stream MsgApp v2", "writer stream Message", "writer stream MsgApp v2"} {
		if v := metricValue(t, regA, "rafthttp_stream_reconnects_total", map[string]string{"Peer": "2", "Stream": s}); v != 0 {
			t.Errorf("before any reconnect, %s reconnects = %v, want 0", s, v)
		}
	}

	// Cut every connection a made to b: a's readers redial, and b's
	// writers get the new connections.
	b.srv.CloseClientConnections()
	for _, s := range []string{"reader stream Message", "reader stream MsgApp v2"} {
		waitMetric(t, regA, "rafthttp_stream_reconnects_total", map[string]string{"Peer": "2", "Stream": s}, "> 0", above(0))
	}
	for _, s := range []string{"writer stream Message", "writer stream MsgApp v2"} {
		waitMetric(t, regB, "rafthttp_stream_reconnects_total", map[string]string{"Peer": "1", "Stream": s}, "> 0", above(0))
	}
	waitFor(t, "StreamReconnects in Stats", func() bool {
		st, _ := a.tr.PeerStatus(2)
		return st.StreamReconnects >= 2
	})
	// And messages flow over the new streams.
	b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 2, 1, 1)})
	if got := a.raft.recv(t); got.GetFrom() != 2 {
		t.Errorf("got a message from %d, want from 2", got.GetFrom())
	}
}

func TestMetricsSnapshot(t *testing.T) {
	regA, regB := newObsRegisterer(), newObsRegisterer()
	store := &memStore{}
	a := newNode(t, withID(1), withRegisterer(regA))
	b := newNode(t, withID(2), withConfig(func(tr *Transport) { tr.Registerer = regB; tr.SnapshotStore = store }))
	connect(t, a, b)
	if err := a.tr.AddPeer(3, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}

	const size = 100000
	if err := <-a.tr.SendSnapshot(newSnapshot(1, 2, 9, size)); err != nil {
		t.Fatalf("SendSnapshot: %v", err)
	}
	if got := b.raft.recv(t); got.GetType() != raftpb.MsgSnap {
		t.Fatalf("b got %v, want the MsgSnap", got.GetType())
	}
	if err := <-a.tr.SendSnapshot(newSnapshot(1, 3, 9, 10)); err == nil {
		t.Fatal("SendSnapshot to a dead peer succeeded")
	}
	obsPostJunk(t, b.url)

	to2, to3, from1 := map[string]string{"To": "2"}, map[string]string{"To": "3"}, map[string]string{"From": "1"}
	unknown := map[string]string{"From": "UNKNOWN_SNAPSHOT_SENDER"}
	// The receiver answers before it counts; wait for its last update.
	waitMetric(t, regB, "etcd_network_snapshot_receive_total_duration_seconds", from1, "to have a sample", above(0))
	checks := []struct {
		reg    prometheus.Gatherer
		name   string
		labels map[string]string
		want   float64
	}{
		{regA, "etcd_network_snapshot_send_success", to2, 1},
		{regA, "etcd_network_snapshot_send_failures", to2, 0},
		{regA, "etcd_network_snapshot_send_failures", to3, 1},
		{regA, "etcd_network_snapshot_send_success", to3, 0},
		{regA, "etcd_network_snapshot_send_inflights_total", to2, 0},
		{regA, "etcd_network_snapshot_send_total_duration_seconds", to2, 1}, // samples
		{regA, "rafthttp_snapshot_sent_bytes_total", to2, size},
		{regB, "etcd_network_snapshot_receive_success", from1, 1},
		{regB, "etcd_network_snapshot_receive_failures", from1, 0},
		{regB, "etcd_network_snapshot_receive_failures", unknown, 1},
		{regB, "etcd_network_snapshot_receive_inflights_total", from1, 0},
		{regB, "etcd_network_snapshot_receive_total_duration_seconds", from1, 1},
		{regB, "rafthttp_snapshot_received_bytes_total", from1, size},
	}
	for _, c := range checks {
		if got := metricValue(t, c.reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	h := obsSeries(t, regA, "etcd_network_snapshot_send_total_duration_seconds", to2).GetHistogram()
	if h.GetSampleSum() <= 0 {
		t.Errorf("send duration sum = %v, want > 0", h.GetSampleSum())
	}
	if got := metricValue(t, regA, "etcd_network_peer_sent_bytes_total", to2); got < size {
		t.Errorf("peer_sent_bytes_total{To=2} = %v, want at least the snapshot's %d", got, size)
	}
}

func TestMetricsTwoTransportsOwnRegistries(t *testing.T) {
	regA, regB := newObsRegisterer(), newObsRegisterer()
	a := newNode(t, withID(1), withRegisterer(regA))
	b := newNode(t, withID(2), withRegisterer(regB))
	connectStreams(t, a, b)
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 1)})
	b.raft.recv(t)

	tests := []struct {
		name        string
		reg         *obsRegisterer
		local, peer string
	}{
		{"a", regA, "1", "2"},
		{"b", regB, "2", "1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			waitMetric(t, tt.reg, "etcd_network_active_peers", map[string]string{"Local": tt.local, "Remote": tt.peer}, "= 1", func(v float64) bool { return v == 1 })
			n := 0
			for _, mf := range obsFamilies(t, tt.reg) {
				for _, m := range mf.GetMetric() {
					for k, v := range obsLabels(m) {
						n++
						switch k {
						case "Local":
							if v != tt.local {
								t.Errorf("%s has Local=%q, want %q", mf.GetName(), v, tt.local)
							}
						case "Remote", "To", "From", "Peer":
							if v != tt.peer {
								t.Errorf("%s has %s=%q, want only the peer %q", mf.GetName(), k, v, tt.peer)
							}
						}
					}
				}
			}
			if n == 0 {
				t.Error("no labelled series gathered")
			}
		})
	}
}

func TestMetricsSameRegistryStartFails(t *testing.T) {
	reg := newObsRegisterer()
	a := newNode(t, withID(1), withRegisterer(reg))
	if err := a.tr.AddPeer(2, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	registered, _ := reg.counts()

	second := &Transport{ID: 3, ClusterID: testClusterID, Raft: newFakeRaft(), Registerer: reg}
	var err error
	func() {
		defer func() {
			if r := recover(); r != nil {
				t.Fatalf("Start on a registry in use panicked: %v", r)
			}
		}()
		err = second.Start()
	}()
	defer second.Stop()
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("Start on a registry in use: got %v, want an AlreadyRegisteredError", err)
	}
	if err := second.AddPeer(2, []string{"http://" + freeAddr(t)}); err == nil {
		t.Error("AddPeer on a transport whose Start failed succeeded")
	}
	// The first transport's collectors are untouched.
	if got, _ := reg.counts(); got != registered {
		t.Errorf("registrations = %d, want %d", got, registered)
	}
	if _, ok := obsFamilies(t, reg)["etcd_network_peer_sent_bytes_total"]; !ok {
		t.Error("the first transport's series vanished")
	}
}

// TestMetricsSameRegistryWrapped shows the way to put two transports on one
// registry: a constant label tells their series apart.
func TestMetricsSameRegistryWrapped(t *testing.T) {
	reg := prometheus.NewRegistry()
	for _, id := range []uint64{1, 3} {
		wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"transport": formatID(id)}, reg)
		n := newNode(t, withID(id), withRegisterer(wrapped))
		if err := n.tr.AddPeer(2, []string{"http://" + freeAddr(t)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{"1", "3"} {
		labels := map[string]string{"transport": id, "To": "2"}
		if obsSeries(t, reg, "etcd_network_peer_sent_bytes_total", labels) == nil {
			t.Errorf("no series %v", labels)
		}
	}
}

func TestMetricsStopUnregisters(t *testing.T) {
	reg := newObsRegisterer()
	a := newNode(t, withID(1), withRegisterer(reg))
	if err := a.tr.AddPeer(2, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	if len(obsFamilies(t, reg)) == 0 {
		t.Fatal("no families gathered before Stop")
	}
	a.tr.Stop()
	registered, unregistered := reg.counts()
	if registered == 0 || unregistered != registered {
		t.Errorf("unregistered %d of %d collectors, want all", unregistered, registered)
	}
	if fams := obsFamilies(t, reg); len(fams) != 0 {
		t.Errorf("after Stop, %d families gathered, want 0", len(fams))
	}

	c := newNode(t, withID(3), withRegisterer(reg))
	if err := c.tr.AddPeer(2, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	if obsSeries(t, reg, "etcd_network_peer_sent_bytes_total", map[string]string{"To": "2"}) == nil {
		t.Error("the new transport's series are not gathered")
	}
}

func TestMetricsRemovePeerDeletesSeries(t *testing.T) {
	reg := newObsRegisterer()
	a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.Registerer = reg; tr.ConnReadTimeout = time.Second }))
	b := newNode(t, withID(2), withStore(&memStore{}))
	c := newNode(t, withID(3))
	connect(t, a, b, c)
	waitStreams(t, a, b, c)
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 1), newMsg(raftpb.MsgHeartbeat, 1, 3, 1)})
	b.raft.recv(t)
	c.raft.recv(t)
	if err := <-a.tr.SendSnapshot(newSnapshot(1, 2, 3, 10)); err != nil {
		t.Fatal(err)
	}
	a.tr.CutPeer(2)
	a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, 2)}) // a drop
	b.srv.CloseClientConnections()                                     // reconnects
	waitMetric(t, reg, "etcd_network_peer_round_trip_time_seconds", map[string]string{"To": "2"}, "to have samples", above(0))
	waitFor(t, "a stream reconnect to 2", func() bool {
		st, _ := a.tr.PeerStatus(2)
		return st.StreamReconnects > 0
	})
	if n := obsSeriesOf(t, reg, "2"); n < 10 {
		t.Fatalf("before RemovePeer, %d series name peer 2, want many", n)
	}

	a.tr.RemovePeer(2)
	if n := obsSeriesOf(t, reg, "2"); n != 0 {
		t.Errorf("after RemovePeer, %d series still name peer 2, want 0", n)
	}
	if n := obsSeriesOf(t, reg, "3"); n == 0 {
		t.Error("RemovePeer(2) also deleted peer 3's series")
	}
}

// obsSeriesOf counts the series gathered from g whose peer labels name id.
func obsSeriesOf(t *testing.T, g prometheus.Gatherer, id string) int {
	t.Helper()
	n := 0
	for _, mf := range obsFamilies(t, g) {
		for _, m := range mf.GetMetric() {
			ls := obsLabels(m)
			for _, k := range []string{"Remote", "To", "From", "Peer"} {
				if ls[k] == id {
					n++
					break
				}
			}
		}
	}
	return n
}
