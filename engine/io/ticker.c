/*
** ticker.c: braid.ticker(period) -> ticker; ticker:wait() -> n, missed;
** `for n, missed in ticker do`; ticker:close().
**
** A ticker is a schedule, not a timer: tick n is due at start + n * period
** on the engine clock, computed from the start every time, so the ticks do
** not drift however late the waiter wakes. A waiter that comes late is
** handed the newest tick that is due and told how many it skipped (missed
** ticks are never queued up and delivered in a burst).
**
** Invariants:
** - The ticker holds no handle and no timer while nobody waits: the one
**   wait in progress is a braid_suspendk op whose data is the engine
**   timer (64 bytes, over the 56 a task's wait record holds inline, so a
**   block its wait record owns), so an idle ticker costs nothing and never
**   keeps the loop alive, and on the virtual clock time may jump over it.
** - One task waits at a time (`waiter` is its op, NULL otherwise).
** - The ticker is a resource of the scope that made it: when that scope
**   ends, or on close() or __close, it is closed; a task waiting on it is
**   woken and its wait returns nil, as the iterator's end. __gc detaches
**   the resource (it can only run when nobody waits: a waiter holds the
**   ticker on its stack).
*/
#include "core/prim.h"

#define TICKER_MT "braid.Ticker"

struct ticker {
  braid_resource_t res;   /* in the scope that made it, while open */
  braid_engine_t *E;
  uint64_t start, period; /* engine clock, ns */
  uint64_t last;          /* the tick handed out last (0: none yet) */
  braid_op_t *waiter;     /* the wait in progress, or NULL */
  int closed;
};

/* A wait: its op's data. */
struct ticker_wait {
  braid_timer_t tm;
  struct ticker *tk;      /* NULL once the ticker let go of the wait */
  braid_op_t *op;
};

static void ticker_close (struct ticker *tk) {
  if (tk->closed) return;
  tk->closed = 1;
  braid_resource_remove(&tk->res);
  if (tk->waiter) {   /* wake it now: its wait ends with nil */
    struct ticker_wait *w = (struct ticker_wait *) braid_op_data(tk->waiter);
    braid_timer_stop(tk->E, &w->tm);
    w->tk = NULL;
    tk->waiter = NULL;
    braid_resume(w->op, 0);
  }
}

static void ticker_res_close (braid_resource_t *r) {
  ticker_close(container_of(r, struct ticker, res));
}

/* The tick due at `now`: how many periods have passed since the start. */
static uint64_t ticker_due_tick (struct ticker *tk, uint64_t now) {
  return now < tk->start ? 0 : (now - tk->start) / tk->period;
}

/* When tick n is due (engine clock), saturating. */
static uint64_t ticker_due_at (struct ticker *tk, uint64_t n) {
  if (n > (UINT64_MAX - tk->start) / tk->period) return UINT64_MAX;
  return tk->start + n * tk->period;
}

/* Hands out the newest due tick (at least last + 1, which is due):
** pushes n and how many ticks before it were skipped. [-0, +2, -] */
static int ticker_push_tick (lua_State *L, struct ticker *tk, uint64_t now) {
  uint64_t next = tk->last + 1, n = ticker_due_tick(tk, now);
  if (n < next) n = next;
  tk->last = n;
  lua_pushinteger(L, (lua_Integer) n);
  lua_pushinteger(L, (lua_Integer) (n - next));
  return 2;
}

static void ticker_due_cb (braid_timer_t *tm) {
  struct ticker_wait *w = container_of(tm, struct ticker_wait, tm);
  if (w->tk) w->tk->waiter = NULL;
  braid_resume(w->op, 0);
}

struct ticker_args {
  struct ticker *tk;
  uint64_t ns;
};

static int ticker_start (braid_op_t *op, void *ud) {
  struct ticker_args *a = (struct ticker_args *) ud;
  struct ticker_wait *w = (struct ticker_wait *) braid_op_data(op);
  w->tk = a->tk;
  w->op = op;
  a->tk->waiter = op;
  braid_op_timer(op);   /* the virtual clock may jump over it */
  braid_timer_start(a->tk->E, &w->tm, a->ns, ticker_due_cb);
  return 0;
}

static void ticker_cancel (braid_op_t *op) {
  struct ticker_wait *w = (struct ticker_wait *) braid_op_data(op);
  if (w->tk == NULL) return;
  braid_timer_stop(w->tk->E, &w->tm);
  if (w->tk->waiter == op) w->tk->waiter = NULL;
}

