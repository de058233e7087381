package rafthttp

import (
	"errors"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// parseURLsForTest parses ss with parseURLs and fails the test on error.
func parseURLsForTest(t *testing.T, ss ...string) []url.URL {
	t.Helper()
	urls, err := parseURLs(ss)
	if err != nil {
		t.Fatalf("parseURLs(%q): %v", ss, err)
	}
	return urls
}

// urlStringsForTest renders urls for comparisons in failure messages.
func urlStringsForTest(urls []url.URL) []string {
	out := make([]string, len(urls))
	for i := range urls {
		out[i] = urls[i].String()
	}
	return out
}

// pickedForTest returns the rendering of p's current URL.
func pickedForTest(p *urlPicker) string {
	u := p.pick()
	return u.String()
}

// TestURLPickerPickTwice checks that pick is stable until something changes, and starts at the smallest URL.
func TestURLPickerPickTwice(t *testing.T) {
	p := newURLPicker(parseURLsForTest(t, "http://127.0.0.1:2380", "http://127.0.0.1:7001"))
	first := p.pick()
	second := p.pick()
	if first.String() != second.String() {
		t.Errorf("second pick: got %s, want %s", second.String(), first.String())
	}
	if got, want := first.String(), "http://127.0.0.1:2380"; got != want {
		t.Errorf("first pick: got %s, want %s (the smallest URL)", got, want)
	}
}

// TestURLPickerUpdate checks that update replaces the list and restarts from its first URL.
func TestURLPickerUpdate(t *testing.T) {
	p := newURLPicker(parseURLsForTest(t, "http://127.0.0.1:2380", "http://127.0.0.1:7001"))
	// Move off index 0 so that the reset is observable.
	p.unreachable(p.pick())
	newURLs := parseURLsForTest(t, "http://localhost:2380", "http://localhost:7001")
	p.update(newURLs)
	if got, want := pickedForTest(p), "http://localhost:2380"; got != want {
		t.Errorf("pick after update: got %s, want %s", got, want)
	}
	if got, want := strings.Join(urlStringsForTest(p.urls()), ","), urlsString(newURLs); got != want {
		t.Errorf("urls after update: got %s, want %s", got, want)
	}
}

// TestURLPickerUpdateCopies checks that the picker does not share its list with callers.
func TestURLPickerUpdateCopies(t *testing.T) {
	urls := parseURLsForTest(t, "http://a:1", "http://b:1")
	p := newURLPicker(urls)
	urls[0].Host = "changed:1"
	if got, want := pickedForTest(p), "http://a:1"; got != want {
		t.Errorf("pick after caller mutated its slice: got %s, want %s", got, want)
	}
	got := p.urls()
	got[0].Host = "changed:1"
	if got, want := pickedForTest(p), "http://a:1"; got != want {
		t.Errorf("pick after caller mutated urls(): got %s, want %s", got, want)
	}
}

// TestURLPickerUnreachable checks that each unreachable of the current URL rotates to the next, circularly.
func TestURLPickerUnreachable(t *testing.T) {
	p := newURLPicker(parseURLsForTest(t, "http://a:1", "http://b:1", "http://c:1"))
	want := []string{"http://b:1", "http://c:1", "http://a:1"}
	for i, w := range want {
		p.unreachable(p.pick())
		if got := pickedForTest(p); got != w {
			t.Errorf("pick after unreachable #%d: got %s, want %s", i+1, got, w)
		}
	}
}

// TestURLPickerUnreachableNotCurrent checks that reporting a URL other than the current one changes nothing.
func TestURLPickerUnreachableNotCurrent(t *testing.T) {
	tests := []struct {
		name string
		u    string
	}{
		{name: "other URL in the list", u: "http://b:1"},
		{name: "URL not in the list", u: "http://z:1"},
		{name: "zero URL", u: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newURLPicker(parseURLsForTest(t, "http://a:1", "http://b:1", "http://c:1"))
			var u url.URL
			if tt.u != "" {
				u = parseURLsForTest(t, tt.u)[0]
			}
			p.unreachable(u)
			if got, want := pickedForTest(p), "http://a:1"; got != want {
				t.Errorf("pick: got %s, want %s", got, want)
			}
		})
	}
}

