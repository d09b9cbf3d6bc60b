#!/bin/sh
# PID 1 of the test guest (see Documentation/rig.md, "Guest runner").
#
# The guest's root file system is the HOST's root, shared read-only over 9p, so every program
# here is the host's own (/bin/sh is dash). The runner (tests/guest.py) shares a per-run
# directory read-write under the 9p tag "vmrs"; it holds:
#   config     shell variables: VMRS_TIMEOUT VMRS_MODULE(load|install|none) VMRS_UDEV(0|1)
#              VMRS_KMEMLEAK(0|1) VMRS_REPO
#   cmd.sh     the command to run (with bash)
#   modroot/lib/modules/$(uname -r)/  the guest kernel's modules (+ virtio_media.ko in extra/),
#              depmod'ed on the host; bind-mounted on /lib/modules
# and receives: stdout, stderr, status, dmesg, kmemleak, timing, init.log.
# `status` is written last: its presence tells the host that the guest reported back.
# This script never returns: it reboots the guest (QEMU runs with -no-reboot, so it exits).

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
HOME=/tmp
LC_ALL=C.UTF-8
export PATH HOME LC_ALL

OUT=/run/vmrs

# The init's own helpers come from busybox-static: each dynamically linked exec costs ~0.3 s
# under TCG with a KASAN kernel (ld.so walking the host's libraries over 9p).
# (Debian's busybox has no `mountpoint`: is_mounted below.)
for a in mount mkdir chmod cat mv sleep sync dmesg; do
	eval "$a() { busybox $a \"\$@\"; }"
done

is_mounted() {
	while read -r _ mp _; do
		[ "$mp" = "$1" ] && return 0
	done < /proc/mounts
	return 1
}

finish() {
	sync
	# A reboot makes QEMU (-no-reboot) exit, with or without ACPI in the guest kernel.
	busybox reboot -f 2>/dev/null
	echo b > /proc/sysrq-trigger
	sleep 60
}

# A failure before the command ran: tell the host (setup-failed) and stop.
fatal() {
	echo "vmrs-init: $*" > /dev/console
	if [ -n "$OUT_MOUNTED" ]; then
		echo "$*" > "$OUT/setup-failed"
		dmesg > "$OUT/dmesg" 2>/dev/null
	fi
	finish
}

OUT_MOUNTED=
# (Not "if not mounted": before this, /proc is the host's, seen through the 9p root.)
mount -t proc -o nosuid,nodev,noexec proc /proc
is_mounted /sys || mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
is_mounted /dev || mount -t devtmpfs -o nosuid devtmpfs /dev
mkdir -p /dev/pts /dev/shm 2>/dev/null
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev tmpfs /dev/shm
# The repository (this script's ../) must stay visible in the guest even if the host keeps it
# under a directory that gets a tmpfs here (a checkout in /tmp, say): park a bind mount of it on
# /mnt (present and unused on the read-only root) and move it back after the tmpfs mounts.
REPO_DIR=$(cd "$(dirname "$0")/.." && pwd)
REPO_PARKED=
case "$REPO_DIR" in
/tmp/* | /run/* | /var/tmp/*)
	mount --bind "$REPO_DIR" /mnt && REPO_PARKED=1 || fatal "cannot bind $REPO_DIR on /mnt"
	;;
esac
for d in /tmp /run /var/tmp; do
	mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$d" || fatal "cannot mount tmpfs on $d"
done
if [ -n "$REPO_PARKED" ]; then
	mkdir -p "$REPO_DIR" && mount --move /mnt "$REPO_DIR" || fatal "cannot move the repo back to $REPO_DIR"
fi
chmod 755 /run
mount -t debugfs -o nosuid,nodev,noexec debugfs /sys/kernel/debug 2>/dev/null
mkdir -p "$OUT"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=none vmrs "$OUT" ||
	fatal "cannot mount the run directory share (9p tag vmrs)"
OUT_MOUNTED=1

exec 2>>"$OUT/init.log"
read -r t_init _ < /proc/uptime
. "$OUT/config" || fatal "no $OUT/config"
KREL=$(uname -r)
export VMRS_OUT="$OUT" VMRS_REPO VMRS_KREL="$KREL"

# /lib/modules: the guest kernel's own modules plus ours (extra/), depmod'ed by the host in the
# share, so that `modprobe` and modalias autoloading (udev) work. /lib/modules must exist on the
# (read-only) host root; the runner creates it on the host if it is missing.
if [ -d "$OUT/modroot/lib/modules/$KREL" ]; then
	mount -o bind "$OUT/modroot/lib/modules" /lib/modules || fatal "cannot bind-mount /lib/modules"
fi

if [ "$VMRS_UDEV" = 1 ]; then
	[ -x /lib/systemd/systemd-udevd ] || fatal "/lib/systemd/systemd-udevd missing (Debian package udev)"
	/lib/systemd/systemd-udevd --daemon || fatal "systemd-udevd did not start"
fi

if [ "$VMRS_MODULE" = load ]; then
	if ! modprobe virtio_media >"$OUT/modprobe.log" 2>&1; then
		echo "vmrs: modprobe virtio_media failed" > /dev/kmsg
		fatal "modprobe virtio_media failed: $(cat "$OUT/modprobe.log")"
	fi
fi

if [ "$VMRS_KMEMLEAK" = 1 ]; then
	# Forget what boot left behind; only leaks from here on count.
	echo scan > /sys/kernel/debug/kmemleak && echo clear > /sys/kernel/debug/kmemleak ||
		fatal "kmemleak not available (kmemleak=on on the kernel command line?)"
fi

read -r t_cmd _ < /proc/uptime
echo "vmrs: command start" > /dev/kmsg
cd /tmp
timeout -k 10 "$VMRS_TIMEOUT" bash "$OUT/cmd.sh" </dev/null >"$OUT/stdout" 2>"$OUT/stderr"
status=$?
echo "vmrs: command exit status $status" > /dev/kmsg
read -r t_end _ < /proc/uptime

if [ "$VMRS_KMEMLEAK" = 1 ]; then
	# kmemleak only reports objects older than 5 s; scan twice to drop transient references.
	sleep 6
	echo scan > /sys/kernel/debug/kmemleak
	echo scan > /sys/kernel/debug/kmemleak
	cat /sys/kernel/debug/kmemleak > "$OUT/kmemleak"
fi

printf 'init %s\ncmd_start %s\ncmd_end %s\n' "$t_init" "$t_cmd" "$t_end" > "$OUT/timing"
dmesg > "$OUT/dmesg"
dmesg -r > "$OUT/dmesg.raw"
echo "$status" > "$OUT/status.tmp" && mv "$OUT/status.tmp" "$OUT/status"
finish
