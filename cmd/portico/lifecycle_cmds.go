package main

import (
	"flag"
	"fmt"
	"strings"
)

func init() {
	register(&command{name: "drain", summary: "drain this node: not ready, VIP handed away, sessions ended at a response boundary (admin API)", setup: setupDrain})
	register(&command{name: "reload", summary: "re-read the node's configuration file, as SIGHUP, and report errors (admin API)", setup: apiCmd(reload)})
	register(&command{name: "upgrade", summary: "in-place upgrade: a new process, the binary now at the same path, takes over the sockets (admin API)", setup: apiCmd(inPlaceUpgrade)})
}

type drainStatus struct {
	Draining bool    `json:"draining"`
	Phase    string  `json:"phase"`
	Seconds  float64 `json:"seconds"`
	Sessions int     `json:"sessions"`
	Ended    int     `json:"sessions_ended"`
}

func setupDrain(fs *flag.FlagSet) func([]string) error {
	client := clientFlags(fs)
	wait := fs.Bool("wait", false, "return when the drain has finished (every session ended)")
	cancel := fs.Bool("cancel", false, "stop draining and serve again")
	status := fs.Bool("status", false, "only show the drain's progress")
	return func([]string) error {
		c, err := client()
		if err != nil {
			return err
		}
		return drain(c, *wait, *cancel, *status)
	}
}

func drain(c *apiClient, wait, cancel, status bool) error {
	var err error
	var st drainStatus
	var raw []byte
	switch {
	case status:
		raw, err = c.do("GET", "/v1/drain", nil, &st)
	case cancel:
		raw, err = c.do("POST", "/v1/drain?cancel=1", nil, &st)
	case wait:
		raw, err = c.do("POST", "/v1/drain?wait=1", nil, &st)
	default:
		raw, err = c.do("POST", "/v1/drain", nil, &st)
	}
	if err != nil || c.json {
		printJSONIf(c, raw, err)
		return err
	}
	if !st.Draining {
		fmt.Println("not draining: serving")
		return nil
	}
	fmt.Printf("draining for %.1fs: %s; %d relayed sessions open, %d ended at a response boundary\n",
		st.Seconds, st.Phase, st.Sessions, st.Ended)
	return nil
}

func reload(c *apiClient, _ []string) error {
	var res struct {
		File            string   `json:"file"`
		RestartRequired []string `json:"restart_required"`
	}
	raw, err := c.do("POST", "/v1/reload", nil, &res)
	if err != nil || c.json {
		printJSONIf(c, raw, err)
		return err
	}
	fmt.Printf("reloaded %s\n", res.File)
	if len(res.RestartRequired) > 0 {
		fmt.Printf("these changes take effect only after a restart: %s\n", strings.Join(res.RestartRequired, ", "))
	}
	return nil
}

func inPlaceUpgrade(c *apiClient, _ []string) error {
	var res struct {
		PID      int   `json:"pid"`
		Took     int64 `json:"took_ms"`
		Sessions int   `json:"sessions"`
	}
	raw, err := c.do("POST", "/v1/upgrade", nil, &res)
	if err != nil || c.json {
		printJSONIf(c, raw, err)
		return err
	}
	fmt.Printf("new process %d serves (took %d ms); the old one keeps %d sessions until they end\n", res.PID, res.Took, res.Sessions)
	return nil
}
