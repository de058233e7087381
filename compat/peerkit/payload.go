package peerkit

import "io"

// PayloadByte is byte i of a test snapshot payload.
func PayloadByte(i int64) byte { return byte(i % 251) }

// NewPayload returns a test snapshot payload of size bytes, byte i being
// PayloadByte(i).
func NewPayload(size int64) io.ReadCloser { return &payload{size: size} }

type payload struct{ off, size int64 }

func (p *payload) Read(b []byte) (int, error) {
	if p.off >= p.size {
		return 0, io.EOF
	}
	n := min(int64(len(b)), p.size-p.off)
	for i := range n {
		b[i] = PayloadByte(p.off + i)
	}
	p.off += n
	return int(n), nil
}

func (p *payload) Close() error { return nil }
