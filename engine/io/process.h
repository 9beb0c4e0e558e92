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

struct braid_proc {
  braid_engine_t *E;
  uv_process_t proc;
  uv_timer_t timer;            /* exec's timeout, then the kill grace */
  struct braid_stream pipe[3]; /* the child's stdin, stdout, stderr */
  unsigned char live[P_NHANDLES];   /* the timer's and the process's */
  int open;                    /* handles whose close callback is to come */
  unsigned char owned, exec, exited, stopping, timed_out, attached;
  unsigned char check;         /* exec's opts.check, read at the call */
  uint64_t timeout_ns;         /* exec's opts.timeout, for its message */
  int pid, signal;
  int64_t code;
  uint64_t kill_grace_ns;      /* BRAID_NEVER: no SIGKILL */
  braid_op_t *op;              /* exec's, waiting for the whole run */
  struct braid_list waiters;   /* struct exit_wait: proc:wait(), close */
  struct braid_resource res;   /* braid.process: in the starting scope */
  uv_write_t stdin_req;        /* exec's opts.stdin (held on exec's stack) */
};

/* Starts argv (the list at 1) with the options at 2 (nil or a table: cwd
** and env are read here) and the child's stdio as `stdio` (0: /dev/null,
** -1: inherited, else pipe flags); `fname` names the caller in errors.
** The proc is owned by the caller (braid__proc_release lets go). Leaves
** one value on the stack (an anchor for the strings). On failure every
** handle is closed and a "spawn" error raised. [-0, +1, e] */
struct braid_proc *braid__proc_spawn(lua_State *L, const char *fname,
                                     int stdio[3], uint64_t kill_grace_ns);

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

/* Adds braid.exec (exec.c) to the table at the stack top. */
void braid__open_exec(lua_State *L);

#endif
