package main

// The parts of the peer that depend on the etcd 3.6 line: raftpb is
// go.etcd.io/raft/v3 v3.6's (gogo protobuf, messages passed by value).

import (
	"context"
	"io"

	"go.etcd.io/etcd/api/v3/version"
	"go.etcd.io/etcd/server/v3/etcdserver/api/rafthttp"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

var etcdVersion = version.Version

// etcdRaft implements rafthttp.Raft over the recorder.
type etcdRaft struct{ r *recorder }

func (e etcdRaft) Process(_ context.Context, m raftpb.Message) error {
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	return e.r.process(b)
}

func (e etcdRaft) IsIDRemoved(id uint64) bool  { return e.r.isIDRemoved(id) }
func (e etcdRaft) ReportUnreachable(id uint64) { e.r.reportUnreachable(id) }
func (e etcdRaft) ReportSnapshot(id uint64, status raft.SnapshotStatus) {
	e.r.reportSnapshot(id, int(status))
}

func sendMessage(tr *rafthttp.Transport, b []byte) error {
	var m raftpb.Message
	if err := m.Unmarshal(b); err != nil {
		return err
	}
	tr.Send([]raftpb.Message{m})
	return nil
}

func sendSnapshot(tr *rafthttp.Transport, b []byte, rc io.ReadCloser, size int64) (<-chan bool, error) {
	var m raftpb.Message
	if err := m.Unmarshal(b); err != nil {
		return nil, err
	}
	sm := snap.NewMessage(m, rc, size)
	tr.SendSnapshot(*sm)
	return sm.CloseNotify(), nil
}
