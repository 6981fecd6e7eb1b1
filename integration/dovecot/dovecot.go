// Package dovecot starts a real Dovecot 2.3 IMAP/POP3 server for tests and
// demos: one foreground process per instance, from a configuration written
// into its own temporary directory, listening on a 127.0.0.x address, or
// on an address of a network namespace (Options.Netns, for the failover
// drills' backend hosts; see integration/netns).
//
// Tests call Start, which skips the test when Dovecot cannot be run here
// (unless PORTICO_REQUIRE_DOVECOT=1, then it fails). Programs call
// StartProcess and Stop themselves.
//
// What this configuration relies on (Dovecot 2.3.19, Debian 12):
//
//   - login_trusted_networks = 127.0.0.0/8 lets a client connecting from the
//     loopback range (a proxy under test) override the client address it is
//     logged and authenticated with: IMAP through "ID (x-originating-ip ...
//     x-originating-port ...)" before LOGIN/AUTHENTICATE, POP3 through the
//     XCLIENT command ("XCLIENT ADDR=<ip> PORT=<port>" before USER/AUTH),
//     which Dovecot's pop3-login implements for trusted networks only and
//     announces as "+OK [XCLIENT] ..." in the greeting. No other setting is
//     needed for either. The "Login:" log line then shows rip=<that address>.
//   - Dovecot applies an "auth penalty" per client IP (tracked by its anvil
//     process): after a failed login from an IP that is not itself a trusted
//     connection (for example an address forwarded by a proxy), the next
//     authentication from that IP waits 4 s, then 8 s, up to 15 s. That makes
//     tests of failed logins through a proxy slow and flaky, so it is
//     disabled by default: the anvil-auth-penalty listener gets mode = 0,
//     which makes Dovecot not create that socket, and the auth process then
//     silently runs without penalties. Set Options.AuthPenalty to keep it.
//   - auth_failure_delay = 0 is accepted, but Dovecot 2.3.19 still checks its
//     queue of failed authentications every 500 ms, so a wrong password is
//     answered after up to ~0.5 s (instead of the default 2 s).
//   - The directory holding the configuration and the users file must be
//     world-traversable (0755): the auth process runs as user "dovecot".
//   - Mail is owned by an unprivileged system user (MailUser), created with
//     useradd when missing: Dovecot refuses uid 0.
package dovecot

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/internal/daemon"
	"github.com/portico-mail/portico/integration/netns"
	"github.com/portico-mail/portico/integration/testcert"
)

// EnvRequire is the environment variable that turns "Dovecot unavailable"
// from a skipped test into a failed one when set to "1" (CI sets it).
const EnvRequire = "PORTICO_REQUIRE_DOVECOT"

// EnvKeep, when set to "1", keeps the temporary directory of each instance
// (configuration, users, log, mail) after Stop, for debugging.
const EnvKeep = "PORTICO_KEEP_DOVECOT"

// MailUser is the unprivileged system user that owns the test mailboxes.
const MailUser = "portico-mail"

// ErrUnavailable is wrapped by the errors of Available and StartProcess when
// Dovecot cannot be run on this machine at all.
var ErrUnavailable = errors.New("dovecot unavailable")

// DefaultUsers are the users of an instance whose Options.Users is empty.
var DefaultUsers = map[string]string{"alice": "secret", "bob": "secret"}

const defaultStartTimeout = 10 * time.Second

