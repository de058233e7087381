package rafthttp

import (
	"errors"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestClip checks both renderings of a peer string at and around the clip
// length, including bytes that quoting must escape.
func TestClip(t *testing.T) {
	exact := strings.Repeat("a", clipLen)
	long := exact + "bcd"
	tests := []struct {
		name  string
		s     string
		style clipStyle
		want  string
	}{
		{name: "plain empty", s: "", style: clipPlain, want: ""},
		{name: "plain short", s: "3.7.0", style: clipPlain, want: "3.7.0"},
		{name: "plain exact", s: exact, style: clipPlain, want: exact},
		{name: "plain long", s: long, style: clipPlain, want: exact + "..."},
		{name: "plain keeps control bytes", s: "a\nb", style: clipPlain, want: "a\nb"},
		{name: "quoted empty", s: "", style: clipQuoted, want: `""`},
		{name: "quoted short", s: "3.7.0", style: clipQuoted, want: `"3.7.0"`},
		{name: "quoted exact", s: exact, style: clipQuoted, want: `"` + exact + `"`},
		{name: "quoted long", s: long, style: clipQuoted, want: `"` + exact + `"...(67 bytes)`},
		{name: "quoted escapes", s: "a\"\nb\x00", style: clipQuoted, want: `"a\"\nb\x00"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := clip(tc.s, tc.style); got != tc.want {
				t.Errorf("clip(%q, %d) = %q, want %q", tc.s, tc.style, got, tc.want)
			}
		})
	}
}

// closeRecorder is a response body that records whether it was closed.
type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error {
	c.closed = true
	return nil
}

// TestAnswerError checks the one mapping of answers to errors, for stream
// dials and for POSTs (spec §2.6): the error, the refusal logged, and who
// closes the body.
func TestAnswerError(t *testing.T) {
	const base = "http://peer:2380"
	const removedLog = "the remote says this member was removed from the cluster"
	tests := []struct {
		name    string
		kind    requestKind
		status  int
		body    string
		want    error  // if not nil, the error must wrap it
		wantMsg string // if not empty, the error's exact text
		log     string // the refusal logged, if any
		level   zapcore.Level
		fields  []string // the log line's fields, suppressed aside
	}{
		{name: "dial 200", kind: dialRequest, status: 200},
		{name: "dial 204", kind: dialRequest, status: 204, wantMsg: "unhandled http status 204"},
		{name: "dial 403", kind: dialRequest, status: 403, body: "removed", wantMsg: "unhandled http status 403"},
		{name: "dial 404", kind: dialRequest, status: 404, body: "error sender not found", wantMsg: "peer 2 failed to find local node 1"},
		{name: "dial 410", kind: dialRequest, status: 410, body: "removed member", want: ErrMemberRemoved,
			log: removedLog, level: zapcore.ErrorLevel},
		{name: "dial 412 incompatible version", kind: dialRequest, status: 412, body: "incompatible version\n", want: ErrIncompatibleVersion,
			log: "request sent was ignored by remote peer due to server version incompatibility", level: zapcore.WarnLevel},
		{name: "dial 412 cluster ID mismatch", kind: dialRequest, status: 412, body: "cluster ID mismatch\n", want: ErrClusterIDMismatch,
			log: "request sent was ignored by remote peer due to cluster ID mismatch", level: zapcore.WarnLevel,
			fields: []string{"local-member-cluster-id"}},
		{name: "dial 412 other", kind: dialRequest, status: 412, body: "to field mismatch\n",
			wantMsg: `unhandled error "to field mismatch" when precondition failed`},
		{name: "dial 503", kind: dialRequest, status: 503, body: "too many snapshots being received", wantMsg: "unhandled http status 503"},
		{name: "dial 500", kind: dialRequest, status: 500, wantMsg: "unhandled http status 500"},

		{name: "POST 204", kind: postRequest, status: 204},
		{name: "POST 200", kind: postRequest, status: 200, wantMsg: `unexpected http status OK while posting to "http://peer:2380"`},
		{name: "POST 201", kind: postRequest, status: 201, wantMsg: `unexpected http status Created while posting to "http://peer:2380"`},
		{name: "POST 403", kind: postRequest, status: 403, body: "removed", want: ErrMemberRemoved},
		{name: "POST 403 to mismatch", kind: postRequest, status: 403, body: "cannot process message to mismatch member", want: ErrMemberRemoved},
		{name: "POST 404", kind: postRequest, status: 404, wantMsg: `unexpected http status Not Found while posting to "http://peer:2380"`},
		{name: "POST 410", kind: postRequest, status: 410, wantMsg: `unexpected http status Gone while posting to "http://peer:2380"`},
		{name: "POST 412 incompatible version", kind: postRequest, status: 412, body: "incompatible version\n", want: ErrIncompatibleVersion,
			log: "request sent was ignored by peer", level: zapcore.ErrorLevel, fields: []string{"error"}},
		{name: "POST 412 incompatible version, no newline", kind: postRequest, status: 412, body: "incompatible version", want: ErrIncompatibleVersion,
			log: "request sent was ignored by peer", level: zapcore.ErrorLevel, fields: []string{"error"}},
		{name: "POST 412 cluster ID mismatch", kind: postRequest, status: 412, body: "cluster ID mismatch\n", want: ErrClusterIDMismatch,
			log: "request sent was ignored due to cluster ID mismatch", level: zapcore.ErrorLevel, fields: []string{"local-member-cluster-id"}},
		{name: "POST 412 other", kind: postRequest, status: 412, body: "something else\n",
			wantMsg: `unhandled error "something else" when precondition failed`},
		{name: "POST 412 two newlines", kind: postRequest, status: 412, body: "cluster ID mismatch\n\n",
			wantMsg: `unhandled error "cluster ID mismatch\n" when precondition failed`},
		{name: "POST 503 too many snapshots", kind: postRequest, status: 503, body: ErrTooManySnapshots.Error() + "\n", want: ErrTooManySnapshots},
		{name: "POST 503 other", kind: postRequest, status: 503, body: "stopped\n",
			wantMsg: `unexpected http status Service Unavailable while posting to "http://peer:2380"`},
		{name: "POST 500", kind: postRequest, status: 500, body: "error processing raft message",
			wantMsg: `unexpected http status Internal Server Error while posting to "http://peer:2380"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tr := &Transport{warns: newWarnLimits(nil)}
			tr.cfg.idStr, tr.cfg.clusterIDStr = "1", "1000"
			core, logs := observer.New(zapcore.DebugLevel)
			q := sentRequest{kind: tc.kind, t: tr, lg: zap.New(core), refused: new(logLimiter), peer: "2", base: base}
			body := &closeRecorder{Reader: strings.NewReader(tc.body)}
			err := q.answerError(&http.Response{StatusCode: tc.status, Body: body})

			success := tc.want == nil && tc.wantMsg == ""
			switch {
			case success && err != nil:
				t.Errorf("got %v, want nil", err)
			case !success && err == nil:
				t.Errorf("got nil, want an error")
			case tc.want != nil && !errors.Is(err, tc.want):
				t.Errorf("got %v, want an error wrapping %v", err, tc.want)
			case tc.wantMsg != "" && err.Error() != tc.wantMsg:
				t.Errorf("got error %q, want %q", err, tc.wantMsg)
			}
			if tc.want == nil {
				for _, e := range []error{ErrMemberRemoved, ErrIncompatibleVersion, ErrClusterIDMismatch, ErrTooManySnapshots} {
					if errors.Is(err, e) {
						t.Errorf("got %v, which wraps %v, want neither", err, e)
					}
				}
			}
			if body.closed == success {
				t.Errorf("body closed: got %v, want %v (the caller keeps a success's body)", body.closed, !success)
			}

			entries := logs.AllUntimed()
			if tc.log == "" {
				if len(entries) != 0 {
					t.Errorf("got log %q, want none", entries[0].Message)
				}
				return
			}
			if len(entries) != 1 {
				t.Fatalf("got %d log lines, want 1 (%q)", len(entries), tc.log)
			}
			e := entries[0]
			if e.Message != tc.log || e.Level != tc.level {
				t.Errorf("got log %v %q, want %v %q", e.Level, e.Message, tc.level, tc.log)
			}
			var keys []string
			for _, f := range e.Context {
				if f.Key != "suppressed" {
					keys = append(keys, f.Key)
				}
			}
			if !slices.Equal(keys, tc.fields) {
				t.Errorf("got log fields %q, want %q", keys, tc.fields)
			}
			if v, ok := e.ContextMap()["local-member-cluster-id"]; ok && v != "1000" {
				t.Errorf("got local-member-cluster-id %v, want 1000", v)
			}
		})
	}
}

