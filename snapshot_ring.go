package rafthttp

import (
	"hash/crc32"
)

// replayRing holds the last bytes read from a payload, payload[lo:hi], in
// a circular buffer, with the CRC-32C of payload[:lo] and of payload[:hi],
// so that an attempt can send again from any offset in between and prove
// what comes before it. A ring of capacity 0 holds nothing.
type replayRing struct {
	buf          []byte
	lo, hi       int64
	crcLo, crcHi uint32
}

// append adds p, read from the payload at hi, pushing out the oldest bytes
// as needed.
func (r *replayRing) append(p []byte) {
	r.crcHi = crc32.Update(r.crcHi, crc32c, p)
	c := int64(len(r.buf))
	if over := r.hi - r.lo + int64(len(p)) - c; over > 0 {
		held := min(over, r.hi-r.lo)
		r.drop(held)
		if head := over - held; head > 0 { // p is longer than the ring
			r.crcLo = crc32.Update(r.crcLo, crc32c, p[:head])
			r.lo += head
			r.hi += head
			p = p[head:]
		}
	}
	for len(p) > 0 {
		n := copy(r.buf[r.hi%c:], p)
		p = p[n:]
		r.hi += int64(n)
	}
}

// drop forgets the n oldest bytes held.
func (r *replayRing) drop(n int64) {
	c := int64(len(r.buf))
	for n > 0 {
		i := r.lo % c
		k := min(n, c-i)
		r.crcLo = crc32.Update(r.crcLo, crc32c, r.buf[i:i+k])
		r.lo += k
		n -= k
	}
}

// crcAt returns the CRC-32C of payload[:off]; lo <= off <= hi.
func (r *replayRing) crcAt(off int64) uint32 {
	if off == r.hi {
		return r.crcHi
	}
	c := int64(len(r.buf))
	crc := r.crcLo
	for o := r.lo; o < off; {
		i := o % c
		k := min(off-o, c-i)
		crc = crc32.Update(crc, crc32c, r.buf[i:i+k])
		o += k
	}
	return crc
}

// readAt copies payload bytes from off (lo <= off < hi) into p.
func (r *replayRing) readAt(p []byte, off int64) int {
	c := int64(len(r.buf))
	p = p[:min(int64(len(p)), r.hi-off)]
	n := 0
	for n < len(p) {
		k := copy(p[n:], r.buf[(off+int64(n))%c:])
		n += k
	}
	return n
}
