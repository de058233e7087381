package rafthttp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/encoding/protowire"
)

// amplifyBytes is the wire size of every hostile input below.
const amplifyBytes = 16 << 20

// maxAmplifiedHeap is what serving one of them may allocate in all.
const maxAmplifiedHeap = 64 << 20

// repeatedField returns copies of protobuf field num carrying v, with a
// prefix, up to size bytes.
func repeatedField(prefix []byte, num protowire.Number, v []byte, size int) []byte {
	b := append([]byte(nil), prefix...)
	one := protowire.AppendBytes(protowire.AppendTag(nil, num, protowire.BytesType), v)
	for len(b)+len(one) <= size {
		b = append(b, one...)
	}
	return b
}

// amplifyShape is a message that costs more to decode than to send.
type amplifyShape struct {
	name   string
	body   []byte // the protobuf message
	served bool   // whether it fits the default receive budget
}

// amplifyShapes are the amplification shapes at 16 MiB each. msgType is
// the type their message header carries.
func amplifyShapes(msgType uint64) []amplifyShape {
	hdr := protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), msgType)
	hdr = protowire.AppendVarint(protowire.AppendTag(hdr, 3, protowire.VarintType), htPeerID)
	hdr = protowire.AppendVarint(protowire.AppendTag(hdr, 2, protowire.VarintType), htLocalID)
	noop := []byte{0x08, 0x00, 0x10, 0x05, 0x18, 0x80, 0x01} // type, term, index
	small := append(append([]byte(nil), noop...), protowire.AppendBytes(protowire.AppendTag(nil, 4, protowire.BytesType), make([]byte, 60))...)
	return []amplifyShape{
		{name: "empty entries", body: repeatedField(hdr, 7, nil, amplifyBytes)},
		{name: "empty responses", body: repeatedField(hdr, 14, nil, amplifyBytes)},
		{name: "tiny entries", body: repeatedField(hdr, 7, []byte{0x10, 0x01}, amplifyBytes)},
		{name: "no-op entries", body: repeatedField(hdr, 7, noop, amplifyBytes)},
		// 70-byte entries cost about 2.7 times their size: within the
		// budget, so served.
		{name: "small entries", body: repeatedField(hdr, 7, small, amplifyBytes), served: true},
	}
}

// heapDuring runs f and returns what the heap allocated meanwhile (garbage
// included) and how much the live heap grew (after a collection, with what f
// left reachable, such as a message raft still holds).
func heapDuring(f func()) (allocated, grew uint64) {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	f()
	runtime.ReadMemStats(&after)
	allocated = after.TotalAlloc - before.TotalAlloc
	runtime.GC()
	runtime.ReadMemStats(&after)
	if after.HeapAlloc > before.HeapAlloc {
		grew = after.HeapAlloc - before.HeapAlloc
	}
	return allocated, grew
}

// TestAmplificationPipeline posts each shape to /raft through the handler:
// refused (or served) without the process allocating more than 64 MiB.
func TestAmplificationPipeline(t *testing.T) {
	for _, sh := range amplifyShapes(uint64(3)) { // MsgApp
		t.Run(sh.name, func(t *testing.T) {
			tr, fr := newNode(t, htLocal()).parts()
			htAddPeer(t, tr)
			h := tr.Handler()
			rec := httptest.NewRecorder()
			alloc, grew := heapDuring(func() {
				req := httptest.NewRequest(http.MethodPost, RaftPrefix, bytes.NewReader(sh.body))
				req.Header = htHeaders(htPipeline)
				h.ServeHTTP(rec, req)
			})
			t.Logf("%d bytes: %d, allocated %d MiB, heap grew %d MiB", len(sh.body), rec.Code, alloc>>20, grew>>20)
			checkAmplified(t, tr, sh, rec.Code == http.StatusNoContent, alloc, grew, len(sh.body))
			if sh.served {
				fr.recv(t)
			}
		})
	}
}

// TestAmplificationSnapshotEnvelope sends each shape as the MsgSnap
// envelope of a snapshot POST.
func TestAmplificationSnapshotEnvelope(t *testing.T) {
	for _, sh := range amplifyShapes(uint64(7)) { // MsgSnap
		t.Run(sh.name, func(t *testing.T) {
			tr, _ := newNode(t, htLocal(), withStore(&memStore{})).parts()
			htAddPeer(t, tr)
			h := tr.Handler()
			body := append(binary.BigEndian.AppendUint64(nil, uint64(len(sh.body))), sh.body...)
			rec := httptest.NewRecorder()
			alloc, grew := heapDuring(func() {
				req := httptest.NewRequest(http.MethodPost, RaftSnapshotPrefix, bytes.NewReader(body))
				req.Header = htHeaders(htSnapshot)
				h.ServeHTTP(rec, req)
			})
			t.Logf("%d bytes: %d, allocated %d MiB, heap grew %d MiB", len(body), rec.Code, alloc>>20, grew>>20)
			checkAmplified(t, tr, sh, rec.Code == http.StatusNoContent, alloc, grew, len(body))
		})
	}
}

