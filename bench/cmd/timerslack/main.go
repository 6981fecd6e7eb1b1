// Command timerslack runs a program with a given timer slack, the way
// systemd's TimerSlackNSec= does: it sets its own (PR_SET_TIMERSLACK),
// which execve keeps and every thread of the program inherits.
//
//	timerslack NANOSECONDS PROGRAM [ARG...]
//
// bench/logincpu.sh uses it to measure Portico as packaging/systemd's
// unit runs it (bench/RESULTS.md, "Login CPU, second pass").
package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: timerslack NANOSECONDS PROGRAM [ARG...]")
		os.Exit(2)
	}
	ns, err := strconv.ParseUint(os.Args[1], 10, 64)
	if err != nil || ns == 0 {
		fmt.Fprintln(os.Stderr, "timerslack: NANOSECONDS must be a positive integer")
		os.Exit(2)
	}
	path, err := exec.LookPath(os.Args[2])
	if err != nil {
		fmt.Fprintln(os.Stderr, "timerslack:", err)
		os.Exit(1)
	}
	// The slack is per thread: set it on the thread that calls execve.
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_TIMERSLACK, uintptr(ns), 0, 0, 0); err != nil {
		fmt.Fprintln(os.Stderr, "timerslack: prctl:", err)
		os.Exit(1)
	}
	err = syscall.Exec(path, os.Args[2:], os.Environ())
	fmt.Fprintln(os.Stderr, "timerslack: exec:", err)
	os.Exit(1)
}
