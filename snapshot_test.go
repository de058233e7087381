package rafthttp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/goleak"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/protobuf/proto"
)

// Acceptance tests of the snapshot path (SendSnapshot, serveSnapshot,
// DirSnapshotStore): integrity, durability, failures, throttling and limits.
// Helpers are prefixed with snap so that they stay clear of other test files.

// snapCRCTable is CRC-32C (Castagnoli), computed independently of the code
// under test.
var snapCRCTable = crc32.MakeTable(crc32.Castagnoli)

// snapGen is a deterministic pseudo-random payload of a fixed size, made on
// the fly so that a payload of any size costs no memory: the AES-CTR
// keystream of a key derived from the seed. (A Go xorshift loop would do as
// well, but under -race it makes ~100 MB/s; the keystream runs in assembly,
// so the 1 GiB test measures the transport, not the generator.) The byte
// stream does not depend on how it is read. crc is the CRC-32C of what was
// read so far.
type snapGen struct {
	stream cipher.Stream
	left   int64
	crc    uint32
}

func newSnapGen(seed uint64, size int64) *snapGen {
	var key, iv [16]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	block, err := aes.NewCipher(key[:])
	if err != nil {
		panic(err)
	}
	return &snapGen{stream: cipher.NewCTR(block, iv[:]), left: size}
}

func (g *snapGen) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > g.left {
		p = p[:g.left]
	}
	clear(p)
	g.stream.XORKeyStream(p, p)
	g.left -= int64(len(p))
	g.crc = crc32.Update(g.crc, snapCRCTable, p)
	return len(p), nil
}

func (g *snapGen) Close() error { return nil }

// snapBytes returns the first size bytes of the generator with seed.
func snapBytes(seed uint64, size int) []byte {
	b := make([]byte, size)
	if _, err := io.ReadFull(newSnapGen(seed, int64(size)), b); err != nil {
		panic(err)
	}
	return b
}

var errSnapGateClosed = errors.New("snapGate: closed")

// snapGate passes limit bytes of r, then blocks until released or closed
// (Close unblocks a pending Read, which then fails). It is closed at the end
// of the test at the latest, so no transfer can outlive the test.
type snapGate struct {
	r     io.Reader
	limit int64
	n     int64 // only the reading goroutine touches it

	reached, released, closed         chan struct{}
	reachOnce, releaseOnce, closeOnce sync.Once
}

func newSnapGate(t testing.TB, r io.Reader, limit int64) *snapGate {
	g := &snapGate{r: r, limit: limit, reached: make(chan struct{}), released: make(chan struct{}), closed: make(chan struct{})}
	t.Cleanup(func() { g.Close() })
	return g
}

func (g *snapGate) Read(p []byte) (int, error) {
	select {
	case <-g.closed:
		return 0, errSnapGateClosed
	default:
	}
	select {
	case <-g.released:
	default:
		if g.n >= g.limit {
			g.reachOnce.Do(func() { close(g.reached) })
			select {
			case <-g.released:
			case <-g.closed:
				return 0, errSnapGateClosed
			}
		} else if rem := g.limit - g.n; int64(len(p)) > rem {
			p = p[:rem]
		}
	}
	n, err := g.r.Read(p)
	g.n += int64(n)
	return n, err
}

func (g *snapGate) Close() error {
	g.closeOnce.Do(func() { close(g.closed) })
	return nil
}

func (g *snapGate) release() { g.releaseOnce.Do(func() { close(g.released) }) }

func (g *snapGate) isClosed() bool {
	select {
	case <-g.closed:
		return true
	default:
		return false
	}
}

// waitReached waits until the gate has passed its limit and blocks.
func (g *snapGate) waitReached(t testing.TB) {
	t.Helper()
	receive(t, g.reached, 10*time.Second, "the payload to reach its gate")
}

// snapProbe wraps a SnapshotStore and reports each SaveSnapshot: its start
// and its outcome. A received snapshot is only processed after its save, so
// a save's outcome tells whether raft can have seen it.
type snapProbe struct {
	inner   SnapshotStore
	started chan *raftpb.Message
	results chan error
}

func newSnapProbe(inner SnapshotStore) *snapProbe {
	return &snapProbe{inner: inner, started: make(chan *raftpb.Message, 16), results: make(chan error, 16)}
}

func (s *snapProbe) SaveSnapshot(ctx context.Context, m *raftpb.Message, r io.Reader) error {
	s.started <- m
	err := s.inner.SaveSnapshot(ctx, m, r)
	s.results <- err
	return err
}

func (s *snapProbe) waitStarted(t testing.TB) *raftpb.Message {
	t.Helper()
	return receive(t, s.started, 10*time.Second, "the receiver to start saving a snapshot")
}

func (s *snapProbe) waitResult(t testing.TB) error {
	t.Helper()
	return receive(t, s.results, 10*time.Second, "the receiver's save to end")
}

// snapFailAfter fails with err once n bytes have been read from r.
type snapFailAfter struct {
	r   io.Reader
	n   int64
	err error
}

func (f *snapFailAfter) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, f.err
	}
	if int64(len(p)) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= int64(n)
	return n, err
}

// snapBrokenStore is a DirSnapshotStore whose disk fails after `after`
// payload bytes: it reads part of the payload, then returns errSnapDiskFull.
type snapBrokenStore struct {
	dir   DirSnapshotStore
	after int64
}

var errSnapDiskFull = errors.New("test store: disk full")

func (s snapBrokenStore) SaveSnapshot(ctx context.Context, m *raftpb.Message, r io.Reader) error {
	return s.dir.SaveSnapshot(ctx, m, &snapFailAfter{r: r, n: s.after, err: errSnapDiskFull})
}

// snapSend sends the snapshot at index from a to the member to.
func snapSend(a *testNode, to, index uint64, payload io.ReadCloser, size int64) <-chan error {
	return a.tr.SendSnapshot(SnapshotMessage{Message: newMsg(raftpb.MsgSnap, a.tr.ID, to, index), Payload: payload, PayloadSize: size})
}

// snapWait waits for the outcome of a SendSnapshot.
func snapWait(t testing.TB, errc <-chan error) error {
	t.Helper()
	return receive(t, errc, 20*time.Second, "the outcome of SendSnapshot")
}

