/*
 * nskernel-init: PID 1 of a sandbox, once its command runs.
 *
 * Why C: the sandbox's init is forked from nskernel's Python launcher (the setup has to
 * run in Python, between fork and exec). Left as Python, it would keep a copy-on-write
 * image of the launcher's whole heap alive for the sandbox's lifetime, and every page
 * that init or the command touched became private to one of them: 1.5-2 MiB per
 * sandbox, and a share of the heap on top. The Python init therefore forks the command,
 * then execs this program, which holds a few pages.
 *
 * It does what nskernel/_linux/init.py's run_init_loop does, which stays the fallback
 * when this program was not built or cannot be executed:
 *   - reaps every zombie, not just the command's;
 *   - forwards TERM, HUP, QUIT, USR1, USR2 to the command, and SIGINT to the command's
 *     process group when SIGINT_TO_GROUP is 1 (the sandbox has a session of its own);
 *     with 0 the command shares the caller's process group, which already got it;
 *   - exits with the command's status (128+N when it died of signal N), which takes
 *     the rest of the PID namespace down with it;
 *   - kills the whole sandbox when the lifeline pipe reaches EOF (the host side is gone).
 * Without a PID namespace it is a child subreaper (set before the command was forked)
 * and kills the command's descendants.
 *
 * Usage (by nskernel only):
 *   nskernel-init CHILD_PID LIFELINE_FD WAKE_FD PID_NAMESPACE SIGINT_TO_GROUP
 *   nskernel-init spawn LIFELINE_FD WAKE_FD PID_NAMESPACE SIGINT_TO_GROUP PLAN_FD
 *   WAKE_FD: the Python init's signal wake-up pipe (signal numbers it caught before the
 *   exec), or -1. The caller blocks the handled signals before the exec: blocked
 *   signals stay pending across it, and signalfd reads them here.
 *
 * "spawn": the command is not running yet; this program forks it and makes the
 * command's last setup steps itself (spawn_command below), as the Python init's _command_main
 * does for a command that is exec'd. Why: forking the command from the Python init
 * copied the launcher's whole address space once more, and the command then paid
 * copy-on-write faults for every step it ran in Python and the teardown of that copy at
 * its exec (measured: 2-3 ms of every sandbox's start, see README "Speed"). PLAN_FD is a
 * memfd holding what the command needs (read_spawn_plan says the format), written by the Python
 * init before any code of the sandbox runs.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static const int forwarded[] = {SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
#define N_FORWARDED (sizeof forwarded / sizeof forwarded[0])

static pid_t child;
static int sigint_to_group;
static int child_code = -1; /* the command's exit code, once reaped */

static void forward(int sig) {
    if (sig == SIGINT && sigint_to_group) {
        kill(-child, SIGINT); /* the command leads its own process group */
        return;
    }
    for (size_t i = 0; i < N_FORWARDED; i++)
        if (forwarded[i] == sig) {
            kill(child, sig);
            return;
        }
}

static int code_of(int status) {
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static void reap_all(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0)
        if (pid == child)
            child_code = code_of(status);
}

/* Without a PID namespace: SIGKILL every descendant, found through
 * /proc/PID/task/TID/children, until none is left (new ones may appear meanwhile). */
static int kill_descendants_once(pid_t root) {
    static pid_t stack[65536];
    size_t top = 0;
    int killed = 0;
    stack[top++] = root;
    while (top > 0) {
        pid_t p = stack[--top];
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/task", (int)p);
        DIR *tasks = opendir(path);
        if (!tasks)
            continue;
        struct dirent *t;
        while ((t = readdir(tasks)) != NULL) {
            if (t->d_name[0] == '.')
                continue;
            char cpath[320];
            snprintf(cpath, sizeof cpath, "/proc/%d/task/%s/children", (int)p, t->d_name);
            FILE *f = fopen(cpath, "re");
            if (!f)
                continue;
            int kid;
            while (fscanf(f, "%d", &kid) == 1) {
                kill(kid, SIGKILL);
                killed++;
                if (top < sizeof stack / sizeof stack[0])
                    stack[top++] = kid;
            }
            fclose(f);
        }
        closedir(tasks);
    }
    return killed;
}

