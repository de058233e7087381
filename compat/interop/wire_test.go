package interop

import (
	"encoding/binary"
	"fmt"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// canonical returns a copy of m with every zero-valued scalar and every
// empty sub-message cleared. etcd 3.5 and 3.6 encode zero fields (3.5 even
// an empty snapshot on every message), 3.7 and we only the set ones; raft
// never tells a zero field from an absent one, so neither do the tests.
func canonical(m *raftpb.Message) *raftpb.Message {
	c := proto.Clone(m).(*raftpb.Message)
	clearZero(c.ProtoReflect())
	return c
}

// clearZero clears m's zero scalars and empty messages, recursively, and
// reports whether m ends up empty.
func clearZero(m protoreflect.Message) bool {
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList():
			l := v.List()
			if fd.Kind() == protoreflect.MessageKind {
				for i := range l.Len() {
					clearZero(l.Get(i).Message())
				}
			}
			if l.Len() == 0 {
				m.Clear(fd)
			}
		case fd.Kind() == protoreflect.MessageKind:
			if clearZero(v.Message()) {
				m.Clear(fd)
			}
		case isZero(fd, v):
			m.Clear(fd)
		}
		return true
	})
	empty := true
	m.Range(func(protoreflect.FieldDescriptor, protoreflect.Value) bool { empty = false; return false })
	return empty
}

func isZero(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return !v.Bool()
	case protoreflect.EnumKind:
		return v.Enum() == 0
	case protoreflect.BytesKind:
		return len(v.Bytes()) == 0
	case protoreflect.StringKind:
		return v.String() == ""
	case protoreflect.Int32Kind, protoreflect.Int64Kind, protoreflect.Sint32Kind, protoreflect.Sint64Kind,
		protoreflect.Sfixed32Kind, protoreflect.Sfixed64Kind:
		return v.Int() == 0
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		return v.Uint() == 0
	}
	return false
}

// sameMessage reports whether a and b are the same raft message once zero
// fields are ignored.
func sameMessage(a, b *raftpb.Message) bool { return proto.Equal(canonical(a), canonical(b)) }

// msgAppV2Frame is one frame of a msgappv2 stream.
type msgAppV2Frame struct {
	kind    byte // 0 link heartbeat, 1 AppEntries, 2 full MsgApp
	entries int  // AppEntries: entry count
	msg     *raftpb.Message
}

// parseMsgAppV2 splits the bytes of a msgappv2 stream into frames. A
// truncated last frame (the capture stopped mid-write) is ignored.
func parseMsgAppV2(b []byte) ([]msgAppV2Frame, error) {
	var out []msgAppV2Frame
	u64 := func() (uint64, bool) {
		if len(b) < 8 {
			return 0, false
		}
		v := binary.BigEndian.Uint64(b)
		b = b[8:]
		return v, true
	}
	for len(b) > 0 {
		kind := b[0]
		b = b[1:]
		switch kind {
		case 0:
			out = append(out, msgAppV2Frame{kind: 0})
		case 1:
			n, ok := u64()
			if !ok {
				return out, nil
			}
			for range n {
				size, ok := u64()
				if !ok || uint64(len(b)) < size {
					return out, nil
				}
				b = b[size:]
			}
			if _, ok := u64(); !ok {
				return out, nil
			}
			out = append(out, msgAppV2Frame{kind: 1, entries: int(n)})
		case 2:
			size, ok := u64()
			if !ok || uint64(len(b)) < size {
				return out, nil
			}
			m := &raftpb.Message{}
			if err := proto.Unmarshal(b[:size], m); err != nil {
				return out, fmt.Errorf("full MsgApp frame: %w", err)
			}
			b = b[size:]
			out = append(out, msgAppV2Frame{kind: 2, msg: m})
		default:
			return out, fmt.Errorf("unknown msgappv2 frame type %d", kind)
		}
	}
	return out, nil
}

// messageFrame is one frame of a message stream: the length prefix and the
// message.
type messageFrame struct {
	size int
	msg  *raftpb.Message
}

// parseMessageStream splits the bytes of a message stream into frames,
// ignoring a truncated last one.
func parseMessageStream(b []byte) ([]messageFrame, error) {
	var out []messageFrame
	for len(b) >= 8 {
		size := binary.BigEndian.Uint64(b)
		if uint64(len(b)-8) < size {
			break
		}
		m := &raftpb.Message{}
		if err := proto.Unmarshal(b[8:8+size], m); err != nil {
			return out, fmt.Errorf("message frame: %w", err)
		}
		out = append(out, messageFrame{size: int(size), msg: m})
		b = b[8+size:]
	}
	return out, nil
}

// isLinkHeartbeat reports whether m is a link heartbeat: a MsgHeartbeat
// from 0 to 0, which only transports send.
func isLinkHeartbeat(m *raftpb.Message) bool {
	return m.GetType() == raftpb.MsgHeartbeat && m.GetFrom() == 0 && m.GetTo() == 0
}
