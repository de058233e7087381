package rafthttp_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// exampleRaft stands in for a raft node: it hands received messages to a
// channel. A real application calls node.Step, node.ReportUnreachable and
// node.ReportSnapshot instead.
type exampleRaft struct{ received chan *raftpb.Message }

func newExampleRaft() *exampleRaft { return &exampleRaft{received: make(chan *raftpb.Message, 16)} }

func (r *exampleRaft) Process(ctx context.Context, m *raftpb.Message) error {
	select {
	case r.received <- m:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *exampleRaft) IsIDRemoved(uint64) bool                    { return false }
func (r *exampleRaft) ReportUnreachable(uint64)                   {}
func (r *exampleRaft) ReportSnapshot(uint64, raft.SnapshotStatus) {}

// Two members, each a Transport served by its own HTTP server, send a raft
// message from one to the other.
func Example() {
	const clusterID = 0x1000
	r1, r2 := newExampleRaft(), newExampleRaft()
	tr1 := &rafthttp.Transport{ID: 1, ClusterID: clusterID, Raft: r1}
	tr2 := &rafthttp.Transport{ID: 2, ClusterID: clusterID, Raft: r2}
	for _, tr := range []*rafthttp.Transport{tr1, tr2} {
		if err := tr.Start(); err != nil {
			fmt.Println(err)
			return
		}
	}
	// Each member serves its transport on its own listener, with the
	// server recipe.
	var urls [2]string
	for i, tr := range []*rafthttp.Transport{tr1, tr2} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Println(err)
			return
		}
		srv := rafthttp.NewServer(tr.Handler())
		go srv.Serve(ln)
		defer srv.Close()
		urls[i] = "http://" + ln.Addr().String()
	}
	// Deferred after the servers, so run before them: a transport lets go
	// of the streams it serves, then the server can close.
	defer tr1.Stop()
	defer tr2.Stop()

	if err := tr1.AddPeer(2, []string{urls[1]}); err != nil {
		fmt.Println(err)
		return
	}
	if err := tr2.AddPeer(1, []string{urls[0]}); err != nil {
		fmt.Println(err)
		return
	}

	// From the raft Ready loop of member 1.
	tr1.Send([]*raftpb.Message{{
		Type: raftpb.MsgVote.Enum(), From: proto.Uint64(1), To: proto.Uint64(2),
		Term: proto.Uint64(5), LogTerm: proto.Uint64(4), Index: proto.Uint64(42),
	}})

	select {
	case m := <-r2.received:
		fmt.Printf("node %d got %v from %d (term %d)\n", m.GetTo(), m.GetType(), m.GetFrom(), m.GetTerm())
	case <-time.After(10 * time.Second):
		fmt.Println("timed out")
	}
	// Output: node 2 got MsgVote from 1 (term 5)
}

// AddPeer checks the peer's URLs: scheme, host:port, no path.
func ExampleTransport_AddPeer() {
	tr := &rafthttp.Transport{ID: 1, ClusterID: 0x1000, Raft: newExampleRaft()}
	if err := tr.Start(); err != nil {
		fmt.Println(err)
		return
	}
	defer tr.Stop()

	err := tr.AddPeer(2, []string{"http://10.0.0.2"})
	fmt.Println(err)
	fmt.Println(errors.Is(err, rafthttp.ErrInvalidURL))
	// Output:
	// rafthttp: invalid peer URL: URL "http://10.0.0.2": address does not have the form host:port
	// true
}

// Start validates the configuration and reports every problem at once.
func ExampleTransport_Start() {
	tr := &rafthttp.Transport{ClusterID: 0x1000, Raft: newExampleRaft()}
	fmt.Println(tr.Start())
	// Stop after a failed Start does nothing.
	tr.Stop()

	tr = &rafthttp.Transport{DialRetryMin: -time.Second}
	fmt.Println(tr.Start())
	// Output:
	// rafthttp: invalid Transport: ID must be non-zero
	// rafthttp: invalid Transport: ID must be non-zero
	// ClusterID must be non-zero
	// Raft must be set
	// DialRetryMin must not be negative
}

// NewServer builds the http.Server of the peer listener: mount the
// transport's handler, set what else the server needs (TLSConfig, ErrorLog),
// then serve. Its timeouts cut off clients that send their headers slowly
// and connections left idle, and never a stream.
func ExampleNewServer() {
	tr := &rafthttp.Transport{ID: 1, ClusterID: 0x1000, Raft: newExampleRaft()}
	if err := tr.Start(); err != nil {
		fmt.Println(err)
		return
	}
	defer tr.Stop()

	mux := http.NewServeMux()
	mux.Handle("/raft", tr.Handler())
	mux.Handle("/raft/", tr.Handler())
	srv := rafthttp.NewServer(mux)
	// srv.TLSConfig = ...; go srv.Serve(listener)

	fmt.Println("ReadHeaderTimeout:", srv.ReadHeaderTimeout)
	fmt.Println("IdleTimeout:", srv.IdleTimeout)
	fmt.Println("MaxHeaderBytes:", srv.MaxHeaderBytes)
	fmt.Println("ReadTimeout, WriteTimeout:", srv.ReadTimeout, srv.WriteTimeout)
	// Output:
	// ReadHeaderTimeout: 10s
	// IdleTimeout: 2m0s
	// MaxHeaderBytes: 65536
	// ReadTimeout, WriteTimeout: 0s 0s
}
