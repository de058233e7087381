package main

import (
	"encoding/gob"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"go.etcd.io/raft/v3/raftpb"
)

// TestHTTPKVAPI checks raftexample's API against a store whose proposals
// land in buffered channels: what each request answers, and what it
// proposes.
func TestHTTPKVAPI(t *testing.T) {
	for _, tc := range []struct {
		name, method, path, body string
		wantCode                 int
		wantBody                 string
		wantProposal             *kv                // a PUT's
		wantConfChange           *raftpb.ConfChange // a POST's or DELETE's
		wantAllow                string
	}{
		{name: "get", method: http.MethodGet, path: "/my-key", wantCode: 200, wantBody: "hello"},
		{name: "get missing", method: http.MethodGet, path: "/other", wantCode: 404, wantBody: "key not found\n"},
		{name: "put proposes the path as key", method: http.MethodPut, path: "/my-key", body: "bye", wantCode: 204,
			wantProposal: &kv{Key: "/my-key", Val: "bye"}},
		{name: "put a body too large", method: http.MethodPut, path: "/big", body: strings.Repeat("x", maxBodyBytes+1), wantCode: 400},
		{name: "post adds a member", method: http.MethodPost, path: "/4", body: "http://127.0.0.1:42379", wantCode: 204,
			wantConfChange: &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(4)), Context: []byte("http://127.0.0.1:42379")}},
		{name: "post reads a hex ID", method: http.MethodPost, path: "/0x10", body: "http://127.0.0.1:42379", wantCode: 204,
			wantConfChange: &raftpb.ConfChange{Type: raftpb.ConfChangeAddNode.Enum(), NodeId: new(uint64(16)), Context: []byte("http://127.0.0.1:42379")}},
		{name: "post without an ID", method: http.MethodPost, path: "/four", body: "http://127.0.0.1:42379", wantCode: 400},
		{name: "delete removes a member", method: http.MethodDelete, path: "/3", wantCode: 204,
			wantConfChange: &raftpb.ConfChange{Type: raftpb.ConfChangeRemoveNode.Enum(), NodeId: new(uint64(3))}},
		{name: "delete member 0", method: http.MethodDelete, path: "/0", wantCode: 400},
		{name: "other methods", method: http.MethodPatch, path: "/my-key", wantCode: 405, wantAllow: "PUT,GET,POST,DELETE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proposeC := make(chan string, 1)
			confChangeC := make(chan *raftpb.ConfChange, 1)
			h := &httpKVAPI{
				store:       &kvstore{proposeC: proposeC, kvStore: map[string]string{"/my-key": "hello"}},
				confChangeC: confChangeC,
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, strings.NewReader(tc.body)))
			if w.Code != tc.wantCode {
				t.Errorf("got status %d, want %d (body %q)", w.Code, tc.wantCode, w.Body.String())
			}
			if tc.wantBody != "" && w.Body.String() != tc.wantBody {
				t.Errorf("got body %q, want %q", w.Body.String(), tc.wantBody)
			}
			if got := strings.Join(w.Header().Values("Allow"), ","); got != tc.wantAllow {
				t.Errorf("got Allow %q, want %q", got, tc.wantAllow)
			}
			select {
			case p := <-proposeC:
				var got kv
				if err := gob.NewDecoder(strings.NewReader(p)).Decode(&got); err != nil {
					t.Fatalf("proposal is not a gob-encoded kv: %v", err)
				}
				if tc.wantProposal == nil || got != *tc.wantProposal {
					t.Errorf("got proposal %+v, want %+v", got, tc.wantProposal)
				}
			default:
				if tc.wantProposal != nil {
					t.Errorf("got no proposal, want %+v", tc.wantProposal)
				}
			}
			select {
			case cc := <-confChangeC:
				if tc.wantConfChange == nil || cc.String() != tc.wantConfChange.String() {
					t.Errorf("got conf change %v, want %v", cc, tc.wantConfChange)
				}
			default:
				if tc.wantConfChange != nil {
					t.Errorf("got no conf change, want %v", tc.wantConfChange)
				}
			}
		})
	}
}