// snapWaitRecvFailed waits until the receiver's snapshot handler has failed
// `count` times in total and no receive is in flight: the handler returned.
func snapWaitRecvFailed(t testing.TB, n *testNode, count float64) {
	t.Helper()
	waitFor(t, "the receiver's snapshot handler to fail and return", func() bool {
		return metricValue(t, gathered(t, n.tr.metrics.snapRecvFailures), "", nil) >= count && metricValue(t, gathered(t, n.tr.metrics.snapRecvInflight), "", nil) == 0
	})
}

// snapDirFiles lists the names in dir.
func snapDirFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// snapProcessed drains what n's raft received and returns the MsgSnaps.
func snapProcessed(n *testNode) []*raftpb.Message {
	var snaps []*raftpb.Message
	for {
		select {
		case m := <-n.raft.msgc:
			if m.GetType() == raftpb.MsgSnap {
				snaps = append(snaps, m)
			}
		default:
			return snaps
		}
	}
}

// snapFailCheck describes a failed transfer for assertSnapFailed.
type snapFailCheck struct {
	sender   *testNode
	to       uint64
	err      error // what SendSnapshot's channel yielded
	want     error // sentinel the error must wrap; nil: any error
	receiver *testNode
	dir      string // the receiver's store directory, "" if it has none
	// recvFailures is how many handler failures the receiver must have
	// counted before it is checked (0: the request never reached it).
	recvFailures float64
	// stopped: the sender's transport was stopped, so the failure must
	// not be reported to raft (nothing is, once Stop has begun).
	stopped bool
}

// assertSnapFailed checks what every failed transfer must show: an error
// from the channel, ReportSnapshot(Failure) and no Finish on the sender,
// nothing processed by the receiver's raft, and no file (final or
// temporary) in its store.
func assertSnapFailed(t testing.TB, c snapFailCheck) {
	t.Helper()
	if c.err == nil {
		t.Fatal("SendSnapshot yielded nil, want an error")
	}
	if c.want != nil && !errors.Is(c.err, c.want) {
		t.Errorf("SendSnapshot yielded %v, want an error wrapping %v", c.err, c.want)
	}
	var failures int
	for _, r := range c.sender.raft.snapshotReports() {
		if r.id != c.to {
			continue
		}
		if r.status == raft.SnapshotFinish {
			t.Errorf("sender reported SnapshotFinish for %d, want only SnapshotFailure", c.to)
		} else {
			failures++
		}
	}
	want := 1
	if c.stopped {
		want = 0
	}
	if failures != want {
		t.Errorf("sender reported %d SnapshotFailure for %d, want %d", failures, c.to, want)
	}
	if c.recvFailures > 0 {
		snapWaitRecvFailed(t, c.receiver, c.recvFailures)
	}
	if snaps := snapProcessed(c.receiver); len(snaps) != 0 {
		t.Errorf("receiver's raft processed %d MsgSnap, want none", len(snaps))
	}
	if c.dir != "" {
		if files := snapDirFiles(t, c.dir); len(files) != 0 {
			t.Errorf("store directory holds %q, want nothing", files)
		}
	}
}

// snapPeerHeader holds the headers a peer's request carries (spec §2.1).
func snapPeerHeader(from uint64) http.Header {
	h := http.Header{}
	h.Set(headerServerFrom, formatID(from))
	h.Set(headerServerVersion, "3.7.0")
	h.Set(headerMinClusterVersion, "3.0.0")
	h.Set(headerClusterID, formatID(testClusterID))
	return h
}

// snapRawConn opens a connection to n's server and writes the head of a
// chunked snapshot POST from member `from`; the test writes the body with
// snapChunk.
func snapRawConn(t testing.TB, n *testNode, from uint64) net.Conn {
	t.Helper()
	addr := n.srv.Listener.Addr().String()
	c := n.dial(t)
	if err := c.SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n", RaftSnapshotPrefix, addr)
	if err := snapPeerHeader(from).Write(&b); err != nil {
		t.Fatal(err)
	}
	b.WriteString("\r\n")
	if _, err := c.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	return c
}

// snapChunk writes p as one HTTP chunk.
func snapChunk(t testing.TB, c net.Conn, p []byte) {
	t.Helper()
	if _, err := fmt.Fprintf(c, "%x\r\n%s\r\n", len(p), p); err != nil {
		t.Fatal(err)
	}
}

// snapReadResponse reads the answer on a raw connection.
func snapReadResponse(t testing.TB, c net.Conn) (int, string) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// snapPost POSTs body to n's snapshot route from member `from` with a
// client of its own, the way a peer we did not write (etcd) would.
func snapPost(t testing.TB, n *testNode, from uint64, body io.Reader, contentLength int64, trailer http.Header) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, n.url+RaftSnapshotPrefix, body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = contentLength
	req.Header = snapPeerHeader(from)
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Trailer = trailer
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", RaftSnapshotPrefix, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// snapFileCRC returns the size and CRC-32C of a file, read in chunks.
func snapFileCRC(t testing.TB, path string) (int64, uint32) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := crc32.New(snapCRCTable)
	n, err := io.CopyBuffer(h, f, make([]byte, 1<<20))
	if err != nil {
		t.Fatal(err)
	}
	return n, h.Sum32()
}

// snapFlipByte is a test-only middleware that flips one byte of a snapshot
// request body at offset `at`. Only the body reader is replaced: the
// request, whose Trailer net/http fills at the end of the body, stays the
// one the transport's handler sees.
func snapFlipByte(at int64) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == RaftSnapshotPrefix {
				r.Body = &snapFlipReader{ReadCloser: r.Body, at: at}
			}
			next.ServeHTTP(w, r)
		})
	}
}

type snapFlipReader struct {
	io.ReadCloser
	at, off int64
}

func (f *snapFlipReader) Read(p []byte) (int, error) {
	n, err := f.ReadCloser.Read(p)
	if i := f.at - f.off; i >= 0 && i < int64(n) {
		p[i] ^= 0x40
	}
	f.off += int64(n)
	return n, err
}

