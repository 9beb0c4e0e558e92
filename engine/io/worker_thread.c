/*
** worker_thread.c: the worker's side of braid.worker, on its own thread:
** an embedded engine (braid_new) on a loop of its own, the chunk loaded
** outside tasks, each call a task of that engine, its reply made when the
** task has ended (its children too), the stop, and the engine and loop
** closed before the thread says it exited. Ownership and locking:
** io/worker.c's opening comment.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "io/worker.h"

/* The worker's loop turns once more (wsig_cb), from its own thread. */
static void wk_wake_self (struct braid_worker *w) {
  int wake;
  uv_mutex_lock(&w->mu);
  wake = braid__wsig_arm(&w->wsig);
  uv_mutex_unlock(&w->mu);
  if (wake) braid__wsig_wake(&w->wsig);
}

/* Hands c back to the owner: the worker never touches it again. A cancel
** of it still queued goes with it. */
static void wk_reply (struct braid_worker *w, struct braid_wcall *c) {
  int wake;
  uv_mutex_lock(&w->mu);
  braid__list_remove(&c->run_link);
  if (c->cancel_link.next != &c->cancel_link) {
    braid__list_remove(&c->cancel_link);
    w->unacked--;
  }
  c->L = NULL;
  c->replied = 1;
  braid__list_push(&w->replies, &c->link);
  wake = braid__wsig_arm(&w->osig);
  uv_mutex_unlock(&w->mu);
  if (wake) braid__wsig_wake(&w->osig);   /* c is the owner's already */
}

/* Encodes the values at 1..n-1 (the last is the call) as the reply:
** status 1 the results, else the error and its traceback. */
static int wk_encode_p (lua_State *L) {
  struct braid_wcall *c = (struct braid_wcall *) lua_touserdata(L, -1);
  int n = lua_gettop(L) - 1;
  lua_pop(L, 1);
  if (lua_toboolean(L, 1)) {
    c->buf = braid__xcopy_encode(L, 2, n - 1, "results",
                                 "back from a worker", &c->w->lim,
                                 "worker:call", &c->len);
    c->status = CALL_OK;
    return 0;
  }
  lua_settop(L, 2);
  if (c->tb && !braid_error_kind(L, 2)) lua_pushstring(L, c->tb);
  else lua_pushnil(L);
  c->buf = braid__xcopy_encode(L, 2, 2, "error", "back from a worker",
                               &c->w->lim, "worker:call", &c->len);
  c->status = CALL_ERROR;
  return 0;
}

#define WK_ERROR_TEXT 400   /* what a replaced error keeps of its text */

