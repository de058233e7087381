package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

func ent(index, term uint64, data string) *raftpb.Entry {
	return &raftpb.Entry{Index: new(index), Term: new(term), Data: []byte(data)}
}

func hardState(term, vote, commit uint64) *raftpb.HardState {
	return &raftpb.HardState{Term: new(term), Vote: new(vote), Commit: new(commit)}
}

func snapMeta(index, term uint64, voters ...uint64) *raftpb.SnapshotMetadata {
	return &raftpb.SnapshotMetadata{Index: new(index), Term: new(term), ConfState: &raftpb.ConfState{Voters: voters}}
}

// walOp is one write to a log under test.
type walOp struct {
	hs   *raftpb.HardState
	ents []*raftpb.Entry
	snap *raftpb.SnapshotMetadata // SaveSnapshot instead of Save
}

// newTestWAL creates a log in a temporary directory and applies ops.
func newTestWAL(t *testing.T, ops ...walOp) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "wal")
	if err := createWAL(dir); err != nil {
		t.Fatal(err)
	}
	w, err := openWAL(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, op := range ops {
		if op.snap != nil {
			err = w.SaveSnapshot(op.snap)
		} else {
			err = w.Save(op.hs, op.ents)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// replay replays the log in dir from start.
func replay(t *testing.T, dir string, start *raftpb.SnapshotMetadata) (*raftpb.HardState, []*raftpb.Entry, error) {
	t.Helper()
	w, err := openWAL(dir, start)
	if err != nil {
		return nil, nil, err
	}
	defer w.Close()
	return w.ReadAll()
}

// indexes returns "index/term" of each entry.
func indexes(ents []*raftpb.Entry) [][2]uint64 {
	var out [][2]uint64
	for _, e := range ents {
		out = append(out, [2]uint64{e.GetIndex(), e.GetTerm()})
	}
	return out
}

func TestWALReplay(t *testing.T) {
	for _, tc := range []struct {
		name      string
		ops       []walOp
		start     *raftpb.SnapshotMetadata
		wantHS    *raftpb.HardState
		wantEnts  [][2]uint64 // index, term
		wantErr   error
		wantSnaps []uint64 // validSnapshotEntries' indexes
	}{
		{
			name:   "empty",
			wantHS: &raftpb.HardState{},
		},
		{
			name: "entries then HardState, the last HardState wins",
			ops: []walOp{
				{hs: hardState(1, 1, 0), ents: []*raftpb.Entry{ent(1, 1, "a"), ent(2, 1, "b")}},
				{hs: hardState(2, 2, 2), ents: []*raftpb.Entry{ent(3, 2, "c")}},
			},
			wantHS:   hardState(2, 2, 2),
			wantEnts: [][2]uint64{{1, 1}, {2, 1}, {3, 2}},
		},
		{
			name: "an entry replaces those at and after its index",
			ops: []walOp{
				{ents: []*raftpb.Entry{ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 1, "c")}},
				{hs: hardState(2, 0, 1), ents: []*raftpb.Entry{ent(2, 2, "B")}},
			},
			wantHS:   hardState(2, 0, 1),
			wantEnts: [][2]uint64{{1, 1}, {2, 2}},
		},
		{
			name: "from a snapshot, entries at or below it are skipped",
			ops: []walOp{
				{hs: hardState(1, 1, 3), ents: []*raftpb.Entry{ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 1, "c"), ent(4, 1, "d")}},
				{snap: snapMeta(2, 1, 1)},
			},
			start:     snapMeta(2, 1, 1),
			wantHS:    hardState(1, 1, 3),
			wantEnts:  [][2]uint64{{3, 1}, {4, 1}},
			wantSnaps: []uint64{2},
		},
		{
			name: "a snapshot above the commit index is not valid",
			ops: []walOp{
				{hs: hardState(1, 1, 2), ents: []*raftpb.Entry{ent(1, 1, "a"), ent(2, 1, "b")}},
				{snap: snapMeta(2, 1, 1)},
				{snap: snapMeta(9, 3, 1)},
			},
			wantHS:    hardState(1, 1, 2),
			wantEnts:  [][2]uint64{{1, 1}, {2, 1}},
			wantSnaps: []uint64{2},
		},
		{
			name: "a snapshot the log does not record",
			ops: []walOp{
				{hs: hardState(1, 1, 1), ents: []*raftpb.Entry{ent(1, 1, "a")}},
			},
			start:   snapMeta(1, 1, 1),
			wantErr: errWALCorrupt,
		},
		{
			name: "a gap between entries",
			ops: []walOp{
				{ents: []*raftpb.Entry{ent(1, 1, "a")}},
				{ents: []*raftpb.Entry{ent(3, 1, "c")}},
			},
			wantErr: errWALCorrupt,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newTestWAL(t, tc.ops...)
			snaps, err := validSnapshotEntries(dir)
			if err != nil {
				t.Fatalf("validSnapshotEntries: %v", err)
			}
			var gotSnaps []uint64
			for _, s := range snaps {
				gotSnaps = append(gotSnaps, s.GetIndex())
			}
			if !slices.Equal(gotSnaps, tc.wantSnaps) {
				t.Errorf("valid snapshots: got %v, want %v", gotSnaps, tc.wantSnaps)
			}
			hs, ents, err := replay(t, dir, tc.start)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ReadAll: got error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ReadAll: %v", err)
			}
			if hs.String() != tc.wantHS.String() {
				t.Errorf("HardState: got %v, want %v", hs, tc.wantHS)
			}
			if got := indexes(ents); !slices.Equal(got, tc.wantEnts) {
				t.Errorf("entries: got %v, want %v", got, tc.wantEnts)
			}
		})
	}
}

