#!/usr/bin/env bash
# Install the Debian packages listed in scripts/apt-packages.txt, only those missing.
# Idempotent: a second run with everything present does no network access.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$here/apt-packages.txt")
missing=()
for pkg in "${wanted[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "apt: all ${#wanted[@]} packages present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "apt: missing packages: ${missing[*]}" >&2
    echo "apt: run 'make install' as root (or install them with apt-get)" >&2
    exit 1
fi
echo "apt: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Server packages (openssh-server, nginx) would start their daemons in the root namespace
# on install; the lab runs its own copies inside namespaces. policy-rc.d exit 101 tells
# invoke-rc.d not to start anything; it is removed afterwards unless it was already there.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi
# --no-install-recommends: python3-bpfcc recommends linux-headers-amd64, which would
# upgrade unrelated packages; scripts/kernel-headers.sh provides headers instead.
apt-get install -y -qq --no-install-recommends "${missing[@]}"
