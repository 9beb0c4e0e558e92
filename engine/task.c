/*
** task.c: tasks, the ready queue and the scheduler, awaiting, and the
** coroutine library as seen from inside tasks.
**
** Invariants:
** - A task's userdata is anchored by t->ref from spawn until it ends, and
**   its coroutine by the userdata's first user value while it runs; after
**   the end that slot holds the results or the error instead.
** - A task's coroutine is made (or taken from the pool) when it starts, not
**   when it is spawned, and goes back to the pool when it ends, so spawning
**   many tasks that each finish quickly keeps few coroutines alive.
** - Only the scheduler resumes tasks, in FIFO order. Everything else marks
**   them ready with braid__task_wake.
** - braid's yields carry BRAID_MARKER when they start inside a coroutine of
**   the script's own; braid's coroutine.resume and coroutine.wrap pass such
**   yields outward so the whole task suspends.
*/
#include <stdio.h>
#include <string.h>
#include "internal.h"

#define TASK_MT "braid.Task"
#define POOL_MAX 256
#define DRAIN_BUDGET 20000

const char braid__marker = 'm';
/* user coroutines suspended in a braid call -> the thread resuming them */
static const char suspended_key = 's';
/* the coroutines tasks run in (weak keys): coroutine.close refuses them */
static const char threads_key = 't';

static const char *const status_names[] = {
  "pending", "running", "suspended", "ok", "failed", "cancelled"
};

/* ---- the ready queue ---- */

static void idle_cb (uv_idle_t *h) {
  braid__task_drain(container_of(h, braid_engine_t, idle));
}

void braid__task_ready (struct braid_task *t) {
  braid_engine_t *E = t->E;
  if (t->queued) return;
  t->queued = 1;
  t->next = NULL;
  if (E->ready_tail) E->ready_tail->next = t;
  else {
    E->ready_head = t;
    uv_idle_start(&E->idle, idle_cb);   /* keeps the loop from blocking */
  }
  E->ready_tail = t;
}

static void ready_remove (braid_engine_t *E, struct braid_task *t) {
  struct braid_task **p = &E->ready_head, *prev = NULL;
  if (!t->queued) return;
  while (*p != t) { prev = *p; p = &(*p)->next; }
  *p = t->next;
  if (E->ready_tail == t) E->ready_tail = prev;
  t->queued = 0;
}

/* Wakes a waiting task: `how` says whether its operation completed
** (WAKE_OK) or was undone by a cancellation (WAKE_CANCEL). */
void braid__task_wake (struct braid_task *t, int how) {
  t->wait = NULL;
  t->wake = (unsigned char) how;
  braid__task_ready(t);
}

void braid__task_wait (struct braid_task *t, struct braid_wait *w,
                       void (*cancel)(struct braid_wait *), const char *what) {
  w->task = t;
  w->cancel = cancel;
  w->what = what;
  w->since = braid__now_ms(t->E);
  t->wait = w;
  t->wake = WAKE_NONE;
}

/* ---- finding the task, and the checks every suspending call makes ---- */

struct braid_task *braid__task_current (lua_State *L, const char *fname) {
  braid_engine_t *E = braid__engine(L);
  if (E->current == NULL)   /* an embedder's "app.f" is not braid's */
    braid__error_usage(L, "%s%s: not inside a braid task (run the code "
                       "with braid.run, or in a task started by braid.spawn)",
                       strchr(fname, '.') ? "" : "braid.", fname);
  return E->current;
}

void braid__task_checkyield (lua_State *L, struct braid_task *t,
                             const char *fname) {
  if (t->abandoned)
    braid__error_usage(L, "braid.%s: the task is being abandoned after its "
                       "grace period; cleanup can no longer wait", fname);
  if (!lua_isyieldable(L) || t->E->noyield)
    braid__error_usage(L, "%s%s: cannot suspend here: the call is inside "
                       "a C function or metamethod that cannot yield (such as "
                       "table.sort, string.gsub, __gc or __tostring)",
                       strchr(fname, '.') ? "" : "braid.", fname);
}

void braid__task_checkcancel (lua_State *L, struct braid_task *t) {
  if (t->inner->cancelled) {
    braid__push_cancel(L, t->inner->cause);
    lua_error(L);
  }
}

