package rafthttp

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap"
)

// benchSnapshotSize is the payload of one iteration of the snapshot
// benchmarks.
const benchSnapshotSize = 256 << 20

// BenchmarkSnapshotTransfer sends a 256 MiB generated payload per iteration
// between two transports on loopback into a DirSnapshotStore (written,
// fsynced, renamed). Compare its MB/s with BenchmarkFileWriteFsync, the
// same bytes written straight to a file: the transport's overhead is the
// difference.
func BenchmarkSnapshotTransfer(b *testing.B) {
	dir := b.TempDir()
	store := DirSnapshotStore{Dir: dir}
	quiet := func(tr *Transport) { tr.Logger = zap.NewNop() }
	a := newNode(b, withID(1), withConfig(quiet))
	r := newNode(b, withID(2), withConfig(func(tr *Transport) {
		quiet(tr)
		tr.SnapshotStore = store
	}))
	connect(b, a, r)
	b.SetBytes(benchSnapshotSize)
	b.ReportAllocs()
	index := uint64(0)
	for b.Loop() {
		index++
		if err := snapWait(b, snapSend(a, 2, index, newSnapGen(index, benchSnapshotSize), benchSnapshotSize)); err != nil {
			b.Fatalf("SendSnapshot: %v", err)
		}
		b.StopTimer()
		r.raft.recv(b)
		if err := os.Remove(store.Path(index)); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkFileWriteFsync writes the same 256 MiB, from the same generator,
// to a plain file in a temporary directory and fsyncs it: the reference for
// BenchmarkSnapshotTransfer.
func BenchmarkFileWriteFsync(b *testing.B) {
	dir := b.TempDir()
	b.SetBytes(benchSnapshotSize)
	b.ReportAllocs()
	i := uint64(0)
	for b.Loop() {
		i++
		name := filepath.Join(dir, fmt.Sprintf("ref-%d", i))
		f, err := os.Create(name)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(f, newSnapGen(i, benchSnapshotSize)); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
		if err := f.Close(); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := os.Remove(name); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}
