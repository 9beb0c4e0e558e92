/*
** worker.c: braid.worker: an OS thread with its own lua_State and loop,
** running braid (an embedded engine, braid_new), that runs the functions
** its chunk returned as tasks, for calls made by tasks of the owner.
** Values cross by copy (io/xcopy.c).
**
** Who owns what:
** - struct braid_worker is shared. The fields marked "mu" are read and written under
**   w->mu by both threads; the owner's are touched by the owner's loop
**   thread only, the worker's by the worker thread only; the options are
**   written before the thread starts and only read after.
** - A call (struct braid_wcall) is the owner's until it is queued in
**   w->requests, the worker's from then until it is queued in w->replies
**   (replied = 1, under mu), the owner's again afterwards: the owner frees
**   it, in call_k when a task took the reply, else when it arrives for a
**   call whose task stopped waiting. A cancel is a second node of the call
**   (cancel_link) queued in w->requests; the worker unlinks it when it
**   replies, so no cancel outlives its call.
** - Each side has one wake-up (struct braid_wsig, an eventfd polled on its
**   own loop; both eventfds the owner's, closed after the join), which
**   the other side signals after queuing: the owner's
**   (osig) for replies and for the worker's exit, the worker's (wsig) for
**   calls, cancels and stop. The owner's keeps the owner's loop alive only while a
**   call is in flight or the worker is stopping, so an idle worker hides
**   no deadlock and braid.run cannot return before its workers exited.
** - A task that spins in Lua never returns to the worker's loop. While a
**   cancel or stop is unacknowledged the owner hooks the threads of the
**   worker's running calls (braid__hook_poll: lua_sethook, which Lua
**   allows from elsewhere, as Ctrl-C does) every OTIMER_MS, so the worker
**   polls its queue at its next instruction; w->running (mu) lists the
**   calls whose thread may run, and a thread leaves it before its task's
**   coroutine can be reused or collected. A task a call spawned is none
**   of those: the worker's engine publishes whichever coroutine runs Lua
**   code (w->pub_co, braid__engine_publish), which the owner hooks too,
**   flagging w->pub_busy meanwhile.
** - The worker thread ends after its engine is closed and its loop closed
**   (uv_loop_close returns 0); the owner joins it (uv_thread_join) when it
**   says it exited, and closes its own handles; the last of the userdata
**   and the handles frees w.
*/
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "io/worker.h"
#include "io/xchan.h"

#define WORKER_MT "braid.Worker"
#define OTIMER_MS 20   /* how often a stuck worker is asked again */

void braid__wk_call_free (struct braid_wcall *c) {
  free(c->fname);
  braid__xcopy_free(c->buf, c->len);
  free(c->tb);
  free(c);
}

/* Under mu: every thread of the worker that may be running Lua polls. */
void braid__wk_hook_all (struct braid_worker *w) {
  struct braid_list *n;
  lua_State *L;
  for (n = w->running.next; n != &w->running; n = n->next) {
    struct braid_wcall *c = container_of(n, struct braid_wcall, run_link);
    if (c->L) braid__hook_poll(c->L);
  }
  if (w->bootL) braid__hook_poll(w->bootL);
  atomic_store(&w->pub_busy, 1);   /* a task a call spawned; mu: one reader */
  if ((L = atomic_load(&w->pub_co)) != NULL) braid__hook_poll(L);
  atomic_store_explicit(&w->pub_busy, 0, memory_order_release);
}


static void wsig_close_fds (struct braid_worker *w) {
  if (w->osig.fd >= 0) close(w->osig.fd);
  if (w->wsig.fd >= 0) close(w->wsig.fd);
  w->osig.fd = w->wsig.fd = -1;
}

static void wk_unref (struct braid_worker *w) {
  if (--w->orefs > 0) return;
  braid__charge_set(&w->charge, NULL, 0);
  uv_mutex_destroy(&w->mu);
  free(w->source);
  free(w->path);
  free(w->cpath);
  braid__xcopy_free(w->load_err, w->load_len);
  free(w->boot_tb);
  free(w);
}

