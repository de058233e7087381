package rafthttp

import (
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"net/http"
	"strconv"
	"strings"

	"go.etcd.io/raft/v3/raftpb"
)

// The wire format of resumable snapshot transfers (featureSnapshotResume):
// the payload identity, the resume point, and their parsers; golden bytes
// in testdata/wire/snapshot_resume.golden.

// snapshotID names a payload for resuming: the snapshot's index and term,
// the payload's size, and the CRC-32C of the envelope frame, which covers
// the rest of the MsgSnap (its sender and term, the snapshot's data and
// configuration). Two transfers with the same ID are taken to be of the
// same snapshot; whether their payloads are the same is checked by CRC-32C
// before one resumes the other.
type snapshotID struct {
	index, term uint64
	size        int64
	envelope    uint32
}

// newSnapshotID is the ID of the transfer of m, whose envelope frame is
// envelope, with a payload of size bytes.
func newSnapshotID(m *raftpb.Message, envelope []byte, size int64) snapshotID {
	md := m.GetSnapshot().GetMetadata()
	return snapshotID{index: md.GetIndex(), term: md.GetTerm(), size: size, envelope: crc32.Checksum(envelope, crc32c)}
}

// String formats id as X-Rafthttp-Snapshot-Id carries it.
func (id snapshotID) String() string {
	b := make([]byte, 0, 96)
	b = strconv.AppendUint(append(b, "index="...), id.index, 10)
	b = strconv.AppendUint(append(b, " term="...), id.term, 10)
	b = strconv.AppendInt(append(b, " size="...), id.size, 10)
	b = appendCRC(append(b, " envelope="...), id.envelope)
	return string(b)
}

// appendCRC appends a CRC-32C as crcOf formats it.
func appendCRC(b []byte, sum uint32) []byte {
	const hex = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, hex[sum>>shift&0xf])
	}
	return b
}

// maxSnapshotIDLen bounds X-Rafthttp-Snapshot-Id: its longest valid value
// is 88 bytes.
const maxSnapshotIDLen = 128

// parseSnapshotID reads X-Rafthttp-Snapshot-Id strictly: the four fields in
// order, one space apart, decimals without sign or leading zeros, the CRC
// in 8 lowercase hex digits; so a valid value has one spelling, String's.
// Errors wrap ErrInvalidHeader.
func parseSnapshotID(s string) (snapshotID, error) {
	bad := func(why string) (snapshotID, error) {
		return snapshotID{}, fmt.Errorf("%w: %s %s: %s", ErrInvalidHeader, headerSnapshotID, clip(s, clipQuoted), why)
	}
	if len(s) > maxSnapshotIDLen {
		return bad("too long")
	}
	keys := [4]string{"index", "term", "size", "envelope"}
	var vals [4]string
	rest := s
	for i, k := range keys {
		field := rest
		if i < len(keys)-1 {
			var ok bool
			if field, rest, ok = strings.Cut(rest, " "); !ok {
				return bad("want index=, term=, size= and envelope=")
			}
		}
		v, ok := strings.CutPrefix(field, k+"=")
		if !ok {
			return bad("want " + k + "= at field " + strconv.Itoa(i+1))
		}
		vals[i] = v
	}
	var id snapshotID
	var err error
	if id.index, err = parseDecimal(vals[0]); err != nil {
		return bad("index: " + err.Error())
	}
	if id.term, err = parseDecimal(vals[1]); err != nil {
		return bad("term: " + err.Error())
	}
	if id.size, err = parseOffset(vals[2], math.MaxInt64); err != nil {
		return bad("size: " + err.Error())
	}
	if id.envelope, err = parseCRCStrict(vals[3]); err != nil {
		return bad("envelope: " + err.Error())
	}
	return id, nil
}

// parseDecimal reads an unsigned decimal with one spelling: digits only, no
// leading zero but in "0".
func parseDecimal(s string) (uint64, error) {
	if s == "" || len(s) > 20 {
		return 0, errors.New("not a decimal of 1 to 20 digits")
	}
	if s[0] == '0' && len(s) > 1 {
		return 0, errors.New("leading zero")
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("not a decimal")
		}
	}
	return strconv.ParseUint(s, 10, 64)
}

