#!/usr/bin/env bash
# The FUSE floor for fsync'd writes: random 4 KiB writes with fsync after
# each (fio --fsync=1, 256 MiB file, 15 s a run), interleaved round by
# round on
#   mnt   a `scrubd mount` of a preallocated image file
#   lb    the go-fuse loopback example (passthrough off, as bench/compare
#         runs it) over a directory of the host's own filesystem: the
#         thinnest FUSE server there is, with no log and no checksums
#   ext4  ext4 on a loop device over a written image file
#   xfs   XFS likewise
#   host  the host's filesystem directly
# all on the same host filesystem. Prints IOPS, fio's mean write latency
# (through FUSE, the WRITE round trip) and mean fsync latency per run, then
# the medians and the ratios.
#
#   bash bench/fsync-floor.sh [ROUNDS] [WORKDIR]   (as root; needs fio, fuse3, xfsprogs)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
work=${2:-$(mktemp -d)}
runtime=${RUNTIME:-15}
command -v fio >/dev/null || { echo "fio is not installed (apt-get install -y fio)"; exit 1; }
go build -o "$work/scrubd" ./cmd/scrubd
go build -o "$work/compare" ./bench/compare
for d in mnt lb lborig ext4 xfs host; do mkdir -p "$work/$d"; done

spid= lpid= l1= l2=
cleanup() {
	for d in ext4 xfs; do mountpoint -q "$work/$d" && umount "$work/$d"; done
	for l in $l1 $l2; do losetup -d "$l" || true; done
	for p in $spid $lpid; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	rm -f "$work"/*.img
}
trap cleanup EXIT

"$work/scrubd" mkfs "$work/scrubd.img" --size 2G --preallocate --force >/dev/null 2>&1
for f in ext4 xfs; do dd if=/dev/zero of="$work/$f.img" bs=1M count=2048 conv=fsync status=none; done
l1=$(losetup -f --show "$work/ext4.img"); mkfs.ext4 -q "$l1"; mount "$l1" "$work/ext4"
l2=$(losetup -f --show "$work/xfs.img"); mkfs.xfs -q -f "$l2"; mount "$l2" "$work/xfs"
"$work/scrubd" mount "$work/scrubd.img" "$work/mnt" >"$work/mount.log" 2>&1 &
spid=$!
"$work/compare" __loopback "$work/lb" "$work/lborig" >"$work/lb.log" 2>&1 &
lpid=$!
for _ in $(seq 100); do mountpoint -q "$work/mnt" && mountpoint -q "$work/lb" && break; sleep 0.1; done
mountpoint -q "$work/mnt" && mountpoint -q "$work/lb" || { echo "a mount did not come up"; cat "$work/mount.log" "$work/lb.log"; exit 1; }

targets=(mnt lb ext4 xfs host)
for d in "${targets[@]}"; do
	dd if=/dev/urandom of="$work/$d/fio.dat" bs=1M count=256 conv=fsync status=none
done
sync
: >"$work/results"
for r in $(seq "$rounds"); do
	for d in "${targets[@]}"; do
		fio --name=fsync --directory="$work/$d" --filename=fio.dat --size=256m --bs=4k \
			--rw=randwrite --fsync=1 --ioengine=psync --fallocate=none --runtime="$runtime" --time_based \
			--output-format=json | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
w, s = j["write"], j["sync"]
print(sys.argv[1], sys.argv[2], "%.0f %.1f %.1f" % (w["iops"], w["clat_ns"]["mean"] / 1000, s["lat_ns"]["mean"] / 1000))' "$d" "$r" | tee -a "$work/results"
	done
done
python3 - "$work/results" <<'PY'
import statistics, sys
rows = {}
for l in open(sys.argv[1]):
    d, _, iops, w, s = l.split()
    rows.setdefault(d, []).append((float(iops), float(w), float(s)))
med = {d: [statistics.median(x[i] for x in v) for i in range(3)] for d, v in rows.items()}
print("\n%-5s %9s %13s %13s   IOPS by round" % ("", "IOPS", "write us", "fsync us"))
for d, v in rows.items():
    m = med[d]
    print("%-5s %9.0f %13.1f %13.1f   %s" % (d, m[0], m[1], m[2], " ".join("%.0f" % x[0] for x in v)))
print()
for a, b in [("mnt", "ext4"), ("mnt", "xfs"), ("mnt", "lb"), ("lb", "ext4"), ("lb", "xfs")]:
    print("%s / %s: %.2f" % (a, b, med[a][0] / med[b][0]))
PY
