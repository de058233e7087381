package interop

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/raftkit/rafthttp"
	"github.com/raftkit/rafthttp/compat/peerkit"
)

// pair is our transport and an etcd peer of one line, each behind its own
// server.
type pair struct {
	ours *ourSide
	etcd *etcdSide
}

const clusterID = 0x1000

func newPair(t *testing.T, l line, oursCluster, etcdCluster uint64) *pair {
	t.Helper()
	return newPairWith(t, l, oursCluster, etcdCluster, nil)
}

// newPairWith is newPair with our transport adjusted by configure.
func newPairWith(t *testing.T, l line, oursCluster, etcdCluster uint64, configure func(*rafthttp.Transport)) *pair {
	t.Helper()
	return &pair{ours: newOurSide(t, oursCluster, configure), etcd: newEtcdSide(t, l, etcdCluster)}
}

// connect makes each a peer of the other.
func (p *pair) connect(t *testing.T) {
	t.Helper()
	p.ours.addPeer(t, etcdID, p.etcd.url())
	p.etcd.addPeer(t, ourID, p.ours.url())
}

// direction picks the sender and the receiver of a pair.
type direction struct {
	name string
	pick func(*pair) (sender, receiver side)
}

var directions = []direction{
	{"ours-to-etcd", func(p *pair) (side, side) { return p.ours, p.etcd }},
	{"etcd-to-ours", func(p *pair) (side, side) { return p.etcd, p.ours }},
}

// forEachLine runs f against every etcd line, in parallel.
func forEachLine(t *testing.T, f func(t *testing.T, l line)) {
	for _, l := range lines {
		t.Run("etcd-"+l.name, func(t *testing.T) {
			t.Parallel()
			f(t, l)
		})
	}
}

// forEachDirection runs f against every etcd line, in both directions, on
// a fresh connected pair each time, in parallel.
func forEachDirection(t *testing.T, f func(t *testing.T, p *pair, snd, rcv side)) {
	forEachLine(t, func(t *testing.T, l line) {
		for _, d := range directions {
			t.Run(d.name, func(t *testing.T) {
				t.Parallel()
				p := newPair(t, l, clusterID, clusterID)
				snd, rcv := d.pick(p)
				f(t, p, snd, rcv)
			})
		}
	})
}

func streamPath(typ string, dialer uint64) string {
	return fmt.Sprintf("/raft/stream/%s/%x", typ, dialer)
}

// streamsUp waits until a has written to both streams it serves to b, since
// position from of its log: its stream writers to b are then attached (they
// write a link heartbeat at least every 5/3 s).
func streamsUp(t *testing.T, a, b side, from int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s to write on both its streams to %s", a.name(), b.name()), func() bool {
		return len(a.log().written(t, from, streamPath("msgapp", b.id()))) > 0 &&
			len(a.log().written(t, from, streamPath("message", b.id()))) > 0
	})
}

// connectAndWait connects the pair and waits for all four streams.
func connectAndWait(t *testing.T, p *pair) {
	t.Helper()
	p.connect(t)
	streamsUp(t, p.ours, p.etcd, 0)
	streamsUp(t, p.etcd, p.ours, 0)
}

var u64 = proto.Uint64

// streamMessages returns one message of every type raft sends between
// members other than MsgApp (msgappv2) and MsgSnap (pipeline), with the
// fields raft sets on each.
func streamMessages(from, to uint64) []*raftpb.Message {
	msg := func(typ raftpb.MessageType, m *raftpb.Message) *raftpb.Message {
		m.Type, m.From, m.To = typ.Enum(), u64(from), u64(to)
		return m
	}
	entry := func(typ raftpb.EntryType, data string) *raftpb.Entry {
		return &raftpb.Entry{Type: typ.Enum(), Data: []byte(data)}
	}
	return []*raftpb.Message{
		msg(raftpb.MsgProp, &raftpb.Message{Entries: []*raftpb.Entry{
			entry(raftpb.EntryNormal, "put k v"), entry(raftpb.EntryConfChangeV2, "\x0a\x04\x08\x00\x10\x05")}}),
		msg(raftpb.MsgAppResp, &raftpb.Message{Term: u64(3), Index: u64(10), Reject: proto.Bool(true), RejectHint: u64(8), LogTerm: u64(2)}),
		msg(raftpb.MsgVote, &raftpb.Message{Term: u64(4), LogTerm: u64(3), Index: u64(10), Context: []byte("CampaignTransfer")}),
		msg(raftpb.MsgVoteResp, &raftpb.Message{Term: u64(4), Reject: proto.Bool(true)}),
		msg(raftpb.MsgPreVote, &raftpb.Message{Term: u64(5), LogTerm: u64(3), Index: u64(10)}),
		msg(raftpb.MsgPreVoteResp, &raftpb.Message{Term: u64(5)}),
		msg(raftpb.MsgHeartbeat, &raftpb.Message{Term: u64(3), Commit: u64(9), Context: []byte("read-ctx")}),
		msg(raftpb.MsgHeartbeatResp, &raftpb.Message{Term: u64(3), Context: []byte("read-ctx")}),
		msg(raftpb.MsgTransferLeader, &raftpb.Message{Term: u64(3)}),
		msg(raftpb.MsgTimeoutNow, &raftpb.Message{Term: u64(3)}),
		msg(raftpb.MsgReadIndex, &raftpb.Message{Term: u64(3), Entries: []*raftpb.Entry{{Data: []byte("rctx")}}}),
		msg(raftpb.MsgReadIndexResp, &raftpb.Message{Term: u64(3), Index: u64(10), Entries: []*raftpb.Entry{{Data: []byte("rctx")}}}),
	}
}

