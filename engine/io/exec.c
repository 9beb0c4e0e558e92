/*
** exec.c: braid.exec: runs a child to completion with stdout and stderr
** captured, on the child's lifetime of process.c; both outputs are
** io/stream.c's streams, drained (read into memory however much comes).
**
** Invariants:
** - exec's task owns the proc from the spawn until its continuation or its
**   cancel hook releases it; the op (p->op) is resumed once the child has
**   exited and both outputs have ended, or at the timeout.
** - opts.stdin is written with the proc's own request (stdin_req) from the
**   string on exec's stack, which stays there for the whole op, in buffers
**   under 4 GiB each: stdin is closed before the op ends, by the exit or by
**   the cancel hook, and nothing allocates on the Lua side between the
**   spawn and the suspension.
** - stdout and stderr are each capped at opts.max_output bytes (the
**   streams' max_buf) and charged against the memory limit: an output that
**   goes over, runs out of memory or fails to read resumes the op at once
**   (braid__proc_update), and exec_k stops the child before raising.
** - A cancelled exec returns at once; the child is stopped and reaped in
**   the background and the proc frees itself once its handles closed.
*/
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/process.h"

/* exec's op holds its proc, until exec_k or exec_cancel releases it. */
static struct braid_proc *exec_proc (braid_op_t *op) {
  return *(struct braid_proc **) braid_op_data(op);
}

/* braid_suspendk's ud: the child, and its command line when a trace is
** being recorded ("exec git status"). */
struct exec_args {
  struct braid_proc *p;
  const char *label;
};

/* The child is already running (braid__proc_spawn needs the Lua stack,
** and its failures raise kind "spawn"): start only hands the op to the
** proc. */
static int exec_start (braid_op_t *op, void *ud) {
  struct braid_proc *p = ((struct exec_args *) ud)->p;
  if (((struct exec_args *) ud)->label)
    braid_op_label(op, "%s", ((struct exec_args *) ud)->label);
  *(struct braid_proc **) braid_op_data(op) = p;
  p->op = op;
  return 0;
}

/* Cancelled (or abandoned after the child ended): stop it in the
** background; the proc frees itself once reaped. */
static void exec_cancel (braid_op_t *op) {
  struct braid_proc *p = exec_proc(op);
  p->op = NULL;
  braid__proc_stop(p);
  braid__proc_release(p);
}

static void exec_stdin_cb (uv_write_t *req, int status) {
  struct braid_proc *p = container_of(req, struct braid_proc, stdin_req);
  (void) status;                 /* a child that stops reading is its call */
  braid__stream_close(&p->pipe[P_STDIN]);
  braid__proc_update(p);
}

static void exec_timeout_cb (uv_timer_t *h) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  braid_op_t *op = p->op;
  p->timed_out = 1;
  p->op = NULL;
  if (op) braid_resume(op, 0);
  braid__proc_stop(p);
}

/* exec's result table from the ended process p (light userdata 1), or the
** error of an output that failed (longer than max_output, out of memory,
** a read error: the child may still run then); runs under lua_pcall so
** that exec_k frees p even when this raises. */
static int exec_result (lua_State *L) {
  struct braid_proc *p = (struct braid_proc *) lua_touserdata(L, 1);
  int i;
  for (i = P_STDOUT; i <= P_STDERR; i++)
    if (p->pipe[i].hooks && p->pipe[i].rerr != UV_EOF)   /* raises */
      braid__stream_take(L, &p->pipe[i], BRAID_READ_ALL, 0, "braid.exec");
  lua_createtable(L, 0, 4);
  braid__proc_push_status(L, p);
  lua_setfield(L, -3, "signal");
  lua_setfield(L, -2, "code");
  for (i = P_STDOUT; i <= P_STDERR; i++) {   /* nil: not captured */
    if (p->pipe[i].hooks == NULL) continue;
    braid__stream_take(L, &p->pipe[i], BRAID_READ_ALL, 0, "braid.exec");
    lua_setfield(L, -2, i == P_STDOUT ? "stdout" : "stderr");
  }
  return 1;
}