// Options configure one Dovecot instance.
type Options struct {
	// Addr is the IP address to listen on; default "127.0.0.1".
	Addr string
	// IMAPPort and POP3Port are the plain-text (STARTTLS-capable when TLS)
	// listener ports; 0 picks a free port on Addr.
	IMAPPort, POP3Port int
	// Users maps user names (which may contain '@') to passwords; default
	// DefaultUsers.
	Users map[string]string
	// UserFields adds passdb extra fields to users, e.g.
	// {"carol": "allow_nets=10.66.0.0/16"} (space-separated key=value
	// pairs, the last field of a passwd-file line).
	UserFields map[string]string
	// TLS enables ssl = yes with a freshly generated self-signed certificate
	// (Server.CACertPEM, Server.TLSConfig); STARTTLS / STLS are then
	// available on both ports.
	TLS bool
	// ImplicitTLS (implies TLS) also opens IMAPS and POP3S listeners on
	// IMAPSPort and POP3SPort (0 picks a free port).
	ImplicitTLS          bool
	IMAPSPort, POP3SPort int
	// AuthFailureDelay is Dovecot's auth_failure_delay, rounded up to whole
	// seconds (Dovecot refuses milliseconds for it); 0 (the default here,
	// 2 s in Dovecot) answers failed logins as soon as Dovecot can (~0.5 s).
	AuthFailureDelay time.Duration
	// AuthPenalty keeps Dovecot's per-IP auth penalty (see the package
	// documentation); it is disabled by default.
	AuthPenalty bool
	// HAProxy makes every listener require a PROXY protocol header (v1 or v2)
	// from clients in 127.0.0.0/8.
	HAProxy bool
	// MasterUsers maps master user names to passwords (a passdb with
	// master = yes): "user*master" with the master's password logs in to
	// user's mailbox, and so does SASL PLAIN with authorization identity
	// user, authentication identity master. MasterSeparator is Dovecot's
	// auth_master_user_separator; default "*" when MasterUsers is set.
	MasterUsers     map[string]string
	MasterSeparator string
	// ExtraConfig is appended verbatim to the generated dovecot.conf.
	ExtraConfig string
	// OAuth2, if set, adds Dovecot's oauth2 passdb for the OAUTHBEARER
	// and XOAUTH2 mechanisms (offered beside PLAIN and LOGIN, whose
	// passwords the users file still checks), validating each token at a
	// token-introspection endpoint.
	OAuth2 *OAuth2
	// Sieve also runs Pigeonhole's ManageSieve (RFC 5804) on SievePort (0
	// picks a free port), STARTTLS-capable when TLS, with scripts stored
	// under each user's home (sieve = file:~/sieve), which local delivery
	// (Server.Deliver) runs. It needs the Debian package
	// dovecot-managesieved.
	Sieve     bool
	SievePort int
	// StartTimeout bounds the wait for the listeners; default 10 s.
	StartTimeout time.Duration
	// Netns, if set, is the path of a network namespace (e.g.
	// /run/netns/NAME, see integration/netns) to run Dovecot in: the master
	// process is started from a thread switched into it, and the port
	// picking and readiness checks dial from inside it. Addr must be an
	// address of that namespace.
	Netns string
	// TrustedNetworks are Dovecot's login_trusted_networks (and
	// haproxy_trusted_networks with HAProxy): the proxies whose forwarded
	// client address is honoured; default 127.0.0.0/8.
	TrustedNetworks []string
}

// OAuth2 configures Dovecot's oauth2 passdb (Dovecot 2.3's
// dovecot-oauth2.conf.ext keys). Verified on 2.3.19 with introspection
// mode post: Dovecot POSTs "token=<token>&client_id=&client_secret=" as a
// form and reads a JSON object; the login succeeds when ActiveAttribute
// has ActiveValue and UsernameAttribute equals the user the SASL message
// names (OAUTHBEARER a=, XOAUTH2 user=). Otherwise the client gets the
// error challenge (OAUTHBEARER: {"status":"invalid_token"}; XOAUTH2:
// {"status":"401","schemes":"bearer","scope":"mail"}) and, after its
// dummy response, the failure.
type OAuth2 struct {
	IntrospectionURL  string // introspection_url, e.g. an httptest server's
	IntrospectionMode string // introspection_mode: post (default), get, auth
	UsernameAttribute string // default "username"
	ActiveAttribute   string // default "active"
	ActiveValue       string // default "true"
}

// Server is a running Dovecot instance.
type Server struct {
	Dir        string // temporary directory: dovecot.conf, users, dovecot.log, mail/
	Addr       string // listening IP address
	IMAPAddr   string // host:port of the IMAP listener
	POP3Addr   string // host:port of the POP3 listener
	IMAPSAddr  string // host:port of the IMAPS listener (ImplicitTLS only)
	POP3SAddr  string // host:port of the POP3S listener (ImplicitTLS only)
	IMAPPort   int
	POP3Port   int
	SieveAddr  string // host:port of the ManageSieve listener (Sieve only)
	SievePort  int
	ConfigFile string
	LogFile    string
	// Users are the configured users and their plain-text passwords.
	Users map[string]string

	// TLS material (TLS or ImplicitTLS only).
	CACertPEM         []byte
	CertFile, KeyFile string

	netns   string
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has been reaped
	waitErr error
	output  *daemon.Output

	stopOnce sync.Once
	mu       sync.Mutex
	stopped  bool
	finalLog string
}