// TestParseRequestHeaders checks what one parse of a request's headers
// yields for every check and handler: parsed values, the errors of what is
// malformed, and the raw values the refusal logs quote.
func TestParseRequestHeaders(t *testing.T) {
	etcd37 := map[string]string{
		headerServerFrom:        "2",
		headerServerVersion:     "3.7.3",
		headerMinClusterVersion: "3.0.0",
		headerClusterID:         "1000",
		headerPeerURLs:          "http://b:2380,http://a:2380",
	}
	with := func(base map[string]string, kv ...string) map[string]string {
		m := maps.Clone(base)
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	type want struct {
		from              uint64
		fromErr           bool // wraps ErrInvalidHeader
		server, minServer string
		versionErr        bool // wraps ErrInvalidHeader and ErrIncompatibleVersion
		clusterID, raftTo string
		peerURLs          string // urlsString of peerURLs
		hasPeerURLs       bool
		peerURLsErr       bool // wraps ErrInvalidHeader and ErrInvalidURL
		features          featureSet
		rawFrom, rawVer   string
	}
	tests := []struct {
		name    string
		headers map[string]string
		want    want
	}{
		{name: "no headers (etcd 2.0)", headers: nil,
			want: want{fromErr: true, server: "2.0.0", minServer: "2.0.0"}},
		{name: "etcd 3.7 POST", headers: etcd37,
			want: want{from: 2, server: "3.7.3", minServer: "3.0.0", clusterID: "1000",
				peerURLs: "http://a:2380,http://b:2380", hasPeerURLs: true, rawFrom: "2", rawVer: "3.7.3"}},
		{name: "stream dial", headers: with(etcd37, headerRaftTo, "1"),
			want: want{from: 2, server: "3.7.3", minServer: "3.0.0", clusterID: "1000", raftTo: "1",
				peerURLs: "http://a:2380,http://b:2380", hasPeerURLs: true, rawFrom: "2", rawVer: "3.7.3"}},
		{name: "features announced", headers: with(etcd37, headerFeatures, "crc32c-trailer, future-thing"),
			want: want{from: 2, server: "3.7.3", minServer: "3.0.0", clusterID: "1000",
				peerURLs: "http://a:2380,http://b:2380", hasPeerURLs: true, features: 1 << featureCRC32CTrailer, rawFrom: "2", rawVer: "3.7.3"}},
		{name: "upper-case IDs", headers: with(etcd37, headerServerFrom, "AB", headerClusterID, "ABC"),
			want: want{from: 0xab, server: "3.7.3", minServer: "3.0.0", clusterID: "ABC",
				peerURLs: "http://a:2380,http://b:2380", hasPeerURLs: true, rawFrom: "AB", rawVer: "3.7.3"}},
		{name: "malformed from", headers: with(etcd37, headerServerFrom, "xyz"),
			want: want{fromErr: true, server: "3.7.3", minServer: "3.0.0", clusterID: "1000",
				peerURLs: "http://a:2380,http://b:2380", hasPeerURLs: true, rawFrom: "xyz", rawVer: "3.7.3"}},
		{name: "malformed server version", headers: with(etcd37, headerServerVersion, "v3.7"),
			want: want{from: 2, versionErr: true, server: "0.0.0", minServer: "0.0.0", clusterID: "1000",
				peerURLs: "http://a:2380,http://b:2380", hasPeerURLs: true, rawFrom: "2", rawVer: "v3.7"}},
		{name: "malformed min cluster version", headers: with(etcd37, headerMinClusterVersion, "3.0"),
			want: want{from: 2, versionErr: true, server: "0.0.0", minServer: "0.0.0", clusterID: "1000",
				peerURLs: "http://a:2380,http://b:2380", hasPeerURLs: true, rawFrom: "2", rawVer: "3.7.3"}},
		{name: "invalid peer URLs", headers: with(etcd37, headerPeerURLs, "http://a:2380/path"),
			want: want{from: 2, server: "3.7.3", minServer: "3.0.0", clusterID: "1000",
				hasPeerURLs: true, peerURLsErr: true, rawFrom: "2", rawVer: "3.7.3"}},
		{name: "empty peer URLs", headers: with(etcd37, headerPeerURLs, ""),
			want: want{from: 2, server: "3.7.3", minServer: "3.0.0", clusterID: "1000", rawFrom: "2", rawVer: "3.7.3"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range tc.headers {
				h.Set(k, v)
			}
			rh := parseRequestHeaders(h)
			got := want{
				from: rh.from, fromErr: rh.fromErr != nil,
				server: rh.serverVersion.String(), minServer: rh.minClusterVersion.String(), versionErr: rh.versionErr != nil,
				clusterID: rh.clusterID, raftTo: rh.raftTo,
				peerURLs: urlsString(rh.peerURLs), hasPeerURLs: rh.hasPeerURLs, peerURLsErr: rh.peerURLsErr != nil,
				features: rh.features, rawFrom: rh.rawFrom, rawVer: rh.rawServerVersion,
			}
			if got != tc.want {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
			if rh.fromErr != nil && !errors.Is(rh.fromErr, ErrInvalidHeader) {
				t.Errorf("from error: got %v, want one wrapping ErrInvalidHeader", rh.fromErr)
			}
			if rh.versionErr != nil && !(errors.Is(rh.versionErr, ErrInvalidHeader) && errors.Is(rh.versionErr, ErrIncompatibleVersion)) {
				t.Errorf("version error: got %v, want one wrapping ErrInvalidHeader and ErrIncompatibleVersion", rh.versionErr)
			}
			if rh.peerURLsErr != nil && !(errors.Is(rh.peerURLsErr, ErrInvalidHeader) && errors.Is(rh.peerURLsErr, ErrInvalidURL)) {
				t.Errorf("peer URLs error: got %v, want one wrapping ErrInvalidHeader and ErrInvalidURL", rh.peerURLsErr)
			}
		})
	}
}