/* The reply could not be encoded (a function among the results or inside
** the error, a cap): the encode's error (1) becomes the reply, its message
** naming the worker function and, when it was an error (3, else nil) that
** could not cross, that error's text (its __tostring bounded, as outside
** tasks, the text cut), with the worker's traceback. */
static int wk_encode_fail_p (lua_State *L) {
  struct braid_wcall *c = (struct braid_wcall *) lua_touserdata(L, 2);
  const char *msg;
  lua_settop(L, 3);
  if (braid_error_kind(L, 1) == NULL) {   /* Lua's: make it braid's */
    const char *s = lua_tostring(L, 1);
    braid_pusherror(L, s && strcmp(s, "not enough memory") == 0 ? "memory"
                    : "worker", NULL, "%s", braid__tostring(L, 1));
    lua_replace(L, 1);
    lua_settop(L, 3);
  }
  lua_pushliteral(L, "message");
  lua_rawget(L, 1);
  msg = lua_tostring(L, -1);
  if (msg == NULL) msg = "a reply that cannot cross back from a worker";
  if (strncmp(msg, "worker:call: ", 13) == 0) msg += 13;   /* said below */
  lua_pushliteral(L, "message");
  lua_pushfstring(L, "worker:call '%s': %s", c->fname, msg);
  if (!lua_isnil(L, 3)) {   /* 4 msg, 5 "message", 6 the new one */
    size_t len;
    const char *text = braid__tostring(L, 3);   /* 7 */
    luaL_tolstring(L, 7, &len);   /* a string already: no metamethod */
    lua_pushfstring(L, " (the worker's error: %s%s)",
                    len > WK_ERROR_TEXT
                      ? lua_pushlstring(L, text, WK_ERROR_TEXT) : text,
                    len > WK_ERROR_TEXT ? "..." : "");
    lua_copy(L, -1, 7);
    lua_settop(L, 7);
    lua_concat(L, 2);
  } else {   /* the results: where the function that returned them is */
    lua_Debug ar;
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->w->fns_ref);   /* 7 */
    lua_pushstring(L, c->fname);
    if (lua_rawget(L, 7) == LUA_TFUNCTION && (lua_getinfo(L, ">S", &ar),
                                              ar.linedefined > 0)) {
      lua_pushfstring(L, " (returned by the function defined at %s:%d)",
                      ar.short_src, ar.linedefined);
      lua_copy(L, -1, 7);
      lua_settop(L, 7);
      lua_concat(L, 2);
    } else lua_settop(L, 6);
  }
  lua_rawset(L, 1);
  lua_settop(L, 3);
  if (c->tb) lua_pushstring(L, c->tb);   /* the worker's traceback */
  else if (lua_istable(L, 3)) {   /* a braid error's own */
    lua_pushliteral(L, "traceback");
    if (lua_rawget(L, 3) != LUA_TSTRING) lua_pushnil(L);
  } else lua_pushnil(L);
  if (!lua_isnil(L, 4)) {
    lua_pushliteral(L, "traceback");
    lua_insert(L, 4);
    lua_rawset(L, 1);
  }
  lua_settop(L, 1);
  lua_pushboolean(L, 0);
  lua_insert(L, 1);
  lua_pushlightuserdata(L, c);
  return wk_encode_p(L);   /* the braid error: c->tb is not added again */
}

/* The worker had no memory for the copy of the arguments (c, their size):
** the error says so, as the other side's decode does. */
static int wk_args_nomem_p (lua_State *L) {
  struct braid_wcall *c = (struct braid_wcall *) lua_touserdata(L, 1);
  braid_pusherror(L, "memory", NULL, "worker:call '%s': not enough memory "
                  "in the worker for a message of %I bytes to a worker (its "
                  "copy counts in the worker's memory limit)", c->fname,
                  lua_tointeger(L, 2));
  return 1;
}

