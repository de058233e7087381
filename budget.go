package rafthttp

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// The receive budget bounds the bytes that received messages hold at once,
// Transport-wide: a message is charged its wire bytes plus what decoding it
// allocates (raftproto's cost), from before that is allocated until
// Raft.Process has returned for it (or it is dropped). Where the charge
// happens:
//
//   - pipeline and snapshot envelope bodies: their length, as soon as it is
//     known and before it is allocated (a request waits up to budgetWait for
//     room, then gets 503); then the decode's cost, or 503 at once;
//   - stream frames: wire bytes and cost together, once the frame is read and
//     validated and before it is decoded; the reader waits for room, so the
//     stream stops being read and TCP pushes back on the sender.
//
// Small messages (wire bytes plus cost at most smallMessageBytes: heartbeats,
// votes, one-entry appends) are not charged: their queues bound them by count
// (RecvQueueSize, PropQueueSize), and the hot path stays free of the
// budget's lock.
type recvBudget struct {
	max int64

	mu   sync.Mutex
	used int64
	wake chan struct{} // closed when bytes are released; nil when nobody waits
}

const (
	// smallMessageBytes is the charge below which a message is not
	// charged (see recvBudget).
	smallMessageBytes = 1 << 10
	// budgetWait is how long a request may wait for room in the budget
	// before it is answered 503: long enough to ride out a burst, short
	// enough to free the sender's pipeline worker.
	budgetWait = time.Second
)

// errBudgetFull refuses a request while the receive budget has no room: the
// sender gets 503 and raft retries later.
var errBudgetFull = errors.New("rafthttp: receive budget exhausted")

func newRecvBudget(max int64) *recvBudget { return &recvBudget{max: max} }

// tooLarge is the error for a charge that cannot fit the budget even alone.
func (b *recvBudget) tooLarge(n int64) error {
	return fmt.Errorf("message holding %d bytes, receive budget %d: %w", n, b.max, ErrExceedSizeLimit)
}

// tryAcquire charges n bytes if they fit now.
func (b *recvBudget) tryAcquire(n int64) error {
	if n > b.max {
		return b.tooLarge(n)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n > b.max {
		return errBudgetFull
	}
	b.used += n
	return nil
}

// acquire charges n bytes, waiting for room until ctx ends.
func (b *recvBudget) acquire(ctx context.Context, n int64) error {
	if n > b.max {
		return b.tooLarge(n)
	}
	for {
		b.mu.Lock()
		if b.used+n <= b.max {
			b.used += n
			b.mu.Unlock()
			return nil
		}
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		wake := b.wake
		b.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// acquireBrief is acquire for a request handler: it waits at most
// budgetWait, then answers errBudgetFull.
func (b *recvBudget) acquireBrief(ctx context.Context, n int64) error {
	ctx, cancel := context.WithTimeout(ctx, budgetWait)
	defer cancel()
	err := b.acquire(ctx, n)
	if errors.Is(err, context.DeadlineExceeded) {
		return errBudgetFull
	}
	return err
}

// release returns n charged bytes and wakes whoever waits for room.
func (b *recvBudget) release(n int64) {
	if n == 0 {
		return // uncharged small messages: no lock
	}
	b.mu.Lock()
	b.used -= n
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
	b.mu.Unlock()
}

// inUse returns the bytes charged now.
func (b *recvBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// recvCharger charges the messages one reader decodes (a stream's decoder, a
// request handler) to the budget, as a raftproto.Charger. Its zero value,
// with no budget, charges nothing. A reader calls prepay when it knows the
// length of a body, before allocating it; the decoder then calls Charge with
// the decode's cost; charged hands what the message holds to whoever
// releases it, and refund releases it on a failure.
type recvCharger struct {
	budget *recvBudget
	ctx    context.Context
	// wait: streams wait for room; handlers wait briefly for their body and
	// not at all for its decode, rather than wait holding the body.
	wait bool
	wire int64 // wire bytes read for the message and not charged yet
	held int64 // what the message under way has charged
}

var _ raftproto.Charger = (*recvCharger)(nil)

// prepay charges a body of n bytes before it is allocated, if the reader
// does not wait for room (a handler): such readers are as many as the
// requests that arrive, and each must hold the budget for what it reads.
// Streams (one reader per peer and type) charge a frame with its decode.
func (c *recvCharger) prepay(n int64) error {
	c.wire, c.held = n, 0
	if c.budget == nil || c.wait || n <= smallMessageBytes {
		return nil
	}
	if err := c.budget.acquireBrief(c.ctx, n); err != nil {
		return err
	}
	c.wire, c.held = 0, n
	return nil
}

// prepayMore charges n more bytes of a body of unknown length before they
// are allocated, waiting briefly for room.
func (c *recvCharger) prepayMore(n int64) error {
	if c.budget == nil {
		return nil
	}
	if err := c.budget.acquireBrief(c.ctx, n); err != nil {
		return err
	}
	c.held += n
	return nil
}

// unpay releases n of the bytes the message under way holds, once they are
// no longer allocated.
func (c *recvCharger) unpay(n int64) {
	if c.budget == nil || n <= 0 {
		return
	}
	c.held -= n
	c.budget.release(n)
}

// fits refuses, before anything is read or allocated for it, a message
// that would hold at least n bytes if n can never fit the budget.
func (c *recvCharger) fits(n uint64) error {
	if c.budget != nil && n > uint64(c.budget.max) {
		return c.budget.tooLarge(int64(min(n, 1<<62)))
	}
	return nil
}

// Charge charges the decode of the message under way: cost bytes, and its
// wire bytes if prepay did not.
func (c *recvCharger) Charge(cost int) error {
	n := c.wire + int64(cost)
	c.wire = 0
	if c.budget == nil || (c.held == 0 && n <= smallMessageBytes) {
		return nil
	}
	var err error
	switch {
	case c.held+n > c.budget.max:
		err = c.budget.tooLarge(c.held + n)
	case c.wait:
		err = c.budget.acquire(c.ctx, n)
	default:
		err = c.budget.tryAcquire(n)
	}
	if err != nil {
		return err
	}
	c.held += n
	return nil
}

// charged returns what the message under way holds, and forgets it: the
// caller owes it back to the budget when the message is done with.
func (c *recvCharger) charged() int64 {
	n := c.held
	c.held = 0
	return n
}

// refund releases what the message under way holds, after a failure.
func (c *recvCharger) refund() {
	if n := c.charged(); n > 0 {
		c.budget.release(n)
	}
}
