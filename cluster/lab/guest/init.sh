#!/bin/sh
# /init of the RTO lab guest (PID 1 of a busybox initramfs).
#
# Written by cluster/lab/guest/build.py into the initramfs; run by the kernel.
# Reads its settings from the kernel command line (rto.* keys, see build.py):
#   rto.name=<vmi-name>  rto.ip=<addr/prefix>  rto.gw=<gateway>
#   rto.wdt=<i6300esb timeout s | default>  rto.feed=<feed interval s>
# It loads the modules listed in /etc/rto/modules, configures eth0, keeps a
# boot count on /dev/vda (raw sector 0, no filesystem: no ext4 module stack to
# load, and every write reaches the device), feeds /dev/watchdog, serves
# GET /healthz on port 80 and then becomes the control loop on ttyS1.
# The host watches ttyS0 for the line "RTO-GUEST-READY <instance> boot=<n>".

export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run/rto /tmp

say() { echo "rto-guest: $*" > /dev/console; }
# RTO_TRACE=1 on the kernel command line (unknown keys become init's
# environment) prints the guest uptime at each step of the boot.
stage() { [ -z "$RTO_TRACE" ] || say "$1 at $(cut -d ' ' -f 1 /proc/uptime)"; }
stage init

NAME=guest
IP=
GW=
WDT=2
FEED=1
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        rto.name=*) NAME=${arg#rto.name=} ;;
        rto.ip=*) IP=${arg#rto.ip=} ;;
        rto.gw=*) GW=${arg#rto.gw=} ;;
        rto.wdt=*) WDT=${arg#rto.wdt=} ;;
        rto.feed=*) FEED=${arg#rto.feed=} ;;
    esac
done

# Modules in dependency order. i6300esb takes its timeout ("heartbeat" in the
# driver's words) from the command line; "default" leaves the driver's 30 s.
while read -r mod path; do
    args=
    if [ "$mod" = i6300esb ] && [ "$WDT" != default ]; then
        args="heartbeat=$WDT"
    fi
    insmod "/lib/modules/$path" $args || say "insmod $mod failed"
done < /etc/rto/modules
stage modules

# Instance: new on every boot, so the host tells a reset from a live guest.
INSTANCE=$(cut -c1-8,10-13 /proc/sys/kernel/random/uuid)

# virtio devices are probed when their driver loads, but the block device
# node can appear a moment later; a data disk is present if virtio says so.
DISK=
if grep -qs 0x0002 /sys/bus/virtio/devices/*/device; then
    for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
        [ -b /dev/vda ] && { DISK=/dev/vda; break; }
        sleep 0.1
    done
    [ -n "$DISK" ] || say "virtio disk present but /dev/vda never appeared"
fi

BOOT=1
if [ -n "$DISK" ]; then
    hdr=$(dd if=$DISK bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1)
    case "$hdr" in
        "RTOGUEST boot="*) BOOT=$((${hdr#RTOGUEST boot=} + 1)) ;;
    esac
    printf 'RTOGUEST boot=%s\n' "$BOOT" \
        | dd of=$DISK bs=512 count=1 conv=sync,notrunc,fsync 2>/dev/null \
        || say "cannot write the boot count to $DISK"
fi
echo "$NAME" > /run/rto/name
echo "$INSTANCE" > /run/rto/instance
echo "$BOOT" > /run/rto/boot
echo "$DISK" > /run/rto/disk
# Seconds before the guest serves: a run's log follower has this boot's line
# even when the run ends a moment after /healthz answers (before READY).
echo "RTO-GUEST-BOOT $INSTANCE boot=$BOOT" > /dev/console
stage disk

ip link set lo up
if [ -n "$IP" ]; then
    ip addr add "$IP" dev eth0 || say "cannot set $IP on eth0"
    ip link set eth0 up
    [ -n "$GW" ] && { ip route add default via "$GW" || say "cannot route via $GW"; }
    # Unsolicited ARP, as a real OS's network stack sends on link up: a node
    # that probed this address while the guest was down holds a FAILED
    # neighbour entry and would drop probes for seconds; this revives it.
    arping -U -c 1 -I eth0 "${IP%/*}" > /dev/null 2>&1 &
fi

stage network

# Watchdog feeder. Opening the device arms the i6300esb; the fd stays open in
# this subshell, so stopping (or killing) it lets the timer run out.
if [ -c /dev/watchdog ]; then
    (
        exec 3> /dev/watchdog
        while printf 1 >&3; do sleep "$FEED"; done
    ) &
    echo $! > /run/rto/feeder.pid
else
    say "no /dev/watchdog: the guest runs without a watchdog"
fi

# HTTP: one resident server (healthz.c), no process per request: a forked
# shell per probe costs 0.1-0.3 s of the only vCPU under TCG. It reads
# /run/rto/* once, so it starts after they are written. (busybox httpd would
# redirect /healthz to /healthz/, which a probe must not have to follow.)
/bin/rto-healthz serve 80 &
echo $! > /run/rto/httpd.pid
stage http

# Ready only once /healthz answers here (it also proves the disk takes writes).
# The server's own client, not wget: the static busybox wget crashes (glibc
# NSS in a static binary).
for _ in $(seq 1 50); do
    if /bin/rto-healthz check 80 2000; then
        say "healthz up at $(cut -d ' ' -f 1 /proc/uptime) s guest uptime"
        echo "RTO-GUEST-READY $INSTANCE boot=$BOOT" > /dev/console
        break
    fi
    sleep 0.1
done

# PID 1 must never exit (the kernel would panic): the control loop is the rest
# of its life. "hang" stops every other process, including the feeder.
while :; do
    /bin/rto-control
    say "control loop exited ($?); restarting it"
    sleep 1
done
