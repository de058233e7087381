package main

import (
	"bytes"
	"encoding/gob"
	"encoding/json"
	"errors"
	"log"
	"strings"
	"sync"

	"go.etcd.io/raft/v3/raftpb"
)

// kvstore is the state machine: a map of keys to values that changes only
// as raft commits entries. Writes are proposed to raft; the map is updated
// when they come back committed.
type kvstore struct {
	proposeC    chan<- string // where Propose hands encoded entries to raft
	mu          sync.RWMutex
	kvStore     map[string]string // what the committed entries set
	snapshotter *snapshotter
}

// kv is the content of one raft entry, gob-encoded as raftexample's.
type kv struct {
	Key string
	Val string
}

// newKVStore loads the newest snapshot, if any, and applies the commits
// raft publishes on commitC in a goroutine of its own until commitC is
// closed.
func newKVStore(snapshotter *snapshotter, proposeC chan<- string, commitC <-chan *commit, errorC <-chan error) *kvstore {
	s := &kvstore{proposeC: proposeC, kvStore: make(map[string]string), snapshotter: snapshotter}
	s.restoreNewestSnapshot()
	go s.readCommits(commitC, errorC)
	return s
}

// restoreNewestSnapshot replaces the map with the newest snapshot's, if
// there is one. A snapshot that cannot be read ends the process: the
// member cannot know its state without it.
func (s *kvstore) restoreNewestSnapshot() {
	snapshot, err := s.loadSnapshot()
	if err != nil {
		log.Fatalf("raftexample: %v", err)
	}
	if snapshot == nil {
		return
	}
	md := snapshot.GetMetadata()
	log.Printf("raftexample: restoring the key-value map from snapshot %d (term %d, %d bytes)", md.GetIndex(), md.GetTerm(), len(snapshot.GetData()))
	if err := s.recoverFromSnapshot(snapshot.GetData()); err != nil {
		log.Fatalf("raftexample: snapshot %d: %v", md.GetIndex(), err)
	}
}

// Lookup returns the value of key, as this member has applied it.
func (s *kvstore) Lookup(key string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.kvStore[key]
	return v, ok
}

// Propose hands a write to raft. It returns once raft has taken it, not
// once it is committed.
func (s *kvstore) Propose(k string, v string) {
	var buf strings.Builder
	if err := gob.NewEncoder(&buf).Encode(kv{k, v}); err != nil {
		log.Fatalf("raftexample: encoding a proposal: %v", err)
	}
	s.proposeC <- buf.String()
}

// readCommits applies what raft publishes: batches of committed entries,
// and nil when a snapshot from the leader replaced the state.
func (s *kvstore) readCommits(commitC <-chan *commit, errorC <-chan error) {
	for c := range commitC {
		if c == nil {
			s.restoreNewestSnapshot()
			continue
		}
		for _, data := range c.data {
			var e kv
			if err := gob.NewDecoder(strings.NewReader(data)).Decode(&e); err != nil {
				log.Fatalf("raftexample: a committed entry is not a gob-encoded kv: %v", err)
			}
			s.mu.Lock()
			s.kvStore[e.Key] = e.Val
			s.mu.Unlock()
		}
		// Raft's side may now snapshot the map: it holds these entries.
		close(c.applyDoneC)
	}
	if err, ok := <-errorC; ok {
		log.Fatalf("raftexample: %v", err)
	}
}

// getSnapshot returns the state as a snapshot payload: the map as JSON.
func (s *kvstore) getSnapshot() ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return json.Marshal(s.kvStore)
}

// loadSnapshot returns the newest snapshot with its payload, or nil if
// there is none yet.
func (s *kvstore) loadSnapshot() (*raftpb.Snapshot, error) {
	snapshot, err := s.snapshotter.Load()
	if errors.Is(err, errNoSnapshot) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return snapshot, nil
}

// recoverFromSnapshot replaces the map with a snapshot payload's.
func (s *kvstore) recoverFromSnapshot(snapshot []byte) error {
	var store map[string]string
	if err := json.NewDecoder(bytes.NewReader(snapshot)).Decode(&store); err != nil {
		return err
	}
	if store == nil {
		store = make(map[string]string) // a payload of "null"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kvStore = store
	return nil
}
