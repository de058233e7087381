package rafthttp

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// BenchmarkServeBatchPOST measures POST /raft/batch carrying k 60-byte
// MsgApps (those of BenchmarkServePipelinePOST), one POST at a time; k = 1
// is what a lone message would cost if it were batched (it is not: it
// goes to /raft). ns/msg divides the time per POST by k.
//
// loopback: member 1's pipeline sends a batch (sendBatch: encoding,
// headers, round trip, answer) to member 2's Handler behind a real
// http.Server on 127.0.0.1; B/op is the whole process's.
//
// direct: the same body handed to the Handler in memory, with a writer
// that allocates nothing: the receiving side alone.
func BenchmarkServeBatchPOST(b *testing.B) {
	for _, k := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("loopback/k=%d", k), func(b *testing.B) {
			recv := newCountingRaft(b.N * k)
			a, nb := benchPair(b, recv)
			p, ok := a.tr.get(nb.tr.ID)
			if !ok {
				b.Fatal("no peer 2")
			}
			next := tinyMsgApps(b, 1, 2)
			ctx := context.Background()
			var bt batch
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				for j := range k {
					recv.window <- struct{}{} // one POST at a time: never blocks
					m := next(pipelinePostIndex + uint64(i*k+j))
					bt.msgs = append(bt.msgs, m)
					bt.bytes += frameHeaderLen + pipelinePostSize
				}
				p.pipeline.sendBatch(ctx, &bt)
				bt.bytes = 0
			}
			b.StopTimer()
			if got := recv.n.Load(); got != int64(b.N*k) {
				b.Fatalf("raft got %d messages, want %d (%d reported unreachable)", got, b.N*k, a.raft.unreachableCount(2))
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*k), "ns/msg")
		})
	}
	for _, k := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("direct/k=%d", k), func(b *testing.B) {
			fr := newFakeRaft()
			var got int
			fr.setProcess(func(context.Context, *raftpb.Message) error { got++; return nil })
			d := newDirectPOST(b, fr)
			d.req.URL.Path, d.req.RequestURI = pipelineBatchPath, pipelineBatchPath
			next := tinyMsgApps(b, htPeerID, htLocalID)
			var body []byte
			for j := range k {
				body = appendMessageFrame(body, next(pipelinePostIndex+uint64(j)))
			}
			w := &nopWriter{h: http.Header{}}
			d.serve(w, body) // makes b2 a remote
			got = 0
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				w.reset()
				d.serve(w, body)
				if w.code != http.StatusNoContent {
					b.Fatalf("status %d", w.code)
				}
			}
			b.StopTimer()
			if got != b.N*k {
				b.Fatalf("raft got %d messages, want %d", got, b.N*k)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*k), "ns/msg")
		})
	}
}
