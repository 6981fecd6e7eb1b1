// Package procstat samples memory (RSS, PSS) and CPU time of a process tree
// from /proc, and the machine-wide CPU time from /proc/stat.
package procstat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// ClockTicks is USER_HZ, the unit of the times in /proc/PID/stat and
// /proc/stat. It is 100 on every Linux architecture Go supports.
const ClockTicks = 100

// Selector names the root processes of a tree. Every sample re-resolves the
// roots (pid files are re-read, -match is re-evaluated) and adds all their
// descendants, so respawned workers are followed.
type Selector struct {
	PIDs     []int
	PIDFiles []string
	Match    *regexp.Regexp // matched against the NUL->space joined cmdline
	Exclude  int            // never select this pid (the caller itself)
}

// Empty reports whether the selector names nothing.
func (s *Selector) Empty() bool {
	return s == nil || (len(s.PIDs) == 0 && len(s.PIDFiles) == 0 && s.Match == nil)
}

// String describes the selector for reports.
func (s *Selector) String() string {
	if s.Empty() {
		return ""
	}
	var parts []string
	for _, p := range s.PIDs {
		parts = append(parts, "pid="+strconv.Itoa(p))
	}
	for _, f := range s.PIDFiles {
		parts = append(parts, "pidfile="+f)
	}
	if s.Match != nil {
		parts = append(parts, "match="+s.Match.String())
	}
	return strings.Join(parts, ",")
}

type procInfo struct {
	ppid    int
	cmdline string
}

func listProcs(withCmdline bool) (map[int]procInfo, error) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return nil, err
	}
	procs := make(map[int]procInfo, len(names))
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue // gone
		}
		pi := procInfo{ppid: st.ppid}
		if withCmdline {
			b, err := os.ReadFile("/proc/" + n + "/cmdline")
			if err == nil {
				pi.cmdline = strings.TrimSpace(string(bytes.ReplaceAll(b, []byte{0}, []byte{' '})))
			}
		}
		procs[pid] = pi
	}
	return procs, nil
}

// Resolve returns the selected roots and all their live descendants, sorted.
func (s *Selector) Resolve() ([]int, error) {
	if s.Empty() {
		return nil, nil
	}
	procs, err := listProcs(s.Match != nil)
	if err != nil {
		return nil, err
	}
	roots := map[int]bool{}
	for _, p := range s.PIDs {
		roots[p] = true
	}
	for _, f := range s.PIDFiles {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("pidfile: %w", err)
		}
		p, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			return nil, fmt.Errorf("pidfile %s: %w", f, err)
		}
		roots[p] = true
	}
	if s.Match != nil {
		for pid, pi := range procs {
			if pid != s.Exclude && pi.cmdline != "" && s.Match.MatchString(pi.cmdline) {
				roots[pid] = true
			}
		}
	}
	children := map[int][]int{}
	for pid, pi := range procs {
		children[pi.ppid] = append(children[pi.ppid], pid)
	}
	seen := map[int]bool{}
	var out []int
	var walk func(int)
	walk = func(p int) {
		if seen[p] || p == s.Exclude {
			return
		}
		if _, ok := procs[p]; !ok {
			return
		}
		seen[p] = true
		out = append(out, p)
		for _, c := range children[p] {
			walk(c)
		}
	}
	for r := range roots {
		walk(r)
	}
	sort.Ints(out)
	if len(out) == 0 {
		return nil, errors.New("no live process matches " + s.String())
	}
	return out, nil
}

type stat struct {
	ppid                         int
	utime, stime, cutime, cstime int64
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	// The command name is in parentheses and may contain anything.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return stat{}, errors.New("bad /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0]=state f[1]=ppid ... f[11]=utime f[12]=stime f[13]=cutime f[14]=cstime
	if len(f) < 15 {
		return stat{}, errors.New("short /proc stat")
	}
	var st stat
	st.ppid, _ = strconv.Atoi(f[1])
	st.utime, _ = strconv.ParseInt(f[11], 10, 64)
	st.stime, _ = strconv.ParseInt(f[12], 10, 64)
	st.cutime, _ = strconv.ParseInt(f[13], 10, 64)
	st.cstime, _ = strconv.ParseInt(f[14], 10, 64)
	return st, nil
}

