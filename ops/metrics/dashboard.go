package metrics

// DashboardExprs returns every "expr" (PromQL query) in a decoded Grafana
// dashboard, at any depth: the tests check examples/grafana-dashboard.json
// against the catalogue and run its queries against a real Prometheus.
func DashboardExprs(v any) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "expr" {
				out = append(out, s)
				continue
			}
			out = append(out, DashboardExprs(e)...)
		}
	case []any:
		for _, e := range x {
			out = append(out, DashboardExprs(e)...)
		}
	}
	return out
}
