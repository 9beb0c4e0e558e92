/*
** process.c: child processes: braid.exec (run to completion, output
** captured) and braid.process (streaming, to-be-closed), on uv_spawn.
**
** Each child is a struct braid_proc, malloc'd rather than kept in a Lua
** userdata, because it must outlive both the task that waits on it and the
** Lua object that names it: a cancelled exec returns at once while its child
** is still being stopped and reaped in the background.
**
** Invariants:
** - Every handle a proc initialised is closed exactly once (live[i] says
**   which are initialised and not yet asked to close); `open` counts those
**   whose close callback has not run. The memory is freed only when open is
**   0 and nothing refers to it any more (owned == 0: no exec continuation
**   and no braid.Process object).
** - A child is always reaped: the process handle is closed only in the exit
**   callback (or after a failed uv_spawn, as libuv requires), and a stop
**   always sends SIGTERM and arms SIGKILL after kill_grace, so the exit
**   comes. Until then the handle keeps the loop running, and braid.run ends
**   only after it is closed.
** - The kill timer is a uv_timer_t of the proc's own, not an engine timer:
**   it must fire on the real clock, and even after the engine's own timer is
**   closed at shutdown.
** - Every wait is a braid_suspend op (braid.h), as an embedder's would be.
**   The object waited on holds the op it will resume (p->op: exec's task
**   or a process's one reader; the exit waiters' list; a write's request)
**   and forgets it when resuming it and in the op's cancel hook, which
**   also runs after a resume whose continuation never ran (abandonment),
**   so a hook only touches what is still its own.
** - libuv callbacks never run Lua: they store outcomes, close handles and
**   resume ops with at most an integer; continuations, in the task, build
**   the results and raise the errors.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/stream.h"

#define PROC_MT "braid.Process"
#define READ_CHUNK 65536        /* room offered to each read */
#define HIGH_WATER 65536        /* stop reading a stream nobody waits on */

enum { P_STDIN, P_STDOUT, P_STDERR, P_TIMER, P_PROC, P_NHANDLES };
enum { READ_LINE = 1, READ_ALL };

/* Bytes read from a pipe and not yet handed to Lua: data[start, len). */
struct proc_buf {
  char *data;
  size_t start, len, cap;
  size_t scanned;              /* no newline in data[start, scanned) */
};

struct braid_proc {
  braid_engine_t *E;
  uv_process_t proc;
  uv_timer_t timer;            /* exec's timeout, then the kill grace */
  uv_pipe_t pipe[3];           /* the child's stdin, stdout, stderr */
  struct proc_buf out[3];      /* [P_STDOUT] and [P_STDERR] are used */
  unsigned char live[P_NHANDLES];
  int open;
  unsigned char owned, exec, exited, stopping, timed_out;
  unsigned char reading, attached, read_mode;
  int pid, signal;
  int64_t code;
  uint64_t kill_grace_ms;
  braid_op_t *op;              /* exec's task, or a process's one reader */
  braid_op_t *reader;          /* the reader, until its continuation ran */
  struct braid_list waiters;   /* struct exit_wait: proc:wait(), close */
  struct braid_list writes;    /* struct proc_write: proc:write in flight */
  struct braid_resource res;   /* braid.process: in the starting scope */
  uv_write_t stdin_req;        /* exec's opts.stdin (held on exec's stack) */
};

/* One proc:write, malloc'd: a cancelled write completes in the background,
** and its callback frees it. */
struct proc_write {
  uv_write_t req;
  braid_op_t *op;              /* NULL once cancelled */
  braid_engine_t *E;
  struct braid_list link;      /* in p->writes until stdin closes */
  int ref;                     /* the string libuv writes from */
};

/* The data of an op waiting for the exit (proc:wait, proc:close). */
struct exit_wait {
  struct braid_list link;      /* in p->waiters */
  braid_op_t *op;
  struct braid_proc *p;
};

/* The data of a reader's op. */
struct read_op {
  struct braid_proc *p;
  int mode;
};

static const struct { const char *name; int num; } signals[] = {
  {"SIGHUP", SIGHUP}, {"SIGINT", SIGINT}, {"SIGQUIT", SIGQUIT},
  {"SIGILL", SIGILL}, {"SIGTRAP", SIGTRAP}, {"SIGABRT", SIGABRT},
  {"SIGBUS", SIGBUS}, {"SIGFPE", SIGFPE}, {"SIGKILL", SIGKILL},
  {"SIGUSR1", SIGUSR1}, {"SIGSEGV", SIGSEGV}, {"SIGUSR2", SIGUSR2},
  {"SIGPIPE", SIGPIPE}, {"SIGALRM", SIGALRM}, {"SIGTERM", SIGTERM},
  {"SIGCHLD", SIGCHLD}, {"SIGCONT", SIGCONT}, {"SIGSTOP", SIGSTOP},
  {"SIGTSTP", SIGTSTP}, {"SIGTTIN", SIGTTIN}, {"SIGTTOU", SIGTTOU},
  {"SIGWINCH", SIGWINCH}, {NULL, 0}
};

