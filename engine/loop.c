/*
** loop.c: the engine's lifecycle: opening braid in a lua_State, braid.run
** (root task, loop, deadlock detection, shutdown) and Ctrl-C.
**
** Invariants:
** - One engine per lua_State, malloc'd and boxed in a userdata in the
**   registry. Module form: its uv_loop_t is initialised by braid.run and
**   closed before run returns, with uv_loop_close returning 0 (a handle left
**   open is reported as an error, never ignored). Embedded form (api.c):
**   braid_new attaches braid's handles to a loop, braid_close detaches them.
** - E is freed when its count drops to 0: one for the Lua state, one per
**   handle of braid's still open (close callbacks may run after the state
**   is gone, when the application owns the loop).
** - braid's own handles never keep the loop alive: the idle handle is
**   active only while tasks are ready, the timer only while the heap has
**   entries (and is unreferenced on the virtual clock, where it is the
**   autojump: timer.c), and the SIGINT watcher is unreferenced. So uv_run
**   returns exactly when nothing can wake any task, which is how deadlocks
**   are found and when the virtual clock jumps at the latest.
*/
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "internal.h"

static const char engine_key = 'e';

extern const char braid__lua_source[];

braid_engine_t *braid__engine (lua_State *L) {
  braid_engine_t **box;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &engine_key);
  box = (braid_engine_t **) lua_touserdata(L, -1);
  lua_pop(L, 1);
  return box ? *box : NULL;
}

static int l_loop_gc (lua_State *L) {
  braid_engine_t *E = *(braid_engine_t **) lua_touserdata(L, 1);
  if (!E->embedded) braid__engine_unref(E);
  return 0;
}

/* A zeroed engine with one reference (the Lua state's); NULL when out of
** memory. */
braid_engine_t *braid__engine_new (void) {
  braid_engine_t *E = (braid_engine_t *) calloc(1, sizeof *E);
  if (E == NULL) return NULL;
  E->refs = 1;
  E->grace = 5.0;
  E->S_ref = E->pool_ref = E->anchors_ref = LUA_NOREF;
  return E;
}

/* Drops one reference; the last one frees the engine. */
void braid__engine_unref (braid_engine_t *E) {
  if (--E->refs > 0) return;
  free(E->heap);
  free(E);
}

static void handle_closed_cb (uv_handle_t *h) {
  braid__engine_unref((braid_engine_t *) h->data);
}

static void sigquit_cb (uv_signal_t *h, int signum);
static void sigint_cb (uv_signal_t *h, int signum);

/* Adds braid's handles to loop: the idle handle and the timer, and the
** SIGINT/SIGQUIT watchers when `signals`. None keeps the loop alive by
** itself. Returns 0 or a negative libuv code (nothing is left attached). */
int braid__engine_attach (braid_engine_t *E, uv_loop_t *loop, int signals) {
  int rc;
  E->loop = loop;
  if ((rc = uv_idle_init(loop, &E->idle)) != 0) return rc;
  E->idle.data = E;
  E->refs++;
  if ((rc = uv_timer_init(loop, &E->timer)) != 0) {
    uv_close((uv_handle_t *) &E->idle, handle_closed_cb);
    return rc;
  }
  E->timer.data = E;
  E->refs++;
  E->attached = 1;
  E->signals = (unsigned char) signals;
  if (signals) {
    uv_signal_init(loop, &E->sigint);
    E->sigint.data = E;
    E->refs++;
    uv_signal_start(&E->sigint, sigint_cb, SIGINT);
    uv_unref((uv_handle_t *) &E->sigint);
    uv_signal_init(loop, &E->sigquit);
    E->sigquit.data = E;
    E->refs++;
    uv_signal_start(&E->sigquit, sigquit_cb, SIGQUIT);
    uv_unref((uv_handle_t *) &E->sigquit);
  }
  return 0;
}

