package robustness

import (
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// tamperKind names a way a broken transport mishandles one message.
type tamperKind string

// The broken transports, each acting once, on the first MsgApp carrying a
// client's write that reaches a member after it is armed.
const (
	// tamperDrop loses the message without telling anyone.
	tamperDrop tamperKind = "drop-msgapp"
	// tamperDuplicate delivers the message twice.
	tamperDuplicate tamperKind = "duplicate"
	// tamperCorrupt changes the value of the write in the entry, which
	// raft cannot notice: its checks are on indexes and terms.
	tamperCorrupt tamperKind = "corrupt-entry"
)

// tamper is a test-only hook between a member's transport and its raft
// (node.Process): a transport with a bug. It does nothing until armed.
type tamper struct {
	kind  tamperKind
	armed atomic.Bool
	fired atomic.Bool

	mu   sync.Mutex
	what string // the message it acted on
}

// deliver returns what the broken transport delivers to member to in
// place of m.
func (t *tamper) deliver(to uint64, m *raftpb.Message) []*raftpb.Message {
	if !t.armed.Load() || m.GetType() != raftpb.MsgApp {
		return []*raftpb.Message{m}
	}
	at := -1
	for i, e := range m.GetEntries() {
		if isCommand(e) {
			at = i
			break
		}
	}
	if at < 0 || !t.fired.CompareAndSwap(false, true) {
		return []*raftpb.Message{m}
	}
	t.mu.Lock()
	t.what = fmt.Sprintf("%s on the MsgApp %d->%d (term %d, index %d, %d entries)",
		t.kind, m.GetFrom(), to, m.GetTerm(), m.GetIndex(), len(m.GetEntries()))
	t.mu.Unlock()
	switch t.kind {
	case tamperDrop:
		return nil
	case tamperDuplicate:
		return []*raftpb.Message{m, proto.Clone(m).(*raftpb.Message)}
	case tamperCorrupt:
		bad := proto.Clone(m).(*raftpb.Message)
		e := bad.Entries[at]
		var c command
		if err := json.Unmarshal(e.GetData(), &c); err == nil {
			c.Value += "-corrupted"
			if data, err := json.Marshal(c); err == nil {
				e.Data = data
			}
		}
		return []*raftpb.Message{bad}
	}
	return []*raftpb.Message{m}
}

// acted describes the message the tamper acted on, "" if none yet.
func (t *tamper) acted() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.what
}

// isCommand says whether e carries a client's write.
func isCommand(e *raftpb.Entry) bool {
	if e.GetType() != raftpb.EntryNormal || len(e.GetData()) == 0 {
		return false
	}
	var c command
	return json.Unmarshal(e.GetData(), &c) == nil && c.ID != 0
}
