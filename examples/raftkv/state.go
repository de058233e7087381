package main

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
)

// command is what one normal raft entry carries: a change to the key-value
// map. ID identifies the proposal, so that the member that proposed it can
// tell its waiting caller that it was applied; the other members ignore it.
type command struct {
	ID    uint64 `json:"id"`
	Op    string `json:"op"` // opPut or opDelete
	Key   string `json:"k"`
	Value string `json:"v,omitempty"`
}

// Operations of a command.
const (
	opPut    = "put"
	opDelete = "del"
)

// kvState is the replicated state machine: the key-value map, plus the
// members' peer URLs (which raft's ConfState does not carry) and the IDs of
// removed members. It is safe for concurrent use: the Ready loop writes it,
// HTTP handlers and the demo read it.
type kvState struct {
	mu      sync.RWMutex
	kv      map[string]string
	members map[uint64]string
	removed map[uint64]bool
}

func newKVState() *kvState {
	return &kvState{kv: map[string]string{}, members: map[uint64]string{}, removed: map[uint64]bool{}}
}

// snapshotPayload is the encoding of a kvState in a snapshot payload: what
// travels on /raft/snapshot and what a member keeps in its snap directory.
type snapshotPayload struct {
	KV      map[string]string `json:"kv"`
	Members map[uint64]string `json:"members"`
	Removed []uint64          `json:"removed,omitempty"`
}

// apply applies one command.
func (s *kvState) apply(c command) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch c.Op {
	case opPut:
		s.kv[c.Key] = c.Value
	case opDelete:
		delete(s.kv, c.Key)
	default:
		return fmt.Errorf("unknown operation %q", c.Op)
	}
	return nil
}

// get returns the value of key.
func (s *kvState) get(key string) (string, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	v, ok := s.kv[key]
	return v, ok
}

// len returns the number of keys.
func (s *kvState) len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.kv)
}

// addMember records a member's peer URL.
func (s *kvState) addMember(id uint64, url string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.members[id] = url
}

// removeMember forgets a member and remembers that it was removed.
func (s *kvState) removeMember(id uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.members, id)
	s.removed[id] = true
}

// isRemoved reports whether the member id was removed from the cluster.
func (s *kvState) isRemoved(id uint64) bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.removed[id]
}

// memberURLs returns a copy of the members' peer URLs.
func (s *kvState) memberURLs() map[uint64]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.members)
}

// encode returns the snapshot payload of the state.
func (s *kvState) encode() ([]byte, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	p := snapshotPayload{KV: s.kv, Members: s.members, Removed: slices.Sorted(maps.Keys(s.removed))}
	return json.Marshal(p)
}

// decodeState decodes a snapshot payload.
func decodeState(b []byte) (*kvState, error) {
	var p snapshotPayload
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("decoding snapshot payload: %w", err)
	}
	if p.KV == nil {
		return nil, errors.New("decoding snapshot payload: no key-value map")
	}
	s := newKVState()
	s.kv = p.KV
	if p.Members != nil {
		s.members = p.Members
	}
	for _, id := range p.Removed {
		s.removed[id] = true
	}
	return s, nil
}

// replace makes s hold the state of o (restored from a snapshot).
func (s *kvState) replace(o *kvState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.kv, s.members, s.removed = o.kv, o.members, o.removed
}

// hash returns a SHA-256 of the key-value map in key order, in hex: two
// members hold the same data if and only if (barring collisions) their
// hashes are equal.
func (s *kvState) hash() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for _, k := range slices.Sorted(maps.Keys(s.kv)) {
		v := s.kv[k]
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(k)))])
		h.Write([]byte(k))
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(v)))])
		h.Write([]byte(v))
	}
	return hex.EncodeToString(h.Sum(nil))
}