static void kill_everything(int pid_namespace) {
    if (pid_namespace) {
        kill(-1, SIGKILL); /* as PID 1: every other process of the namespace */
        return;
    }
    for (int round = 0; round < 10; round++) {
        if (kill_descendants_once(getpid()) == 0)
            return;
        reap_all();
    }
}

/* ------------------------------------------------------------------ spawn mode
 *
 * The command's last setup steps, in the order of contain.py's _command_main (which
 * remains the path for a Python target, for the Python init, and whenever this program
 * cannot be executed): default dispositions for the signals the Python side handled or
 * ignored, an empty signal mask, passed descriptors made inheritable, a session or
 * process group of its own (and its controlling terminal), rlimits, every other
 * descriptor closed, then the confinement -- bounding set, capset, ambient set,
 * no_new_privs, the seccomp filter -- and exec with the shell's exit codes on failure.
 * Any failure before exec reports why on the report pipe and exits: the command never
 * runs unconfined.
 */

struct spawn_plan {
    int report_fd, new_session, tty_fd, confined, last_cap;
    unsigned long long cap_mask;
    int seccomp_flags;
    int n_pass, *pass;
    int n_rlimits, *rl_resource;
    long long *rl_value;
    char **argv, **envp;
    unsigned char *prog;
    size_t prog_len;
};

/* The plan: NUL-terminated decimal fields and strings, then the filter's raw bytes:
 *   "nsk1" report_fd new_session tty_fd confined last_cap cap_mask seccomp_flags
 *   n_pass pass... n_rlimits (resource value)... n_argv argv... n_env env... prog_len
 *   <prog_len bytes>
 * Written by the Python init (contain._native_spawn_plan) from the launcher's plan. */
struct cursor {
    char *p, *end;
};

static char *next_field(struct cursor *c) {
    char *start = c->p;
    char *nul = memchr(start, '\0', (size_t)(c->end - start));
    if (!nul)
        return NULL;
    c->p = nul + 1;
    return start;
}

static int next_num(struct cursor *c, long long *out) {
    char *f = next_field(c), *rest;
    if (!f || !*f)
        return -1;
    errno = 0;
    *out = strtoll(f, &rest, 10);
    return (errno || *rest) ? -1 : 0;
}

static int next_count(struct cursor *c, int *out) {
    long long v;
    if (next_num(c, &v) != 0 || v < 0 || v > 1 << 20)
        return -1;
    *out = (int)v;
    return 0;
}

static int read_spawn_plan(int fd, struct spawn_plan *sp) {
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size <= 0 || st.st_size > (64 << 20))
        return -1;
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size);
    if (!buf)
        return -1;
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, buf + got, size - got, (off_t)got);
        if (n <= 0)
            return -1;
        got += (size_t)n;
    }
    close(fd);
    struct cursor c = {buf, buf + size};
    long long v[7];
    char *magic = next_field(&c);
    if (!magic || strcmp(magic, "nsk1") != 0)
        return -1;
    for (int i = 0; i < 7; i++)
        if (next_num(&c, &v[i]) != 0)
            return -1;
    sp->report_fd = (int)v[0];
    sp->new_session = (int)v[1];
    sp->tty_fd = (int)v[2];
    sp->confined = (int)v[3];
    sp->last_cap = (int)v[4];
    sp->cap_mask = (unsigned long long)v[5];
    sp->seccomp_flags = (int)v[6];
    if (next_count(&c, &sp->n_pass) != 0)
        return -1;
    sp->pass = calloc((size_t)sp->n_pass + 1, sizeof(int));
    for (int i = 0; i < sp->n_pass; i++) {
        long long fdv;
        if (next_num(&c, &fdv) != 0)
            return -1;
        sp->pass[i] = (int)fdv;
    }
    if (next_count(&c, &sp->n_rlimits) != 0)
        return -1;
    sp->rl_resource = calloc((size_t)sp->n_rlimits + 1, sizeof(int));
    sp->rl_value = calloc((size_t)sp->n_rlimits + 1, sizeof(long long));
    for (int i = 0; i < sp->n_rlimits; i++) {
        long long r;
        if (next_num(&c, &r) != 0 || next_num(&c, &sp->rl_value[i]) != 0)
            return -1;
        sp->rl_resource[i] = (int)r;
    }
    int n;
    for (int which = 0; which < 2; which++) {
        if (next_count(&c, &n) != 0 || (which == 0 && n == 0))
            return -1;
        char **list = calloc((size_t)n + 1, sizeof(char *));
        for (int i = 0; i < n; i++)
            if (!(list[i] = next_field(&c)))
                return -1;
        if (which == 0)
            sp->argv = list;
        else
            sp->envp = list;
    }
    long long plen;
    if (next_num(&c, &plen) != 0 || plen < 0 || plen != (long long)(c.end - c.p) || plen % 8)
        return -1;
    sp->prog = (unsigned char *)c.p;
    sp->prog_len = (size_t)plen;
    if (sp->confined && sp->prog_len == 0 && sp->seccomp_flags)
        return -1;
    return 0;
}