// TestWALTornTail checks that a last record cut short, or damaged, as a
// process killed in the middle of an append leaves it, is dropped and cut
// off, that appends after it are replayed, and that damage before the last
// record is corruption.
func TestWALTornTail(t *testing.T) {
	ops := []walOp{
		{hs: hardState(1, 1, 1), ents: []*raftpb.Entry{ent(1, 1, "a")}},
		{hs: hardState(1, 1, 2), ents: []*raftpb.Entry{ent(2, 1, "b")}},
	}
	for _, tc := range []struct {
		name    string
		damage  func(b []byte) []byte
		wantErr error
	}{
		{"last record cut short", func(b []byte) []byte { return b[:len(b)-3] }, nil},
		{"only a header's first bytes", func(b []byte) []byte { return append(b, 0, 0, 0) }, nil},
		{"last record's checksum wrong", func(b []byte) []byte { b[len(b)-1] ^= 0xff; return b }, nil},
		{"a middle record's checksum wrong", func(b []byte) []byte { b[recHeaderLen+2] ^= 0xff; return b }, errWALCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := newTestWAL(t, ops...)
			path := filepath.Join(dir, walName)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.damage(b), 0o600); err != nil {
				t.Fatal(err)
			}
			w, err := openWAL(dir, nil)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("openWAL: got error %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("openWAL: %v", err)
			}
			if _, _, err := w.ReadAll(); err != nil {
				t.Fatalf("ReadAll: %v", err)
			}
			// Appends go after the last good record, and replace entry 2,
			// which is there or not depending on the damage.
			if err := w.Save(hardState(2, 2, 2), []*raftpb.Entry{ent(2, 2, "B")}); err != nil {
				t.Fatal(err)
			}
			w.Close()
			hs, ents, err := replay(t, dir, nil)
			if err != nil {
				t.Fatalf("replay after the repair: %v", err)
			}
			if hs.GetTerm() != 2 || hs.GetCommit() != 2 {
				t.Errorf("HardState after the repair: got %v, want term 2, commit 2", hs)
			}
			if got, want := indexes(ents), [][2]uint64{{1, 1}, {2, 2}}; !slices.Equal(got, want) {
				t.Errorf("entries after the repair: got %v, want %v", got, want)
			}
		})
	}
}

// TestWALRewrite checks that a log rewritten at a snapshot replays as the
// log it replaced, from that snapshot, and takes appends after it.
func TestWALRewrite(t *testing.T) {
	dir := newTestWAL(t,
		walOp{hs: hardState(3, 1, 4), ents: []*raftpb.Entry{ent(1, 1, "a"), ent(2, 1, "b"), ent(3, 3, "c"), ent(4, 3, "d"), ent(5, 3, "e")}},
		walOp{snap: snapMeta(2, 1, 1)},
	)
	w, err := openWAL(dir, snapMeta(2, 1, 1))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.ReadAll(); err != nil {
		t.Fatal(err)
	}
	if err := w.Rewrite(snapMeta(4, 3, 1, 2), []*raftpb.Entry{ent(5, 3, "e")}); err != nil {
		t.Fatal(err)
	}
	if err := w.Save(hardState(3, 1, 6), []*raftpb.Entry{ent(6, 3, "f")}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	recs, _, err := readRecords(dir)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(recs); n != 5 {
		t.Errorf("log after the rewrite and one Save: got %d records, want 5 (snapshot, HardState, entry 5; entry 6, HardState)", n)
	}
	if _, err := os.Stat(filepath.Join(dir, walName+".tmp")); !os.IsNotExist(err) {
		t.Errorf("temporary file left behind: %v", err)
	}

	snaps, err := validSnapshotEntries(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(snaps) != 1 || snaps[0].GetIndex() != 4 || !slices.Equal(snaps[0].GetConfState().GetVoters(), []uint64{1, 2}) {
		t.Fatalf("snapshots after the rewrite: got %v, want only 4 with voters 1 and 2", snaps)
	}
	hs, ents, err := replay(t, dir, snaps[0])
	if err != nil {
		t.Fatal(err)
	}
	if hs.GetCommit() != 6 {
		t.Errorf("HardState: got %v, want commit 6", hs)
	}
	if got, want := indexes(ents), [][2]uint64{{5, 3}, {6, 3}}; !slices.Equal(got, want) {
		t.Errorf("entries: got %v, want %v", got, want)
	}
}
