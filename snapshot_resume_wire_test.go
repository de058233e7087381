package rafthttp

import (
	"bytes"
	"errors"
	"hash/crc32"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// Tests of the wire formats of resumable snapshots (snapshot_resume.go):
// golden bytes, parsers (with FuzzResumeHeaders), and the replay ring.

// resumeGolden is the case of testdata/wire/snapshot_resume.golden: the
// envelope of snapshot_envelope_v3.7.golden, a payload of 1 MiB whose
// byte i is i mod 256, and a receiver holding its first 256 KiB.
func resumeGolden(t *testing.T) (m *raftpb.Message, env, payload []byte) {
	t.Helper()
	capture := goldenWire(t, "snapshot_envelope_v3.7.golden")
	env = capture[:frameHeaderLen+0x19]
	m, _, err := readMessageFrame(bytes.NewReader(env), make([]byte, frameHeaderLen), 1<<10, nil)
	if err != nil {
		t.Fatal(err)
	}
	payload = make([]byte, 1<<20)
	for i := range payload {
		payload[i] = byte(i)
	}
	return m, env, payload
}

// TestSnapshotResumeWireGolden: the headers, trailer and progress stream of
// resumable transfers, as this code writes them, are the golden file's.
func TestSnapshotResumeWireGolden(t *testing.T) {
	const held = 256 << 10
	m, env, payload := resumeGolden(t)
	id := newSnapshotID(m, env, int64(len(payload)))
	prefixCRC := crc32.Checksum(payload[:held], snapCRCTable)
	var got []string
	add := func(kind string, h http.Header, keys ...string) {
		for _, k := range keys {
			for _, v := range h.Values(k) {
				got = append(got, kind+" "+k+": "+v)
			}
		}
	}

	// A resume query and its answer.
	q := http.Header{}
	q.Set(headerSnapshotID, id.String())
	add("request", q, headerSnapshotID)
	ans := http.Header{}
	setResumePoint(ans, held, prefixCRC)
	add("answer", ans, headerSnapshotOffset, headerSnapshotCRC)

	// The POST that resumes, as a resumable attempt sets it up.
	req := httptest.NewRequest(http.MethodPost, RaftSnapshotPrefix, nil)
	a := &resumeAttempt{s: &resumableSend{id: id}, off: held, crc: prefixCRC}
	a.setHeaders(req)
	add("request", req.Header, headerSnapshotID, headerSnapshotOffset, headerSnapshotCRC)
	if _, declared := req.Trailer[trailerPayloadCRC32C]; !declared {
		t.Errorf("the POST does not declare the %s trailer", trailerPayloadCRC32C)
	}
	req.Trailer.Set(trailerPayloadCRC32C, crcOf(crc32.Checksum(payload, snapCRCTable)))
	add("trailer", req.Trailer, trailerPayloadCRC32C)

	// A progress stream: the receiver holds 256 KiB, then the rest.
	tr, _ := newNode(t, withID(2), unserved(), withStore(&memStore{})).parts()
	p, err := tr.partials.begin(t.Context(), 1, resumeStart{id: id}, m, func() {})
	if err != nil {
		t.Fatal(err)
	}
	w := &partialWriter{ps: tr.partials, p: p}
	if _, err := w.Write(payload[:held]); err != nil {
		t.Fatal(err)
	}
	preq := httptest.NewRequest(http.MethodGet, snapshotResumePath, nil)
	preq.Header.Set(headerSnapshotID, id.String())
	preq.Header.Set(headerSnapshotProgress, strconv.Itoa(len(payload)))
	add("request", preq.Header, headerSnapshotID, headerSnapshotProgress)
	rec := &resumeSyncRecorder{ResponseRecorder: httptest.NewRecorder()}
	done := make(chan struct{})
	go func() {
		defer close(done)
		tr.partials.streamProgress(rec, preq, 1, id, int64(len(payload)))
	}()
	waitFor(t, "the first progress line", func() bool { return rec.body() != "" })
	if _, err := w.Write(payload[held:]); err != nil {
		t.Fatal(err)
	}
	tr.partials.end(p, p.recv, partialKeep)
	<-done
	if rec.Code != http.StatusOK {
		t.Errorf("progress stream answered %d, want 200", rec.Code)
	}
	got = append(got, "body "+strings.ReplaceAll(rec.body(), "\n", `\n`))

	text, err := os.ReadFile(filepath.Join("testdata", "wire", "snapshot_resume.golden"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for line := range strings.Lines(string(text)) {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		kind, rest, _ := strings.Cut(line, " ")
		want = append(want, kind+" "+strings.TrimSpace(rest))
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("resume wire format differs from the golden file:\ngot:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// resumeSyncRecorder is a ResponseRecorder whose body may be read while
// the handler writes.
type resumeSyncRecorder struct {
	*httptest.ResponseRecorder
	mu sync.Mutex
}

func (r *resumeSyncRecorder) WriteHeader(code int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ResponseRecorder.WriteHeader(code)
}

func (r *resumeSyncRecorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ResponseRecorder.Write(p)
}

func (r *resumeSyncRecorder) Flush() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ResponseRecorder.Flush()
}

func (r *resumeSyncRecorder) body() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Body.String()
}

// TestParseResumeHeaders: the parsers of the resume headers take what the
// writers write, and nothing else: one spelling per value, bounded.
func TestParseResumeHeaders(t *testing.T) {
	id := snapshotID{index: 12, term: 2, size: 1 << 20, envelope: 0xc21ae24c}
	for _, tc := range []struct {
		name   string
		header map[string]string
		query  bool // parse as a query (else as a POST's resume point)
		want   any  // resumeQuery or resumeStart; nil: an error wrapping ErrInvalidHeader
	}{
		{name: "resume query", query: true, header: map[string]string{headerSnapshotID: id.String()},
			want: resumeQuery{id: id}},
		{name: "progress stream", query: true, header: map[string]string{headerSnapshotID: id.String(), headerSnapshotProgress: "65536"},
			want: resumeQuery{id: id, step: 65536}},
		{name: "progress step 0", query: true, header: map[string]string{headerSnapshotID: id.String(), headerSnapshotProgress: "0"}},
		{name: "progress step signed", query: true, header: map[string]string{headerSnapshotID: id.String(), headerSnapshotProgress: "+1"}},
		{name: "no ID", query: true, header: map[string]string{}},
		{name: "fields out of order", query: true, header: map[string]string{headerSnapshotID: "term=2 index=12 size=1048576 envelope=c21ae24c"}},
		{name: "two spaces", query: true, header: map[string]string{headerSnapshotID: "index=12  term=2 size=1048576 envelope=c21ae24c"}},
		{name: "leading zero", query: true, header: map[string]string{headerSnapshotID: "index=012 term=2 size=1048576 envelope=c21ae24c"}},
		{name: "upper-case CRC", query: true, header: map[string]string{headerSnapshotID: "index=12 term=2 size=1048576 envelope=C21AE24C"}},
		{name: "short CRC", query: true, header: map[string]string{headerSnapshotID: "index=12 term=2 size=1048576 envelope=21ae24c"}},
		{name: "size over int64", query: true, header: map[string]string{headerSnapshotID: "index=12 term=2 size=9223372036854775808 envelope=c21ae24c"}},
		{name: "index over uint64", query: true, header: map[string]string{headerSnapshotID: "index=18446744073709551616 term=2 size=1 envelope=c21ae24c"}},
		{name: "largest values", query: true, header: map[string]string{headerSnapshotID: "index=18446744073709551615 term=18446744073709551615 size=9223372036854775807 envelope=ffffffff"},
			want: resumeQuery{id: snapshotID{index: math.MaxUint64, term: math.MaxUint64, size: math.MaxInt64, envelope: math.MaxUint32}}},
		{name: "trailing field", query: true, header: map[string]string{headerSnapshotID: id.String() + " x=1"}},
		{name: "too long", query: true, header: map[string]string{headerSnapshotID: id.String() + strings.Repeat(" ", maxSnapshotIDLen)}},
		{name: "POST from zero", header: map[string]string{headerSnapshotID: id.String(), headerSnapshotOffset: "0", headerSnapshotCRC: "00000000"},
			want: resumeStart{id: id}},
		{name: "POST resuming", header: map[string]string{headerSnapshotID: id.String(), headerSnapshotOffset: "262144", headerSnapshotCRC: "14a3a02e"},
			want: resumeStart{id: id, offset: 262144, crc: 0x14a3a02e}},
		{name: "POST at the end", header: map[string]string{headerSnapshotID: id.String(), headerSnapshotOffset: "1048576", headerSnapshotCRC: "0000abcd"},
			want: resumeStart{id: id, offset: 1 << 20, crc: 0xabcd}},
		{name: "POST past the end", header: map[string]string{headerSnapshotID: id.String(), headerSnapshotOffset: "1048577", headerSnapshotCRC: "0000abcd"}},
		{name: "POST from zero with a CRC", header: map[string]string{headerSnapshotID: id.String(), headerSnapshotOffset: "0", headerSnapshotCRC: "00000001"}},
		{name: "POST without offset", header: map[string]string{headerSnapshotID: id.String(), headerSnapshotCRC: "00000000"}},
		{name: "POST without CRC", header: map[string]string{headerSnapshotID: id.String(), headerSnapshotOffset: "0"}},
		{name: "POST negative offset", header: map[string]string{headerSnapshotID: id.String(), headerSnapshotOffset: "-1", headerSnapshotCRC: "00000000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.header {
				h.Set(k, v)
			}
			var got any
			var err error
			if tc.query {
				got, err = parseResumeQuery(h)
			} else {
				got, err = parseResumeStart(h)
			}
			if tc.want == nil {
				if !errors.Is(err, ErrInvalidHeader) {
					t.Errorf("got %+v, %v; want an error wrapping %v", got, err, ErrInvalidHeader)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

// FuzzResumeHeaders: whatever the resume headers hold, parsing never
// panics, never yields an offset outside the payload, and whatever parses
// is written back the one way it was spelt.
func FuzzResumeHeaders(f *testing.F) {
	for _, seed := range [][4]string{
		{"index=12 term=2 size=1048576 envelope=c21ae24c", "262144", "14a3a02e", ""},
		{"index=12 term=2 size=1048576 envelope=c21ae24c", "0", "00000000", "65536"},
		{"index=0 term=0 size=0 envelope=00000000", "0", "00000000", "1"},
		{"index=18446744073709551615 term=1 size=9223372036854775807 envelope=ffffffff", "9223372036854775807", "ffffffff", ""},
		{"index=1 term=1 size=10 envelope=0000000g", "11", "x", "-1"},
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3])
	}
	f.Fuzz(func(t *testing.T, idv, off, crc, step string) {
		h := http.Header{}
		h.Set(headerSnapshotID, idv)
		h.Set(headerSnapshotOffset, off)
		h.Set(headerSnapshotCRC, crc)
		if step != "" {
			h.Set(headerSnapshotProgress, step)
		}
		if id, err := parseSnapshotID(h.Get(headerSnapshotID)); err == nil && id.String() != h.Get(headerSnapshotID) {
			t.Errorf("ID %q parsed as %+v, written back as %q", h.Get(headerSnapshotID), id, id.String())
		}
		if q, err := parseResumeQuery(h); err == nil {
			if q.step < 0 || (step != "" && strconv.FormatInt(q.step, 10) != h.Get(headerSnapshotProgress)) {
				t.Errorf("step %q parsed as %d", h.Get(headerSnapshotProgress), q.step)
			}
		}
		st, err := parseResumeStart(h)
		if err != nil {
			if !errors.Is(err, ErrInvalidHeader) {
				t.Errorf("error %v does not wrap %v", err, ErrInvalidHeader)
			}
			return
		}
		if st.offset < 0 || st.offset > st.id.size {
			t.Errorf("offset %d outside a payload of %d bytes", st.offset, st.id.size)
		}
		back := http.Header{}
		setResumePoint(back, st.offset, st.crc)
		if back.Get(headerSnapshotOffset) != h.Get(headerSnapshotOffset) || back.Get(headerSnapshotCRC) != h.Get(headerSnapshotCRC) {
			t.Errorf("resume point %q %q written back as %q %q", h.Get(headerSnapshotOffset), h.Get(headerSnapshotCRC),
				back.Get(headerSnapshotOffset), back.Get(headerSnapshotCRC))
		}
	})
}

// TestReplayRing: the ring holds the last bytes appended, whatever the
// sizes of the appends and the wraps, serves any offset it holds, and
// knows the CRC-32C of the payload up to any of them.
func TestReplayRing(t *testing.T) {
	payload := snapBytes(3, 10000)
	for _, tc := range []struct {
		name   string
		ring   int
		chunks []int // sizes of the appends, in turn, until the payload is in
	}{
		{"smaller chunks than the ring", 1000, []int{7, 300, 1}},
		{"chunks of the ring's size", 1000, []int{1000}},
		{"chunks larger than the ring", 1000, []int{2500, 1}},
		{"a ring as large as the payload", 10000, []int{333}},
		{"no ring", 0, []int{100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := replayRing{buf: make([]byte, tc.ring)}
			off := 0
			for i := 0; off < len(payload); i++ {
				n := min(tc.chunks[i%len(tc.chunks)], len(payload)-off)
				r.append(payload[off : off+n])
				off += n
				if r.hi != int64(off) || r.hi-r.lo != int64(min(off, tc.ring)) {
					t.Fatalf("after %d bytes: holds [%d, %d), want the last %d", off, r.lo, r.hi, min(off, tc.ring))
				}
				for _, o := range []int64{r.lo, (r.lo + r.hi) / 2, r.hi} {
					if want := crc32.Checksum(payload[:o], snapCRCTable); r.crcAt(o) != want {
						t.Fatalf("after %d bytes: CRC-32C up to %d is %08x, want %08x", off, o, r.crcAt(o), want)
					}
				}
				if r.lo < r.hi {
					got := make([]byte, r.hi-r.lo+10)
					n := r.readAt(got, r.lo)
					if n != int(r.hi-r.lo) || !bytes.Equal(got[:n], payload[r.lo:r.hi]) {
						t.Fatalf("after %d bytes: read %d bytes from %d, not the payload's %d", off, n, r.lo, r.hi-r.lo)
					}
				}
			}
		})
	}
}
