package rafthttp

import (
	"fmt"
	"strconv"
	"strings"
)

// maxSemverLen bounds version strings, which come from peer headers; real
// versions are about a dozen bytes.
const maxSemverLen = 256

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
