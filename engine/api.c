/*
** api.c: what braid.h promises: engines on an application's loop, running
** code as tasks, suspending C functions, and the limits for untrusted
** scripts (a counting allocator, an instruction budget, capabilities).
**
** Invariants:
** - An embedded engine is always "running": its tasks are members of the
**   top scope, which neither fails fast nor has a root task, so one
**   script's failure never cancels another's.
** - A task handed to the application is anchored in the registry table
**   E->anchors_ref until braid_task_release or braid_close.
** - An op is its task's wait record; its results wait on the suspended
**   thread's stack, so abandoning the task (lua_resetthread) frees them;
**   the app holds the pointer only between start and its resume or cancel
**   hook (or, with a continuation, until k or on_cancel).
** - The memory limit applies while a task runs and while code is loaded;
**   the scheduler's own bookkeeping is never refused, so the task that
**   went over the limit fails and the engine carries on.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lualib.h"
#include "internal.h"

enum { OP_PENDING, OP_RESUMED, OP_FAILED, OP_NOMEM, OP_CANCELLED, OP_DONE };

/* ---- limits ---- */

/* lua_Alloc counting the state's bytes. Growth is refused past the limit
** only while a task runs or code loads: Lua then raises "not enough
** memory" in that task (or the load), after an emergency collection. */
void *braid__alloc (void *ud, void *ptr, size_t osize, size_t nsize) {
  braid_engine_t *E = (braid_engine_t *) ud;
  size_t old = ptr ? osize : 0;
  void *p;
  if (nsize == 0) {
    free(ptr);
    E->mem_used -= old;
    return NULL;
  }
  if (E->mem_limit && nsize > old && (E->current || E->loading) &&
      E->mem_used - old + nsize > E->mem_limit)
    return NULL;
  p = realloc(ptr, nsize);
  if (p == NULL) p = braid__reserve_spend(E, ptr, osize, nsize);
  if (p) E->mem_used = E->mem_used - old + nsize;
  return p;
}

static void budget_hook (lua_State *L, lua_Debug *ar) {
  braid_engine_t *E = braid__engine(L);
  (void) ar;
  /* From now on every instruction raises, in this coroutine and in the
  ** task's, so pcall cannot keep the task running. */
  lua_sethook(L, budget_hook, LUA_MASKCOUNT, 1);
  if (E->current) {
    E->current->nopool = 1;   /* hooks stay off after an error in one */
    if (E->current->co && E->current->co != L)
      lua_sethook(E->current->co, budget_hook, LUA_MASKCOUNT, 1);
  }
  luaL_error(L, "instruction budget exceeded (%d instructions without "
             "suspending)", E->budget);
}

/* Gives co a fresh budget for the resume about to happen. */
void braid__budget_set (braid_engine_t *E, lua_State *co) {
  lua_sethook(co, budget_hook, LUA_MASKCOUNT, E->budget);
}

size_t braid_memory_used (braid_engine_t *E) {
  return E->mem_used;
}

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
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 4, LUA_MULTRET);
  return lua_gettop(L);
}