static void otimer_cb (uv_timer_t *h);

static void wk_handle_closed (uv_handle_t *h) {
  wk_unref((struct braid_worker *) h->data);
}

/* The owner's loop stays alive while calls wait or the worker stops; the
** timer re-asks a worker that has not seen its cancels or stop to poll. */
static void wk_update (struct braid_worker *w) {
  unsigned unacked;
  if (w->joined) return;
  if (w->inflight || w->closing) uv_ref((uv_handle_t *) &w->osig.poll);
  else uv_unref((uv_handle_t *) &w->osig.poll);
  unacked = atomic_load(&w->unacked);
  if (unacked && !uv_is_active((uv_handle_t *) &w->otimer))
    uv_timer_start(&w->otimer, otimer_cb, OTIMER_MS, OTIMER_MS);
  else if (!unacked)
    uv_timer_stop(&w->otimer);
}

static void otimer_cb (uv_timer_t *h) {
  struct braid_worker *w = (struct braid_worker *) h->data;
  uv_mutex_lock(&w->mu);
  if (w->unacked) braid__wk_hook_all(w);
  uv_mutex_unlock(&w->mu);
  wk_update(w);
}

/* Hands a reply to the task waiting for it, or frees a call nobody waits
** for any more. */
static void wk_deliver (struct braid_worker *w, struct braid_wcall *c) {
  braid_op_t *op = c->op;
  w->inflight--;
  if (op == NULL) {
    braid__wk_call_free(c);
    return;
  }
  c->delivered = 1;
  braid_resume(op, 0);
}

/* A task waiting in worker:close, in w->close_waits. */
struct close_wait {
  struct braid_list link;
  braid_op_t *op;
};

/* The thread is joined: every close waiting returns. */
static void wk_close_wake (struct braid_worker *w) {
  while (!braid__list_empty(&w->close_waits)) {
    struct close_wait *cw = container_of(w->close_waits.next,
                                         struct close_wait, link);
    braid__list_remove(&cw->link);
    braid_resume(cw->op, 0);
  }
}

static void osig_cb (uv_poll_t *h, int status, int events) {
  struct braid_worker *w = (struct braid_worker *) h->data;
  struct braid_list got;
  int exited;
  (void) status;
  (void) events;
  braid__wsig_drain(&w->osig);
  braid__list_init(&got);
  uv_mutex_lock(&w->mu);
  w->osig.pending = 0;
  while (!braid__list_empty(&w->replies)) {
    struct braid_list *n = w->replies.next;
    braid__list_remove(n);
    braid__list_push(&got, n);
  }
  exited = w->exited;
  uv_mutex_unlock(&w->mu);
  while (!braid__list_empty(&got)) {
    struct braid_wcall *c = container_of(got.next, struct braid_wcall, link);
    braid__list_remove(&c->link);
    wk_deliver(w, c);
  }
  if (exited && !w->joined) {
    uv_thread_join(&w->thread);   /* it has returned, or is returning */
    w->joined = 1;
    braid__charge_set(&w->charge, NULL, 0);   /* its engine is closed */
    w->closing = 1;
    braid_resource_remove(&w->res);
    /* a worker that could not start answered nothing */
    while (!braid__list_empty(&w->requests)) {
      struct braid_wcall *c = container_of(w->requests.next, struct braid_wcall,
                                       link);
      braid__list_remove(&c->link);
      braid__list_remove(&c->cancel_link);
      c->status = CALL_CLOSED;
      wk_deliver(w, c);
    }
    wk_close_wake(w);
    uv_close((uv_handle_t *) &w->osig.poll, wk_handle_closed);
    uv_close((uv_handle_t *) &w->otimer, wk_handle_closed);
    wsig_close_fds(w);   /* libuv allows it once the poll is closing */
  }
  wk_update(w);
}

