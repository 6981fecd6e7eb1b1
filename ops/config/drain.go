package config

import "github.com/portico-mail/portico/node"

// Drain configures how sessions end when the node drains (`portico
// drain`, SIGTERM) after shutdown_grace: each at a response boundary,
// spread over a window.
type Drain struct {
	// Spread: sessions still open after shutdown_grace are ended evenly
	// spread over this window, so that their clients do not all reconnect
	// to the other nodes at once; default node.DefaultConfig's EndSpread,
	// 0s for all at once.
	Spread *Duration `yaml:"spread"`
	// BoundaryTimeout bounds the wait for a session's response boundary
	// (a long FETCH in flight), after which it is closed anyway; default
	// node.DefaultConfig's EndTimeout.
	BoundaryTimeout Duration `yaml:"boundary_timeout"`
}

func (v *validator) drain() {
	d := &v.c.Drain
	def := node.DefaultConfig()
	if d.Spread == nil {
		s := Duration(def.EndSpread)
		d.Spread = &s
	} else if *d.Spread < 0 {
		v.errf("drain.spread", "must not be negative")
	}
	if d.BoundaryTimeout == 0 {
		d.BoundaryTimeout = Duration(def.EndTimeout)
	} else if d.BoundaryTimeout < 0 {
		v.errf("drain.boundary_timeout", "must be positive")
	}
	if v.c.ShutdownGrace < 0 {
		v.errf("shutdown_grace", "must not be negative")
	}
}
