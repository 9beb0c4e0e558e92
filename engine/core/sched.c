/*
** sched.c: the scheduler: the FIFO ready queue drained by one uv_idle_t,
** resuming tasks, and the wait/wake/yield protocol of the scheduler's own
** waits (await, channels, scope joins) and of braid_suspend ops.
**
** Invariants:
** - Only the scheduler resumes tasks, in FIFO order. Everything else marks
**   them ready with braid__task_wake; libuv callbacks never resume a task.
** - braid's yields carry BRAID_MARKER when they start inside a coroutine of
**   the script's own; braid's coroutine.resume and coroutine.wrap
**   (corolib.c) pass such yields outward so the whole task suspends.
** - The drain resumes at most DRAIN_BUDGET tasks, then lets the loop poll,
**   so I/O and timers get their turn.
*/
#include <string.h>
#include "core.h"

#define DRAIN_BUDGET 20000

const char braid__marker = 'm';

static void idle_cb (uv_idle_t *h) {
  braid_engine_t *E = container_of(h, braid_engine_t, idle);
  braid__engine_enter(E);
  braid__task_drain(E);
  braid__engine_leave(E);
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

void braid__task_unready (braid_engine_t *E, struct braid_task *t) {
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
  t->waiting = 0;
  t->wake = (unsigned char) how;
  braid__task_ready(t);
}

void braid__task_wait (struct braid_task *t, struct braid_wait *w,
                       void (*cancel)(struct braid_wait *), const char *what) {
  braid__op_data_drop(t, w);   /* the union is this wait's from now on */
  w->cancel = cancel;
  w->release = NULL;
  w->what = what;
  w->since = braid__now_ms(t->E);
  t->waiting = 1;   /* w is always t->w */
  t->wake = WAKE_NONE;
}

/* Wait records. A task takes one when it starts and gives it back when it
** ends: a pending task (W1's 100k spawned before any runs) carries only a
** pointer. Spares are kept in E->wait_free, chained through their first
** bytes, and freed by braid__wait_drop (at the end of a run, at close, and
** when memory is short); beyond BRAID_SPARES (as many as the coroutine
** pool keeps) a record goes back at once, so a burst of tasks in a
** long-lived engine (a worker) does not stay counted in its limit. Under
** AddressSanitizer a record
** goes straight back to the allocator instead, so that a use after its
** task ended is reported rather than hidden by the reuse. */
#if defined(__SANITIZE_ADDRESS__)
#define WAIT_NOREUSE 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define WAIT_NOREUSE 1
#endif
#endif

struct braid_wait *braid__wait_get (lua_State *L, struct braid_task *t) {
  braid_engine_t *E = t->E;
  struct braid_wait *w = E->wait_free;
  if (w) {
    memcpy(&E->wait_free, w, sizeof w);
    E->wait_spares--;
  } else {
    w = (struct braid_wait *) braid__state_alloc(L, NULL, 0,
                                                 sizeof(struct braid_started));
    if (w == NULL) luaL_error(L, "not enough memory");
  }
  ((struct braid_started *) w)->inner = &t->scope;
  ((struct braid_started *) w)->grace_end = 0;
  /* Only what is read before the task's first wait writes it: each wait
  ** sets its own fields, as when a task's waits follow one another. */
  w->cancel = NULL;
  w->release = NULL;
  w->task = t;
  return w;
}

/* Called once the task has ended: nothing refers to the record now (an op
** ends with its continuation or its on_cancel, a scheduler wait with its
** cancel hook or its wake). Allocates nothing. */
void braid__wait_put (struct braid_task *t) {
  struct braid_wait *w = t->w;
  if (w == NULL) return;
  braid__op_data_drop(t, w);
  t->w = NULL;
#ifndef WAIT_NOREUSE
  if (t->E->wait_spares < BRAID_SPARES) {
    memcpy(w, &t->E->wait_free, sizeof w);
    t->E->wait_free = w;
    t->E->wait_spares++;
    return;
  }
#endif
  braid__state_alloc(t->E->S, w, sizeof(struct braid_started), 0);
}

void braid__wait_drop (braid_engine_t *E, lua_State *L) {
  while (E->wait_free) {
    struct braid_wait *w = E->wait_free;
    memcpy(&E->wait_free, w, sizeof w);
    braid__state_alloc(L, w, sizeof(struct braid_started), 0);
  }
  E->wait_spares = 0;
}

/* fname is the function as the script wrote it ("braid.sleep",
** "channel:send", an embedder's "app.get"): messages use it as given. */
struct braid_task *braid__task_current_slow (lua_State *L,
                                             const char *fname) {
  braid_engine_t *E = braid_engine(L);
  if (E != NULL && E->embedded && E->current == NULL)   /* no braid.run */
    braid_usageerror(L, "%s: not inside a braid task (the application "
                       "starts code as a task with braid_run_string, "
                       "braid_run_file or braid_spawn_function)", fname);
  if (E == NULL || E->current == NULL)
    braid_usageerror(L, "%s: not inside a braid task (run the code "
                       "with braid.run, or in a task started by braid.spawn)",
                       fname);
  return E->current;
}

void braid__task_checkyield (lua_State *L, struct braid_task *t,
                             const char *fname) {
  if (t->abandoned)
    braid_usageerror(L, "%s: the task is being abandoned after its "
                       "grace period; cleanup can no longer wait", fname);
  if (!lua_isyieldable(L) || t->E->noyield)
    braid_usageerror(L, "%s: cannot suspend here: the call is inside "
                       "a C function or metamethod that cannot yield (such as "
                       "table.sort, string.gsub, __gc or __tostring)", fname);
  /* A coroutine resumed by Lua's own resume (a reference a library took
  ** before require "braid" replaced coroutine.*) would get braid's marker
  ** back while the task, registered as waiting, ran on. */
  if (L != t->E->running_co)
    braid_usageerror(L, "%s: cannot suspend here: this coroutine was "
                       "resumed by Lua's own coroutine.resume or wrap (one "
                       "saved before require \"braid\"?), not braid's",
                       fname);
}

void braid__task_checkcancel (lua_State *L, struct braid_task *t) {
  struct braid_scope *in = braid__task_inner(t);
  if (in->cancelled) {
    braid__push_cancel(L, in->cause);
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
    braid__push_cancel(L, braid__task_inner(t)->cause);
    lua_error(L);
  }
  if (how == WAKE_NOYIELD)   /* co_resume has undone the wait already */
    braid_usageerror(L, "braid: cannot suspend here: a coroutine between "
                       "this call and its task cannot yield");
}

int braid__task_k0 (lua_State *L, int status, lua_KContext ctx) {
  (void) status;
  braid__task_resumed(L, (struct braid_task *) ctx);
  return 0;
}

/* braid.yield(): lets every other ready task run once. */

static void task_resume (braid_engine_t *E, lua_State *S, struct braid_task *t) {
  int nargs = 0, nres, status, pushed = 0;
  if (t->status == TASK_PENDING) {   /* kept on S: most bodies end here */
    braid__task_push(S, t);
    braid__task_start(E, S, t);
    nargs = t->nargs + 1;   /* task_main's arguments: the body, its own */
    pushed = 1;
  }
  if (E->trace) braid__trace_resume(t);
  t->status = TASK_RUNNING;
  E->current = t;
  braid__hook_task(E, t);   /* the budget, a cancelled task's grace */
  status = lua_resume(t->co, S, nargs, &nres);
  E->current = NULL;
  braid__co_leave(E, NULL);
  if (E->trace) braid__trace_ran(t, status);
  if (status == LUA_YIELD) {
    lua_pop(t->co, nres);
    if (pushed) lua_pop(S, 1);
    t->status = TASK_SUSPENDED;
    if (!t->waiting && !t->queued) braid__task_ready(t);  /* a bare yield */
  } else {
    if (!pushed) braid__task_push(S, t);
    braid__task_body_done(E, S, t, status, nres);
  }
}

/* Resumes ready tasks in FIFO order; runs under lua_pcall on E->S. After a
** budget it returns to the loop so that I/O and timers get their turn. */
static int l_task_drain (lua_State *S) {
  braid_engine_t *E = (braid_engine_t *) lua_touserdata(S, 1);
  int budget = DRAIN_BUDGET;
  if (E->trace) braid__trace_counters(E);
  while (budget-- > 0) {
    struct braid_task *t;
    if (E->oom == 1) braid__engine_oom(S, E);   /* the reserve was spent */
    if ((t = E->ready_head) == NULL) break;
    E->ready_head = t->next;
    if (E->ready_head == NULL) E->ready_tail = NULL;
    t->queued = 0;
    task_resume(E, S, t);
    if ((t = E->abandon_later) != NULL) {   /* asked while t's code ran */
      E->abandon_later = NULL;
      braid__task_abandon_as(t, E->abandon_why);
    }
  }
  return 0;
}

/* Nothing is ready: give back what a burst grew and a Lua table or an
** array would keep at its peak (the anchors table, the coroutine set).
** Optional work: its allocations are refusable (within the memory limit,
** never the reserve), and a refusal keeps what was there. */
static void idle_trim (braid_engine_t *E) {
  E->refusable = 1;
  braid__anchors_compact(E);
  braid__coset_trim(E);
  E->refusable = 0;
}

void braid__task_drain (braid_engine_t *E) {
  braid_engine_t *outer = braid__draining;   /* another engine's, nested */
  braid__draining = E;
  braid__engine_call(E, l_task_drain, E);
  braid__draining = outer;
  /* libuv computes the poll's timeout from the time it read before the
  ** idle callbacks: after a drain that ran Lua code for a while, a timer
  ** would fire late by the time that code took (a 0.3 s sleep beside a
  ** task that computed for 1 s woke at 1.3 s, a grace period doubled). */
  uv_update_time(E->loop);
  if (E->ready_head == NULL) {
    if (E->oom != 1) uv_idle_stop(&E->idle);
    braid__timer_quiet(E);
    idle_trim(E);
  }
}

/* Makes the scheduler run soon, with or without a ready task: the memory
** reserve was spent and the safe point to say so is in the drain. */
void braid__task_kick (braid_engine_t *E) {
  uv_idle_start(&E->idle, idle_cb);
}

