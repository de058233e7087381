package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Limits of the HTTP API.
const (
	// proposalTimeout bounds how long a write waits to be applied.
	proposalTimeout = 5 * time.Second
	// maxValueBytes bounds a value (or a member URL) in a request body.
	maxValueBytes = 1 << 20
)

// newAPI returns the key-value HTTP API of a member:
//
//	PUT    /KEY          body: the value     204 once applied on this member
//	GET    /KEY                              200 with the value, or 404
//	DELETE /KEY                              204 once applied on this member
//	GET    /members                          200 with {"leader":ID,"members":{ID:URL}}
//	POST   /members/ID   body: its peer URL  204 once the ConfChange is applied
//	DELETE /members/ID                       204 once the ConfChange is applied
//
// Reads are served from this member's state, which may lag the leader's.
// Keys may not start with "members".
func newAPI(m *member) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /members", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(struct {
			Leader  uint64            `json:"leader"`
			Members map[uint64]string `json:"members"`
		}{m.Leader(), m.state.memberURLs()})
	})
	mux.HandleFunc("POST /members/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, ok := memberID(w, r)
		if !ok {
			return
		}
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		u, err := url.Parse(strings.TrimSpace(body))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Port() == "" {
			http.Error(w, fmt.Sprintf("body %q is not a peer URL like http://127.0.0.1:42379", body), http.StatusBadRequest)
			return
		}
		propose(w, r, func(ctx context.Context) error { return m.AddMember(ctx, id, u.String()) })
	})
	mux.HandleFunc("DELETE /members/{id}", func(w http.ResponseWriter, r *http.Request) {
		if id, ok := memberID(w, r); ok {
			propose(w, r, func(ctx context.Context) error { return m.RemoveMember(ctx, id) })
		}
	})
	mux.HandleFunc("/{key...}", func(w http.ResponseWriter, r *http.Request) {
		key := r.PathValue("key")
		if key == "" || strings.HasPrefix(key, "members") {
			http.Error(w, "want a key: /KEY (not starting with \"members\")", http.StatusBadRequest)
			return
		}
		switch r.Method {
		case http.MethodGet:
			v, ok := m.Get(key)
			if !ok {
				http.Error(w, "key not found", http.StatusNotFound)
				return
			}
			io.WriteString(w, v)
		case http.MethodPut:
			if v, ok := readBody(w, r); ok {
				propose(w, r, func(ctx context.Context) error { return m.Put(ctx, key, v) })
			}
		case http.MethodDelete:
			propose(w, r, func(ctx context.Context) error { return m.Delete(ctx, key) })
		default:
			w.Header().Set("Allow", "GET, PUT, DELETE")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		}
	})
	return mux
}

// memberID parses the {id} of a membership route.
func memberID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil || id == 0 {
		http.Error(w, "want a member ID: a positive integer", http.StatusBadRequest)
		return 0, false
	}
	return id, true
}

// readBody reads a bounded request body.
func readBody(w http.ResponseWriter, r *http.Request) (string, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxValueBytes))
	if err != nil {
		http.Error(w, fmt.Sprintf("reading the body: %v", err), http.StatusBadRequest)
		return "", false
	}
	return string(b), true
}

// propose runs a proposal with a timeout and answers 204, or 503 if it was
// not applied in time (no leader, a leader change, a stopped member).
func propose(w http.ResponseWriter, r *http.Request, f func(context.Context) error) {
	ctx, cancel := context.WithTimeout(r.Context(), proposalTimeout)
	defer cancel()
	if err := f(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			err = errors.New("not applied in time (is there a leader?)")
		}
		http.Error(w, fmt.Sprintf("proposal failed: %v", err), http.StatusServiceUnavailable)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
