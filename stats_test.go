package rafthttp

import (
	"bytes"
	"slices"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func TestStatsOrderedByID(t *testing.T) {
	a := newNode(t, withID(1))
	if got := a.tr.Stats(); len(got) != 0 {
		t.Errorf("Stats() without peers = %v, want empty", got)
	}
	// The largest member ID: the two above it are raft's local storage
	// threads (raft.LocalApplyThread, raft.LocalAppendThread).
	ids := []uint64{0x50, 0x3, 0xfffffffffffffffd, 0x40, 0x2}
	for _, id := range ids {
		if err := a.tr.AddPeer(id, []string{"http://" + freeAddr(t)}); err != nil {
			t.Fatal(err)
		}
	}
	var got []uint64
	for _, s := range a.tr.Stats() {
		got = append(got, s.ID)
	}
	want := slices.Sorted(slices.Values(ids))
	if !slices.Equal(got, want) {
		t.Errorf("Stats() IDs = %x, want %x", got, want)
	}
	a.tr.RemovePeer(0x40)
	if n := len(a.tr.Stats()); n != len(ids)-1 {
		t.Errorf("after RemovePeer, Stats() has %d entries, want %d", n, len(ids)-1)
	}
}

func TestStatsPeerStatusUnknown(t *testing.T) {
	a := newNode(t, withID(1))
	if err := a.tr.AddPeer(2, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	if err := a.tr.AddRemote(3, []string{"http://" + freeAddr(t)}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint64{0, 1, 3, 4} { // nobody, ourselves, a remote, a stranger
		if st, ok := a.tr.PeerStatus(id); ok || st != (PeerStats{}) {
			t.Errorf("PeerStatus(%d) = %+v, %v; want the zero value, false", id, st, ok)
		}
	}
	if st, ok := a.tr.PeerStatus(2); !ok || st.ID != 2 {
		t.Errorf("PeerStatus(2) = %+v, %v; want its stats, true", st, ok)
	}
}

func TestStatsCounts(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))
	connect(t, a, b)
	waitStreamsUp(t, a, b)

	st := func(n *testNode, id uint64) PeerStats {
		t.Helper()
		s, ok := n.tr.PeerStatus(id)
		if !ok {
			t.Fatalf("PeerStatus(%d) not found", id)
		}
		return s
	}
	waitFor(t, "both peers active", func() bool { return st(a, 2).Active && st(b, 1).Active })
	if s := st(a, 2); s.ActiveSince.IsZero() {
		t.Errorf("active peer with zero ActiveSince: %+v", s)
	}

	t.Run("streams", func(t *testing.T) {
		sent0, recv0 := st(a, 2), st(b, 1)
		const n = 20
		var payload int
		for i := range uint64(n / 2) {
			app := newMsg(raftpb.MsgApp, 1, 2, i)
			app.Entries = []*raftpb.Entry{{Term: proto.Uint64(1), Index: proto.Uint64(i + 1), Data: bytes.Repeat([]byte{'e'}, 100)}}
			payload += 100
			a.tr.Send([]*raftpb.Message{app, newMsg(raftpb.MsgHeartbeat, 1, 2, i)})
		}
		for range n {
			b.raft.recv(t)
		}
		waitFor(t, "MessagesSent to count every message", func() bool { return st(a, 2).MessagesSent >= sent0.MessagesSent+n })
		sent, recv := st(a, 2), st(b, 1)
		if got := sent.MessagesSent - sent0.MessagesSent; got != n {
			t.Errorf("MessagesSent grew by %d, want %d", got, n)
		}
		if got := recv.MessagesReceived - recv0.MessagesReceived; got != n {
			t.Errorf("MessagesReceived grew by %d, want %d", got, n)
		}
		if got := sent.BytesSent - sent0.BytesSent; got < uint64(payload) {
			t.Errorf("BytesSent grew by %d, want at least the %d payload bytes", got, payload)
		}
		if got := recv.BytesReceived - recv0.BytesReceived; got < uint64(payload) {
			t.Errorf("BytesReceived grew by %d, want at least the %d payload bytes", got, payload)
		}
		// Nothing went the other way but link heartbeats.
		if back := st(b, 1).MessagesSent; back != 0 {
			t.Errorf("b's MessagesSent to 1 = %d, want 0", back)
		}
	})

	t.Run("pipeline", func(t *testing.T) {
		sent0, recv0 := st(a, 2), st(b, 1)
		// A MsgSnap always goes by the pipeline.
		snap := newMsg(raftpb.MsgSnap, 1, 2, 5)
		snap.Snapshot = &raftpb.Snapshot{Data: bytes.Repeat([]byte{'s'}, 500),
			Metadata: &raftpb.SnapshotMetadata{Index: proto.Uint64(5), Term: proto.Uint64(1)}}
		a.tr.Send([]*raftpb.Message{snap})
		b.raft.recv(t)
		waitFor(t, "the POST to be counted", func() bool { return st(a, 2).MessagesSent == sent0.MessagesSent+1 })
		if got := st(a, 2).BytesSent - sent0.BytesSent; got < 500 {
			t.Errorf("BytesSent grew by %d, want at least 500", got)
		}
		recv := st(b, 1)
		if got := recv.MessagesReceived - recv0.MessagesReceived; got != 1 {
			t.Errorf("MessagesReceived grew by %d, want 1", got)
		}
		if got := recv.BytesReceived - recv0.BytesReceived; got < 500 {
			t.Errorf("BytesReceived grew by %d, want at least 500", got)
		}
	})

	t.Run("dropped", func(t *testing.T) {
		before := st(a, 2)
		a.tr.CutPeer(2)
		const n = 3
		for i := range uint64(n) {
			a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 1, 2, i)})
		}
		a.tr.MendPeer(2)
		after := st(a, 2)
		if got := after.Dropped - before.Dropped; got != n {
			t.Errorf("Dropped grew by %d, want %d", got, n)
		}
		if after.MessagesSent != before.MessagesSent {
			t.Errorf("MessagesSent moved from %d to %d for dropped messages", before.MessagesSent, after.MessagesSent)
		}
	})

	t.Run("reconnects", func(t *testing.T) {
		a0, b0 := st(a, 2).StreamReconnects, st(b, 1).StreamReconnects
		// Cut the connections a dialled to b: a's two readers redial, and
		// b's two writers get the new connections.
		b.srv.CloseClientConnections()
		waitFor(t, "a's readers to reconnect", func() bool { return st(a, 2).StreamReconnects >= a0+2 })
		waitFor(t, "b's writers to reconnect", func() bool { return st(b, 1).StreamReconnects >= b0+2 })
		waitFor(t, "peers active again", func() bool { return st(a, 2).Active && st(b, 1).Active })
		b.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgHeartbeat, 2, 1, 1)})
		if got := a.raft.recv(t); got.GetFrom() != 2 {
			t.Errorf("got a message from %d, want 2", got.GetFrom())
		}
	})
}

