/*
** channel.c: braid.channel, braid.semaphore and braid.event.
**
** All three keep their waiters in FIFO lists of the tasks' own waits
** (t->w.watch.link), so waiting allocates nothing and a cancelled waiter
** unlinks itself in O(1) and leaves no trace. Values never live on another
** task's stack: a channel keeps buffered values in a ring (user value 1) and
** the values of waiting senders, and the values handed to waiting
** receivers, in a table keyed by the waiter's slot (user value 2).
**
** The hand-off rule that keeps values from being lost or duplicated: a
** waiter is woken with WAKE_OK only after its value has been handed over
** (or taken), and a woken waiter cannot be interrupted any more (the result
** wins), so its continuation always completes the exchange. A waiter
** cancelled before that is simply unlinked; its continuation clears its
** slot before raising.
*/
#include <string.h>
#include "core.h"

#define CHAN_MT "braid.Channel"
#define SEM_MT "braid.Semaphore"
#define EVENT_MT "braid.Event"

struct braid_chan {
  lua_Integer cap, head, count;   /* ring: slots head+1 .. head+count */
  int closed, next_slot;
  struct braid_list senders, receivers;
};

struct braid_sem {
  lua_Integer permits;
  struct braid_list waiters;
};

struct braid_event {
  int set;
  struct braid_list waiters;
};

#define WAIT_OF(n) container_of(container_of(n, struct braid_watch, link), \
                                struct braid_wait, watch)

static void waiter_unlink (struct braid_wait *w) {
  braid__list_remove(&w->watch.link);
}

/* Takes the first waiter off a queue, or NULL. */
static struct braid_wait *queue_pop (struct braid_list *q) {
  struct braid_wait *w;
  if (braid__list_empty(q)) return NULL;
  w = WAIT_OF(q->next);
  braid__list_remove(&w->watch.link);
  return w;
}

/* Suspends the task on queue q; k resumes it. */
static int queue_wait (lua_State *L, struct braid_task *t,
                       struct braid_list *q, const char *what,
                       lua_KFunction k) {
  braid__task_wait(t, &t->w, waiter_unlink, what);
  t->w.got = 0;
  braid__list_push(q, &t->w.watch.link);
  return braid__task_yield(L, t, (lua_KContext) t, k);
}

/* ---- channels ---- */

static struct braid_chan *chan_check (lua_State *L, const char *fname) {
  return (struct braid_chan *) braid__check_object(L, 1, CHAN_MT, fname);
}

/* Moves the value at the top into slot `slot` of the hand-off table. */
static void chan_park (lua_State *L, int slot) {
  lua_getiuservalue(L, 1, 2);
  lua_insert(L, -2);
  lua_rawseti(L, -2, slot);
  lua_pop(L, 1);
}

/* Pushes (and clears) the value parked in `slot`. */
static void chan_unpark (lua_State *L, int slot) {
  lua_getiuservalue(L, 1, 2);
  lua_rawgeti(L, -1, slot);
  lua_pushnil(L);
  lua_rawseti(L, -3, slot);
  lua_remove(L, -2);
}

static int chan_new_slot (struct braid_chan *c) {
  if (++c->next_slot <= 0) c->next_slot = 1;
  return c->next_slot;
}

static int chan_send_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = (struct braid_task *) ctx;
  (void) status;
  if (t->wake == WAKE_OK && t->w.got) {   /* a receiver took the value */
    t->wake = WAKE_NONE;
    return 0;
  }
  chan_unpark(L, t->w.slot);   /* not delivered: take it back */
  lua_pop(L, 1);
  if (t->wake == WAKE_OK) {
    t->wake = WAKE_NONE;
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
  struct braid_wait *r;
  lua_settop(L, 2);
  braid__task_checkcancel(L, t);
  if (c->closed)
    return braid_error(L, "closed", NULL, "channel:send: the channel "
                              "is closed");
  if ((r = queue_pop(&c->receivers)) != NULL) {
    r->got = 1;
    chan_park(L, r->slot);
    braid__task_wake(r->task, WAKE_OK);
    return 0;
  }
  if (c->count < c->cap) {
    lua_getiuservalue(L, 1, 1);
    lua_insert(L, 2);
    lua_rawseti(L, 2, (c->head + c->count++) % c->cap + 1);
    return 0;
  }
  braid__task_checkyield(L, t, "channel:send");
  t->w.slot = chan_new_slot(c);
  chan_park(L, t->w.slot);
  return queue_wait(L, t, &c->senders, "channel send", chan_send_k);
}

