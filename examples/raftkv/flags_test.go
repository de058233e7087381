package main

import (
	"io"
	"testing"
)

// TestParseMemberFlags checks the values the command line gives a member's
// configuration, defaults included.
func TestParseMemberFlags(t *testing.T) {
	base := []string{"--id", "1", "--cluster", "http://127.0.0.1:12379", "--port", "12380"}
	for _, tc := range []struct {
		name              string
		extra             []string
		wantClusterID     uint64
		wantSnapshotEvery uint64
	}{
		{"defaults", nil, 0x6b76, 1000},
		{"cluster ID in hex", []string{"--cluster-id", "0x1000"}, 0x1000, 1000},
		{"cluster ID in decimal", []string{"--cluster-id", "4096"}, 0x1000, 1000},
		{"snapshot count", []string{"--snapshot-count", "50"}, 0x6b76, 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, err := parseMemberFlags(append(base, tc.extra...), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if f.clusterID != tc.wantClusterID {
				t.Errorf("cluster ID: got %#x, want %#x", f.clusterID, tc.wantClusterID)
			}
			if f.snapshotEvery != tc.wantSnapshotEvery {
				t.Errorf("snapshot count: got %d, want %d", f.snapshotEvery, tc.wantSnapshotEvery)
			}
		})
	}
}
