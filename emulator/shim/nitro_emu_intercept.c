/*
 * nitro_emu_intercept.c - /dev/nsm and AF_VSOCK below libc, with seccomp user notification
 * (docs/shim.md "The syscall interceptor"). A static launcher, the enclave's entrypoint:
 *
 *   nitro-emu-intercept [--check] [--] COMMAND [ARG...]
 *
 * (nitro_cli_init.c, PID 1 of nitro-cli EIFs, embeds the same pieces with
 * NITRO_EMU_INTERCEPT_EMBEDDED defined: ne_intercept_available, _child, _serve.)
 *
 * It forks. The child installs a seccomp filter with SECCOMP_FILTER_FLAG_NEW_LISTENER,
 * hands the listener fd to the parent over a socketpair (SCM_RIGHTS) and execs COMMAND; the
 * parent stays unfiltered, serves the notifications, reaps children (it is PID 1), passes
 * SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 on and exits with COMMAND's status. Nothing
 * leaves the container: the handler talks to the same nsm.sock and VSOCK mirror paths as the
 * LD_PRELOAD shim (nitro_emu_shim.c), whose behaviour it follows call by call.
 *
 * The filter traps only: ioctl with request 0xC0200A00 (NSM_IOCTL_RAW), socket with domain
 * AF_VSOCK, and bind, connect, listen, accept, accept4, getsockname, getpeername (native ABI
 * only: x32 and 32-bit compat calls pass untranslated). /dev/nsm itself is no trap:
 * run-enclave bind-mounts a /dev/null node there (emulator/shim/intercept.py), so open, close,
 * dup, fstat and poll are the kernel's own; an ioctl is ours when /proc/<pid>/fd/<fd> names
 * /dev/nsm. A VSOCK socket is an AF_UNIX stream socket the handler made and handed over with
 * SECCOMP_IOCTL_NOTIF_ADDFD; it is known by its socket inode. The handler keeps its own copy
 * until the socket is connected (it binds, listens, connects and accepts on that copy, since
 * Docker's default seccomp profile refuses pidfd_getfd), and drops it once no process of the
 * container holds the socket any more (a scan of /proc/<pid>/fd, twice a second). Every
 * trapped call on anything else is let through with SECCOMP_USER_NOTIF_FLAG_CONTINUE.
 * CONTINUE is only safe for a decision that is not about security (seccomp_unotify(2)):
 * another thread of the program can swap the fd or the memory between our look and the
 * kernel's; here the worst it gets is its own call untranslated, which it could have made.
 *
 * Kernel: user notification 5.0, ADDFD 5.9, ADDFD_FLAG_SEND 5.14;
 * SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (5.19) is used when present, so a signal cannot
 * interrupt (and restart, so repeat) an NSM request the handler has already taken. Missing
 * features: a warning on stderr (the enclave's console) and COMMAND runs without the filter.
 * SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (6.6) is asked for when present: a faster round trip.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- kernel ABI (linux/seccomp.h, linux/filter.h; musl-gcc has no kernel headers) -------- */

#define SECCOMP_SET_MODE_FILTER_ 1
#define SECCOMP_GET_NOTIF_SIZES_ 3
#define FLAG_NEW_LISTENER (1u << 3)
#define FLAG_WAIT_KILLABLE_RECV (1u << 5)
#define RET_ALLOW 0x7fff0000u
#define RET_USER_NOTIF 0x7fc00000u
#define NOTIF_FLAG_CONTINUE 1u
#define ADDFD_FLAG_SEND 2u

struct ne_seccomp_data { int nr; uint32_t arch; uint64_t ip; uint64_t args[6]; };
struct ne_notif { uint64_t id; uint32_t pid; uint32_t flags; struct ne_seccomp_data data; };
struct ne_notif_resp { uint64_t id; int64_t val; int32_t error; uint32_t flags; };
struct ne_notif_addfd { uint64_t id; uint32_t flags; uint32_t srcfd; uint32_t newfd; uint32_t newfd_flags; };
struct ne_notif_sizes { uint16_t notif; uint16_t resp; uint16_t data; };
struct ne_sock_filter { uint16_t code; uint8_t jt; uint8_t jf; uint32_t k; };
struct ne_sock_fprog { unsigned short len; struct ne_sock_filter *filter; };

#define IOC(dir, nr, size) (((unsigned long)(dir) << 30) | ((unsigned long)(size) << 16) | ('!' << 8) | (nr))
#define IOCTL_NOTIF_RECV IOC(3, 0, sizeof(struct ne_notif))
#define IOCTL_NOTIF_SEND IOC(3, 1, sizeof(struct ne_notif_resp))
#define IOCTL_NOTIF_ID_VALID IOC(1, 2, sizeof(uint64_t))
#define IOCTL_NOTIF_ADDFD IOC(1, 3, sizeof(struct ne_notif_addfd))
#define IOCTL_NOTIF_SET_FLAGS IOC(1, 4, sizeof(uint64_t))
#define USER_NOTIF_FD_SYNC_WAKE_UP 1ull

#define BPF_LD_W_ABS 0x20
#define BPF_JEQ_K 0x15
#define BPF_RET_K 0x06

#if defined(__x86_64__)
#define NATIVE_ARCH 0xC000003Eu /* AUDIT_ARCH_X86_64 */
#elif defined(__aarch64__)
#define NATIVE_ARCH 0xC00000B7u /* AUDIT_ARCH_AARCH64 */
#else
#error "nitro-emu-intercept knows x86_64 and aarch64"
#endif

/* ---- the emulated contract (the same constants as nitro_emu_shim.c) ---------------------- */

#define NSM_PATH "/dev/nsm"
#define NSM_IOCTL_RAW 0xC0200A00u
#define NSM_REQUEST_MAX 0x1000u
#define NSM_REPLY_LIMIT (0x3000u + 0x10000u)
#define NSM_DEFAULT_SOCKET "/run/nitro-emu/nsm.sock"
#define NSM_TIMEOUT_SECONDS 120
#define NE_AF_VSOCK 40
#define CID_ANY 0xFFFFFFFFu
#define PORT_ANY 0xFFFFFFFFu
#define CID_LOCAL 1u
#define PARENT_CID 3u
#define EPHEMERAL_FIRST 1024u
#define EPHEMERAL_LAST 0x7FFFFFFFu
#define ABSTRACT_PREFIX "nitro-emu-vsock:"
#define PROBE_PREFIX "nitro-emu-vsock-probe:"

struct ne_sockaddr_vm {
    unsigned short svm_family, svm_reserved1;
    unsigned int svm_port, svm_cid;
    unsigned char svm_flags, svm_zero[3];
};

static int notify_fd = -1;
static int debug; /* $NITRO_EMU_INTERCEPT_DEBUG=1: one stderr line per trapped call */

static void warn(const char *what)
{
    fprintf(stderr, "nitro-emu-intercept: %s\n", what);
}

/* ---- answering the kernel ---------------------------------------------------------------- */

static void respond(uint64_t id, int64_t val, int error, uint32_t flags)
{
    if (debug)
        fprintf(stderr, "nitro-emu-intercept: answer %llx: %s%lld error %d\n", (unsigned long long)id,
                flags ? "continue " : "", (long long)val, error);
    struct ne_notif_resp resp = {.id = id, .val = error ? -1 : val, .error = error ? -error : 0,
                                 .flags = flags};
    /* ENOENT: the caller died or was interrupted meanwhile; nothing is owed to anyone */
    while (ioctl(notify_fd, IOCTL_NOTIF_SEND, &resp) != 0 && errno == EINTR)
        ;
}