// TestURLPickerUnreachableBurst checks that repeated reports of one dead URL skip no other URL.
func TestURLPickerUnreachableBurst(t *testing.T) {
	// Three senders fail on the same URL: the index moves once, not three
	// times (which would wrap around to a URL just found dead).
	p := newURLPicker(parseURLsForTest(t, "http://a:1", "http://b:1", "http://c:1"))
	dead := p.pick()
	for range 3 {
		p.unreachable(dead)
	}
	if got, want := pickedForTest(p), "http://b:1"; got != want {
		t.Errorf("pick: got %s, want %s", got, want)
	}
}

// TestURLPickerUnreachableSeparatelyParsed checks that URLs are matched by value, not by pointer identity.
func TestURLPickerUnreachableSeparatelyParsed(t *testing.T) {
	// url.URL holds a *Userinfo: an equal URL parsed again must still match.
	p := newURLPicker(parseURLsForTest(t, "http://user:pw@a:1", "http://user:pw@b:1"))
	p.unreachable(parseURLsForTest(t, "http://user:pw@a:1")[0])
	if got, want := pickedForTest(p), "http://user:pw@b:1"; got != want {
		t.Errorf("pick: got %s, want %s", got, want)
	}
}

// TestURLPickerEmpty checks that an empty picker neither panics nor invents a URL.
func TestURLPickerEmpty(t *testing.T) {
	tests := []struct {
		name string
		urls []url.URL
	}{
		{name: "nil", urls: nil},
		{name: "empty", urls: []url.URL{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newURLPicker(tt.urls)
			p.unreachable(url.URL{})
			if got := p.pick(); got != (url.URL{}) {
				t.Errorf("pick: got %s, want the zero URL", got.String())
			}
			if got := len(p.urls()); got != 0 {
				t.Errorf("len(urls()): got %d, want 0", got)
			}
			p.update(nil)
			if got := p.pick(); got != (url.URL{}) {
				t.Errorf("pick after update(nil): got %s, want the zero URL", got.String())
			}
		})
	}
}

// TestURLPickerConcurrent exercises every method from several goroutines, for the race detector.
func TestURLPickerConcurrent(t *testing.T) {
	a := parseURLsForTest(t, "http://a:1", "http://b:1", "http://c:1")
	b := parseURLsForTest(t, "http://d:1", "http://e:1")
	allowed := map[string]bool{}
	for _, u := range append(append([]url.URL{}, a...), b...) {
		allowed[u.String()] = true
	}
	p := newURLPicker(a)
	const workers, rounds = 8, 200
	var wg sync.WaitGroup
	errs := make(chan string, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				u := p.pick()
				if !allowed[u.String()] {
					errs <- u.String()
				}
				p.unreachable(u)
				_ = p.urls()
				if i%50 == 0 {
					if w%2 == 0 {
						p.update(a)
					} else {
						p.update(b)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for u := range errs {
		t.Errorf("pick: got %q, want one of the configured URLs", u)
	}
}

// TestURLsString checks the X-PeerURLs rendering of a URL list.
func TestURLsString(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want string
	}{
		{name: "one", in: []string{"http://a:1"}, want: "http://a:1"},
		{name: "sorted and joined", in: []string{"https://b:2", "http://a:1"}, want: "http://a:1,https://b:2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := urlsString(parseURLsForTest(t, tt.in...)); got != tt.want {
				t.Errorf("urlsString: got %q, want %q", got, tt.want)
			}
		})
	}
	if got := urlsString(nil); got != "" {
		t.Errorf("urlsString(nil): got %q, want \"\"", got)
	}
}

