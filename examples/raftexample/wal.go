package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// The write-ahead log stands in for etcd's server/storage/wal, which
// raftexample uses and which lives in etcd's server module. It keeps what
// raft asks an application to make durable, the HardState, the log entries
// and the metadata of snapshots, as records appended to one file (walName
// in the member's WAL directory) and fsynced before the Ready's messages
// are sent. Its calls and replay rules are etcd's: a snapshot record marks
// where a replay may start, an entry replaces any entry at its index and
// after it, the last HardState wins.
//
// Unlike etcd's segments, which raftexample never removes, the file is
// rewritten at each snapshot the member makes (Rewrite), so that it holds
// what a restart needs and no more.

// walName is the log's file in the WAL directory.
const walName = "wal"

// Record types. A record is its length (4 bytes, big endian, of what
// follows the checksum), the CRC-32C of its type and data (4 bytes), its
// type (1 byte) and its data, a protobuf message.
const (
	recEntry     byte = 1 // raftpb.Entry
	recHardState byte = 2 // raftpb.HardState
	recSnapshot  byte = 3 // raftpb.SnapshotMetadata
)

// recHeaderLen is the length of a record's length and checksum.
const recHeaderLen = 8

// maxRecordLen bounds the length a record may declare, so that a damaged
// length cannot make a replay allocate gigabytes. Raft's entries are far
// smaller: raftexample proposes one key and value per entry.
const maxRecordLen = 64 << 20

var walCRC = crc32.MakeTable(crc32.Castagnoli)

// errWALCorrupt is returned for a log that cannot be replayed: a record
// that is damaged and not the last one, or records that contradict each
// other.
var errWALCorrupt = errors.New("wal: corrupt")

// wal is an open write-ahead log. It is used by one goroutine at a time:
// the raft node's Ready loop once the node runs.
type wal struct {
	dir string
	f   *os.File // opened for appending
	buf bytes.Buffer
	// hs is the last HardState saved or replayed, written again by Rewrite.
	hs *raftpb.HardState
	// start is the snapshot a replay (ReadAll) starts from; nil for none.
	start *raftpb.SnapshotMetadata
}

// walExist reports whether dir holds a write-ahead log, that is, whether
// this member has run before.
func walExist(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, walName))
	return err == nil
}

// createWAL creates dir and an empty log in it, durably.
func createWAL(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, walName), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return syncDir(dir)
}

// walRecord is one decoded record.
type walRecord struct {
	typ  byte
	data []byte
}

// readRecords reads every record of the log in dir. A last record cut
// short or failing its checksum is what a process killed in the middle of
// an append leaves: it is dropped, and good is the length of the records
// before it, to which the file should be truncated. A damaged record with
// others after it is corruption.
func readRecords(dir string) (recs []walRecord, good int64, err error) {
	b, err := os.ReadFile(filepath.Join(dir, walName))
	if err != nil {
		return nil, 0, err
	}
	off := 0
	for off < len(b) {
		rest := b[off:]
		if len(rest) < recHeaderLen {
			break // a torn header
		}
		n := int(binary.BigEndian.Uint32(rest))
		if n < 1 || n > maxRecordLen || n > len(rest)-recHeaderLen {
			break // a torn record, or a length torn with it
		}
		body := rest[recHeaderLen : recHeaderLen+n]
		if crc32.Checksum(body, walCRC) != binary.BigEndian.Uint32(rest[4:]) {
			if off+recHeaderLen+n == len(b) {
				break // the last record, torn
			}
			return nil, 0, fmt.Errorf("%w: record at offset %d fails its checksum", errWALCorrupt, off)
		}
		recs = append(recs, walRecord{typ: body[0], data: body[1:]})
		off += recHeaderLen + n
	}
	return recs, int64(off), nil
}

// validSnapshotEntries returns the snapshots the log in dir records that a
// restart may start from: those at or below the commit index of the last
// HardState. A member records a snapshot received from the leader before
// the HardState that commits it, so a crash between the two leaves a
// snapshot record that must not be used.
func validSnapshotEntries(dir string) ([]*raftpb.SnapshotMetadata, error) {
	recs, _, err := readRecords(dir)
	if err != nil {
		return nil, err
	}
	var snaps []*raftpb.SnapshotMetadata
	hs := &raftpb.HardState{}
	for _, r := range recs {
		switch r.typ {
		case recSnapshot:
			s := &raftpb.SnapshotMetadata{}
			if err := proto.Unmarshal(r.data, s); err != nil {
				return nil, fmt.Errorf("%w: snapshot record: %v", errWALCorrupt, err)
			}
			snaps = append(snaps, s)
		case recHardState:
			if err := proto.Unmarshal(r.data, hs); err != nil {
				return nil, fmt.Errorf("%w: HardState record: %v", errWALCorrupt, err)
			}
		}
	}
	valid := snaps[:0]
	for _, s := range snaps {
		if s.GetIndex() <= hs.GetCommit() {
			valid = append(valid, s)
		}
	}
	return valid, nil
}

// openWAL opens the log in dir for a replay starting at the snapshot start
// (nil or empty: from the beginning). A torn last record is cut off.
func openWAL(dir string, start *raftpb.SnapshotMetadata) (*wal, error) {
	_, good, err := readRecords(dir)
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, walName)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if fi, err := f.Stat(); err != nil || fi.Size() != good {
		// Appends must follow the last good record, or the next replay
		// would stop at the torn one and miss them.
		if err == nil {
			err = f.Truncate(good)
		}
		if err == nil {
			err = f.Sync()
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("wal: cutting off a torn record: %w", err)
		}
	}
	if start.GetIndex() == 0 {
		start = nil
	}
	return &wal{dir: dir, f: f, start: start}, nil
}

