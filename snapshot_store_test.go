package rafthttp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
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
	if err := (DirSnapshotStore{Dir: dir}).SaveSnapshot(context.Background(), snapMsg(1, 2, 12), bytes.NewReader(payload)); err != nil {
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
	if err := s.SaveSnapshot(context.Background(), snapMsg(1, 2, 7), bytes.NewReader(nil)); err != nil {
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
			err := s.SaveSnapshot(ctx, snapMsg(1, 2, 12), r)
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

// TestDirSnapshotStoreKeepsExisting: a second save of the same index (a
// retried transfer) succeeds but keeps the first file, and leaves no
// temporary file.
func TestDirSnapshotStoreKeepsExisting(t *testing.T) {
	dir := t.TempDir()
	s := DirSnapshotStore{Dir: dir}
	first, second := snapBytes(27, 1<<20), snapBytes(28, 2<<20)
	if err := s.SaveSnapshot(context.Background(), snapMsg(1, 2, 12), bytes.NewReader(first)); err != nil {
		t.Fatalf("first SaveSnapshot: %v", err)
	}
	if err := s.SaveSnapshot(context.Background(), snapMsg(1, 2, 12), bytes.NewReader(second)); err != nil {
		t.Fatalf("second SaveSnapshot = %v, want success", err)
	}
	got, err := os.ReadFile(s.Path(12))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, first) {
		t.Errorf("file holds %d bytes, want the %d of the first save", len(got), len(first))
	}
	if files := snapDirFiles(t, dir); len(files) != 1 {
		t.Errorf("directory holds %q, want only %s", files, filepath.Base(s.Path(12)))
	}

	// A failed save of an index already stored leaves the stored file alone.
	if err := s.SaveSnapshot(context.Background(), snapMsg(1, 2, 12), &snapFailAfter{r: bytes.NewReader(second), n: 10, err: io.ErrUnexpectedEOF}); err == nil {
		t.Error("failed save reported success")
	}
	if got, _ := os.ReadFile(s.Path(12)); !bytes.Equal(got, first) {
		t.Errorf("after a failed save the file holds %d bytes, want the %d of the first save", len(got), len(first))
	}
	if files := snapDirFiles(t, dir); len(files) != 1 {
		t.Errorf("directory holds %q, want only %s", files, filepath.Base(s.Path(12)))
	}
}