/* Suspends the running task; k runs when the scheduler resumes it. */
int braid__task_yield (lua_State *L, struct braid_task *t, lua_KContext ctx,
                       lua_KFunction k) {
  if (L == t->co) return lua_yieldk(L, 0, ctx, k);
  lua_pushlightuserdata(L, BRAID_MARKER);
  return lua_yieldk(L, 1, ctx, k);
}

/* First thing in every continuation: raise what the wake-up says. */
void braid__task_resumed (lua_State *L, struct braid_task *t) {
  int how = t->wake;
  t->wake = WAKE_NONE;
  if (how == WAKE_CANCEL) {
    braid__push_cancel(L, t->inner->cause);
    lua_error(L);
  }
  if (how == WAKE_NOYIELD)   /* co_resume has undone the wait already */
    braid__error_usage(L, "braid: cannot suspend here: a coroutine between "
                       "this call and its task cannot yield");
}

/* ---- the task object ---- */

struct braid_task *braid__task_check (lua_State *L, int idx) {
  return (struct braid_task *) luaL_checkudata(L, idx, TASK_MT);
}

void braid__task_push (lua_State *L, struct braid_task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ref);
}

/* The task's name: set by the script, else where its function is defined.
** idx is the task object's stack index, or 0 for a live task. */
const char *braid__task_name (lua_State *L, struct braid_task *t, int idx) {
  const char *name = "?";
  if (idx) lua_pushvalue(L, idx);
  else if (t->ref != LUA_NOREF) braid__task_push(L, t);
  else return "?";
  if (lua_getiuservalue(L, -1, 2) == LUA_TSTRING) name = lua_tostring(L, -1);
  else if (lua_isfunction(L, -1)) {
    lua_Debug ar;
    lua_getinfo(L, ">S", &ar);
    lua_pushfstring(L, "%s:%d", ar.short_src, ar.linedefined);
    name = lua_tostring(L, -1);
    lua_setiuservalue(L, -2, 2);   /* interned and anchored from now on */
    lua_pushnil(L);
  }
  lua_pop(L, 2);
  return name;
}

/* Pushes where the task was spawned, "file:line" (a string). idx is the
** task object's stack index, or 0 for a live task. */
const char *braid__task_site (lua_State *L, struct braid_task *t, int idx) {
  lua_Debug ar;
  int top = lua_gettop(L);
  if (idx) lua_pushvalue(L, idx);
  else if (t->ref != LUA_NOREF) braid__task_push(L, t);
  else lua_pushnil(L);
  if (lua_type(L, -1) == LUA_TUSERDATA &&
      lua_getiuservalue(L, -1, 3) == LUA_TFUNCTION) {
    lua_getinfo(L, ">S", &ar);
    if (t->line > 0) lua_pushfstring(L, "%s:%d", ar.short_src, t->line);
    else lua_pushstring(L, ar.short_src);
  } else {
    lua_pushliteral(L, "?");
  }
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return lua_tostring(L, -1);
}

/* Creates a task that will run the callable at fidx with the nargs values
** after it, as a member of `into`; leaves the task object on the stack.
** [-0, +1, m] */
struct braid_task *braid__task_spawn (lua_State *L, struct braid_scope *into,
                                      int fidx, int nargs) {
  braid_engine_t *E = braid__engine(L);
  struct braid_task *t;
  lua_Debug ar;
  int i;
  fidx = lua_absindex(L, fidx);
  t = (struct braid_task *) lua_newuserdatauv(L, sizeof *t, 3);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, TASK_MT);
  if (nargs == 0) lua_pushvalue(L, fidx);
  else {
    lua_createtable(L, nargs + 1, 0);
    for (i = 0; i <= nargs; i++) {
      lua_pushvalue(L, fidx + i);
      lua_rawseti(L, -2, i + 1);
    }
  }
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, fidx);
  lua_setiuservalue(L, -2, 2);
  t->E = E;
  t->id = ++E->next_id;
  t->nargs = nargs;
  t->status = TASK_PENDING;
  t->inner = &t->scope;
  braid__list_init(&t->watchers);
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "fl", &ar)) {
    t->line = ar.currentline;   /* the file is found from the function */
    lua_setiuservalue(L, -2, 3);
  }
  /* Anchor before linking: a failed allocation must leave no task in the
  ** scope tree that the collector could free. */
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  braid__scope_init(&t->scope, E, SCOPE_TASK, t, into);
  E->live++;
  braid__task_ready(t);
  return t;
}

