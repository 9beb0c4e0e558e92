/*
** signal.c: braid.signal(name) -> waiter; waiter:wait(), waiter:close().
**
** A waiter is a malloc'd struct sig_waiter with its uv_signal_t embedded,
** started when the waiter is made (from then on the signal's default
** action, such as SIGTERM ending the process, is replaced by delivery to
** the waiter), and found from Lua through a box userdata.
**
** Invariants:
** - A wait is a braid_suspendk op whose data (inline in the task, so
**   waiting allocates nothing) is a struct sig_wait queued on the waiter;
**   it leaves the queue when it is handed its outcome (a signal, or the
**   closed marker) or cancelled, and only then does sig_k read it.
** - The handle is referenced exactly while some task waits on it, so a
**   waiting waiter counts as something that can wake a task (no deadlock
**   error) and an idle one never keeps the loop alive.
** - Arrivals while no task waits are counted and handed, one per call, to
**   the next wait()s. Each arrival wakes one waiting task, in FIFO order.
** - The waiter is a resource of the scope that made it: when that scope
**   ends, or on close(), __close or __gc, the handle is closed (exactly
**   once), waiting tasks are woken with a "closed" error, and the memory is
**   freed in the close callback, never before.
** - The signals the engine takes itself (SIGINT; SIGTERM and SIGHUP under
**   braid.run) reach a waiter as one of the engine's interrupt
**   interceptors (prim.h), asked before the default (cancel the root):
**   a SIGINT waiter takes Ctrl-C when a task waits on it (when none waits,
**   Ctrl-C cancels the root as usual and is not counted); a SIGTERM or
**   SIGHUP waiter always takes its signal.
*/
#include <signal.h>
#include <string.h>
#include <stdlib.h>
#include "core/prim.h"
#include "io/signames.h"

#define SIGNAL_MT "braid.Signal"
struct sig_waiter {
  uv_signal_t handle;
  braid_resource_t res;        /* in the scope that made it */
  struct braid_interceptor ic; /* asked before the engine's own handling */
  struct braid_list waiting;   /* struct sig_wait, in arrival order */
  struct sig_waiter **box;     /* the Lua object; NULL once it is gone */
  braid_engine_t *E;
  const struct braid_signame *sig;
  unsigned pending;            /* arrivals not handed to a wait yet */
  int referenced;
};

/* A task's wait: its op's data. */
struct sig_wait {
  struct braid_list link;       /* in w->waiting while queued */
  struct sig_waiter *w;         /* NULL once out of the queue */
  braid_op_t *op;
  const struct braid_signame *got;   /* what arrived; NULL: the waiter closed */
};

/* References the handle exactly while a task waits on it. */
static void sig_update_ref (struct sig_waiter *w) {
  int want = !braid__list_empty(&w->waiting);
  if (want == w->referenced) return;
  w->referenced = want;
  if (want) uv_ref((uv_handle_t *) &w->handle);
  else uv_unref((uv_handle_t *) &w->handle);
}

/* Takes the first wait out of the queue and resumes it with `got`. */
static void sig_resume_first (struct sig_waiter *w,
                              const struct braid_signame *got) {
  struct sig_wait *sw = container_of(w->waiting.next, struct sig_wait, link);
  braid__list_remove(&sw->link);
  sw->w = NULL;
  sw->got = got;
  braid_resume(sw->op, 0);
}

/* One arrival: resume the first waiting task, or count it. */
static void sig_deliver (struct sig_waiter *w) {
  if (braid__list_empty(&w->waiting)) {
    w->pending++;
    return;
  }
  sig_resume_first(w, w->sig);
  sig_update_ref(w);
}

static void sig_cb (uv_signal_t *h, int signum) {
  struct sig_waiter *w = container_of(h, struct sig_waiter, handle);
  /* A signal the engine takes itself (SIGINT; SIGTERM and SIGHUP under
  ** braid.run) reaches script waiters through the interceptor only, so
  ** that the choice between them and the default is made in one place. */
  if (braid__engine_watches(w->E, signum)) return;
  sig_deliver(w);
}

/* Asked before the engine's default for a signal it takes: a waiter for
** it takes it. SIGINT only when a task waits (Ctrl-C still stops a script
** that merely made a waiter); SIGTERM and SIGHUP always, counted for the
** next wait(): a script that watches them handles them. Runs no Lua. */
static int sig_intercept (struct braid_interceptor *ic, int signum) {
  struct sig_waiter *w = container_of(ic, struct sig_waiter, ic);
  if (signum != w->sig->num) return 0;
  if (braid__list_empty(&w->waiting) && signum == SIGINT) return 0;
  sig_deliver(w);
  return 1;
}

static void sig_close_cb (uv_handle_t *h) {
  free(container_of((uv_signal_t *) h, struct sig_waiter, handle));
}

/* Closes the waiter: its tasks are resumed with the closed marker (a NULL
** `got`, which sig_k turns into a "closed" error), and the handle is
** closed; the memory goes in sig_close_cb. Called once: afterwards
** neither the box nor the scope refers to the waiter. */
static void sig_close (struct sig_waiter *w) {
  braid_resource_remove(&w->res);
  braid__intercept_remove(&w->ic);
  while (!braid__list_empty(&w->waiting)) sig_resume_first(w, NULL);
  if (w->box) *w->box = NULL;
  w->box = NULL;
  uv_close((uv_handle_t *) &w->handle, sig_close_cb);
}

static void sig_res_close (struct braid_resource *r) {
  sig_close(container_of(r, struct sig_waiter, res));
}

