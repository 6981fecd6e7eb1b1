package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"
)

// MemberAnswer is one member's answer to CallEach.
type MemberAnswer struct {
	Node   string
	Status int             // the answer's HTTP status (0 with Err)
	Body   json.RawMessage // the answer's JSON body
	Err    error           // not asked (not alive, not verified) or not reached
}

// CallEach sends body to path (an RPC added with HandleRPC on every node)
// on every member of the cluster at once, this node included (served
// directly), and returns each member's answer, by node name. Members that
// are not alive, or whose identity is not verified yet, are not called:
// their answer says why, so that a caller can say its view is partial.
func (n *Agent) CallEach(ctx context.Context, path string, body []byte) []MemberAnswer {
	members := n.Members()
	out := make([]MemberAnswer, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		out[i].Node = m.Name
		switch {
		case m.Name == n.Name():
			wg.Add(1)
			go func() {
				defer wg.Done()
				out[i].Status, out[i].Body, out[i].Err = n.callSelf(ctx, path, body)
			}()
		case m.State != "alive":
			out[i].Err = fmt.Errorf("member %s is %s", m.Name, m.State)
		case !m.Verified || m.Raft == "":
			out[i].Err = fmt.Errorf("member %s is not verified yet", m.Name)
		default:
			wg.Add(1)
			go func() {
				defer wg.Done()
				var raw json.RawMessage
				status, err := n.call(ctx, m.Name, m.Raft, path, body, &raw)
				out[i].Status, out[i].Body, out[i].Err = status, raw, err
			}()
		}
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	return out
}

// callSelf serves an extension RPC of this node without the network.
func (n *Agent) callSelf(ctx context.Context, path string, body []byte) (int, json.RawMessage, error) {
	n.extMu.Lock()
	f := n.ext[path]
	n.extMu.Unlock()
	if f == nil {
		return http.StatusNotFound, nil, fmt.Errorf("no cluster RPC %s on this node", path)
	}
	if len(body) > maxRPCBody {
		return http.StatusRequestEntityTooLarge, nil, fmt.Errorf("body too large")
	}
	status, answer := f(context.WithValue(ctx, callerKey{}, n.Name()), body)
	b, err := json.Marshal(answer)
	if err != nil {
		return 0, nil, err
	}
	return status, b, nil
}
