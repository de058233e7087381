package rafthttp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// Unit tests of DirSnapshotStore: naming, durability protocol (a payload is
// visible under its final name only once complete) and idempotence.

func TestDirSnapshotStorePath(t *testing.T) {
	for _, tc := range []struct {
		index uint64
		want  string
	}{
		{0, "0000000000000000.snap.db"},
		{12, "000000000000000c.snap.db"},
		{0xdeadbeef, "00000000deadbeef.snap.db"},
		{^uint64(0), "ffffffffffffffff.snap.db"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			dir := t.TempDir()
			if got, want := (DirSnapshotStore{Dir: dir}).Path(tc.index), filepath.Join(dir, tc.want); got != want {
				t.Errorf("Path(%d) = %q, want %q", tc.index, got, want)
			}
		})
	}
}

// TestDirSnapshotStoreSave: a payload is written, complete, under
// %016x.snap.db and nothing else is left in the directory.
func TestDirSnapshotStoreSave(t *testing.T) {
	dir := t.TempDir()
	payload := snapBytes(20, 3<<20+17)
	if err := (DirSnapshotStore{Dir: dir}).SaveSnapshot(context.Background(), newMsg(raftpb.MsgSnap, 1, 2, 12), bytes.NewReader(payload)); err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	if files := snapDirFiles(t, dir); len(files) != 1 || files[0] != "000000000000000c.snap.db" {
		t.Fatalf("directory holds %q, want only 000000000000000c.snap.db", files)
	}
	got, err := os.ReadFile(filepath.Join(dir, "000000000000000c.snap.db"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, payload) {
		t.Errorf("file holds %d bytes, want the %d saved", len(got), len(payload))
	}
}

// TestDirSnapshotStoreEmptyPayload: an empty payload is a valid (empty)
// file.
func TestDirSnapshotStoreEmptyPayload(t *testing.T) {
	dir := t.TempDir()
	s := DirSnapshotStore{Dir: dir}
	if err := s.SaveSnapshot(context.Background(), newMsg(raftpb.MsgSnap, 1, 2, 7), bytes.NewReader(nil)); err != nil {
		t.Fatalf("SaveSnapshot: %v", err)
	}
	if fi, err := os.Stat(s.Path(7)); err != nil || fi.Size() != 0 {
		t.Errorf("Stat = %v, %v, want an empty file", fi, err)
	}
}

// snapCancelAfter cancels a context once n bytes have been read through it,
// then keeps serving bytes: only the store's own check can stop the copy.
type snapCancelAfter struct {
	r      io.Reader
	n      int64
	cancel context.CancelFunc
}

func (c *snapCancelAfter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if c.n -= int64(n); c.n <= 0 {
		c.cancel()
	}
	return n, err
}

// TestDirSnapshotStoreFailures: whatever fails, SaveSnapshot returns an
// error and leaves no file behind, neither final nor temporary.
func TestDirSnapshotStoreFailures(t *testing.T) {
	errRead := errors.New("read failed")
	for _, tc := range []struct {
		name string
		// setup returns the store, the context and the payload reader.
		setup func(t *testing.T, dir string) (DirSnapshotStore, context.Context, io.Reader)
		want  error // nil: any error
	}{
		{"reader error mid-payload", func(t *testing.T, dir string) (DirSnapshotStore, context.Context, io.Reader) {
			return DirSnapshotStore{Dir: dir}, context.Background(), &snapFailAfter{r: newSnapGen(21, 8<<20), n: 1 << 20, err: errRead}
		}, errRead},
		{"unexpected EOF mid-payload", func(t *testing.T, dir string) (DirSnapshotStore, context.Context, io.Reader) {
			return DirSnapshotStore{Dir: dir}, context.Background(), &snapFailAfter{r: newSnapGen(22, 8<<20), n: 100, err: io.ErrUnexpectedEOF}
		}, io.ErrUnexpectedEOF},
		{"context cancelled mid-copy", func(t *testing.T, dir string) (DirSnapshotStore, context.Context, io.Reader) {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			return DirSnapshotStore{Dir: dir}, ctx, &snapCancelAfter{r: newSnapGen(23, 64<<20), n: 1 << 20, cancel: cancel}
		}, context.Canceled},
		{"context cancelled before", func(t *testing.T, dir string) (DirSnapshotStore, context.Context, io.Reader) {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return DirSnapshotStore{Dir: dir}, ctx, newSnapGen(24, 1<<20)
		}, context.Canceled},
		{"empty Dir", func(t *testing.T, dir string) (DirSnapshotStore, context.Context, io.Reader) {
			return DirSnapshotStore{}, context.Background(), newSnapGen(25, 1<<10)
		}, nil},
		{"missing Dir", func(t *testing.T, dir string) (DirSnapshotStore, context.Context, io.Reader) {
			return DirSnapshotStore{Dir: filepath.Join(dir, "missing")}, context.Background(), newSnapGen(26, 1<<10)
		}, os.ErrNotExist},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			s, ctx, r := tc.setup(t, dir)
			err := s.SaveSnapshot(ctx, newMsg(raftpb.MsgSnap, 1, 2, 12), r)
			if err == nil {
				t.Fatal("SaveSnapshot succeeded, want an error")
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("SaveSnapshot = %v, want an error wrapping %v", err, tc.want)
			}
			if files := snapDirFiles(t, dir); len(files) != 0 {
				t.Errorf("directory holds %q, want nothing", files)
			}
			// An empty Dir must not mean the working directory.
			if stray, _ := filepath.Glob("*.snap.db"); len(stray) != 0 {
				t.Errorf("working directory holds %q, want no snapshot file", stray)
			}
		})
	}
}

