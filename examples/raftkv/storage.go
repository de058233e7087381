package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// dbFile is the name of the bolt database in a member's data directory.
const dbFile = "raftkv.db"

// Bucket and key names of the database.
var (
	bucketMeta    = []byte("meta")    // member ID, HardState, snapshot metadata
	bucketEntries = []byte("entries") // raft log: 8-byte big-endian index -> Entry
	keyID         = []byte("id")
	keyHardState  = []byte("hardstate")
	keySnapshot   = []byte("snapshot")
)

// diskStorage keeps a member's durable raft state in a bolt database: the
// HardState, the log entries not yet compacted, and the metadata of the
// latest snapshot (index, term, ConfState). Snapshot payloads, the
// key-value state, are files in the snap directory (see snapDir). Every
// write is one bolt transaction, which bolt fsyncs before it returns.
type diskStorage struct {
	db *bolt.DB
}

// persisted is what a member finds in its data directory when it starts.
type persisted struct {
	id        uint64 // 0 if the directory is new
	hardState *raftpb.HardState
	snapshot  *raftpb.Snapshot // nil if none
	entries   []*raftpb.Entry  // after the snapshot, in order
}

// fresh reports whether nothing of raft was ever persisted.
func (p persisted) fresh() bool {
	return p.hardState == nil && p.snapshot == nil && len(p.entries) == 0
}

// openStorage opens (creating it if needed) the database at path.
func openStorage(path string) (*diskStorage, error) {
	if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("%s is locked: is another raftkv using this data dir?", path)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrVersionMismatch):
		return nil, fmt.Errorf("%s is not a valid raftkv database (%v): the data dir is corrupt", path, err)
	case err != nil:
		return nil, err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketEntries} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &diskStorage{db: db}, nil
}

// close closes the database.
func (s *diskStorage) close() error { return s.db.Close() }

func indexKey(i uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], i)
	return k[:]
}

// load reads and checks everything persisted. A database that bolt opens
// but whose content makes no sense is reported as corrupt; load never lets
// a panic of bolt escape, since a damaged file can cause one.
func (s *diskStorage) load() (p persisted, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("reading the database: %v", r)
		}
		if err != nil {
			err = fmt.Errorf("%w: the data dir is corrupt", err)
		}
	}()
	err = s.db.View(func(tx *bolt.Tx) error {
		meta, ents := tx.Bucket(bucketMeta), tx.Bucket(bucketEntries)
		if meta == nil || ents == nil {
			return errors.New("missing buckets")
		}
		if v := meta.Get(keyID); v != nil {
			if len(v) != 8 {
				return fmt.Errorf("member ID of %d bytes", len(v))
			}
			p.id = binary.BigEndian.Uint64(v)
		}
		if v := meta.Get(keyHardState); v != nil {
			p.hardState = &raftpb.HardState{}
			if err := proto.Unmarshal(v, p.hardState); err != nil {
				return fmt.Errorf("HardState: %w", err)
			}
		}
		if v := meta.Get(keySnapshot); v != nil {
			p.snapshot = &raftpb.Snapshot{}
			if err := proto.Unmarshal(v, p.snapshot); err != nil {
				return fmt.Errorf("snapshot metadata: %w", err)
			}
		}
		c := ents.Cursor()
		for k, v := c.Seek(indexKey(p.snapshot.GetMetadata().GetIndex() + 1)); k != nil; k, v = c.Next() {
			e := &raftpb.Entry{}
			if err := proto.Unmarshal(v, e); err != nil {
				return fmt.Errorf("log entry %x: %w", k, err)
			}
			if len(k) != 8 || binary.BigEndian.Uint64(k) != e.GetIndex() {
				return fmt.Errorf("log entry %d stored under key %x", e.GetIndex(), k)
			}
			p.entries = append(p.entries, e)
		}
		return nil
	})
	if err != nil {
		return persisted{}, err
	}
	return p, p.check()
}

