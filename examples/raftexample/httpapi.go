package main

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"strconv"

	"go.etcd.io/raft/v3/raftpb"
)

// httpKVAPI is the key-value HTTP API of a member, raftexample's:
//
//	PUT    /key   body: the value      proposes key=value; 204
//	GET    /key                        200 with the value, or 404
//	POST   /ID    body: its peer URL   proposes adding member ID; 204
//	DELETE /ID                         proposes removing member ID; 204
//
// Writes answer once raft has taken the proposal, before it is committed:
// a GET that follows may still see the old value, and a proposal lost in
// an election is lost without a word. The key is the request URI, leading
// slash included, as in raftexample; an ID is read as strconv.ParseUint
// reads base prefixes (0x10 is 16).
type httpKVAPI struct {
	store       *kvstore
	confChangeC chan<- *raftpb.ConfChange
}

// maxBodyBytes bounds a value or a peer URL. raftexample reads bodies
// whole, however large; a bound costs nothing here and keeps one request
// from taking the member's memory.
const maxBodyBytes = 1 << 20

// ServeHTTP implements http.Handler: it answers one request of the API.
func (h *httpKVAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer r.Body.Close()
	switch r.Method {
	case http.MethodGet:
		h.get(w, r.RequestURI)
	case http.MethodPut:
		if body, ok := readBody(w, r); ok {
			h.store.Propose(r.RequestURI, body)
			w.WriteHeader(http.StatusNoContent)
		}
	case http.MethodPost:
		id, ok := memberID(w, r)
		if !ok {
			return
		}
		if url, ok := readBody(w, r); ok {
			h.confChangeC <- &raftpb.ConfChange{
				Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(id), Context: []byte(url),
			}
			w.WriteHeader(http.StatusNoContent)
		}
	case http.MethodDelete:
		if id, ok := memberID(w, r); ok {
			h.confChangeC <- &raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(id)}
			w.WriteHeader(http.StatusNoContent)
		}
	default:
		for _, m := range []string{http.MethodPut, http.MethodGet, http.MethodPost, http.MethodDelete} {
			w.Header().Add("Allow", m)
		}
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

// get answers a read from this member's map.
func (h *httpKVAPI) get(w http.ResponseWriter, key string) {
	v, ok := h.store.Lookup(key)
	if !ok {
		http.Error(w, "key not found", http.StatusNotFound)
		return
	}
	io.WriteString(w, v)
}

// readBody reads the request body, answering 400 if it cannot.
func readBody(w http.ResponseWriter, r *http.Request) (string, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		log.Printf("raftexample: %s %s: reading the body: %v", r.Method, r.RequestURI, err)
		http.Error(w, fmt.Sprintf("cannot read the body: %v", err), http.StatusBadRequest)
		return "", false
	}
	return string(b), true
}

// memberID reads the member ID of a POST or DELETE from the path, /ID,
// answering 400 if it is not one.
func memberID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, err := strconv.ParseUint(r.RequestURI[1:], 0, 64)
	if err != nil || id == 0 {
		log.Printf("raftexample: %s %s: not a member ID", r.Method, r.RequestURI)
		http.Error(w, "want a member ID: /ID", http.StatusBadRequest)
		return 0, false
	}
	return id, true
}

// serveHTTPKVAPI serves the key-value API on port, on every interface, and
// returns when raft stops: at once if it stopped cleanly (this member was
// removed); if it failed, after logging why and exiting.
func serveHTTPKVAPI(kv *kvstore, port int, confChangeC chan<- *raftpb.ConfChange, errorC <-chan error) {
	srv := http.Server{
		Addr:    ":" + strconv.Itoa(port),
		Handler: &httpKVAPI{store: kv, confChangeC: confChangeC},
	}
	go func() {
		if err := srv.ListenAndServe(); err != nil {
			log.Fatalf("raftexample: key-value API: %v", err)
		}
	}()

	if err, ok := <-errorC; ok {
		log.Fatalf("raftexample: %v", err)
	}
}