static void pass_through(uint64_t id) { respond(id, 0, 0, NOTIF_FLAG_CONTINUE); }

static int still_waiting(uint64_t id) { return ioctl(notify_fd, IOCTL_NOTIF_ID_VALID, &id) == 0; }

/* Install srcfd in the caller and answer its call with the new number (one step: FLAG_SEND). */
static int hand_over(uint64_t id, int srcfd, int cloexec)
{
    struct ne_notif_addfd add = {.id = id, .flags = ADDFD_FLAG_SEND, .srcfd = (uint32_t)srcfd,
                                 .newfd_flags = cloexec ? O_CLOEXEC : 0};
    int fd;
    while ((fd = ioctl(notify_fd, IOCTL_NOTIF_ADDFD, &add)) < 0 && errno == EINTR)
        ;
    return fd;
}

/* ---- the caller's memory and descriptors -------------------------------------------------- */

static int mem_io(pid_t pid, uint64_t addr, void *buf, size_t len, int write)
{
    char *p = buf;
    while (len > 0) {
        struct iovec local = {p, len}, remote = {(void *)(uintptr_t)addr, len};
        ssize_t n = write ? process_vm_writev(pid, &local, 1, &remote, 1, 0)
                          : process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n < 0 && (errno == EPERM || errno == ENOSYS)) { /* a profile without them: /proc */
            char path[64];
            snprintf(path, sizeof path, "/proc/%d/mem", (int)pid);
            int mem = open(path, (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
            if (mem < 0)
                return EFAULT;
            n = write ? pwrite(mem, p, len, (off_t)addr) : pread(mem, p, len, (off_t)addr);
            close(mem);
        }
        if (n <= 0)
            return EFAULT;
        p += n;
        addr += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int mem_read(pid_t pid, uint64_t addr, void *buf, size_t len) { return mem_io(pid, addr, buf, len, 0); }
static int mem_write(pid_t pid, uint64_t addr, const void *buf, size_t len)
{
    return mem_io(pid, addr, (void *)buf, len, 1);
}

/* What /proc/<pid>/fd/<fd> names ("/dev/nsm", "socket:[123]"); 0 or -1. */
static int fd_target(pid_t pid, uint64_t fd, char *out, size_t size)
{
    char path[64];
    if (fd > INT_MAX)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)pid, (int)fd);
    ssize_t n = readlink(path, out, size - 1);
    if (n < 0)
        return -1;
    out[n] = '\0';
    return 0;
}

static unsigned long fd_socket_inode(pid_t pid, uint64_t fd)
{
    char name[PATH_MAX];
    unsigned long ino = 0;
    if (fd_target(pid, fd, name, sizeof name) != 0 || sscanf(name, "socket:[%lu]", &ino) != 1)
        return 0;
    return ino;
}

/* ---- VSOCK sockets we made, by socket inode ----------------------------------------------- */

enum { VS_NEW = 0, VS_BOUND, VS_LISTENING, VS_CONNECTED };
#define MAX_PENDING 16

struct vsock {
    struct vsock *next;
    unsigned long ino;
    unsigned char state, named;
    uint32_t local_cid, local_port, peer_cid, peer_port;
    int pending[MAX_PENDING]; /* listener: accepted for a caller who left before taking it */
    int npending;
    int held;                 /* our copy while we may still need it (not yet connected) */
    uint64_t born;            /* generation: a scan never drops what it could not have seen
                               * (UINT64_MAX until the caller has the fd) */
    dev_t path_dev;           /* listener: its socket file, removed when it is released */
    ino_t path_ino;
};

#define BUCKETS 1024
static struct vsock *table[BUCKETS];
static size_t table_count;
static size_t gc_at = 256;
static uint64_t generation;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

static struct vsock **slot_of(unsigned long ino)
{
    struct vsock **where = &table[ino % BUCKETS];
    while (*where != NULL && (*where)->ino != ino)
        where = &(*where)->next;
    return where;
}

/* Store the fields of info (not its pending list); 0 or ENOMEM. */
static int vs_put(const struct vsock *info)
{
    pthread_mutex_lock(&table_lock);
    struct vsock **where = slot_of(info->ino);
    if (*where == NULL) {
        struct vsock *fresh = calloc(1, sizeof *fresh);
        if (fresh == NULL) {
            pthread_mutex_unlock(&table_lock);
            return ENOMEM;
        }
        fresh->ino = info->ino;
        fresh->held = -1;
        fresh->born = UINT64_MAX; /* not in the caller's table yet: vs_delivered() */
        *where = fresh;
        table_count++;
    }
    struct vsock *entry = *where;
    entry->state = info->state;
    entry->named = info->named;
    entry->local_cid = info->local_cid;
    entry->local_port = info->local_port;
    entry->peer_cid = info->peer_cid;
    entry->peer_port = info->peer_port;
    entry->path_dev = info->path_dev;
    entry->path_ino = info->path_ino;
    pthread_mutex_unlock(&table_lock);
    return 0;
}

/* The caller has the socket now (ADDFD returned): from here on a scan may find it gone. */
static void vs_delivered(unsigned long ino)
{
    pthread_mutex_lock(&table_lock);
    struct vsock *entry = *slot_of(ino);
    if (entry != NULL)
        entry->born = ++generation;
    pthread_mutex_unlock(&table_lock);
}

/* Keep fd as our copy of socket ino (or, fd -1: close the copy, it is needed no more). */
static void vs_hold(unsigned long ino, int fd)
{
    int old = -1;
    pthread_mutex_lock(&table_lock);
    struct vsock *entry = *slot_of(ino);
    if (entry != NULL) {
        old = entry->held;
        entry->held = fd;
    } else {
        old = fd;
    }
    pthread_mutex_unlock(&table_lock);
    if (old >= 0)
        close(old);
}

/* A copy of the entry for ino (1) and a dup of our copy of the socket in *fd (-1: none). */
static int vs_get_fd(unsigned long ino, struct vsock *out, int *fd)
{
    *fd = -1;
    if (ino == 0)
        return 0;
    pthread_mutex_lock(&table_lock);
    struct vsock *entry = *slot_of(ino);
    if (entry != NULL) {
        *out = *entry;
        if (entry->held >= 0)
            *fd = fcntl(entry->held, F_DUPFD_CLOEXEC, 0);
    }
    pthread_mutex_unlock(&table_lock);
    return entry != NULL;
}

static void remove_listener_file(const struct vsock *entry);

static void vs_drop_locked(struct vsock **where)
{
    struct vsock *entry = *where;
    for (int i = 0; i < entry->npending; i++)
        close(entry->pending[i]);
    if (entry->held >= 0) {
        if (entry->state == VS_LISTENING)
            remove_listener_file(entry); /* the program closed it: as the shim's close() */
        close(entry->held);
    }
    *where = entry->next;
    free(entry);
    table_count--;
}

static void vs_drop(unsigned long ino)
{
    pthread_mutex_lock(&table_lock);
    struct vsock **where = slot_of(ino);
    if (*where != NULL)
        vs_drop_locked(where);
    pthread_mutex_unlock(&table_lock);
}

/* A connection accepted on listener ino that no caller took: the next accept gets it. */
static int pending_push(unsigned long ino, int conn)
{
    int kept = 0;
    pthread_mutex_lock(&table_lock);
    struct vsock *entry = *slot_of(ino);
    if (entry != NULL && entry->npending < MAX_PENDING) {
        entry->pending[entry->npending++] = conn;
        kept = 1;
    }
    pthread_mutex_unlock(&table_lock);
    return kept;
}

static int pending_pop(unsigned long ino)
{
    int conn = -1;
    pthread_mutex_lock(&table_lock);
    struct vsock *entry = *slot_of(ino);
    if (entry != NULL && entry->npending > 0) {
        conn = entry->pending[0];
        memmove(entry->pending, entry->pending + 1, sizeof(int) * (size_t)--entry->npending);
    }
    pthread_mutex_unlock(&table_lock);
    return conn;
}

static int compare_ino(const void *a, const void *b)
{
    unsigned long x = *(const unsigned long *)a, y = *(const unsigned long *)b;
    return x < y ? -1 : x > y;
}

/*
 * Forget the sockets no process holds any more (the table only grows otherwise: close is
 * not trapped). Every /proc/<pid>/fd of the container is read; if one cannot be, nothing is
 * forgotten.
 */
static void collect_garbage(void)
{
    size_t cap = 1024, count = 0;
    uint64_t seen_from;
    char self[32];
    pthread_mutex_lock(&table_lock);
    seen_from = generation;
    pthread_mutex_unlock(&table_lock);
    snprintf(self, sizeof self, "%d", (int)getpid()); /* our own copies do not count */
    unsigned long *live = malloc(cap * sizeof *live);
    DIR *proc = opendir("/proc");
    int complete = live != NULL && proc != NULL;
    struct dirent *task;
    while (complete && (task = readdir(proc)) != NULL) {
        if (task->d_name[0] < '0' || task->d_name[0] > '9' || strcmp(task->d_name, self) == 0)
            continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "/proc/%s/fd", task->d_name);
        DIR *fds = opendir(path);
        if (fds == NULL) {
            complete = errno == ENOENT; /* it exited meanwhile: fine; EACCES: we cannot tell */
            continue;
        }
        struct dirent *fd;
        while ((fd = readdir(fds)) != NULL) {
            char link[PATH_MAX + 300], name[128];
            unsigned long ino;
            snprintf(link, sizeof link, "%s/%s", path, fd->d_name);
            ssize_t n = readlink(link, name, sizeof name - 1);
            if (n <= 0)
                continue;
            name[n] = '\0';
            if (sscanf(name, "socket:[%lu]", &ino) != 1)
                continue;
            if (count == cap) {
                unsigned long *more = realloc(live, 2 * cap * sizeof *live);
                if (more == NULL) {
                    complete = 0;
                    break;
                }
                live = more;
                cap *= 2;
            }
            live[count++] = ino;
        }
        closedir(fds);
    }
    if (proc != NULL)
        closedir(proc);
    if (complete) {
        qsort(live, count, sizeof *live, compare_ino);
        pthread_mutex_lock(&table_lock);
        for (size_t b = 0; b < BUCKETS; b++) {
            struct vsock **where = &table[b];
            while (*where != NULL) {
                if ((*where)->born <= seen_from &&
                    bsearch(&(*where)->ino, live, count, sizeof *live, compare_ino) == NULL)
                    vs_drop_locked(where);
                else
                    where = &(*where)->next;
            }
        }
        gc_at = table_count * 2 > 256 ? table_count * 2 : 256;
        pthread_mutex_unlock(&table_lock);
    }
    free(live);
}

