/*
** engine.c: the engine's lifecycle: one per lua_State, boxed in its
** registry; braid's handles on a loop (attach, detach); opening the core;
** and calling into Lua from libuv callbacks.
**
** Invariants:
** - One engine per lua_State, malloc'd and boxed in a userdata in the
**   registry. E is freed when its count drops to 0: one for the Lua state,
**   one per handle of braid's still open (close callbacks may run after the
**   state is gone, when the application owns the loop).
** - braid's own handles never keep the loop alive: the idle handle is
**   active only while tasks are ready, the timer only while the heap has
**   entries (and is unreferenced on the virtual clock, where it is the
**   autojump: timer.c), and the signal watchers are unreferenced. So
**   uv_run returns exactly when nothing can wake any task, which is how
**   deadlocks are found (run.c) and when the virtual clock jumps at the
**   latest.
** - braid's libuv callbacks, braid_cancel and braid_interrupt, which may
**   run an application's on_cancel outside any task, are bracketed by
**   braid__engine_enter/leave: a braid_close made inside waits (close_later)
**   until the outermost of them returns, so no caller returns into a
**   closed engine.
** - Interrupts (Ctrl-C, SIGTERM, SIGHUP, braid_interrupt) are
**   interrupt.c's; stopping Lua code that does not suspend is hook.c's.
*/
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core.h"

static const char engine_key = 'e';

/* The box that keeps E in the registry. Its tag tells it from anything a
** script could put under engine_key (debug.getregistry): only braid writes
** a box. */
static const char box_tag = 'b';
struct engine_box {
  const void *tag;
  braid_engine_t *E;
};

/* The engine whose scheduler is draining on this OS thread (sched.c sets it
** around each drain), or NULL. Every task runs inside a drain, so inside a
** task's own coroutine the engine is found without a registry lookup. */
_Thread_local braid_engine_t *braid__draining;

static braid_engine_t *engine_boxed (lua_State *L) {
  struct engine_box *box;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &engine_key);
  box = (struct engine_box *) lua_touserdata(L, -1);
  if (box && (lua_rawlen(L, -1) != sizeof *box || box->tag != &box_tag))
    box = NULL;   /* not braid's box: a script replaced it */
  lua_pop(L, 1);
  return box ? box->E : NULL;
}

/* O(1) on the hot path (a braid call in a task's body): the draining
** engine, when L is its running task's coroutine; else the registry. */
braid_engine_t *braid_engine (lua_State *L) {
  braid_engine_t *E = braid__draining;
  if (E && E->current && E->current->co == L) return E;
  return engine_boxed(L);
}

/* The box is collected when the state closes, while the registry still
** holds it; collected before that, a script took it out of the registry
** (debug.getregistry): it goes back, its finalizer armed again, so that a
** script cannot free the engine under the running state. */
static int l_engine_gc (lua_State *L) {
  struct engine_box *box = (struct engine_box *) lua_touserdata(L, 1);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &engine_key);
  if (lua_touserdata(L, -1) != (void *) box) {
    lua_pushvalue(L, 1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &engine_key);
    lua_getmetatable(L, 1);
    lua_setmetatable(L, 1);
    return 0;
  }
  if (!box->E->embedded) {
    braid__arena_orphan(box->E->arena);   /* it outlives E (arena.c) */
    braid__engine_unref(box->E);
  }
  return 0;
}

/* A zeroed engine with one reference (the Lua state's); NULL when out of
** memory. */
braid_engine_t *braid__engine_new (void) {
  braid_engine_t *E = (braid_engine_t *) braid__calloc(1, sizeof *E);
  if (E == NULL) return NULL;
  E->refs = 1;
  E->grace_ns = 5000000000u;
  E->S_ref = E->pool_ref = E->anchors_ref = E->tasks_ref = LUA_NOREF;
  E->modules = BRAID_MODS_ALL;
  braid__list_init(&E->interceptors);
  braid__list_init(&E->loop_users);
  return E;
}