/* ---- running tasks ---- */

/* Keeps a finished coroutine for reuse. An abandoned one is not kept: it
** was reset in the middle of a pcall, and lua_resetthread (5.4.4) leaves
** that pcall's message handler index behind. */
static void pool_put (braid_engine_t *E, lua_State *S, struct braid_task *t,
                      lua_State *co) {
  if (lua_status(co) != LUA_OK) lua_resetthread(co);
  lua_settop(co, 0);
  if (E->pool_n >= POOL_MAX || t->abandoned || t->nopool) return;
  lua_rawgeti(S, LUA_REGISTRYINDEX, E->pool_ref);
  lua_pushthread(co);
  lua_xmove(co, S, 1);
  lua_rawseti(S, -2, ++E->pool_n);
  lua_pop(S, 1);
}

/* Gives the task a coroutine holding its function and arguments.
** [-0, +0, m] on S; the task object must be on S's top. */
static void task_start (braid_engine_t *E, lua_State *S, struct braid_task *t) {
  lua_State *co;
  int i;
  if (E->pool_n > 0) {
    lua_rawgeti(S, LUA_REGISTRYINDEX, E->pool_ref);
    lua_rawgeti(S, -1, E->pool_n);
    lua_pushnil(S);
    lua_rawseti(S, -3, E->pool_n--);
    lua_remove(S, -2);
    co = lua_tothread(S, -1);
  } else {
    co = lua_newthread(S);
    lua_rawgetp(S, LUA_REGISTRYINDEX, &threads_key);
    lua_pushvalue(S, -2);
    lua_pushboolean(S, 1);
    lua_rawset(S, -3);
    lua_pop(S, 1);
  }
  lua_getiuservalue(S, -2, 1);
  if (t->nargs == 0) lua_xmove(S, co, 1);
  else {
    for (i = 1; i <= t->nargs + 1; i++) lua_rawgeti(S, -i, i);
    lua_xmove(S, co, t->nargs + 1);
    lua_pop(S, 1);
  }
  lua_setiuservalue(S, -2, 1);   /* the coroutine now anchors everything */
  t->co = co;
}

/* Ends the task once its body and every member of its scope have ended:
** the outcome is the scope's first error, else the body's cancellation,
** else the body's results (already in user value 1). Then the watchers and
** the parent scope are told. Runs in scheduler context. */
void braid__task_finish (struct braid_task *t) {
  braid_engine_t *E = t->E;
  lua_State *S = E->S;
  struct braid_scope *s = &t->scope;
  braid__task_push(S, t);
  if (s->error_ref != LUA_NOREF) {
    lua_rawgeti(S, LUA_REGISTRYINDEX, s->error_ref);
    lua_setiuservalue(S, -2, 1);
    t->status = TASK_FAILED;
  } else {
    t->status = s->body_failed ? TASK_CANCELLED : TASK_OK;
  }
  t->wait = NULL;
  ready_remove(E, t);
  E->live--;
  while (!braid__list_empty(&t->watchers)) {
    struct braid_watch *w = container_of(t->watchers.next,
                                         struct braid_watch, link);
    braid__list_remove(&w->link);
    w->done(w, t);
  }
  braid__scope_member_done(S, s->outer, t);
  braid__scope_release(s);
  luaL_unref(S, LUA_REGISTRYINDEX, t->ref);
  t->ref = LUA_NOREF;
  lua_pop(S, 1);
}

