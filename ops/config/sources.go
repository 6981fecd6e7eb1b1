package config

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/portico-mail/portico/routing"
	"github.com/portico-mail/portico/routing/source"
	"github.com/portico-mail/portico/routing/source/filesrc"
	"github.com/portico-mail/portico/routing/source/ldapsrc"
	"github.com/portico-mail/portico/routing/source/sqlsrc"
	"github.com/portico-mail/portico/routing/source/syncer"
)

// Source is one directory source (`sources:`): an LDAP directory, a SQL
// database or a popmap file whose user -> server entries the raft leader
// mirrors into the replicated table (routing/source/syncer).
type Source struct {
	Name string `yaml:"name"`
	// Type selects the driver (Drivers): ldap, sql or popmap. Its block
	// (`ldap:`, `sql:`, `popmap:`) configures it.
	Type string `yaml:"type"`
	// Interval: incremental syncs (a full one where the source cannot
	// tell what changed); default 1m.
	Interval Duration `yaml:"interval"`
	// FullInterval: full syncs; default 1h, at least interval.
	FullInterval Duration `yaml:"full_interval"`
	// MaxDeleteShare: a sync that would remove more than this share of
	// the source's rules (and more than one) is refused unless forced;
	// default 0.1.
	MaxDeleteShare *float64 `yaml:"max_delete_share"`
	// WorkShare: the most of a sync's time that the leader spends
	// working on it (reading, diffing, applying its commands); it
	// pauses for the rest (default 0.5; 1: flat out).
	WorkShare *float64 `yaml:"work_share"`
	// Overwrite: the source's entries replace rules the API, this file,
	// an import or another source wrote (default: those stay).
	Overwrite   bool              `yaml:"overwrite"`
	NewBackends SourceNewBackends `yaml:"new_backends"`
	OnMiss      OnMiss            `yaml:"on_miss"`

	LDAP   DriverBlock `yaml:"ldap"`
	SQL    DriverBlock `yaml:"sql"`
	Popmap DriverBlock `yaml:"popmap"`
}

// SourceNewBackends: the backend added for a target naming a host no
// backend has (as Perdition connects to any server its popmap names).
type SourceNewBackends struct {
	// Create: add one (default true); false makes such an entry invalid.
	Create *bool `yaml:"create"`
	// Ports of a backend added for a bare host (defaults 143, 110, 4190;
	// -1 leaves the protocol out).
	IMAPPort  int `yaml:"imap_port"`
	POP3Port  int `yaml:"pop3_port"`
	SievePort int `yaml:"sieve_port"`
	// PortProtocol: the protocol of an explicit port ("host:port"); the
	// backend then serves that protocol only. Default imap.
	PortProtocol string `yaml:"port_protocol"`
	TLS          string `yaml:"tls"`     // default none
	Forward      string `yaml:"forward"` // default none
}

// OnMiss: a login of a user the table has no rule for asks the source.
type OnMiss struct {
	Enabled bool `yaml:"enabled"`
	// Timeout bounds the lookup (the login waits); default 2s.
	Timeout Duration `yaml:"timeout"`
	// PositiveTTL, NegativeTTL: how long an answer is reused; defaults
	// 1m and 30s; 0 is not allowed for neither (use a short TTL).
	PositiveTTL Duration `yaml:"positive_ttl"`
	NegativeTTL Duration `yaml:"negative_ttl"`
}

// Defaults of a source.
const (
	DefaultSourceInterval     = time.Minute
	DefaultSourceFullInterval = time.Hour
	DefaultOnMissTimeout      = 2 * time.Second
	DefaultOnMissPositiveTTL  = time.Minute
	DefaultOnMissNegativeTTL  = 30 * time.Second
)

// DriverConfig is a driver's block, decoded into the driver's own Config
// (strictly: an unknown key is an error) and checked by it.
type DriverConfig interface{ Check() error }

// pathed is a driver block naming files (made relative to the
// configuration file's directory).
type pathed interface{ Paths() []*string }

// Driver is one type of directory source.
type Driver struct {
	newConfig func() DriverConfig
	open      func(DriverConfig, *slog.Logger) (source.Fetcher, error)
}

// DriverOf makes the Driver of a driver package from its Open: the
// package's Config (yaml-tagged, with a Check method) is the block.
func DriverOf[C any, P interface {
	*C
	DriverConfig
}](open func(C, *slog.Logger) (source.Fetcher, error)) Driver {
	return Driver{
		newConfig: func() DriverConfig { return P(new(C)) },
		open:      func(c DriverConfig, log *slog.Logger) (source.Fetcher, error) { return open(*c.(P), log) },
	}
}

// Drivers are the source types, by the name `type:` gives; each reads
// its block of the same name.
var Drivers = map[string]Driver{
	"ldap":   DriverOf(ldapsrc.Open),
	"popmap": DriverOf(filesrc.Open),
	"sql":    DriverOf(sqlsrc.Open),
}

