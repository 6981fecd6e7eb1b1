// Package sqltest starts real SQL servers for tests: PostgreSQL (Debian
// package postgresql: initdb, then postgres in the foreground) and MariaDB
// (Debian package mariadb-server: mariadb-install-db, then mariadbd), each
// with its data, socket and log in its own temporary directory, listening
// on a unix socket and on a free TCP port of 127.0.0.1 with password
// authentication, so that a test can connect the way a deployment does and
// also get a login refused.
//
// Starting a server costs about a second, so a test binary shares one of
// each: TestMain calls StartPostgres / StartMariaDB and Close, tests call
// Require (which skips, or fails when PORTICO_REQUIRE_DOVECOT=1, if the
// server could not be started) and NewDatabase for a database and an owner
// of their own. Stop and Start stop and restart a server on the same port
// and data, for tests of a source that goes down and comes back.
//
// What the servers need here (Debian 12: PostgreSQL 15, MariaDB 10.11):
//
//   - postgres refuses to run as root: as root the directory is handed to
//     the system user "postgres" (created by the postgresql package) and
//     initdb and postgres run with its uid; otherwise as the caller.
//     Local (unix socket) logins are trusted, TCP ones need a password
//     (scram-sha-256); fsync is off.
//   - mariadb-install-db resolves the host name unless told
//     --skip-name-resolve, which costs about 20 seconds on a machine without
//     DNS; mariadbd runs as root only with --user=root. root@localhost has
//     no password and logs in over the socket.
//   - Both are started in their own process group with a parent-death
//     signal, so a test binary that dies does not leave them running.
package sqltest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/portico-mail/portico/integration/internal/daemon"
)

// EnvRequire, set to "1", turns "server unavailable" into a failed test
// instead of a skipped one. It is the variable integration/dovecot reads:
// scripts/test.sh sets it once it has installed the system packages, this
// package's among them.
const EnvRequire = "PORTICO_REQUIRE_DOVECOT"

// EnvKeep, set to "1", keeps each server's directory after Close.
const EnvKeep = "PORTICO_KEEP_SQL"

// ErrUnavailable is wrapped by the error of StartPostgres or StartMariaDB
// when the server's programs are not installed here.
var ErrUnavailable = errors.New("sql server unavailable")

// Driver names, as routing/source/sqlsrc spells them.
const (
	Postgres = "postgres"
	MySQL    = "mysql"
)

const startTimeout = 30 * time.Second

// Server is a running (or stopped) PostgreSQL or MariaDB server.
type Server struct {
	Driver string // Postgres or MySQL
	Dir    string // temporary directory: data/, the socket, server.log
	Host   string // "127.0.0.1"
	Port   int    // TCP port on Host
	Socket string // unix socket path (PostgreSQL: the socket's directory)
	// LogFile is the server's output.
	LogFile string

	bin   string   // postgres or mariadbd
	args  []string // its arguments but the port
	cred  *syscall.Credential
	mu    sync.Mutex
	cmd   *exec.Cmd
	done  chan struct{}
	admin *sql.DB
}

// Require is what a test calls on the error its TestMain got from
// StartPostgres or StartMariaDB: nothing when nil; otherwise it skips the
// test, or fails it when EnvRequire is set (or the server is installed but
// did not start).
func Require(tb testing.TB, err error) {
	tb.Helper()
	if err == nil {
		return
	}
	if errors.Is(err, ErrUnavailable) && os.Getenv(EnvRequire) != "1" {
		tb.Skipf("skipping: %v (install it, or set %s=1 to fail instead)", err, EnvRequire)
	}
	tb.Fatalf("sql server: %v", err)
}

