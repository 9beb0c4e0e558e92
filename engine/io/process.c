/*
** process.c: child processes (started by spawn.c, through vfork.c): a child's
** lifetime (shared with braid.exec, exec.c) and braid.process (streaming,
** to-be-closed). The child's pipes are io/stream.c's streams, the same as
** TCP's: the parent's ends are handed to uv_pipe_open.
**
** Each child is a struct braid_proc, malloc'd rather than kept in a Lua
** userdata, because it must outlive both the task that waits on it and the
** Lua object that names it: a cancelled exec returns at once while its child
** is still being stopped and reaped in the background.
**
** Invariants:
** - Every handle a proc initialised is closed exactly once (a pipe by
**   braid__stream_close, the timer and the process when live[i] says they
**   are not yet closing); `open` counts those whose close callback has not
**   run. The memory (the pipes' buffers too) is freed only when open is 0
**   and nothing refers to it any more (owned == 0: no exec continuation
**   and no braid.Process object), so a method's continuation always finds
**   its pipe.
** - A child is always reaped: the reap handle is closed only once the exit
**   is reaped, and a stop always sends SIGTERM and arms SIGKILL after
**   kill_grace, so the exit comes. Until then the handle keeps the loop
**   running, and braid.run ends only after it is closed.
** - Each child leads a process group of its own (unless opts.group is
**   false), and a stop signals the group: SIGTERM, then SIGKILL after
**   kill_grace. A stop is over when the child is reaped and its group is
**   empty (looked at every few ms after the exit) or has had its SIGKILL;
**   until then the timer stays, and so does the kill slot that has the
**   group SIGKILLed should braid leave at once (a second Ctrl-C, os.exit).
**   The slot's target follows the child's state (braid__proc_target) at
**   every update, so a pid that was reaped is not killed later, nor the
**   number of its group once that is empty (looked at when the leader is
**   reaped and before each signal; leftovers that end later, while
**   nothing stops them, leave the slot's number until the next update).
** - The kill timer is a uv_timer_t of the proc's own, not an engine timer:
**   it must fire on the real clock, and even after the engine's own timer is
**   closed at shutdown.
** - A pipe closes when its reading ends (EOF or an error: what was read
**   stays readable), when stdin is closed, when the child exits (stdin) and
**   when the child is stopped.
** - Every wait is a braid_suspend op (braid.h), as an embedder's would be.
**   The object waited on holds the op it will resume (p->op: exec's task;
**   the exit waiters' list; a pipe its reader and its writes) and forgets
**   it when resuming it and in the op's cancel hook, which also runs after
**   a resume whose continuation never ran (abandonment), so a hook only
**   touches what is still its own.
** - libuv callbacks never run Lua: they store outcomes, close handles and
**   resume ops with at most an integer; continuations, in the task, build
**   the results and raise the errors.
*/
#define _GNU_SOURCE   /* pipe2 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/prim.h"
#include "io/signames.h"
#include "io/process.h"

#define PROC_MT "braid.Process"


/* ---- the proc's lifetime ---- */

static void proc_maybe_free (struct braid_proc *p) {
  int i;
  if (p->open > 0 || p->owned) return;
  for (i = 0; i < 3; i++) braid__stream_free(&p->pipe[i]);
  free(p);
}

void braid__proc_handle_closed (struct braid_proc *p) {
  p->open--;
  proc_maybe_free(p);
}

static void proc_close_cb (uv_handle_t *h) {
  braid__proc_handle_closed((struct braid_proc *) h->data);
}

static void pipe_closed (struct braid_stream *s) {
  proc_close_cb(&s->h.handle);
}

/* What was read stays readable; the pipe itself is of no more use. */
static void pipe_ended (struct braid_stream *s) {
  braid__stream_close(s);
  braid__proc_update((struct braid_proc *) s->h.handle.data);
}

static const struct braid_stream_hooks pipe_hooks = {
  NULL, pipe_closed, pipe_ended
};

static void proc_close_handle (struct braid_proc *p, int i) {
  if (i <= P_STDERR) {
    braid__stream_close(&p->pipe[i]);
    return;
  }
  if (i == P_PROC) {
    braid__reap_close(p);
    return;
  }
  if (!p->live[i]) return;
  p->live[i] = 0;
  braid__kill_slot_give(p->kill);   /* nothing left to kill */
  p->kill = NULL;
  uv_close((uv_handle_t *) &p->timer, proc_close_cb);
}

