/*
** embed.c: what braid.h promises an application: engines on its own loop
** (or braid's), the libraries a state is opened with, running code as
** tasks, and the tasks it holds. Suspending C functions are suspend.c's,
** the limits memory.c's.
**
** Invariants:
** - An embedded engine is always "running": its tasks are members of the
**   top scope, which neither fails fast nor has a root task, so one
**   script's failure never cancels another's.
** - A task handed to the application is anchored in the registry table
**   E->anchors_ref until braid_task_release or braid_close.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lualib.h"
#include "core.h"

/* ---- opening a state with a chosen set of libraries ---- */

/* require without the package library: only what is already loaded
** (package.loaded: braid and the opened libraries). */
static int l_api_require (lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (lua_getfield(L, -1, name) != LUA_TNIL) return 1;
  return luaL_error(L, "module '%s' not found (this engine loads no "
                    "modules: only preloaded ones can be required)", name);
}

/* load(chunk, name, mode, env) with mode forced to "t". */
static int l_api_load (lua_State *L) {
  lua_settop(L, 4);
  lua_pushliteral(L, "t");
  lua_replace(L, 3);
  return braid__call_wrapped(L, 4);
}

static void api_openlibs (lua_State *L, unsigned libs) {
  static const struct { unsigned bit; const char *name; lua_CFunction f; }
  libtab[] = {
    {BRAID_LIB_BASE, LUA_GNAME, luaopen_base},
    {BRAID_LIB_PACKAGE, LUA_LOADLIBNAME, luaopen_package},
    {BRAID_LIB_COROUTINE, LUA_COLIBNAME, luaopen_coroutine},
    {BRAID_LIB_TABLE, LUA_TABLIBNAME, luaopen_table},
    {BRAID_LIB_IO, LUA_IOLIBNAME, luaopen_io},
    {BRAID_LIB_OS, LUA_OSLIBNAME, luaopen_os},
    {BRAID_LIB_STRING, LUA_STRLIBNAME, luaopen_string},
    {BRAID_LIB_MATH, LUA_MATHLIBNAME, luaopen_math},
    {BRAID_LIB_UTF8, LUA_UTF8LIBNAME, luaopen_utf8},
    {BRAID_LIB_DEBUG, LUA_DBLIBNAME, luaopen_debug},
  };
  /* braid's Lua side needs these; it keeps what it uses as it loads, and
  ** the ones the scripts may not have go after it (strings keep their
  ** methods: the string metatable is braid's too) */
  const unsigned own = BRAID_LIB_BASE | BRAID_LIB_TABLE | BRAID_LIB_STRING |
                       BRAID_LIB_MATH | BRAID_LIB_OS;
  size_t i;
  libs |= BRAID_LIB_BASE;
  for (i = 0; i < sizeof libtab / sizeof *libtab; i++) {
    if (!((libs | own) & libtab[i].bit)) continue;
    luaL_requiref(L, libtab[i].name, libtab[i].f, 1);
    lua_pop(L, 1);
  }
  /* braid itself: the library list opens only the modules allowed
  ** (E->modules), so a module left out is absent, not removed. */
  luaL_requiref(L, "braid", luaopen_braid, 1);
  lua_pop(L, 1);
  for (i = 0; i < sizeof libtab / sizeof *libtab; i++) {
    if (!(own & libtab[i].bit) || (libs & libtab[i].bit) ||
        libtab[i].bit == BRAID_LIB_OS) continue;
    lua_pushnil(L);
    lua_setglobal(L, libtab[i].name);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_pushnil(L);
    lua_setfield(L, -2, libtab[i].name);
    lua_pop(L, 1);
  }
  if (!(libs & BRAID_LIB_OS)) {   /* time, without the process and files */
    static const char *const keep[] = {"time", "clock", "date", "difftime"};
    lua_newtable(L);
    luaopen_os(L);
    for (i = 0; i < 4; i++) {
      lua_getfield(L, -1, keep[i]);
      lua_setfield(L, -3, keep[i]);
    }
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_setglobal(L, "os");
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_insert(L, -2);
    lua_setfield(L, -2, "os");
    lua_pop(L, 1);
  }
  if (libs & BRAID_LIB_BASE) {
    if (!(libs & BRAID_LIB_IO)) {
      lua_pushnil(L);
      lua_setglobal(L, "dofile");
      lua_pushnil(L);
      lua_setglobal(L, "loadfile");
    }
    if (!(libs & BRAID_LIB_BINARY)) {
      lua_getglobal(L, "load");
      lua_pushcclosure(L, l_api_load, 1);
      lua_setglobal(L, "load");
    }
  }
  if (!(libs & BRAID_LIB_PACKAGE)) {
    lua_pushcfunction(L, l_api_require);
    lua_setglobal(L, "require");
  }
}

