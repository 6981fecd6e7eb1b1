package cluster

import "github.com/hashicorp/raft"

// raftDeps is the one seam for unit tests (Config.raftDeps, settable only
// from inside the package): raft's log, stable and snapshot stores and its
// transport, which New otherwise opens itself (raft-wal and the file
// snapshot store in the data directory, a NetworkTransport over the mutual
// TLS cluster port). The tests give raft's in-memory stores and transport,
// as raft's own tests do, so that a cluster of several nodes runs in one
// process in milliseconds and a test can cut and heal raft's links.
// Everything else stays real: the cluster port still listens (on loopback,
// port 0) for the cluster RPCs (forwarded writes, read index) and for the
// certificate checks that decide who becomes a raft server, and memberlist
// gossips over loopback.
type raftDeps struct {
	logs   raft.LogStore
	stable raft.StableStore
	snaps  raft.SnapshotStore
	// transport returns raft's transport for this node; addr is the
	// cluster port's address, which the transport must report as its own
	// (raft's configuration then names the address the cluster RPCs and
	// the certificate checks dial).
	transport func(addr raft.ServerAddress) raft.Transport
}
