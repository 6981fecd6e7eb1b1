package daemon

import (
	"testing"
	"time"

	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/routing"
)

// waitHashKey polls until the node's replicated table hashes on want.
func waitHashKey(t *testing.T, d *Daemon, want routing.HashKey) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for d.fsm.Table().HashKey() != want {
		if time.Now().After(deadline) {
			t.Fatalf("hash key %s, want %s", d.fsm.Table().HashKey(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// routes.hash_key reaches the replicated table at start and reload; a
// file without it leaves the table's; the master-user separator follows
// each reload.
func TestHashKeyAndMasterSeparatorFromFile(t *testing.T) {
	base := clusterNode + "data_dir: " + t.TempDir() + `
backends: [{id: b1, host: 127.0.0.1, imap_port: 1}]
pools: [{name: main, backends: [b1]}]
routes:
  default_pool: main
`
	parse := func(extra string) *config.Config {
		t.Helper()
		cfg, err := config.Parse([]byte(base + extra))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	d := startCfg(t, parse("  hash_key: domain\n  master_user_separator: \"*\"\n"))
	waitReady(t, d)
	waitHashKey(t, d, routing.HashDomain)
	if got := d.env.MasterSeparator(); got != "*" {
		t.Fatalf("separator %q", got)
	}

	// Without the key: the table keeps it; the separator is switched off.
	none := parse("")
	if err := d.Reload(none); err != nil {
		t.Fatal(err)
	}
	if got := d.env.MasterSeparator(); got != "" {
		t.Fatalf("separator after reload %q", got)
	}
	// The reload seeds in the background; the same seed, run here, has
	// returned once it wrote whatever it writes.
	if err := d.seed(t.Context(), none); err != nil {
		t.Fatal(err)
	}
	if got := d.fsm.Table().HashKey(); got != routing.HashDomain {
		t.Fatalf("a file without hash_key changed the table's to %s", got)
	}

	if err := d.Reload(parse("  hash_key: local\n  master_user_separator: \"%\"\n")); err != nil {
		t.Fatal(err)
	}
	waitHashKey(t, d, routing.HashLocal)
	if got := d.env.MasterSeparator(); got != "%" {
		t.Fatalf("separator after reload %q", got)
	}
	if err := d.Reload(parse("  hash_key: address\n")); err != nil {
		t.Fatal(err)
	}
	waitHashKey(t, d, routing.HashAddress)
}

// A standalone node hashes by its own file.
func TestHashKeyStandalone(t *testing.T) {
	cfg, err := config.Parse([]byte(`
standalone: true
listeners: [{name: imap, protocol: imap, address: "127.0.0.1:0"}]
backends: [{id: b1, host: 127.0.0.1, imap_port: 1}, {id: b2, host: 127.0.0.2, imap_port: 1}]
pools: [{name: main, backends: [b1, b2]}]
routes: {default_pool: main, hash_key: domain}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := startCfg(t, cfg)
	if got := d.static.Table().HashKey(); got != routing.HashDomain {
		t.Fatalf("hash key %s", got)
	}
}
