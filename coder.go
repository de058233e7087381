package rafthttp

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

const (
	// frameHeaderLen is the size of the big-endian uint64 length prefix of a
	// message-stream frame (spec §3.2).
	frameHeaderLen = 8

	// maxRetainedBuf is the largest buffer an encoder or decoder keeps for
	// reuse; one huge message must not pin its memory for the life of the
	// connection.
	maxRetainedBuf = 1 << 20

	// encoderWriteThreshold is how many buffered bytes make an encoder write
	// through before its flush: large enough to batch many small messages
	// into one write, small enough to bound the buffer.
	encoderWriteThreshold = 256 << 10

	// decoderBufSize is the size of a decoder's read buffer.
	decoderBufSize = 64 << 10
)

// An encoder writes raft messages to one stream connection. It buffers: a
// frame reaches the connection at the latest when flush is called. Write
// errors surface from encode or flush. An encoder is owned by one goroutine,
// the stream writer.
type encoder interface {
	// encode buffers the frame of m.
	encode(m *raftpb.Message) error
	// flush writes every buffered frame to the connection.
	flush() error
	// buffered returns the number of bytes encoded but not yet written.
	buffered() int
}

// A decoder reads raft messages from one stream connection. It is owned by
// one goroutine, the stream reader. Returned messages belong to the caller:
// the decoder keeps no reference to them.
type decoder interface {
	// decode returns the next message and the number of wire bytes its frame
	// took. Link heartbeats are returned too (see isLinkHeartbeat), possibly
	// as the shared linkHeartbeat, which must not be modified.
	decode() (m *raftpb.Message, n int, err error)
	// charged returns what the last decode charged to the receive budget
	// (see recvBudget): the caller releases it when done with the message.
	charged() int64
	// buffered is how many bytes are read from the connection but not yet
	// decoded: at 0, the next decode may wait for the network.
	buffered() int
}

// linkHeartbeat is the message a stream writer sends on an idle message
// stream to keep the connection proven alive: a MsgHeartbeat with From and To
// unset, which raft never emits (spec §3.2). It is shared and must not be
// modified.
var linkHeartbeat = &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum()}

// isLinkHeartbeat reports whether m is a link heartbeat: a MsgHeartbeat from
// and to nobody. Every etcd version's encoding of it matches.
func isLinkHeartbeat(m *raftpb.Message) bool {
	return m.GetType() == raftpb.MsgHeartbeat && m.GetFrom() == 0 && m.GetTo() == 0
}

// frameWriter is the buffered writing shared by both encoders.
type frameWriter struct {
	w   io.Writer
	buf []byte
}

func (f *frameWriter) buffered() int { return len(f.buf) }

// maybeWrite writes through once enough is buffered.
func (f *frameWriter) maybeWrite() error {
	if len(f.buf) < encoderWriteThreshold {
		return nil
	}
	return f.flush()
}

func (f *frameWriter) flush() error {
	if len(f.buf) == 0 {
		return nil
	}
	_, err := f.w.Write(f.buf)
	if cap(f.buf) > maxRetainedBuf {
		f.buf = nil
	} else {
		f.buf = f.buf[:0]
	}
	return err
}

// appendUint64 appends v big-endian.
func appendUint64(b []byte, v uint64) []byte { return binary.BigEndian.AppendUint64(b, v) }

// messageEncoder encodes the message stream: each frame is the message's
// protobuf length as a big-endian uint64, then the protobuf bytes.
type messageEncoder struct {
	frameWriter
}

func newMessageEncoder(w io.Writer) *messageEncoder {
	return &messageEncoder{frameWriter{w: w}}
}

func (e *messageEncoder) encode(m *raftpb.Message) error {
	e.buf = appendMessageFrame(e.buf, m)
	return e.maybeWrite()
}

// appendMessageFrame appends m's length-prefixed frame to b. The message is
// marshalled in place, after the prefix, with no allocation when b has room.
func appendMessageFrame(b []byte, m *raftpb.Message) []byte {
	size := raftproto.MessageSize(m)
	b = appendUint64(b, uint64(size))
	return raftproto.AppendMessage(b, m)
}

// messageDecoder decodes the message stream.
type messageDecoder struct {
	recvCharger
	r     *bufio.Reader
	limit uint64
	hdr   [frameHeaderLen]byte
}

// newMessageDecoder returns a decoder reading r that refuses frames longer
// than limit bytes.
func newMessageDecoder(r io.Reader, limit uint64) *messageDecoder {
	return &messageDecoder{r: bufio.NewReaderSize(r, decoderBufSize), limit: limit}
}

func (d *messageDecoder) decode() (*raftpb.Message, int, error) {
	return readMessageFrame(d.r, d.hdr[:], d.limit, &d.recvCharger)
}

