/*
** worker.c: braid.worker: an OS thread with its own lua_State and loop,
** running braid (an embedded engine, braid_new), that runs the functions
** its chunk returned as tasks, for calls made by tasks of the owner.
** Values cross by copy (io/xcopy.c).
**
** Who owns what:
** - struct wk is shared. The fields marked "mu" are read and written under
**   w->mu by both threads; the owner's are touched by the owner's loop
**   thread only, the worker's by the worker thread only; the options are
**   written before the thread starts and only read after.
** - A call (struct wk_call) is the owner's until it is queued in
**   w->requests, the worker's from then until it is queued in w->replies
**   (replied = 1, under mu), the owner's again afterwards: the owner frees
**   it, in call_k when a task took the reply, else when it arrives for a
**   call whose task stopped waiting. A cancel is a second node of the call
**   (cancel_link) queued in w->requests; the worker unlinks it when it
**   replies, so no cancel outlives its call.
** - Each side has one uv_async_t on its own loop, which the other side
**   signals after queuing: the owner's (oasync) wakes it for replies and
**   for the worker's exit, the worker's (wasync) for calls, cancels and
**   stop. The owner's async keeps the owner's loop alive only while a
**   call is in flight or the worker is stopping, so an idle worker hides
**   no deadlock and braid.run cannot return before its workers exited.
** - A task that spins in Lua never returns to the worker's loop. While a
**   cancel or stop is unacknowledged the owner hooks the threads of the
**   worker's running calls (braid__hook_poll: lua_sethook, which Lua
**   allows from elsewhere, as Ctrl-C does) every OTIMER_MS, so the worker
**   polls its queue at its next instruction; w->running (mu) lists the
**   calls whose thread may run, and a thread leaves it before its task's
**   coroutine can be reused or collected.
** - The worker thread ends after its engine is closed and its loop closed
**   (uv_loop_close returns 0); the owner joins it (uv_thread_join) when it
**   says it exited, and closes its own handles; the last of the userdata
**   and the handles frees w.
*/
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/xcopy.h"

#define WORKER_MT "braid.Worker"
#define OTIMER_MS 20

enum { CALL_OK, CALL_ERROR, CALL_CLOSED, CALL_NOMEM };
enum { SRC_CHUNK, SRC_FILE, SRC_MODULE };

struct wk;

struct wk_call {
  struct braid_list link;        /* requests, then done, then replies */
  struct braid_list cancel_link; /* in w->cancels once cancelled (mu) */
  struct braid_list run_link;    /* in w->running from start to reply (mu) */
  struct wk *w;
  char *fname;
  char *buf;                     /* the arguments, then the reply */
  size_t len;
  int status;                    /* of the reply: CALL_* */
  unsigned char replied;         /* mu: the worker is done with it */
  unsigned char delivered;       /* owner: its task will take the reply */
  braid_op_t *op;                /* owner: the waiting call, or NULL */
  braid_task_t *task;            /* worker: the task running it */
  lua_State *L;                  /* mu: the task's thread, while it runs */
  struct braid_watch watch;      /* worker: the task ended */
  char *tb;                      /* worker: the traceback of its error */
};

struct wk {
  uv_mutex_t mu;
  /* mu */
  struct braid_list requests;    /* calls for the worker (link) */
  struct braid_list cancels;     /* their cancels (cancel_link) */
  struct braid_list replies;     /* calls answered (link) */
  struct braid_list running;     /* calls started, not answered (run_link) */
  lua_State *bootL;              /* the worker's state while it loads */
  unsigned unacked;              /* cancels and stop not yet seen */
  unsigned char stop, exited, wready;
  /* the owner's */
  uv_async_t oasync;
  uv_timer_t otimer;
  uv_thread_t thread;
  braid_resource_t res;
  braid_op_t *close_op;
  unsigned inflight;
  int orefs;                     /* the userdata, oasync, otimer */
  unsigned char closing, joined;
  /* the options, fixed before the thread starts */
  char *source, *path, *cpath;
  int skind;
  struct braid_xlimits lim;
  braid_options_t eopts;
  /* the worker's */
  uv_async_t wasync;
  braid_engine_t *WE;
  int fns_ref;
  char *load_err;                /* the encoded error of a failed load */
  char *boot_tb;                 /* its traceback */
  size_t load_len;
  struct braid_list done;        /* calls whose task ended */
  unsigned ncalls;
  unsigned char wstopping, wclosed;
};

static char *wk_strdup (const char *s) {
  size_t n = strlen(s) + 1;
  char *d = (char *) braid__malloc(n);
  if (d) memcpy(d, s, n);
  return d;
}

