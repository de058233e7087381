package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func entries(term uint64, from, to uint64) []*raftpb.Entry {
	var out []*raftpb.Entry
	for i := from; i <= to; i++ {
		out = append(out, &raftpb.Entry{Term: proto.Uint64(term), Index: proto.Uint64(i), Data: []byte{byte(i)}})
	}
	return out
}

func hardState(term, commit uint64) *raftpb.HardState {
	return &raftpb.HardState{Term: proto.Uint64(term), Vote: proto.Uint64(1), Commit: proto.Uint64(commit)}
}

// TestStorageReload writes what a member's Ready loop writes (entries, a
// suffix overwritten by a new leader, a snapshot with compaction, then a
// snapshot from a leader replacing the log), closes the database, and
// checks after each step that reopening it gives back exactly that state.
func TestStorageReload(t *testing.T) {
	path := filepath.Join(t.TempDir(), dbFile)
	s, err := openStorage(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.setID(7); err != nil {
		t.Fatal(err)
	}
	reopen := func() persisted {
		t.Helper()
		if err := s.close(); err != nil {
			t.Fatal(err)
		}
		if s, err = openStorage(path); err != nil {
			t.Fatal(err)
		}
		p, err := s.load()
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		if p.id != 7 {
			t.Errorf("got member ID %d, want 7", p.id)
		}
		return p
	}
	check := func(p persisted, hs *raftpb.HardState, snapIndex uint64, want []*raftpb.Entry) {
		t.Helper()
		if !proto.Equal(p.hardState, hs) {
			t.Errorf("got HardState %v, want %v", p.hardState, hs)
		}
		if got := p.snapshot.GetMetadata().GetIndex(); got != snapIndex {
			t.Errorf("got snapshot index %d, want %d", got, snapIndex)
		}
		if len(p.entries) != len(want) {
			t.Fatalf("got %d entries, want %d", len(p.entries), len(want))
		}
		for i := range want {
			if !proto.Equal(p.entries[i], want[i]) {
				t.Errorf("entry %d: got %v, want %v", i, p.entries[i], want[i])
			}
		}
	}
	defer func() { s.close() }()

	if p := reopen(); !p.fresh() {
		t.Errorf("new database: got %+v, want fresh", p)
	}

	// Ten entries of term 1, then a new leader replaces 8..10 with 8..9 of
	// term 2.
	if err := s.save(hardState(1, 5), entries(1, 1, 10), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.save(hardState(2, 7), entries(2, 8, 9), nil); err != nil {
		t.Fatal(err)
	}
	want := append(entries(1, 1, 7), entries(2, 8, 9)...)
	check(reopen(), hardState(2, 7), 0, want)

	// A snapshot of our own at 7 that keeps entries from 5 on: entries
	// after the snapshot are loaded.
	cs := &raftpb.ConfState{Voters: []uint64{1, 2, 3}}
	snap := &raftpb.Snapshot{Data: []byte("not kept"), Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(7), Term: proto.Uint64(1), ConfState: cs}}
	if err := s.saveSnapshot(snap, 1, 5); err != nil {
		t.Fatal(err)
	}
	p := reopen()
	check(p, hardState(2, 7), 7, want[7:])
	if !proto.Equal(p.snapshot.GetMetadata().GetConfState(), cs) || p.snapshot.GetData() != nil {
		t.Errorf("got snapshot %v, want metadata with ConfState %v and no data", p.snapshot, cs)
	}

	// A snapshot from the leader at 20 replaces the whole log.
	snap = &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(20), Term: proto.Uint64(3), ConfState: cs}}
	if err := s.save(hardState(3, 20), entries(3, 21, 22), snap); err != nil {
		t.Fatal(err)
	}
	check(reopen(), hardState(3, 20), 20, entries(3, 21, 22))
}

// TestStorageCorrupt checks that a database bolt opens but whose raft state
// raft could not restart from is refused with an error, not a panic.
func TestStorageCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name  string
		write func(s *diskStorage) error
		want  string
	}{
		{"gap in the log", func(s *diskStorage) error {
			if err := s.save(hardState(1, 1), entries(1, 1, 3), nil); err != nil {
				return err
			}
			return s.save(nil, entries(1, 5, 6), nil)
		}, "log entry 5 follows entry 3"},
		{"term going down", func(s *diskStorage) error {
			return s.save(hardState(2, 1), append(entries(2, 1, 2), entries(1, 3, 3)...), nil)
		}, "log entry 3 has term 1, below the term 2"},
		{"commit beyond the log", func(s *diskStorage) error {
			return s.save(hardState(1, 9), entries(1, 1, 3), nil)
		}, "commit index 9 outside the log [0, 3]"},
		{"commit before the snapshot", func(s *diskStorage) error {
			snap := &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(5), Term: proto.Uint64(1)}}
			return s.save(hardState(1, 2), nil, snap)
		}, "commit index 2 outside the log [5, 5]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := openStorage(filepath.Join(t.TempDir(), dbFile))
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			if err := tc.write(s); err != nil {
				t.Fatal(err)
			}
			_, err = s.load()
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "corrupt") {
				t.Errorf("got %v, want an error about corruption containing %q", err, tc.want)
			}
		})
	}
}

// TestOpenStorageErrors checks the errors of openStorage on a file that is
// not a database and on a database another process holds.
func TestOpenStorageErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("x", 10000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := openStorage(garbage); err == nil || !strings.Contains(err.Error(), "not a valid raftkv database") {
		t.Errorf("garbage: got %v, want not a valid raftkv database", err)
	}
	if _, err := openStorage(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: got %v, want not a regular file", err)
	}
}
