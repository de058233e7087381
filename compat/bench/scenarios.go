package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// runThroughput is scenarios 1, 2 and 5: a streams MsgApps of the given
// shape to b for d, with at most window in flight, built anew for each
// Send (fresh) or taken from a prebuilt ring.
func runThroughput(k kind, cfg *config, spec appSpec, d time.Duration, fresh bool) (measurement, error) {
	s := newAppStream(idA, idB, spec, cfg.window, fresh)
	p, err := newPair(k, cfg.dir, nil, func(_ *node, m *raftpb.Message) error {
		s.receive(m)
		return nil
	})
	if err != nil {
		return measurement{}, err
	}
	defer p.stop()
	ctx, stopWatch := watchdog(context.Background(), s.delivered.Load)
	defer stopWatch()
	if err := s.warmUp(ctx, p.a, cfg.warmup); err != nil {
		return measurement{}, fmt.Errorf("warm-up: %w", err)
	}
	before := p.linkState()
	res, err := s.measure(ctx, p.a, d, nil)
	if err != nil {
		return measurement{}, err
	}
	return res, errors.Join(p.checkLink(before), p.fail.err())
}

// rttResult is one heartbeat scenario run.
type rttResult struct {
	p50, p99 time.Duration
	pings    int
	load     measurement // the MsgApps streamed meanwhile, if loaded
}

// runHeartbeat is scenario 3: a sends MsgHeartbeat to b, b's raft answers
// at once with MsgHeartbeatResp, a measures the round trip, one at a time,
// for d. With loaded, a streams large MsgApps to b at full speed meanwhile,
// each built anew as raft builds them.
func runHeartbeat(k kind, cfg *config, loaded bool, d time.Duration) (rttResult, error) {
	resp := make(chan uint64, 1)
	s := newAppStream(idA, idB, cfg.large, cfg.window, true)
	ha := func(_ *node, m *raftpb.Message) error {
		if m.GetType() != raftpb.MsgHeartbeatResp || m.GetFrom() != idB || m.GetTo() != idA || m.GetTerm() != 1 {
			return fmt.Errorf("got %s from %d to %d term %d, want MsgHeartbeatResp from %d to %d term 1",
				m.GetType(), m.GetFrom(), m.GetTo(), m.GetTerm(), idB, idA)
		}
		select {
		case resp <- m.GetCommit():
			return nil
		default:
			return fmt.Errorf("MsgHeartbeatResp %d with no heartbeat waiting", m.GetCommit())
		}
	}
	hb := func(n *node, m *raftpb.Message) error {
		switch m.GetType() {
		case raftpb.MsgApp:
			s.receive(m)
			return nil
		case raftpb.MsgHeartbeat:
			if m.GetFrom() != idA || m.GetTo() != idB || m.GetTerm() != 1 {
				return fmt.Errorf("heartbeat from %d to %d term %d, want from %d to %d term 1", m.GetFrom(), m.GetTo(), m.GetTerm(), idA, idB)
			}
			n.send([]*raftpb.Message{{
				Type: raftpb.MsgHeartbeatResp.Enum(), To: proto.Uint64(idA), From: proto.Uint64(idB),
				Term: proto.Uint64(1), Commit: proto.Uint64(m.GetCommit()),
			}})
			return nil
		}
		return fmt.Errorf("unexpected %s", m.GetType())
	}
	p, err := newPair(k, cfg.dir, ha, hb)
	if err != nil {
		return rttResult{}, err
	}
	defer p.stop()

	var seq uint64
	batch := make([]*raftpb.Message, 1)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	ping := func() (time.Duration, error) {
		seq++
		batch[0] = &raftpb.Message{
			Type: raftpb.MsgHeartbeat.Enum(), To: proto.Uint64(idB), From: proto.Uint64(idA),
			Term: proto.Uint64(1), Commit: proto.Uint64(seq),
		}
		timer.Reset(5 * time.Second)
		start := time.Now()
		p.a.send(batch)
		select {
		case got := <-resp:
			rtt := time.Since(start)
			if got != seq {
				return 0, fmt.Errorf("MsgHeartbeatResp %d, want %d", got, seq)
			}
			return rtt, nil
		case <-timer.C:
			return 0, fmt.Errorf("no MsgHeartbeatResp to heartbeat %d within 5 s (errors so far: %v)", seq, p.fail.err())
		}
	}
	// Warm-up: the message streams may still be attaching.
	for start := time.Now(); time.Since(start) < cfg.warmup; {
		if _, err := ping(); err != nil {
			return rttResult{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	var (
		res      rttResult
		loadErr  error
		loadDone = make(chan struct{})
		stopLoad = make(chan struct{})
		ctx      context.Context
		stopWtch = func() {}
	)
	if loaded {
		ctx, stopWtch = watchdog(context.Background(), s.delivered.Load)
		defer stopWtch()
		if err := s.warmUp(ctx, p.a, cfg.warmup); err != nil {
			return rttResult{}, fmt.Errorf("MsgApp warm-up: %w", err)
		}
		// The stream runs at full speed once its window has filled.
		s.mu.Lock()
		got0 := s.got
		s.mu.Unlock()
		go func() {
			defer close(loadDone)
			res.load, loadErr = s.measure(ctx, p.a, 0, stopLoad)
		}()
		if err := waitUntil(10*time.Second, func() bool {
			s.mu.Lock()
			defer s.mu.Unlock()
			return s.got-got0 >= int64(cfg.window)
		}); err != nil {
			close(stopLoad)
			<-loadDone
			return rttResult{}, fmt.Errorf("MsgApp load did not start: %w (%v)", err, loadErr)
		}
	} else {
		close(loadDone)
	}
	before := p.linkState()
	var rtts []time.Duration
	var pingErr error
	for start := time.Now(); time.Since(start) < d; {
		rtt, err := ping()
		if err != nil {
			pingErr = err
			break
		}
		rtts = append(rtts, rtt)
	}
	if loaded {
		close(stopLoad)
	}
	<-loadDone
	if err := errors.Join(pingErr, loadErr, p.checkLink(before), p.fail.err()); err != nil {
		return rttResult{}, err
	}
	if len(rtts) == 0 {
		return rttResult{}, errors.New("no heartbeat round trip measured")
	}
	slices.Sort(rtts)
	res.p50, res.p99, res.pings = percentile(rtts, 50), percentile(rtts, 99), len(rtts)
	return res, nil
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p int) time.Duration {
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}

// snapResult is one snapshot run.
type snapResult struct {
	elapsed time.Duration
	rssGrow int64 // bytes; -1 if unknown
}

// payloadBlock is what generated snapshot payloads repeat; its odd length
// keeps the repetition out of step with any buffer size.
var payloadBlock = func() []byte {
	b := make([]byte, 1<<20+13)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(b[i:], w[:])
	}
	return b
}()

// genPayload yields size bytes of payloadBlock repeated, never holding more
// than the block in memory.
type genPayload struct {
	off, size int64
	closed    bool
	mu        sync.Mutex
}

func (g *genPayload) Read(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return 0, errors.New("payload closed")
	}
	if g.off >= g.size {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), g.size-g.off)]
	n := 0
	for n < len(p) {
		at := (g.off + int64(n)) % int64(len(payloadBlock))
		n += copy(p[n:], payloadBlock[at:])
	}
	g.off += int64(n)
	return n, nil
}