static void call_free (struct wk_call *c) {
  free(c->fname);
  free(c->buf);
  free(c->tb);
  free(c);
}

/* Under mu: every thread of the worker that may be running Lua polls. */
static void wk_hook_all (struct wk *w) {
  struct braid_list *n;
  for (n = w->running.next; n != &w->running; n = n->next) {
    struct wk_call *c = container_of(n, struct wk_call, run_link);
    if (c->L) braid__hook_poll(c->L);
  }
  if (w->bootL) braid__hook_poll(w->bootL);
}


/* ==== the worker's side (its own thread) ==== */

static void wk_reply (struct wk *w, struct wk_call *c) {
  struct wk *ww = c->w;
  (void) w;
  uv_mutex_lock(&ww->mu);
  braid__list_remove(&c->run_link);
  if (c->cancel_link.next != &c->cancel_link) {   /* a cancel still queued */
    braid__list_remove(&c->cancel_link);
    ww->unacked--;
  }
  c->L = NULL;
  c->replied = 1;
  braid__list_push(&ww->replies, &c->link);
  uv_mutex_unlock(&ww->mu);
  uv_async_send(&ww->oasync);
}

/* Encodes the values at 1..n-1 (the last is the call) as the reply:
** status 1 the results, else the error and its traceback. */
static int wk_encode_p (lua_State *L) {
  struct wk_call *c = (struct wk_call *) lua_touserdata(L, -1);
  int n = lua_gettop(L) - 1;
  lua_pop(L, 1);
  if (lua_toboolean(L, 1)) {
    c->buf = braid__xcopy_encode(L, 2, n - 1, "results",
                                 "back from a worker", &c->w->lim, &c->len);
    c->status = CALL_OK;
    return 0;
  }
  lua_settop(L, 2);
  if (c->tb && !braid_error_kind(L, 2)) lua_pushstring(L, c->tb);
  else lua_pushnil(L);
  c->buf = braid__xcopy_encode(L, 2, 2, "error", "back from a worker",
                               &c->w->lim, &c->len);
  c->status = CALL_ERROR;
  return 0;
}

/* The reply could not be encoded (a function among the results, a cap):
** that error, as a plain value, becomes the reply. */
static int wk_encode_fail_p (lua_State *L) {
  struct wk_call *c = (struct wk_call *) lua_touserdata(L, 2);
  lua_settop(L, 1);
  lua_pushboolean(L, 0);
  lua_insert(L, 1);
  lua_pushlightuserdata(L, c);
  free(c->tb);
  c->tb = NULL;
  return wk_encode_p(L);
}

/* The call's task ended: make its reply and hand the call back. Outside
** tasks, on the worker's state. */
static void wk_finish (struct wk *w, struct wk_call *c) {
  lua_State *L = braid_state(w->WE);
  int top = lua_gettop(L), n;
  n = braid_task_result(w->WE, c->task);
  c->status = CALL_NOMEM;
  if (n > 0) {
    int rc;
    lua_pushcfunction(L, wk_encode_p);
    lua_insert(L, top + 1);
    lua_pushlightuserdata(L, c);
    rc = lua_pcall(L, n + 1, 0, 0);
    if (rc != LUA_OK && rc != LUA_ERRMEM) {
      lua_pushcfunction(L, wk_encode_fail_p);
      lua_insert(L, -2);
      lua_pushlightuserdata(L, c);
      if (lua_pcall(L, 2, 0, 0) != LUA_OK) c->status = CALL_NOMEM;
    }
  }
  if (w->wstopping && c->status == CALL_ERROR &&
      braid_task_status(c->task) == BRAID_CANCELLED)
    c->status = CALL_CLOSED;
  lua_settop(L, top);
  braid_task_release(w->WE, c->task);
  c->task = NULL;
  w->ncalls--;
  wk_reply(w, c);
}

static void wk_task_done (struct braid_watch *wa, braid_task_t *t) {
  struct wk_call *c = container_of(wa, struct wk_call, watch);
  struct wk *w = c->w;
  (void) t;
  uv_mutex_lock(&w->mu);
  c->L = NULL;   /* its coroutine may be reused from now on */
  uv_mutex_unlock(&w->mu);
  braid__list_push(&w->done, &c->link);
  uv_async_send(&w->wasync);
}

/* The call's message handler: keeps the traceback of the error. */
static int wk_msgh (lua_State *L) {
  struct wk_call *c = (struct wk_call *) lua_touserdata(L,
                                                       lua_upvalueindex(1));
  if (c->tb == NULL && !braid_error_kind(L, 1)) {
    luaL_traceback(L, L, NULL, 1);
    c->tb = wk_strdup(lua_tostring(L, -1));
  }
  lua_settop(L, 1);
  return 1;
}

