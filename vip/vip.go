// Package vip holds the floating service address: it adds the virtual IP
// addresses to an interface when this node is the owner, announces them
// (gratuitous ARP request and reply for IPv4, RFC 5227; unsolicited
// neighbour advertisement with the override flag for IPv6, RFC 4861
// §7.2.6), refreshes the announcements while owning, and removes them when
// it is not.
//
// Policy and mechanism are apart (as in MetalLB). The policy decides who
// holds the addresses. In the leader mode (policy.go, controller.go) they
// follow raft leadership (see DESIGN.md), seen through the narrow
// Leadership interface; Decide and OnLeadership are pure functions of the
// facts, and Controller gathers the facts, runs the guard, preemption and
// planned handovers, and calls SetOwner. In the spread mode (placement.go,
// spread.go) the leader places each address on one node (Place, a pure
// function), the placements are replicated, and Spread holds a node's
// addresses while its lease from the leader lasts (or it leads), and
// calls SetWant. The mechanism (Manager) carries that
// out: one goroutine owns all address changes and reconciles the
// interface against the desired state every Reconcile period, so a stale
// address (added by hand, left by a crash, or kept by a node that lost
// quorum) is removed within one period.
package vip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Address is one virtual IP: the address with the prefix length of its
// network (e.g. 198.18.0.100/24), and the interface that carries it.
type Address struct {
	Prefix    netip.Prefix
	Interface string
}

func (a Address) String() string { return a.Prefix.String() + "@" + a.Interface }

// Config configures a Manager. A zero BurstCount, BurstInterval, Refresh
// or Reconcile takes its default (DefaultConfig).
type Config struct {
	Addresses []Address
	// Burst announcements after acquiring: Count of them, Interval apart.
	BurstCount    int
	BurstInterval time.Duration
	// Refresh re-announces while owning (switches and routers age their
	// tables).
	Refresh time.Duration
	// Reconcile compares the interface with the desired state.
	Reconcile time.Duration
	// Verify, if set, is called before every refresh announcement; an error
	// means this node may no longer be the owner: the addresses are
	// released instead of announced (a node that woke from a freeze must
	// not re-steal the address before confirming it still owns it).
	Verify func() error
	// OnChange and OnAnnounce observe ownership changes (of each address)
	// and announcements. They run on the Manager's goroutine: they must
	// not block.
	OnChange   func(a Address, owned bool)
	OnAnnounce func(a Address)
	Log        *slog.Logger
}

// DefaultConfig returns the defaults documented in the README: 4
// announcements 1 s apart after acquiring, then one every 10 s, and the
// interface checked every 250 ms.
func DefaultConfig() Config {
	return Config{
		BurstCount:    4,
		BurstInterval: time.Second,
		Refresh:       10 * time.Second,
		Reconcile:     250 * time.Millisecond,
	}
}

// Defaults of the ownership policy (which node should hold the VIP, and
// how a planned move goes), documented in the README.
const (
	// DefaultPreemptDelay: a preferred node gets the VIP back after being
	// a live member this long.
	DefaultPreemptDelay = 30 * time.Second
	// DefaultMoveDrain: a planned move waits this long for sessions to end
	// at a response boundary before moving anyway.
	DefaultMoveDrain = 5 * time.Second
	// DefaultSweepGrace: a node that lost the VIP and knows of no other
	// leader ends its sessions on the VIP after this long (leader mode;
	// see Sweep): longer than an election on a loaded machine, shorter
	// than a client's patience.
	DefaultSweepGrace = 3 * time.Second
)