/* ---- the proc's lifetime ---- */

static uv_handle_t *proc_handle (struct braid_proc *p, int i) {
  if (i <= P_STDERR) return (uv_handle_t *) &p->pipe[i];
  if (i == P_TIMER) return (uv_handle_t *) &p->timer;
  return (uv_handle_t *) &p->proc;
}

static void proc_maybe_free (struct braid_proc *p) {
  int i;
  if (p->open > 0 || p->owned) return;
  for (i = 0; i < 3; i++) free(p->out[i].data);
  free(p);
}

static void proc_close_cb (uv_handle_t *h) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  p->open--;
  proc_maybe_free(p);
}

static void proc_close_handle (struct braid_proc *p, int i) {
  if (!p->live[i]) return;
  p->live[i] = 0;
  uv_close(proc_handle(p, i), proc_close_cb);
  /* Once stdin is closed libuv reads no pending write's bytes, so their
  ** strings are let go now, while the Lua state surely exists: the write
  ** callbacks (ECANCELED, maybe after braid_close) touch no Lua. */
  while (i == P_STDIN && !braid__list_empty(&p->writes)) {
    struct proc_write *wr = container_of(p->writes.next, struct proc_write,
                                         link);
    braid__list_remove(&wr->link);
    braid__unref(p->E, wr->ref);
    wr->ref = LUA_NOREF;
  }
}

/* The continuation or the Lua object that referred to p lets go. */
static void proc_release (struct braid_proc *p) {
  p->owned = 0;
  proc_maybe_free(p);
}

static void proc_detach (struct braid_proc *p) {
  if (!p->attached) return;
  p->attached = 0;
  braid_resource_remove(&p->res);
}

static void proc_buf_consume (struct proc_buf *b, size_t n) {
  b->start += n;
  if (b->scanned < b->start) b->scanned = b->start;
}

/* Is what the waiting reader asked for (mode) in the buffer, or at EOF? */
static int proc_read_ready (struct braid_proc *p, int mode) {
  struct proc_buf *b = &p->out[P_STDOUT];
  if (!p->live[P_STDOUT]) return 1;
  if (mode == READ_ALL) return 0;
  if (b->scanned < b->len) {
    char *nl = memchr(b->data + b->scanned, '\n', b->len - b->scanned);
    if (nl) {
      b->scanned = (size_t) (nl - b->data);
      return 1;
    }
    b->scanned = b->len;
  }
  return 0;
}

/* Resumes the op p holds (exec's or a reader's), if any; its continuation
** finds what it needs in p. */
static void proc_resume (struct braid_proc *p) {
  braid_op_t *op = p->op;
  if (op == NULL) return;
  p->op = NULL;
  braid_resume(op, 0);
}

/* Moves p on after anything happened: resumes exec's task once the child
** has exited and both outputs ended, resumes a reader that has its data,
** applies back-pressure, and closes the timer when nothing is left. */
static void proc_update (struct braid_proc *p) {
  int pipes = p->live[P_STDIN] || p->live[P_STDOUT] || p->live[P_STDERR];
  if (p->op && (p->exec ? p->exited && !p->live[P_STDOUT] &&
                          !p->live[P_STDERR]
                        : proc_read_ready(p, p->read_mode)))
    proc_resume(p);
  if (!p->exec && p->reading && p->op == NULL &&
      braid__list_empty(&p->waiters) &&
      p->out[P_STDOUT].len - p->out[P_STDOUT].start >= HIGH_WATER) {
    uv_read_stop((uv_stream_t *) &p->pipe[P_STDOUT]);
    p->reading = 0;
  }
  if (p->exited && !pipes) {
    proc_close_handle(p, P_TIMER);
    proc_detach(p);
  }
}

static void proc_kill_cb (uv_timer_t *h) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  if (p->live[P_PROC]) uv_process_kill(&p->proc, SIGKILL);
}

/* Stops the child and closes its pipes: SIGTERM now, SIGKILL after the
** kill grace; the exit callback reaps it. Runs no Lua (a scope's resource
** close, __gc and cancel hooks call it). */
static void proc_stop (struct braid_proc *p) {
  int i;
  proc_detach(p);
  for (i = P_STDIN; i <= P_STDERR; i++) proc_close_handle(p, i);
  p->reading = 0;
  if (p->live[P_PROC] && !p->exited && !p->stopping) {
    p->stopping = 1;
    uv_process_kill(&p->proc, SIGTERM);
    if (p->kill_grace_ms == 0) uv_process_kill(&p->proc, SIGKILL);
    else {
      uv_update_time(braid_loop(p->E));
      uv_timer_start(&p->timer, proc_kill_cb, p->kill_grace_ms, 0);
    }
  }
  proc_update(p);
}

