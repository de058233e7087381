package rafthttp

import (
	"bytes"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"
)

// chunkedSource yields data in reads of at most step bytes, then err (io.EOF
// if nil).
type chunkedSource struct {
	data []byte
	step int
	err  error
}

func (s *chunkedSource) Read(p []byte) (int, error) {
	if len(s.data) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), s.step)], s.data)
	s.data = s.data[n:]
	return n, nil
}

func TestReadAhead(t *testing.T) {
	payload := snapBytes(3, 10_000)
	boom := errors.New("boom")
	tests := []struct {
		name    string
		size    int // bytes
		step    int
		srcErr  error // after the data; nil: io.EOF
		wantErr error // from Read/WriteTo after the data; nil: a clean end
	}{
		{name: "empty", size: 0, step: 7},
		{name: "less than a buffer", size: 100, step: 7},
		{name: "exactly one buffer", size: 1024, step: 100},
		{name: "many buffers", size: 10_000, step: 333},
		{name: "source error after data", size: 5000, step: 700, srcErr: boom, wantErr: boom},
		{name: "a truncated source stays an error", size: 3000, step: 512, srcErr: io.ErrUnexpectedEOF, wantErr: io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		for _, how := range []string{"Read", "WriteTo"} {
			t.Run(tt.name+"/"+how, func(t *testing.T) {
				src := &chunkedSource{data: payload[:tt.size], step: tt.step, err: tt.srcErr}
				var aborted atomic.Bool
				ra := newReadAhead(src, 1024, 3, nil, func() { aborted.Store(true) })
				defer ra.stop()
				var got bytes.Buffer
				var err error
				if how == "Read" {
					_, err = io.CopyBuffer(&got, struct{ io.Reader }{ra}, make([]byte, 97))
				} else {
					_, err = ra.WriteTo(&got)
				}
				if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
					t.Fatalf("error %v, want %v", err, tt.wantErr)
				}
				if !bytes.Equal(got.Bytes(), payload[:tt.size]) {
					t.Fatalf("got %d bytes, want the %d of the source, in order", got.Len(), tt.size)
				}
				ra.stop()
				if aborted.Load() {
					t.Error("abort called although the source was read to its end")
				}
			})
		}
	}
}

// blockingSource yields some data, then blocks until unblocked.
type blockingSource struct {
	data    []byte
	unblock chan struct{}
	once    sync.Once
}

func (s *blockingSource) Read(p []byte) (int, error) {
	if len(s.data) > 0 {
		n := copy(p, s.data)
		s.data = s.data[n:]
		return n, nil
	}
	<-s.unblock
	return 0, errors.New("unblocked")
}

func (s *blockingSource) abort() { s.once.Do(func() { close(s.unblock) }) }

func TestReadAheadStop(t *testing.T) {
	tests := []struct {
		name string
		read int // bytes the consumer reads before stopping
	}{
		{"before reading", 0},
		{"in the middle", 1500},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := &blockingSource{data: snapBytes(5, 3000), unblock: make(chan struct{})}
			var aborts atomic.Int32
			ra := newReadAhead(src, 1024, 2, nil, func() { aborts.Add(1); src.abort() })
			if tt.read > 0 {
				if _, err := io.ReadFull(ra, make([]byte, tt.read)); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan struct{})
			go func() {
				ra.stop()
				ra.stop() // idempotent
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("stop did not return while the source blocked")
			}
			if n := aborts.Load(); n != 1 {
				t.Errorf("abort called %d times, want 1", n)
			}
			// What is left reads as the end, with an error, never blocking.
			if _, err := io.Copy(io.Discard, ra); err == nil {
				t.Error("reading after stop ended cleanly, want an error")
			}
		})
	}
}

// TestReadAheadStopWhileReading stops the read-ahead from another goroutine
// while the consumer waits for data (as the snapshot sender's watchdog
// does); the consumer must get an error and the race detector nothing.
func TestReadAheadStopWhileReading(t *testing.T) {
	src := &blockingSource{unblock: make(chan struct{})}
	ra := newReadAhead(src, 1024, 2, nil, src.abort)
	errc := make(chan error, 1)
	go func() {
		_, err := ra.Read(make([]byte, 10))
		errc <- err
	}()
	ra.stop()
	select {
	case err := <-errc:
		if err == nil {
			t.Error("Read returned no error after stop")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Read still blocked after stop")
	}
}

func TestReadAheadOneByteReads(t *testing.T) {
	payload := snapBytes(7, 5000)
	ra := newReadAhead(iotest.OneByteReader(bytes.NewReader(payload)), 512, 2, nil, func() {})
	defer ra.stop()
	got, err := io.ReadAll(iotest.OneByteReader(ra))
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("got %d bytes, %v; want the %d of the source", len(got), err, len(payload))
	}
}

// TestReadAheadRecycle: a read-ahead given a pool takes its buffers from
// it and, recycled once its consumer is done, gives back every buffer it
// used, which the next read-ahead given the pool reuses instead of making
// new ones (a bufStash: what a kept partial payload holds for the receive
// that resumes it); the bytes read are unaffected.
func TestReadAheadRecycle(t *testing.T) {
	const size, depth = 512, 3
	stash := &bufStash{fallback: &sync.Pool{}}
	payload := snapBytes(8, 10*size)
	read := func() *readAhead {
		ra := newReadAhead(bytes.NewReader(payload), size, depth, stash, func() {})
		got, err := io.ReadAll(ra)
		if err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("got %d bytes, %v; want the %d of the source", len(got), err, len(payload))
		}
		return ra
	}
	first := read()
	used := map[*[]byte]bool{}
	for _, b := range first.made {
		used[b] = true
	}
	if n := len(first.made); n == 0 || n > depth {
		t.Fatalf("the first read-ahead used %d buffers, want 1 to %d", n, depth)
	}
	first.recycle()
	if first.made != nil || first.buf != nil {
		t.Error("recycle left buffers referenced by the read-ahead")
	}
	if len(stash.bufs) != len(used) {
		t.Fatalf("the stash holds %d buffers after recycle, want the %d used", len(stash.bufs), len(used))
	}
	second := read()
	defer second.recycle()
	reused := 0
	for _, b := range second.made {
		if used[b] {
			reused++
		}
		if len(*b) != size {
			t.Errorf("a buffer of %d bytes, want %d", len(*b), size)
		}
	}
	if want := min(len(second.made), len(used)); reused != want {
		t.Errorf("the second read-ahead reused %d of the first's %d buffers (it used %d), want %d",
			reused, len(used), len(second.made), want)
	}
}