// TestSnapshotCorruptedPayloadRejected: a byte flipped on the way is caught
// by the CRC-32C trailer. The receiver fails the save with
// ErrSnapshotChecksum (500) and keeps nothing; the sender fails.
func TestSnapshotCorruptedPayloadRejected(t *testing.T) {
	const size = 4 << 20
	dir := t.TempDir()
	probe := newSnapProbe(DirSnapshotStore{Dir: dir})
	a := newNode(t, withID(1))
	b := newNode(t, withID(2), withStore(probe), wrapHandler(snapFlipByte(size/2)))
	connect(t, a, b)
	// The trailer goes only to a peer known to take it.
	waitFeatures(t, a, 2, featureCRC32CTrailer)

	errc := snapSend(a, 2, 12, newSnapGen(2, size), size)
	err := snapWait(t, errc)
	if saveErr := probe.waitResult(t); !errors.Is(saveErr, ErrSnapshotChecksum) {
		t.Errorf("receiver's save ended with %v, want %v", saveErr, ErrSnapshotChecksum)
	}
	if err != nil && !strings.Contains(err.Error(), http.StatusText(http.StatusInternalServerError)) {
		t.Errorf("SendSnapshot yielded %v, want the receiver's 500", err)
	}
	assertSnapFailed(t, snapFailCheck{sender: a, to: 2, err: err, receiver: b, dir: dir, recvFailures: 1})
}

// TestSnapshotPayloadSizeMismatch: a payload shorter or longer than its
// declared size fails on the sender (ErrSnapshotSize); the receiver sees a
// body without its last chunk and keeps nothing.
func TestSnapshotPayloadSizeMismatch(t *testing.T) {
	const declared = 2 << 20
	for _, tc := range []struct {
		name   string
		actual int64
	}{
		{"short by half", declared / 2},
		{"short by one byte", declared - 1},
		{"long by one byte", declared + 1},
		{"long by a lot", declared * 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			a := newNode(t, withID(1))
			b := newNode(t, withID(2), withStore(DirSnapshotStore{Dir: dir}))
			connect(t, a, b)
			gen := newSnapGen(3, tc.actual)
			err := snapWait(t, snapSend(a, 2, 12, gen, declared))
			assertSnapFailed(t, snapFailCheck{sender: a, to: 2, err: err, want: ErrSnapshotSize, receiver: b, dir: dir, recvFailures: 1})
		})
	}
}

// TestSnapshotRawClientAbortMidPayload: a client that sends the envelope
// and part of the payload, then drops the connection, leaves no file and no
// MsgSnap behind.
func TestSnapshotRawClientAbortMidPayload(t *testing.T) {
	dir := t.TempDir()
	probe := newSnapProbe(DirSnapshotStore{Dir: dir})
	b := newNode(t, withID(2), withStore(probe))

	c := snapRawConn(t, b, 1)
	snapChunk(t, c, appendMessageFrame(nil, newMsg(raftpb.MsgSnap, 1, 2, 12)))
	snapChunk(t, c, snapBytes(4, 256<<10))
	// Announce a chunk and send only half of it.
	if _, err := fmt.Fprintf(c, "%x\r\n%s", 64<<10, snapBytes(5, 32<<10)); err != nil {
		t.Fatal(err)
	}
	if m := probe.waitStarted(t); m.GetSnapshot().GetMetadata().GetIndex() != 12 {
		t.Fatalf("store got index %d, want 12", m.GetSnapshot().GetMetadata().GetIndex())
	}
	c.Close()

	if err := probe.waitResult(t); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("receiver's save ended with %v, want %v", err, io.ErrUnexpectedEOF)
	}
	snapWaitRecvFailed(t, b, 1)
	if snaps := snapProcessed(b); len(snaps) != 0 {
		t.Errorf("raft processed %d MsgSnap, want none", len(snaps))
	}
	if files := snapDirFiles(t, dir); len(files) != 0 {
		t.Errorf("store directory holds %q, want nothing", files)
	}
}

// TestSnapshotSenderStoppedMidTransfer: stopping the sending transport
// while a payload is being sent ends the transfer at once: the channel
// yields an error (raft is not told: nothing is reported once Stop has
// begun), the payload is closed, Stop returns promptly, the receiver keeps
// nothing, and no goroutine is left.
func TestSnapshotSenderStoppedMidTransfer(t *testing.T) {
	ignore := goleak.IgnoreCurrent()
	dir := t.TempDir()
	probe := newSnapProbe(DirSnapshotStore{Dir: dir})
	a := newNode(t, withID(1))
	b := newNode(t, withID(2), withStore(probe))
	connect(t, a, b)

	const size = 16 << 20
	gate := newSnapGate(t, newSnapGen(6, size), 2<<20)
	errc := snapSend(a, 2, 12, gate, size)
	gate.waitReached(t)
	probe.waitStarted(t)

	start := time.Now()
	a.tr.Stop()
	took := time.Since(start)
	t.Logf("Stop took %v with a snapshot in flight", took)
	if took >= 2*time.Second {
		t.Errorf("Stop took %v, want < 2s", took)
	}
	var err error
	select {
	case err = <-errc:
	default:
		t.Fatal("SendSnapshot's channel is empty after Stop returned, want the outcome")
	}
	t.Logf("SendSnapshot yielded %v", err)
	if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, ErrStopped) {
		t.Errorf("SendSnapshot yielded %v, want %v or %v", err, context.Canceled, ErrStopped)
	}
	if !gate.isClosed() {
		t.Error("payload not closed after Stop")
	}
	if saveErr := probe.waitResult(t); saveErr == nil {
		t.Error("receiver's save succeeded, want an error")
	}
	assertSnapFailed(t, snapFailCheck{sender: a, to: 2, err: err, receiver: b, dir: dir, recvFailures: 1, stopped: true})

	a.close()
	b.close()
	goleak.VerifyNone(t, ignore)
}

// TestSnapshotReceiverStoreFails: a store that fails after reading part of
// the payload makes the receiver answer 500, which fails the send; raft on
// the receiver never sees the MsgSnap.
func TestSnapshotReceiverStoreFails(t *testing.T) {
	dir := t.TempDir()
	probe := newSnapProbe(snapBrokenStore{dir: DirSnapshotStore{Dir: dir}, after: 1 << 20})
	a := newNode(t, withID(1))
	b := newNode(t, withID(2), withStore(probe))
	connect(t, a, b)

	const size = 8 << 20
	err := snapWait(t, snapSend(a, 2, 12, newSnapGen(7, size), size))
	if saveErr := probe.waitResult(t); !errors.Is(saveErr, errSnapDiskFull) {
		t.Errorf("receiver's save ended with %v, want %v", saveErr, errSnapDiskFull)
	}
	assertSnapFailed(t, snapFailCheck{sender: a, to: 2, err: err, receiver: b, dir: dir, recvFailures: 1})
}

