package cluster

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/portico-mail/portico/routing"
)

// The cluster's own RPCs: HTTP/1.1 over the mutual-TLS cluster port (ALPN
// portico-rpc), so every call is made and answered under a node identity,
// never with the operator's admin token, and never in cleartext. One
// server (this file) and one client (Agent.call), with one timeout and one
// body limit.
const (
	rpcApply        = "/v1/apply"          // body: an encoded routing.Command; the leader applies it
	rpcHold         = "/v1/hold-elections" // body: {"ms": N}; N = 0 releases
	rpcReadIndex    = "/v1/read-index"     // the leader confirms leadership and returns its applied index
	rpcTimeout      = 30 * time.Second     // every call (a VIP move drains sessions first), unless the caller's context ends sooner
	maxRPCBody      = 16 << 20             // request and response bodies
	maxElectionHold = 10 * time.Minute
)

// ApplyResult is the leader's answer to a forwarded command.
type ApplyResult struct {
	Error string `json:"error,omitempty"`
	Kind  string `json:"kind,omitempty"` // see ErrorKind
	// Index is the raft index the leader applied the command at (the
	// forwarding node waits until its own table reaches it); 0 from older
	// versions.
	Index uint64 `json:"index,omitempty"`
}

// rpcHandler serves the cluster RPCs. Callers are authenticated by the
// TLS handshake (the mux refuses anyone else).
func (n *Agent) rpcHandler() http.Handler {
	mux := n.rpcMux
	mux.HandleFunc("POST "+rpcApply, func(w http.ResponseWriter, r *http.Request) {
		b, ok := readBody(w, r)
		if !ok {
			return
		}
		if !n.IsLeader() {
			writeJSON(w, http.StatusServiceUnavailable, ApplyResult{Error: "not the leader", Kind: "no_leader"})
			return
		}
		// One attempt: when leadership is lost or moving, the forwarding
		// node hears so at once and retries with the new leader (waiting
		// here for a leader this node may be cut off from would hold it
		// for an election wait).
		index, err := n.applyLeader(r.Context(), b)
		if err != nil {
			writeJSON(w, StatusOf(err), ApplyResult{Error: err.Error(), Kind: ErrorKind(err)})
			return
		}
		writeJSON(w, http.StatusOK, ApplyResult{Index: index})
	})
	mux.HandleFunc("POST "+rpcHold, func(w http.ResponseWriter, r *http.Request) {
		b, ok := readBody(w, r)
		if !ok {
			return
		}
		var body struct {
			MS int64 `json:"ms"`
		}
		if err := json.Unmarshal(b, &body); err != nil || body.MS < 0 || time.Duration(body.MS)*time.Millisecond > maxElectionHold {
			writeJSON(w, http.StatusBadRequest, ApplyResult{Error: "body must be {\"ms\": 0..600000}", Kind: "invalid"})
			return
		}
		if err := n.HoldElections(time.Duration(body.MS) * time.Millisecond); err != nil {
			writeJSON(w, http.StatusInternalServerError, ApplyResult{Error: err.Error(), Kind: "internal"})
			return
		}
		writeJSON(w, http.StatusOK, ApplyResult{})
	})
	mux.HandleFunc("POST "+rpcRemovePeer, n.handleRemovePeer)
	mux.HandleFunc("POST "+rpcReadIndex, func(w http.ResponseWriter, r *http.Request) {
		if _, ok := readBody(w, r); !ok {
			return
		}
		ri, err := n.LeaderReadIndex(5 * time.Second)
		if err != nil {
			writeJSON(w, http.StatusServiceUnavailable, ApplyResult{Error: err.Error(), Kind: "no_leader"})
			return
		}
		writeJSON(w, http.StatusOK, ri)
	})
	return mux
}

// RPCFunc serves a cluster RPC added by another package: body is the
// request's body, read under the RPCs' one body limit; it returns the
// answer's HTTP status and a value sent as its JSON body.
type RPCFunc func(ctx context.Context, body []byte) (status int, answer any)

// HandleRPC adds a cluster RPC at path (under /v1/ext/, POST): served on
// the cluster port to other nodes only, with the same body limit and
// timeouts as every RPC, for calls that belong to another package (e.g. a
// VIP move passed to the leader).
func (n *Agent) HandleRPC(path string, f RPCFunc) {
	n.extMu.Lock()
	if n.ext == nil {
		n.ext = map[string]RPCFunc{}
	}
	n.ext[path] = f
	n.extMu.Unlock()
	n.rpcMux.HandleFunc("POST "+path, func(w http.ResponseWriter, r *http.Request) {
		b, ok := readBody(w, r)
		if !ok {
			return
		}
		status, answer := f(r.Context(), b)
		writeJSON(w, status, answer)
	})
}

