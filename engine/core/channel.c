/*
** channel.c: braid.channel, and the channel side of braid.select
** (select.c). Semaphores and events are sync.c's.
**
** Channels keep their waiters in FIFO lists of the tasks' own waits
** (t->w->chan.link), so waiting allocates nothing and a cancelled waiter
** unlinks itself in O(1) and leaves no trace. A select
** has a node in the queue of each of its channels (struct
** braid_chan_node, core.h).
**
** Where a channel's values are: buffered ones in a ring (user value 1);
** values given back (below) in a list before the ring (user value 2, made
** when first needed); a waiting sender's on its own stack, in its call's
** frame, where a receiver copies it from; one handed to a waiting
** receiver on the receiver's stack, pushed there by the sender as
** braid_resume does, where its continuation finds it.
**
** The hand-off rule that keeps values from being lost or duplicated: a
** waiter is woken with WAKE_OK only after its value has been handed over
** (or taken), and a woken waiter cannot be interrupted any more (the
** result wins), so its continuation completes the exchange. A waiter
** cancelled before that is unlinked and has exchanged nothing. A receiver
** that is abandoned after the hand-off but before its continuation ran
** (its grace period passed while it sat in the ready queue; braid_close)
** gives the value back (chan_release, through braid__op_release): to the
** first waiting receiver, else to the front of the channel, ahead of the
** values that left after it (each value handed to a waiting receiver
** carries a ticket, its place in the order), so that the next receiver
** gets it in order. A given-back value may exceed the capacity: it counts
** in ch:len() and holds senders back until it is taken.
*/
#include <string.h>
#include "core.h"

/* ---- channels ---- */

#define NODE_OF(l) container_of(l, struct braid_chan_node, link)

/* Stands for nil in the list of given-back values, so that every key of
** the list is present and moving entries never allocates. */
static const char chan_nil = 'n';

const struct braid_type braid__chan_type = {BRAID_CHAN_MT};

static struct braid_chan *chan_check (lua_State *L, const char *fname) {
  return (struct braid_chan *) braid__check_tagged(L, 1, &braid__chan_type,
                                                   fname);
}

/* The first waiting operation of a queue, left in it; or NULL. */
static struct braid_chan_node *node_first (struct braid_list *q) {
  return braid__list_empty(q) ? NULL : NODE_OF(q->next);
}

static struct braid_chan_node *node_pop (struct braid_list *q) {
  struct braid_chan_node *n = node_first(q);
  if (n) braid__list_remove(&n->link);
  return n;
}

/* n has left its queue and its exchange is done (got), or its channel was
** closed (!got): it wakes, and a select's other cases leave their queues. */
static void node_commit (struct braid_chan_node *n, int got) {
  n->got = (unsigned char) got;
  if (n->sel) braid__select_commit(n);
  braid__task_wake(n->task, WAKE_OK);
}

/* Pushes a waiting sender's value, copied from its suspended frame (which
** has room: its call reserved it). [-0, +1, -] */
static void node_push_value (lua_State *L, struct braid_chan_node *s) {
  lua_pushvalue(s->L, s->val_idx);
  lua_xmove(s->L, L, 1);
}

void braid__chan_enqueue (struct braid_chan *c, struct braid_chan_node *n) {
  braid__list_push(n->recv ? &c->receivers : &c->senders, &n->link);
}

/* Appends the value on top to the ring, which has room. Allocation (a
** first use of a slot) may raise before anything changed. [-1, +0, m] */
static void ring_push (lua_State *L, struct braid_chan *c, int chan_idx) {
  lua_getiuservalue(L, chan_idx, 1);
  lua_insert(L, -2);
  lua_rawseti(L, -2, (c->head + c->count) % c->cap + 1);
  lua_pop(L, 1);
  c->count++;
}

