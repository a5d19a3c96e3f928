#!/usr/bin/env bash
# Installs the Debian packages l4lb's tests run against (real servers, not
# mocks), when any is missing. Needs root (or sudo) and Debian's archive.
set -euo pipefail

# command -> package
declare -A need=(
  [redis-server]=redis-server
  [redis-cli]=redis-tools
  [redis-benchmark]=redis-tools
  [curl]=curl
  [mariadbd]=mariadb-server
  [mariadb-install-db]=mariadb-server
  [haproxy]=haproxy
  [prlimit]=util-linux
  [systemd-analyze]=systemd
)
missing=()
export PATH="$PATH:/usr/sbin:/sbin"
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
# de-duplicate
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "test-deps: installing ${missing[*]}"
sudo=""
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null || { echo "test-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packaged redis-server service is not needed: tests start their own.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now redis-server mariadb haproxy >/dev/null 2>&1 || true
fi
