#!/usr/bin/env bash
# Set up offloadgen on a Debian machine as root: system packages (Mininet, ping, ethtool), a virtual
# environment in .venv on Debian's python3 (so Mininet's Python package is importable) with the project in
# editable mode, its test tools and P4Runtime bindings generated for its protobuf (upb), and p4runtime-shell
# in its own .venv-shell (it pins protobuf<3.21). Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs Debian packages and the tests create network namespaces)" >&2
  exit 1
fi

debs=(mininet iputils-ping ethtool iproute2 tcpdump openssl python3-venv python3-dev gcc conntrack nftables)
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
# A .venv made before the move to modern protobuf has the PyPI p4runtime (protobuf 3 gencode, which upb
# refuses) and p4runtime-shell: remove them first, so their p4/ package can neither shadow the regenerated
# one nor delete its files when uninstalled later.
for old in p4runtime-shell p4runtime; do
  if .venv/bin/python -m pip show "$old" >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y "$old"
  fi
done
.venv/bin/python -m pip install -q -e '.[dev]'
# P4Runtime bindings for this protobuf; a no-op when the installed ones already match (scripts/gen_p4runtime.py).
.venv/bin/python scripts/gen_p4runtime.py
impl=$(.venv/bin/python -c 'import p4.v1.p4runtime_pb2, google.rpc.status_pb2
from google.protobuf.internal import api_implementation; print(api_implementation.Type())')
if [ "$impl" != upb ]; then
  echo "setup.sh: .venv's protobuf runs on '$impl', not upb; unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION" \
       "or reinstall protobuf (.venv/bin/python -m pip install --force-reinstall protobuf)" >&2
  exit 1
fi

# p4runtime-shell, unmodified from PyPI, is an outside client with its own pins (protobuf<3.21, ipython
# 7.31): it gets its own environment, so it can never hold .venv's protobuf back.
if [ ! -x .venv-shell/bin/python ]; then
  "$py" -m venv .venv-shell
fi
.venv-shell/bin/python -m pip install -q --upgrade pip >/dev/null
.venv-shell/bin/python -m pip install -q 'p4runtime-shell>=0.0.6'

# Mininet's Python package comes from Debian (dist-packages of the system interpreter). Expose just that
# package to the venv, not the whole dist-packages, so Debian's other modules cannot shadow pip's.
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p .venv/debian-mininet
ln -sfn /usr/lib/python3/dist-packages/mininet .venv/debian-mininet/mininet
echo "$(pwd)/.venv/debian-mininet" > "$site/debian-mininet.pth"
.venv/bin/python -c 'import mininet.net' 2>/dev/null || echo "setup.sh: warning: Mininet's Python package is not importable" >&2
echo "setup.sh: ready (.venv, .venv-shell); protobuf: $impl; p4c: $(command -v p4c-bm2-ss || echo absent), bmv2: $(command -v simple_switch_grpc || echo absent)"
