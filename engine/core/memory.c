/*
** memory.c: what bounds a script: the memory reserve that keeps the
** scheduler alive when the state runs out, the counting allocator of an
** embedded engine (memory_limit) and the charges of braid's C buffers
** against it, the caps on what one call may buffer (kind "limit"), and
** the instruction budget.
**
** Invariants:
** - While braid runs, every allocation goes through run_alloc (braid.run)
**   or braid__alloc (embedded); one that fails outside a task spends the
**   reserve and is tried again, and the next drain (the safe point) fails
**   the root (or cancels an embedder's tasks) with a "memory" error.
** - The memory limit applies while a task runs and while code is loaded;
**   the scheduler's own bookkeeping is never refused, so the task that
**   went over the limit fails and the engine carries on.
** - braid's C buffers are counted in the same E->mem_used (charges), and a
**   charge that would pass the limit is refused wherever it is made; a
**   charge that counts bytes holds a reference to E.
** - A refused charge runs Lua's emergency collection (no finalizers) and
**   is tried once more, as a refused allocation of the state is.
*/
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

/* The memory reserve.
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

/* The state's own allocator: the arena (arena.c) or malloc. */
static void *state_alloc (braid_engine_t *E, void *ptr, size_t osize,
                          size_t nsize) {
  if (E->alloc_f) return E->alloc_f(E->alloc_ud, ptr, osize, nsize);
  if (E->arena) return braid__arena_alloc(E->arena, ptr, osize, nsize);
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
    E->reserve = state_alloc(E, NULL, LUA_TUSERDATA, RESERVE_SIZE);
}

void braid__reserve_free (braid_engine_t *E) {
  if (E->reserve) state_alloc(E, E->reserve, RESERVE_SIZE, 0);
  E->reserve = NULL;
}

/* Spends the reserve: the next drain fails the run with a "memory"
** error. Returns 0 when there was none left to spend. */
static int reserve_give (braid_engine_t *E) {
  if (E->reserve == NULL) return 0;
  braid__reserve_free(E);
  E->oom = 1;
  if (E->attached) braid__task_kick(E);   /* the safe point comes soon */
  return 1;
}

/* An allocation failed: outside a task (and outside what reports its own
** failure, E->refusable), spend the reserve and try once more. Returns
** the block or NULL (Lua then raises). */
void *braid__reserve_spend (braid_engine_t *E, void *ptr, size_t osize,
                            size_t nsize) {
  if (E->current || E->refusable || !reserve_give(E)) return NULL;
  return state_alloc(E, ptr, osize, nsize);
}

/* Blocks braid keeps for the scheduler from the state's allocator (wait
** records, the coroutine set): counted in the memory limit and backed by
** the reserve as the state's own allocations are. */
void *braid__state_alloc (lua_State *L, void *p, size_t osize,
                          size_t nsize) {
  void *ud;
  lua_Alloc f = lua_getallocf(L, &ud);
  return f(ud, p, osize, nsize);
}

/* ---- braid's own C heap ----
** Everything braid mallocs for itself (timers, file and lookup requests,
** signal waiters, the REPL's input) goes through these, so that a failure
** can be injected (tests/fault_test.c --c-heap N fails the Nth) and each
** path is seen to end in a "memory" error. How a failure is reported
** depends on where it happens:
** - in a call the task made (the function's own checks, an op's start):
**   raise braid_error(L, "memory", NULL, "<function>: not enough memory");
** - in a callback working for an op: the op ends with UV_ENOMEM and its
**   continuation raises that error, in the task;
** - where nothing can be raised and nothing owns the failure (a scope's
**   grace timer, from a cancel that may come from any callback): the
**   *_must forms spend the memory reserve and try again, so the run fails
**   with the reserve's "memory" error at the next safe point; with the
**   reserve already spent braid stops (braid__engine_fatal), as when Lua
**   runs out in the scheduler twice. */

size_t braid__cheap_count, braid__cheap_fail;

