/*
** suspend.c: C functions that suspend the calling task (braid.h): every
** primitive that waits for the outside world suspends through these, as an
** embedder's function does; there is no private back door.
**
** An op is its task's wait record (struct braid_wait, which has room for
** the op's fields and BRAID_OP_INLINE bytes of data), so suspending
** allocates nothing unless the data is larger; then it is a block of the
** state's allocator that the record owns (w->ext) until the task's next
** wait or its end. The results are moved onto the suspended thread's
** stack as soon as braid_resume is called, where the continuation finds
** them; abandoning the task (lua_resetthread) drops them with the stack,
** so an op holds no reference anywhere. Exactly one of k and on_cancel
** ends every started op that has a continuation.
*/
#include <string.h>
#include "core.h"

enum { OP_PENDING, OP_RESUMED, OP_FAILED, OP_NOMEM, OP_CANCELLED, OP_DONE };

/* The op is no longer pending: it stops holding the virtual clock. */
static void op_settle (struct braid_wait *w) {
  if (w->holds) WAIT_TASK(w)->E->io_ops--;
  w->holds = 0;
}

/* The op waits on one of braid's heap timers (braid.sleep), which the
** virtual clock jumps to; every other op waits for the outside world and
** holds the virtual clock still until it completes. */
void braid_op_timer (braid_op_t *op) {
  op_settle(OP_WAIT(op));
}

static void op_cancel (struct braid_wait *w) {
  if (w->state == OP_CANCELLED) return;   /* exactly once */
  op_settle(w);
  w->state = OP_CANCELLED;
  if (w->on_cancel) w->on_cancel(WAIT_OP(w));
}

/* The task ends without running again (abandoned, or the engine closes):
** an op that completed but whose continuation did not run is released by
** its on_cancel; what a scheduler wait was handed (a channel's value, a
** permit) goes back through its release hook. */
void braid__op_release (struct braid_task *t) {
  struct braid_wait *w = t->w;
  if (w == NULL) return;   /* never started */
  if (w->release) {
    void (*release)(struct braid_wait *w) = w->release;
    w->release = NULL;
    release(w);
    return;
  }
  if (w->cancel == op_cancel && w->k &&
      (w->state == OP_RESUMED || w->state == OP_NOMEM))
    op_cancel(w);
}

static int op_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_wait *w = (struct braid_wait *) ctx;
  struct braid_task *t = WAIT_TASK(w);
  int state = w->state;
  (void) status;
  if (w->soft && t->wake == WAKE_CANCEL) {   /* only cut short */
    t->wake = WAKE_NONE;
    if (w->state == OP_PENDING) op_cancel(w);
    return 0;
  }
  if (state == OP_PENDING) {       /* resumed without completing */
    t->waiting = 0;
    op_cancel(w);
  } else if (w->k && (state == OP_NOMEM ||
                      (state == OP_RESUMED && t->wake == WAKE_NOYIELD))) {
    op_cancel(w);                  /* k will not run: on_cancel releases */
  }
  if (w->state == OP_RESUMED) w->state = OP_DONE;
  braid__task_resumed(L, t);       /* the cancellation or a no-yield */
  switch (state) {
    case OP_FAILED: return lua_error(L);
    case OP_NOMEM:   /* braid_suspend's own messages name the wait */
      return braid_error(L, "memory", NULL, "%s: not enough memory",
                         w->what);
    case OP_RESUMED:
      return w->k ? w->k(L, WAIT_OP(w)) : w->nres;
    default: return 0;
  }
}

/* Op data over BRAID_OP_INLINE bytes: a block with its size in a header,
** owned by the wait record while w->cancel is op_cancel and w->ext is set.
** It was a userdata on the suspending thread's stack, where a continuation
** that suspends again (a reader waiting for more data) left one more each
** time: 26 MB after 100k rounds of 200 bytes, then a stack overflow. */
#define EXT_HEAD 16   /* keeps the data aligned as a userdata's */

static void ext_free (lua_State *S, void *data) {
  if (data) {
    char *b = (char *) data - EXT_HEAD;
    braid__state_alloc(S, b, *(size_t *) b + EXT_HEAD, 0);
  }
}

/* The block of w's last op, taken from w (NULL if it has none). */
static void *ext_take (struct braid_wait *w) {
  void *data = w->cancel == op_cancel && w->ext ? w->inl.p : NULL;
  if (data) w->ext = 0;
  return data;
}

void braid__op_data_drop (struct braid_task *t, struct braid_wait *w) {
  ext_free(t->E->S, ext_take(w));
}