// TestAmplificationStreams decodes each shape from a message-stream frame
// and a msgappv2 record, with the receive budget a stream reader uses.
func TestAmplificationStreams(t *testing.T) {
	u64 := func(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }
	type codec struct {
		name  string
		frame func(body []byte) []byte
		dec   func(body []byte) decoder
	}
	codecs := []codec{
		{name: "message", frame: func(b []byte) []byte { return append(u64(nil, uint64(len(b))), b...) },
			dec: func(b []byte) decoder { return newMessageDecoder(bytes.NewReader(b), DefaultMaxMessageBytes) }},
		{name: "msgappv2 full", frame: func(b []byte) []byte { return append(u64([]byte{msgAppV2MsgApp}, uint64(len(b))), b...) },
			dec: func(b []byte) decoder {
				return newMsgAppV2Decoder(bytes.NewReader(b), htLocalID, htPeerID, DefaultMaxMessageBytes)
			}},
	}
	for _, c := range codecs {
		for _, sh := range amplifyShapes(uint64(3)) {
			t.Run(c.name+"/"+sh.name, func(t *testing.T) {
				budget := newRecvBudget(DefaultMaxReceiveBytes)
				frame := c.frame(sh.body)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				var err error
				var charge int64
				var m *raftpb.Message
				alloc, grew := heapDuring(func() {
					d := c.dec(frame)
					setCharger(d, recvCharger{budget: budget, ctx: ctx, wait: true})
					m, _, err = d.decode()
					charge = d.charged()
				})
				t.Logf("%d bytes: %v, allocated %d MiB, heap grew %d MiB (%d entries)", len(frame), err, alloc>>20, grew>>20, len(m.GetEntries()))
				budget.release(charge)
				checkAmplifiedBudget(t, budget, sh, err == nil, alloc, grew, len(frame))
			})
		}
	}
	// AppEntries records carry entries without a message around them.
	t.Run("msgappv2 AppEntries/tiny entries", func(t *testing.T) {
		const count = amplifyBytes / 10
		rec := u64([]byte{msgAppV2AppEntries}, count)
		for range count {
			rec = append(u64(rec, 2), 0x10, 0x01)
		}
		rec = u64(rec, 0)
		budget := newRecvBudget(DefaultMaxReceiveBytes)
		var err error
		alloc, grew := heapDuring(func() {
			d := newMsgAppV2Decoder(bytes.NewReader(rec), htLocalID, htPeerID, DefaultMaxMessageBytes)
			d.recvCharger = recvCharger{budget: budget, ctx: context.Background(), wait: true}
			_, _, err = d.decode()
		})
		t.Logf("%d bytes: %v, allocated %d MiB, heap grew %d MiB", len(rec), err, alloc>>20, grew>>20)
		if !errors.Is(err, ErrExceedSizeLimit) {
			t.Errorf("decode: %v, want ErrExceedSizeLimit", err)
		}
		checkAmplifiedBudget(t, budget, amplifyShape{}, false, alloc, grew, len(rec))
	})
}

// setCharger gives a stream decoder the charger a stream reader gives it.
func setCharger(d decoder, ch recvCharger) {
	switch d := d.(type) {
	case *messageDecoder:
		d.recvCharger = ch
	case *msgAppV2Decoder:
		d.recvCharger = ch
	}
}

// checkAmplified checks one shape's outcome at a transport.
func checkAmplified(t *testing.T, tr *Transport, sh amplifyShape, served bool, alloc, grew uint64, wire int) {
	t.Helper()
	checkAmplifiedBudget(t, tr.budget, sh, served, alloc, grew, wire)
}

// checkAmplifiedBudget checks that a shape was served or refused as it
// should be, that the heap grew by less than maxAmplifiedHeap, and that all
// it allocated, garbage included, stayed within the receive budget plus two
// copies of its wire bytes (a body read in chunks is copied once, and the
// frame's bytes are garbage once its entries have their own slots).
func checkAmplifiedBudget(t *testing.T, b *recvBudget, sh amplifyShape, served bool, alloc, grew uint64, wire int) {
	t.Helper()
	if served != sh.served {
		t.Errorf("served = %v, want %v", served, sh.served)
	}
	if grew > maxAmplifiedHeap {
		t.Errorf("heap grew %d MiB, want under %d MiB", grew>>20, maxAmplifiedHeap>>20)
	}
	if bound := uint64(b.max) + 2*uint64(wire) + 1<<20; alloc > bound {
		t.Errorf("allocated %d MiB, want at most %d MiB", alloc>>20, bound>>20)
	}
	if n := b.inUse(); n != 0 {
		t.Errorf("%d bytes still charged to the receive budget", n)
	}
}