// Available reports whether Dovecot can be started here: nil when the dovecot
// and doveadm binaries and Dovecot's own system users exist and this process
// runs as root (needed to start Dovecot, which switches to its unprivileged
// users, and to create MailUser when missing); otherwise an error wrapping
// ErrUnavailable that says what is missing.
func Available() error {
	var missing []string
	if _, err := dovecotBinary(); err != nil {
		missing = append(missing, err.Error())
	}
	if _, err := doveadmBinary(); err != nil {
		missing = append(missing, err.Error())
	}
	for _, u := range []string{"dovecot", "dovenull"} {
		if _, err := user.Lookup(u); err != nil {
			missing = append(missing, fmt.Sprintf("system user %q (created by the dovecot-core package) not found", u))
		}
	}
	if os.Geteuid() != 0 {
		missing = append(missing, fmt.Sprintf("not running as root (euid %d): Dovecot's master process must start as root", os.Geteuid()))
	} else if _, err := user.Lookup(MailUser); err != nil {
		if _, err := lookPath("useradd", "/usr/sbin/useradd", "/sbin/useradd"); err != nil {
			missing = append(missing, fmt.Sprintf("user %q missing and useradd not found", MailUser))
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (on Debian: apt-get install dovecot-imapd dovecot-pop3d, and run as root)",
			ErrUnavailable, strings.Join(missing, "; "))
	}
	return nil
}

// Start starts an instance for a test and stops it in t.Cleanup. When Dovecot
// is unavailable the test is skipped, or failed if PORTICO_REQUIRE_DOVECOT=1.
// If the test failed, the Dovecot log is written to the test log.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	return daemon.Start(t, "dovecot", Available(), EnvRequire,
		func() (*Server, error) { return StartProcess(opts) },
		(*Server).Stop,
		func(s *Server) string { return "(" + s.Dir + ")\n" + s.Log() })
}

// StartProcess starts an instance without a testing.TB; the caller must call
// Stop. It waits until every listener accepts connections.
func StartProcess(opts Options) (*Server, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if !picksPorts(opts) {
		return startOnce(opts)
	}
	// Ports picked here can be taken by someone else before Dovecot binds
	// them: retry with fresh ports in that case.
	return daemon.Retry(func() (*Server, error) { return startOnce(opts) })
}

func picksPorts(o Options) bool {
	return o.IMAPPort == 0 || o.POP3Port == 0 || (o.Sieve && o.SievePort == 0) ||
		(o.ImplicitTLS && (o.IMAPSPort == 0 || o.POP3SPort == 0))
}