// TestSnapshotSenderStalled: a payload that stops yielding bytes fails the
// transfer with ErrSnapshotStalled after the progress timeout.
//
// It runs in a synctest bubble, over a memNet: the timeout is measured
// on the bubble's clock, which two loaded cores cannot stretch.
func TestSnapshotSenderStalled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := &memNet{}
		const timeout = 300 * time.Millisecond
		dir := t.TempDir()
		a := newNode(t, withID(1), onMemNet(mn), withConfig(func(tr *Transport) { tr.SnapshotProgressTimeout = timeout }))
		b := newNode(t, withID(2), onMemNet(mn), withStore(DirSnapshotStore{Dir: dir}))
		connect(t, a, b)

		const size = 8 << 20
		gate := newSnapGate(t, newSnapGen(8, size), 1<<20)
		start := time.Now()
		errc := snapSend(a, 2, 12, gate, size)
		gate.waitReached(t)
		stalled := time.Now()
		err := snapWait(t, errc)
		took := time.Since(stalled)
		t.Logf("stalled transfer failed %v after the payload stopped (%v after the send began)", took, time.Since(start))
		if took < timeout-50*time.Millisecond || took > time.Second {
			t.Errorf("transfer failed %v after the payload stalled, want between %v and 1s", took, timeout)
		}
		if !gate.isClosed() {
			t.Error("payload not closed after the failure")
		}
		assertSnapFailed(t, snapFailCheck{sender: a, to: 2, err: err, want: ErrSnapshotStalled, receiver: b, dir: dir, recvFailures: 1})
	})
}

// TestSnapshotReceiverStalled: a sender that stops sending in the middle of
// the payload, keeping the connection open, is cut off by the receiver
// after its progress timeout; nothing is kept.
//
// It runs in a synctest bubble, over a memNet: the timeout is measured
// on the bubble's clock, which two loaded cores cannot stretch.
func TestSnapshotReceiverStalled(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := &memNet{}
		const timeout = 300 * time.Millisecond
		dir := t.TempDir()
		probe := newSnapProbe(DirSnapshotStore{Dir: dir})
		b := newNode(t, withID(2), onMemNet(mn), withConfig(func(tr *Transport) {
			tr.SnapshotStore = probe
			tr.SnapshotProgressTimeout = timeout
		}))

		c := snapRawConn(t, b, 1)
		snapChunk(t, c, appendMessageFrame(nil, newMsg(raftpb.MsgSnap, 1, 2, 12)))
		snapChunk(t, c, snapBytes(9, 512<<10))
		probe.waitStarted(t)
		stalled := time.Now()

		err := probe.waitResult(t)
		took := time.Since(stalled)
		t.Logf("receiver gave up %v after the sender went silent", took)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("receiver's save ended with %v, want %v", err, os.ErrDeadlineExceeded)
		}
		if took < timeout-100*time.Millisecond || took > time.Second {
			t.Errorf("receiver gave up after %v, want about %v (under 1s)", took, timeout)
		}
		if code, body := snapReadResponse(t, c); code != http.StatusInternalServerError {
			t.Errorf("status %d (%q), want %d", code, body, http.StatusInternalServerError)
		}
		snapWaitRecvFailed(t, b, 1)
		if snaps := snapProcessed(b); len(snaps) != 0 {
			t.Errorf("raft processed %d MsgSnap, want none", len(snaps))
		}
		if files := snapDirFiles(t, dir); len(files) != 0 {
			t.Errorf("store directory holds %q, want nothing", files)
		}
	})
}

// TestSnapshotSendRateLimit: SnapshotSendRate holds the payload's rate
// within 10% of the limit.
//
// It runs in a synctest bubble, over a memNet: the rate is measured on
// the bubble's clock, so the window is that of the limiter alone, not of
// two loaded cores.
func TestSnapshotSendRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mn := &memNet{}
		const (
			limit = 8 << 20
			size  = 16 << 20
		)
		dir := t.TempDir()
		a := newNode(t, withID(1), onMemNet(mn), withConfig(func(tr *Transport) { tr.SnapshotSendRate = limit }))
		b := newNode(t, withID(2), onMemNet(mn), withStore(DirSnapshotStore{Dir: dir}))
		connect(t, a, b)

		gen := newSnapGen(10, size)
		start := time.Now()
		if err := snapWait(t, snapSend(a, 2, 12, gen, size)); err != nil {
			t.Fatalf("SendSnapshot: %v", err)
		}
		took := time.Since(start)
		rate := float64(size) / took.Seconds()
		t.Logf("sent %d MiB in %v: %.2f MiB/s for a limit of %d MiB/s", size>>20, took, rate/(1<<20), limit>>20)
		if took < 1800*time.Millisecond || took > 2200*time.Millisecond {
			t.Errorf("transfer took %v, want between 1.8s and 2.2s", took)
		}
		if dev := (rate - limit) / limit; dev < -0.10 || dev > 0.10 {
			t.Errorf("achieved %.2f MiB/s, want within 10%% of %d MiB/s", rate/(1<<20), limit>>20)
		}
		if n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(12)); n != size || sum != gen.crc {
			t.Errorf("stored %d bytes with CRC %08x, want %d with %08x", n, sum, size, gen.crc)
		}
	})
}