// check verifies that the persisted state is one raft can restart from:
// raft panics on a log that contradicts its HardState.
func (p persisted) check() error {
	snapIndex, snapTerm := p.snapshot.GetMetadata().GetIndex(), p.snapshot.GetMetadata().GetTerm()
	last, lastTerm := snapIndex, snapTerm
	for _, e := range p.entries {
		if e.GetIndex() != last+1 {
			return fmt.Errorf("log entry %d follows entry %d", e.GetIndex(), last)
		}
		if e.GetTerm() < lastTerm {
			return fmt.Errorf("log entry %d has term %d, below the term %d before it", e.GetIndex(), e.GetTerm(), lastTerm)
		}
		last, lastTerm = e.GetIndex(), e.GetTerm()
	}
	if hs := p.hardState; hs != nil {
		if c := hs.GetCommit(); c < snapIndex || c > last {
			return fmt.Errorf("commit index %d outside the log [%d, %d]", c, snapIndex, last)
		}
	}
	return nil
}

// setID records the member that owns the data directory.
func (s *diskStorage) setID(id uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		var v [8]byte
		binary.BigEndian.PutUint64(v[:], id)
		return tx.Bucket(bucketMeta).Put(keyID, v[:])
	})
}

// save persists what a Ready asks to persist, in one fsynced transaction,
// in the order raft's MemoryStorage applies it: a snapshot replaces the
// whole log, then the HardState, then the entries (which replace any stored
// entries from their first index on).
func (s *diskStorage) save(hs *raftpb.HardState, ents []*raftpb.Entry, snap *raftpb.Snapshot) error {
	hasSnap := !raft.IsEmptySnap(snap)
	if !hasSnap && raft.IsEmptyHardState(hs) && len(ents) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		meta, b := tx.Bucket(bucketMeta), tx.Bucket(bucketEntries)
		if hasSnap {
			if err := putSnapshot(meta, snap); err != nil {
				return err
			}
			// The snapshot supersedes every stored entry.
			if err := tx.DeleteBucket(bucketEntries); err != nil {
				return err
			}
			var err error
			if b, err = tx.CreateBucket(bucketEntries); err != nil {
				return err
			}
		}
		if !raft.IsEmptyHardState(hs) {
			v, err := proto.Marshal(hs)
			if err != nil {
				return err
			}
			if err := meta.Put(keyHardState, v); err != nil {
				return err
			}
		}
		if len(ents) == 0 {
			return nil
		}
		// Entries from the first new index on are replaced: raft only
		// overwrites a suffix of the log. The suffix is short, so collect
		// its keys first rather than delete under the cursor.
		var stale [][]byte
		c := b.Cursor()
		for k, _ := c.Seek(indexKey(ents[0].GetIndex())); k != nil; k, _ = c.Next() {
			stale = append(stale, k)
		}
		for _, k := range stale {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		for _, e := range ents {
			v, err := proto.Marshal(e)
			if err != nil {
				return err
			}
			if err := b.Put(indexKey(e.GetIndex()), v); err != nil {
				return err
			}
		}
		return nil
	})
}

// saveSnapshot records a snapshot this member made of its own state, and
// drops the entries before compactIndex. The snapshot's payload file must
// already be durable.
func (s *diskStorage) saveSnapshot(snap *raftpb.Snapshot, from, compactIndex uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		if err := putSnapshot(tx.Bucket(bucketMeta), snap); err != nil {
			return err
		}
		b := tx.Bucket(bucketEntries)
		for i := from; i < compactIndex; i++ {
			if err := b.Delete(indexKey(i)); err != nil {
				return err
			}
		}
		return nil
	})
}

// putSnapshot stores a snapshot's metadata; its data, if any, is not kept.
func putSnapshot(meta *bolt.Bucket, snap *raftpb.Snapshot) error {
	v, err := proto.Marshal(&raftpb.Snapshot{Metadata: snap.GetMetadata()})
	if err != nil {
		return err
	}
	return meta.Put(keySnapshot, v)
}
