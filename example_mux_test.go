package rafthttp_test

import (
	"fmt"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// Two raft groups, "meta" and "data", each its own cluster, on two hosts:
// each host serves both groups on one listener (a Mux), and its groups'
// Transports share one HostPool (connections, probers and dial backoff per
// host). Metrics go to one registry per host, told apart by a group label.
func ExampleMux() {
	groups := []struct {
		name      string
		clusterID uint64
	}{{"meta", 0x1}, {"data", 0x2}}

	type host struct {
		mux   *rafthttp.Mux
		pool  *rafthttp.HostPool
		url   string
		trs   []*rafthttp.Transport
		rafts []*exampleRaft
	}
	hosts := []*host{{}, {}}
	for _, h := range hosts {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Println(err)
			return
		}
		h.mux, h.pool, h.url = &rafthttp.Mux{}, &rafthttp.HostPool{}, "http://"+ln.Addr().String()
		srv := rafthttp.NewServer(h.mux) // mounted at the root: it sees every /raft path
		go srv.Serve(ln)
		defer srv.Close()
		defer h.pool.Close() // after the Transports have stopped
	}
	for i, h := range hosts {
		reg := prometheus.NewRegistry()
		for _, g := range groups {
			r := newExampleRaft()
			tr := &rafthttp.Transport{
				ID: uint64(i + 1), ClusterID: g.clusterID, URLs: []string{h.url}, Raft: r,
				HostPool:   h.pool,
				Registerer: prometheus.WrapRegistererWith(prometheus.Labels{"group": g.name}, reg),
			}
			if err := tr.Start(); err != nil {
				fmt.Println(err)
				return
			}
			defer tr.Stop()
			if err := h.mux.Add(tr); err != nil {
				fmt.Println(err)
				return
			}
			defer h.mux.Remove(g.clusterID) // runs before Stop
			h.trs, h.rafts = append(h.trs, tr), append(h.rafts, r)
		}
	}
	// Member 1 and member 2 of each group are peers: same URL, two groups.
	for gi := range groups {
		for i, h := range hosts {
			other := hosts[1-i]
			if err := h.trs[gi].AddPeer(uint64(2-i), []string{other.url}); err != nil {
				fmt.Println(err)
				return
			}
		}
	}

	// Each group's raft sends a message to member 2 of its own group.
	for gi, typ := range []raftpb.MessageType{raftpb.MsgHeartbeat, raftpb.MsgApp} {
		hosts[0].trs[gi].Send([]*raftpb.Message{{
			Type: typ.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(3),
		}})
	}
	for gi, g := range groups {
		select {
		case m := <-hosts[1].rafts[gi].received:
			fmt.Printf("group %s: member %d got %v from %d\n", g.name, m.GetTo(), m.GetType(), m.GetFrom())
		case <-time.After(10 * time.Second):
			fmt.Println("timed out")
		}
	}
	fmt.Println("host 2 serves clusters", hosts[1].mux.Groups())
	// Output:
	// group meta: member 2 got MsgHeartbeat from 1
	// group data: member 2 got MsgApp from 1
	// host 2 serves clusters [1 2]
}