func startOnce(opts Options) (s *Server, err error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1"
	}
	ip := net.ParseIP(opts.Addr)
	if ip == nil {
		return nil, fmt.Errorf("dovecot: Addr %q is not an IP address", opts.Addr)
	}
	opts.Addr = ip.String()
	if opts.ImplicitTLS {
		opts.TLS = true
	}
	if len(opts.Users) == 0 {
		opts.Users = DefaultUsers
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultStartTimeout
	}
	if opts.AuthFailureDelay < 0 {
		return nil, fmt.Errorf("dovecot: negative AuthFailureDelay")
	}

	uid, gid, err := ensureMailUser()
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp(tempBase(), "dovecot-")
	if err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}
	defer func() {
		if err != nil && os.Getenv(EnvKeep) != "1" {
			os.RemoveAll(dir)
		}
	}()
	// The auth process (user dovecot) must be able to traverse the directory.
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}

	s = &Server{
		Dir:        dir,
		Addr:       opts.Addr,
		ConfigFile: filepath.Join(dir, "dovecot.conf"),
		LogFile:    filepath.Join(dir, "dovecot.log"),
		Users:      make(map[string]string, len(opts.Users)),
		output:     &daemon.Output{},
		netns:      opts.Netns,
	}
	for u, p := range opts.Users {
		s.Users[u] = p
	}

	ports := []*int{&opts.IMAPPort, &opts.POP3Port}
	if opts.ImplicitTLS {
		ports = append(ports, &opts.IMAPSPort, &opts.POP3SPort)
	}
	if opts.Sieve {
		ports = append(ports, &opts.SievePort)
	}
	var missing []*int
	for _, p := range ports {
		if *p == 0 {
			missing = append(missing, p)
		}
	}
	var picked []int
	err = s.inNetns(func() (err error) {
		picked, err = daemon.FreePorts(opts.Addr, len(missing))
		return err
	})
	if err != nil {
		return nil, err
	}
	for i, p := range missing {
		*p = picked[i]
	}
	s.IMAPPort, s.POP3Port = opts.IMAPPort, opts.POP3Port
	s.IMAPAddr = net.JoinHostPort(opts.Addr, strconv.Itoa(opts.IMAPPort))
	s.POP3Addr = net.JoinHostPort(opts.Addr, strconv.Itoa(opts.POP3Port))
	if opts.ImplicitTLS {
		s.IMAPSAddr = net.JoinHostPort(opts.Addr, strconv.Itoa(opts.IMAPSPort))
		s.POP3SAddr = net.JoinHostPort(opts.Addr, strconv.Itoa(opts.POP3SPort))
	}
	if opts.Sieve {
		s.SievePort = opts.SievePort
		s.SieveAddr = net.JoinHostPort(opts.Addr, strconv.Itoa(opts.SievePort))
	}

	for _, sub := range []string{"run", "state"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o755); err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
		}
	}
	mailDir := filepath.Join(dir, "mail")
	if err := os.Mkdir(mailDir, 0o755); err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}
	if err := os.Chown(mailDir, uid, gid); err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}

	if opts.TLS {
		hosts := []string{"localhost", "127.0.0.1"}
		if opts.Addr != "127.0.0.1" {
			hosts = append(hosts, opts.Addr)
		}
		s.CertFile, s.KeyFile, s.CACertPEM, err = testcert.Write(dir, hosts...)
		if err != nil {
			return nil, err
		}
	}

	// doveadm needs some configuration to read; an empty one will do.
	emptyConf := filepath.Join(dir, "doveadm.conf")
	if err := os.WriteFile(emptyConf, nil, 0o644); err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}
	var users bytes.Buffer
	names := make([]string, 0, len(opts.Users))
	for u := range opts.Users {
		names = append(names, u)
	}
	sort.Strings(names)
	for _, u := range names {
		if u == "" || strings.ContainsAny(u, ":\n\r\t /") {
			return nil, fmt.Errorf("dovecot: invalid user name %q", u)
		}
		hash, err := hashPassword(emptyConf, opts.Users[u])
		if err != nil {
			return nil, err
		}
		home := filepath.Join(mailDir, u)
		if err := os.Mkdir(home, 0o700); err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
		}
		if err := os.Chown(home, uid, gid); err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
		}
		extra := opts.UserFields[u]
		if strings.ContainsAny(extra, ":\n\r") {
			return nil, fmt.Errorf("dovecot: invalid extra fields %q for %s", extra, u)
		}
		fmt.Fprintf(&users, "%s:%s:%d:%d::%s::%s\n", u, hash, uid, gid, home, extra)
	}
	if err := os.WriteFile(filepath.Join(dir, "users"), users.Bytes(), 0o644); err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}
	if len(opts.MasterUsers) > 0 {
		var masters bytes.Buffer
		names := make([]string, 0, len(opts.MasterUsers))
		for u := range opts.MasterUsers {
			names = append(names, u)
		}
		sort.Strings(names)
		for _, u := range names {
			if u == "" || strings.ContainsAny(u, ":\n\r\t /") {
				return nil, fmt.Errorf("dovecot: invalid master user name %q", u)
			}
			hash, err := hashPassword(emptyConf, opts.MasterUsers[u])
			if err != nil {
				return nil, err
			}
			fmt.Fprintf(&masters, "%s:%s\n", u, hash)
		}
		if err := os.WriteFile(filepath.Join(dir, "master-users"), masters.Bytes(), 0o644); err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
		}
	}

	if o := opts.OAuth2; o != nil {
		mode, userAttr, activeAttr, activeValue := o.IntrospectionMode, o.UsernameAttribute, o.ActiveAttribute, o.ActiveValue
		if mode == "" {
			mode = "post"
		}
		if userAttr == "" {
			userAttr = "username"
		}
		if activeAttr == "" {
			activeAttr = "active"
		}
		if activeValue == "" {
			activeValue = "true"
		}
		ext := fmt.Sprintf("introspection_mode = %s\nintrospection_url = %s\nusername_attribute = %s\nactive_attribute = %s\nactive_value = %s\n",
			mode, o.IntrospectionURL, userAttr, activeAttr, activeValue)
		if err := os.WriteFile(filepath.Join(dir, "dovecot-oauth2.conf.ext"), []byte(ext), 0o644); err != nil {
			return nil, fmt.Errorf("dovecot: %w", err)
		}
	}

	conf := renderConfig(s, opts, uid)
	if err := os.WriteFile(s.ConfigFile, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("dovecot: %w", err)
	}

	if err := s.launch(); err != nil {
		return nil, err
	}
	if err := s.waitReady(opts.StartTimeout); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func renderConfig(s *Server, opts Options, uid int) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	dir := s.Dir
	w("# Generated by github.com/portico-mail/portico/integration/dovecot")
	w("base_dir = %s/run", dir)
	w("state_dir = %s/state", dir)
	w("log_path = %s", s.LogFile)
	if opts.Sieve {
		w("protocols = imap pop3 sieve")
	} else {
		w("protocols = imap pop3")
	}
	w("listen = %s", opts.Addr)
	if opts.TLS {
		w("ssl = yes")
		w("ssl_cert = <%s", s.CertFile)
		w("ssl_key = <%s", s.KeyFile)
	} else {
		w("ssl = no")
	}
	w("disable_plaintext_auth = no")
	if opts.OAuth2 != nil {
		w("auth_mechanisms = plain login oauthbearer xoauth2")
	} else {
		w("auth_mechanisms = plain login")
	}
	w("auth_verbose = yes")
	// Dovecot takes whole seconds here ("Milliseconds not supported").
	w("auth_failure_delay = %ds", (opts.AuthFailureDelay+time.Second-1)/time.Second)
	w("mail_location = maildir:~/Maildir")
	w("first_valid_uid = %d", uid)
	// Honour a trusted proxy's forwarded client address: IMAP ID
	// x-originating-ip/-port and POP3 XCLIENT ADDR=/PORT=.
	trusted := "127.0.0.0/8"
	if len(opts.TrustedNetworks) > 0 {
		trusted = strings.Join(opts.TrustedNetworks, " ")
	}
	w("login_trusted_networks = %s", trusted)
	w("default_internal_user = dovecot")
	w("default_login_user = dovenull")
	// Many parallel connections for one user from one (proxy) address.
	w("mail_max_userip_connections = 1000")
	if opts.HAProxy {
		w("haproxy_trusted_networks = %s", trusted)
	}
	if len(opts.MasterUsers) > 0 {
		sep := opts.MasterSeparator
		if sep == "" {
			sep = "*"
		}
		w("auth_master_user_separator = %s", sep)
		w("passdb {")
		w("  driver = passwd-file")
		w("  master = yes")
		w("  args = scheme=SHA512-CRYPT %s/master-users", dir)
		w("}")
	}
	if opts.OAuth2 != nil {
		w("passdb {")
		w("  driver = oauth2")
		w("  mechanisms = xoauth2 oauthbearer")
		w("  args = %s/dovecot-oauth2.conf.ext", dir)
		w("}")
	}
	w("passdb {")
	w("  driver = passwd-file")
	if opts.OAuth2 != nil {
		// Else a refused token falls through to be checked as a password.
		w("  mechanisms = plain login")
	}
	w("  args = scheme=SHA512-CRYPT %s/users", dir)
	w("}")
	w("userdb {")
	w("  driver = passwd-file")
	w("  args = %s/users", dir)
	w("}")
	listener := func(name string, port int, ssl bool) {
		w("  inet_listener %s {", name)
		w("    address = %s", opts.Addr)
		w("    port = %d", port)
		if ssl {
			w("    ssl = yes")
		}
		if opts.HAProxy {
			w("    haproxy = yes")
		}
		w("  }")
	}
	w("service imap-login {")
	listener("imap", opts.IMAPPort, false)
	if opts.ImplicitTLS {
		listener("imaps", opts.IMAPSPort, true)
	} else {
		w("  inet_listener imaps {")
		w("    port = 0")
		w("  }")
	}
	w("}")
	w("service pop3-login {")
	listener("pop3", opts.POP3Port, false)
	if opts.ImplicitTLS {
		listener("pop3s", opts.POP3SPort, true)
	} else {
		w("  inet_listener pop3s {")
		w("    port = 0")
		w("  }")
	}
	w("}")
	if opts.Sieve {
		w("service managesieve-login {")
		listener("sieve", opts.SievePort, false)
		w("}")
		w("plugin {")
		w("  sieve = file:~/sieve;active=~/.dovecot.sieve")
		w("}")
		// Local delivery (Deliver) runs the user's active script.
		w("postmaster_address = postmaster@example.com")
		w("protocol lda {")
		w("  mail_plugins = $mail_plugins sieve")
		w("}")
	}
	if !opts.AuthPenalty {
		// With mode 0 Dovecot does not create this socket; the auth process
		// then finds none and disables the per-IP auth penalty.
		w("service anvil {")
		w("  unix_listener anvil-auth-penalty {")
		w("    mode = 0")
		w("  }")
		w("}")
	}
	if opts.ExtraConfig != "" {
		w("# ExtraConfig")
		w("%s", opts.ExtraConfig)
	}
	return b.String()
}

