package daemon

import (
	"log/slog"
	"os"

	"github.com/portico-mail/portico/ops/config"
)

// NewLogger builds the process logger (stderr, text or JSON).
func NewLogger(c config.Log, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
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