void *braid__op_data_take (struct braid_wait *w, size_t *size) {
  char *data = (char *) ext_take(w);
  if (data == NULL) return NULL;
  *size = *(size_t *) (data - EXT_HEAD) + EXT_HEAD;
  return data - EXT_HEAD;
}

/* Suspends t (checked: it can) on its op. The last op's block, if any, is
** freed once start has run: a continuation may hand start a ud that still
** points into it. */
static int op_suspend (lua_State *L, struct braid_task *t, const char *what,
                       size_t size, braid_start_fn start,
                       braid_cancel_fn on_cancel, void *ud, braid_k_fn k,
                       int soft) {
  struct braid_wait *w = t->w;
  void *old = ext_take(w), *data = NULL;
  int rc;
  if (size > BRAID_OP_INLINE) {
    char *b = size > (size_t) -1 - EXT_HEAD ? NULL :
              (char *) braid__state_alloc(L, NULL, 0, size + EXT_HEAD);
    if (b == NULL) {
      ext_free(t->E->S, old);
      return braid_error(L, "memory", NULL, "%s: not enough memory", what);
    }
    *(size_t *) b = size;
    data = b + EXT_HEAD;
  }
  braid__task_wait(t, w, op_cancel, what);
  w->ext = data != NULL;
  if (data) w->inl.p = data;
  memset(data ? data : w->inl.bytes, 0, size);
  w->L = L;
  w->k = k;
  w->on_cancel = on_cancel;
  w->state = OP_PENDING;
  w->nres = 0;
  w->holds = 1;
  w->soft = (unsigned char) soft;
  t->E->io_ops++;
  rc = start ? start(WAIT_OP(w), ud) : 0;
  ext_free(t->E->S, old);
  if (rc < 0 && w->state == OP_PENDING) {
    t->waiting = 0;
    op_settle(w);
    w->state = OP_CANCELLED;
    return braid__error_uv(L, rc, what);
  }
  return braid__task_yield(L, t, (lua_KContext) w, op_k);
}

int braid_suspendk (lua_State *L, const char *what, size_t size,
                    braid_start_fn start, braid_cancel_fn on_cancel,
                    void *ud, braid_k_fn k) {
  struct braid_task *t = braid__task_current(L, what);
  braid__task_checkyield(L, t, what);
  braid__task_checkcancel(L, t);
  return op_suspend(L, t, what, size, start, on_cancel, ud, k, 0);
}

int braid_suspend_soft (lua_State *L, const char *what, size_t size,
                        braid_start_fn start, braid_cancel_fn on_cancel,
                        void *ud) {
  braid_engine_t *E = braid_engine(L);
  struct braid_task *t = E ? E->current : NULL;
  if (t == NULL || t->abandoned || braid__task_inner(t)->cancelled ||
      !lua_isyieldable(L) || E->noyield)
    return 0;
  return op_suspend(L, t, what, size, start, on_cancel, ud, NULL, 1);
}

braid_engine_t *braid_check_task (lua_State *L, const char *fname) {
  struct braid_task *t = braid__task_current(L, fname);
  braid__task_checkcancel(L, t);
  return t->E;
}

braid_engine_t *braid_check_suspend (lua_State *L, const char *fname) {
  struct braid_task *t = braid__task_current(L, fname);
  braid__task_checkyield(L, t, fname);
  braid__task_checkcancel(L, t);
  return t->E;
}

braid_engine_t *braid_op_engine (braid_op_t *op) {
  return WAIT_TASK(OP_WAIT(op))->E;
}

int braid_suspend (lua_State *L, const char *what, size_t size,
                   braid_start_fn start, braid_cancel_fn on_cancel,
                   void *ud) {
  return braid_suspendk(L, what, size, start, on_cancel, ud, NULL);
}

void *braid_op_data (braid_op_t *op) {
  struct braid_wait *w = OP_WAIT(op);
  return w->ext ? w->inl.p : w->inl.bytes;
}

lua_State *braid_op_state (braid_op_t *op) {
  return WAIT_TASK(OP_WAIT(op))->E->S;
}

/* Moves the n values onto the suspended thread (checkstack on a suspended
** thread only grows it; when even that fails the call raises "not enough
** memory" instead) and marks the task ready. */
static int op_complete (braid_op_t *op, int state, int n) {
  struct braid_wait *w = OP_WAIT(op);
  lua_State *S = WAIT_TASK(w)->E->S;
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
  braid__task_wake(WAIT_TASK(w), WAKE_OK);
  return 0;
}

int braid_resume (braid_op_t *op, int nresults) {
  return op_complete(op, OP_RESUMED, nresults);
}

int braid_resume_error (braid_op_t *op) {
  return op_complete(op, OP_FAILED, 1);
}

