package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/portico-mail/portico/ops/daemon"
)

func init() {
	register(&command{name: "status", summary: "show this node, the cluster, the VIP, sessions and backends (admin API)",
		setup: apiCmd(func(c *apiClient, _ []string) error {
			return show(c, "/v1/status", func(st daemon.Status) error { return printStatus(os.Stdout, &st) })
		})})
}

func sortedOwners(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// printStatus renders a status as tables.
func printStatus(out io.Writer, st *daemon.Status) error {
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	ready := "yes"
	if !st.Ready {
		ready = "no: " + strings.Join(st.NotReady, "; ")
	}
	leader, vipOwner := "-", "-"
	if st.Cluster != nil {
		leader = dash(st.Cluster.Leader)
	}
	if st.VIP != nil && st.VIP.Mode == "spread" {
		// One owner per address (the spread mode).
		var parts []string
		for _, a := range sortedOwners(st.VIP.Owners) {
			parts = append(parts, a+" "+dash(st.VIP.Owners[a]))
		}
		vipOwner = dash(strings.Join(parts, ", "))
	} else if st.VIP != nil {
		vipOwner = dash(st.VIP.Owner)
		if len(st.VIP.Addresses) > 0 {
			vipOwner += " (" + strings.Join(st.VIP.Addresses, ", ") + ")"
		}
	}
	fmt.Fprintf(tw, "node:\t%s\n", st.Node)
	fmt.Fprintf(tw, "version:\t%s (commit %s), up %s\n", st.Version, st.Commit, time.Duration(st.UptimeSeconds*float64(time.Second)))
	fmt.Fprintf(tw, "role:\t%s\n", st.Role)
	fmt.Fprintf(tw, "leader:\t%s\n", leader)
	fmt.Fprintf(tw, "VIP owner:\t%s\n", vipOwner)
	fmt.Fprintf(tw, "ready:\t%s\n", ready)
	fmt.Fprintf(tw, "draining:\t%v\n", st.Draining)
	fmt.Fprintf(tw, "routing table:\t%d backends, %d pools, %d users, %d domains\n",
		st.Routing.Backends, st.Routing.Pools, st.Routing.Users, st.Routing.Domains)
	for _, src := range st.Sources {
		fmt.Fprintf(tw, "source %s:\t%s, %s, %d rules, last sync %s\n", src.Name, src.Type, src.State, src.Rules, sinceAt(src.LastSync))
	}
	fmt.Fprintf(tw, "TLS session tickets:\t%s\n", ticketLine(st.TLSTickets))
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(out, "\nSESSIONS")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTOCOL\tLOGGED IN\tBEFORE LOGIN")
	protos := make([]string, 0, len(st.Sessions))
	for p := range st.Sessions {
		protos = append(protos, p)
	}
	sort.Strings(protos)
	for _, p := range protos {
		fmt.Fprintf(tw, "%s\t%d\t%d\n", p, st.Sessions[p].Relayed, st.Sessions[p].Preauth)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(out, "\nLISTENERS")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tPROTOCOL\tADDRESS\tLOGGED IN\tBEFORE LOGIN")
	for _, l := range st.Listeners {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", l.Name, l.Protocol, dash(l.Address), l.Relayed, l.Preauth)
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(out, "\nCLUSTER MEMBERS")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if st.Cluster == nil {
		fmt.Fprintln(tw, "standalone")
	} else {
		fmt.Fprintln(tw, "NAME\tHEALTH\tROLE\tVERSION\tSESSIONS\tDRAINING")
		for _, m := range st.Cluster.Members {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%v\n", m.Name, dash(m.State), dash(m.Role), dash(m.Version), m.Sessions, m.Draining)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(out, "\nBACKENDS")
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tADDRESS\tSTATE\tHEALTH\tSESSIONS")
	for _, b := range st.Backends {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", b.ID, b.String(), dash(b.State), dash(b.Health), b.Sessions)
	}
	return tw.Flush()
}

// ticketLine renders the session-ticket keys (fingerprints only).
func ticketLine(t daemon.TicketStatus) string {
	if !t.Enabled {
		return "off"
	}
	if t.Sealing == "" {
		return "on"
	}
	s := fmt.Sprintf("on, %s keys, sealing %s, %d accepted", t.Source, t.Sealing, t.Keys)
	if t.Rotated != "" {
		s += ", rotated " + t.Rotated
	}
	return s
}
