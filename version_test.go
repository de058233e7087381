package rafthttp

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// semverForTest parses s with parseSemver and fails the test on error.
func semverForTest(t *testing.T, s string) semver {
	t.Helper()
	v, err := parseSemver(s)
	if err != nil {
		t.Fatalf("parseSemver(%q): %v", s, err)
	}
	return v
}

// versionHeaderForTest builds a header with the given version headers; an empty
// value leaves that header out.
func versionHeaderForTest(server, minCluster string) http.Header {
	h := http.Header{}
	if server != "" {
		h.Set(headerServerVersion, server)
	}
	if minCluster != "" {
		h.Set(headerMinClusterVersion, minCluster)
	}
	return h
}

// TestStreamType checks the path segment and name of each stream type and the way back.
func TestStreamType(t *testing.T) {
	tests := []struct {
		name     string
		t        streamType
		endpoint string
		str      string
	}{
		{name: "message", t: streamTypeMessage, endpoint: "message", str: "stream Message"},
		{name: "msgappv2", t: streamTypeMsgAppV2, endpoint: "msgapp", str: "stream MsgApp v2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.t == 0 {
				t.Errorf("stream type: got 0, want non-zero")
			}
			if got := tt.t.endpoint(); got != tt.endpoint {
				t.Errorf("endpoint: got %q, want %q", got, tt.endpoint)
			}
			if got := tt.t.String(); got != tt.str {
				t.Errorf("String: got %q, want %q", got, tt.str)
			}
			got, ok := parseStreamType(tt.endpoint)
			if !ok || got != tt.t {
				t.Errorf("parseStreamType(%q): got (%v, %v), want (%v, true)", tt.endpoint, got, ok, tt.t)
			}
		})
	}
}

// TestStreamTypeInvalid checks that unknown path segments and the zero type are rejected.
func TestStreamTypeInvalid(t *testing.T) {
	for _, seg := range []string{"", "msgappv2", "Message", "MSGAPP", "message/", "snapshot"} {
		t.Run(fmt.Sprintf("%q", seg), func(t *testing.T) {
			if got, ok := parseStreamType(seg); ok {
				t.Errorf("parseStreamType: got (%v, true), want (_, false)", got)
			}
		})
	}
	var zero streamType
	if got := zero.endpoint(); got != "" {
		t.Errorf("zero endpoint: got %q, want \"\"", got)
	}
	if got := zero.String(); !strings.Contains(got, "unknown") {
		t.Errorf("zero String: got %q, want it to contain \"unknown\"", got)
	}
}

