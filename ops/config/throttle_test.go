package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/portico-mail/portico/node/throttle"
)

func TestThrottleDefaults(t *testing.T) {
	c, err := Parse([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	got := c.Throttle.LimiterConfig()
	if want := throttle.DefaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("defaults\n got %+v\nwant %+v", got, want)
	}
}

func TestThrottleSettings(t *testing.T) {
	c, err := Parse([]byte(good + `
throttle:
  window: 1m
  block_for: 2m
  delay: 0s
  max_delay: 5s
  ip_limit: 0
  user_ip_limit: 4
  user_limit: 40
  under_attack_limit: 2
  ipv6_prefix: 56
  trusted_networks: [192.0.2.0/24, 2001:db8::1]
  max_entries: 5000
`))
	if err != nil {
		t.Fatal(err)
	}
	got := c.Throttle.LimiterConfig()
	want := throttle.Config{Enabled: true, Window: time.Minute, BlockFor: 2 * time.Minute, MaxDelay: 5 * time.Second,
		UserIPLimit: 4, UserLimit: 40, UnderAttackLimit: 2, IPv4Prefix: 32, IPv6Prefix: 56, MaxEntries: 5000,
		Trusted: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::1/128")}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("\n got %+v\nwant %+v", got, want)
	}
	// An empty list trusts nobody (not even loopback); off is off.
	c, err = Parse([]byte(good + "throttle: {enabled: false, trusted_networks: []}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Throttle.LimiterConfig(); got.Enabled || len(got.Trusted) != 0 {
		t.Errorf("%+v", got)
	}
}

func TestThrottleErrors(t *testing.T) {
	_, err := Parse([]byte(good + `
throttle:
  window: 500ms
  max_delay: 3m
  user_ip_limit: -1
  ipv4_prefix: 40
  trusted_networks: [nonsense]
  max_entries: 10
  banana: 1
`))
	if err == nil || !strings.Contains(err.Error(), "banana") {
		t.Fatalf("unknown key: %v", err)
	}
	_, err = Parse([]byte(good + `
throttle:
  window: 500ms
  delay: 2s
  max_delay: 1s
  user_ip_limit: -1
  ipv4_prefix: 40
  trusted_networks: [nonsense]
  max_entries: 10
`))
	if err == nil {
		t.Fatal("accepted")
	}
	for _, want := range []string{
		"throttle.window (line 30): 500ms is outside 1s..24h0m0s",
		"throttle.max_delay (line 32): 1s is below delay 2s",
		"throttle.user_ip_limit (line 33): -1 is outside",
		"throttle.ipv4_prefix (line 34): 40 is outside 8..32",
		`throttle.trusted_networks[0] (line 35): "nonsense" is not an address or CIDR`,
		"throttle.max_entries (line 36): 10 is outside",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}
