// Package cyrus starts a real Cyrus IMAP 3.6 server (IMAP and POP3) for
// tests and benchmarks: Cyrus's master process, run from Debian's packages
// unpacked (not installed) into a directory, with a configuration written
// into the instance's own temporary directory, listening on a 127.0.0.x
// address.
//
// Why unpacked: Debian's cyrus-imapd and cyrus-pop3d conflict with
// dovecot-imapd and dovecot-pop3d (both provide imap-server and
// pop3-server), so installing them would remove the Dovecot the other
// tests use. scripts/test.sh fetches the packages with `apt-get download`
// and unpacks them with `dpkg -x` into Root (deps_cyrus in
// scripts/lib/deps.sh); the shared libraries they need (libxapian30,
// libpcre3, libical3, libsasl2-modules) install normally.
//
// Tests call Start, which skips the test when Cyrus cannot be run here
// (unless PORTICO_REQUIRE_CYRUS=1, then it fails). Programs call
// StartProcess and Stop themselves.
//
// What this configuration relies on (Cyrus 3.6.1, Debian 12):
//
//   - The master does not pass its -C option on to the services: every
//     cmd= in cyrus.conf names the instance's imapd.conf itself.
//   - Run as root, the master switches to cyrus_user, here "nobody" (no
//     system user is created): the instance's directory is owned by it.
//   - sasl_pwcheck_method: alwaystrue accepts any password for any user, so
//     a "wrong password" cannot be tested against this backend; users need
//     a mailbox, which Start creates as the admin user "cyrus".
//   - Without its idled daemon, imapd polls the mailbox during IDLE every
//     imapidlepoll seconds: 1 here (60 by default).
//   - Cyrus logs to syslog only; Output has what the master printed.
package cyrus

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/portico-mail/portico/integration/internal/daemon"
)

// EnvRoot names the directory the packages are unpacked into; default
// DefaultRoot.
const EnvRoot = "PORTICO_CYRUS_ROOT"

// DefaultRoot is where scripts/test.sh unpacks Cyrus when EnvRoot is unset.
const DefaultRoot = "/var/cache/portico-test/cyrus"

// EnvRequire turns "Cyrus unavailable" from a skipped test into a failed
// one when set to "1" (scripts/test.sh sets it once Cyrus is unpacked).
const EnvRequire = "PORTICO_REQUIRE_CYRUS"

// ErrUnavailable is wrapped by Available's and StartProcess's errors when
// Cyrus cannot run here at all.
var ErrUnavailable = errors.New("cyrus unavailable")

// Admin is the admin user (any password).
const Admin = "cyrus"

// runAs is the unprivileged user the master switches to.
const runAs = "nobody"

// Options configure one instance.
type Options struct {
	// Addr is the IP address to listen on; default "127.0.0.1".
	Addr string
	// Users get a mailbox (user.NAME); default alice and bob.
	Users []string
}

// Server is a running Cyrus instance.
type Server struct {
	Dir      string // imapd.conf, cyrus.conf, lib/, spool/, run/
	Addr     string
	IMAPAddr string
	POP3Addr string
	IMAPPort int
	POP3Port int
	Users    []string

	cmd      *exec.Cmd
	done     chan struct{}
	waitErr  error
	out      *daemon.Output
	stopOnce sync.Once
}

// Root returns the directory the packages are unpacked into.
func Root() string {
	if r := os.Getenv(EnvRoot); r != "" {
		return r
	}
	return DefaultRoot
}

func bin(name string) string { return filepath.Join(Root(), "usr/lib/cyrus/bin", name) }

func libDir() string { return filepath.Join(Root(), "usr/lib/x86_64-linux-gnu") }

// Available reports whether Cyrus can run here: its binaries unpacked in
// Root, their shared libraries found, and root privileges (the master
// starts as root and switches to an unprivileged user).
func Available() error {
	var missing []string
	for _, b := range []string{"master", "imapd", "pop3d", "ctl_cyrusdb"} {
		if _, err := os.Stat(bin(b)); err != nil {
			missing = append(missing, fmt.Sprintf("%s not found", bin(b)))
		}
	}
	if len(missing) == 0 {
		for _, b := range []string{"master", "imapd", "pop3d"} {
			cmd := exec.Command("ldd", bin(b))
			cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libDir())
			out, err := cmd.CombinedOutput()
			if err != nil {
				missing = append(missing, fmt.Sprintf("ldd %s: %v", b, err))
				continue
			}
			for _, l := range strings.Split(string(out), "\n") {
				if strings.Contains(l, "not found") {
					missing = append(missing, fmt.Sprintf("%s needs %s", b, strings.TrimSpace(l)))
				}
			}
		}
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "not running as root")
	}
	if _, err := user.Lookup(runAs); err != nil {
		missing = append(missing, fmt.Sprintf("no user %q", runAs))
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (scripts/test.sh unpacks Debian's cyrus-common, cyrus-imapd and cyrus-pop3d into %s, and installs libxapian30 libpcre3 libical3 libsasl2-modules)",
			ErrUnavailable, strings.Join(missing, "; "), Root())
	}
	return nil
}

