/*
** hook.c: what stops Lua code that does not suspend: the instruction
** budget of an embedded engine, the grace period of a cancelled task that
** keeps running, and an interrupt (Ctrl-C, SIGTERM) arriving while Lua
** code runs. All three are Lua count hooks on the thread that runs.
**
** Invariants:
** - A task's hook is armed when the scheduler resumes it and on every
**   coroutine of the script's own that braid's coroutine.resume runs
**   inside it (braid__hook_arm); a thread with nothing to watch has no
**   hook. E->running_co is the innermost thread running for the current task.
** - The budget is per task resume, nested coroutines included: the task's
**   thread is charged window by window (BUDGET_WINDOW instructions); a
**   nested coroutine is charged NESTED_WINDOW up front at each resume and
**   then window by window, since a window cut short by a switch cannot be
**   measured (so each resume of a script's coroutine costs at least
**   NESTED_WINDOW of the budget).
** - Once a budget is spent or a grace period has passed, every instruction
**   of the task raises (in its thread and in the one running), so pcall
**   cannot keep it running: it unwinds and ends.
** - A hook runs no script code (a cancel reason's __tostring): no hook
**   runs inside a hook, so nothing could stop it there.
** - The signal handler only counts the signal and sets a hook on the
**   running thread (lua_sethook may be called asynchronously); the hook,
**   run by that thread between two instructions, does the rest. That
**   hook is lost when a re-arm replaces it or when the thread stops
**   running (a coroutine yields back), so while a signal that came
**   during a task is not dispatched (E->hook_wanted) every re-arm and
**   every switch back to a thread sets it again (braid__interrupt_pending).
** - Script code braid runs for itself (a __tostring, the <close> handlers
**   of an abandoned task) is bounded (braid__bound): while it runs, every
**   re-arm of a thread running Lua code (after a signal's hook, a
**   coroutine it resumes) arms that bound, never the task's hooks, so no
**   signal and no coroutine lifts it; it is charged window by window,
**   and a window cut short is spent.
*/
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include "core.h"

#define BUDGET_WINDOW 1000
#define NESTED_WINDOW 100
#define WATCH_WINDOW 10000   /* a cancelled task looks at the clock */

#define INTERRUPT_MASK (LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT)

static void task_hook (lua_State *L, lua_Debug *ar);
static void interrupt_hook (lua_State *L, lua_Debug *ar);
static void bound_arm (braid_engine_t *E, struct braid_bound *b,
                       lua_State *L);

