package session

// Goodbyes are a protocol's goodbyes for the ends the Dialogue decides
// (Protocol.Bye), each a whole line (or lines) with CRLF.
type Goodbyes struct {
	Shutdown      string // EndShutdown
	Timeout       string // EndTimeout
	Lifetime      string // EndPreauthLifetime
	TooManyErrors string // EndTooManyErrors
}

// For returns the goodbye for reason, or "" for an end that has none.
func (g *Goodbyes) For(reason string) string {
	switch reason {
	case EndShutdown:
		return g.Shutdown
	case EndTimeout:
		return g.Timeout
	case EndPreauthLifetime:
		return g.Lifetime
	case EndTooManyErrors:
		return g.TooManyErrors
	}
	return ""
}
