/*
** sleep.c: braid.sleep, a suspending C function like an embedder's: its
** op keeps an engine timer in the op's inline data, so a sleep allocates
** nothing, and tells the engine it waits on a timer only, so that the
** virtual clock may jump over it. braid.sleep_until is the same sleep to
** an instant of braid.now()'s clock.
*/
#include <math.h>
#include "core/prim.h"

struct sleep_op {   /* fits BRAID_OP_INLINE: a sleep allocates nothing */
  braid_timer_t tm;
  braid_op_t *op;
};

struct sleep_args {
  braid_engine_t *E;
  uint64_t ns;
};

static void sleep_done (braid_timer_t *tm) {
  braid_resume(container_of(tm, struct sleep_op, tm)->op, 0);
}

static int sleep_start (braid_op_t *op, void *ud) {
  struct sleep_args *a = (struct sleep_args *) ud;
  struct sleep_op *so = (struct sleep_op *) braid_op_data(op);
  so->op = op;
  braid_op_timer(op);   /* the virtual clock may jump over it */
  braid_op_label(op, "sleep %g", (double) a->ns / 1e9);
  braid_timer_start(a->E, &so->tm, a->ns, sleep_done);
  return 0;
}

static void sleep_cancel (braid_op_t *op) {
  struct sleep_op *so = (struct sleep_op *) braid_op_data(op);
  braid_timer_stop(braid_op_engine(op), &so->tm);
}

/* braid.sleep(seconds): suspends the task; raises on cancellation. The
** checks name the function; "sleep" names the wait (braid.dump). */
static int l_sleep (lua_State *L) {
  struct sleep_args a;
  a.E = braid_check_task(L, "braid.sleep");   /* those errors first */
  a.ns = braid_check_seconds(L, 1, "braid.sleep");
  braid_check_suspend(L, "braid.sleep");
  if (braid__timer_reserve(a.E) != 0)   /* so that sleep_start cannot fail */
    return braid_error(L, "memory", NULL, "braid.sleep: not enough memory");
  return braid_suspend(L, "sleep", sizeof(struct sleep_op), sleep_start,
                       sleep_cancel, &a);
}

/* braid.sleep_until(t): sleeps until braid.now() reaches t (at once when
** it has), so that a loop can wake at planned instants without drift. */
static int l_sleep_until (lua_State *L) {
  struct sleep_args a;
  lua_Number t, left;
  a.E = braid_check_task(L, "braid.sleep_until");
  if (!lua_isnumber(L, 1))
    braid_argerror(L, 1, "braid.sleep_until", "number expected (a time "
                   "from braid.now())");
  t = lua_tonumber(L, 1);
  if (t != t) braid_argerror(L, 1, "braid.sleep_until", "time must not be "
                             "NaN");
  /* Rounded up, so that braid.now() has reached t when the call returns. */
  left = t * 1e9 - (lua_Number) braid_now(a.E);
  a.ns = !(left > 0) ? 0 : left >= 1.8e19 ? BRAID_NEVER
                     : braid__ns(ceil(left) / 1e9);
  if (a.ns < BRAID_NEVER && (lua_Number) a.ns < left) a.ns++;
  braid_check_suspend(L, "braid.sleep_until");
  if (braid__timer_reserve(a.E) != 0)
    return braid_error(L, "memory", NULL,
                       "braid.sleep_until: not enough memory");
  return braid_suspend(L, "sleep", sizeof(struct sleep_op), sleep_start,
                       sleep_cancel, &a);
}

void braid__open_sleep (lua_State *L) {
  lua_pushcfunction(L, l_sleep);
  lua_setfield(L, -2, "sleep");
  lua_pushcfunction(L, l_sleep_until);
  lua_setfield(L, -2, "sleep_until");
}
