// Package interop holds the tests that run github.com/raftkit/rafthttp
// against real etcd peers of the 3.5, 3.6 and 3.7 lines, each an etcd
// rafthttp.Transport in its own process (the programs in ../etcdpeer35,
// ../etcdpeer36 and ../etcdpeer37, built on ../peerkit), over HTTP on the
// loopback interface. It has no non-test code.
package interop
