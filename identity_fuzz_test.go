package rafthttp

import (
	"crypto/x509"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"testing"
)

// FuzzIdentityFromSAN checks that the SAN readers never panic, refuse with
// ErrNoPeerIdentity, and accept a certificate only when exactly one SAN of
// their namespace names a non-zero member, the member returned; and that
// the canonical SAN of the member they return is read back as it.
func FuzzIdentityFromSAN(f *testing.F) {
	f.Add(idPrefix, idPrefix+"a1", "")
	f.Add(idPrefix, idPrefix+"a1", idPrefix+"b2")
	f.Add(idPrefix, idPrefix+"0", "x")
	f.Add("members.test", "a1.members.test", "host.example")
	f.Add(".members.test", "A1.MEMBERS.TEST", "*.members.test")
	f.Add("", "a1", "")
	f.Add("spiffe://td/", "spiffe://td/%41", "spiffe://td/../a")
	f.Fuzz(func(t *testing.T, ns, san1, san2 string) {
		cert := &x509.Certificate{}
		for _, s := range []string{san1, san2} {
			if s == "" {
				continue
			}
			cert.DNSNames = append(cert.DNSNames, s)
			if u, err := url.Parse(s); err == nil {
				cert.URIs = append(cert.URIs, u)
			}
		}

		fromURI := IdentityFromURISAN(ns)
		if id, err := fromURI(cert); err != nil {
			if !errors.Is(err, ErrNoPeerIdentity) {
				t.Fatalf("IdentityFromURISAN(%q): error %v does not wrap ErrNoPeerIdentity", ns, err)
			}
		} else {
			if id == 0 || len(cert.URIs) != 1 {
				t.Fatalf("IdentityFromURISAN(%q) = %x for URIs %v: want a non-zero member from exactly one URI", ns, id, cert.URIs)
			}
			rest, ok := strings.CutPrefix(cert.URIs[0].String(), ns)
			if n, err := strconv.ParseUint(rest, 16, 64); !ok || err != nil || n != id {
				t.Fatalf("IdentityFromURISAN(%q) = %x for URI %v: the URI does not name it", ns, id, cert.URIs[0])
			}
			canonical, err := url.Parse(ns + formatID(id))
			if err != nil {
				t.Fatalf("the canonical URI of %x under %q does not parse: %v", id, ns, err)
			}
			if again, err := fromURI(&x509.Certificate{URIs: []*url.URL{canonical}}); err != nil || again != id {
				t.Fatalf("IdentityFromURISAN(%q) reads its canonical URI %v as %x, %v; want %x", ns, canonical, again, err, id)
			}
		}

		fromDNS := IdentityFromDNSSAN(ns)
		if id, err := fromDNS(cert); err != nil {
			if !errors.Is(err, ErrNoPeerIdentity) {
				t.Fatalf("IdentityFromDNSSAN(%q): error %v does not wrap ErrNoPeerIdentity", ns, err)
			}
		} else {
			suffix := "." + strings.ToLower(strings.TrimPrefix(ns, "."))
			under := 0
			for _, name := range cert.DNSNames {
				if label, ok := cutSuffixFold(name, suffix); ok {
					under++
					if n, err := strconv.ParseUint(label, 16, 64); err != nil || n != id {
						t.Fatalf("IdentityFromDNSSAN(%q) = %x, but %q is under the suffix", ns, id, name)
					}
				}
			}
			if id == 0 || under != 1 {
				t.Fatalf("IdentityFromDNSSAN(%q) = %x with %d names under the suffix, want a non-zero member from one", ns, id, under)
			}
			canonical := formatID(id) + suffix
			if again, err := fromDNS(&x509.Certificate{DNSNames: []string{canonical}}); err != nil || again != id {
				t.Fatalf("IdentityFromDNSSAN(%q) reads its canonical name %q as %x, %v; want %x", ns, canonical, again, err, id)
			}
		}
	})
}
