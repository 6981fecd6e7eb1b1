package config

import (
	"fmt"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/portico-mail/portico/node/auth"
)

// Auth chooses how logins are decided: `passthrough` (the routing table
// says where, the backend checks the password) or `http` (an nginx
// auth_http server decides). Globally, or per listener (a listener's
// section replaces the global one as a whole).
type Auth struct {
	Mode    string     `yaml:"mode"`    // passthrough (default) or http
	URL     string     `yaml:"url"`     // http://host[:port]/uri or unix:/path[:/uri]
	Headers HeaderList `yaml:"headers"` // extra request headers, in order (auth_http_header)
	Timeout Duration   `yaml:"timeout"` // whole exchange; default auth.DefaultClientConfig's (auth_http_timeout)
	// KeepAlive: persistent HTTP/1.1 connections instead of nginx's
	// HTTP/1.0 connection per request.
	KeepAlive bool `yaml:"keepalive"`
	// RelaxedLimits lifts nginx's limits: Auth-Server may be a host name,
	// and answers may be up to max_response bytes.
	RelaxedLimits bool `yaml:"relaxed_limits"`
	MaxResponse   int  `yaml:"max_response"` // with relaxed_limits; default auth.RelaxedMaxResponse then, else auth.DefaultMaxResponse
	// BackendForward: how the client address reaches a backend given as an
	// address in Auth-Server (none, id, proxy); default none, as nginx.
	// A backend given by id uses its own setting.
	BackendForward string    `yaml:"backend_forward"`
	Cache          AuthCache `yaml:"cache"`
}

// AuthCache configures the auth_http result cache.
type AuthCache struct {
	PositiveTTL Duration  `yaml:"positive_ttl"` // default 0: off
	NegativeTTL *Duration `yaml:"negative_ttl"` // default auth.DefaultCacheConfig's; 0: off
	MaxEntries  int       `yaml:"max_entries"`  // default auth.DefaultCacheConfig's
}

// HeaderList is a YAML mapping of header names to values whose order is
// kept (nginx sends auth_http_header lines in configuration order).
type HeaderList []auth.Header

// UnmarshalYAML implements yaml.Unmarshaler.
func (h *HeaderList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.MappingNode {
		return fmt.Errorf("line %d: headers: want a mapping of header name to value", n.Line)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if v.Kind != yaml.ScalarNode {
			return fmt.Errorf("line %d: header %s: the value must be a string", v.Line, k.Value)
		}
		*h = append(*h, auth.Header{Name: k.Value, Value: v.Value})
	}
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (h HeaderList) MarshalYAML() (any, error) {
	n := &yaml.Node{Kind: yaml.MappingNode}
	for _, hd := range h {
		n.Content = append(n.Content,
			&yaml.Node{Kind: yaml.ScalarNode, Value: hd.Name},
			&yaml.Node{Kind: yaml.ScalarNode, Value: hd.Value, Style: yaml.DoubleQuotedStyle})
	}
	return n, nil
}

// IsHTTP reports whether the section selects auth_http.
func (a *Auth) IsHTTP() bool { return a != nil && a.Mode == "http" }

// ListenerAuth returns listener i's effective auth section: its own, else
// the global one (nil means passthrough).
func (c *Config) ListenerAuth(i int) *Auth {
	if a := c.Listeners[i].Auth; a != nil {
		return a
	}
	return c.Auth
}

// authSections validates the global and per-listener auth sections.
func (v *validator) authSections() {
	if v.c.Auth != nil {
		v.auth("auth", v.c.Auth)
	}
	for i := range v.c.Listeners {
		if a := v.c.Listeners[i].Auth; a != nil {
			v.auth(fmt.Sprintf("listeners[%d].auth", i), a)
		}
	}
}

func (v *validator) auth(p string, a *Auth) {
	if a.Mode == "" {
		a.Mode = "passthrough"
	}
	switch a.Mode {
	case "passthrough":
		if a.URL != "" || len(a.Headers) > 0 || a.Timeout != 0 || a.KeepAlive || a.RelaxedLimits ||
			a.MaxResponse != 0 || a.BackendForward != "" || a.Cache != (AuthCache{}) {
			v.errf(p, "mode passthrough takes no other settings (url, headers, cache... are for mode http)")
		}
		return
	case "http":
	default:
		v.errf(p+".mode", "%q is not one of passthrough, http", a.Mode)
		return
	}
	if a.URL == "" {
		v.errf(p+".url", "required with mode http (http://host:port/uri or unix:/path[:/uri])")
	} else if _, _, _, _, err := auth.ParseURL(a.URL); err != nil {
		v.errf(p+".url", "%v", err)
	}
	for _, h := range a.Headers {
		if err := auth.CheckHeader(h.Name, h.Value); err != nil {
			v.errf(p+".headers", "%v", err)
		}
	}
	if a.Timeout == 0 {
		a.Timeout = Duration(auth.DefaultClientConfig().Timeout)
	} else if a.Timeout.D() < 10*time.Millisecond || a.Timeout.D() > 10*time.Minute {
		v.errf(p+".timeout", "%s is outside 10ms..10m", a.Timeout.D())
	}
	switch {
	case a.MaxResponse != 0 && !a.RelaxedLimits:
		v.errf(p+".max_response", "nginx reads at most 1024 bytes; a larger limit needs relaxed_limits: true")
	case a.MaxResponse != 0 && (a.MaxResponse < auth.DefaultMaxResponse || a.MaxResponse > 1<<20):
		v.errf(p+".max_response", "%d is outside 1024..1048576", a.MaxResponse)
	case a.MaxResponse == 0 && a.RelaxedLimits:
		a.MaxResponse = auth.RelaxedMaxResponse
	case a.MaxResponse == 0:
		a.MaxResponse = auth.DefaultClientConfig().MaxResponse
	}
	v.choice(p+".backend_forward", &a.BackendForward, "none", "none", "id", "proxy")
	if a.Cache.MaxEntries < 0 || a.Cache.MaxEntries > 10_000_000 {
		v.errf(p+".cache.max_entries", "%d is outside 0..10000000", a.Cache.MaxEntries)
	}
	if a.Cache.PositiveTTL.D() > time.Hour {
		v.errf(p+".cache.positive_ttl", "%s is over 1h: a changed password or route would be ignored that long", a.Cache.PositiveTTL.D())
	}
	if a.Cache.NegativeTTL != nil && a.Cache.NegativeTTL.D() > time.Hour {
		v.errf(p+".cache.negative_ttl", "%s is over 1h", a.Cache.NegativeTTL.D())
	}
}
