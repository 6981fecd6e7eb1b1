// Package rlimit raises the open-files soft limit of the bench programs.
package rlimit

import "syscall"

// RaiseNoFile sets RLIMIT_NOFILE's soft limit to its hard limit and returns
// the resulting soft limit. (The Go runtime already does this on Linux since
// Go 1.19; doing it explicitly keeps the programs honest about it.)
func RaiseNoFile() (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, err
		}
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, err
	}
	return lim.Cur, nil
}
