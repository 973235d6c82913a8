/*
 * A C client of /dev/nsm and AF_VSOCK for tests/integration/shim/test_intercept_docker.py.
 * Built twice from this one source: dynamically linked (the LD_PRELOAD shim can see its libc
 * calls) and static with musl (only the syscall interceptor can).
 *
 *   probe conform PARENT_PORT   the conformance suite: one JSON line {"k":..,"v":..} per check
 *   probe attest PORT USER NONCE  raw syscall(2) only: an attestation document from /dev/nsm,
 *                               served (4-byte BE length + the NSM's CBOR reply) over AF_VSOCK
 *   probe stress N              N opens+ioctls+closes of /dev/nsm, N VSOCK sockets
 *   probe hold                  NSM ioctls in a loop until killed
 *   probe other                 calls that are not ours, for a with/without comparison
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

#define AFV 40
#define ANY 0xFFFFFFFFu
#define NSM_IOCTL 0xC0200A00u

struct vm { unsigned short family, reserved; unsigned int port, cid; unsigned char flags, zero[3]; };
struct nsm_message { struct iovec request; struct iovec response; };

static const unsigned char DESCRIBE[] = {0x6b, 'D', 'e', 's', 'c', 'r', 'i', 'b', 'e', 'N', 'S', 'M'};
static unsigned int own;

static void put(const char *key, const char *value) { printf("{\"k\": \"%s\", \"v\": \"%s\"}\n", key, value); fflush(stdout); }
static void put_rc(const char *key, long rc)
{
    char text[32];
    if (rc < 0)
        snprintf(text, sizeof text, "errno:%d", errno);
    else
        snprintf(text, sizeof text, "ok");
    put(key, text);
}
static void put_int(const char *key, long value) { char t[32]; snprintf(t, sizeof t, "%ld", value); put(key, t); }

static const char *addr_text(const struct vm *a, char *out)
{
    char cid[16], port[16];
    if (a->family != AFV) { sprintf(out, "family:%u", a->family); return out; }
    if (a->cid == ANY) strcpy(cid, "ANY"); else if (a->cid == own) strcpy(cid, "OWN"); else sprintf(cid, "%u", a->cid);
    if (a->port == ANY) strcpy(port, "ANY");
    else if (a->port >= 10000 && a->port <= 0x7fffffff) strcpy(port, "eph"); /* fixed ports here are < 10000 */
    else sprintf(port, "%u", a->port);
    sprintf(out, "%s:%s", cid, port);
    return out;
}

static void put_name(const char *key, int fd, int peer)
{
    struct vm a; socklen_t len = sizeof a; char text[64];
    memset(&a, 0, sizeof a);
    int rc = peer ? getpeername(fd, (struct sockaddr *)&a, &len) : getsockname(fd, (struct sockaddr *)&a, &len);
    if (rc != 0) put_rc(key, rc); else put(key, addr_text(&a, text));
}

static struct vm vm_addr(unsigned int cid, unsigned int port) { struct vm a = {AFV, 0, port, cid, 0, {0}}; return a; }

static long nsm_call(int fd, const void *req, size_t len, unsigned char *reply, size_t *cap)
{
    struct nsm_message msg = {{(void *)req, len}, {reply, *cap}};
    long rc = ioctl(fd, NSM_IOCTL, &msg);
    *cap = msg.response.iov_len;
    return rc;
}