/* setmetatable(t, mt), refusing a __gc: an engine whose scripts are limited
** cannot bound a finalizer (Lua runs them with hooks off, wherever memory
** is collected, also in braid_close). <close> is the way to clean up. */
static int l_api_setmetatable (lua_State *L) {
  /* raw, as Lua itself looks: no metamethod of the metatable runs here */
  if (lua_istable(L, 2) &&
      (lua_pushliteral(L, "__gc"), lua_rawget(L, 2)) != LUA_TNIL)
    return braid_usageerror(L, "setmetatable: __gc metamethods are not "
                            "allowed in this engine (its scripts are "
                            "limited; use <close> to clean up)");
  return braid__call_wrapped(L, 2);
}

static int l_api_open (lua_State *L) {
  braid_engine_t *E = (braid_engine_t *) lua_touserdata(L, 1);
  unsigned libs = (unsigned) lua_tointeger(L, 2);
  braid__engine_box(L, E);
  api_openlibs(L, libs);
  if (E->budget || E->mem_limit) {
    lua_getglobal(L, "setmetatable");
    lua_pushcclosure(L, l_api_setmetatable, 1);
    lua_setglobal(L, "setmetatable");
  }
  lua_newtable(L);
  E->anchors_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}


/* ---- engine lifecycle ---- */

static void loop_finish (braid_engine_t *E);

braid_engine_t *braid_new (uv_loop_t *loop, const braid_options_t *opts) {
  static const braid_options_t defaults;
  braid_engine_t *E = braid__engine_new();
  lua_State *L;
  int rc;
  if (opts == NULL) opts = &defaults;
  if (E == NULL) return NULL;
  E->embedded = 1;
  E->modules = opts->modules & BRAID_MODS_ALL;
  E->mem_limit = opts->memory_limit;
  E->budget = opts->instruction_budget > 0 ? opts->instruction_budget : 0;
  E->binary = ((opts->libs ? opts->libs : BRAID_LIBS_SAFE) &
               BRAID_LIB_BINARY) != 0;
  E->files = ((opts->libs ? opts->libs : BRAID_LIBS_SAFE) &
              BRAID_LIB_IO) != 0;
  if (loop == NULL) {
    if (braid__loop_init(&E->own_loop) != 0) {
      free(E);
      return NULL;
    }
    E->owns_loop = 1;
    loop = &E->own_loop;
  }
  if (!opts->plain_malloc) E->arena = braid__arena_new();
  L = lua_newstate(braid__alloc, E);
  if (L == NULL) goto fail_loop;
  lua_pushcfunction(L, l_api_open);
  lua_pushlightuserdata(L, E);
  lua_pushinteger(L, opts->libs ? opts->libs : BRAID_LIBS_SAFE);
  if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
    lua_close(L);   /* the box's __gc leaves E to us (embedded) */
    goto fail_loop;
  }
  /* What can fail comes before the loop has any handle of braid's: a
  ** braid_new that returns NULL leaves nothing on the application's loop
  ** (uv_idle_init and uv_timer_init do not fail on Unix). */
  braid__reserve_take(E);   /* not counted against the memory limit */
  if (E->reserve == NULL ||
      (opts->trace && braid__trace_open(E, opts->trace) != 0))
    goto fail_state;
  if ((rc = braid__engine_attach(E, loop, opts->signals)) != 0) {
    braid__trace_close(E);
    goto fail_state;
  }
  braid__scope_init(&E->top, E, SCOPE_TOP, NULL, NULL);
  E->running = 1;   /* braid.run from Lua is refused: tasks run already */
  return E;