/* The body's coroutine returned (nres results on it) or raised: keep the
** outcome in user value 1, recycle the coroutine, and finish now or once
** the members of the task's scope have ended. */
static void task_body_done (braid_engine_t *E, lua_State *S,
                            struct braid_task *t, int status, int nres) {
  lua_State *co = t->co;
  struct braid_scope *s = &t->scope;
  int i;
  braid__task_push(S, t);
  if (status == LUA_OK) {
    t->nres = nres;
    if (nres == 0) lua_pushnil(S);
    else if (nres == 1) lua_xmove(co, S, 1);
    else {
      lua_createtable(S, nres, 0);
      lua_xmove(co, S, nres);
      for (i = nres; i >= 1; i--) lua_rawseti(S, -1 - i, i);
    }
  } else {
    lua_xmove(co, S, 1);
    s->body_failed = 1;
    if (status != LUA_ERRRUN || !braid__is_cancel(S, -1)) {
      braid__error_record(S, -1, co, 0, t);   /* co's stack is not unwound */
      braid__scope_fail(S, s, -1);
    }
  }
  lua_setiuservalue(S, -2, 1);
  lua_pop(S, 1);
  t->co = NULL;
  pool_put(E, S, t, co);
  if (s->pending > 0) {   /* wait in C for the members: no coroutine needed */
    braid__task_wait(t, &t->w, NULL, "its members");
    t->status = TASK_SUSPENDED;
    s->joining = 1;
    return;
  }
  braid__task_finish(t);
}

static void task_resume (braid_engine_t *E, lua_State *S, struct braid_task *t) {
  int nargs = 0, nres, status;
  if (t->status == TASK_PENDING) {
    braid__task_push(S, t);
    task_start(E, S, t);
    lua_pop(S, 1);
    nargs = t->nargs;
  }
  t->status = TASK_RUNNING;
  E->current = t;
  if (E->budget) braid__budget_set(E, t->co);
  status = lua_resume(t->co, S, nargs, &nres);
  E->current = NULL;
  if (status == LUA_YIELD) {
    lua_pop(t->co, nres);
    t->status = TASK_SUSPENDED;
    if (t->wait == NULL && !t->queued) braid__task_ready(t);  /* a bare yield */
  } else {
    task_body_done(E, S, t, status, nres);
  }
}

/* Resumes ready tasks in FIFO order; runs under lua_pcall on E->S. After a
** budget it returns to the loop so that I/O and timers get their turn. */
static int l_task_drain (lua_State *S) {
  braid_engine_t *E = braid__engine(S);
  int budget = DRAIN_BUDGET;
  while (budget-- > 0) {
    struct braid_task *t;
    if (E->oom == 1) braid__engine_oom(S, E);   /* the reserve was spent */
    if ((t = E->ready_head) == NULL) break;
    E->ready_head = t->next;
    if (E->ready_head == NULL) E->ready_tail = NULL;
    t->queued = 0;
    task_resume(E, S, t);
  }
  return 0;
}

void braid__task_drain (braid_engine_t *E) {
  lua_State *S = E->S;
  lua_pushcfunction(S, l_task_drain);
  if (lua_pcall(S, 0, 0, 0) != LUA_OK) braid__engine_fatal(E);
  if (E->ready_head == NULL) {
    if (E->oom != 1) uv_idle_stop(&E->idle);
    braid__timer_quiet(E);
  }
}

/* Makes the scheduler run soon, with or without a ready task: the memory
** reserve was spent and the safe point to say so is in the drain. */
void braid__task_kick (braid_engine_t *E) {
  uv_idle_start(&E->idle, idle_cb);
}

/* ---- cancellation and abandonment ---- */

/* Cancels the task (its own scope) with the reason at `reason` (0: none). */
void braid__task_cancel (struct braid_task *t, lua_State *L, int reason) {
  if (TASK_DONE(t) || t->scope.cancelled) return;
  if (reason) braid__scope_set_reason(L, &t->scope, reason);
  braid__scope_cancel(&t->scope, &t->scope);
}

/* Abandons the scopes t owns, innermost first, and every task below them. */
static void abandon_below (struct braid_task *t) {
  struct braid_scope *s;
  for (s = t->inner; ; s = s->outer) {
    struct braid_list *n;
  again:
    for (n = s->subs.next; n != &s->subs; n = n->next) {
      struct braid_scope *sub = container_of(n, struct braid_scope, link);
      if (sub->kind == SCOPE_TASK) {
        braid__task_abandon(sub->task);
        goto again;   /* the child left the list */
      }
    }
    if (s == &t->scope) break;
  }
  while (t->inner != &t->scope) {
    s = t->inner;
    t->inner = s->outer;
    braid__scope_release(s);
  }
}

