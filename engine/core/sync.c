/*
** sync.c: braid.semaphore and braid.event.
**
** Both keep their waiters in FIFO lists of the tasks' own waits
** (t->w.watch.link), so waiting allocates nothing and a cancelled waiter
** unlinks itself in O(1). A semaphore's waiter is woken with WAKE_OK only
** once a permit is its; one abandoned before it ran gives the permit back
** (sem_release), as a channel's receiver gives its value back.
*/
#include "core.h"

#define SEM_MT "braid.Semaphore"
#define EVENT_MT "braid.Event"

static const struct braid_type sem_type = {SEM_MT};
static const struct braid_type event_type = {EVENT_MT};

struct braid_sem {
  const struct braid_type *type;   /* &sem_type */
  lua_Integer permits;
  struct braid_list waiters;
};

struct braid_event {
  const struct braid_type *type;   /* &event_type */
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
  braid__list_push(q, &t->w.watch.link);
  return braid__task_yield(L, t, (lua_KContext) t, k);
}

/* ---- semaphores ---- */

static struct braid_sem *sem_check (lua_State *L, const char *fname) {
  return (struct braid_sem *) braid__check_tagged(L, 1, &sem_type, fname);
}

static void sem_give (struct braid_sem *s);

/* A waiter woken with a permit that will never run (abandoned,
** braid_close) gives it back, as a channel's receiver gives its value. */
static void sem_release (struct braid_wait *w) {
  if (w->task->wake == WAKE_OK) sem_give((struct braid_sem *) w->obj);
}

/* Waits for a permit; a waiter woken with WAKE_OK was handed one. */
static int sem_queue_wait (lua_State *L, struct braid_task *t,
                           struct braid_sem *s, lua_KFunction k) {
  braid__task_wait(t, &t->w, waiter_unlink, "semaphore acquire");
  t->w.obj = s;
  t->w.release = sem_release;
  braid__list_push(&s->waiters, &t->w.watch.link);
  return braid__task_yield(L, t, (lua_KContext) t, k);
}

static int sem_acquire_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = (struct braid_task *) ctx;
  (void) status;
  t->w.release = NULL;
  braid__task_resumed(L, t);
  return 0;
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
  return sem_queue_wait(L, t, s, sem_acquire_k);
}

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
  struct braid_task *t = (struct braid_task *) ctx;
  (void) status;
  t->w.release = NULL;
  braid__task_resumed(L, t);
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
  return sem_queue_wait(L, t, s, sem_with_k);
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
  s->type = &sem_type;
  s->permits = n;
  braid__list_init(&s->waiters);
  luaL_setmetatable(L, SEM_MT);
  return 1;
}

/* ---- events ---- */

static struct braid_event *event_check (lua_State *L, const char *fname) {
  return (struct braid_event *) braid__check_tagged(L, 1, &event_type, fname);
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
  e->type = &event_type;
  e->set = 0;
  braid__list_init(&e->waiters);
  luaL_setmetatable(L, EVENT_MT);
  return 1;
}

void braid__open_sync (lua_State *L) {
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
    {"semaphore", l_sem_new},
    {"event", l_event_new},
    {NULL, NULL}
  };
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
