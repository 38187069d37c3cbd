#!/usr/bin/env bash
# Sequential readers through `scrubd mount` with the kernel's read-ahead
# window at its default (--readahead 0, 128 KiB) and at the mount's (1M):
# one reader reading four 1 GiB files one after the other, then four
# readers, one file each, 1 MiB reads, the page cache dropped before each
# run. Prints MiB/s and the mount process's CPU seconds per run; the modes
# alternate round by round.
#
#   bash bench/fuse-readers.sh [ROUNDS] [WORKDIR]   (as root; needs fio and fuse3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
work=${2:-$(mktemp -d)}
mkdir -p "$work/mnt"
command -v fio >/dev/null || { echo "fio is not installed (apt-get install -y fio)"; exit 1; }
go build -o "$work/scrubd" ./cmd/scrubd
img="$work/readers.img" mnt="$work/mnt"
pid=
cleanup() {
	if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

mountit() { # READAHEAD
	"$work/scrubd" mount --readahead "$1" "$img" "$mnt" >"$work/mount.log" 2>&1 &
	pid=$!
	for _ in $(seq 100); do mountpoint -q "$mnt" && return; sleep 0.1; done
	echo "mount did not come up:"; cat "$work/mount.log"; exit 1
}
umountit() { kill "$pid"; wait "$pid" || true; pid=; }

cpu() { # seconds of user+system CPU of process $pid so far
	awk -v hz="$(getconf CLK_TCK)" '{ sub(/.*\) /, ""); split($0, f, " "); print (f[12] + f[13]) / hz }' "/proc/$pid/stat"
}

bw() { # FIO ARGS...: MiB/s read
	fio "$@" --output-format=json | python3 -c 'import json,sys; s=sys.stdin.read(); print("%.0f" % (json.loads(s[s.index("{"):])["jobs"][0]["read"]["bw"]/1024))'
}

run() { # LABEL FIO ARGS...
	local label=$1; shift
	sync; echo 3 > /proc/sys/vm/drop_caches
	local c0 b c1
	c0=$(cpu); b=$(bw "$@"); c1=$(cpu)
	printf "%-10s %-10s %8s MiB/s   mount CPU %5.2f s\n" "$(cat "/sys/class/bdi/$(mountpoint -d "$mnt")/read_ahead_kb") KiB" "$label" "$b" "$(echo "$c1 - $c0" | bc)"
}

"$work/scrubd" mkfs "$img" --size 6G --preallocate --force >/dev/null
mountit 0
for i in 0 1 2 3; do
	fio --name=w --directory="$mnt" --filename="r$i.dat" --size=1g --bs=1m --rw=write --end_fsync=1 >/dev/null
done
umountit

one=(--name=r --directory="$mnt" --filename=r0.dat:r1.dat:r2.dat:r3.dat --file_service_type=sequential --size=4096m --bs=1m --rw=read)
four=(--group_reporting --directory="$mnt" --bs=1m --rw=read --size=1024m)
for i in 0 1 2 3; do four+=(--name="j$i" --filename="r$i.dat"); done

echo "read-ahead reader        throughput     (4 GiB per run)"
for r in $(seq "$rounds"); do
	for ra in 0 1M; do
		mountit "$ra"
		run "1 reader" "${one[@]}"
		run "4 readers" "${four[@]}"
		umountit
	done
done
