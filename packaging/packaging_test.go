package packaging

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// unitValues parses a systemd unit into key -> values (a key may repeat).
func unitValues(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: malformed line %q", path, line)
		}
		out[k] = append(out[k], v)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestSystemdUnit(t *testing.T) {
	const path = "systemd/portico.service"
	u := unitValues(t, path)
	one := func(k string) string {
		t.Helper()
		if len(u[k]) != 1 {
			t.Fatalf("%s: want exactly one %s=, have %q", path, k, u[k])
		}
		return u[k][0]
	}
	// 14,000 sessions, two descriptors each, plus the process's own.
	if n, err := strconv.Atoi(one("LimitNOFILE")); err != nil || n < 2*14000+1000 {
		t.Errorf("LimitNOFILE=%s: too low for 14,000 sessions", one("LimitNOFILE"))
	}
	// Batches the Go runtime monitor's wake-ups (bench/RESULTS.md); more
	// than a few milliseconds would start to show in timers.
	if ts := one("TimerSlackNSec"); ts != "1ms" {
		t.Errorf("TimerSlackNSec=%s: want 1ms", ts)
	}
	if usr := one("User"); usr == "" || usr == "root" || usr == "0" {
		t.Errorf("User=%q: must not run as root", usr)
	}
	need := []string{"CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_NET_RAW"}
	for _, k := range []string{"AmbientCapabilities", "CapabilityBoundingSet"} {
		have := strings.Fields(one(k))
		for _, c := range need {
			if !contains(have, c) {
				t.Errorf("%s lacks %s", k, c)
			}
		}
		if len(have) != len(need) {
			t.Errorf("%s=%s: only %v are needed", k, one(k), need)
		}
	}
	if !strings.Contains(one("ExecStart"), " serve --config ") {
		t.Errorf("ExecStart=%s", one("ExecStart"))
	}
	if !strings.Contains(one("ExecStopPost"), " vip release --config ") {
		t.Errorf("ExecStopPost=%s: a killed process's VIP must be removed", one("ExecStopPost"))
	}
	if !strings.Contains(one("ExecReload"), "-HUP") {
		t.Errorf("ExecReload=%s: reload is SIGHUP", one("ExecReload"))
	}
	if one("ConditionPathExists") != "/etc/portico/portico.yaml" {
		t.Errorf("ConditionPathExists=%s: the unit must not start before it is configured", one("ConditionPathExists"))
	}
	if one("StateDirectory") != "portico" {
		t.Errorf("StateDirectory=%s: data_dir defaults to /var/lib/portico", one("StateDirectory"))
	}

	// systemd's own parser: it reports unknown keys and bad values (and
	// still exits 0 for those, hence the output check).
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze not installed: unit syntax not verified")
		return
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "portico")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "portico.service")
	if err := os.WriteFile(unit, []byte(strings.ReplaceAll(string(raw), "/usr/bin/portico", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", unit).CombinedOutput()
	var ours []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "portico.service") {
			ours = append(ours, l)
		}
	}
	if err != nil || len(ours) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, strings.Join(ours, "\n"))
	}
}

func TestSysctlKeysExist(t *testing.T) {
	const path = "sysctl/90-portico.conf"
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := os.Stat("/proc/sys/net"); err != nil {
		t.Skip("no /proc/sys/net here")
	}
	keys := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("malformed line %q", line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		keys[k] = v
		if _, err := os.Stat("/proc/sys/" + strings.ReplaceAll(k, ".", "/")); err != nil {
			t.Errorf("%s: no such kernel setting here: %v", k, err)
		}
	}
	for _, k := range []string{"net.ipv4.ip_nonlocal_bind", "net.core.somaxconn", "net.ipv4.tcp_max_syn_backlog"} {
		if keys[k] == "" {
			t.Errorf("%s is not set", k)
		}
	}
	if keys["net.ipv4.ip_nonlocal_bind"] != "1" {
		t.Errorf("net.ipv4.ip_nonlocal_bind = %q", keys["net.ipv4.ip_nonlocal_bind"])
	}
	// The listen backlog must absorb a reconnect storm after a failover.
	if n, _ := strconv.Atoi(keys["net.core.somaxconn"]); n < 4096 {
		t.Errorf("net.core.somaxconn = %d", n)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
