/*
** vfork.c: starting a program in a child, for spawn.c: a clone of braid's
** thread that shares its memory (clone(CLONE_VM | CLONE_VFORK), as musl's
** and glibc's posix_spawn do) and, before exec, sets the child's signals,
** process group, parent-death signal, stdio and directory, then searches
** the program in PATH as execvp does.
**
** Why not posix_spawn (which spawn.c used until issue 15c): per child it
** cost braid's process some eight system calls more (glibc maps and unmaps
** a stack for each spawn and asks getrlimit for each file action; braid's
** PATH search ran access() in the parent), and it cannot set
** PR_SET_PDEATHSIG, which needs a hook between clone and exec.
**
** Invariants:
** - The spawning thread is suspended from the clone until the child execs
**   or exits (CLONE_VFORK). So the child can run on a stack that is a local
**   array of that thread's own stack (no mmap per spawn) and can tell
**   exec's failure through the shared struct vf_args (err). braid's other
**   threads (workers) run on; the child touches nothing of theirs.
** - The child only makes raw system calls (syscall(2)): no libc wrapper
**   that keeps state, takes a lock or is intercepted by a sanitizer (ASan's
**   _exit would run the leak check in braid's memory), no malloc. Its
**   functions (VF_CHILD) are not instrumented by ASan, UBSan or TSan, and
**   it writes only its stack, vf_args and errno (the suspended thread's).
**   TSan intercepts clone itself (newer runtimes model it as a fork:
**   their bookkeeping, run in the child, would write the parent's state);
**   under TSan glibc's other name for it, __clone, is called instead.
** - Every signal (glibc's own 32 and 33 too: a raw rt_sigprocmask, as
**   pthread_sigmask leaves those) is blocked from before the clone until
**   the child has set every disposition to SIG_DFL; only then does it
**   empty its mask. So no
**   handler of braid's ever runs in the child (it would run on braid's
**   memory), and the child gets what POSIX_SPAWN_SETSIGDEF for all signals
**   and an empty SETSIGMASK gave: default dispositions, ignored ones too.
** - PR_SET_PDEATHSIG(SIGKILL): the child is killed when the thread that
**   spawned it ends, which for braid's runner is braid's end, a SIGKILL
**   included; a worker's thread ends only after its engine has reaped every
**   child of its own (the loop runs until then). It is set before exec,
**   then the parent is looked for once more (a braid killed before the
**   prctl has nobody to send it: the child exits). exec of a set-uid or
**   set-gid program clears it; the child's own children never get it.
** - Where the clone is really a fork (valgrind and qemu-user run
**   CLONE_VM|CLONE_VFORK so: the memory is copied, braid does not wait),
**   exec's failure cannot come back. The child's first write (ran) tells
**   which it is, on the first spawn; until it is known to be shared, the
**   parent first checks that the program exists (access), so a missing
**   program still raises at the call there (a non-executable one reads as
**   a child exiting 127).
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "io/process.h"

extern char **environ;

/* The child's code: no sanitizer instrumentation (clang's
** no_sanitize("thread") keeps TSan's function entry and exit hooks, which
** would write the suspended thread's TSan state). */
#if defined(__has_attribute)
#if __has_attribute(disable_sanitizer_instrumentation)
#define VF_NOINSTR __attribute__((disable_sanitizer_instrumentation))
#endif
#endif
#ifndef VF_NOINSTR
#define VF_NOINSTR
#endif
#define VF_CHILD \
  __attribute__((no_sanitize("address", "undefined", "thread"))) VF_NOINSTR

#if defined(__SANITIZE_THREAD__)
#define VF_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define VF_TSAN 1
#endif
#endif
#ifdef VF_TSAN
extern int __clone(int (*fn)(void *), void *stack, int flags, void *arg, ...);
#define VF_CLONE __clone
#else
#define VF_CLONE clone
#endif

/* The child's stack: its frames and a PATH candidate's 4 KiB. */
#define VF_STACK 16384
#define VF_PATHMAX 4096
#define VF_SIGSETSIZE (_NSIG / 8)   /* the kernel's sigset_t */