func (g *genPayload) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	return nil
}

// payloadCRC is the CRC-32C of a generated payload of size bytes.
func payloadCRC(size int64) (uint32, error) {
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	n, err := io.Copy(h, &genPayload{size: size})
	if err == nil && n != size {
		err = fmt.Errorf("generated %d bytes, want %d", n, size)
	}
	return h.Sum32(), err
}

// runSnapshot is scenario 4: a sends b a MsgSnap with a generated payload
// of cfg.snapSize bytes; b's transport stores it in a fresh directory. The
// time runs from the send to both the sender's outcome and the MsgSnap
// reaching b's raft; the file is then checked byte for byte (by CRC-32C).
func runSnapshot(k kind, cfg *config, index uint64, wantCRC uint32) (snapResult, error) {
	dir, err := os.MkdirTemp(cfg.dir, "snap-"+string(k)+"-")
	if err != nil {
		return snapResult{}, err
	}
	defer os.RemoveAll(dir)
	got := make(chan *raftpb.Message, 1)
	p, err := newPair(k, dir, nil, func(_ *node, m *raftpb.Message) error {
		select {
		case got <- m:
			return nil
		default:
			return fmt.Errorf("unexpected second %s", m.GetType())
		}
	})
	if err != nil {
		return snapResult{}, err
	}
	defer p.stop()
	m := &raftpb.Message{
		Type: raftpb.MsgSnap.Enum(), To: proto.Uint64(idB), From: proto.Uint64(idA), Term: proto.Uint64(1),
		Snapshot: &raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
			Index: proto.Uint64(index), Term: proto.Uint64(1),
			ConfState: &raftpb.ConfState{Voters: []uint64{idA, idB}},
		}},
	}

	runtime.GC()
	debug.FreeOSMemory()
	rss0, rssOK := resetPeakRSS()
	start := time.Now()
	errc := p.a.sendSnapshot(m, &genPayload{size: cfg.snapSize}, cfg.snapSize)
	timeout := time.NewTimer(5 * time.Minute)
	defer timeout.Stop()
	var received *raftpb.Message
	for sent := false; !sent || received == nil; {
		select {
		case err := <-errc:
			if err != nil {
				return snapResult{}, fmt.Errorf("snapshot send: %w (%v)", err, p.fail.err())
			}
			sent = true
		case received = <-got:
		case <-timeout.C:
			return snapResult{}, fmt.Errorf("snapshot not done in 5 minutes (sent %v, received %v)", sent, received != nil)
		}
	}
	res := snapResult{elapsed: time.Since(start), rssGrow: -1}
	if rssOK {
		if hwm, ok := procStatus("VmHWM"); ok {
			// The kernel's RSS counters are approximate (per-CPU
			// batches): a growth of a few pages can read as negative.
			res.rssGrow = max(hwm-rss0, 0)
		}
	}
	if !proto.Equal(received, m) {
		return snapResult{}, fmt.Errorf("b's raft got %v, want %v", received, m)
	}
	select {
	case st := <-p.a.raft.snapReports:
		if st != raft.SnapshotFinish {
			return snapResult{}, fmt.Errorf("sender reported snapshot status %v, want SnapshotFinish", st)
		}
	case <-timeout.C:
		return snapResult{}, errors.New("sender never reported the snapshot to raft")
	}
	if err := checkSnapshotFile(filepath.Join(dir, fmt.Sprintf("%016x.snap.db", index)), cfg.snapSize, wantCRC); err != nil {
		return snapResult{}, err
	}
	return res, p.fail.err()
}