/* The wait ended: the tick that came due, or nil when the ticker was
** closed meanwhile. The ticker is argument 1, still on the stack. */
static int ticker_k (lua_State *L, braid_op_t *op) {
  struct ticker *tk = (struct ticker *) lua_touserdata(L, 1);
  (void) op;
  if (tk->closed) {
    lua_pushnil(L);
    return 1;
  }
  return ticker_push_tick(L, tk, braid_now(tk->E));
}

/* ticker:wait() -> n, missed: waits for the next tick and returns its
** number (1 for the first period after the ticker was made) and how many
** ticks were skipped since the last wait because the waiter came late;
** nil once the ticker is closed. A tick already due returns at once. */
static int ticker_wait (lua_State *L, const char *fname) {
  struct ticker *tk = (struct ticker *) braid__check_object(L, 1, TICKER_MT,
                                                            fname);
  struct ticker_args a;
  uint64_t now, due;
  braid_check_task(L, fname);
  lua_settop(L, 1);
  if (tk->closed) {
    lua_pushnil(L);
    return 1;
  }
  if (tk->waiter)
    return braid_usageerror(L, "%s: another task waits on this ticker",
                            fname);
  now = braid_now(tk->E);
  due = ticker_due_at(tk, tk->last + 1);
  if (now >= due) return ticker_push_tick(L, tk, now);
  braid_check_suspend(L, fname);
  if (braid__timer_reserve(tk->E) != 0)
    return braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  a.tk = tk;
  a.ns = due - now;
  return braid_suspendk(L, "ticker", sizeof(struct ticker_wait),
                        ticker_start, ticker_cancel, &a, ticker_k);
}

/* Also __call: the generic for calls ticker(state, control), the same as
** wait() (ticker_wait drops the extra arguments). */
static int l_ticker_wait (lua_State *L) {
  return ticker_wait(L, "ticker:wait");
}

/* ticker:close(), __close: no more ticks; closing twice is harmless. */
static int l_ticker_close (lua_State *L) {
  ticker_close((struct ticker *) braid__check_object(L, 1, TICKER_MT,
                                                     "ticker:close"));
  return 0;
}

static int l_ticker_gc (lua_State *L) {
  struct ticker *tk = (struct ticker *) lua_touserdata(L, 1);
  braid_resource_remove(&tk->res);
  return 0;
}

static int l_ticker_tostring (lua_State *L) {
  struct ticker *tk = (struct ticker *) braid__check_object(L, 1, TICKER_MT,
                                                            "tostring");
  lua_pushfstring(L, "<ticker every %f s%s>", (double) tk->period / 1e9,
                  tk->closed ? " (closed)" : "");
  return 1;
}

/* braid.ticker(period) -> ticker, its first tick due `period` seconds from
** now; a resource of the caller's innermost scope. */
static int l_ticker_new (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "braid.ticker");
  uint64_t ns = braid_check_seconds(L, 1, "braid.ticker");
  struct ticker *tk;
  if (ns == 0)
    return braid_argerror(L, 1, "braid.ticker", "period must be a positive "
                          "number of seconds");
  if (ns >= BRAID_NEVER)   /* no tick would ever come */
    return braid_argerror(L, 1, "braid.ticker", "period too long (at most "
                          "about 290 years)");
  tk = (struct ticker *) lua_newuserdatauv(L, sizeof *tk, 0);
  tk->E = E;
  tk->start = braid_now(E);
  tk->period = ns;
  tk->last = 0;
  tk->waiter = NULL;
  tk->closed = 0;
  tk->res.close = ticker_res_close;
  tk->res.prev = tk->res.next = NULL;
  luaL_setmetatable(L, TICKER_MT);
  braid_resource_add(L, &tk->res);
  return 1;
}

/* Sets braid.ticker on the braid table at the stack top. [-0, +0, m] */
void braid__open_ticker (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"wait", l_ticker_wait},
    {"close", l_ticker_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__call", l_ticker_wait},
    {"__close", l_ticker_close},
    {"__gc", l_ticker_gc},
    {"__tostring", l_ticker_tostring},
    {NULL, NULL}
  };
  braid__class(L, TICKER_MT, metamethods, methods, NULL);
  lua_pop(L, 1);
  lua_pushcfunction(L, l_ticker_new);
  lua_setfield(L, -2, "ticker");
}