/* What the child is to do, and what it says back (shared memory). */
struct vf_args {
  const char *file;            /* as given */
  const char *path;            /* PATH to search file in; NULL: has a '/' */
  const char *cwd;             /* NULL: braid's */
  char *const *argv, *const *envp;
  int fd[3];                   /* braid_spawn_opts' */
  int group;
  pid_t parent;                /* braid's pid, for the PDEATHSIG check */
  int err;                     /* the child's: why it exits 127 */
  int ran;                     /* the child's first write */
};

/* ---- the child ---- */

/* Sets the child's stdio (o->fd's plan); returns -1 with errno. */
VF_CHILD static int vf_stdio (const struct vf_args *a) {
  int i, src[3];
  long n;
  for (i = 0; i < 3; i++) {
    src[i] = a->fd[i];
    /* moved above the stdio numbers first: a dup onto 0-2 must not
    ** clobber another one's source (the fd table is the child's copy) */
    if (src[i] >= 0 && src[i] <= 2) {
      if ((n = syscall(SYS_fcntl, src[i], F_DUPFD_CLOEXEC, 3)) < 0) return -1;
      src[i] = (int) n;
    }
  }
  for (i = 0; i < 3; i++) {
    if (src[i] >= 0) {
      if (syscall(SYS_dup3, src[i], i, 0) < 0) return -1;
    } else if (src[i] == BRAID_FD_STDOUT ||
               (i == 2 && src[2] == BRAID_FD_NULL && src[1] == BRAID_FD_NULL)) {
      /* 2>&1; or both to /dev/null: one open of it for both */
      if (i != 1 && syscall(SYS_dup3, 1, i, 0) < 0) return -1;
    } else if (src[i] == BRAID_FD_NULL) {
      n = syscall(SYS_openat, AT_FDCWD, "/dev/null",
                  i == 0 ? O_RDONLY : O_WRONLY);
      if (n < 0) return -1;
      if (n != i) {
        if (syscall(SYS_dup3, n, i, 0) < 0) return -1;
        syscall(SYS_close, n);
      }
    }
  }
  return 0;
}

/* The PATH entry at dir joined with file, in buf (VF_PATHMAX bytes): 1 if
** it all fitted; *next is the entry after it, or NULL after the last.
** Copied by hand: a compiler could make a counted loop a memcpy call,
** which a sanitizer intercepts (the parent calls it too: vf_probe). */
VF_CHILD static int vf_candidate (char *buf, const char *dir,
                                  const char *file, const char **next) {
  char *b = buf, *end = buf + VF_PATHMAX - 1;
  const char *s = dir, *f = file;
  int fits;
  while (*s && *s != ':' && b < end) *b++ = *s++;
  if (b == buf) *b++ = '.';  /* an empty entry: the directory */
  if (b < end) *b++ = '/';
  while (*f && b < end) *b++ = *f++;
  *b = '\0';
  fits = *f == '\0' && (*s == '\0' || *s == ':');
  while (*s && *s != ':') s++;
  *next = *s ? s + 1 : NULL;
  return fits;
}

/* execve of the program, searched in a->path as execvp does: a missing
** candidate (ENOENT, ENOTDIR) lets the search go on, so does one that
** cannot be executed (EACCES), which is the error if nothing else runs;
** any other error ends it. Returns only on failure, with errno. */
VF_CHILD static void vf_exec (const struct vf_args *a) {
  char buf[VF_PATHMAX];
  const char *dir = a->path;
  int eacces = 0;
  if (dir == NULL) {
    syscall(SYS_execve, a->file, a->argv, a->envp);
    return;
  }
  while (dir) {
    if (vf_candidate(buf, dir, a->file, &dir)) {
      syscall(SYS_execve, buf, a->argv, a->envp);
      if (errno == EACCES) eacces = 1;
      else if (errno != ENOENT && errno != ENOTDIR) return;
    }
  }
  errno = eacces ? EACCES : ENOENT;
}

