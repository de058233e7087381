package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"go.etcd.io/raft/v3/raftpb"
)

// DirSnapshotStore is the default SnapshotStore: it writes each payload to
// Dir as %016x.snap.db (the snapshot's index, etcd's naming, so etcd tooling
// finds it), through a temporary file that is fsynced and renamed, and then
// fsyncs the directory. A partial payload never becomes visible under the
// final name, whatever fails and whenever the process dies.
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

// SaveSnapshot implements SnapshotStore.
func (s DirSnapshotStore) SaveSnapshot(ctx context.Context, m *raftpb.Message, r io.Reader) (err error) {
	if s.Dir == "" {
		return errors.New("rafthttp: DirSnapshotStore without a Dir")
	}
	target := s.Path(m.GetSnapshot().GetMetadata().GetIndex())
	f, err := os.CreateTemp(s.Dir, tmpPattern)
	if err != nil {
		return err
	}
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
	if _, statErr := os.Stat(target); statErr == nil {
		// Already have it (a retried transfer): keep the first copy, but
		// still make sure it is durable before saying so.
		os.Remove(f.Name())
		return syncDir(s.Dir)
	}
	if err = os.Rename(f.Name(), target); err != nil {
		return err
	}
	return syncDir(s.Dir)
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