// DriverBlock holds a source's type-specific block, decoded into the
// driver's Config when the block is the source's type's.
type DriverBlock struct {
	Config DriverConfig // nil: not this source's type
	Set    bool         // the block is in the file
}

// UnmarshalYAML implements yaml's older Unmarshaler, whose unmarshal
// function keeps the file's strict decoding (unknown keys are errors).
func (b *DriverBlock) UnmarshalYAML(unmarshal func(any) error) error {
	b.Set = true
	if b.Config == nil {
		return nil // another type's block: reported by validation
	}
	return unmarshal(b.Config)
}

// MarshalYAML implements yaml.Marshaler.
func (b DriverBlock) MarshalYAML() (any, error) { return b.Config, nil }

// IsZero lets omitempty leave out the other types' blocks.
func (b DriverBlock) IsZero() bool { return b.Config == nil }

// UnmarshalYAML reads the type first, to decode its block into the
// type's driver configuration.
func (s *Source) UnmarshalYAML(unmarshal func(any) error) error {
	var probe map[string]any
	if err := unmarshal(&probe); err != nil {
		return err
	}
	type plain Source
	p := plain{}
	typ, _ := probe["type"].(string)
	if d, ok := Drivers[typ]; ok {
		if blk := (*Source)(&p).block(typ); blk != nil {
			blk.Config = d.newConfig()
		}
	}
	if err := unmarshal(&p); err != nil {
		return err
	}
	*s = Source(p)
	return nil
}

// block returns the block of type typ.
func (s *Source) block(typ string) *DriverBlock {
	switch typ {
	case "ldap":
		return &s.LDAP
	case "sql":
		return &s.SQL
	case "popmap":
		return &s.Popmap
	}
	return nil
}

// Driver returns the source's driver configuration.
func (s *Source) Driver() DriverConfig {
	if b := s.block(s.Type); b != nil {
		return b.Config
	}
	return nil
}

// Open opens the source's driver (no connection yet for most drivers).
func (s *Source) Open(log *slog.Logger) (source.Fetcher, error) {
	d, ok := Drivers[s.Type]
	if !ok || s.Driver() == nil {
		return nil, fmt.Errorf("source %s: no driver for type %q", s.Name, s.Type)
	}
	f, err := d.open(s.Driver(), log)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", s.Name, err)
	}
	return f, nil
}

// SyncConfig is the source's syncer configuration.
func (s *Source) SyncConfig() syncer.Config {
	return syncer.Config{Name: s.Name, Type: s.Type, Interval: s.Interval.D(), FullInterval: s.FullInterval.D(),
		MaxDeleteShare: *s.MaxDeleteShare, WorkShare: *s.WorkShare, Overwrite: s.Overwrite, NewBackends: s.newBackends()}
}

// MissSource is the source's on-miss lookup configuration.
func (s *Source) MissSource(f source.Fetcher) syncer.MissSource {
	return syncer.MissSource{Name: s.Name, Fetcher: f, Timeout: s.OnMiss.Timeout.D(), PositiveTTL: s.OnMiss.PositiveTTL.D(),
		NegativeTTL: s.OnMiss.NegativeTTL.D(), NewBackends: s.newBackends()}
}

func (s *Source) newBackends() syncer.NewBackends {
	nb := s.NewBackends
	port := func(p int) int { return max(p, 0) }
	return syncer.NewBackends{Off: nb.Create != nil && !*nb.Create, IMAPPort: port(nb.IMAPPort), POP3Port: port(nb.POP3Port),
		SievePort: port(nb.SievePort), PortProtocol: routing.Protocol(nb.PortProtocol), TLS: routing.TLSMode(nb.TLS), Forward: routing.ForwardMode(nb.Forward)}
}

// resolveSourcePaths makes the driver blocks' relative file names
// relative to base.
func (c *Config) resolveSourcePaths(base string) {
	for i := range c.Sources {
		if p, ok := c.Sources[i].Driver().(pathed); ok {
			for _, f := range p.Paths() {
				if *f != "" && !filepath.IsAbs(*f) {
					*f = filepath.Join(base, *f)
				}
			}
		}
	}
}