static void api_openlibs (lua_State *L, unsigned libs, unsigned mods) {
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
  static const struct { unsigned bit; const char *name; } modtab[] = {
    {BRAID_MOD_PROCESS, "exec"}, {BRAID_MOD_PROCESS, "process"},
    {BRAID_MOD_FS, "fs"}, {BRAID_MOD_NET, "tcp"}, {BRAID_MOD_NET, "dns"},
    {BRAID_MOD_NET, "udp"}, {BRAID_MOD_SIGNAL, "signal"},
  };
  size_t i;
  libs |= BRAID_LIB_BASE;   /* braid's Lua side needs it */
  for (i = 0; i < sizeof libtab / sizeof *libtab; i++) {
    if (!(libs & libtab[i].bit)) continue;
    luaL_requiref(L, libtab[i].name, libtab[i].f, 1);
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
  luaL_requiref(L, "braid", luaopen_braid, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (i = 0; i < sizeof modtab / sizeof *modtab; i++) {
    if (mods & modtab[i].bit) continue;
    lua_pushnil(L);   /* braid.fs, and "braid.fs" should it be a module */
    lua_setfield(L, -4, modtab[i].name);
    lua_pushfstring(L, "braid.%s", modtab[i].name);
    lua_pushnil(L);
    lua_setfield(L, -4, lua_tostring(L, -2));
    lua_pushnil(L);
    lua_setfield(L, -3, lua_tostring(L, -2));
    lua_pop(L, 1);
  }
  lua_pop(L, 3);
}

static int l_api_open (lua_State *L) {
  braid_engine_t *E = (braid_engine_t *) lua_touserdata(L, 1);
  unsigned libs = (unsigned) lua_tointeger(L, 2);
  unsigned mods = (unsigned) lua_tointeger(L, 3);
  braid__engine_box(L, E);
  api_openlibs(L, libs, mods);
  lua_newtable(L);
  E->anchors_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* ---- engine lifecycle ---- */

braid_engine_t *braid_new (uv_loop_t *loop, const braid_options_t *opts) {
  static const braid_options_t defaults;
  braid_engine_t *E = braid__engine_new();
  lua_State *L;
  int rc;
  if (opts == NULL) opts = &defaults;
  if (E == NULL) return NULL;
  E->embedded = 1;
  E->mem_limit = opts->memory_limit;
  E->budget = opts->instruction_budget > 0 ? opts->instruction_budget : 0;
  E->binary = ((opts->libs ? opts->libs : BRAID_LIBS_SAFE) &
               BRAID_LIB_BINARY) != 0;
  if (loop == NULL) {
    if (uv_loop_init(&E->own_loop) != 0) {
      free(E);
      return NULL;
    }
    E->owns_loop = 1;
    loop = &E->own_loop;
  }
  L = lua_newstate(braid__alloc, E);
  if (L == NULL) goto fail_loop;
  lua_pushcfunction(L, l_api_open);
  lua_pushlightuserdata(L, E);
  lua_pushinteger(L, opts->libs ? opts->libs : BRAID_LIBS_SAFE);
  lua_pushinteger(L, opts->modules);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    lua_close(L);   /* the box's __gc leaves E to us (embedded) */
    goto fail_loop;
  }
  if ((rc = braid__engine_attach(E, loop, opts->signals)) != 0) {
    lua_close(L);
    goto fail_loop;
  }
  braid__scope_init(&E->top, E, SCOPE_TOP, NULL, NULL);
  braid__reserve_take(E);   /* not counted against the memory limit */
  E->running = 1;   /* braid.run from Lua is refused: tasks run already */
  if (E->reserve == NULL) {
    braid_close(E);
    return NULL;
  }
  return E;
fail_loop:
  if (E->owns_loop) uv_loop_close(&E->own_loop);
  free(E->heap);
  free(E);
  return NULL;
}

lua_State *braid_state (braid_engine_t *E) {
  return E->L;
}

uv_loop_t *braid_loop (braid_engine_t *E) {
  return E->loop;
}

int braid_run (braid_engine_t *E, uv_run_mode mode) {
  uv_run(E->loop, mode);
  return (int) E->live;
}

/* Abandons every task left at the top; runs under lua_pcall on E->S. */
static int l_api_abandon (lua_State *S) {
  braid_engine_t *E = (braid_engine_t *) lua_touserdata(S, 1);
  struct braid_list *n;
again:
  for (n = E->top.subs.next; n != &E->top.subs; n = n->next) {
    struct braid_scope *sub = container_of(n, struct braid_scope, link);
    if (sub->kind == SCOPE_TASK) {
      braid__task_abandon(sub->task);
      goto again;
    }
  }
  return 0;
}

static void close_walk_cb (uv_handle_t *h, void *arg) {
  (void) arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

void braid_close (braid_engine_t *E) {
  lua_State *S = E->S;
  if (E->current) {   /* the running task's own stack would be freed */
    fprintf(stderr, "braid_close: called from inside a task\n");
    abort();
  }
  E->closing = 1;
  lua_pushcfunction(S, l_api_abandon);
  lua_pushlightuserdata(S, E);
  if (lua_pcall(S, 1, 0, 0) != LUA_OK) braid__engine_fatal(E);
  braid__scope_release(&E->top);
  E->ready_head = E->ready_tail = NULL;
  E->running = 0;
  braid__engine_detach(E);
  if (E->owns_loop) {
    uv_run(&E->own_loop, UV_RUN_DEFAULT);   /* close callbacks */
    uv_walk(&E->own_loop, close_walk_cb, NULL);
    uv_run(&E->own_loop, UV_RUN_DEFAULT);
    uv_loop_close(&E->own_loop);
  }
  lua_close(E->L);
  braid__reserve_free(E);
  E->L = E->S = NULL;
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
  E->loading = 1;
  status = luaL_loadbufferx(E->L, code, strlen(code),
                            chunkname ? chunkname : code, mode);
  E->loading = 0;
  return api_loaded(E, status, out);
}

int braid_run_file (braid_engine_t *E, const char *path, braid_task_t **out) {
  int status;
  E->loading = 1;
  status = luaL_loadfilex(E->L, path, E->binary ? "bt" : "t");
  E->loading = 0;
  return api_loaded(E, status, out);
}

int braid_task_status (braid_task_t *task) {
  return task->status;
}

int braid_task_result (braid_engine_t *E, braid_task_t *task) {
  lua_State *L = E->L;
  int n;
  if (!TASK_DONE(task)) return UV_EBUSY;
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->anchors_ref);
  lua_rawgetp(L, -1, task);
  lua_remove(L, -2);
  if (task->status != TASK_OK) {
    lua_pushboolean(L, 0);
    lua_getiuservalue(L, -2, 1);
    lua_remove(L, -3);
    return 2;
  }
  lua_pushboolean(L, 1);
  lua_insert(L, -2);
  n = lua_gettop(L);
  braid__task_results(L, n, 1);   /* ok: cannot raise */
  lua_remove(L, n);
  return lua_gettop(L) - n + 2;
}

int braid_cancel (braid_engine_t *E, braid_task_t *task) {
  if (TASK_DONE(task)) return UV_EALREADY;
  braid__task_cancel(task, E->S, 0);
  return 0;
}

void braid_task_release (braid_engine_t *E, braid_task_t *task) {
  lua_State *L = E->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->anchors_ref);
  lua_pushnil(L);
  lua_rawsetp(L, -2, task);
  lua_pop(L, 1);
}

/* ---- suspending C functions ---- */

/* An op is its task's wait record (struct braid_wait, which has room for
** the op's fields and BRAID_OP_INLINE bytes of data), so suspending
** allocates nothing unless the data is larger; then it is a userdata on
** the suspending thread's stack. The results are moved onto that thread's
** stack as soon as braid_resume is called, where the continuation finds
** them; abandoning the task (lua_resetthread) drops them with the stack,
** so an op holds no reference anywhere. */

/* The op is no longer pending: it stops holding the virtual clock. */
static void op_settle (struct braid_wait *w) {
  if (w->holds) w->task->E->io_ops--;
  w->holds = 0;
}

/* The op waits on one of braid's heap timers (braid.sleep), which the
** virtual clock jumps to; every other op waits for the outside world and
** holds the virtual clock still until it completes. */
void braid__op_timer (braid_op_t *op) {
  op_settle(OP_WAIT(op));
}

static void op_cancel (struct braid_wait *w) {
  op_settle(w);
  w->state = OP_CANCELLED;
  if (w->on_cancel) w->on_cancel(WAIT_OP(w));
}

/* The task ends without running again (abandoned, or the engine closes):
** an op that completed but whose continuation did not run is released by
** its on_cancel. */
void braid__op_release (struct braid_task *t) {
  struct braid_wait *w = &t->w;
  if (w->cancel == op_cancel && w->k &&
      (w->state == OP_RESUMED || w->state == OP_NOMEM))
    op_cancel(w);
}

static int op_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_wait *w = (struct braid_wait *) ctx;
  struct braid_task *t = w->task;
  int state = w->state;
  (void) status;
  if (state == OP_PENDING) {       /* resumed without completing */
    if (t->wait == w) t->wait = NULL;
    op_cancel(w);
  } else if (w->k && (state == OP_NOMEM ||
                      (state == OP_RESUMED && t->wake == WAKE_NOYIELD))) {
    op_cancel(w);                  /* k will not run: on_cancel releases */
  }
  if (w->state == OP_RESUMED) w->state = OP_DONE;
  braid__task_resumed(L, t);       /* the cancellation or a no-yield */
  switch (state) {
    case OP_FAILED: return lua_error(L);
    case OP_NOMEM: lua_pushliteral(L, "not enough memory"); return lua_error(L);
    case OP_RESUMED:
      return w->k ? w->k(L, WAIT_OP(w)) : w->nres;
    default: return 0;
  }
}

