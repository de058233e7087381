package peerkit

import (
	"encoding/hex"
	"fmt"
	"net/http"
	"sync"
)

// Recorder is the application behind a transport in the tests: it reports
// what the transport's Raft callbacks get as events ("process",
// "unreachable", "snapreport"), and holds the switches a test flips
// (removed members, refusing messages with a 403). It implements [Raft].
type Recorder struct {
	report func(Event)

	mu        sync.Mutex
	removed   map[uint64]bool
	reject403 bool
	node      RaftNode // if set, gets what Process and the reports get
}

// attach makes Process hand messages to n (the reports go to n too, and
// are still reported), or, if n is nil, report them again.
func (r *Recorder) attach(n RaftNode) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.node = n
}

func (r *Recorder) raftNode() RaftNode {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.node
}

// NewRecorder returns a Recorder that reports to report.
func NewRecorder(report func(Event)) *Recorder {
	return &Recorder{report: report, removed: map[uint64]bool{}}
}

// Process reports msg (a protobuf raftpb.Message), unless Reject403 is on:
// then it fails with the error etcd's server answers a message from a
// removed member with, which writes its own 403 response.
func (r *Recorder) Process(msg []byte) error {
	r.mu.Lock()
	reject, node := r.reject403, r.node
	r.mu.Unlock()
	if reject {
		return errRemovedMember{}
	}
	if node != nil {
		return node.Step(msg)
	}
	r.report(Event{Ev: "process", Msg: hex.EncodeToString(msg)})
	return nil
}

// IsIDRemoved answers what SetRemoved set for id.
func (r *Recorder) IsIDRemoved(id uint64) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.removed[id]
}

func (r *Recorder) ReportUnreachable(id uint64) {
	if n := r.raftNode(); n != nil {
		n.ReportUnreachable(id)
	}
	r.report(Event{Ev: "unreachable", ID: id})
}

// ReportSnapshot reports status, raft's SnapshotStatus as an int.
func (r *Recorder) ReportSnapshot(id uint64, status int) {
	if n := r.raftNode(); n != nil {
		n.ReportSnapshot(id, status)
	}
	r.report(Event{Ev: "snapreport", ID: id, Status: status})
}

// SetRemoved makes IsIDRemoved(id) answer removed.
func (r *Recorder) SetRemoved(id uint64, removed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.removed[id] = removed
}

// Reject403 makes Process fail with a 403 answer while on.
func (r *Recorder) Reject403(on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reject403 = on
}

// errRemovedMember is what etcd's server answers a message from a removed
// member with. Both transports write the answer of a Process error that has
// a WriteTo method.
type errRemovedMember struct{}

func (errRemovedMember) Error() string { return "cannot process message from removed member" }

func (errRemovedMember) WriteTo(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusForbidden)
	fmt.Fprintln(w, `{"message":"cannot process message from removed member"}`)
}
