// Package metrics defines Portico's Prometheus metrics: the catalog of
// every metric a node exports (name, type, labels, meaning), and the node
// metrics themselves (connections, sessions, logins, latencies, bytes,
// TLS failures, certificate expiry, pre-login errors, disconnect reasons,
// routing table size, drain and readiness state, build information).
//
// Conventions: namespace "portico", a subsystem per area, "_total" on
// counters, seconds for durations, and no label whose values a client
// controls: never a user name or a client address. Label values are fixed
// sets (protocols, listener and backend names from the configuration,
// reasons and results from the code).
//
// Each node has its own registry (daemon.Daemon.Metrics), never the global
// one, so that tests can run several nodes in one process. Other stages
// register their own collectors on that registry: the cluster
// (ops/daemon/cluster_metrics.go), the virtual IP (ops/daemon/vip.go),
// authentication, throttling and affinity (portico_auth_*,
// portico_throttle_*, portico_affinity_*). A metric that dashboards or
// alerts may rely on belongs in Catalog; a test checks that a running node
// exports every catalogued metric and that examples/grafana-dashboard.json
// and examples/alerts.yml use only catalogued ones.
package metrics

import (
	"sort"
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/portico-mail/portico/routing/source/syncer"
)

// Namespace prefixes every Portico metric.
const Namespace = "portico"

// Info describes one metric.
type Info struct {
	Name   string   // full name, e.g. portico_logins_total
	Type   string   // counter, gauge, histogram
	Labels []string // label names
	Help   string   // meaning (also the HELP text of metrics defined here)
	// Source is where it is defined: "node" (this package), "cluster",
	// "auth" (node/auth), "throttle" (node/throttle), "affinity"
	// (node/affinity), "vip" (only when the vip section is configured),
	// "source" (only with directory sources; the sync metrics on the
	// leader),
	// "process" (the client library's process collector).
	Source string
}

