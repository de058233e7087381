package robustness

import (
	"fmt"
	"slices"

	"github.com/anishathalye/porcupine"
)

// kvInput is an operation as a client invoked it.
type kvInput struct {
	Op     string `json:"op"`
	Key    string `json:"key"`
	Value  string `json:"value,omitempty"`  // put, cas: the value written
	Expect string `json:"expect,omitempty"` // cas: the value expected
}

// kvOutput is what the client got back. Unknown is a write whose outcome
// the client never learnt (it timed out, or its member stopped): it may
// have been applied, or not, at any time after its call.
type kvOutput struct {
	Value   string `json:"value,omitempty"` // get: the value read
	OK      bool   `json:"ok,omitempty"`    // cas: whether it swapped
	Unknown bool   `json:"unknown,omitempty"`
}

// opMeta is what the history keeps of an operation beyond the model's
// input and output: which member served it and the request's ID.
type opMeta struct {
	Member uint64 `json:"member"`
	ID     uint64 `json:"id,omitempty"`
	Err    string `json:"err,omitempty"`
}

// kvModel is the sequential specification of the store, partitioned by
// key: a key is a register that starts empty, written by put and by a
// successful cas.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range history {
			k := op.Input.(kvInput).Key
			byKey[k] = append(byKey[k], op)
		}
		keys := make([]string, 0, len(byKey))
		for k := range byKey {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(kvInput), output.(kvOutput)
		switch in.Op {
		case opGet:
			return out.Unknown || out.Value == st, st
		case opPut:
			return true, in.Value
		case opCAS:
			swaps := st == in.Expect
			if !out.Unknown && out.OK != swaps {
				return false, st
			}
			if swaps {
				return true, in.Value
			}
			return true, st
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		var res string
		switch {
		case out.Unknown:
			res = "unknown"
		case in.Op == opGet:
			res = fmt.Sprintf("%q", out.Value)
		case in.Op == opCAS:
			res = fmt.Sprint(out.OK)
		default:
			res = "ok"
		}
		switch in.Op {
		case opGet:
			return fmt.Sprintf("get(%s) -> %s", in.Key, res)
		case opPut:
			return fmt.Sprintf("put(%s, %q) -> %s", in.Key, in.Value, res)
		}
		return fmt.Sprintf("cas(%s, %q, %q) -> %s", in.Key, in.Expect, in.Value, res)
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state.(string)) },
	DescribeOperationMetadata: func(info any) string {
		m, ok := info.(opMeta)
		if !ok {
			return ""
		}
		s := fmt.Sprintf("member %d", m.Member)
		if m.ID != 0 {
			s += fmt.Sprintf(", request %#x", m.ID)
		}
		if m.Err != "" {
			s += ", " + m.Err
		}
		return s
	},
}