/* Queues the wait on the waiter (ud) and references its handle. */
static int sig_start (braid_op_t *op, void *ud) {
  struct sig_wait *sw = (struct sig_wait *) braid_op_data(op);
  sw->w = (struct sig_waiter *) ud;
  sw->op = op;
  braid__list_push(&sw->w->waiting, &sw->link);
  sig_update_ref(sw->w);
  return 0;
}

/* A waiting task was cancelled (or abandoned after its outcome came, when
** it is out of the queue already): it leaves the queue. */
static void sig_cancel (braid_op_t *op) {
  struct sig_wait *sw = (struct sig_wait *) braid_op_data(op);
  if (sw->w == NULL) return;
  braid__list_remove(&sw->link);
  sig_update_ref(sw->w);
}

static struct sig_waiter *sig_check (lua_State *L, const char *fname) {
  struct sig_waiter **box = braid__check_object(L, 1, SIGNAL_MT, fname);
  if (*box == NULL)
    braid_error(L, "closed", NULL, "%s: the waiter is closed", fname);
  return *box;
}


/* braid.signal(name) -> waiter: starts catching the signal ("SIGUSR1" or
** "USR1"); the waiter belongs to the caller's innermost scope. */
static int l_signal_new (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "braid.signal");
  const char *name;
  const struct braid_signame *sig;
  struct sig_waiter **box, *w;
  int rc;
  braid__check_type(L, 1, LUA_TSTRING, "braid.signal");
  if ((name = braid__cstring(L, 1)) == NULL)   /* "USR1\0junk" is no name */
    braid_argerror(L, 1, "braid.signal", "signal name expected (without a "
                   "zero byte)");
  if ((sig = braid__signame_find(name)) == NULL || !sig->watchable)
    return braid_usageerror(L, "bad argument #1 to 'braid.signal' (unknown "
                              "or uncatchable signal '%s')", name);
  box = (struct sig_waiter **) lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, SIGNAL_MT);
  w = braid__calloc(1, sizeof *w);
  if (w == NULL)
    return braid_error(L, "memory", NULL, "braid.signal: not enough memory");
  if ((rc = uv_signal_init(braid_loop(E), &w->handle)) != 0) {
    free(w);
    return braid_error(L, "io", braid__errname(rc), "braid.signal %s: %s",
                              sig->name, braid__strerror(rc));
  }
  w->E = E;
  w->sig = sig;
  braid__list_init(&w->waiting);
  braid__list_init(&w->ic.link);
  w->ic.fn = sig_intercept;
  /* It holds what sig_intercept always takes: SIGTERM, SIGHUP; a SIGINT
  ** only while a task waits, which a main thread stuck in C cannot run. */
  w->ic.signum = sig->num == SIGINT ? 0 : sig->num;
  braid__intercept_add(E, &w->ic);
  w->res.close = sig_res_close;
  braid_resource_add(L, &w->res);
  w->box = box;
  *box = w;
  if ((rc = uv_signal_start(&w->handle, sig_cb, sig->num)) != 0) {
    sig_close(w);
    return braid_error(L, "io", braid__errname(rc), "braid.signal %s: %s",
                              sig->name, braid__strerror(rc));
  }
  uv_unref((uv_handle_t *) &w->handle);
  return 1;
}

static int sig_k (lua_State *L, braid_op_t *op) {
  const struct braid_signame *got = ((struct sig_wait *) braid_op_data(op))->got;
  if (got == NULL)
    return braid_error(L, "closed", NULL, "waiter:wait: the waiter "
                              "was closed while waiting");
  lua_pushstring(L, got->name);
  return 1;
}

/* waiter:wait() -> name: suspends until the signal arrives (or returns at
** once when one arrived since the last wait); raises "closed" when the
** waiter is closed, before or during the wait. */
static int l_signal_wait (lua_State *L) {
  struct sig_waiter *w = sig_check(L, "waiter:wait");
  braid_check_task(L, "waiter:wait");
  if (w->pending > 0) {
    w->pending--;
    lua_pushstring(L, w->sig->name);
    return 1;
  }
  braid_check_suspend(L, "waiter:wait");   /* named so, not by `what` */
  return braid_suspendk(L, w->sig->what, sizeof(struct sig_wait), sig_start,
                        sig_cancel, w, sig_k);
}

/* waiter:close(): stops catching the signal; closing twice is harmless. */
static int l_signal_close (lua_State *L) {
  struct sig_waiter **box = braid__check_object(L, 1, SIGNAL_MT,
                                                "waiter:close");
  if (*box) sig_close(*box);
  return 0;
}

static int l_signal_tostring (lua_State *L) {
  struct sig_waiter **box = braid__check_object(L, 1, SIGNAL_MT, "tostring");
  if (*box) lua_pushfstring(L, "<signal waiter %s>", (*box)->sig->name);
  else lua_pushliteral(L, "<signal waiter (closed)>");
  return 1;
}

/* Sets braid.signal on the braid table at the stack top. [-0, +0, m] */
void braid__open_signal (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"wait", l_signal_wait},
    {"close", l_signal_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", l_signal_close},      /* starts the close; the callback frees */
    {"__close", l_signal_close},
    {"__tostring", l_signal_tostring},
    {NULL, NULL}
  };
  braid__class(L, SIGNAL_MT, metamethods, methods, NULL);
  lua_pop(L, 1);
  lua_pushcfunction(L, l_signal_new);
  lua_setfield(L, -2, "signal");
}
