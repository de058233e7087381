package rafthttp

import (
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// Header names of the raft HTTP protocol (spec §2.1). They are facts of the
// wire format shared with etcd peers.
const (
	// headerServerFrom carries the sender's member ID in hex.
	headerServerFrom = "X-Server-From"
	// headerServerVersion carries the sender's (or responder's) etcd-style
	// server version, e.g. "3.7.0".
	headerServerVersion = "X-Server-Version"
	// headerMinClusterVersion carries the oldest cluster version the sender
	// can work with, "3.0.0" for every 3.x release.
	headerMinClusterVersion = "X-Min-Cluster-Version"
	// headerClusterID carries the cluster ID in lowercase hex; requests from
	// another cluster are refused.
	headerClusterID = "X-Etcd-Cluster-ID"
	// headerRaftTo carries, on stream dials, the member ID the dialer expects
	// to reach.
	headerRaftTo = "X-Raft-To"
	// headerPeerURLs carries the sender's advertised peer URLs joined with
	// ",", so the receiver can reach a member it does not know yet.
	headerPeerURLs = "X-PeerURLs"
)

// defaultHeaderVersion is what etcd assumes when a version header is absent:
// etcd 2.0 sent none.
const defaultHeaderVersion = "2.0.0"

// maxSemverLen bounds version strings, which come from peer headers; real
// versions are about a dozen bytes.
const maxSemverLen = 256

// maxIDLen is the longest hex ID parseID accepts: a uint64 needs at most 16
// hex digits, and etcd never sends leading zeros.
const maxIDLen = 16

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
			ErrInvalidHeader, quoteClipped(s), len(s), maxSemverLen)
	}
	var v semver
	rest := s
	// As in coreos/go-semver, build metadata is split off at the first '+'
	// and then the pre-release at the first '-' of what remains.
	if i := strings.IndexByte(rest, '+'); i >= 0 {
		rest, v.meta = rest[:i], rest[i+1:]
		if !validSemverIdents(v.meta) {
			return semver{}, fmt.Errorf("%w: version %s: invalid build metadata", ErrInvalidHeader, quoteClipped(s))
		}
	}
	if i := strings.IndexByte(rest, '-'); i >= 0 {
		rest, v.pre = rest[:i], rest[i+1:]
		if !validSemverIdents(v.pre) {
			return semver{}, fmt.Errorf("%w: version %s: invalid pre-release", ErrInvalidHeader, quoteClipped(s))
		}
	}
	parts := strings.Split(rest, ".")
	if len(parts) != 3 {
		return semver{}, fmt.Errorf("%w: version %s: want MAJOR.MINOR.PATCH", ErrInvalidHeader, quoteClipped(s))
	}
	nums := [3]*uint64{&v.major, &v.minor, &v.patch}
	for i, p := range parts {
		// Bit size 63 keeps the range of coreos's int64 fields. ParseUint
		// with base 10 accepts only decimal digits: no sign, no '_'.
		n, err := strconv.ParseUint(p, 10, 63)
		if err != nil {
			return semver{}, fmt.Errorf("%w: version %s: part %d is not a decimal number", ErrInvalidHeader, quoteClipped(s), i+1)
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

// headerVersions reads the remote's X-Server-Version and
// X-Min-Cluster-Version. An absent (or empty) header means "2.0.0", as in
// etcd. A malformed one, on which etcd panics, is an error wrapping both
// ErrInvalidHeader and ErrIncompatibleVersion, so that handlers answer it
// with 412 "incompatible version".
func headerVersions(h http.Header) (server, minCluster semver, err error) {
	server, err = headerVersion(h, headerServerVersion)
	if err != nil {
		return semver{}, semver{}, err
	}
	minCluster, err = headerVersion(h, headerMinClusterVersion)
	if err != nil {
		return semver{}, semver{}, err
	}
	return server, minCluster, nil
}

// headerVersion parses one version header for headerVersions.
func headerVersion(h http.Header, name string) (semver, error) {
	s := h.Get(name)
	if s == "" {
		s = defaultHeaderVersion
	}
	v, err := parseSemver(s)
	if err != nil {
		return semver{}, fmt.Errorf("%w: %s: %w", ErrIncompatibleVersion, name, err)
	}
	return v, nil
}

// checkVersionCompatibility is the inbound version check every handler runs
// first (spec §6.1): the remote's server version must not be older than our
// minimum cluster version, and its minimum cluster version must not be newer
// than our server version, both by major.minor. Errors wrap
// ErrIncompatibleVersion and say which side is too low.
func checkVersionCompatibility(localServer, localMinCluster semver, h http.Header) error {
	remoteServer, remoteMinCluster, err := headerVersions(h)
	if err != nil {
		return err
	}
	if compareMajorMinor(remoteServer, localMinCluster) < 0 {
		return fmt.Errorf("%w: remote version is too low: remote server version %s, local minimum cluster version %s",
			ErrIncompatibleVersion, remoteServer, localMinCluster)
	}
	if compareMajorMinor(remoteMinCluster, localServer) > 0 {
		return fmt.Errorf("%w: local version is too low: remote minimum cluster version %s, local server version %s",
			ErrIncompatibleVersion, remoteMinCluster, localServer)
	}
	return nil
}

// checkClusterID refuses requests from other clusters: X-Etcd-Cluster-ID must
// equal the canonical form of local exactly, as etcd compares strings (an
// upper-case or zero-padded ID is a mismatch). A missing header is a
// mismatch. Errors wrap ErrClusterIDMismatch.
func checkClusterID(local uint64, h http.Header) error {
	want := formatID(local)
	// Get, not a map index: the canonical key is "X-Etcd-Cluster-Id".
	got := h.Get(headerClusterID)
	if got == "" {
		return fmt.Errorf("%w: local %s, remote sent no %s", ErrClusterIDMismatch, want, headerClusterID)
	}
	if got != want {
		return fmt.Errorf("%w: local %s, remote %s", ErrClusterIDMismatch, want, quoteClipped(got))
	}
	return nil
}

// formatID renders a member or cluster ID the way the wire expects it:
// lowercase hex without leading zeros.
func formatID(id uint64) string {
	return strconv.FormatUint(id, 16)
}

// parseID parses a hex member or cluster ID from a header or URL. Like etcd
// it accepts upper case (base-16 ParseUint); it rejects empty strings and
// strings longer than 16 bytes. Errors wrap ErrInvalidHeader.
func parseID(s string) (uint64, error) {
	if s == "" {
		return 0, fmt.Errorf("%w: empty ID", ErrInvalidHeader)
	}
	if len(s) > maxIDLen {
		return 0, fmt.Errorf("%w: ID %s is %d bytes long, at most %d allowed", ErrInvalidHeader, quoteClipped(s), len(s), maxIDLen)
	}
	id, err := strconv.ParseUint(s, 16, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: ID %s is not hexadecimal", ErrInvalidHeader, quoteClipped(s))
	}
	return id, nil
}

// parsePeerURLsHeader reads the X-PeerURLs header: the value split on ","
// and validated by parseURLs. present is false, with no error, when the
// header is absent or empty; a present but invalid header gives present true
// and an error wrapping both ErrInvalidHeader and ErrInvalidURL.
func parsePeerURLsHeader(h http.Header) (urls []url.URL, present bool, err error) {
	v := h.Get(headerPeerURLs)
	if v == "" {
		return nil, false, nil
	}
	// Count before splitting so that a huge header is refused without
	// building a huge slice.
	if n := strings.Count(v, ",") + 1; n > maxURLCount {
		return nil, true, fmt.Errorf("%w: %s: %w: %d URLs given, at most %d allowed",
			ErrInvalidHeader, headerPeerURLs, ErrInvalidURL, n, maxURLCount)
	}
	urls, err = parseURLs(strings.Split(v, ","))
	if err != nil {
		return nil, true, fmt.Errorf("%w: %s: %w", ErrInvalidHeader, headerPeerURLs, err)
	}
	return urls, true, nil
}