// Start starts an instance for a test and stops it in t.Cleanup; it skips
// the test when Cyrus is unavailable (fails it with PORTICO_REQUIRE_CYRUS=1).
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	return daemon.Start(t, "cyrus", Available(), EnvRequire,
		func() (*Server, error) { return StartProcess(opts) },
		(*Server).Stop,
		(*Server).Output)
}

// StartProcess starts an instance; the caller must Stop it.
func StartProcess(opts Options) (*Server, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1"
	}
	if len(opts.Users) == 0 {
		opts.Users = []string{"alice", "bob"}
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ { // ports picked may be taken meanwhile
		s, err := startOnce(opts)
		if err == nil {
			return s, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// ownerFile, in an instance's directory, holds the pid of the process that
// started it. The master switches to an unprivileged user, which clears
// its parent-death signal: an instance whose test process was killed
// (a go test timeout) outlives it, and the next start removes it.
const ownerFile = "owner.pid"

// reapOrphans stops the instances whose starting process is gone.
func reapOrphans() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "portico-cyrus-*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || owner <= 0 || syscall.Kill(owner, 0) == nil {
			continue // its test still runs
		}
		if b, err := os.ReadFile(filepath.Join(dir, "run/master.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 1 {
				_ = syscall.Kill(-pid, syscall.SIGKILL) // its own process group (Setpgid)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		_ = os.RemoveAll(dir)
	}
}

func startOnce(opts Options) (*Server, error) {
	reapOrphans()
	dir, err := os.MkdirTemp("", "portico-cyrus-")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, Addr: opts.Addr, Users: opts.Users, out: &daemon.Output{}}
	fail := func(err error) (*Server, error) {
		s.Stop()
		return nil, err
	}
	ports, err := daemon.FreePorts(opts.Addr, 2)
	if err != nil {
		return fail(err)
	}
	s.IMAPPort, s.POP3Port = ports[0], ports[1]
	s.IMAPAddr = net.JoinHostPort(opts.Addr, strconv.Itoa(s.IMAPPort))
	s.POP3Addr = net.JoinHostPort(opts.Addr, strconv.Itoa(s.POP3Port))
	for _, d := range []string{"lib", "spool", "run"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o750); err != nil {
			return fail(err)
		}
	}
	conf := filepath.Join(dir, "imapd.conf")
	imapd := fmt.Sprintf(`configdirectory: %[1]s/lib
partition-default: %[1]s/spool
admins: %[2]s
servername: localhost
cyrus_user: %[3]s
sasl_pwcheck_method: alwaystrue
sasl_mech_list: PLAIN LOGIN
allowplaintext: yes
altnamespace: no
unixhierarchysep: no
idlesocket: %[1]s/run/idle
notifysocket: %[1]s/run/notify
lmtpsocket: %[1]s/run/lmtp
mboxname_lockpath: %[1]s/run/lock
proc_path: %[1]s/run/proc
imapidlepoll: 1
`, dir, Admin, runAs)
	if err := os.WriteFile(conf, []byte(imapd), 0o644); err != nil {
		return fail(err)
	}
	cyrusConf := fmt.Sprintf(`START {
  recover cmd="%[1]s -C %[2]s -r"
}
SERVICES {
  imap cmd="%[3]s -C %[2]s" listen="%[5]s" prefork=2
  pop3 cmd="%[4]s -C %[2]s" listen="%[6]s" prefork=1
}
EVENTS {
}
DAEMON {
}
`, bin("ctl_cyrusdb"), conf, bin("imapd"), bin("pop3d"), s.IMAPAddr, s.POP3Addr)
	if err := os.WriteFile(filepath.Join(dir, "cyrus.conf"), []byte(cyrusConf), 0o644); err != nil {
		return fail(err)
	}
	u, err := user.Lookup(runAs)
	if err != nil {
		return fail(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	}); err != nil {
		return fail(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return fail(err)
	}
	s.cmd = exec.Command(bin("master"), "-C", conf, "-M", filepath.Join(dir, "cyrus.conf"), "-p", filepath.Join(dir, "run/master.pid"), "-D")
	s.cmd.Env = append(os.Environ(), "LD_LIBRARY_PATH="+libDir())
	s.cmd.Dir = dir
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return fail(fmt.Errorf("cyrus: start master: %w", err))
	}
	s.done = make(chan struct{})
	go func() { s.waitErr = s.cmd.Wait(); close(s.done) }()
	if err := s.waitReady(15 * time.Second); err != nil {
		return fail(err)
	}
	for _, name := range s.Users {
		if err := s.admin("CREATE user." + name); err != nil {
			return fail(fmt.Errorf("cyrus: creating the mailbox of %s: %w", name, err))
		}
	}
	return s, nil
}

