//go:build !linux

package netx

// QuickAck does nothing where TCP_QUICKACK does not exist.
func (c *Conn) QuickAck() error { return nil }

func setQuickAck(int) error { return nil }
