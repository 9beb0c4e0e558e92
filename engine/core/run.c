/*
** run.c: braid.run, the module's and the runner's way in: runs a function
** as the root task on a fresh loop until it and everything it started
** have ended, finds deadlocks, and closes the loop with nothing left open
** (uv_loop_close returning 0; a handle left open is an error).
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

/* Appends one line per live task below top to the buffer, the first
** REPORT_TASKS of them: a walk, not recursion (a deadlocked chain of 200k
** nested tasks overflowed the C stack), and a report a person can read. */
#define REPORT_TASKS 1000

static void describe_waits (lua_State *L, luaL_Buffer *b,
                            struct braid_scope *top) {
  struct braid_scope *s = top;
  int depth = -1, n = 0;
  while ((s = braid__scope_next(top, s, &depth)) != NULL) {
    struct braid_task *t = s->task;
    const char *where;
    if (s->kind != SCOPE_TASK || ++n > REPORT_TASKS) continue;   /* counted */
    where = braid__task_where(L, t);
    lua_pushfstring(L, "\n  task %I (%s%s) waits on %s",
                    (lua_Integer) t->id, braid__task_name(L, t, 0), where,
                    t->waiting ? t->w->what : "nothing");
    lua_remove(L, -2);
    luaL_addvalue(b);
  }
  if (n > REPORT_TASKS) {
    lua_pushfstring(L, "\n  ... and %d more tasks", n - REPORT_TASKS);
    luaL_addvalue(b);
  }
}

/* Every task waits and nothing can wake any of them: fail the root (or the
** REPL's running entry) with a "deadlock" error, which cancels
** everything below it; if even that cannot make progress (tasks waiting
** inside shields), abandon it. */
static void engine_deadlock (lua_State *L, braid_engine_t *E) {
  luaL_Buffer b;
  struct braid_task *victim = braid__engine_victim(E);
  if (E->deadlocks++ > 0) {
    braid__task_abandon(victim);
    return;
  }
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "deadlock: every task is waiting and nothing can wake "
                 "them:");
  describe_waits(L, &b, &E->top);
  luaL_pushresult(&b);
  braid_pusherror(L, "deadlock", NULL, "%s", lua_tostring(L, -1));
  braid__scope_fail(L, &victim->scope, -1, 0);
  lua_pop(L, 2);
}

static void close_walk_cb (uv_handle_t *h, void *arg) {
  int *n = (int *) arg;
  if (!uv_is_closing(h)) {
    fprintf(stderr, "braid: internal: handle of type %s left open\n",
            uv_handle_type_name(uv_handle_get_type(h)));
    uv_close(h, NULL);
  }
  (*n)++;
}

/* Closes braid's handles and the loop; returns uv_loop_close's result. */
static int engine_close_loop (braid_engine_t *E) {
  int left = 0;
  braid__engine_detach(E);
  uv_run(E->loop, UV_RUN_DEFAULT);
  uv_walk(E->loop, close_walk_cb, &left);
  uv_run(E->loop, UV_RUN_DEFAULT);
  return uv_loop_close(E->loop) != 0 ? -1 : -left;
}


#define OS_EXIT "braid.os_exit"   /* Lua's os.exit, in the registry */

static const char *const run_options[] = {"clock", "seed", "grace", "trace",
                                          NULL};

