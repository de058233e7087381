package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
)

// errNoSnapshot is what Load returns before the member has a snapshot.
var errNoSnapshot = errors.New("snap: no available snapshot")

// snapshotter stands in for etcd's server/etcdserver/api/snap, which
// raftexample uses. A snapshot is in two parts: its metadata (index, term,
// ConfState), recorded in the write-ahead log, and its payload (the
// key-value map as JSON), a file in the snap directory named as the
// transport's DirSnapshotStore names it. The same store writes the
// snapshots this member makes and, as the Transport's SnapshotStore, those
// the leader sends over /raft/snapshot, so that both are found in one place
// and a leader streams a payload to a follower from its file.
//
// It is safe for concurrent use: the Ready loop records snapshots, the
// key-value store loads them.
type snapshotter struct {
	store rafthttp.DirSnapshotStore

	mu     sync.Mutex
	newest *raftpb.SnapshotMetadata // the snapshot Load returns; nil for none
}

// newSnapshotter returns the snapshotter of the snap directory dir, which
// must exist.
func newSnapshotter(dir string) *snapshotter {
	return &snapshotter{store: rafthttp.DirSnapshotStore{Dir: dir}}
}

// SaveSnap durably writes the payload of a snapshot this member made, as
// the transport writes one it receives. The snapshot's record in the log
// comes after.
func (s *snapshotter) SaveSnap(md *raftpb.SnapshotMetadata, payload []byte) error {
	envelope := &raftpb.Message{Type: raftpb.MsgSnap.Enum(), Snapshot: &raftpb.Snapshot{Metadata: md}}
	return s.store.SaveSnapshot(context.Background(), envelope, bytes.NewReader(payload))
}

// hasPayload reports whether the payload of the snapshot at index is in
// the snap directory.
func (s *snapshotter) hasPayload(index uint64) bool {
	fi, err := os.Stat(s.store.Path(index))
	return err == nil && fi.Mode().IsRegular()
}

// LoadNewestAvailable returns the newest of the snapshots the log records
// whose payload is present, and makes it the one Load returns; it returns
// errNoSnapshot if there is none. The snapshot returned carries no data:
// raft's storage needs only the metadata, and the payload stays in its
// file.
func (s *snapshotter) LoadNewestAvailable(walSnaps []*raftpb.SnapshotMetadata) (*raftpb.Snapshot, error) {
	for i := len(walSnaps) - 1; i >= 0; i-- {
		md := walSnaps[i]
		if md.GetIndex() == 0 || !s.hasPayload(md.GetIndex()) {
			continue
		}
		s.setNewest(md)
		return &raftpb.Snapshot{Metadata: proto.Clone(md).(*raftpb.SnapshotMetadata)}, nil
	}
	return nil, errNoSnapshot
}

// setNewest makes md the snapshot Load returns.
func (s *snapshotter) setNewest(md *raftpb.SnapshotMetadata) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.newest = proto.Clone(md).(*raftpb.SnapshotMetadata)
}

// Load returns the newest snapshot recorded, with its payload as Data, or
// errNoSnapshot.
func (s *snapshotter) Load() (*raftpb.Snapshot, error) {
	s.mu.Lock()
	md := s.newest
	s.mu.Unlock()
	if md == nil {
		return nil, errNoSnapshot
	}
	data, err := os.ReadFile(s.store.Path(md.GetIndex()))
	if err != nil {
		return nil, fmt.Errorf("snap: payload of snapshot %d: %w", md.GetIndex(), err)
	}
	return &raftpb.Snapshot{Metadata: md, Data: data}, nil
}

// purgeBefore removes the payloads of snapshots older than index, which
// the log no longer records once it was rewritten to start at index.
// Removal is best effort: a file left behind is tried again next time.
func (s *snapshotter) purgeBefore(index uint64) {
	names, err := filepath.Glob(filepath.Join(s.store.Dir, "*.snap.db"))
	if err != nil {
		return
	}
	for _, name := range names {
		hex := strings.TrimSuffix(filepath.Base(name), ".snap.db")
		if i, err := strconv.ParseUint(hex, 16, 64); err == nil && i < index {
			os.Remove(name)
		}
	}
}
