/*
** process.h: a child process's record and its lifetime (process.c),
** shared by braid.process (process.c) and braid.exec (exec.c).
*/
#ifndef BRAID_PROCESS_H
#define BRAID_PROCESS_H

#include "braid.h"
#include "core/prim.h"
#include "io/stream.h"

enum { P_STDIN, P_STDOUT, P_STDERR, P_TIMER, P_PROC, P_NHANDLES };

/* How one of a child's stdin, stdout, stderr is set up (the option strings
** "null", "inherit", "pipe", or a file's path). */
enum { PROC_NULL, PROC_INHERIT, PROC_PIPE, PROC_FILE, PROC_TO_STDOUT };
struct braid_stdio {
  int how;
  const char *path;            /* PROC_FILE's, anchored by the caller */
};

struct braid_proc {
  braid_engine_t *E;
  union {                      /* P_PROC: waits for the exit (spawn.c) */
    uv_handle_t handle;
    uv_poll_t poll;            /* on a pidfd */
    uv_signal_t sig;           /* on SIGCHLD, where there is no pidfd */
  } reap;
  int pidfd;                   /* -1: none */
  uv_timer_t timer;            /* exec's timeout, then the stop's */
  struct braid_stream pipe[3]; /* the child's stdin, stdout, stderr */
  unsigned char live[P_NHANDLES];   /* the timer's and the reap handle's */
  int open;                    /* handles whose close callback is to come */
  unsigned char owned, exec, stopping, timed_out, attached;
  unsigned char check;         /* exec's opts.check, read at the call */
  unsigned char group;         /* the child leads a process group */
  unsigned char exited;        /* reaped */
  unsigned char group_done;    /* a stop is over with the group too */
  unsigned char killed;        /* the stop sent SIGKILL */
  uint64_t timeout_ns;         /* exec's opts.timeout, for its message */
  int pid, signal;
  int argc;                    /* argv's length, for messages */
  int64_t code;
  uint64_t kill_grace_ns;      /* BRAID_NEVER: no SIGKILL */
  uint64_t deadline;           /* the stop's SIGKILL, loop ms; or NEVER */
  unsigned poll_ms;            /* the stop's next look at the group */
  struct braid_kill_slot *kill;   /* SIGKILL's target at a hard exit */
  braid_op_t *op;              /* exec's, waiting for the whole run */
  struct braid_list waiters;   /* struct exit_wait: proc:wait(), close */
  struct braid_resource res;   /* braid.process: in the starting scope */
  uv_write_t stdin_req;        /* exec's opts.stdin (held on exec's stack) */
};

/* Starts argv (the list at 1) with the options at 2 (nil or a table: cwd,
** env, env_add and group are read here) and the child's stdio as `io`;
** `fname` names the caller in errors; `exec`: for braid.exec (p->exec,
** which waits for the exit only once the outputs have ended).
** The proc is owned by the caller (braid__proc_release lets go). Leaves
** one value on the stack (an anchor for the strings). On failure every
** handle is closed and a "spawn" error raised. [-0, +1, e] */
struct braid_proc *braid__proc_spawn(lua_State *L, const char *fname,
                                     const struct braid_stdio io[3],
                                     uint64_t kill_grace_ns, int exec);

/* opts[key] (opts at idx: nil or a table) as a stdio setting: "pipe",
** "inherit", "null" or a file's path (written from its start, made if
** missing); dflt when absent. */
struct braid_stdio braid__proc_stdio_opt(lua_State *L, int idx,
                                         const char *key, int dflt,
                                         const char *fname);

/* Pushes the argc strings at 1..argc of the table at idx (the spawn's
** anchor) as one shell-quoted command line, for messages; a very long one
** is cut with "...". [-0, +1, m] */
void braid__proc_push_cmdline(lua_State *L, int idx, int argc);

/* Stops the child and closes its pipes: SIGTERM now, SIGKILL after the
** kill grace; the exit callback reaps it. Runs no Lua. */
void braid__proc_stop(struct braid_proc *p);

/* The continuation or the Lua object that referred to p lets go; p is
** freed once its handles have closed too. */
void braid__proc_release(struct braid_proc *p);

