/*
** sync.c: braid.semaphore, braid.lock and braid.event (with the private
** _condition_wait, an event wait labelled as braid.condition's).
**
** Both keep their waiters in FIFO lists of the tasks' own waits
** (t->w->watch.link), so waiting allocates nothing and a cancelled waiter
** unlinks itself in O(1). A semaphore's waiter is woken with WAKE_OK only
** once a permit is its; one abandoned before it ran gives the permit back
** (sem_release), as a channel's receiver gives its value back.
**
** A lock is a semaphore of one permit that knows its holder (by task id,
** which is never reused, so a holder that ended is never mistaken for a
** new task): only the holder releases it, and a holder acquiring it again
** is told rather than deadlocked. A permit handed to a waiter makes that
** waiter the holder at once. A semaphore counts the permits out (taken,
** or handed to a waiter) so that releasing one more than was taken
** raises, unless its `max` leaves room.
*/
#include "core.h"

#define SEM_MT "braid.Semaphore"
#define EVENT_MT "braid.Event"
#define LOCK_MT "braid.Lock"

static const struct braid_type sem_type = {SEM_MT};
static const struct braid_type event_type = {EVENT_MT};
static const struct braid_type lock_type = {LOCK_MT};

struct braid_sem {
  const struct braid_type *type;   /* &sem_type or &lock_type */
  lua_Integer permits;          /* free now */
  lua_Integer out;              /* taken, or handed to a woken waiter */
  lua_Integer max;              /* permits + out stays within it */
  uint64_t owner;               /* a lock's holder (task id), or 0 */
  struct braid_list waiters;
};

#define IS_LOCK(s) ((s)->type == &lock_type)

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
  braid__task_wait(t, t->w, waiter_unlink, what);
  braid__list_push(q, &t->w->watch.link);
  return braid__task_yield(L, t, (lua_KContext) t, k);
}

/* ---- semaphores ---- */

/* The semaphore or lock at 1: fname says which ("lock:acquire"). */
static struct braid_sem *sem_check (lua_State *L, const char *fname) {
  return (struct braid_sem *) braid__check_tagged(L, 1, fname[0] == 'l' ?
                                                  &lock_type : &sem_type,
                                                  fname);
}

static void sem_put (struct braid_sem *s);
static int sem_back (struct braid_sem *s);

/* A waiter woken with a permit that will never run (abandoned,
** braid_close) gives it back, as a channel's receiver gives its value. */
static void sem_release (struct braid_wait *w) {
  if (WAIT_TASK(w)->wake == WAKE_OK) sem_put((struct braid_sem *) w->obj);
}

/* Takes a free permit for task t. */
static void sem_take (struct braid_sem *s, struct braid_task *t) {
  s->permits--;
  s->out++;
  if (IS_LOCK(s)) s->owner = t->id;
}

/* Can t take a permit without waiting? A task that holds a lock and asks
** for it again would wait for itself forever: that is a usage error. */
static int sem_free (lua_State *L, struct braid_sem *s, struct braid_task *t,
                     const char *fname) {
  if (IS_LOCK(s) && s->owner == t->id)
    braid_usageerror(L, "%s: this task holds the lock already (braid's "
                        "locks are not reentrant)", fname);
  return s->permits > 0 && braid__list_empty(&s->waiters);
}

/* Waits for a permit; a waiter woken with WAKE_OK was handed one. */
static int sem_queue_wait (lua_State *L, struct braid_task *t,
                           struct braid_sem *s, lua_KFunction k) {
  braid__task_wait(t, t->w, waiter_unlink,
                   IS_LOCK(s) ? "lock acquire" : "semaphore acquire");
  t->w->obj = s;
  t->w->release = sem_release;
  braid__list_push(&s->waiters, &t->w->watch.link);
  return braid__task_yield(L, t, (lua_KContext) t, k);
}

static int sem_acquire_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = (struct braid_task *) ctx;
  (void) status;
  t->w->release = NULL;
  braid__task_resumed(L, t);
  return 0;
}

/* Takes a permit (the lock), waiting in FIFO order for one; fname names
** the method ("semaphore:acquire", "lock:acquire"). */
static int sem_acquire (lua_State *L, const char *fname) {
  struct braid_sem *s = sem_check(L, fname);
  struct braid_task *t = braid__task_current(L, fname);
  braid__task_checkcancel(L, t);
  if (sem_free(L, s, t, fname)) {
    sem_take(s, t);
    return 0;
  }
  braid__task_checkyield(L, t, fname);
  return sem_queue_wait(L, t, s, sem_acquire_k);
}

/* sem:acquire(): takes a permit, waiting in FIFO order for one. */
static int l_sem_acquire (lua_State *L) {
  return sem_acquire(L, "semaphore:acquire");
}