fail_state:
  lua_close(L);
  braid__reserve_free(E);
fail_loop:
  braid__arena_free(E->arena);   /* after lua_close: its blocks are gone */
  if (E->owns_loop) loop_finish(E);
  braid__engine_unref(E);   /* a handle that attach closed holds E still */
  return NULL;
}

lua_State *braid_state (braid_engine_t *E) {
  return E->L;
}

uv_loop_t *braid_loop (braid_engine_t *E) {
  return E->loop;
}

/* braid_close from a callback of the loop braid_run drives leaves E's
** memory to braid_run's reference, and braid's own loop to braid_run to
** close once uv_run has returned. */
int braid_run (braid_engine_t *E, uv_run_mode mode) {
  int live;
  /* From a task or one of braid's callbacks on that loop: a nested uv_run
  ** resumed other tasks under the running one and crashed the scheduler. */
  if (E->in_run || E->current || E->calls > 0 ||
      (braid__draining != NULL && braid__draining->loop == E->loop))
    return UV_EBUSY;
  E->refs++;
  E->in_run = 1;
  uv_run(E->loop, mode);
  E->in_run = 0;
  if (E->L == NULL) {   /* closed meanwhile */
    live = 0;
    if (E->owns_loop) loop_finish(E);
  } else {
    live = (int) E->live;
  }
  braid__engine_unref(E);
  return live;
}

/* Abandons every task left at the top; runs under lua_pcall on E->S. */
static int l_api_abandon (lua_State *S) {
  braid_engine_t *E = (braid_engine_t *) lua_touserdata(S, 1);
  braid__scope_each_task(&E->top, braid__abandon_each, NULL);
  return 0;
}

/* What is still to finish on braid's own loop: handles closing (braid's,
** and any the application closed before braid_close), child processes
** braid killed and waits for, and the polls that wait on them and on
** workers' threads ending (their timers run meanwhile), and requests in
** flight (a file operation on the thread pool ends by itself and then
** touches the loop); left: any other handle, which braid does not wait
** for. */
struct loop_left { int pending, left; };

static void pending_walk_cb (uv_handle_t *h, void *arg) {
  struct loop_left *n = (struct loop_left *) arg;
  if (uv_is_closing(h) ||
      ((h->type == UV_PROCESS || h->type == UV_POLL) && uv_is_active(h) &&
       uv_has_ref(h)))
    n->pending++;
  else if (uv_is_active(h) || uv_has_ref(h))
    n->left++;
}

static void close_walk_cb (uv_handle_t *h, void *arg) {
  (void) arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Closes braid's own loop, outside uv_run. Runs it only while something
** of braid's is finishing (each of those wakes the loop): a handle the
** application left open there would have kept uv_run(UV_RUN_DEFAULT) from
** ever returning. Such a handle is the application's mistake (it closes
** its handles on braid_loop(E) before braid_close, docs/embedding.md):
** braid closes it, without the application's close callback, and says so. */
static void loop_finish (braid_engine_t *E) {
  struct loop_left n;
  for (;;) {
    n.pending = n.left = 0;
    uv_walk(&E->own_loop, pending_walk_cb, &n);
    if (n.pending == 0 && E->own_loop.active_reqs.count == 0) break;
    uv_run(&E->own_loop, UV_RUN_ONCE);
  }
  if (n.left > 0)
    fprintf(stderr, "braid_close: %d handle%s of the application still open "
            "on the engine's own loop: closed without their close "
            "callbacks (close them before braid_close)\n", n.left,
            n.left == 1 ? "" : "s");
  uv_walk(&E->own_loop, close_walk_cb, NULL);   /* and braid's idle ones */
  uv_run(&E->own_loop, UV_RUN_DEFAULT);
  uv_loop_close(&E->own_loop);
}

/* A block of the state's allocator that only a task object points to. */
struct state_block {
  void *p;
  size_t size;
};