static void conform(unsigned int parent_port)
{
    static unsigned char reply[0x3000], big[5000];
    size_t cap = sizeof reply;
    /* ---- /dev/nsm ---- */
    int fd = open("/dev/nsm", O_RDWR | O_CLOEXEC);
    put_rc("open", fd);
    struct stat st;
    put_int("fstat_chr", fstat(fd, &st) == 0 && S_ISCHR(st.st_mode));
    put_rc("describe", nsm_call(fd, DESCRIBE, sizeof DESCRIBE, reply, &cap));
    put_int("describe_module_id", memmem(reply, cap, "module_id", 9) != NULL);
    cap = 8;
    nsm_call(fd, DESCRIBE, sizeof DESCRIBE, reply, &cap);
    put_int("truncated_len", (long)cap);
    cap = sizeof reply;
    put_rc("too_long", nsm_call(fd, big, sizeof big, reply, &cap));
    put_rc("null_arg", ioctl(fd, NSM_IOCTL, NULL));
    put_rc("null_request", nsm_call(fd, NULL, 5, reply, &cap));
    char byte;
    put_int("read", (long)read(fd, &byte, 1));
    int copy = dup(fd);
    close(fd);
    cap = sizeof reply;
    put_rc("dup_after_close", nsm_call(copy, DESCRIBE, sizeof DESCRIBE, reply, &cap));
    int high = fcntl(copy, F_DUPFD_CLOEXEC, 100);
    cap = sizeof reply;
    put_rc("fdupfd", nsm_call(high, DESCRIBE, sizeof DESCRIBE, reply, &cap));
    close(copy);
    close(high);
    cap = sizeof reply;
    put_rc("closed", nsm_call(high, DESCRIBE, sizeof DESCRIBE, reply, &cap));

    /* ---- AF_VSOCK ---- */
    struct vm a;
    put_rc("socket_dgram", socket(AFV, SOCK_DGRAM, 0));
    put_rc("socket_protocol", socket(AFV, SOCK_STREAM, 7));
    int l = socket(AFV, SOCK_STREAM | SOCK_CLOEXEC, 0);
    put_rc("socket", l);
    put_name("sockname_unbound", l, 0);
    put_name("peername_unbound", l, 1);
    put_rc("listen_unbound", listen(l, 4));
    a = vm_addr(99, 6000);
    put_rc("bind_other_cid", bind(l, (struct sockaddr *)&a, sizeof a));
    a = vm_addr(ANY, 6000);
    put_rc("bind_short", bind(l, (struct sockaddr *)&a, 8));
    a.family = AF_INET;
    put_rc("bind_family", bind(l, (struct sockaddr *)&a, sizeof a));
    a = vm_addr(ANY, 6000);
    put_rc("bind", bind(l, (struct sockaddr *)&a, sizeof a));
    put_rc("bind_again", bind(l, (struct sockaddr *)&a, sizeof a));
    put_name("sockname_bound", l, 0);
    put_rc("listen", listen(l, 4));
    int other = socket(AFV, SOCK_STREAM, 0);
    put_rc("bind_in_use", bind(other, (struct sockaddr *)&a, sizeof a));
    close(other);
    int c = socket(AFV, SOCK_STREAM, 0);
    a = vm_addr(own, 6000);
    put_rc("connect", connect(c, (struct sockaddr *)&a, sizeof a));
    put_rc("connect_again", connect(c, (struct sockaddr *)&a, sizeof a));
    put_name("client_sockname", c, 0);
    put_name("client_peername", c, 1);
    struct vm peer, mine;
    socklen_t len = sizeof peer, mine_len = sizeof mine;
    memset(&peer, 0, sizeof peer);
    int conn = accept4(l, (struct sockaddr *)&peer, &len, SOCK_CLOEXEC);
    put_rc("accept", conn);
    char text[64];
    put("accept_peer", addr_text(&peer, text));
    put_int("accept_len", (long)len);
    getsockname(c, (struct sockaddr *)&mine, &mine_len);
    put_int("accept_peer_is_client", peer.port == mine.port && peer.cid == mine.cid);
    put_name("accepted_sockname", conn, 0);
    put_name("accepted_peername", conn, 1);
    char data[8] = {0};
    put_int("send", (long)write(c, "ping", 4));
    put_int("recv", (long)read(conn, data, sizeof data - 1));
    put("data", data);
    close(c);
    put_int("eof_after_close", (long)read(conn, data, sizeof data));
    close(conn);
    put_rc("connect_on_listener", connect(l, (struct sockaddr *)&a, sizeof a));
    int d = socket(AFV, SOCK_STREAM, 0);
    a = vm_addr(99, 1);
    put_rc("connect_unknown_cid", connect(d, (struct sockaddr *)&a, sizeof a));
    a = vm_addr(own, 6001);
    put_rc("connect_refused", connect(d, (struct sockaddr *)&a, sizeof a));
    a = vm_addr(own, ANY);
    put_rc("connect_port_any", connect(d, (struct sockaddr *)&a, sizeof a));
    put_rc("accept_not_listening", accept(d, NULL, NULL));
    close(d);
    int p = socket(AFV, SOCK_STREAM, 0);
    a = vm_addr(3, parent_port);
    put_rc("parent_connect", connect(p, (struct sockaddr *)&a, sizeof a));
    put_int("parent_send", (long)write(p, "conform", 7));
    put_name("parent_peername", p, 1);
    close(p);
    int b = socket(AFV, SOCK_STREAM, 0);
    a = vm_addr(ANY, ANY);
    put_rc("bind_any_port", bind(b, (struct sockaddr *)&a, sizeof a));
    put_name("bind_any_port_name", b, 0);
    struct vm small;
    socklen_t small_len = 4;
    memset(&small, 0, sizeof small);
    put_rc("sockname_short_buffer", getsockname(b, (struct sockaddr *)&small, &small_len));
    put_int("sockname_short_len", (long)small_len);
    put_int("sockname_short_family", small.family);
    put_int("sockname_short_port_untouched", small.port == 0);
    close(b);
    int n = socket(AFV, SOCK_STREAM | SOCK_NONBLOCK, 0);
    a = vm_addr(ANY, 6002);
    bind(n, (struct sockaddr *)&a, sizeof a);
    listen(n, 4);
    put_rc("accept_nonblocking_empty", accept(n, NULL, NULL));
    int local = socket(AFV, SOCK_STREAM, 0);
    a = vm_addr(1, 6002);
    put_rc("connect_local_cid", connect(local, (struct sockaddr *)&a, sizeof a));
    int got = accept4(n, NULL, NULL, SOCK_NONBLOCK);
    put_rc("accept_nonblocking", got);
    put_int("accepted_nonblocking_flag", (fcntl(got, F_GETFL) & O_NONBLOCK) != 0);
    close(got);
    close(local);
    close(n);
    close(l);
    struct timespec pause = {1, 500 * 1000 * 1000}; /* the interceptor releases within 0.5 s */
    nanosleep(&pause, NULL);
    int late = socket(AFV, SOCK_STREAM, 0);
    a = vm_addr(own, 6000);
    put_rc("connect_after_listener_closed", connect(late, (struct sockaddr *)&a, sizeof a));
    close(late);
    put("done", "1");
}