static void proc_resource_close (struct braid_resource *r) {
  struct braid_proc *p = container_of(r, struct braid_proc, res);
  p->attached = 0;             /* the scope has unlinked it */
  proc_stop(p);
}

/* ---- libuv callbacks ---- */

static void proc_exit_cb (uv_process_t *h, int64_t status, int sig) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  p->exited = 1;
  p->code = status;
  p->signal = sig;
  if (p->stopping && p->live[P_TIMER]) uv_timer_stop(&p->timer);
  proc_close_handle(p, P_PROC);
  proc_close_handle(p, P_STDIN);   /* nobody reads it any more */
  while (!braid__list_empty(&p->waiters)) {
    struct exit_wait *ew = container_of(p->waiters.next, struct exit_wait,
                                        link);
    braid__list_remove(&ew->link);
    braid_resume(ew->op, 0);
  }
  proc_update(p);
}

static void proc_alloc_cb (uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  struct proc_buf *b = &p->out[(uv_pipe_t *) h - p->pipe];
  (void) hint;
  if (b->cap - b->len < READ_CHUNK && b->start > 0 &&
      b->start >= (b->len - b->start)) {   /* compact: cheaper than growing */
    memmove(b->data, b->data + b->start, b->len - b->start);
    b->len -= b->start;
    b->scanned -= b->start;
    b->start = 0;
  }
  if (b->cap - b->len < READ_CHUNK) {
    size_t cap = b->cap ? b->cap * 2 : READ_CHUNK;
    char *d;
    while (cap - b->len < READ_CHUNK) cap *= 2;
    d = realloc(b->data, cap);
    if (d == NULL) {             /* libuv reports UV_ENOBUFS to read_cb */
      buf->base = NULL;
      buf->len = 0;
      return;
    }
    b->data = d;
    b->cap = cap;
  }
  buf->base = b->data + b->len;
  buf->len = b->cap - b->len;
}

/* Data is appended in place (alloc_cb lent the buffer's tail). EOF and
** errors both end the stream: the pipe is closed and readers see the end. */
static void proc_read_cb (uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  struct braid_proc *p = (struct braid_proc *) s->data;
  int i = (int) ((uv_pipe_t *) s - p->pipe);
  (void) buf;
  if (n > 0) p->out[i].len += (size_t) n;
  else if (n < 0) {
    if (i == P_STDOUT) p->reading = 0;
    proc_close_handle(p, i);
  }
  proc_update(p);
}

static void proc_read_start (struct braid_proc *p, int i) {
  if (!p->live[i] || (i == P_STDOUT && p->reading)) return;
  if (uv_read_start((uv_stream_t *) &p->pipe[i], proc_alloc_cb,
                    proc_read_cb) != 0) {
    proc_close_handle(p, i);     /* an unreadable pipe reads as EOF */
    return;
  }
  if (i == P_STDOUT) p->reading = 1;
}

static void exec_stdin_cb (uv_write_t *req, int status) {
  struct braid_proc *p = container_of(req, struct braid_proc, stdin_req);
  (void) status;                 /* a child that stops reading is its call */
  proc_close_handle(p, P_STDIN);
  proc_update(p);
}

static void exec_timeout_cb (uv_timer_t *h) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  p->timed_out = 1;
  proc_resume(p);
  proc_stop(p);
}

/* ---- starting a child ---- */

static const char *signal_name (int sig, char *buf, size_t n) {
  int i;
  for (i = 0; signals[i].name; i++)
    if (signals[i].num == sig) return signals[i].name;
  snprintf(buf, n, "SIG%d", sig);
  return buf;
}

/* libuv writes to pipes with write(2): a child that closed its end must
** give the parent EPIPE, not kill it. Children get default dispositions
** back from libuv before exec. */
/* Seconds (already checked non-negative) as timer milliseconds, rounded
** up and clamped so that the conversion is always defined. */
static uint64_t proc_ms (double s) {
  return s >= 1e12 ? (uint64_t) 1e15 : (uint64_t) (s * 1000 + 0.999);
}

