#!/usr/bin/env bash
# The peer for BenchmarkSnapshotCreate (engine/fs/snapshot_bench_test.go):
# btrfs subvolume snapshot of a subvolume of N files (directories of
# 1,000; 4 KiB each up to 100,000 files, empty beyond), on a loop device,
# the same layout. Prints the mean of 5 snapshot commands (each commits,
# as CreateSnapshot does) and the metadata bytes the 5 snapshots used.
# Needs root, btrfs-progs and a loop device; cleans up after itself.
#
#   sudo bash bench/snapshot_btrfs.sh 1000 10000 100000 [1000000]
set -euo pipefail
work=$(mktemp -d)
img=$work/btrfs.img
mnt=$work/mnt
loop=
cleanup() {
	if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
	if [ -n "$loop" ]; then losetup -d "$loop"; fi
	rm -rf "$work"
}
trap cleanup EXIT
for n in "${@:-1000 10000 100000}"; do
	truncate -s 8G "$img"
	loop=$(losetup --find --show "$img")
	mkfs.btrfs -q -f "$loop" 2>/dev/null
	mkdir -p "$mnt"
	mount "$loop" "$mnt"
	btrfs -q subvolume create "$mnt/src"
	python3 - "$mnt/src" "$n" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
block = b"\0" * 4096
for i in range(n):
    d = os.path.join(root, "d%d" % (i // 1000))
    if i % 1000 == 0:
        os.mkdir(d)
    with open(os.path.join(d, "f%d" % i), "wb") as f:
        if i < 100000:
            f.write(block)
PY
	sync
	meta0=$(btrfs filesystem df -b "$mnt" | awk -F'used=' '/^Metadata/{print $2}')
	start=$(date +%s.%N)
	for i in 1 2 3 4 5; do
		btrfs -q subvolume snapshot "$mnt/src" "$mnt/snap$i"
	done
	end=$(date +%s.%N)
	sync
	meta1=$(btrfs filesystem df -b "$mnt" | awk -F'used=' '/^Metadata/{print $2}')
	awk -v n="$n" -v s="$start" -v e="$end" -v m0="$meta0" -v m1="$meta1" \
		'BEGIN { printf "btrfs files=%d  snapshot %.2f ms (mean of 5)  metadata %.0f KiB per snapshot\n", n, (e-s)*1000/5, (m1-m0)/1024/5 }'
	umount "$mnt"
	losetup -d "$loop"
	loop=
	rm -f "$img"
done