// StartPostgres initialises a PostgreSQL cluster in a new temporary
// directory and starts it. The caller must Close it.
func StartPostgres() (*Server, error) {
	bin, err := postgresBinary()
	if err != nil {
		return nil, err
	}
	initdb := filepath.Join(filepath.Dir(bin), "initdb")
	if _, err := os.Stat(initdb); err != nil {
		return nil, fmt.Errorf("%w: initdb not found beside %s", ErrUnavailable, bin)
	}
	s := &Server{Driver: Postgres, Host: "127.0.0.1", bin: bin}
	if s.Dir, err = os.MkdirTemp("", "portico-pg-"); err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			s.removeDir()
			return nil, fmt.Errorf("%w: running as root and no system user \"postgres\" to run PostgreSQL as (postgres refuses root)", ErrUnavailable)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		s.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(s.Dir, uid, gid); err != nil {
			s.removeDir()
			return nil, err
		}
	}
	s.Socket = s.Dir
	s.LogFile = filepath.Join(s.Dir, "server.log")
	data := filepath.Join(s.Dir, "data")
	cmd := exec.Command(initdb, "-D", data, "-U", "postgres", "--auth-local=trust",
		"--auth-host=scram-sha-256", "--no-sync", "--no-instructions", "-E", "UTF8", "--locale=C")
	cmd.Env = s.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		s.removeDir()
		return nil, fmt.Errorf("initdb: %v: %s", err, tail(string(out)))
	}
	s.args = []string{"-D", data, "-k", s.Dir, "-h", s.Host,
		"-F", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
		"-c", "shared_buffers=32MB", "-c", "max_connections=60", "-c", "log_min_messages=warning"}
	if err := s.startFresh(); err != nil {
		s.removeDir()
		return nil, err
	}
	return s, nil
}

// StartMariaDB initialises a MariaDB data directory in a new temporary
// directory and starts mariadbd on it. The caller must Close it.
func StartMariaDB() (*Server, error) {
	bin, err := lookPath("mariadbd", "/usr/sbin/mariadbd", "/usr/sbin/mysqld")
	if err != nil {
		return nil, fmt.Errorf("%w: mariadbd not found (Debian package mariadb-server)", ErrUnavailable)
	}
	install, err := lookPath("mariadb-install-db", "/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db")
	if err != nil {
		return nil, fmt.Errorf("%w: mariadb-install-db not found (Debian package mariadb-server)", ErrUnavailable)
	}
	s := &Server{Driver: MySQL, Host: "127.0.0.1", bin: bin}
	if s.Dir, err = os.MkdirTemp("", "portico-mariadb-"); err != nil {
		return nil, err
	}
	s.Socket = filepath.Join(s.Dir, "mysqld.sock")
	s.LogFile = filepath.Join(s.Dir, "server.log")
	data := filepath.Join(s.Dir, "data")
	// Small, unsynced InnoDB files: the servers hold test data only.
	common := []string{"--skip-name-resolve", "--skip-log-bin", "--innodb-log-file-size=8M",
		"--innodb-buffer-pool-size=32M", "--innodb-flush-log-at-trx-commit=0",
		"--innodb-doublewrite=0", "--innodb-flush-method=nosync"}
	var asUser []string
	if os.Geteuid() == 0 {
		asUser = []string{"--user=root"}
	}
	args := append([]string{"--no-defaults", "--datadir=" + data,
		"--auth-root-authentication-method=normal", "--skip-test-db"}, asUser...)
	cmd := exec.Command(install, append(args, common...)...)
	cmd.Env = s.env()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if out, err := cmd.CombinedOutput(); err != nil {
		s.removeDir()
		return nil, fmt.Errorf("mariadb-install-db: %v: %s", err, tail(string(out)))
	}
	s.args = append(append([]string{"--no-defaults", "--datadir=" + data, "--socket=" + s.Socket,
		"--pid-file=" + filepath.Join(s.Dir, "mysqld.pid"), "--bind-address=" + s.Host,
		"--innodb-use-native-aio=0", "--character-set-server=utf8mb4",
		"--collation-server=utf8mb4_unicode_ci"}, asUser...), common...)
	if err := s.startFresh(); err != nil {
		s.removeDir()
		return nil, err
	}
	return s, nil
}

// startFresh starts the server on a free port, retrying with another port
// when the one picked was taken in between.
func (s *Server) startFresh() error {
	_, err := daemon.Retry(func() (struct{}, error) {
		ports, err := daemon.FreePorts(s.Host, 1)
		if err != nil {
			return struct{}{}, err
		}
		s.Port = ports[0]
		if err := s.Start(); err != nil {
			if daemon.AddrInUse(s.Log()) {
				return struct{}{}, fmt.Errorf("%w: %w", daemon.ErrAddrInUse, err)
			}
			return struct{}{}, err
		}
		return struct{}{}, nil
	})
	return err
}

