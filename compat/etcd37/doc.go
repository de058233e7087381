// Package etcd37 holds the tests that run github.com/raftkit/rafthttp and
// etcd 3.7's own raft transport (go.etcd.io/etcd/server/v3 v3.7.3, built on
// the same go.etcd.io/raft/v3 v3.7) in one process: mixed raft clusters in
// which some members use one transport and the rest the other. It has no
// non-test code.
package etcd37