/* Closes the to-be-closed variables of the user coroutines that task t is
** suspended through (a braid call made inside coroutine.wrap or resume),
** innermost first: lua_resetthread of the task's own thread does not
** reach into them. Runs in scheduler context, before t->co is reset. */
static void abandon_user_coroutines (braid_engine_t *E, struct braid_task *t) {
  lua_State *S = E->S;
  int tbl, n = 0;
  lua_rawgetp(S, LUA_REGISTRYINDEX, &suspended_key);
  tbl = lua_gettop(S);
  lua_pushthread(t->co);
  lua_xmove(t->co, S, 1);
  for (;;) {   /* push the coroutine the thread on top is resuming */
    int found = 0;
    luaL_checkstack(S, 4, "coroutine chain");
    lua_pushnil(S);
    while (lua_next(S, tbl)) {
      if (lua_rawequal(S, -1, -3)) {
        lua_pop(S, 1);
        found = 1;
        break;
      }
      lua_pop(S, 1);
    }
    if (!found) break;
    n++;
  }
  for (; n > 0; n--) {
    lua_State *co = lua_tothread(S, tbl + 1 + n);
    lua_pushthread(co);
    lua_xmove(co, S, 1);
    lua_pushnil(S);
    lua_rawset(S, tbl);
    if (lua_resetthread(co) != LUA_OK) {
      lua_xmove(co, S, 1);
      braid__error_report(S, -1, "braid: error in a <close> handler of an "
                          "abandoned task: ");
      lua_pop(S, 1);
    }
  }
  lua_settop(S, tbl - 1);
}

/* Ends a task that did not finish within its grace period: its operation
** is undone, its to-be-closed variables run (lua_resetthread), and it ends
** cancelled. Runs in scheduler context. */
void braid__task_abandon (struct braid_task *t) {
  braid_engine_t *E = t->E;
  lua_State *S = E->S;
  struct braid_task *prev = E->current;
  if (TASK_DONE(t)) return;
  abandon_below(t);
  if (TASK_DONE(t)) return;   /* it was only waiting for those members */
  if (t->wait && t->wait->cancel) t->wait->cancel(t->wait);
  else braid__op_release(t);   /* completed, continuation not run */
  t->wait = NULL;
  t->abandoned = 1;
  if (t->co) {
    E->current = t;
    abandon_user_coroutines(E, t);
    if (lua_resetthread(t->co) != LUA_OK) {
      lua_xmove(t->co, S, 1);
      braid__error_report(S, -1, "braid: error in a <close> handler of an "
                          "abandoned task: ");
      lua_pop(S, 1);
    }
    E->current = prev;
    t->co = NULL;   /* not pooled: see pool_put */
  }
  if (!E->closing) {   /* braid_close abandons by design: no report */
    fprintf(stderr, "braid: task %u (%s, spawned at %s) abandoned: still "
            "running %g s after it was cancelled\n", t->id,
            braid__task_name(S, t, 0), braid__task_site(S, t, 0),
            t->scope.outer->grace);
    lua_pop(S, 1);
  }
  lua_pushliteral(S, "abandoned after its grace period");
  braid__scope_set_reason(S, &t->scope, -1);
  lua_pop(S, 1);
  t->scope.cancelled = 1;
  t->scope.cause = &t->scope;
  t->scope.body_failed = 1;
  braid__task_push(S, t);
  braid__push_cancel(S, &t->scope);
  lua_setiuservalue(S, -2, 1);
  lua_pop(S, 1);
  braid__task_finish(t);
}

/* ---- results ---- */

