#!/bin/sh
# GET /healthz handler of the RTO lab guest (one process per connection,
# started by `nc -ll -e` from /init; stdin/stdout are the TCP socket).
#
# Answers 200 "<vmi-name> <instance> boot=<n>". With a data disk it first
# writes a record to sector 1 with fsync: a failed disk makes the probe fail
# (I/O error -> 500) or hang (the hypervisor paused the guest), as a real
# service that writes would.

reply() {
    printf 'HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %s\r\nConnection: close\r\n\r\n%s\n' \
        "$1" $((${#2} + 1)) "$2"
}

CR=$(printf '\r')
read -r method path _
# Drain the headers: closing with unread data would reset the connection.
while read -r line; do
    line=${line%"$CR"}
    [ -z "$line" ] && break
done

case "$path" in
    /healthz | /healthz\?*) ;;
    *) reply "404 Not Found" "not found: $path"; exit 0 ;;
esac

# Builtins only (read, printf): every fork costs milliseconds under TCG.
read -r name < /run/rto/name
read -r instance < /run/rto/instance
read -r boot < /run/rto/boot
read -r disk < /run/rto/disk
if [ -n "$disk" ]; then
    # A detached disk leaves no node behind; dd would then create a plain
    # file in /dev and "succeed".
    if [ ! -b "$disk" ]; then
        reply "500 Internal Server Error" "$name $instance boot=$boot disk-missing"
        exit 0
    fi
    read -r uptime _ < /proc/uptime
    if ! printf 'healthz %s %s\n' "$instance" "$uptime" \
        | dd of="$disk" bs=512 seek=1 count=1 conv=sync,notrunc,fsync 2> /dev/null; then
        reply "500 Internal Server Error" "$name $instance boot=$boot disk-write-failed"
        exit 0
    fi
fi
reply "200 OK" "$name $instance boot=$boot"
