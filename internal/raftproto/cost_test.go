package raftproto

import (
	"bytes"
	"errors"
	"runtime"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
)

// allocatedBytes returns the bytes the heap allocated, on average, over n
// calls of f. It stops the world twice; keep n small.
func allocatedBytes(n int, f func()) float64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range n {
		f()
	}
	runtime.ReadMemStats(&after)
	return float64(after.TotalAlloc-before.TotalAlloc) / float64(n)
}

// costBound is what decoding len bytes may allocate at most.
func costBound(n int) float64 { return float64(MaxCostPerByte*n + MaxCostConst) }

// repeatField returns n copies of field num carrying v.
func repeatField(num protowire.Number, v []byte, n int) []byte {
	var b []byte
	for range n {
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendBytes(b, v)
	}
	return b
}

// amplifiers are the shapes that cost the most to decode per wire byte, n
// entries (or n*4 IDs) each.
func amplifiers(n int) map[string][]byte {
	return map[string][]byte{
		// The smallest accepted entry: one one-byte varint field.
		"tiny entries": repeatField(7, []byte{0x10, 0x01}, n),
		// A raft no-op entry: term, index and type.
		"no-op entries":  repeatField(7, []byte{0x08, 0x00, 0x10, 0x05, 0x18, 0x80, 0x01}, n),
		"one tiny entry": repeatField(7, []byte{0x10, 0x01}, 1),
		// Packed conf state IDs, one byte each.
		"conf state IDs": func() []byte {
			ids := bytes.Repeat([]byte{0x01}, 4*n)
			cs := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), ids)
			md := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), cs)
			snap := protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), md)
			return protowire.AppendBytes(protowire.AppendTag(nil, 9, protowire.BytesType), snap)
		}(),
		"empty snapshot": {0x4a, 0x00},
		"nothing":        {},
	}
}

// TestDecodeCostBound measures, with the heap's own count, what decoding the
// most amplifying shapes allocates, and checks it against the documented
// bound and against the cost the decoder charges.
func TestDecodeCostBound(t *testing.T) {
	for name, buf := range amplifiers(4096) {
		t.Run(name, func(t *testing.T) {
			_, cost, err := UnmarshalMessageCharged(buf, nil)
			if err != nil {
				t.Fatal(err)
			}
			got := allocatedBytes(20, func() { _, _, _ = UnmarshalMessageCharged(buf, nil) })
			if got > costBound(len(buf)) {
				t.Errorf("decoding %d bytes allocated %.0f bytes, bound %.0f", len(buf), got, costBound(len(buf)))
			}
			// The charge is what the blocks take before the allocator
			// rounds them up: within an eighth and a page of the truth.
			if float64(cost) > got || got > float64(cost)*9/8+8<<10 {
				t.Errorf("charged %d bytes, allocated %.0f", cost, got)
			}
			t.Logf("%d wire bytes: %.0f allocated (%.1f per byte), %d charged", len(buf), got, got/float64(max(len(buf), 1)), cost)
		})
	}
}

// TestDecodeDegenerate: shapes raft never sends are refused before anything
// is allocated, with ErrDegenerate, although protobuf accepts them.
func TestDecodeDegenerate(t *testing.T) {
	tests := []struct {
		name string
		buf  []byte
	}{
		{name: "empty entries", buf: repeatField(7, nil, 1000)},
		{name: "one empty entry among others", buf: append(repeatField(7, []byte{0x10, 0x01}, 3), repeatField(7, nil, 1)...)},
		{name: "empty responses", buf: repeatField(14, nil, 1000)},
		{name: "one response", buf: repeatField(14, []byte{0x08, 0x01}, 1)},
		{name: "repeated snapshot", buf: repeatField(9, nil, 2)},
		{name: "repeated metadata", buf: repeatField(9, repeatField(2, nil, 2), 1)},
		{name: "repeated conf state", buf: repeatField(9, repeatField(2, repeatField(1, nil, 2), 1), 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			refused := refuseCharger{}
			_, _, err := UnmarshalMessageCharged(tc.buf, &refused)
			if !errors.Is(err, ErrDegenerate) || !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v, want ErrDegenerate", err)
			}
			if refused.calls != 0 {
				t.Errorf("charged before refusing")
			}
			if got := allocatedBytes(10, func() { _, _, _ = UnmarshalMessageCharged(tc.buf, nil) }); got > 1024 {
				t.Errorf("refusing allocated %.0f bytes", got)
			}
		})
	}
}

// refuseCharger refuses every charge and counts them.
type refuseCharger struct{ calls int }

var errRefused = errors.New("refused")

func (r *refuseCharger) Charge(int) error { r.calls++; return errRefused }

// TestDecodeChargeRefused: a refused charge stops the decode before it
// allocates, and its error comes back as it is.
func TestDecodeChargeRefused(t *testing.T) {
	buf := amplifiers(4096)["tiny entries"]
	r := refuseCharger{}
	m, _, err := UnmarshalMessageCharged(buf, &r)
	if m != nil || err != errRefused || r.calls != 1 {
		t.Fatalf("got %v, %v after %d charges; want nil, errRefused after 1", m, err, r.calls)
	}
	if got := allocatedBytes(10, func() { _, _, _ = UnmarshalMessageCharged(buf, &r) }); got > 1024 {
		t.Errorf("a refused decode allocated %.0f bytes", got)
	}
}
