package robustness

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"

	"go.etcd.io/raft/v3/raftpb"
)

// The operations of the key-value store.
const (
	opGet = "get"
	opPut = "put"
	opCAS = "cas"
)

// command is a client's write, as a raft entry carries it.
type command struct {
	ID     uint64 `json:"id"` // the request, unique in a run
	Op     string `json:"op"` // opPut or opCAS
	Key    string `json:"k"`
	Value  string `json:"v"`
	Expect string `json:"e,omitempty"` // opCAS: the value the key must hold
}

// kvState is the replicated state machine: what every member must agree on.
// Its snapshots carry all of it, so that a member restored from one can
// still be compared with the others entry for entry.
type kvState struct {
	// Index is the index of the last entry applied.
	Index uint64 `json:"index"`
	// Chain is a hash of every entry applied, in order: sha256 over the
	// previous chain and the entry's index, term, type and data. Two
	// members with the same chain applied the same entries.
	Chain []byte `json:"chain"`
	// KV is the store; a key never written reads as "".
	KV map[string]string `json:"kv"`
	// Results holds the outcome of every write applied, by request ID:
	// true for a put and a successful compare-and-swap.
	Results map[uint64]bool `json:"results"`
	// Undecodable counts normal entries whose data is not a command; no
	// client writes one, so any is a corruption.
	Undecodable int `json:"undecodable"`
}

func newKVState() *kvState {
	return &kvState{KV: map[string]string{}, Results: map[uint64]bool{}}
}

// apply applies a committed entry. For a command it returns the request
// and its outcome, with isCmd set.
func (s *kvState) apply(e *raftpb.Entry) (id uint64, ok, isCmd bool) {
	h := sha256.New()
	h.Write(s.Chain)
	var hdr [20]byte
	binary.BigEndian.PutUint64(hdr[0:], e.GetIndex())
	binary.BigEndian.PutUint64(hdr[8:], e.GetTerm())
	binary.BigEndian.PutUint32(hdr[16:], uint32(e.GetType()))
	h.Write(hdr[:])
	h.Write(e.GetData())
	s.Chain = h.Sum(nil)
	s.Index = e.GetIndex()
	if e.GetType() != raftpb.EntryNormal || len(e.GetData()) == 0 {
		return 0, false, false
	}
	var c command
	if err := json.Unmarshal(e.GetData(), &c); err != nil || c.ID == 0 {
		s.Undecodable++
		return 0, false, false
	}
	switch c.Op {
	case opPut:
		s.KV[c.Key] = c.Value
		ok = true
	case opCAS:
		if s.KV[c.Key] == c.Expect {
			s.KV[c.Key] = c.Value
			ok = true
		}
	default:
		s.Undecodable++
		return 0, false, false
	}
	s.Results[c.ID] = ok
	return c.ID, ok, true
}

// encode is the state as a snapshot carries it.
func (s *kvState) encode() ([]byte, error) { return json.Marshal(s) }

// decodeKVState reads a snapshot's state; empty data is the empty state (a
// snapshot taken before anything was applied).
func decodeKVState(data []byte) (*kvState, error) {
	s := newKVState()
	if len(data) == 0 {
		return s, nil
	}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("decoding a snapshot's state: %w", err)
	}
	if s.KV == nil {
		s.KV = map[string]string{}
	}
	if s.Results == nil {
		s.Results = map[uint64]bool{}
	}
	return s, nil
}

// clone returns a deep copy, for comparisons made after the member moved on.
func (s *kvState) clone() *kvState {
	return &kvState{Index: s.Index, Chain: append([]byte(nil), s.Chain...), KV: maps.Clone(s.KV),
		Results: maps.Clone(s.Results), Undecodable: s.Undecodable}
}

// diff describes how o differs from s, "" if it does not.
func (s *kvState) diff(o *kvState) string {
	switch {
	case s.Index != o.Index:
		return fmt.Sprintf("applied index %d, not %d", o.Index, s.Index)
	case string(s.Chain) != string(o.Chain):
		return fmt.Sprintf("entry hash chain %.16s, not %.16s (different entries applied)",
			hex.EncodeToString(o.Chain), hex.EncodeToString(s.Chain))
	case s.Undecodable != o.Undecodable:
		return fmt.Sprintf("%d undecodable entries, not %d", o.Undecodable, s.Undecodable)
	case !maps.Equal(s.KV, o.KV):
		for k, v := range s.KV {
			if o.KV[k] != v {
				return fmt.Sprintf("key %q = %q, not %q", k, o.KV[k], v)
			}
		}
		return fmt.Sprintf("%d keys, not %d", len(o.KV), len(s.KV))
	case !maps.Equal(s.Results, o.Results):
		return fmt.Sprintf("%d write outcomes that differ from %d", len(o.Results), len(s.Results))
	}
	return ""
}