func snapMessage(from, to uint64) *raftpb.Message {
	return &raftpb.Message{Type: raftpb.MsgSnap.Enum(), From: u64(from), To: u64(to), Term: u64(2),
		Snapshot: &raftpb.Snapshot{Data: []byte("MEMBERS"), Metadata: &raftpb.SnapshotMetadata{
			Index: u64(12), Term: u64(2), ConfState: &raftpb.ConfState{Voters: []uint64{from, to}}}}}
}

// checkProcessed waits for want to reach rcv's Process, from position from
// of its log, and compares them by type (proposals and the rest are
// processed by different goroutines, so their order may change).
func checkProcessed(t *testing.T, rcv side, from int, want []*raftpb.Message) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d messages to reach %s's raft", len(want), rcv.name()), func() bool {
		return rcv.log().count(from, isEv("process")) >= len(want)
	})
	got := rcv.log().processed(t, from)
	if len(got) != len(want) {
		t.Errorf("%s processed %d messages, want %d", rcv.name(), len(got), len(want))
	}
	byType := map[raftpb.MessageType]*raftpb.Message{}
	for _, m := range got {
		byType[m.GetType()] = m
	}
	for _, w := range want {
		g, ok := byType[w.GetType()]
		switch {
		case !ok:
			t.Errorf("%s: no %v processed", rcv.name(), w.GetType())
		case !sameMessage(g, w):
			t.Errorf("%s processed %v, want %v", rcv.name(), canonical(g), canonical(w))
		}
	}
}

// waitAnswers waits until s has reported n answers matching keep since
// position from. A server reports its answer after raft got the message,
// and an etcd peer's reports travel through a pipe: they may trail.
func waitAnswers(t *testing.T, s side, from int, keep func(event) bool, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%s to report %d answers", s.name(), n), func() bool { return s.log().count(from, keep) >= n })
}

// TestMessageTypes sends every raft message type that travels between
// members; all but MsgApp and MsgSnap must go over the message stream (no
// pipeline POST) and arrive intact, and MsgSnap by one pipeline POST.
func TestMessageTypes(t *testing.T) {
	forEachDirection(t, func(t *testing.T, p *pair, snd, rcv side) {
		connectAndWait(t, p)
		from := rcv.log().mark()
		msgs := streamMessages(snd.id(), rcv.id())
		for _, m := range msgs {
			snd.send(t, m)
		}
		checkProcessed(t, rcv, from, msgs)
		if n := rcv.log().count(from, isPipelinePost); n != 0 {
			t.Errorf("%s got %d pipeline POSTs, want 0: the messages must use the message stream", rcv.name(), n)
		}

		from = rcv.log().mark()
		snap := snapMessage(snd.id(), rcv.id())
		snd.send(t, snap)
		checkProcessed(t, rcv, from, []*raftpb.Message{snap})
		waitAnswers(t, rcv, from, isPipelinePost, 1)
		posts := rcv.log().since(from, isPipelinePost)
		if len(posts) != 1 || posts[0].Status != http.StatusNoContent {
			t.Errorf("%s answered pipeline POSTs %+v, want one 204: a MsgSnap goes by the pipeline", rcv.name(), posts)
		}
		eventually(t, "the MsgSnap to be reported finished", func() bool {
			return snd.log().count(0, func(e event) bool {
				return e.Ev == "snapreport" && e.ID == rcv.id() && e.Status == int(raft.SnapshotFinish)
			}) == 1
		})
		if n := snd.log().count(0, isEv("unreachable")); n != 0 {
			t.Errorf("%s reported %s unreachable %d times, want 0", snd.name(), rcv.name(), n)
		}
	})
}

