// Package ldaptest starts a real OpenLDAP slapd for tests and benchmarks:
// one foreground process per instance, from a slapd.conf and an mdb
// database written into its own temporary directory, listening on
// ldap://127.0.0.1:<free port>, on ldapi:// (a socket in that directory)
// and, with Options.TLS, on ldaps://127.0.0.1:<free port> with a
// certificate from a throwaway CA (StartTLS then works on the ldap://
// listener too).
//
// Tests call Start, which skips the test when slapd cannot be run here
// (unless PORTICO_REQUIRE_DOVECOT=1, which scripts/test.sh sets once it
// has installed the system packages, slapd among them: then it fails).
// Programs (the benchmarks) call StartProcess and Stop themselves.
//
// The directory holds, besides what Options.LDIF adds:
//
//	dc=example,dc=org                      (Options.Suffix)
//	ou=people,dc=example,dc=org            (Server.People)
//	ou=system,dc=example,dc=org
//	cn=portico,ou=system,dc=example,dc=org (Server.ReaderDN, a reader account)
//
// The rootdn (Server.RootDN, RootPassword) writes; the reader may read
// everything but passwords, and search past the size limit only with the
// paged results control (Options.ReaderLimits). The schemas loaded are
// core, cosine, inetorgperson and misc (mailHost, mailRoutingAddress:
// Perdition's and Dovecot's routing attributes).
//
// What this relies on (OpenLDAP 2.5, Debian 12 packages slapd and
// ldap-utils): back_mdb is a module in /usr/lib/ldap; slapd -d 0 stays in
// the foreground; slapadd loads an LDIF offline (with -q, fast enough for a
// million entries) and keeps the createTimestamp and modifyTimestamp an
// entry states, which lets a test give entries an old timestamp.
package ldaptest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-ldap/ldap/v3"

	"github.com/portico-mail/portico/integration/internal/daemon"
	"github.com/portico-mail/portico/integration/testcert"
)

// EnvRequire is the environment variable that turns "slapd unavailable"
// from a skipped test into a failed one when set to "1". It is the
// variable the Dovecot harness reads: scripts/test.sh sets it once it has
// installed every system package the integration tests use.
const EnvRequire = "PORTICO_REQUIRE_DOVECOT"

// EnvKeep, when set to "1", keeps the temporary directory of each instance
// after Stop, for debugging.
const EnvKeep = "PORTICO_KEEP_SLAPD"

// ErrUnavailable is wrapped by the errors of Available and StartProcess when
// slapd cannot be run on this machine at all.
var ErrUnavailable = errors.New("slapd unavailable")

// Defaults.
const (
	DefaultSuffix         = "dc=example,dc=org"
	DefaultRootPassword   = "root-secret"
	DefaultReaderPassword = "reader-secret"
	// DefaultReaderLimits lets the reader page through any number of
	// entries while a search without the paged results control stays
	// bounded by the size limit (500 unless Options.SizeLimit).
	DefaultReaderLimits = "size.prtotal=unlimited"
	defaultStartTimeout = 15 * time.Second
)

// Where Debian installs OpenLDAP's modules and schemas.
var (
	ModulePath = "/usr/lib/ldap"
	SchemaDir  = "/etc/ldap/schema"
)

var schemas = []string{"core", "cosine", "inetorgperson", "misc"}

// Options configure one slapd instance.
type Options struct {
	// Suffix is the database's suffix; default DefaultSuffix. Its first
	// component must be dc= (the base entry is a dcObject).
	Suffix string
	// LDIF is added to the database with slapadd before slapd starts
	// (after the base entries); LDIFFile likewise, from a file (for large
	// loads: the benchmarks' million entries).
	LDIF     string
	LDIFFile string
	// TLS adds an ldaps:// listener and makes StartTLS available on the
	// ldap:// one, with a certificate for 127.0.0.1 and localhost signed
	// by a fresh CA (Server.CAFile).
	TLS bool
	// SizeLimit is slapd's global sizelimit; 0 keeps slapd's default (500).
	SizeLimit int
	// ReaderLimits is the `limits` clause for the reader account;
	// default DefaultReaderLimits. "-" sets none (the reader is then held
	// to SizeLimit even when paging).
	ReaderLimits string
	// MaxSize is the mdb map size in bytes; default 1 GiB (a sparse file).
	MaxSize int64
	// StartTimeout bounds the wait for the listeners; default 15 s.
	StartTimeout time.Duration
	// Debug is slapd's -d level; default "0" (nothing but fatal errors).
	Debug string
}

