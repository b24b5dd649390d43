#!/usr/bin/env bash
# Set up offloadgen on a Debian machine as root: system packages (Mininet, ping, ethtool), a virtual
# environment in .venv on Debian's python3 (so Mininet's Python package is importable), and the project in
# editable mode with its test tools. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and the tests create network namespaces)" >&2
  exit 1
fi

debs=(mininet iputils-ping ethtool iproute2 tcpdump python3-venv python3-dev gcc conntrack nftables)
missing=()
for p in "${debs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

py=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[dev]'

# Mininet's Python package comes from Debian (dist-packages of the system interpreter). Expose just that
# package to the venv, not the whole dist-packages, so Debian's other modules cannot shadow pip's.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/debian-mininet
ln -sfn /usr/lib/python3/dist-packages/mininet .venv/debian-mininet/mininet
echo "$(pwd)/.venv/debian-mininet" > "$site/debian-mininet.pth"
.venv/bin/python -c 'import mininet.net' 2>/dev/null || echo "setup.sh: warning: Mininet's Python package is not importable" >&2
echo "setup.sh: ready (.venv); p4c: $(command -v p4c-bm2-ss || echo absent), bmv2: $(command -v simple_switch_grpc || echo absent)"
