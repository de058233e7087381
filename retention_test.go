package rafthttp

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp/internal/raftproto"
)

// entryKeeper keeps received entries as an application would: all of them
// in a raft.MemoryStorage (dense), or one in every 16 (sparse).
type entryKeeper struct {
	mu     sync.Mutex
	dense  bool
	ms     *raft.MemoryStorage
	sparse []*raftpb.Entry
	n      int
}

func newEntryKeeper(dense bool) *entryKeeper {
	return &entryKeeper{dense: dense, ms: raft.NewMemoryStorage()}
}

func (k *entryKeeper) keep(ents []*raftpb.Entry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.n += len(ents)
	if k.dense {
		if err := k.ms.Append(ents); err != nil {
			panic(err)
		}
		return
	}
	for _, e := range ents {
		if e.GetIndex()%16 == 0 {
			k.sparse = append(k.sparse, e)
		}
	}
}

func (k *entryKeeper) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.n
}

// liveHeap returns the heap in use after a collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// retentionMsgApp is the i-th MsgApp of perMsg 100-byte entries, continuing
// the log where the one before ended, as a leader sends them.
func retentionMsgApp(i, perMsg int) *raftpb.Message {
	first := uint64(i*perMsg) + 1
	m := &raftpb.Message{Type: raftpb.MsgApp.Enum(), From: proto.Uint64(1), To: proto.Uint64(2),
		Term: proto.Uint64(1), LogTerm: proto.Uint64(1), Index: proto.Uint64(first - 1), Commit: proto.Uint64(first - 1)}
	for j := range uint64(perMsg) {
		data := make([]byte, 100)
		data[0] = byte(first + j)
		m.Entries = append(m.Entries, &raftpb.Entry{Term: proto.Uint64(1), Index: proto.Uint64(first + j),
			Type: raftpb.EntryNormal.Enum(), Data: data})
	}
	return m
}

// TestEntryRetention delivers 1,000,000 100-byte entries through the
// transport (msgappv2 stream) into a store that keeps them all, or one in
// 16, and compares the heap it then holds with the same entries decoded by
// proto.Unmarshal and kept the same way: at most 1.1 times.
func TestEntryRetention(t *testing.T) {
	const total = 1_000_000
	for _, perMsg := range []int{1, 16} {
		for _, dense := range []bool{true, false} {
			name := fmt.Sprintf("%d per message/sparse", perMsg)
			if dense {
				name = fmt.Sprintf("%d per message/dense", perMsg)
			}
			t.Run(name, func(t *testing.T) {
				// By proto.Unmarshal, from the bytes the sender encodes.
				base := liveHeap()
				viaProto := newEntryKeeper(dense)
				for i := range total / perMsg {
					enc := raftproto.AppendMessage(nil, retentionMsgApp(i, perMsg))
					m := new(raftpb.Message)
					if err := proto.Unmarshal(enc, m); err != nil {
						t.Fatal(err)
					}
					viaProto.keep(m.Entries)
				}
				protoHeap := liveHeap() - base
				runtime.KeepAlive(viaProto)
				viaProto = nil

				// Through the transport.
				kept := newEntryKeeper(dense)
				a := newNode(t, withID(1))
				b := newNode(t, withID(2))
				b.raft.setProcess(func(_ context.Context, m *raftpb.Message) error {
					if m.GetType() == raftpb.MsgApp {
						kept.keep(m.Entries)
					}
					return nil
				})
				connect(t, a, b)
				waitStreams(t, a, b)
				base = liveHeap()
				for i := range total / perMsg {
					m := retentionMsgApp(i, perMsg)
					for {
						// Send drops what a full queue cannot take: wait
						// for room rather than lose entries.
						p, _ := a.tr.get(2)
						if len(p.writers[streamTypeMsgAppV2].msgc) < cap(p.writers[streamTypeMsgAppV2].msgc)/2 {
							break
						}
						runtime.Gosched()
					}
					a.tr.Send([]*raftpb.Message{m})
				}
				waitFor(t, "every entry kept", func() bool { return kept.count() == total })
				ours := liveHeap() - base
				runtime.KeepAlive(kept)

				ratio := float64(ours) / float64(protoHeap)
				t.Logf("%d entries: %.1f bytes per entry kept (proto.Unmarshal: %.1f), %.3fx",
					total, float64(ours)/total, float64(protoHeap)/total, ratio)
				if ratio > 1.1 {
					t.Errorf("heap held %.3f times proto.Unmarshal's, want at most 1.1", ratio)
				}
			})
		}
	}
}
