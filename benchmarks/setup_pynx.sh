#!/usr/bin/env bash
# Install PyNX (ESRF, Debian package python3-pynx from bookworm-backports) for benchmarks ONLY.
# PyNX is never a dependency of xfel_dl_plugins and no PyNX code is committed: the .deb is unpacked
# outside the repository and used from a separate virtual environment.
#
#   benchmarks/setup_pynx.sh [BENCH_DIR]     (default /work/bench; needs root for apt-get update)
#
# Afterwards:  BENCH_DIR/venv/bin/python + PYTHONPATH=BENCH_DIR/pynx/usr/lib/python3/dist-packages
#              + PYNX_PU=cpu  (bench_phasing.py sets these itself when given --pynx-dir BENCH_DIR)
set -euo pipefail
BENCH_DIR=${1:-/work/bench}
mkdir -p "$BENCH_DIR"

# 1. Add bookworm-backports beside the configured Debian mirror (same URI, same keyring).
SRC=/etc/apt/sources.list.d/bookworm-backports.sources
if ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    MIRROR=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$MIRROR" ]; then
        MIRROR=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    fi
    MIRROR=${MIRROR:-http://deb.debian.org/debian}
    cat > "$SRC" <<SOURCES
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
fi
apt-get update -qq

# 2. Download and unpack the .deb (no installation into the system Python).
cd "$BENCH_DIR"
rm -f python3-pynx_*.deb
apt-get download python3-pynx
rm -rf "$BENCH_DIR/pynx"
dpkg -x python3-pynx_*.deb "$BENCH_DIR/pynx"

# 3. A separate venv with PyNX's CPU-side dependencies.
if [ ! -x "$BENCH_DIR/venv/bin/python" ]; then
    python3 -m venv "$BENCH_DIR/venv"
fi
"$BENCH_DIR/venv/bin/pip" install -q numpy scipy silx fabio scikit-image h5py numexpr psutil matplotlib

PYNX_PATH=$(dirname "$(find "$BENCH_DIR/pynx" -type d -name pynx -path '*dist-packages*' | head -1)")
echo "PyNX unpacked in $PYNX_PATH"
PYTHONPATH="$PYNX_PATH" PYNX_PU=cpu "$BENCH_DIR/venv/bin/python" -c \
    "from pynx.version import __version__; from pynx.cdi import CDI, HIO, ER, RAAR, SupportUpdate; print('pynx', __version__, 'OK')"
