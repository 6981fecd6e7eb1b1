package procstat

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// ReadSchedCPU sums the time on CPU of every live thread of pids, from
// /proc/PID/task/TID/schedstat (first field, nanoseconds). This is the
// other way to charge CPU to a process: per thread and exact to the
// nanosecond, where ReadCPU takes the process-wide utime+stime from
// /proc/PID/stat (10 ms ticks, and counting threads that have exited).
// Threads that exited between two samples are missing from the later one.
// slices is how many times those threads were put on a CPU (schedstat's
// third field): context switches into the process, a cost of its own.
func ReadSchedCPU(pids []int) (total time.Duration, slices int64) {
	for _, p := range pids {
		dir := "/proc/" + strconv.Itoa(p) + "/task"
		d, err := os.Open(dir)
		if err != nil {
			continue
		}
		tids, err := d.Readdirnames(-1)
		d.Close()
		if err != nil {
			continue
		}
		for _, t := range tids {
			b, err := os.ReadFile(dir + "/" + t + "/schedstat")
			if err != nil {
				continue // gone
			}
			f := strings.Fields(string(b))
			if len(f) == 0 {
				continue
			}
			ns, _ := strconv.ParseInt(f[0], 10, 64)
			total += time.Duration(ns)
			if len(f) >= 3 {
				n, _ := strconv.ParseInt(f[2], 10, 64)
				slices += n
			}
		}
	}
	return total, slices
}
