/*
** sleep.c: braid.sleep, a suspending C function like an embedder's: its
** op keeps an engine timer in the op's inline data, so a sleep allocates
** nothing, and tells the engine it waits on a timer only, so that the
** virtual clock may jump over it.
*/
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

void braid__open_sleep (lua_State *L) {
  lua_pushcfunction(L, l_sleep);
  lua_setfield(L, -2, "sleep");
}
