package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
)

// ResumableSnapshotStore is a SnapshotStore that can also receive a payload
// in pieces, so that a transfer cut short resumes where it broke instead
// of starting over: the transport writes what arrives to a PartialSnapshot,
// keeps it when the connection breaks (within Transport.MaxSnapshotPartials
// and its siblings), appends what the sender's next attempt brings, and
// commits it once the whole payload is in and its CRC-32C checked. A
// Transport whose SnapshotStore implements it announces the
// snapshot-resume extension to its peers; SaveSnapshot still serves
// peers that do not resume (etcd). DirSnapshotStore implements it.
type ResumableSnapshotStore interface {
	SnapshotStore
	// CreatePartial returns a new, empty partial payload for the snapshot
	// m announces.
	CreatePartial(m *raftpb.Message) (PartialSnapshot, error)
}

// PartialSnapshot is a payload being received in pieces. The transport
// calls its methods from one goroutine at a time, and calls Commit or
// Discard exactly once, last (Discard may follow a failed Commit).
type PartialSnapshot interface {
	// Write appends to the payload. An error discards it.
	Write(p []byte) (int, error)
	// Commit makes the payload durable and saves it, as a successful
	// SaveSnapshot does: once it returns nil, the payload is the
	// snapshot's. On error nothing may be kept. ctx ends if the sender
	// goes away.
	Commit(ctx context.Context) error
	// Discard drops what was written.
	Discard() error
}

// DirSnapshotStore is the default SnapshotStore: it writes each payload to
// Dir as %016x.snap.db (the snapshot's index, etcd's naming, so etcd tooling
// finds it), through a temporary file that is fsynced and renamed, and then
// fsyncs the directory. A partial payload never becomes visible under the
// final name, whatever fails and whenever the process dies.
//
// A second payload for an index already saved replaces the first, with the
// same atomic rename: the file under an index's name is always the payload
// of the last MsgSnap accepted for it, the one raft processes next. (A raft
// retry after a lost answer sends the same snapshot again; it succeeds. At
// one index raft's state is the same whoever sent it, so replacing loses
// nothing, while keeping the first, as etcd does, would keep a stale file of
// another history, left in a reused directory, for good.) A reader that has
// the first file open keeps reading it.
//
// Temporary files left by a save the process did not finish (it crashed or
// was killed) are removed by the next save to the same directory. Saves in
// progress in this process keep theirs, and so do the partial payloads it
// keeps for resuming (it is a ResumableSnapshotStore); Dir must not be
// shared with another process's store.
type DirSnapshotStore struct {
	// Dir is the directory snapshots are written to. It must exist.
	Dir string
}

// Path returns where the payload of the snapshot at index is kept.
func (s DirSnapshotStore) Path(index uint64) string {
	return filepath.Join(s.Dir, fmt.Sprintf("%016x.snap.db", index))
}

// copyBufSize is the buffer a payload is copied to its file with.
const copyBufSize = 1 << 20

// tmpPattern names temporary files; they never match the final name.
const tmpPattern = ".tmp-*.snap.db"

// liveTemps holds the names of the temporary files of the saves in progress
// in this process, so that the stale-file sweep of one save does not remove
// another's. Names, not paths: os.CreateTemp makes them random, so two
// directories sharing one is unlikely, and would only postpone the removal
// of a stale file to a later save. Creating a temporary file and registering
// it, and sweeping, are done under mu, so that no sweep can see a file
// before it is registered.
var liveTemps = struct {
	mu    sync.Mutex
	names map[string]struct{}
}{names: map[string]struct{}{}}

// createTemp sweeps dir of the temporary files no save in this process owns,
// then creates and registers a new one. Call release when done with it.
func createTemp(dir string) (*os.File, error) {
	liveTemps.mu.Lock()
	defer liveTemps.mu.Unlock()
	removeStaleTemps(dir)
	f, err := os.CreateTemp(dir, tmpPattern)
	if err != nil {
		return nil, err
	}
	liveTemps.names[filepath.Base(f.Name())] = struct{}{}
	return f, nil
}