// TestMsgAppV2 sends a run of MsgApps and checks that they travel over the
// msgappv2 stream in the compact AppEntries form wherever the codec allows
// it, and that the receiver rebuilds them exactly.
func TestMsgAppV2(t *testing.T) {
	forEachDirection(t, func(t *testing.T, p *pair, snd, rcv side) {
		connectAndWait(t, p)
		app := func(term, logTerm, index, commit uint64, entryTerm uint64, n int) *raftpb.Message {
			m := &raftpb.Message{Type: raftpb.MsgApp.Enum(), From: u64(snd.id()), To: u64(rcv.id()),
				Term: u64(term), LogTerm: u64(logTerm), Index: u64(index), Commit: u64(commit)}
			for i := range n {
				m.Entries = append(m.Entries, &raftpb.Entry{Term: u64(entryTerm), Index: u64(index + 1 + uint64(i)),
					Data: bytes.Repeat([]byte{byte('a' + i)}, 10*(i+1))})
			}
			return m
		}
		msgs := []*raftpb.Message{
			app(2, 2, 10, 9, 2, 1),  // first on the connection: full
			app(2, 2, 11, 11, 2, 2), // continues the log: AppEntries
			app(2, 2, 13, 13, 2, 1), // AppEntries
			app(2, 2, 14, 14, 2, 0), // commit only: AppEntries without entries
			app(3, 2, 14, 14, 3, 1), // new term, logTerm differs: full
			app(3, 3, 15, 15, 3, 2), // AppEntries again
			app(3, 3, 17, 17, 3, 1), // AppEntries with an entry above etcd's 1 MiB decode buffer
		}
		msgs[6].Entries[0].Data = bytes.Repeat([]byte("big"), 512<<10)
		wantKinds := []byte{2, 1, 1, 1, 2, 1, 1}

		wrote := snd.log().mark()
		from := rcv.log().mark()
		for _, m := range msgs {
			snd.send(t, m)
		}
		eventually(t, "the MsgApps to reach raft", func() bool { return rcv.log().count(from, isEv("process")) >= len(msgs) })
		got := rcv.log().processed(t, from)
		for i, m := range msgs {
			if i >= len(got) || !sameMessage(got[i], m) {
				t.Fatalf("%s processed %v, want (in this order) %v", rcv.name(), got, msgs)
			}
		}
		if n := rcv.log().count(from, isPipelinePost); n != 0 {
			t.Errorf("%s got %d pipeline POSTs, want 0", rcv.name(), n)
		}

		// The sender's report of what it wrote may trail the receiver's
		// of what it got: wait until it covers every message.
		var kinds []byte
		var full []*raftpb.Message
		eventually(t, snd.name()+"'s report of the msgappv2 bytes it wrote", func() bool {
			streams := snd.log().written(t, wrote, streamPath("msgapp", rcv.id()))
			switch {
			case len(streams) == 0:
				return false
			case len(streams) > 1:
				t.Fatalf("%s wrote to %d msgappv2 streams, want 1", snd.name(), len(streams))
			}
			frames, err := parseMsgAppV2(streams[0])
			if err != nil {
				t.Fatalf("%s's msgappv2 stream: %v", snd.name(), err)
			}
			kinds, full = nil, nil
			for _, f := range frames {
				if f.kind != 0 {
					kinds = append(kinds, f.kind)
				}
				if f.kind == 2 {
					full = append(full, f.msg)
				}
			}
			return len(kinds) >= len(wantKinds)
		})
		if !bytes.Equal(kinds, wantKinds) {
			t.Fatalf("%s wrote msgappv2 frames of types %v, want %v (1 = AppEntries, 2 = full MsgApp)", snd.name(), kinds, wantKinds)
		}
		if !sameMessage(full[0], msgs[0]) || !sameMessage(full[1], msgs[4]) {
			t.Errorf("%s wrote full MsgApps %v, want %v and %v", snd.name(), full, msgs[0], msgs[4])
		}
	})
}

