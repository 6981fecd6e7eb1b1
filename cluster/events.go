package cluster

// OnMemberJoin registers f to be called with the name of another member
// each time it joins or comes back (alive again after being declared dead
// or after a partition). f runs inside memberlist's callback: it must not
// block and must not call into the cluster.
func (n *Node) OnMemberJoin(f func(name string)) {
	n.del.joinMu.Lock()
	n.del.onJoin = append(n.del.onJoin, f)
	n.del.joinMu.Unlock()
}