/* Starts argv (the list at 1) with the options at 2 (nil or a table) and
** the child's stdio as `flags` (0: /dev/null, -1: inherited, else pipe
** flags). Leaves one value on the stack (an anchor for the strings). On
** failure every handle is closed and a "spawn" error is raised.
** [-0, +1, e] */
static struct braid_proc *proc_spawn (lua_State *L, const char *fname,
                                      int stdio[3], double kill_grace) {
  braid_engine_t *E = braid_engine(L);
  uv_process_options_t o;
  uv_stdio_container_t io[3];
  struct braid_proc *p;
  char **args, **env = NULL;
  int i, n, anchor, rc;
  if (!lua_istable(L, 1))
    braid_argerror(L, 1, fname, "list expected (program and "
                          "arguments)");
  n = (int) luaL_len(L, 1);
  if (n < 1) braid_argerror(L, 1, fname, "empty argument list");
  lua_newtable(L);                                  /* anchors the strings */
  anchor = lua_gettop(L);
  args = lua_newuserdatauv(L, (size_t) (n + 1) * sizeof *args, 0);
  lua_rawsetp(L, anchor, args);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    if (!lua_isstring(L, -1))
      braid_argerror(L, 1, fname, "list of strings expected");
    args[i - 1] = (char *) lua_tostring(L, -1);
    lua_rawseti(L, anchor, i);
  }
  args[n] = NULL;
  memset(&o, 0, sizeof o);
  if (lua_istable(L, 2)) {
    if (lua_getfield(L, 2, "cwd") != LUA_TNIL) {
      if (!lua_isstring(L, -1))
        braid_usageerror(L, "bad option 'cwd' to '%s' (string expected)",
                           fname);
      o.cwd = lua_tostring(L, -1);
      lua_rawseti(L, anchor, n + 1);
    } else {
      lua_pop(L, 1);
    }
    if (lua_getfield(L, 2, "env") != LUA_TNIL) {
      int k = 0, env_idx = lua_gettop(L);
      if (!lua_istable(L, env_idx))
        braid_usageerror(L, "bad option 'env' to '%s' (table expected)",
                           fname);
      lua_pushnil(L);
      while (lua_next(L, env_idx)) { k++; lua_pop(L, 1); }
      env = lua_newuserdatauv(L, (size_t) (k + 1) * sizeof *env, 0);
      lua_rawsetp(L, anchor, env);
      k = 0;
      lua_pushnil(L);
      while (lua_next(L, env_idx)) {
        if (lua_type(L, -2) != LUA_TSTRING || !lua_isstring(L, -1))
          braid_usageerror(L, "bad option 'env' to '%s' (names and values "
                             "must be strings)", fname);
        lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
        env[k++] = (char *) lua_tostring(L, -1);
        lua_rawseti(L, anchor, n + 1 + k);
        lua_pop(L, 1);
      }
      env[k] = NULL;
    }
    lua_pop(L, 1);
  }
  p = calloc(1, sizeof *p);
  if (p == NULL)
    braid_error(L, "io", "ENOMEM", "%s: not enough memory", fname);
  p->E = E;
  p->owned = 1;
  p->kill_grace_ms = proc_ms(kill_grace);
  braid__list_init(&p->waiters);
  braid__list_init(&p->writes);
  p->res.close = proc_resource_close;
  uv_timer_init(braid_loop(E), &p->timer);
  p->timer.data = p;
  p->live[P_TIMER] = 1;
  p->open++;
  for (i = 0; i < 3; i++) {
    if (stdio[i] > 0) {
      uv_pipe_init(braid_loop(E), &p->pipe[i], 0);
      p->pipe[i].data = p;
      p->live[i] = 1;
      p->open++;
      io[i].flags = (uv_stdio_flags) stdio[i];
      io[i].data.stream = (uv_stream_t *) &p->pipe[i];
    } else if (stdio[i] < 0) {
      io[i].flags = UV_INHERIT_FD;
      io[i].data.fd = i;
    } else {
      io[i].flags = UV_IGNORE;
    }
  }
  o.exit_cb = proc_exit_cb;
  o.file = args[0];
  o.args = args;
  o.env = env;
  o.stdio_count = 3;
  o.stdio = io;
  p->proc.data = p;
  rc = uv_spawn(braid_loop(E), &p->proc, &o);
  p->live[P_PROC] = 1;           /* closed once even when spawn failed */
  p->open++;
  if (rc != 0) {
    for (i = 0; i < P_NHANDLES; i++) proc_close_handle(p, i);
    proc_release(p);
    braid_error(L, "spawn", uv_err_name(rc), "%s: cannot start '%s': "
                       "%s", fname, args[0], uv_strerror(rc));
  }
  p->pid = p->proc.pid;
  return p;
}

static void proc_push_status (lua_State *L, struct braid_proc *p) {
  char buf[16];
  if (p->signal) lua_pushnil(L);
  else lua_pushinteger(L, (lua_Integer) p->code);
  if (p->signal) lua_pushstring(L, signal_name(p->signal, buf, sizeof buf));
  else lua_pushnil(L);
}

/* ---- braid.exec ---- */

/* exec's op holds its proc, until exec_k or exec_cancel releases it. */
static struct braid_proc *exec_proc (braid_op_t *op) {
  return *(struct braid_proc **) braid_op_data(op);
}

/* The child is already running (proc_spawn needs the Lua stack, and its
** failures raise kind "spawn"): start only hands the op to the proc. */
static int exec_start (braid_op_t *op, void *ud) {
  struct braid_proc *p = (struct braid_proc *) ud;
  *(struct braid_proc **) braid_op_data(op) = p;
  p->op = op;
  return 0;
}