func (v *validator) sources() {
	c := v.c
	if len(c.Sources) > 0 && c.Standalone {
		v.errf("sources", "directory sources are mirrored into the replicated table: a standalone node has none")
	}
	names := map[string]bool{}
	types := make([]string, 0, len(Drivers))
	for t := range Drivers {
		types = append(types, t)
	}
	sort.Strings(types)
	for i := range c.Sources {
		s := &c.Sources[i]
		p := fmt.Sprintf("sources[%d]", i)
		switch {
		case s.Name == "":
			v.errf(p+".name", "required")
		case !validSourceName(s.Name):
			v.errf(p+".name", "%q: use 1-64 letters, digits, '-', '_', '.'", s.Name)
		case names[s.Name]:
			v.errf(p+".name", "%q is used by another source", s.Name)
		}
		names[s.Name] = true
		if _, ok := Drivers[s.Type]; !ok {
			if s.Type == "" {
				v.errf(p+".type", "required (one of %s)", strings.Join(types, ", "))
			} else {
				v.errf(p+".type", "%q is not one of %s", s.Type, strings.Join(types, ", "))
			}
		} else if blk := s.block(s.Type); !blk.Set {
			v.errf(p, "type %s needs a %s: block", s.Type, s.Type)
		} else if err := blk.Config.Check(); err != nil {
			v.errf(p+"."+s.Type, "%v", err)
		}
		for _, t := range []string{"ldap", "sql", "popmap"} {
			if t != s.Type && s.block(t).Set {
				v.errf(p+"."+t, "a %s block in a source of type %q", t, s.Type)
			}
		}
		if s.Interval == 0 {
			s.Interval = Duration(DefaultSourceInterval)
		}
		if s.Interval.D() < time.Second || s.Interval.D() > 24*time.Hour {
			v.errf(p+".interval", "%s is outside 1s..24h", s.Interval.D())
		}
		if s.FullInterval == 0 {
			s.FullInterval = Duration(max(DefaultSourceFullInterval, s.Interval.D()))
		}
		if s.FullInterval < s.Interval || s.FullInterval.D() > 30*24*time.Hour {
			v.errf(p+".full_interval", "%s is outside interval (%s)..720h", s.FullInterval.D(), s.Interval.D())
		}
		if s.MaxDeleteShare == nil {
			d := syncer.DefaultMaxDeleteShare
			s.MaxDeleteShare = &d
		} else if *s.MaxDeleteShare <= 0 || *s.MaxDeleteShare > 1 {
			v.errf(p+".max_delete_share", "%g is outside (0, 1] (1: any sync may remove every rule of the source)", *s.MaxDeleteShare)
		}
		if s.WorkShare == nil {
			d := syncer.DefaultWorkShare
			s.WorkShare = &d
		} else if *s.WorkShare < 0.05 || *s.WorkShare > 1 {
			v.errf(p+".work_share", "%g is outside 0.05..1 (1: a sync works flat out, no pause)", *s.WorkShare)
		}
		v.newBackends(p+".new_backends", &s.NewBackends)
		m := &s.OnMiss
		if m.Timeout == 0 {
			m.Timeout = Duration(DefaultOnMissTimeout)
		}
		if m.Timeout.D() < 10*time.Millisecond || m.Timeout.D() > 30*time.Second {
			v.errf(p+".on_miss.timeout", "%s is outside 10ms..30s (a login waits for it)", m.Timeout.D())
		}
		if m.PositiveTTL == 0 {
			m.PositiveTTL = Duration(DefaultOnMissPositiveTTL)
		}
		if m.NegativeTTL == 0 {
			m.NegativeTTL = Duration(DefaultOnMissNegativeTTL)
		}
		if m.PositiveTTL.D() > 24*time.Hour || m.NegativeTTL.D() > 24*time.Hour {
			v.errf(p+".on_miss", "positive_ttl and negative_ttl must be at most 24h")
		}
	}
}

func (v *validator) newBackends(p string, nb *SourceNewBackends) {
	if nb.Create == nil {
		on := true
		nb.Create = &on
	}
	dflt := func(port *int, d int, name string) {
		switch {
		case *port == 0:
			*port = d
		case *port < -1 || *port > 65535:
			v.errf(p+"."+name, "%d is not a port (-1: none)", *port)
		}
	}
	dflt(&nb.IMAPPort, 143, "imap_port")
	dflt(&nb.POP3Port, 110, "pop3_port")
	dflt(&nb.SievePort, 4190, "sieve_port")
	if nb.IMAPPort < 0 && nb.POP3Port < 0 && nb.SievePort < 0 {
		v.errf(p, "every port is -1: a backend needs one")
	}
	v.choice(p+".port_protocol", &nb.PortProtocol, "imap", "imap", "pop3", "sieve")
	v.choice(p+".tls", &nb.TLS, "none", "none", "starttls", "implicit")
	v.choice(p+".forward", &nb.Forward, "none", "none", "id", "proxy")
}

// validSourceName: a source's name is a metric label, a CLI argument and
// part of its rules' tag.
func validSourceName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// OnMissSources returns the sources whose on-miss lookup is on.
func (c *Config) OnMissSources() []*Source {
	var out []*Source
	for i := range c.Sources {
		if c.Sources[i].OnMiss.Enabled {
			out = append(out, &c.Sources[i])
		}
	}
	return out
}
