#!/usr/bin/env bash
# Builds the Debian package of Portico: portico_VERSION_ARCH.deb.
#
#   packaging/deb/build.sh [-o OUTDIR] [-v VERSION] [-a ARCH]
#
#   -o OUTDIR   where to write the .deb (default: the current directory)
#   -v VERSION  the package's version, e.g. 1.2.3-1 (default: from the
#               module version the Go toolchain stamps into the binary,
#               v1.2.3 -> 1.2.3-1, a pseudo-version between tags ->
#               0.0.0~git20250101120000.abcdef123456-1, none -> 0.0.0~dev-1);
#               its upstream part is also the binary's version
#               (-ldflags -X main.version)
#   -a ARCH     a Debian architecture (default: dpkg --print-architecture)
#
# PORTICO_MAINTAINER sets the Maintainer field ("Name <address>");
# SOURCE_DATE_EPOCH the date in changelog.Debian (default: the last
# commit's), so that two builds of a commit give the same files.
#
# The package holds the binary (static, built with -trimpath), the systemd
# unit, the sysusers.d and sysctl.d files of packaging/, the example
# configuration, the man pages and the bash and zsh completions (generated
# by the binary itself, from its command definitions). Its maintainer
# scripts create the portico user and group and /etc/portico, and never
# start the service: it starts once /etc/portico/portico.yaml exists and
# the operator enables it (systemctl enable --now portico).
#
# Needs go, dpkg-deb and gzip; prints the path of the .deb on the last line.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=scripts/lib/deps.sh
. "$root/scripts/lib/deps.sh"

outdir=.
version=
arch=
while getopts "o:v:a:h" opt; do
	case $opt in
	o) outdir=$OPTARG ;;
	v) version=$OPTARG ;;
	a) arch=$OPTARG ;;
	h)
		sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
		exit 0
		;;
	*) exit 2 ;;
	esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || {
	echo "build.sh: unexpected arguments: $*" >&2
	exit 2
}

deps_go
for c in dpkg-deb gzip; do
	command -v "$c" >/dev/null 2>&1 || {
		echo "build.sh: $c not found (Debian package dpkg, gzip)" >&2
		exit 1
	}
done
[ -n "$arch" ] || arch=$(dpkg --print-architecture)
case $arch in
amd64 | arm64 | s390x | riscv64) goarch=$arch goarm= ;;
i386) goarch=386 goarm= ;;
armhf) goarch=arm goarm=7 ;;
armel) goarch=arm goarm=5 ;;
ppc64el) goarch=ppc64le goarm= ;;
*)
	echo "build.sh: no Go architecture for Debian's $arch" >&2
	exit 1
	;;
esac
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/portico-deb.XXXXXX")
trap 'rm -rf "$work"' EXIT
pkg=$work/pkg
mkdir -p "$pkg/DEBIAN"

# The binary. -buildvcs=auto undoes a GOFLAGS=-buildvcs=false: the version
# and commit come from the repository when it is a git clone.
ldflags="-s -w"
if [ -n "$version" ]; then
	ldflags="$ldflags -X main.version=${version%-*}"
fi
bin=$work/portico
(cd "$root" && CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm \
	go build -trimpath -buildvcs=auto -buildmode=pie -ldflags "$ldflags" -o "$bin" ./cmd/portico)

