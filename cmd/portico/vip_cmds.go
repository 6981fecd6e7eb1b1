package main

import (
	"flag"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/vip"
)

func init() {
	register(&command{name: "vip", summary: "show or hand over the virtual IPs", subs: []*command{
		{name: "status", summary: "show every virtual address and its owner (admin API)", setup: apiCmd(vipStatus)},
		{name: "move", args: "[ADDRESS]", summary: "hand the VIP (spread mode: one address) over to another node (admin API)", setup: setupVIPMove},
		{name: "release", summary: "remove the VIP from this host's interfaces after the process died (systemd ExecStopPost)", setup: setupVIPRelease},
	}})
}

func vipStatus(c *apiClient, _ []string) error {
	var st struct {
		Mode          string   `json:"mode"`
		Addresses     []string `json:"addresses"`
		Owner, Self   string
		SelfOwns      bool   `json:"self_owns"`
		Moving        bool   `json:"moving"`
		Changes       uint64 `json:"ownership_changes"`
		Announcements uint64 `json:"announcements"`
		Placements    []struct {
			Address, Owner string
			Placed, Held   bool
			Moving         bool
			Epoch          uint64
		} `json:"placements"`
	}
	raw, err := c.do("GET", "/v1/vip", nil, &st)
	if err != nil || c.json {
		printJSONIf(c, raw, err)
		return err
	}
	mode := st.Mode
	if mode == "" {
		mode = "leader"
	}
	fmt.Printf("mode:       %s\nthis node:  %s\nchanges:    %d, announcements: %d\n\n", mode, st.Self, st.Changes, st.Announcements)
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tOWNER\tHELD HERE\tNOTE")
	for _, p := range st.Placements {
		note := ""
		switch {
		case p.Moving:
			note = "moving"
		case mode == "spread" && !p.Placed:
			note = "not placed yet: held by the leader"
		}
		fmt.Fprintf(tw, "%s\t%s\t%v\t%s\n", p.Address, dash(p.Owner), p.Held, note)
	}
	return tw.Flush()
}

func setupVIPMove(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	to := fs.String("to", "", "`node` to move the VIP to (default: any other voter; spread mode: the least loaded other node)")
	return func(args []string) error {
		c, err := client()
		if err != nil {
			return err
		}
		var res struct {
			Address  string
			From, To string
			Ended    int   `json:"sessions_ended"`
			Ending   int   `json:"sessions_ending"` // spread mode: ended after the handover
			Took     int64 `json:"took_ms"`
		}
		body := map[string]string{"to": *to}
		if len(args) > 0 {
			body["address"] = args[0]
		}
		raw, err := c.do("POST", "/v1/vip/move", body, &res)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		what := "VIP"
		if res.Address != "" {
			what = res.Address
		}
		if res.Ending > 0 {
			fmt.Printf("%s moved from %s to %s in %d ms (%d sessions ended at a response boundary before the handover, %d being ended after it)\n",
				what, res.From, res.To, res.Took, res.Ended, res.Ending)
			return nil
		}
		fmt.Printf("%s moved from %s to %s in %d ms (%d sessions ended at a response boundary)\n", what, res.From, res.To, res.Took, res.Ended)
		return nil
	}
}

func setupVIPRelease(fs *flag.FlagSet) func([]string) error {
	var path string
	pathVar(fs, &path, fileArg, "config", "/etc/portico/portico.yaml", "the node's configuration file")
	return func([]string) error { return vipRelease(path) }
}

// vipRelease removes the configured virtual addresses from this host's
// interfaces, when no portico process runs on the configuration's data
// directory: for a supervisor after the process exited (systemd's
// ExecStopPost), since a process that was killed or crashed leaves the
// address behind and the kernel goes on answering ARP for it.
func vipRelease(path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	if len(cfg.VIP.Addresses) == 0 {
		return nil
	}
	// A running node holds this lock and manages the addresses itself.
	lock, err := cluster.LockDataDir(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("vip release: not touching the addresses: %w", err)
	}
	defer lock.Close()
	var addrs []vip.Address
	for _, a := range cfg.VIP.Addresses {
		addrs = append(addrs, vip.Address{Prefix: a.Prefix, Interface: a.Interface})
	}
	removed, err := vip.RemoveAll(addrs)
	for _, a := range removed {
		fmt.Printf("removed %s from %s\n", a.Prefix, a.Interface)
	}
	return err
}