/* braid.run(fn, [opts]) -> ...: runs fn as the root task on a fresh loop
** until it and everything it started have ended. */
static int l_run_run (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  int status, rc;
  if (!braid__is_callable(L, 1))
    braid_argerror(L, 1, "braid.run", "function expected");
  braid__check_options(L, 2, "braid.run", run_options);
  if (E->running)
    braid_usageerror(L, "braid.run: braid is already running (inside a "
                       "task, use braid.spawn, braid.scope or task:await)");
  E->virtual_clock = 0;
  E->grace_ns = braid__opt_seconds(L, 2, "grace", 5000000000u, "braid.run");
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "clock");
    if (!lua_isnil(L, -1)) {
      const char *c = lua_tostring(L, -1);
      if (c == NULL || (strcmp(c, "real") != 0 && strcmp(c, "virtual") != 0))
        braid_usageerror(L, "bad option 'clock' to 'braid.run' (\"real\" or "
                           "\"virtual\" expected)");
      E->virtual_clock = strcmp(c, "virtual") == 0;
    }
    lua_pop(L, 1);
    /* The scheduler is deterministic by itself (FIFO, and on the virtual
    ** clock timers fire in a fixed order); the seed makes the script's own
    ** math.random reproducible too. */
    lua_getfield(L, 2, "seed");
    if (!lua_isnil(L, -1)) {
      if (!lua_isinteger(L, -1))
        braid_usageerror(L, "bad option 'seed' to 'braid.run' (integer "
                         "expected)");
      lua_getglobal(L, "math");
      if (lua_istable(L, -1) && lua_getfield(L, -1, "randomseed") == LUA_TFUNCTION) {
        lua_pushvalue(L, -3);
        lua_call(L, 1, 0);
      }
    }
  }
  lua_settop(L, 2);
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "trace");   /* 3: the file, opened after the loop */
    if (!lua_isnil(L, 3) && lua_type(L, 3) != LUA_TSTRING)
      braid_usageerror(L, "bad option 'trace' to 'braid.run' (file name "
                       "expected, got %s)", luaL_typename(L, 3));
  }
  lua_settop(L, 3);
  lua_remove(L, 2);   /* 2: the trace file or nil */
  braid__error_forget(L);   /* nothing of a previous run is found */
  if (braid__run_alloc_begin(L, E) != 0)
    return braid_error(L, "memory", NULL, "braid.run: not enough memory");
  if ((rc = braid__loop_init(&E->own_loop)) != 0) {
    braid__run_alloc_end(L, E);
    braid__error_uv(L, rc, "braid.run");
  }
  if ((rc = braid__engine_attach(E, &E->own_loop, 1)) != 0) {
    engine_close_loop(E);
    braid__run_alloc_end(L, E);
    braid__error_uv(L, rc, "braid.run");
  }
  E->vnow = 0;
  if (lua_isstring(L, 2) && (rc = braid__trace_open(E, lua_tostring(L, 2)))) {
    engine_close_loop(E);
    braid__run_alloc_end(L, E);
    braid_error(L, "io", braid__errname(rc), "braid.run: cannot write the "
                "trace %s: %s", lua_tostring(L, 2), braid__strerror(rc));
  }
  lua_settop(L, 1);
  E->io_ops = E->noyield = 0;
  E->armed_due = 0;
  E->interrupted = E->deadlocks = E->interrupt_sig = 0;
  E->exiting = 0;
  E->late_rc = 0;
  memset(&E->top, 0, sizeof E->top);
  braid__scope_init(&E->top, E, SCOPE_TOP, NULL, NULL);
  E->running = 1;
  E->root = braid__task_spawn(L, &E->top, 1, 0);        /* 2: root task */
  lua_pushliteral(L, "main");
  if (E->trace) braid__trace_rename(E->root, L, -1);
  lua_setiuservalue(L, 2, 2);
  for (;;) {
    uv_run(E->loop, UV_RUN_DEFAULT);
    if (TASK_DONE(E->root)) break;
    if (E->virtual_clock && braid__timer_advance(E)) continue;
    engine_deadlock(L, E);
  }
  if (E->trace) braid__trace_close(E);   /* every way out passes here */
  braid__scope_release(&E->top);
  E->session = NULL;
  E->entry = NULL;
  E->running = 0;
  E->root = NULL;
  rc = engine_close_loop(E);
  braid__wait_drop(E, L);   /* every task has ended: all are spare */
  braid__task_pool_drop(L, E);   /* its coroutines are in the set: */
  braid__coset_drop(E, L);       /* the next run starts both afresh */
  braid__run_alloc_end(L, E);
  status = ((struct braid_task *) lua_touserdata(L, 2))->status;
  if (E->exiting) {            /* os.exit: everything has ended; now exit */
    int code = E->exit_code;
    if (status == TASK_FAILED) {   /* cleanup raised: never lost, and the */
      lua_getiuservalue(L, 2, 1);  /* status says it, as after a signal */
      lua_getiuservalue(L, 2, 4);
      braid__error_report(L, -2, -1, "braid: ");
      code = EXIT_FAILURE;
    } else if (E->late_rc) {       /* so is a write that failed late */
      fprintf(stderr, "braid: %s: %s\n", E->late_fname,
              braid__strerror(E->late_rc));
      code = EXIT_FAILURE;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, OS_EXIT);
    lua_pushinteger(L, code);
    lua_pushboolean(L, E->exit_close);
    lua_call(L, 2, 0);
  }
  if (rc != 0)
    braid_error(L, "io", NULL, "braid.run: %d libuv handle(s) were "
                       "left open at exit", rc < 0 ? -rc : rc);
  if (E->oom && status == TASK_OK)   /* after the root had ended */
    braid_error(L, "memory", NULL, "not enough memory (braid's "
                       "scheduler ran out and spent its reserve)");
  if (E->late_rc && status == TASK_OK) {   /* an error is never silent */
    rc = E->late_rc;
    E->late_rc = 0;
    braid__error_uv(L, rc, E->late_fname);
  }
  if (E->interrupted && status != TASK_OK) {
    lua_getiuservalue(L, 2, 4);   /* its record, for the runner's report */
    braid__error_hand(L, NULL);
    lua_getiuservalue(L, 2, 1);
    return lua_error(L);
  }
  return braid__task_results(L, 2, 1);
}