// readMessageFrame reads one length-prefixed message, refusing a length above
// limit before allocating. hdr is scratch space for the prefix. ch, if not
// nil, is charged the frame and its decode (see recvBudget); on an error it
// holds nothing.
func readMessageFrame(r io.Reader, hdr []byte, limit uint64, ch *recvCharger) (*raftpb.Message, int, error) {
	if _, err := io.ReadFull(r, hdr[:frameHeaderLen]); err != nil {
		return nil, 0, err
	}
	l := binary.BigEndian.Uint64(hdr)
	if l > limit {
		return nil, 0, fmt.Errorf("message of %d bytes, limit %d: %w", l, limit, ErrExceedSizeLimit)
	}
	var c raftproto.Charger
	if ch != nil {
		c = ch
	}
	buf, err := readFrameBody(r, int64(l), ch)
	if err != nil {
		if ch != nil {
			ch.refund()
		}
		return nil, 0, err
	}
	m, _, err := raftproto.UnmarshalMessageCharged(buf, c)
	if err != nil {
		if ch != nil {
			ch.refund()
		}
		if errors.Is(err, raftproto.ErrMalformed) {
			return nil, 0, fmt.Errorf("%w: %v", ErrMalformedFrame, err)
		}
		return nil, 0, err
	}
	return m, frameHeaderLen + int(l), nil
}

// exactBodyBytes is the largest body a request handler allocates at once
// at its announced length. Larger ones are read into chunks as their bytes
// arrive: whoever can send a request could otherwise make us allocate, and
// hold in the receive budget, 32 MiB for each few bytes it trickles in.
const exactBodyBytes = 256 << 10

// readFrameBody reads a body of n bytes, n already bounded by the caller,
// charging it to ch (if not nil) before allocating. A stream reader (it
// serves one peer, and reads one frame at a time) and any body of at most
// exactBodyBytes get one buffer of the exact size; a request handler's
// larger body is read by readChunked.
func readFrameBody(r io.Reader, n int64, ch *recvCharger) ([]byte, error) {
	if ch == nil || ch.wait || n <= exactBodyBytes {
		if ch != nil {
			if err := ch.prepay(n); err != nil {
				return nil, err
			}
		}
		return readBytes(r, nil, int(n))
	}
	ch.wire, ch.held = 0, 0
	return readChunked(r, n, n, ch)
}

// readChunked reads a body of length bytes (-1: unknown, up to limit) into
// chunks that double from 64 KiB to 4 MiB, each charged to ch before it is
// allocated, so that memory follows the bytes that arrive; then it copies
// them once into a buffer of the exact size. The chunks are garbage after
// that: one copy, where growing a buffer by doubling leaves a series.
func readChunked(r io.Reader, length, limit int64, ch *recvCharger) ([]byte, error) {
	var (
		chunks [][]byte
		total  int64
		size   int64 = 64 << 10
	)
	for {
		n := size
		if length >= 0 {
			n = min(size, length-total)
		} else {
			n = min(size, limit+1-total) // one byte over the limit tells
		}
		if err := ch.prepayMore(n); err != nil {
			return nil, err
		}
		c, err := readBytes(r, nil, int(n))
		total += int64(len(c))
		chunks = append(chunks, c)
		if total > limit {
			return nil, ErrExceedSizeLimit
		}
		if err == io.ErrUnexpectedEOF && length < 0 {
			break // the end of a body of unknown length
		}
		if err != nil {
			return nil, err
		}
		if total == length {
			break
		}
		size = min(2*size, 4<<20)
	}
	if len(chunks) == 1 {
		return chunks[0], nil
	}
	buf := make([]byte, 0, total)
	for _, c := range chunks {
		buf = append(buf, c...)
	}
	ch.unpay(ch.held - total) // what the last chunk did not fill
	return buf, nil
}

// readBytes appends exactly n bytes from r to buf, growing it once to the
// exact size needed: a length read from a frame has been bounded by the
// caller, and growing by doubling would leave copies behind. A stream that
// ends early gives io.ErrUnexpectedEOF.
func readBytes(r io.Reader, buf []byte, n int) ([]byte, error) {
	start := len(buf)
	if need := start + n; need > cap(buf) {
		// make and copy, not slices.Grow: without the compiler's
		// optimisation of append(s, make(...)...), as under -race, Grow
		// allocates twice. A buffer being appended to (a record's
		// scratch) at least doubles, so that its growth stays linear.
		c := need
		if start > 0 {
			c = max(need, 2*cap(buf))
		}
		nb := make([]byte, need, c)
		copy(nb, buf)
		buf = nb
	} else {
		buf = buf[:need]
	}
	k, err := io.ReadFull(r, buf[start:])
	if err != nil {
		return buf[:start+k], unexpectedEOF(err)
	}
	return buf, nil
}

// unexpectedEOF turns an EOF inside a frame or record into
// io.ErrUnexpectedEOF: only an EOF between frames is a clean end of stream.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

func (d *messageDecoder) buffered() int { return d.r.Buffered() }