/* Cancelled (or abandoned after the child ended): stop it in the
** background; the proc frees itself once reaped. */
static void exec_cancel (braid_op_t *op) {
  struct braid_proc *p = exec_proc(op);
  p->op = NULL;
  proc_stop(p);
  proc_release(p);
}

static void buf_push (lua_State *L, struct proc_buf *b) {
  lua_pushlstring(L, b->data ? b->data + b->start : "", b->len - b->start);
}

/* Stack: argv (1), opts (2), anchor (3), stdin or nil (4). */
/* exec's result table from the ended process p (light userdata 1); runs
** under lua_pcall so that exec_k frees p even when this raises. */
static int exec_result (lua_State *L) {
  struct braid_proc *p = (struct braid_proc *) lua_touserdata(L, 1);
  lua_createtable(L, 0, 4);
  proc_push_status(L, p);
  lua_setfield(L, -3, "signal");
  lua_setfield(L, -2, "code");
  buf_push(L, &p->out[P_STDOUT]);
  lua_setfield(L, -2, "stdout");
  buf_push(L, &p->out[P_STDERR]);
  lua_setfield(L, -2, "stderr");
  return 1;
}

static int exec_k (lua_State *L, braid_op_t *op) {
  struct braid_proc *p = exec_proc(op);
  const char *name;
  int failed, rc;
  lua_rawgeti(L, 3, 1);       /* stack: argv, opts, anchor, stdin or nil */
  name = lua_tostring(L, -1);  /* anchored at 3 */
  lua_pop(L, 1);
  if (p->timed_out) {
    double s = 0;
    if (lua_istable(L, 2)) {
      lua_getfield(L, 2, "timeout");
      s = lua_tonumber(L, -1);
    }
    proc_release(p);
    return braid_error(L, "timeout", NULL, "exec: command '%s' timed "
                              "out after %f s", name, s);
  }
  lua_pushcfunction(L, exec_result);
  lua_pushlightuserdata(L, p);
  rc = lua_pcall(L, 1, 1, 0);
  failed = p->signal != 0 || p->code != 0;
  proc_release(p);
  if (rc != LUA_OK) return lua_error(L);   /* out of memory: p is freed */
  if (failed && lua_istable(L, 2) &&
      lua_getfield(L, 2, "check") != LUA_TNIL && lua_toboolean(L, -1)) {
    int r = lua_gettop(L) - 1;
    lua_getfield(L, r, "signal");
    if (lua_isnil(L, -1)) {
      lua_getfield(L, r, "code");
      braid_pusherror(L, "io", NULL, "command '%s' exited with status %d",
                        name, (int) lua_tointeger(L, -1));
    } else {
      braid_pusherror(L, "io", NULL, "command '%s' was killed by %s",
                        name, lua_tostring(L, -1));
    }
    lua_getfield(L, r, "code");
    lua_setfield(L, -2, "exit_code");
    lua_getfield(L, r, "signal");
    lua_setfield(L, -2, "signal");
    lua_getfield(L, r, "stdout");
    lua_setfield(L, -2, "stdout");
    lua_getfield(L, r, "stderr");
    lua_setfield(L, -2, "stderr");
    return lua_error(L);
  }
  lua_settop(L, 5);
  return 1;
}

static const char *const exec_options[] = {
  "cwd", "env", "stdin", "timeout", "check", "kill_grace", NULL
};

/* braid.exec(argv, [opts]) -> {code, signal, stdout, stderr}: runs argv[1]
** (searched in PATH; no shell) to completion with stdout and stderr
** captured, both read concurrently and never truncated. `code` is the exit
** status, nil when a signal ended the child; `signal` its name (such as
** "SIGKILL") or nil. opts: cwd; env (a table that replaces the whole
** environment); stdin (a string written to the child, then its stdin is
** closed; without it stdin is /dev/null); timeout (seconds; on expiry the
** child is stopped and a "timeout" error raised); check (when true, a
** non-zero status or a signal raises kind "io" with no `code` and the
** fields exit_code, signal, stdout and stderr); kill_grace (seconds between
** SIGTERM and SIGKILL when the child is stopped, default 2). Cancellation
** raises at once; the child is stopped and reaped in the background. A
** program that cannot start raises kind "spawn" with `code` (e.g. ENOENT). */
static int l_process_exec (lua_State *L) {
  braid_check_task(L, "exec");
  int stdio[3] = {0, UV_CREATE_PIPE | UV_WRITABLE_PIPE,
                  UV_CREATE_PIPE | UV_WRITABLE_PIPE};
  double timeout, grace;
  size_t len = 0;
  const char *in = NULL;
  struct braid_proc *p;
  braid__check_options(L, 2, "exec", exec_options);
  lua_settop(L, 2);
  timeout = braid__opt_number(L, 2, "timeout", -1, "exec");
  grace = braid__opt_number(L, 2, "kill_grace", 2.0, "exec");
  /* The stdin string (a number converted in place) stays at 4 on this
  ** stack for the whole op: stdin is closed before the op ends, by the
  ** exit or by exec_cancel, and nothing allocates after the spawn. */
  if (lua_istable(L, 2) && lua_getfield(L, 2, "stdin") != LUA_TNIL) {
    if (!lua_isstring(L, -1))
      braid_usageerror(L, "bad option 'stdin' to 'exec' (string "
                         "expected)");
    in = lua_tolstring(L, -1, &len);
    stdio[0] = UV_CREATE_PIPE | UV_READABLE_PIPE;
  }
  lua_settop(L, 3);
  braid_check_suspend(L, "exec");   /* before the child starts */
  p = proc_spawn(L, "exec", stdio, grace);                  /* 4: anchor */
  lua_insert(L, 3);                                 /* 3: anchor, 4: stdin */
  p->exec = 1;
  proc_read_start(p, P_STDOUT);
  proc_read_start(p, P_STDERR);
  if (in) {
    uv_buf_t b = uv_buf_init((char *) in, (unsigned) len);
    if (len == 0 || uv_write(&p->stdin_req, (uv_stream_t *) &p->pipe[P_STDIN],
                             &b, 1, exec_stdin_cb) != 0)
      proc_close_handle(p, P_STDIN);
  }
  uv_update_time(braid_loop(p->E));    /* the loop's cached time may be stale */
  if (timeout >= 0)
    uv_timer_start(&p->timer, exec_timeout_cb, proc_ms(timeout), 0);
  return braid_suspendk(L, "exec", sizeof p, exec_start, exec_cancel, p,
                        exec_k);
}