/* ---- VSOCK: where each (cid, port) lives (as nitro_emu_shim.c and emulator/vsock) -------- */

static int64_t own_cid(int *in_enclave)
{
    const char *raw = getenv("NITRO_EMU_CID");
    *in_enclave = raw != NULL && *raw != '\0';
    if (!*in_enclave)
        return PARENT_CID;
    char *end = NULL;
    errno = 0;
    unsigned long value = strtoul(raw, &end, 10);
    if (errno != 0 || *end != '\0' || value > 0xFFFFFFFFul)
        return -1;
    return (int64_t)value;
}

static int parent_home(char *out, size_t size)
{
    const char *home = getenv("NITRO_EMU_HOME"), *data = getenv("XDG_DATA_HOME"), *user = getenv("HOME");
    int n;
    if (home != NULL && *home != '\0')
        n = snprintf(out, size, "%s", home);
    else if (data != NULL && *data != '\0')
        n = snprintf(out, size, "%s/nitro-emu", data);
    else if (user != NULL && *user != '\0')
        n = snprintf(out, size, "%s/.local/share/nitro-emu", user);
    else
        return -1;
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static const char *enclave_root(void)
{
    const char *root = getenv("NITRO_EMU_VSOCK_ROOT");
    return root != NULL && *root != '\0' ? root : "/run/nitro-emu";
}

/* The directory of the listeners of (cid, *) seen from here; 0 or an errno (ENODEV). */
static int listener_dir(uint32_t cid, char *out, size_t size)
{
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    int n;
    if (mine < 0)
        return EADDRNOTAVAIL;
    if (in_enclave) {
        if (cid == PARENT_CID)
            n = snprintf(out, size, "%s/parent", enclave_root());
        else if (cid == (uint32_t)mine || cid == CID_LOCAL)
            n = snprintf(out, size, "%s/vsock", enclave_root());
        else
            return ENODEV;
        return n < 0 || (size_t)n >= size ? ENAMETOOLONG : 0;
    }
    char home[PATH_MAX];
    if (parent_home(home, sizeof home) != 0)
        return ENAMETOOLONG;
    if (cid == PARENT_CID || cid == CID_LOCAL) {
        n = snprintf(out, size, "%s/run/parent", home);
        return n < 0 || (size_t)n >= size ? ENAMETOOLONG : 0;
    }
    if (cid <= PARENT_CID || cid == CID_ANY)
        return ENODEV;
    n = snprintf(out, size, "%s/run/%u", home, cid);
    struct stat st;
    if (n < 0 || (size_t)n + sizeof "/vsock" > size)
        return ENAMETOOLONG;
    if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode))
        return ENODEV;
    strcat(out, "/vsock");
    return 0;
}

/* <dir>/<port> as a sockaddr_un; long paths go through /proc/self/fd/<dirfd>. */
static int unix_address(const char *dir, uint32_t port, struct sockaddr_un *addr, int *dirfd)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    *dirfd = -1;
    int n = snprintf(addr->sun_path, sizeof addr->sun_path, "%s/%u", dir, port);
    if (n >= 0 && (size_t)n < sizeof addr->sun_path)
        return 0;
    int fd = open(dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? ECONNREFUSED : errno;
    *dirfd = fd;
    snprintf(addr->sun_path, sizeof addr->sun_path, "/proc/self/fd/%d/%u", fd, port);
    return 0;
}