/* Pushes the first given-back value and removes it. Every key of the list
** is present, so nothing here allocates. [-0, +1, -] */
static void back_pop (lua_State *L, struct braid_chan *c, int chan_idx) {
  lua_Integer i;
  lua_getiuservalue(L, chan_idx, 2);
  lua_rawgeti(L, -1, 2);
  if (lua_touserdata(L, -1) == (void *) &chan_nil) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  lua_insert(L, -2);
  for (i = 1; i < c->nback; i++) {
    lua_rawgeti(L, -1, 2 * i + 1);
    lua_rawseti(L, -2, 2 * i - 1);
    lua_rawgeti(L, -1, 2 * i + 2);
    lua_rawseti(L, -2, 2 * i);
  }
  lua_pushnil(L);
  lua_rawseti(L, -2, 2 * c->nback - 1);
  lua_pushnil(L);
  lua_rawseti(L, -2, 2 * c->nback);
  lua_pop(L, 1);
  c->nback--;
}

/* Puts the value on top at its place among the given-back values, by its
** ticket: before every value that left the channel after it. The two new
** keys are made first, so that running out of memory changes nothing.
** [-1, +0, m] */
static void back_insert (lua_State *L, struct braid_chan *c, int chan_idx,
                         lua_Integer ticket) {
  lua_Integer i;
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushlightuserdata(L, (void *) &chan_nil);
  }
  if (lua_getiuservalue(L, chan_idx, 2) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_createtable(L, 2, 0);
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, chan_idx, 2);
  }
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 2 * c->nback + 1);
  lua_pushboolean(L, 0);
  lua_rawseti(L, -2, 2 * c->nback + 2);
  for (i = c->nback; i > 0; i--) {
    lua_rawgeti(L, -1, 2 * i - 1);
    if (lua_tointeger(L, -1) < ticket) {
      lua_pop(L, 1);
      break;
    }
    lua_rawseti(L, -2, 2 * i + 1);
    lua_rawgeti(L, -1, 2 * i);
    lua_rawseti(L, -2, 2 * i + 2);
  }
  lua_pushinteger(L, ticket);
  lua_rawseti(L, -2, 2 * i + 1);
  lua_insert(L, -2);
  lua_rawseti(L, -2, 2 * i + 2);
  lua_pop(L, 1);
  c->nback++;
}

int braid__chan_take (lua_State *L, struct braid_chan *c, int chan_idx) {
  struct braid_chan_node *s = node_first(&c->senders);
  if (c->nback > 0) {
    /* A sender waits only while the channel is full: once this value
    ** leaves, the first one's value fits in the ring. */
    if (s && c->count + c->nback <= c->cap) {
      node_push_value(L, s);
      ring_push(L, c, chan_idx);    /* may raise: nothing taken yet */
      braid__list_remove(&s->link);
      node_commit(s, 1);
    }
    back_pop(L, c, chan_idx);
    return 1;
  }
  if (c->count > 0) {
    /* With a sender waiting the ring is full: its value goes into the
    ** slot the head leaves, which exists, so the exchange is one step. */
    lua_Integer slot = c->head + 1;
    if (c->count < c->cap) s = NULL;   /* (never, with a sender waiting) */
    lua_getiuservalue(L, chan_idx, 1);
    lua_rawgeti(L, -1, slot);
    if (s) node_push_value(L, s);
    else lua_pushnil(L);
    lua_rawseti(L, -3, slot);
    lua_remove(L, -2);
    c->head = (c->head + 1) % c->cap;
    if (s) {
      braid__list_remove(&s->link);
      node_commit(s, 1);
    } else {
      c->count--;
    }
    return 1;
  }
  if (s) {
    node_push_value(L, s);
    braid__list_remove(&s->link);
    node_commit(s, 1);
    return 1;
  }
  return 0;
}