// TestSnapshotTooManyReceives: with MaxSnapshotReceives 1, a second
// concurrent snapshot is refused with 503 and a clear body; its sender fails
// and the first snapshot completes.
func TestSnapshotTooManyReceives(t *testing.T) {
	dir := t.TempDir()
	probe := newSnapProbe(DirSnapshotStore{Dir: dir})
	n1 := newNode(t, withID(1))
	n2 := newNode(t, withID(2), withConfig(func(tr *Transport) {
		tr.SnapshotStore = probe
		tr.MaxSnapshotReceives = 1
	}))
	n3 := newNode(t, withID(3))
	connect(t, n1, n2, n3)

	const size = 4 << 20
	gen1 := newSnapGen(11, size)
	gate1 := newSnapGate(t, gen1, 1<<20)
	errc1 := snapSend(n1, 2, 10, gate1, size)
	gate1.waitReached(t)
	probe.waitStarted(t) // node 2's only slot is taken

	// A raw request is refused with etcd-readable status and body.
	code, body := snapPost(t, n2, 3, bytes.NewReader(appendMessageFrame(nil, newMsg(raftpb.MsgSnap, 3, 2, 11))), -1, nil)
	if code != http.StatusServiceUnavailable || strings.TrimSpace(body) != "rafthttp: too many concurrent snapshots" {
		t.Errorf("raw POST got %d %q, want %d %q", code, body, http.StatusServiceUnavailable, "rafthttp: too many concurrent snapshots")
	}

	// So is node 3's transport, whose payload is slow too.
	gate3 := newSnapGate(t, newSnapGen(12, size), 1<<20)
	err3 := snapWait(t, snapSend(n3, 2, 11, gate3, size))
	if !errors.Is(err3, ErrTooManySnapshots) {
		t.Errorf("node 3's SendSnapshot yielded %v, want the receiver's 503 as ErrTooManySnapshots", err3)
	}
	if reps := n3.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFailure}) {
		t.Errorf("node 3's reports = %v, want one Failure for 2", reps)
	}
	if !gate3.isClosed() {
		t.Error("node 3's payload not closed after the refusal")
	}

	gate1.release()
	if err := snapWait(t, errc1); err != nil {
		t.Fatalf("node 1's SendSnapshot: %v", err)
	}
	if reps := n1.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFinish}) {
		t.Errorf("node 1's reports = %v, want one Finish for 2", reps)
	}
	if err := probe.waitResult(t); err != nil {
		t.Errorf("node 2's save: %v", err)
	}
	waitFor(t, "node 2 to process the MsgSnap", func() bool { return len(n2.raft.msgc) > 0 })
	snaps := snapProcessed(n2)
	if len(snaps) != 1 || snaps[0].GetFrom() != 1 || snaps[0].GetSnapshot().GetMetadata().GetIndex() != 10 {
		t.Errorf("node 2 processed %v, want only node 1's MsgSnap at index 10", snaps)
	}
	if files := snapDirFiles(t, dir); len(files) != 1 || files[0] != "000000000000000a.snap.db" {
		t.Errorf("store directory holds %q, want only 000000000000000a.snap.db", files)
	}
	if n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(10)); n != size || sum != gen1.crc {
		t.Errorf("stored %d bytes with CRC %08x, want %d with %08x", n, sum, size, gen1.crc)
	}
	if got := metricValue(t, gathered(t, n2.tr.metrics.snapRecvFailures), "", nil); got != 2 {
		t.Errorf("node 2 counted %v receive failures, want 2 (the two refusals)", got)
	}
}

// TestSnapshotTooManySends: the sender refuses a snapshot at once with
// ErrTooManySnapshots when MaxSnapshotSends are in flight, or when one to
// the same peer is; the slot is freed when the first ends.
func TestSnapshotTooManySends(t *testing.T) {
	for _, tc := range []struct {
		name     string
		maxSends int
		secondTo uint64 // peer of the refused snapshot
	}{
		{"limit of one, two peers", 1, 3},
		{"one per peer", 0, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir2, dir3 := t.TempDir(), t.TempDir()
			a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.MaxSnapshotSends = tc.maxSends }))
			b := newNode(t, withID(2), withStore(DirSnapshotStore{Dir: dir2}))
			c := newNode(t, withID(3), withStore(DirSnapshotStore{Dir: dir3}))
			connect(t, a, b, c)
			dirs := map[uint64]string{2: dir2, 3: dir3}
			nodes := map[uint64]*testNode{2: b, 3: c}

			const size = 1 << 20
			gate := newSnapGate(t, newSnapGen(13, size), 64<<10)
			errc1 := snapSend(a, 2, 10, gate, size)
			gate.waitReached(t)

			gate2 := newSnapGate(t, newSnapGen(14, size), size)
			errc2 := snapSend(a, tc.secondTo, 11, gate2, size)
			var err2 error
			select {
			case err2 = <-errc2:
			default:
				t.Fatal("second SendSnapshot not refused at once")
			}
			if !gate2.isClosed() {
				t.Error("refused payload not closed")
			}
			assertSnapFailed(t, snapFailCheck{sender: a, to: tc.secondTo, err: err2, want: ErrTooManySnapshots,
				receiver: nodes[tc.secondTo], dir: ""})

			gate.release()
			if err := snapWait(t, errc1); err != nil {
				t.Fatalf("first SendSnapshot: %v", err)
			}
			if files := snapDirFiles(t, dirs[tc.secondTo]); tc.secondTo != 2 && len(files) != 0 {
				t.Errorf("refused peer's store holds %q, want nothing", files)
			}
			if files := snapDirFiles(t, dir2); len(files) != 1 || files[0] != "000000000000000a.snap.db" {
				t.Errorf("store of 2 holds %q, want only 000000000000000a.snap.db", files)
			}
			for id, n := range nodes {
				snaps := snapProcessed(n)
				if id == 2 && (len(snaps) != 1 || snaps[0].GetSnapshot().GetMetadata().GetIndex() != 10) {
					t.Errorf("node 2 processed %v, want only the MsgSnap at index 10", snaps)
				}
				if id != 2 && len(snaps) != 0 {
					t.Errorf("node %d processed %v, want nothing", id, snaps)
				}
			}

			// The slot is free again.
			if err := snapWait(t, snapSend(a, tc.secondTo, 11, newSnapGen(15, size), size)); err != nil {
				t.Errorf("SendSnapshot after the first ended: %v", err)
			}
		})
	}
}

