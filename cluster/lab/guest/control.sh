#!/bin/sh
# Control channel of the RTO lab guest, on the second serial port (ttyS1).
#
# Started (and restarted) by /init. The host writes one command per line and
# reads one reply line:
#   ping  -> pong
#   hang  -> every other userland process (watchdog feeder, HTTP server)
#            gets SIGSTOP, then the reply "hung": probes time out and the
#            i6300esb fires. This loop keeps running so the channel stays open.
#   crash -> crashing; then a kernel panic via sysrq (panic=N on the kernel
#            command line decides between reboot and hang-until-watchdog).
#   bench-serve -> serving; starts the servers of benchmarks/net_compare.py:
#            TCP echo on port 7, 20 MiB of zeros per connection on port 5001.
#   bench-disk N -> "disk n=N fsync_us=.. direct_us=..": N 4 KiB writes to the
#            data disk past the guest's sectors, each its own dd with fsync,
#            then N in one dd with O_DIRECT; microseconds from adjtimex.
# The port stays open for the guest's whole life: QEMU drops host writes to a
# closed port.

TTY=/dev/ttyS1
CR=$(printf '\r')
stty -F "$TTY" 115200 raw -echo 2> /dev/null
exec 4<> "$TTY"

freeze_all() {
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        # Skip PID 1 (the kernel ignores it anyway), this loop, and kernel
        # threads (no executable).
        [ "$pid" = 1 ] || [ "$pid" = $$ ] && continue
        [ -e "$d/exe" ] || continue
        kill -STOP "$pid" 2> /dev/null
    done
}

now_us() {
    # shellcheck disable=SC2046 # word splitting wanted: "time.tv_sec: S time.tv_usec: U"
    set -- $(adjtimex | grep tv_)
    echo $(($2 * 1000000 + $4))
}

bench_disk() {
    n=$1
    disk=$(cat /run/rto/disk)
    [ -n "$disk" ] || { echo "disk none" >&4; return; }
    # Blocks 256.. (1 MiB on): sectors 0-1 hold the boot count and healthz record.
    t0=$(now_us)
    i=0
    while [ "$i" -lt "$n" ]; do
        dd if=/dev/zero of="$disk" bs=4096 count=1 seek=$((256 + i)) conv=fsync,notrunc 2> /dev/null
        i=$((i + 1))
    done
    t1=$(now_us)
    dd if=/dev/zero of="$disk" bs=4096 count="$n" seek=256 oflag=direct conv=notrunc 2> /dev/null
    t2=$(now_us)
    echo "disk n=$n fsync_us=$((t1 - t0)) direct_us=$((t2 - t1))" >&4
}

while read -r cmd <&4; do
    cmd=${cmd%"$CR"}
    case "$cmd" in
        ping) echo pong >&4 ;;
        hang)
            # Reply once frozen, so the host may expect failed probes at once.
            freeze_all
            echo hung >&4
            echo "rto-guest: hang: userland stopped, watchdog no longer fed" > /dev/console
            ;;
        crash)
            echo crashing >&4
            echo c > /proc/sysrq-trigger
            ;;
        bench-serve)
            nc -ll -p 7 -e cat &
            nc -ll -p 5001 -e dd if=/dev/zero bs=65536 count=320 &
            echo serving >&4
            ;;
        bench-disk\ *) bench_disk "${cmd#bench-disk }" ;;
        "") ;;
        *) echo "unknown $cmd" >&4 ;;
    esac
done