/* Raises check's error from the result r (below the command line `name`,
** at the top). */
static int exec_check_error (lua_State *L, const char *name) {
  int r = lua_gettop(L) - 1;
  lua_getfield(L, r, "signal");
  if (lua_isnil(L, -1)) {
    lua_getfield(L, r, "code");
    braid_pusherror(L, "io", NULL, "braid.exec: command \"%s\" exited "
                    "with status %d", name, (int) lua_tointeger(L, -1));
  } else {
    braid_pusherror(L, "io", NULL, "braid.exec: command \"%s\" was "
                    "killed by %s", name, lua_tostring(L, -1));
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

/* Stack: argv (1), opts (2), anchor (3), stdin or nil (4). */
static int exec_k (lua_State *L, braid_op_t *op) {
  struct braid_proc *p = exec_proc(op);
  int failed, rc, check = p->check, argc = p->argc;
  /* The options were read at the call: the script may have changed opts
  ** (even given it a raising __index) while it waited. The command line
  ** (argv's, anchored at 3) is built only for a message. */
  if (p->timed_out) {
    double s = (double) p->timeout_ns / 1e9;
    braid__proc_release(p);
    braid__proc_push_cmdline(L, 3, argc);
    return braid_error(L, "timeout", NULL, "braid.exec: command \"%s\" "
                       "timed out after %f s", lua_tostring(L, -1), s);
  }
  lua_pushcfunction(L, exec_result);
  lua_pushlightuserdata(L, p);
  rc = lua_pcall(L, 1, 1, 0);
  failed = p->signal != 0 || p->code != 0;
  if (!p->exited) braid__proc_stop(p);   /* an output failed: stop it now */
  braid__proc_release(p);
  if (rc != LUA_OK) return lua_error(L);   /* p is freed */
  if (failed && check) {
    braid__proc_push_cmdline(L, 3, argc);
    return exec_check_error(L, lua_tostring(L, -1));
  }
  return 1;
}

static const char *const exec_options[] = {
  "cwd", "env", "env_add", "group", "interactive", "stdin", "stdout",
  "stderr", "timeout", "check", "kill_grace", "max_output", NULL
};

/* max_output's default, for each of stdout and stderr: exec returns its
** output as Lua strings, so anything near memory sizes belongs in
** braid.process's streams; 64 MiB is far beyond what commands whose output
** a script captures write (a build log, `git log`, a JSON dump), and a
** runaway one (`yes`, a loop, /dev/zero) fails within a second, having
** held at most that much per stream plus the string it would have become. */
#define EXEC_MAX_OUTPUT ((size_t) 64 << 20)

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
** SIGTERM and SIGKILL when the child is stopped, default 2); max_output
** (bytes each of stdout and stderr may hold, default 64 MiB, math.huge:
** no cap; one more byte stops the child and raises kind "limit").
** Cancellation raises at once; the child is stopped and reaped in the
** background, as after a timeout or an output over its cap. Running out of
** memory (the engine's memory_limit) while capturing raises kind "memory".
** A program that cannot start raises kind "spawn" with `code` (e.g.
** ENOENT). */
static int l_exec (lua_State *L) {
  struct braid_stdio io[3];
  uint64_t timeout, grace;
  size_t len = 0, max_output;
  int i, check, interactive;
  const char *in = NULL;
  struct braid_proc *p;
  struct exec_args a;
  char label[120];
  braid_check_task(L, "braid.exec");
  braid__check_options(L, 2, "braid.exec", exec_options);
  lua_settop(L, 2);
  timeout = braid__opt_seconds(L, 2, "timeout", BRAID_NEVER, "braid.exec");
  grace = braid__opt_seconds(L, 2, "kill_grace", 2000000000u, "braid.exec");
  max_output = braid__opt_limit(L, 2, "max_output", EXEC_MAX_OUTPUT,
                                "braid.exec");
  if (lua_istable(L, 2) && lua_getfield(L, 2, "stdin") != LUA_TNIL) {
    if (!lua_isstring(L, -1))
      braid_usageerror(L, "bad option 'stdin' to 'braid.exec' (string "
                       "expected)");
    in = lua_tolstring(L, -1, &len);   /* a number is converted in place */
  }
  /* interactive: the terminal is the child's (its stdio is braid's, and
  ** braid_spawn_args keeps it in braid's foreground group) */
  interactive = lua_istable(L, 2) &&
                (lua_getfield(L, 2, "interactive"), lua_toboolean(L, -1));
  if (interactive && in)
    braid_usageerror(L, "bad option 'stdin' to 'braid.exec' (an "
                     "interactive child reads the terminal)");
  io[0].how = in ? PROC_PIPE : interactive ? PROC_INHERIT : PROC_NULL;
  io[0].path = NULL;
  io[1] = braid__proc_stdio_opt(L, 2, "stdout",
                                interactive ? PROC_INHERIT : PROC_PIPE,
                                "braid.exec");
  io[2] = braid__proc_stdio_opt(L, 2, "stderr",
                                interactive ? PROC_INHERIT : PROC_PIPE,
                                "braid.exec");
  check = lua_istable(L, 2) &&
          (lua_getfield(L, 2, "check"), lua_toboolean(L, -1));
  lua_settop(L, 3);
  braid_check_suspend(L, "braid.exec");   /* before the child starts */
  p = braid__proc_spawn(L, "braid.exec", io, grace, 1);     /* 4: anchor */
  lua_insert(L, 3);                                 /* 3: anchor, 4: stdin */
  p->timeout_ns = timeout;
  p->check = (unsigned char) check;
  for (i = P_STDOUT; i <= P_STDERR; i++) {
    if (!p->pipe[i].live) {    /* not a pipe: nothing to capture */
      p->pipe[i].rerr = UV_EOF;
      continue;
    }
    p->pipe[i].max_buf = max_output;
    p->pipe[i].max_buf_opt = "max_output";
    braid__stream_drain(&p->pipe[i], 1);
  }
  if (in) {
    int rc = len == 0 ? UV_EOF :
             braid__stream_uv_write(&p->stdin_req, &p->pipe[P_STDIN].h.stream,
                                    in, len, exec_stdin_cb);
    if (rc != 0) braid__stream_close(&p->pipe[P_STDIN]);
    if (rc == UV_ENOMEM) {   /* no half-fed child: stop it, as a cancel does */
      braid__proc_stop(p);
      braid__proc_release(p);
      return braid_error(L, "memory", NULL, "braid.exec: not enough memory");
    }
  }
  uv_update_time(p->timer.loop);    /* the loop's cached time may be stale */
  if (timeout != BRAID_NEVER)
    uv_timer_start(&p->timer, exec_timeout_cb, braid__proc_ms(timeout), 0);
  a.p = p;
  a.label = NULL;
  if (braid_tracing(p->E)) {   /* "exec" and the argv (at 1): nothing that
                               ** could raise now that the child runs */
    size_t used = 4, k, n = (size_t) lua_rawlen(L, 1);
    memcpy(label, "exec", 5);
    for (k = 1; k <= n && used < sizeof label - 2; k++) {
      size_t l;
      const char *arg;
      lua_rawgeti(L, 1, (lua_Integer) k);
      if ((arg = lua_tolstring(L, -1, &l)) != NULL) {   /* strings only */
        if (l > sizeof label - 2 - used) l = sizeof label - 2 - used;
        label[used++] = ' ';
        memcpy(label + used, arg, l);
        used += l;
      }
      lua_pop(L, 1);
    }
    label[used] = '\0';
    a.label = label;
  }
  return braid_suspendk(L, "braid.exec", sizeof p, exec_start, exec_cancel, &a,
                        exec_k);
}

void braid__open_exec (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"exec", l_exec},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}
