/*
** select.c: braid.select, a choice over several channel operations of
** which exactly one commits (Go's select).
**
** A select first looks at its cases in order and commits the first that
** can go at once. Otherwise (and unless it was given `default`) it waits:
** it puts one node (struct braid_chan_node, core.h) in the queue of each
** case's channel, behind the waiters already there, and arms its timer
** when it has a timeout. Whoever completes one of the nodes (a sender, a
** receiver, close, a given-back value) commits it: braid__select_commit
** takes every other node out of its queue and stops the timer, all before
** anything else runs, so a select is woken by exactly one exchange and a
** woken select owns exactly one hand-off (or none: its timer fired). The
** timer, a cancellation and abandonment take every node out instead.
**
** The cases' channels and values are copied onto the select's own stack
** when it is called (a case table changed later changes nothing), and the
** nodes, in a userdata there, point at them: a waiting select's values
** are where a plain sender's or receiver's are (channel.c). The stack has
** room for a value pushed by a sender and for the results.
*/
#include <string.h>
#include "core.h"

#define SELECT_NAME "braid.select"

struct braid_select {
  struct braid_task *task;
  braid_engine_t *E;
  braid_timer_t timer;
  int n, committed;          /* the case that committed; 0: none (yet) */
  unsigned char timed;       /* the timer is armed */
  struct braid_chan_node node[1];
};

/* Stack slots of case i (1-based): its channel and its value. */
#define CASE_CHAN(i) (2 * (i))
#define CASE_VALUE(i) (2 * (i) + 1)

/* Takes every node of sel out of its queue (a node not in one, or taken
** out already, points at itself) and stops its timer. */
static void select_unlink (struct braid_select *sel) {
  int i;
  for (i = 0; i < sel->n; i++) braid__list_remove(&sel->node[i].link);
  if (sel->timed) {
    sel->timed = 0;
    braid_timer_stop(sel->E, &sel->timer);
  }
}

void braid__select_commit (struct braid_chan_node *n) {
  struct braid_select *sel = n->sel;
  select_unlink(sel);
  sel->committed = n->idx;
}

/* The timeout passed with no case committed: the select returns nil. */
static void select_timeout_cb (braid_timer_t *tm) {
  struct braid_select *sel = container_of(tm, struct braid_select, timer);
  sel->timed = 0;
  select_unlink(sel);
  braid__task_wake(sel->task, WAKE_OK);
}

static void select_cancel (struct braid_wait *w) {
  select_unlink(w->chan.sel);
}

/* The task was woken by a committed case and will never take it: a
** received value goes back to its channel. */
static void select_release (struct braid_wait *w) {
  struct braid_select *sel = w->chan.sel;
  if (WAIT_TASK(w)->wake == WAKE_OK && sel->committed > 0)
    braid__chan_release_node(&sel->node[sel->committed - 1]);
}

/* The results of case i, a receive: i, v, true with the value on top, or
** i, nil, false when the channel was closed and drained. */
static int select_received (lua_State *L, int i, int got) {
  if (!got) lua_pushnil(L);
  lua_pushinteger(L, i);
  lua_insert(L, -2);
  lua_pushboolean(L, got);
  return 3;
}

static int select_closed (lua_State *L, int i, const char *when) {
  return braid_error(L, "closed", NULL, SELECT_NAME ": case %d sends on "
                     "a channel that %s", i, when);
}

static int select_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = (struct braid_task *) ctx;
  struct braid_select *sel = t->w->chan.sel;
  struct braid_chan_node *n;
  (void) status;
  t->w->release = NULL;
  if (t->wake != WAKE_OK) {
    braid__task_resumed(L, t);   /* the cancellation, or a no-yield */
    return 0;
  }
  t->wake = WAKE_NONE;
  if (sel->committed == 0) {     /* the timeout */
    lua_pushnil(L);
    return 1;
  }
  n = &sel->node[sel->committed - 1];
  if (n->recv) return select_received(L, n->idx, n->got);
  if (!n->got)
    return select_closed(L, n->idx, "was closed while the value waited");
  lua_pushinteger(L, n->idx);
  return 1;
}

/* Checks the options among the cases' keys (every key is an index of the
** list or an option); returns the number of cases. */
static int select_options (lua_State *L, int *dflt, int *timed,
                           uint64_t *ns) {
  lua_Integer n;
  braid__check_type(L, 1, LUA_TTABLE, SELECT_NAME);
  n = (lua_Integer) lua_rawlen(L, 1);
  lua_pushnil(L);
  while (lua_next(L, 1)) {
    lua_pop(L, 1);
    if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1 &&
        lua_tointeger(L, -1) <= n)
      continue;
    if (lua_isinteger(L, -1))
      braid_usageerror(L, "bad argument #1 to '" SELECT_NAME "' (the "
                       "cases must be a list without holes)");
    if (lua_type(L, -1) != LUA_TSTRING ||
        (strcmp(lua_tostring(L, -1), "default") != 0 &&
         strcmp(lua_tostring(L, -1), "timeout") != 0))
      braid_usageerror(L, "bad argument #1 to '" SELECT_NAME "' (unknown "
                       "option '%s')", braid__describe(L, -1));
  }
  lua_pushliteral(L, "default");   /* raw, as the cases are read */
  lua_rawget(L, 1);
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1))
    braid_usageerror(L, "bad option 'default' to '" SELECT_NAME "' "
                     "(boolean expected, got %s)", luaL_typename(L, -1));
  *dflt = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_pushliteral(L, "timeout");
  lua_rawget(L, 1);
  *timed = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (*timed && *dflt)
    braid_usageerror(L, "bad option 'timeout' to '" SELECT_NAME "' "
                     "(a select with default never waits)");
  /* the one reading of durations: NaN refused, negative 0, huge never */
  if (*timed) *ns = braid__opt_seconds(L, 1, "timeout", BRAID_NEVER,
                                       SELECT_NAME);
  if (n > (LUAI_MAXSTACK - 16) / 2)
    braid_argerror(L, 1, SELECT_NAME, "too many cases");
  return (int) n;
}

