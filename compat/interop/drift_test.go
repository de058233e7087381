package interop

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// The three peer programs (../etcdpeer35, ../etcdpeer36, ../etcdpeer37) are
// one program written three times: each must name the raftpb package its
// etcd server was built with, so their sources cannot be shared. This file
// keeps the copies from drifting apart: each is compared line by line with
// 3.6's, and the lines in which they differ must be exactly those declared
// below, each with the reason it differs. A fix made to one copy and not
// the others, or a declared difference that went away, fails the test.
// Only the Go sources are compared: go.mod and go.sum pin each line's own
// etcd release and dependencies.

// driftRef is the program the others are compared with: 3.6 is gogo raftpb
// like 3.5, and on the raft/v3 import path like 3.7.
const driftRef = "etcdpeer36"

// drift is a declared difference between a program's copy of a file and
// driftRef's. Lines are compared without their leading and trailing
// spaces and tabs.
type drift struct {
	dir, file string
	why       string
	only      []string // lines only in dir's copy
	ref       []string // lines only in driftRef's copy
}

// declaredDrift is every line in which the copies may differ, by reason.
var declaredDrift = []drift{
	// etcd 3.5 against 3.6: the raft library's import path, and comments.
	{dir: "etcdpeer35", file: "main.go", why: "the line named in the package comment",
		only: []string{
			`// Command etcdpeer35 runs etcd 3.5's own raft HTTP transport behind etcd's`,
			`// ../peerkit; etcd.go holds what is particular to the 3.5 line.`,
		},
		ref: []string{
			`// Command etcdpeer36 runs etcd 3.6's own raft HTTP transport behind etcd's`,
			`// ../peerkit; etcd.go holds what is particular to the 3.6 line.`,
		}},
	{dir: "etcdpeer35", file: "etcd.go", why: "the line and its raftpb named in the file comment",
		only: []string{
			`// The parts of the peer that depend on the etcd 3.5 line: raftpb is`,
			`// go.etcd.io/etcd/raft/v3's (gogo protobuf, messages passed by value).`,
		},
		ref: []string{
			`// The parts of the peer that depend on the etcd 3.6 line: raftpb is`,
			`// go.etcd.io/raft/v3 v3.6's (gogo protobuf, messages passed by value).`,
		}},
	{dir: "etcdpeer35", file: "etcd.go", why: "the raft import path (3.5: inside etcd's module tree)",
		only: []string{`"go.etcd.io/etcd/raft/v3"`, `"go.etcd.io/etcd/raft/v3/raftpb"`},
		ref:  []string{`"go.etcd.io/raft/v3"`, `"go.etcd.io/raft/v3/raftpb"`}},
	{dir: "etcdpeer35", file: "raft.go", why: "the raft library named in the file comment",
		only: []string{`// library: go.etcd.io/etcd/raft/v3.`},
		ref:  []string{`// library: go.etcd.io/raft/v3 v3.6.`}},
	{dir: "etcdpeer35", file: "raft.go", why: "the raft import path (3.5: inside etcd's module tree)",
		only: []string{`"go.etcd.io/etcd/raft/v3"`, `"go.etcd.io/etcd/raft/v3/raftpb"`},
		ref:  []string{`"go.etcd.io/raft/v3"`, `"go.etcd.io/raft/v3/raftpb"`}},

	// etcd 3.7 against 3.6: raftpb is protobuf-go, so messages go by
	// pointer, are encoded by proto.Marshal rather than their own Marshal
	// method, and their fields are read through getters.
	{dir: "etcdpeer37", file: "main.go", why: "the line named in the package comment",
		only: []string{
			`// Command etcdpeer37 runs etcd 3.7's own raft HTTP transport behind etcd's`,
			`// ../peerkit; etcd.go holds what is particular to the 3.7 line.`,
		},
		ref: []string{
			`// Command etcdpeer36 runs etcd 3.6's own raft HTTP transport behind etcd's`,
			`// ../peerkit; etcd.go holds what is particular to the 3.6 line.`,
		}},
	{dir: "etcdpeer37", file: "etcd.go", why: "the line and its raftpb named in the file comment",
		only: []string{
			`// The parts of the peer that depend on the etcd 3.7 line: raftpb is`,
			`// go.etcd.io/raft/v3 v3.7's (google.golang.org/protobuf, messages passed by`,
			`// pointer).`,
		},
		ref: []string{
			`// The parts of the peer that depend on the etcd 3.6 line: raftpb is`,
			`// go.etcd.io/raft/v3 v3.6's (gogo protobuf, messages passed by value).`,
		}},
	{dir: "etcdpeer37", file: "etcd.go", why: "protobuf-go's proto package encodes and decodes",
		only: []string{`"google.golang.org/protobuf/proto"`}},
	{dir: "etcdpeer37", file: "etcd.go", why: "Raft.Process gets a *raftpb.Message, encoded by proto.Marshal",
		only: []string{
			`func (e etcdRaft) Process(_ context.Context, m *raftpb.Message) error {`,
			`b, err := proto.Marshal(m)`,
		},
		ref: []string{
			`func (e etcdRaft) Process(_ context.Context, m raftpb.Message) error {`,
			`b, err := m.Marshal()`,
		}},
	{dir: "etcdpeer37", file: "etcd.go", why: "Send and SendSnapshot decode into a *raftpb.Message and pass pointers",
		only: []string{
			`m := &raftpb.Message{}`, `if err := proto.Unmarshal(b, m); err != nil {`,
			`t.tr.Send([]*raftpb.Message{m})`,
			`m := &raftpb.Message{}`, `if err := proto.Unmarshal(b, m); err != nil {`,
			`t.tr.SendSnapshot(sm)`,
		},
		ref: []string{
			`var m raftpb.Message`, `if err := m.Unmarshal(b); err != nil {`,
			`t.tr.Send([]raftpb.Message{m})`,
			`var m raftpb.Message`, `if err := m.Unmarshal(b); err != nil {`,
			`t.tr.SendSnapshot(*sm)`,
		}},
	{dir: "etcdpeer37", file: "raft.go", why: "the raft library named in the file comment",
		only: []string{
			`// library: go.etcd.io/raft/v3 v3.7 (protobuf-go raftpb, messages by`,
			`// pointer).`,
		},
		ref: []string{`// library: go.etcd.io/raft/v3 v3.6.`}},
	{dir: "etcdpeer37", file: "raft.go", why: "protobuf-go's proto package decodes",
		only: []string{`"google.golang.org/protobuf/proto"`}},
	{dir: "etcdpeer37", file: "raft.go", why: "entries and the status are read through getters",
		only: []string{
			`switch e.GetType() {`,
			`n.apply(peerkit.Applied{Index: e.GetIndex(), Term: e.GetTerm(), Data: e.GetData()})`,
			`return st.Lead, st.GetTerm()`,
		},
		ref: []string{
			`switch e.Type {`,
			`n.apply(peerkit.Applied{Index: e.Index, Term: e.Term, Data: e.Data})`,
			`return st.Lead, st.Term`,
		}},
	{dir: "etcdpeer37", file: "raft.go", why: "ConfChanges and messages decode by proto.Unmarshal into pointers",
		only: []string{
			`cc := &raftpb.ConfChange{}`, `if err := proto.Unmarshal(e.GetData(), cc); err != nil {`,
			`m := &raftpb.Message{}`, `if err := proto.Unmarshal(b, m); err != nil {`,
		},
		ref: []string{
			`var cc raftpb.ConfChange`, `if err := cc.Unmarshal(e.Data); err != nil {`,
			`var m raftpb.Message`, `if err := m.Unmarshal(b); err != nil {`,
		}},
}

