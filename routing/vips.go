package routing

import (
	"net/netip"
	"sort"
	"strings"
	"unicode/utf8"
)

// VIPAssignment places one virtual address on one node (vip.mode: spread,
// see vip/DESIGN.md). It lives in the replicated table because raft is
// what orders and fences it: every node applies the same placements in
// the same order, and a node holds an address only while the table it
// has caught up with names it.
type VIPAssignment struct {
	// Address is the virtual IP in its canonical text form
	// (netip.Addr.String()).
	Address string `json:"address"`
	// Node holds the address.
	Node string `json:"node"`
	// Epoch counts the changes of the address's placement: the table
	// raises it by one at every applied change, so "the placement I was
	// told to give up" and "a newer one" can be told apart.
	Epoch uint64 `json:"epoch"`
}

// WithVIPs returns the table with each assignment of as applied (see
// withVIPs) and, when leader is not "", the leader marker set to it.
//
// The marker names the last node that led with the right to hold
// addresses as leader (vip/DESIGN.md): a new leader writes it before it
// holds any address or answers any lease, so a later leader reads, after
// its barrier, which node was the last to hold addresses on the strength
// of its leadership alone.
func (t *Table) WithVIPs(as []VIPAssignment, leader string) (*Table, error) {
	if leader != "" && !validNode(leader) {
		return nil, invalid("set-vips: bad leader name %q", leader)
	}
	if len(as) == 0 && leader == "" {
		return nil, invalid("set-vips without assignments or leader")
	}
	n, err := t.withVIPs(as)
	if err != nil {
		return nil, err
	}
	if leader != "" {
		n.vipLeader = leader
	}
	return n, nil
}

// VIPLeader returns the leader marker ("" if never written).
func (t *Table) VIPLeader() string { return t.vipLeader }

// withVIPs returns the table with each assignment of as applied: the
// address placed on Node ("" removes the placement). Each is a
// compare-and-set on the address's epoch: Epoch must be the epoch the
// table holds for the address now (0 for one never placed), else the
// whole command is refused with ErrConflict (the leader decided from a
// stale view, e.g. a move racing a failover). The table then stores the
// epoch raised by one. Addresses must be valid and listed once.
func (t *Table) withVIPs(as []VIPAssignment) (*Table, error) {
	seen := map[string]bool{}
	for _, a := range as {
		ip, err := netip.ParseAddr(a.Address)
		if err != nil || ip.Zone() != "" || ip.Is4In6() || ip.String() != a.Address {
			return nil, invalid("set-vips: %q is not an IP address in canonical form", a.Address)
		}
		if seen[a.Address] {
			return nil, invalid("set-vips: %s listed twice", a.Address)
		}
		seen[a.Address] = true
		if a.Node != "" && !validNode(a.Node) {
			return nil, invalid("set-vips: bad node name %q", a.Node)
		}
		if cur := t.vips[a.Address]; cur.Epoch != a.Epoch {
			return nil, conflict("set-vips: %s is at epoch %d (held by %q), not %d", a.Address, cur.Epoch, cur.Node, a.Epoch)
		}
	}
	n := *t
	n.vips = make(map[string]VIPAssignment, len(t.vips)+len(as))
	for k, v := range t.vips {
		n.vips[k] = v
	}
	for _, a := range as {
		if a.Node == "" {
			delete(n.vips, a.Address)
			continue
		}
		n.vips[a.Address] = VIPAssignment{Address: a.Address, Node: a.Node, Epoch: a.Epoch + 1}
	}
	return &n, nil
}

// validNode checks a node name as the configuration does (node_name).
func validNode(s string) bool {
	return s != "" && len(s) <= 128 && utf8.ValidString(s) && !strings.ContainsAny(s, " \t\r\n/\x00")
}

// VIPs returns the placements of virtual addresses, sorted by address.
func (t *Table) VIPs() []VIPAssignment {
	out := make([]VIPAssignment, 0, len(t.vips))
	for _, v := range t.vips {
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// VIP returns the placement of one address (false when it has none).
func (t *Table) VIP(addr string) (VIPAssignment, bool) {
	v, ok := t.vips[addr]
	return v, ok
}