void braid__proc_release (struct braid_proc *p) {
  p->owned = 0;
  proc_maybe_free(p);
}

static void proc_detach (struct braid_proc *p) {
  if (!p->attached) return;
  p->attached = 0;
  braid_resource_remove(&p->res);
}

/* stdout is read into memory, however much comes, while a task waits for
** the exit (so a child blocked on a full pipe still gets to exit). */
static void proc_drain (struct braid_proc *p) {
  int i;
  if (p->exec) return;
  for (i = P_STDOUT; i <= P_STDERR; i++)
    if (p->pipe[i].hooks)
      braid__stream_drain(&p->pipe[i], !braid__list_empty(&p->waiters));
}

/* Did reading the pipe end otherwise than at its end (over exec's
** max_output, out of memory, a read error)? */
static int pipe_failed (struct braid_stream *s) {
  return s->rerr != 0 && s->rerr != UV_EOF;
}

/* The kill slot follows what a SIGKILL would reach now. */
static void proc_kill_track (struct braid_proc *p) {
  if (p->kill) atomic_store(&p->kill->target, braid__proc_target(p));
}

void braid__proc_update (struct braid_proc *p) {
  int pipes;
  proc_kill_track(p);
  /* exec's child: its exit is waited for once both outputs have ended */
  if (!p->exited && !p->pipe[P_STDOUT].live && !p->pipe[P_STDERR].live &&
      braid__reap_watch(p))
    return;                    /* reaped: braid__proc_exited updated p */
  pipes = p->pipe[P_STDIN].live || p->pipe[P_STDOUT].live ||
          p->pipe[P_STDERR].live;
  if (p->op && ((p->exited && !p->pipe[P_STDOUT].live &&
                 !p->pipe[P_STDERR].live) ||
                pipe_failed(&p->pipe[P_STDOUT]) ||
                pipe_failed(&p->pipe[P_STDERR]))) {
    braid_op_t *op = p->op;
    p->op = NULL;
    braid_resume(op, 0);       /* its continuation finds the rest in p */
  }
  if (p->exited && !pipes && (!p->stopping || p->group_done)) {
    proc_close_handle(p, P_TIMER);
    proc_detach(p);
  }
}

/* A scope's resource close, __gc and cancel hooks call it. */
void braid__proc_stop (struct braid_proc *p) {
  int i;
  proc_detach(p);
  for (i = P_STDIN; i <= P_STDERR; i++) proc_close_handle(p, i);
  if (!p->stopping && braid__proc_signal(p, SIGTERM) == 0) {
    /* A stopped child (SIGTTOU from the terminal, SIGSTOP) would not run
    ** its SIGTERM handler before the SIGKILL, or ever without kill_grace. */
    braid__proc_signal(p, SIGCONT);
    p->stopping = 1;
    if (p->kill_grace_ns == 0 || !p->live[P_TIMER]) {
      /* no grace, or only the leftovers of a child reaped long ago */
      braid__proc_signal(p, SIGKILL);
      p->killed = 1;
      if (p->exited) p->group_done = 1;
    } else {
      uv_update_time(p->timer.loop);
      p->deadline = p->kill_grace_ns == BRAID_NEVER ? BRAID_NEVER :
                    uv_now(p->timer.loop) +
                    braid__proc_ms(p->kill_grace_ns);
      p->poll_ms = 1;
      braid__proc_stop_arm(p);
    }
  }
  braid__proc_update(p);
}

static void proc_resource_close (struct braid_resource *r) {
  struct braid_proc *p = container_of(r, struct braid_proc, res);
  p->attached = 0;             /* the scope has unlinked it */
  braid__proc_stop(p);
}

/* The data of an op waiting for the exit (proc:wait, proc:close). */
struct exit_wait {
  struct braid_list link;      /* in p->waiters */
  braid_op_t *op;
  struct braid_proc *p;
};

