package rafthttp

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestAllowMethod checks the one 405 the raft routes answer: the Allow
// header names the route's method, and nothing is written for that method.
func TestAllowMethod(t *testing.T) {
	tests := []struct {
		name, method, allow string
		want                bool
	}{
		{name: "POST to a POST route", method: http.MethodPost, allow: http.MethodPost, want: true},
		{name: "GET to a GET route", method: http.MethodGet, allow: http.MethodGet, want: true},
		{name: "GET to a POST route", method: http.MethodGet, allow: http.MethodPost},
		{name: "POST to a GET route", method: http.MethodPost, allow: http.MethodGet},
		{name: "HEAD to a GET route", method: http.MethodHead, allow: http.MethodGet},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			got := allowMethod(rec, httptest.NewRequest(tc.method, RaftPrefix, nil), tc.allow)
			if got != tc.want {
				t.Fatalf("allowMethod: got %v, want %v", got, tc.want)
			}
			wantCode, wantBody, wantAllow := http.StatusOK, "", ""
			if !tc.want {
				wantCode, wantBody, wantAllow = http.StatusMethodNotAllowed, "Method Not Allowed\n", tc.allow
			}
			if rec.Code != wantCode || rec.Body.String() != wantBody || rec.Header().Get("Allow") != wantAllow {
				t.Errorf("got %d %q, Allow %q; want %d %q, Allow %q",
					rec.Code, rec.Body, rec.Header().Get("Allow"), wantCode, wantBody, wantAllow)
			}
		})
	}
}

// selfAnswering is a Process error that writes its own response, as etcd's
// for a message from a removed member.
type selfAnswering struct{}

func (selfAnswering) Error() string { return "removed" }

func (selfAnswering) WriteTo(w http.ResponseWriter) {
	w.WriteHeader(http.StatusForbidden)
}

// TestAnswerProcessError checks the one answer to a Process error: an error
// that writes its own response writes it, unlogged; any other is logged and
// answered 500 with the handler's body.
func TestAnswerProcessError(t *testing.T) {
	tests := []struct {
		name     string
		err      error
		want500  bool
		wantCode int
		wantBody string
	}{
		{name: "writes its own response", err: selfAnswering{}, wantCode: http.StatusForbidden},
		{name: "wrapped, writes its own response", err: fmt.Errorf("step: %w", selfAnswering{}), wantCode: http.StatusForbidden},
		{name: "any other error", err: errors.New("raft is down"), want500: true,
			wantCode: http.StatusInternalServerError, wantBody: "the handler's body\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zapcore.DebugLevel)
			tr := &Transport{warns: newWarnLimits(nil), lg: zap.New(core)}
			rec := httptest.NewRecorder()
			if got := tr.answerProcessError(rec, tc.err, "the handler's body"); got != tc.want500 {
				t.Errorf("answerProcessError: got %v, want %v", got, tc.want500)
			}
			if rec.Code != tc.wantCode || rec.Body.String() != tc.wantBody {
				t.Errorf("got %d %q, want %d %q", rec.Code, rec.Body, tc.wantCode, tc.wantBody)
			}
			wantLogs := 0
			if tc.want500 {
				wantLogs = 1
			}
			if got := logs.FilterMessage("failed to process Raft message").Len(); got != wantLogs || logs.Len() != wantLogs {
				t.Errorf("got %d log lines (%d of them the Process failure), want %d", logs.Len(), got, wantLogs)
			}
		})
	}
}
