package rafthttp

import (
	"errors"
	"io"
	"sync"
)

// readAhead reads its source in a goroutine of its own, up to depth
// buffers ahead of its consumer, so that receiving a snapshot from the
// network and writing it to disk overlap instead of taking turns (figures
// in compat/BENCHMARKS.md, "Where the gaps come from").
//
// The goroutine is owned by whoever calls newReadAhead, which must call
// stop: stop ends the goroutine, calling abort to unblock a read in
// progress if it has not reached the end of its source, and waits for it.
// stop may run while the consumer reads (from another goroutine); Read and
// WriteTo are for one consumer.
type readAhead struct {
	full     chan []byte   // buffers read, in order; closed after the last
	free     chan []byte   // buffers the consumer is done with
	done     chan struct{} // closed by stop
	exited   chan struct{} // closed when run returns, before full
	wg       sync.WaitGroup
	abort    func()
	stopOnce sync.Once

	err error  // why the source ended; set before full is closed
	buf []byte // the buffer being consumed, to give back
	cur []byte // its unread part

	pool bufferPool // where buffers come from and go back to (recycle); nil: made afresh
	made []*[]byte  // the buffers run made or took, for recycle; run's until it ends
}

// bufferPool is where a read-ahead takes its buffers (*[]byte) from and
// gives them back to: a sync.Pool, or a bufStash.
type bufferPool interface {
	Get() any
	Put(any)
}

// bufStash is a bufferPool that serves the buffers it holds first, then
// those of its fallback, and keeps what it is given. It is for one user at
// a time.
type bufStash struct {
	bufs     []*[]byte
	fallback bufferPool
}

func (s *bufStash) Get() any {
	if n := len(s.bufs); n > 0 {
		b := s.bufs[n-1]
		s.bufs = s.bufs[:n-1]
		return b
	}
	return s.fallback.Get()
}

func (s *bufStash) Put(b any) { s.bufs = append(s.bufs, b.(*[]byte)) }

// release gives what the stash holds to its fallback.
func (s *bufStash) release() {
	for _, b := range s.bufs {
		s.fallback.Put(b)
	}
	s.bufs = nil
}

// snapReadAheadPool holds the buffers of snapshot read-aheads between
// receives: a transfer resumed after a break, or the next snapshot, reuses
// them instead of making 2 MiB of garbage each time; the runtime frees
// what stays unused.
var snapReadAheadPool sync.Pool

// recycle gives the buffers back to the pool the read-ahead was given.
// Call it after stop, once the consumer is done with the read-ahead and
// holds none of its bytes (a Write that WriteTo made has returned, as
// io.Writer requires): nothing may read it again.
func (ra *readAhead) recycle() {
	ra.stop()
	if ra.pool == nil {
		return
	}
	for _, b := range ra.made {
		ra.pool.Put(b)
	}
	ra.made, ra.buf, ra.cur = nil, nil, nil
}

// errReadAheadStopped is what the goroutine ends with when stopped before
// the end of its source.
var errReadAheadStopped = errors.New("rafthttp: read-ahead stopped")

// newReadAhead starts reading src ahead, in buffers of size bytes, up to
// depth of them, taken from pool if not nil (they must all be of size
// bytes) and given back by recycle.
func newReadAhead(src io.Reader, size, depth int, pool bufferPool, abort func()) *readAhead {
	ra := &readAhead{
		full:   make(chan []byte, depth),
		free:   make(chan []byte, depth),
		done:   make(chan struct{}),
		exited: make(chan struct{}),
		abort:  abort,
		pool:   pool,
	}
	ra.wg.Go(func() { ra.run(src, size, depth) })
	return ra
}

// run fills buffers from src and queues them, until src ends or fails, or
// stop is called. It makes the buffers as it needs them, up to depth, so
// that a small payload costs one.
func (ra *readAhead) run(src io.Reader, size, depth int) {
	defer close(ra.full)
	defer close(ra.exited)
	made := 0
	for {
		var b []byte
		select {
		case b = <-ra.free:
		case <-ra.done:
			ra.err = errReadAheadStopped
			return
		default:
			if made < depth {
				made++
				b = ra.newBuffer(size)
				break
			}
			select {
			case b = <-ra.free:
			case <-ra.done:
				ra.err = errReadAheadStopped
				return
			}
		}
		// Whole buffers: fewer, larger writes for the consumer. Not
		// io.ReadFull, which would turn a source's own ErrUnexpectedEOF
		// (a truncated body) into a short buffer and then EOF.
		n, err := fill(src, b)
		if n > 0 {
			ra.full <- b[:n] // never blocks: full has room for every buffer
		}
		if err != nil {
			ra.err = err // io.EOF at the end
			return
		}
	}
}

// newBuffer takes a buffer from the pool, or makes one.
func (ra *readAhead) newBuffer(size int) []byte {
	var bp *[]byte
	if ra.pool != nil {
		bp, _ = ra.pool.Get().(*[]byte)
	}
	if bp == nil {
		b := make([]byte, size)
		bp = &b
	}
	ra.made = append(ra.made, bp)
	return *bp
}

// fill reads src into b until b is full or src fails or ends; it returns
// src's error as is.
func fill(src io.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := src.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// next makes the next buffer current, giving the previous one back. It
// reports false at the end, ra.err saying why.
func (ra *readAhead) next() bool {
	if ra.buf != nil {
		ra.free <- ra.buf[:cap(ra.buf)] // never blocks: free has room for every buffer
		ra.buf, ra.cur = nil, nil
	}
	b, ok := <-ra.full // closed after the last: answers at once from then on
	if !ok {
		return false
	}
	ra.buf, ra.cur = b, b
	return true
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for len(ra.cur) == 0 {
		if !ra.next() {
			return 0, ra.err
		}
	}
	n := copy(p, ra.cur)
	ra.cur = ra.cur[n:]
	return n, nil
}

// WriteTo writes what is left to w straight from the buffers, sparing the
// copy io.Copy would make through its own.
func (ra *readAhead) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for len(ra.cur) > 0 || ra.next() {
		// Let the reading goroutine, which this one may just have
		// woken, run before a write that can block in the kernel.
		yieldBeforeStoreWrite()
		n, err := w.Write(ra.cur)
		total += int64(n)
		ra.cur = ra.cur[n:]
		if err != nil {
			return total, err
		}
	}
	if ra.err == io.EOF {
		return total, nil
	}
	return total, ra.err
}

// stop ends the goroutine and waits for it. If the goroutine has not
// reached the end of its source, it may be blocked in a read: abort
// unblocks it. Idempotent.
func (ra *readAhead) stop() {
	ra.stopOnce.Do(func() {
		close(ra.done)
		select {
		case <-ra.exited:
		default:
			ra.abort()
		}
	})
	ra.wg.Wait()
}