/* Pushes the results of the ended task whose object is at idx: all of them,
** or exactly one value (the first, nil included); raises its error instead
** when it did not end ok. [-0, +n, v] */
int braid__task_results (lua_State *L, int idx, int all) {
  struct braid_task *t = (struct braid_task *) lua_touserdata(L, idx);
  int i, n = t->nres;
  lua_getiuservalue(L, idx, 1);
  if (t->status != TASK_OK) return lua_error(L);
  if (n == 0 && all) {
    lua_pop(L, 1);
    return 0;
  }
  if (n <= 1) return 1;
  if (!all) {
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    return 1;
  }
  luaL_checkstack(L, n, "too many results");
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

static void await_done (struct braid_watch *w, struct braid_task *target) {
  (void) target;
  braid__task_wake(container_of(w, struct braid_wait, watch)->task, WAKE_OK);
}

static void await_cancel (struct braid_wait *w) {
  braid__list_remove(&w->watch.link);
}

static int await_k (lua_State *L, int status, lua_KContext ctx) {
  (void) status;
  braid__task_resumed(L, (struct braid_task *) ctx);
  return braid__task_results(L, 1, 1);
}

/* task:await() -> ...: the task's results, or its error raised. */
static int l_task_await (lua_State *L) {
  struct braid_task *target = braid__task_check(L, 1);
  struct braid_task *t = braid__task_current(L, "await");
  lua_settop(L, 1);
  braid__task_checkcancel(L, t);
  if (TASK_DONE(target)) return braid__task_results(L, 1, 1);
  if (t == target)
    braid__error_usage(L, "task:await: a task cannot await itself");
  braid__task_checkyield(L, t, "await");
  braid__task_wait(t, &t->w, await_cancel, "await");
  t->w.target = target;
  t->w.watch.done = await_done;
  braid__list_push(&target->watchers, &t->w.watch.link);
  return braid__task_yield(L, t, (lua_KContext) t, await_k);
}

/* task:cancel([reason]) -> boolean: false when the task had already ended. */
static int l_task_cancel (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1);
  if (TASK_DONE(t)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  braid__task_cancel(t, L, lua_isnoneornil(L, 2) ? 0 : 2);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_task_status (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1);
  lua_pushstring(L, status_names[t->status]);
  return 1;
}

static int l_task_done (lua_State *L) {
  lua_pushboolean(L, TASK_DONE(braid__task_check(L, 1)));
  return 1;
}

/* task:result() -> true, ... | false, err, for an ended task. */
static int l_task_result (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1);
  int n;
  if (!TASK_DONE(t))
    braid__error_usage(L, "task:result: task %d has not ended (it is %s); "
                       "use task:await()", (int) t->id, status_names[t->status]);
  lua_settop(L, 1);
  if (t->status != TASK_OK) {
    lua_pushboolean(L, 0);
    lua_getiuservalue(L, 1, 1);
    return 2;
  }
  n = braid__task_results(L, 1, 1);
  lua_pushboolean(L, 1);
  lua_replace(L, 1);
  return n + 1;
}

/* Methods (the table in the upvalue), then the fields id, name, parent. */
static int l_task_index (lua_State *L) {
  struct braid_task *t;
  const char *k;
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  t = braid__task_check(L, 1);
  k = lua_tostring(L, 2);
  if (k == NULL) lua_pushnil(L);
  else if (strcmp(k, "id") == 0) lua_pushinteger(L, t->id);
  else if (strcmp(k, "name") == 0) lua_pushstring(L, braid__task_name(L, t, 1));
  else if (strcmp(k, "parent") == 0) {
    struct braid_scope *p = t->scope.outer;
    if (p && p->task && p->task->ref != LUA_NOREF) braid__task_push(L, p->task);
    else lua_pushnil(L);
  } else {
    lua_pushnil(L);
  }
  return 1;
}

static int l_task_newindex (lua_State *L) {
  braid__task_check(L, 1);
  if (strcmp(luaL_checkstring(L, 2), "name") != 0)
    braid__error_usage(L, "task: only 'name' can be set on a task");
  luaL_checkstring(L, 3);
  lua_settop(L, 3);
  lua_setiuservalue(L, 1, 2);
  return 0;
}

/* <task 3 "name" suspended in sleep 1.2s>: what it waits on, and for how
** long, while it waits. */
static int l_task_tostring (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1);
  const char *name = braid__task_name(L, t, 1);
  if (t->wait && !TASK_DONE(t) && t->E->running) {
    char secs[32];
    snprintf(secs, sizeof secs, "%.1fs",
             (braid__now_ms(t->E) - t->wait->since) / 1000.0);
    lua_pushfstring(L, "<task %d \"%s\" %s in %s %s>", (int) t->id, name,
                    status_names[t->status], t->wait->what, secs);
  } else {
    lua_pushfstring(L, "<task %d \"%s\" %s>", (int) t->id, name,
                    status_names[t->status]);
  }
  return 1;
}