/* Asks the worker to stop: its calls are cancelled, it closes its engine
** and loop, and says it exited. Runs no Lua (a scope's resource hook). */
static void wk_stop (struct braid_worker *w) {
  int wake;
  if (w->closing) return;
  w->closing = 1;
  braid_resource_remove(&w->res);
  uv_mutex_lock(&w->mu);
  w->stop = 1;
  w->unacked++;
  braid__wk_hook_all(w);
  wake = braid__wsig_arm(&w->wsig);
  uv_mutex_unlock(&w->mu);
  if (wake) braid__wsig_wake(&w->wsig);
  wk_update(w);
}

static void wk_res_close (braid_resource_t *r) {
  wk_stop(container_of(r, struct braid_worker, res));
}

static struct braid_worker *wk_check (lua_State *L, const char *fname) {
  struct braid_worker **box = (struct braid_worker **) braid__check_object(L, 1, WORKER_MT,
                                                      fname);
  if (*box == NULL)
    braid_error(L, "closed", NULL, "%s: the worker is closed", fname);
  return *box;
}

/* ---- worker:call ---- */

static int call_start (braid_op_t *op, void *ud) {
  struct braid_wcall *c = (struct braid_wcall *) ud;
  *(struct braid_wcall **) braid_op_data(op) = c;
  c->op = op;
  return 0;
}

/* The waiting task was cancelled (or abandoned): the worker is asked to
** cancel the call's task; the reply, when it comes, is freed. */
static void call_cancel (braid_op_t *op) {
  struct braid_wcall *c = *(struct braid_wcall **) braid_op_data(op);
  struct braid_worker *w = c->w;
  int wake = 0;
  c->op = NULL;
  if (c->delivered) {   /* resumed, then abandoned before it took it */
    braid__wk_call_free(c);
    return;
  }
  uv_mutex_lock(&w->mu);
  if (!c->replied) {
    braid__list_push(&w->cancels, &c->cancel_link);
    w->unacked++;
    braid__wk_hook_all(w);
    wake = braid__wsig_arm(&w->wsig);
  }
  uv_mutex_unlock(&w->mu);
  if (wake) braid__wsig_wake(&w->wsig);
  wk_update(w);
}

/* The reply of the call (light userdata 1) as the call's results, or its
** error at the top (returns -1). Under lua_pcall: call_k frees the call
** whatever happens here. */
static int call_result_p (lua_State *L) {
  struct braid_wcall *c = (struct braid_wcall *) lua_touserdata(L, 1);
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
  struct braid_wcall *c = *(struct braid_wcall **) braid_op_data(op);
  int base = lua_gettop(L), rc;
  size_t len = c->len;
  c->op = NULL;
  lua_pushcfunction(L, call_result_p);
  lua_pushlightuserdata(L, c);
  rc = lua_pcall(L, 1, LUA_MULTRET, 0);
  braid__wk_call_free(c);
  if (rc != LUA_OK) return braid__xcopy_decode_fail(L, rc, "worker:call", len);
  return lua_gettop(L) - base;
}