// TestStatsStreams checks the stream state PeerStats reports: every end up
// once two members are connected, each since a moment within the connect,
// a reconnection showing as a later Since, and every end down once the
// remote stops.
func TestStatsStreams(t *testing.T) {
	a := newNode(t, withID(1))
	b := newNode(t, withID(2))

	st := func(t *testing.T, n *testNode, id uint64) PeerStats {
		t.Helper()
		s, ok := n.tr.PeerStatus(id)
		if !ok {
			t.Fatalf("PeerStatus(%d) not found", id)
		}
		return s
	}
	// ends lists a peer's four stream ends, named for failure messages.
	type end struct {
		name  string
		state StreamState
	}
	ends := func(s PeerStats) []end {
		var out []end
		for _, ss := range s.Streams {
			out = append(out, end{ss.Type + " writer", ss.Writer}, end{ss.Type + " reader", ss.Reader})
		}
		return out
	}

	if err := a.tr.AddPeer(2, []string{b.url}); err != nil {
		t.Fatal(err)
	}
	// Before b knows a, b refuses a's dials and dials nothing: a's side
	// must report everything down, with the types in their place.
	s := st(t, a, 2)
	if got := []string{s.Streams[0].Type, s.Streams[1].Type}; !slices.Equal(got, []string{StreamMsgAppV2, StreamMessage}) {
		t.Errorf("stream types = %q, want [%q %q]", got, StreamMsgAppV2, StreamMessage)
	}
	for _, e := range ends(s) {
		if e.state != (StreamState{}) {
			t.Errorf("a's %s before b added a = %+v, want down with a zero Since", e.name, e.state)
		}
	}
	if s.StreamsUp() {
		t.Error("StreamsUp before b added a = true, want false")
	}

	start := time.Now()
	if err := b.tr.AddPeer(1, []string{a.url}); err != nil {
		t.Fatal(err)
	}
	waitStreamsUp(t, a, b)
	up := time.Now()
	first := map[string]time.Time{} // a's ends' Since, by name

	tests := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"up both ways since the connect", func(t *testing.T) {
			for _, n := range []struct {
				node *testNode
				peer uint64
			}{{a, 2}, {b, 1}} {
				for _, e := range ends(st(t, n.node, n.peer)) {
					if !e.state.Up || e.state.Since.Before(start) || e.state.Since.After(up) {
						t.Errorf("node %d's %s = %+v, want up since a moment in [%v, %v]",
							n.node.tr.ID, e.name, e.state, start, up)
					}
					if n.node == a {
						first[e.name] = e.state.Since
					}
				}
			}
		}},
		{"Since holds while traffic flows", func(t *testing.T) {
			a.tr.Send([]*raftpb.Message{newMsg(raftpb.MsgApp, 1, 2, 1), newMsg(raftpb.MsgHeartbeat, 1, 2, 1)})
			b.raft.recv(t)
			b.raft.recv(t)
			for _, e := range ends(st(t, a, 2)) {
				if !e.state.Up || !e.state.Since.Equal(first[e.name]) {
					t.Errorf("a's %s after sending = %+v, want still up since %v", e.name, e.state, first[e.name])
				}
			}
		}},
		{"a reconnection shows as a later Since", func(t *testing.T) {
			// Cut the connections b dialled to a: b's readers redial,
			// and a's writers attach the new connections.
			a.srv.CloseClientConnections()
			waitFor(t, "a's writers to attach new streams", func() bool {
				s := st(t, a, 2)
				return s.Streams[0].Writer.Since.After(first[StreamMsgAppV2+" writer"]) &&
					s.Streams[1].Writer.Since.After(first[StreamMessage+" writer"])
			})
			waitStreamsUp(t, a, b)
		}},
		{"down after the remote stops", func(t *testing.T) {
			b.close()
			waitFor(t, "a to see every stream with b down", func() bool {
				for _, e := range ends(st(t, a, 2)) {
					if e.state.Up {
						return false
					}
				}
				return true
			})
			for _, e := range ends(st(t, a, 2)) {
				if !e.state.Since.IsZero() {
					t.Errorf("a's %s after b stopped = %+v, want a zero Since", e.name, e.state)
				}
			}
			if st(t, a, 2).StreamsUp() {
				t.Error("StreamsUp after b stopped = true, want false")
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, tt.run)
	}
}
