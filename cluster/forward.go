package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/portico-mail/portico/routing"
)

// ApplyPath is the admin API endpoint a leader accepts forwarded commands
// on (the body is an encoded routing.Command).
const ApplyPath = "/v1/internal/apply"

// forwarder sends writes to the leader's admin API.
type forwarder struct {
	token string
	http  *http.Client
}

func newForwarder(token string, tc *tls.Config) *forwarder {
	c := &http.Client{Timeout: 15 * time.Second}
	if tc != nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = tc
		c.Transport = t
	}
	return &forwarder{token: token, http: c}
}

// ApplyResult is the leader's JSON answer to a forwarded command.
type ApplyResult struct {
	Error string `json:"error,omitempty"`
	Kind  string `json:"kind,omitempty"` // "invalid", "conflict", "no_leader", "unknown_command"
}

func (f *forwarder) apply(ctx context.Context, api string, cmd []byte) error {
	url := api
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+ApplyPath, bytes.NewReader(cmd))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if f.token != "" {
		req.Header.Set("Authorization", "Bearer "+f.token)
	}
	resp, err := f.http.Do(req)
	if err != nil {
		return fmt.Errorf("%w: forwarding to the leader at %s: %v", ErrNoLeader, api, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var res ApplyResult
	_ = json.Unmarshal(body, &res)
	if resp.StatusCode == http.StatusOK {
		return nil
	}
	return ResultError(res, resp.StatusCode, string(body))
}

// ResultError turns a forwarded result back into the matching error.
func ResultError(res ApplyResult, status int, body string) error {
	msg := res.Error
	if msg == "" {
		msg = strings.TrimSpace(body)
	}
	switch res.Kind {
	case "invalid":
		return fmt.Errorf("%w: %s", routing.ErrInvalid, strings.TrimPrefix(msg, "invalid: "))
	case "conflict":
		return fmt.Errorf("%w: %s", routing.ErrConflict, strings.TrimPrefix(msg, "conflict: "))
	case "no_leader":
		return fmt.Errorf("%w (leader said: %s)", ErrNoLeader, msg)
	}
	return fmt.Errorf("leader answered HTTP %d: %s", status, msg)
}

// ErrorKind classifies an Apply error for the API.
func ErrorKind(err error) string {
	switch {
	case err == nil:
		return ""
	case errorsIs(err, routing.ErrInvalid):
		return "invalid"
	case errorsIs(err, routing.ErrConflict):
		return "conflict"
	case errorsIs(err, ErrNoLeader):
		return "no_leader"
	case errorsIs(err, routing.ErrUnknownCommand):
		return "unknown_command"
	}
	return "internal"
}
