package daemon

import (
	"log/slog"
	"os"

	"github.com/portico-mail/portico/ops/config"
)

// NewLogger builds the process logger (stderr, text or JSON, batched; see
// logWriter). Call the returned close function before exiting.
func NewLogger(c config.Log, level *slog.LevelVar) (*slog.Logger, func()) {
	lw := newLogWriter(os.Stderr)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(lw, opts)), func() { lw.Close() }
	}
	return slog.New(slog.NewTextHandler(lw, opts)), func() { lw.Close() }
}

// SetLevel sets v from a configuration level name.
func SetLevel(v *slog.LevelVar, s string) {
	switch s {
	case "debug":
		v.Set(slog.LevelDebug)
	case "warn":
		v.Set(slog.LevelWarn)
	case "error":
		v.Set(slog.LevelError)
	default:
		v.Set(slog.LevelInfo)
	}
}