// TestParseSemver checks the strict coreos-style version grammar.
func TestParseSemver(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    semver
		wantErr bool
	}{
		{name: "release", in: "3.7.3", want: semver{major: 3, minor: 7, patch: 3}},
		{name: "zero", in: "0.0.0", want: semver{}},
		{name: "pre-release and build", in: "2.1.0-alpha.0+git", want: semver{major: 2, minor: 1, pre: "alpha.0", meta: "git"}},
		{name: "pre-release only", in: "3.8.0-alpha.0", want: semver{major: 3, minor: 8, pre: "alpha.0"}},
		{name: "build only", in: "3.6.0+abc.12", want: semver{major: 3, minor: 6, meta: "abc.12"}},
		{name: "hyphen in pre-release", in: "1.2.3-rc-1", want: semver{major: 1, minor: 2, patch: 3, pre: "rc-1"}},
		{name: "hyphen in build", in: "1.2.3+b-1", want: semver{major: 1, minor: 2, patch: 3, meta: "b-1"}},
		{name: "leading zero accepted like coreos", in: "03.7.0", want: semver{major: 3, minor: 7}},
		{name: "largest part", in: "9223372036854775807.0.0", want: semver{major: 1<<63 - 1}},

		{name: "v prefix", in: "v3.7.0", wantErr: true},
		{name: "two parts", in: "3.7", wantErr: true},
		{name: "four parts", in: "3.7.0.1", wantErr: true},
		{name: "garbage", in: "garbage", wantErr: true},
		{name: "empty", in: "", wantErr: true},
		{name: "leading plus", in: "+3.7.0", wantErr: true},
		{name: "leading minus", in: "-3.7.0", wantErr: true},
		{name: "sign inside", in: "3.+7.0", wantErr: true},
		{name: "empty part", in: "3..0", wantErr: true},
		{name: "trailing space", in: "3.7.0 ", wantErr: true},
		{name: "leading space", in: " 3.7.0", wantErr: true},
		{name: "empty pre-release", in: "3.7.0-", wantErr: true},
		{name: "empty build", in: "3.7.0+", wantErr: true},
		{name: "empty identifier", in: "3.7.0-a..b", wantErr: true},
		{name: "bad character in pre-release", in: "3.7.0-a_b", wantErr: true},
		{name: "plus in build", in: "3.7.0+a+b", wantErr: true},
		{name: "underscore digits", in: "3_0.7.0", wantErr: true},
		{name: "part overflows int64", in: "9223372036854775808.0.0", wantErr: true},
		{name: "hex part", in: "0x3.7.0", wantErr: true},
		{name: "over-long", in: "3.7.0-" + strings.Repeat("a", maxSemverLen), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSemver(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseSemver(%q): got %+v, want an error", tt.in, got)
				}
				if !errors.Is(err, ErrInvalidHeader) {
					t.Errorf("error: got %v, want one wrapping ErrInvalidHeader", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseSemver(%q): got error %v, want nil", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("parseSemver(%q): got %+v, want %+v", tt.in, got, tt.want)
			}
		})
	}
}

// TestSemverString checks that String reproduces canonical version strings.
func TestSemverString(t *testing.T) {
	for _, s := range []string{"3.7.3", "2.1.0-alpha.0+git", "3.8.0-alpha.0", "3.6.0+abc", "0.0.0"} {
		t.Run(s, func(t *testing.T) {
			if got := semverForTest(t, s).String(); got != s {
				t.Errorf("String: got %q, want %q", got, s)
			}
		})
	}
}

// TestSemverMaxLen checks that a version of exactly the maximum length is accepted.
func TestSemverMaxLen(t *testing.T) {
	s := "3.7.0-" + strings.Repeat("a", maxSemverLen-len("3.7.0-"))
	if _, err := parseSemver(s); err != nil {
		t.Errorf("parseSemver of %d bytes: got error %v, want nil", len(s), err)
	}
}

// TestCompareMajorMinorVersion checks that only major and minor take part in comparisons.
func TestCompareMajorMinorVersion(t *testing.T) {
	tests := []struct {
		name string
		a, b string
		want int
	}{
		{name: "equal", a: "2.1.0", b: "2.1.0", want: 0},
		{name: "minor less", a: "2.0.0", b: "2.1.0", want: -1},
		{name: "minor greater", a: "2.2.0", b: "2.1.0", want: 1},
		{name: "major less", a: "2.9.0", b: "3.0.0", want: -1},
		{name: "major greater", a: "4.0.0", b: "3.9.0", want: 1},
		{name: "patch ignored", a: "2.1.1", b: "2.1.0", want: 0},
		{name: "pre-release ignored", a: "2.1.0-alpha.0", b: "2.1.0", want: 0},
		{name: "build ignored", a: "3.7.0+git", b: "3.7.9", want: 0},
		{name: "numeric not lexical", a: "3.10.0", b: "3.9.0", want: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := compareMajorMinor(semverForTest(t, tt.a), semverForTest(t, tt.b)); got != tt.want {
				t.Errorf("compareMajorMinor(%s, %s): got %d, want %d", tt.a, tt.b, got, tt.want)
			}
		})
	}
}