// Server is a running slapd instance.
type Server struct {
	Dir      string // temporary directory: slapd.conf, db/, ldapi, TLS files
	Suffix   string
	People   string // ou=people,<suffix>: where tests put users
	URL      string // ldap://127.0.0.1:<port>
	LDAPSURL string // ldaps://127.0.0.1:<port> (TLS only)
	LDAPIURL string // ldapi://<socket>
	Addr     string // host:port of the ldap:// listener
	TLSAddr  string // host:port of the ldaps:// listener (TLS only)

	RootDN, RootPassword     string
	ReaderDN, ReaderPassword string

	// TLS material (TLS only): the CA that signed the server certificate.
	CAFile    string
	CACertPEM []byte

	conf    string
	debug   string
	timeout time.Duration

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	output  *daemon.Output
	removed bool
}

// Available reports whether slapd can be started here: nil when slapd,
// slapadd, ldapmodify, the mdb module and the schemas exist; otherwise an
// error wrapping ErrUnavailable that says what is missing.
func Available() error {
	var missing []string
	for _, b := range []string{"slapd", "slapadd"} {
		if _, err := lookPath(b, "/usr/sbin/"+b); err != nil {
			missing = append(missing, err.Error())
		}
	}
	if _, err := lookPath("ldapmodify", "/usr/bin/ldapmodify"); err != nil {
		missing = append(missing, err.Error())
	}
	if _, err := os.Stat(filepath.Join(ModulePath, "back_mdb.so")); err != nil {
		missing = append(missing, "the mdb backend module: "+err.Error())
	}
	for _, s := range schemas {
		if _, err := os.Stat(filepath.Join(SchemaDir, s+".schema")); err != nil {
			missing = append(missing, "schema "+s+": "+err.Error())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (on Debian: apt-get install slapd ldap-utils)", ErrUnavailable, strings.Join(missing, "; "))
	}
	return nil
}

// Start starts an instance for a test and stops it (and removes its
// directory) in t.Cleanup. When slapd is unavailable the test is skipped,
// or failed if PORTICO_REQUIRE_DOVECOT=1. If the test failed, slapd's
// output is written to the test log.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	return daemon.Start(t, "slapd", Available(), EnvRequire,
		func() (*Server, error) { return StartProcess(opts) },
		(*Server).Remove,
		(*Server).Output)
}

// StartProcess creates and starts an instance without a testing.TB; the
// caller must call Remove. It waits until every listener answers.
func StartProcess(opts Options) (*Server, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	// A port picked here can be taken by someone else before slapd binds
	// it: retry with fresh ports then.
	return daemon.Retry(func() (*Server, error) { return startOnce(opts) })
}