void braid__proc_exited (struct braid_proc *p, int64_t status, int sig) {
  p->exited = 1;
  p->code = status;
  p->signal = sig;
  /* An empty group's number may be reused from now: never signalled. */
  if (!p->stopping && braid__group_empty(p)) p->group_done = 1;
  proc_kill_track(p);          /* the reaped pid may be reused from now */
  if (p->stopping && p->live[P_TIMER]) {
    if (p->killed || braid__group_empty(p)) {
      p->group_done = 1;
      uv_timer_stop(&p->timer);
    } else {                   /* wait for the group, up to the deadline */
      p->poll_ms = 1;
      braid__proc_stop_arm(p);
    }
  }
  proc_close_handle(p, P_PROC);
  proc_close_handle(p, P_STDIN);   /* nobody reads it any more */
  while (!braid__list_empty(&p->waiters)) {
    struct exit_wait *ew = container_of(p->waiters.next, struct exit_wait,
                                        link);
    braid__list_remove(&ew->link);
    braid_resume(ew->op, 0);
  }
  proc_drain(p);
  braid__proc_update(p);
}

/* ---- starting a child ---- */

static const char *signal_name (int sig, char *buf, size_t n) {
  const struct braid_signame *s = braid__signame_of(sig);
  if (s) return s->name;
  snprintf(buf, n, "SIG%d", sig);
  return buf;
}

uint64_t braid__proc_ms (uint64_t ns) {
  return ns / 1000000 + (ns % 1000000 != 0);
}

static const char *const pipe_names[3] = {"stdin", "stdout", "stderr"};

#define PIPE_FIRST_BUF 4096

/* Sets up the child's end of stdio i in o->fd[i] (an fd closed after the
** spawn is noted in child[i]) and, for a pipe, the stream of the parent's
** end. Returns 0 or a libuv error. */
static int proc_stdio (struct braid_proc *p, int i,
                       const struct braid_stdio *io,
                       struct braid_spawn_opts *o, int *child) {
  int fds[2], rc;
  struct braid_stream *s = &p->pipe[i];
  o->fd[i] = io->how == PROC_INHERIT ? BRAID_FD_INHERIT :
             io->how == PROC_TO_STDOUT ? BRAID_FD_STDOUT : BRAID_FD_NULL;
  if (io->how == PROC_FILE) {
    /* O_NONBLOCK: a FIFO nobody reads fails (ENXIO) instead of blocking
    ** the whole engine in open; the child gets a blocking one. */
    int fd = open(io->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC |
                  O_NONBLOCK, 0666);
    if (fd < 0) return uv_translate_sys_error(errno);
    o->fd[i] = *child = fd;
    if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) != 0)
      return uv_translate_sys_error(errno);
    return 0;
  }
  if (io->how != PROC_PIPE) return 0;
  if (pipe2(fds, O_CLOEXEC) != 0) return uv_translate_sys_error(errno);
  uv_pipe_init(p->timer.loop, &s->h.pipe, 0);
  braid__stream_init(s, p->E, &pipe_hooks, pipe_names[i]);
  s->h.handle.data = p;
  s->limit_opt = "braid.process";
  /* A child's stderr is mostly empty and its stdout short: a small first
  ** buffer (grown as output comes) spares malloc the 64 KiB chunks that it
  ** gave back to the kernel and took again (brk, page faults) per child. */
  s->first_buf = PIPE_FIRST_BUF;
  p->open++;
  o->fd[i] = *child = fds[i == 0 ? 0 : 1];
  if ((rc = uv_pipe_open(&s->h.pipe, fds[i == 0 ? 1 : 0])) != 0)
    close(fds[i == 0 ? 1 : 0]);
  return rc;
}