// Catalog lists every metric a node exports, sorted by name.
var Catalog = sortInfo([]Info{
	// Proxy (this package).
	{"portico_build_info", "gauge", []string{"version", "commit", "goversion"}, "Always 1; the labels identify the running build.", "node"},
	{"portico_connections_total", "counter", []string{"protocol", "listener"}, "Client TCP connections accepted, refused ones included.", "node"},
	{"portico_connections_refused_total", "counter", []string{"protocol", "listener", "reason"}, "Connections refused before their session started; reason: max_connections, max_connections_per_ip, proxy_header (bad PROXY header from a trusted proxy), local_address (address being handed over).", "node"},
	{"portico_sessions_open", "gauge", []string{"protocol", "listener", "state"}, "Open client sessions; state preauth (before login) or relayed (logged in).", "node"},
	{"portico_sessions_ended_total", "counter", []string{"protocol", "listener", "phase", "reason"}, "Sessions ended, by phase (preauth, relayed) and reason: before login logout, client_closed, timeout, preauth_lifetime, too_many_errors, too_many_auth_failures, tls_handshake_failed, protocol_error, shutdown, error; after login closed, client_error, backend_error, idle_timeout, half_closed_timeout, shutdown and the drain stage's reasons.", "node"},
	{"portico_session_duration_seconds", "histogram", []string{"protocol"}, "Lifetime of logged-in sessions, from accept to close.", "node"},
	{"portico_preauth_errors_total", "counter", []string{"protocol", "listener"}, "Invalid or refused commands before login (those counting toward max_errors).", "node"},
	{"portico_prelogin_waiting", "gauge", nil, "Sessions before login waiting for a slot of the pre-login gate (two per CPU compute at once, a session gives its slot back while it waits for its client or backend); above zero only while logins arrive faster than the node computes them, as in a reconnect storm.", "node"},
	{"portico_prelogin_waits_total", "counter", nil, "Times a session before login waited for a slot of the pre-login gate.", "node"},
	{"portico_tls_handshakes_total", "counter", []string{"protocol", "listener", "handshake"}, "Completed TLS handshakes with clients (implicit TLS, STARTTLS, STLS); handshake: full, or resumed (from a session ticket, which may have been issued by another node or by the process before an in-place upgrade).", "node"},
	{"portico_tls_handshake_failures_total", "counter", []string{"protocol", "listener", "reason"}, "Failed TLS handshakes with clients (implicit TLS, STARTTLS, STLS); reason: timeout, closed (client hung up), version (below the listener's minimum), cipher (no common cipher suite), alpn (only other application protocols offered), error (other protocol failure).", "node"},
	{"portico_tls_certificate_expiry_seconds", "gauge", []string{"file", "name"}, "Seconds until a loaded server certificate expires (the earliest expiry in its chain; negative once expired), by configured file and first name; follows reloads.", "node"},
	{"portico_logins_total", "counter", []string{"protocol", "listener", "result"}, "Login attempts by result: ok, bad_credentials, backend_unavailable, limit, timeout, error.", "node"},
	{"portico_login_duration_seconds", "histogram", []string{"protocol", "result"}, "Login latency: routing, backend connect and backend login, without the failed-login delay.", "node"},
	{"portico_backend_connect_duration_seconds", "histogram", []string{"protocol"}, "Time to connect to a backend (TCP, PROXY header, implicit TLS), successful connects only.", "node"},
	{"portico_relay_bytes_total", "counter", []string{"protocol", "listener", "direction"}, "Bytes relayed after login, counted as they move; direction client_to_backend or backend_to_client.", "node"},
	{"portico_backend_sessions", "gauge", []string{"backend"}, "Logged-in sessions this node relays to each backend.", "node"},
	{"portico_routing_table_entries", "gauge", []string{"kind"}, "Entries in this node's routing table; kind backends, pools, users, domains.", "node"},
	{"portico_draining", "gauge", nil, "1 while this node is draining (not accepting new sessions on purpose).", "node"},
	{"portico_ready", "gauge", nil, "1 when /readyz answers 200 (listeners up, routing table caught up, a raft leader reachable in a multi-node cluster, not draining).", "node"},

	// Cluster (ops/daemon/cluster_metrics.go).
	{"portico_raft_state", "gauge", []string{"state"}, "1 for this node's current raft state (follower, candidate, leader, shutdown), 0 for the others.", "cluster"},
	{"portico_raft_term", "gauge", nil, "Current raft term.", "cluster"},
	{"portico_raft_commit_index", "gauge", nil, "Highest raft log index known to be committed.", "cluster"},
	{"portico_raft_applied_index", "gauge", nil, "Highest raft log index applied on this node; commit_index minus this is the apply lag.", "cluster"},
	{"portico_raft_leader_changes_total", "counter", nil, "Leader changes observed by this node.", "cluster"},
	{"portico_routing_last_apply_index", "gauge", nil, "Raft index of the last change applied to the routing table.", "cluster"},
	{"portico_cluster_members", "gauge", []string{"state"}, "Cluster members by gossip state (alive, suspect, dead, left), as seen by this node.", "cluster"},
	{"portico_cluster_tls_refused_total", "counter", nil, "Connections to the cluster port (raft_address) refused in the TLS handshake: no certificate of the cluster CA, no cluster protocol, or too many handshakes at once.", "cluster"},
	{"portico_cluster_gossip_dropped_total", "counter", nil, "Gossip messages dropped: malformed, or not signed by the node they name with a key verified for it (forged).", "cluster"},
	{"portico_cluster_gossip_direct_failed_total", "counter", nil, "Gossip messages whose packet sent directly to a member could not be written on this node (a local firewall, no route to it); a member that is down is not counted, its packets are written and lost until it is declared dead. They still travel by gossip and push/pull.", "cluster"},
	{"portico_cluster_health_score", "gauge", nil, "memberlist awareness score of this node (0 is healthy; higher means it misses probe deadlines).", "cluster"},
	{"portico_backend_up", "gauge", []string{"backend"}, "1 if the cluster's health checks consider the backend up, 0 if down.", "cluster"},

	// Virtual IP (ops/daemon/vip.go), when configured.
	// Authentication (node/auth; registered on every node, used with auth: mode http).
	{"portico_auth_http_requests_total", "counter", []string{"result"}, "Requests to auth_http servers, by answer (ok, refused, wait, error).", "auth"},
	{"portico_auth_http_request_duration_seconds", "histogram", nil, "Time from connecting to an auth_http server to its complete answer (or failure).", "auth"},
	{"portico_auth_http_errors_total", "counter", []string{"kind"}, "Failed auth_http exchanges (the client got the internal-error reply), by kind (connect, timeout, io, malformed, too_large, invalid).", "auth"},
	{"portico_auth_http_cache_hits_total", "counter", []string{"answer"}, "Logins answered from the auth_http cache, by cached answer (ok, refused).", "auth"},
	{"portico_auth_http_cache_misses_total", "counter", nil, "Logins looked up in the auth_http cache and not found.", "auth"},
	// Users' affinity in shared_storage pools (node/affinity, ops/daemon/affinity.go).
	{"portico_affinity_entries", "gauge", []string{"source"}, "Bindings of users to the backend their sessions use (shared_storage pools), live or within affinity.expire of their last session; source local (this node's sessions) or remote (gossiped by other nodes).", "affinity"},
	{"portico_affinity_steered_total", "counter", nil, "Logins sent to the backend a user's other sessions use instead of the hash's choice (the pool changed while they were open).", "affinity"},
	{"portico_affinity_gossip_invalid_total", "counter", nil, "Affinity gossip dropped: malformed messages, bindings dated in the future, bindings or tombstones beyond the table's bounds, and messages made before a state already merged from their sender (late, or replayed).", "affinity"},
	// Failed-login throttle (node/throttle, ops/daemon/throttle.go).
	{"portico_throttle_delayed_total", "counter", nil, "Failed logins whose reply the throttle delayed (progressively, per user and client network).", "throttle"},
	{"portico_throttle_blocked_total", "counter", []string{"scope"}, "Login attempts refused by the throttle without contacting the backend or auth server, by scope (ip, user_ip, user).", "throttle"},
	{"portico_throttle_blocks_total", "counter", []string{"scope"}, "Blocks started by failures on this node, by scope (ip: a client network, user_ip: a user from a network, user: a user under attack).", "throttle"},
	{"portico_throttle_entries", "gauge", []string{"scope"}, "Failure counters and blocks the throttle tracks (this node's and gossiped), by scope (ip, user_ip, user).", "throttle"},
	{"portico_throttle_gossip_invalid_total", "counter", nil, "Throttle gossip dropped: messages malformed or from a node with another window setting, and counters sent by a node they do not belong to.", "throttle"},
	{"portico_throttle_in_flight", "gauge", nil, "Login attempts counted as in flight (asked of the backend or auth server, outcome not yet known) on this node.", "throttle"},
	{"portico_throttle_held_total", "counter", nil, "Login attempts made to wait because the attempts in flight for their network or user could, by failing, reach a limit.", "throttle"},
	{"portico_vip_owner", "gauge", []string{"vip"}, "1 while this node holds the virtual address.", "vip"},
	{"portico_vip_ownership_changes_total", "counter", nil, "Times this node acquired or released a virtual address (each address counts).", "vip"},
	{"portico_vip_announcements_total", "counter", nil, "Gratuitous ARP / unsolicited neighbour advertisement rounds sent.", "vip"},
	{"portico_vip_notify_runs_total", "counter", []string{"event", "result"}, "Runs of the vip.notify program, by event (acquire, release) and result (ok, failed, timeout, dropped).", "vip"},
	{"portico_vip_rpc_refused_total", "counter", []string{"rpc"}, "Spread-mode lease and release calls this node refused because of their caller, by rpc (lease, release): a node that is not a server in raft's configuration (removed from the cluster, or not added yet; its certificate alone is not enough), or a release not asked by the leader. 0 in the leader mode.", "vip"},

	// Directory sources (routing/source/syncer, ops/daemon/sources.go), when configured.
	{"portico_source_last_success_timestamp_seconds", "gauge", []string{"source"}, syncer.HelpLastSuccess, "source"},
	{"portico_source_sync_duration_seconds", "histogram", []string{"source", "kind"}, syncer.HelpDuration, "source"},
	{"portico_source_entries", "gauge", []string{"source"}, syncer.HelpEntries, "source"},
	{"portico_source_changes_total", "counter", []string{"source", "kind"}, syncer.HelpChanges, "source"},
	{"portico_source_errors_total", "counter", []string{"source"}, syncer.HelpErrors, "source"},
	{"portico_source_refused_total", "counter", []string{"source"}, syncer.HelpRefused, "source"},
	{"portico_source_interval_seconds", "gauge", []string{"source"}, syncer.HelpInterval, "source"},
	{"portico_source_lookups_total", "counter", []string{"source", "result"}, syncer.HelpLookups, "source"},
	{"portico_source_sync_batches_total", "counter", []string{"source"}, syncer.HelpBatches, "source"},
	{"portico_source_sync_pause_seconds_total", "counter", []string{"source"}, syncer.HelpPause, "source"},
	{"portico_source_skipped_entries_total", "counter", []string{"source", "reason"}, syncer.HelpSkipped, "source"},

	// Process (client_golang's process collector; go_* from the Go collector too).
	{"process_open_fds", "gauge", nil, "Open file descriptors (two per relayed session).", "process"},
	{"process_max_fds", "gauge", nil, "The file-descriptor limit (LimitNOFILE).", "process"},
	{"process_resident_memory_bytes", "gauge", nil, "Resident memory.", "process"},
	{"process_cpu_seconds_total", "counter", nil, "CPU time used.", "process"},
})

func sortInfo(in []Info) []Info {
	sort.Slice(in, func(i, j int) bool { return in[i].Name < in[j].Name })
	return in
}

// Lookup returns the catalog entry of name (a series name such as
// x_bucket or x_count resolves to its histogram x).
func Lookup(name string) (Info, bool) {
	for _, suffix := range []string{"", "_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		i := sort.Search(len(Catalog), func(i int) bool { return Catalog[i].Name >= base })
		if i < len(Catalog) && Catalog[i].Name == base && (suffix == "" || Catalog[i].Type == "histogram") {
			return Catalog[i], true
		}
	}
	return Info{}, false
}

// help returns the catalogued help of name; it panics for an uncatalogued
// name, which the tests catch at once.
func help(name string) string {
	i, ok := Lookup(name)
	if !ok {
		panic("metrics: " + name + " is not in the catalog")
	}
	return i.Help
}

// newDesc describes a metric of the catalog for a custom collector.
func newDesc(name string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help(name), labels, nil)
}