func startOnce(opts Options) (s *Server, err error) {
	if opts.Suffix == "" {
		opts.Suffix = DefaultSuffix
	}
	first, _, _ := strings.Cut(opts.Suffix, ",")
	dc, ok := strings.CutPrefix(first, "dc=")
	if !ok || dc == "" || strings.ContainsAny(dc, "=+\\\"") {
		return nil, fmt.Errorf("ldaptest: Suffix %q: want a dc= first component", opts.Suffix)
	}
	if opts.ReaderLimits == "" {
		opts.ReaderLimits = DefaultReaderLimits
	}
	if opts.MaxSize <= 0 {
		opts.MaxSize = 1 << 30
	}
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = defaultStartTimeout
	}
	if opts.Debug == "" {
		opts.Debug = "0"
	}

	// The ldapi socket path is limited to 108 bytes: keep it short.
	dir, err := os.MkdirTemp(tempBase(), "slapd-")
	if err != nil {
		return nil, fmt.Errorf("ldaptest: %w", err)
	}
	defer func() {
		if err != nil && os.Getenv(EnvKeep) != "1" {
			os.RemoveAll(dir)
		}
	}()
	s = &Server{
		Dir:            dir,
		Suffix:         opts.Suffix,
		People:         "ou=people," + opts.Suffix,
		RootDN:         "cn=admin," + opts.Suffix,
		RootPassword:   DefaultRootPassword,
		ReaderDN:       "cn=portico,ou=system," + opts.Suffix,
		ReaderPassword: DefaultReaderPassword,
		LDAPIURL:       "ldapi://" + url.PathEscape(filepath.Join(dir, "ldapi")),
		conf:           filepath.Join(dir, "slapd.conf"),
		debug:          opts.Debug,
		timeout:        opts.StartTimeout,
		output:         &daemon.Output{},
	}
	n := 1
	if opts.TLS {
		n = 2
	}
	ports, err := daemon.FreePorts("127.0.0.1", n)
	if err != nil {
		return nil, err
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	s.URL = "ldap://" + s.Addr
	if opts.TLS {
		s.TLSAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[1]))
		s.LDAPSURL = "ldaps://" + s.TLSAddr
	}
	if err := os.Mkdir(filepath.Join(dir, "db"), 0o700); err != nil {
		return nil, fmt.Errorf("ldaptest: %w", err)
	}

	var certFile, keyFile string
	if opts.TLS {
		ca, err := testcert.NewCA()
		if err != nil {
			return nil, err
		}
		s.CAFile = filepath.Join(dir, "ca.pem")
		s.CACertPEM = ca.PEM
		if err := ca.WriteCA(s.CAFile); err != nil {
			return nil, fmt.Errorf("ldaptest: %w", err)
		}
		certFile, keyFile, err = ca.Issue(filepath.Join(dir, "tls"), "localhost", "127.0.0.1")
		if err != nil {
			return nil, err
		}
	}

	var conf strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&conf, format+"\n", args...) }
	w("# Generated by github.com/portico-mail/portico/integration/ldaptest")
	for _, sc := range schemas {
		w("include %s", filepath.Join(SchemaDir, sc+".schema"))
	}
	w("pidfile %s", filepath.Join(dir, "slapd.pid"))
	w("argsfile %s", filepath.Join(dir, "slapd.args"))
	w("modulepath %s", ModulePath)
	w("moduleload back_mdb")
	if opts.SizeLimit > 0 {
		w("sizelimit %d", opts.SizeLimit)
	}
	if opts.TLS {
		w("TLSCACertificateFile %s", s.CAFile)
		w("TLSCertificateFile %s", certFile)
		w("TLSCertificateKeyFile %s", keyFile)
	}
	w("database mdb")
	w("maxsize %d", opts.MaxSize)
	w("suffix %q", s.Suffix)
	w("rootdn %q", s.RootDN)
	w("rootpw %s", s.RootPassword)
	w("directory %s", filepath.Join(dir, "db"))
	// modifyTimestamp: the incremental sync's >= filter.
	w("index objectClass eq")
	w("index uid,mail eq")
	w("index modifyTimestamp eq")
	w("access to attrs=userPassword by anonymous auth by * none")
	w("access to * by dn.exact=%q read by * none", s.ReaderDN)
	if opts.ReaderLimits != "-" {
		w("limits dn.exact=%q %s", s.ReaderDN, opts.ReaderLimits)
	}
	if err := os.WriteFile(s.conf, []byte(conf.String()), 0o600); err != nil {
		return nil, fmt.Errorf("ldaptest: %w", err)
	}

	base := fmt.Sprintf(`dn: %[1]s
objectClass: dcObject
objectClass: organization
dc: %[2]s
o: Portico test

dn: ou=people,%[1]s
objectClass: organizationalUnit
ou: people

dn: ou=system,%[1]s
objectClass: organizationalUnit
ou: system

dn: %[3]s
objectClass: applicationProcess
objectClass: simpleSecurityObject
cn: portico
userPassword: %[4]s
`, s.Suffix, dc, s.ReaderDN, s.ReaderPassword)
	if err := s.slapadd(strings.NewReader(base)); err != nil {
		return nil, err
	}
	if opts.LDIF != "" {
		if err := s.slapadd(strings.NewReader(opts.LDIF)); err != nil {
			return nil, err
		}
	}
	if opts.LDIFFile != "" {
		f, err := os.Open(opts.LDIFFile)
		if err != nil {
			return nil, fmt.Errorf("ldaptest: %w", err)
		}
		err = s.slapadd(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

// slapadd loads LDIF into the (stopped) database: quick mode, no
// consistency checks beyond the schema.
func (s *Server) slapadd(ldif io.Reader) error {
	bin, err := lookPath("slapadd", "/usr/sbin/slapadd")
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, "-q", "-f", s.conf)
	cmd.Stdin = ldif
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ldaptest: slapadd: %v: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Restart starts slapd again after Stop or Kill, on the same ports and
// database (or for the first time), and waits until it answers.
func (s *Server) Restart() error {
	s.mu.Lock()
	if s.removed {
		s.mu.Unlock()
		return errors.New("ldaptest: instance removed")
	}
	if s.running() {
		s.mu.Unlock()
		return errors.New("ldaptest: slapd is running")
	}
	bin, err := lookPath("slapd", "/usr/sbin/slapd")
	if err != nil {
		s.mu.Unlock()
		return err
	}
	urls := []string{s.URL + "/", s.LDAPIURL}
	if s.LDAPSURL != "" {
		urls = append(urls, s.LDAPSURL+"/")
	}
	cmd := exec.Command(bin, "-f", s.conf, "-h", strings.Join(urls, " "), "-d", s.debug)
	cmd.Dir = s.Dir
	cmd.Stdout, cmd.Stderr = s.output, s.output
	// Pdeathsig: slapd dies with a test binary that times out.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("ldaptest: start %s: %w", bin, err)
	}
	done := make(chan struct{})
	s.cmd, s.done = cmd, done
	go func() {
		err := cmd.Wait()
		s.mu.Lock()
		s.waitErr = err
		s.mu.Unlock()
		close(done)
	}()
	s.mu.Unlock()
	if err := s.waitReady(done); err != nil {
		s.Stop()
		return err
	}
	return nil
}

func (s *Server) running() bool {
	if s.done == nil {
		return false
	}
	select {
	case <-s.done:
		return false
	default:
		return true
	}
}

// waitReady polls every listener with an anonymous root DSE search.
func (s *Server) waitReady(done <-chan struct{}) error {
	urls := []string{s.URL, s.LDAPIURL}
	if s.LDAPSURL != "" {
		urls = append(urls, s.LDAPSURL)
	}
	deadline := time.Now().Add(s.timeout)
	for _, u := range urls {
		for {
			select {
			case <-done:
				return s.startFailure("slapd exited during startup")
			default:
			}
			err := s.ping(u)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return s.startFailure(fmt.Sprintf("slapd did not answer on %s within %v: %v", u, s.timeout, err))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return nil
}

func (s *Server) ping(u string) error {
	c, err := ldap.DialURL(u,
		ldap.DialWithDialer(&net.Dialer{Timeout: time.Second}),
		ldap.DialWithTLSConfig(s.TLSConfig()))
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetTimeout(time.Second)
	_, err = c.Search(ldap.NewSearchRequest("", ldap.ScopeBaseObject, ldap.NeverDerefAliases, 0, 0, false,
		"(objectClass=*)", []string{"namingContexts"}, nil))
	return err
}

func (s *Server) startFailure(msg string) error {
	s.mu.Lock()
	werr := s.waitErr
	s.mu.Unlock()
	out := strings.TrimSpace(s.output.String())
	err := fmt.Errorf("ldaptest: %s (%v)\n--- output ---\n%s", msg, werr, out)
	if daemon.AddrInUse(out) {
		return fmt.Errorf("%w: %w", daemon.ErrAddrInUse, err)
	}
	return err
}

// Stop terminates slapd (SIGTERM, SIGKILL after 10 s) and waits for it;
// the database stays for Restart. It is idempotent.
func (s *Server) Stop() { s.signal(syscall.SIGTERM) }

// Kill kills slapd at once (SIGKILL) and waits for it: the directory
// vanishes under its clients as in a crash. The database stays (mdb
// survives a kill) for Restart.
func (s *Server) Kill() { s.signal(syscall.SIGKILL) }

func (s *Server) signal(sig syscall.Signal) {
	s.mu.Lock()
	cmd, done := s.cmd, s.done
	s.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	pid := cmd.Process.Pid
	select {
	case <-done:
		return
	default:
	}
	_ = syscall.Kill(pid, sig)
	_ = syscall.Kill(pid, syscall.SIGCONT) // a paused slapd must run to exit
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL) // anything left in its group
}

// Remove stops slapd and removes its directory (unless
// PORTICO_KEEP_SLAPD=1).
func (s *Server) Remove() {
	s.Stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.removed {
		return
	}
	s.removed = true
	if os.Getenv(EnvKeep) != "1" {
		_ = os.RemoveAll(s.Dir)
	}
}

// Pause stops slapd with SIGSTOP and waits until it is stopped: it keeps
// its sockets, the kernel still accepts connections, and nothing answers
// (a hung directory). Resume continues it.
func (s *Server) Pause() error {
	if err := s.kill(syscall.SIGSTOP); err != nil {
		return err
	}
	stat := fmt.Sprintf("/proc/%d/stat", s.PID())
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		b, err := os.ReadFile(stat)
		if err != nil {
			return fmt.Errorf("ldaptest: %w", err)
		}
		// pid (comm) state ...
		if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && b[i+2] == 'T' {
			return nil
		}
	}
	return errors.New("ldaptest: slapd did not stop on SIGSTOP")
}

// Resume continues slapd after Pause.
func (s *Server) Resume() error { return s.kill(syscall.SIGCONT) }

func (s *Server) kill(sig syscall.Signal) error {
	pid := s.PID()
	if pid == 0 {
		return errors.New("ldaptest: slapd is not running")
	}
	return syscall.Kill(pid, sig)
}

// PID is slapd's process id (0 when it is not running).
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.running() {
		return 0
	}
	return s.cmd.Process.Pid
}