// Start starts a stopped server on its port and data, and waits until it
// accepts logins.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("sqltest: server already running")
	}
	logf, err := os.OpenFile(s.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append([]string(nil), s.args...)
	if s.Driver == Postgres {
		args = append(args, "-p", strconv.Itoa(s.Port))
	} else {
		args = append(args, "--port="+strconv.Itoa(s.Port))
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Env = s.env()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: s.cred}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	s.cmd, s.done = cmd, done

	admin, err := s.openAdmin()
	if err == nil {
		err = waitReady(admin, done)
	}
	if err != nil {
		if admin != nil {
			admin.Close()
		}
		s.kill()
		return fmt.Errorf("%s on port %d did not start: %v\n%s", filepath.Base(s.bin), s.Port, err, tail(s.Log()))
	}
	s.admin = admin
	return nil
}

// waitReady pings until the server answers, the process ends, or the start
// timeout.
func waitReady(db *sql.DB, exited <-chan struct{}) error {
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := db.PingContext(ctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %v", startTimeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// openAdmin opens the superuser's pool over the unix socket.
func (s *Server) openAdmin() (*sql.DB, error) {
	if s.Driver == Postgres {
		cfg, err := pgx.ParseConfig(fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres sslmode=disable", s.Socket, s.Port))
		if err != nil {
			return nil, err
		}
		return stdlib.OpenDB(*cfg), nil
	}
	mc := mysql.NewConfig()
	mc.User, mc.Net, mc.Addr = "root", "unix", s.Socket
	mc.Logger = quietLogger{}
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(conn), nil
}

// Stop stops the server and keeps its data; Start starts it again.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	if s.admin != nil {
		s.admin.Close()
		s.admin = nil
	}
	// PostgreSQL: SIGINT is the "fast" shutdown (sessions are ended);
	// MariaDB shuts down on SIGTERM.
	sig := syscall.SIGTERM
	if s.Driver == Postgres {
		sig = syscall.SIGINT
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		s.kill()
		return errors.New("sqltest: server did not stop within 15 s: killed")
	}
	// Backends of a PostgreSQL server end with their postmaster; anything
	// left in the group goes now.
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	s.cmd, s.done = nil, nil
	return nil
}

// kill ends the process group at once; s.mu is held.
func (s *Server) kill() {
	if s.cmd == nil {
		return
	}
	_ = syscall.Kill(-s.cmd.Process.Pid, syscall.SIGKILL)
	<-s.done
	s.cmd, s.done = nil, nil
}

// Close stops the server and removes its directory (unless EnvKeep).
func (s *Server) Close() error {
	err := s.Stop()
	if os.Getenv(EnvKeep) != "1" {
		s.removeDir()
	}
	return err
}

func (s *Server) removeDir() {
	if s.Dir != "" {
		_ = os.RemoveAll(s.Dir)
	}
}

// Admin is a pool logged in as the server's superuser over its socket;
// it is closed by Stop.
func (s *Server) Admin() *sql.DB {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.admin
}

// Log returns what the server printed.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.LogFile)
	return string(b)
}

// Addr is the server's TCP address.
func (s *Server) Addr() string { return net.JoinHostPort(s.Host, strconv.Itoa(s.Port)) }