/* JSON-escaped copy of s (bounded): every byte outside printable ASCII as \u00XX. */
static void json_text(char *out, size_t cap, const char *s) {
    size_t o = 0;
    for (; *s && o + 7 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            o += (size_t)snprintf(out + o, cap - o, "\\u%04x", ch);
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
}

/* One line on the report pipe (one write, under PIPE_BUF: atomic), then exit. */
static void fail(const struct spawn_plan *sp, const char *step, int err, const char *why,
                 int code) {
    char whyj[1200], cmdj[1200], line[3000];
    json_text(whyj, sizeof whyj, why);
    json_text(cmdj, sizeof cmdj, sp->argv[0]);
    int n = snprintf(line, sizeof line,
                     "{\"event\": \"error\", \"step\": \"%s\", \"errno\": %d, \"strerror\": "
                     "\"%s\", \"command\": \"%s\", \"exit_code\": %d}\n",
                     step, err, whyj, cmdj, code);
    if (n > 0 && (size_t)n < sizeof line && write(sp->report_fd, line, (size_t)n) < 0) {
        /* the launcher is gone: exiting is all that is left */
    }
    _exit(code);
}

static void fail_call(const struct spawn_plan *sp, const char *step, const char *call, int code) {
    int err = errno;
    char why[600];
    snprintf(why, sizeof why, "[Errno %d] %s: %s", err, call, strerror(err));
    fail(sp, step, err, why, code);
}

/* A step the Python path does not report either (it raised, printed a traceback and
 * exited 1): say it on stderr and exit 1. */
static void fail_quietly(const char *call) {
    dprintf(2, "nskernel: %s failed: %s\n", call, strerror(errno));
    _exit(1);
}

static const char *env_value(char **envp, const char *name) {
    size_t len = strlen(name);
    for (; *envp; envp++)
        if (strncmp(*envp, name, len) == 0 && (*envp)[len] == '=')
            return *envp + len + 1;
    return NULL;
}

/* os.path.join(dir, file) for a PATH entry: an empty entry means the file as given. */
static int join_path(char *out, size_t cap, const char *dir, size_t dlen, const char *file) {
    int n;
    if (dlen == 0)
        n = snprintf(out, cap, "%s", file);
    else if (dir[dlen - 1] == '/')
        n = snprintf(out, cap, "%.*s%s", (int)dlen, dir, file);
    else
        n = snprintf(out, cap, "%.*s/%s", (int)dlen, dir, file);
    return n > 0 && (size_t)n < cap ? 0 : -1;
}

/* shutil.which(file, path=path) != None: an executable non-directory on the path. */
static int found_on_path(const char *file, const char *path) {
    char full[4096];
    struct stat st;
    if (!*path)
        return 0;
    for (const char *dir = path;; dir++) {
        const char *colon = strchr(dir, ':');
        size_t dlen = colon ? (size_t)(colon - dir) : strlen(dir);
        if (join_path(full, sizeof full, dir, dlen, file) == 0 && stat(full, &st) == 0 &&
            !S_ISDIR(st.st_mode) && access(full, X_OK) == 0)
            return 1;
        if (!colon)
            return 0;
        dir = colon;
    }
}

/* os.execvpe: PATH from the command's environment (default /bin:/usr/bin); ENOENT and
 * ENOTDIR move on to the next entry, the first other error is the one reported. */
static int exec_search(char **argv, char **envp, const char **path_out) {
    const char *file = argv[0];
    const char *path = env_value(envp, "PATH");
    if (!path)
        path = "/bin:/usr/bin";
    *path_out = path;
    if (strchr(file, '/')) {
        execve(file, argv, envp);
        return errno;
    }
    int saved = 0, last = ENOENT;
    char full[4096];
    for (const char *dir = path;; dir++) {
        const char *colon = strchr(dir, ':');
        size_t dlen = colon ? (size_t)(colon - dir) : strlen(dir);
        if (join_path(full, sizeof full, dir, dlen, file) == 0) {
            execve(full, argv, envp);
            last = errno;
            if (last != ENOENT && last != ENOTDIR && !saved)
                saved = last;
        } else { /* what execve would have said of the joined path */
            last = ENAMETOOLONG;
            if (!saved)
                saved = last;
        }
        if (!colon)
            break;
        dir = colon;
    }
    return saved ? saved : last;
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Close every descriptor above 2 but the kept ones (close_range over the gaps). */
static void close_all_but(int *keep, int n) {
    qsort(keep, (size_t)n, sizeof(int), cmp_int);
    unsigned int lo = 3;
    for (int i = 0; i <= n; i++) {
        unsigned int hi = i < n ? (unsigned int)keep[i] : ~0U;
        if (i < n && keep[i] < 3)
            continue;
#ifdef SYS_close_range
        long closed = hi > lo ? syscall(SYS_close_range, lo, hi - 1, 0) : 0;
#else
        long closed = -1; /* headers older than Linux 5.9: one by one */
#endif
        if (hi > lo && closed != 0) {
            /* The open ones, as listed (the sandbox's own /proc is mounted by now); a
             * descriptor may lie above RLIMIT_NOFILE if the limit was lowered later. */
            DIR *d = opendir("/proc/self/fd");
            if (d) {
                struct dirent *e;
                while ((e = readdir(d)) != NULL) {
                    long fd = strtol(e->d_name, NULL, 10);
                    if (e->d_name[0] != '.' && fd >= (long)lo && fd < (long)hi && fd != dirfd(d))
                        close((int)fd);
                }
                closedir(d);
            } else {
                for (unsigned int fd = lo; fd < hi && fd < (1U << 20); fd++)
                    close((int)fd);
            }
        }
        if (i < n)
            lo = (unsigned int)keep[i] + 1;
    }
}

static void spawn_command(struct spawn_plan *sp) {
    /* Signals: the ones the Python side handled or ignores, back to their defaults
     * (ignored signals survive exec: `yes | head -1` must end by SIGPIPE), then none
     * blocked. */
    static const int reset[] = {SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
                                SIGCHLD, SIGINT,  SIGPIPE, SIGXFSZ};
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++)
        signal(reset[i], SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    /* The report pipe closes at exec: EOF tells the launcher the command runs. */
    if (fcntl(sp->report_fd, F_SETFD, FD_CLOEXEC) != 0)
        fail_quietly("fcntl(report, FD_CLOEXEC)");
    for (int i = 0; i < sp->n_pass; i++)
        if (fcntl(sp->pass[i], F_SETFD, 0) != 0)
            fail_quietly("fcntl(pass_fd, inheritable)");
    if (sp->tty_fd >= 0) {
        if (setsid() < 0) /* only a session leader may take a controlling terminal */
            fail_quietly("setsid");
        if (ioctl(sp->tty_fd, TIOCSCTTY, 0) != 0)
            fail_quietly("ioctl(TIOCSCTTY)");
        /* Taken as the controlling terminal, it is open as 0-2 already: the command gets
         * no extra descriptor of it unless it was passed (red team 37 F1), as with the
         * Python init, whose descriptors close at exec unless passed. */
        int passed = 0;
        for (int i = 0; i < sp->n_pass; i++)
            passed |= sp->pass[i] == sp->tty_fd;
        if (sp->tty_fd > 2 && !passed && fcntl(sp->tty_fd, F_SETFD, FD_CLOEXEC) != 0)
            fail_quietly("fcntl(tty, FD_CLOEXEC)");
    } else if (sp->new_session && setpgid(0, 0) != 0) { /* a group init sends SIGINT to */
        fail_quietly("setpgid");
    }
    for (int i = 0; i < sp->n_rlimits; i++) {
        rlim_t v = sp->rl_value[i] < 0 ? RLIM_INFINITY : (rlim_t)sp->rl_value[i];
        struct rlimit rl = {v, v};
        if (setrlimit(sp->rl_resource[i], &rl) != 0)
            fail_quietly("setrlimit");
    }
    /* The sandbox starts with fds 0-2 plus exactly what it was passed. */
    int nkeep = 0;
    int *keep = calloc((size_t)sp->n_pass + 2, sizeof(int));
    keep[nkeep++] = sp->report_fd;
    for (int i = 0; i < sp->n_pass; i++)
        keep[nkeep++] = sp->pass[i];
    if (sp->tty_fd >= 0)
        keep[nkeep++] = sp->tty_fd;
    close_all_but(keep, nkeep);

    if (sp->confined) {
        /* Capabilities (caps.apply_mask_from_child): the bounding set, CAP_SETPCAP last
         * since each drop needs it; then permitted/effective lowered, inheritable and
         * ambient emptied. */
        for (int pass = 0; pass < 2; pass++)
            for (int cap = 0; cap <= sp->last_cap; cap++) {
                if ((pass == 0) == (cap == CAP_SETPCAP) || (sp->cap_mask >> cap) & 1)
                    continue;
                if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
                    char call[64];
                    snprintf(call, sizeof call, "prctl(PR_CAPBSET_DROP, %d)", cap);
                    fail_call(sp, "confine", call, 125);
                }
            }
        struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
        struct __user_cap_data_struct data[2];
        if (syscall(SYS_capget, &hdr, data) != 0)
            fail_call(sp, "confine", "capget", 125);
        for (int i = 0; i < 2; i++) {
            uint32_t part = (uint32_t)(sp->cap_mask >> (32 * i));
            data[i].permitted &= part;
            data[i].effective &= part;
            data[i].inheritable = 0;
        }
        if (syscall(SYS_capset, &hdr, data) != 0)
            fail_call(sp, "confine", "capset", 125);
        if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL)
            fail_call(sp, "confine", "prctl(PR_CAP_AMBIENT_CLEAR_ALL)", 125);
        /* seccomp.install_from_child: no_new_privs always, then the filter, if any. */
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
            fail_call(sp, "confine", "prctl(PR_SET_NO_NEW_PRIVS)", 125);
        if (sp->prog_len) {
            struct sock_fprog prog = {(unsigned short)(sp->prog_len / 8),
                                      (struct sock_filter *)(void *)sp->prog};
            long r = sp->seccomp_flags
                         ? syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                                   (unsigned long)sp->seccomp_flags, &prog)
                         : prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
            if (r != 0)
                fail_call(sp, "confine", "install the seccomp filter", 125);
        }
    }

    const char *path;
    int err = exec_search(sp->argv, sp->envp, &path);
    /* contain._exec_failure: 127 when not found, 126 when found but not runnable. */
    if (err == ENOENT || (!strchr(sp->argv[0], '/') && !found_on_path(sp->argv[0], path)))
        fail(sp, "exec", err, "command not found", 127);
    fail(sp, "exec", err, strerror(err), 126);
}