// ReadAll replays the log from the snapshot openWAL was given: the last
// HardState (empty if none) and the entries after the snapshot, each entry
// replacing those at and after its index, as raft overwrites a log's
// suffix.
func (w *wal) ReadAll() (*raftpb.HardState, []*raftpb.Entry, error) {
	recs, _, err := readRecords(w.dir)
	if err != nil {
		return nil, nil, err
	}
	hs := &raftpb.HardState{}
	var ents []*raftpb.Entry
	from := w.start.GetIndex() // entries at or below it are in the snapshot
	found := w.start == nil
	for _, r := range recs {
		switch r.typ {
		case recEntry:
			e := &raftpb.Entry{}
			if err := proto.Unmarshal(r.data, e); err != nil {
				return nil, nil, fmt.Errorf("%w: entry record: %v", errWALCorrupt, err)
			}
			i := e.GetIndex()
			if i <= from {
				continue
			}
			if off := i - from - 1; off <= uint64(len(ents)) {
				ents = append(ents[:off], e)
			} else {
				return nil, nil, fmt.Errorf("%w: entry %d follows entry %d", errWALCorrupt, i, from+uint64(len(ents)))
			}
		case recHardState:
			hs = &raftpb.HardState{}
			if err := proto.Unmarshal(r.data, hs); err != nil {
				return nil, nil, fmt.Errorf("%w: HardState record: %v", errWALCorrupt, err)
			}
		case recSnapshot:
			s := &raftpb.SnapshotMetadata{}
			if err := proto.Unmarshal(r.data, s); err != nil {
				return nil, nil, fmt.Errorf("%w: snapshot record: %v", errWALCorrupt, err)
			}
			if w.start != nil && s.GetIndex() == w.start.GetIndex() && s.GetTerm() == w.start.GetTerm() {
				found = true
			}
		default:
			return nil, nil, fmt.Errorf("%w: record of unknown type %d", errWALCorrupt, r.typ)
		}
	}
	if !found {
		return nil, nil, fmt.Errorf("%w: no record of snapshot %d", errWALCorrupt, w.start.GetIndex())
	}
	w.hs = hs
	return hs, ents, nil
}

// appendRecord encodes one record into w.buf.
func (w *wal) appendRecord(typ byte, m proto.Message) error {
	data, err := proto.Marshal(m)
	if err != nil {
		return err
	}
	var hdr [recHeaderLen + 1]byte
	hdr[recHeaderLen] = typ
	crc := crc32.Update(crc32.Checksum(hdr[recHeaderLen:], walCRC), walCRC, data)
	binary.BigEndian.PutUint32(hdr[0:], uint32(1+len(data)))
	binary.BigEndian.PutUint32(hdr[4:], crc)
	w.buf.Write(hdr[:])
	w.buf.Write(data)
	return nil
}

// flush writes the records encoded into w.buf to f, in one write, and
// fsyncs them.
func (w *wal) flush(f *os.File) error {
	if _, err := f.Write(w.buf.Bytes()); err != nil {
		return err
	}
	return f.Sync()
}

// Save appends the entries and the HardState (nil or empty: none) of a
// Ready and fsyncs them.
func (w *wal) Save(hs *raftpb.HardState, ents []*raftpb.Entry) error {
	if raft.IsEmptyHardState(hs) && len(ents) == 0 {
		return nil
	}
	w.buf.Reset()
	for _, e := range ents {
		if err := w.appendRecord(recEntry, e); err != nil {
			return err
		}
	}
	if !raft.IsEmptyHardState(hs) {
		if err := w.appendRecord(recHardState, hs); err != nil {
			return err
		}
	}
	if err := w.flush(w.f); err != nil {
		return err
	}
	if !raft.IsEmptyHardState(hs) {
		w.hs = hs
	}
	return nil
}

// SaveSnapshot appends the record of a snapshot, whose payload must
// already be durable, and fsyncs it.
func (w *wal) SaveSnapshot(s *raftpb.SnapshotMetadata) error {
	w.buf.Reset()
	if err := w.appendRecord(recSnapshot, s); err != nil {
		return err
	}
	return w.flush(w.f)
}

// Rewrite replaces the log with one that starts at the snapshot s: its
// record, the last HardState and ents, the entries after s that the log
// holds. It is for a snapshot this member made of entries it had applied,
// so committed by the HardState already saved. The new log is written to a
// temporary file, fsynced and renamed over the old one: a crash leaves one
// or the other.
func (w *wal) Rewrite(s *raftpb.SnapshotMetadata, ents []*raftpb.Entry) (err error) {
	w.buf.Reset()
	if err := w.appendRecord(recSnapshot, s); err != nil {
		return err
	}
	if !raft.IsEmptyHardState(w.hs) {
		if err := w.appendRecord(recHardState, w.hs); err != nil {
			return err
		}
	}
	for _, e := range ents {
		if err := w.appendRecord(recEntry, e); err != nil {
			return err
		}
	}
	path := filepath.Join(w.dir, walName)
	tmp, err := os.OpenFile(path+".tmp", os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := w.flush(tmp); err != nil {
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if err := syncDir(w.dir); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	w.f.Close() // the old file, now unlinked
	w.f = f
	return nil
}

// Close closes the log.
func (w *wal) Close() error { return w.f.Close() }

// syncDir makes a file's creation or renaming in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
