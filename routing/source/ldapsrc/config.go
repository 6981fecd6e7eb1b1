package ldapsrc

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// Config is an LDAP source's block (`ldap:` under a source).
type Config struct {
	// URL is the directory: ldap://host[:389], ldaps://host[:636], or
	// ldapi://<percent-encoded socket path> (a local slapd).
	URL string `yaml:"url"`
	// StartTLS upgrades an ldap:// connection with the StartTLS extended
	// operation before binding (RFC 4513 section 3).
	StartTLS bool `yaml:"start_tls"`
	// CAFile is a PEM bundle to verify the directory's certificate with,
	// instead of the system roots (ldaps:// or start_tls).
	CAFile string `yaml:"ca_file"`
	// InsecureSkipVerify accepts any certificate: the bind password then
	// goes to whoever answers. Discouraged; for a test directory only.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
	// BindDN and its password (inline or, better, in a file whose
	// trailing newline is ignored); without BindDN the searches are
	// anonymous.
	BindDN           string `yaml:"bind_dn"`
	BindPassword     string `yaml:"bind_password"`
	BindPasswordFile string `yaml:"bind_password_file"`
	// Base is the search base, searched with its whole subtree.
	Base string `yaml:"base"`
	// Filter selects the user entries (RFC 4515); default
	// "(<target_attribute>=*)", the entries that name a mail server.
	Filter string `yaml:"filter"`
	// UserAttribute holds the login name (default uid; mail is the
	// other common choice); TargetAttribute where the user lives (default
	// mailHost, as Perdition's and Dovecot's LDAP maps read it): a
	// backend id, "pool:NAME", host or host:port.
	UserAttribute   string `yaml:"user_attribute"`
	TargetAttribute string `yaml:"target_attribute"`
	// LoginAttribute, if set, holds the name to log in to the backend
	// with (Perdition's "user: newname@host"); an entry without it keeps
	// the client's name.
	LoginAttribute string `yaml:"login_attribute"`
	// PageSize is the Simple Paged Results page size of a full or
	// incremental sync (RFC 2696); default 500, OpenLDAP's default size
	// limit.
	PageSize int `yaml:"page_size"`
	// Timeout bounds each step: connecting (with TLS and bind), each page
	// of a sync, a lookup; default 10s.
	Timeout time.Duration `yaml:"timeout"`
	// ChangesOverlap is how far before the newest modifyTimestamp an
	// incremental sync seen the next one starts, besides the sync's own
	// duration: room for replication delay and clock skew between the
	// directory's providers. Default 5m; entries changed in that window
	// are read again (harmlessly: the syncer writes only differences).
	ChangesOverlap time.Duration `yaml:"changes_overlap"`
}

// Defaults.
const (
	DefaultUserAttribute   = "uid"
	DefaultTargetAttribute = "mailHost"
	DefaultPageSize        = 500
	DefaultTimeout         = 10 * time.Second
	DefaultChangesOverlap  = 5 * time.Minute
	// maxPageSize bounds the page size: a page is held in memory.
	maxPageSize = 100000
)

// attrRE is an attribute description (RFC 4512 section 2.5): a name or
// an OID, with options.
var attrRE = regexp.MustCompile(`^(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)+)(?:;[A-Za-z0-9-]+)*$`)

