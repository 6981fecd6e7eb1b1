package daemon

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/portico-mail/portico/node/throttle"
	"github.com/portico-mail/portico/ops/config"
)

// `portico proxy` (no cluster) throttles locally; a reload changes the
// limits in place, counts kept.
func TestThrottleStandalone(t *testing.T) {
	cfg, err := config.FromProxyFlags(config.ProxyFlags{From: []string{"imap://127.0.0.1:0"}, To: []string{"imap://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Address = "off"
	d := startCfg(t, cfg)
	if d.cluster != nil {
		t.Fatal("proxy mode has a cluster")
	}
	l, ok := d.env.Throttle.(*throttle.Limiter)
	if !ok {
		t.Fatalf("env.Throttle is %T", d.env.Throttle)
	}
	ip := netip.MustParseAddr("198.51.100.7")
	for i := 0; i < 9; i++ {
		l.Failed(ip, "alice")
	}
	if s := l.Blocked(ip, "alice"); s != "" {
		t.Fatalf("blocked after 9 failures with the default limit 10: %s", s)
	}
	next, err := config.FromProxyFlags(config.ProxyFlags{From: []string{"imap://127.0.0.1:0"}, To: []string{"imap://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	lim := 5
	next.Throttle.UserIPLimit = &lim
	next.Admin.Address = "off"
	if err := d.Reload(next); err != nil {
		t.Fatal(err)
	}
	l.Failed(ip, "alice")
	if s := l.Blocked(ip, "alice"); s != throttle.ScopeUserIP {
		t.Errorf("after reload to user_ip_limit 5 and 10 failures: %q", s)
	}
	out, err := cfg.Marshal()
	if err != nil || !strings.Contains(string(out), "throttle:") {
		t.Errorf("print-config lacks the throttle section: %v\n%s", err, out)
	}
}