/* braid.spawn(fn, ...) -> task, a child of the caller's innermost scope
** (or of the scope that adopts its children: a REPL entry's session). */
static int l_task_spawn (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "spawn");
  struct braid_scope *into = t->inner->adopt ? t->inner->adopt : t->inner;
  if (!braid__is_callable(L, 1))
    braid__error_argerror(L, 1, "spawn", "function expected");
  braid__task_spawn(L, into, 1, lua_gettop(L) - 1);
  return 1;
}

/* braid.current() -> the running task, or nil outside tasks. */
static int l_task_current (lua_State *L) {
  braid_engine_t *E = braid__engine(L);
  if (E->current) braid__task_push(L, E->current);
  else lua_pushnil(L);
  return 1;
}

/* The continuation of waits that return nothing (sleep, yield, acquire,
** event wait): raise the cancellation if that is what woke the task. */
int braid__task_k0 (lua_State *L, int status, lua_KContext ctx) {
  (void) status;
  braid__task_resumed(L, (struct braid_task *) ctx);
  return 0;
}

/* braid.yield(): lets every other ready task run once. */
static int l_task_yield (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "yield");
  braid__task_checkyield(L, t, "yield");
  braid__task_checkcancel(L, t);
  braid__task_wake(t, WAKE_OK);
  return braid__task_yield(L, t, (lua_KContext) t, braid__task_k0);
}

/* ---- the coroutine library inside tasks ---- */

static void suspended_mark (lua_State *L, lua_State *co, int on) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &suspended_key);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  if (on) lua_pushthread(L);   /* the resumer: abandoning walks the chain */
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int co_resume_k (lua_State *L, int status, lua_KContext ctx);

/* Resumes co like coroutine.resume and leaves `nres >= 0` values (or an
** error, -1) on L. A braid yield inside co suspends L's task as well, and
** the loop resumes co when the task is resumed. */
static int co_resume (lua_State *L, lua_State *co, int narg, int isresume) {
  for (;;) {
    int status, nres;
    if (!lua_checkstack(co, narg)) {
      lua_pushliteral(L, "too many arguments to resume");
      return -1;
    }
    braid_engine_t *E = braid__engine(L);
    struct braid_task *t = E->current;
    /* Resumed from where the task cannot yield (a table.sort comparator):
    ** braid calls inside co are refused before they start anything. */
    unsigned cut = t != NULL && !lua_isyieldable(L);
    lua_xmove(L, co, narg);
    if (E->budget) braid__budget_set(E, co);
    E->noyield += cut;
    status = lua_resume(co, L, narg, &nres);
    E->noyield -= cut;
    if (status == LUA_YIELD && nres == 1 &&
        lua_touserdata(co, -1) == BRAID_MARKER) {
      lua_pop(co, 1);
      if (!lua_isyieldable(L) || t == NULL) {
        /* The call cannot suspend after all: undo the wait it registered
        ** (a watcher, a timer, yield's self-wake) before its continuation
        ** raises, or a later wake-up would resume the task while it
        ** waits on something else. */
        if (t) {
          if (t->wait && t->wait->cancel) t->wait->cancel(t->wait);
          t->wait = NULL;
          ready_remove(E, t);
          t->wake = WAKE_NOYIELD;
        }
        narg = 0;
        continue;
      }
      suspended_mark(L, co, 1);
      return braid__task_yield(L, t, (lua_KContext) isresume, co_resume_k);
    }
    if (status == LUA_OK || status == LUA_YIELD) {
      if (!lua_checkstack(L, nres + 1)) {
        lua_pop(co, nres);
        lua_pushliteral(L, "too many results to resume");
        return -1;
      }
      lua_xmove(co, L, nres);
      return nres;
    }
    lua_xmove(co, L, 1);
    return -1;
  }
}