/* Moves p on after anything happened: resumes p->op once the child has
** exited and its outputs ended, or as soon as an output failed (over
** max_output, out of memory, a read error: exec then stops the child), and
** closes the timer when nothing is left. Runs no Lua. */
void braid__proc_update(struct braid_proc *p);

/* Pushes the exit code (nil after a signal) and the signal's name (or
** nil). [-0, +2, m] */
void braid__proc_push_status(lua_State *L, struct braid_proc *p);

/* A duration (braid__opt_seconds' nanoseconds, not BRAID_NEVER) as a
** libuv timer's milliseconds, rounded up. */
uint64_t braid__proc_ms(uint64_t ns);

/* ---- spawn.c ---- */

/* A child's stdio for braid__spawn_start: an fd to give it, or these. */
#define BRAID_FD_INHERIT (-1)
#define BRAID_FD_NULL (-2)
#define BRAID_FD_STDOUT (-3)     /* stderr: the child's stdout, 2>&1 */

struct braid_spawn_opts {
  const char *file;
  char **args, **env;          /* env NULL: braid's own */
  const char *cwd;             /* NULL: braid's */
  int fd[3];
  int group;                   /* a process group of the child's own */
  int reap_later;              /* wait for the exit only from
                                  braid__reap_watch on (pidfd kernels) */
};

/* Starts the child of p (p->pid) and waits for its exit on the loop
** (p->live[P_PROC], one more p->open; with o->reap_later on a pidfd kernel,
** only from braid__reap_watch on); braid__proc_exited follows. Returns 0
** or a libuv error (nothing started, no handle left). */
int braid__spawn_start(struct braid_proc *p, const struct braid_spawn_opts *o);

/* Starts waiting for the exit of a child spawned with reap_later (no-op
** otherwise, and once it waits or has exited); reaps it at once when it
** has exited. Returns 1 when it reaped it (braid__proc_exited has run). */
int braid__reap_watch(struct braid_proc *p);

/* Closes the reap handle (once; after the exit or a failed spawn). */
void braid__reap_close(struct braid_proc *p);

/* Whom a signal reaches: the child's group (-pgid) or the child, outside
** a group of its own; after the exit, what is left of the group, until a
** stop is over. 0: nobody is left. */
int braid__proc_target(struct braid_proc *p);

/* Sends sig to braid__proc_target. Returns kill's result, -1 when nobody
** is left to signal. */
int braid__proc_signal(struct braid_proc *p, int sig);

/* A stop's timer: the SIGKILL deadline while the child runs; once it is
** reaped, a look at its group every few ms (doubling up to 100) until the
** group is empty (braid__proc_update then) or the deadline. */
void braid__proc_stop_arm(struct braid_proc *p);

/* Is the group of p, whose leader is reaped, empty (or none of p's)? */
int braid__group_empty(struct braid_proc *p);

/* Does a process of group pgid still run (not counting zombies)? */
int braid__group_running(int pgid);

/* From spawn.c: the child has exited and is reaped (sig: the signal that
** ended it, or 0). Runs no Lua. */
void braid__proc_exited(struct braid_proc *p, int64_t code, int sig);

/* From spawn.c: a handle of p has closed. */
void braid__proc_handle_closed(struct braid_proc *p);

extern int braid__spawn_no_pidfd;   /* tests: the SIGCHLD path */

/* vfork.c: starts o's program (file, args, env, cwd, fd, group) in a new
** child, which gets PR_SET_PDEATHSIG(SIGKILL); *pid its pid. Returns 0, or
** the errno of what failed (exec's, chdir's: nothing is left running). */
int braid__vfork_start(const struct braid_spawn_opts *o, int *pid);

/* Fills o's file, args, cwd, env and group from argv (the list at 1) and
** the options at 2 (nil or a table), as C strings anchored in the table it
** pushes (argv's at 1..#argv). [-0, +1, e] */
void braid__spawn_args(lua_State *L, const char *fname,
                       struct braid_spawn_opts *o);

/* Sets braid.env on the table at the stack top. */
void braid__open_env(lua_State *L);

/* Adds braid.exec (exec.c) to the table at the stack top. */
void braid__open_exec(lua_State *L);

#endif
