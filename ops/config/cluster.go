package config

import (
	"os"
)

// Cluster configures membership (gossip) and the replicated routing table
// (raft). With no settings a node is a single-node cluster that bootstraps
// itself in its data directory.
type Cluster struct {
	// RaftAddress is where raft listens and is reached by peers; default
	// 127.0.0.1:7144.
	RaftAddress string `yaml:"raft_address"`
	// GossipAddress is where memberlist listens (TCP and UDP); default
	// 127.0.0.1:7145.
	GossipAddress string `yaml:"gossip_address"`
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
	if c.DataDir == "" {
		c.DataDir = "/var/lib/portico"
	}
	if c.Cluster.RaftAddress == "" {
		c.Cluster.RaftAddress = "127.0.0.1:7144"
	}
	if c.Cluster.GossipAddress == "" {
		c.Cluster.GossipAddress = "127.0.0.1:7145"
	}
}
