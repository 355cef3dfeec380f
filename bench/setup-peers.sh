#!/usr/bin/env bash
# Install the comparison peers of bench/offline.py: Suricata 7 (Debian bookworm-backports)
# and nfstream (PyPI, into its own venv build/bench-venv). Bench only: `make install` and CI
# never call this. Needs root and the network (Debian apt, PyPI).
#
#   bench/setup-peers.sh            # install what is missing, report each peer
#
# A peer that fails to install is reported and the script goes on; bench/offline.py then
# prints `nan` for it. Exit status: 0 when both peers are usable, 1 otherwise.
set -uo pipefail

cd "$(dirname "$0")/.."
BUILD=build/bench
VENV=build/bench-venv
LOG=$BUILD/setup-peers.log
BACKPORTS=/etc/apt/sources.list.d/mld-bench-backports.list
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
mkdir -p "$BUILD"
: >"$LOG"
status=0

note() { echo "setup-peers: $*"; }

# ---- Suricata 7 from bookworm-backports ------------------------------------------------------
suricata_ok() { command -v suricata >/dev/null && suricata -V 2>/dev/null | grep -q 'version 7'; }
if suricata_ok; then
    note "suricata: $(suricata -V 2>/dev/null) (already installed)"
else
    if [ ! -f "$BACKPORTS" ]; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" >"$BACKPORTS"
        note "added $BACKPORTS"
    fi
    if apt-get update >>"$LOG" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t bookworm-backports suricata \
            >>"$LOG" 2>&1 && suricata_ok; then
        # The package enables a system service; the bench runs suricata -r on its own.
        systemctl disable --now suricata >/dev/null 2>&1 || true
        note "suricata: $(suricata -V 2>/dev/null) (installed from bookworm-backports)"
    else
        note "suricata: NOT installed (see $LOG); bench/offline.py prints suricata_pps=nan"
        tail -n 5 "$LOG" | sed 's/^/    /'
        status=1
    fi
fi

# ---- nfstream from PyPI, in its own venv -----------------------------------------------------
nfstream_version() { "$VENV/bin/python" -c 'import nfstream; print(nfstream.__version__)' 2>/dev/null; }
if [ -x "$VENV/bin/python" ] && v=$(nfstream_version); then
    note "nfstream: $v in $VENV (already installed)"
else
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    if "$VENV/bin/python" -m pip install -q --upgrade pip >>"$LOG" 2>&1 &&
        "$VENV/bin/python" -m pip install -q nfstream >>"$LOG" 2>&1 && v=$(nfstream_version); then
        note "nfstream: $v installed in $VENV ($("$VENV/bin/python" -V))"
    else
        note "nfstream: NOT installed (see $LOG); bench/offline.py prints nfstream_pps=nan"
        grep -iE 'error|requires' "$LOG" | tail -n 5 | sed 's/^/    /'
        status=1
    fi
fi
exit $status
