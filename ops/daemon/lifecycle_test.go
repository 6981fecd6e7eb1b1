package daemon

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"net/http"
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

func post(t *testing.T, d *Daemon, path, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", "http://"+d.AdminAddr().String()+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer s3cret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// Bad calls to the lifecycle API get clear errors and change nothing.
func TestLifecycleAPIBadInput(t *testing.T) {
	d := startNode(t, clusterNode+"data_dir: "+t.TempDir()+"\nbackends: [{id: b1, host: 127.0.0.1, imap_port: 1}]\n")
	waitReady(t, d)
	for _, c := range []struct {
		path, body string
		code       int
		want       string
	}{
		{"/v1/drain?cancel=1", "", 409, "not draining"},
		{"/v1/reload", "", 422, "no configuration file"},
	} {
		code, body := post(t, d, c.path, c.body)
		if code != c.code || !strings.Contains(body, c.want) || !strings.Contains(body, `"error"`) {
			t.Errorf("POST %s %q: %d %s, want %d with %q", c.path, c.body, code, body, c.code, c.want)
		}
	}
	// Node-to-node calls are not on the admin API (they run over the
	// cluster's mutual TLS), even with the operator's token.
	for _, path := range []string{"/v1/internal/hold-elections", "/v1/internal/apply"} {
		if code, body := post(t, d, path, `{"ms": 60000}`); code != 404 {
			t.Errorf("POST %s on the admin API: %d %s, want 404", path, code, body)
		}
	}
	if d.Draining() || d.srv.Paused() {
		t.Error("a bad call changed the node's state")
	}
	// Without the token: 401.
	req, _ := http.NewRequest("POST", "http://"+d.AdminAddr().String()+"/v1/drain", nil)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || d.Draining() {
		t.Errorf("drain without a token: %d, draining %v", resp.StatusCode, d.Draining())
	}
}
