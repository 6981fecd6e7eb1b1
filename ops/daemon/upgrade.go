package daemon

import (
	"context"
	"net/http"
	"time"

	"github.com/portico-mail/portico/ops/admin"
	"github.com/portico-mail/portico/ops/config"
	"github.com/portico-mail/portico/ops/upgrade"
	"github.com/portico-mail/portico/vip"
)

// setupUpgrade wires the in-place upgrade (package upgrade) to the node:
// its listeners, admin socket, cluster identity, VIP and routing table.
func (d *Daemon) setupUpgrade(o Options) {
	uc := upgrade.Config{
		Executable: o.Executable, Args: o.Args,
		Settings: func() config.Upgrade { return d.conf().Upgrade },
		Server:   d.srv,
		Sessions: d.engine.Len,
		Go:       d.group.GoLate, // the retirement ends sessions while the proxy drains
		Log:      d.Log,
		Secrets:  d.ticketSecrets,
	}
	if d.admin != nil {
		uc.Admin = d.admin
	}
	if d.cluster != nil {
		uc.Cluster = d.cluster
	}
	if d.vip != nil {
		uc.VIP = d.vip.m
		if sp := d.vip.spread; sp != nil {
			uc.VIP = spreadUpgradeVIP{Manager: d.vip.m, sp: sp}
		}
	}
	if fsm := d.fsm; fsm != nil {
		uc.TableIndex = func() (uint64, bool) {
			if fsm.Loaded() && fsm.IndexKnown() {
				return fsm.AppliedIndex(), true
			}
			return 0, false
		}
	}
	d.upgrade = upgrade.New(uc)
	if d.admin == nil {
		return
	}
	d.admin.HandleFunc("POST /v1/upgrade", func(w http.ResponseWriter, r *http.Request) {
		res, err := d.Upgrade(r.Context())
		if err != nil {
			admin.Error(w, http.StatusServiceUnavailable, "upgrade: "+err.Error())
			return
		}
		admin.JSON(w, http.StatusOK, res)
	})
}

// spreadUpgradeVIP is the spread mode's side of an in-place upgrade
// (upgrade.LeasedVIP): a node that is not kept on its lease has its
// addresses moved to other nodes first (vip.Spread.Leave).
type spreadUpgradeVIP struct {
	*vip.Manager
	sp *vip.Spread
}

func (v spreadUpgradeVIP) Release(timeout time.Duration) error {
	v.sp.Leave(timeout)
	return nil
}

func (v spreadUpgradeVIP) LeaseUntil() time.Time { return v.sp.LeaseUntil() }

// Upgrade starts an in-place upgrade (upgrade.Upgrader.Upgrade).
func (d *Daemon) Upgrade(ctx context.Context) (upgrade.Result, error) { return d.upgrade.Upgrade(ctx) }

// Retired is closed when, after an in-place upgrade, this process has
// finished its sessions and should exit (Shutdown, then exit with status
// 1 if UpgradeFailed).
func (d *Daemon) Retired() <-chan struct{} { return d.upgrade.Retired() }

// UpgradeFailed: the new process failed after taking the cluster identity.
func (d *Daemon) UpgradeFailed() bool { return d.upgrade.Failed() }