// CallLeader sends body to path on the leader's cluster port (an RPC added
// with HandleRPC there) and returns the answer's status and body. It fails
// with ErrNoLeader when no leader is known or it cannot be reached.
func (n *Agent) CallLeader(ctx context.Context, path string, body []byte) (int, []byte, error) {
	addr, id := n.raft.LeaderWithID()
	if addr == "" {
		return 0, nil, ErrNoLeader
	}
	var raw json.RawMessage
	status, err := n.call(ctx, string(id), string(addr), path, body, &raw)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: calling the leader %s: %v", ErrNoLeader, id, err)
	}
	return status, raw, nil
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRPCBody))
	if err != nil {
		writeJSON(w, http.StatusRequestEntityTooLarge, ApplyResult{Error: "body too large", Kind: "invalid"})
		return nil, false
	}
	return b, true
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// serveRPC runs the RPC server on the mux's RPC connections until the
// mux closes (closeStores waits for it).
func (n *Agent) serveRPC() {
	defer close(n.rpcDone)
	_ = n.rpcSrv.Serve(rpcListener{chanListener{m: n.mux, ch: n.mux.rpcCh}})
}

// rpcListener hands the server connections whose TLS is already done.
// They are wrapped so that net/http does not look at their ALPN protocol
// (it closes a TLS connection whose protocol it has no handler for) and
// serves them as HTTP/1.1.
type rpcListener struct{ chanListener }

type rpcConn struct{ net.Conn }

func (l rpcListener) Accept() (net.Conn, error) {
	c, err := l.chanListener.Accept()
	if err != nil {
		return nil, err
	}
	return rpcConn{c}, nil
}

func (n *Agent) newRPCServer() *http.Server {
	return &http.Server{
		Handler:           n.rpcHandler(),
		ConnContext:       callerContext,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       rpcTimeout,
		WriteTimeout:      rpcTimeout + 5*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          log.New(newLineLogger(n.log, "cluster-rpc"), "", 0),
	}
}

// newRPCClient makes the one HTTP client for cluster RPCs: it dials peers'
// cluster ports with this node's certificate and checks that the peer is
// the node it meant to reach.
func (n *Agent) newRPCClient() *http.Client {
	tr := &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			want, _ := ctx.Value(peerNameKey{}).(string)
			return n.trust.dial(ctx, addr, alpnRPC, want)
		},
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     time.Minute,
		ForceAttemptHTTP2:   false,
	}
	return &http.Client{Transport: tr, Timeout: rpcTimeout}
}

type peerNameKey struct{}

// callerKey carries, in an RPC's context, the name of the node that made
// it: the common name of the certificate verified in the connection's
// handshake.
type callerKey struct{}

// callerContext puts the verified caller's name in every request's
// context on an RPC connection.
func callerContext(ctx context.Context, c net.Conn) context.Context {
	rc, ok := c.(rpcConn)
	if !ok {
		return ctx
	}
	tc, ok := rc.Conn.(*tls.Conn)
	if !ok {
		return ctx
	}
	if st := tc.ConnectionState(); len(st.PeerCertificates) > 0 {
		return context.WithValue(ctx, callerKey{}, st.PeerCertificates[0].Subject.CommonName)
	}
	return ctx
}

// Caller returns the node that made the cluster RPC being served (the
// name its certificate, verified in the handshake, carries; this node's
// own name for a call it served itself), or "" if ctx is not an RPC's.
func Caller(ctx context.Context) string {
	s, _ := ctx.Value(callerKey{}).(string)
	return s
}

// CallNode sends body to path (an RPC added with HandleRPC there) on the
// named member's cluster port, or serves it here when name is this node,
// and returns the answer's status and body. The member must be alive and
// its metadata verified.
func (n *Agent) CallNode(ctx context.Context, name, path string, body []byte) (int, []byte, error) {
	if name == n.Name() {
		return n.callSelf(ctx, path, body)
	}
	for _, m := range n.Members() {
		if m.Name != name {
			continue
		}
		if m.State != "alive" || !m.Verified || m.Raft == "" {
			return 0, nil, fmt.Errorf("member %s is %s (verified: %v)", name, m.State, m.Verified)
		}
		var raw json.RawMessage
		status, err := n.call(ctx, name, m.Raft, path, body, &raw)
		return status, raw, err
	}
	return 0, nil, fmt.Errorf("no member %s", name)
}