/* Attestation request {"Attestation": {"user_data": U, "nonce": N, "public_key": null}} */
static size_t attestation_request(unsigned char *out, const char *user, const char *nonce)
{
    size_t n = 0, u = strlen(user), c = strlen(nonce);
    out[n++] = 0xA1;
    out[n++] = 0x6B; memcpy(out + n, "Attestation", 11); n += 11;
    out[n++] = 0xA3;
    out[n++] = 0x69; memcpy(out + n, "user_data", 9); n += 9;
    out[n++] = 0x58; out[n++] = (unsigned char)u; memcpy(out + n, user, u); n += u;
    out[n++] = 0x65; memcpy(out + n, "nonce", 5); n += 5;
    out[n++] = 0x58; out[n++] = (unsigned char)c; memcpy(out + n, nonce, c); n += c;
    out[n++] = 0x6A; memcpy(out + n, "public_key", 10); n += 10;
    out[n++] = 0xF6;
    return n;
}

static int attest(unsigned int port, const char *user, const char *nonce)
{
    static unsigned char request[600], reply[0x4000];
    size_t len = attestation_request(request, user, nonce);
    long fd = syscall(SYS_openat, AT_FDCWD, "/dev/nsm", O_RDWR | O_CLOEXEC);
    if (fd < 0) { printf("OPEN-FAILED %d\n", errno); return 1; }
    struct nsm_message msg = {{request, len}, {reply, sizeof reply}};
    if (syscall(SYS_ioctl, fd, (unsigned long)NSM_IOCTL, &msg) != 0) { printf("IOCTL-FAILED %d\n", errno); return 1; }
    long s = syscall(SYS_socket, AFV, SOCK_STREAM, 0);
    struct vm a = vm_addr(ANY, port);
    if (s < 0 || syscall(SYS_bind, s, &a, sizeof a) != 0 || syscall(SYS_listen, s, 4) != 0) {
        printf("VSOCK-FAILED %d\n", errno);
        return 1;
    }
    printf("LISTENING %u\n", port);
    fflush(stdout);
    for (;;) {
        struct vm peer;
        socklen_t peer_len = sizeof peer;
        long c = syscall(SYS_accept4, s, &peer, &peer_len, 0);
        if (c < 0) { printf("ACCEPT-FAILED %d\n", errno); return 1; }
        unsigned char head[4] = {(unsigned char)(msg.response.iov_len >> 24), (unsigned char)(msg.response.iov_len >> 16),
                                 (unsigned char)(msg.response.iov_len >> 8), (unsigned char)msg.response.iov_len};
        syscall(SYS_write, c, head, 4);
        syscall(SYS_write, c, reply, msg.response.iov_len);
        printf("SERVED %u:%u\n", peer.cid, peer.port);
        fflush(stdout);
        syscall(SYS_close, c);
    }
}