void braid__run_late_error (braid_engine_t *E, int rc, const char *fname) {
  if (E->late_rc) return;
  E->late_rc = rc;
  E->late_fname = fname;
}

/* os.exit([code [, close]]), replaced when braid is opened. Inside
** braid.run (the runner, the module, the REPL) and a task it cancels the
** root, as Ctrl-C does, and raises the cancellation here: cleanup runs
** (bounded by the grace period), every child is stopped and reaped, and
** braid.run then exits with code. Elsewhere (no task running, an embedded
** engine) it cannot wait: every child's group gets SIGKILL, then Lua's
** os.exit runs. An embedded engine's `close` is braid's own
** (braid__engine_exit_close, embed.c): Lua's would leave what braid keeps
** beside the state. */
static int l_os_exit (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  int code;
  if (lua_isboolean(L, 1)) code = lua_toboolean(L, 1) ? EXIT_SUCCESS
                                                      : EXIT_FAILURE;
  else code = (int) luaL_optinteger(L, 1, EXIT_SUCCESS);
  if (E && E->running && !E->embedded && E->current) {
    if (!E->exiting) {
      E->exiting = 1;
      E->exit_code = code;
      E->exit_close = (unsigned char) lua_toboolean(L, 2);
      lua_pushliteral(L, "exit");
      braid__scope_set_reason(L, &E->top, -1);
      braid__scope_cancel(&E->top, &E->top);
      lua_pop(L, 1);
    }
    braid__task_checkcancel(L, E->current);
    return 0;                  /* in a shield: the exit comes after it */
  }
  if (E) braid__exit_hooks_run(E);
  if (E && E->embedded && lua_toboolean(L, 2)) {
    braid__engine_exit_close(E, L);
    exit(code);
  }
  lua_getfield(L, LUA_REGISTRYINDEX, OS_EXIT);
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 0);
  return 0;
}

/* Puts l_os_exit in place of os.exit, once per state. */
static void replace_os_exit (lua_State *L) {
  int top = lua_gettop(L);
  if (lua_getfield(L, LUA_REGISTRYINDEX, OS_EXIT) == LUA_TNIL &&
      lua_getglobal(L, "os") == LUA_TTABLE &&
      lua_getfield(L, -1, "exit") == LUA_TFUNCTION) {
    lua_setfield(L, LUA_REGISTRYINDEX, OS_EXIT);
    lua_pushcfunction(L, l_os_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_settop(L, top);
}

static int l_run_interrupted (lua_State *L) {
  lua_pushboolean(L, braid_engine(L)->interrupted);
  return 1;
}

/* ---- the REPL's session ---- */

void braid__session_set (braid_engine_t *E, struct braid_session *session) {
  E->session = session;
  if (session == NULL) E->entry = NULL;
}

void braid__session_entry (braid_engine_t *E, struct braid_task *entry) {
  E->entry = entry;
  E->deadlocks = 0;   /* each entry may be failed by a deadlock once */
}

static void session_cancel_one (struct braid_task *t, void *ud) {
  (void) t;
  (*(int *) ud)++;
}

int braid__session_cancel (lua_State *L, int idx) {
  braid_engine_t *E = braid_engine(L);
  struct braid_scope *s = &E->root->scope;
  int count = 0;
  braid__scope_each_task(s, session_cancel_one, &count);
  braid__scope_set_reason(L, s, idx);
  braid__scope_cancel(s, s);
  return count;
}

void braid__open_engine (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"run", l_run_run},
    {"_interrupted", l_run_interrupted},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
  replace_os_exit(L);
}
