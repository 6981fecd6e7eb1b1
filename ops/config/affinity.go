package config

import (
	"time"

	"github.com/portico-mail/portico/node/affinity"
)

// Affinity configures the users' affinity in shared_storage pools
// (node/affinity): while a user has sessions, and for expire after the
// last one ended, its new sessions go to the backend those use.
type Affinity struct {
	// Expire: how long a user stays on a backend after its last session
	// there ended (Dovecot's director_user_expire); default 15m.
	Expire Duration `yaml:"expire"`
	// MaxEntries caps the bindings kept in memory; default 200000.
	MaxEntries int `yaml:"max_entries"`
}

func (v *validator) affinity() {
	a := &v.c.Affinity
	def := affinity.DefaultConfig()
	if a.Expire == 0 {
		a.Expire = Duration(def.Expire)
	} else if a.Expire.D() < time.Second || a.Expire.D() > 7*24*time.Hour {
		v.errf("affinity.expire", "%s is outside 1s..168h", a.Expire.D())
	}
	if a.MaxEntries == 0 {
		a.MaxEntries = def.MaxEntries
	} else if a.MaxEntries < 1000 || a.MaxEntries > 10_000_000 {
		v.errf("affinity.max_entries", "%d is outside 1000..10000000", a.MaxEntries)
	}
}
