package daemon

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
)

// setupAdmin builds the admin listener from cfg.Admin (nothing when it is
// "off") with its reload stage: admin.allowed_hosts and the admin TLS
// certificate change in place; the rest of the admin section needs a
// restart (restartRequired).
func (d *Daemon) setupAdmin(cfg *config.Config, o Options) error {
	a := cfg.Admin
	if a.Address == "off" {
		return nil
	}
	srv, err := admin.New(a.AdminConfig(), d.Log)
	if err != nil {
		return err
	}
	d.admin = srv
	d.onClose(func(context.Context) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	if o.Inherit != nil {
		d.admin.Inherit = o.Inherit.Admin
	}
	if host, _, err := net.SplitHostPort(a.Address); err == nil && a.TLS == nil && !config.Loopback(host) {
		d.Log.Warn("the admin API is on a non-loopback address without TLS: its bearer token crosses the network in cleartext (set admin.tls)",
			"address", a.Address)
	}
	d.admin.HandlePublic("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		admin.JSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}))
	d.onReload(func(next *config.Config) (func(), error) {
		na := next.Admin
		if na.Address == "off" {
			return nil, nil // a restart turns it off (restartRequired)
		}
		for _, h := range na.AllowedHosts {
			if _, _, err := admin.ParseHost(h); err != nil {
				return nil, err
			}
		}
		var cert *tls.Certificate
		if na.TLS != nil && d.admin.TLS() {
			c, err := admin.LoadKeyPair(na.TLS.CertFile, na.TLS.KeyFile)
			if err != nil {
				return nil, err
			}
			cert = c
		}
		return func() {
			_ = d.admin.SetAllowedHosts(na.AllowedHosts)
			if cert != nil {
				_ = d.admin.SetCertificate(cert)
			}
		}, nil
	})
	return nil
}

// adminRestartView is the part of the admin section that only a restart
// changes: all but allowed_hosts and the certificate and key files, which a
// reload applies.
func adminRestartView(a config.Admin) config.Admin {
	a.AllowedHosts = nil
	if a.TLS != nil {
		t := *a.TLS
		t.CertFile, t.KeyFile = "", ""
		a.TLS = &t
	}
	return a
}

// advertiseAPI returns the admin API address the cluster gossips for
// this node (shown by `portico cluster members` and `cluster leader`):
// host:port, with https:// in front when the listener serves TLS. The
// listener accepts it in the Host header, which matters when peers reach
// it through an address this host does not have (NAT).
func (d *Daemon) advertiseAPI(adv string) string {
	api := advertised(d.admin.Addr().String(), adv)
	if host, _, err := net.SplitHostPort(api); err == nil {
		if ip, err := netip.ParseAddr(host); err != nil || !ip.IsUnspecified() {
			_ = d.admin.AllowHost(api)
		}
	}
	if d.admin.TLS() {
		return "https://" + api
	}
	return api
}