/* Starts closing every handle braid added to its loop; the engine's memory
** stays until their close callbacks have run. */
void braid__engine_detach (braid_engine_t *E) {
  if (!E->attached) return;
  E->attached = 0;
  uv_close((uv_handle_t *) &E->idle, handle_closed_cb);
  uv_close((uv_handle_t *) &E->timer, handle_closed_cb);
  if (E->signals) {
    uv_close((uv_handle_t *) &E->sigint, handle_closed_cb);
    uv_close((uv_handle_t *) &E->sigquit, handle_closed_cb);
    E->signals = 0;
  }
  E->armed_due = 0;
}

/* Keeps E in L's registry, boxed; the box's __gc drops the state's
** reference unless the engine is embedded (braid_close drops it after
** lua_close, because the allocator still needs E). [-0, +0, m] */
void braid__engine_box (lua_State *L, braid_engine_t *E) {
  braid_engine_t **box;
  box = (braid_engine_t **) lua_newuserdatauv(L, sizeof *box, 0);
  *box = E;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, l_loop_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &engine_key);
}

int braid__is_callable (lua_State *L, int idx) {
  if (lua_isfunction(L, idx)) return 1;
  if (luaL_getmetafield(L, idx, "__call") == LUA_TNIL) return 0;
  lua_pop(L, 1);
  return 1;
}

/* Pushes a new table with weak keys. [-0, +1, m] */
void braid__push_weak_table (lua_State *L) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}

/* Makes the metatable `name` for a braid object: the metamethods `meta`
** (or NULL), and `methods` found through __index, directly or, when
** `index` is given, through that function with the methods table as its
** upvalue (for objects that also have fields). Pushes the methods table.
** [-0, +1, m] */
void braid__class (lua_State *L, const char *name, const luaL_Reg *meta,
                   const luaL_Reg *methods, lua_CFunction index) {
  luaL_newmetatable(L, name);
  if (meta) luaL_setfuncs(L, meta, 0);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_pushvalue(L, -1);
  if (index) lua_pushcclosure(L, index, 1);
  lua_setfield(L, -3, "__index");
  lua_remove(L, -2);
}

/* A Lua error escaped the scheduler: out of memory again after the
** reserve was spent (see below). The engine cannot keep its promises any
** more, so it says so and stops. */
void braid__engine_fatal (braid_engine_t *E) {
  fprintf(stderr, "braid: fatal error in the scheduler: %s%s\n",
          lua_tostring(E->S, -1) ? lua_tostring(E->S, -1) : "(not a string)",
          E->reserve ? "" : " (its memory reserve was already spent)");
  abort();
}

/* ---- the memory reserve ----
** Lua raises "not enough memory" where an allocation fails. Inside a task
** that is an ordinary error. Outside one (the scheduler ending a task, a
** libuv callback, braid's bookkeeping) there is no one to raise it to, and
** some of those places run Lua outside any protected call. So while braid
** runs, every allocation goes through braid__alloc (embedded) or
** run_alloc (braid.run), and one that fails outside a task frees the
** reserve and is tried again. The engine carries on and, at the next safe
** point (braid__engine_oom, called by the scheduler), fails the root task
** with a "memory" error, or cancels an embedder's tasks with it: everything
** is cancelled and cleaned up the normal way. */

#define RESERVE_SIZE (64 * 1024)

static void *reserve_alloc (braid_engine_t *E, void *ptr, size_t osize,
                            size_t nsize) {
  if (E->alloc_f) return E->alloc_f(E->alloc_ud, ptr, osize, nsize);
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  return realloc(ptr, nsize);
}

/* Sets the reserve aside, unless it is already. Failing is no error: the
** engine then runs without one. */
void braid__reserve_take (braid_engine_t *E) {
  if (E->reserve == NULL)
    E->reserve = reserve_alloc(E, NULL, LUA_TUSERDATA, RESERVE_SIZE);
}

void braid__reserve_free (braid_engine_t *E) {
  if (E->reserve) reserve_alloc(E, E->reserve, RESERVE_SIZE, 0);
  E->reserve = NULL;
}