# The version: the module version the toolchain recorded.
if [ -z "$version" ]; then
	modver=$(go version -m "$bin" | awk '$1 == "mod" { print $3 }')
	case $modver in
	"" | "(devel)") version=0.0.0~dev-1 ;;
	*)
		# v1.2.3 -> 1.2.3; v1.2.4-rc.1 -> 1.2.4~rc.1 (a pre-release sorts
		# first, as in Go); v0.0.0-20250101120000-abcdef123456 ->
		# 0.0.0~git20250101120000.abcdef123456; +dirty kept.
		v=${modver#v}
		base=${v%%-*}
		rest=${v#"$base"}
		if [[ $rest =~ ^-(0\.)?([0-9]{14})-([0-9a-f]{12})(\+.*)?$ ]]; then
			v="$base~git${BASH_REMATCH[2]}.${BASH_REMATCH[3]}${BASH_REMATCH[4]}"
		elif [ -n "$rest" ]; then
			v="$base~${rest#-}"
			v=${v//-/.}
		fi
		version=$v-1
		;;
	esac
fi
if ! [[ $version =~ ^[0-9][A-Za-z0-9.+~]*(-[A-Za-z0-9.+~]+)?$ ]]; then
	echo "build.sh: $version is not a Debian version" >&2
	exit 1
fi

# What the binary generates runs on this machine; a cross-built binary
# cannot, so build one for here as well.
gen=$bin
if [ "$goarch" != "$(go env GOHOSTARCH)" ]; then
	gen=$work/portico-host
	(cd "$root" && CGO_ENABLED=0 go build -trimpath -buildvcs=auto -o "$gen" ./cmd/portico)
fi

install -D -m 0755 "$bin" "$pkg/usr/bin/portico"
install -D -m 0644 "$root/packaging/systemd/portico.service" "$pkg/usr/lib/systemd/system/portico.service"
install -D -m 0644 "$root/packaging/sysusers/portico.conf" "$pkg/usr/lib/sysusers.d/portico.conf"
install -D -m 0644 "$root/packaging/sysctl/90-portico.conf" "$pkg/usr/lib/sysctl.d/90-portico.conf"

doc=$pkg/usr/share/doc/portico
install -d -m 0755 "$doc/examples"
install -m 0644 "$root/examples/portico.yaml" "$root/examples/alerts.yml" "$root/examples/grafana-dashboard.json" "$doc/examples/"
install -m 0644 "$root/README.md" "$root/SECURITY.md" "$doc/"
gzip -9n "$doc/README.md"
install -m 0644 "$root/CHANGELOG.md" "$doc/changelog"
gzip -9n "$doc/changelog"
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2>/dev/null || date +%s)}
cat >"$work/changelog.Debian" <<CHANGES
portico ($version) unstable; urgency=medium

  * Built from the upstream source by packaging/deb/build.sh; see
    /usr/share/doc/portico/changelog.gz for the changes.

 -- ${PORTICO_MAINTAINER:-Portico maintainers <portico-mail@users.noreply.github.com>}  $(LC_ALL=C date -R -u -d "@$epoch")
CHANGES
install -m 0644 "$work/changelog.Debian" "$doc/changelog.Debian"
gzip -9n "$doc/changelog.Debian"
"$root/packaging/deb/copyright.sh" "$root" "$goarch" >"$doc/copyright"
chmod 0644 "$doc/copyright"

install -d -m 0755 "$pkg/usr/share/man/man1"
"$gen" man --dir "$pkg/usr/share/man/man1"
chmod 0644 "$pkg"/usr/share/man/man1/*.1
gzip -9n "$pkg"/usr/share/man/man1/*.1
install -d -m 0755 "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions"
"$gen" completion bash >"$pkg/usr/share/bash-completion/completions/portico"
"$gen" completion zsh >"$pkg/usr/share/zsh/vendor-completions/_portico"
chmod 0644 "$pkg/usr/share/bash-completion/completions/portico" "$pkg/usr/share/zsh/vendor-completions/_portico"

install -D -m 0644 "$root/packaging/deb/lintian-overrides" "$pkg/usr/share/lintian/overrides/portico"
for s in postinst prerm postrm; do
	install -m 0755 "$root/packaging/deb/$s" "$pkg/DEBIAN/$s"
done
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
maintainer=${PORTICO_MAINTAINER:-Portico maintainers <portico-mail@users.noreply.github.com>}
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" -e "s|@MAINTAINER@|$maintainer|" \
	"$root/packaging/deb/control" >"$pkg/DEBIAN/control"
(cd "$pkg" && find usr -type f -print0 | LC_ALL=C sort -z | xargs -0 md5sum) >"$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/md5sums"
find "$pkg" -type d -exec chmod 0755 {} +
# The same files, dates included, from every build of a commit.
find "$pkg" -exec touch -h -d "@$epoch" {} +

deb=$outdir/portico_${version}_${arch}.deb
# Files owned by root whoever builds, no fakeroot needed.
SOURCE_DATE_EPOCH=$epoch dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
