/*
 * rto-healthz: the resident HTTP server of the RTO lab guest (/bin/rto-healthz).
 *
 * Compiled by cluster/lab/guest/build.py (gcc -static -Os) into the guest's
 * initramfs; started once by /init after it has written /run/rto/{name,
 * instance,boot,disk}; probed by the host (the recorder, QemuGuest.probe).
 *
 * Why a resident C server: the previous `nc -ll -e` + shell handler forked a
 * shell per request, 0.1-0.3 s of the guest's only vCPU under TCG, so 50
 * probes a second overloaded the guest. This is one process, no fork per
 * request: poll() over the listening socket and up to MAX_CONNS clients, so
 * one slow client cannot block the others.
 *
 * Contract (unchanged from the shell handler):
 *   GET /healthz[?...] -> with a data disk, write one 512-byte record
 *     "healthz <instance> <uptime>\n" (NUL padded) to sector 1, synced
 *     (O_DIRECT|O_DSYNC, see sync_write);
 *     200 "<name> <instance> boot=<n>\n" on success,
 *     500 "<name> <instance> boot=<n> disk-missing" when the disk node is gone,
 *     500 "... disk-write-failed" on a write or fsync error (EIO).
 *     A frozen disk blocks the write, so the probe hangs (as does every other
 *     request meanwhile: the guest's one writer waits, like a real service).
 *   anything else -> 404. HTTP/1.0, the connection closes after the answer.
 * Sector 0 (the boot count) is /init's, never touched here.
 *
 * Usage:
 *   rto-healthz serve [port] [rundir]   (default port 80, settings from /run/rto;
 *                                       another rundir lets host tests use it)
 *   rto-healthz check [port] [ms]       one GET /healthz on 127.0.0.1; exit 0
 *                                       on a 200 within ms (default 2000)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 8   /* clients served at once; more wait in the backlog */
#define BACKLOG 16    /* small: after a disk hang, few stale probes are left to answer */
#define REQ_MAX 2048  /* a probe's request is ~100 bytes; more is not a probe */
#define IDLE_MS 2000  /* a client that sends no full request in this time is dropped */
#define SECTOR 512

struct conn {
    int fd;
    size_t len;
    long long since_ms;
    char buf[REQ_MAX];
};

static char g_name[256] = "guest";
static char g_instance[64] = "unknown";
static char g_boot[32] = "1";
static char g_disk[256] = "";
static int g_disk_failing; /* log only on changes: the console is slow */

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* First line of a /run/rto file, trimmed like the shell's `read -r`. */
static void read_setting(const char *path, char *out, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* keep the default */
    ssize_t n = read(fd, out, size - 1);
    close(fd);
    if (n < 0)
        n = 0;
    out[n] = '\0';
    out[strcspn(out, "\n")] = '\0';
    size_t len = strlen(out);
    while (len > 0 && (out[len - 1] == ' ' || out[len - 1] == '\t' || out[len - 1] == '\r'))
        out[--len] = '\0';
}

/* One synced write of block to sector 1; 0 or an errno.
 *
 * O_DIRECT|O_DSYNC first: a buffered 512-byte write into a 4 KiB page needs
 * the page read from the device first, and the kernel drops a block device's
 * page cache at its last close, so every buffered probe paid a read as well
 * (p95 ~190 ms against ~30 ms without the disk under TCG). EINVAL means the
 * device refuses 512-byte direct I/O (4 KiB logical blocks): then buffered
 * write + fsync, as dd conv=fsync did. */
static int sync_write(const char *block, int direct)
{
    int fd = open(g_disk, O_WRONLY | O_CLOEXEC | (direct ? O_DIRECT | O_DSYNC : 0));
    if (fd < 0)
        return errno;
    int err = 0;
    ssize_t n = pwrite(fd, block, SECTOR, SECTOR);
    if (n != SECTOR)
        err = n < 0 ? errno : EIO;
    else if (!direct && fsync(fd) != 0)
        err = errno;
    if (close(fd) != 0 && !err)
        err = errno;
    return err;
}