/* An allocation failed: outside a task (and outside braid_run_string's
** load, which reports it), spend the reserve and try once more. Returns
** the block or NULL (Lua then raises). */
void *braid__reserve_spend (braid_engine_t *E, void *ptr, size_t osize,
                            size_t nsize) {
  if (E->current || E->loading || E->reserve == NULL) return NULL;
  braid__reserve_free(E);
  E->oom = 1;
  if (E->attached) braid__task_kick(E);   /* the safe point comes soon */
  return reserve_alloc(E, ptr, osize, nsize);
}

/* The state's allocator during braid.run: the script's own, with the
** reserve behind it. Delegating keeps blocks allocated before the run (and
** after it) valid: each allocator frees the other's. */
static void *run_alloc (void *ud, void *ptr, size_t osize, size_t nsize) {
  braid_engine_t *E = (braid_engine_t *) ud;
  void *p = E->alloc_f(E->alloc_ud, ptr, osize, nsize);
  if (p == NULL && nsize > 0) p = braid__reserve_spend(E, ptr, osize, nsize);
  return p;
}

/* An embedded engine's tasks are independent: cancel each live one (with
** the reason at `reason`), not the top scope, so that tasks started
** afterwards are not born cancelled. */
static void cancel_live_tasks (lua_State *L, braid_engine_t *E, int reason) {
  struct braid_list *n;
  for (n = E->top.subs.next; n != &E->top.subs; n = n->next) {
    struct braid_scope *sub = container_of(n, struct braid_scope, link);
    if (sub->kind == SCOPE_TASK) braid__task_cancel(sub->task, L, reason);
  }
}

/* The safe point after the reserve was spent: fail the root (or the REPL's
** running entry) with a "memory" error, or cancel an embedder's tasks with
** it, then set a new reserve aside. Runs in scheduler context, under
** lua_pcall on S. */
void braid__engine_oom (lua_State *S, braid_engine_t *E) {
  struct braid_task *victim = E->focus && !TASK_DONE(E->focus) ? E->focus
                                                                : E->root;
  E->oom = 0;
  braid__reserve_take(E);   /* first: it covers the allocations below */
  braid__error_push(S, "memory", NULL, "not enough memory (braid's "
                    "scheduler ran out and spent its reserve)");
  if (!E->embedded) {
    if (victim && !TASK_DONE(victim))
      braid__scope_fail(S, &victim->scope, -1);
    else E->oom = 2;   /* too late for the root: braid.run raises it */
  } else {
    cancel_live_tasks(S, E, -1);
  }
  lua_pop(S, 1);
}

static int interrupt_p (lua_State *L) {
  braid_engine_t *E = (braid_engine_t *) lua_touserdata(L, 1);
  lua_pushliteral(L, "interrupt");
  if (!E->embedded) {
    braid__scope_set_reason(L, &E->top, -1);
    braid__scope_cancel(&E->top, &E->top);
    return 0;
  }
  cancel_live_tasks(L, E, -1);
  return 0;
}

static void engine_interrupt (braid_engine_t *E) {
  lua_State *S = E->S;
  if (E->on_interrupt && E->on_interrupt(E)) return;   /* the REPL's */
  if (E->interrupted++ && !E->embedded) {   /* a second Ctrl-C: leave now */
    fprintf(stderr, "braid: interrupted again, exiting\n");
    _exit(130);
  }
  lua_pushcfunction(S, interrupt_p);
  lua_pushlightuserdata(S, E);
  if (lua_pcall(S, 1, 0, 0) != LUA_OK) braid__engine_fatal(E);
}

static void sigquit_cb (uv_signal_t *h, int signum) {
  (void) signum;
  braid__dump_signal(container_of(h, braid_engine_t, sigquit));
}

static void sigint_cb (uv_signal_t *h, int signum) {
  braid_engine_t *E = container_of(h, braid_engine_t, sigint);
  (void) signum;
  if (braid__signal_interrupt(E)) return;   /* a script waits for it */
  engine_interrupt(E);
}

int braid_interrupt (lua_State *L) {
  braid_engine_t *E = braid__engine(L);
  if (E == NULL || !E->running) return UV_EINVAL;
  engine_interrupt(E);
  return 0;
}

