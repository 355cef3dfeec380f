#!/usr/bin/env bash
# Build the kernel-header tree that BCC compiles BPF programs against.
#
# This kernel has no packaged headers. Debian bookworm's linux-headers-6.1.*-amd64 and
# -common packages work for XDP: fetch both with `apt-get download` (never
# `apt-get install linux-headers-amd64`, which upgrades unrelated packages), unpack them
# with dpkg-deb and merge them into one tree: the common tree first, the amd64 one
# (generated headers, .config) over it. Point BCC_KERNEL_SOURCE at the result.
#
# Usage: scripts/kernel-headers.sh DEST     (DEST is replaced atomically)
set -euo pipefail
dest=${1:?usage: kernel-headers.sh DEST}
if [ -f "$dest/.mld-headers" ]; then
    echo "kernel headers: $(cat "$dest/.mld-headers") already in $dest"
    exit 0
fi
pick_abi() {
    apt-cache pkgnames linux-headers-6.1.0- 2>/dev/null \
        | sed -n 's/^linux-headers-\(6\.1\.0-[0-9]*\)-amd64$/\1/p' | sort -V | tail -n 1
}
abi=$(pick_abi)
if [ -z "$abi" ]; then
    apt-get update -qq
    abi=$(pick_abi)
fi
if [ -z "$abi" ]; then
    echo "kernel headers: no linux-headers-6.1.0-*-amd64 package in apt's lists;" \
         "check /etc/apt/sources.list for bookworm main" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
work=$(mktemp -d "${dest%/}.tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "kernel headers: fetching linux-headers-$abi-amd64 and -common"
# apt's sandbox user cannot write into a root-owned temp dir; the download itself is fine.
(cd "$work" && apt-get download -qq "linux-headers-$abi-amd64" "linux-headers-$abi-common" 2>&1 \
    | grep -v 'Download is performed unsandboxed' || true)
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
src="$work/x/usr/src"
[ -d "$src/linux-headers-$abi-common" ] && [ -d "$src/linux-headers-$abi-amd64" ] || {
    echo "kernel headers: download of linux-headers-$abi failed" >&2; exit 1; }
tree="$work/tree"
mkdir -p "$tree"
cp -a "$src/linux-headers-$abi-common/." "$tree/"
# cp -a merges include/ and arch/ into the common ones. The amd64 package's scripts/ and tools/ are links into linux-kbuild, which BCC does not need.
for item in .config Makefile Module.symvers include arch; do
    cp -a "$src/linux-headers-$abi-amd64/$item" "$tree/" 2>/dev/null || true
done
echo "linux-headers-$abi" > "$tree/.mld-headers"
rm -rf "$dest"
mv "$tree" "$dest"
echo "kernel headers: linux-headers-$abi merged into $dest"