// checkSnapshotFile checks that path holds exactly size bytes with CRC-32C
// crc, and that it is the only file of its directory.
func checkSnapshotFile(path string, size int64, crc uint32) error {
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return err
	}
	if len(ents) != 1 || ents[0].Name() != filepath.Base(path) {
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		return fmt.Errorf("snapshot directory holds %q, want only %q", names, filepath.Base(path))
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	h := crc32.New(crc32.MakeTable(crc32.Castagnoli))
	n, err := io.Copy(h, f)
	if err != nil {
		return err
	}
	if n != size || h.Sum32() != crc {
		return fmt.Errorf("stored snapshot: %d bytes with CRC-32C %08x, want %d bytes with %08x", n, h.Sum32(), size, crc)
	}
	return nil
}

// resetPeakRSS resets the process's peak RSS (VmHWM) to its current RSS
// and returns that RSS in bytes.
func resetPeakRSS() (int64, bool) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		return 0, false
	}
	return procStatus("VmRSS")
}

// procStatus reads a "kB" field of /proc/self/status, in bytes.
func procStatus(field string) (int64, bool) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB"))
			n, err := strconv.ParseInt(v, 10, 64)
			return n << 10, err == nil
		}
	}
	return 0, false
}

// appEntriesFrame is one msgappv2 AppEntries record (type 0x01, entry
// count, then each entry's size and protobuf bytes, then the commit index)
// carrying spec's entries, as both transports put it on the wire.
func appEntriesFrame(spec appSpec) ([]byte, error) {
	b := []byte{0x01}
	b = binary.BigEndian.AppendUint64(b, uint64(spec.entries))
	data := make([]byte, spec.size)
	for j := range spec.entries {
		e, err := proto.Marshal(&raftpb.Entry{
			Term: proto.Uint64(measureTerm), Index: proto.Uint64(uint64(j + 1)),
			Type: raftpb.EntryNormal.Enum(), Data: data,
		})
		if err != nil {
			return nil, err
		}
		b = binary.BigEndian.AppendUint64(b, uint64(len(e)))
		b = append(b, e...)
	}
	return binary.BigEndian.AppendUint64(b, 0), nil
}