static uint32_t random_port(void)
{
    static uint64_t counter;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t x = __atomic_add_fetch(&counter, 0x9E3779B97F4A7C15ull, __ATOMIC_RELAXED);
    x ^= (uint64_t)now.tv_nsec ^ ((uint64_t)now.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return EPHEMERAL_FIRST + (uint32_t)(x % (EPHEMERAL_LAST - EPHEMERAL_FIRST + 1));
}

static int bind_abstract_name(int fd, const char *name)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t n = strnlen(name, sizeof addr.sun_path - 1);
    memcpy(addr.sun_path + 1, name, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    return bind(fd, (struct sockaddr *)&addr, len) == 0 ? 0 : errno;
}

static int listener_alive(const struct sockaddr_un *addr)
{
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return 1;
    char name[64];
    snprintf(name, sizeof name, PROBE_PREFIX "%d:%u", (int)getpid(), random_port());
    if (bind_abstract_name(probe, name) != 0) {
        close(probe);
        return 1;
    }
    int alive = connect(probe, (const struct sockaddr *)addr, sizeof *addr) == 0 || errno == EAGAIN;
    close(probe);
    return alive;
}

static void make_dir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) == 0)
        chmod(path, mode);
}

/* Bind the Unix listener <dir>/<port> under the directory's flock; 0 or an errno. */
static int bind_listener(int fd, const char *dir, uint32_t port)
{
    int in_enclave;
    own_cid(&in_enclave);
    if (!in_enclave) {
        char path[PATH_MAX];
        if (parent_home(path, sizeof path) == 0) {
            make_dir(path, 0700);
            if (strlen(path) + sizeof "/run" < sizeof path) {
                strcat(path, "/run");
                make_dir(path, 0777);
            }
        }
    }
    make_dir(dir, 0777);
    int lock = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock < 0)
        return errno == ENOENT ? EADDRNOTAVAIL : errno;
    flock(lock, LOCK_EX);
    struct sockaddr_un addr;
    int dirfd;
    int error = unix_address(dir, port, &addr, &dirfd);
    if (error == 0) {
        struct stat st;
        if (lstat(addr.sun_path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode) || listener_alive(&addr))
                error = EADDRINUSE;
            else
                unlink(addr.sun_path);
        }
    }
    if (error == 0 && bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        error = errno;
    if (error == 0)
        chmod(addr.sun_path, 0666);
    if (dirfd >= 0)
        close(dirfd);
    close(lock);
    return error;
}

/* The caller's sockaddr_vm at args (addr, len); 0 or an errno (vsock_addr_validate). */
static int sockaddr_vm_in(pid_t pid, uint64_t addr, uint64_t len, struct ne_sockaddr_vm *vm)
{
    if (addr == 0)
        return EFAULT;
    if ((uint32_t)len < sizeof *vm)
        return EINVAL;
    if (mem_read(pid, addr, vm, sizeof *vm) != 0)
        return EFAULT;
    return vm->svm_family == NE_AF_VSOCK ? 0 : EAFNOSUPPORT;
}

/* Write (cid, port) as sockaddr_vm to the caller's (addr, *len), as the shim does. */
static int sockaddr_vm_out(pid_t pid, uint64_t addr, uint64_t len_ptr, uint32_t cid, uint32_t port)
{
    struct ne_sockaddr_vm vm;
    memset(&vm, 0, sizeof vm);
    vm.svm_family = NE_AF_VSOCK;
    vm.svm_cid = cid;
    vm.svm_port = port;
    if (len_ptr == 0)
        return addr == 0 ? 0 : EFAULT;
    uint32_t room;
    if (mem_read(pid, len_ptr, &room, sizeof room) != 0)
        return EFAULT;
    if (addr != 0 && mem_write(pid, addr, &vm, room < sizeof vm ? room : sizeof vm) != 0)
        return EFAULT;
    room = sizeof vm;
    return mem_write(pid, len_ptr, &room, sizeof room);
}

static void decode_peer(const struct sockaddr_un *addr, socklen_t len, uint32_t *cid, uint32_t *port)
{
    *cid = CID_ANY;
    *port = PORT_ANY;
    size_t head = offsetof(struct sockaddr_un, sun_path);
    if (len <= head + 1 || addr->sun_path[0] != '\0')
        return;
    char name[sizeof addr->sun_path];
    size_t size = len - head - 1;
    if (size >= sizeof name)
        size = sizeof name - 1;
    memcpy(name, addr->sun_path + 1, size);
    name[size] = '\0';
    size_t prefix = sizeof ABSTRACT_PREFIX - 1;
    if (strncmp(name, ABSTRACT_PREFIX, prefix) != 0)
        return;
    char *end = NULL, *tail = NULL;
    unsigned long c = strtoul(name + prefix, &end, 10);
    if (end == name + prefix || *end != ':' || c > 0xFFFFFFFFul)
        return;
    unsigned long p = strtoul(end + 1, &tail, 10);
    if (tail == end + 1 || *tail != '\0' || p > 0xFFFFFFFFul)
        return;
    *cid = (uint32_t)c;
    *port = (uint32_t)p;
}

static int is_probe_peer(const struct sockaddr_un *addr, socklen_t len)
{
    size_t head = offsetof(struct sockaddr_un, sun_path), prefix = sizeof PROBE_PREFIX - 1;
    return len >= head + 1 + prefix && addr->sun_path[0] == '\0' &&
           memcmp(addr->sun_path + 1, PROBE_PREFIX, prefix) == 0;
}

static void remove_listener_file(const struct vsock *entry)
{
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    char dir[PATH_MAX];
    struct sockaddr_un addr;
    int dirfd = -1;
    if (entry->path_ino != 0 && mine >= 0 && listener_dir((uint32_t)mine, dir, sizeof dir) == 0 &&
        unix_address(dir, entry->local_port, &addr, &dirfd) == 0) {
        struct stat st;
        if (stat(addr.sun_path, &st) == 0 && st.st_dev == entry->path_dev && st.st_ino == entry->path_ino)
            unlink(addr.sun_path);
    }
    if (dirfd >= 0)
        close(dirfd);
}

/*
 * close() is not trapped (it would cost every program a round trip per close): our copies of
 * listeners and of unconnected sockets are released by a scan of the container's fd tables,
 * twice a second while there are any (docs/shim.md: a closed listener is gone within 0.5 s).
 */
static void *sweeper(void *unused)
{
    (void)unused;
    for (;;) {
        struct timespec pause = {0, 500 * 1000 * 1000};
        nanosleep(&pause, NULL);
        if (__atomic_load_n(&table_count, __ATOMIC_RELAXED) > 0)
            collect_garbage();
    }
    return NULL;
}

/* ---- the trapped calls -------------------------------------------------------------------- */

static void on_socket(const struct ne_notif *n)
{
    int type = (int)n->data.args[1], protocol = (int)n->data.args[2];
    if (protocol != 0 && protocol != NE_AF_VSOCK)
        return respond(n->id, 0, EPROTONOSUPPORT, 0);
    if ((type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != SOCK_STREAM)
        return respond(n->id, 0, ESOCKTNOSUPPORT, 0); /* streams only, as the shim */
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | (type & SOCK_NONBLOCK), 0);
    if (fd < 0)
        return respond(n->id, 0, errno, 0);
    struct stat st;
    struct vsock info = {.state = VS_NEW, .local_cid = CID_ANY, .local_port = PORT_ANY};
    int error = fstat(fd, &st) == 0 ? 0 : errno;
    info.ino = (unsigned long)st.st_ino;
    if (error == 0)
        error = vs_put(&info);
    if (error != 0) {
        close(fd);
        return respond(n->id, 0, error, 0);
    }
    if (hand_over(n->id, fd, type & SOCK_CLOEXEC) < 0) {
        int failed = errno;
        vs_drop(info.ino);
        close(fd);
        if (failed != ENOENT) /* ENOENT: the caller is gone, nobody to answer */
            respond(n->id, 0, failed, 0);
        return;
    }
    vs_delivered(info.ino);
    vs_hold(info.ino, fd); /* needed for listen, connect and accept */
}