int braid__chan_put (lua_State *L, struct braid_chan *c, int chan_idx,
                     int val_idx) {
  struct braid_chan_node *r = node_pop(&c->receivers);
  if (r) {   /* waiting receivers: nothing is buffered or given back */
    lua_pushvalue(L, val_idx);
    lua_xmove(L, r->L, 1);
    r->ticket = ++c->out;
    node_commit(r, 1);
    return 1;
  }
  if (c->count + c->nback < c->cap) {
    lua_pushvalue(L, val_idx);
    ring_push(L, c, chan_idx);
    return 1;
  }
  return 0;
}

/* Gives the value on top of L back to the channel at chan_idx: to the
** first waiting receiver, else to the front of the channel in ticket
** order. [-1, +0, m] */
static void chan_give_back (lua_State *L, int chan_idx, lua_Integer ticket) {
  struct braid_chan *c = (struct braid_chan *) lua_touserdata(L, chan_idx);
  struct braid_chan_node *r = node_pop(&c->receivers);
  if (r) {
    lua_xmove(L, r->L, 1);
    r->ticket = ticket;
    node_commit(r, 1);
    return;
  }
  back_insert(L, c, chan_idx, ticket);
}

void braid__chan_release_node (struct braid_chan_node *n) {
  lua_State *S = n->task->E->S;
  if (!n->recv || !n->got || !lua_checkstack(S, 8)) return;
  n->got = 0;
  lua_pushvalue(n->L, n->chan_idx);
  lua_xmove(n->L, S, 2);            /* the value, then its channel */
  lua_insert(S, -2);
  chan_give_back(S, lua_gettop(S) - 1, n->ticket);
  lua_pop(S, 1);
}

/* A plain recv's release hook: the task was woken with a value it will
** never take. */
static void chan_release (struct braid_wait *w) {
  if (WAIT_TASK(w)->wake == WAKE_OK) braid__chan_release_node(&w->chan);
}

static void chan_cancel (struct braid_wait *w) {
  braid__list_remove(&w->chan.link);
}

/* Suspends the running task in a plain send or recv on the channel at 1
** (a sender's value at 2). */
static int chan_wait (lua_State *L, struct braid_task *t,
                      struct braid_chan *c, int recv, const char *what,
                      lua_KFunction k) {
  struct braid_chan_node *n = &t->w->chan;
  braid__task_wait(t, t->w, chan_cancel, what);
  n->task = t;
  n->L = L;
  n->sel = NULL;
  n->chan_idx = 1;
  n->val_idx = 2;
  n->recv = (unsigned char) recv;
  n->got = 0;
  if (recv) t->w->release = chan_release;
  braid__chan_enqueue(c, n);
  return braid__task_yield(L, t, (lua_KContext) t, k);
}

static int chan_send_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = (struct braid_task *) ctx;
  (void) status;
  if (t->wake == WAKE_OK) {
    t->wake = WAKE_NONE;
    if (t->w->chan.got) return 0;   /* a receiver took the value */
    return braid_error(L, "closed", NULL, "channel:send: the channel "
                              "was closed while the value waited");
  }
  braid__task_resumed(L, t);
  return 0;
}

/* ch:send(v): hands v to a waiting receiver, or buffers it, or waits while
** the channel is full. Raises kind "closed" on a closed channel. */
static int l_chan_send (lua_State *L) {
  struct braid_chan *c = chan_check(L, "channel:send");
  struct braid_task *t = braid__task_current(L, "channel:send");
  if (lua_gettop(L) != 2) lua_settop(L, 2);   /* the value at 2, nil if none */
  braid__task_checkcancel(L, t);
  if (c->closed)
    return braid_error(L, "closed", NULL, "channel:send: the channel "
                              "is closed");
  if (braid__chan_put(L, c, 1, 2)) return 0;
  braid__task_checkyield(L, t, "channel:send");
  return chan_wait(L, t, c, 0, "channel send", chan_send_k);
}

