// Command raftexample is etcd's contrib/raftexample, a key-value store
// replicated with go.etcd.io/raft/v3, ported to the rafthttp transport and
// freed of etcd's server module.
//
// A user who knows raftexample should recognise every part: the same
// command line (--id, --cluster, --port, --join), the same HTTP API (PUT
// and GET on /key, POST /ID with a peer URL to add a member, DELETE /ID to
// remove one), the same cluster ID (0x1000), the same bootstrap, the same
// gob-encoded entries and JSON snapshots, and the same Ready loop. What
// changed is the transport's wiring (see README.md for the lines) and the
// storage: etcd's wal and snap packages, which live in etcd's server
// module, are replaced by a small log file of our own (wal.go) and by the
// transport's DirSnapshotStore for snapshot payloads (snapshotter.go).
// Snapshots go to followers through Transport.SendSnapshot, streamed from
// the payload file, instead of inside a MsgSnap.
package main
