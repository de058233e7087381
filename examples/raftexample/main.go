package main

import (
	"flag"
	"log"
	"os"
	"strings"

	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func main() {
	cluster := flag.String("cluster", "http://127.0.0.1:9021", "peer URLs of the members, comma-separated; member i has the i-th")
	id := flag.Int("id", 1, "this member's ID: its position in --cluster, from 1")
	kvport := flag.Int("port", 9121, "port of the key-value HTTP API")
	join := flag.Bool("join", false, "join a running cluster (after POST /ID on one of its members)")
	// Not in raftexample, whose tests change the two variables instead;
	// named after etcd's flags.
	snapCount := flag.Uint64("snapshot-count", defaultSnapshotCount, "applied entries between two snapshots")
	catchUp := flag.Uint64("snapshot-catchup-entries", defaultSnapshotCatchUpEntries,
		"entries kept behind a snapshot for followers that lag a little")
	flag.Parse()

	peers := strings.Split(*cluster, ",")
	if *id < 1 || *id > len(peers) {
		log.Fatalf("raftexample: --id %d: --cluster lists members 1 to %d", *id, len(peers))
	}
	if *snapCount == 0 {
		log.Fatalf("raftexample: --snapshot-count must be at least 1")
	}

	proposeC := make(chan string)
	defer close(proposeC)
	confChangeC := make(chan *raftpb.ConfChange)
	defer close(confChangeC)

	// Raft needs the key-value store's snapshot function before the store
	// exists. raftexample reads kvs in it without synchronisation, a data
	// race the race detector reports at the first snapshot; closing kvsSet
	// once kvs is set orders the two.
	var kvs *kvstore
	kvsSet := make(chan struct{})
	getSnapshot := func() ([]byte, error) { <-kvsSet; return kvs.getSnapshot() }
	commitC, errorC, snapshotterReady := newRaftNode(*id, peers, *join, *snapCount, *catchUp, getSnapshot, proposeC, confChangeC)

	kvs = newKVStore(<-snapshotterReady, proposeC, commitC, errorC)
	close(kvsSet)

	// Serves until raft stops.
	serveHTTPKVAPI(kvs, *kvport, confChangeC, errorC)
}

// newLogger returns the transport's logger: one line per entry on stderr,
// informational messages and above.
func newLogger() *zap.Logger {
	enc := zap.NewDevelopmentEncoderConfig()
	enc.StacktraceKey = ""
	return zap.New(zapcore.NewCore(zapcore.NewConsoleEncoder(enc), zapcore.Lock(os.Stderr), zap.InfoLevel))
}
