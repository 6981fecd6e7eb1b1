// Package result is the JSON schema written by loadimap and read by
// benchtable.
package result

import "time"

// Latency summarises a set of durations, in milliseconds.
type Latency struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50_ms"`
	P90   float64 `json:"p90_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
}

// Mem is a memory sample of a process tree, in KiB.
type Mem struct {
	RSSKiB int64 `json:"rss_kib"`
	PSSKiB int64 `json:"pss_kib"`
	Procs  int   `json:"procs"`
}

// Result is one loadimap run.
type Result struct {
	Label     string    `json:"label"` // proxy name, e.g. "nginx"
	Mode      string    `json:"mode"`  // "plain" or "tls"
	Addr      string    `json:"addr"`
	TLS       bool      `json:"tls"`
	Started   time.Time `json:"started"`
	Sessions  int       `json:"sessions_requested"`
	RateLimit float64   `json:"rate_limit_per_s"`
	Settle    string    `json:"settle"`
	NumCPU    int       `json:"num_cpu"`
	Note      string    `json:"note,omitempty"`

	TLSVersions  map[string]int    `json:"tls_negotiated,omitempty"` // "version suite group" -> sessions
	Established  int               `json:"established"`
	Failed       int               `json:"failed"`
	Errors       map[string]int    `json:"errors,omitempty"`        // "phase:kind" -> count
	ErrorSamples map[string]string `json:"error_samples,omitempty"` // "phase:kind" -> first message
	LoginPhaseS  float64           `json:"login_phase_s"`
	AchievedPS   float64           `json:"achieved_logins_per_s"`

	Greeting Latency `json:"greeting_latency"` // connect start -> greeting line
	Login    Latency `json:"login_latency"`    // connect start -> tagged OK of LOGIN

	ProxyTree   string   `json:"proxy_tree,omitempty"` // selector description
	MemBefore   *Mem     `json:"mem_before,omitempty"`
	MemAfter    *Mem     `json:"mem_after,omitempty"`     // after login phase + settle
	MemAfterOps *Mem     `json:"mem_after_ops,omitempty"` // after NOOP and FETCH phases
	PSSPerSess  *float64 `json:"pss_kib_per_session,omitempty"`
	RSSPerSess  *float64 `json:"rss_kib_per_session,omitempty"`

	ProxyLoginCPUms *float64 `json:"proxy_login_cpu_ms,omitempty"`
	ProxyCPUPer1000 *float64 `json:"proxy_cpu_ms_per_1000_logins,omitempty"`
	// The same, from the proxy's threads' /proc/PID/task/TID/schedstat
	// (exact, live threads only) instead of /proc/PID/stat.
	ProxySchedCPUms   *float64 `json:"proxy_login_cpu_ms_schedstat,omitempty"`
	ProxySchedPer1000 *float64 `json:"proxy_cpu_ms_per_1000_logins_schedstat,omitempty"`
	// How many times the proxy's threads were put on a CPU, per login
	// (schedstat's timeslices): its context switches.
	ProxySlicesPerLogin *float64 `json:"proxy_cpu_slices_per_login,omitempty"`
	AuthLoginCPUms      *float64 `json:"auth_login_cpu_ms,omitempty"`
	AuthCPUPer1000      *float64 `json:"auth_cpu_ms_per_1000_logins,omitempty"`
	SinkLoginCPUms      *float64 `json:"sink_login_cpu_ms,omitempty"`
	SelfLoginCPUms      float64  `json:"loadimap_login_cpu_ms"`
	HostBusyLoginPct    float64  `json:"host_busy_login_pct"` // whole machine, 100 = all cores
	// CPU used during the login phase by everything not measured above
	// (other programs on the machine, kernel threads): host busy time minus
	// proxy, auth, sink and loadimap. Large values mean a noisy machine.
	OtherLoginCPUms float64 `json:"other_login_cpu_ms"`
	HostBusyIdlePct float64 `json:"host_busy_before_pct"` // whole machine, sampled just before the run

	Noop       Latency        `json:"noop_latency"`
	NoopFailed int            `json:"noop_failed"`
	NoopErrors map[string]int `json:"noop_errors,omitempty"`

	FetchSessions    int            `json:"fetch_sessions"`
	FetchCount       int            `json:"fetch_count_per_session"`
	FetchBytes       int64          `json:"fetch_bytes"`
	FetchSeconds     float64        `json:"fetch_seconds"`
	FetchMBps        float64        `json:"fetch_mb_per_s"` // 1 MB = 1e6 bytes
	Fetch            Latency        `json:"fetch_latency"`  // per FETCH command, send -> tagged OK
	FetchFailed      int            `json:"fetch_failed"`
	FetchErrors      map[string]int `json:"fetch_errors,omitempty"`
	ProxyFetchCPUms  *float64       `json:"proxy_fetch_cpu_ms,omitempty"`
	ProxyCPUPerGB    *float64       `json:"proxy_cpu_ms_per_gb,omitempty"` // 1 GB = 1e9 bytes
	SelfFetchCPUms   float64        `json:"loadimap_fetch_cpu_ms"`
	HostBusyFetchPct float64        `json:"host_busy_fetch_pct"`
	OtherFetchCPUms  float64        `json:"other_fetch_cpu_ms"` // excludes the sink, which does work in this phase
}