// launch starts the master process. It is started from a goroutine locked
// to its OS thread that stays alive until the process exits, so that
// Pdeathsig (which fires when the creating thread exits) kills Dovecot only
// when this process dies, for example when a test binary times out. With
// Options.Netns that thread first switches into the namespace (the child
// inherits it); it is never unlocked, so it dies with the goroutine rather
// than going back to the scheduler in a foreign namespace.
func (s *Server) launch() error {
	bin, err := dovecotBinary()
	if err != nil {
		return err
	}
	s.cmd = exec.Command(bin, "-F", "-c", s.ConfigFile)
	s.cmd.Dir = s.Dir
	s.cmd.Stdout = s.output
	s.cmd.Stderr = s.output
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s.done = make(chan struct{})
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread exits with this goroutine, after the
		// process is gone.
		if s.netns != "" {
			if err := netns.Enter(s.netns); err != nil {
				started <- fmt.Errorf("dovecot: %w", err)
				close(s.done)
				return
			}
		}
		if err := s.cmd.Start(); err != nil {
			started <- fmt.Errorf("dovecot: start %s: %w", bin, err)
			close(s.done)
			return
		}
		started <- nil
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	return <-started
}

func (s *Server) waitReady(timeout time.Duration) error {
	addrs := []string{s.IMAPAddr, s.POP3Addr}
	if s.IMAPSAddr != "" {
		addrs = append(addrs, s.IMAPSAddr, s.POP3SAddr)
	}
	if s.SieveAddr != "" {
		addrs = append(addrs, s.SieveAddr)
	}
	deadline := time.Now().Add(timeout)
	for _, a := range addrs {
		for {
			select {
			case <-s.done:
				return s.startFailure(fmt.Sprintf("dovecot exited during startup (%v)", s.waitErr))
			default:
			}
			err := s.inNetns(func() error {
				c, err := net.DialTimeout("tcp", a, 200*time.Millisecond)
				if err == nil {
					c.Close()
				}
				return err
			})
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return s.startFailure(fmt.Sprintf("dovecot did not accept on %s within %v: %v", a, timeout, err))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

// inNetns runs fn in the instance's network namespace (Options.Netns), or
// right here without one.
func (s *Server) inNetns(fn func() error) error {
	if s.netns == "" {
		return fn()
	}
	return netns.Run(s.netns, fn)
}

func (s *Server) startFailure(msg string) error {
	out := strings.TrimSpace(s.output.String())
	log := strings.TrimSpace(s.Log())
	err := fmt.Errorf("%s\n--- output ---\n%s\n--- %s ---\n%s", msg, out, s.LogFile, log)
	if daemon.AddrInUse(out + log) {
		return fmt.Errorf("%w: %w", daemon.ErrAddrInUse, err)
	}
	return err
}

// Stop terminates Dovecot (SIGTERM, then SIGKILL to its whole process group
// after 10 s), waits for it and removes its directory (unless
// PORTICO_KEEP_DOVECOT=1). Log still works afterwards. Stop is idempotent
// and safe for concurrent use.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			pid := s.cmd.Process.Pid
			select {
			case <-s.done:
			default:
				_ = syscall.Kill(pid, syscall.SIGTERM)
				select {
				case <-s.done:
				case <-time.After(10 * time.Second):
					_ = syscall.Kill(-pid, syscall.SIGKILL)
					select {
					case <-s.done:
					case <-time.After(5 * time.Second):
					}
				}
			}
			// Children left behind by the master (they normally exit with
			// it) share its process group: kill them and wait until they
			// are gone (zombies waiting for init to reap them aside).
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			for deadline := time.Now().Add(5 * time.Second); groupAlive(pid) && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
		}
		logText := s.readLog()
		s.mu.Lock()
		s.stopped = true
		s.finalLog = logText
		s.mu.Unlock()
		if os.Getenv(EnvKeep) != "1" {
			_ = os.RemoveAll(s.Dir)
		}
	})
}

