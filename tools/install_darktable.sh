#!/usr/bin/env bash
# Installs darktable >= 4.4 for this project. Usage: install_darktable.sh CACHE_DIR
#
# - Where the distribution ships darktable >= 4.4 (Debian 13, Ubuntu 24.04, ...): apt.
# - On Debian 12 (darktable 4.2, no --dump-pipe): Debian 13's darktable goes into a private
#   minbase root under CACHE_DIR/darktable-root, and CACHE_DIR/bin/darktable-cli runs it as if
#   it were native (see tools/darktable-chroot-cli). Installing Debian 13's package on the host
#   itself would upgrade about a hundred host packages (libc6 among them), so we never do that.
# Idempotent and safe to run concurrently (a lock serialises installs).
set -euo pipefail

cache=${1:?usage: install_darktable.sh CACHE_DIR}
here=$(cd "$(dirname "$0")" && pwd)
min_major=4 min_minor=4
suite=trixie

die() { echo "install_darktable: $*" >&2; exit 1; }
log() { echo "install_darktable: $*" >&2; }

[ "$(id -u)" = 0 ] || die "installing darktable needs root; install darktable >= 4.4 yourself (see docs/darktable.md) and set DARKTABLE_CLI to its darktable-cli"
command -v apt-get >/dev/null || die "no apt-get on this system; install darktable >= 4.4 yourself (see docs/darktable.md) and set DARKTABLE_CLI to its darktable-cli"

mkdir -p "$cache"
exec 9>"$cache/.install.lock"
flock 9

version_ok() {  # version_ok 5.0.1-2 -> true when >= 4.4
  local v=${1#*:}; local major=${v%%.*}; local rest=${v#*.}; local minor=${rest%%[.~+-]*}
  [[ $major =~ ^[0-9]+$ && $minor =~ ^[0-9]+$ ]] || return 1
  (( major > min_major || (major == min_major && minor >= min_minor) ))
}

apt_updated=
apt_update() { [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }; }

# 1. The distribution's own package, when it is new enough.
apt_update
candidate=$(apt-cache policy darktable 2>/dev/null | awk '/Candidate:/ {print $2}')
if [ -n "$candidate" ] && [ "$candidate" != "(none)" ] && version_ok "$candidate"; then
  log "installing the distribution's darktable $candidate with apt"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends darktable
  exit 0
fi

# 2. Debian 13's darktable in a private root.
root="$cache/darktable-root"
wrapper="$cache/bin/darktable-cli"
if [ -x "$root/usr/bin/darktable-cli" ]; then
  log "darktable root already present in $root"
else
  # The mirror the host already uses (first Debian archive in its apt sources).
  mirror=$( { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
              grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'; } \
            | grep -E '/debian/?$' | head -n 1 || true)
  [ -n "$mirror" ] || die "no Debian archive in /etc/apt sources; install darktable >= 4.4 yourself and set DARKTABLE_CLI"
  command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
  tmp="$root.partial"
  rm -rf "$tmp"
  log "building a minimal Debian $suite root in $tmp (about 1 GB, under a minute)"
  debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $cache/debootstrap.log"
  log "installing darktable into it"
  unshare --mount --propagation private -- bash -ec '
    mount -t proc proc "$1/proc"
    chroot "$1" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      sh -c "apt-get update -qq && apt-get install -y -qq --no-install-recommends darktable && apt-get clean"
  ' _ "$tmp" >"$cache/darktable-apt.log" 2>&1 || die "apt-get in the $suite root failed; see $cache/darktable-apt.log"
  mv "$tmp" "$root"
fi

mkdir -p "$cache/bin" "$cache/mnt"
install -m 0755 "$here/darktable-chroot-cli" "$wrapper"
ln -sfn ../darktable-root "$cache/bin/.darktable-root"
version=$("$wrapper" --version 2>/dev/null | head -n 1) || die "the installed darktable does not start; remove $root and run make again"
log "ready: $wrapper ($version)"