// TestSnapshotHostileEnvelope: an envelope length prefix above the limit is
// refused before any allocation, and one under the limit whose bytes never
// come costs memory only for what arrived.
func TestSnapshotHostileEnvelope(t *testing.T) {
	for _, tc := range []struct {
		name     string
		prefix   uint64
		sent     int
		wantBody string
	}{
		{"length prefix of 2^64-1", 0xFFFFFFFFFFFFFFFF, 100, ErrExceedSizeLimit.Error()},
		{"length prefix just over 64 MiB", DefaultMaxSnapshotEnvelopeBytes + 1, 100, ErrExceedSizeLimit.Error()},
		{"60 MiB announced, 100 bytes sent", 60 << 20, 100, io.ErrUnexpectedEOF.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			probe := newSnapProbe(DirSnapshotStore{Dir: dir})
			b := newNode(t, withID(2), withStore(probe))

			body := binary.BigEndian.AppendUint64(nil, tc.prefix)
			body = append(body, snapBytes(16, tc.sent)...)
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			c := snapRawConn(t, b, 1)
			snapChunk(t, c, body)
			if err := c.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			code, resp := snapReadResponse(t, c)
			runtime.ReadMemStats(&after)

			if code != http.StatusBadRequest || !strings.Contains(resp, tc.wantBody) {
				t.Errorf("got %d %q, want %d with %q", code, resp, http.StatusBadRequest, tc.wantBody)
			}
			grew := after.TotalAlloc - before.TotalAlloc
			t.Logf("allocated %d KiB while serving the request", grew>>10)
			if grew >= 8<<20 {
				t.Errorf("allocated %d bytes, want < 8 MiB", grew)
			}
			snapWaitRecvFailed(t, b, 1)
			select {
			case <-probe.started:
				t.Error("the store was called for an envelope that never decoded")
			default:
			}
			if snaps := snapProcessed(b); len(snaps) != 0 {
				t.Errorf("raft processed %d MsgSnap, want none", len(snaps))
			}
			if files := snapDirFiles(t, dir); len(files) != 0 {
				t.Errorf("store directory holds %q, want nothing", files)
			}
		})
	}
}

// TestSnapshotPlainMsgSnapThroughPipeline: a MsgSnap given to Send, with the
// whole state in Snapshot.Data (raftexample), arrives by the pipeline, and
// the sender reports SnapshotFinish; no store is needed.
func TestSnapshotPlainMsgSnapThroughPipeline(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connect(t, a, b)

	m := newMsg(raftpb.MsgSnap, 1, 2, 12)
	m.Snapshot.Data = snapBytes(17, 1<<20)
	a.tr.Send([]*raftpb.Message{m})
	got := b.raft.recv(t)
	if !proto.Equal(got, m) {
		t.Errorf("raft got a %v with %d bytes of data at index %d, want the MsgSnap sent (%d bytes at 12)",
			got.GetType(), len(got.GetSnapshot().GetData()), got.GetSnapshot().GetMetadata().GetIndex(), len(m.Snapshot.Data))
	}
	waitFor(t, "the sender to report the snapshot", func() bool { return len(a.raft.snapshotReports()) > 0 })
	if reps := a.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFinish}) {
		t.Errorf("snapshot reports = %v, want one Finish for 2", reps)
	}
}

// TestSnapshotTrailerCompat: the CRC-32C trailer is optional, so that etcd
// senders, which send none, keep working; when present it is enforced.
func TestSnapshotTrailerCompat(t *testing.T) {
	const size = 1 << 20
	envelope := appendMessageFrame(nil, newMsg(raftpb.MsgSnap, 1, 2, 12))
	payload := snapBytes(18, size)
	whole := append(append([]byte(nil), envelope...), payload...)
	goodCRC := fmt.Sprintf("%08x", crc32.Checksum(whole, snapCRCTable))
	badCRC := fmt.Sprintf("%08x", crc32.Checksum(whole, snapCRCTable)^1)
	for _, tc := range []struct {
		name          string
		contentLength int64 // -1: chunked
		trailer       string
		ok            bool
	}{
		{"etcd style, content length, no trailer", int64(len(whole)), "", true},
		{"chunked, no trailer", -1, "", true},
		{"chunked, matching trailer", -1, goodCRC, true},
		{"chunked, mismatching trailer", -1, badCRC, false},
		{"chunked, malformed trailer", -1, "not-hex!", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b := newNode(t, withID(2), withStore(DirSnapshotStore{Dir: dir}))
			var trailer http.Header
			if tc.trailer != "" {
				trailer = http.Header{trailerCRC32C: {tc.trailer}}
			}
			// A reader without a Len method, so that a chunked body stays
			// chunked.
			body := io.MultiReader(bytes.NewReader(envelope), bytes.NewReader(payload))
			code, resp := snapPost(t, b, 1, body, tc.contentLength, trailer)
			if !tc.ok {
				if code != http.StatusInternalServerError || !strings.Contains(resp, ErrSnapshotChecksum.Error()) {
					t.Fatalf("got %d %q, want %d with %q", code, resp, http.StatusInternalServerError, ErrSnapshotChecksum)
				}
				snapWaitRecvFailed(t, b, 1)
				if snaps := snapProcessed(b); len(snaps) != 0 {
					t.Errorf("raft processed %d MsgSnap, want none", len(snaps))
				}
				if files := snapDirFiles(t, dir); len(files) != 0 {
					t.Errorf("store directory holds %q, want nothing", files)
				}
				return
			}
			if code != http.StatusNoContent {
				t.Fatalf("got %d %q, want %d", code, resp, http.StatusNoContent)
			}
			if got := b.raft.recv(t); got.GetType() != raftpb.MsgSnap || got.GetSnapshot().GetMetadata().GetIndex() != 12 {
				t.Errorf("raft got %v, want the MsgSnap at index 12", got)
			}
			data, err := os.ReadFile(DirSnapshotStore{Dir: dir}.Path(12))
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(data, payload) {
				t.Errorf("stored %d bytes (CRC %08x), want the %d sent (CRC %08x)", len(data), crc32.Checksum(data, snapCRCTable),
					len(payload), crc32.Checksum(payload, snapCRCTable))
			}
		})
	}
}

// snapPanicStore reads some of the payload, then panics: a bug in the
// application's store.
type snapPanicStore struct{ after int64 }

func (s snapPanicStore) SaveSnapshot(_ context.Context, _ *raftpb.Message, r io.Reader) error {
	if _, err := io.CopyN(io.Discard, r, s.after); err != nil {
		return err
	}
	panic("test store: bug")
}

// TestSnapshotReceiverStorePanics: net/http recovers a store's panic; the
// transfer fails on the sender's side, and the read-ahead goroutine ends
// with the handler (goleak, in TestMain, checks that nothing is left).
func TestSnapshotReceiverStorePanics(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2), withStore(snapPanicStore{after: 1 << 20}))
	connect(t, a, b)
	const size = 8 << 20
	if err := snapWait(t, snapSend(a, 2, 12, newSnapGen(9, size), size)); err == nil {
		t.Fatal("the transfer succeeded although the store panicked")
	}
	if snaps := snapProcessed(b); len(snaps) != 0 {
		t.Errorf("raft processed %d MsgSnap, want none", len(snaps))
	}
}

