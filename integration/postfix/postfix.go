// Package postfix starts a real Postfix submission server for tests: one
// master process per instance, started as root in the foreground
// ("postfix -c DIR start-fg") from a main.cf and master.cf written into
// its own temporary directory, with its own queue and data directories,
// listening on one address and port, logging to its standard output
// (maillog_file = /dev/stdout), which the harness keeps.
//
// What this configuration relies on (Postfix 3.7, Debian 12):
//
//   - An alternate configuration directory needs no listing in the default
//     main.cf when the master is started by root; meta_directory must
//     still name the installed /etc/postfix (postfix-files).
//   - queue_directory is root's (postfix-script creates its
//     subdirectories with their owners); data_directory must be owned by
//     mail_owner (master.lock).
//   - SASL authentication goes to a Dovecot auth socket
//     (smtpd_sasl_type = dovecot; Options.SASLPath): Postfix never sees a
//     password file. The socket must be usable by user postfix.
//   - smtpd_authorized_xclient_hosts (Options.XCLIENTHosts) may replace
//     the client's address, name, HELO and login with XCLIENT; Postfix
//     3.7 then checks a further XCLIENT against the new address, so a
//     relayed client of a proxy cannot repeat it.
//   - Mail for example.com is delivered by virtual(8) into one Maildir
//     (virtual_mailbox_maps = static:sink/), read with Delivered; any
//     other domain is refused.
//   - The master and its children share a process group, killed whole if
//     "postfix stop" does not end them.
//
// Tests call Start, which skips the test when Postfix cannot be run here
// (unless PORTICO_REQUIRE_DOVECOT=1, then it fails).
package postfix

import (
	"bufio"
	"errors"
	"fmt"
	"io"
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
	"github.com/portico-mail/portico/integration/testcert"
)

// EnvRequire turns "Postfix unavailable" into a failure, as for Dovecot
// (CI sets it).
const EnvRequire = "PORTICO_REQUIRE_DOVECOT"

// EnvKeep, when "1", keeps each instance's directory after Stop.
const EnvKeep = "PORTICO_KEEP_POSTFIX"

// ErrUnavailable is wrapped by Available's error when Postfix cannot be
// run on this machine.
var ErrUnavailable = errors.New("postfix unavailable")

// DovecotSASL is a dovecot.Options ExtraConfig that opens an auth socket
// for Postfix (smtpd_sasl_type = dovecot) at DovecotSASLSocket(the
// Dovecot instance's directory).
const DovecotSASL = "service auth {\n  unix_listener postfix-auth {\n    mode = 0666\n  }\n}\n"

// DovecotSASLSocket is the socket DovecotSASL opens in a Dovecot
// instance whose directory is dir (dovecot.Server.Dir).
func DovecotSASLSocket(dir string) string { return filepath.Join(dir, "run", "postfix-auth") }

// Options configure one instance.
type Options struct {
	// Addr is the IP address to listen on; default 127.0.0.1.
	Addr string
	// Port is the submission port; 0 picks a free one.
	Port int
	// SASLPath is a Dovecot auth socket: AUTH is offered (over TLS only
	// if TLSAuthOnly) and checked there; "" offers no AUTH.
	SASLPath string
	// TLS offers STARTTLS with a fresh self-signed certificate
	// (CACertPEM).
	TLS bool
	// TLSAuthOnly offers AUTH only after STARTTLS (smtpd_tls_auth_only).
	TLSAuthOnly bool
	// XCLIENTHosts are smtpd_authorized_xclient_hosts.
	XCLIENTHosts []string
	// ProxyProtocol requires a PROXY header (smtpd_upstream_proxy_protocol
	// = haproxy) on every connection.
	ProxyProtocol bool
	// MessageSizeLimit is message_size_limit; default 50 MB.
	MessageSizeLimit int64
	// ExtraMain is appended to main.cf.
	ExtraMain string
	// StartTimeout bounds the wait for the listener; default 20 s.
	StartTimeout time.Duration
}

// Server is a running instance.
type Server struct {
	Dir     string // main.cf, master.cf, queue/, data/, vmail/
	Addr    string // host:port of the submission listener
	Port    int
	ConfDir string
	// CACertPEM is the certificate to trust with TLS.
	CACertPEM []byte

	cmd    *exec.Cmd
	done   chan struct{}
	output *daemon.Output
	// proxyProtocol: the listener requires a PROXY header first.
	proxyProtocol bool

	stopOnce sync.Once
}

// Available reports whether Postfix can be started here: the postfix
// command, its users, and root.
func Available() error {
	var missing []string
	if _, err := postfixBinary(); err != nil {
		missing = append(missing, err.Error())
	}
	if _, err := user.Lookup("postfix"); err != nil {
		missing = append(missing, `system user "postfix" not found`)
	}
	if _, err := user.LookupGroup("postdrop"); err != nil {
		missing = append(missing, `group "postdrop" not found`)
	}
	if _, err := os.Stat("/etc/postfix/postfix-files"); err != nil {
		missing = append(missing, "/etc/postfix/postfix-files not found")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "not running as root: Postfix's master must start as root")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (on Debian: apt-get install postfix, and run as root)", ErrUnavailable, strings.Join(missing, "; "))
	}
	return nil
}