static void on_bind(const struct ne_notif *n, struct vsock *info)
{
    struct ne_sockaddr_vm vm;
    int error = sockaddr_vm_in(n->pid, n->data.args[1], n->data.args[2], &vm);
    if (error != 0)
        return respond(n->id, 0, error, 0);
    if (info->state != VS_NEW)
        return respond(n->id, 0, EINVAL, 0);
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    if (mine < 0 || (vm.svm_cid != CID_ANY && vm.svm_cid != (uint32_t)mine && vm.svm_cid != CID_LOCAL))
        return respond(n->id, 0, EADDRNOTAVAIL, 0);
    char dir[PATH_MAX];
    if ((error = listener_dir((uint32_t)mine, dir, sizeof dir)) != 0)
        return respond(n->id, 0, error, 0);
    uint32_t port = vm.svm_port;
    if (port == PORT_ANY) {
        port = random_port();
    } else {
        struct sockaddr_un target;
        int dirfd;
        if (unix_address(dir, port, &target, &dirfd) == 0) {
            struct stat st;
            int busy = stat(target.sun_path, &st) == 0 && S_ISSOCK(st.st_mode) && listener_alive(&target);
            if (dirfd >= 0)
                close(dirfd);
            if (busy)
                return respond(n->id, 0, EADDRINUSE, 0);
        }
    }
    info->state = VS_BOUND;
    info->local_cid = vm.svm_cid;
    info->local_port = port;
    respond(n->id, 0, vs_put(info), 0);
}

static void on_listen(const struct ne_notif *n, struct vsock *info, int fd)
{
    int backlog = (int)n->data.args[1];
    if (info->state == VS_LISTENING)
        return respond(n->id, 0, listen(fd, backlog) == 0 ? 0 : errno, 0);
    if (info->state != VS_BOUND)
        return respond(n->id, 0, EINVAL, 0);
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    char dir[PATH_MAX];
    int error = mine < 0 ? EADDRNOTAVAIL : listener_dir((uint32_t)mine, dir, sizeof dir);
    if (error == 0)
        error = bind_listener(fd, dir, info->local_port);
    if (error == 0) {
        struct sockaddr_un addr;
        socklen_t len = sizeof addr;
        struct stat st;
        if (getsockname(fd, (struct sockaddr *)&addr, &len) == 0 && len > offsetof(struct sockaddr_un, sun_path) &&
            stat(addr.sun_path, &st) == 0) {
            info->path_dev = st.st_dev;
            info->path_ino = st.st_ino;
        }
    }
    if (error == 0 && listen(fd, backlog) != 0)
        error = errno;
    if (error == 0) {
        info->state = VS_LISTENING;
        info->named = 1;
        error = vs_put(info);
    }
    respond(n->id, 0, error, 0);
}

static void on_connect(const struct ne_notif *n, struct vsock *info, int fd)
{
    struct ne_sockaddr_vm vm;
    int error = sockaddr_vm_in(n->pid, n->data.args[1], n->data.args[2], &vm);
    if (error != 0)
        return respond(n->id, 0, error, 0);
    if (info->state == VS_LISTENING)
        return respond(n->id, 0, EINVAL, 0);
    if (info->state == VS_CONNECTED)
        return respond(n->id, 0, EISCONN, 0);
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    if (mine < 0)
        return respond(n->id, 0, EADDRNOTAVAIL, 0);
    char dir[PATH_MAX];
    if ((error = listener_dir(vm.svm_cid, dir, sizeof dir)) != 0)
        return respond(n->id, 0, error, 0);
    if (vm.svm_port == PORT_ANY)
        return respond(n->id, 0, EINVAL, 0);
    if (!info->named) {
        char name[64];
        if (info->state == VS_BOUND) {
            snprintf(name, sizeof name, ABSTRACT_PREFIX "%u:%u", (uint32_t)mine, info->local_port);
            error = bind_abstract_name(fd, name);
        } else {
            for (int attempt = 0; attempt < 64; attempt++) {
                info->local_port = random_port();
                snprintf(name, sizeof name, ABSTRACT_PREFIX "%u:%u", (uint32_t)mine, info->local_port);
                if ((error = bind_abstract_name(fd, name)) != EADDRINUSE)
                    break;
            }
        }
        if (error != 0)
            return respond(n->id, 0, error, 0);
        info->named = 1;
        info->local_cid = (uint32_t)mine;
        vs_put(info);
    }
    struct sockaddr_un target;
    int dirfd;
    if ((error = unix_address(dir, vm.svm_port, &target, &dirfd)) != 0)
        return respond(n->id, 0, error, 0);
    int result = connect(fd, (struct sockaddr *)&target, sizeof target);
    error = result == 0 ? 0 : errno;
    if (dirfd >= 0)
        close(dirfd);
    if (result != 0 && (error == ENOENT || error == ENOTDIR))
        error = ECONNREFUSED;
    if (result == 0 || error == EINPROGRESS || error == EALREADY) {
        info->state = VS_CONNECTED;
        info->peer_cid = vm.svm_cid;
        info->peer_port = vm.svm_port;
        vs_put(info);
        vs_hold(info->ino, -1); /* connected: the program's close() must reach the peer */
    }
    respond(n->id, 0, error, 0);
}