// TestEtcdPeerDrift compares the sources of the peer programs with 3.6's:
// the same files, differing only in the declared lines.
func TestEtcdPeerDrift(t *testing.T) {
	refFiles := goFiles(t, filepath.Join("..", driftRef))
	for _, l := range lines {
		if l.dir == driftRef {
			continue
		}
		t.Run(l.dir, func(t *testing.T) {
			files := goFiles(t, filepath.Join("..", l.dir))
			if !slices.Equal(files, refFiles) {
				t.Fatalf("Go files %q, want the same as %s's %q", files, driftRef, refFiles)
			}
			for _, f := range files {
				only, ref := lineDiff(readLines(t, filepath.Join("..", l.dir, f)), readLines(t, filepath.Join("..", driftRef, f)))
				var wantOnly, wantRef []string
				why := map[string]string{}
				for _, d := range declaredDrift {
					if d.dir == l.dir && d.file == f {
						wantOnly = append(wantOnly, d.only...)
						wantRef = append(wantRef, d.ref...)
						for _, line := range slices.Concat(d.only, d.ref) {
							why[line] = d.why
						}
					}
				}
				checkDrift(t, fmt.Sprintf("%s/%s, a line only in it", l.dir, f), only, wantOnly, why)
				checkDrift(t, fmt.Sprintf("%s/%s, a line only in %s's", l.dir, f, driftRef), ref, wantRef, why)
			}
		})
	}
}