// CPU is the CPU time of a set of processes.
type CPU struct {
	Ticks int64 `json:"ticks"` // utime+stime+cutime+cstime summed, in USER_HZ
	Procs int   `json:"procs"`
}

// Millis converts the ticks to milliseconds.
func (c CPU) Millis() float64 { return float64(c.Ticks) * 1000 / ClockTicks }

// ReadCPU sums utime+stime (and cutime+cstime, the time of reaped children)
// over pids. Processes that vanished are skipped.
func ReadCPU(pids []int) CPU {
	var c CPU
	for _, p := range pids {
		st, err := readStat(p)
		if err != nil {
			continue
		}
		c.Ticks += st.utime + st.stime + st.cutime + st.cstime
		c.Procs++
	}
	return c
}

// Mem is the memory of a set of processes, from /proc/PID/smaps_rollup.
type Mem struct {
	RSSKiB int64 `json:"rss_kib"`
	PSSKiB int64 `json:"pss_kib"`
	Procs  int   `json:"procs"`
}

// ReadMem sums Rss and Pss over pids.
func ReadMem(pids []int) (Mem, error) {
	var m Mem
	for _, p := range pids {
		f, err := os.Open("/proc/" + strconv.Itoa(p) + "/smaps_rollup")
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			return m, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			var dst *int64
			switch {
			case strings.HasPrefix(line, "Rss:"):
				dst = &m.RSSKiB
			case strings.HasPrefix(line, "Pss:"):
				dst = &m.PSSKiB
			default:
				continue
			}
			fs := strings.Fields(line)
			if len(fs) >= 2 {
				v, _ := strconv.ParseInt(fs[1], 10, 64)
				*dst += v
			}
		}
		f.Close()
		m.Procs++
	}
	return m, nil
}

// Host is a sample of the machine-wide idle time from /proc/stat.
//
// The busy fields of /proc/stat (user, system, ...) are sampled at timer
// ticks, so on a tickless kernel short bursts of work between ticks are
// missed, while idle time is measured exactly when a CPU enters and leaves
// idle. Busy time is therefore computed as wall time x CPUs - idle.
type Host struct {
	When time.Time
	Idle uint64 // idle + iowait, in USER_HZ, all CPUs
	CPUs int    // online CPUs (cpuN lines)
}

// ReadHost samples /proc/stat.
func ReadHost() Host {
	h := Host{When: time.Now()}
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return h
	}
	for i, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "cpu") {
			break
		}
		if i > 0 {
			h.CPUs++
			continue
		}
		// cpu user nice system idle iowait irq softirq steal guest guest_nice
		f := strings.Fields(line)
		for _, k := range []int{4, 5} {
			if k < len(f) {
				v, _ := strconv.ParseUint(f[k], 10, 64)
				h.Idle += v
			}
		}
	}
	return h
}

// BusyMillis is the CPU time, all CPUs together, that was not idle between a
// and b.
func BusyMillis(a, b Host) float64 {
	wall := b.When.Sub(a.When).Seconds() * 1000 * float64(b.CPUs)
	idle := float64(b.Idle-a.Idle) * 1000 / ClockTicks
	return max(0, wall-idle)
}

// BusyPercent returns the share of all CPUs that was busy between a and b,
// in percent of the whole machine (100 = every core busy).
func BusyPercent(a, b Host) float64 {
	wall := b.When.Sub(a.When).Seconds() * 1000 * float64(b.CPUs)
	if wall <= 0 {
		return 0
	}
	return min(100, BusyMillis(a, b)*100/wall)
}