/* Raises, from now on, at every instruction of L and of the task's
** thread: the budget is spent or the grace period has passed. */
static void stop_hook (lua_State *L, lua_Debug *ar) {
  braid_engine_t *E = braid_engine(L);
  struct braid_task *t = E->current;
  (void) ar;
  lua_sethook(L, stop_hook, LUA_MASKCOUNT, 1);
  if (t == NULL) {
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  t->nopool = 1;   /* hooks stay off after an error in one: not reused */
  if (t->co && t->co != L) lua_sethook(t->co, stop_hook, LUA_MASKCOUNT, 1);
  if (t->stop == STOP_BUDGET)
    luaL_error(L, "instruction budget exceeded (%d instructions without "
               "suspending)", E->budget);
  struct braid_scope *in = braid__task_inner(t);
  braid__push_cancel_hooked(L, in->cancelled ? in->cause : &t->scope);
  lua_error(L);
}

/* braid__task_checkcancel for the hooks: raises the task's cancellation
** when it reached its innermost scope, running no script code. */
static void hook_checkcancel (lua_State *L, struct braid_task *t) {
  struct braid_scope *in = braid__task_inner(t);
  if (in->cancelled) {
    braid__push_cancel_hooked(L, in->cause);
    lua_error(L);
  }
}

/* The task has run too long: from now on it only unwinds. */
static void task_stop (lua_State *L, struct braid_task *t, int why) {
  if (why == STOP_GRACE && !t->E->closing) {
    fprintf(stderr, "braid: task %llu (%s%s) abandoned: still running Lua "
            "code %g s after it was cancelled\n", (unsigned long long) t->id,
            braid__task_name(L, t, 0), braid__task_where(L, t),
            (double) braid__scope_grace(&t->scope) / 1e9);
    lua_pop(L, 1);
    t->abandoned = 1;   /* braid calls refuse to wait from now on */
  }
  t->stop = (unsigned char) why;
  stop_hook(L, NULL);
}

/* The running task, abandoned while its Lua code is on the C stack
** (abandon.c): it cannot be reset from under itself, so from its next
** instruction it only unwinds, as when its grace period has passed. */
void braid__hook_stop (braid_engine_t *E) {
  if (E->running_co) lua_sethook(E->running_co, stop_hook, LUA_MASKCOUNT, 1);
  if (E->current->co) lua_sethook(E->current->co, stop_hook, LUA_MASKCOUNT, 1);
}

/* Arms L (the task's thread, or a coroutine running inside the task) with
** what the current task needs watched; clears a hook nothing needs. */
void braid__hook_arm (braid_engine_t *E, lua_State *L, int nested) {
  struct braid_task *t = E->current;
  int window = 0;
  if (t == NULL) {
    if (lua_gethook(L)) lua_sethook(L, NULL, 0, 0);
    return;
  }
  if (t->stop) {
    lua_sethook(L, stop_hook, LUA_MASKCOUNT, 1);
    return;
  }
  if (E->budget) {
    window = nested ? NESTED_WINDOW : BUDGET_WINDOW;
    if (window > E->budget) window = E->budget;
    if (nested) E->budget_left -= window;   /* a cut-short window is lost */
    if (E->budget_left < 0) {
      t->stop = STOP_BUDGET;
      lua_sethook(L, stop_hook, LUA_MASKCOUNT, 1);
      return;
    }
  }
  /* The grace period is watched once the task is cancelled, also while
  ** it runs inside a shield (its innermost scope is not cancelled then): a
  ** shield defers a cancellation, it does not lift the bound on cleanup.
  ** It runs from the cancel (scope.c sets grace_end); only an inner
  ** scope's cancel (a deadline) starts it here. */
  if (t->scope.cancelled || braid__task_inner(t)->cancelled) {
    if (TASK_STARTED(t)->grace_end == 0)
      TASK_STARTED(t)->grace_end = uv_hrtime() + braid__scope_grace(&t->scope);
    if (window == 0 || window > WATCH_WINDOW) window = WATCH_WINDOW;
  }
  if (window) lua_sethook(L, task_hook, LUA_MASKCOUNT, window);
  else if (lua_gethook(L)) lua_sethook(L, NULL, 0, 0);
  if (braid__interrupt_pending(E))   /* the re-arm replaced its hook */
    lua_sethook(L, interrupt_hook, INTERRUPT_MASK, 1);
}

/* braid__hook_arm for a thread that starts or goes on running in the
** middle of Lua code: a coroutine resumed (corolib.c), the thread a
** signal's or a poll's hook ran in. Inside bounded code, the bound goes
** on instead. */
void braid__hook_rearm (braid_engine_t *E, lua_State *L, int nested) {
  if (E->bound) bound_arm(E, E->bound, L);
  else braid__hook_arm(E, L, nested);
}

/* The scheduler resumes t: a fresh budget, and its thread armed. */
void braid__hook_task (braid_engine_t *E, struct braid_task *t) {
  braid__co_enter(E, t->co);
  E->budget_left = E->budget;
  braid__hook_arm(E, t->co, 0);
}

/* Every window of instructions: charge the budget, look at the clock of a
** cancelled task's grace period. */
static void task_hook (lua_State *L, lua_Debug *ar) {
  braid_engine_t *E = braid_engine(L);
  struct braid_task *t = E->current;
  (void) ar;
  if (t == NULL) return;
  if (E->budget && L == t->co)   /* a nested window was charged up front */
    E->budget_left -= lua_gethookcount(L);
  if (t->w && TASK_STARTED(t)->grace_end &&
      uv_hrtime() > TASK_STARTED(t)->grace_end)
    task_stop(L, t, STOP_GRACE);
  braid__hook_arm(E, L, L != t->co);   /* the next window, or the stop */
  if (t->stop) stop_hook(L, NULL);
}

/* Set asynchronously by an interrupt: runs what the signal asks for in
** this thread, then raises the cancellation if it reached the task (only
** after one that may cancel: a task running its cleanup, cancelled
** already, is not cut short by a dump). */
static void interrupt_hook (lua_State *L, lua_Debug *ar) {
  braid_engine_t *E = braid_engine(L);
  struct braid_task *t = E->current;
  (void) ar;
  braid__hook_rearm(E, L, t != NULL && L != t->co);
  if (braid__interrupt_dispatch(E) && t && !t->stop) {
    braid__hook_rearm(E, L, L != t->co);   /* now maybe cancelled */
    hook_checkcancel(L, t);
  }
}

/* From a signal handler: the running task's thread stops at its next
** instruction and looks at the pending interrupts. */
void braid__hook_interrupt (braid_engine_t *E) {
  lua_State *L = E->running_co;
  if (E->current == NULL) return;   /* the loop's callback handles it */
  atomic_store_explicit(&E->hook_wanted, 1, memory_order_relaxed);
  if (L) lua_sethook(L, interrupt_hook, INTERRUPT_MASK, 1);
}

/* ---- bounding script code the engine calls itself ---- */

/* Script code braid runs for itself (a __tostring while it reports an
** error, the <close> handlers of a task it abandons) runs with this
** bound: the engine's budget, else BOUND_DEFAULT instructions, on its
** thread and on the coroutines it resumes; and while it runs the memory
** limit applies as in a task. */
#define BOUND_DEFAULT 10000000

static void bound_hook (lua_State *L, lua_Debug *ar) {
  braid_engine_t *E = braid_engine(L);
  struct braid_bound *b = E->bound;
  (void) ar;
  if (b == NULL) {   /* a coroutine it resumed, resumed again outside */
    lua_sethook(L, NULL, 0, 0);
    return;
  }
  if (b->left > 0) {   /* the window is spent: the next one */
    bound_arm(E, b, L);
    return;
  }
  lua_sethook(L, bound_hook, LUA_MASKCOUNT, 1);   /* pcall cannot go on */
  luaL_error(L, "a metamethod or handler that braid called ran too long");
}

/* Grants L the next window of bound b (charged now: a window that a
** switch or a signal's hook cuts short is spent), or raises from the next
** instruction once b is spent; a signal not dispatched yet is looked at
** first (interrupt_hook comes back here). */
static void bound_arm (braid_engine_t *E, struct braid_bound *b,
                       lua_State *L) {
  long long window = L == b->L ? BUDGET_WINDOW : NESTED_WINDOW;
  if (window > b->left) window = b->left;
  b->left -= window;
  lua_sethook(L, bound_hook, LUA_MASKCOUNT, window > 0 ? (int) window : 1);
  if (braid__interrupt_pending(E))
    lua_sethook(L, interrupt_hook, INTERRUPT_MASK, 1);
}

/* Bounds the script code L runs from now until braid__unbound, which puts
** back what this saves. */
void braid__bound (braid_engine_t *E, lua_State *L, struct braid_bound *b) {
  b->hook = lua_gethook(L);
  b->mask = lua_gethookmask(L);
  b->count = lua_gethookcount(L);
  b->L = L;
  b->left = E->budget ? E->budget : BOUND_DEFAULT;
  b->outer = E->bound;
  b->cancelled = E->current && braid__task_inner(E->current)->cancelled;
  E->bound = b;
  bound_arm(E, b, L);
}

/* Set by braid__unbound: raises the cancellation a signal brought while
** bounded code ran (interrupt_hook raises only after a dispatch that may
** cancel, and that dispatch has been). */
static void cancel_hook (lua_State *L, lua_Debug *ar) {
  braid_engine_t *E = braid_engine(L);
  struct braid_task *t = E->current;
  (void) ar;
  if (t == NULL) return;
  braid__hook_arm(E, L, L != t->co);
  if (!t->stop) hook_checkcancel(L, t);
}

void braid__unbound (braid_engine_t *E, lua_State *L, struct braid_bound *b) {
  struct braid_task *t = E->current;
  E->bound = b->outer;
  /* The running task's thread is armed for what the task is now: a
  ** signal during the bound may have cancelled it (its cancellation,
  ** raised inside the bound, ended only that code), which is raised at
  ** the task's next instruction (cancel_hook). */
  if (E->bound == NULL && t != NULL && L == E->running_co) {
    braid__hook_arm(E, L, L != t->co);
    if (!b->cancelled && !t->stop && braid__task_inner(t)->cancelled)
      lua_sethook(L, cancel_hook, INTERRUPT_MASK, 1);
  } else {
    lua_sethook(L, b->hook, b->mask, b->count);
    /* a signal's hook set meanwhile was replaced by the bound or by this */
    if (braid__interrupt_pending(E)) braid__hook_interrupt(E);
  }
}

/* ---- a poll asked for by another thread (io/worker.c) ---- */

/* The publication braid__engine_publish promises. A coroutine that
** starts running is stored with release (it lives until it stops). One
** that stops is replaced, then its thread waits out a reader that may
** have read it: both sides store, then load the other's word, seq_cst, so
** a reader that found the old coroutine set busy before this store, and
** this load sees busy until the reader is done with it (a lock here cost
** a third of a worker task's resume). */
void braid__co_publish (braid_engine_t *E, lua_State *co, int leave) {
  if (!leave) {
    atomic_store_explicit(E->pub_co, co, memory_order_release);
    return;
  }
  atomic_store(E->pub_co, co);
  while (atomic_load(E->pub_busy))   /* a lua_sethook: brief, unless the */
    sched_yield();                   /* owner's thread was descheduled */
}

static const char poll_key = 'p';

/* The poll function of L's state (braid__hook_poll_set), kept in its
** registry. [-1, +0, m] */
void braid__hook_poll_set (lua_State *L) {
  lua_rawsetp(L, LUA_REGISTRYINDEX, &poll_key);
}

/* Runs on L's own thread, at its next instruction: the state's poll
** function, then the running task's cancellation, as
** interrupt_hook does for a signal. */
static void poll_hook (lua_State *L, lua_Debug *ar) {
  braid_engine_t *E = braid_engine(L);
  struct braid_task *t = E->current;
  (void) ar;
  braid__hook_rearm(E, L, t != NULL && L != t->co);
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &poll_key) == LUA_TFUNCTION)
    lua_call(L, 0, 0);
  else
    lua_pop(L, 1);
  if (t && !t->stop) {
    braid__hook_rearm(E, L, L != t->co);   /* now maybe cancelled */
    hook_checkcancel(L, t);
  }
}

/* From any thread: lua_sethook is the one call Lua allows asynchronously
** (lua.c's SIGINT handler makes it), so a thread spinning in Lua code
** stops at its next instruction and polls. */
void braid__hook_poll (lua_State *L) {
  lua_sethook(L, poll_hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}
