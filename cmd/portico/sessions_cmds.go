package main

import (
	"flag"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/portico-mail/portico/ops/admin/sessionsapi"
	"github.com/portico-mail/portico/ops/admin/throttleapi"
)

func init() {
	register(&command{name: "sessions", summary: "see and end logged-in sessions, cluster-wide (admin API)", subs: []*command{
		{name: "list", summary: "list the logged-in sessions on every node", setup: sessionsList,
			about: "Each node of the cluster is asked; nodes that could not be asked are named on standard error."},
		{name: "kick", summary: "end sessions on every node at a response boundary (IMAP: * BYE [UNAVAILABLE] reason)", setup: sessionsKick,
			about: "Select the sessions with --user, --backend or --session (one at least; ending every session is `portico drain`). " +
				"A client usually reconnects at once, and lands where the routing table says now."},
	}})
	register(&command{name: "user", summary: "act on one user (admin API)", subs: []*command{
		{name: "move", args: "USER", summary: "pin the user to a backend or pool, then end the user's sessions so that the clients reconnect there", setup: userMove,
			about: "The mailbox migration cut-over in one command: the route is written (acknowledged by the cluster), every node " +
				"catches up with it and forgets the user's affinity, then the user's sessions end at a response boundary. " +
				"Copy the mailbox before, and keep the old server read-only meanwhile (see the README)."},
	}})
	register(&command{name: "throttle", summary: "see and lift failed-login blocks (admin API)", subs: []*command{
		{name: "list", summary: "list what the throttle counts and blocks (cluster-wide, as gossiped)", setup: throttleList,
			about: "User names are not stored: entries show a hash of the user, and the name when --user names it."},
		{name: "unblock", summary: "forget the failures of a user, a client address, or the pair, on every node", setup: throttleUnblock},
	}})
	cluster := root.sub("cluster")
	cluster.subs = append(cluster.subs, &command{name: "remove-peer", args: "NODE",
		summary: "remove a dead node from raft's configuration now (refused for a live node)", setup: apiCmd(removePeer),
		about: "For a node that is gone for good: it stops counting toward the quorum at once instead of after cluster.dead_node_reap."})
}

func sessionsList(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	user := fs.String("user", "", "only this user's sessions")
	backend := fs.String("backend", "", "only sessions on this backend")
	node := fs.String("node", "", "only sessions on this node")
	return func([]string) error {
		c, err := client()
		if err != nil {
			return err
		}
		q := url.Values{}
		for k, v := range map[string]string{"user": *user, "backend": *backend, "node": *node} {
			if v != "" {
				q.Set(k, v)
			}
		}
		path := "/v1/sessions"
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		var ans sessionsapi.ListAnswer
		raw, err := c.do("GET", path, nil, &ans)
		if err != nil {
			return err
		}
		if c.json {
			printJSON(raw)
		} else {
			tw := newTab()
			fmt.Fprintln(tw, "NODE\tUSER\tCLIENT\tLISTENER\tPROTOCOL\tBACKEND\tSINCE\tBYTES IN\tBYTES OUT\tSESSION")
			now := time.Now()
			for _, s := range ans.Sessions {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%s\n", s.Node, s.User, s.Client, s.Listener, s.Protocol,
					s.Backend, ago(now, s.Started), s.BytesIn, s.BytesOut, s.ID)
			}
			tw.Flush()
		}
		return unreached(ans.Unreached)
	}
}

// ago is a start time as the time since, to the second.
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return now.Sub(t).Round(time.Second).String()
}

// unreached names the nodes an answer lacks, on stderr, and fails: a
// partial answer must not pass for a whole one in a script.
func unreached(u []sessionsapi.Unreached) error {
	if len(u) == 0 {
		return nil
	}
	var names []string
	for _, x := range u {
		names = append(names, fmt.Sprintf("%s (%s)", x.Node, x.Error))
	}
	return fmt.Errorf("no answer from %d node(s): %s", len(u), strings.Join(names, "; "))
}

func kickFlags(fs *flag.FlagSet) (reason, spread *string) {
	reason = fs.String("reason", "", "text the IMAP client is told in its BYE (default: a generic one)")
	spread = fs.String("spread", "", "end the sessions evenly over this `duration` (at most 15s), so that their clients do not all reconnect at once")
	return
}