/* worker:call(fname, ...) -> ...: runs the worker's function fname with
** the arguments, copied, as a task in the worker, and returns its results,
** copied. Cancelling the caller cancels that task. Errors: the worker's
** error (see docs/API.md, "Workers"); kind "usage" for a value that cannot
** cross, "limit" past max_message or max_depth, "closed" once the worker
** is closed. */
static int l_worker_call (lua_State *L) {
  struct braid_worker *w = wk_check(L, "worker:call");
  struct braid_wcall *c;
  const char *fname;
  char *buf;
  size_t len;
  int wake;
  braid__check_type(L, 2, LUA_TSTRING, "worker:call");
  fname = lua_tolstring(L, 2, &len);
  if (strlen(fname) != len)   /* it crosses as a C string */
    return braid_argerror(L, 2, "worker:call", "function name contains a "
                          "zero byte");
  braid_check_suspend(L, "worker:call");
  if (w->closing)
    return braid_error(L, "closed", NULL, "worker:call: the worker is "
                       "closed");
  buf = braid__xcopy_encode(L, 3, lua_gettop(L) - 2, "args", "to a worker",
                            &w->lim, "worker:call", &len);
  c = (struct braid_wcall *) braid__calloc(1, sizeof *c);
  if (c == NULL || (c->fname = braid__strdup(fname)) == NULL) {
    free(c);
    braid__xcopy_free(buf, len);
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
  wake = braid__wsig_arm(&w->wsig);
  uv_mutex_unlock(&w->mu);
  if (wake) braid__wsig_wake(&w->wsig);
  w->inflight++;
  wk_update(w);
  return braid_suspendk(L, "worker:call", sizeof c, call_start, call_cancel,
                        c, call_k);
}

/* ---- worker:close ---- */

static int close_start (braid_op_t *op, void *ud) {
  struct close_wait *cw = (struct close_wait *) braid_op_data(op);
  cw->op = op;
  braid__list_push(&((struct braid_worker *) ud)->close_waits, &cw->link);
  return 0;
}

static void close_cancel (braid_op_t *op) {
  braid__list_remove(&((struct close_wait *) braid_op_data(op))->link);
}

/* worker:close(): stops the worker (its running calls are cancelled, their
** callers raise kind "closed") and waits until its thread has ended; so
** does every other task closing it meanwhile. Harmless when closed
** already. */
static int l_worker_close (lua_State *L) {
  struct braid_worker *w = wk_check(L, "worker:close");
  wk_stop(w);
  if (w->joined) return 0;
  return braid_suspend_soft(L, "worker:close", sizeof(struct close_wait),
                            close_start, close_cancel, w);
}

static int l_worker_gc (lua_State *L) {
  struct braid_worker **box = (struct braid_worker **) lua_touserdata(L, 1);
  struct braid_worker *w = *box;
  if (w == NULL) return 0;
  *box = NULL;
  if (!w->joined) wk_stop(w);
  wk_unref(w);
  return 0;
}

static int l_worker_tostring (lua_State *L) {
  struct braid_worker *w = *(struct braid_worker **) lua_touserdata(L, 1);
  lua_pushfstring(L, "braid.Worker (%s)", w == NULL || w->joined ? "closed"
                  : w->closing ? "closing" : "running");
  return 1;
}

/* ---- braid.worker ---- */

static const char *const worker_options[] = {
  "max_message", "max_depth", "memory_limit", "grace", NULL
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
    d = braid__strdup(lua_tostring(L, -1));
  lua_settop(L, top);
  return d;
}

/* Starts w's thread with every signal blocked in it: signals are the main
** thread's (interrupt.c), never a worker's. But SIGPIPE, which only the
** thread's own writes raise there: its print to a stdout that has lost its
** reader ends the run as the main thread's would (io/stream.c's handler);
** any other broken pipe is EPIPE either way. */
static int wk_thread_start (struct braid_worker *w) {
  sigset_t all, old;
  int rc;
  sigfillset(&all);
  sigdelset(&all, SIGPIPE);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = uv_thread_create(&w->thread, braid__wk_main, w);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc;
}

/* A worker of an engine with a memory limit has a limit of its own (the
** maker's by default, or less), reserved from the maker's while the worker
** lives: each worker had its full limit besides, so a script held to 4 MB
** ran 100 workers of 3 MB each. An embedder whose braid_worker_config
** gives workers no limit has chosen so. 0, or UV_ENOMEM. */
static int wk_reserve (lua_State *L, struct braid_worker *w) {
  braid_options_t mine;
  braid__engine_options(braid_engine(L), &mine);
  if (mine.memory_limit == 0 || w->eopts.memory_limit == 0) return 0;
  return braid__charge_set(&w->charge, braid_engine(L),
                           w->eopts.memory_limit);
}

/* braid.worker(source, [opts]) -> worker: starts an OS thread running its
** own braid engine (its own Lua state and loop) that loads source (a
** module name, a file path, or a chunk) and serves calls to the functions
** of the table it returns. The worker belongs to the scope it was made in
** and is stopped when that ends. opts: max_message (bytes one message may
** take, default 64 MiB), max_depth (table nesting, default and at most
** 100), memory_limit (bytes for the worker's state; default none), grace
** (seconds a cancelled call's task may take to clean up, default 5). */
static int l_worker_new (lua_State *L) {
  struct braid_worker *w, **box;
  const char *src;
  size_t n, mem;
  double depth;
  uint64_t grace;
  int rc;
  braid_check_task(L, "braid.worker");
  braid__check_type(L, 1, LUA_TSTRING, "braid.worker");
  braid__check_options(L, 2, "braid.worker", worker_options);
  lua_settop(L, 2);
  src = lua_tolstring(L, 1, &n);
  /* A file is what loadfile reads: an engine whose scripts may not (no
  ** BRAID_LIB_IO) must not reach any file on disk through a worker. The
  ** argument error lets braid.pool and braid.map name their own. */
  if (wk_source_kind(src, n) == SRC_FILE &&
      !braid__engine_files(braid_engine(L)))
    return braid_argerror(L, 1, "braid.worker", "loading a file needs "
                          "BRAID_LIB_IO in this engine; pass the chunk's "
                          "source or a preloaded module's name");
  depth = braid__opt_number(L, 2, "max_depth", BRAID_XCOPY_DEPTH,
                            "braid.worker");
  mem = braid__opt_limit(L, 2, "memory_limit", 0, "braid.worker");
  grace = braid__opt_seconds(L, 2, "grace", 5000000000u, "braid.worker");
  box = (struct braid_worker **) lua_newuserdatauv(L, sizeof *box, 0);   /* 3 */
  *box = NULL;
  luaL_setmetatable(L, WORKER_MT);
  w = (struct braid_worker *) braid__calloc(1, sizeof *w);
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
  w->grace_ns = grace;
  w->skind = wk_source_kind(src, n);
  if ((w->source = (char *) braid__malloc(n + 1)) == NULL)
    return braid_error(L, "memory", NULL, "braid.worker: not enough memory");
  memcpy(w->source, src, n + 1);   /* a name or path has no zero byte */
  w->source_len = n;
  w->path = wk_package_field(L, "path");
  w->cpath = wk_package_field(L, "cpath");
  braid__wk_options(L, w);
  if (mem != 0 && mem != BRAID_NO_LIMIT &&
      (w->eopts.memory_limit == 0 || mem < w->eopts.memory_limit))
    w->eopts.memory_limit = mem;   /* a script may only lower it */
  if ((rc = wk_reserve(L, w)) != 0)
    return braid_error(L, "memory", NULL, "braid.worker: its memory_limit "
                       "of %I bytes is reserved from this engine's memory "
                       "limit, which has less left (give it a smaller "
                       "memory_limit)", (lua_Integer) w->eopts.memory_limit);
  braid__list_init(&w->requests);
  braid__list_init(&w->cancels);
  braid__list_init(&w->replies);
  braid__list_init(&w->running);
  braid__list_init(&w->done);
  braid__list_init(&w->close_waits);
  w->osig.fd = w->wsig.fd = -1;
  if ((rc = braid__wsig_open(&w->osig)) != 0 ||
      (rc = braid__wsig_open(&w->wsig)) != 0 ||
      (rc = braid__wsig_start(braid_loop(braid_engine(L)), &w->osig,
                              osig_cb)) != 0) {
    wsig_close_fds(w);
    braid__error_uv(L, rc, "braid.worker");
  }
  w->osig.poll.data = w;
  w->orefs++;
  uv_timer_init(braid_loop(braid_engine(L)), &w->otimer);
  w->otimer.data = w;
  w->orefs++;
  uv_unref((uv_handle_t *) &w->otimer);
  if ((rc = wk_thread_start(w)) != 0) {
    uv_close((uv_handle_t *) &w->osig.poll, wk_handle_closed);
    uv_close((uv_handle_t *) &w->otimer, wk_handle_closed);
    wsig_close_fds(w);
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
  braid__open_xchan(L);   /* braid.channel(n, {shared = true}) */
}