static void on_accept(const struct ne_notif *n, struct vsock *info, int fd, int flags)
{
    if (flags & ~(SOCK_NONBLOCK | SOCK_CLOEXEC))
        return respond(n->id, 0, EINVAL, 0);
    if (info->state != VS_LISTENING)
        return respond(n->id, 0, EINVAL, 0);
    int nonblocking = (fcntl(fd, F_GETFL) & O_NONBLOCK) != 0;
    struct sockaddr_un peer;
    socklen_t peer_len;
    int conn;
    for (;;) {
        conn = pending_pop(info->ino);
        if (conn >= 0) {
            peer_len = sizeof peer;
            if (getpeername(conn, (struct sockaddr *)&peer, &peer_len) != 0)
                peer_len = 0;
            break;
        }
        if (!nonblocking) {
            /* wait here, not in accept(): look every 250 ms whether the caller is still there */
            struct pollfd ready = {.fd = fd, .events = POLLIN};
            int got = poll(&ready, 1, 250);
            if (got == 0 || (got < 0 && errno == EINTR)) {
                if (!still_waiting(n->id))
                    return;
                continue;
            }
        }
        peer_len = sizeof peer;
        memset(&peer, 0, sizeof peer);
        conn = accept4(fd, (struct sockaddr *)&peer, &peer_len, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (conn < 0) {
            if (!nonblocking && (errno == EAGAIN || errno == EINTR))
                continue; /* another acceptor was first */
            return respond(n->id, 0, errno, 0);
        }
        if (is_probe_peer(&peer, peer_len)) {
            close(conn); /* a liveness probe, not a peer */
            continue;
        }
        break;
    }
    /* the accepted socket's file status flags are the caller's to choose */
    fcntl(conn, F_SETFL, (flags & SOCK_NONBLOCK) ? O_NONBLOCK : 0);
    struct stat st;
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    struct vsock child = {.state = VS_CONNECTED, .named = 1,
                          .local_cid = mine < 0 ? CID_ANY : (uint32_t)mine, .local_port = info->local_port};
    decode_peer(&peer, peer_len, &child.peer_cid, &child.peer_port);
    int error = fstat(conn, &st) == 0 ? 0 : errno;
    child.ino = (unsigned long)st.st_ino;
    if (error == 0)
        error = vs_put(&child);
    if (error == 0 && !still_waiting(n->id))
        error = ENOENT;
    if (error == 0)
        error = sockaddr_vm_out(n->pid, n->data.args[1], n->data.args[2], child.peer_cid, child.peer_port);
    if (error == 0 && hand_over(n->id, conn, flags & SOCK_CLOEXEC) >= 0) {
        vs_delivered(child.ino);
        close(conn);
        return;
    }
    if (error == 0)
        error = errno;
    if (error == ENOENT && pending_push(info->ino, conn))
        return; /* the caller left (a signal, or it died): keep it for the next accept */
    close(conn);
    respond(n->id, 0, error, 0);
}

static void on_getname(const struct ne_notif *n, struct vsock *info, int fd, int peer)
{
    uint64_t addr = n->data.args[1], len = n->data.args[2];
    if (addr == 0 || len == 0)
        return respond(n->id, 0, EFAULT, 0);
    if (peer) {
        struct sockaddr_un unused;
        socklen_t unused_len = sizeof unused;
        if (info->state != VS_CONNECTED)
            return respond(n->id, 0, ENOTCONN, 0);
        if (fd >= 0 && getpeername(fd, (struct sockaddr *)&unused, &unused_len) != 0)
            return respond(n->id, 0, errno, 0); /* ENOTCONN while a connect is pending */
    }
    int error = peer ? sockaddr_vm_out(n->pid, addr, len, info->peer_cid, info->peer_port)
                     : sockaddr_vm_out(n->pid, addr, len, info->local_cid, info->local_port);
    respond(n->id, 0, error, 0);
}

/* ---- /dev/nsm ioctl --------------- ------------------------------------------------------- */

static int send_all(int sock, const void *data, size_t size)
{
    const char *p = data;
    while (size > 0) {
        ssize_t got = send(sock, p, size, MSG_NOSIGNAL);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        p += got;
        size -= (size_t)got;
    }
    return 0;
}

static int recv_all(int sock, void *data, size_t size)
{
    char *p = data;
    while (size > 0) {
        ssize_t got = recv(sock, p, size, 0);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        p += got;
        size -= (size_t)got;
    }
    return 0;
}

static int nsm_connect(void)
{
    const char *path = getenv("NITRO_EMU_NSM_SOCKET");
    struct sockaddr_un addr;
    if (path == NULL || *path == '\0')
        path = NSM_DEFAULT_SOCKET;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path)
        return -1;
    strcpy(addr.sun_path, path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -1;
    struct timeval limit = {.tv_sec = NSM_TIMEOUT_SECONDS};
    setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(sock);
        return -1;
    }
    return sock;
}

/* NSM_IOCTL_RAW for the caller (nitro-facts §1.4): the shim's nsm_ioctl, across processes. */
static int nsm_ioctl(const struct ne_notif *n)
{
    pid_t pid = (pid_t)n->pid;
    uint64_t arg = n->data.args[2], msg[4]; /* request.base, .len, response.base, .len */
    if (arg == 0 || mem_read(pid, arg, msg, sizeof msg) != 0)
        return EFAULT;
    if (msg[1] > NSM_REQUEST_MAX)
        return EMSGSIZE;
    if ((msg[0] == 0 && msg[1] > 0) || (msg[2] == 0 && msg[3] > 0))
        return EFAULT;
    unsigned char request[NSM_REQUEST_MAX];
    if (msg[1] > 0 && mem_read(pid, msg[0], request, (size_t)msg[1]) != 0)
        return EFAULT;
    int sock = nsm_connect();
    if (sock < 0)
        return EIO;
    int error = EIO;
    unsigned char *reply = NULL;
    uint32_t size = (uint32_t)msg[1];
    unsigned char header[4] = {(unsigned char)(size >> 24), (unsigned char)(size >> 16),
                               (unsigned char)(size >> 8), (unsigned char)size};
    if (send_all(sock, header, 4) != 0 || send_all(sock, request, (size_t)msg[1]) != 0 ||
        recv_all(sock, header, 4) != 0)
        goto done;
    size = ((uint32_t)header[0] << 24) | ((uint32_t)header[1] << 16) | ((uint32_t)header[2] << 8) | header[3];
    if (size > NSM_REPLY_LIMIT || (reply = malloc(size ? size : 1)) == NULL ||
        recv_all(sock, reply, size) != 0)
        goto done;
    uint64_t kept = size < msg[3] ? size : msg[3]; /* truncation is silent (nsm.c) */
    error = !still_waiting(n->id) ? ENOENT
          : (kept > 0 && mem_write(pid, msg[2], reply, (size_t)kept) != 0) ? EFAULT
          : mem_write(pid, arg + 24, &kept, sizeof kept) != 0 ? EFAULT : 0;
done:
    free(reply);
    close(sock);
    return error;
}

static void *nsm_worker(void *arg)
{
    struct ne_notif *n = arg;
    respond(n->id, 0, nsm_ioctl(n), 0);
    free(n);
    return NULL;
}

static void on_ioctl(const struct ne_notif *n)
{
    char name[PATH_MAX];
    uint32_t request = (uint32_t)n->data.args[1];
    if (fd_target(n->pid, n->data.args[0], name, sizeof name) != 0)
        return pass_through(n->id);
    if (request == NSM_IOCTL_RAW && strcmp(name, NSM_PATH) == 0) {
        struct ne_notif *copy = malloc(sizeof *copy);
        pthread_t thread;
        pthread_attr_t attr;
        if (copy == NULL)
            return respond(n->id, 0, ENOMEM, 0);
        *copy = *n;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        if (pthread_create(&thread, &attr, nsm_worker, copy) != 0) {
            free(copy);
            respond(n->id, 0, EAGAIN, 0);
        }
        pthread_attr_destroy(&attr);
        return;
    }
    pass_through(n->id);
}

/* ---- dispatch: fast calls here, calls that can block in a thread of their own ------------- */

struct job { struct ne_notif n; struct vsock info; int fd; };

static void run_socket_call(struct job *job)
{
    const struct ne_notif *n = &job->n;
    int nr = n->data.nr;
    if (nr == SYS_bind)
        on_bind(n, &job->info);
    else if (nr == SYS_listen)
        on_listen(n, &job->info, job->fd);
    else if (nr == SYS_connect)
        on_connect(n, &job->info, job->fd);
    else if (nr == SYS_accept)
        on_accept(n, &job->info, job->fd, 0);
    else if (nr == SYS_accept4)
        on_accept(n, &job->info, job->fd, (int)n->data.args[3]);
    else if (nr == SYS_getsockname)
        on_getname(n, &job->info, job->fd, 0);
    else
        on_getname(n, &job->info, job->fd, 1);
}