// TestParseURLs checks parseURLs against etcd's types.NewURLs rules and our size bounds.
func TestParseURLs(t *testing.T) {
	tooMany := make([]string, maxURLCount+1)
	for i := range tooMany {
		tooMany[i] = "http://a:1"
	}
	maxCount := tooMany[:maxURLCount]
	longHost := strings.Repeat("h", maxURLLen-len("http://:1"))

	tests := []struct {
		name    string
		in      []string
		want    []string // nil when an error is expected
		wantErr string   // substring of the error, besides wrapping ErrInvalidURL
	}{
		{name: "single http", in: []string{"http://127.0.0.1:2380"}, want: []string{"http://127.0.0.1:2380"}},
		{name: "https", in: []string{"https://example.com:2380"}, want: []string{"https://example.com:2380"}},
		{name: "IPv6", in: []string{"http://[::1]:2380"}, want: []string{"http://[::1]:2380"}},
		{name: "upper-case scheme", in: []string{"HTTP://a:1"}, want: []string{"http://a:1"}},
		{name: "whitespace trimmed", in: []string{"  http://a:1\t\n"}, want: []string{"http://a:1"}},
		{
			name: "sorted lexicographically",
			in:   []string{"http://c:1", "https://a:1", "http://b:1", "http://a:10", "http://a:1"},
			want: []string{"http://a:1", "http://a:10", "http://b:1", "http://c:1", "https://a:1"},
		},
		{name: "duplicates kept", in: []string{"http://a:1", "http://a:1"}, want: []string{"http://a:1", "http://a:1"}},
		{name: "unix socket path", in: []string{"unix:///tmp/etcd.sock"}, want: []string{"unix:///tmp/etcd.sock"}},
		{name: "unix host:port", in: []string{"unix://localhost:2380"}, want: []string{"unix://localhost:2380"}},
		{name: "unixs", in: []string{"unixs://localhost:2380"}, want: []string{"unixs://localhost:2380"}},
		{name: "unix without port", in: []string{"unix://localhost"}, want: []string{"unix://localhost"}},
		{name: "longest URL", in: []string{"http://" + longHost + ":1"}, want: []string{"http://" + longHost + ":1"}},

		{name: "nil list", in: nil, wantErr: "no URLs"},
		{name: "empty list", in: []string{}, wantErr: "no URLs"},
		{name: "empty string", in: []string{""}, wantErr: "scheme"},
		{name: "only whitespace", in: []string{"   "}, wantErr: "scheme"},
		{name: "bad scheme", in: []string{"ftp://a:1"}, wantErr: "scheme"},
		{name: "no scheme", in: []string{"a:1"}, wantErr: "scheme"},
		{name: "host without scheme", in: []string{"127.0.0.1:2380"}, wantErr: `"127.0.0.1:2380"`},
		{name: "missing port", in: []string{"http://a"}, wantErr: "host:port"},
		{name: "missing port https", in: []string{"https://a"}, wantErr: "host:port"},
		{name: "opaque http", in: []string{"http:a:1"}, wantErr: "host:port"},
		{name: "empty host", in: []string{"http://"}, wantErr: "host:port"},
		{name: "non-empty path", in: []string{"http://a:1/raft"}, wantErr: "path"},
		{name: "trailing slash", in: []string{"http://a:1/"}, wantErr: "path"},
		{name: "unparseable", in: []string{"http://a:1/%zz"}, wantErr: "cannot parse"},
		{name: "control character", in: []string{"http://a\x00:1"}, wantErr: "cannot parse"},
		{name: "one bad among good", in: []string{"http://a:1", "http://b"}, wantErr: `"http://b"`},
		{name: "over-long URL", in: []string{"http://" + longHost + "h:1"}, wantErr: "bytes long"},
		{name: "over-long whitespace", in: []string{strings.Repeat(" ", maxURLLen) + "http://a:1"}, wantErr: "bytes long"},
		{name: "too many URLs", in: tooMany, wantErr: "at most"},
	}
	tests = append(tests, struct {
		name    string
		in      []string
		want    []string
		wantErr string
	}{name: "most URLs allowed", in: maxCount, want: maxCount})

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseURLs(tt.in)
			if tt.want == nil {
				if err == nil {
					t.Fatalf("parseURLs: got %q, want an error", urlStringsForTest(got))
				}
				if !errors.Is(err, ErrInvalidURL) {
					t.Errorf("error: got %v, want one wrapping ErrInvalidURL", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error: got %q, want it to contain %q", err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("URLs on error: got %q, want nil", urlStringsForTest(got))
				}
				return
			}
			if err != nil {
				t.Fatalf("parseURLs: got error %v, want nil", err)
			}
			if g, w := strings.Join(urlStringsForTest(got), ","), strings.Join(tt.want, ","); g != w {
				t.Errorf("parseURLs: got %s, want %s", g, w)
			}
		})
	}
}

// TestParseURLsErrorIsClipped checks that a long bad URL does not make a long error.
func TestParseURLsErrorIsClipped(t *testing.T) {
	// Error texts end up in logs: a peer must not be able to make them huge.
	_, err := parseURLs([]string{"ftp://" + strings.Repeat("x", maxURLLen-10)})
	if err == nil {
		t.Fatal("parseURLs: got nil error, want one")
	}
	if got, limit := len(err.Error()), 256; got > limit {
		t.Errorf("error length: got %d, want at most %d", got, limit)
	}
}