/* sem:with's guard: to be closed on sem:with's own stack, with the
** semaphore as its user value; `held`, the id of the task, once the call
** holds a permit. Made before the permit is taken, so that running out of
** memory cannot leave a permit taken with nothing to give it back. */
static uint64_t *sem_guard_push (lua_State *L) {
  uint64_t *held = (uint64_t *) lua_newuserdatauv(L, sizeof *held, 1);
  *held = 0;
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, lua_upvalueindex(1));    /* the guards' metatable */
  lua_setmetatable(L, -2);
  lua_toclose(L, -1);
  return held;
}

/* The guard is closed (return, error, cancellation, abandonment): the
** permit goes back, if one was taken; a lock, only if the task still holds
** it (its body may have released it, and the lock gone to another); a
** semaphore, within its bound. A semaphore does not know its holders: if
** the body released its permit and another task holds one, the guard's
** return lets one more in (as a second sem:release would). */
static int l_sem_guard_close (lua_State *L) {
  uint64_t *held = (uint64_t *) lua_touserdata(L, 1), id = *held;
  if (id) {
    struct braid_sem *s;
    *held = 0;
    lua_getiuservalue(L, 1, 1);
    s = (struct braid_sem *) lua_touserdata(L, -1);
    if (!IS_LOCK(s)) sem_back(s);
    else if (s->owner == id) sem_put(s);
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
  t->w->release = NULL;
  braid__task_resumed(L, t);
  *(uint64_t *) lua_touserdata(L, -1) = t->id;
  return sem_with_call(L);
}

/* sem:with(fn, ...) -> ...: fn(...) holding a permit, released on every
** path (return, error, cancellation, abandonment) by a to-be-closed guard
** on this function's stack. The guards' metatable is upvalue 1. */
static int sem_with (lua_State *L, const char *fname) {
  struct braid_sem *s = sem_check(L, fname);
  struct braid_task *t;
  uint64_t *held;
  int now;
  if (!braid__is_callable(L, 2))
    braid_argerror(L, 2, fname, "function expected");
  t = braid__task_current(L, fname);
  /* The guard first: a finalizer its allocation runs may take the permit
  ** or cancel the task, so the checks come after it. */
  held = sem_guard_push(L);
  braid__task_checkcancel(L, t);
  if (!(now = sem_free(L, s, t, fname)))
    braid__task_checkyield(L, t, fname);
  if (now) {
    sem_take(s, t);
    *held = t->id;
    return sem_with_call(L);
  }
  return sem_queue_wait(L, t, s, sem_with_k);
}

static int l_sem_with (lua_State *L) {
  return sem_with(L, "semaphore:with");
}

/* A permit becomes free: straight to the first waiter (a lock's waiter
** becomes its holder now), else it waits in `permits`. */
static void sem_give (struct braid_sem *s) {
  struct braid_wait *w = queue_pop(&s->waiters);
  if (IS_LOCK(s)) s->owner = w ? WAIT_TASK(w)->id : 0;
  if (w) {
    s->out++;
    braid__task_wake(WAIT_TASK(w), WAKE_OK);
  } else {
    s->permits++;
  }
}

/* A permit taken comes back. */
static void sem_put (struct braid_sem *s) {
  s->out--;
  sem_give(s);
}

/* A permit given back (sem:release, sem:with's guard); 0 when none is out
** and the semaphore's max leaves no room for one more. */
static int sem_back (struct braid_sem *s) {
  if (s->out > 0) sem_put(s);
  else if (s->permits < s->max) sem_give(s);
  else return 0;
  return 1;
}

/* sem:release(): gives a permit back; raises when none is out and the
** semaphore's max leaves no room for one more. */
static int l_sem_release (lua_State *L) {
  struct braid_sem *s = sem_check(L, "semaphore:release");
  if (!sem_back(s))
    braid_usageerror(L, "semaphore:release: released more often than "
                        "acquired (all %I permits are free; "
                        "braid.semaphore(n, {max = m}) allows up to m)",
                        (LUAI_UACINT) s->max);
  return 0;
}

static int l_sem_count (lua_State *L) {
  lua_pushinteger(L, sem_check(L, "semaphore:count")->permits);
  return 1;
}

static const char *const sem_options[] = {"max", NULL};

/* Pushes a new semaphore (or lock) with n permits of at most max. */
static void sem_push (lua_State *L, lua_Integer n, lua_Integer max,
                      int lock) {
  struct braid_sem *s = lua_newuserdatauv(L, sizeof *s, 0);
  s->type = lock ? &lock_type : &sem_type;
  s->permits = n;
  s->out = 0;
  s->max = max;
  s->owner = 0;
  braid__list_init(&s->waiters);
  luaL_setmetatable(L, lock ? LOCK_MT : SEM_MT);
}

/* braid.semaphore(n, [opts]) -> semaphore with n permits; opts.max (at
** least n; math.huge: unbounded) is how many releases may add up to,
** n when absent. */
static int l_sem_new (lua_State *L) {
  lua_Integer n = braid__check_integer(L, 1, "braid.semaphore");
  lua_Integer max = n;
  if (n < 0) braid_argerror(L, 1, "braid.semaphore", "permits must not be "
                                   "negative");
  braid__check_options(L, 2, "braid.semaphore", sem_options);
  if (lua_istable(L, 2)) {
    double m = braid__opt_number(L, 2, "max", (double) n, "braid.semaphore");
    if (m < (double) n)
      return braid_usageerror(L, "bad option 'max' to 'braid.semaphore' "
                                 "(less than the %I permits)",
                                 (LUAI_UACINT) n);
    if (m < 9.2e18 && m != (double) (lua_Integer) m)   /* 1.5 was 1 */
      return braid_usageerror(L, "bad option 'max' to 'braid.semaphore' "
                                 "(a whole number or math.huge expected)");
    max = m >= 9.2e18 ? LUA_MAXINTEGER : (lua_Integer) m;
  }
  sem_push(L, n, max, 0);
  return 1;
}

/* ---- locks ---- */

/* lock:acquire(): takes the lock, waiting in FIFO order. */
static int l_lock_acquire (lua_State *L) {
  return sem_acquire(L, "lock:acquire");
}

/* lock:release(): only the task holding the lock may release it. */
static int l_lock_release (lua_State *L) {
  struct braid_sem *s = sem_check(L, "lock:release");
  struct braid_task *t = braid__task_current(L, "lock:release");
  if (s->owner != t->id)
    return braid_usageerror(L, "lock:release: %s", s->owner == 0 ?
                            "the lock is not held" :
                            "the lock is held by another task");
  sem_put(s);
  return 0;
}

static int l_lock_with (lua_State *L) {
  return sem_with(L, "lock:with");
}

/* lock:locked() -> whether some task holds the lock. */
static int l_lock_locked (lua_State *L) {
  lua_pushboolean(L, sem_check(L, "lock:locked")->owner != 0);
  return 1;
}

/* lock:owned() -> whether the calling task holds the lock. */
static int l_lock_owned (lua_State *L) {
  struct braid_sem *s = sem_check(L, "lock:owned");
  struct braid_task *t = braid__task_current(L, "lock:owned");
  lua_pushboolean(L, s->owner != 0 && s->owner == t->id);
  return 1;
}

/* braid.lock() -> lock, free. */
static int l_lock_new (lua_State *L) {
  sem_push(L, 1, 1, 1);
  return 1;
}

/* ---- events ---- */

static struct braid_event *event_check (lua_State *L, const char *fname) {
  return (struct braid_event *) braid__check_tagged(L, 1, &event_type, fname);
}

/* Waits until the event at 1 is set, as fname, labelled what. */
static int event_wait (lua_State *L, const char *fname, const char *what) {
  struct braid_event *e = event_check(L, fname);
  struct braid_task *t = braid__task_current(L, fname);
  braid__task_checkcancel(L, t);
  if (e->set) return 0;
  braid__task_checkyield(L, t, fname);
  return queue_wait(L, t, &e->waiters, what, braid__task_k0);
}

/* ev:wait(): returns once the event is set (at once if it already is). */
static int l_event_wait (lua_State *L) {
  return event_wait(L, "event:wait", "event wait");
}

/* The private _condition_wait(ev) that lua/braid.lua's condition:wait
** waits with: an event wait that dump, deadlock reports and the trace
** call a condition wait, as the script wrote it. */
static int l_event_condition_wait (lua_State *L) {
  return event_wait(L, "condition:wait", "condition wait");
}

/* ev:set(): sets the event and wakes every waiter. */
static int l_event_set (lua_State *L) {
  struct braid_event *e = event_check(L, "event:set");
  struct braid_wait *w;
  e->set = 1;
  while ((w = queue_pop(&e->waiters)) != NULL)
    braid__task_wake(WAIT_TASK(w), WAKE_OK);
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
  static const luaL_Reg lock_methods[] = {
    {"acquire", l_lock_acquire},
    {"release", l_lock_release},
    {"locked", l_lock_locked},
    {"owned", l_lock_owned},
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
    {"lock", l_lock_new},
    {"event", l_event_new},
    {"_condition_wait", l_event_condition_wait},   /* lua/braid.lua's */
    {NULL, NULL}
  };
  braid__class(L, SEM_MT, NULL, sem_methods, NULL);
  lua_createtable(L, 0, 1);                 /* sem:with's guards */
  lua_pushcfunction(L, l_sem_guard_close);
  lua_setfield(L, -2, "__close");
  lua_pushcclosure(L, l_sem_with, 1);
  lua_setfield(L, -2, "with");
  lua_setfield(L, -2, "Semaphore");
  braid__class(L, LOCK_MT, NULL, lock_methods, NULL);
  lua_getfield(L, -2, "Semaphore");         /* sem:with's guards, shared */
  lua_getfield(L, -1, "with");
  lua_getupvalue(L, -1, 1);
  lua_pushcclosure(L, l_lock_with, 1);
  lua_setfield(L, -4, "with");
  lua_pop(L, 2);
  lua_setfield(L, -2, "Lock");
  braid__class(L, EVENT_MT, NULL, event_methods, NULL);
  lua_setfield(L, -2, "Event");
  luaL_setfuncs(L, funcs, 0);
}