/* The call's task ended: make its reply and hand the call back. Outside
** tasks, on the worker's state. */
static void wk_finish (struct braid_worker *w, struct braid_wcall *c) {
  lua_State *L = braid_state(w->WE);
  int top = lua_gettop(L), n;
  size_t len = c->len;   /* of the arguments, when their copy failed */
  braid__xcopy_free(c->buf, c->len);   /* results a failed child made worthless */
  c->buf = NULL;
  n = braid_task_result(w->WE, c->task);
  c->status = CALL_NOMEM;
  if (n > 1 && c->copying == WK_COPY_ARGS && !lua_toboolean(L, top + 1) &&
      lua_type(L, top + 2) == LUA_TSTRING &&
      strcmp(lua_tostring(L, top + 2), "not enough memory") == 0) {
    lua_pushcfunction(L, wk_args_nomem_p);   /* Lua's: made braid's */
    lua_pushlightuserdata(L, c);
    lua_pushinteger(L, (lua_Integer) len);
    if (lua_pcall(L, 2, 1, 0) == LUA_OK) lua_replace(L, top + 2);
    else lua_pop(L, 1);
  }
  if (n > 0 && c->copying == WK_COPY_RESULTS && !lua_toboolean(L, top + 1)) {
    /* the error is the results' own: they could not cross */
    lua_pushcfunction(L, wk_encode_fail_p);
    lua_pushvalue(L, top + 2);
    lua_pushlightuserdata(L, c);
    lua_pushnil(L);
    if (lua_pcall(L, 3, 0, 0) != LUA_OK) c->status = CALL_NOMEM;
  } else if (n > 0) {
    int rc, ok = lua_toboolean(L, top + 1);
    lua_pushvalue(L, ok ? top + 1 : top + 2);
    lua_insert(L, top + 1);   /* the error, kept for a failed encode */
    lua_pushcfunction(L, wk_encode_p);
    lua_insert(L, top + 2);
    lua_pushlightuserdata(L, c);
    rc = lua_pcall(L, n + 1, 0, 0);
    if (rc != LUA_OK && rc != LUA_ERRMEM) {
      lua_pushcfunction(L, wk_encode_fail_p);
      lua_insert(L, -2);
      lua_pushlightuserdata(L, c);
      if (ok) lua_pushnil(L);   /* results: no error */
      else lua_pushvalue(L, top + 1);
      if (lua_pcall(L, 3, 0, 0) != LUA_OK) c->status = CALL_NOMEM;
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
  struct braid_wcall *c = container_of(wa, struct braid_wcall, watch);
  struct braid_worker *w = c->w;
  c->ended = 1;   /* a stop or cancel taken before its reply arms nothing */
  braid_timer_stop(w->WE, &c->grace);
  if (c->L) {   /* only this thread writes it: reading it here is safe */
    uv_mutex_lock(&w->mu);
    c->L = NULL;   /* its coroutine may be reused from now on */
    uv_mutex_unlock(&w->mu);
  }
  if (braid_task_status(t) == BRAID_OK && c->buf) {   /* the common case */
    braid_task_release(w->WE, t);   /* no Lua runs: a field set to nil */
    c->task = NULL;
    w->ncalls--;
    wk_reply(w, c);
    if (w->wstopping && w->ncalls == 0) wk_wake_self(w);
    return;
  }
  braid__list_push(&w->done, &c->link);   /* an error to encode, on L */
  wk_wake_self(w);
}

/* The call's message handler: keeps the traceback of the error. */
static int wk_msgh (lua_State *L) {
  struct braid_wcall *c = (struct braid_wcall *) lua_touserdata(L,
                                                       lua_upvalueindex(1));
  if (c->tb == NULL && !braid_error_kind(L, 1)) {
    luaL_traceback(L, L, NULL, 1);
    c->tb = braid__strdup(lua_tostring(L, -1));
  }
  lua_settop(L, 1);
  return 1;
}

/* The body returned: its results are encoded here, in the task, so that
** the reply can leave as soon as the task ends (wk_task_done) without a
** turn of the worker's loop; a value that cannot cross fails the task. */
static int wk_body_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_wcall *c = (struct braid_wcall *) ctx;
  int n;
  uv_mutex_lock(&c->w->mu);
  c->L = NULL;
  uv_mutex_unlock(&c->w->mu);
  if (status != LUA_OK && status != LUA_YIELD) return lua_error(L);
  n = lua_gettop(L) - 1;
  c->copying = WK_COPY_RESULTS;   /* an error raised here is theirs */
  c->buf = braid__xcopy_encode(L, 2, n, "results", "back from a worker",
                               &c->w->lim, "worker:call", &c->len);
  c->copying = WK_COPY_NONE;
  c->status = CALL_OK;
  return 0;
}

/* The call's task: fns[fname](args...) under a handler that keeps the
** traceback. Its thread is registered for the owner's hooks meanwhile.
** A task cancelled before its first resume (behind a call that spun, or
** by the stop) raises here: its cancel was taken, so the owner hooks it
** no more, and a body that spins would run on until the grace period. */
static int wk_body (lua_State *L) {
  struct braid_wcall *c = (struct braid_wcall *) lua_touserdata(L, 1);
  struct braid_worker *w = c->w;
  int nargs;
  braid_check_task(L, "worker:call");
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
  c->copying = WK_COPY_ARGS;   /* out of memory here: braid's (wk_finish) */
  nargs = braid__xcopy_decode(L, c->buf, c->len);
  c->copying = WK_COPY_NONE;
  braid__xcopy_free(c->buf, c->len);
  c->buf = NULL;
  return wk_body_k(L, lua_pcallk(L, nargs, LUA_MULTRET, 1, (lua_KContext) c,
                                 wk_body_k), (lua_KContext) c);
}

/* Names a call's task for reports (an abandonment, braid.dump): "worker:call
** 'fname'", spawned at the worker function's definition, rather than its
** C body's "[C]:-1, spawned at ?". Under lua_pcall, outside tasks. */
static int wk_name_p (lua_State *L) {
  struct braid_wcall *c = (struct braid_wcall *) lua_touserdata(L, 1);
  lua_Debug ar;
  braid__task_push(L, c->task);   /* 2 */
  lua_pushfstring(L, "worker:call '%s'", c->fname);
  lua_setfield(L, 2, "name");
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->w->fns_ref);
  if (lua_getfield(L, -1, c->fname) == LUA_TFUNCTION) {
    lua_pushvalue(L, -1);
    lua_getinfo(L, ">S", &ar);
    braid__task_set_site(L, c->task, -1,
                         ar.linedefined > 0 ? ar.linedefined : 0);
  }
  return 0;
}