// Log returns the content of the Dovecot log file.
func (s *Server) Log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return s.finalLog
	}
	return s.readLog()
}

func (s *Server) readLog() string {
	b, _ := os.ReadFile(s.LogFile)
	return string(b)
}

// Output returns what the dovecot process wrote to stdout and stderr.
func (s *Server) Output() string { return s.output.String() }

var (
	loginLineRE = regexp.MustCompile(`\b(?:imap|pop3|managesieve)-login: Info: Login: user=<([^>]*)>(.*)$`)
	ripRE       = regexp.MustCompile(`(?:^|[ ,])rip=([^,\s]+)`)
)

// LoginRecord is one successful login found in the log.
type LoginRecord struct {
	Protocol string // "imap", "pop3" or "sieve"
	User     string
	RemoteIP string // rip=
	Line     string
}

// LoginRecords returns every successful login ("Login: user=<...>" lines of
// imap-login, pop3-login and managesieve-login) in log order.
func (s *Server) LoginRecords() []LoginRecord {
	var recs []LoginRecord
	for _, line := range strings.Split(s.Log(), "\n") {
		m := loginLineRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		r := LoginRecord{User: m[1], Line: line, Protocol: "imap"}
		switch {
		case strings.Contains(line, "pop3-login: "):
			r.Protocol = "pop3"
		case strings.Contains(line, "managesieve-login: "):
			r.Protocol = "sieve"
		}
		if rm := ripRE.FindStringSubmatch(m[2]); rm != nil {
			r.RemoteIP = rm[1]
		}
		recs = append(recs, r)
	}
	return recs
}

