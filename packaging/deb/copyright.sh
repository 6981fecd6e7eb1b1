#!/usr/bin/env bash
# Prints the machine-readable copyright file (DEP-5) of the portico
# package: Portico itself, and every Go module linked into the binary for
# GOARCH, with the license found in the module.
#
#   packaging/deb/copyright.sh ROOT GOARCH
set -euo pipefail

root=$1 goarch=$2
cd "$root"

cat <<'HEAD'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: portico
Upstream-Contact: https://github.com/portico-mail/portico/security/advisories
Source: https://github.com/portico-mail/portico
Comment: The binary /usr/bin/portico is statically linked: besides Portico it
 holds the Go standard library and the Go modules listed below (as
 vendor/MODULE), each under its own license.

Files: *
Copyright: The Portico authors
License: Apache-2.0

Files: vendor/golang.org/go/*
Copyright: The Go Authors
License: BSD-3-clause
Comment: The Go standard library and runtime, linked into the binary.
 .
HEAD
# The Go distribution's own license, as the Go modules' below.
indent() { sed -e 's/[[:space:]]*$//' -e 's/^$/./' -e 's/^/ /'; }
indent <"$(go env GOROOT)/LICENSE"
echo

# license_of FILE prints the DEP-5 short name of the license in FILE.
license_of() {
	local f=$1
	if grep -q "Mozilla Public License" "$f"; then
		echo MPL-2.0
	elif grep -q "Apache License" "$f" && grep -q "Version 2.0" "$f"; then
		echo Apache-2.0
	elif grep -q "Permission is hereby granted, free of charge" "$f"; then
		echo Expat
	elif grep -q "Redistribution and use in source and binary forms" "$f"; then
		if grep -qi "neither the name\|names of its contributors\|name of the copyright holder" "$f"; then
			echo BSD-3-clause
		else
			echo BSD-2-clause
		fi
	elif grep -q "Permission to use, copy, modify, and/or distribute" "$f" || grep -q "Permission to use, copy, modify, and distribute" "$f"; then
		echo ISC
	else
		echo unknown
	fi
}

GOOS=linux GOARCH=$goarch CGO_ENABLED=0 go list -deps \
	-f '{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}} {{.Dir}}{{end}}{{end}}' ./cmd/portico |
	LC_ALL=C sort -u |
	while read -r path version dir; do
		[ -n "$path" ] || continue
		lic=$(find "$dir" -maxdepth 1 -type f \( -iname 'licen[cs]e*' -o -iname 'copying*' \) | LC_ALL=C sort | head -n 1)
		if [ -z "$lic" ]; then
			echo "copyright.sh: no license file in $path $version ($dir)" >&2
			exit 1
		fi
		name=$(license_of "$lic")
		if [ "$name" = unknown ]; then
			echo "copyright.sh: unrecognised license in $lic" >&2
			exit 1
		fi
		holder=$(grep -m1 -i '^ *copyright (c)\|^ *copyright [0-9]' "$lic" | sed -e 's/^ *//' -e 's/ *$//' -e 's/^[Cc]opyright *\((c)\|(C)\|©\)\{0,1\} *//' || true)
		[ -n "$holder" ] || holder="The authors of $path"
		echo "Files: vendor/$path/*"
		echo "Copyright: $holder"
		echo "License: $name"
		echo "Comment: Go module $path $version, linked into the binary."
		case $name in
		Apache-2.0 | MPL-2.0) ;;
		*)
			echo " ."
			indent <"$lic"
			;;
		esac
		echo
	done

cat <<'TAIL'
License: Apache-2.0
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

License: MPL-2.0
 On Debian systems, the full text of the Mozilla Public License 2.0 is in
 /usr/share/common-licenses/MPL-2.0.
TAIL