/* A call arrives: start its task, or answer at once. */
static void wk_begin (struct braid_worker *w, struct braid_wcall *c) {
  lua_State *L = braid_state(w->WE);
  if (w->load_err || w->fns_ref == LUA_NOREF || w->wstopping) {
    braid__xcopy_free(c->buf, c->len);
    c->buf = NULL;
    c->status = CALL_CLOSED;
    if (w->load_err && (c->buf = braid__xcopy_dup(w->load_err, w->load_len))) {
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
  lua_pushcfunction(L, wk_name_p);
  lua_pushlightuserdata(L, c);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) lua_pop(L, 1);   /* a name is a nicety */
  w->ncalls++;
}

static int wk_abandon_p (lua_State *L) {
  struct braid_wcall *c = (struct braid_wcall *) lua_touserdata(L, 1);
  if (c->task) braid__task_abandon(c->task);
  return 0;
}

/* A cancelled call's task outlived the worker's grace period (a shielded
** wait in its cleanup): it ends now, as a scope's grace ends its members.
** The task is the engine's own, not a member of a cancelled scope, so
** nothing else would bound it. */
static void wk_grace_cb (braid_timer_t *tm) {
  struct braid_wcall *c = container_of(tm, struct braid_wcall, grace);
  if (c->task) braid__engine_call(c->w->WE, wk_abandon_p, c);
}

/* Cancels a started call's task, with the worker's grace period. */
static void wk_cancel_task (struct braid_worker *w, struct braid_wcall *c) {
  if (c->ended) return;   /* waits for its reply in w->done: a grace timer
                          ** armed now would outlive the call */
  braid_cancel(w->WE, c->task);
  if (w->grace_ns != BRAID_NEVER && c->grace.idx == 0)
    braid_timer_start(w->WE, &c->grace, w->grace_ns, wk_grace_cb);
}

/* Takes the queued cancels (of calls already started) and the stop. */
static void wk_take_cancels (struct braid_worker *w) {
  struct braid_list *n, *next;
  int stop = 0;
  uv_mutex_lock(&w->mu);
  for (n = w->cancels.next; n != &w->cancels; n = next) {
    struct braid_wcall *c = container_of(n, struct braid_wcall, cancel_link);
    next = n->next;
    if (c->task == NULL) continue;   /* not started yet: its turn comes */
    braid__list_remove(n);
    w->unacked--;
    uv_mutex_unlock(&w->mu);
    wk_cancel_task(w, c);
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
      struct braid_wcall *c = container_of(n, struct braid_wcall, run_link);
      if (c->task) wk_cancel_task(w, c);
    }
}

/* Starts the calls that came, in order, then takes their cancels and
** the stop, then answers the calls that ended with an error. */
static void wk_serve (struct braid_worker *w, int clear) {
  struct braid_list got;
  int cancels;
  braid__list_init(&got);
  uv_mutex_lock(&w->mu);   /* one turn takes everything queued */
  if (clear) w->wsig.pending = 0;
  while (!braid__list_empty(&w->requests)) {
    struct braid_list *n = w->requests.next;
    braid__list_remove(n);
    braid__list_push(&got, n);
  }
  cancels = !braid__list_empty(&w->cancels) || (w->stop && !w->wstopping);
  uv_mutex_unlock(&w->mu);
  while (!braid__list_empty(&got)) {   /* the calls, in order */
    struct braid_wcall *c = container_of(got.next, struct braid_wcall, link);
    braid__list_remove(&c->link);
    wk_begin(w, c);
  }
  if (cancels) wk_take_cancels(w);   /* then their cancels, and the stop */
  while (!braid__list_empty(&w->done)) {
    struct braid_wcall *c = container_of(w->done.next, struct braid_wcall, link);
    braid__list_remove(&c->link);
    wk_finish(w, c);
  }
  if (w->wstopping && w->ncalls == 0 && !w->wclosed) {
    w->wclosed = 1;   /* nothing runs: the loop may end */
    uv_close((uv_handle_t *) &w->wsig.poll, NULL);   /* the fd is the owner's */
  }
}

static void wsig_cb (uv_poll_t *h, int status, int events) {
  struct braid_worker *w = (struct braid_worker *) h->data;
  (void) status;
  (void) events;
  braid__wsig_drain(&w->wsig);
  wk_serve(w, 1);
}

/* A chunk closed while it loads is bounded as a cancelled call's task
** is: the first poll raises the close, which the chunk may catch; from
** the grace period on every instruction raises, so pcall cannot keep it
** running and the load unwinds (the thread is joined at the close and at
** the end of braid.run: a load that ran on would hang them). The hooks
** are set on the worker's own thread; the owner keeps hooking it with
** polls while the stop is unacknowledged (l_worker_poll), each of which
** arms them again. w is found in the registry: a hook has no upvalue. */
static const char boot_key = 'b';

#define BOOT_WATCH 10000   /* instructions between looks at the clock */

static struct braid_worker *wk_from (lua_State *L) {
  struct braid_worker *w;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &boot_key);
  w = (struct braid_worker *) lua_touserdata(L, -1);
  lua_pop(L, 1);
  return w;
}

