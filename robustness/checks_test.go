package robustness

import (
	"encoding/json"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// op builds a history operation for the model's tests.
func op(client int, call, ret int64, in kvInput, out kvOutput) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func TestKVModel(t *testing.T) {
	put := func(k, v string) kvInput { return kvInput{Op: opPut, Key: k, Value: v} }
	get := func(k string) kvInput { return kvInput{Op: opGet, Key: k} }
	cas := func(k, old, v string) kvInput { return kvInput{Op: opCAS, Key: k, Expect: old, Value: v} }
	read := func(v string) kvOutput { return kvOutput{Value: v} }
	tests := []struct {
		name    string
		history []porcupine.Operation
		want    porcupine.CheckResult
	}{
		{name: "read after write", want: porcupine.Ok, history: []porcupine.Operation{
			op(0, 0, 10, put("a", "1"), kvOutput{}),
			op(1, 20, 30, get("a"), read("1")),
		}},
		{name: "stale read", want: porcupine.Illegal, history: []porcupine.Operation{
			op(0, 0, 10, put("a", "1"), kvOutput{}),
			op(0, 20, 30, put("a", "2"), kvOutput{}),
			op(1, 40, 50, get("a"), read("1")),
		}},
		{name: "concurrent read may see either", want: porcupine.Ok, history: []porcupine.Operation{
			op(0, 0, 10, put("a", "1"), kvOutput{}),
			op(0, 20, 50, put("a", "2"), kvOutput{}),
			op(1, 30, 40, get("a"), read("1")),
		}},
		{name: "keys are independent", want: porcupine.Ok, history: []porcupine.Operation{
			op(0, 0, 10, put("a", "1"), kvOutput{}),
			op(1, 20, 30, get("b"), read("")),
		}},
		{name: "cas that should have failed", want: porcupine.Illegal, history: []porcupine.Operation{
			op(0, 0, 10, put("a", "1"), kvOutput{}),
			op(1, 20, 30, cas("a", "0", "2"), kvOutput{OK: true}),
		}},
		{name: "cas swaps", want: porcupine.Ok, history: []porcupine.Operation{
			op(0, 0, 10, put("a", "1"), kvOutput{}),
			op(1, 20, 30, cas("a", "1", "2"), kvOutput{OK: true}),
			op(0, 40, 50, get("a"), read("2")),
		}},
		{name: "a write of unknown outcome may apply late", want: porcupine.Ok, history: []porcupine.Operation{
			op(0, 0, 1000, put("a", "1"), kvOutput{Unknown: true}),
			op(1, 20, 30, get("a"), read("")),
			op(1, 40, 50, get("a"), read("1")),
		}},
		{name: "a write of unknown outcome cannot apply twice", want: porcupine.Illegal, history: []porcupine.Operation{
			op(0, 0, 1000, put("a", "1"), kvOutput{Unknown: true}),
			op(1, 20, 30, get("a"), read("1")),
			op(1, 40, 50, put("a", "2"), kvOutput{}),
			op(1, 60, 70, get("a"), read("1")),
		}},
		{name: "an unknown cas swaps only if it matches", want: porcupine.Illegal, history: []porcupine.Operation{
			op(0, 0, 10, put("a", "1"), kvOutput{}),
			op(1, 20, 1000, cas("a", "0", "2"), kvOutput{Unknown: true}),
			op(0, 40, 50, get("a"), read("2")),
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, _ := porcupine.CheckOperationsVerbose(kvModel, tc.history, time.Minute)
			if got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// entry is a normal entry carrying c.
func entry(t *testing.T, index uint64, c command) *raftpb.Entry {
	t.Helper()
	data, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	return &raftpb.Entry{Index: proto.Uint64(index), Term: proto.Uint64(1), Type: raftpb.EntryNormal.Enum(), Data: data}
}

func TestKVStateApply(t *testing.T) {
	tests := []struct {
		name    string
		cmds    []command
		wantKV  map[string]string
		wantRes map[uint64]bool
	}{
		{name: "put", cmds: []command{{ID: 1, Op: opPut, Key: "a", Value: "x"}},
			wantKV: map[string]string{"a": "x"}, wantRes: map[uint64]bool{1: true}},
		{name: "cas on the expected value", cmds: []command{{ID: 1, Op: opPut, Key: "a", Value: "x"}, {ID: 2, Op: opCAS, Key: "a", Expect: "x", Value: "y"}},
			wantKV: map[string]string{"a": "y"}, wantRes: map[uint64]bool{1: true, 2: true}},
		{name: "cas on another value", cmds: []command{{ID: 1, Op: opPut, Key: "a", Value: "x"}, {ID: 2, Op: opCAS, Key: "a", Expect: "z", Value: "y"}},
			wantKV: map[string]string{"a": "x"}, wantRes: map[uint64]bool{1: true, 2: false}},
		{name: "cas on an absent key expecting empty", cmds: []command{{ID: 3, Op: opCAS, Key: "b", Value: "y"}},
			wantKV: map[string]string{"b": "y"}, wantRes: map[uint64]bool{3: true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newKVState()
			for i, c := range tc.cmds {
				s.apply(entry(t, uint64(i+1), c))
			}
			if !reflect.DeepEqual(s.KV, tc.wantKV) || !reflect.DeepEqual(s.Results, tc.wantRes) {
				t.Errorf("got %v %v, want %v %v", s.KV, s.Results, tc.wantKV, tc.wantRes)
			}
			data, err := s.encode()
			if err != nil {
				t.Fatal(err)
			}
			back, err := decodeKVState(data)
			if err != nil {
				t.Fatal(err)
			}
			if d := s.diff(back); d != "" {
				t.Errorf("a snapshot's state differs once decoded: %s", d)
			}
		})
	}
}

func TestKVStateDiff(t *testing.T) {
	a, b := newKVState(), newKVState()
	a.apply(entry(t, 1, command{ID: 1, Op: opPut, Key: "a", Value: "x"}))
	b.apply(entry(t, 1, command{ID: 1, Op: opPut, Key: "a", Value: "y"}))
	if a.diff(b) == "" {
		t.Error("states that applied different entries compare equal")
	}
	c := newKVState()
	c.apply(&raftpb.Entry{Index: proto.Uint64(1), Term: proto.Uint64(1), Type: raftpb.EntryNormal.Enum(), Data: []byte("{not json")})
	if c.Undecodable != 1 {
		t.Errorf("undecodable entries: got %d, want 1", c.Undecodable)
	}
}

func TestMessageHash(t *testing.T) {
	a := newAccounting()
	base := func() *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MsgApp.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Term: proto.Uint64(3),
			Index: proto.Uint64(9), LogTerm: proto.Uint64(3), Commit: proto.Uint64(8),
			Entries: []*raftpb.Entry{{Index: proto.Uint64(10), Term: proto.Uint64(3), Data: []byte("x")}}}
	}
	tests := []struct {
		name   string
		change func(m *raftpb.Message)
		same   bool
	}{
		{name: "a copy", change: func(*raftpb.Message) {}, same: true},
		{name: "a zero field set rather than absent", change: func(m *raftpb.Message) { m.Reject = proto.Bool(false); m.Vote = proto.Uint64(0) }, same: true},
		{name: "another commit", change: func(m *raftpb.Message) { m.Commit = proto.Uint64(9) }},
		{name: "another sender", change: func(m *raftpb.Message) { m.From = proto.Uint64(3) }},
		{name: "an entry's data", change: func(m *raftpb.Message) { m.Entries[0].Data = []byte("y") }},
		{name: "an entry's term", change: func(m *raftpb.Message) { m.Entries[0].Term = proto.Uint64(2) }},
		{name: "one entry more", change: func(m *raftpb.Message) {
			m.Entries = append(m.Entries, &raftpb.Entry{Index: proto.Uint64(11), Term: proto.Uint64(3)})
		}},
		{name: "a snapshot", change: func(m *raftpb.Message) {
			m.Snapshot = &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(5)}}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := base()
			tc.change(m)
			if same := a.hash(m) == a.hash(base()); same != tc.same {
				t.Errorf("same hash: got %v, want %v", same, tc.same)
			}
		})
	}
}

func TestExtraDeliveries(t *testing.T) {
	msg := func(commit uint64) *raftpb.Message {
		return &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: proto.Uint64(1), To: proto.Uint64(2), Commit: proto.Uint64(commit)}
	}
	tests := []struct {
		name      string
		sent      []*raftpb.Message
		processed []*raftpb.Message
		want      int
	}{
		{name: "all delivered", sent: []*raftpb.Message{msg(1), msg(2)}, processed: []*raftpb.Message{msg(1), msg(2)}},
		{name: "one lost", sent: []*raftpb.Message{msg(1), msg(2)}, processed: []*raftpb.Message{msg(2)}},
		{name: "the same content sent twice, delivered twice", sent: []*raftpb.Message{msg(1), msg(1)}, processed: []*raftpb.Message{msg(1), msg(1)}},
		{name: "one delivered twice", sent: []*raftpb.Message{msg(1), msg(2)}, processed: []*raftpb.Message{msg(1), msg(1), msg(2)}, want: 1},
		{name: "one never sent", sent: []*raftpb.Message{msg(1)}, processed: []*raftpb.Message{msg(1), msg(7)}, want: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			a := newAccounting()
			a.sent(tc.sent)
			for _, m := range tc.processed {
				a.processed(m.GetTo(), m)
			}
			if got := a.extraDeliveries(); len(got) != tc.want {
				t.Errorf("got %d extra deliveries %v, want %d", len(got), got, tc.want)
			}
		})
	}
}

