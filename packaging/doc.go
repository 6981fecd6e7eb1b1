// Package packaging holds the files to install Portico as a system
// service (see README.md here): a systemd unit, a sysusers.d entry and a
// sysctl.d snippet. The Go package only carries their tests.
package packaging