/* ---- braid.process ---- */

struct proc_box {
  struct braid_proc *p;
};

static struct braid_proc *proc_check (lua_State *L) {
  struct proc_box *box = luaL_checkudata(L, 1, PROC_MT);
  if (box->p == NULL)   /* only a finalizer can still see a collected one */
    braid_error(L, "closed", NULL, "process: the object was collected");
  return box->p;
}

static int read_start (braid_op_t *op, void *ud) {
  struct read_op *r = (struct read_op *) braid_op_data(op);
  *r = *(struct read_op *) ud;
  r->p->op = op;
  r->p->reader = op;
  r->p->read_mode = (unsigned char) r->mode;
  proc_read_start(r->p, P_STDOUT);
  return 0;
}

/* After a resume whose continuation never ran, another reader may hold
** p->op already. */
static void read_cancel (braid_op_t *op) {
  struct braid_proc *p = ((struct read_op *) braid_op_data(op))->p;
  if (p->op == op) p->op = NULL;
  if (p->reader == op) p->reader = NULL;
  proc_update(p);
}

/* Pushes what a reader in `mode` gets now; the caller checked it is ready. */
static int proc_read_push (lua_State *L, struct braid_proc *p, int mode) {
  struct proc_buf *b = &p->out[P_STDOUT];
  size_t n = b->len - b->start;
  if (mode == READ_LINE) {
    char *nl = n ? memchr(b->data + b->start, '\n', n) : NULL;
    if (nl) n = (size_t) (nl - (b->data + b->start));
    if (nl == NULL && n == 0) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushlstring(L, b->data + b->start, n);
    proc_buf_consume(b, n + (nl != NULL));
    return 1;
  }
  buf_push(L, b);
  proc_buf_consume(b, n);
  return 1;
}

/* The reader stayed p->reader since its resume, so no other task took
** its data meanwhile. */
static int read_k (lua_State *L, braid_op_t *op) {
  struct read_op *r = (struct read_op *) braid_op_data(op);
  r->p->reader = NULL;
  return proc_read_push(L, r->p, r->mode);
}

static int proc_read (lua_State *L, int mode, const char *fname) {
  struct read_op r;
  r.p = proc_check(L);
  r.mode = mode;
  braid_check_task(L, fname);
  lua_settop(L, 1);
  if (r.p->op || r.p->reader)
    braid_usageerror(L, "process:%s: another task is reading this "
                       "process's output", fname + 8);
  if (proc_read_ready(r.p, mode)) return proc_read_push(L, r.p, mode);
  braid_check_suspend(L, fname);   /* its message names fname */
  return braid_suspendk(L, mode == READ_LINE ? "process read_line"
                                             : "process read",
                        sizeof r, read_start, read_cancel, &r, read_k);
}

/* proc:read_line() -> the next line of stdout without its newline, or nil
** at the end. Cancelling it only stops this wait. */
static int l_process_read_line (lua_State *L) {
  return proc_read(L, READ_LINE, "process:read_line");
}

/* proc:read() -> the rest of stdout, until the child closes it ("" when
** nothing is left). */
static int l_process_read (lua_State *L) {
  return proc_read(L, READ_ALL, "process:read");
}

static int l_process_lines_iter (lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(1));
  return l_process_read_line(L);
}