/* Counts the allocation; the one tests chose fails. */
static int cheap_fails (void) {
  return ++braid__cheap_count == braid__cheap_fail;
}

void *braid__malloc (size_t n) {
  return cheap_fails() ? NULL : malloc(n);
}

char *braid__strdup (const char *s) {
  size_t n = strlen(s) + 1;
  char *d = (char *) braid__malloc(n);
  if (d != NULL) memcpy(d, s, n);
  return d;
}

void *braid__calloc (size_t n, size_t size) {
  return cheap_fails() ? NULL : calloc(n, size);
}

void *braid__realloc (void *p, size_t n) {
  return cheap_fails() ? NULL : realloc(p, n);
}

void *braid__calloc_must (braid_engine_t *E, size_t n, size_t size) {
  void *p = braid__calloc(n, size);
  if (p == NULL && reserve_give(E)) p = braid__calloc(n, size);
  if (p == NULL) braid__engine_fatal(E, "not enough memory");
  return p;
}

void *braid__realloc_must (braid_engine_t *E, void *p, size_t n) {
  void *q = braid__realloc(p, n);
  if (q == NULL && reserve_give(E)) q = braid__realloc(p, n);
  if (q == NULL) braid__engine_fatal(E, "not enough memory");
  return q;
}

/* ---- braid's C buffers and the memory limit ----
** Data braid holds in C for a script (a stream's read buffer, exec's
** captured output, a file being read, the copy of a string being written
** to a file) is as much the script's memory as its Lua strings, so it is
** counted in E->mem_used beside the state's bytes and bounded by the same
** memory_limit. Unlike the state's allocations, a charge is refused past
** the limit also outside tasks: every buffer works for some call, and that
** call fails with kind "memory". The scheduler's own bookkeeping (tasks,
** scopes, timers, requests) is never charged, so it is never refused. */

/* A refused charge collects before it gives up, as a refused allocation
** of the state does: Lua's emergency collection, which runs no finalizer
** and so no Lua code. A full collection (lua_gc) would run finalizers,
** which is not safe everywhere a charge is made: in a libcurl callback (a
** response's __gc takes its handle off the multi), in a libuv callback
** halfway through growing a buffer. Lua's emergency collection has no
** API, so it is provoked: the allocator fails one allocation made here
** on purpose (gc_probe 1), Lua collects and tries again, and the retry is
** not refused by the limit (gc_probe 2: a userdata header, then garbage)
** and may not raise (S may have no protected call to return to): out of
** memory even then, it spends the reserve, or braid stops, as when the
** scheduler runs out twice.
** Safe wherever Lua may allocate: charges are never made by the
** allocator or by a collection step (Lua allows an emergency collection
** in a finalizer), and not after braid_close began. */
static void emergency_collect (braid_engine_t *E) {
  lua_State *S = E->S;
  if (S == NULL || E->closing || E->gc_probe || !lua_checkstack(S, 1))
    return;
  E->gc_probe = 1;
  lua_newuserdatauv(S, 0, 0);
  lua_pop(S, 1);
  E->gc_probe = 0;
}

static void xacct_fold (braid_engine_t *E);

static int over_limit (braid_engine_t *E, size_t d) {
  xacct_fold(E);
  return E->mem_limit && (E->mem_used > E->mem_limit ||
                          d > E->mem_limit - E->mem_used);
}

int braid__mem_charge (braid_engine_t *E, ptrdiff_t delta) {
  if (delta > 0) {
    size_t d = (size_t) delta;
    if (over_limit(E, d)) {
      emergency_collect(E);
      if (over_limit(E, d)) return UV_ENOMEM;
    }
    E->mem_used += d;
  } else {
    size_t d = (size_t) -delta;
    E->mem_used = d < E->mem_used ? E->mem_used - d : 0;
  }
  return 0;
}

