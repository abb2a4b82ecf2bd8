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
        "") ;;
        *) echo "unknown $cmd" >&4 ;;
    esac
done