struct braid_proc *braid__proc_spawn (lua_State *L, const char *fname,
                                      const struct braid_stdio io[3],
                                      uint64_t kill_grace_ns, int exec) {
  braid_engine_t *E = braid_engine(L);
  struct braid_spawn_opts o;
  struct braid_proc *p;
  int i, rc = 0, child[3] = {-1, -1, -1}, failed = -1;
  memset(&o, 0, sizeof o);
  braid__spawn_args(L, fname, &o);                  /* the anchor */
  for (i = 0; o.args[i]; i++) ;
  if ((p = calloc(1, sizeof *p)) == NULL ||
      (p->kill = braid__kill_slot_take()) == NULL) {
    free(p);
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  p->E = E;
  p->exec = (unsigned char) (exec != 0);
  p->argc = i;
  p->owned = 1;
  p->pidfd = -1;
  p->kill_grace_ns = kill_grace_ns;
  braid__list_init(&p->waiters);
  p->res.close = proc_resource_close;
  uv_timer_init(braid_loop(E), &p->timer);
  p->timer.data = p;
  p->live[P_TIMER] = 1;
  p->open++;
  for (i = 0; i < 3 && rc == 0; i++)
    if ((rc = proc_stdio(p, i, &io[i], &o, &child[i])) != 0) failed = i;
  /* exec's exit can wait until its outputs end (see spawn.c); not with a
  ** stdin pipe, which the exit closes (a child that exits early frees exec
  ** from writing the rest, even while a grandchild holds the outputs) */
  o.reap_later = exec && io[0].how != PROC_PIPE &&
                 (io[1].how == PROC_PIPE || io[2].how == PROC_PIPE);
  if (rc == 0) rc = braid__spawn_start(p, &o);
  for (i = 0; i < 3; i++)
    if (child[i] >= 0) close(child[i]);
  if (rc != 0) {
    for (i = 0; i < P_NHANDLES; i++) proc_close_handle(p, i);
    braid__proc_release(p);
    if (failed >= 0 && io[failed].how == PROC_FILE)
      braid_error(L, "spawn", braid__errname(rc), "%s: cannot open '%s' for "
                  "the child's %s: %s", fname, io[failed].path,
                  pipe_names[failed], rc == UV_ENXIO ? "nobody reads it (a "
                  "FIFO without a reader: braid does not wait for one)"
                  : braid__strerror(rc));
    if (o.cwd && access(o.cwd, X_OK) != 0)
      braid_error(L, "spawn", braid__errname(rc), "%s: cannot start '%s' in "
                  "'%s': %s", fname, o.file, o.cwd, braid__strerror(rc));
    braid_error(L, "spawn", braid__errname(rc), "%s: cannot start '%s': %s",
                fname, o.file, braid__strerror(rc));
  }
  proc_kill_track(p);
  return p;
}

void braid__proc_push_status (lua_State *L, struct braid_proc *p) {
  char buf[16];
  if (p->signal) lua_pushnil(L);
  else lua_pushinteger(L, (lua_Integer) p->code);
  if (p->signal) lua_pushstring(L, signal_name(p->signal, buf, sizeof buf));
  else lua_pushnil(L);
}

/* ---- braid.process ---- */

struct proc_box {
  struct braid_proc *p;
};

/* Output i of p is a pipe the methods can read. */
static void pipe_check (lua_State *L, struct braid_proc *p, int i,
                        const char *fname) {
  if (p->pipe[i].hooks == NULL)
    braid_usageerror(L, "%s: %s is not a pipe (braid.process's option "
                     "%s = \"pipe\" makes it one)", fname, pipe_names[i],
                     pipe_names[i]);
}

static struct braid_proc *proc_check (lua_State *L, const char *fname) {
  struct proc_box *box = braid__check_object(L, 1, PROC_MT, fname);
  if (box->p == NULL)   /* only a finalizer can still see a collected one */
    braid_error(L, "closed", NULL, "%s: the process object was collected",
                fname);
  return box->p;
}

/* proc:read_line() -> the next line of stdout without its "\n" or "\r\n";
** at the end the unterminated rest, then nil. Cancelling it only stops
** this wait. */
static int l_process_read_line (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:read_line");
  pipe_check(L, p, P_STDOUT, "proc:read_line");
  return braid__stream_read_line(L, &p->pipe[P_STDOUT], "proc:read_line");
}

/* proc:read([n | "a"]) -> up to n bytes of stdout (nil at the end); "a",
** or no argument: the rest of stdout, until the child closes it ("" when
** nothing is left). */
static int l_process_read (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:read");
  pipe_check(L, p, P_STDOUT, "proc:read");
  return braid__stream_read(L, &p->pipe[P_STDOUT], BRAID_READ_ALL,
                            "proc:read");
}

/* proc:lines() -> an iterator over the lines of stdout, for `for ... in`. */
static int l_process_lines (lua_State *L) {
  pipe_check(L, proc_check(L, "proc:lines"), P_STDOUT, "proc:lines");
  return braid__stream_lines(L, l_process_read_line);
}

/* proc:write(s) -> proc: writes s to the child's stdin and waits until it
** has been written (back-pressure). Raises kind "closed" after
** close_stdin, "io" (e.g. EPIPE) when the child closed its end. A
** cancelled write closes stdin. */
static int l_process_write (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:write");
  return braid__stream_write(L, &p->pipe[P_STDIN], "proc:write");
}

/* proc:close_stdin(): the child sees the end of its input. */
static int l_process_close_stdin (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:close_stdin");
  proc_close_handle(p, P_STDIN);
  braid__proc_update(p);
  return 0;
}

/* Joins p's exit waiters. */
static int exit_wait_start (braid_op_t *op, void *ud) {
  struct exit_wait *ew = (struct exit_wait *) braid_op_data(op);
  ew->op = op;
  ew->p = (struct braid_proc *) ud;
  braid_op_label(op, "process %d exit", ew->p->pid);
  braid__list_push(&ew->p->waiters, &ew->link);
  proc_drain(ew->p);
  return 0;
}

/* Removing twice is harmless (a removed node points at itself). */
static void exit_wait_cancel (braid_op_t *op) {
  struct exit_wait *ew = (struct exit_wait *) braid_op_data(op);
  braid__list_remove(&ew->link);
  proc_drain(ew->p);
}

static int wait_k (lua_State *L, braid_op_t *op) {
  braid__proc_push_status(L, ((struct exit_wait *) braid_op_data(op))->p);
  return 2;
}

/* proc:wait() -> code, signal: waits for the child to exit (code nil when
** a signal ended it). While a task waits, stdout keeps being read into
** memory, so a child blocked on a full pipe still gets to exit. */
static int l_process_wait (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:wait");
  braid_check_task(L, "proc:wait");
  lua_settop(L, 1);
  if (p->exited) {
    braid__proc_push_status(L, p);
    return 2;
  }
  braid_check_suspend(L, "proc:wait");
  return braid_suspendk(L, "proc:wait", sizeof(struct exit_wait),
                        exit_wait_start, exit_wait_cancel, p, wait_k);
}

static int signal_check (lua_State *L, int arg) {
  const struct braid_signame *sig;
  const char *s;
  if (lua_isnoneornil(L, arg)) return SIGTERM;
  if (lua_type(L, arg) == LUA_TNUMBER) {   /* 9.0 is 9, as Lua's own */
    int isint;
    lua_Integer n = lua_tointegerx(L, arg, &isint);
    if (!isint)
      braid_argerror(L, arg, "proc:kill", "signal number (an integer) or "
                     "name expected");
    if (n < 0 || n > 64)
      braid_argerror(L, arg, "proc:kill", "signal number out of range "
                     "(0 to 64)");
    return (int) n;
  }
  if (lua_type(L, arg) != LUA_TSTRING)
    braid_argerror(L, arg, "proc:kill", "signal expected");
  if ((s = braid__cstring(L, arg)) == NULL)   /* "TERM\0junk" is no name */
    braid_argerror(L, arg, "proc:kill", "signal name expected (without a "
                   "zero byte)");
  if ((sig = braid__signame_find(s)) != NULL) return sig->num;
  return braid_argerror(L, arg, "proc:kill", "unknown signal name");
}

/* proc:kill([signal]) -> boolean: sends signal (a name such as "SIGTERM"
** or "TERM", or a number; default SIGTERM); false when the child has
** already exited. */
static int l_process_kill (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:kill");
  int sig = signal_check(L, 2);
  lua_pushboolean(L, p->pid > 0 && !p->exited &&
                     kill(p->pid, sig) == 0);
  return 1;
}

/* proc:close(), and __close: stops the child (SIGTERM, SIGKILL after
** kill_grace) and closes its pipes; then, where the task can wait, waits
** until the child is reaped. The wait is a courtesy (the child is reaped
** anyway), so a cancellation only cuts it short and close never raises;
** elsewhere (error unwinding, a cancelled task) the child is reaped in the
** background. */
static int l_process_close (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:close");
  lua_settop(L, 1);
  braid__proc_stop(p);
  if (p->exited) return 0;
  return braid_suspend_soft(L, "proc:close", sizeof(struct exit_wait),
                            exit_wait_start, exit_wait_cancel, p);
}

/* The object is gone: stop the child; the proc frees itself once closed. */
static int l_process_gc (lua_State *L) {
  struct proc_box *box = (struct proc_box *) lua_touserdata(L, 1);
  if (box->p) {
    braid__proc_stop(box->p);
    braid__proc_release(box->p);
    box->p = NULL;
  }
  return 0;
}

static int l_process_index (lua_State *L) {
  struct braid_proc *p;
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  p = proc_check(L, "proc.pid");
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "pid") == 0)
    lua_pushinteger(L, p->pid);
  else {
    static const char *const fields[] = {"pid", NULL};
    return braid__index_missing(L, PROC_MT, fields);
  }
  return 1;
}

