package rafthttp

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// Bounds on peer URL lists. Peer URLs arrive not only from local
// configuration but also from the X-PeerURLs header of any request that
// passes the (non-secret) cluster-ID check, so parsing must stay cheap and
// bounded whatever a peer sends. Real members advertise a handful of URLs of
// well under a hundred bytes each.
const (
	// maxURLLen is the longest single URL string parseURLs accepts.
	maxURLLen = 4096
	// maxURLCount is the largest number of URLs parseURLs accepts in one list.
	maxURLCount = 64
)

// parseURLs turns peer URL strings into a validated, sorted list, with the
// semantics of etcd's types.NewURLs so that we accept and order exactly the
// URLs an etcd member would: surrounding whitespace is trimmed; the scheme
// must be http, https, unix or unixs; for http and https the host must be
// host:port and the path must be empty. The result is sorted by String(), so
// index 0 (the first URL a urlPicker picks) is the same one etcd would pick.
//
// Unlike etcd it never panics: every failure is an error wrapping
// ErrInvalidURL that names the offending URL. An empty list is an error.
func parseURLs(ss []string) ([]url.URL, error) {
	if len(ss) == 0 {
		return nil, fmt.Errorf("%w: no URLs given", ErrInvalidURL)
	}
	if len(ss) > maxURLCount {
		return nil, fmt.Errorf("%w: %d URLs given, at most %d allowed", ErrInvalidURL, len(ss), maxURLCount)
	}
	out := make([]url.URL, 0, len(ss))
	for _, raw := range ss {
		if len(raw) > maxURLLen {
			return nil, fmt.Errorf("%w: URL %s is %d bytes long, at most %d allowed",
				ErrInvalidURL, clip(raw, clipQuoted), len(raw), maxURLLen)
		}
		s := strings.TrimSpace(raw)
		u, err := url.Parse(s)
		if err != nil {
			// url.Error repeats the URL; keep our own, clipped, naming.
			return nil, fmt.Errorf("%w: URL %s: cannot parse", ErrInvalidURL, clip(s, clipQuoted))
		}
		switch u.Scheme {
		case "http", "https":
			if _, _, err := net.SplitHostPort(u.Host); err != nil {
				return nil, fmt.Errorf("%w: URL %s: address does not have the form host:port", ErrInvalidURL, clip(s, clipQuoted))
			}
			if u.Path != "" {
				return nil, fmt.Errorf("%w: URL %s: must not contain a path", ErrInvalidURL, clip(s, clipQuoted))
			}
		case "unix", "unixs":
		default:
			return nil, fmt.Errorf("%w: URL %s: scheme must be http, https, unix or unixs", ErrInvalidURL, clip(s, clipQuoted))
		}
		out = append(out, *u)
	}
	slices.SortFunc(out, func(a, b url.URL) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// urlsString renders urls as the comma-separated list sent in the X-PeerURLs
// header, the inverse of splitting on "," and calling parseURLs.
func urlsString(urls []url.URL) string {
	parts := make([]string, len(urls))
	for i := range urls {
		parts[i] = urls[i].String()
	}
	return strings.Join(parts, ",")
}

// urlPicker chooses which of a peer's URLs to use. It is shared by a peer's
// pipeline, both stream readers and the snapshot sender so that they all
// fail over together: the current URL stays in use until one of them reports
// it unreachable. It is safe for concurrent use.
type urlPicker struct {
	mu     sync.Mutex
	list   []url.URL // guarded by mu; sorted as parseURLs returns it
	picked int       // guarded by mu; index of the current URL in list
}

// newURLPicker returns a picker over a copy of urls, starting at the first.
func newURLPicker(urls []url.URL) *urlPicker {
	return &urlPicker{list: slices.Clone(urls)}
}

// pick returns the current URL, or the zero url.URL if the list is empty.
func (p *urlPicker) pick() url.URL {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.list) == 0 {
		return url.URL{}
	}
	return p.list[p.picked]
}

// update replaces the URL list (when the peer's membership entry changes) and
// starts again from the first URL.
func (p *urlPicker) update(urls []url.URL) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.list = slices.Clone(urls)
	p.picked = 0
}

// unreachable reports that u failed. The picker moves on to the next URL,
// circularly, only if u is still the current one: several senders that fail
// on the same URL at once then advance the index once, not once each, and
// no URL is skipped.
func (p *urlPicker) unreachable(u url.URL) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.list) == 0 {
		return
	}
	// Compare renderings rather than structs: url.URL holds a *Userinfo,
	// and equal URLs parsed separately have different pointers.
	if p.list[p.picked].String() == u.String() {
		p.picked = (p.picked + 1) % len(p.list)
	}
}

// urls returns a copy of the current list, for status and tests.
func (p *urlPicker) urls() []url.URL {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.list)
}