// snapSlowStore saves through inner, then, before returning, takes delay
// more (a slow fsync), or with delay < 0 waits until its context ends and
// then claims success (a store that ignores ctx, or a save that finished
// just as the sender gave up). saved is closed when inner returns: the
// whole payload was received.
type snapSlowStore struct {
	inner SnapshotStore
	delay time.Duration
	saved chan struct{}
}

func (s snapSlowStore) SaveSnapshot(ctx context.Context, m *raftpb.Message, r io.Reader) error {
	if err := s.inner.SaveSnapshot(ctx, m, r); err != nil {
		return err
	}
	close(s.saved)
	var slow <-chan time.Time // nil: for ever
	if s.delay >= 0 {
		// A wall-clock delay is what is simulated: a disk that takes
		// this long, not an event to wait for.
		slow = time.After(s.delay)
	}
	select {
	case <-slow:
	case <-ctx.Done():
	}
	return nil
}

// TestSnapshotAnswerWait: once the last byte is sent, the sender waits for
// the answer longer than the progress timeout (SnapshotProgressTimeout plus
// a second per 10 MiB), so a receiver with a slow disk gets its snapshot,
// and Process a live context; a receiver that does not answer within that
// bound is given up on, and then does not hand the MsgSnap to raft.
func TestSnapshotAnswerWait(t *testing.T) {
	const progress = 200 * time.Millisecond
	for _, tc := range []struct {
		name  string
		size  int64
		delay time.Duration // of the store after the payload is in; < 0: until the sender gives up
		ok    bool
	}{
		{name: "store takes twice the progress timeout", size: 8 << 20, delay: 2 * progress, ok: true},
		{name: "store outlasts the answer bound", size: 64 << 10, delay: -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			store := snapSlowStore{inner: DirSnapshotStore{Dir: dir}, delay: tc.delay, saved: make(chan struct{})}
			a := newNode(t, withID(1), withConfig(func(tr *Transport) { tr.SnapshotProgressTimeout = progress }))
			b := newNode(t, withID(2), withConfig(func(tr *Transport) {
				tr.SnapshotStore = store
				tr.SnapshotProgressTimeout = progress
			}))
			connect(t, a, b)
			type call struct{ ctxErr error }
			calls := make(chan call, 4)
			b.raft.setProcess(func(ctx context.Context, m *raftpb.Message) error {
				if m.GetType() == raftpb.MsgSnap {
					calls <- call{ctxErr: ctx.Err()}
				}
				return nil
			})

			bound := snapshotAnswerTimeout(progress, int64(messageFrameSize(newMsg(raftpb.MsgSnap, 1, 2, 12)))+tc.size)
			gen := newSnapGen(40, tc.size)
			errc := snapSend(a, 2, 12, gen, tc.size)
			receive(t, store.saved, 10*time.Second, "the receiver to have the payload")
			received := time.Now()
			err := snapWait(t, errc)
			took := time.Since(received)
			t.Logf("size %d KiB, store delay %v, progress timeout %v, answer bound %v: outcome %v, %v after the payload was in",
				tc.size>>10, tc.delay, progress, bound, err, took)

			if tc.ok {
				if err != nil {
					t.Fatalf("SendSnapshot: %v, want success", err)
				}
				if reps := a.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFinish}) {
					t.Errorf("sender's reports = %v, want one Finish for 2", reps)
				}
				select {
				case c := <-calls:
					if c.ctxErr != nil {
						t.Errorf("Process got a context already done (%v), want a live one", c.ctxErr)
					}
				default:
					t.Error("raft did not get the MsgSnap")
				}
				if n, sum := snapFileCRC(t, DirSnapshotStore{Dir: dir}.Path(12)); n != tc.size || sum != gen.crc {
					t.Errorf("stored %d bytes with CRC %08x, want %d with %08x", n, sum, tc.size, gen.crc)
				}
				return
			}
			if !errors.Is(err, ErrSnapshotStalled) {
				t.Errorf("SendSnapshot yielded %v, want %v", err, ErrSnapshotStalled)
			}
			if took < bound-100*time.Millisecond || took > bound+2*time.Second {
				t.Errorf("sender gave up %v after the payload was in, want about %v", took, bound)
			}
			if reps := a.raft.snapshotReports(); len(reps) != 1 || reps[0] != (snapshotReport{2, raft.SnapshotFailure}) {
				t.Errorf("sender's reports = %v, want one Failure for 2", reps)
			}
			snapWaitRecvFailed(t, b, 1)
			select {
			case c := <-calls:
				t.Errorf("raft got the MsgSnap (context error %v) after its sender gave up, want nothing", c.ctxErr)
			default:
			}
		})
	}
}

// snapCloseCount is an empty payload that counts how often it is closed.
type snapCloseCount struct{ n *atomic.Int64 }

func (snapCloseCount) Read([]byte) (int, error) { return 0, io.EOF }
func (c snapCloseCount) Close() error {
	c.n.Add(1)
	return nil
}