// TestDirSnapshotStoreReplacesExisting: a second save of the same index (a
// raft retry, or another sender) succeeds and replaces the first payload,
// leaving no temporary file; a failed one leaves the stored file alone.
func TestDirSnapshotStoreReplacesExisting(t *testing.T) {
	dir := t.TempDir()
	s := DirSnapshotStore{Dir: dir}
	first, second := snapBytes(27, 1<<20), snapBytes(28, 2<<20)
	if err := s.SaveSnapshot(context.Background(), newMsg(raftpb.MsgSnap, 1, 2, 12), bytes.NewReader(first)); err != nil {
		t.Fatalf("first SaveSnapshot: %v", err)
	}
	// A reader that opened the first file keeps reading it whole.
	held, err := os.Open(s.Path(12))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := s.SaveSnapshot(context.Background(), newMsg(raftpb.MsgSnap, 3, 2, 12), bytes.NewReader(second)); err != nil {
		t.Fatalf("second SaveSnapshot = %v, want success", err)
	}
	got, err := os.ReadFile(s.Path(12))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, second) {
		t.Errorf("file holds %d bytes, want the %d of the second save", len(got), len(second))
	}
	if old, err := io.ReadAll(held); err != nil || !bytes.Equal(old, first) {
		t.Errorf("the first file, held open, reads %d bytes (%v), want the %d of the first save", len(old), err, len(first))
	}
	if files := snapDirFiles(t, dir); len(files) != 1 {
		t.Errorf("directory holds %q, want only %s", files, filepath.Base(s.Path(12)))
	}

	// A failed save of an index already stored leaves the stored file alone.
	if err := s.SaveSnapshot(context.Background(), newMsg(raftpb.MsgSnap, 1, 2, 12), &snapFailAfter{r: bytes.NewReader(first), n: 10, err: io.ErrUnexpectedEOF}); err == nil {
		t.Error("failed save reported success")
	}
	if got, _ := os.ReadFile(s.Path(12)); !bytes.Equal(got, second) {
		t.Errorf("after a failed save the file holds %d bytes, want the %d of the second save", len(got), len(second))
	}
	if files := snapDirFiles(t, dir); len(files) != 1 {
		t.Errorf("directory holds %q, want only %s", files, filepath.Base(s.Path(12)))
	}
}

// TestDirSnapshotStoreRemovesStaleTemps: the temporary files a crashed save
// left (made here by hand, with the store's naming) are gone after the next
// save; files that are not the store's temporary files stay.
func TestDirSnapshotStoreRemovesStaleTemps(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files []string // present before the save
		keep  []string // of them, present after it
	}{
		{name: "temp file of a crashed save", files: []string{".tmp-1234567.snap.db"}},
		{name: "several, one of them empty", files: []string{".tmp-1.snap.db", ".tmp-98765.snap.db", ".tmp-.snap.db"}},
		{name: "files not ours stay",
			files: []string{".tmp-42.snap.db", "tmp123456", "0000000000000005.snap.db", ".tmp-7.snap", "0000000000000001.snap"},
			keep:  []string{"tmp123456", "0000000000000005.snap.db", ".tmp-7.snap", "0000000000000001.snap"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			for i, name := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), bytes.Repeat([]byte{'x'}, i*1000), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s := DirSnapshotStore{Dir: dir}
			if err := s.SaveSnapshot(context.Background(), newMsg(raftpb.MsgSnap, 1, 2, 12), bytes.NewReader(snapBytes(29, 64<<10))); err != nil {
				t.Fatalf("SaveSnapshot: %v", err)
			}
			want := append(slices.Clone(tc.keep), filepath.Base(s.Path(12)))
			slices.Sort(want)
			if got := snapDirFiles(t, dir); !slices.Equal(got, want) {
				t.Errorf("directory holds %q, want %q", got, want)
			}
		})
	}
}

// TestDirSnapshotStoreSweepSparesLiveSave: a save's sweep of stale
// temporary files leaves alone the one of another save in progress in the
// same process, which then completes.
func TestDirSnapshotStoreSweepSparesLiveSave(t *testing.T) {
	dir := t.TempDir()
	s := DirSnapshotStore{Dir: dir}
	const size = 1 << 20
	gen := newSnapGen(30, size)
	gate := newSnapGate(t, gen, size/2)
	done := make(chan error, 1)
	go func() { done <- s.SaveSnapshot(context.Background(), newMsg(raftpb.MsgSnap, 1, 2, 10), gate) }()
	gate.waitReached(t)
	live, err := filepath.Glob(filepath.Join(dir, tmpPattern))
	if err != nil || len(live) != 1 {
		t.Fatalf("temporary files of the blocked save: %q (%v), want one", live, err)
	}

	if err := s.SaveSnapshot(context.Background(), newMsg(raftpb.MsgSnap, 1, 2, 11), bytes.NewReader(snapBytes(31, 64<<10))); err != nil {
		t.Fatalf("second SaveSnapshot: %v", err)
	}
	if _, err := os.Stat(live[0]); err != nil {
		t.Errorf("the blocked save's temporary file after another save: %v, want it kept", err)
	}
	gate.release()
	if err := <-done; err != nil {
		t.Fatalf("blocked SaveSnapshot: %v", err)
	}
	if n, sum := snapFileCRC(t, s.Path(10)); n != size || sum != gen.crc {
		t.Errorf("stored %d bytes with CRC %08x, want %d with %08x", n, sum, size, gen.crc)
	}
	if got, want := snapDirFiles(t, dir), []string{"000000000000000a.snap.db", "000000000000000b.snap.db"}; !slices.Equal(got, want) {
		t.Errorf("directory holds %q, want %q", got, want)
	}
}