func (s *Server) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, a := range []string{s.IMAPAddr, s.POP3Addr} {
		for {
			select {
			case <-s.done:
				return fmt.Errorf("cyrus master exited during startup (%v): %s", s.waitErr, s.out.String())
			default:
			}
			c, err := net.DialTimeout("tcp", a, 200*time.Millisecond)
			if err == nil {
				// The master accepts before a service has started: wait
				// for the greeting.
				_ = c.SetDeadline(time.Now().Add(2 * time.Second))
				line, rerr := bufio.NewReader(c).ReadString('\n')
				c.Close()
				if rerr == nil && (strings.HasPrefix(line, "* OK") || strings.HasPrefix(line, "+OK")) {
					break
				}
				err = fmt.Errorf("greeting %q %v", line, rerr)
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("cyrus did not serve on %s within %v: %v\n%s", a, timeout, err, s.out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// Session is an IMAP connection to the instance, logged in.
type Session struct {
	c   net.Conn
	br  *bufio.Reader
	tag int
}

// Dial logs user in over IMAP (any password works).
func (s *Server) Dial(user string) (*Session, error) {
	c, err := net.DialTimeout("tcp", s.IMAPAddr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	ss := &Session{c: c, br: bufio.NewReader(c)}
	if line, err := ss.br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "* OK") {
		c.Close()
		return nil, fmt.Errorf("cyrus greeting %q: %v", line, err)
	}
	if _, err := ss.Run(fmt.Sprintf("LOGIN %s x", user)); err != nil {
		c.Close()
		return nil, err
	}
	return ss, nil
}

// Run sends one command (a tag is added) and returns the untagged lines,
// or an error unless the tagged reply is OK.
func (ss *Session) Run(cmd string) ([]string, error) {
	ss.tag++
	tag := fmt.Sprintf("h%d", ss.tag)
	if _, err := fmt.Fprintf(ss.c, "%s %s\r\n", tag, cmd); err != nil {
		return nil, err
	}
	var lines []string
	for {
		line, err := ss.br.ReadString('\n')
		if err != nil {
			return lines, err
		}
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line, tag+" OK") {
				return lines, fmt.Errorf("%s: %s", strings.Fields(cmd)[0], strings.TrimSpace(line))
			}
			return lines, nil
		}
		lines = append(lines, line)
	}
}

// Close logs out.
func (ss *Session) Close() {
	_, _ = ss.Run("LOGOUT")
	ss.c.Close()
}

func (s *Server) admin(cmd string) error {
	ss, err := s.Dial(Admin)
	if err != nil {
		return err
	}
	defer ss.Close()
	_, err = ss.Run(cmd)
	return err
}

// Deliver appends msg (CRLF line endings are added) to user's INBOX.
func (s *Server) Deliver(user, msg string) error {
	msg = strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")
	ss, err := s.Dial(user)
	if err != nil {
		return err
	}
	defer ss.Close()
	ss.tag++
	tag := fmt.Sprintf("h%d", ss.tag)
	if _, err := fmt.Fprintf(ss.c, "%s APPEND INBOX {%d+}\r\n%s\r\n", tag, len(msg), msg); err != nil {
		return err
	}
	for {
		line, err := ss.br.ReadString('\n')
		if err != nil {
			return err
		}
		if strings.HasPrefix(line, tag+" ") {
			if !strings.HasPrefix(line, tag+" OK") {
				return fmt.Errorf("APPEND: %s", strings.TrimSpace(line))
			}
			return nil
		}
	}
}

// Output returns what the master printed (Cyrus logs to syslog).
func (s *Server) Output() string { return s.out.String() }

// Stop stops the master and its services (SIGTERM, then SIGKILL to the
// process group) and removes the directory. Idempotent.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		if s.cmd != nil && s.cmd.Process != nil {
			pid := s.cmd.Process.Pid
			_ = syscall.Kill(pid, syscall.SIGTERM)
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
			}
			_ = syscall.Kill(-pid, syscall.SIGKILL)
			select {
			case <-s.done:
			case <-time.After(5 * time.Second):
			}
			for deadline := time.Now().Add(5 * time.Second); syscall.Kill(-pid, 0) == nil && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
			}
		}
		if s.Dir != "" {
			_ = os.RemoveAll(s.Dir)
		}
	})
}