// TestHeaderVersions checks that absent version headers mean 2.0.0 and present ones are kept intact.
func TestHeaderVersions(t *testing.T) {
	tests := []struct {
		name           string
		server, minVer string // "" leaves the header out
		wantServer     string
		wantMin        string
	}{
		{name: "both absent default to 2.0.0", wantServer: "2.0.0", wantMin: "2.0.0"},
		{name: "server 2.1.0", server: "2.1.0", wantServer: "2.1.0", wantMin: "2.0.0"},
		{name: "server kept intact", server: "2.1.0-alpha.0+git", wantServer: "2.1.0-alpha.0+git", wantMin: "2.0.0"},
		{name: "min 2.1.0", minVer: "2.1.0", wantServer: "2.0.0", wantMin: "2.1.0"},
		{name: "min kept intact", minVer: "2.1.0-alpha.0+git", wantServer: "2.0.0", wantMin: "2.1.0-alpha.0+git"},
		{name: "etcd 3.7", server: "3.7.3", minVer: "3.0.0", wantServer: "3.7.3", wantMin: "3.0.0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rh := parseRequestHeaders(versionHeaderForTest(tt.server, tt.minVer))
			server, minVer, err := rh.serverVersion, rh.minClusterVersion, rh.versionErr
			if err != nil {
				t.Fatalf("parseRequestHeaders: got version error %v, want nil", err)
			}
			if got := server.String(); got != tt.wantServer {
				t.Errorf("server version: got %s, want %s", got, tt.wantServer)
			}
			if got := minVer.String(); got != tt.wantMin {
				t.Errorf("min cluster version: got %s, want %s", got, tt.wantMin)
			}
		})
	}
}

// TestHeaderVersionsEmptyValue checks that an empty version header counts as absent.
func TestHeaderVersionsEmptyValue(t *testing.T) {
	// A present but empty header reads as absent, as with etcd's Header.Get.
	h := http.Header{}
	h.Set(headerServerVersion, "")
	rh := parseRequestHeaders(h)
	server, err := rh.serverVersion, rh.versionErr
	if err != nil {
		t.Fatalf("parseRequestHeaders: got version error %v, want nil", err)
	}
	if got, want := server.String(), defaultHeaderVersion; got != want {
		t.Errorf("server version: got %s, want %s", got, want)
	}
}

// TestHeaderVersionsMalformed checks that a malformed version header is an error, not a panic.
func TestHeaderVersionsMalformed(t *testing.T) {
	tests := []struct {
		name           string
		server, minVer string
		wantHeader     string
	}{
		{name: "bad server", server: "garbage", minVer: "3.0.0", wantHeader: headerServerVersion},
		{name: "bad min", server: "3.7.0", minVer: "v3.0.0", wantHeader: headerMinClusterVersion},
		{name: "over-long server", server: strings.Repeat("9", 1000), wantHeader: headerServerVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rh := parseRequestHeaders(versionHeaderForTest(tt.server, tt.minVer))
			err := rh.versionErr
			if err == nil {
				t.Fatal("parseRequestHeaders: got no version error, want one")
			}
			if rh.serverVersion != (semver{}) || rh.minClusterVersion != (semver{}) {
				t.Errorf("versions: got %s and %s, want both zero", rh.serverVersion, rh.minClusterVersion)
			}
			if !errors.Is(err, ErrInvalidHeader) || !errors.Is(err, ErrIncompatibleVersion) {
				t.Errorf("error: got %v, want one wrapping ErrInvalidHeader and ErrIncompatibleVersion", err)
			}
			if !strings.Contains(err.Error(), tt.wantHeader) {
				t.Errorf("error: got %q, want it to name %s", err, tt.wantHeader)
			}
		})
	}
}