int main(int argc, char **argv) {
    int spawn_mode = argc == 7 && strcmp(argv[1], "spawn") == 0;
    if (argc != 6 && !spawn_mode) {
        fprintf(stderr, "nskernel-init: started by nskernel only "
                        "(CHILD_PID LIFELINE_FD WAKE_FD PID_NAMESPACE SIGINT_TO_GROUP)\n");
        return 125;
    }
    struct spawn_plan plan;
    if (spawn_mode) {
        if (read_spawn_plan(atoi(argv[6]), &plan) != 0) {
            /* Nothing of the sandbox runs: init exits, and with it the sandbox. */
            fprintf(stderr, "nskernel-init: unreadable spawn plan (a bug in nskernel)\n");
            return 125;
        }
    } else {
        child = (pid_t)atoi(argv[1]);
    }
    int lifeline = atoi(argv[2]);
    int wake = atoi(argv[3]);
    int pid_namespace = atoi(argv[4]);
    sigint_to_group = atoi(argv[5]);

    /* The exec named us after the descriptor it ran ("3"); ps and the benchmarks look
     * for this name, as the Python init sets it too. */
    prctl(PR_SET_NAME, "nskernel-init", 0, 0, 0);
    /* Not dumpable: only a holder of CAP_SYS_PTRACE over the sandbox's user namespace
     * may ptrace us (or read our memory), and sandbox root's capability set lacks it.
     * exec made us dumpable again; the command, already running, has fewer capabilities
     * than we do, which also keeps it from attaching in between. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* Without a PID namespace the Python side made us a child subreaper before it
     * forked the command (an orphan must not slip out in between); exec keeps that. */

    sigset_t handled;
    sigemptyset(&handled);
    for (size_t i = 0; i < N_FORWARDED; i++)
        sigaddset(&handled, forwarded[i]);
    sigaddset(&handled, SIGCHLD);
    sigaddset(&handled, SIGINT);
    sigprocmask(SIG_BLOCK, &handled, NULL); /* already blocked by the caller: no gap */
    int sfd = signalfd(-1, &handled, SFD_CLOEXEC);
    if (sfd < 0) {
        perror("nskernel-init: signalfd");
        kill_everything(pid_namespace);
        return 125;
    }

    if (spawn_mode) {
        /* The handled signals are blocked (the command unblocks them) and their pending
         * instances stay with us: a fork does not inherit pending signals. */
        child = fork();
        if (child == 0)
            spawn_command(&plan); /* never returns */
        close(plan.report_fd); /* EOF for the launcher comes from the command's exec */
        /* What was passed is the command's alone (the Python path's init never held it
         * past its exec either). */
        for (int i = 0; i < plan.n_pass; i++)
            if (plan.pass[i] > 2)
                close(plan.pass[i]);
        if (plan.tty_fd > 2)
            close(plan.tty_fd);
        if (child < 0) {
            perror("nskernel-init: fork the command");
            kill_everything(pid_namespace);
            return 125;
        }
    }

    if (wake >= 0) { /* signals the Python init caught before it exec'd us */
        unsigned char sigs[512];
        ssize_t n;
        while ((n = read(wake, sigs, sizeof sigs)) > 0)
            for (ssize_t i = 0; i < n; i++)
                forward(sigs[i]);
        close(wake);
    }

    for (;;) {
        reap_all();
        if (child_code >= 0)
            break;
        struct pollfd fds[2] = {{lifeline, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            perror("nskernel-init: poll");
            kill_everything(pid_namespace);
            return 125;
        }
        if (fds[0].revents) {
            char buf[64];
            ssize_t n = read(lifeline, buf, sizeof buf);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) {
                /* The host side is gone: nobody may outlive it. */
                kill_everything(pid_namespace);
                return 128 + SIGKILL;
            }
        }
        if (fds[1].revents & POLLIN) {
            struct signalfd_siginfo info[16];
            ssize_t n = read(sfd, info, sizeof info);
            for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof info[0]; i++)
                forward((int)info[i].ssi_signo);
        }
    }
    kill_everything(pid_namespace);
    return child_code;
}
