package daemon

import (
	"bufio"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/ops/config"
)

func proxyCfg(t *testing.T, level string, maxConns int) *config.Config {
	t.Helper()
	cfg, err := config.FromProxyFlags(config.ProxyFlags{From: []string{"imap://127.0.0.1:0"}, To: []string{"imap://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	cfg.Admin.Address = "off"
	cfg.Log.Level = level
	cfg.Limits.MaxConnections = maxConns
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// greet connects and returns the first line the server sends.
func greet(t *testing.T, addr string) (string, net.Conn) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return line, c
}

// Reload changes the log level and the connection limits of a running
// node; a connection open before keeps working.
func TestReloadLogLevelAndLimits(t *testing.T) {
	d := startCfg(t, proxyCfg(t, "info", 0))
	if d.level.Level() != slog.LevelInfo {
		t.Fatalf("level %v", d.level.Level())
	}
	var name, addr string
	for n, a := range d.srv.Addrs() {
		name, addr = n, a.String()
	}
	first, c1 := greet(t, addr)
	defer c1.Close()
	if !strings.HasPrefix(first, "* OK") {
		t.Fatalf("greeting %q", first)
	}
	if err := d.Reload(proxyCfg(t, "debug", 1)); err != nil {
		t.Fatal(err)
	}
	if d.level.Level() != slog.LevelDebug {
		t.Errorf("after reload the level is %v, want debug", d.level.Level())
	}
	// One connection is open: with max_connections 1 the next is refused.
	second, c2 := greet(t, addr)
	defer c2.Close()
	if !strings.Contains(second, "Too many connections") {
		t.Errorf("over the reloaded limit: %q", second)
	}
	if _, err := c1.Write([]byte("a NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	if addr2 := d.Addr(name).String(); addr2 != addr {
		t.Errorf("the listener was rebound (%s -> %s) though its address did not change", addr, addr2)
	}
}
