package main

import (
	"encoding/gob"
	"maps"
	"strings"
	"testing"
	"time"
)

// gobKV encodes an entry as Propose does.
func gobKV(t *testing.T, k, v string) string {
	t.Helper()
	var b strings.Builder
	if err := gob.NewEncoder(&b).Encode(kv{k, v}); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// TestKVStoreCommits checks that the store applies committed entries, says
// so by closing applyDoneC, loads the newest snapshot when raft publishes
// nil, and that its snapshot payload restores the same map.
func TestKVStoreCommits(t *testing.T) {
	snap := newSnapshotter(t.TempDir())
	commitC := make(chan *commit)
	errorC := make(chan error)
	s := &kvstore{kvStore: map[string]string{}, snapshotter: snap}
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.readCommits(commitC, errorC)
	}()
	defer func() {
		close(commitC)
		close(errorC)
		<-done
	}()

	applied := make(chan struct{})
	commitC <- &commit{data: []string{gobKV(t, "/a", "1"), gobKV(t, "/b", "2"), gobKV(t, "/a", "3")}, applyDoneC: applied}
	waitClosed(t, applied)
	if got, want := s.snapshotMap(), map[string]string{"/a": "3", "/b": "2"}; !maps.Equal(got, want) {
		t.Errorf("after the commit: got %v, want %v", got, want)
	}

	// A snapshot of another state, as if from the leader.
	other := &kvstore{kvStore: map[string]string{"/c": "4"}}
	payload, err := other.getSnapshot()
	if err != nil {
		t.Fatal(err)
	}
	md := snapMeta(7, 2, 1)
	if err := snap.SaveSnap(md, payload); err != nil {
		t.Fatal(err)
	}
	snap.setNewest(md)
	commitC <- nil
	// The nil is handled once the next commit is taken.
	applied = make(chan struct{})
	commitC <- &commit{data: []string{gobKV(t, "/d", "5")}, applyDoneC: applied}
	waitClosed(t, applied)
	if got, want := s.snapshotMap(), map[string]string{"/c": "4", "/d": "5"}; !maps.Equal(got, want) {
		t.Errorf("after the snapshot and a commit: got %v, want %v", got, want)
	}
}

// snapshotMap returns a copy of the store's map.
func (s *kvstore) snapshotMap() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return maps.Clone(s.kvStore)
}

// waitClosed fails the test if ch is not closed within 10 seconds.
func waitClosed(t *testing.T, ch <-chan struct{}) {
	t.Helper()
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
		t.Fatal("applyDoneC not closed within 10s")
	}
}
