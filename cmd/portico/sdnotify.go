package main

import (
	"net"
	"os"
)

// sdNotify sends a state line to systemd when it supervises the process
// with Type=notify (NOTIFY_SOCKET set); otherwise it does nothing. After an
// in-place upgrade the new process announces itself as the main PID
// (the unit sets NotifyAccess=all).
func sdNotify(state string) {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return
	}
	if path[0] == '@' {
		path = "\x00" + path[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	_, _ = c.Write([]byte(state))
}