static void *socket_worker(void *arg)
{
    struct job *job = arg;
    run_socket_call(job);
    if (job->fd >= 0)
        close(job->fd);
    free(job);
    return NULL;
}

static void on_socket_call(const struct ne_notif *n)
{
    struct vsock info;
    int fd;
    if (!vs_get_fd(fd_socket_inode(n->pid, n->data.args[0]), &info, &fd))
        return pass_through(n->id); /* not ours: the kernel's own call */
    struct job *job = malloc(sizeof *job);
    if (job == NULL) {
        if (fd >= 0)
            close(fd);
        return respond(n->id, 0, ENOMEM, 0);
    }
    job->n = *n;
    job->info = info;
    job->fd = fd;
    int nr = n->data.nr;
    /* listen takes the directory's flock, which a shim-using process of the same container may
     * hold while its own (trapped) bind or connect waits for us: never wait for it here */
    if (nr == SYS_connect || nr == SYS_accept || nr == SYS_accept4 || nr == SYS_listen) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        int failed = pthread_create(&thread, &attr, socket_worker, job);
        pthread_attr_destroy(&attr);
        if (failed == 0)
            return;
    }
    socket_worker(job);
}

static void *serve(void *unused)
{
    (void)unused;
    struct ne_notif n;
    for (;;) {
        memset(&n, 0, sizeof n);
        if (ioctl(notify_fd, IOCTL_NOTIF_RECV, &n) != 0) {
            if (errno == EINTR || errno == ENOENT)
                continue;
            warn("the notification fd failed; the program's trapped calls now fail with ENOSYS");
            return NULL;
        }
        int nr = n.data.nr;
        if (debug)
            fprintf(stderr, "nitro-emu-intercept: pid %u call %d (%#llx, %#llx, %#llx)\n", n.pid, nr,
                    (unsigned long long)n.data.args[0], (unsigned long long)n.data.args[1],
                    (unsigned long long)n.data.args[2]);
        if (n.data.arch != NATIVE_ARCH)
            pass_through(n.id);
        else if (nr == SYS_ioctl)
            on_ioctl(&n);
        else if (nr == SYS_socket)
            on_socket(&n);
        else
            on_socket_call(&n);
        if (table_count > gc_at)
            collect_garbage();
    }
}

/* ---- the filter and the kernel check ------------------------------------------------------ */

#define LD(off) {BPF_LD_W_ABS, 0, 0, (off)}
#define JEQ(k, t, f) {BPF_JEQ_K, (t), (f), (k)}
#define RET(k) {BPF_RET_K, 0, 0, (k)}
#define ARG_LOW(i) (offsetof(struct ne_seccomp_data, args) + 8 * (i)) /* little endian */

static struct ne_sock_filter program[] = {
    LD(offsetof(struct ne_seccomp_data, arch)),
    JEQ(NATIVE_ARCH, 1, 0),
    RET(RET_ALLOW),
    LD(offsetof(struct ne_seccomp_data, nr)),
    JEQ(SYS_bind, 8, 0),
    JEQ(SYS_connect, 7, 0),
    JEQ(SYS_listen, 6, 0),
    JEQ(SYS_accept, 5, 0),
    JEQ(SYS_accept4, 4, 0),
    JEQ(SYS_getsockname, 3, 0),
    JEQ(SYS_getpeername, 2, 0),
    JEQ(SYS_ioctl, 2, 0),
    JEQ(SYS_socket, 4, 7),
    RET(RET_USER_NOTIF),                   /* 13 */
    LD(ARG_LOW(1)),                        /* 14: ioctl's request */
    JEQ(NSM_IOCTL_RAW, 3, 4),              /* 15: to 19 or 20 */
    RET(RET_ALLOW),                        /* 16: unused, keeps the offsets below */
    LD(ARG_LOW(0)),                        /* 17: socket's domain */
    JEQ(NE_AF_VSOCK, 0, 1),
    RET(RET_USER_NOTIF),                   /* 19 */
    RET(RET_ALLOW),                        /* 20 */
};

static int install_filter(unsigned int flags)
{
    struct ne_sock_fprog prog = {.len = sizeof program / sizeof program[0], .filter = program};
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER_, flags, &prog);
}

static int send_fd(int sock, int fd, int error)
{
    char data = (char)error, control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&data, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        memset(control, 0, sizeof control);
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL) == 1 ? 0 : -1;
}

/* The fd sent, or -errno sent (-EIO if nothing came). */
static int recv_fd(int sock)
{
    char data = 0, control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&data, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                         .msg_controllen = sizeof control};
    ssize_t got;
    while ((got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC)) < 0 && errno == EINTR)
        ;
    if (got != 1)
        return -EIO;
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    if (cmsg != NULL && cmsg->cmsg_type == SCM_RIGHTS) {
        int fd;
        memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
        return fd;
    }
    return data ? -(int)data : -EIO;
}

/* Install the filter in this process (no_new_privs first); the listener fd or -errno. */
static int filter_self(unsigned int *flags)
{
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    *flags = FLAG_NEW_LISTENER | FLAG_WAIT_KILLABLE_RECV;
    int fd = install_filter(*flags);
    if (fd < 0 && errno == EINVAL) { /* before 5.19: no WAIT_KILLABLE_RECV */
        *flags = FLAG_NEW_LISTENER;
        fd = install_filter(*flags);
    }
    return fd < 0 ? -errno : fd;
}

/*
 * Whether this kernel and this seccomp profile give what the handler uses: a throwaway child
 * installs the filter and sends its listener; ADDFD with FLAG_SEND on no notification must
 * answer ENOENT (EINVAL: before 5.14, ENOTTY or EINVAL: before 5.9); process_vm_readv
 * (or /proc/<pid>/mem) must work. 0, or 1 with the reason in why.
 */
static int check_kernel(char *why, size_t size, unsigned int *flags_out)
{
    struct ne_notif_sizes sizes;
    if (syscall(SYS_seccomp, SECCOMP_GET_NOTIF_SIZES_, 0, &sizes) != 0) {
        snprintf(why, size, "seccomp user notification is missing (%s; needs Linux 5.0)", strerror(errno));
        return 1;
    }
    if (sizes.notif > sizeof(struct ne_notif) || sizes.resp > sizeof(struct ne_notif_resp)) {
        snprintf(why, size, "the kernel's seccomp_notif is larger than this build knows");
        return 1;
    }
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        snprintf(why, size, "socketpair: %s", strerror(errno));
        return 1;
    }
    pid_t probe = fork();
    if (probe == 0) {
        unsigned int flags;
        int fd = filter_self(&flags);
        send_fd(pair[1], fd, fd < 0 ? -fd : 0);
        char flag = (char)(flags & FLAG_WAIT_KILLABLE_RECV ? 1 : 0);
        if (write(pair[1], &flag, 1) != 1)
            _exit(1);
        _exit(0);
    }
    close(pair[1]);
    int listener = probe < 0 ? -errno : recv_fd(pair[0]);
    char killable = 0;
    if (listener >= 0 && read(pair[0], &killable, 1) != 1)
        killable = 0;
    close(pair[0]);
    if (probe > 0)
        waitpid(probe, NULL, 0);
    if (listener < 0) {
        snprintf(why, size, "the seccomp filter was refused (%s; needs Linux 5.0 and seccomp allowed)",
                 strerror(-listener));
        return 1;
    }
    *flags_out = FLAG_NEW_LISTENER | (killable ? FLAG_WAIT_KILLABLE_RECV : 0);
    struct ne_notif_addfd add = {.id = 0, .flags = ADDFD_FLAG_SEND, .srcfd = 0};
    int answer = ioctl(listener, IOCTL_NOTIF_ADDFD, &add);
    int error = answer < 0 ? errno : 0;
    close(listener);
    if (error != ENOENT) {
        snprintf(why, size, "SECCOMP_IOCTL_NOTIF_ADDFD with SECCOMP_ADDFD_FLAG_SEND is missing (%s; needs Linux 5.14)",
                 strerror(error));
        return 1;
    }
    uint64_t mark = 0x6e6974726f2d656dull, seen = 0;
    if (mem_read(getpid(), (uint64_t)(uintptr_t)&mark, &seen, sizeof seen) != 0 || seen != mark) {
        snprintf(why, size, "neither process_vm_readv nor /proc/<pid>/mem can read a process's memory");
        return 1;
    }
    return 0;
}