static int stress(long count)
{
    static unsigned char reply[0x3000];
    long failures = 0;
    for (long i = 0; i < count; i++) {
        int fd = open("/dev/nsm", O_RDWR);
        size_t cap = sizeof reply;
        if (fd < 0 || (i % 50 == 0 && nsm_call(fd, DESCRIBE, sizeof DESCRIBE, reply, &cap) != 0))
            failures++;
        close(fd);
    }
    int l = socket(AFV, SOCK_STREAM, 0);
    struct vm a = vm_addr(ANY, 6100);
    bind(l, (struct sockaddr *)&a, sizeof a);
    listen(l, 16);
    for (long i = 0; i < count; i++) {
        int s = socket(AFV, SOCK_STREAM, 0);
        if (s < 0) { failures++; continue; }
        if (i % 4 == 0) {
            a = vm_addr(own, 6100);
            int conn = -1;
            if (connect(s, (struct sockaddr *)&a, sizeof a) != 0 || (conn = accept(l, NULL, NULL)) < 0)
                failures++;
            close(conn);
        } else if (i % 4 == 1) {
            a = vm_addr(ANY, ANY);
            if (bind(s, (struct sockaddr *)&a, sizeof a) != 0)
                failures++;
        }
        close(s);
    }
    close(l);
    printf("STRESS %ld failures %ld\n", count, failures);
    fflush(stdout);
    return failures != 0;
}

static __attribute__((noreturn)) void hold(void)
{
    static unsigned char reply[0x3000];
    int fd = open("/dev/nsm", O_RDWR);
    printf("HOLD\n");
    fflush(stdout);
    for (;;) {
        size_t cap = sizeof reply;
        nsm_call(fd, DESCRIBE, sizeof DESCRIBE, reply, &cap);
    }
}

static void other(void)
{
    char buf[64];
    int fd = open("/proc/self/stat", O_RDONLY);
    put_int("open_proc", fd >= 0 && read(fd, buf, sizeof buf) > 0);
    put_rc("ioctl_nsm_number_on_a_file", ioctl(fd, NSM_IOCTL, buf));
    close(fd);
    int pipes[2], queued = -1;
    pipe(pipes);
    write(pipes[1], "abc", 3);
    ioctl(pipes[0], FIONREAD, &queued);
    put_int("fionread", queued);
    int inet = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t in_len = sizeof in;
    put_rc("inet_bind", bind(inet, (struct sockaddr *)&in, sizeof in));
    put_rc("inet_listen", listen(inet, 1));
    getsockname(inet, (struct sockaddr *)&in, &in_len);
    put_int("inet_family", in.sin_family);
    int client = socket(AF_INET, SOCK_STREAM, 0);
    put_rc("inet_connect", connect(client, (struct sockaddr *)&in, sizeof in));
    put_rc("inet_accept", accept(inet, NULL, NULL));
    int pair[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, pair);
    struct sockaddr_un un;
    socklen_t un_len = sizeof un;
    put_rc("unix_getpeername", getpeername(pair[0], (struct sockaddr *)&un, &un_len));
    put_int("unix_family", un.sun_family);
    put_rc("unix_connect_missing", connect(socket(AF_UNIX, SOCK_STREAM, 0),
                                           (struct sockaddr *)&(struct sockaddr_un){AF_UNIX, "/nonexistent"}, sizeof un));
    put("done", "1");
}

int main(int argc, char **argv)
{
    const char *cid = getenv("NITRO_EMU_CID");
    own = cid != NULL ? (unsigned int)strtoul(cid, NULL, 10) : 3;
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "conform") == 0 && argc > 2) { conform((unsigned int)atoi(argv[2])); return 0; }
    if (strcmp(mode, "attest") == 0 && argc > 4) return attest((unsigned int)atoi(argv[2]), argv[3], argv[4]);
    if (strcmp(mode, "stress") == 0 && argc > 2) return stress(atol(argv[2]));
    if (strcmp(mode, "hold") == 0) hold();
    if (strcmp(mode, "other") == 0) { other(); return 0; }
    fprintf(stderr, "usage: probe conform PORT | attest PORT USER NONCE | stress N | hold | other\n");
    return 2;
}
