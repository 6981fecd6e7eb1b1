package throttle

import "github.com/portico-mail/portico/node/session"

// The Limiter is what node/session calls its Throttle.
var _ session.Throttle = (*Limiter)(nil)
