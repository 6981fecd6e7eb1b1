package vip

import "time"

// Reannounce asks for a round of announcements now, after the same
// ownership check as a periodic refresh (Config.Verify); it does nothing
// unless this node holds the addresses. The cluster calls it when a member
// comes back: after a partition heals, hosts on the side that was cut off
// may still hold the old owner's MAC, and should not have to wait for the
// next refresh (keepalived's "the master never re-announces after a
// split" failure).
func (m *Manager) Reannounce() {
	m.mu.Lock()
	held := false
	for _, st := range m.st {
		if st.held {
			// The next reconcile sees the last announcement as old
			// enough for a refresh (or the next step of a burst still
			// running).
			st.lastAnn = time.Time{}
			held = true
		}
	}
	m.mu.Unlock()
	if !held {
		return
	}
	select {
	case m.kick <- struct{}{}:
	default:
	}
}
