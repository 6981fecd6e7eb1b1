package config

import (
	"encoding/base64"
	"net"
	"os"
	"reflect"
	"strings"

	"github.com/portico-mail/portico/cluster"
	"github.com/portico-mail/portico/cluster/pki"
)

// Cluster configures membership (gossip) and the replicated routing table
// (raft). With no settings a node is a single-node cluster that bootstraps
// itself in its data directory.
type Cluster struct {
	// RaftAddress is where raft listens; default cluster.DefaultConfig's.
	RaftAddress string `yaml:"raft_address"`
	// GossipAddress is where memberlist listens (TCP and UDP); default
	// cluster.DefaultConfig's.
	GossipAddress string `yaml:"gossip_address"`
	// Advertise is the address peers use to reach this node (raft, gossip
	// and admin API ports stay as configured); default: the listen
	// addresses.
	Advertise string `yaml:"advertise"`
	// Join lists gossip addresses of existing members (a few are enough).
	Join []string `yaml:"join"`
	// BootstrapExpect forms a new cluster once this many nodes have met.
	BootstrapExpect int `yaml:"bootstrap_expect"`
	// MaxVoters: raft voters (odd); further nodes are non-voters. Default
	// cluster.DefaultConfig's.
	MaxVoters int `yaml:"max_voters"`
	// DeadNodeReap removes nodes dead for longer than this from raft;
	// default cluster.DefaultConfig's.
	DeadNodeReap Duration `yaml:"dead_node_reap"`
	// EncryptKey (base64 of 16, 24 or 32 bytes; `portico keygen`) encrypts
	// gossip; the same on every node. EncryptKeyFile reads it from a file.
	EncryptKey     string `yaml:"encrypt_key"`
	EncryptKeyFile string `yaml:"encrypt_key_file"`
	// Timing tunes failure detection.
	Timing ClusterTiming `yaml:"timing"`
	// Health configures backend health checks.
	Health HealthChecks `yaml:"health"`
	// TLS is this node's identity for raft, the cluster RPCs and signed
	// gossip: required for a node with peers or on a non-loopback address.
	TLS ClusterTLS `yaml:"tls"`

	// Key is the decoded EncryptKey (after validation).
	Key []byte `yaml:"-"`
	// Material is the loaded TLS identity (after validation); nil when
	// none is configured (a node without peers then makes a throwaway one).
	Material *pki.Material `yaml:"-"`
}