// Logins counts the successful IMAP and POP3 logins of user so far. Dovecot
// writes its log asynchronously: use WaitLogins right after a login.
func (s *Server) Logins(user string) int {
	n := 0
	for _, r := range s.LoginRecords() {
		if r.User == user {
			n++
		}
	}
	return n
}

// LoginRemoteIPs returns the rip= values of user's successful logins, in log
// order: the client address Dovecot saw (or was told by a trusted proxy).
func (s *Server) LoginRemoteIPs(user string) []string {
	var ips []string
	for _, r := range s.LoginRecords() {
		if r.User == user {
			ips = append(ips, r.RemoteIP)
		}
	}
	return ips
}

// WaitLogins polls the log until user has at least n successful logins or
// timeout passes, and returns the last count seen.
func (s *Server) WaitLogins(user string, n int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		got := s.Logins(user)
		if got >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// CertPool returns a pool trusting the instance's certificate (nil without TLS).
func (s *Server) CertPool() *x509.CertPool {
	if len(s.CACertPEM) == 0 {
		return nil
	}
	p := x509.NewCertPool()
	p.AppendCertsFromPEM(s.CACertPEM)
	return p
}

// TLSConfig returns a client configuration that verifies the instance's
// certificate for its address (nil without TLS).
func (s *Server) TLSConfig() *tls.Config {
	if len(s.CACertPEM) == 0 {
		return nil
	}
	return &tls.Config{RootCAs: s.CertPool(), ServerName: s.Addr, MinVersion: tls.VersionTLS12}
}

// ---- helpers ----

func tempBase() string {
	// Unix socket paths under base_dir are limited to 108 bytes.
	if d := os.TempDir(); len(d) <= 40 {
		return d
	}
	return "/tmp"
}

func lookPath(name string, fallbacks ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, f := range fallbacks {
		if st, err := os.Stat(f); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return f, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH or %s", name, strings.Join(fallbacks, ", "))
}

func dovecotBinary() (string, error) {
	return lookPath("dovecot", "/usr/sbin/dovecot", "/usr/local/sbin/dovecot")
}

// Deliver delivers msg (a whole RFC 5322 message) to user's mailbox with
// dovecot-lda, which runs the user's active Sieve script (Options.Sieve).
func (s *Server) Deliver(user, msg string) error {
	bin, err := lookPath("dovecot-lda", "/usr/lib/dovecot/dovecot-lda", "/usr/libexec/dovecot/dovecot-lda")
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "-c", s.ConfigFile, "-d", user, "-f", "sender@example.com")
	cmd.Stdin = strings.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dovecot-lda: %v: %s", err, out)
	}
	return nil
}

