// Package robustness checks the transport the way etcd's robustness tests
// and Jepsen check a database: real go.etcd.io/raft members, each on its
// own rafthttp.Transport behind its own HTTP server, every link through a
// fault-injecting network (faultnet.Mesh), a small replicated key-value
// store on top, clients doing puts, linearizable gets (ReadIndex) and
// compare-and-swaps, and a seeded nemesis that partitions the members
// (minority and majority, one way), slows their links (latency,
// bandwidth), resets their connections, stalls their streams, restarts
// them from their storage and makes them catch up by snapshot. A transport
// that loses, duplicates, reorders, corrupts or misdelivers a message shows
// up as one of the run's checks failing:
//
//   - the history of the clients is linearizable (porcupine, with a model
//     partitioned by key);
//   - every acknowledged write is applied by every member at the end, after
//     the faults are healed and the members caught up;
//   - the members' states are identical: the same applied index, the same
//     key-value map, the same outcome for every write and the same hash of
//     every entry applied, in order;
//   - the transport's accounting holds (see below);
//   - no goroutine outlives the run (goleak).
//
// # What the accounting can promise
//
// Under faults, a message can be lost without anyone being told: bytes in
// a TCP connection that is reset are gone, and neither end knows which
// messages they held (etcd's transport is the same; raft retransmits).
// And a POST whose answer is lost is reported unreachable though it was
// delivered. So two invariants are checked, each where it is sound:
//
//   - Over the whole run, no member processes a message more often than it
//     was sent to it: the test counts the messages by content (a hash of
//     every field raft reads), so a message delivered twice, or one that
//     was never sent (a corrupted one), is caught even amid faults.
//   - In a final phase without faults, after the heal and once the members
//     caught up, every message sent to a member is delivered or reported,
//     exactly: sent = processed + dropped (counted by the sender's
//     transport, or, for proposals, by the receiver's) + failed snapshot
//     sends. The Ready loops are paused before and after the phase, so that
//     nothing is in flight at either edge. If a stream connection to the
//     member did not survive the phase (a stream silent for ConnReadTimeout
//     on a starved machine is dropped, and what its TCP buffers held with
//     it), its count is reported as inconclusive rather than as a
//     violation.
//
// Counts go by recipient rather than by ordered pair: raft forwards
// proposals and read requests with their From unchanged, and a receiver
// sees the From, not who sent the message.
//
// # Snapshots
//
// Members compact their logs every few dozen entries, so that a member cut
// off for a second or restarted catches up by snapshot. A run sends
// snapshots the way etcd does, with SendSnapshot (the MsgSnap without its
// data, the state machine as the payload, kept by the receiver's
// DirSnapshotStore), or the way raftexample does, with the state in the
// MsgSnap's data through Send; the seed picks one.
//
// # Running it
//
// go test runs a few short seeds (and the tests that prove each check can
// fail). make robustness runs many seeds for a chosen time and prints a
// table; on a failure it writes the history (JSON and porcupine's HTML
// visualization), the fault schedule and the transport's warnings to a
// directory and prints the command that replays the seed.
package robustness