/* Drops one reference; the last one frees the engine. */
void braid__engine_unref (braid_engine_t *E) {
  if (--E->refs > 0) return;
  braid__xacct_drop(E);   /* messages still in flight keep the account */
  free(E->heap);
  free(E);
}

void braid__engine_enter (braid_engine_t *E) {
  E->calls++;
}

void braid__engine_leave (braid_engine_t *E) {
  if (--E->calls == 0 && E->close_later) {
    E->close_later = 0;
    braid_close(E);
  }
}

void braid__engine_handle_closed (uv_handle_t *h) {
  braid__engine_unref((braid_engine_t *) h->data);
}

/* Adds braid's handles to loop: the idle handle and the timer, and the
** signal watchers when `signals` (interrupt.c). None keeps the loop alive by
** itself. Returns 0 or a negative libuv code (nothing is left attached). */
int braid__engine_attach (braid_engine_t *E, uv_loop_t *loop, int signals) {
  int rc;
  E->loop = loop;
  if ((rc = uv_idle_init(loop, &E->idle)) != 0) return rc;
  E->idle.data = E;
  E->refs++;
  if ((rc = uv_timer_init(loop, &E->timer)) != 0) {
    uv_close((uv_handle_t *) &E->idle, braid__engine_handle_closed);
    return rc;
  }
  E->timer.data = E;
  E->refs++;
  E->attached = 1;
  if (signals) braid__interrupt_attach(E);
  return 0;
}

/* Starts closing every handle braid added to its loop; the engine's memory
** stays until their close callbacks have run. */
void braid__engine_detach (braid_engine_t *E) {
  if (!E->attached) return;
  E->attached = 0;
  /* Primitives' handles that outlive tasks (libcurl's) close first, while
  ** the engine is whole; each user is told once and forgotten. */
  while (!braid__list_empty(&E->loop_users)) {
    struct braid_loop_user *u =
      container_of(E->loop_users.next, struct braid_loop_user, link);
    braid__list_remove(&u->link);
    u->detach(u);
  }
  uv_close((uv_handle_t *) &E->idle, braid__engine_handle_closed);
  uv_close((uv_handle_t *) &E->timer, braid__engine_handle_closed);
  braid__interrupt_detach(E);
  E->armed_due = 0;
}

void braid__loop_user_add (braid_engine_t *E, struct braid_loop_user *u) {
  braid__list_push(&E->loop_users, &u->link);
}

struct braid_loop_user *braid__loop_user_find (braid_engine_t *E,
                                               const void *key) {
  struct braid_list *l;
  for (l = E->loop_users.next; l != &E->loop_users; l = l->next) {
    struct braid_loop_user *u = container_of(l, struct braid_loop_user, link);
    if (u->key == key) return u;
  }
  return NULL;
}

/* Keeps E in L's registry, boxed; the box's __gc drops the state's
** reference unless the engine is embedded (braid_close drops it after
** lua_close, because the allocator still needs E). [-0, +0, m] */
void braid__engine_box (lua_State *L, braid_engine_t *E) {
  struct engine_box *box;
  box = (struct engine_box *) lua_newuserdatauv(L, sizeof *box, 0);
  box->tag = &box_tag;
  box->E = E;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, l_engine_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &engine_key);
}

/* A Lua error escaped the scheduler (why NULL: it is on S's top), or
** braid's own C heap ran out where it cannot do without (why says so):
** out of memory again after the reserve was spent (memory.c). The engine
** cannot keep its promises any more, so it says so and stops. */
void braid__engine_fatal (braid_engine_t *E, const char *why) {
  if (why == NULL) why = lua_tostring(E->S, -1);
  fprintf(stderr, "braid: fatal error in the scheduler: %s%s\n",
          why ? why : "(not a string)",
          E->reserve ? "" : " (its memory reserve was already spent)");
  if (E->trace) braid__trace_close(E);   /* what led here, on disk */
  abort();
}