// TestSendSnapshotRefusals: each kind of SendSnapshot refusal, repeated
// 1,000 times with the limiters' clock moving 2 ms a call, yields its error
// at once, closes the payload, reports Failure to raft before SendSnapshot
// returns (but not after Stop), and is logged, rate-limited: a line a
// second of clock, the line carrying the count of those it stands for.
func TestSendSnapshotRefusals(t *testing.T) {
	const (
		calls = 1000
		step  = 2 * time.Millisecond
	)
	tests := []struct {
		name     string
		maxSends int
		inFlight bool // a snapshot to 2 is in flight during the calls
		stop     bool // the transport is stopped before them
		msg      *raftpb.Message
		want     error // nil: any error
		kind     warnKind
		reports  bool // Failure is reported to raft, for msg.To
	}{
		{name: "not a MsgSnap", msg: newMsg(raftpb.MsgApp, 1, 2, 10, withCommit(1)), kind: warnSnapRefused, reports: true},
		{name: "unknown peer", msg: newMsg(raftpb.MsgSnap, 1, 9, 12), want: ErrMemberNotFound, kind: warnSnapRefused, reports: true},
		{name: "one in flight to the peer", inFlight: true, msg: newMsg(raftpb.MsgSnap, 1, 2, 13), want: ErrTooManySnapshots, kind: warnSnapBusy, reports: true},
		{name: "MaxSnapshotSends reached", maxSends: 1, inFlight: true, msg: newMsg(raftpb.MsgSnap, 1, 3, 13), want: ErrTooManySnapshots, kind: warnSnapBusy, reports: true},
		{name: "after Stop", stop: true, msg: newMsg(raftpb.MsgSnap, 1, 2, 13), want: ErrStopped, kind: warnSnapRefused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := newFakePeer(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != RaftSnapshotPrefix {
					http.Error(w, "error sender not found", http.StatusNotFound) // streams stay down
					return
				}
				_, _ = io.Copy(io.Discard, r.Body)
				w.WriteHeader(http.StatusNoContent)
			})
			core, logs := observer.New(zapcore.InfoLevel)
			clock := newFakeClock()
			tr, fr := newNode(t, withID(1), unserved(), withConfig(func(tr *Transport) {
				tr.Logger = zap.New(core)
				tr.logClock = clock.now
				tr.MaxSnapshotSends = tc.maxSends
			})).parts()
			for _, id := range []uint64{2, 3} {
				if err := tr.AddPeer(id, []string{srv.URL}); err != nil {
					t.Fatal(err)
				}
			}
			var first <-chan error
			var gate *snapGate
			if tc.inFlight {
				const size = 1 << 20
				gate = newSnapGate(t, newSnapGen(50, size), 64<<10)
				first = tr.SendSnapshot(SnapshotMessage{Message: newMsg(raftpb.MsgSnap, 1, 2, 12), Payload: gate, PayloadSize: size})
				gate.waitReached(t)
			}
			if tc.stop {
				tr.Stop()
			}

			var closed atomic.Int64
			for i := range calls {
				errc := tr.SendSnapshot(SnapshotMessage{Message: tc.msg, Payload: snapCloseCount{&closed}, PayloadSize: 0})
				select {
				case err := <-errc:
					if err == nil || (tc.want != nil && !errors.Is(err, tc.want)) {
						t.Fatalf("call %d yielded %v, want an error wrapping %v", i, err, tc.want)
					}
				default:
					t.Fatalf("call %d: no outcome when SendSnapshot returned, want the refusal", i)
				}
				clock.advance(step)
			}
			// Reports run in the caller's goroutine: all there, no waiting.
			reports := 0
			for _, r := range fr.snapshotReports() {
				if r.id == tc.msg.GetTo() && r.status == raft.SnapshotFailure {
					reports++
				}
			}
			var lines, counted int64
			for _, e := range logs.FilterMessage("refused to send database snapshot").All() {
				lines++
				counted += e.ContextMap()["suppressed"].(int64)
				if errStr, _ := e.ContextMap()["error"].(string); tc.want != nil && !strings.Contains(errStr, tc.want.Error()) {
					t.Errorf("line says %q, want the reason (%v)", errStr, tc.want)
				}
			}
			held := tr.warns.kinds[tc.kind].suppressed.Load()
			t.Logf("%d refusals over %v of clock: %d lines, reporting %d suppressed, %d held for the next; %d Failure reports; %d payloads closed",
				calls, time.Duration(calls)*step, lines, counted, held, reports, closed.Load())
			if want := int64(time.Duration(calls) * step / warnInterval); lines < want || lines > want+2 {
				t.Errorf("%d lines, want %d to %d (one a second of clock)", lines, want, want+2)
			}
			if lines+counted+held != calls {
				t.Errorf("lines + suppressed + held = %d, want %d", lines+counted+held, calls)
			}
			if wantReports := map[bool]int{true: calls}[tc.reports]; reports != wantReports {
				t.Errorf("%d Failure reports for %d, want %d", reports, tc.msg.GetTo(), wantReports)
			}
			if closed.Load() != calls {
				t.Errorf("%d payloads closed, want %d", closed.Load(), calls)
			}
			if tc.inFlight {
				gate.release()
				if err := snapWait(t, first); err != nil {
					t.Errorf("the snapshot in flight: %v", err)
				}
			}
		})
	}
}

// TestProgressWatch checks the watchdog's two phases on synctest's clock,
// to the nanosecond: while the body is sent, a stall is declared
// exactly the progress timeout after the last read; once it is sent, the
// answer has the answer bound, and only then is it given up on.
func TestProgressWatch(t *testing.T) {
	const progress, answer = 300 * time.Millisecond, 2 * time.Second
	tests := []struct {
		name       string
		reads      int  // reads 100 ms apart before anything else
		sent       bool // the body is then sent
		stopAfter  time.Duration
		wantAfter  time.Duration // after the last read or sent; 0: no stall
		wantAnswer bool          // the error says no answer came
	}{
		{name: "stall while sending", reads: 10, wantAfter: progress},
		{name: "stall before the first byte", wantAfter: progress},
		{name: "no answer within the bound", reads: 3, sent: true, wantAfter: answer, wantAnswer: true},
		{name: "answer just within the bound", reads: 3, sent: true, stopAfter: answer - time.Nanosecond},
		{name: "stopped while sending", reads: 2, stopAfter: progress - time.Nanosecond},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var (
					got   error
					gotAt time.Time
				)
				w := newProgressWatch(progress, answer, func(err error) {
					got, gotAt = err, time.Now()
				})
				for range tc.reads {
					time.Sleep(100 * time.Millisecond) // synctest's clock: no real wait
					w.touch()
				}
				if tc.sent {
					w.sent()
				}
				last := time.Now()
				if tc.stopAfter > 0 {
					time.Sleep(tc.stopAfter)
					w.stop()
				}
				time.Sleep(10 * answer) // long past any bound
				synctest.Wait()
				w.stop()
				if tc.wantAfter == 0 {
					if got != nil {
						t.Fatalf("stalled (%v) %v after the last progress, want no stall", got, gotAt.Sub(last))
					}
					return
				}
				if got == nil {
					t.Fatal("no stall, want one")
				}
				if after := gotAt.Sub(last); after != tc.wantAfter {
					t.Errorf("stalled %v after the last progress, want %v", after, tc.wantAfter)
				}
				if !errors.Is(got, ErrSnapshotStalled) || strings.Contains(got.Error(), "no answer") != tc.wantAnswer {
					t.Errorf("stalled with %q, want %v (answer phase: %v)", got, ErrSnapshotStalled, tc.wantAnswer)
				}
			})
		})
	}
}