// MaildirFiles lists the messages of user's mailbox (maildir++ name:
// "" for INBOX, ".Folder" for others) in new/ and cur/.
func (s *Server) MaildirFiles(user, folder string) []string {
	var out []string
	for _, sub := range []string{"new", "cur"} {
		ents, _ := os.ReadDir(filepath.Join(s.Dir, "mail", user, "Maildir", folder, sub))
		for _, e := range ents {
			out = append(out, filepath.Join(sub, e.Name()))
		}
	}
	return out
}

func doveadmBinary() (string, error) {
	return lookPath("doveadm", "/usr/bin/doveadm", "/usr/local/bin/doveadm")
}

var (
	hashMu    sync.Mutex
	hashCache = map[string]string{}
)

// hashPassword returns "{SHA512-CRYPT}$6$..." from doveadm pw, cached per
// password for the life of the process.
func hashPassword(conf, password string) (string, error) {
	hashMu.Lock()
	defer hashMu.Unlock()
	if h, ok := hashCache[password]; ok {
		return h, nil
	}
	bin, err := doveadmBinary()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "-c", conf, "pw", "-s", "SHA512-CRYPT", "-p", password)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("dovecot: doveadm pw: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	h := strings.TrimSpace(string(out))
	if !strings.HasPrefix(h, "{SHA512-CRYPT}$6$") {
		return "", fmt.Errorf("dovecot: doveadm pw: unexpected output %q", h)
	}
	hashCache[password] = h
	return h, nil
}

var mailUserMu sync.Mutex

// ensureMailUser returns the uid and gid of MailUser, creating it if needed.
// Creation is serialised across processes (parallel test binaries) with a
// file lock.
func ensureMailUser() (uid, gid int, err error) {
	mailUserMu.Lock()
	defer mailUserMu.Unlock()
	if uid, gid, err = lookupIDs(MailUser); err == nil {
		return uid, gid, nil
	}
	lock, err := os.OpenFile(filepath.Join(os.TempDir(), "portico-dovecot-useradd.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return 0, 0, fmt.Errorf("dovecot: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return 0, 0, fmt.Errorf("dovecot: lock: %w", err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if uid, gid, err = lookupIDs(MailUser); err == nil {
		return uid, gid, nil
	}
	bin, err := lookPath("useradd", "/usr/sbin/useradd", "/sbin/useradd")
	if err != nil {
		return 0, 0, fmt.Errorf("dovecot: %w", err)
	}
	out, runErr := exec.Command(bin, "-r", "-M", "-U", "-s", "/usr/sbin/nologin", "-c", "Portico test mail", MailUser).CombinedOutput()
	// The user may have been created concurrently (useradd exits 9).
	if uid, gid, err = lookupIDs(MailUser); err == nil {
		return uid, gid, nil
	}
	return 0, 0, fmt.Errorf("dovecot: useradd %s: %v: %s", MailUser, runErr, strings.TrimSpace(string(out)))
}

func lookupIDs(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, err
	}
	if uid, err = strconv.Atoi(u.Uid); err != nil {
		return 0, 0, err
	}
	if gid, err = strconv.Atoi(u.Gid); err != nil {
		return 0, 0, err
	}
	if uid == 0 {
		return 0, 0, fmt.Errorf("dovecot: user %s has uid 0", name)
	}
	return uid, gid, nil
}

// groupAlive reports whether a process of process group pgid exists that
// is not a zombie.
func groupAlive(pgid int) bool {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return syscall.Kill(-pgid, 0) == nil
	}
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may contain spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 3 || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if g, err := strconv.Atoi(f[2]); err == nil && g == pgid {
			return true
		}
	}
	return false
}
