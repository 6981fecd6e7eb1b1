// Command benchtable prints loadimap JSON results as one markdown table, in
// the order the files are given.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"

	"github.com/portico-mail/portico/bench/internal/result"
)

func main() {
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: benchtable result.json...")
		flag.PrintDefaults()
	}
	flag.Parse()
	log.SetFlags(0)
	var rs []*result.Result
	for _, f := range flag.Args() {
		b, err := os.ReadFile(f)
		if err != nil {
			log.Fatal(err)
		}
		r := new(result.Result)
		if err := json.Unmarshal(b, r); err != nil {
			log.Fatalf("%s: %v", f, err)
		}
		rs = append(rs, r)
	}
	if len(rs) == 0 {
		flag.Usage()
		os.Exit(2)
	}
	num := func(p *float64, prec int) string {
		if p == nil {
			return "–"
		}
		return fmt.Sprintf("%.*f", prec, *p)
	}
	pair := func(l result.Latency) string {
		if l.Count == 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f / %.1f", l.P50, l.P99)
	}
	fmt.Println("| proxy | mode | N | established | PSS KiB/session | RSS KiB/session | CPU ms/1000 logins | login p50/p99 ms | greeting p50/p99 ms | NOOP p99 ms | FETCH p50/p99 ms | relay MB/s | relay CPU ms/GB | host busy % before/login | other CPU ms (login) |")
	fmt.Println("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	cpus, rates, settles, tlsSeen := map[int]bool{}, map[float64]bool{}, map[string]bool{}, map[string]bool{}
	var errs []string
	for _, r := range rs {
		cpus[r.NumCPU], rates[r.RateLimit], settles[r.Settle] = true, true, true
		cpu := num(r.ProxyCPUPer1000, 0)
		if r.AuthCPUPer1000 != nil {
			cpu += fmt.Sprintf(" (+%.0f auth)", *r.AuthCPUPer1000)
		}
		noop := "–"
		if r.Noop.Count > 0 {
			noop = fmt.Sprintf("%.1f", r.Noop.P99)
			if r.NoopFailed > 0 {
				noop += fmt.Sprintf(" (%d failed)", r.NoopFailed)
			}
		}
		mbps := "–"
		if r.FetchSessions > 0 {
			mbps = fmt.Sprintf("%.0f", r.FetchMBps)
			if r.FetchFailed > 0 {
				mbps += fmt.Sprintf(" (%d failed)", r.FetchFailed)
			}
		}
		fmt.Printf("| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f / %.0f | %.0f |\n",
			r.Label, r.Mode, r.Sessions, r.Established, num(r.PSSPerSess, 1), num(r.RSSPerSess, 1), cpu,
			pair(r.Login), pair(r.Greeting), noop, pair(r.Fetch), mbps, num(r.ProxyCPUPerGB, 0),
			r.HostBusyIdlePct, r.HostBusyLoginPct, r.OtherLoginCPUms)
		for k := range r.TLSVersions {
			tlsSeen[k] = true
		}
		if len(r.Errors) > 0 {
			var ks []string
			for k, v := range r.Errors {
				ks = append(ks, fmt.Sprintf("%s=%d", k, v))
			}
			sort.Strings(ks)
			errs = append(errs, fmt.Sprintf("%s %s N=%d: %s", r.Label, r.Mode, r.Sessions, strings.Join(ks, ", ")))
		}
	}
	fmt.Println()
	fmt.Printf("Machine: %s CPU(s) shared by the load tool, the sink, the auth_http daemon and the proxy; nothing pinned. "+
		"Login rate %s/s, settle %s. KiB/session = (after - before) / established, summed over the proxy's process tree. "+
		"MB = 10^6 B, GB = 10^9 B. \"other CPU\" = machine busy time during the login phase not used by any measured process.\n",
		keys(cpus), keys(rates), keys(settles))
	if len(tlsSeen) > 0 {
		fmt.Printf("\nTLS negotiated: %s (ECDSA P-256 certificate, full handshake per session).\n", keys(tlsSeen))
	}
	for _, e := range errs {
		fmt.Println("\nFailures: " + e)
	}
}

func keys[K comparable](m map[K]bool) string {
	var s []string
	for k := range m {
		s = append(s, fmt.Sprint(k))
	}
	sort.Strings(s)
	return strings.Join(s, ",")
}