// Manager owns the virtual addresses of one node: it holds the wanted
// ones (SetOwner: all or none, the leader mode; SetWant: any subset, the
// spread mode) and none of the others.
type Manager struct {
	cfg      Config
	log      *slog.Logger
	want     atomic.Pointer[map[netip.Addr]bool] // nil: none
	detached atomic.Bool                         // Detach: hands off, the addresses stay as they are
	handedOn atomic.Bool                         // Detach found addresses held: they stay for another process
	verify   atomic.Pointer[func() error]
	kick     chan struct{}
	// rmu is held for a whole reconcile: Detach waits for one in flight,
	// so that none that started before it removes an address after it.
	rmu sync.Mutex

	mu      sync.Mutex
	st      map[netip.Addr]*addrState // by address, one per configured address
	changes uint64
	anns    uint64
}

// addrState is what the Manager knows of one address it manages.
type addrState struct {
	held     bool // present and announced by us
	acquired time.Time
	burstN   int
	lastAnn  time.Time
}

// New returns a Manager; Run starts it.
func New(cfg Config) (*Manager, error) {
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("vip: no addresses")
	}
	st := map[netip.Addr]*addrState{}
	for _, a := range cfg.Addresses {
		if !a.Prefix.IsValid() || a.Interface == "" {
			return nil, fmt.Errorf("vip: bad address %v", a)
		}
		if st[a.Prefix.Addr()] != nil {
			return nil, fmt.Errorf("vip: %v listed twice", a.Prefix.Addr())
		}
		st[a.Prefix.Addr()] = &addrState{}
	}
	d := DefaultConfig()
	if cfg.BurstCount <= 0 {
		cfg.BurstCount = d.BurstCount
	}
	if cfg.BurstInterval <= 0 {
		cfg.BurstInterval = d.BurstInterval
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = d.Refresh
	}
	if cfg.Reconcile <= 0 {
		cfg.Reconcile = d.Reconcile
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	m := &Manager{cfg: cfg, log: cfg.Log.With("component", "vip"), kick: make(chan struct{}, 1), st: st}
	m.SetVerify(cfg.Verify)
	return m, nil
}

// SetVerify replaces the ownership check used before refreshes.
func (m *Manager) SetVerify(f func() error) { m.verify.Store(&f) }

// SetOwner sets whether this node should hold all the addresses (true)
// or none. It never blocks; the change is applied by Run's goroutine at
// once.
func (m *Manager) SetOwner(own bool) {
	if !own {
		m.SetWant(nil)
		return
	}
	all := make([]netip.Addr, 0, len(m.cfg.Addresses))
	for _, a := range m.cfg.Addresses {
		all = append(all, a.Prefix.Addr())
	}
	m.SetWant(all)
}