// releaseTemp forgets a temporary file created by createTemp, once it was
// renamed or removed.
func releaseTemp(f *os.File) {
	liveTemps.mu.Lock()
	defer liveTemps.mu.Unlock()
	delete(liveTemps.names, filepath.Base(f.Name()))
}

// removeStaleTemps removes the temporary files in dir that no save in this
// process owns: they were left by a process that died while saving. It is
// best effort: a file it cannot remove is tried again at the next save, and
// the save goes on. liveTemps.mu must be held.
func removeStaleTemps(dir string) {
	stale, err := filepath.Glob(filepath.Join(dir, tmpPattern))
	if err != nil {
		return // the pattern is valid; Glob fails on nothing else
	}
	for _, path := range stale {
		if _, live := liveTemps.names[filepath.Base(path)]; !live {
			_ = os.Remove(path)
		}
	}
}

// SaveSnapshot implements SnapshotStore.
func (s DirSnapshotStore) SaveSnapshot(ctx context.Context, m *raftpb.Message, r io.Reader) (err error) {
	if s.Dir == "" {
		return errors.New("rafthttp: DirSnapshotStore without a Dir")
	}
	target := s.Path(m.GetSnapshot().GetMetadata().GetIndex())
	f, err := createTemp(s.Dir)
	if err != nil {
		return err
	}
	defer releaseTemp(f)
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	// Large writes: a snapshot is big, and each write is a system call. A
	// reader that has its own buffers (the transport's read-ahead) writes
	// them directly; its reads fail when the request ends, with the cause
	// rather than ctx's error.
	if wt, ok := r.(io.WriterTo); ok {
		_, err = wt.WriteTo(f)
	} else {
		_, err = io.CopyBuffer(f, &ctxReader{ctx: ctx, r: r}, make([]byte, copyBufSize))
	}
	if err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	// Replaces a payload saved before at this index (see the type's doc).
	if err = os.Rename(f.Name(), target); err != nil {
		return err
	}
	return syncDir(s.Dir)
}

// CreatePartial implements ResumableSnapshotStore: the partial payload is
// a temporary file in Dir, as a save's, fsynced and renamed to
// Path(index) by Commit, and removed by Discard. It is not durable before
// Commit (a partial does not outlive the process: the next save after a
// restart sweeps it).
func (s DirSnapshotStore) CreatePartial(m *raftpb.Message) (PartialSnapshot, error) {
	if s.Dir == "" {
		return nil, errors.New("rafthttp: DirSnapshotStore without a Dir")
	}
	f, err := createTemp(s.Dir)
	if err != nil {
		return nil, err
	}
	return &dirPartial{s: s, f: f, target: s.Path(m.GetSnapshot().GetMetadata().GetIndex())}, nil
}

// dirPartial is a DirSnapshotStore's partial payload: its temporary file.
type dirPartial struct {
	s      DirSnapshotStore
	f      *os.File
	target string
	done   bool // committed or discarded: the file is closed and released
}

func (p *dirPartial) Write(b []byte) (int, error) { return p.f.Write(b) }

// Commit makes the payload durable under its final name, as SaveSnapshot
// does; on error the file is removed.
func (p *dirPartial) Commit(context.Context) (err error) {
	if p.done {
		return errors.New("rafthttp: partial snapshot already committed or discarded")
	}
	p.done = true
	defer releaseTemp(p.f)
	defer func() {
		if err != nil {
			p.f.Close()
			os.Remove(p.f.Name())
		}
	}()
	if err = p.f.Sync(); err != nil {
		return err
	}
	if err = p.f.Close(); err != nil {
		return err
	}
	if err = os.Rename(p.f.Name(), p.target); err != nil {
		return err
	}
	return syncDir(p.s.Dir)
}

// Discard removes the file. Idempotent.
func (p *dirPartial) Discard() error {
	if p.done {
		return nil
	}
	p.done = true
	defer releaseTemp(p.f)
	p.f.Close()
	return os.Remove(p.f.Name())
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