/* The health record on sector 1. Returns NULL on success, else the reason. */
static const char *write_record(void)
{
    struct stat st;
    /* A detached disk leaves no node behind (or, worse, a plain file). */
    if (stat(g_disk, &st) != 0 || !S_ISBLK(st.st_mode))
        return "disk-missing";
    /* Aligned for O_DIRECT. */
    static char block[4096] __attribute__((aligned(4096)));
    struct timespec up;
    clock_gettime(CLOCK_BOOTTIME, &up); /* what /proc/uptime shows */
    memset(block, 0, SECTOR);
    snprintf(block, SECTOR, "healthz %s %lld.%02ld\n", g_instance, (long long)up.tv_sec,
             up.tv_nsec / 10000000);
    int err = sync_write(block, 1);
    if (err == EINVAL)
        err = sync_write(block, 0);
    if (err) {
        if (!g_disk_failing)
            fprintf(stderr, "rto-healthz: write to %s failed: %s\n", g_disk, strerror(err));
        g_disk_failing = 1;
        return "disk-write-failed";
    }
    if (g_disk_failing)
        fprintf(stderr, "rto-healthz: writes to %s work again\n", g_disk);
    g_disk_failing = 0;
    return NULL;
}

static void reply(int fd, const char *status, const char *body)
{
    char out[1024];
    int n = snprintf(out, sizeof out,
                     "HTTP/1.0 %s\r\nContent-Type: text/plain\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n\r\n%s\n",
                     status, strlen(body) + 1, body);
    if (n < 0 || (size_t)n >= sizeof out)
        return;
    /* Small enough for an empty send buffer; a peer that left gets nothing. */
    (void)send(fd, out, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static int is_healthz(const char *path)
{
    return strcmp(path, "/healthz") == 0 || strncmp(path, "/healthz?", 9) == 0;
}

static void handle(struct conn *c)
{
    char method[16] = "", path[512] = "";
    char body[1024];
    /* Request line: METHOD SP PATH SP VERSION. */
    if (sscanf(c->buf, "%15s %511s", method, path) != 2) {
        reply(c->fd, "400 Bad Request", "bad request");
        return;
    }
    if (strcmp(method, "GET") != 0 || !is_healthz(path)) {
        snprintf(body, sizeof body, "not found: %s", path);
        reply(c->fd, "404 Not Found", body);
        return;
    }
    const char *err = g_disk[0] ? write_record() : NULL;
    if (err) {
        snprintf(body, sizeof body, "%s %s boot=%s %s", g_name, g_instance, g_boot, err);
        reply(c->fd, "500 Internal Server Error", body);
        return;
    }
    snprintf(body, sizeof body, "%s %s boot=%s", g_name, g_instance, g_boot);
    reply(c->fd, "200 OK", body);
}

static void drop(struct conn *c)
{
    /* FIN after the answer; every request byte was read, so no RST. */
    shutdown(c->fd, SHUT_WR);
    close(c->fd);
    c->fd = -1;
    c->len = 0;
}

/* Has the client sent its whole header block? */
static int headers_done(const struct conn *c)
{
    return strstr(c->buf, "\r\n\r\n") != NULL || strstr(c->buf, "\n\n") != NULL;
}

static void on_readable(struct conn *c)
{
    for (;;) {
        ssize_t n = recv(c->fd, c->buf + c->len, REQ_MAX - 1 - c->len, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) { /* closed or reset before a full request */
            drop(c);
            return;
        }
        c->len += (size_t)n;
        c->buf[c->len] = '\0';
        if (headers_done(c)) {
            handle(c);
            drop(c);
            return;
        }
        if (c->len >= REQ_MAX - 1) {
            reply(c->fd, "431 Request Header Fields Too Large", "request too large");
            drop(c);
            return;
        }
    }
}

static int serve(int port, const char *rundir)
{
    static const char *const keys[] = {"name", "instance", "boot", "disk"};
    char *const vals[] = {g_name, g_instance, g_boot, g_disk};
    const size_t sizes[] = {sizeof g_name, sizeof g_instance, sizeof g_boot, sizeof g_disk};
    for (int i = 0; i < 4; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", rundir, keys[i]);
        read_setting(path, vals[i], sizes[i]);
    }
    signal(SIGPIPE, SIG_IGN);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (lfd < 0 || setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, BACKLOG) != 0) {
        fprintf(stderr, "rto-healthz: cannot listen on port %d: %s\n", port, strerror(errno));
        return 1;
    }

    static struct conn conns[MAX_CONNS];
    for (int i = 0; i < MAX_CONNS; i++)
        conns[i].fd = -1;

    for (;;) {
        struct pollfd pfd[MAX_CONNS + 1];
        int slot[MAX_CONNS + 1];
        int n = 0, open_conns = 0;
        long long now = now_ms(), wait = -1;
        for (int i = 0; i < MAX_CONNS; i++) {
            if (conns[i].fd < 0)
                continue;
            open_conns++;
            long long left = conns[i].since_ms + IDLE_MS - now;
            if (left < 0)
                left = 0;
            if (wait < 0 || left < wait)
                wait = left;
            pfd[n] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
            slot[n++] = i;
        }
        /* At MAX_CONNS, new clients wait in the kernel's backlog. */
        if (open_conns < MAX_CONNS) {
            pfd[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
            slot[n++] = -1;
        }
        if (poll(pfd, (nfds_t)n, (int)wait) < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "rto-healthz: poll: %s\n", strerror(errno));
            return 1;
        }
        for (int k = 0; k < n; k++) {
            if (!pfd[k].revents)
                continue;
            if (slot[k] >= 0) {
                on_readable(&conns[slot[k]]);
                continue;
            }
            for (int i = 0; i < MAX_CONNS; i++) {
                if (conns[i].fd >= 0)
                    continue;
                int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0)
                    break; /* EAGAIN, or a client that gave up: nothing to do */
                conns[i].fd = cfd;
                conns[i].len = 0;
                conns[i].buf[0] = '\0';
                conns[i].since_ms = now_ms();
                /* The request is usually there already: answer without another poll. */
                on_readable(&conns[i]);
            }
        }
        now = now_ms();
        for (int i = 0; i < MAX_CONNS; i++)
            if (conns[i].fd >= 0 && now - conns[i].since_ms >= IDLE_MS)
                drop(&conns[i]);
    }
}

