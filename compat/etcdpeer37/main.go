// Command etcdpeer37 runs etcd 3.7's own raft HTTP transport behind etcd's
// peer listener on a loopback port and lets the interoperability tests of
// github.com/raftkit/rafthttp (../interop) drive it over stdin and stdout.
// It does not import the library. The program and its protocol are in
// ../peerkit; etcd.go holds what is particular to the 3.7 line.
package main

import "github.com/raftkit/rafthttp/compat/peerkit"

func main() { peerkit.Run(etcd{}) }