/* A charge holds a reference to E while it counts bytes: its buffer may be
** freed by a close callback or a file request's callback after braid_close,
** and E (only its memory: the state is gone then) must still be there. */
int braid__charge_set (struct braid_charge *c, braid_engine_t *E,
                       size_t bytes) {
  if (c->bytes == 0) c->E = E;
  if (bytes > c->bytes) {
    if (braid__mem_charge(c->E, (ptrdiff_t) (bytes - c->bytes)) != 0)
      return UV_ENOMEM;
    if (c->bytes == 0) c->E->refs++;
  } else if (bytes < c->bytes) {
    braid_engine_t *held = c->E;
    braid__mem_charge(held, -(ptrdiff_t) (c->bytes - bytes));
    if (bytes == 0) {
      c->bytes = 0;
      c->E = NULL;
      braid__engine_unref(held);
      return 0;
    }
  }
  c->bytes = bytes;
  return 0;
}

int braid_charge_set (braid_charge_t *c, braid_engine_t *E, size_t bytes) {
  return braid__charge_set(c, E, bytes);
}

/* ---- caps on what one call may hold ----
** exec's max_output, read_file's max_size and a stream's max_line bound
** what a single call buffers, whatever the memory limit; each is an
** option a script may raise, and going over raises kind "limit". */

size_t braid__opt_limit (lua_State *L, int idx, const char *key, size_t def,
                         const char *fname) {
  double v = braid__opt_number(L, idx, key, (double) def, fname);
  return v >= (double) BRAID_NO_LIMIT ? BRAID_NO_LIMIT : (size_t) v;
}

