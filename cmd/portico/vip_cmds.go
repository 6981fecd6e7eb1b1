package main

import (
	"flag"
	"fmt"
	"strings"
)

func init() {
	commands["vip"] = command{"vip status|move [--to NODE]             show or hand over the virtual IP (admin API)", cmdVIP}
}

func cmdVIP(args []string) error {
	op, rest, err := sub(args, "vip status|move [--to NODE]")
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("vip "+op, flag.ContinueOnError)
	client := clientFlags(fs)
	to := fs.String("to", "", "node to move the VIP to (default: any other voter)")
	if _, err := parseArgs(fs, rest); err != nil {
		return err
	}
	c, err := client()
	if err != nil {
		return err
	}
	switch op {
	case "status":
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
	case "move":
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
	return fmt.Errorf("vip: unknown operation %q (status, move)", op)
}