static int wk_body_k (lua_State *L, int status, lua_KContext ctx) {
  struct wk_call *c = (struct wk_call *) ctx;
  uv_mutex_lock(&c->w->mu);
  c->L = NULL;
  uv_mutex_unlock(&c->w->mu);
  if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);
  return lua_gettop(L) - 1;
}

/* The call's task: fns[fname](args...) under a handler that keeps the
** traceback. Its thread is registered for the owner's hooks meanwhile. */
static int wk_body (lua_State *L) {
  struct wk_call *c = (struct wk_call *) lua_touserdata(L, 1);
  struct wk *w = c->w;
  int nargs;
  uv_mutex_lock(&w->mu);
  c->L = L;
  uv_mutex_unlock(&w->mu);
  lua_settop(L, 0);
  lua_pushlightuserdata(L, c);
  lua_pushcclosure(L, wk_msgh, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->fns_ref);
  lua_getfield(L, -1, c->fname);
  lua_remove(L, -2);
  if (!braid__is_callable(L, -1))
    braid_error(L, "usage", NULL, "worker:call: the worker has no function "
                "'%s'", c->fname);
  nargs = braid__xcopy_decode(L, c->buf, c->len);
  free(c->buf);
  c->buf = NULL;
  return wk_body_k(L, lua_pcallk(L, nargs, LUA_MULTRET, 1, (lua_KContext) c,
                                 wk_body_k), (lua_KContext) c);
}

/* A call arrives: start its task, or answer at once. */
static void wk_begin (struct wk *w, struct wk_call *c) {
  lua_State *L = braid_state(w->WE);
  if (w->load_err || w->fns_ref == LUA_NOREF || w->wstopping) {
    free(c->buf);
    c->buf = NULL;
    c->status = CALL_CLOSED;
    if (w->load_err && (c->buf = (char *) braid__malloc(w->load_len))) {
      memcpy(c->buf, w->load_err, w->load_len);
      c->len = w->load_len;
      c->status = CALL_ERROR;
    }
    wk_reply(w, c);
    return;
  }
  uv_mutex_lock(&w->mu);
  braid__list_push(&w->running, &c->run_link);
  uv_mutex_unlock(&w->mu);
  lua_pushcfunction(L, wk_body);
  lua_pushlightuserdata(L, c);
  if (braid_spawn_function(w->WE, 1, &c->task) != 0) {
    c->status = CALL_NOMEM;
    wk_reply(w, c);
    return;
  }
  c->watch.done = wk_task_done;
  braid__task_watch(c->task, &c->watch);
  w->ncalls++;
}

/* Takes the queued cancels (of calls already started) and the stop. */
static void wk_take_cancels (struct wk *w) {
  struct braid_list *n, *next;
  int stop = 0;
  uv_mutex_lock(&w->mu);
  for (n = w->cancels.next; n != &w->cancels; n = next) {
    struct wk_call *c = container_of(n, struct wk_call, cancel_link);
    next = n->next;
    if (c->task == NULL) continue;   /* not started yet: its turn comes */
    braid__list_remove(n);
    w->unacked--;
    uv_mutex_unlock(&w->mu);
    braid_cancel(w->WE, c->task);
    uv_mutex_lock(&w->mu);
    next = w->cancels.next;   /* the list may have changed meanwhile */
  }
  if (w->stop && !w->wstopping) {
    w->wstopping = stop = 1;
    w->unacked--;
  }
  uv_mutex_unlock(&w->mu);
  if (stop)   /* only this thread changes the list: safe to walk unlocked */
    for (n = w->running.next; n != &w->running; n = n->next) {
      struct wk_call *c = container_of(n, struct wk_call, run_link);
      if (c->task) braid_cancel(w->WE, c->task);
    }
}

static void wasync_cb (uv_async_t *h) {
  struct wk *w = container_of(h, struct wk, wasync);
  for (;;) {   /* the calls, in order, then their cancels */
    struct wk_call *c = NULL;
    uv_mutex_lock(&w->mu);
    if (!braid__list_empty(&w->requests)) {
      c = container_of(w->requests.next, struct wk_call, link);
      braid__list_remove(&c->link);
    }
    uv_mutex_unlock(&w->mu);
    if (c == NULL) break;
    wk_begin(w, c);
  }
  wk_take_cancels(w);
  while (!braid__list_empty(&w->done)) {
    struct wk_call *c = container_of(w->done.next, struct wk_call, link);
    braid__list_remove(&c->link);
    wk_finish(w, c);
  }
  if (w->wstopping && w->ncalls == 0 && !w->wclosed) {
    w->wclosed = 1;   /* nothing runs: the loop may end */
    uv_close((uv_handle_t *) &w->wasync, NULL);
  }
}

