package main

import (
	"flag"
	"fmt"
	"strings"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/vip"
)

func init() {
	register(&command{name: "vip", summary: "show or hand over the virtual IP", subs: []*command{
		{name: "status", summary: "show the VIP's addresses and owner (admin API)", setup: apiCmd(vipStatus)},
		{name: "move", summary: "hand the VIP over to another node (admin API)", setup: setupVIPMove},
		{name: "release", summary: "remove the VIP from this host's interfaces after the process died (systemd ExecStopPost)", setup: setupVIPRelease},
	}})
}

func vipStatus(c *apiClient, _ []string) error {
	var st struct {
		Addresses     []string `json:"addresses"`
		Owner, Self   string
		SelfOwns      bool   `json:"self_owns"`
		Moving        bool   `json:"moving"`
		Changes       uint64 `json:"ownership_changes"`
		Announcements uint64 `json:"announcements"`
	}
	raw, err := c.do("GET", "/v1/vip", nil, &st)
	if err != nil || c.json {
		printJSONIf(c, raw, err)
		return err
	}
	fmt.Printf("addresses:  %s\nowner:      %s\nthis node:  %s (owns: %v)\nchanges:    %d, announcements: %d\n",
		strings.Join(st.Addresses, ", "), st.Owner, st.Self, st.SelfOwns, st.Changes, st.Announcements)
	return nil
}

func setupVIPMove(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	to := fs.String("to", "", "`node` to move the VIP to (default: any other voter)")
	return func([]string) error {
		c, err := client()
		if err != nil {
			return err
		}
		var res struct {
			From, To string
			Ended    int   `json:"sessions_ended"`
			Took     int64 `json:"took_ms"`
		}
		raw, err := c.do("POST", "/v1/vip/move", map[string]string{"to": *to}, &res)
		if err != nil || c.json {
			printJSONIf(c, raw, err)
			return err
		}
		fmt.Printf("VIP moved from %s to %s in %d ms (%d sessions ended at a response boundary)\n", res.From, res.To, res.Took, res.Ended)
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