/* A hook left on a coroutine of the chunk's once the load has ended
** (only this thread changes bootL): it has nothing to watch. */
static int boot_over (lua_State *L) {
  struct braid_worker *w = wk_from(L);
  if (w && w->bootL) return 0;
  lua_sethook(L, NULL, 0, 0);
  return 1;
}

static void boot_stop_hook (lua_State *L, lua_Debug *ar) {
  (void) ar;
  if (boot_over(L)) return;
  lua_sethook(L, boot_stop_hook, LUA_MASKCOUNT, 1);
  braid_error(L, "closed", NULL, "braid.worker: closed while its chunk was "
              "loading");
}

static void boot_arm (lua_State *L, struct braid_worker *w);

static void boot_watch_hook (lua_State *L, lua_Debug *ar) {
  (void) ar;
  if (boot_over(L)) return;
  boot_arm(L, wk_from(L));
  if (lua_gethook(L) == boot_stop_hook) boot_stop_hook(L, NULL);
}

/* L (the thread running the load) watches the grace period of a load
** that was closed; past it, L and the state's thread only unwind. */
static void boot_arm (lua_State *L, struct braid_worker *w) {
  if (w->grace_ns == BRAID_NEVER) return;
  if (w->boot_end == 0) w->boot_end = uv_hrtime() + w->grace_ns;
  if (uv_hrtime() < w->boot_end) {
    lua_sethook(L, boot_watch_hook, LUA_MASKCOUNT, BOOT_WATCH);
    return;
  }
  if (!w->boot_stopped) {
    w->boot_stopped = 1;
    fprintf(stderr, "braid: worker abandoned its chunk's load: still running "
            "Lua code %g s after the worker was closed\n",
            (double) w->grace_ns / 1e9);
  }
  lua_sethook(L, boot_stop_hook, LUA_MASKCOUNT, 1);
  if (L != w->bootL) lua_sethook(w->bootL, boot_stop_hook, LUA_MASKCOUNT, 1);
}

