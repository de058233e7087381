package rafthttp

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// FuzzParseSemver checks that parseSemver never panics and that whatever it
// accepts renders, through String, to a string that parses to the same value.
func FuzzParseSemver(f *testing.F) {
	for _, s := range []string{"3.7.3", "2.1.0-alpha.0+git", "v3.7.0", "3.7", "", "3.7.0-", "03.7.0", "9223372036854775808.0.0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := parseSemver(s)
		if err != nil {
			if !errors.Is(err, ErrInvalidHeader) {
				t.Fatalf("parseSemver(%q): got error %v, want one wrapping ErrInvalidHeader", s, err)
			}
			return
		}
		again, err := parseSemver(v.String())
		if err != nil {
			t.Fatalf("parseSemver(%q) = %+v, whose String %q does not parse: %v", s, v, v.String(), err)
		}
		if again != v {
			t.Fatalf("re-parse of %q: got %+v, want %+v", v.String(), again, v)
		}
	})
}

// FuzzParseURLs checks that parseURLs never panics and that a success only
// ever yields allowed schemes, in sorted order.
func FuzzParseURLs(f *testing.F) {
	f.Add("http://127.0.0.1:2380,https://[::1]:2380")
	f.Add(" unix:///tmp/s ,http://a:1/")
	f.Add("ftp://a:1,http://a")
	f.Fuzz(func(t *testing.T, list string) {
		urls, err := parseURLs(strings.Split(list, ","))
		if err != nil {
			if !errors.Is(err, ErrInvalidURL) {
				t.Fatalf("parseURLs(%q): got error %v, want one wrapping ErrInvalidURL", list, err)
			}
			return
		}
		if len(urls) == 0 {
			t.Fatalf("parseURLs(%q): got no URLs and no error", list)
		}
		for _, u := range urls {
			switch u.Scheme {
			case "http", "https", "unix", "unixs":
			default:
				t.Fatalf("parseURLs(%q): got scheme %q", list, u.Scheme)
			}
		}
		if !slices.IsSortedFunc(urls, func(a, b url.URL) int { return strings.Compare(a.String(), b.String()) }) {
			t.Fatalf("parseURLs(%q): got unsorted %s", list, urlsString(urls))
		}
	})
}

// FuzzCheckHeaders feeds arbitrary header values to every header check a
// handler or dialer runs on peer input: none may panic, and each failure
// must carry the sentinel its caller maps to a status code.
func FuzzCheckHeaders(f *testing.F) {
	f.Add("3.7.0", "3.0.0", "1000", "http://a:1", "1")
	f.Add("garbage", "", "ABC", "bad", "")
	f.Add("", "4.0.0", "", ",,,", "ffffffffffffffff0")
	f.Fuzz(func(t *testing.T, server, minCluster, clusterID, peerURLs, id string) {
		h := http.Header{}
		h.Set(headerServerVersion, server)
		h.Set(headerMinClusterVersion, minCluster)
		h.Set(headerClusterID, clusterID)
		h.Set(headerPeerURLs, peerURLs)
		h.Set(headerServerFrom, id)

		local := semver{major: 3, minor: 7}
		localMin := semver{major: 3}
		rh := parseRequestHeaders(h)
		if err := rh.checkVersions(local, localMin); err != nil && !errors.Is(err, ErrIncompatibleVersion) {
			t.Fatalf("checkVersions: got %v, want nil or one wrapping ErrIncompatibleVersion", err)
		}
		if rh.versionErr == nil {
			_ = supportsStream(local, rh.serverVersion, streamTypeMsgAppV2)
			_ = supportsStream(local, rh.serverVersion, streamTypeMessage)
		}

		const clusterLocal = 0x1000
		if err := rh.checkClusterID(clusterLocal); err != nil && !errors.Is(err, ErrClusterIDMismatch) {
			t.Fatalf("checkClusterID: got %v, want nil or one wrapping ErrClusterIDMismatch", err)
		}

		if n, err := rh.from, rh.fromErr; err == nil {
			if back, err := parseID(formatID(n)); err != nil || back != n {
				t.Fatalf("parseID(formatID(%#x)): got (%#x, %v), want (%#x, nil)", n, back, err, n)
			}
		} else if !errors.Is(err, ErrInvalidHeader) {
			t.Fatalf("parseID: got %v, want one wrapping ErrInvalidHeader", err)
		}

		urls, present, err := rh.peerURLs, rh.hasPeerURLs, rh.peerURLsErr
		if err != nil && (!present || !errors.Is(err, ErrInvalidHeader) || urls != nil) {
			t.Fatalf("parsePeerURLsHeader: got (%v, %v, %v), want (nil, true, invalid header)", urls, present, err)
		}
		if err == nil && present == (len(urls) == 0) {
			t.Fatalf("parsePeerURLsHeader: got %d URLs with present %v", len(urls), present)
		}
		if rh.clusterID != clusterID || rh.rawFrom != id || rh.rawServerVersion != server {
			t.Fatalf("parseRequestHeaders: got raw values (%q, %q, %q), want (%q, %q, %q)",
				rh.clusterID, rh.rawFrom, rh.rawServerVersion, clusterID, id, server)
		}
	})
}