// ClusterTLS names the files of a node's cluster identity: the cluster CA
// bundle (several CAs during a rotation), the node's certificate (its
// common name is node_name) and key. `portico tls ca create` and `portico
// tls cert create --node NAME` make them.
type ClusterTLS struct {
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// ClusterTiming tunes raft and memberlist; zero values take
// cluster.DefaultConfig's (LAN, fast failover).
type ClusterTiming struct {
	HeartbeatTimeout   Duration `yaml:"heartbeat_timeout"`
	ElectionTimeout    Duration `yaml:"election_timeout"`
	LeaderLeaseTimeout Duration `yaml:"leader_lease_timeout"`
	ProbeInterval      Duration `yaml:"probe_interval"`
	ProbeTimeout       Duration `yaml:"probe_timeout"`
	SuspicionMult      int      `yaml:"suspicion_mult"`
	GossipInterval     Duration `yaml:"gossip_interval"`
}

// HealthChecks configures backend probes (as a login connects, up to the
// greeting and capabilities); zero values take
// cluster.DefaultHealthConfig's.
type HealthChecks struct {
	Interval Duration `yaml:"interval"`
	Timeout  Duration `yaml:"timeout"`
	Fall     int      `yaml:"fall"` // failures before down
	Rise     int      `yaml:"rise"` // successes before up
}

func (v *validator) cluster() {
	c := v.c
	if c.NodeName == "" {
		if h, err := os.Hostname(); err == nil && h != "" {
			c.NodeName = h
		} else {
			c.NodeName = "portico"
		}
	}
	if strings.ContainsAny(c.NodeName, " \t\r\n/") || len(c.NodeName) > 128 {
		v.errf("node_name", "%q: no spaces or slashes, at most 128 bytes", c.NodeName)
	}
	if c.Standalone {
		// Nothing of the cluster applies: say so rather than ignore it.
		if c.DataDir != "" {
			v.errf("data_dir", "a standalone node keeps no state: remove data_dir (or standalone)")
		}
		if !reflect.DeepEqual(c.Cluster, Cluster{}) {
			v.errf("cluster", "a standalone node has no cluster: remove the cluster section (or standalone)")
		}
		return
	}
	def := cluster.DefaultConfig()
	if c.DataDir == "" {
		c.DataDir = def.DataDir
	}
	cl := &c.Cluster
	if cl.RaftAddress == "" {
		cl.RaftAddress = def.RaftBind
	}
	if cl.GossipAddress == "" {
		cl.GossipAddress = def.GossipBind
	}
	for name, a := range map[string]string{"cluster.raft_address": cl.RaftAddress, "cluster.gossip_address": cl.GossipAddress} {
		if _, _, err := net.SplitHostPort(a); err != nil {
			v.errf(name, "%q is not host:port", a)
		}
	}
	if cl.RaftAddress == cl.GossipAddress && !strings.HasSuffix(cl.RaftAddress, ":0") {
		v.errf("cluster.gossip_address", "must differ from cluster.raft_address")
	}
	if cl.Advertise != "" && net.ParseIP(cl.Advertise) == nil {
		v.errf("cluster.advertise", "%q is not an IP address", cl.Advertise)
	}
	if cl.BootstrapExpect < 0 {
		v.errf("cluster.bootstrap_expect", "must not be negative")
	}
	if cl.MaxVoters == 0 {
		cl.MaxVoters = def.MaxVoters
	}
	if cl.MaxVoters < 1 || cl.MaxVoters%2 == 0 {
		v.errf("cluster.max_voters", "%d: must be odd and positive (3 or 5 are usual)", cl.MaxVoters)
	}
	if cl.BootstrapExpect > cl.MaxVoters {
		v.errf("cluster.bootstrap_expect", "%d exceeds max_voters %d", cl.BootstrapExpect, cl.MaxVoters)
	}
	if cl.DeadNodeReap == 0 {
		cl.DeadNodeReap = Duration(def.DeadNodeReap)
	}
	if cl.EncryptKey != "" && cl.EncryptKeyFile != "" {
		v.errf("cluster.encrypt_key_file", "set encrypt_key or encrypt_key_file, not both")
	}
	key := cl.EncryptKey
	if cl.EncryptKeyFile != "" {
		b, err := os.ReadFile(cl.EncryptKeyFile)
		if err != nil {
			v.errf("cluster.encrypt_key_file", "%v", err)
		}
		key = strings.TrimSpace(string(b))
	}
	if key != "" {
		k, err := base64.StdEncoding.DecodeString(key)
		if err != nil || (len(k) != 16 && len(k) != 24 && len(k) != 32) {
			v.errf("cluster.encrypt_key", "must be base64 of 16, 24 or 32 bytes (generate one with: portico keygen)")
		}
		cl.Key = k
	}
	v.clusterTrust()
	if cl.Health.Fall < 0 || cl.Health.Rise < 0 {
		v.errf("cluster.health", "fall and rise must not be negative")
	}
}

// clusterTrust checks the node-to-node security settings: a node with
// peers, or whose raft or gossip port is reachable from other hosts, must
// have a node certificate (mutual TLS for raft and the cluster RPCs,
// signed gossip), and the gossip key when reachable from other hosts.
func (v *validator) clusterTrust() {
	c := v.c
	cl := &c.Cluster
	t := cl.TLS
	if t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" {
		switch {
		case t.CAFile == "":
			v.errf("cluster.tls.ca_file", "required with cert_file and key_file")
		case t.CertFile == "":
			v.errf("cluster.tls.cert_file", "required with ca_file and key_file")
		case t.KeyFile == "":
			v.errf("cluster.tls.key_file", "required with ca_file and cert_file")
		default:
			m, err := pki.Load(t.CAFile, t.CertFile, t.KeyFile, c.NodeName)
			if err != nil {
				v.errf("cluster.tls", "%v", err)
			} else {
				cl.Material = m
			}
		}
	}
	peers := len(cl.Join) > 0 || cl.BootstrapExpect > 1
	var exposed []string
	for _, a := range []string{cl.RaftAddress, cl.GossipAddress} {
		if host, _, err := net.SplitHostPort(a); err == nil && !Loopback(host) {
			exposed = append(exposed, a)
		}
	}
	if cl.Advertise != "" && !Loopback(cl.Advertise) && len(exposed) == 0 {
		exposed = append(exposed, cl.Advertise)
	}
	if cl.Material == nil && t.CAFile == "" && (peers || len(exposed) > 0) {
		why := "a node with peers (join or bootstrap_expect)"
		if len(exposed) > 0 {
			why = "a node listening on " + strings.Join(exposed, " and ")
		}
		v.errf("cluster.tls", "%s needs a node certificate: set ca_file, cert_file and key_file (create them with: portico tls ca create; portico tls cert create --node %s)", why, c.NodeName)
	}
	if len(exposed) > 0 && len(cl.Key) == 0 && cl.EncryptKey == "" && cl.EncryptKeyFile == "" {
		verb := "is not a loopback address"
		if len(exposed) > 1 {
			verb = "are not loopback addresses"
		}
		v.errf("cluster.encrypt_key_file", "required: %s %s, and without the gossip key anyone who reaches the gossip port can join it (generate one with: portico keygen)", strings.Join(exposed, " and "), verb)
	}
}