void braid__push_limit_error (lua_State *L, size_t limit, const char *option,
                              const char *fmt, ...) {
  va_list ap;
  const char *msg;
  va_start(ap, fmt);
  msg = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  braid_pusherror(L, "limit", NULL, "%s", msg);
  lua_remove(L, -2);
  lua_pushinteger(L, (lua_Integer) limit);
  lua_setfield(L, -2, "limit");
  lua_pushstring(L, option);
  lua_setfield(L, -2, "option");
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

/* The safe point after the reserve was spent: fail the root (or the REPL's
** running entry) with a "memory" error, or cancel an embedder's tasks with
** it, then set a new reserve aside. Runs in scheduler context, under
** lua_pcall on S. */
void braid__engine_oom (lua_State *S, braid_engine_t *E) {
  struct braid_task *victim = braid__engine_victim(E);
  E->oom = 0;
  braid__reserve_take(E);   /* first: it covers the allocations below */
  if (E->reserve == NULL) {   /* memory is short: let go of what can go */
    braid__task_pool_drop(S, E);
    braid__wait_drop(E, S);
    lua_gc(S, LUA_GCCOLLECT);
    braid__reserve_take(E);
  }
  /* Said once: while the victim is failing already (the reserve spent
  ** again as its tasks unwind), another error would only be reported. */
  if (!E->embedded && victim && !TASK_DONE(victim) &&
      SCOPE_REF(&victim->scope, error_ref) != LUA_NOREF)
    return;
  braid_pusherror(S, "memory", NULL, "not enough memory (braid's "
                    "scheduler ran out and spent its reserve)");
  if (!E->embedded) {
    if (victim && !TASK_DONE(victim))
      braid__scope_fail(S, &victim->scope, -1, 0);
    else E->oom = 2;   /* too late for the root: braid.run raises it */
  } else {
    braid__engine_cancel_all(S, E, -1);
  }
  lua_pop(S, 1);
}

/* braid.run lends the state run_alloc for the run: the script's own
** allocator with the reserve behind it. Returns 0, or -1 when not even the
** reserve could be set aside. */
int braid__run_alloc_begin (lua_State *L, braid_engine_t *E) {
  if (lua_getallocf(L, NULL) != run_alloc) {   /* else a run raised early */
    E->arena = braid__arena_adopt(L);   /* kept after the run (arena.c) */
    E->alloc_f = lua_getallocf(L, &E->alloc_ud);
    lua_setallocf(L, run_alloc, E);
  }
  E->oom = 0;
  braid__reserve_take(E);
  if (E->reserve == NULL) {   /* the run could not clean up after itself */
    braid__run_alloc_end(L, E);
    return -1;
  }
  return 0;
}

/* Gives the state its own allocator back, and the reserve. */
void braid__run_alloc_end (lua_State *L, braid_engine_t *E) {
  braid__reserve_free(E);
  lua_setallocf(L, E->alloc_f, E->alloc_ud);
  E->alloc_f = NULL;
}

/* lua_Alloc counting the state's bytes. Growth is refused past the limit
** only while a task runs or code loads: Lua then raises "not enough
** memory" in that task (or the load), after an emergency collection. */
void *braid__alloc (void *ud, void *ptr, size_t osize, size_t nsize) {
  braid_engine_t *E = (braid_engine_t *) ud;
  size_t old = ptr ? osize : 0;
  void *p;
  if (nsize == 0) {
    state_alloc(E, ptr, osize, 0);
    E->mem_used -= old;
    return NULL;
  }
  if (E->gc_probe == 1) {   /* emergency_collect: Lua collects, retries */
    E->gc_probe = 2;
    return NULL;
  }
  if (E->mem_limit && nsize > old && (E->current || E->refusable ||
                                      E->bound) && !E->gc_probe &&
      E->mem_used - old + nsize > E->mem_limit &&
      (xacct_fold(E), E->mem_used - old + nsize > E->mem_limit))
    return NULL;
  p = state_alloc(E, ptr, osize, nsize);
  if (p == NULL && E->gc_probe) {   /* its retry must not raise: no frame */
    if (reserve_give(E)) p = state_alloc(E, ptr, osize, nsize);
    if (p == NULL) braid__engine_fatal(E, "not enough memory");
  }
  if (p == NULL) p = braid__reserve_spend(E, ptr, osize, nsize);
  if (p) E->mem_used = E->mem_used - old + nsize;
  return p;
}

size_t braid_memory_used (braid_engine_t *E) {
  xacct_fold(E);
  return E->mem_used;
}

/* ---- messages between threads (prim.h) ----
** A message (io/xcopy.c) is made on its sender's thread and freed on
** whichever thread takes it, perhaps after the sender's engine is gone.
** E->mem_used is E's thread's alone, so the taker does not touch it: it
** adds the bytes to the account's `back`, which E's thread subtracts
** from mem_used (xacct_fold) before it judges the limit and when asked
** for its memory. The account is shared: E holds one reference, each
** charged message one more; the last one frees it. */
struct braid_xacct {
  _Atomic size_t back;         /* bytes given back, not yet folded */
  _Atomic unsigned refs;
};

static void xacct_fold (braid_engine_t *E) {
  size_t n;
  if (E->xacct == NULL || atomic_load(&E->xacct->back) == 0) return;
  n = atomic_exchange(&E->xacct->back, 0);
  E->mem_used = n < E->mem_used ? E->mem_used - n : 0;
}

static void xacct_unref (struct braid_xacct *a) {
  if (atomic_fetch_sub(&a->refs, 1) == 1) free(a);
}

int braid__xcharge (braid_engine_t *E, size_t n, struct braid_xacct **acct) {
  *acct = NULL;
  if (E->xacct == NULL) {
    struct braid_xacct *a = (struct braid_xacct *) braid__malloc(sizeof *a);
    if (a == NULL) return UV_ENOMEM;
    atomic_init(&a->back, 0);
    atomic_init(&a->refs, 1);
    E->xacct = a;
  }
  if (n > PTRDIFF_MAX || braid__mem_charge(E, (ptrdiff_t) n) != 0)
    return UV_ENOMEM;
  atomic_fetch_add(&E->xacct->refs, 1);
  *acct = E->xacct;
  return 0;
}

void braid__xcharge_back (struct braid_xacct *a, size_t n) {
  if (a == NULL) return;
  atomic_fetch_add(&a->back, n);
  xacct_unref(a);
}

void braid__xacct_drop (braid_engine_t *E) {
  if (E->xacct) xacct_unref(E->xacct);
  E->xacct = NULL;
}

