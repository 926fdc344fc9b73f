#!/bin/sh
# Set up what Elastin needs on a Debian 12 machine: Debian packages (when root), a virtual
# environment in $VENV and the package with its development tools. Safe to run again.
set -eu
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
# Debian packages Elastin uses. python3-venv makes the virtualenv; the rest are the tools the
# workloads and tests call (curl for checks, procps for ps, util-linux for nsenter/unshare,
# nginx, wrk and h2load for the mesh's interop tests and benchmarks; a C compiler and the
# headers scripts/haproxy.sh builds the mesh's HAProxy 3.0 with; Debian's haproxy 2.6 for the
# benchmark's comparison with it).
DEB_PACKAGES="python3 python3-venv python3-dev curl procps iproute2 util-linux perl haproxy nginx wrk nghttp2-client
 gcc make libc6-dev dpkg-dev patch xz-utils libssl-dev liblua5.4-dev libpcre2-dev"

missing=""
for p in $DEB_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing Debian packages:$missing"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends $missing >/dev/null
    elif ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        echo "setup: these Debian packages are missing:$missing" >&2
        echo "setup: run 'sudo apt-get install$missing' (or run make as root), then try again" >&2
        exit 1
    fi
fi

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Elastin needs Python >= 3.11; $PYTHON is $($PYTHON -V 2>&1)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating the virtual environment in $VENV"
    "$PYTHON" -m venv "$VENV"
fi
echo "setup: installing elastin and its tools into $VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV/bin/python" -m pip install -q -e '.[dev]'
VENV="$VENV" sh scripts/haproxy.sh
if [ "$(id -u)" != 0 ]; then
    echo "setup: note: not root, so the task driver cannot create cgroups here;" \
         "workloads will stay pending with that reason (run as root for kernel-enforced limits)" >&2
fi
