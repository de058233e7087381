package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
)

// opTimeout is how long a client waits for an operation; a write that
// takes longer has an unknown outcome.
const opTimeout = 2 * time.Second

// ackedWrite is a write whose outcome a client learnt: it must be applied,
// with that outcome, by every member.
type ackedWrite struct {
	ID  uint64
	OK  bool
	Key string
}

// opCounts counts a run's operations by kind and outcome.
type opCounts struct {
	Gets, Puts, CASes int
	// Unknown counts the writes whose outcome the client never learnt.
	Unknown int
	// FailedReads counts the gets that got no answer; they are left out of
	// the history, since a read changes nothing.
	FailedReads int
}

// history records the clients' operations with their invocation and
// return times, as porcupine reads them.
type history struct {
	start time.Time

	mu       sync.Mutex
	ops      []porcupine.Operation
	unknown  []int // indexes in ops of the writes of unknown outcome
	acked    []ackedWrite
	counts   opCounts
	clientID int // the next porcupine client ID
}

func newHistory() *history { return &history{start: time.Now()} }

// now is a timestamp of the history: nanoseconds since it started, on the
// monotonic clock.
func (h *history) now() int64 { return int64(time.Since(h.start)) }

// newClient returns a client ID for the visualization. A client whose
// operation had an unknown outcome takes a new one, since the operation
// stays open to the end of the history.
func (h *history) newClient() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clientID++
	return h.clientID - 1
}

// add records an operation. A write of unknown outcome gets its return
// time when the history is closed.
func (h *history) add(op porcupine.Operation) {
	h.mu.Lock()
	defer h.mu.Unlock()
	in, out := op.Input.(kvInput), op.Output.(kvOutput)
	switch in.Op {
	case opGet:
		h.counts.Gets++
	case opPut:
		h.counts.Puts++
	case opCAS:
		h.counts.CASes++
	}
	if out.Unknown {
		h.counts.Unknown++
		h.unknown = append(h.unknown, len(h.ops))
	} else if in.Op != opGet {
		h.acked = append(h.acked, ackedWrite{ID: op.Metadata.(opMeta).ID, OK: in.Op == opPut || out.OK, Key: in.Key})
	}
	h.ops = append(h.ops, op)
}

func (h *history) failedRead() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.counts.FailedReads++
}

// close ends the history: the writes of unknown outcome return at its end,
// as if they could have taken effect at any time after their call.
func (h *history) close() []porcupine.Operation {
	end := h.now()
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, i := range h.unknown {
		h.ops[i].Return = end
	}
	h.unknown = nil
	return append([]porcupine.Operation(nil), h.ops...)
}

// runClient issues operations on random keys through random members until
// ctx ends: 40% gets, 35% puts (of a value no one else writes) and 25%
// compare-and-swaps (expecting the value the client last saw).
func (c *cluster) runClient(ctx context.Context, h *history, idx int, rng *rand.Rand) {
	cid := h.newClient()
	var seq uint64
	seen := map[string]string{}
	for ctx.Err() == nil {
		n := c.pick(rng)
		if n == nil {
			sleepCtx(ctx, 50*time.Millisecond) // every member is down: a restart is under way
			continue
		}
		key := fmt.Sprintf("k%d", rng.IntN(c.cfg.Keys))
		r := rng.IntN(100)
		opCtx, cancel := context.WithTimeout(ctx, opTimeout)
		call := h.now()
		if r < 40 {
			v, err := n.read(opCtx, key)
			ret := h.now()
			cancel()
			if err != nil {
				h.failedRead()
				continue
			}
			seen[key] = v
			h.add(porcupine.Operation{ClientId: cid, Input: kvInput{Op: opGet, Key: key}, Call: call,
				Output: kvOutput{Value: v}, Return: ret, Metadata: opMeta{Member: n.id}})
			continue
		}
		seq++
		cmd := command{ID: uint64(idx+1)<<40 | seq, Op: opPut, Key: key, Value: fmt.Sprintf("c%d.%d", idx, seq)}
		if r >= 75 {
			cmd.Op, cmd.Expect = opCAS, seen[key]
		}
		ok, err := n.propose(opCtx, cmd)
		ret := h.now()
		cancel()
		in := kvInput{Op: cmd.Op, Key: key, Value: cmd.Value, Expect: cmd.Expect}
		meta := opMeta{Member: n.id, ID: cmd.ID}
		if err != nil {
			meta.Err = err.Error()
			h.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: kvOutput{Unknown: true}, Metadata: meta})
			cid = h.newClient()
			continue
		}
		if cmd.Op == opPut || ok {
			seen[key] = cmd.Value
		}
		h.add(porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: kvOutput{OK: ok}, Return: ret, Metadata: meta})
	}
}