/* ---- the pieces a PID 1 needs (this launcher, and nitro_cli_init.c, which embeds them) ---- */

static void say_without(const char *why, const char *command)
{
    fprintf(stderr, "nitro-emu-intercept: warning: %s; %s runs without the syscall interceptor: "
                    "static programs and raw system calls see no /dev/nsm and no AF_VSOCK (docs/shim.md)\n",
            why, command);
}

/* 0 if the interceptor can run here; else 1, and the reason is on stderr. */
static int ne_intercept_available(const char *command)
{
    char why[256];
    unsigned int flags = 0;
    const char *verbose = getenv("NITRO_EMU_INTERCEPT_DEBUG");
    debug = verbose != NULL && strcmp(verbose, "1") == 0;
    if (check_kernel(why, sizeof why, &flags) == 0)
        return 0;
    say_without(why, command);
    return 1;
}

/* In the child, after fork and before exec: install the filter, send its listener on sock. */
static void ne_intercept_child(int sock)
{
    unsigned int used;
    int fd = filter_self(&used);
    if (send_fd(sock, fd, fd < 0 ? -fd : 0) != 0)
        _exit(1);
    if (fd >= 0)
        close(fd); /* only the handler may hold it: with none left, calls fail, not hang */
    close(sock);
}

/* In the parent: take the child's listener from sock and serve it; 0, or -1 (said why). */
static int ne_intercept_serve(int sock, const char *command)
{
    notify_fd = recv_fd(sock);
    close(sock);
    if (notify_fd < 0) {
        char why[128];
        snprintf(why, sizeof why, "the seccomp filter was refused (%s)", strerror(-notify_fd));
        say_without(why, command);
        return -1;
    }
    /* Linux 6.6: wake the handler on the caller's CPU, as a switch rather than a wakeup (the
     * round trip of a trapped call that is not ours is most of the filter's cost) */
    uint64_t sync_wake = USER_NOTIF_FD_SYNC_WAKE_UP;
    if (ioctl(notify_fd, IOCTL_NOTIF_SET_FLAGS, sync_wake) != 0 && debug)
        warn("no SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP (Linux 6.6): plain wakeups");
    pthread_t thread;
    if (pthread_create(&thread, NULL, serve, NULL) != 0 || pthread_create(&thread, NULL, sweeper, NULL) != 0) {
        warn("cannot start the handler threads");
        return -1;
    }
    return 0;
}

#ifndef NITRO_EMU_INTERCEPT_EMBEDDED

static void run(char **command)
{
    execvp(command[0], command);
    fprintf(stderr, "nitro-emu-intercept: cannot run %s: %s\n", command[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
}

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

/* The engine transport may start the enclave before its companion serves the NSM in the
 * shared volume (docs/transport.md): with NITRO_EMU_WAIT_NSM=<seconds>, wait until the socket
 * is there (the companion puts it in place listening), then hide the variable from the
 * command, whose environment stays as run-enclave gives it. */
static void wait_for_nsm(void)
{
    const char *wait = getenv("NITRO_EMU_WAIT_NSM");
    if (wait == NULL || *wait == '\0')
        return;
    long limit_ms = strtol(wait, NULL, 10) * 1000;
    const char *path = getenv("NITRO_EMU_NSM_SOCKET");
    if (path == NULL || *path == '\0')
        path = "/run/nitro-emu/nsm.sock";
    struct stat st;
    long waited = 0;
    while (!(stat(path, &st) == 0 && S_ISSOCK(st.st_mode))) {
        if (waited >= limit_ms) {
            warn("the NSM socket did not appear in time; starting the command without it");
            break;
        }
        struct timespec pause = {0, 2 * 1000 * 1000};
        nanosleep(&pause, NULL);
        waited += 2;
    }
    unsetenv("NITRO_EMU_WAIT_NSM");
}

int main(int argc, char **argv)
{
    int first = 1, check_only = 0;
    wait_for_nsm();
    if (first < argc && strcmp(argv[first], "--check") == 0) {
        check_only = 1;
        first++;
    }
    if (first < argc && strcmp(argv[first], "--") == 0)
        first++;
    if (check_only) {
        char why[256];
        unsigned int flags = 0;
        if (check_kernel(why, sizeof why, &flags) != 0) {
            printf("unavailable: %s\n", why);
            return 1;
        }
        printf("ok%s\n", flags & FLAG_WAIT_KILLABLE_RECV ? " wait-killable-recv" : "");
        return 0;
    }
    if (first >= argc) {
        warn("usage: nitro-emu-intercept [--check] [--] COMMAND [ARG...]");
        return 2;
    }
    char **command = argv + first;
    const char *enabled = getenv("NITRO_EMU_INTERCEPT");
    if ((enabled != NULL && strcmp(enabled, "0") == 0) || ne_intercept_available(command[0]) != 0)
        run(command);

    sigset_t handled, previous;
    sigemptyset(&handled);
    sigaddset(&handled, SIGCHLD);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaddset(&handled, forwarded[i]);
    sigprocmask(SIG_BLOCK, &handled, &previous);
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
        perror("nitro-emu-intercept: socketpair");
        return 1;
    }
    pid_t child = fork();
    if (child < 0) {
        perror("nitro-emu-intercept: fork");
        return 1;
    }
    if (child == 0) {
        sigprocmask(SIG_SETMASK, &previous, NULL);
        close(pair[0]);
        ne_intercept_child(pair[1]);
        run(command);
    }
    close(pair[1]);
    if (ne_intercept_serve(pair[0], command[0]) != 0 && notify_fd >= 0) {
        kill(child, SIGKILL); /* filtered, but nobody can serve it */
        return 1;
    }
    /* PID 1's duties: pass signals on, reap every child, exit as the command did */
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&handled, &info);
        if (sig < 0)
            continue;
        if (sig != SIGCHLD) {
            kill(child, sig);
            continue;
        }
        int status;
        pid_t gone;
        while ((gone = waitpid(-1, &status, WNOHANG)) > 0) {
            if (gone == child)
                _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        }
    }
}

#endif /* NITRO_EMU_INTERCEPT_EMBEDDED */