// Output returns what slapd wrote to its standard output and error.
func (s *Server) Output() string { return s.output.String() }

// Modify runs ldapmodify -a with ldif as the rootdn over ldapi: records
// without a changetype are added, others (changetype: modify, delete,
// modrdn) are applied as they say.
func (s *Server) Modify(ldif string) error {
	bin, err := lookPath("ldapmodify", "/usr/bin/ldapmodify")
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-a", "-x", "-H", s.LDAPIURL, "-D", s.RootDN, "-w", s.RootPassword)
	cmd.Stdin = strings.NewReader(ldif)
	// ldapmodify reads ~/.ldaprc and /etc/ldap/ldap.conf: keep them out.
	cmd.Env = append(os.Environ(), "LDAPNOINIT=1")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ldaptest: ldapmodify: %v: %s", err, strings.TrimSpace(out.String()))
	}
	return nil
}

// TLSConfig trusts the instance's CA (TLS only; nil otherwise).
func (s *Server) TLSConfig() *tls.Config {
	if s.CACertPEM == nil {
		return nil
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CACertPEM)
	return &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

// Person is the LDIF of a mail user under people: an inetOrgPerson with
// uid and mail (uid@example.org), and with a mailHost when host is not
// empty; extra lines ("attr: value") are appended as they are.
func Person(people, uid, host string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "dn: uid=%s,%s\n", ldap.EscapeDN(uid), people)
	b.WriteString("objectClass: inetOrgPerson\nobjectClass: inetLocalMailRecipient\n")
	fmt.Fprintf(&b, "uid: %s\ncn: %s\nsn: %s\nmail: %s@example.org\n", uid, uid, uid, uid)
	if host != "" {
		fmt.Fprintf(&b, "mailHost: %s\n", host)
	}
	for _, e := range extra {
		b.WriteString(e)
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	return b.String()
}

// WritePeople writes n Person entries to w, uid prefix0000000 and on
// (seven digits), host(i) their mailHost, and extra(i) (nil: none) their
// extra lines (a modifyTimestamp for slapadd, say): the LDIF of a large
// directory, for Options.LDIFFile.
func WritePeople(w io.Writer, people, prefix string, n int, host func(i int) string, extra func(i int) []string) error {
	bw := bufio.NewWriterSize(w, 1<<16)
	for i := 0; i < n; i++ {
		var more []string
		if extra != nil {
			more = extra(i)
		}
		if _, err := bw.WriteString(Person(people, fmt.Sprintf("%s%07d", prefix, i), host(i), more...)); err != nil {
			return err
		}
	}
	return bw.Flush()
}

// Stamp is the modifyTimestamp line of t, for an entry slapadd loads.
func Stamp(t time.Time) string { return "modifyTimestamp: " + t.UTC().Format("20060102150405Z") }

// ---- helpers ----

func tempBase() string {
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