/* Wait for fd to become ready for events within the deadline. */
static int wait_for(int fd, short events, long long deadline)
{
    for (;;) {
        long long left = deadline - now_ms();
        if (left <= 0)
            return 0;
        struct pollfd p = {.fd = fd, .events = events};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        return r > 0;
    }
}

static int check(int port, int timeout_ms)
{
    long long deadline = now_ms() + timeout_ms;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0)
        return 1;
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0 && errno != EINPROGRESS)
        return 1;
    if (!wait_for(fd, POLLOUT, deadline))
        return 1;
    int soerr = 0;
    socklen_t len = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0 || soerr != 0)
        return 1;
    static const char req[] = "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if (send(fd, req, sizeof req - 1, MSG_NOSIGNAL) != (ssize_t)(sizeof req - 1))
        return 1;
    char buf[512];
    size_t got = 0;
    while (got < sizeof buf - 1 && !memchr(buf, '\n', got)) {
        if (!wait_for(fd, POLLIN, deadline))
            return 1;
        ssize_t n = recv(fd, buf + got, sizeof buf - 1 - got, 0);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    close(fd);
    return strncmp(buf, "HTTP/1.0 200 ", 13) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "serve") == 0)
        return serve(argc >= 3 ? atoi(argv[2]) : 80, argc >= 4 ? argv[3] : "/run/rto");
    if (argc >= 2 && strcmp(argv[1], "check") == 0)
        return check(argc >= 3 ? atoi(argv[2]) : 80, argc >= 4 ? atoi(argv[3]) : 2000);
    fprintf(stderr, "usage: %s serve [port] [rundir] | check [port] [timeout_ms]\n", argv[0]);
    return 2;
}