/* proc:lines() -> an iterator over the lines of stdout, for `for ... in`. */
static int l_process_lines (lua_State *L) {
  proc_check(L);
  lua_settop(L, 1);
  lua_pushcclosure(L, l_process_lines_iter, 1);
  return 1;
}

/* The write's op data points at it until the write callback frees it. */
static void write_cb (uv_write_t *req, int status) {
  struct proc_write *wr = container_of(req, struct proc_write, req);
  braid_op_t *op = wr->op;
  if (wr->ref != LUA_NOREF) {    /* else stdin closed and let it go */
    braid__list_remove(&wr->link);
    braid__unref(wr->E, wr->ref);
  }
  free(wr);
  if (op == NULL) return;        /* cancelled: nobody waits */
  *(struct proc_write **) braid_op_data(op) = NULL;
  lua_pushinteger(braid_op_state(op), status);
  braid_resume(op, 1);
}

/* The uv_write_t stays libuv's until the callback: detach it. */
static void write_cancel (braid_op_t *op) {
  struct proc_write *wr = *(struct proc_write **) braid_op_data(op);
  if (wr) wr->op = NULL;
}

static int write_start (braid_op_t *op, void *ud) {
  struct proc_write *wr = (struct proc_write *) ud;
  *(struct proc_write **) braid_op_data(op) = wr;
  wr->op = op;
  return 0;
}

/* Stack: proc (1), s (2), the write's status (3). */
static int write_k (lua_State *L, braid_op_t *op) {
  int rc = (int) lua_tointeger(L, -1);
  (void) op;
  if (rc == UV_ECANCELED)
    return braid_error(L, "closed", NULL, "process:write: stdin was "
                              "closed during the write");
  if (rc < 0)
    return braid_error(L, "io", uv_err_name(rc), "process:write: %s",
                              uv_strerror(rc));
  lua_settop(L, 1);
  return 1;
}

/* proc:write(s) -> proc: writes s to the child's stdin and waits until it
** has been written (back-pressure). Raises kind "closed" after
** close_stdin, "io" (e.g. EPIPE) when the child closed its end. A
** cancelled write still completes in the background. */
static int l_process_write (lua_State *L) {
  struct braid_proc *p = proc_check(L);
  braid_check_task(L, "process:write");
  size_t len;
  const char *s;
  struct proc_write *wr;
  uv_buf_t b;
  int rc, ref;
  if (!lua_isstring(L, 2))
    braid_argerror(L, 2, "write", "string expected");
  s = lua_tolstring(L, 2, &len);
  lua_settop(L, 2);
  if (!p->live[P_STDIN])
    braid_error(L, "closed", NULL, "process:write: stdin is closed");
  if (len == 0) {
    lua_settop(L, 1);
    return 1;
  }
  braid_check_suspend(L, "process:write");
  lua_pushvalue(L, 2);           /* first: it may raise, calloc may not */
  ref = luaL_ref(L, LUA_REGISTRYINDEX);
  wr = calloc(1, sizeof *wr);
  if (wr == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    braid_error(L, "io", "ENOMEM", "process:write: not enough memory");
  }
  wr->E = p->E;
  wr->ref = ref;
  b = uv_buf_init((char *) s, (unsigned) len);
  rc = uv_write(&wr->req, (uv_stream_t *) &p->pipe[P_STDIN], &b, 1, write_cb);
  if (rc != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    free(wr);
    braid_error(L, "io", uv_err_name(rc), "process:write: %s",
                       uv_strerror(rc));
  }
  braid__list_push(&p->writes, &wr->link);
  /* Started here rather than in write_start, to keep the messages above;
  ** the checks are done, so braid_suspendk cannot raise before start. */
  return braid_suspendk(L, "process write", sizeof wr, write_start,
                        write_cancel, wr, write_k);
}

/* proc:close_stdin(): the child sees the end of its input. */
static int l_process_close_stdin (lua_State *L) {
  struct braid_proc *p = proc_check(L);
  proc_close_handle(p, P_STDIN);
  proc_update(p);
  return 0;
}

/* Joins p's exit waiters; a proc:wait() also keeps stdout read. */
static int exit_wait_start (braid_op_t *op, void *ud) {
  struct exit_wait *ew = (struct exit_wait *) braid_op_data(op);
  ew->op = op;
  ew->p = (struct braid_proc *) ud;
  braid__list_push(&ew->p->waiters, &ew->link);
  proc_read_start(ew->p, P_STDOUT);
  return 0;
}

/* Removing twice is harmless (a removed node points at itself). */
static void exit_wait_cancel (braid_op_t *op) {
  braid__list_remove(&((struct exit_wait *) braid_op_data(op))->link);
}

static int wait_k (lua_State *L, braid_op_t *op) {
  proc_push_status(L, ((struct exit_wait *) braid_op_data(op))->p);
  return 2;
}

