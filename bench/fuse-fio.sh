#!/usr/bin/env bash
# FUSE-level benchmarks with fio (Debian package fio): random 4 KiB writes
# with fsync after each on a 50 MB file, through `scrubd mount` with the
# fsync log, with --notreelog, and on a host directory; then sequential
# 1 GiB write and read through the mount and on the host.
#
# Images are made with --preallocate (as a block device or a long-used image
# file would be); SPARSE=1 measures sparse image files instead.
#
# BREAKDOWN=1 adds, after each timed fsync run through the mount, a short
# run under strace that counts per fsync what the mount asked of the kernel:
# FUSE requests (reads of /dev/fuse), pwrites, fdatasyncs, bytes written,
# and how many fsyncs wrote their data block and log block side by side
# (one request for the flush). strace slows the run: read its counts, not
# its rate.
#
#   bash bench/fuse-fio.sh [WORKDIR]     (run as root; needs fio and fuse3)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
command -v fio >/dev/null || { echo "fio is not installed (apt-get install -y fio)"; exit 1; }
go build -o "$work/scrubd" ./cmd/scrubd
runtime=${RUNTIME:-20}

fsync_job() { # DIR
	fio --name=fsync --directory="$1" --filename=fio.dat --size=50m --bs=4k \
		--rw=randwrite --fsync=1 --ioengine=psync --runtime="$runtime" --time_based \
		--output-format=json | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print("%.0f" % j["iops"])'
}

seq_job() { # DIR RW
	fio --name=seq --directory="$1" --filename=seq.dat --size=1g --bs=1m --rw="$2" \
		--ioengine=psync --end_fsync=1 --output-format=json |
		python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]; k="write" if "'"$2"'"=="write" else "read"; print("%.0f" % (j[k]["bw"]/1024))'
}

# breakdown PID DIR: strace the mount (PID) during a short fsync run on DIR.
breakdown() {
	command -v strace >/dev/null || { echo "breakdown: strace is not installed"; return; }
	local out="$work/strace.txt"
	fio --name=fsync --directory="$2" --filename=fio.dat --size=50m --bs=4k \
		--rw=randwrite --fsync=1 --ioengine=psync --runtime=6 --time_based >/dev/null &
	local fio_pid=$!
	sleep 1
	timeout 4 strace -f -qq -e trace=read,pwrite64,fdatasync,fsync -p "$1" -o "$out" || true
	wait "$fio_pid"
	python3 - "$out" <<'PY'
import re, sys
reqs = pw = fds = fss = nbytes = 0
groups, cur = [], []
for l in open(sys.argv[1]):
    m = re.search(r'\b(read|pwrite64|fdatasync|fsync)\((\d+)', l)
    if not m:
        continue  # "<... resumed>" halves of calls counted at their start
    call = m.group(1)
    if call == 'read':
        reqs += 1
    elif call == 'pwrite64':
        w = re.search(r', (\d+), (\d+)(\)| <unfinished)', l)
        if w:
            pw += 1
            nbytes += int(w.group(1))
            cur.append(('L' if '"SCRL' in l else 'D', int(w.group(2)) // 4096, int(w.group(1)) // 4096))
    elif call == 'fdatasync':
        fds += 1
        groups.append(cur)
        cur = []
    else:
        fss += 1
n = max(fds, 1)
pairs = [g for g in groups if len(g) == 2 and {t for t, _, _ in g} == {'L', 'D'}]
adj = sum(1 for g in pairs if sorted(b for _, b, _ in g)[1] - sorted(b for _, b, _ in g)[0] == 1)
print("  per fdatasync: %.2f FUSE requests, %.2f pwrites, %.0f bytes; fsync(2) calls: %d" % (reqs / n, pw / n, nbytes / n, fss))
print("  flushes with one data and one log block: %d, side by side: %d" % (len(pairs), adj))
PY
}

pid=
mount_image() { # IMAGE MNT FLAGS...: starts `scrubd mount`, sets pid
	local img=$1 mnt=$2; shift 2
	mkdir -p "$mnt"
	: >"$work/mount.log"
	"$work/scrubd" mount "$img" "$mnt" "$@" >"$work/mount.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do grep -q mounted "$work/mount.log" && return; sleep 0.1; done
	echo "mount did not come up:"; cat "$work/mount.log"; exit 1
}

unmount_image() { # stops the mount started last and waits for it to exit
	kill -TERM "$pid"
	wait "$pid"
}

report() { printf '%-34s %s\n' "$1" "$2"; }

for mode in log notreelog; do
	img="$work/$mode.img"
	rm -f "$img"
	prealloc=(--preallocate)
	[ -n "${SPARSE:-}" ] && prealloc=()
	"$work/scrubd" mkfs "$img" --size 4G "${prealloc[@]}" >/dev/null 2>&1
	flags=()
	[ "$mode" = notreelog ] && flags=(--notreelog)
	mount_image "$img" "$work/mnt" "${flags[@]}"
	report "fsync randwrite 4k, $mode (iops)" "$(fsync_job "$work/mnt")"
	[ -n "${BREAKDOWN:-}" ] && breakdown "$pid" "$work/mnt"
	if [ "$mode" = log ]; then
		report "seq write 1 GiB, mount (MiB/s)" "$(seq_job "$work/mnt" write)"
		echo 3 >/proc/sys/vm/drop_caches || true
		report "seq read 1 GiB, mount (MiB/s)" "$(seq_job "$work/mnt" read)"
	fi
	unmount_image
	"$work/scrubd" fsck "$img" >/dev/null && report "fsck after $mode run" clean
done
mkdir -p "$work/host"
report "fsync randwrite 4k, host dir (iops)" "$(fsync_job "$work/host")"
report "seq write 1 GiB, host (MiB/s)" "$(seq_job "$work/host" write)"
echo 3 >/proc/sys/vm/drop_caches || true
report "seq read 1 GiB, host (MiB/s)" "$(seq_job "$work/host" read)"
rm -rf "$work/host" "$work"/*.img