/* The state's poll function (braid__hook_poll_set), run from a hook the
** owner set: a cancel or the stop reaches code that spins. While the
** chunk loads, the stop fails the load. */
static int l_worker_poll (lua_State *L) {
  struct wk *w = (struct wk *) lua_touserdata(L, lua_upvalueindex(1));
  int stop;
  wk_take_cancels(w);
  uv_mutex_lock(&w->mu);
  stop = w->bootL != NULL && w->stop;
  uv_mutex_unlock(&w->mu);
  if (stop)
    return braid_error(L, "closed", NULL, "braid.worker: closed while its "
                       "chunk was loading");
  return 0;
}

/* Loads the worker's chunk (a module, a file or the chunk itself) and
** keeps the table of functions it returns. On the worker's state, under
** lua_pcall, outside tasks. */
static int wk_boot_p (lua_State *L) {
  struct wk *w = (struct wk *) lua_touserdata(L, 1);
  int rc;
  lua_pushlightuserdata(L, w);
  lua_pushcclosure(L, l_worker_poll, 1);
  braid__hook_poll_set(L);
  if (lua_getglobal(L, "package") == LUA_TTABLE) {
    if (w->path) lua_pushstring(L, w->path), lua_setfield(L, -2, "path");
    if (w->cpath) lua_pushstring(L, w->cpath), lua_setfield(L, -2, "cpath");
  }
  lua_settop(L, 1);
  switch (w->skind) {
    case SRC_MODULE:
      lua_getglobal(L, "require");
      lua_pushstring(L, w->source);
      lua_call(L, 1, 1);
      break;
    case SRC_FILE:
      rc = luaL_loadfilex(L, w->source, "t");
      if (rc != LUA_OK) return lua_error(L);
      lua_call(L, 0, 1);
      break;
    default:
      rc = luaL_loadbufferx(L, w->source, strlen(w->source), "=worker", "t");
      if (rc != LUA_OK) return lua_error(L);
      lua_call(L, 0, 1);
  }
  if (!lua_istable(L, -1))
    return braid_error(L, "usage", NULL, "braid.worker: the worker's chunk "
                       "returned %s (a table of functions expected)",
                       luaL_typename(L, -1));
  w->fns_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* The load's message handler: keeps the traceback, as wk_msgh does. */
static int wk_boot_msgh (lua_State *L) {
  struct wk *w = (struct wk *) lua_touserdata(L, lua_upvalueindex(1));
  if (w->boot_tb == NULL && !braid_error_kind(L, 1)) {
    luaL_traceback(L, L, NULL, 1);
    w->boot_tb = wk_strdup(lua_tostring(L, -1));
  }
  lua_settop(L, 1);
  return 1;
}

/* The load failed with the error at 2 (traceback at 3): keep it encoded,
** the reply of every call. */
static int wk_keep_load_error_p (lua_State *L) {
  struct wk *w = (struct wk *) lua_touserdata(L, 1);
  w->load_err = braid__xcopy_encode(L, 2, 2, "error", "back from a worker",
                                    &w->lim, &w->load_len);
  return 0;
}

static void wk_boot (struct wk *w) {
  lua_State *L = braid_state(w->WE);
  int top = lua_gettop(L), rc;
  lua_pushlightuserdata(L, w);
  lua_pushcclosure(L, wk_boot_msgh, 1);
  lua_pushcfunction(L, wk_boot_p);
  lua_pushlightuserdata(L, w);
  uv_mutex_lock(&w->mu);
  w->bootL = L;
  uv_mutex_unlock(&w->mu);
  rc = lua_pcall(L, 1, 0, top + 1);
  uv_mutex_lock(&w->mu);
  w->bootL = NULL;
  uv_mutex_unlock(&w->mu);
  lua_sethook(L, NULL, 0, 0);   /* a poll asked for too late */
  if (rc != LUA_OK) {
    int i;
    for (i = 0; i < 2 && w->load_err == NULL; i++) {
      lua_pushcfunction(L, wk_keep_load_error_p);
      lua_pushlightuserdata(L, w);
      if (i == 0) lua_pushvalue(L, top + 2);   /* the error */
      else lua_pushliteral(L, "braid.worker: its chunk failed to load (the "
                           "error cannot be copied)");
      if (w->boot_tb) lua_pushstring(L, w->boot_tb);
      else lua_pushnil(L);
      if (lua_pcall(L, 3, 0, 0) != LUA_OK) lua_pop(L, 1);
    }
  }
  lua_settop(L, top);
}

static void wk_walk_cb (uv_handle_t *h, void *arg) {
  (void) arg;
  fprintf(stderr, "braid: worker: internal: handle of type %s left open\n",
          uv_handle_type_name(uv_handle_get_type(h)));
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void wk_main (void *arg) {
  struct wk *w = (struct wk *) arg;
  uv_loop_t loop;
  int ok = uv_loop_init(&loop) == 0;
  if (ok && (w->WE = braid_new(&loop, &w->eopts)) == NULL) {
    uv_loop_close(&loop);
    ok = 0;
  }
  if (ok && uv_async_init(&loop, &w->wasync, wasync_cb) != 0) {
    braid_close(w->WE);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    ok = 0;
  }
  if (ok) {
    uv_mutex_lock(&w->mu);
    w->wready = 1;
    uv_mutex_unlock(&w->mu);
    wk_boot(w);
    wasync_cb(&w->wasync);   /* what came while it loaded */
    uv_run(&loop, UV_RUN_DEFAULT);   /* until stopped and every call ended */
    braid_close(w->WE);
    uv_run(&loop, UV_RUN_DEFAULT);   /* braid's close callbacks */
    if (uv_loop_close(&loop) != 0) {
      uv_walk(&loop, wk_walk_cb, NULL);
      uv_run(&loop, UV_RUN_DEFAULT);
      uv_loop_close(&loop);
    }
  }
  uv_mutex_lock(&w->mu);
  w->exited = 1;
  if (!ok) w->wready = 0;
  uv_mutex_unlock(&w->mu);
  uv_async_send(&w->oasync);   /* the owner joins after this returns */
}


/* ==== the owner's side (the thread of the loop that made it) ==== */

static void wk_unref (struct wk *w) {
  if (--w->orefs > 0) return;
  uv_mutex_destroy(&w->mu);
  free(w->source);
  free(w->path);
  free(w->cpath);
  free(w->load_err);
  free(w->boot_tb);
  free(w);
}

static void otimer_cb (uv_timer_t *h);

static void wk_handle_closed (uv_handle_t *h) {
  wk_unref((struct wk *) h->data);
}

/* The owner's loop stays alive while calls wait or the worker stops; the
** timer re-asks a worker that has not seen its cancels or stop to poll. */
static void wk_update (struct wk *w) {
  unsigned unacked;
  if (w->joined) return;
  if (w->inflight || w->closing) uv_ref((uv_handle_t *) &w->oasync);
  else uv_unref((uv_handle_t *) &w->oasync);
  uv_mutex_lock(&w->mu);
  unacked = w->unacked;
  uv_mutex_unlock(&w->mu);
  if (unacked && !uv_is_active((uv_handle_t *) &w->otimer))
    uv_timer_start(&w->otimer, otimer_cb, OTIMER_MS, OTIMER_MS);
  else if (!unacked)
    uv_timer_stop(&w->otimer);
}

static void otimer_cb (uv_timer_t *h) {
  struct wk *w = (struct wk *) h->data;
  uv_mutex_lock(&w->mu);
  if (w->unacked) wk_hook_all(w);
  uv_mutex_unlock(&w->mu);
  wk_update(w);
}

/* Hands a reply to the task waiting for it, or frees a call nobody waits
** for any more. */
static void wk_deliver (struct wk *w, struct wk_call *c) {
  braid_op_t *op = c->op;
  w->inflight--;
  if (op == NULL) {
    call_free(c);
    return;
  }
  c->delivered = 1;
  braid_resume(op, 0);
}

static void oasync_cb (uv_async_t *h) {
  struct wk *w = (struct wk *) h->data;
  struct braid_list got;
  int exited;
  braid__list_init(&got);
  uv_mutex_lock(&w->mu);
  while (!braid__list_empty(&w->replies)) {
    struct braid_list *n = w->replies.next;
    braid__list_remove(n);
    braid__list_push(&got, n);
  }
  exited = w->exited;
  uv_mutex_unlock(&w->mu);
  while (!braid__list_empty(&got)) {
    struct wk_call *c = container_of(got.next, struct wk_call, link);
    braid__list_remove(&c->link);
    wk_deliver(w, c);
  }
  if (exited && !w->joined) {
    braid_op_t *op = w->close_op;
    uv_thread_join(&w->thread);   /* it has returned, or is returning */
    w->joined = 1;
    w->closing = 1;
    braid_resource_remove(&w->res);
    /* a worker that could not start answered nothing */
    while (!braid__list_empty(&w->requests)) {
      struct wk_call *c = container_of(w->requests.next, struct wk_call,
                                       link);
      braid__list_remove(&c->link);
      braid__list_remove(&c->cancel_link);
      c->status = CALL_CLOSED;
      wk_deliver(w, c);
    }
    w->close_op = NULL;
    if (op) braid_resume(op, 0);
    uv_close((uv_handle_t *) &w->oasync, wk_handle_closed);
    uv_close((uv_handle_t *) &w->otimer, wk_handle_closed);
  }
  wk_update(w);
}

/* Asks the worker to stop: its calls are cancelled, it closes its engine
** and loop, and says it exited. Runs no Lua (a scope's resource hook). */
static void wk_stop (struct wk *w) {
  if (w->closing) return;
  w->closing = 1;
  braid_resource_remove(&w->res);
  uv_mutex_lock(&w->mu);
  w->stop = 1;
  w->unacked++;
  wk_hook_all(w);
  if (w->wready) uv_async_send(&w->wasync);
  uv_mutex_unlock(&w->mu);
  wk_update(w);
}

static void wk_res_close (braid_resource_t *r) {
  wk_stop(container_of(r, struct wk, res));
}

static struct wk *wk_check (lua_State *L, const char *fname) {
  struct wk **box = (struct wk **) braid__check_object(L, 1, WORKER_MT,
                                                      fname);
  if (*box == NULL)
    braid_error(L, "closed", NULL, "%s: the worker is closed", fname);
  return *box;
}

/* ---- worker:call ---- */

static int call_start (braid_op_t *op, void *ud) {
  struct wk_call *c = (struct wk_call *) ud;
  *(struct wk_call **) braid_op_data(op) = c;
  c->op = op;
  return 0;
}

/* The waiting task was cancelled (or abandoned): the worker is asked to
** cancel the call's task; the reply, when it comes, is freed. */
static void call_cancel (braid_op_t *op) {
  struct wk_call *c = *(struct wk_call **) braid_op_data(op);
  struct wk *w = c->w;
  c->op = NULL;
  if (c->delivered) {   /* resumed, then abandoned before it took it */
    call_free(c);
    return;
  }
  uv_mutex_lock(&w->mu);
  if (!c->replied) {
    braid__list_push(&w->cancels, &c->cancel_link);
    w->unacked++;
    wk_hook_all(w);
    if (w->wready) uv_async_send(&w->wasync);
  }
  uv_mutex_unlock(&w->mu);
  wk_update(w);
}

/* The reply of the call (light userdata 1) as the call's results, or its
** error at the top (returns -1). Under lua_pcall: call_k frees the call
** whatever happens here. */
static int call_result_p (lua_State *L) {
  struct wk_call *c = (struct wk_call *) lua_touserdata(L, 1);
  int n;
  lua_settop(L, 0);
  switch (c->status) {
    case CALL_NOMEM:
      return braid_error(L, "memory", NULL, "worker:call: not enough "
                         "memory in the worker");
    case CALL_CLOSED:
      return braid_error(L, "closed", NULL, "worker:call: the worker was "
                         "closed");
  }
  n = braid__xcopy_decode(L, c->buf, c->len);
  if (c->status == CALL_OK) return n;
  /* the error (1) and the worker's traceback (2) */
  if (lua_type(L, 1) == LUA_TTABLE) {
    if (!lua_isnil(L, 2)) {
      lua_pushliteral(L, "traceback");
      if (lua_rawget(L, 1) == LUA_TNIL) {
        lua_pushliteral(L, "traceback");
        lua_pushvalue(L, 2);
        lua_rawset(L, 1);
      }
    }
    lua_settop(L, 1);
  } else {
    braid_pusherror(L, "worker", NULL, "%s", braid__tostring(L, 1));
    lua_pushvalue(L, 1);
    lua_setfield(L, 4, "value");
    if (!lua_isnil(L, 2)) {
      lua_pushvalue(L, 2);
      lua_setfield(L, 4, "traceback");
    }
  }
  return lua_error(L);
}

static int call_k (lua_State *L, braid_op_t *op) {
  struct wk_call *c = *(struct wk_call **) braid_op_data(op);
  int base = lua_gettop(L), rc;
  c->op = NULL;
  lua_pushcfunction(L, call_result_p);
  lua_pushlightuserdata(L, c);
  rc = lua_pcall(L, 1, LUA_MULTRET, 0);
  call_free(c);
  if (rc != LUA_OK) return lua_error(L);
  return lua_gettop(L) - base;
}

/* worker:call(fname, ...) -> ...: runs the worker's function fname with
** the arguments, copied, as a task in the worker, and returns its results,
** copied. Cancelling the caller cancels that task. Errors: the worker's
** error (see docs/API.md, "Workers"); kind "usage" for a value that cannot
** cross, "limit" past max_message or max_depth, "closed" once the worker
** is closed. */
static int l_worker_call (lua_State *L) {
  struct wk *w = wk_check(L, "worker:call");
  struct wk_call *c;
  const char *fname;
  char *buf;
  size_t len;
  braid__check_type(L, 2, LUA_TSTRING, "worker:call");
  fname = lua_tostring(L, 2);
  braid_check_suspend(L, "worker:call");
  if (w->closing)
    return braid_error(L, "closed", NULL, "worker:call: the worker is "
                       "closed");
  buf = braid__xcopy_encode(L, 3, lua_gettop(L) - 2, "args", "to a worker",
                            &w->lim, &len);
  c = (struct wk_call *) braid__calloc(1, sizeof *c);
  if (c == NULL || (c->fname = wk_strdup(fname)) == NULL) {
    free(c);
    free(buf);
    return braid_error(L, "memory", NULL, "worker:call: not enough memory");
  }
  c->w = w;
  c->buf = buf;
  c->len = len;
  braid__list_init(&c->link);
  braid__list_init(&c->cancel_link);
  braid__list_init(&c->run_link);
  uv_mutex_lock(&w->mu);
  braid__list_push(&w->requests, &c->link);
  if (w->wready) uv_async_send(&w->wasync);
  uv_mutex_unlock(&w->mu);
  w->inflight++;
  wk_update(w);
  return braid_suspendk(L, "worker:call", sizeof c, call_start, call_cancel,
                        c, call_k);
}

/* ---- worker:close ---- */

static int close_start (braid_op_t *op, void *ud) {
  struct wk *w = (struct wk *) ud;
  *(struct wk **) braid_op_data(op) = w;
  w->close_op = op;
  return 0;
}

static void close_cancel (braid_op_t *op) {
  struct wk *w = *(struct wk **) braid_op_data(op);
  if (w->close_op == op) w->close_op = NULL;
}

/* worker:close(): stops the worker (its running calls are cancelled, their
** callers raise kind "closed") and waits until its thread has ended.
** Harmless when closed already. */
static int l_worker_close (lua_State *L) {
  struct wk *w = wk_check(L, "worker:close");
  wk_stop(w);
  if (w->joined || w->close_op) return 0;
  return braid_suspend_soft(L, "worker:close", sizeof w, close_start,
                            close_cancel, w);
}

static int l_worker_gc (lua_State *L) {
  struct wk **box = (struct wk **) lua_touserdata(L, 1);
  struct wk *w = *box;
  if (w == NULL) return 0;
  *box = NULL;
  if (!w->joined) wk_stop(w);
  wk_unref(w);
  return 0;
}

static int l_worker_tostring (lua_State *L) {
  struct wk *w = *(struct wk **) lua_touserdata(L, 1);
  lua_pushfstring(L, "braid.Worker (%s)", w == NULL || w->joined ? "closed"
                  : w->closing ? "closing" : "running");
  return 1;
}

/* ---- braid.worker ---- */

static const char *const worker_options[] = {
  "max_message", "max_depth", "memory_limit", NULL
};

/* A module name (letters, digits, _ . -), a file path (has a / or ends in
** .lua), else the chunk itself. */
static int wk_source_kind (const char *s, size_t n) {
  size_t i;
  int path = 0;
  if (n == 0) return SRC_CHUNK;
  for (i = 0; i < n; i++) {
    unsigned char ch = (unsigned char) s[i];
    if (ch == '/') path = 1;
    else if (!(ch == '_' || ch == '.' || ch == '-' ||
               (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
               (ch >= 'A' && ch <= 'Z')))
      return SRC_CHUNK;
  }
  if (path || (n > 4 && strcmp(s + n - 4, ".lua") == 0)) return SRC_FILE;
  return SRC_MODULE;
}

/* package.path or cpath of L, copied, or NULL. */
static char *wk_package_field (lua_State *L, const char *field) {
  char *d = NULL;
  int top = lua_gettop(L);
  if (lua_getglobal(L, "package") == LUA_TTABLE &&
      lua_getfield(L, -1, field) == LUA_TSTRING)
    d = wk_strdup(lua_tostring(L, -1));
  lua_settop(L, top);
  return d;
}

/* Starts w's thread with every signal blocked in it: signals are the main
** thread's (interrupt.c), never a worker's. */
static int wk_thread_start (struct wk *w) {
  sigset_t all, old;
  int rc;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = uv_thread_create(&w->thread, wk_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc;
}

/* braid.worker(source, [opts]) -> worker: starts an OS thread running its
** own braid engine (its own Lua state and loop) that loads source (a
** module name, a file path, or a chunk) and serves calls to the functions
** of the table it returns. The worker belongs to the scope it was made in
** and is stopped when that ends. opts: max_message (bytes one message may
** take, default 64 MiB), max_depth (table nesting, default and at most
** 100), memory_limit (bytes for the worker's state; default none). */
static int l_worker_new (lua_State *L) {
  struct wk *w, **box;
  const char *src;
  size_t n, mem;
  double depth;
  int rc;
  unsigned mods;
  braid_check_task(L, "braid.worker");
  braid__check_type(L, 1, LUA_TSTRING, "braid.worker");
  braid__check_options(L, 2, "braid.worker", worker_options);
  lua_settop(L, 2);
  src = lua_tolstring(L, 1, &n);
  depth = braid__opt_number(L, 2, "max_depth", BRAID_XCOPY_DEPTH,
                            "braid.worker");
  mem = braid__opt_limit(L, 2, "memory_limit", 0, "braid.worker");
  box = (struct wk **) lua_newuserdatauv(L, sizeof *box, 0);   /* 3 */
  *box = NULL;
  luaL_setmetatable(L, WORKER_MT);
  w = (struct wk *) braid__calloc(1, sizeof *w);
  if (w == NULL)
    return braid_error(L, "memory", NULL, "braid.worker: not enough memory");
  if ((rc = uv_mutex_init(&w->mu)) != 0) {
    free(w);
    braid__error_uv(L, rc, "braid.worker");
  }
  w->orefs = 1;
  *box = w;   /* from here the userdata's __gc frees it */
  w->fns_ref = LUA_NOREF;
  w->joined = 1;   /* until the thread runs: nothing to join or close */
  w->closing = 1;
  w->lim.max_depth = depth > BRAID_XCOPY_DEPTH ? BRAID_XCOPY_DEPTH
                                                : (int) depth;
  w->lim.max_bytes = braid__opt_limit(L, 2, "max_message", BRAID_XCOPY_BYTES,
                                      "braid.worker");
  w->res.close = wk_res_close;
  w->skind = wk_source_kind(src, n);
  if (strlen(src) != n || (w->source = wk_strdup(src)) == NULL)
    return braid_error(L, "memory", NULL, "braid.worker: not enough memory");
  w->path = wk_package_field(L, "path");
  w->cpath = wk_package_field(L, "cpath");
  mods = braid__engine_modules(L);
  w->eopts.modules = mods;
  w->eopts.libs = mods == BRAID_MODS_ALL ? BRAID_LIBS_ALL : BRAID_LIBS_SAFE;
  w->eopts.memory_limit = mem == BRAID_NO_LIMIT ? 0 : mem;
  braid__list_init(&w->requests);
  braid__list_init(&w->cancels);
  braid__list_init(&w->replies);
  braid__list_init(&w->running);
  braid__list_init(&w->done);
  if ((rc = uv_async_init(braid_loop(braid_engine(L)), &w->oasync,
                          oasync_cb)) != 0)
    braid__error_uv(L, rc, "braid.worker");
  w->oasync.data = w;
  w->orefs++;
  uv_timer_init(braid_loop(braid_engine(L)), &w->otimer);
  w->otimer.data = w;
  w->orefs++;
  uv_unref((uv_handle_t *) &w->otimer);
  if ((rc = wk_thread_start(w)) != 0) {
    uv_close((uv_handle_t *) &w->oasync, wk_handle_closed);
    uv_close((uv_handle_t *) &w->otimer, wk_handle_closed);
    return braid__error_uv(L, rc, "braid.worker");
  }
  w->joined = w->closing = 0;
  braid_resource_add(L, &w->res);
  wk_update(w);
  return 1;
}

/* braid.cpu_count() -> n: how many threads may run at once here (libuv's
** uv_available_parallelism): the default size of a pool. */
static int l_cpu_count (lua_State *L) {
  lua_pushinteger(L, (lua_Integer) uv_available_parallelism());
  return 1;
}

void braid__open_worker (lua_State *L) {
  static const luaL_Reg meta[] = {
    {"__gc", l_worker_gc},
    {"__close", l_worker_close},
    {"__tostring", l_worker_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg methods[] = {
    {"call", l_worker_call},
    {"close", l_worker_close},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"worker", l_worker_new},
    {"cpu_count", l_cpu_count},
    {NULL, NULL}
  };
  braid__class(L, WORKER_MT, meta, methods, NULL);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
