/*
** process.c: child processes on uv_spawn: a child's lifetime (shared with
** braid.exec, exec.c) and braid.process (streaming, to-be-closed). The
** child's pipes are io/stream.c's streams, the same as TCP's.
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
** - A child is always reaped: the process handle is closed only in the exit
**   callback (or after a failed uv_spawn, as libuv requires), and a stop
**   always sends SIGTERM and arms SIGKILL after kill_grace, so the exit
**   comes. Until then the handle keeps the loop running, and braid.run ends
**   only after it is closed.
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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static void proc_close_cb (uv_handle_t *h) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  p->open--;
  proc_maybe_free(p);
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
  if (!p->live[i]) return;
  p->live[i] = 0;
  uv_close(i == P_TIMER ? (uv_handle_t *) &p->timer
                        : (uv_handle_t *) &p->proc, proc_close_cb);
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
  if (!p->exec)
    braid__stream_drain(&p->pipe[P_STDOUT], !braid__list_empty(&p->waiters));
}

/* Did reading the pipe end otherwise than at its end (over exec's
** max_output, out of memory, a read error)? */
static int pipe_failed (struct braid_stream *s) {
  return s->rerr != 0 && s->rerr != UV_EOF;
}

void braid__proc_update (struct braid_proc *p) {
  int pipes = p->pipe[P_STDIN].live || p->pipe[P_STDOUT].live ||
              p->pipe[P_STDERR].live;
  if (p->op && ((p->exited && !p->pipe[P_STDOUT].live &&
                 !p->pipe[P_STDERR].live) ||
                pipe_failed(&p->pipe[P_STDOUT]) ||
                pipe_failed(&p->pipe[P_STDERR]))) {
    braid_op_t *op = p->op;
    p->op = NULL;
    braid_resume(op, 0);       /* its continuation finds the rest in p */
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

/* A scope's resource close, __gc and cancel hooks call it. */
void braid__proc_stop (struct braid_proc *p) {
  int i;
  proc_detach(p);
  for (i = P_STDIN; i <= P_STDERR; i++) proc_close_handle(p, i);
  if (p->live[P_PROC] && !p->exited && !p->stopping) {
    p->stopping = 1;
    uv_process_kill(&p->proc, SIGTERM);
    if (p->kill_grace_ns == 0) uv_process_kill(&p->proc, SIGKILL);
    else if (p->kill_grace_ns != BRAID_NEVER) {
      uv_update_time(braid_loop(p->E));
      uv_timer_start(&p->timer, proc_kill_cb,
                     braid__proc_ms(p->kill_grace_ns), 0);
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

/* Fills o's file, args, cwd and env from argv (the list at 1) and the
** options at 2 (nil or a table), as C strings anchored in the table it
** pushes. [-0, +1, e] */
static void proc_args (lua_State *L, const char *fname,
                       uv_process_options_t *o) {
  char **args, **env;
  int i, n, k, anchor, env_idx;
  if (!lua_istable(L, 1))
    braid_argerror(L, 1, fname, "list expected (program and arguments)");
  {   /* the raw length: a __len cannot shorten or overflow the list */
    size_t len = lua_rawlen(L, 1);
    if (len < 1) braid_argerror(L, 1, fname, "empty argument list");
    if (len > (1u << 20)) braid_argerror(L, 1, fname, "too many arguments");
    n = (int) len;
  }
  lua_newtable(L);
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
  o->file = args[0];
  o->args = args;
  if (!lua_istable(L, 2)) return;
  if (lua_getfield(L, 2, "cwd") != LUA_TNIL) {
    if (!lua_isstring(L, -1))
      braid_usageerror(L, "bad option 'cwd' to '%s' (string expected)",
                       fname);
    o->cwd = lua_tostring(L, -1);
    lua_rawseti(L, anchor, n + 1);
  } else {
    lua_pop(L, 1);
  }
  if (lua_getfield(L, 2, "env") == LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  env_idx = lua_gettop(L);
  if (!lua_istable(L, env_idx))
    braid_usageerror(L, "bad option 'env' to '%s' (table expected)", fname);
  k = 0;
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
  o->env = env;
  lua_pop(L, 1);
}

static const char *const pipe_names[3] = {"stdin", "stdout", "stderr"};

struct braid_proc *braid__proc_spawn (lua_State *L, const char *fname,
                                      int stdio[3], uint64_t kill_grace_ns) {
  braid_engine_t *E = braid_engine(L);
  uv_process_options_t o;
  uv_stdio_container_t io[3];
  struct braid_proc *p;
  int i, rc;
  memset(&o, 0, sizeof o);
  proc_args(L, fname, &o);                          /* the anchor */
  if ((p = calloc(1, sizeof *p)) == NULL)
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  p->E = E;
  p->owned = 1;
  p->kill_grace_ns = kill_grace_ns;
  braid__list_init(&p->waiters);
  p->res.close = proc_resource_close;
  uv_timer_init(braid_loop(E), &p->timer);
  p->timer.data = p;
  p->live[P_TIMER] = 1;
  p->open++;
  for (i = 0; i < 3; i++) {
    if (stdio[i] > 0) {
      struct braid_stream *s = &p->pipe[i];
      uv_pipe_init(braid_loop(E), &s->h.pipe, 0);
      braid__stream_init(s, E, &pipe_hooks, pipe_names[i]);
      s->h.handle.data = p;
      s->limit_opt = "braid.process";
      p->open++;
      io[i].flags = (uv_stdio_flags) stdio[i];
      io[i].data.stream = &s->h.stream;
    } else if (stdio[i] < 0) {
      io[i].flags = UV_INHERIT_FD;
      io[i].data.fd = i;
    } else {
      io[i].flags = UV_IGNORE;
    }
  }
  o.exit_cb = proc_exit_cb;
  o.stdio_count = 3;
  o.stdio = io;
  p->proc.data = p;
  rc = uv_spawn(braid_loop(E), &p->proc, &o);
  p->live[P_PROC] = 1;           /* closed once even when spawn failed */
  p->open++;
  if (rc != 0) {
    for (i = 0; i < P_NHANDLES; i++) proc_close_handle(p, i);
    braid__proc_release(p);
    braid_error(L, "spawn", uv_err_name(rc), "%s: cannot start '%s': %s",
                fname, o.file, uv_strerror(rc));
  }
  p->pid = p->proc.pid;
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
  return braid__stream_read_line(L, &p->pipe[P_STDOUT], "proc:read_line");
}

/* proc:read([n | "a"]) -> up to n bytes of stdout (nil at the end); "a",
** or no argument: the rest of stdout, until the child closes it ("" when
** nothing is left). */
static int l_process_read (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:read");
  return braid__stream_read(L, &p->pipe[P_STDOUT], BRAID_READ_ALL,
                            "proc:read");
}

/* proc:lines() -> an iterator over the lines of stdout, for `for ... in`. */
static int l_process_lines (lua_State *L) {
  proc_check(L, "proc:lines");
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
  if (lua_type(L, arg) == LUA_TNUMBER) {
    if (!lua_isinteger(L, arg) || lua_tointeger(L, arg) < 0 ||
        lua_tointeger(L, arg) > 64)
      braid_argerror(L, arg, "proc:kill", "signal number out of range");
    return (int) lua_tointeger(L, arg);
  }
  s = lua_tostring(L, arg);
  if (s == NULL) braid_argerror(L, arg, "proc:kill", "signal expected");
  if ((sig = braid__signame_find(s)) != NULL) return sig->num;
  return braid_argerror(L, arg, "proc:kill", "unknown signal name");
}

/* proc:kill([signal]) -> boolean: sends signal (a name such as "SIGTERM"
** or "TERM", or a number; default SIGTERM); false when the child has
** already exited. */
static int l_process_kill (lua_State *L) {
  struct braid_proc *p = proc_check(L, "proc:kill");
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

static const char *const process_options[] = {"cwd", "env", "kill_grace",
                                              "max_line", NULL};

/* braid.process(argv, [opts]) -> proc: starts argv[1] (no shell) with
** stdin and stdout as pipes and stderr inherited, without waiting. opts:
** cwd, env, kill_grace (default 2 s), max_line (read_line's limit). The
** proc belongs to the caller's innermost scope: still running when that
** scope ends, it is stopped (SIGTERM, SIGKILL after kill_grace, reaped).
** Raises kind "spawn" like exec. */
static int l_process_new (lua_State *L) {
  int stdio[3] = {UV_CREATE_PIPE | UV_READABLE_PIPE,
                  UV_CREATE_PIPE | UV_WRITABLE_PIPE, -1};
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
  p = braid__proc_spawn(L, "braid.process", stdio, grace);  /* 4: anchor */
  box->p = p;
  p->attached = 1;
  braid_resource_add(L, &p->res);
  p->pipe[P_STDOUT].max_line = max_line;
  braid__stream_start(&p->pipe[P_STDOUT]);
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
    {"process", l_process_new},
    {NULL, NULL}
  };
  braid__stream_sigpipe();
  braid__class(L, PROC_MT, metamethods, methods, l_process_index);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
  braid__open_exec(L);
}