static int chan_recv_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = (struct braid_task *) ctx;
  (void) status;
  t->w->release = NULL;
  if (t->wake == WAKE_OK) {
    t->wake = WAKE_NONE;
    if (!t->w->chan.got) {       /* woken by close */
      lua_pushnil(L);
      lua_pushboolean(L, 0);
      return 2;
    }
    lua_pushboolean(L, 1);      /* the sender pushed the value */
    return 2;
  }
  braid__task_resumed(L, t);
  return 0;
}

/* ch:recv() -> v, true | nil, false once the channel is closed and drained;
** also the iterator ch:iter() returns, which fname names. */
static int chan_recv (lua_State *L, const char *fname) {
  struct braid_chan *c = chan_check(L, fname);
  struct braid_task *t = braid__task_current(L, fname);
  braid__task_checkcancel(L, t);   /* extra arguments stay below the results */
  if (braid__chan_take(L, c, 1)) {
    lua_pushboolean(L, 1);
    return 2;
  }
  if (c->closed) {
    lua_pushnil(L);
    lua_pushboolean(L, 0);
    return 2;
  }
  braid__task_checkyield(L, t, fname);
  return chan_wait(L, t, c, 1, "channel recv", chan_recv_k);
}

static int l_chan_recv (lua_State *L) {
  return chan_recv(L, "channel:recv");
}

static int l_chan_iter_next (lua_State *L) {
  return chan_recv(L, "channel:iter");
}

/* ch:close(): receivers drain what is buffered, then get nil, false;
** waiting and later senders get a "closed" error. */
static int l_chan_close (lua_State *L) {
  struct braid_chan *c = chan_check(L, "channel:close");
  struct braid_chan_node *n;
  c->closed = 1;
  while ((n = node_pop(&c->receivers)) != NULL) node_commit(n, 0);
  while ((n = node_pop(&c->senders)) != NULL) node_commit(n, 0);
  return 0;
}

/* for v in ch:iter() do ... end: receives until the channel is closed and
** drained. The iterator is recv, under iter's name, which returns v, true.
** (A nil value ends the loop too: use recv to carry nils.) */
static int l_chan_iter (lua_State *L) {
  chan_check(L, "channel:iter");
  lua_pushcfunction(L, l_chan_iter_next);
  lua_pushvalue(L, 1);
  return 2;
}

/* ch:len() -> the values waiting in the channel: buffered, and given
** back by receivers that were abandoned. */
static int l_chan_len (lua_State *L) {
  struct braid_chan *c = chan_check(L, "channel:len");
  lua_pushinteger(L, c->count + c->nback);
  return 1;
}

/* braid.channel([capacity = 0]) -> channel; 0 means rendezvous. */
static int l_chan_new (lua_State *L) {
  lua_Integer cap = lua_isnoneornil(L, 1) ? 0
                  : braid__check_integer(L, 1, "braid.channel");
  struct braid_chan *c;
  if (cap < 0)
    braid_argerror(L, 1, "braid.channel", "capacity must not be negative");
  c = lua_newuserdatauv(L, sizeof *c, 2);
  memset(c, 0, sizeof *c);
  c->type = &braid__chan_type;
  c->cap = cap;
  braid__list_init(&c->senders);
  braid__list_init(&c->receivers);
  lua_createtable(L, cap < 64 ? (int) cap : 64, 0);
  lua_setiuservalue(L, -2, 1);
  luaL_setmetatable(L, BRAID_CHAN_MT);
  return 1;
}

void braid__open_channel (lua_State *L) {
  static const luaL_Reg chan_methods[] = {
    {"send", l_chan_send},
    {"recv", l_chan_recv},
    {"close", l_chan_close},
    {"iter", l_chan_iter},
    {"len", l_chan_len},
    {NULL, NULL}
  };
  /* The methods table goes in the module too, for the Lua side to extend. */
  braid__class(L, BRAID_CHAN_MT, NULL, chan_methods, NULL);
  lua_setfield(L, -2, "Channel");
  lua_pushcfunction(L, l_chan_new);
  lua_setfield(L, -2, "channel");
}