func sessionsKick(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	user := fs.String("user", "", "the user's sessions")
	backend := fs.String("backend", "", "the sessions on this backend")
	id := fs.String("session", "", "one session, by the id in `sessions list` and the logs")
	node := fs.String("node", "", "only on this node")
	reason, spread := kickFlags(fs)
	return func([]string) error {
		if *user == "" && *backend == "" && *id == "" {
			return usageError{"name the sessions to end: --user, --backend or --session"}
		}
		c, err := client()
		if err != nil {
			return err
		}
		var ans sessionsapi.KickAnswer
		raw, err := c.do("POST", "/v1/sessions/kick", sessionsapi.KickRequest{User: *user, Backend: *backend, ID: *id, Node: *node,
			Reason: *reason, Spread: *spread}, &ans)
		if err != nil {
			return err
		}
		printKick(c, raw, ans)
		return unreached(ans.Unreached)
	}
}

func printKick(c *apiClient, raw []byte, ans sessionsapi.KickAnswer) {
	if c.json {
		printJSON(raw)
		return
	}
	var parts []string
	for _, n := range sortedKeys(ans.ByNode) {
		parts = append(parts, fmt.Sprintf("%s %d", n, ans.ByNode[n]))
	}
	fmt.Printf("ended %d session(s)", ans.Kicked)
	if len(parts) > 0 {
		fmt.Printf(" (%s)", strings.Join(parts, ", "))
	}
	fmt.Println()
}

func sortedKeys(m map[string]int) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func userMove(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	to := fs.String("to", "", "the `backend or pool` the user moves to (required)")
	reason, spread := kickFlags(fs)
	return func(args []string) error {
		if *to == "" {
			return usageError{"--to BACKEND|POOL is required"}
		}
		c, err := client()
		if err != nil {
			return err
		}
		var ans sessionsapi.MoveAnswer
		raw, err := c.do("POST", "/v1/users/"+url.PathEscape(args[0])+"/move", sessionsapi.MoveRequest{To: *to, Reason: *reason, Spread: *spread}, &ans)
		if err != nil {
			return err
		}
		if !c.json {
			where := "backend " + ans.Target.Backend
			if ans.Target.Pool != "" {
				where = "pool " + ans.Target.Pool
			}
			fmt.Printf("%s now routes to %s; ", ans.User, where)
		}
		printKick(c, raw, ans.KickAnswer)
		return unreached(ans.Unreached)
	}
}

func throttleList(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	user := fs.String("user", "", "only this user's entries")
	ip := fs.String("ip", "", "only the entries of this client `address`'s network")
	return func([]string) error {
		c, err := client()
		if err != nil {
			return err
		}
		q := url.Values{}
		if *user != "" {
			q.Set("user", *user)
		}
		if *ip != "" {
			q.Set("ip", *ip)
		}
		path := "/v1/throttle"
		if len(q) > 0 {
			path += "?" + q.Encode()
		}
		var es []throttleapi.Entry
		raw, err := c.do("GET", path, nil, &es)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		tw := newTab()
		fmt.Fprintln(tw, "SCOPE\tNETWORK\tUSER\tFAILURES\tBLOCKED UNTIL")
		for _, e := range es {
			nw, who, until := "-", "-", "-"
			if e.Network.IsValid() {
				nw = e.Network.String()
			}
			switch {
			case e.User != "":
				who = e.User
			case e.UserHash != "":
				who = "#" + e.UserHash[:12]
			}
			if e.Blocked {
				until = e.Until.Local().Format(time.DateTime)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%s\n", e.Scope, nw, who, e.Failures, until)
		}
		return tw.Flush()
	}
}

func throttleUnblock(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	user := fs.String("user", "", "the user (all networks, unless --ip)")
	ip := fs.String("ip", "", "the client `address`'s network (all users, unless --user)")
	return func([]string) error {
		if *user == "" && *ip == "" {
			return usageError{"name a --user, an --ip, or both"}
		}
		c, err := client()
		if err != nil {
			return err
		}
		var ans struct {
			Reset int `json:"reset"`
		}
		raw, err := c.do("POST", "/v1/throttle/unblock", throttleapi.UnblockRequest{User: *user, IP: *ip}, &ans)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		fmt.Printf("reset %d throttle entr%s (every node adopts the reset)\n", ans.Reset, map[bool]string{true: "y", false: "ies"}[ans.Reset == 1])
		return nil
	}
}

func removePeer(c *apiClient, args []string) error {
	raw, err := c.do("DELETE", "/v1/cluster/peers/"+url.PathEscape(args[0]), nil, nil)
	if err != nil || c.json {
		printJSONIf(c, raw, err)
		return err
	}
	fmt.Printf("removed %s from the raft configuration\n", args[0])
	return nil
}
