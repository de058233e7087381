package rafthttp

import (
	"fmt"
	"strconv"
	"strings"
)

// maxSemverLen bounds version strings, which come from peer headers; real
// versions are about a dozen bytes.
const maxSemverLen = 256

// streamType identifies one of the two long-lived streams between each
// ordered pair of members. The zero value is deliberately invalid so that an
// unset field is never mistaken for a real stream.
type streamType uint8

// The stream types. Values start at 1: the zero value stays invalid.
const (
	// streamTypeMessage is the general stream: any raft message, framed with
	// the message codec.
	streamTypeMessage streamType = iota + 1
	// streamTypeMsgAppV2 carries only MsgApp and link heartbeats, with the
	// compact msgappv2 codec.
	streamTypeMsgAppV2
)

// endpoint returns the URL path segment that selects the stream type in
// /raft/stream/{segment}/{fromID}, or "" for an invalid type.
func (t streamType) endpoint() string {
	switch t {
	case streamTypeMessage:
		return "message"
	case streamTypeMsgAppV2:
		return "msgapp"
	default:
		return ""
	}
}

// String returns etcd's name for the stream type, as used in its logs and as
// the status source name, so operators see the same words for both.
func (t streamType) String() string {
	switch t {
	case streamTypeMessage:
		return "stream Message"
	case streamTypeMsgAppV2:
		return "stream MsgApp v2"
	default:
		return "unknown stream type " + strconv.Itoa(int(t))
	}
}

// parseStreamType maps a URL path segment back to its stream type; ok is
// false for anything but "message" and "msgapp".
func parseStreamType(seg string) (t streamType, ok bool) {
	switch seg {
	case "message":
		return streamTypeMessage, true
	case "msgapp":
		return streamTypeMsgAppV2, true
	default:
		return 0, false
	}
}

// semver is a parsed etcd version. We parse versions ourselves, with the
// strict grammar of coreos/go-semver that etcd 3.5-3.7 use, so that we accept
// what those peers accept and so that malformed input is an error rather
// than a panic.
type semver struct {
	major, minor, patch uint64
	pre                 string // pre-release, without the leading '-'
	meta                string // build metadata, without the leading '+'
}

// parseSemver parses "MAJOR.MINOR.PATCH" with an optional "-prerelease" and
// "+build" suffix, like coreos/go-semver: no "v" prefix, exactly three
// decimal parts, and dot-separated [0-9A-Za-z-] identifiers in the suffixes.
// It is stricter than coreos in one point: a '-' or '+' must be followed by
// an identifier ("3.7.0-" is rejected). Strings over maxSemverLen bytes are
// rejected. Errors wrap ErrInvalidHeader, since versions come from headers.
func parseSemver(s string) (semver, error) {
	if len(s) > maxSemverLen {
		return semver{}, fmt.Errorf("%w: version %s is %d bytes long, at most %d allowed",
			ErrInvalidHeader, clip(s, clipQuoted), len(s), maxSemverLen)
	}
	var v semver
	rest := s
	// As in coreos/go-semver, build metadata is split off at the first '+'
	// and then the pre-release at the first '-' of what remains.
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		rest, v.meta = rest[:i], rest[i+1:]
		if !validSemverIdents(v.meta) {
			return semver{}, fmt.Errorf("%w: version %s: invalid build metadata", ErrInvalidHeader, clip(s, clipQuoted))
		}
	}
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		rest, v.pre = rest[:i], rest[i+1:]
		if !validSemverIdents(v.pre) {
			return semver{}, fmt.Errorf("%w: version %s: invalid pre-release", ErrInvalidHeader, clip(s, clipQuoted))
		}
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return semver{}, fmt.Errorf("%w: version %s: want MAJOR.MINOR.PATCH", ErrInvalidHeader, clip(s, clipQuoted))
	}
	nums := [3]*uint64{&v.major, &v.minor, &v.patch}
	for i, p := range parts {
		// Bit size 63 keeps the range of coreos's int64 fields. ParseUint
		// with base 10 accepts only decimal digits: no sign, no '_'.
		n, err := strconv.ParseUint(p, 10, 63)
		if err != nil {
			return semver{}, fmt.Errorf("%w: version %s: part %d is not a decimal number", ErrInvalidHeader, clip(s, clipQuoted), i+1)
		}
		*nums[i] = n
	}
	return v, nil
}

// validSemverIdents reports whether s is a non-empty, dot-separated list of
// non-empty identifiers made of ASCII letters, digits and '-'.
func validSemverIdents(s string) bool {
	if s == "" {
		return false
	}
	for ident := range strings.SplitSeq(s, ".") {
		if ident == "" {
			return false
		}
		for i := 0; i < len(ident); i++ {
			c := ident[i]
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-') {
				return false
			}
		}
	}
	return true
}

// String renders v in the form parseSemver accepts, as sent in headers.
func (v semver) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch)
	if v.pre != "" {
		s += "-" + v.pre
	}
	if v.meta != "" {
		s += "+" + v.meta
	}
	return s
}

// compareMajorMinor compares a and b by major and minor only, returning -1,
// 0 or +1: etcd's compatibility rules ignore patch, pre-release and build.
func compareMajorMinor(a, b semver) int {
	switch {
	case a.major != b.major:
		if a.major < b.major {
			return -1
		}
		return 1
	case a.minor != b.minor:
		if a.minor < b.minor {
			return -1
		}
		return 1
	default:
		return 0
	}
}

// majorMinor keys supportedStreams: only major.minor matters.
type majorMinor struct{ major, minor uint64 }

// supportedStreams lists, by the "major.minor.0" of a remote that is older
// than us, which stream types it serves (spec §6.2). etcd 2.0 had no streams
// we speak; every later release serves both.
//
// The lookup is by exact major.minor, and a release missing from the table
// is taken to serve nothing, so every 3.x minor is listed: a gap would make
// us refuse the streams of a real, perfectly compatible etcd release and fall
// back to the pipeline for good. 3.8 is listed for the benefit of a local
// version configured above it.
var supportedStreams = map[majorMinor][]streamType{
	{2, 0}: {},
	{2, 1}: {streamTypeMsgAppV2, streamTypeMessage},
	{2, 2}: {streamTypeMsgAppV2, streamTypeMessage},
	{2, 3}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 0}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 1}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 2}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 3}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 4}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 5}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 6}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 7}: {streamTypeMsgAppV2, streamTypeMessage},
	{3, 8}: {streamTypeMsgAppV2, streamTypeMessage},
}

// supportsStream reports whether a remote at version remote serves stream
// type t, from the point of view of a local member at version local (the
// dialer's check, spec §6.2): a remote at least as new as us (by
// major.minor) is assumed to serve both types; an older one must list t in
// supportedStreams. An invalid t is never supported.
func supportsStream(local, remote semver, t streamType) bool {
	if t.endpoint() == "" {
		return false
	}
	if compareMajorMinor(remote, local) >= 0 {
		return true
	}
	for _, st := range supportedStreams[majorMinor{remote.major, remote.minor}] {
		if st == t {
			return true
		}
	}
	return false
}