// Check validates the block and fills in the defaults. Its messages name
// the key at fault.
func (c *Config) Check() error {
	if c.URL == "" {
		return errors.New("url: required (ldap://host, ldaps://host or ldapi://socket)")
	}
	u, err := url.Parse(c.URL)
	if err != nil && !strings.HasPrefix(c.URL, "ldapi://") {
		return fmt.Errorf("url: %v", err)
	}
	scheme := strings.ToLower(strings.SplitN(c.URL, "://", 2)[0])
	switch scheme {
	case "ldap", "ldaps":
		if u.User != nil {
			return errors.New("url: no user or password in the URL: use bind_dn and bind_password_file")
		}
		if u.Hostname() == "" {
			return fmt.Errorf("url %q: no host", c.URL)
		}
		if p := u.Port(); p != "" {
			if _, err := net.LookupPort("tcp", p); err != nil {
				return fmt.Errorf("url %q: bad port", c.URL)
			}
		}
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
			return fmt.Errorf("url %q: the base and filter are keys of their own (base, filter), not part of the URL", c.URL)
		}
	case "ldapi":
	default:
		return fmt.Errorf("url %q: the scheme must be ldap, ldaps or ldapi", c.URL)
	}
	if c.StartTLS && scheme != "ldap" {
		return fmt.Errorf("start_tls: only with an ldap:// url (%s is %s)", c.URL,
			map[string]string{"ldaps": "TLS already", "ldapi": "a local socket"}[scheme])
	}
	tlsUsed := scheme == "ldaps" || c.StartTLS
	if c.CAFile != "" && !tlsUsed {
		return errors.New("ca_file: set, but the connection does not use TLS (ldaps:// or start_tls)")
	}
	if c.InsecureSkipVerify && !tlsUsed {
		return errors.New("insecure_skip_verify: set, but the connection does not use TLS (ldaps:// or start_tls)")
	}
	if c.InsecureSkipVerify && c.CAFile != "" {
		return errors.New("insecure_skip_verify: set with ca_file: choose one (ca_file verifies, this does not)")
	}
	if c.BindPassword != "" && c.BindPasswordFile != "" {
		return errors.New("bind_password and bind_password_file: set one, not both")
	}
	if c.BindDN == "" && (c.BindPassword != "" || c.BindPasswordFile != "") {
		return errors.New("bind_dn: required with a bind password")
	}
	if c.BindDN != "" {
		if _, err := ldap.ParseDN(c.BindDN); err != nil {
			return fmt.Errorf("bind_dn %q: %v", c.BindDN, err)
		}
		if c.BindPassword == "" && c.BindPasswordFile == "" {
			// An empty password is an unauthenticated bind (RFC 4513
			// section 5.1.2): the directory would accept it as anonymous.
			return errors.New("bind_password or bind_password_file: required with bind_dn")
		}
	}
	if c.Base == "" {
		return errors.New("base: required (the search base, e.g. ou=people,dc=example,dc=org)")
	}
	if _, err := ldap.ParseDN(c.Base); err != nil {
		return fmt.Errorf("base %q: %v", c.Base, err)
	}
	if c.UserAttribute == "" {
		c.UserAttribute = DefaultUserAttribute
	}
	if c.TargetAttribute == "" {
		c.TargetAttribute = DefaultTargetAttribute
	}
	for _, a := range []struct{ key, val string }{
		{"user_attribute", c.UserAttribute},
		{"target_attribute", c.TargetAttribute},
		{"login_attribute", c.LoginAttribute},
	} {
		if a.val != "" && !attrRE.MatchString(a.val) {
			return fmt.Errorf("%s %q: not an attribute name", a.key, a.val)
		}
	}
	if strings.EqualFold(c.UserAttribute, c.TargetAttribute) {
		return fmt.Errorf("target_attribute %q: the same as user_attribute", c.TargetAttribute)
	}
	if c.Filter == "" {
		c.Filter = "(" + c.TargetAttribute + "=*)"
	}
	if !strings.HasPrefix(strings.TrimSpace(c.Filter), "(") {
		return fmt.Errorf("filter %q: must be in parentheses, e.g. (objectClass=inetOrgPerson)", c.Filter)
	}
	if _, err := ldap.CompileFilter(c.Filter); err != nil {
		return fmt.Errorf("filter %q: %v", c.Filter, err)
	}
	switch {
	case c.PageSize == 0:
		c.PageSize = DefaultPageSize
	case c.PageSize < 0 || c.PageSize > maxPageSize:
		return fmt.Errorf("page_size %d: between 1 and %d", c.PageSize, maxPageSize)
	}
	switch {
	case c.Timeout == 0:
		c.Timeout = DefaultTimeout
	case c.Timeout < 0:
		return fmt.Errorf("timeout %v: must be positive", c.Timeout)
	}
	switch {
	case c.ChangesOverlap == 0:
		c.ChangesOverlap = DefaultChangesOverlap
	case c.ChangesOverlap < 0:
		return fmt.Errorf("changes_overlap %v: must be positive", c.ChangesOverlap)
	}
	return nil
}

// Paths lists the block's file names, for the configuration to make
// relative names relative to its own directory.
func (c *Config) Paths() []*string { return []*string{&c.CAFile, &c.BindPasswordFile} }

// password returns the bind password, read from its file if need be.
func (c *Config) password() (string, error) {
	if c.BindPasswordFile == "" {
		return c.BindPassword, nil
	}
	b, err := os.ReadFile(c.BindPasswordFile)
	if err != nil {
		return "", fmt.Errorf("bind_password_file: %w", err)
	}
	p := strings.TrimRight(string(b), "\r\n")
	if p == "" {
		return "", fmt.Errorf("bind_password_file %s: empty", c.BindPasswordFile)
	}
	return p, nil
}

// server names the directory in errors and logs: scheme and host, never
// more of the URL.
func (c *Config) server() string {
	if strings.HasPrefix(strings.ToLower(c.URL), "ldapi://") {
		return c.URL
	}
	u, err := url.Parse(c.URL)
	if err != nil {
		return "ldap"
	}
	return u.Scheme + "://" + u.Host
}
