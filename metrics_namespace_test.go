package rafthttp

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// metricNames returns the sorted names of every collector of m, read from
// their descriptions, so that collectors without series count too.
func metricNames(t *testing.T, m *metrics) []string {
	t.Helper()
	fqName := regexp.MustCompile(`fqName: "([^"]*)"`)
	ch := make(chan *prometheus.Desc, 64)
	go func() {
		for _, c := range m.collectors {
			c.Describe(ch)
		}
		close(ch)
	}()
	var names []string
	for d := range ch {
		sm := fqName.FindStringSubmatch(d.String())
		if sm == nil {
			t.Fatalf("no name in %v", d)
		}
		names = append(names, sm[1])
	}
	slices.Sort(names)
	return names
}

// TestMetricsNamespace checks that the default namespace keeps etcd's names
// and our rafthttp_ ones, and that another namespace changes every name.
func TestMetricsNamespace(t *testing.T) {
	tests := []struct {
		name    string
		field   string // Transport.MetricsNamespace
		want    []string
		wantNot string // a prefix no name may have, if not ""
	}{
		{name: "zero is etcd's", field: "",
			want: []string{"etcd_network_active_peers", "etcd_network_peer_sent_bytes_total", "etcd_network_snapshot_send_success", "rafthttp_dropped_messages_total", "rafthttp_queue_depth", "rafthttp_send_queue_bytes"},
		},
		{name: "etcd spelt out", field: "etcd",
			want:    []string{"etcd_network_active_peers", "rafthttp_dropped_messages_total", "rafthttp_queue_depth"},
			wantNot: "etcd_rafthttp_"},
		{name: "custom", field: "group_7",
			want:    []string{"group_7_network_active_peers", "group_7_network_peer_round_trip_time_seconds", "group_7_rafthttp_dropped_messages_total", "group_7_rafthttp_queue_depth", "group_7_rafthttp_send_queue_bytes"},
			wantNot: "etcd_"},
	}
	defaults := metricNames(t, newMetrics(DefaultMetricsNamespace))
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := prometheus.NewRegistry()
			tr := newNode(t, unserved(), withRegisterer(r), withConfig(func(tr *Transport) { tr.MetricsNamespace = tc.field })).tr
			names := metricNames(t, tr.metrics)
			for _, w := range tc.want {
				if !slices.Contains(names, w) {
					t.Errorf("no collector named %s in %v", w, names)
				}
			}
			// Every collector is renamed, none is lost or doubled.
			if len(names) != len(defaults) {
				t.Errorf("got %d names, want %d as by default", len(names), len(defaults))
			}
			if tc.wantNot != "" {
				for _, n := range names {
					if strings.HasPrefix(n, tc.wantNot) {
						t.Errorf("collector %s: want no name starting with %s", n, tc.wantNot)
					}
				}
			}
		})
	}
}

// TestMetricsNamespaceValidation checks that Start refuses a namespace that
// cannot start a Prometheus metric name.
func TestMetricsNamespaceValidation(t *testing.T) {
	tests := []struct {
		name string
		ns   string
		ok   bool
	}{
		{name: "letters", ns: "app", ok: true},
		{name: "underscores and digits", ns: "_raft_2", ok: true},
		{name: "leading digit", ns: "2raft"},
		{name: "dash", ns: "my-app"},
		{name: "colon", ns: "app:raft"},
		{name: "space", ns: "my app"},
		{name: "non-ASCII", ns: "rafté"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := &Transport{ID: 1, ClusterID: testClusterID, Raft: newFakeRaft(), MetricsNamespace: tc.ns}
			err := tr.Start()
			if err == nil {
				tr.Stop()
			}
			if (err == nil) != tc.ok {
				t.Errorf("Start with MetricsNamespace %q: got %v, want ok=%v", tc.ns, err, tc.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "MetricsNamespace") {
				t.Errorf("error %v does not name the field", err)
			}
		})
	}
}