// TestCheckVersionCompatibility mirrors etcd's compatibility cases for a 3.7.0 local with minimum 3.0.0.
func TestCheckVersionCompatibility(t *testing.T) {
	localServer := semverForTest(t, "3.7.0")
	localMin := semverForTest(t, "3.0.0")
	tests := []struct {
		name           string
		server, minVer string // "" leaves the header out (2.0.0)
		wantErr        string // "" for compatible
	}{
		{name: "same version", server: "3.7.0", minVer: "3.0.0"},
		{name: "same version other patch", server: "3.7.3", minVer: "3.0.0"},
		{name: "remote is the local min cluster version, min 0", server: "3.0.0", minVer: "0.0.0"},
		{name: "remote one major higher with min = local version", server: "4.0.0", minVer: "3.7.0"},
		{name: "remote min = local version other patch", server: "3.8.0", minVer: "3.7.9"},
		{name: "etcd 3.5 peer", server: "3.5.21", minVer: "3.0.0"},
		{name: "remote version is too low", server: "2.3.0", minVer: "2.0.0", wantErr: "remote version is too low"},
		{name: "headers absent", wantErr: "remote version is too low"},
		{name: "remote min above local version", server: "4.0.0", minVer: "4.0.0", wantErr: "local version is too low"},
		{name: "remote min one minor above", server: "3.8.0", minVer: "3.8.0", wantErr: "local version is too low"},
		{name: "malformed server", server: "garbage", minVer: "3.0.0", wantErr: headerServerVersion},
		{name: "malformed min", server: "3.7.0", minVer: "3.0", wantErr: headerMinClusterVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rh := parseRequestHeaders(versionHeaderForTest(tt.server, tt.minVer))
			err := rh.checkVersions(localServer, localMin)
			if tt.wantErr == "" {
				if err != nil {
					t.Errorf("checkVersions: got %v, want nil", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("checkVersions: got nil, want an error containing %q", tt.wantErr)
			}
			if !errors.Is(err, ErrIncompatibleVersion) {
				t.Errorf("error: got %v, want one wrapping ErrIncompatibleVersion", err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error: got %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// TestCheckVersionCompatibilityMalformedWrapsBoth checks that a malformed version maps to both sentinels.
func TestCheckVersionCompatibilityMalformedWrapsBoth(t *testing.T) {
	rh := parseRequestHeaders(versionHeaderForTest("garbage", ""))
	err := rh.checkVersions(semverForTest(t, "3.7.0"), semverForTest(t, "3.0.0"))
	if !errors.Is(err, ErrIncompatibleVersion) {
		t.Errorf("errors.Is(err, ErrIncompatibleVersion): got false for %v, want true", err)
	}
	if !errors.Is(err, ErrInvalidHeader) {
		t.Errorf("errors.Is(err, ErrInvalidHeader): got false for %v, want true", err)
	}
}

// TestCheckClusterID checks the exact string comparison of X-Etcd-Cluster-ID.
func TestCheckClusterID(t *testing.T) {
	const local = 0xabc
	tests := []struct {
		name    string
		value   *string // nil leaves the header out
		wantErr bool
	}{
		{name: "equal", value: optValue("abc")},
		{name: "different", value: optValue("abd"), wantErr: true},
		{name: "upper case is a mismatch", value: optValue("ABC"), wantErr: true},
		{name: "zero-padded is a mismatch", value: optValue("0abc"), wantErr: true},
		{name: "missing", value: nil, wantErr: true},
		{name: "empty", value: optValue(""), wantErr: true},
		{name: "garbage", value: optValue("not hex"), wantErr: true},
		{name: "over-long", value: optValue(strings.Repeat("a", 10000)), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.value != nil {
				h.Set(headerClusterID, *tt.value)
			}
			rh := parseRequestHeaders(h)
			err := rh.checkClusterID(local)
			if !tt.wantErr {
				if err != nil {
					t.Errorf("checkClusterID: got %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrClusterIDMismatch) {
				t.Errorf("checkClusterID: got %v, want an error wrapping ErrClusterIDMismatch", err)
			}
		})
	}
}

// TestFormatParseID checks the canonical hex form of IDs and its round trip.
func TestFormatParseID(t *testing.T) {
	tests := []struct {
		name string
		id   uint64
		want string
	}{
		{name: "one", id: 1, want: "1"},
		{name: "zero", id: 0, want: "0"},
		{name: "cluster", id: 0x1000, want: "1000"},
		{name: "lower case", id: 0xdeadbeef, want: "deadbeef"},
		{name: "max", id: 1<<64 - 1, want: "ffffffffffffffff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatID(tt.id); got != tt.want {
				t.Errorf("formatID(%d): got %q, want %q", tt.id, got, tt.want)
			}
			got, err := parseID(tt.want)
			if err != nil {
				t.Fatalf("parseID(%q): got error %v, want nil", tt.want, err)
			}
			if got != tt.id {
				t.Errorf("parseID(%q): got %d, want %d", tt.want, got, tt.id)
			}
		})
	}
}

// TestParseID checks the hex ID grammar and its bounds.
func TestParseID(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    uint64
		wantErr bool
	}{
		{name: "upper case", in: "DEADBEEF", want: 0xdeadbeef},
		{name: "mixed case", in: "DeadBeef", want: 0xdeadbeef},
		{name: "leading zeros within 16 bytes", in: "0000000000000001", want: 1},
		{name: "empty", in: "", wantErr: true},
		{name: "over-long", in: "00000000000000001", wantErr: true},
		{name: "overflow", in: "1" + strings.Repeat("0", 16), wantErr: true},
		{name: "0x prefix", in: "0x1", wantErr: true},
		{name: "sign", in: "+1", wantErr: true},
		{name: "minus", in: "-1", wantErr: true},
		{name: "underscore", in: "1_0", wantErr: true},
		{name: "space", in: " 1", wantErr: true},
		{name: "not hex", in: "xyz", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseID(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseID(%q): got %d, want an error", tt.in, got)
				}
				if !errors.Is(err, ErrInvalidHeader) {
					t.Errorf("error: got %v, want one wrapping ErrInvalidHeader", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseID(%q): got error %v, want nil", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("parseID(%q): got %#x, want %#x", tt.in, got, tt.want)
			}
		})
	}
}

// TestSupportsStream checks the dialer's stream-type support rules of spec §6.2.
func TestSupportsStream(t *testing.T) {
	both := []streamType{streamTypeMsgAppV2, streamTypeMessage}
	tests := []struct {
		name          string
		local, remote string
		want          []streamType // the types that must be supported; others must not
	}{
		{name: "2.0 remote: nothing", local: "3.7.0", remote: "2.0.0", want: nil},
		{name: "2.0 remote seen by a 2.1 dialer", local: "2.1.0", remote: "2.0.0", want: nil},
		{name: "2.1.0", local: "3.7.0", remote: "2.1.0", want: both},
		{name: "2.1.9 patch ignored", local: "3.7.0", remote: "2.1.9", want: both},
		{name: "2.1.0-alpha pre-release ignored", local: "3.7.0", remote: "2.1.0-alpha", want: both},
		{name: "2.3", local: "3.7.0", remote: "2.3.7", want: both},
		{name: "2.4 unknown and older", local: "3.7.0", remote: "2.4.0", want: nil},
		{name: "1.0 unknown and older", local: "3.7.0", remote: "1.0.0", want: nil},
		{name: "local 3.7 remote 3.5", local: "3.7.0", remote: "3.5.21", want: both},
		{name: "local 3.7 remote 3.6", local: "3.7.0", remote: "3.6.14", want: both},
		{name: "local 3.7 remote 3.7", local: "3.7.0", remote: "3.7.3", want: both},
		{name: "local 3.7 remote 3.8", local: "3.7.0", remote: "3.8.0-alpha.0", want: both},
		{name: "remote newer than any table entry", local: "3.7.0", remote: "4.2.0", want: both},
		{name: "local 3.9 remote 3.8", local: "3.9.0", remote: "3.8.0", want: both},
		{name: "local 4.0 remote 3.9 not in table", local: "4.0.0", remote: "3.9.0", want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local, remote := semverForTest(t, tt.local), semverForTest(t, tt.remote)
			for _, st := range []streamType{streamTypeMessage, streamTypeMsgAppV2} {
				want := false
				for _, w := range tt.want {
					want = want || w == st
				}
				if got := supportsStream(local, remote, st); got != want {
					t.Errorf("supportsStream(%s, %s, %v): got %v, want %v", tt.local, tt.remote, st, got, want)
				}
			}
		})
	}
}

// TestSupportsStreamInvalidType checks that the zero stream type is never supported.
func TestSupportsStreamInvalidType(t *testing.T) {
	v := semverForTest(t, "3.7.0")
	if supportsStream(v, v, 0) {
		t.Errorf("supportsStream with type 0: got true, want false")
	}
}

// TestStreamSupportEveryMinor checks that every 3.x minor from 3.0 to 3.8 serves both streams.
func TestStreamSupportEveryMinor(t *testing.T) {
	// The lookup is by exact major.minor: every release a peer may run
	// must be present, or its streams are refused.
	local := semverForTest(t, "9.0.0")
	for minor := 0; minor <= 8; minor++ {
		v := fmt.Sprintf("3.%d.0", minor)
		t.Run(v, func(t *testing.T) {
			remote := semverForTest(t, v)
			for _, st := range []streamType{streamTypeMessage, streamTypeMsgAppV2} {
				if !supportsStream(local, remote, st) {
					t.Errorf("supportsStream(%s, %s, %v): got false, want true", local, remote, st)
				}
			}
		})
	}
}

// TestParsePeerURLsHeader checks parsing of the X-PeerURLs header, absent, valid and invalid.
func TestParsePeerURLsHeader(t *testing.T) {
	tests := []struct {
		name        string
		value       *string // nil leaves the header out
		want        string  // urlsString of the result
		wantPresent bool
		wantErr     bool
	}{
		{name: "absent"},
		{name: "empty", value: optValue("")},
		{name: "one", value: optValue("http://a:1"), want: "http://a:1", wantPresent: true},
		{name: "several sorted", value: optValue("http://b:1,http://a:1"), want: "http://a:1,http://b:1", wantPresent: true},
		{name: "spaces after commas", value: optValue("http://b:1, http://a:1"), want: "http://a:1,http://b:1", wantPresent: true},
		{name: "bad", value: optValue("bad"), wantPresent: true, wantErr: true},
		{name: "trailing comma", value: optValue("http://a:1,"), wantPresent: true, wantErr: true},
		{name: "path", value: optValue("http://a:1/x"), wantPresent: true, wantErr: true},
		{name: "too many", value: optValue(strings.Repeat("http://a:1,", maxURLCount) + "http://a:1"), wantPresent: true, wantErr: true},
		{name: "many commas", value: optValue(strings.Repeat(",", 100000)), wantPresent: true, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := http.Header{}
			if tt.value != nil {
				h.Set(headerPeerURLs, *tt.value)
			}
			urls, present, err := parsePeerURLsHeader(h)
			if present != tt.wantPresent {
				t.Errorf("present: got %v, want %v", present, tt.wantPresent)
			}
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidHeader) || !errors.Is(err, ErrInvalidURL) {
					t.Errorf("error: got %v, want one wrapping ErrInvalidHeader and ErrInvalidURL", err)
				}
				if urls != nil {
					t.Errorf("URLs on error: got %s, want nil", urlsString(urls))
				}
				return
			}
			if err != nil {
				t.Fatalf("parsePeerURLsHeader: got error %v, want nil", err)
			}
			if got := urlsString(urls); got != tt.want {
				t.Errorf("URLs: got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestPeerURLsHeaderRoundTrip checks that urlsString and parsePeerURLsHeader are inverses.
func TestPeerURLsHeaderRoundTrip(t *testing.T) {
	urls := parseURLsForTest(t, "https://10.0.0.2:2380", "http://10.0.0.1:2380", "unix:///tmp/s")
	h := http.Header{}
	h.Set(headerPeerURLs, urlsString(urls))
	got, present, err := parsePeerURLsHeader(h)
	if err != nil || !present {
		t.Fatalf("parsePeerURLsHeader: got (present %v, error %v), want (true, nil)", present, err)
	}
	if g, w := urlsString(got), urlsString(urls); g != w {
		t.Errorf("round trip: got %s, want %s", g, w)
	}
}

// optValue returns a pointer to s, for optional header values in tables.
func optValue(s string) *string { return &s }