// checkDrift compares the lines found only in one copy with those
// declared (why gives each one's reason), as multisets, and names the ones
// that differ.
func checkDrift(t *testing.T, what string, got, want []string, why map[string]string) {
	t.Helper()
	extra, missing := multisetDiff(got, want)
	for _, l := range extra {
		t.Errorf("%s: undeclared difference %q (make the copies agree, or declare it in declaredDrift)", what, l)
	}
	for _, l := range missing {
		t.Errorf("%s: declared difference %q (%s) not found: the copies agree there now, drop it from declaredDrift", what, l, why[l])
	}
}

// multisetDiff returns the elements of a not matched in b, and those of b
// not matched in a, each in order.
func multisetDiff(a, b []string) (onlyA, onlyB []string) {
	left := map[string]int{}
	for _, s := range b {
		left[s]++
	}
	for _, s := range a {
		if left[s] > 0 {
			left[s]--
			continue
		}
		onlyA = append(onlyA, s)
	}
	for _, s := range b {
		if left[s] > 0 {
			left[s]--
			onlyB = append(onlyB, s)
		}
	}
	return onlyA, onlyB
}

// lineDiff returns the lines of a and of b outside a longest common
// subsequence of the two, each in order.
func lineDiff(a, b []string) (onlyA, onlyB []string) {
	// lcs[i][j] is the length of a longest common subsequence of a[i:]
	// and b[j:].
	lcs := make([][]int, len(a)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(b)+1)
	}
	for i := len(a) - 1; i >= 0; i-- {
		for j := len(b) - 1; j >= 0; j-- {
			if a[i] == b[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i] == b[j]:
			i, j = i+1, j+1
		case lcs[i+1][j] >= lcs[i][j+1]:
			onlyA = append(onlyA, a[i])
			i++
		default:
			onlyB = append(onlyB, b[j])
			j++
		}
	}
	return append(onlyA, a[i:]...), append(onlyB, b[j:]...)
}

// goFiles lists the .go files of dir, sorted.
func goFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".go") {
			out = append(out, e.Name())
		}
	}
	return out
}

// readLines reads a file as lines without their leading and trailing
// spaces and tabs.
func readLines(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	for i, l := range out {
		out[i] = strings.Trim(l, " \t\r")
	}
	return out
}

// TestLineDiff: the lines outside a longest common subsequence, so that a
// changed, added, removed or moved line shows on the side it is on.
func TestLineDiff(t *testing.T) {
	for _, tc := range []struct {
		name           string
		a, b           []string
		wantA, wantB   []string
		wantMultiExtra []string // what multisetDiff finds in onlyA and not in onlyB
	}{
		{name: "identical", a: []string{"x", "y"}, b: []string{"x", "y"}},
		{name: "changed line", a: []string{"x", "y1", "z"}, b: []string{"x", "y2", "z"},
			wantA: []string{"y1"}, wantB: []string{"y2"}, wantMultiExtra: []string{"y1"}},
		{name: "added line", a: []string{"x", "new", "z"}, b: []string{"x", "z"},
			wantA: []string{"new"}, wantMultiExtra: []string{"new"}},
		{name: "removed at the end", a: []string{"x"}, b: []string{"x", "z"}, wantB: []string{"z"}},
		{name: "moved line", a: []string{"m", "x", "y"}, b: []string{"x", "y", "m"},
			wantA: []string{"m"}, wantB: []string{"m"}},
		{name: "repeated line once more", a: []string{"x", "x", "x"}, b: []string{"x", "x"},
			wantA: []string{"x"}, wantMultiExtra: []string{"x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gotA, gotB := lineDiff(tc.a, tc.b)
			if !slices.Equal(gotA, tc.wantA) || !slices.Equal(gotB, tc.wantB) {
				t.Errorf("lineDiff = %q, %q; want %q, %q", gotA, gotB, tc.wantA, tc.wantB)
			}
			// A moved line is in both: as multisets, nothing differs.
			if extra, _ := multisetDiff(gotA, gotB); !slices.Equal(extra, tc.wantMultiExtra) {
				t.Errorf("multisetDiff(%q, %q) = %q, want %q", gotA, gotB, extra, tc.wantMultiExtra)
			}
		})
	}
}
