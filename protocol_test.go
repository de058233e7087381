package rafthttp

import (
	"strings"
	"testing"
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