/* Closes E's state and frees what braid keeps beside it: the spare wait
** records, the coroutine set, the reserve, the arena; and, after the
** state (its finalizers may still read them), the n blocks in live, of
** tasks that did not end (os.exit). */
static void engine_close_state (braid_engine_t *E, struct state_block *live,
                                size_t n) {
  void *ud;
  lua_Alloc f = lua_getallocf(E->L, &ud);
  size_t i;
  braid__wait_drop(E, E->L);
  braid__coset_drop(E, E->L);
  braid__arena_closing(E->arena);   /* no passes: it all goes */
  E->state_closing = 1;
  lua_close(E->L);
  for (i = 0; i < n; i++) f(ud, live[i].p, live[i].size, 0);
  braid__reserve_free(E);
  braid__arena_free(E->arena);   /* last: the reserve was the state's */
  E->arena = NULL;
  E->L = E->S = NULL;
}

/* os.exit(code, true) in an embedded engine (run.c), L its caller's
** thread, inside a task or not; the process exits next. Nothing can be
** abandoned and waited for, so the tasks stay as they are and the state
** is closed under them, as Lua's os.exit closes it (finalizers run), but
** with what braid keeps beside it: the live tasks' wait records and their
** ops' data blocks, which only the task objects lead to. braid's signals
** go back and its handles stop; a braid_close after it (the application's
** atexit handler) does nothing. [-0, +0, -] */
void braid__engine_exit_close (braid_engine_t *E, lua_State *L) {
  struct state_block *live = NULL;
  size_t n = 0;
  int i;
  if (E->state_closing || E->L == NULL) return;   /* a finalizer's os.exit */
  E->closing = 1;
  E->running = 0;
  /* The task calling os.exit is freed with the state: braid_engine on
  ** another engine (the application's atexit closing it) read it through
  ** braid__draining and crashed. */
  E->current = NULL;
  if (braid__draining == E) braid__draining = NULL;
  braid__exit_hooks_drop(E);
  if (E->attached) {
    uv_idle_stop(&E->idle);
    uv_timer_stop(&E->timer);
  }
  braid__interrupt_detach(E);
  if (E->slot_top > 0 && lua_checkstack(L, 2) &&
      (live = (struct state_block *) malloc(2 * (size_t) E->slot_top *
                                            sizeof *live)) != NULL) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, E->tasks_ref);
    for (i = 1; i <= E->slot_top; i++) {
      struct braid_task *t = (struct braid_task *) (
        lua_rawgeti(L, -1, i) == LUA_TUSERDATA ? lua_touserdata(L, -1) : NULL);
      if (t && t->type == &braid__task_type && t->w) {
        /* Undone in C as an abandonment does (no Lua runs): what a wait
        ** holds outside the state (a shared channel's reference) goes. */
        if (t->waiting && t->w->cancel) t->w->cancel(t->w);
        else braid__op_release(t);
        t->waiting = 0;
        if ((live[n].p = braid__op_data_take(t->w, &live[n].size)) != NULL)
          n++;
        live[n].p = t->w;
        live[n++].size = sizeof(struct braid_started);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  E->ready_head = E->ready_tail = NULL;   /* what those undos woke too */
  {   /* the scopes' cold parts are malloc'd beside the state too */
    struct braid_scope *s = &E->top;
    int depth = -1;
    do {
      if (s->more) {
        braid_timer_stop(E, &s->more->deadline);
        braid_timer_stop(E, &s->more->grace);
        free(s->more);
        s->more = NULL;
        s->own_grace = 0;
      }
    } while ((s = braid__scope_next(&E->top, s, &depth)) != NULL);
  }
  engine_close_state(E, live, n);   /* without live: only they stay */
  free(live);
}

void braid_close (braid_engine_t *E) {
  if (E->closing) return;   /* from a cancel hook braid_close runs */
  if (E->calls > 0) {       /* from an on_cancel (also one a task's cancel
                            ** runs): when braid's call ends */
    E->close_later = 1;
    return;
  }
  if (E->current) {   /* the running task's own stack would be freed */
    fprintf(stderr, "braid_close: called from inside a task\n");
    abort();
  }
  E->closing = 1;
  braid__engine_call(E, l_api_abandon, E);
  if (E->trace) braid__trace_close(E);
  braid__scope_release(&E->top);
  /* Handles still closing outlive E on the application's loop: their
  ** exit hooks leave the list now (interrupt.c). */
  braid__exit_hooks_drop(E);
  E->ready_head = E->ready_tail = NULL;
  E->running = 0;
  braid__engine_detach(E);
  if (E->owns_loop && !E->in_run) loop_finish(E);
  engine_close_state(E, NULL, 0);   /* every task has ended (abandoned) */
  braid__engine_unref(E);   /* the state's reference; handles hold theirs */
}

/* ---- running code ---- */

/* [E, fn, args...] -> task pointer; anchored for the application. */
static int l_api_spawn (lua_State *L) {
  braid_engine_t *E = (braid_engine_t *) lua_touserdata(L, 1);
  struct braid_task *t = braid__task_spawn(L, &E->top, 2, lua_gettop(L) - 2);
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->anchors_ref);
  lua_pushlightuserdata(L, t);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pushlightuserdata(L, t);
  return 1;
}