/* Appends one line per live task below s to the buffer. */
static void describe_waits (lua_State *L, luaL_Buffer *b, struct braid_scope *s) {
  struct braid_list *n;
  for (n = s->subs.next; n != &s->subs; n = n->next) {
    struct braid_scope *sub = container_of(n, struct braid_scope, link);
    if (sub->kind == SCOPE_TASK) {
      struct braid_task *t = sub->task;
      const char *site = braid__task_site(L, t, 0);
      lua_pushfstring(L, "\n  task %d (%s, spawned at %s) waits on %s",
                      (int) t->id, braid__task_name(L, t, 0), site,
                      t->wait ? t->wait->what : "nothing");
      lua_remove(L, -2);
      luaL_addvalue(b);
    }
    describe_waits(L, b, sub);
  }
}

/* Every task waits and nothing can wake any of them: fail the root (or the
** REPL's running entry, E->focus) with a "deadlock" error, which cancels
** everything below it; if even that cannot make progress (tasks waiting
** inside shields), abandon it. */
static void engine_deadlock (lua_State *L, braid_engine_t *E) {
  luaL_Buffer b;
  struct braid_task *victim = E->focus && !TASK_DONE(E->focus) ? E->focus
                                                                : E->root;
  if (E->deadlocks++ > 0) {
    braid__task_abandon(victim);
    return;
  }
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "deadlock: every task is waiting and nothing can wake "
                 "them:");
  describe_waits(L, &b, &E->top);
  luaL_pushresult(&b);
  braid__error_push(L, "deadlock", NULL, "%s", lua_tostring(L, -1));
  braid__scope_fail(L, &victim->scope, -1);
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

/* Gives the state its own allocator back, and the reserve. */
static void run_alloc_end (lua_State *L, braid_engine_t *E) {
  braid__reserve_free(E);
  lua_setallocf(L, E->alloc_f, E->alloc_ud);
  E->alloc_f = NULL;
}

static const char *const run_options[] = {"clock", "seed", "grace", NULL};

/* braid.run(fn, [opts]) -> ...: runs fn as the root task on a fresh loop
** until it and everything it started have ended. */
static int l_loop_run (lua_State *L) {
  braid_engine_t *E = braid__engine(L);
  int status, rc;
  if (!braid__is_callable(L, 1))
    braid__error_argerror(L, 1, "run", "function expected");
  braid__check_options(L, 2, "run", run_options);
  if (E->running)
    braid__error_usage(L, "braid.run: braid is already running (inside a "
                       "task, use braid.spawn, braid.scope or task:await)");
  E->virtual_clock = 0;
  E->grace = braid__opt_number(L, 2, "grace", 5.0, "run");
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "clock");
    if (!lua_isnil(L, -1)) {
      const char *c = lua_tostring(L, -1);
      if (c == NULL || (strcmp(c, "real") != 0 && strcmp(c, "virtual") != 0))
        braid__error_usage(L, "bad option 'clock' to 'run' (\"real\" or "
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
        braid__error_usage(L, "bad option 'seed' to 'run' (integer expected)");
      lua_getglobal(L, "math");
      if (lua_istable(L, -1) && lua_getfield(L, -1, "randomseed") == LUA_TFUNCTION) {
        lua_pushvalue(L, -3);
        lua_call(L, 1, 0);
      }
    }
  }
  lua_settop(L, 1);
  braid__error_forget(L);   /* records live until the next run's start */
  if (lua_getallocf(L, NULL) != run_alloc) {   /* else a run raised early */
    E->alloc_f = lua_getallocf(L, &E->alloc_ud);
    lua_setallocf(L, run_alloc, E);
  }
  E->oom = 0;
  braid__reserve_take(E);
  if (E->reserve == NULL) {   /* the run could not clean up after itself */
    run_alloc_end(L, E);
    return luaL_error(L, "not enough memory");
  }
  if ((rc = uv_loop_init(&E->own_loop)) != 0) {
    run_alloc_end(L, E);
    braid__error_raise(L, "io", uv_err_name(rc), "braid.run: %s",
                       uv_strerror(rc));
  }
  if ((rc = braid__engine_attach(E, &E->own_loop, 1)) != 0) {
    engine_close_loop(E);
    run_alloc_end(L, E);
    braid__error_raise(L, "io", uv_err_name(rc), "braid.run: %s",
                       uv_strerror(rc));
  }
  E->vnow = 0;
  E->io_ops = E->noyield = 0;
  E->armed_due = 0;
  E->interrupted = E->deadlocks = 0;
  braid__scope_init(&E->top, E, SCOPE_TOP, NULL, NULL);
  E->running = 1;
  E->root = braid__task_spawn(L, &E->top, 1, 0);        /* 2: root task */
  lua_pushliteral(L, "main");
  lua_setiuservalue(L, 2, 2);
  for (;;) {
    uv_run(E->loop, UV_RUN_DEFAULT);
    if (TASK_DONE(E->root)) break;
    if (E->virtual_clock && braid__timer_advance(E)) continue;
    engine_deadlock(L, E);
  }
  braid__scope_release(&E->top);
  E->on_interrupt = NULL;
  E->focus = NULL;
  E->running = 0;
  E->root = NULL;
  rc = engine_close_loop(E);
  run_alloc_end(L, E);
  if (rc != 0)
    braid__error_raise(L, "io", NULL, "braid.run: %d libuv handle(s) were "
                       "left open at exit", rc < 0 ? -rc : rc);
  status = ((struct braid_task *) lua_touserdata(L, 2))->status;
  if (E->oom && status == TASK_OK)   /* after the root had ended */
    braid__error_raise(L, "memory", NULL, "not enough memory (braid's "
                       "scheduler ran out and spent its reserve)");
  if (E->interrupted && status != TASK_OK) {
    lua_getiuservalue(L, 2, 1);
    return lua_error(L);
  }
  return braid__task_results(L, 2, 1);
}