/* Takes one value for a receiver: from the buffer (refilled from the first
** waiting sender) or straight from a waiting sender. Pushes it; 0 if none. */
static int chan_take (lua_State *L, struct braid_chan *c) {
  struct braid_wait *s;
  if (c->count > 0) {
    lua_getiuservalue(L, 1, 1);
    lua_rawgeti(L, -1, c->head + 1);
    lua_pushnil(L);
    lua_rawseti(L, -3, c->head + 1);
    c->head = (c->head + 1) % c->cap;
    c->count--;
    if ((s = queue_pop(&c->senders)) != NULL) {
      chan_unpark(L, s->slot);
      lua_rawseti(L, -3, (c->head + c->count++) % c->cap + 1);
      s->got = 1;
      braid__task_wake(s->task, WAKE_OK);
    }
    lua_remove(L, -2);
    return 1;
  }
  if ((s = queue_pop(&c->senders)) != NULL) {
    chan_unpark(L, s->slot);
    s->got = 1;
    braid__task_wake(s->task, WAKE_OK);
    return 1;
  }
  return 0;
}

static int chan_recv_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = (struct braid_task *) ctx;
  (void) status;
  if (t->wake == WAKE_OK) {
    t->wake = WAKE_NONE;
    if (!t->w.got) {       /* woken by close */
      lua_pushnil(L);
      lua_pushboolean(L, 0);
      return 2;
    }
    chan_unpark(L, t->w.slot);
    lua_pushboolean(L, 1);
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
  lua_settop(L, 1);
  braid__task_checkcancel(L, t);
  if (chan_take(L, c)) {
    lua_pushboolean(L, 1);
    return 2;
  }
  if (c->closed) {
    lua_pushnil(L);
    lua_pushboolean(L, 0);
    return 2;
  }
  braid__task_checkyield(L, t, fname);
  t->w.slot = chan_new_slot(c);
  return queue_wait(L, t, &c->receivers, "channel recv", chan_recv_k);
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
  struct braid_wait *w;
  c->closed = 1;
  while ((w = queue_pop(&c->receivers)) != NULL)
    braid__task_wake(w->task, WAKE_OK);
  while ((w = queue_pop(&c->senders)) != NULL)
    braid__task_wake(w->task, WAKE_OK);   /* got == 0: send_k raises */
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

static int l_chan_len (lua_State *L) {
  lua_pushinteger(L, chan_check(L, "channel:len")->count);
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
  c->cap = cap;
  braid__list_init(&c->senders);
  braid__list_init(&c->receivers);
  lua_createtable(L, cap < 64 ? (int) cap : 64, 0);
  lua_setiuservalue(L, -2, 1);
  lua_newtable(L);
  lua_setiuservalue(L, -2, 2);
  luaL_setmetatable(L, CHAN_MT);
  return 1;
}

/* ---- semaphores ---- */

static struct braid_sem *sem_check (lua_State *L, const char *fname) {
  return (struct braid_sem *) braid__check_object(L, 1, SEM_MT, fname);
}

/* sem:acquire(): takes a permit, waiting in FIFO order for one. */
static int l_sem_acquire (lua_State *L) {
  struct braid_sem *s = sem_check(L, "semaphore:acquire");
  struct braid_task *t = braid__task_current(L, "semaphore:acquire");
  braid__task_checkcancel(L, t);
  if (s->permits > 0 && braid__list_empty(&s->waiters)) {
    s->permits--;
    return 0;
  }
  braid__task_checkyield(L, t, "semaphore:acquire");
  return queue_wait(L, t, &s->waiters, "semaphore acquire", braid__task_k0);
}

static void sem_give (struct braid_sem *s);

/* sem:with's guard: to be closed on sem:with's own stack, with the
** semaphore as its user value; `held` once the call holds a permit. Made
** before the permit is taken, so that running out of memory cannot leave
** a permit taken with nothing to give it back. */
static int *sem_guard_push (lua_State *L) {
  int *held = (int *) lua_newuserdatauv(L, sizeof *held, 1);
  *held = 0;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, lua_upvalueindex(1));    /* the guards' metatable */
  lua_setmetatable(L, -2);
  lua_toclose(L, -1);
  return held;
}

/* The guard is closed (return, error, cancellation, abandonment): the
** permit goes back, if one was taken. */
static int l_sem_guard_close (lua_State *L) {
  int *held = (int *) lua_touserdata(L, 1);
  if (*held) {
    *held = 0;
    lua_getiuservalue(L, 1, 1);
    sem_give((struct braid_sem *) lua_touserdata(L, -1));
  }
  return 0;
}

static int sem_with_done (lua_State *L, int status, lua_KContext ctx) {
  (void) status;
  return lua_gettop(L) - (int) ctx;
}

/* Holding the permit, runs fn(...). Stack: sem, fn, args..., guard. */
static int sem_with_call (lua_State *L) {
  int base = lua_gettop(L), i;
  luaL_checkstack(L, base, "too many arguments");
  for (i = 2; i < base; i++) lua_pushvalue(L, i);
  lua_callk(L, base - 3, LUA_MULTRET, (lua_KContext) base, sem_with_done);
  return sem_with_done(L, LUA_OK, (lua_KContext) base);
}