// TestPipelineFallback cuts the streams the sender serves and keeps them
// down: messages, MsgApp included, must arrive by pipeline POSTs. When the
// streams may come back, they must, and carry the traffic again.
func TestPipelineFallback(t *testing.T) {
	forEachDirection(t, func(t *testing.T, p *pair, snd, rcv side) {
		connectAndWait(t, p)
		batch := func(term uint64) []*raftpb.Message {
			return []*raftpb.Message{
				{Type: raftpb.MsgHeartbeat.Enum(), From: u64(snd.id()), To: u64(rcv.id()), Term: u64(term), Commit: u64(4)},
				{Type: raftpb.MsgVote.Enum(), From: u64(snd.id()), To: u64(rcv.id()), Term: u64(term), LogTerm: u64(1), Index: u64(4)},
				{Type: raftpb.MsgApp.Enum(), From: u64(snd.id()), To: u64(rcv.id()), Term: u64(term), LogTerm: u64(term),
					Index: u64(4), Commit: u64(4), Entries: []*raftpb.Entry{{Term: u64(term), Index: u64(5), Data: []byte("e5")}}},
			}
		}

		cut := snd.log().mark()
		snd.blockStreams(t, true)
		snd.cutStreams(t)
		// Both writers must have let go of their connection: a message
		// queued to a writer that has yet to notice is dropped with it.
		eventually(t, snd.name()+" to let go of both its streams", func() bool {
			ended := func(typ string) bool {
				return snd.log().count(cut, func(e event) bool { return e.Ev == "streamend" && e.Path == streamPath(typ, rcv.id()) }) > 0
			}
			return ended("msgapp") && ended("message")
		})
		from := rcv.log().mark()
		down := batch(2)
		for _, m := range down {
			snd.send(t, m)
		}
		checkProcessed(t, rcv, from, down)
		waitAnswers(t, rcv, from, isPipelinePost, len(down))
		posts := rcv.log().since(from, isPipelinePost)
		if len(posts) != len(down) {
			t.Errorf("%s got %d pipeline POSTs, want %d: with the streams down every message takes the pipeline", rcv.name(), len(posts), len(down))
		}
		for _, e := range posts {
			if e.Status != http.StatusNoContent {
				t.Errorf("%s answered a pipeline POST with %d, want 204", rcv.name(), e.Status)
			}
		}

		wrote := snd.log().mark()
		snd.blockStreams(t, false)
		streamsUp(t, snd, rcv, wrote)
		from = rcv.log().mark()
		up := batch(3)
		for _, m := range up {
			snd.send(t, m)
		}
		checkProcessed(t, rcv, from, up)
		if n := rcv.log().count(from, isPipelinePost); n != 0 {
			t.Errorf("%s got %d pipeline POSTs after the streams came back, want 0", rcv.name(), n)
		}
	})
}