// SetWant sets the addresses this node should hold (the others it must
// not hold); addresses it does not manage are ignored. It never blocks;
// Run's goroutine applies the change at once.
func (m *Manager) SetWant(addrs []netip.Addr) {
	w := make(map[netip.Addr]bool, len(addrs))
	for _, a := range addrs {
		if m.st[a] != nil {
			w[a] = true
		}
	}
	m.want.Store(&w)
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// wanted returns the desired set (never nil).
func (m *Manager) wanted() map[netip.Addr]bool {
	if w := m.want.Load(); w != nil {
		return *w
	}
	return map[netip.Addr]bool{}
}

// Release gives the addresses up at once and waits, up to timeout, until
// they are off the interfaces. A planned handover (`vip move`, shutdown,
// preemption) releases before it hands raft leadership over, so the next
// owner, which acquires as soon as it leads, never overlaps with this one.
// Ownership comes back only through SetOwner(true).
func (m *Manager) Release(timeout time.Duration) error {
	m.SetOwner(false)
	return m.waitGone(nil, timeout)
}

// waitGone waits, up to timeout, until the addresses (nil: all) are
// neither held nor on their interfaces.
func (m *Manager) waitGone(addrs []netip.Addr, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if !m.anyHeld(addrs) && !m.anyPresent(addrs) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("vip: addresses still held %v after release", timeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// ReleaseAddrs stops holding the addresses given (the others stay as
// wanted) and waits, up to timeout, until they are off the interfaces.
func (m *Manager) ReleaseAddrs(addrs []netip.Addr, timeout time.Duration) error {
	var keep []netip.Addr
	for a := range m.wanted() {
		if !slices.Contains(addrs, a) {
			keep = append(keep, a)
		}
	}
	m.SetWant(keep)
	if len(addrs) == 0 {
		return nil
	}
	return m.waitGone(addrs, timeout)
}

// RemoveAll removes the addresses from their interfaces, if present, and
// returns those it removed. It is for a process supervisor after Portico
// exited (`portico vip release` as systemd's ExecStopPost): a process
// killed outright leaves the VIP on the interface, and the kernel keeps
// answering ARP for it next to the new owner until something removes it.
// Never call it while a Manager runs for the same addresses.
func RemoveAll(addrs []Address) ([]Address, error) {
	var removed []Address
	var errs []error
	for _, a := range addrs {
		p, err := hasAddr(a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !p {
			continue
		}
		if err := delAddr(a); err != nil {
			errs = append(errs, fmt.Errorf("removing %v: %w", a, err))
			continue
		}
		removed = append(removed, a)
	}
	return removed, errors.Join(errs...)
}

// anyPresent reports whether any of the addresses (nil: all) is on its
// interface.
func (m *Manager) anyPresent(only []netip.Addr) bool {
	for _, a := range m.cfg.Addresses {
		if only != nil && !slices.Contains(only, a.Prefix.Addr()) {
			continue
		}
		if p, err := hasAddr(a); err != nil || p {
			return true
		}
	}
	return false
}

// anyHeld reports whether this node holds any of the addresses (nil: all).
func (m *Manager) anyHeld(only []netip.Addr) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for a, st := range m.st {
		if st.held && (only == nil || slices.Contains(only, a)) {
			return true
		}
	}
	return false
}

// Owned reports whether this node holds the addresses (any of them: in
// the leader mode they are held together).
func (m *Manager) Owned() bool { return m.anyHeld(nil) }

// Holds reports whether this node holds the address.
func (m *Manager) Holds(a netip.Addr) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	st := m.st[a]
	return st != nil && st.held
}

// Held returns the addresses this node holds, in the configured order.
func (m *Manager) Held() []netip.Addr {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []netip.Addr
	for _, a := range m.cfg.Addresses {
		if m.st[a.Prefix.Addr()].held {
			out = append(out, a.Prefix.Addr())
		}
	}
	return out
}

// Counters returns the ownership changes (an address acquired or
// released) and announcements (one per address and round) so far.
func (m *Manager) Counters() (changes, announcements uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changes, m.anns
}

// Addresses returns the configured addresses.
func (m *Manager) Addresses() []Address { return m.cfg.Addresses }

// Run reconciles until ctx ends, then releases the addresses. At start it
// removes addresses left on the interfaces by a crashed process (the
// desired state starts as "none").
func (m *Manager) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.Reconcile)
	defer t.Stop()
	m.reconcile()
	for {
		select {
		case <-ctx.Done():
			m.SetWant(nil)
			m.reconcile()
			return
		case <-m.kick:
			if m.detached.Load() {
				return
			}
		case <-t.C:
		}
		m.reconcile()
	}
}

