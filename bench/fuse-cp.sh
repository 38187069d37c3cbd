#!/usr/bin/env bash
# cp -a and rm -rf of a tree of 10,000 small files (100 directories of 100
# files of 0-8 KiB) through `scrubd mount`, on a fresh image per run, the
# page cache dropped first. With BASE=path/to/an/older/scrubd, that build
# runs in alternate rounds, so a change can be measured against it.
#
#   bash bench/fuse-cp.sh [ROUNDS] [WORKDIR]     (as root; needs fuse3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
work=${2:-$(mktemp -d)}
mkdir -p "$work/mnt"
go build -o "$work/scrubd" ./cmd/scrubd
pid=
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
}
trap cleanup EXIT
if [ ! -d "$work/src" ]; then
	python3 - "$work/src" <<'PY'
import os, random, sys
r = random.Random(1)
for d in range(100):
    os.makedirs(f"{sys.argv[1]}/d{d}", exist_ok=True)
    for f in range(100):
        with open(f"{sys.argv[1]}/d{d}/f{f}", "wb") as fh:
            fh.write(r.randbytes(r.randint(0, 8192)))
PY
fi
secs() { python3 -c 'import sys,time; t=time.monotonic(); import subprocess; subprocess.run(sys.argv[1:], check=True); print("%.2f" % (time.monotonic()-t))' "$@"; }
run() { # BIN LABEL
	rm -f "$work/cp.img"
	"$1" mkfs "$work/cp.img" --size 2G --preallocate >/dev/null 2>&1
	"$1" mount "$work/cp.img" "$work/mnt" >"$work/mount.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do mountpoint -q "$work/mnt" && break; sleep 0.1; done
	mountpoint -q "$work/mnt" || { cat "$work/mount.log"; exit 1; }
	sync; echo 3 > /proc/sys/vm/drop_caches
	printf "%-8s cp -a %6s s   rm -rf %6s s\n" "$2" "$(secs cp -a "$work/src" "$work/mnt/a")" "$(secs rm -rf "$work/mnt/a")"
	kill "$pid"; wait "$pid" || true; pid=
}
for _ in $(seq "$rounds"); do
	if [ -n "${BASE:-}" ]; then run "$BASE" base; fi
	run "$work/scrubd" this
done