func postfixBinary() (string, error) {
	if p, err := exec.LookPath("postfix"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/postfix"); err == nil {
		return "/usr/sbin/postfix", nil
	}
	return "", errors.New("postfix not found")
}

// Start starts an instance for a test and stops it in t.Cleanup (its log
// goes to the test log if the test failed).
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	return daemon.Start(t, "postfix", Available(), EnvRequire,
		func() (*Server, error) { return StartProcess(opts) },
		(*Server).Stop,
		func(s *Server) string { return "(" + s.Dir + ")\n" + s.Log() })
}

// StartProcess starts an instance; the caller must call Stop.
func StartProcess(opts Options) (*Server, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if opts.Port != 0 {
		return startOnce(opts)
	}
	// The port picked can be taken by someone else before Postfix binds
	// it: retry with a fresh one then.
	return daemon.Retry(func() (*Server, error) { return startOnce(opts) })
}

func startOnce(opts Options) (s *Server, err error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1"
	}
	if opts.MessageSizeLimit == 0 {
		opts.MessageSizeLimit = 50 << 20
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 20 * time.Second
	}
	pu, err := user.Lookup("postfix")
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(pu.Uid)
	gid, _ := strconv.Atoi(pu.Gid)
	dir, err := os.MkdirTemp("", "postfix-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil && os.Getenv(EnvKeep) != "1" {
			os.RemoveAll(dir)
		}
	}()
	s = &Server{Dir: dir, ConfDir: filepath.Join(dir, "conf"), output: &daemon.Output{}, done: make(chan struct{})}
	for _, d := range []string{"conf", "queue", "data", "vmail"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	for _, d := range []string{"data", "vmail"} {
		if err := os.Chown(filepath.Join(dir, d), uid, gid); err != nil {
			return nil, err
		}
	}
	if opts.Port == 0 {
		ports, err := daemon.FreePorts(opts.Addr, 1)
		if err != nil {
			return nil, err
		}
		opts.Port = ports[0]
	}
	s.Port = opts.Port
	s.Addr = net.JoinHostPort(opts.Addr, strconv.Itoa(opts.Port))
	var certFile, keyFile string
	if opts.TLS {
		if certFile, keyFile, s.CACertPEM, err = testcert.Write(filepath.Join(dir, "tls"), "localhost", opts.Addr); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(s.ConfDir, "main.cf"), []byte(mainCF(s, opts, uid, gid, certFile, keyFile)), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(s.ConfDir, "master.cf"), []byte(masterCF(s)), 0o644); err != nil {
		return nil, err
	}
	// postconf reports a configuration error on stderr; "postfix start"
	// only logs it, through a log service that is not running yet.
	if out, err := exec.Command("postconf", "-c", s.ConfDir, "-n").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("postfix: configuration: %v: %s", err, out)
	}
	if err := s.launch(); err != nil {
		return nil, err
	}
	s.proxyProtocol = opts.ProxyProtocol
	if err := s.waitReady(opts.StartTimeout); err != nil {
		s.Stop()
		out := s.Log()
		err = fmt.Errorf("%w\n--- postfix output ---\n%s", err, out)
		if daemon.AddrInUse(out) {
			err = fmt.Errorf("%w: %w", daemon.ErrAddrInUse, err)
		}
		return nil, err
	}
	return s, nil
}

func mainCF(s *Server, o Options, uid, gid int, certFile, keyFile string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("# Generated by github.com/portico-mail/portico/integration/postfix")
	w("compatibility_level = 3.6")
	w("queue_directory = %s/queue", s.Dir)
	w("data_directory = %s/data", s.Dir)
	w("meta_directory = /etc/postfix")
	w("mail_owner = postfix")
	w("setgid_group = postdrop")
	w("maillog_file = /dev/stdout")
	// The listener binds o.Addr itself (master.cf); inet_interfaces must
	// name addresses configured on an interface, which 127.0.0.x other
	// than 127.0.0.1 are not (they are routed to lo).
	w("inet_interfaces = 127.0.0.1")
	w("inet_protocols = ipv4")
	w("myhostname = postfix.test")
	w("mydestination =")
	w("mynetworks =")
	w("biff = no")
	w("smtpd_banner = $myhostname ESMTP")
	// Tests make errors on purpose: answer them at once.
	w("smtpd_error_sleep_time = 0")
	w("smtpd_soft_error_limit = 100")
	w("smtpd_hard_error_limit = 200")
	w("message_size_limit = %d", o.MessageSizeLimit)
	w("virtual_mailbox_domains = example.com")
	w("virtual_mailbox_base = %s/vmail", s.Dir)
	w("virtual_mailbox_maps = static:sink/")
	w("virtual_uid_maps = static:%d", uid)
	w("virtual_gid_maps = static:%d", gid)
	w("virtual_minimum_uid = 1")
	w("virtual_mailbox_limit = 0")
	w("smtpd_relay_restrictions = permit_sasl_authenticated, reject")
	w("smtpd_recipient_restrictions = permit_sasl_authenticated, reject")
	w("smtpd_sasl_authenticated_header = yes")
	if o.SASLPath != "" {
		w("smtpd_sasl_auth_enable = yes")
		w("smtpd_sasl_type = dovecot")
		w("smtpd_sasl_path = %s", o.SASLPath)
	}
	if o.TLS {
		w("smtpd_tls_security_level = may")
		w("smtpd_tls_cert_file = %s", certFile)
		w("smtpd_tls_key_file = %s", keyFile)
		if o.TLSAuthOnly {
			w("smtpd_tls_auth_only = yes")
		}
	}
	if len(o.XCLIENTHosts) > 0 {
		w("smtpd_authorized_xclient_hosts = %s", strings.Join(o.XCLIENTHosts, " "))
	}
	if o.ProxyProtocol {
		w("smtpd_upstream_proxy_protocol = haproxy")
	}
	if o.ExtraMain != "" {
		w("%s", o.ExtraMain)
	}
	return b.String()
}

