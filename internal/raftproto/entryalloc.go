package raftproto

import (
	"sort"
	"unsafe"

	"go.etcd.io/raft/v3/raftpb"
)

// An entry the decoders hand to raft lives in an allocation of its own,
// with its encoding (which its Data aliases) in the same allocation when
// it is small: raft keeps entries long after the messages that brought
// them, often only some of them, so a kept entry must keep nothing else
// alive (its message, its neighbours, a frame), and cost no more than
// proto.Unmarshal's entry, data and scalars.

// inlineSlot is an entry block with n bytes of room for its encoding, n
// chosen so that the whole fills a size class of Go's allocator.
type inlineSlot[A any] struct {
	eb  entryBlock
	buf A
}

// newSlot allocates an inlineSlot whose room is the byte array A.
func newSlot[A any]() (*entryBlock, []byte) {
	s := new(inlineSlot[A])
	return &s.eb, unsafe.Slice((*byte)(unsafe.Pointer(&s.buf)), unsafe.Sizeof(s.buf))
}

// slotClasses are the inline rooms, smallest first: each is a size class
// of the allocator (up to 8 KiB) less the entry block's 112 bytes.
var slotClasses = [...]struct {
	room  int
	alloc func() (*entryBlock, []byte)
}{
	{16, newSlot[[16]byte]},
	{32, newSlot[[32]byte]},
	{48, newSlot[[48]byte]},
	{64, newSlot[[64]byte]},
	{80, newSlot[[80]byte]},
	{96, newSlot[[96]byte]},
	{112, newSlot[[112]byte]},
	{128, newSlot[[128]byte]},
	{144, newSlot[[144]byte]},
	{176, newSlot[[176]byte]},
	{208, newSlot[[208]byte]},
	{240, newSlot[[240]byte]},
	{272, newSlot[[272]byte]},
	{304, newSlot[[304]byte]},
	{336, newSlot[[336]byte]},
	{368, newSlot[[368]byte]},
	{400, newSlot[[400]byte]},
	{464, newSlot[[464]byte]},
	{528, newSlot[[528]byte]},
	{592, newSlot[[592]byte]},
	{656, newSlot[[656]byte]},
	{784, newSlot[[784]byte]},
	{912, newSlot[[912]byte]},
	{1040, newSlot[[1040]byte]},
	{1168, newSlot[[1168]byte]},
	{1296, newSlot[[1296]byte]},
	{1424, newSlot[[1424]byte]},
	{1680, newSlot[[1680]byte]},
	{1936, newSlot[[1936]byte]},
	{2192, newSlot[[2192]byte]},
	{2576, newSlot[[2576]byte]},
	{2960, newSlot[[2960]byte]},
	{3088, newSlot[[3088]byte]},
	{3344, newSlot[[3344]byte]},
	{3984, newSlot[[3984]byte]},
	{4752, newSlot[[4752]byte]},
	{5264, newSlot[[5264]byte]},
	{6032, newSlot[[6032]byte]},
	{6416, newSlot[[6416]byte]},
	{6672, newSlot[[6672]byte]},
	{6800, newSlot[[6800]byte]},
	{8080, newSlot[[8080]byte]},
}

// maxInline is the largest encoding kept inline; a larger one gets an
// allocation of its own besides the entry block.
var maxInline = slotClasses[len(slotClasses)-1].room

// slotClass returns the index in slotClasses for an encoding of n bytes,
// or -1 if it is not kept inline.
func slotClass(n int) int {
	if n > maxInline {
		return -1
	}
	return sort.Search(len(slotClasses), func(i int) bool { return slotClasses[i].room >= n })
}

// entrySize is what an entry of an n-byte encoding costs: its slot, or its
// block and its own buffer.
func entrySize(n int) int {
	if i := slotClass(n); i >= 0 {
		return int(unsafe.Sizeof(entryBlock{})) + slotClasses[i].room
	}
	return int(unsafe.Sizeof(entryBlock{})) + n
}

// EntrySlot is the allocation an entry will live in, with room for its
// encoding: a decoder reads the encoding straight into Buf, then Decode
// makes the entry of it, its Data aliasing Buf.
type EntrySlot struct {
	eb *entryBlock
	// Buf is where the entry's encoding goes, exactly its length.
	Buf []byte
}

// NewEntrySlot allocates the slot of an entry whose encoding is n bytes.
func NewEntrySlot(n int) EntrySlot {
	if i := slotClass(n); i >= 0 {
		eb, buf := slotClasses[i].alloc()
		return EntrySlot{eb: eb, Buf: buf[:n:n]}
	}
	return EntrySlot{eb: new(entryBlock), Buf: make([]byte, n)}
}

// Decode decodes the encoding in s.Buf into the slot's entry. An empty
// entry, or one of unknown fields only, is refused with ErrDegenerate.
func (s EntrySlot) Decode() (*raftpb.Entry, error) {
	if err := decodeEntry(s.eb, s.Buf); err != nil {
		return nil, err
	}
	return &s.eb.e, nil
}

// EntryCost is what an entry of an n-byte encoding costs a decoder in all:
// its slot and its pointer in the message.
func EntryCost(n int) int { return entrySize(n) + ptrSize }

// EntrySlotSize is what the slot of an entry of an n-byte encoding costs,
// its pointer aside.
func EntrySlotSize(n int) int { return entrySize(n) }