// TestLinkHeartbeats leaves a connected pair idle for twice the read
// timeout. Link heartbeats (each line encodes them differently) must keep
// all four streams up: no redial, no change of ActiveSince, nothing handed
// to raft; and a message must still go over a stream afterwards. Probing
// runs meanwhile and must find both sides healthy.
func TestLinkHeartbeats(t *testing.T) {
	if testing.Short() {
		t.Skip("idles for 10 s")
	}
	forEachLine(t, func(t *testing.T, l line) {
		p := newPair(t, l, clusterID, clusterID)
		connectAndWait(t, p)
		type baseline struct {
			s       side
			peer    side
			mark    int
			since   time.Time
			streams int
		}
		var bases []baseline
		for _, s := range []struct{ s, peer side }{{p.ours, p.etcd}, {p.etcd, p.ours}} {
			bases = append(bases, baseline{s: s.s, peer: s.peer, mark: s.s.log().mark(), since: s.s.activeSince(t, s.peer.id()),
				streams: s.s.log().count(0, isHTTP("GET", "/raft/stream/"))})
		}

		idle(t, 2*rafthttp.DefaultConnReadTimeout)

		for _, b := range bases {
			if n := b.s.log().count(0, isHTTP("GET", "/raft/stream/")); n != b.streams {
				t.Errorf("%s served %d stream requests, want %d: a stream was redialled", b.s.name(), n, b.streams)
			}
			if since := b.s.activeSince(t, b.peer.id()); !since.Equal(b.since) || since.IsZero() {
				t.Errorf("%s: ActiveSince(%s) = %v, want %v", b.s.name(), b.peer.name(), since, b.since)
			}
			if n := b.s.log().count(b.mark, isEv("process")); n != 0 {
				t.Errorf("%s processed %d messages while idle, want 0", b.s.name(), n)
			}
			// Everything written so far on the streams to the peer is
			// link heartbeats: enough of them, in the writer's encoding.
			min := int(2*rafthttp.DefaultConnReadTimeout/(rafthttp.DefaultConnReadTimeout/3)) - 1
			msgStreams := b.s.log().written(t, 0, streamPath("message", b.peer.id()))
			appStreams := b.s.log().written(t, 0, streamPath("msgapp", b.peer.id()))
			if len(msgStreams) != 1 || len(appStreams) != 1 {
				t.Fatalf("%s wrote to %d message and %d msgappv2 streams, want 1 and 1", b.s.name(), len(msgStreams), len(appStreams))
			}
			frames, err := parseMessageStream(msgStreams[0])
			if err != nil {
				t.Fatalf("%s's message stream: %v", b.s.name(), err)
			}
			if len(frames) < min {
				t.Errorf("%s wrote %d link heartbeats on the message stream, want at least %d", b.s.name(), len(frames), min)
			}
			for _, f := range frames {
				if !isLinkHeartbeat(f.msg) || f.size != b.s.heartbeatLen() {
					t.Errorf("%s wrote a %d-byte %v on the message stream, want only %d-byte link heartbeats", b.s.name(), f.size, f.msg, b.s.heartbeatLen())
				}
			}
			appFrames, err := parseMsgAppV2(appStreams[0])
			if err != nil {
				t.Fatalf("%s's msgappv2 stream: %v", b.s.name(), err)
			}
			if len(appFrames) < min {
				t.Errorf("%s wrote %d link heartbeats on the msgappv2 stream, want at least %d", b.s.name(), len(appFrames), min)
			}
			for _, f := range appFrames {
				if f.kind != 0 {
					t.Errorf("%s wrote a msgappv2 frame of type %d while idle, want only link heartbeats (0)", b.s.name(), f.kind)
				}
			}
			// The peer's probes were answered.
			probes := b.s.log().since(0, isHTTP("GET", rafthttp.ProbingPrefix))
			if len(probes) == 0 {
				t.Errorf("%s was never probed by %s", b.s.name(), b.peer.name())
			}
			for _, e := range probes {
				if e.Status != http.StatusOK {
					t.Errorf("%s answered a probe with %d, want 200", b.s.name(), e.Status)
				}
			}
		}
		st, ok := p.ours.tr.PeerStatus(etcdID)
		switch {
		case !ok:
			t.Fatal("PeerStatus: the etcd peer is unknown")
		case !st.Active || st.StreamReconnects != 0:
			t.Errorf("our PeerStatus = active %v, %d stream reconnects; want active, 0", st.Active, st.StreamReconnects)
		case !st.ProbeHealthy || st.RTT <= 0:
			t.Errorf("our PeerStatus = probe healthy %v, RTT %v; want healthy with an RTT", st.ProbeHealthy, st.RTT)
		}

		for _, d := range directions {
			snd, rcv := d.pick(p)
			from := rcv.log().mark()
			m := &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: u64(snd.id()), To: u64(rcv.id()), Term: u64(7), Commit: u64(3)}
			snd.send(t, m)
			checkProcessed(t, rcv, from, []*raftpb.Message{m})
			if n := rcv.log().count(from, isPipelinePost); n != 0 {
				t.Errorf("%s: %d pipeline POSTs after the idle period, want 0", d.name, n)
			}
		}
	})
}

