package cluster

import (
	"bytes"
	"context"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// lineLogger turns the text lines raft and memberlist write into slog
// records at a matching level, so the node has one log stream.
type lineLogger struct {
	log *slog.Logger
}

func newLineLogger(log *slog.Logger, component string) *lineLogger {
	return &lineLogger{log: log.With("component", component)}
}

func (l *lineLogger) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		s := string(line)
		level := slog.LevelInfo
		switch {
		case strings.Contains(s, "[ERR") || strings.Contains(s, "[ERROR]"):
			level = slog.LevelError
		case strings.Contains(s, "[WARN"):
			level = slog.LevelWarn
		case strings.Contains(s, "[DEBUG]") || strings.Contains(s, "[TRACE]"):
			level = slog.LevelDebug
		}
		// Drop the library's own timestamp and level tag.
		if i := strings.Index(s, "] "); i >= 0 && i < 48 {
			s = strings.TrimSpace(s[i+2:])
		}
		l.log.Log(context.Background(), level, s)
	}
	return len(p), nil
}

// newHCLog returns an hclog.Logger (what raft wants) writing through slog.
func newHCLog(log *slog.Logger, component string) hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{
		Name:   component,
		Level:  hclog.Info,
		Output: newLineLogger(log, component),
	})
}