int braid_spawn_function (braid_engine_t *E, int nargs, braid_task_t **out) {
  lua_State *L = E->L;
  struct braid_task *t;
  if (out) *out = NULL;
  if (nargs < 0 || lua_gettop(L) < nargs + 1) return UV_EINVAL;
  if (E->current) {   /* from a C function inside a task: not supported */
    lua_pop(L, nargs + 1);
    return UV_EINVAL;
  }
  lua_pushcfunction(L, l_api_spawn);
  lua_insert(L, -(nargs + 2));
  lua_pushlightuserdata(L, E);
  lua_insert(L, -(nargs + 2));
  if (lua_pcall(L, nargs + 2, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    return UV_ENOMEM;
  }
  t = (struct braid_task *) lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (out) *out = t;
  else braid_task_release(E, t);
  return 0;
}

static int api_loaded (braid_engine_t *E, int status, braid_task_t **out) {
  if (status != LUA_OK) {
    if (out) *out = NULL;
    return status == LUA_ERRMEM ? UV_ENOMEM
         : status == LUA_ERRFILE ? UV_ENOENT : UV_EINVAL;
  }
  return braid_spawn_function(E, 0, out);
}

int braid_run_string (braid_engine_t *E, const char *code,
                      const char *chunkname, braid_task_t **out) {
  const char *mode = E->binary ? "bt" : "t";
  int status;
  E->refusable = 1;
  status = luaL_loadbufferx(E->L, code, strlen(code),
                            chunkname ? chunkname : code, mode);
  E->refusable = 0;
  return api_loaded(E, status, out);
}

int braid_run_file (braid_engine_t *E, const char *path, braid_task_t **out) {
  int status;
  E->refusable = 1;
  status = luaL_loadfilex(E->L, path, E->binary ? "bt" : "t");
  E->refusable = 0;
  return api_loaded(E, status, out);
}

int braid_task_status (braid_task_t *task) {
  return task->status;
}

int braid_task_result (braid_engine_t *E, braid_task_t *task) {
  lua_State *L = E->L;
  int n;
  if (!TASK_DONE(task)) return UV_EBUSY;
  if (!lua_checkstack(L, task->nres + 4)) return UV_ENOMEM;   /* not raised */
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->anchors_ref);
  lua_rawgetp(L, -1, task);
  lua_remove(L, -2);
  if (task->status != TASK_OK) {
    lua_getiuservalue(L, -1, 4);   /* its record, for braid_report */
    braid__error_hand(L, NULL);
    lua_pushboolean(L, 0);
    lua_getiuservalue(L, -2, 1);
    lua_remove(L, -3);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -2);
  n = lua_gettop(L);
  braid__task_results(L, n, 1);   /* ok, room checked: cannot raise */
  lua_remove(L, n);
  return lua_gettop(L) - n + 2;
}

int braid_cancel (braid_engine_t *E, braid_task_t *task) {
  if (TASK_DONE(task)) return UV_EALREADY;
  braid__engine_enter(E);
  braid__task_cancel(task, E->S, 0);
  braid__engine_leave(E);   /* a braid_close from on_cancel: E is gone */
  return 0;
}

void braid_task_release (braid_engine_t *E, braid_task_t *task) {
  lua_State *L = E->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->anchors_ref);
  lua_pushnil(L);
  lua_rawsetp(L, -2, task);
  lua_pop(L, 1);
}