// Detach stops managing the addresses without touching them: Run returns
// and leaves them as they are. For an in-place upgrade, where the new
// process takes over (and removing the address would cut the service).
// It returns once no reconcile is in flight: the old process then stops
// leading, which makes its desired state "none", and a reconcile that had
// begun before Detach but read the desired state after that would remove
// the address under the new process.
func (m *Manager) Detach() {
	if m.Owned() {
		m.handedOn.Store(true)
	}
	m.detached.Store(true)
	// Wait for a reconcile in flight: it sees detached before it changes
	// anything, and every later one returns at once.
	m.rmu.Lock()
	//lint:ignore SA2001 the empty critical section is the wait
	m.rmu.Unlock()
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// HandedOn reports whether Detach left held addresses on the interface
// for another process (the new process of an in-place upgrade).
func (m *Manager) HandedOn() bool { return m.handedOn.Load() }

func (m *Manager) reconcile() {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	m.reconcileLocked()
}

// reconcileLocked is reconcile with rmu held.
func (m *Manager) reconcileLocked() {
	if m.detached.Load() {
		return
	}
	want := m.wanted()
	now := time.Now()
	var acquired, restored, released, stale, announce []Address
	for _, a := range m.cfg.Addresses {
		ip := a.Prefix.Addr()
		w := want[ip]
		present, err := hasAddr(a)
		if err != nil {
			m.log.Error("reading interface addresses", "address", a.String(), "error", err)
			continue
		}
		missing, removed := false, false
		switch {
		case w && !present:
			missing = true
			if err := addAddr(a); err != nil {
				m.log.Error("adding virtual address", "address", a.String(), "error", err)
			}
		case !w && present:
			removed = true
			if err := delAddr(a); err != nil {
				m.log.Error("removing virtual address", "address", a.String(), "error", err)
			}
		}
		m.mu.Lock()
		st := m.st[ip]
		switch {
		case w && (!st.held || missing):
			if st.held {
				restored = append(restored, a)
			} else {
				m.changes++
				acquired = append(acquired, a)
			}
			st.held, st.acquired, st.burstN = true, now, 0
			st.lastAnn = time.Time{}
			announce = append(announce, a)
		case w:
			if m.due(st, now) {
				announce = append(announce, a)
			}
		case st.held || removed:
			if st.held {
				m.changes++
				released = append(released, a)
			} else {
				stale = append(stale, a)
			}
			st.held = false
		}
		m.mu.Unlock()
	}
	if len(acquired) > 0 {
		m.log.Info("acquired virtual addresses", "addresses", acquired)
	}
	if len(restored) > 0 {
		m.log.Warn("virtual address was missing from the interface; restored", "addresses", restored)
	}
	if len(released) > 0 {
		m.log.Info("released virtual addresses", "addresses", released)
	}
	if len(stale) > 0 {
		m.log.Warn("removed a stale virtual address this node does not own", "addresses", stale)
	}
	if m.cfg.OnChange != nil {
		for _, a := range acquired {
			m.cfg.OnChange(a, true)
		}
		for _, a := range released {
			m.cfg.OnChange(a, false)
		}
	}
	if len(announce) > 0 {
		m.announce(now, announce, len(acquired)+len(restored))
	}
}

// due: the address's burst continues, or its refresh is due.
func (m *Manager) due(st *addrState, now time.Time) bool {
	burst := st.burstN < m.cfg.BurstCount && now.Sub(st.lastAnn) >= m.cfg.BurstInterval
	return burst || now.Sub(st.lastAnn) >= m.cfg.Refresh
}

// announce sends one round for each address of as. The first round after
// an address is acquired (the first fresh of them) goes out at once; every
// other round confirms ownership first (Verify), burst rounds included: a
// node frozen (SIGSTOP, a VM pause) during its burst must not announce on
// waking and pull clients back before it learns it lost ownership. A
// failed check releases every address instead.
func (m *Manager) announce(now time.Time, as []Address, fresh int) {
	if fresh < len(as) {
		if v := *m.verify.Load(); v != nil {
			if err := v(); err != nil {
				m.log.Warn("could not confirm ownership before re-announcing; releasing", "error", err)
				m.SetWant(nil)
				m.reconcileLocked()
				return
			}
		}
	}
	for _, a := range as {
		if err := announce(a); err != nil {
			m.log.Warn("announcement failed", "address", a.String(), "error", err)
			continue
		}
		m.mu.Lock()
		m.anns++
		m.mu.Unlock()
		if m.cfg.OnAnnounce != nil {
			m.cfg.OnAnnounce(a)
		}
	}
	m.mu.Lock()
	for _, a := range as {
		st := m.st[a.Prefix.Addr()]
		st.lastAnn = now
		st.burstN++
	}
	m.mu.Unlock()
}

func nlAddr(a Address) *netlink.Addr {
	p := a.Prefix
	ipnet := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
	na := &netlink.Addr{IPNet: ipnet}
	// Never a source address: deprecated (preferred lifetime 0, valid
	// forever); with the network's prefix it is also a secondary address
	// on IPv4. No prefix route (the interface's own address has one), and
	// no duplicate address detection for IPv6 (usable at once).
	na.PreferedLft = 0
	na.ValidLft = math.MaxUint32
	na.Flags = unix.IFA_F_NOPREFIXROUTE
	if p.Addr().Is6() {
		na.Flags |= unix.IFA_F_NODAD
	}
	return na
}

func link(a Address) (netlink.Link, error) {
	l, err := netlink.LinkByName(a.Interface)
	if err != nil {
		return nil, fmt.Errorf("interface %s: %w", a.Interface, err)
	}
	return l, nil
}

func hasAddr(a Address) (bool, error) {
	l, err := link(a)
	if err != nil {
		return false, err
	}
	fam := netlink.FAMILY_V4
	if a.Prefix.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(l, fam)
	if err != nil {
		return false, err
	}
	want := a.Prefix.Addr().AsSlice()
	for _, x := range addrs {
		if x.IP.Equal(want) {
			return true, nil
		}
	}
	return false, nil
}

func addAddr(a Address) error {
	l, err := link(a)
	if err != nil {
		return err
	}
	return netlink.AddrReplace(l, nlAddr(a))
}

func delAddr(a Address) error {
	l, err := link(a)
	if err != nil {
		return err
	}
	err = netlink.AddrDel(l, nlAddr(a))
	if errors.Is(err, unix.EADDRNOTAVAIL) {
		return nil
	}
	return err
}

// announce sends one round of announcements for a.
func announce(a Address) error {
	ifi, err := net.InterfaceByName(a.Interface)
	if err != nil {
		return err
	}
	ip := a.Prefix.Addr()
	if ip.Is4() {
		c, err := arp.Dial(ifi)
		if err != nil {
			return fmt.Errorf("arp: %w", err)
		}
		defer c.Close()
		bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		zero := net.HardwareAddr{0, 0, 0, 0, 0, 0}
		// Gratuitous ARP as both request and reply: some hosts only
		// update their caches from one of the two.
		req, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, ip, zero, ip)
		if err != nil {
			return err
		}
		if err := c.WriteTo(req, bcast); err != nil {
			return fmt.Errorf("arp request: %w", err)
		}
		rep, err := arp.NewPacket(arp.OperationReply, ifi.HardwareAddr, ip, bcast, ip)
		if err != nil {
			return err
		}
		if err := c.WriteTo(rep, bcast); err != nil {
			return fmt.Errorf("arp reply: %w", err)
		}
		return nil
	}
	c, _, err := ndp.Listen(ifi, ndp.LinkLocal)
	if err != nil {
		// The link-local address is unusable while it is tentative
		// (duplicate address detection runs for about a second after the
		// link comes up, e.g. at boot, when this node may well be elected
		// leader): send from the VIP itself, which is on the interface
		// without DAD. Receivers accept an advertisement from any of the
		// sender's addresses (RFC 4861 §7.1.2).
		var err2 error
		if c, _, err2 = ndp.Listen(ifi, ndp.Addr(ip.String())); err2 != nil {
			return fmt.Errorf("ndp: %w (from the VIP: %v)", err, err2)
		}
	}
	defer c.Close()
	na := &ndp.NeighborAdvertisement{Override: true, TargetAddress: ip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: ifi.HardwareAddr}}}
	return c.WriteTo(na, nil, netip.IPv6LinkLocalAllNodes())
}