VF_CHILD static int vf_child (void *arg) {
  /* a kernel struct sigaction at SIG_DFL (all zero), an empty set */
  static const unsigned long dfl[8], empty[4];
  struct vf_args *a = (struct vf_args *) arg;
  int sig;
  a->ran = 1;
  for (sig = 1; sig < _NSIG; sig++)
    if (sig != SIGKILL && sig != SIGSTOP)
      syscall(SYS_rt_sigaction, sig, dfl, NULL, VF_SIGSETSIZE);
  if (a->group && syscall(SYS_setpgid, 0, 0) != 0) goto fail;
  if (syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) goto fail;
  if (syscall(SYS_getppid) != a->parent) {   /* braid died meanwhile */
    syscall(SYS_exit_group, 127);
    return 127;
  }
  if (vf_stdio(a) != 0) goto fail;
  if (a->cwd && syscall(SYS_chdir, a->cwd) != 0) goto fail;
  if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, empty, NULL,
              VF_SIGSETSIZE) != 0) goto fail;
  vf_exec(a);
fail:
  a->err = errno ? errno : ENOEXEC;
  syscall(SYS_exit_group, 127);
  return 127;
}

/* ---- braid's side ---- */

/* 1 once the clone is known to share memory, 2 to be a fork; 0: not yet. */
static int vf_mode;

/* PATH from the environment the child gets. */
static const char *env_path (char **env) {
  char **e;
  if (env == NULL) return getenv("PATH");
  for (e = env; *e; e++)
    if (strncmp(*e, "PATH=", 5) == 0) return *e + 5;
  return NULL;
}

/* Does the candidate exist, as the child would look for it (a relative
** one from its cwd)? Returns 0 or an errno. */
static int vf_exists (const char *cand, const char *cwd) {
  char buf[VF_PATHMAX];
  if (cwd && cand[0] != '/') {
    if (snprintf(buf, sizeof buf, "%s/%s", cwd, cand) >= (int) sizeof buf)
      return 0;                /* too long to tell: exec tells */
    cand = buf;
  }
  return access(cand, F_OK) == 0 ? 0 : errno;
}

/* Where exec's failure may not come back: does the program exist?
** Returns 0 or an errno. */
static int vf_probe (const struct vf_args *a) {
  char buf[VF_PATHMAX];
  const char *dir = a->path;
  if (dir == NULL) return vf_exists(a->file, a->cwd);
  while (dir)
    if (vf_candidate(buf, dir, a->file, &dir) && vf_exists(buf, a->cwd) == 0)
      return 0;
  return ENOENT;
}

int braid__vfork_start (const struct braid_spawn_opts *o, int *pid) {
  struct vf_args a;
  char stack[VF_STACK] __attribute__((aligned(16)));
  /* the kernel's sigsets: glibc's pthread_sigmask would leave its own
  ** signals (32, 33) deliverable, with glibc's handlers, in the child */
  unsigned long all[VF_SIGSETSIZE / sizeof(unsigned long)], old[sizeof all /
                                                         sizeof all[0]];
  int mode = __atomic_load_n(&vf_mode, __ATOMIC_RELAXED), err, st;
  pid_t c;
  if (o->file[0] == '\0') return ENOENT;
  memset(&a, 0, sizeof a);
  a.file = o->file;
  a.argv = o->args;
  a.envp = o->env ? o->env : environ;
  a.cwd = o->cwd;
  memcpy(a.fd, o->fd, sizeof a.fd);
  a.group = o->group;
  if (strchr(o->file, '/') == NULL &&
      (a.path = env_path(o->env)) == NULL)
    a.path = "/usr/bin:/bin";
  if (mode != 1 && (err = vf_probe(&a)) != 0) return err;
  a.parent = getpid();
  memset(all, 0xff, sizeof all);
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, all, old, VF_SIGSETSIZE);
  c = VF_CLONE(vf_child, stack + sizeof stack,
               CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
  err = c < 0 ? errno : 0;
  syscall(SYS_rt_sigprocmask, SIG_SETMASK, old, NULL, VF_SIGSETSIZE);
  if (c < 0) return err;
  if (mode == 0) __atomic_store_n(&vf_mode, a.ran ? 1 : 2, __ATOMIC_RELAXED);
  if (a.err != 0) {            /* it has exited 127: reaped here */
    while (waitpid(c, &st, 0) < 0 && errno == EINTR) ;
    return a.err;
  }
  *pid = c;
  return 0;
}
