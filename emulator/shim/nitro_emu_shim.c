/*
 * nitro_emu_shim.c - LD_PRELOAD library that lets unmodified programs use nitro-emu's
 * fake /dev/nsm and VSOCK mirror (docs/shim.md, docs/architecture.md).
 *
 * /dev/nsm: opening exactly "/dev/nsm" returns a real /dev/null descriptor opened with the
 * caller's flags and remembered as an NSM descriptor. ioctl(fd, 0xC0200A00, &msg) on it
 * sends msg.request over the NSM socket ($NITRO_EMU_NSM_SOCKET, default
 * /run/nitro-emu/nsm.sock; 4-byte big-endian length + CBOR) and copies the reply into
 * msg.response, truncated to its length, which is written back (nitro-facts §1.4). Other
 * ioctls give EINVAL, lseek gives ESPIPE, as the kernel driver does. "/dev/vsock" is the
 * same kind of stand-in; it answers IOCTL_VM_SOCKETS_GET_LOCAL_CID with this process's CID.
 *
 * AF_VSOCK: socket(AF_VSOCK, SOCK_STREAM) makes an AF_UNIX stream socket; bind/listen put
 * the listener at <root>/vsock/<port> (enclave) or $NITRO_EMU_HOME/run/parent/<port>
 * (parent); connect binds the abstract name "\0nitro-emu-vsock:<cid>:<port>" and connects
 * to the peer's listener path; addresses are reported as sockaddr_vm.
 *
 * Role: $NITRO_EMU_CID set means "inside an enclave with that CID" (root $NITRO_EMU_VSOCK_ROOT,
 * default /run/nitro-emu); otherwise the parent (CID 3) with $NITRO_EMU_HOME (default
 * $XDG_DATA_HOME/nitro-emu or ~/.local/share/nitro-emu).
 *
 * Rules kept here: no constructor and no state until a program touches /dev/nsm or AF_VSOCK;
 * no locks (fork-safe); every failure is an errno, never a signal (MSG_NOSIGNAL).
 */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#ifndef O_PATH
#define O_PATH 010000000
#endif
#define NE_RTLD_NEXT ((void *)-1L)

/* ---- constants (nitro-facts §1.4; linux/vm_sockets.h) ---------------------------------- */

#define NSM_PATH "/dev/nsm"
#define VSOCK_DEVICE_PATH "/dev/vsock"
#define IOCTL_VM_SOCKETS_GET_LOCAL_CID_ 0x7B9u
#define NSM_STANDIN "/dev/null"
#define NSM_IOCTL_RAW 0xC0200A00u
#define NSM_REQUEST_MAX 0x1000u
#define NSM_REPLY_LIMIT (0x3000u + 0x10000u) /* refuse absurd frames from a broken server */
#define NSM_DEFAULT_SOCKET "/run/nitro-emu/nsm.sock"
#define NSM_TIMEOUT_SECONDS 120 /* the driver's device timeout */

#define NE_AF_VSOCK 40
#define VMADDR_CID_ANY_ 0xFFFFFFFFu
#define VMADDR_PORT_ANY_ 0xFFFFFFFFu
#define VMADDR_CID_HYPERVISOR_ 0u
#define VMADDR_CID_LOCAL_ 1u
#define VMADDR_CID_HOST_ 2u
#define PARENT_CID 3u
#define EPHEMERAL_FIRST 1024u
#define EPHEMERAL_LAST 0x7FFFFFFFu
#define ABSTRACT_PREFIX "nitro-emu-vsock:"
/* A liveness probe binds this name so that listeners drop it unseen (emulator/vsock/enclave.py). */
#define PROBE_PREFIX "nitro-emu-vsock-probe:"
#define SO_VM_SOCKETS_BUFFER_SIZE_ 0
#define SO_VM_SOCKETS_BUFFER_MIN_SIZE_ 1
#define SO_VM_SOCKETS_BUFFER_MAX_SIZE_ 2
#define SO_DOMAIN_ 39
#define SO_PROTOCOL_ 38

/* generic ioctls the VFS answers before any driver sees them (fs/ioctl.c) */
#define FIONCLEX_ 0x5450u
#define FIOCLEX_ 0x5451u
#define FIONBIO_ 0x5421u
#define FIOASYNC_ 0x5452u

struct ne_sockaddr_vm {
    unsigned short svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_flags;
    unsigned char svm_zero[3];
};

struct ne_iovec64 {
    uint64_t base;
    uint64_t len;
};

struct ne_nsm_message {
    struct ne_iovec64 request;
    struct ne_iovec64 response;
};

/* ---- the real functions ------------------------------------------------------------------ */

static void *resolve(void **slot, const char *name, const char *fallback)
{
    void *fn = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (fn == NULL) {
        fn = dlsym(NE_RTLD_NEXT, name);
        if (fn == NULL && fallback != NULL)
            fn = dlsym(NE_RTLD_NEXT, fallback);
        __atomic_store_n(slot, fn, __ATOMIC_RELEASE);
    }
    return fn;
}

/* REAL(type, name, fallback): the next definition of `name` (or of `fallback`), or NULL. */
#define REAL(type, name, fallback)                                                         \
    ({                                                                                     \
        static void *slot_;                                                                \
        (type) resolve(&slot_, name, fallback);                                            \
    })

/* CALL_REAL(type, name, fallback, args): the next `name` (or `fallback`) called with `args`,
 * an int; -1 with errno ENOSYS when there is neither. */
#define CALL_REAL(type, name, fallback, args)                                              \
    ({                                                                                     \
        type real_fn_ = REAL(type, name, fallback);                                        \
        real_fn_ != NULL ? real_fn_ args : (errno = ENOSYS, -1);                           \
    })

typedef int (*open_fn)(const char *, int, ...);
typedef int (*openat_fn)(int, const char *, int, ...);
typedef int (*open2_fn)(const char *, int);
typedef int (*openat2_fn)(int, const char *, int);
typedef int (*close_fn)(int);
typedef int (*socket_fn)(int, int, int);
typedef int (*addr_fn)(int, const struct sockaddr *, socklen_t);
typedef int (*getaddr_fn)(int, struct sockaddr *, socklen_t *);
typedef int (*accept4_fn)(int, struct sockaddr *, socklen_t *, int);
typedef int (*listen_fn)(int, int);
typedef int (*setsockopt_fn)(int, int, int, const void *, socklen_t);
typedef int (*getsockopt_fn)(int, int, int, void *, socklen_t *);