/* Calls f(ud) on the scheduler's thread under lua_pcall; the status, with
** the error left on S when it is not LUA_OK. */
int braid__engine_try (braid_engine_t *E, lua_CFunction f, void *ud) {
  lua_State *S = E->S;
  lua_pushcfunction(S, f);
  lua_pushlightuserdata(S, ud);
  return lua_pcall(S, 1, 0, 0);
}

void braid__engine_call (braid_engine_t *E, lua_CFunction f, void *ud) {
  if (braid__engine_try(E, f, ud) != LUA_OK) braid__engine_fatal(E, NULL);
}

void braid__unref (braid_engine_t *E, int ref) {
  if (ref != LUA_NOREF) luaL_unref(E->S, LUA_REGISTRYINDEX, ref);
}

struct braid_task *braid__engine_victim (braid_engine_t *E) {
  return E->entry && !TASK_DONE(E->entry) ? E->entry : E->root;
}

/* An embedded engine's tasks are independent: cancel each live one (with
** the reason at `reason`), not the top scope, so that tasks started
** afterwards are not born cancelled. */
struct cancel_args { lua_State *L; int reason; };

static void cancel_one (struct braid_task *t, void *ud) {
  struct cancel_args *a = (struct cancel_args *) ud;
  braid__task_cancel(t, a->L, a->reason);
}

void braid__engine_cancel_all (lua_State *L, braid_engine_t *E, int reason) {
  struct cancel_args a;
  a.L = L;
  a.reason = lua_absindex(L, reason);
  braid__scope_each_task(&E->top, cancel_one, &a);
}

/* ---- opening ---- */

unsigned braid__engine_modules (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  return E ? E->modules : BRAID_MODS_ALL;
}

static int l_engine_box (lua_State *L) {
  braid__engine_box(L, (braid_engine_t *) lua_touserdata(L, 1));
  return 0;
}

void braid__open_core (lua_State *L) {
  braid_engine_t *E;
  braid__error_init(L);   /* first: what follows raises braid.Errors */
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &engine_key) == LUA_TNIL) {
    if ((E = braid__engine_new()) == NULL)
      braid_error(L, "memory", NULL, "require \"braid\": not enough "
                  "memory");
    lua_pushcfunction(L, l_engine_box);
    lua_pushlightuserdata(L, E);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {   /* not boxed: ours to free */
      free(E);
      lua_error(L);
    }
  }
  lua_pop(L, 1);
  if ((E = braid_engine(L)) == NULL)
    braid_usageerror(L, "require \"braid\": braid's entry in the registry "
                     "was replaced");
  if (E->S == NULL) {   /* first opening (braid_new boxes E beforehand) */
    E->L = L;
    E->S = lua_newthread(L);
    E->S_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    E->pool_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_newtable(L);
    E->tasks_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  lua_getglobal(L, "coroutine");
  if (lua_istable(L, -1)) braid__open_coroutine(L);
  lua_pop(L, 1);
  lua_newtable(L);
}

/* A loop of braid's own, made once any missing stdio fd is filled. */
int braid__loop_init (uv_loop_t *loop) {
  braid__stdio_fill();
  return uv_loop_init(loop);
}

/* A stdin, stdout or stderr that the process lacks becomes /dev/null.
** Else libuv takes the free number for a loop fd of its own (epoll's, a
** signal pipe) and aborts when the loop closes it (it asserts it never
** closes 0-2); a child's output could also land in it. Under a lock:
** engines start on several threads (workers), and two opens for one free
** number would leave one fd behind. */
void braid__stdio_fill (void) {
  static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
  int fd;
  pthread_mutex_lock(&mu);
  for (fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) < 0 && errno == EBADF &&
        open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY) < 0)
      break;                   /* the lowest free number: fd */
  pthread_mutex_unlock(&mu);
}