// parseOffset reads a decimal (parseDecimal) of at most limit.
func parseOffset(s string, limit int64) (int64, error) {
	v, err := parseDecimal(s)
	if err != nil {
		return 0, err
	}
	if v > uint64(limit) {
		return 0, fmt.Errorf("%d is over %d", v, limit)
	}
	return int64(v), nil
}

// parseCRCStrict reads a CRC-32C as crcOf writes it: 8 lowercase hex
// digits.
func parseCRCStrict(s string) (uint32, error) {
	if len(s) != 8 {
		return 0, errors.New("not 8 hex digits")
	}
	for i := range len(s) {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return 0, errors.New("not lowercase hex")
		}
	}
	v, err := strconv.ParseUint(s, 16, 32)
	return uint32(v), err
}

// resumeQuery is a GET /raft/snapshot/resume about the payload id: a
// resume query (step 0) or a progress stream reporting every step bytes.
type resumeQuery struct {
	id   snapshotID
	step int64
}

// parseResumeQuery reads the headers of a query. Errors wrap
// ErrInvalidHeader.
func parseResumeQuery(h http.Header) (resumeQuery, error) {
	id, err := parseSnapshotID(h.Get(headerSnapshotID))
	if err != nil {
		return resumeQuery{}, err
	}
	q := resumeQuery{id: id}
	if v := h.Get(headerSnapshotProgress); v != "" {
		if q.step, err = parseOffset(v, math.MaxInt64); err != nil || q.step == 0 {
			if err == nil {
				err = errors.New("zero")
			}
			return resumeQuery{}, fmt.Errorf("%w: %s %s: %w", ErrInvalidHeader, headerSnapshotProgress, clip(v, clipQuoted), err)
		}
	}
	return q, nil
}

// resumeStart is what the headers of a resumable POST say: the payload,
// the offset its body's payload part starts at, and the CRC-32C of the
// payload before that.
type resumeStart struct {
	id     snapshotID
	offset int64
	crc    uint32
}

// parseResumeStart reads the headers of a resumable POST. Errors wrap
// ErrInvalidHeader.
func parseResumeStart(h http.Header) (resumeStart, error) {
	id, err := parseSnapshotID(h.Get(headerSnapshotID))
	if err != nil {
		return resumeStart{}, err
	}
	off, crc, err := parseResumePoint(h, id.size)
	if err != nil {
		return resumeStart{}, err
	}
	return resumeStart{id: id, offset: off, crc: crc}, nil
}

// parseResumePoint reads X-Rafthttp-Snapshot-Offset (at most size) and
// X-Rafthttp-Snapshot-Crc32c. Errors wrap ErrInvalidHeader.
func parseResumePoint(h http.Header, size int64) (int64, uint32, error) {
	ov, cv := h.Get(headerSnapshotOffset), h.Get(headerSnapshotCRC)
	off, err := parseOffset(ov, size)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %s %s: %w", ErrInvalidHeader, headerSnapshotOffset, clip(ov, clipQuoted), err)
	}
	crc, err := parseCRCStrict(cv)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: %s %s: %w", ErrInvalidHeader, headerSnapshotCRC, clip(cv, clipQuoted), err)
	}
	if off == 0 && crc != 0 {
		return 0, 0, fmt.Errorf("%w: %s %s for offset 0, want 00000000", ErrInvalidHeader, headerSnapshotCRC, cv)
	}
	return off, crc, nil
}

// setResumePoint sets X-Rafthttp-Snapshot-Offset and -Crc32c on h.
func setResumePoint(h http.Header, off int64, crc uint32) {
	h.Set(headerSnapshotOffset, strconv.FormatInt(off, 10))
	h.Set(headerSnapshotCRC, string(appendCRC(nil, crc)))
}

// ---------------------------------------------------------------------------
// Sending.
