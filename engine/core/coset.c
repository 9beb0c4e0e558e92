/*
** coset.c: the set of task coroutines (struct braid_task's t->co, from the
** task's start to its end), so that braid's coroutine library can refuse
** to resume or close one (corolib.c) in O(1).
**
** Why a set in C: a weak Lua table of them cost a table insert per task
** (~9% of a sleeping task's instructions); asking a coroutine for its
** bottom frame (braid__task_main) cost O(d log d) lua_getstack steps for a
** stack d deep on every resume of it, in C where no budget or signal
** reaches, and a script can reach braid__task_main through the debug
** library; a coroutine's extra space is the application's.
**
** Invariants:
** - co is in E's set exactly while some task's t->co is co or it waits in
**   the coroutine pool (task.c): added when braid__task_start makes it,
**   removed when a task's end does not pool it (pool_put), when its task
**   is abandoned, and when the pool is dropped. A pooled coroutine is not
**   suspended, so corolib never refuses it; keeping it in the set spares
**   a removal and an insert per task that reuses one.
** - Open addressing with linear probing, at most half full; removal
**   shifts the entries after it back, so there are no tombstones.
** - The array comes from the state's allocator, as wait records do
**   (sched.c): counted in the memory limit, backed by the reserve, so that
**   starting a task in scheduler context fails as Lua's own allocations
**   there do. braid__coset_drop frees it where the spare records go, while
**   that allocator is still the state's (the end of braid.run, braid_close);
**   every task has ended by then.
*/
#include <stdint.h>
#include <string.h>
#include "core.h"

/* A coroutine's home slot: a multiplicative hash of its address. A hash
** that kept nearby addresses in nearby slots would let a sleeping task's
** insert and removal share cache lines (they cost ~8% of W2's cycles, as
** misses), but lua_States packed closely together (a run of freed 224-byte
** blocks reused for them) then made clusters hundreds of slots long, and
** every lookup of a script's own coroutine paid for them. */
static unsigned coset_at (const braid_engine_t *E, const lua_State *co) {
  uint64_t h = (uint64_t) ((uintptr_t) co >> 4) * UINT64_C(0x9E3779B97F4A7C15);
  return (unsigned) (h >> 32) & (E->coset_cap - 1);
}

static unsigned coset_find (const braid_engine_t *E, const lua_State *co) {
  unsigned i = coset_at(E, co);
  while (E->coset[i] != NULL && E->coset[i] != co)
    i = (i + 1) & (E->coset_cap - 1);
  return i;
}

int braid__coset_has (const braid_engine_t *E, const lua_State *co) {
  return E->coset_cap > 0 && E->coset[coset_find(E, co)] == co;
}

/* Moves the set to an array of cap slots; UV_ENOMEM leaves it as it was. */
static int coset_resize (braid_engine_t *E, lua_State *L, unsigned cap) {
  unsigned ocap = E->coset_cap, i;
  lua_State **old = E->coset;
  lua_State **nw = (lua_State **) braid__state_alloc(L, NULL, 0,
                                                     cap * sizeof *nw);
  if (nw == NULL) return UV_ENOMEM;
  memset(nw, 0, cap * sizeof *nw);
  E->coset = nw;
  E->coset_cap = cap;
  for (i = 0; i < ocap; i++)
    if (old[i] != NULL) E->coset[coset_find(E, old[i])] = old[i];
  if (old) braid__state_alloc(L, old, ocap * sizeof *old, 0);
  return 0;
}

int braid__coset_add (braid_engine_t *E, lua_State *L, lua_State *co) {
  if (2 * (E->coset_n + 1) > E->coset_cap &&
      coset_resize(E, L, E->coset_cap ? 2 * E->coset_cap : 64) != 0)
    return UV_ENOMEM;
  E->coset[coset_find(E, co)] = co;
  E->coset_n++;
  return 0;
}

/* The scheduler is idle (sched.c): a set a burst grew (2 MB after 100k
** tasks at once) goes back to four times what it holds. */
void braid__coset_trim (braid_engine_t *E) {
  unsigned cap = E->coset_cap;
  if (cap < 4096 || 8 * E->coset_n >= cap) return;
  while (cap > 64 && cap / 2 >= 4 * (E->coset_n + 1)) cap /= 2;
  coset_resize(E, E->S, cap);   /* refused: it stays as it was */
}

void braid__coset_drop (braid_engine_t *E, lua_State *L) {
  if (E->coset)
    braid__state_alloc(L, E->coset, E->coset_cap * sizeof *E->coset, 0);
  E->coset = NULL;
  E->coset_n = E->coset_cap = 0;
}

void braid__coset_remove (braid_engine_t *E, lua_State *co) {
  unsigned mask = E->coset_cap - 1, i, j;
  if (E->coset_cap == 0 || E->coset[i = coset_find(E, co)] != co) return;
  for (j = (i + 1) & mask; E->coset[j] != NULL; j = (j + 1) & mask) {
    unsigned k = coset_at(E, E->coset[j]);   /* its home slot */
    /* moves back unless its home lies cyclically in (i, j] */
    if (i <= j ? (k <= i || k > j) : (k <= i && k > j)) {
      E->coset[i] = E->coset[j];
      i = j;
    }
  }
  E->coset[i] = NULL;
  E->coset_n--;
}
