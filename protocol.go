package rafthttp

import (
	"fmt"
	"io"
	"strings"

	"go.uber.org/zap"
)

// preconditionError maps the body of a 412 to its error (spec §2.6).
func preconditionError(body string, t *Transport, p *peer) error {
	switch body {
	case ErrIncompatibleVersion.Error():
		if n, ok := p.refused.allow(t.warns.now); ok {
			p.lg.Warn("request sent was ignored by remote peer due to server version incompatibility", suppressed(n))
		}
		return ErrIncompatibleVersion
	case ErrClusterIDMismatch.Error():
		if n, ok := p.refused.allow(t.warns.now); ok {
			p.lg.Warn("request sent was ignored by remote peer due to cluster ID mismatch",
				zap.String("local-member-cluster-id", t.cfg.clusterIDStr), suppressed(n))
		}
		return ErrClusterIDMismatch
	default:
		return fmt.Errorf("unhandled error %q when precondition failed", body)
	}
}

// maxErrorBody bounds how much of an error response we read.
const maxErrorBody = 4 << 10

// readErrorBody reads and closes a (short) error response body, one trailing
// newline trimmed, as http.Error adds it.
func readErrorBody(rc io.ReadCloser) string {
	defer drainClose(rc)
	b, _ := io.ReadAll(io.LimitReader(rc, maxErrorBody))
	return strings.TrimSuffix(string(b), "\n")
}

// drainClose reads a little of a body before closing it, so that a short
// response lets its keep-alive connection be reused.
func drainClose(rc io.ReadCloser) {
	_, _ = io.Copy(io.Discard, io.LimitReader(rc, maxErrorBody))
	rc.Close()
}