/* A waiter woken with WAKE_OK was handed the permit. */
static int sem_with_k (lua_State *L, int status, lua_KContext ctx) {
  (void) status;
  braid__task_resumed(L, (struct braid_task *) ctx);
  *(int *) lua_touserdata(L, -1) = 1;
  return sem_with_call(L);
}

/* sem:with(fn, ...) -> ...: fn(...) holding a permit, released on every
** path (return, error, cancellation, abandonment) by a to-be-closed guard
** on this function's stack. The guards' metatable is upvalue 1. */
static int l_sem_with (lua_State *L) {
  struct braid_sem *s = sem_check(L, "semaphore:with");
  struct braid_task *t;
  int *held;
  if (!braid__is_callable(L, 2))
    braid_argerror(L, 2, "semaphore:with", "function expected");
  t = braid__task_current(L, "semaphore:with");
  braid__task_checkcancel(L, t);
  if (!(s->permits > 0 && braid__list_empty(&s->waiters)))
    braid__task_checkyield(L, t, "semaphore:with");
  held = sem_guard_push(L);
  if (s->permits > 0 && braid__list_empty(&s->waiters)) {
    s->permits--;
    *held = 1;
    return sem_with_call(L);
  }
  return queue_wait(L, t, &s->waiters, "semaphore acquire", sem_with_k);
}

/* Gives a permit back, straight to the first waiter. */
static void sem_give (struct braid_sem *s) {
  struct braid_wait *w = queue_pop(&s->waiters);
  if (w) braid__task_wake(w->task, WAKE_OK);
  else s->permits++;
}

/* sem:release(): gives a permit back. */
static int l_sem_release (lua_State *L) {
  sem_give(sem_check(L, "semaphore:release"));
  return 0;
}

static int l_sem_count (lua_State *L) {
  lua_pushinteger(L, sem_check(L, "semaphore:count")->permits);
  return 1;
}

/* braid.semaphore(n) -> semaphore with n permits. */
static int l_sem_new (lua_State *L) {
  lua_Integer n = braid__check_integer(L, 1, "braid.semaphore");
  struct braid_sem *s;
  if (n < 0) braid_argerror(L, 1, "braid.semaphore", "permits must not be "
                                   "negative");
  s = lua_newuserdatauv(L, sizeof *s, 0);
  s->permits = n;
  braid__list_init(&s->waiters);
  luaL_setmetatable(L, SEM_MT);
  return 1;
}

/* ---- events ---- */

static struct braid_event *event_check (lua_State *L, const char *fname) {
  return (struct braid_event *) braid__check_object(L, 1, EVENT_MT, fname);
}

/* ev:wait(): returns once the event is set (at once if it already is). */
static int l_event_wait (lua_State *L) {
  struct braid_event *e = event_check(L, "event:wait");
  struct braid_task *t = braid__task_current(L, "event:wait");
  braid__task_checkcancel(L, t);
  if (e->set) return 0;
  braid__task_checkyield(L, t, "event:wait");
  return queue_wait(L, t, &e->waiters, "event wait", braid__task_k0);
}

/* ev:set(): sets the event and wakes every waiter. */
static int l_event_set (lua_State *L) {
  struct braid_event *e = event_check(L, "event:set");
  struct braid_wait *w;
  e->set = 1;
  while ((w = queue_pop(&e->waiters)) != NULL)
    braid__task_wake(w->task, WAKE_OK);
  return 0;
}

static int l_event_is_set (lua_State *L) {
  lua_pushboolean(L, event_check(L, "event:is_set")->set);
  return 1;
}

/* braid.event() -> event, not set. */
static int l_event_new (lua_State *L) {
  struct braid_event *e = lua_newuserdatauv(L, sizeof *e, 0);
  e->set = 0;
  braid__list_init(&e->waiters);
  luaL_setmetatable(L, EVENT_MT);
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
  static const luaL_Reg sem_methods[] = {
    {"acquire", l_sem_acquire},
    {"release", l_sem_release},
    {"count", l_sem_count},
    {NULL, NULL}
  };
  static const luaL_Reg event_methods[] = {
    {"wait", l_event_wait},
    {"set", l_event_set},
    {"is_set", l_event_is_set},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"channel", l_chan_new},
    {"semaphore", l_sem_new},
    {"event", l_event_new},
    {NULL, NULL}
  };
  /* The methods tables go in the module too, for the Lua side to extend. */
  braid__class(L, CHAN_MT, NULL, chan_methods, NULL);
  lua_setfield(L, -2, "Channel");
  braid__class(L, SEM_MT, NULL, sem_methods, NULL);
  lua_createtable(L, 0, 1);                 /* sem:with's guards */
  lua_pushcfunction(L, l_sem_guard_close);
  lua_setfield(L, -2, "__close");
  lua_pushcclosure(L, l_sem_with, 1);
  lua_setfield(L, -2, "with");
  lua_setfield(L, -2, "Semaphore");
  braid__class(L, EVENT_MT, NULL, event_methods, NULL);
  lua_setfield(L, -2, "Event");
  luaL_setfuncs(L, funcs, 0);
}