func masterCF(s *Server) string {
	return s.Addr + ` inet n - n - - smtpd
  -o syslog_name=postfix/submission
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`
}

// launch starts "postfix start-fg" from a goroutine locked to its thread
// (Pdeathsig kills Postfix if the test binary dies, as for Dovecot).
func (s *Server) launch() error {
	bin, err := postfixBinary()
	if err != nil {
		return err
	}
	s.cmd = exec.Command(bin, "-c", s.ConfDir, "start-fg")
	s.cmd.Dir = s.Dir
	s.cmd.Stdout, s.cmd.Stderr = s.output, s.output
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := s.cmd.Start(); err != nil {
			started <- fmt.Errorf("postfix: start: %w", err)
			close(s.done)
			return
		}
		started <- nil
		_ = s.cmd.Wait()
		close(s.done)
	}()
	return <-started
}

// expectBanner reads the greeting on c and checks that it is this
// harness's Postfix (smtpd_banner, myhostname in mainCF).
// A Postfix that requires a PROXY header answers only after one.
func expectBanner(c net.Conn, proxyHeader bool) error {
	c.SetDeadline(time.Now().Add(2 * time.Second))
	if proxyHeader {
		if _, err := io.WriteString(c, "PROXY TCP4 127.0.0.1 127.0.0.1 1 2\r\n"); err != nil {
			return fmt.Errorf("send a PROXY header: %w", err)
		}
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read the greeting: %w", err)
	}
	if !strings.HasPrefix(line, "220 postfix.test ESMTP") {
		return fmt.Errorf("greeting %q is not this Postfix's", strings.TrimSpace(line))
	}
	return nil
}

func (s *Server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-s.done:
			return errors.New("postfix exited during startup")
		default:
		}
		c, err := net.DialTimeout("tcp", s.Addr, 200*time.Millisecond)
		if err == nil {
			// Another process may hold the port picked for Postfix: only
			// Postfix's own banner counts.
			err = expectBanner(c, s.proxyProtocol)
			c.Close()
			if err == nil {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postfix did not accept on %s within %v: %v", s.Addr, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the instance ("postfix stop", then SIGKILL to its process
// group) and removes its directory (unless PORTICO_KEEP_POSTFIX=1). Log
// still works afterwards. Idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			pid := s.cmd.Process.Pid
			if bin, err := postfixBinary(); err == nil {
				_ = exec.Command(bin, "-c", s.ConfDir, "stop").Run()
			}
			select {
			case <-s.done:
			case <-time.After(15 * time.Second):
			}
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
			}
		}
		if os.Getenv(EnvKeep) != "1" {
			os.RemoveAll(s.Dir)
		}
	})
}

// Log returns what Postfix logged.
func (s *Server) Log() string { return s.output.String() }

// WaitLog waits until the log matches re and returns the first match's
// submatches, or nil after timeout.
func (s *Server) WaitLog(re *regexp.Regexp, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		if m := re.FindStringSubmatch(s.Log()); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Delivered returns the messages delivered to example.com so far, in no
// particular order (Maildir names do not sort by time).
func (s *Server) Delivered() []string {
	var files []string
	for _, sub := range []string{"new", "cur"} {
		ents, _ := os.ReadDir(filepath.Join(s.Dir, "vmail", "sink", sub))
		for _, e := range ents {
			files = append(files, filepath.Join(s.Dir, "vmail", "sink", sub, e.Name()))
		}
	}
	sort.Slice(files, func(i, j int) bool { return filepath.Base(files[i]) < filepath.Base(files[j]) })
	var out []string
	for _, f := range files {
		if b, err := os.ReadFile(f); err == nil {
			out = append(out, string(b))
		}
	}
	return out
}

// WaitDelivered waits until n messages are delivered and returns them
// (fewer after timeout).
func (s *Server) WaitDelivered(n int, timeout time.Duration) []string {
	deadline := time.Now().Add(timeout)
	for {
		got := s.Delivered()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}