// call POSTs body to peer (node name and cluster address) and decodes a
// JSON answer into out. A transport failure is wrapped in ErrNoLeader's
// family only by callers that know what the peer was for.
func (n *Agent) call(ctx context.Context, peer, addr, path string, body []byte, out any) (int, error) {
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, peerNameKey{}, peer), rpcTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := n.rpc.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	// A pooled connection was verified for whoever it was dialled for:
	// check that it is the node meant now.
	if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 || resp.TLS.PeerCertificates[0].Subject.CommonName != peer {
		return 0, fmt.Errorf("cluster rpc to %s at %s: answered by another node", peer, addr)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxRPCBody))
	if err != nil {
		return resp.StatusCode, err
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("cluster rpc to %s: bad answer (HTTP %d): %.200q", peer, resp.StatusCode, b)
		}
	}
	return resp.StatusCode, nil
}

// forwardApply sends an encoded command to the leader and returns the
// index it was applied at.
func (n *Agent) forwardApply(ctx context.Context, leader, addr string, cmd []byte) (uint64, error) {
	var res ApplyResult
	status, err := n.call(ctx, leader, addr, rpcApply, cmd, &res)
	if err != nil {
		return 0, fmt.Errorf("%w: forwarding to the leader %s at %s: %v", ErrNoLeader, leader, addr, err)
	}
	if status == http.StatusOK {
		return res.Index, nil
	}
	return 0, ResultError(res, status)
}

// ResultError turns a forwarded result back into the matching error.
func ResultError(res ApplyResult, status int) error {
	msg := res.Error
	switch res.Kind {
	case "invalid":
		return fmt.Errorf("%w: %s", routing.ErrInvalid, strings.TrimPrefix(msg, "invalid: "))
	case "conflict":
		return fmt.Errorf("%w: %s", routing.ErrConflict, strings.TrimPrefix(msg, "conflict: "))
	case "not_found":
		return fmt.Errorf("%w: %s", routing.ErrNotFound, strings.TrimPrefix(msg, "not found: "))
	case "no_leader":
		return fmt.Errorf("%w (leader said: %s)", ErrNoLeader, msg)
	case "unsupported":
		return fmt.Errorf("%w (leader said: %s)", ErrUnsupported, msg)
	case "unknown_command":
		return fmt.Errorf("%w (leader said: %s)", routing.ErrUnknownCommand, msg)
	}
	return fmt.Errorf("leader answered HTTP %d: %s", status, msg)
}

// ErrorKind classifies an Apply error.
func ErrorKind(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, routing.ErrInvalid):
		return "invalid"
	case errors.Is(err, routing.ErrConflict):
		return "conflict"
	case errors.Is(err, routing.ErrNotFound):
		return "not_found"
	case errors.Is(err, ErrNoLeader):
		return "no_leader"
	case errors.Is(err, ErrUnsupported):
		return "unsupported"
	case errors.Is(err, routing.ErrUnknownCommand):
		return "unknown_command"
	}
	return "internal"
}

// StatusOf is the HTTP status for an Apply error (admin API and RPC).
func StatusOf(err error) int {
	switch ErrorKind(err) {
	case "invalid", "unknown_command":
		return http.StatusBadRequest
	case "conflict", "unsupported":
		return http.StatusConflict
	case "not_found":
		return http.StatusNotFound
	case "no_leader":
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// ConsistentRead returns once this node's table holds every write
// committed before the call (a linearizable read: the leader confirms its
// leadership with a barrier and names its applied index, ready.go; a
// follower then waits until it has applied as much). While leadership
// moves (no leader known, or the one asked no longer leads) it asks
// again, as a write is retried, for up to an election wait.
func (n *Agent) ConsistentRead(ctx context.Context) error {
	wait := n.electionWait()
	start := time.Now()
	var ri ReadIndex
	for attempt := 0; ; attempt++ {
		var err error
		if ri, err = n.readIndex(ctx, 5*time.Second); err == nil {
			break
		}
		if !errors.Is(err, ErrNoLeader) {
			err = fmt.Errorf("%w: %w", ErrNoLeader, err)
		}
		if errors.Is(err, errReadIndexUnsupported) || time.Since(start) > wait {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", err, ctx.Err())
		case <-time.After(time.Duration(20*(attempt+1)) * time.Millisecond):
		}
	}
	settled := 0
	for !n.reached(ri, &settled) {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: waiting to apply index %d: %v", ErrNoLeader, ri.Index, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return nil
}
