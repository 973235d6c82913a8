/*
 * nitro-emu-init: PID 1 of an enclave made from a nitro-cli EIF (docs/runtime.md).
 *
 * It does for the customer ramdisk what aws-nitro-enclaves-sdk-bootstrap's init/init.c does
 * after it has switched root to /rootfs (nitro-facts 3.6), as far as a program can observe:
 *   - chdir("/"): the image's WORKDIR is never honoured;
 *   - the environment is exactly the lines of `env` (NULL when `env` is empty: then only
 *     init's PATH), plus NITRO_EMU_* and LD_PRELOAD taken from our own environment (what
 *     nitro-emu needs: the NSM socket, the shim);
 *   - argv is the lines of `cmd` (`sh` when `cmd` is empty);
 *   - fork, setsid, putenv(init's PATH) and execvpe(argv[0], argv, envp): the command is looked
 *     up with /sbin:/usr/sbin:/bin:/usr/bin, not the image's PATH;
 *   - reap every child until the command exits; say "child exited with error" / "child exited
 *     by signal" as init does, and exit with its status (init reboots; nitro-emu's supervisor
 *     records the exit).
 * SIGTERM/SIGINT/SIGHUP are passed to the command's process group (terminate-enclave).
 *
 * Arguments (written by emulator/eif/nitro_cli_layout.py): ENV_COUNT|- HEX... CMD_COUNT|- HEX...
 * each line hex-encoded so that any byte but NUL and newline survives; "=" is an empty line.
 * Built static (no libc in the image is needed) by emulator/enclave/nitro_cli_init.py.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef NITRO_EMU_WITH_INTERCEPT
/* The syscall interceptor (emulator/shim/nitro_emu_intercept.c, on the include path): init
 * itself serves the command's /dev/nsm ioctls and AF_VSOCK calls, so that it stays PID 1 and
 * the command's parent, as on Nitro. On when $NITRO_EMU_INTERCEPT is "1". */
#define NITRO_EMU_INTERCEPT_EMBEDDED
#include "nitro_emu_intercept.c"
#endif

#define DEFAULT_PATH_ENV "PATH=/sbin:/usr/sbin:/bin:/usr/bin"

extern char **environ;
static pid_t child = -1;

static void die(const char *what) {
    fprintf(stderr, "nitro-emu-init: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int nibble(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static char *unhex(const char *text) {
    if (strcmp(text, "=") == 0) return strdup("");
    size_t length = strlen(text);
    if (length % 2) { fprintf(stderr, "nitro-emu-init: bad argument\n"); exit(1); }
    char *out = malloc(length / 2 + 1);
    if (out == NULL) die("malloc");
    for (size_t i = 0; i < length / 2; i++) {
        int high = nibble(text[2 * i]), low = nibble(text[2 * i + 1]);
        if (high < 0 || low < 0) { fprintf(stderr, "nitro-emu-init: bad argument\n"); exit(1); }
        out[i] = (char) (high * 16 + low);
    }
    out[length / 2] = 0;
    return out;
}

/* One list (env or cmd) from argv at *index: NULL for "-". */
static char **take_list(int argc, char **argv, int *index, size_t extra) {
    if (*index >= argc) { fprintf(stderr, "nitro-emu-init: missing arguments\n"); exit(1); }
    const char *count_text = argv[(*index)++];
    if (strcmp(count_text, "-") == 0) return NULL;
    long count = strtol(count_text, NULL, 10);
    if (count < 0 || *index + count > argc) { fprintf(stderr, "nitro-emu-init: bad count\n"); exit(1); }
    char **list = calloc((size_t) count + extra + 1, sizeof(char *));
    if (list == NULL) die("calloc");
    for (long i = 0; i < count; i++) list[i] = unhex(argv[(*index)++]);
    return list;
}

static int ours(const char *entry) {
    if (strncmp(entry, "NITRO_EMU_INTERCEPT=", 20) == 0) return 0; /* init's own switch */
    return strncmp(entry, "NITRO_EMU_", 10) == 0 || strncmp(entry, "LD_PRELOAD=", 11) == 0;
}

static int same_key(const char *a, const char *b) {
    const char *equals = strchr(b, '=');
    size_t length = equals ? (size_t) (equals - b) + 1 : strlen(b);
    return strncmp(a, b, length) == 0;
}

static void forward(int signal_number) {
    if (child > 0) kill(-child, signal_number);
}

int main(int argc, char **argv) {
    int index = 1;
    size_t own = 0;
    for (char **entry = environ; *entry; entry++) own += ours(*entry);
    char **env = take_list(argc, argv, &index, own + 1);
    char **cmd = take_list(argc, argv, &index, 0);
    static char *default_argv[] = { "sh", NULL };
    if (cmd == NULL) cmd = default_argv;
    if (env == NULL) {
        env = calloc(own + 2, sizeof(char *));
        if (env == NULL) die("calloc");
        env[0] = DEFAULT_PATH_ENV;
    }
    /* nitro-emu's own variables win over the image's of the same name */
    size_t used = 0;
    while (env[used]) used++;
    for (char **entry = environ; *entry; entry++) {
        if (!ours(*entry)) continue;
        size_t kept = 0;
        for (size_t i = 0; i < used; i++)
            if (!same_key(env[i], *entry)) env[kept++] = env[i];
        used = kept;
        env[used++] = *entry;
        env[used] = NULL;
    }

    struct sigaction action = { 0 };
    action.sa_handler = forward;
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGHUP, &action, NULL);

    if (chdir("/") != 0) die("chdir /");
    int intercept[2] = {-1, -1};
#ifdef NITRO_EMU_WITH_INTERCEPT
    const char *wanted = getenv("NITRO_EMU_INTERCEPT");
    if (wanted != NULL && strcmp(wanted, "1") == 0 && ne_intercept_available(cmd[0]) == 0 &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, intercept) != 0)
        die("socketpair");
#endif
    child = fork();
    if (child < 0) die("fork");
    if (child == 0) {
        sigset_t set;
        sigfillset(&set);
        sigprocmask(SIG_UNBLOCK, &set, 0);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        setsid();
        setpgid(0, 0);
        if (putenv(DEFAULT_PATH_ENV) != 0) die("putenv");
#ifdef NITRO_EMU_WITH_INTERCEPT
        if (intercept[1] >= 0) {
            close(intercept[0]);
            ne_intercept_child(intercept[1]);
        }
#endif
        execvpe(cmd[0], cmd, env);
        fprintf(stderr, "execvpe: %s: %s\n", cmd[0], strerror(errno));
        exit(1);
    }
#ifdef NITRO_EMU_WITH_INTERCEPT
    if (intercept[0] >= 0) {
        close(intercept[1]);
        if (ne_intercept_serve(intercept[0], cmd[0]) != 0 && notify_fd >= 0) {
            kill(-child, SIGKILL); /* filtered, but nobody can serve it */
            return 1;
        }
    }
#else
    (void) intercept;
#endif
    for (;;) {
        int status;
        pid_t pid = wait(&status);
        if (pid < 0) {
            if (errno == EINTR) continue;
            die("wait");
        }
        if (pid != child) continue;
        if (WIFEXITED(status)) {
            if (WEXITSTATUS(status) != 0) fputs("child exited with error\n", stderr);
            return WEXITSTATUS(status);
        }
        fputs("child exited by signal\n", stderr);
        return 128 + WTERMSIG(status);
    }
}
