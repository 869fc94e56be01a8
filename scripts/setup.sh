#!/usr/bin/env bash
# Idempotent setup: etcd 3.4 from Debian (when root with apt), a .venv with raftfl and its
# dev and lab extras. Safe to run again: every step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

have_etcd() { command -v "${RAFTFL_ETCD_BIN:-etcd}" >/dev/null 2>&1 && command -v etcdctl >/dev/null 2>&1; }

# policy-rc.d stops the package from starting its own etcd on :2379 where it can. Whatever
# was there before is put back, also when apt fails or the script is interrupted.
POLICY_RC=${RAFTFL_POLICY_RC:-/usr/sbin/policy-rc.d}  # overridable for the script's own test
policy_saved=""
policy_ours=0
restore_policy() {
  if [ "$policy_ours" = 1 ]; then
    if [ -n "$policy_saved" ]; then mv -f "$policy_saved" "$POLICY_RC"; else rm -f "$POLICY_RC"; fi
    policy_ours=0
  fi
}
install_policy() {
  if [ -e "$POLICY_RC" ] || [ -L "$POLICY_RC" ]; then
    policy_saved=$(mktemp "$POLICY_RC.raftfl-saved.XXXXXX")
    cp -a "$POLICY_RC" "$policy_saved"  # a copy: the original stays until the copy is whole
  fi
  policy_ours=1
  rm -f "$POLICY_RC"  # never write through a symlink
  printf '#!/bin/sh\nexit 101\n' > "$POLICY_RC"
  chmod +x "$POLICY_RC"
}
trap restore_policy EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! have_etcd; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing etcd-server and etcd-client (3.4) from Debian" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    install_policy
    apt-get install -y -qq etcd-server etcd-client iproute2 >/dev/null
    restore_policy
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
  else
    echo "setup: etcd not found. Install etcd 3.4.x or >= 3.5.6 and put it on PATH," >&2
    echo "       or set RAFTFL_ETCD_BIN (Debian: sudo apt-get install etcd-server etcd-client)." >&2
    exit 1
  fi
fi

# The WAN lab (raftfl bench wan, tests/e2e/test_wan.py) drops packets with nftables.
command -v nft >/dev/null 2>&1 || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null; }; } || true

# Test tools from Debian (root with apt only; without them their tests skip): chromium for
# the dashboard's browser test (Playwright drives it; it never downloads a browser) and
# promtool, from the prometheus package, for deploy/prometheus. The package's services are
# kept from starting (policy-rc.d, as for etcd) and its recommended node exporter is left out.
test_tools() {  # PACKAGE COMMAND [apt options]: install PACKAGE unless COMMAND exists
  local pkg=$1 cmd=$2; shift 2
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 0
  echo "setup: installing $pkg from Debian (for the tests)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  install_policy
  apt-get install -y -qq "$@" "$pkg" >/dev/null || echo "setup: could not install $pkg; its tests skip" >&2
  restore_policy
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$pkg" >/dev/null 2>&1 || true  # a test tool, not a service
  fi
}
test_tools chromium chromium
test_tools prometheus promtool --no-install-recommends

# The dependencies (torch alone is 5.7 GB and 85 s to unpack) are installed once per machine
# and set of requirements, in a venv under the cache that every clone of the same setup.cfg and
# pyproject.toml links as its .venv; each clone then installs only raftfl itself (editable,
# about 10 s). A venv being built is marked complete only at its end, so an interrupted setup
# is redone. RAFTFL_VENV_CACHE=none keeps a private .venv in the clone.
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
cache=${RAFTFL_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/raftfl/venvs}
if [ ! -e .venv ]; then
  if [ "$cache" != none ] && mkdir -p "$cache" 2>/dev/null && [ -w "$cache" ]; then
    [ -x "$cache/$want/bin/python" ] || "$PY" -m venv "$cache/$want"
    ln -s "$cache/$want" .venv
  else
    "$PY" -m venv .venv
  fi
fi
if [ "$(cat .venv/.raftfl-deps 2>/dev/null)" != "$want" ]; then
  echo "setup: installing raftfl and its dependencies into .venv (torch comes from the local wheel cache)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  .venv/bin/python -m pip install -q -e '.[dev,lab]' 2>&1 | grep -v "is ignored: it is neither a file" >&2 || true
  .venv/bin/python -c "import raftfl, etcd3, flwr, torch, torchvision" \
    || { echo "setup: install failed" >&2; exit 1; }
  echo "$want" > .venv/.raftfl-deps
  echo "$PWD" > .venv/.raftfl-source
elif [ "$(cat .venv/.raftfl-source 2>/dev/null)" != "$PWD" ]; then
  echo "setup: reusing the dependencies in $(readlink -f .venv); installing this clone's raftfl" >&2
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || { echo "setup: install of raftfl failed" >&2; exit 1; }
  echo "$PWD" > .venv/.raftfl-source
fi
echo "setup: ok ($(.venv/bin/raftfl --version 2>/dev/null || echo raftfl), $("${RAFTFL_ETCD_BIN:-etcd}" --version | head -1))" >&2