static int l_process_tostring (lua_State *L) {
  struct braid_proc *p = proc_check(L, "tostring");
  lua_pushfstring(L, "<process %d %s>", p->pid,
                  p->exited ? "exited" : p->stopping ? "stopping" : "running");
  return 1;
}

static const char *const process_options[] = {
  "cwd", "env", "env_add", "group", "stdout", "stderr", "kill_grace",
  "max_line", NULL
};

/* proc:read_stderr([n | "a"]), proc:read_line_stderr(): as read and
** read_line, on stderr, when opts.stderr was "pipe". */

static int l_process_read_stderr (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:read_stderr");
  pipe_check(L, p, P_STDERR, "proc:read_stderr");
  return braid__stream_read(L, &p->pipe[P_STDERR], BRAID_READ_ALL,
                            "proc:read_stderr");
}

static int l_process_read_line_stderr (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:read_line_stderr");
  pipe_check(L, p, P_STDERR, "proc:read_line_stderr");
  return braid__stream_read_line(L, &p->pipe[P_STDERR],
                                 "proc:read_line_stderr");
}

/* braid.process(argv, [opts]) -> proc: starts argv[1] (no shell) with
** stdin and stdout as pipes and stderr inherited, without waiting. opts:
** cwd, env, kill_grace (default 2 s), max_line (read_line's limit). The
** proc belongs to the caller's innermost scope: still running when that
** scope ends, it is stopped (SIGTERM, SIGKILL after kill_grace, reaped).
** Raises kind "spawn" like exec. */
static int l_process_new (lua_State *L) {
  struct braid_stdio io[3];
  int i;
  struct proc_box *box;
  struct braid_proc *p;
  uint64_t grace;
  size_t max_line;
  braid_check_task(L, "braid.process");
  braid__check_options(L, 2, "braid.process", process_options);
  lua_settop(L, 2);
  grace = braid__opt_seconds(L, 2, "kill_grace", 2000000000u,
                             "braid.process");
  max_line = braid__opt_limit(L, 2, "max_line", BRAID_MAX_LINE,
                              "braid.process");
  box = lua_newuserdatauv(L, sizeof *box, 0);               /* 3 */
  box->p = NULL;
  luaL_setmetatable(L, PROC_MT);
  io[0].how = PROC_PIPE;
  io[1] = braid__proc_stdio_opt(L, 2, "stdout", PROC_PIPE, "braid.process");
  io[2] = braid__proc_stdio_opt(L, 2, "stderr", PROC_INHERIT,
                                "braid.process");
  p = braid__proc_spawn(L, "braid.process", io, grace, 0);  /* 4: anchor */
  box->p = p;
  p->attached = 1;
  braid_resource_add(L, &p->res);
  for (i = P_STDOUT; i <= P_STDERR; i++) {
    p->pipe[i].max_line = max_line;
    if (p->pipe[i].hooks) braid__stream_start(&p->pipe[i]);
  }
  lua_pop(L, 1);
  return 1;
}

