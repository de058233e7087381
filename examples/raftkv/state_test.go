package main

import (
	"fmt"
	"testing"
)

// TestStateSnapshotRoundTrip encodes a state as a snapshot payload and
// decodes it: the map, the members and the removed members survive, and
// the hash is the same.
func TestStateSnapshotRoundTrip(t *testing.T) {
	s := newKVState()
	for i := range 100 {
		if err := s.apply(command{Op: opPut, Key: fmt.Sprint("k", i), Value: fmt.Sprint("v", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.apply(command{Op: opDelete, Key: "k7"}); err != nil {
		t.Fatal(err)
	}
	s.addMember(1, "http://127.0.0.1:1")
	s.addMember(2, "http://127.0.0.1:2")
	s.removeMember(2)
	b, err := s.encode()
	if err != nil {
		t.Fatal(err)
	}
	d, err := decodeState(b)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.hash(), s.hash(); got != want {
		t.Errorf("got hash %s, want %s", got, want)
	}
	if n := d.len(); n != 99 {
		t.Errorf("got %d keys, want 99", n)
	}
	if v, ok := d.get("k7"); ok {
		t.Errorf("deleted k7: got %q, want absent", v)
	}
	if got := d.memberURLs(); len(got) != 1 || got[1] != "http://127.0.0.1:1" {
		t.Errorf("got members %v, want only 1", got)
	}
	if !d.isRemoved(2) || d.isRemoved(1) {
		t.Errorf("removed: got 1:%v 2:%v, want 1:false 2:true", d.isRemoved(1), d.isRemoved(2))
	}
}

// TestStateHash checks that the hash depends on the content only, not on
// the order of the writes, and that it tells apart maps that a naive
// concatenation would not.
func TestStateHash(t *testing.T) {
	build := func(kvs ...string) *kvState {
		s := newKVState()
		for i := 0; i < len(kvs); i += 2 {
			if err := s.apply(command{Op: opPut, Key: kvs[i], Value: kvs[i+1]}); err != nil {
				t.Fatal(err)
			}
		}
		return s
	}
	if a, b := build("a", "1", "b", "2"), build("b", "2", "a", "1"); a.hash() != b.hash() {
		t.Errorf("same maps written in another order: got hashes %s and %s, want equal", a.hash(), b.hash())
	}
	if a, b := build("ab", "c"), build("a", "bc"); a.hash() == b.hash() {
		t.Errorf("different maps: got equal hashes %s", a.hash())
	}
	if err := newKVState().apply(command{Op: "frobnicate"}); err == nil {
		t.Errorf("unknown operation: got nil error, want one")
	}
	if _, err := decodeState([]byte(`{"members":{}}`)); err == nil {
		t.Errorf("payload without a map: got nil error, want one")
	}
}
