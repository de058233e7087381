package rafthttp_test

import (
	"fmt"
	"net/http/httptest"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// seriesValue returns the value of the series of family name whose labels
// are exactly labels ("Name=value" pairs in name order, comma-separated), as
// a scrape of g would show it, and whether there is one.
func seriesValue(g prometheus.Gatherer, name, labels string) (float64, bool) {
	mfs, err := g.Gather()
	if err != nil {
		return 0, false
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var pairs []string
			for _, l := range m.GetLabel() {
				pairs = append(pairs, l.GetName()+"="+l.GetValue())
			}
			sort.Strings(pairs)
			if strings.Join(pairs, ",") == labels {
				return sampleValue(m), true
			}
		}
	}
	return 0, false
}

// sampleValue is a counter's or gauge's value, or a histogram's count.
func sampleValue(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	case m.GetHistogram() != nil:
		return float64(m.GetHistogram().GetSampleCount())
	}
	return 0
}

// A Transport's metrics go to the Registerer it is given, here a registry
// of its own, under etcd's names (etcd_network_...) and, for what etcd does
// not count, rafthttp_...: dashboards made for etcd's peer metrics work
// unchanged. They are registered by Start and unregistered by Stop, so a
// process can run several Transports, each on its own registry or under
// its own MetricsNamespace. Serve the registry with promhttp.HandlerFor.
func ExampleTransport_metrics() {
	const clusterID = 0x1000
	reg := prometheus.NewRegistry()
	r1, r2 := newExampleRaft(), newExampleRaft()
	tr1 := &rafthttp.Transport{ID: 1, ClusterID: clusterID, Raft: r1, Registerer: reg}
	tr2 := &rafthttp.Transport{ID: 2, ClusterID: clusterID, Raft: r2}
	for _, tr := range []*rafthttp.Transport{tr1, tr2} {
		if err := tr.Start(); err != nil {
			fmt.Println(err)
			return
		}
	}
	srv1 := httptest.NewServer(tr1.Handler())
	defer srv1.Close()
	srv2 := httptest.NewServer(tr2.Handler())
	defer srv2.Close()
	// Deferred after the servers, so run before them. Stop may be called
	// again: tr1 is stopped below, to show what that does to reg.
	defer tr1.Stop()
	defer tr2.Stop()
	if err := tr1.AddPeer(2, []string{srv2.URL}); err != nil {
		fmt.Println(err)
		return
	}
	if err := tr2.AddPeer(1, []string{srv1.URL}); err != nil {
		fmt.Println(err)
		return
	}

	// A heartbeat to member 2, and one to member 3, whom member 1 does not
	// know: that one is dropped, reported to raft with ReportUnreachable,
	// and counted by peer, type and reason.
	tr1.Send([]*raftpb.Message{
		{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(2)},
		{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(3), Term: proto.Uint64(2)},
	})
	select {
	case <-r2.received:
	case <-time.After(10 * time.Second):
		fmt.Println("timed out")
		return
	}
	// Member 2 counts as an active peer once a connection to it is up, and
	// bytes as sent once the request that carried them is done: either may
	// come a moment after the heartbeat arrived.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		active, _ := seriesValue(reg, "etcd_network_active_peers", "Local=1,Remote=2")
		sent, _ := seriesValue(reg, "etcd_network_peer_sent_bytes_total", "To=2")
		if active == 1 && sent > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	for _, s := range []struct{ name, labels string }{
		{"etcd_network_active_peers", "Local=1,Remote=2"},
		{"rafthttp_dropped_messages_total", "Peer=unknown,Reason=unknown_peer,Type=MsgHeartbeat"},
	} {
		v, _ := seriesValue(reg, s.name, s.labels)
		fmt.Printf("%s{%s} %g\n", s.name, s.labels, v)
	}
	sent, _ := seriesValue(reg, "etcd_network_peer_sent_bytes_total", "To=2")
	fmt.Println("etcd_network_peer_sent_bytes_total{To=2} > 0:", sent > 0)

	tr1.Stop()
	mfs, err := reg.Gather()
	fmt.Println("metric families after Stop:", len(mfs), err)
	// Output:
	// etcd_network_active_peers{Local=1,Remote=2} 1
	// rafthttp_dropped_messages_total{Peer=unknown,Reason=unknown_peer,Type=MsgHeartbeat} 1
	// etcd_network_peer_sent_bytes_total{To=2} > 0: true
	// metric families after Stop: 0 <nil>
}