/* DEFINE_REAL(type, name, params, args): `static int real_<name> params`, which calls the
 * next definition of `name` with `args`, or fails with ENOSYS when there is none. */
#define DEFINE_REAL(type, name, params, args)                                              \
    static int real_##name params { return CALL_REAL(type, #name, NULL, args); }

DEFINE_REAL(close_fn, close, (int fd), (fd))
DEFINE_REAL(socket_fn, socket, (int domain, int type, int protocol), (domain, type, protocol))
DEFINE_REAL(addr_fn, connect, (int fd, const struct sockaddr *addr, socklen_t len), (fd, addr, len))
DEFINE_REAL(addr_fn, bind, (int fd, const struct sockaddr *addr, socklen_t len), (fd, addr, len))
DEFINE_REAL(getaddr_fn, getpeername, (int fd, struct sockaddr *addr, socklen_t *len), (fd, addr, len))
DEFINE_REAL(setsockopt_fn, setsockopt,
            (int fd, int level, int name, const void *value, socklen_t len),
            (fd, level, name, value, len))

/* ---- descriptor table: lock-free, allocated only when something is tracked ---------------- */

enum { KIND_NONE = 0, KIND_NSM = 1, KIND_VSOCK = 2, KIND_VSOCK_DEVICE = 3 };
enum { VS_NEW = 0, VS_BOUND, VS_LISTENING, VS_CONNECTED };

struct fd_info {
    unsigned char kind;
    unsigned char state;
    unsigned char named; /* the Unix socket is already bound (path or abstract name) */
    uint32_t local_cid, local_port, peer_cid, peer_port;
    pid_t owner;          /* listener: the process that created its socket file */
    dev_t path_dev;       /* listener: the socket file's identity, so close() only */
    ino_t path_ino;       /*   removes its own file (as emulator/vsock/enclave.py does) */
};

#define CHUNK_BITS 10
#define CHUNK_SIZE (1 << CHUNK_BITS)
#define MAX_CHUNKS 1024 /* descriptors below 1 << 20 */

static struct fd_info *chunks[MAX_CHUNKS];

static struct fd_info *fd_slot(int fd, int create)
{
    if (fd < 0 || fd >= CHUNK_SIZE * MAX_CHUNKS)
        return NULL;
    struct fd_info **where = &chunks[fd >> CHUNK_BITS];
    struct fd_info *chunk = __atomic_load_n(where, __ATOMIC_ACQUIRE);
    if (chunk == NULL) {
        if (!create)
            return NULL;
        size_t size = sizeof(struct fd_info) * CHUNK_SIZE;
        void *fresh = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (fresh == MAP_FAILED)
            return NULL;
        struct fd_info *expected = NULL;
        if (__atomic_compare_exchange_n(where, &expected, (struct fd_info *)fresh, 0,
                                        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
            chunk = (struct fd_info *)fresh;
        } else {
            munmap(fresh, size);
            chunk = expected;
        }
    }
    return &chunk[fd & (CHUNK_SIZE - 1)];
}

static int fd_kind(int fd)
{
    struct fd_info *slot = fd_slot(fd, 0);
    return slot == NULL ? KIND_NONE : __atomic_load_n(&slot->kind, __ATOMIC_ACQUIRE);
}

/* A copy of the entry of a tracked descriptor (1), or 0 if it is not tracked. */
static int fd_get(int fd, struct fd_info *out)
{
    struct fd_info *slot = fd_slot(fd, 0);
    if (slot == NULL || __atomic_load_n(&slot->kind, __ATOMIC_ACQUIRE) == KIND_NONE)
        return 0;
    *out = *slot;
    return 1;
}

static int fd_put(int fd, const struct fd_info *info)
{
    int saved = errno;
    struct fd_info *slot = fd_slot(fd, 1);
    errno = saved;
    if (slot == NULL)
        return -1;
    __atomic_store_n(&slot->kind, KIND_NONE, __ATOMIC_RELEASE);
    slot->state = info->state;
    slot->named = info->named;
    slot->local_cid = info->local_cid;
    slot->local_port = info->local_port;
    slot->peer_cid = info->peer_cid;
    slot->peer_port = info->peer_port;
    slot->owner = info->owner;
    slot->path_dev = info->path_dev;
    slot->path_ino = info->path_ino;
    __atomic_store_n(&slot->kind, info->kind, __ATOMIC_RELEASE);
    return 0;
}

static void fd_forget(int fd)
{
    struct fd_info *slot = fd_slot(fd, 0);
    if (slot != NULL)
        __atomic_store_n(&slot->kind, KIND_NONE, __ATOMIC_RELEASE);
}

/* After a successful dup of `from` onto `to`: `to` is now what `from` is. */
static void fd_copy(int from, int to)
{
    struct fd_info info;
    if (from == to || to < 0)
        return;
    if (fd_get(from, &info)) {
        info.owner = 0; /* a duplicate never removes the listener's file */
        fd_put(to, &info);
    } else {
        fd_forget(to);
    }
}

/* ---- /dev/nsm: open family ------------------------------------------------------------- */

/* The emulated device this path names (KIND_NSM, KIND_VSOCK_DEVICE), or KIND_NONE. */
static int device_kind(const char *path)
{
    if (path == NULL || strncmp(path, "/dev/", 5) != 0)
        return KIND_NONE;
    if (strcmp(path, NSM_PATH) == 0)
        return KIND_NSM;
    if (strcmp(path, VSOCK_DEVICE_PATH) == 0)
        return KIND_VSOCK_DEVICE;
    return KIND_NONE;
}

static int device_open(int kind, int flags, mode_t mode)
{
    int fd = CALL_REAL(open_fn, "open", NULL, (NSM_STANDIN, flags, mode));
    if (fd < 0)
        return fd;
    struct fd_info info = {.kind = (unsigned char)kind};
    if (fd_put(fd, &info) != 0) {
        real_close(fd);
        errno = EMFILE;
        return -1;
    }
    return fd;
}

static mode_t mode_arg(int flags, va_list ap)
{
    /* the mode argument exists only with O_CREAT or O_TMPFILE (as glibc reads it) */
#ifdef O_TMPFILE
    if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE)
#else
    if (flags & O_CREAT)
#endif
        return (mode_t)va_arg(ap, int);
    return 0;
}