/* Stands in a receive's value slot: a receive has no value. */
static const char select_recv = 'r';

#define IS_RECV(L, i) \
  (lua_touserdata(L, CASE_VALUE(i)) == (void *) &select_recv)

/* Copies case i (the table at the top, popped) to its two slots: its
** channel, and its value or the receive marker. */
static void select_case (lua_State *L, int i) {
  const char *op;
  if (!lua_istable(L, -1))
    braid_usageerror(L, "bad argument #1 to '" SELECT_NAME "' (case %d: "
                     "table expected, got %s)", i, luaL_typename(L, -1));
  lua_rawgeti(L, -1, 1);
  if (!braid__test_tagged(L, -1, &braid__chan_type))
    braid_usageerror(L, "bad argument #1 to '" SELECT_NAME "' (case %d: "
                     "braid.Channel expected, got %s)", i,
                     braid__type_name(L, -1));
  lua_replace(L, CASE_CHAN(i));
  lua_rawgeti(L, -1, 2);
  op = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  if (op && strcmp(op, "recv") == 0)
    lua_pushlightuserdata(L, (void *) &select_recv);
  else if (op && strcmp(op, "send") == 0)
    lua_rawgeti(L, -2, 3);
  else
    braid_usageerror(L, "bad argument #1 to '" SELECT_NAME "' (case %d: "
                     "\"recv\" or \"send\" expected, got %s)", i,
                     braid__tostring(L, -1));
  lua_replace(L, CASE_VALUE(i));
  lua_pop(L, 2);
}

/* Commits the first case that can go at once and returns its results;
** -1 when none can. */
static int select_now (lua_State *L, int n) {
  int i;
  for (i = 1; i <= n; i++) {
    struct braid_chan *c =
      (struct braid_chan *) lua_touserdata(L, CASE_CHAN(i));
    if (IS_RECV(L, i)) {
      if (braid__chan_take(L, c, CASE_CHAN(i))) return select_received(L, i, 1);
      if (c->closed) return select_received(L, i, 0);
    } else {
      if (c->closed) return select_closed(L, i, "is closed");
      if (braid__chan_put(L, c, CASE_CHAN(i), CASE_VALUE(i))) {
        lua_pushinteger(L, i);
        return 1;
      }
    }
  }
  return -1;
}

/* braid.select{{ch, "recv"}, {ch, "send", v}, ..., default = b,
** timeout = s} -> i, ...: commits exactly one case, the first (in the
** list's order) that can go at once, or else the first to become ready;
** i is its index, followed by v, true or nil, false for a receive.
** Returns nil when nothing committed: at once with default, or when the
** timeout passed. Raises kind "closed" when the case that goes sends on
** a closed channel. */
static int l_select (lua_State *L) {
  struct braid_task *t = braid__task_current(L, SELECT_NAME);
  struct braid_select *sel;
  int n, i, r, dflt, timed;
  uint64_t ns = 0;
  size_t size;
  n = select_options(L, &dflt, &timed, &ns);
  lua_settop(L, 1);
  /* The cases' slots, the nodes, a value pushed by a sender, results. */
  if (!lua_checkstack(L, 2 * n + 8))
    return braid_error(L, "memory", NULL, SELECT_NAME ": not enough "
                       "memory");
  lua_settop(L, 2 * n + 1);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    select_case(L, i);
  }
  braid__task_checkcancel(L, t);
  if ((r = select_now(L, n)) >= 0) return r;
  if (dflt) {
    lua_pushnil(L);
    return 1;
  }
  braid__task_checkyield(L, t, SELECT_NAME);
  if (timed && ns >= BRAID_NEVER) timed = 0;
  if (timed && braid__timer_reserve(t->E) != 0)
    return braid_error(L, "memory", NULL, SELECT_NAME ": not enough "
                       "memory");
  size = sizeof *sel + (n > 1 ? (size_t) (n - 1) * sizeof sel->node[0] : 0);
  sel = (struct braid_select *) lua_newuserdatauv(L, size, 0);
  /* A finalizer that allocation ran may have readied a case (sent on a
  ** channel) or cancelled the task: look again before waiting. */
  braid__task_checkcancel(L, t);
  if ((r = select_now(L, n)) >= 0) return r;
  memset(sel, 0, size);
  sel->task = t;
  sel->E = t->E;
  sel->n = n;
  /* Nothing below raises: the nodes go into their queues together. */
  braid__task_wait(t, t->w, select_cancel, "select");
  t->w->chan.sel = sel;
  t->w->release = select_release;
  for (i = 1; i <= n; i++) {
    struct braid_chan_node *nd = &sel->node[i - 1];
    nd->task = t;
    nd->L = L;
    nd->sel = sel;
    nd->chan_idx = CASE_CHAN(i);
    nd->val_idx = CASE_VALUE(i);
    nd->idx = i;
    nd->recv = (unsigned char) IS_RECV(L, i);
    braid__chan_enqueue((struct braid_chan *) lua_touserdata(L, CASE_CHAN(i)),
                        nd);
  }
  if (timed) {
    sel->timed = 1;
    braid_timer_start(t->E, &sel->timer, ns, select_timeout_cb);
  }
  return braid__task_yield(L, t, (lua_KContext) t, select_k);
}

void braid__open_select (lua_State *L) {
  lua_pushcfunction(L, l_select);
  lua_setfield(L, -2, "select");
}