/* proc:wait() -> code, signal: waits for the child to exit (code nil when
** a signal ended it). While a task waits, stdout keeps being read into
** memory, so a child blocked on a full pipe still gets to exit. */
static int l_process_wait (lua_State *L) {
  struct braid_proc *p = proc_check(L);
  braid_check_task(L, "process:wait");
  lua_settop(L, 1);
  if (p->exited) {
    proc_push_status(L, p);
    return 2;
  }
  braid_check_suspend(L, "process:wait");   /* its message */
  return braid_suspendk(L, "process wait", sizeof(struct exit_wait),
                        exit_wait_start, exit_wait_cancel, p, wait_k);
}

static int signal_check (lua_State *L, int arg) {
  const char *s;
  int i;
  if (lua_isnoneornil(L, arg)) return SIGTERM;
  if (lua_type(L, arg) == LUA_TNUMBER) {
    if (!lua_isinteger(L, arg) || lua_tointeger(L, arg) < 0 ||
        lua_tointeger(L, arg) > 64)
      braid_argerror(L, arg, "kill", "signal number out of range");
    return (int) lua_tointeger(L, arg);
  }
  s = lua_tostring(L, arg);
  if (s == NULL) braid_argerror(L, arg, "kill", "signal expected");
  for (i = 0; signals[i].name; i++)
    if (strcmp(s, signals[i].name) == 0 || strcmp(s, signals[i].name + 3) == 0)
      return signals[i].num;
  return braid_argerror(L, arg, "kill", "unknown signal name");
}

/* proc:kill([signal]) -> boolean: sends signal (a name such as "SIGTERM"
** or "TERM", or a number; default SIGTERM); false when the child has
** already exited. */
static int l_process_kill (lua_State *L) {
  struct braid_proc *p = proc_check(L);
  int sig = signal_check(L, 2);
  lua_pushboolean(L, p->live[P_PROC] && !p->exited &&
                     uv_process_kill(&p->proc, sig) == 0);
  return 1;
}

/* proc:close(), and __close: stops the child (SIGTERM, SIGKILL after
** kill_grace) and closes its pipes; then, where the task can wait, waits
** until the child is reaped. The wait is a courtesy (the child is reaped
** anyway), so a cancellation only cuts it short and close never raises;
** elsewhere (error unwinding, a cancelled task) the child is reaped in the
** background. */
static int l_process_close (lua_State *L) {
  struct braid_proc *p = proc_check(L);
  lua_settop(L, 1);
  proc_stop(p);
  if (p->exited) return 0;
  return braid_suspend_soft(L, "process stop", sizeof(struct exit_wait),
                            exit_wait_start, exit_wait_cancel, p);
}

/* The object is gone: stop the child; the proc frees itself once closed. */
static int l_process_gc (lua_State *L) {
  struct proc_box *box = (struct proc_box *) lua_touserdata(L, 1);
  if (box->p) {
    proc_stop(box->p);
    proc_release(box->p);
    box->p = NULL;
  }
  return 0;
}

static int l_process_index (lua_State *L) {
  struct braid_proc *p;
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  p = proc_check(L);
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "pid") == 0)
    lua_pushinteger(L, p->pid);
  else
    lua_pushnil(L);
  return 1;
}

static int l_process_tostring (lua_State *L) {
  struct braid_proc *p = proc_check(L);
  lua_pushfstring(L, "<process %d %s>", p->pid,
                  p->exited ? "exited" : p->stopping ? "stopping" : "running");
  return 1;
}

static const char *const process_options[] = {"cwd", "env", "kill_grace",
                                              NULL};

/* braid.process(argv, [opts]) -> proc: starts argv[1] (no shell) with
** stdin and stdout as pipes and stderr inherited, without waiting. opts:
** cwd, env, kill_grace (default 2 s). The proc belongs to the caller's
** innermost scope: still running when that scope ends, it is stopped
** (SIGTERM, SIGKILL after kill_grace, reaped). Raises kind "spawn" like
** exec. */
static int l_process_new (lua_State *L) {
  braid_check_task(L, "process");
  int stdio[3] = {UV_CREATE_PIPE | UV_READABLE_PIPE,
                  UV_CREATE_PIPE | UV_WRITABLE_PIPE, -1};
  struct proc_box *box;
  struct braid_proc *p;
  double grace;
  braid__check_options(L, 2, "process", process_options);
  lua_settop(L, 2);
  grace = braid__opt_number(L, 2, "kill_grace", 2.0, "process");
  box = lua_newuserdatauv(L, sizeof *box, 0);               /* 3 */
  box->p = NULL;
  luaL_setmetatable(L, PROC_MT);
  p = proc_spawn(L, "process", stdio, grace);               /* 4: anchor */
  box->p = p;
  p->attached = 1;
  braid_resource_add(L, &p->res);
  proc_read_start(p, P_STDOUT);
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
    {"exec", l_process_exec},
    {"process", l_process_new},
    {NULL, NULL}
  };
  braid__stream_sigpipe();
  braid__class(L, PROC_MT, metamethods, methods, l_process_index);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