// TestSnapshot sends a MsgSnap with a 1 MiB payload over /raft/snapshot:
// etcd's snap.Message and Snapshotter on its side, SendSnapshot and
// DirSnapshotStore on ours. The receiver must keep the payload as
// %016x.snap.db, byte for byte, and then hand the MsgSnap to raft; the
// sender must report success. The POST must be etcd's bytes both ways
// (checkSnapshotRequest): in particular we send etcd no CRC-32C trailer,
// since etcd announces no features.
func TestSnapshot(t *testing.T) {
	forEachDirection(t, func(t *testing.T, p *pair, snd, rcv side) {
		connectAndWait(t, p)
		m := snapMessage(snd.id(), rcv.id())
		const size = 1<<20 + 7
		from := rcv.log().mark()
		snd.sendSnapshot(t, m, size)
		eventually(t, "the snapshot send to end", func() bool { return snd.log().count(0, isEv("snapsent")) > 0 })
		if e := snd.log().since(0, isEv("snapsent"))[0]; !e.OK {
			t.Fatalf("%s failed to send the snapshot: %s", snd.name(), e.Err)
		}
		checkProcessed(t, rcv, from, []*raftpb.Message{m})
		eventually(t, "the snapshot to be reported finished", func() bool {
			return snd.log().count(0, func(e event) bool {
				return e.Ev == "snapreport" && e.ID == rcv.id() && e.Status == int(raft.SnapshotFinish)
			}) == 1
		})
		waitAnswers(t, rcv, from, isHTTP("POST", rafthttp.RaftSnapshotPrefix), 1)
		if answers := rcv.log().since(from, isHTTP("POST", rafthttp.RaftSnapshotPrefix)); len(answers) != 1 || answers[0].Status != http.StatusNoContent {
			t.Errorf("%s answered snapshot POSTs %+v, want one 204", rcv.name(), answers)
		}
		checkSnapshotRequest(t, p, snd, rcv, from, m, size)

		entries, err := os.ReadDir(rcv.snapDir())
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		const want = "000000000000000c.snap.db"
		if len(names) != 1 || names[0] != want {
			t.Fatalf("%s's snapshot directory holds %v, want [%s]", rcv.name(), names, want)
		}
		got, err := os.ReadFile(filepath.Join(rcv.snapDir(), want))
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != size {
			t.Fatalf("%s kept a %d-byte payload, want %d bytes", rcv.name(), len(got), size)
		}
		for i, b := range got {
			if b != peerkit.PayloadByte(int64(i)) {
				t.Fatalf("%s kept a payload whose byte %d is %#x, want %#x", rcv.name(), i, b, peerkit.PayloadByte(int64(i)))
			}
		}
	})
}

// checkSnapshotRequest checks the snapshot POST rcv got from position from
// on (its Tap's "request" event) against etcd's format: chunked, the
// envelope (an 8-byte big-endian length, then the MsgSnap m) and the
// payload of size bytes, read to the end, and no trailer. From us to etcd
// that is the proof of feature negotiation: we announce the CRC-32C
// trailer and resumable snapshots (X-Rafthttp-Features), learn nothing
// from etcd, which announces nothing, and so send etcd exactly the bytes
// etcd would, body length included, in one POST: no resume query before
// it, no resume header on it. From etcd to us, it shows etcd announces
// nothing and sends no trailer. (Between two of ours, both announcing, the
// trailer is sent: TestFeatureNegotiationSnapshotTrailer in the library's
// tests; and transfers resume: TestSnapshotResume*.)
func checkSnapshotRequest(t *testing.T, p *pair, snd, rcv side, from int, m *raftpb.Message, size int64) {
	t.Helper()
	isSnapRequest := func(e event) bool {
		return e.Ev == "request" && e.Method == "POST" && e.Path == rafthttp.RaftSnapshotPrefix
	}
	eventually(t, rcv.name()+" to report the snapshot request", func() bool { return rcv.log().count(from, isSnapRequest) > 0 })
	reqs := rcv.log().since(from, isSnapRequest)
	if len(reqs) != 1 {
		t.Fatalf("%s got %d snapshot requests, want 1", rcv.name(), len(reqs))
	}
	req := reqs[0]
	if !req.Chunked || !req.EOF {
		t.Errorf("snapshot POST chunked %v, read to its end %v; want both, as etcd sends and reads it", req.Chunked, req.EOF)
	}
	if len(req.Trailer) != 0 {
		t.Errorf("snapshot POST from %s carried the trailer %v, want none", snd.name(), req.Trailer)
	}
	features := http.Header(req.Header).Values("X-Rafthttp-Features")
	if snd == side(p.etcd) {
		if len(features) != 0 {
			t.Errorf("etcd's snapshot POST announced features %q, want none", features)
		}
		if req.Len <= 8+size {
			t.Errorf("etcd's snapshot POST has a %d-byte body, want an envelope and the %d-byte payload", req.Len, size)
		}
		return
	}
	// Ours to etcd.
	if want := []string{"crc32c-trailer,identity-refusal,snapshot-resume,pipeline-batch"}; !slices.Equal(features, want) {
		t.Errorf("our snapshot POST announced %q, want %q (etcd ignores it)", features, want)
	}
	if want := 8 + int64(proto.Size(m)) + size; req.Len != want {
		t.Errorf("our snapshot POST has a %d-byte body, want etcd's %d: an 8-byte length, the %d-byte MsgSnap, the %d-byte payload",
			req.Len, want, proto.Size(m), size)
	}
	for name := range http.Header(req.Header) {
		if strings.HasPrefix(name, "X-Rafthttp-Snapshot-") {
			t.Errorf("our snapshot POST to etcd carried %s, a header of resumable transfers", name)
		}
	}
	if n := rcv.log().count(0, isHTTP("GET", rafthttp.RaftSnapshotPrefix+"/")); n != 0 {
		t.Errorf("etcd got %d GETs under %s/ (resume queries), want none", n, rafthttp.RaftSnapshotPrefix)
	}
	if st, ok := p.ours.tr.PeerStatus(rcv.id()); !ok || st.Features != "" {
		t.Errorf("we learnt features %q of %s (known %v), want none", st.Features, rcv.name(), ok)
	}
}