/* The state's poll function (braid__hook_poll_set), run from a hook the
** owner set: a cancel or the stop reaches code that spins. While the
** chunk loads, the stop fails the load, at every poll, and is left
** unacknowledged, so that the owner keeps hooking the load (a coroutine
** of the chunk's included) until it has ended: wk_serve takes it then. */
static int l_worker_poll (lua_State *L) {
  struct braid_worker *w = (struct braid_worker *) lua_touserdata(L, lua_upvalueindex(1));
  int loading, stop;
  uv_mutex_lock(&w->mu);
  loading = w->bootL != NULL;   /* only this thread changes it */
  stop = w->stop;
  uv_mutex_unlock(&w->mu);
  if (!loading) {
    wk_take_cancels(w);
    return 0;
  }
  if (!stop) return 0;   /* no call has started: no cancel to take */
  boot_arm(L, w);
  return braid_error(L, "closed", NULL, "braid.worker: closed while its "
                     "chunk was loading");
}

/* os.exit in a worker would end the whole process from a thread that the
** owner's engine does not wait for (its children and cleanup skipped): it
** raises instead, and the call that ran it fails with that error. */
static int l_worker_exit (lua_State *L) {
  return braid_usageerror(L, "os.exit: not available in a worker (it would "
                          "end the whole process); return, or raise an "
                          "error, to end the call");
}

/* Loads the worker's chunk (a module, a file or the chunk itself) and
** keeps the table of functions it returns. On the worker's state, under
** lua_pcall, outside tasks. */
static int wk_boot_p (lua_State *L) {
  struct braid_worker *w = (struct braid_worker *) lua_touserdata(L, 1);
  int rc;
  lua_pushlightuserdata(L, w);
  lua_pushcclosure(L, l_worker_poll, 1);
  braid__hook_poll_set(L);
  lua_pushlightuserdata(L, w);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &boot_key);
  if (lua_getglobal(L, "package") == LUA_TTABLE) {
    if (w->path) lua_pushstring(L, w->path), lua_setfield(L, -2, "path");
    if (w->cpath) lua_pushstring(L, w->cpath), lua_setfield(L, -2, "cpath");
  }
  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_pushcfunction(L, l_worker_exit);
    lua_setfield(L, -2, "exit");
  }
  lua_settop(L, 1);
  if (w->setup) w->setup(L, w->setup_ud);   /* the application's functions */
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
      rc = luaL_loadbufferx(L, w->source, w->source_len, "=worker", "t");
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
  struct braid_worker *w = (struct braid_worker *) lua_touserdata(L, lua_upvalueindex(1));
  if (w->boot_tb == NULL && !braid_error_kind(L, 1)) {
    luaL_traceback(L, L, NULL, 1);
    w->boot_tb = braid__strdup(lua_tostring(L, -1));
  }
  lua_settop(L, 1);
  return 1;
}

/* The load failed with the error at 2 (traceback at 3): keep it encoded,
** the reply of every call. */
static int wk_keep_load_error_p (lua_State *L) {
  struct braid_worker *w = (struct braid_worker *) lua_touserdata(L, 1);
  w->load_err = braid__xcopy_encode(L, 2, 2, "error", "back from a worker",
                                    &w->lim, "braid.worker", &w->load_len);
  return 0;
}

static void wk_boot (struct braid_worker *w) {
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

void braid__wk_main (void *arg) {
  struct braid_worker *w = (struct braid_worker *) arg;
  uv_loop_t loop;
  int wake, ok = braid__loop_init(&loop) == 0;
  if (ok && (w->WE = braid_new(&loop, &w->eopts)) == NULL) {
    uv_loop_close(&loop);
    ok = 0;
  }
  if (ok) {
    braid__engine_set_grace(w->WE, w->grace_ns);
    braid__engine_publish(w->WE, &w->pub_co, &w->pub_busy);
  }
  if (ok && braid__wsig_start(&loop, &w->wsig, wsig_cb) != 0) {
    braid_close(w->WE);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    ok = 0;
  }
  if (ok) {
    w->wsig.poll.data = w;
    wk_boot(w);
    wk_serve(w, 0);   /* what came while it loaded */
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
  wake = braid__wsig_arm(&w->osig);
  uv_mutex_unlock(&w->mu);
  if (wake) braid__wsig_wake(&w->osig);   /* the owner joins once it returns */
}