void braid__open_process (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"read_line", l_process_read_line},
    {"read", l_process_read},
    {"lines", l_process_lines},
    {"write", l_process_write},
    {"close_stdin", l_process_close_stdin},
    {"read_stderr", l_process_read_stderr},
    {"read_line_stderr", l_process_read_line_stderr},
    {"wait", l_process_wait},
    {"kill", l_process_kill},
    {"close", l_process_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__close", l_process_close},
    {"__gc", l_process_gc},
    {"__tostring", l_process_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"process", l_process_new},
    {NULL, NULL}
  };
  braid__stream_sigpipe();
  {
    /* An ignored SIGCHLD (it stays ignored across exec) has the kernel
    ** reap children itself, and their exit status is lost; libuv's
    ** uv_spawn put its own handler in place, braid puts back the default. */
    struct sigaction sa;
    if (sigaction(SIGCHLD, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) {
      sa.sa_handler = SIG_DFL;
      sigaction(SIGCHLD, &sa, NULL);
    }
  }
  /* tests: the SIGCHLD path on a kernel with pidfds (BRAID_NO_PIDFD=1) */
  {
    static int cache = -1;
    if (braid__env_flag("BRAID_NO_PIDFD", 0, &cache))
      braid__spawn_no_pidfd = 1;
  }
  braid__class(L, PROC_MT, metamethods, methods, l_process_index);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
  braid__open_exec(L);
  braid__open_env(L);
}
