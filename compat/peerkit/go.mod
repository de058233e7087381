module github.com/raftkit/rafthttp/compat/peerkit

go 1.26.0