// TestProbing asks each side's /raft/probing, as the other side's prober
// does: 200 and {"OK":true,"Now":...}.
func TestProbing(t *testing.T) {
	forEachLine(t, func(t *testing.T, l line) {
		p := newPair(t, l, clusterID, clusterID)
		for _, s := range []side{p.ours, p.etcd} {
			resp, err := http.Get(s.url() + rafthttp.ProbingPrefix)
			if err != nil {
				t.Fatalf("%s: %v", s.name(), err)
			}
			var h struct {
				OK  bool
				Now time.Time
			}
			err = json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			switch {
			case resp.StatusCode != http.StatusOK || err != nil:
				t.Errorf("%s answered a probe with %d (%v), want 200 and JSON", s.name(), resp.StatusCode, err)
			case !h.OK || time.Since(h.Now).Abs() > time.Minute:
				t.Errorf("%s answered a probe with OK %v, Now %v; want OK true and the current time", s.name(), h.OK, h.Now)
			}
		}
	})
}

// TestRefusedPeer connects members that must not talk: of different
// clusters, or whose versions rule each other out. Every request each makes
// of the other must be refused with 412 and etcd's reason, nothing may
// reach raft or ErrorC, and both must keep running.
func TestRefusedPeer(t *testing.T) {
	for _, tc := range []struct {
		name        string
		oursCluster uint64
		configure   func(*rafthttp.Transport)
		reason      error
	}{
		{name: "cluster-id-mismatch", oursCluster: 0x2000, reason: rafthttp.ErrClusterIDMismatch},
		{
			// We announce 3.8 and require it of the cluster: etcd finds
			// our minimum above its version, we find its version below
			// our minimum.
			name: "incompatible-version", oursCluster: clusterID, reason: rafthttp.ErrIncompatibleVersion,
			configure: func(tr *rafthttp.Transport) { tr.ServerVersion, tr.MinClusterVersion = "3.8.0", "3.8.0" },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			forEachLine(t, func(t *testing.T, l line) {
				p := newPairWith(t, l, tc.oursCluster, clusterID, tc.configure)
				p.connect(t)
				for _, d := range directions {
					snd, rcv := d.pick(p)
					snd.send(t, &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: u64(snd.id()), To: u64(rcv.id()), Term: u64(2)})
				}
				for _, d := range directions {
					snd, rcv := d.pick(p)
					refused := func(method, prefix string) func() bool {
						return func() bool {
							return rcv.log().count(0, func(e event) bool {
								return isHTTP(method, prefix)(e) && e.Status == http.StatusPreconditionFailed
							}) > 0
						}
					}
					eventually(t, rcv.name()+" to refuse a stream with 412", refused("GET", "/raft/stream/"))
					eventually(t, rcv.name()+" to refuse a pipeline POST with 412", refused("POST", "/raft"))
					eventually(t, snd.name()+" to report the message lost", func() bool {
						return snd.log().count(0, func(e event) bool { return e.Ev == "unreachable" && e.ID == rcv.id() }) > 0
					})
					for _, e := range rcv.log().since(0, isEv("http")) {
						if e.Status != http.StatusPreconditionFailed && e.Path != rafthttp.ProbingPrefix {
							t.Errorf("%s answered %s %s with %d, want 412", rcv.name(), e.Method, e.Path, e.Status)
						}
					}
				}
				for _, s := range []side{p.ours, p.etcd} {
					s.alive(t)
					if n := s.log().count(0, isEv("process")); n != 0 {
						t.Errorf("%s processed %d messages from a refused peer, want 0", s.name(), n)
					}
					if errs := s.log().since(0, isEv("errorc")); len(errs) != 0 {
						t.Errorf("%s posted %+v to its error channel, want nothing", s.name(), errs)
					}
				}
				// etcd's 412 body must have been read as the reason.
				st, _ := p.ours.tr.PeerStatus(etcdID)
				if st.LastError == nil || !strings.Contains(st.LastError.Error(), tc.reason.Error()) {
					t.Errorf("our PeerStatus.LastError = %v, want it to say %q", st.LastError, tc.reason)
				}
			})
		})
	}
}