func TestPlanFaults(t *testing.T) {
	const chaos = 30 * time.Second
	a, b := planFaults(7, 5, chaos), planFaults(7, 5, chaos)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("the same seed planned two schedules")
	}
	if reflect.DeepEqual(a, planFaults(8, 5, chaos)) {
		t.Error("seeds 7 and 8 planned the same schedule")
	}
	var total time.Duration
	for i, s := range a {
		total += s.Gap + s.Hold
		if !slices.Contains(faultKinds, s.Kind) {
			t.Errorf("step %d: unknown kind %q", i, s.Kind)
		}
		if s.Size < 1 || s.Size > 5 {
			t.Errorf("step %d: hits %d of 5 members", i, s.Size)
		}
		if (s.Kind == faultPartition || s.Kind == faultOneWay || s.Kind == faultRestart) && s.Size > 2 {
			t.Errorf("step %d: %s of %d members, more than a minority of 5", i, s.Kind, s.Size)
		}
	}
	if total > chaos || total < chaos/2 {
		t.Errorf("the schedule lasts %v, want at most %v and at least half of it", total, chaos)
	}
	seen := map[faultKind]bool{}
	for seed := range int64(10) {
		for _, s := range planFaults(seed, 3, chaos) {
			seen[s.Kind] = true
		}
	}
	for _, k := range faultKinds {
		if !seen[k] {
			t.Errorf("no schedule of seeds 0-9 has a %s step", k)
		}
	}
}
