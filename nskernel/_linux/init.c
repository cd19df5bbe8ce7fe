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
 *   WAKE_FD: the Python init's signal wake-up pipe (signal numbers it caught before the
 *   exec), or -1. The caller blocks the handled signals before the exec: blocked
 *   signals stay pending across it, and signalfd reads them here.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
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

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "nskernel-init: started by nskernel only "
                        "(CHILD_PID LIFELINE_FD WAKE_FD PID_NAMESPACE SIGINT_TO_GROUP)\n");
        return 125;
    }
    child = (pid_t)atoi(argv[1]);
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