// DSN is the connection string of user with password to database db over
// TCP, in the driver's own syntax (a URL for PostgreSQL, the
// go-sql-driver form for MySQL).
func (s *Server) DSN(user, password, db string) string {
	if s.Driver == Postgres {
		u := url.URL{Scheme: "postgres", User: url.UserPassword(user, password), Host: s.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
		return u.String()
	}
	mc := mysql.NewConfig()
	mc.User, mc.Passwd, mc.Net, mc.Addr, mc.DBName = user, password, "tcp", s.Addr(), db
	return mc.FormatDSN()
}

// Database is a database of its own with an owner that logs in with a
// password over TCP.
type Database struct {
	Name     string // the database's and its owner's name
	Password string
	DSN      string // the owner's connection string (Server.DSN)
	DB       *sql.DB
}

var identRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,30}$`)

// NewDatabase creates database name and a user of the same name owning it,
// with a fresh password, and opens a pool logged in as that user. Names are
// lower-case identifiers. The caller may Close Database.DB; the database
// lives as long as the server.
func (s *Server) NewDatabase(name string) (*Database, error) {
	if !identRE.MatchString(name) {
		return nil, fmt.Errorf("sqltest: database name %q: want [a-z][a-z0-9_]*", name)
	}
	admin := s.Admin()
	if admin == nil {
		return nil, errors.New("sqltest: server stopped")
	}
	d := &Database{Name: name, Password: "pw-" + strconv.FormatInt(time.Now().UnixNano(), 36)}
	var stmts []string
	if s.Driver == Postgres {
		stmts = []string{
			fmt.Sprintf(`CREATE ROLE "%s" LOGIN PASSWORD '%s'`, name, d.Password),
			fmt.Sprintf(`CREATE DATABASE "%s" OWNER "%s"`, name, name),
		}
	} else {
		stmts = []string{
			fmt.Sprintf("CREATE DATABASE `%s`", name),
			fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", name, d.Password),
			fmt.Sprintf("GRANT ALL ON `%s`.* TO '%s'@'%%'", name, name),
		}
	}
	for _, q := range stmts {
		if _, err := admin.Exec(q); err != nil {
			return nil, fmt.Errorf("sqltest: %s: %w", q, err)
		}
	}
	d.DSN = s.DSN(name, d.Password, name)
	db, err := OpenDSN(s.Driver, d.DSN)
	if err != nil {
		return nil, err
	}
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("sqltest: log in as %s: %w", name, err)
	}
	d.DB = db
	return d, nil
}

// OpenDSN opens a pool with driver ("postgres" or "mysql") on dsn.
func OpenDSN(driver, dsn string) (*sql.DB, error) {
	if driver == Postgres {
		cfg, err := pgx.ParseConfig(dsn)
		if err != nil {
			return nil, err
		}
		return stdlib.OpenDB(*cfg), nil
	}
	mc, err := mysql.ParseDSN(dsn)
	if err != nil {
		return nil, err
	}
	mc.Logger = quietLogger{}
	conn, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, err
	}
	return sql.OpenDB(conn), nil
}

// quietLogger drops go-sql-driver's own log lines ("closing bad idle
// connection", printed while a server restarts).
type quietLogger struct{}

func (quietLogger) Print(...any) {}

// env is the servers' environment: no PG* or MYSQL_* variables of the
// caller's, the C locale.
func (s *Server) env() []string {
	return []string{"PATH=" + os.Getenv("PATH"), "LC_ALL=C", "HOME=" + s.Dir, "TZ=UTC"}
}

// postgresBinary finds postgres on PATH or in Debian's versioned
// directories (the newest), where the postgresql package installs it.
func postgresBinary() (string, error) {
	if p, err := exec.LookPath("postgres"); err == nil {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r, nil
		}
		return p, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/postgres")
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	if len(dirs) > 0 {
		return dirs[0], nil
	}
	return "", fmt.Errorf("%w: postgres not found on PATH or in /usr/lib/postgresql/*/bin (Debian package postgresql)", ErrUnavailable)
}

func version(bin string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(bin))))
	return v
}

func lookPath(name string, fallbacks ...string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, f := range fallbacks {
		if fi, err := os.Stat(f); err == nil && !fi.IsDir() {
			return f, nil
		}
	}
	return "", fmt.Errorf("%s not found", name)
}

// tail is the last lines of a log, for an error.
func tail(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > 15 {
		lines = lines[len(lines)-15:]
	}
	return strings.Join(lines, "\n")
}

// StartBoth starts a PostgreSQL and a MariaDB server at once (each takes a
// few seconds, mostly waiting), for a TestMain.
func StartBoth() (pg, mdb *Server, pgErr, mdbErr error) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		pg, pgErr = StartPostgres()
	}()
	mdb, mdbErr = StartMariaDB()
	wg.Wait()
	return
}