static int l_loop_interrupted (lua_State *L) {
  lua_pushboolean(L, braid__engine(L)->interrupted);
  return 1;
}

static void sigpipe_noop (int sig) { (void) sig; }

/* Writing to a socket or pipe whose reader has gone must fail with EPIPE,
** not kill the process: SIGPIPE gets a no-op handler, unless the host
** already chose a disposition. A handler, unlike SIG_IGN, is reset by exec,
** so child processes still start with the default. */
static void engine_sigpipe (void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sigpipe_noop;
    sigaction(SIGPIPE, &sa, NULL);
  }
}

static int l_loop_box (lua_State *L) {
  braid__engine_box(L, (braid_engine_t *) lua_touserdata(L, 1));
  return 0;
}

LUA_API int luaopen_braid (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"run", l_loop_run},
    {"_interrupted", l_loop_interrupted},
    {NULL, NULL}
  };
  braid_engine_t *E;
  engine_sigpipe();
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &engine_key) == LUA_TNIL) {
    if ((E = braid__engine_new()) == NULL)
      return luaL_error(L, "not enough memory");
    lua_pushcfunction(L, l_loop_box);
    lua_pushlightuserdata(L, E);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {   /* not boxed: ours to free */
      free(E);
      return lua_error(L);
    }
  }
  lua_pop(L, 1);
  E = braid__engine(L);
  if (E->S == NULL) {   /* first opening (braid_new boxes E beforehand) */
    E->L = L;
    E->S = lua_newthread(L);
    E->S_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    E->pool_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_getglobal(L, "coroutine");
  if (lua_istable(L, -1)) braid__open_coroutine(L);
  lua_pop(L, 1);
  lua_newtable(L);
  luaL_setfuncs(L, funcs, 0);
  braid__open_task(L);
  braid__open_scope(L);
  braid__open_timer(L);
  braid__open_group(L);
  braid__open_channel(L);
  braid__open_dump(L);
  braid__open_error(L);
  braid__open_tcp(L);
  braid__open_process(L);
  braid__open_fs(L);
  braid__open_dns(L);
  braid__open_signal(L);
  /* The Lua-side library gets the C table and completes it. */
  if (luaL_loadbuffer(L, braid__lua_source, strlen(braid__lua_source),
                      "=[braid]") != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
  return 1;
}