// runRaw is scenario 6: the same AppEntries records written for d over a
// plain loopback TCP connection (through a 64 KiB buffer, flushed when
// full), read by a reader that parses the record lengths and skips the
// bytes. The physical reference for the MsgApp scenarios.
func runRaw(spec appSpec, d time.Duration) (measurement, error) {
	frame, err := appEntriesFrame(spec)
	if err != nil {
		return measurement{}, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return measurement{}, err
	}
	defer ln.Close()
	type result struct {
		n   int64
		err error
	}
	readc := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			readc <- result{err: err}
			return
		}
		defer c.Close()
		n, err := readFrames(bufio.NewReaderSize(c, 64<<10), spec)
		readc <- result{n, err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return measurement{}, err
	}
	defer c.Close()
	start := time.Now()
	w := bufio.NewWriterSize(c, 64<<10)
	var sent int64
	for time.Since(start) < d {
		for range 32 {
			if _, err := w.Write(frame); err != nil {
				return measurement{}, err
			}
		}
		sent += 32
	}
	if err := w.Flush(); err != nil {
		return measurement{}, err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return measurement{}, err
	}
	r := <-readc
	elapsed := time.Since(start)
	if r.err != nil {
		return measurement{}, fmt.Errorf("raw TCP reader: %w", r.err)
	}
	if r.n != sent {
		return measurement{}, fmt.Errorf("raw TCP: %d records read, want %d", r.n, sent)
	}
	return measurement{msgs: sent, elapsed: elapsed}, nil
}

// readFrames reads AppEntries records of spec's shape until EOF, checking
// each record's type, count and entry sizes, and returns how many it read.
func readFrames(r *bufio.Reader, spec appSpec) (int64, error) {
	var n int64
	var hdr [8]byte
	for {
		typ, err := r.ReadByte()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		if typ != 0x01 {
			return n, fmt.Errorf("record %d: type %d, want 1", n, typ)
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return n, err
		}
		if c := binary.BigEndian.Uint64(hdr[:]); c != uint64(spec.entries) {
			return n, fmt.Errorf("record %d: %d entries, want %d", n, c, spec.entries)
		}
		for range spec.entries {
			if _, err := io.ReadFull(r, hdr[:]); err != nil {
				return n, err
			}
			size := binary.BigEndian.Uint64(hdr[:])
			if size < uint64(spec.size) || size > uint64(spec.size)+32 {
				return n, fmt.Errorf("record %d: entry of %d bytes, want about %d", n, size, spec.size)
			}
			if _, err := r.Discard(int(size)); err != nil {
				return n, err
			}
		}
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return n, err
		}
		n++
	}
}

// runFileWrite is the reference for scenario 4: the same generated payload
// written to a new file in a fresh directory (on the disk the snapshots go
// to) through a 1 MiB buffer, then the file and the directory fsynced, as a
// snapshot store does. It returns the time from the create to the last
// fsync.
func runFileWrite(cfg *config) (time.Duration, error) {
	dir, err := os.MkdirTemp(cfg.dir, "snap-file-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	runtime.GC()
	start := time.Now()
	f, err := os.Create(filepath.Join(dir, "payload"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := io.CopyBuffer(f, &genPayload{size: cfg.snapSize}, make([]byte, 1<<20))
	if err != nil {
		return 0, err
	}
	if n != cfg.snapSize {
		return 0, fmt.Errorf("wrote %d bytes, want %d", n, cfg.snapSize)
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	d, err := os.Open(dir)
	if err != nil {
		return 0, err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

// pingFrame is the size of a raw TCP ping: about a heartbeat's frame.
const pingFrame = 32

// runPingPong is the reference for scenario 3 (idle): a pingFrame-byte
// ping over a plain loopback TCP connection, echoed at once by the other
// end, one at a time for d; each echo must be the ping just sent.
func runPingPong(d time.Duration) (rttResult, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return rttResult{}, err
	}
	defer ln.Close()
	echoed := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			echoed <- err
			return
		}
		defer c.Close()
		var b [pingFrame]byte
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				if err == io.EOF {
					err = nil
				}
				echoed <- err
				return
			}
			if _, err := c.Write(b[:]); err != nil {
				echoed <- err
				return
			}
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return rttResult{}, err
	}
	var ping, pong [pingFrame]byte
	var rtts []time.Duration
	start := time.Now()
	for seq := uint64(1); time.Since(start) < d; seq++ {
		binary.LittleEndian.PutUint64(ping[:], seq)
		t0 := time.Now()
		if _, err := c.Write(ping[:]); err != nil {
			c.Close()
			return rttResult{}, err
		}
		if _, err := io.ReadFull(c, pong[:]); err != nil {
			c.Close()
			return rttResult{}, err
		}
		rtts = append(rtts, time.Since(t0))
		if pong != ping {
			c.Close()
			return rttResult{}, fmt.Errorf("ping %d echoed as %x", seq, pong[:8])
		}
	}
	c.Close()
	if err := <-echoed; err != nil {
		return rttResult{}, fmt.Errorf("echo: %w", err)
	}
	slices.Sort(rtts)
	return rttResult{p50: percentile(rtts, 50), p99: percentile(rtts, 99), pings: len(rtts)}, nil
}