// TestRemovedMember makes the receiver consider the sender removed: the
// sender's stream dials must get 410 and its ErrorC the member-removed
// error; then a pipeline POST answered 403 by the receiver's application
// must do the same.
func TestRemovedMember(t *testing.T) {
	forEachDirection(t, func(t *testing.T, p *pair, removed, other side) {
		other.setRemoved(t, removed.id(), true)
		// Keep the removed member's own streams down, so that what it
		// sends later goes by the pipeline.
		removed.blockStreams(t, true)
		p.connect(t)
		isRemovedErr := func(e event) bool {
			return e.Ev == "errorc" && e.Err == rafthttp.ErrMemberRemoved.Error()
		}
		eventually(t, other.name()+" to refuse a stream with 410", func() bool {
			return other.log().count(0, func(e event) bool {
				return isHTTP("GET", "/raft/stream/")(e) && e.Status == http.StatusGone
			}) > 0
		})
		eventually(t, removed.name()+" to post the member-removed error", func() bool {
			return removed.log().count(0, isRemovedErr) > 0
		})

		// The same through a 403 on a pipeline POST.
		mark := other.log().mark()
		other.setRemoved(t, removed.id(), false)
		other.reject403(t, true)
		eventually(t, "the removed member's streams to be accepted", func() bool {
			return other.log().count(mark, func(e event) bool {
				return isHTTP("GET", "/raft/stream/")(e) && e.Status == http.StatusOK
			}) >= 2
		})
		from := removed.log().mark()
		removed.send(t, &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), From: u64(removed.id()), To: u64(other.id()), Term: u64(2)})
		eventually(t, other.name()+" to answer a pipeline POST with 403", func() bool {
			return other.log().count(mark, func(e event) bool { return isPipelinePost(e) && e.Status == http.StatusForbidden }) > 0
		})
		eventually(t, removed.name()+" to post the member-removed error after the 403", func() bool {
			return removed.log().count(from, isRemovedErr) > 0
		})
		for _, s := range []side{removed, other} {
			s.alive(t)
			if n := s.log().count(0, isEv("process")); n != 0 {
				t.Errorf("%s processed %d messages, want 0", s.name(), n)
			}
		}
	})
}

// TestUnknownSender has a new member send to a member that does not know it
// yet: its stream dials get 404 and its messages go by the pipeline, and the
// receiver must learn its URLs from X-PeerURLs (a remote) so that its
// answer gets back.
func TestUnknownSender(t *testing.T) {
	forEachDirection(t, func(t *testing.T, p *pair, joiner, member side) {
		joiner.addPeer(t, member.id(), member.url())
		from := member.log().mark()
		vote := &raftpb.Message{Type: raftpb.MsgVote.Enum(), From: u64(joiner.id()), To: u64(member.id()), Term: u64(2), LogTerm: u64(1), Index: u64(3)}
		joiner.send(t, vote)
		checkProcessed(t, member, from, []*raftpb.Message{vote})
		eventually(t, member.name()+" to answer a stream dial from the unknown member with 404", func() bool {
			return member.log().count(0, func(e event) bool {
				return isHTTP("GET", "/raft/stream/")(e) && e.Status == http.StatusNotFound
			}) > 0
		})

		from = joiner.log().mark()
		resp := &raftpb.Message{Type: raftpb.MsgVoteResp.Enum(), From: u64(member.id()), To: u64(joiner.id()), Term: u64(2)}
		member.send(t, resp)
		checkProcessed(t, joiner, from, []*raftpb.Message{resp})
		waitAnswers(t, joiner, from, isPipelinePost, 1)
		if posts := joiner.log().since(from, isPipelinePost); len(posts) != 1 || posts[0].Status != http.StatusNoContent {
			t.Errorf("%s answered pipeline POSTs %+v, want one 204: the answer must come by the remote's pipeline", joiner.name(), posts)
		}
	})
}