static int co_finish (lua_State *L, lua_State *co, int r, int isresume) {
  if (isresume) {
    if (r < 0) {
      lua_pushboolean(L, 0);
      lua_insert(L, -2);
      return 2;
    }
    lua_pushboolean(L, 1);
    lua_insert(L, -(r + 1));
    return r + 1;
  }
  if (r < 0) {   /* as coroutine.wrap: close the coroutine, add position */
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {
      stat = lua_resetthread(co);
      lua_xmove(co, L, 1);
      lua_remove(L, -2);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

static lua_State *co_of (lua_State *L, int isresume) {
  return isresume ? lua_tothread(L, 1) : lua_tothread(L, lua_upvalueindex(1));
}

static int co_resume_k (lua_State *L, int status, lua_KContext ctx) {
  int isresume = (int) ctx;
  lua_State *co = co_of(L, isresume);
  int base = isresume ? 1 : 0;
  (void) status;
  suspended_mark(L, co, 0);
  lua_settop(L, base);   /* a task is resumed with no values */
  return co_finish(L, co, co_resume(L, co, 0, isresume), isresume);
}

/* Is co suspended inside a braid call: a task's own coroutine, or one a
** task waits through? Resuming or closing it from anywhere else would run
** that call's continuation, or free what the scheduler still uses. */
static int co_in (lua_State *L, const void *key, lua_State *co) {
  int in;
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  in = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return in;
}

static int co_held (lua_State *L, lua_State *co) {
  return lua_status(co) == LUA_YIELD &&
         (co_in(L, &suspended_key, co) || co_in(L, &threads_key, co));
}

#define CO_HELD_MSG \
  "cannot resume coroutine: it is suspended in a braid call of a task"

static int l_co_resume (lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  if (co_held(L, co)) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, CO_HELD_MSG);
    return 2;
  }
  return co_finish(L, co, co_resume(L, co, lua_gettop(L) - 1, 1), 1);
}

static int l_co_wrapped (lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  if (co_held(L, co)) return luaL_error(L, CO_HELD_MSG);
  return co_finish(L, co, co_resume(L, co, lua_gettop(L), 0), 0);
}

static int l_co_wrap (lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, l_co_wrapped, 1);
  return 1;
}

static int in_task_body (lua_State *L) {
  braid_engine_t *E = braid__engine(L);
  return E->current != NULL && E->current->co == L;
}

static int l_co_yield (lua_State *L) {
  if (in_task_body(L))
    return luaL_error(L, "attempt to yield from outside a coroutine");
  return lua_yield(L, lua_gettop(L));
}

static int l_co_isyieldable (lua_State *L) {
  lua_State *co = lua_isnone(L, 1) ? L : lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  lua_pushboolean(L, lua_isyieldable(co) && !in_task_body(co));
  return 1;
}

/* coroutine.close(co): Lua's own (upvalue 1), except for a coroutine a
** task runs in or is suspended through: resetting it would free what the
** scheduler still uses (the task's scopes, a pending operation's data). */
static int l_co_close (lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  if (co_held(L, co))
    return braid__error_usage(L, "coroutine.close: cannot close a coroutine "
                              "that a braid task runs in or is suspended "
                              "through (cancel the task instead)");
  lua_settop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, 1, LUA_MULTRET);
  return lua_gettop(L);
}

static void weak_table (lua_State *L, const void *key) {
  braid__push_weak_table(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* Replaces resume, wrap, yield, isyieldable and close in the coroutine
** table at the stack top. They behave as Lua's own outside tasks. */
void braid__open_coroutine (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"resume", l_co_resume},
    {"wrap", l_co_wrap},
    {"yield", l_co_yield},
    {"isyieldable", l_co_isyieldable},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
  lua_getfield(L, -1, "close");
  if (lua_isfunction(L, -1)) {
    lua_pushcclosure(L, l_co_close, 1);
    lua_setfield(L, -2, "close");
  } else {
    lua_pop(L, 1);
  }
  weak_table(L, &suspended_key);
  weak_table(L, &threads_key);
}

void braid__open_task (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"await", l_task_await},
    {"cancel", l_task_cancel},
    {"status", l_task_status},
    {"done", l_task_done},
    {"result", l_task_result},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__newindex", l_task_newindex},
    {"__tostring", l_task_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"spawn", l_task_spawn},
    {"current", l_task_current},
    {"yield", l_task_yield},
    {NULL, NULL}
  };
  braid__class(L, TASK_MT, metamethods, methods, l_task_index);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
