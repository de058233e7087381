package rafthttp

import (
	"net/http"
	"strings"
	"sync/atomic"

	"go.uber.org/zap"
)

// Extensions beyond etcd's wire format are negotiated (design note 7): each
// side announces the features it supports in X-Rafthttp-Features on every
// request it sends and every answer it serves, each side remembers per peer
// what the other announced, and an extension is used only when both sides
// announced it. etcd announces nothing, so with an etcd peer no extension is
// ever used and the bytes on the wire are etcd's. The header itself goes to
// every peer, etcd included: we cannot know a peer is etcd before it answers,
// and etcd 3.5-3.7 ignore headers they do not know (compat/ TestSnapshot).

// maxFeaturesHeader bounds the announcement we read, in bytes over all the
// header's values. A longer one is ignored whole rather than cut, since a
// token cut short could read as another feature.
const maxFeaturesHeader = 1 << 10

// feature is one extension, as the index of its bit in a featureSet.
type feature uint8

const (
	// featureCRC32CTrailer: a snapshot body is followed by a trailer with
	// its CRC-32C (trailerCRC32C). A receiver that announces it checks
	// the trailer when there is one.
	featureCRC32CTrailer feature = iota
	// featureIdentityRefusal: the sender reads a 403 answer marked
	// X-Rafthttp-Refused: peer-identity as a refusal of its certificate
	// (ErrPeerIdentity), not as its removal from the cluster, which is
	// what etcd reads into any 403 on a POST. A receiver checking peer
	// identity answers 403 only to senders that announce it
	// (refuseIdentity).
	featureIdentityRefusal
	// featureSnapshotResume: a snapshot transfer cut short resumes where
	// the receiver's copy ends (snapshot_resume.go). A receiver announces
	// it only if its SnapshotStore is a ResumableSnapshotStore.
	featureSnapshotResume
	// featurePipelineBatch: the sender may POST several queued messages
	// at once to /raft/batch (pipeline_batch.go has the wire format). A
	// receiver announces it only if its receive budget holds a whole
	// batch (batchMaxBytes).
	featurePipelineBatch

	numFeatures // the number of features we know; keep it last
)

// featureTokens are the features' names on the wire, indexed by feature.
// A token, once released, must never change meaning.
var featureTokens = [numFeatures]string{
	featureCRC32CTrailer:   "crc32c-trailer",
	featureIdentityRefusal: "identity-refusal",
	featureSnapshotResume:  "snapshot-resume",
	featurePipelineBatch:   "pipeline-batch",
}

// supportedFeatures is what this version of the library can announce;
// localFeatures says what a given Transport announces.
const supportedFeatures = featureSet(1<<featureCRC32CTrailer | 1<<featureIdentityRefusal | 1<<featureSnapshotResume | 1<<featurePipelineBatch)

// localFeatures is what t announces and uses: what this version supports
// (or, in tests, what t.announce says), less what t's configuration cannot
// serve. Resuming needs a store that keeps partial payloads; without one,
// a peer that resumed to us would find nothing to resume.
func (t *Transport) localFeatures() featureSet {
	s := supportedFeatures
	if t.announce != nil {
		s = *t.announce
	}
	if _, ok := t.SnapshotStore.(ResumableSnapshotStore); !ok {
		s &^= 1 << featureSnapshotResume
	}
	return s
}

// featureSet is a set of features, one bit per feature. Its zero value is
// the empty set: what an etcd peer, or a peer not heard from yet, supports.
type featureSet uint32

// has says whether f is in s.
func (s featureSet) has(f feature) bool { return s&(1<<f) != 0 }

// String formats s as the header carries it: tokens in feature order,
// separated by commas; "" for the empty set.
func (s featureSet) String() string {
	var b strings.Builder
	for f := range numFeatures {
		if !s.has(f) {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(featureTokens[f])
	}
	return b.String()
}

// parseFeatures reads an announcement: tokens separated by commas, with
// optional spaces or tabs around them, matched exactly (tokens are
// lowercase). Unknown and empty tokens are ignored, and an announcement
// longer than maxFeaturesHeader is ignored whole. It never fails: anything
// it does not understand is a feature not announced.
func parseFeatures(v string) featureSet {
	if len(v) > maxFeaturesHeader {
		return 0
	}
	var s featureSet
	for tok := range strings.SplitSeq(v, ",") {
		tok = strings.Trim(tok, " \t")
		for f := range numFeatures {
			if tok == featureTokens[f] {
				s |= 1 << f
			}
		}
	}
	return s
}

// featuresOf reads the announcement in h. Several header lines count as one
// list, as HTTP defines it; their total length is bounded as one value's.
func featuresOf(h http.Header) featureSet {
	vs := h.Values(headerFeatures)
	switch len(vs) {
	case 0:
		return 0
	case 1:
		return parseFeatures(vs[0])
	}
	n := 0
	for _, v := range vs {
		n += len(v) + 1
		if n > maxFeaturesHeader+1 {
			return 0
		}
	}
	return parseFeatures(strings.Join(vs, ","))
}

// peerFeatures is what a peer last announced, learnt from everything it
// sends us and answers us. The latest announcement wins, absent included: a
// member restarted on another version (or on etcd) announces afresh, and
// until it is heard from, what it said before is kept. A zero peerFeatures
// is the empty set. A nil *peerFeatures (a remote, which gets no
// extensions) ignores what it is told.
//
// An extension that changes a stream's bytes (compression, say) must be
// decided per connection, from the dial's request and its answer, not from
// peerFeatures, which another connection may change meanwhile.
type peerFeatures struct {
	v       atomic.Uint32
	changes logLimiter // a client that flips them must not flood the log
}

// load returns the peer's last announcement.
func (pf *peerFeatures) load() featureSet {
	if pf == nil {
		return 0
	}
	return featureSet(pf.v.Load())
}

// learn records the announcement in h (none: the empty set), as record
// does: h is an answer to one of our requests.
func (pf *peerFeatures) learn(h http.Header, lg *zap.Logger, now func() int64) {
	if pf == nil {
		return
	}
	pf.record(featuresOf(h), lg, now)
}

// record records s, the peer's latest announcement, logging a change.
// Callers learn only from answers to our requests and from requests that
// passed checkRequest for a configured peer, so an unknown client cannot
// set what a peer supports; one that passes the checks can at most turn an
// extension on or off, and each extension is harmless both ways. now is the
// clock of the change log's limiter (warnLimits.now).
func (pf *peerFeatures) record(s featureSet, lg *zap.Logger, now func() int64) {
	if pf == nil {
		return
	}
	if featureSet(pf.v.Load()) == s {
		return // the usual case: no write, so no cache line bouncing between POSTs
	}
	if old := featureSet(pf.v.Swap(uint32(s))); old != s {
		if n, ok := pf.changes.allow(now); ok {
			lg.Info("remote peer features changed", zap.Stringer("from", old), zap.Stringer("to", s), suppressed(n))
		}
	}
}