int braid_suspendk (lua_State *L, const char *what, size_t size,
                    braid_start_fn start, braid_cancel_fn on_cancel,
                    void *ud, braid_k_fn k) {
  struct braid_task *t = braid__task_current(L, what);
  struct braid_wait *w = &t->w;
  int rc;
  braid__task_checkyield(L, t, what);
  braid__task_checkcancel(L, t);
  w->data = size <= BRAID_OP_INLINE ? w->inl.bytes
                                    : lua_newuserdatauv(L, size, 0);
  memset(w->data, 0, size);
  braid__task_wait(t, w, op_cancel, what);
  w->L = L;
  w->k = k;
  w->on_cancel = on_cancel;
  w->state = OP_PENDING;
  w->nres = 0;
  w->holds = 1;
  t->E->io_ops++;
  if (start && (rc = start(WAIT_OP(w), ud)) < 0 && w->state == OP_PENDING) {
    if (t->wait == w) t->wait = NULL;
    op_settle(w);
    w->state = OP_CANCELLED;
    return braid__error_raise(L, "io", uv_err_name(rc), "%s: %s", what,
                              uv_strerror(rc));
  }
  return braid__task_yield(L, t, (lua_KContext) w, op_k);
}

int braid_suspend (lua_State *L, const char *what, size_t size,
                   braid_start_fn start, braid_cancel_fn on_cancel,
                   void *ud) {
  return braid_suspendk(L, what, size, start, on_cancel, ud, NULL);
}

void *braid_op_data (braid_op_t *op) {
  return OP_WAIT(op)->data;
}

lua_State *braid_op_state (braid_op_t *op) {
  return OP_WAIT(op)->task->E->S;
}

/* Moves the n values onto the suspended thread (checkstack on a suspended
** thread only grows it; when even that fails the call raises "not enough
** memory" instead) and marks the task ready. */
static int op_complete (braid_op_t *op, int state, int n) {
  struct braid_wait *w = OP_WAIT(op);
  lua_State *S = w->task->E->S;
  if (w->state != OP_PENDING) {
    lua_pop(S, n);
    return UV_EALREADY;
  }
  op_settle(w);
  if (lua_checkstack(w->L, n)) lua_xmove(S, w->L, n);
  else {
    lua_pop(S, n);
    state = OP_NOMEM;
  }
  w->state = state;
  w->nres = n;
  braid__task_wake(w->task, WAKE_OK);
  return 0;
}

int braid_resume (braid_op_t *op, int nresults) {
  return op_complete(op, OP_RESUMED, nresults);
}

int braid_resume_error (braid_op_t *op) {
  return op_complete(op, OP_FAILED, 1);
}