#define DEFINE_OPEN(fname, fallback)                                                       \
    EXPORT int fname(const char *path, int flags, ...)                                     \
    {                                                                                      \
        va_list ap;                                                                        \
        va_start(ap, flags);                                                               \
        mode_t mode = mode_arg(flags, ap);                                                 \
        va_end(ap);                                                                        \
        if (device_kind(path) != KIND_NONE)                                                \
            return device_open(device_kind(path), flags, mode);                            \
        return CALL_REAL(open_fn, #fname, fallback, (path, flags, mode));                  \
    }

#define DEFINE_OPENAT(fname, fallback)                                                     \
    EXPORT int fname(int dirfd, const char *path, int flags, ...)                          \
    {                                                                                      \
        va_list ap;                                                                        \
        va_start(ap, flags);                                                               \
        mode_t mode = mode_arg(flags, ap);                                                 \
        va_end(ap);                                                                        \
        if (device_kind(path) != KIND_NONE)                                                \
            return device_open(device_kind(path), flags, mode);                            \
        return CALL_REAL(openat_fn, #fname, fallback, (dirfd, path, flags, mode));         \
    }

/* glibc's _FORTIFY_SOURCE entry points (no mode argument) */
#define DEFINE_OPEN2(fname)                                                                \
    EXPORT int fname(const char *path, int flags)                                          \
    {                                                                                      \
        if (device_kind(path) != KIND_NONE)                                                \
            return device_open(device_kind(path), flags, 0);                               \
        open2_fn fn = REAL(open2_fn, #fname, NULL);                                        \
        if (fn != NULL)                                                                    \
            return fn(path, flags);                                                        \
        return CALL_REAL(open_fn, "open", NULL, (path, flags));                            \
    }

#define DEFINE_OPENAT2(fname)                                                              \
    EXPORT int fname(int dirfd, const char *path, int flags)                               \
    {                                                                                      \
        if (device_kind(path) != KIND_NONE)                                                \
            return device_open(device_kind(path), flags, 0);                               \
        openat2_fn fn = REAL(openat2_fn, #fname, NULL);                                    \
        if (fn != NULL)                                                                    \
            return fn(dirfd, path, flags);                                                 \
        return CALL_REAL(openat_fn, "openat", NULL, (dirfd, path, flags));                 \
    }

DEFINE_OPEN(open, NULL)
DEFINE_OPEN(open64, "open")
DEFINE_OPENAT(openat, NULL)
DEFINE_OPENAT(openat64, "openat")
DEFINE_OPEN2(__open_2)
DEFINE_OPEN2(__open64_2)
DEFINE_OPENAT2(__openat_2)
DEFINE_OPENAT2(__openat64_2)

typedef FILE *(*fopen_fn)(const char *, const char *);

static FILE *device_fopen(int kind, const char *mode)
{
    int flags = O_RDONLY;
    if (mode[0] == 'w' || mode[0] == 'a')
        flags = O_WRONLY | O_CREAT;
    for (const char *c = mode; *c; c++) {
        if (*c == '+')
            flags = (flags & ~(O_WRONLY | O_RDONLY)) | O_RDWR;
        else if (*c == 'e')
            flags |= O_CLOEXEC;
    }
    int fd = device_open(kind, flags, 0666);
    if (fd < 0)
        return NULL;
    FILE *stream = fdopen(fd, mode);
    if (stream == NULL) {
        int saved = errno;
        fd_forget(fd);
        real_close(fd);
        errno = saved;
    }
    return stream;
}

#define DEFINE_FOPEN(fname, fallback)                                                      \
    EXPORT FILE *fname(const char *path, const char *mode)                                 \
    {                                                                                      \
        if (device_kind(path) != KIND_NONE && mode != NULL)                                \
            return device_fopen(device_kind(path), mode);                                  \
        fopen_fn fn = REAL(fopen_fn, #fname, fallback);                                    \
        return fn != NULL ? fn(path, mode) : (errno = ENOSYS, (FILE *)NULL);               \
    }

DEFINE_FOPEN(fopen, NULL)
DEFINE_FOPEN(fopen64, "fopen")

EXPORT int fclose(FILE *stream)
{
    typedef int (*fclose_fn)(FILE *);
    fclose_fn fn = REAL(fclose_fn, "fclose", NULL);
    if (stream != NULL) {
        int fd = fileno(stream);
        if (fd >= 0 && fd_kind(fd) != KIND_NONE)
            fd_forget(fd);
    }
    return fn != NULL ? fn(stream) : (errno = ENOSYS, EOF);
}

/* stat/access of "/dev/nsm" see the stand-in char device; nothing else is touched. */
/* An asm label names the symbol, so the libc headers' prototypes (struct stat) never clash. */
#define DEFINE_PATH_CALL(ret, fname, fallback, params, call_args, path_param)               \
    EXPORT ret ne_##fname params __asm__(#fname);                                          \
    ret ne_##fname params                                                                  \
    {                                                                                      \
        typedef ret(*fn_t) params;                                                         \
        fn_t fn = REAL(fn_t, #fname, fallback);                                            \
        if (fn == NULL) {                                                                  \
            errno = ENOSYS;                                                                \
            return -1;                                                                     \
        }                                                                                  \
        if (device_kind(path_param) != KIND_NONE)                                          \
            path_param = NSM_STANDIN;                                                      \
        return fn call_args;                                                               \
    }

DEFINE_PATH_CALL(int, stat, NULL, (const char *path, void *buf), (path, buf), path)
DEFINE_PATH_CALL(int, stat64, "stat", (const char *path, void *buf), (path, buf), path)
DEFINE_PATH_CALL(int, lstat, NULL, (const char *path, void *buf), (path, buf), path)
DEFINE_PATH_CALL(int, lstat64, "lstat", (const char *path, void *buf), (path, buf), path)
DEFINE_PATH_CALL(int, fstatat, NULL, (int dirfd, const char *path, void *buf, int flags),
                 (dirfd, path, buf, flags), path)
DEFINE_PATH_CALL(int, fstatat64, "fstatat", (int dirfd, const char *path, void *buf, int flags),
                 (dirfd, path, buf, flags), path)
DEFINE_PATH_CALL(int, statx, NULL,
                 (int dirfd, const char *path, int flags, unsigned int mask, void *buf),
                 (dirfd, path, flags, mask, buf), path)
DEFINE_PATH_CALL(int, access, NULL, (const char *path, int how), (path, how), path)
DEFINE_PATH_CALL(int, faccessat, NULL, (int dirfd, const char *path, int how, int flags),
                 (dirfd, path, how, flags), path)
DEFINE_PATH_CALL(int, euidaccess, NULL, (const char *path, int how), (path, how), path)
DEFINE_PATH_CALL(int, eaccess, NULL, (const char *path, int how), (path, how), path)
/* glibc < 2.33 programs call these versioned helpers instead of stat() */
DEFINE_PATH_CALL(int, __xstat, NULL, (int ver, const char *path, void *buf), (ver, path, buf), path)
DEFINE_PATH_CALL(int, __xstat64, NULL, (int ver, const char *path, void *buf), (ver, path, buf),
                 path)
DEFINE_PATH_CALL(int, __lxstat, NULL, (int ver, const char *path, void *buf), (ver, path, buf),
                 path)
DEFINE_PATH_CALL(int, __lxstat64, NULL, (int ver, const char *path, void *buf), (ver, path, buf),
                 path)
DEFINE_PATH_CALL(int, __fxstatat, NULL, (int ver, int dirfd, const char *path, void *buf, int f),
                 (ver, dirfd, path, buf, f), path)
DEFINE_PATH_CALL(int, __fxstatat64, NULL,
                 (int ver, int dirfd, const char *path, void *buf, int f),
                 (ver, dirfd, path, buf, f), path)

/* ---- /dev/nsm: the ioctl over the NSM socket --------------------------------------------- */

static int send_all(int sock, const void *data, size_t size)
{
    const char *p = data;
    while (size > 0) {
        ssize_t n = send(sock, p, size, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

static int recv_all(int sock, void *data, size_t size)
{
    char *p = data;
    while (size > 0) {
        ssize_t n = recv(sock, p, size, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        size -= (size_t)n;
    }
    return 0;
}

static int nsm_connect(void)
{
    const char *path = getenv("NITRO_EMU_NSM_SOCKET");
    if (path == NULL || *path == '\0')
        path = NSM_DEFAULT_SOCKET;
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof addr.sun_path)
        return -1;
    strcpy(addr.sun_path, path);
    int sock = real_socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0)
        return -1;
    struct timeval limit = {.tv_sec = NSM_TIMEOUT_SECONDS};
    real_setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
    real_setsockopt(sock, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
    if (real_connect(sock, (struct sockaddr *)&addr, sizeof addr) != 0) {
        real_close(sock);
        return -1;
    }
    return sock;
}

/* One request/reply exchange; 0 and the reply length, or an errno (EIO: device failure). */
static int nsm_exchange(const void *request, uint32_t request_len, void *reply,
                        uint64_t capacity, uint64_t *reply_len)
{
    int sock = nsm_connect();
    if (sock < 0)
        return EIO;
    int result = EIO;
    unsigned char header[4] = {(unsigned char)(request_len >> 24), (unsigned char)(request_len >> 16),
                               (unsigned char)(request_len >> 8), (unsigned char)request_len};
    if (send_all(sock, header, 4) != 0 || send_all(sock, request, request_len) != 0)
        goto done;
    if (recv_all(sock, header, 4) != 0)
        goto done;
    uint32_t size = ((uint32_t)header[0] << 24) | ((uint32_t)header[1] << 16) |
                    ((uint32_t)header[2] << 8) | header[3];
    if (size > NSM_REPLY_LIMIT)
        goto done;
    uint64_t kept = size < capacity ? size : capacity;
    if (kept > 0 && recv_all(sock, reply, (size_t)kept) != 0)
        goto done;
    for (uint64_t rest = size - kept; rest > 0;) { /* truncation is silent (nsm.c) */
        char sink[512];
        size_t chunk = rest < sizeof sink ? (size_t)rest : sizeof sink;
        if (recv_all(sock, sink, chunk) != 0)
            goto done;
        rest -= chunk;
    }
    *reply_len = kept;
    result = 0;
done:
    real_close(sock);
    return result;
}

static int nsm_ioctl(unsigned int request, void *arg)
{
    if (request != NSM_IOCTL_RAW)
        return EINVAL; /* nsm.c: cmd != NSM_IOCTL_RAW */
    if (arg == NULL)
        return EFAULT;
    struct ne_nsm_message msg;
    memcpy(&msg, arg, sizeof msg);
    if (msg.request.len > NSM_REQUEST_MAX)
        return EMSGSIZE;
    if ((msg.request.base == 0 && msg.request.len > 0) ||
        (msg.response.base == 0 && msg.response.len > 0))
        return EFAULT;
    uint64_t got = 0;
    int error = nsm_exchange((const void *)(uintptr_t)msg.request.base, (uint32_t)msg.request.len,
                             (void *)(uintptr_t)msg.response.base, msg.response.len, &got);
    if (error != 0)
        return error;
    msg.response.len = got;
    memcpy((char *)arg + offsetof(struct ne_nsm_message, response.len), &msg.response.len,
           sizeof msg.response.len);
    return 0;
}

static int64_t own_cid(int *in_enclave);

/* /dev/vsock answers IOCTL_VM_SOCKETS_GET_LOCAL_CID only (af_vsock.c vsock_dev_do_ioctl). */
static int vsock_device_ioctl(unsigned int request, void *arg)
{
    if (request != IOCTL_VM_SOCKETS_GET_LOCAL_CID_)
        return ENOTTY;
    if (arg == NULL)
        return EFAULT;
    int in_enclave;
    int64_t cid = own_cid(&in_enclave);
    uint32_t value = cid < 0 ? VMADDR_CID_ANY_ : (uint32_t)cid;
    memcpy(arg, &value, sizeof value);
    return 0;
}

#ifdef __GLIBC__
EXPORT int ioctl(int fd, unsigned long request, ...)
#else
EXPORT int ioctl(int fd, int request, ...)
#endif
{
    typedef int (*ioctl_fn)(int, unsigned long, void *);
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    unsigned int cmd = (unsigned int)request; /* the kernel takes a 32-bit command */
    int kind = fd_kind(fd);
    if ((kind == KIND_NSM || kind == KIND_VSOCK_DEVICE) && cmd != FIOCLEX_ && cmd != FIONCLEX_ &&
        cmd != FIONBIO_ && cmd != FIOASYNC_) {
        int error = kind == KIND_NSM ? nsm_ioctl(cmd, arg) : vsock_device_ioctl(cmd, arg);
        if (error != 0) {
            errno = error;
            return -1;
        }
        return 0;
    }
    return CALL_REAL(ioctl_fn, "ioctl", NULL, (fd, (unsigned long)request, arg));
}

/* The real device has no llseek: lseek gives ESPIPE (nitro-facts §4.1). */
#define DEFINE_LSEEK(fname, fallback)                                                      \
    EXPORT off_t fname(int fd, off_t offset, int whence)                                   \
    {                                                                                      \
        typedef off_t (*fn_t)(int, off_t, int);                                            \
        int kind_ = fd_kind(fd);                                                           \
        if (kind_ == KIND_NSM || kind_ == KIND_VSOCK_DEVICE) {                             \
            errno = ESPIPE;                                                                \
            return -1;                                                                     \
        }                                                                                  \
        fn_t fn = REAL(fn_t, #fname, fallback);                                            \
        return fn != NULL ? fn(fd, offset, whence) : (errno = ENOSYS, (off_t)-1);          \
    }

DEFINE_LSEEK(lseek, NULL)
DEFINE_LSEEK(lseek64, "lseek")

/* ---- descriptor lifetime: close and dup keep the table right ------------------------------ */

static void remove_own_listener(int fd);

EXPORT int close(int fd)
{
    int kind = fd_kind(fd);
    if (kind != KIND_NONE) {
        if (kind == KIND_VSOCK)
            remove_own_listener(fd);
        fd_forget(fd);
    }
    return real_close(fd);
}

EXPORT int close_range(unsigned int first, unsigned int last, int flags)
{
    typedef int (*fn_t)(unsigned int, unsigned int, int);
    int result = CALL_REAL(fn_t, "close_range", NULL, (first, last, flags));
    if (result == 0 && !(flags & 4 /* CLOSE_RANGE_CLOEXEC */)) {
        unsigned int end = last < CHUNK_SIZE * MAX_CHUNKS ? last : CHUNK_SIZE * MAX_CHUNKS - 1;
        for (unsigned int fd = first; fd <= end; fd++) {
            if (chunks[fd >> CHUNK_BITS] == NULL) { /* skip whole empty chunks */
                fd |= CHUNK_SIZE - 1;
                continue;
            }
            fd_forget((int)fd);
        }
    }
    return result;
}

EXPORT int dup(int fd)
{
    typedef int (*fn_t)(int);
    int copy = CALL_REAL(fn_t, "dup", NULL, (fd));
    if (copy >= 0)
        fd_copy(fd, copy);
    return copy;
}

EXPORT int dup2(int fd, int target)
{
    typedef int (*fn_t)(int, int);
    int copy = CALL_REAL(fn_t, "dup2", NULL, (fd, target));
    if (copy >= 0)
        fd_copy(fd, copy);
    return copy;
}

EXPORT int dup3(int fd, int target, int flags)
{
    typedef int (*fn_t)(int, int, int);
    int copy = CALL_REAL(fn_t, "dup3", NULL, (fd, target, flags));
    if (copy >= 0)
        fd_copy(fd, copy);
    return copy;
}

#define DEFINE_FCNTL(fname, fallback)                                                      \
    EXPORT int fname(int fd, int cmd, ...)                                                 \
    {                                                                                      \
        typedef int (*fn_t)(int, int, ...);                                                \
        va_list ap;                                                                        \
        va_start(ap, cmd);                                                                 \
        void *arg = va_arg(ap, void *); /* as glibc itself reads it */                     \
        va_end(ap);                                                                        \
        int result = CALL_REAL(fn_t, #fname, fallback, (fd, cmd, arg));                    \
        if (result >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC))                     \
            fd_copy(fd, result);                                                           \
        return result;                                                                     \
    }

DEFINE_FCNTL(fcntl, NULL)
DEFINE_FCNTL(fcntl64, "fcntl")

/* ---- VSOCK: where each (cid, port) lives ------------------------------------------------ */

/* This process's CID: $NITRO_EMU_CID in an enclave, 3 for the parent. -1 if it is garbage. */
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

/* The directory of the parent's state ($NITRO_EMU_HOME), as emulator/settings.py finds it. */
static int parent_home(char *out, size_t size)
{
    const char *home = getenv("NITRO_EMU_HOME");
    int n;
    if (home != NULL && *home != '\0') {
        n = snprintf(out, size, "%s", home);
    } else {
        const char *data = getenv("XDG_DATA_HOME");
        if (data != NULL && *data != '\0') {
            n = snprintf(out, size, "%s/nitro-emu", data);
        } else {
            const char *user = getenv("HOME");
            if (user == NULL || *user == '\0')
                return -1;
            n = snprintf(out, size, "%s/.local/share/nitro-emu", user);
        }
    }
    return n < 0 || (size_t)n >= size ? -1 : 0;
}

static const char *enclave_root(void)
{
    const char *root = getenv("NITRO_EMU_VSOCK_ROOT");
    return root != NULL && *root != '\0' ? root : "/run/nitro-emu";
}

/*
 * The directory holding the listener of (cid, *), seen from this process; 0, or an errno:
 * ENODEV for a CID nobody has (architecture.md "VSOCK mirror").
 */
static int listener_dir(uint32_t cid, char *out, size_t size)
{
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    if (mine < 0)
        return EADDRNOTAVAIL;
    int n;
    if (in_enclave) {
        if (cid == PARENT_CID)
            n = snprintf(out, size, "%s/parent", enclave_root());
        else if (cid == (uint32_t)mine || cid == VMADDR_CID_LOCAL_)
            n = snprintf(out, size, "%s/vsock", enclave_root());
        else
            return ENODEV; /* an enclave reaches only the parent */
        return n < 0 || (size_t)n >= size ? ENAMETOOLONG : 0;
    }
    char home[PATH_MAX];
    if (parent_home(home, sizeof home) != 0)
        return ENAMETOOLONG;
    if (cid == PARENT_CID || cid == VMADDR_CID_LOCAL_) {
        n = snprintf(out, size, "%s/run/parent", home);
        return n < 0 || (size_t)n >= size ? ENAMETOOLONG : 0;
    }
    if (cid <= PARENT_CID || cid == VMADDR_CID_ANY_)
        return ENODEV;
    n = snprintf(out, size, "%s/run/%u", home, cid);
    if (n < 0 || (size_t)n >= size)
        return ENAMETOOLONG;
    struct stat info;
    if (stat(out, &info) != 0 || !S_ISDIR(info.st_mode))
        return ENODEV; /* no running enclave has this CID */
    if ((size_t)n + sizeof "/vsock" > size)
        return ENAMETOOLONG;
    strcat(out, "/vsock");
    return 0;
}

/*
 * A sockaddr_un for <dir>/<port>. Paths longer than sun_path go through
 * /proc/self/fd/<dirfd>/<port> (as emulator/vsock/enclave.py does); *dirfd is then open.
 */
static int unix_address(const char *dir, uint32_t port, struct sockaddr_un *addr, int *dirfd)
{
    memset(addr, 0, sizeof *addr);
    addr->sun_family = AF_UNIX;
    *dirfd = -1;
    int n = snprintf(addr->sun_path, sizeof addr->sun_path, "%s/%u", dir, port);
    if (n >= 0 && (size_t)n < sizeof addr->sun_path)
        return 0;
    open_fn fn = REAL(open_fn, "open", NULL);
    int fd = fn != NULL ? fn(dir, O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
    if (fd < 0)
        return errno == ENOENT || errno == ENOTDIR ? ECONNREFUSED : errno;
    *dirfd = fd;
    snprintf(addr->sun_path, sizeof addr->sun_path, "/proc/self/fd/%d/%u", fd, port);
    return 0;
}

static void sockaddr_vm_out(struct sockaddr *addr, socklen_t *len, uint32_t cid, uint32_t port)
{
    struct ne_sockaddr_vm vm;
    memset(&vm, 0, sizeof vm);
    vm.svm_family = NE_AF_VSOCK;
    vm.svm_cid = cid;
    vm.svm_port = port;
    if (addr != NULL && len != NULL) {
        size_t room = *len < sizeof vm ? *len : sizeof vm;
        memcpy(addr, &vm, room);
    }
    if (len != NULL)
        *len = sizeof vm;
}

/* The VSOCK address in addr, or an errno (vsock_addr_validate: EINVAL, EAFNOSUPPORT). */
static int sockaddr_vm_in(const struct sockaddr *addr, socklen_t len, struct ne_sockaddr_vm *vm)
{
    if (addr == NULL)
        return EFAULT;
    if (len < sizeof *vm)
        return EINVAL;
    memcpy(vm, addr, sizeof *vm);
    if (vm->svm_family != NE_AF_VSOCK)
        return EAFNOSUPPORT;
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

/* Bind fd to the abstract Unix name (a leading NUL, then name); 0 or an errno. */
static int bind_abstract_name(int fd, const char *name)
{
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t n = strnlen(name, sizeof addr.sun_path - 1);
    memcpy(addr.sun_path + 1, name, n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
    return real_bind(fd, (struct sockaddr *)&addr, len) == 0 ? 0 : errno;
}

/* Is a listener alive at addr? A probe connect, as emulator/vsock/enclave.py does. */
static int listener_alive(const struct sockaddr_un *addr)
{
    int probe = real_socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return 1; /* cannot tell: do not remove anything */
    char name[64];
    snprintf(name, sizeof name, PROBE_PREFIX "%d:%u", (int)getpid(), random_port());
    if (bind_abstract_name(probe, name) != 0) {
        real_close(probe);
        return 1;
    }
    int alive = real_connect(probe, (const struct sockaddr *)addr, sizeof *addr) == 0 ||
                errno == EAGAIN;
    real_close(probe);
    return alive;
}

/* ---- VSOCK: the socket calls -------------------------------------------------------------- */

EXPORT int socket(int domain, int type, int protocol)
{
    if (domain != NE_AF_VSOCK)
        return real_socket(domain, type, protocol);
    if (protocol != 0 && protocol != NE_AF_VSOCK) {
        errno = EPROTONOSUPPORT;
        return -1;
    }
    if ((type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC)) != SOCK_STREAM) {
        errno = ESOCKTNOSUPPORT; /* the mirror carries streams only (docs/shim.md) */
        return -1;
    }
    int fd = real_socket(AF_UNIX, type, 0);
    if (fd < 0)
        return fd;
    struct fd_info info = {.kind = KIND_VSOCK, .state = VS_NEW, .local_cid = VMADDR_CID_ANY_,
                           .local_port = VMADDR_PORT_ANY_};
    if (fd_put(fd, &info) != 0) {
        real_close(fd);
        errno = EMFILE;
        return -1;
    }
    return fd;
}

static int fail(int error)
{
    errno = error;
    return -1;
}

EXPORT int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct fd_info info;
    if (!fd_get(fd, &info) || info.kind != KIND_VSOCK)
        return real_bind(fd, addr, len);
    struct ne_sockaddr_vm vm;
    int error = sockaddr_vm_in(addr, len, &vm);
    if (error != 0)
        return fail(error);
    if (info.state != VS_NEW)
        return fail(EINVAL); /* already bound */
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    if (mine < 0)
        return fail(EADDRNOTAVAIL);
    if (vm.svm_cid != VMADDR_CID_ANY_ && vm.svm_cid != (uint32_t)mine &&
        vm.svm_cid != VMADDR_CID_LOCAL_)
        return fail(EADDRNOTAVAIL);
    uint32_t port = vm.svm_port;
    char dir[PATH_MAX];
    error = listener_dir((uint32_t)mine, dir, sizeof dir);
    if (error != 0)
        return fail(error);
    if (port == VMADDR_PORT_ANY_) {
        port = random_port();
    } else {
        /* a live listener on the port: EADDRINUSE now, as the kernel's bind says */
        struct sockaddr_un target;
        int dirfd;
        if (unix_address(dir, port, &target, &dirfd) == 0) {
            struct stat st;
            int busy = stat(target.sun_path, &st) == 0 && S_ISSOCK(st.st_mode) &&
                       listener_alive(&target);
            if (dirfd >= 0)
                real_close(dirfd);
            if (busy)
                return fail(EADDRINUSE);
        }
    }
    info.state = VS_BOUND;
    info.local_cid = vm.svm_cid;
    info.local_port = port;
    fd_put(fd, &info);
    return 0;
}

static void make_dir(const char *path, mode_t mode)
{
    if (mkdir(path, mode) == 0)
        chmod(path, mode); /* architecture.md: runtime dirs 0777, beyond the umask */
}

/* Bind the Unix listener at <dir>/<port>, replacing a stale socket file; 0 or an errno. */
static int bind_listener(int fd, const char *dir, uint32_t port, struct fd_info *info)
{
    int in_enclave;
    own_cid(&in_enclave);
    if (!in_enclave) { /* the parent's dir may not exist yet: home 0700, run/ and parent/ 0777 */
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
    open_fn open_real = REAL(open_fn, "open", NULL);
    int lock = open_real != NULL ? open_real(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
    if (lock < 0)
        return errno == ENOENT ? EADDRNOTAVAIL : errno;
    flock(lock, LOCK_EX); /* the same lock as emulator/vsock/enclave.py's bind_listener */
    struct sockaddr_un addr;
    int dirfd;
    int error = unix_address(dir, port, &addr, &dirfd);
    if (error == 0) {
        struct stat st;
        if (lstat(addr.sun_path, &st) == 0) {
            if (!S_ISSOCK(st.st_mode) || listener_alive(&addr))
                error = EADDRINUSE;
            else
                unlink(addr.sun_path); /* left by a listener that died */
        }
    }
    if (error == 0 && real_bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0)
        error = errno;
    if (error == 0) {
        struct stat st;
        chmod(addr.sun_path, 0666);
        if (stat(addr.sun_path, &st) == 0) {
            info->owner = getpid();
            info->path_dev = st.st_dev;
            info->path_ino = st.st_ino;
        }
    }
    if (dirfd >= 0)
        real_close(dirfd);
    real_close(lock); /* releases the flock */
    return error;
}

EXPORT int listen(int fd, int backlog)
{
    listen_fn real_listen = REAL(listen_fn, "listen", NULL);
    if (real_listen == NULL)
        return fail(ENOSYS);
    struct fd_info info;
    if (!fd_get(fd, &info) || info.kind != KIND_VSOCK)
        return real_listen(fd, backlog);
    if (info.state == VS_LISTENING)
        return real_listen(fd, backlog);
    if (info.state != VS_BOUND)
        return fail(EINVAL); /* vsock_listen: not bound, or connected */
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    char dir[PATH_MAX];
    int error = mine < 0 ? EADDRNOTAVAIL : listener_dir((uint32_t)mine, dir, sizeof dir);
    if (error == 0)
        error = bind_listener(fd, dir, info.local_port, &info);
    if (error != 0)
        return fail(error);
    if (real_listen(fd, backlog) != 0)
        return -1;
    info.state = VS_LISTENING;
    info.named = 1;
    fd_put(fd, &info);
    return 0;
}

/* Remove a listener's socket file on close, if this process made it and it is still ours. */
static void remove_own_listener(int fd)
{
    struct fd_info info;
    if (!fd_get(fd, &info) || info.state != VS_LISTENING || info.owner != getpid())
        return;
    int saved = errno;
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    char dir[PATH_MAX];
    struct sockaddr_un addr;
    int dirfd = -1;
    if (mine >= 0 && listener_dir((uint32_t)mine, dir, sizeof dir) == 0 &&
        unix_address(dir, info.local_port, &addr, &dirfd) == 0) {
        struct stat st;
        if (stat(addr.sun_path, &st) == 0 && st.st_dev == info.path_dev &&
            st.st_ino == info.path_ino)
            unlink(addr.sun_path);
    }
    if (dirfd >= 0)
        real_close(dirfd);
    errno = saved;
}

/* Bind the abstract name that carries (own cid, port) to the peer; 0 or an errno. */
static int bind_abstract(int fd, uint32_t cid, uint32_t port)
{
    char name[64];
    snprintf(name, sizeof name, ABSTRACT_PREFIX "%u:%u", cid, port);
    return bind_abstract_name(fd, name);
}

EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
    struct fd_info info;
    if (!fd_get(fd, &info) || info.kind != KIND_VSOCK)
        return real_connect(fd, addr, len);
    struct ne_sockaddr_vm vm;
    int error = sockaddr_vm_in(addr, len, &vm);
    if (error != 0)
        return fail(error);
    if (info.state == VS_LISTENING)
        return fail(EINVAL);
    if (info.state == VS_CONNECTED)
        return fail(EISCONN);
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    if (mine < 0)
        return fail(EADDRNOTAVAIL);
    char dir[PATH_MAX];
    error = listener_dir(vm.svm_cid, dir, sizeof dir);
    if (error != 0)
        return fail(error);
    if (vm.svm_port == VMADDR_PORT_ANY_)
        return fail(EINVAL);
    if (!info.named) {
        if (info.state == VS_BOUND) {
            error = bind_abstract(fd, (uint32_t)mine, info.local_port);
        } else {
            for (int attempt = 0; attempt < 64; attempt++) {
                info.local_port = random_port();
                error = bind_abstract(fd, (uint32_t)mine, info.local_port);
                if (error != EADDRINUSE)
                    break;
            }
        }
        if (error != 0)
            return fail(error);
        info.named = 1;
        info.local_cid = (uint32_t)mine;
        fd_put(fd, &info);
    }
    struct sockaddr_un target;
    int dirfd;
    error = unix_address(dir, vm.svm_port, &target, &dirfd);
    if (error != 0)
        return fail(error);
    int result = real_connect(fd, (struct sockaddr *)&target, sizeof target);
    error = errno;
    if (dirfd >= 0)
        real_close(dirfd);
    if (result != 0 && (error == ENOENT || error == ENOTDIR))
        error = ECONNREFUSED; /* no listener file: nobody serves the port */
    /* EAGAIN (a full backlog) leaves the socket unconnected: the caller tries again */
    if (result == 0 || error == EINPROGRESS || error == EALREADY) {
        info.state = VS_CONNECTED;
        info.peer_cid = vm.svm_cid;
        info.peer_port = vm.svm_port;
        fd_put(fd, &info);
    }
    return result == 0 ? 0 : fail(error);
}

/* Whether an accepted peer is a liveness probe rather than a connection. */
static int is_probe_peer(const struct sockaddr_un *addr, socklen_t len)
{
    size_t head = offsetof(struct sockaddr_un, sun_path);
    size_t prefix = sizeof PROBE_PREFIX - 1;
    return len >= head + 1 + prefix && addr->sun_path[0] == '\0' &&
           memcmp(addr->sun_path + 1, PROBE_PREFIX, prefix) == 0;
}

/* The (cid, port) a peer's abstract name carries, or (ANY, ANY). */
static void decode_peer(const struct sockaddr_un *addr, socklen_t len, uint32_t *cid,
                        uint32_t *port)
{
    *cid = VMADDR_CID_ANY_;
    *port = VMADDR_PORT_ANY_;
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
    char *end = NULL;
    unsigned long c = strtoul(name + prefix, &end, 10);
    if (end == name + prefix || *end != ':' || c > 0xFFFFFFFFul)
        return;
    char *tail = NULL;
    unsigned long p = strtoul(end + 1, &tail, 10);
    if (tail == end + 1 || *tail != '\0' || p > 0xFFFFFFFFul)
        return;
    *cid = (uint32_t)c;
    *port = (uint32_t)p;
}

static int vsock_accept(int fd, struct sockaddr *addr, socklen_t *len, int flags, int plain)
{
    getaddr_fn accept_real = REAL(getaddr_fn, "accept", NULL);
    accept4_fn accept4_real = REAL(accept4_fn, "accept4", NULL);
    if ((plain && accept_real == NULL) || (!plain && accept4_real == NULL))
        return fail(ENOSYS);
    struct fd_info info;
    if (!fd_get(fd, &info) || info.kind != KIND_VSOCK)
        return plain ? accept_real(fd, addr, len) : accept4_real(fd, addr, len, flags);
    if (info.state != VS_LISTENING)
        return fail(EINVAL);
    struct sockaddr_un peer;
    socklen_t peer_len = sizeof peer;
    memset(&peer, 0, sizeof peer);
    int conn;
    for (;;) {
        peer_len = sizeof peer;
        memset(&peer, 0, sizeof peer);
        conn = plain ? accept_real(fd, (struct sockaddr *)&peer, &peer_len)
                     : accept4_real(fd, (struct sockaddr *)&peer, &peer_len, flags);
        if (conn < 0)
            return conn;
        if (!is_probe_peer(&peer, peer_len))
            break;
        real_close(conn); /* another process checking that this port is live, not a peer */
    }
    int in_enclave;
    int64_t mine = own_cid(&in_enclave);
    struct fd_info child = {.kind = KIND_VSOCK, .state = VS_CONNECTED, .named = 1,
                            .local_cid = mine < 0 ? VMADDR_CID_ANY_ : (uint32_t)mine,
                            .local_port = info.local_port};
    decode_peer(&peer, peer_len, &child.peer_cid, &child.peer_port);
    fd_put(conn, &child);
    if (addr != NULL)
        sockaddr_vm_out(addr, len, child.peer_cid, child.peer_port);
    return conn;
}

EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
    return vsock_accept(fd, addr, len, 0, 1);
}

EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
    return vsock_accept(fd, addr, len, flags, 0);
}

EXPORT int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
    struct fd_info info;
    if (!fd_get(fd, &info) || info.kind != KIND_VSOCK) {
        return CALL_REAL(getaddr_fn, "getsockname", NULL, (fd, addr, len));
    }
    if (addr == NULL || len == NULL)
        return fail(EFAULT);
    sockaddr_vm_out(addr, len, info.local_cid, info.local_port);
    return 0;
}

EXPORT int getpeername(int fd, struct sockaddr *addr, socklen_t *len)
{
    struct fd_info info;
    if (!fd_get(fd, &info) || info.kind != KIND_VSOCK)
        return real_getpeername(fd, addr, len);
    if (addr == NULL || len == NULL)
        return fail(EFAULT);
    if (info.state != VS_CONNECTED)
        return fail(ENOTCONN);
    struct sockaddr_un unused;
    socklen_t unused_len = sizeof unused;
    if (real_getpeername(fd, (struct sockaddr *)&unused, &unused_len) != 0)
        return -1; /* ENOTCONN while a non-blocking connect is still pending */
    sockaddr_vm_out(addr, len, info.peer_cid, info.peer_port);
    return 0;
}

/* AF_VSOCK-level options are accepted (buffer sizes, connect timeout) but change nothing. */
EXPORT int setsockopt(int fd, int level, int name, const void *value, socklen_t len)
{
    if (level == NE_AF_VSOCK && fd_kind(fd) == KIND_VSOCK)
        return value == NULL ? fail(EFAULT) : 0;
    return real_setsockopt(fd, level, name, value, len);
}

EXPORT int getsockopt(int fd, int level, int name, void *value, socklen_t *len)
{
    getsockopt_fn fn = REAL(getsockopt_fn, "getsockopt", NULL);
    if (fd_kind(fd) == KIND_VSOCK) {
        int answer = -1;
        uint64_t size = 0;
        if (level == SOL_SOCKET && name == SO_DOMAIN_)
            answer = NE_AF_VSOCK;
        else if (level == SOL_SOCKET && name == SO_PROTOCOL_)
            answer = 0;
        else if (level == NE_AF_VSOCK && name == SO_VM_SOCKETS_BUFFER_SIZE_)
            size = 262144; /* the kernel's defaults (af_vsock.c) */
        else if (level == NE_AF_VSOCK && name == SO_VM_SOCKETS_BUFFER_MIN_SIZE_)
            size = 128;
        else if (level == NE_AF_VSOCK && name == SO_VM_SOCKETS_BUFFER_MAX_SIZE_)
            size = 262144;
        else if (level == NE_AF_VSOCK)
            return fail(ENOPROTOOPT);
        if (answer >= 0 || size > 0) {
            if (value == NULL || len == NULL)
                return fail(EFAULT);
            size_t want = answer >= 0 ? sizeof answer : sizeof size;
            if (*len < want)
                return fail(EINVAL);
            memcpy(value, answer >= 0 ? (void *)&answer : (void *)&size, want);
            *len = (socklen_t)want;
            return 0;
        }
    }
    return fn != NULL ? fn(fd, level, name, value, len) : fail(ENOSYS);
}
