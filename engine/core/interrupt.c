/*
** interrupt.c: Ctrl-C and the signals that end a run: SIGINT, and, for
** braid.run (the runner, the module), SIGTERM and SIGHUP, all treated
** alike: cancel the root task (an embedded engine's live tasks), let
** cleanup run within the grace period, and exit 130, 143 or 129; a second
** one exits at once. SIGQUIT prints braid.dump(), through the same two
** paths, so that a script that never suspends is dumped too.
** braid_interrupt takes the same path as a SIGINT.
**
** Invariants:
** - Every interrupt goes through engine_interrupt: the interceptors first
**   (newest first: a script's waiter for that signal, the REPL), then the
**   default.
** - A signal reaches braid twice: libuv's handler wakes the loop (the
**   watcher's callback runs when the loop next polls), and ours, chained
**   in front of it, sets a hook on the thread running Lua code, which may
**   never return to the loop (hook.c). Each arrival is counted once in
**   E->pending[] and handled by whichever comes first.
** - A stop signal within REPEAT_NS of the last counted one (of any of the
**   three) is the same press, not a second one: senders such as timeout(1)
**   signal both the process and its group, and the two arrive microseconds
**   apart, and a SIGINT and a SIGTERM sent together are one request;
**   counted twice they would make the default leave at once, skipping
**   cleanup.
** - The second one's _exit runs outside the signal handler (the loop's
**   callback or the hook), so stdio is flushed first: what the script
**   wrote with io.write is kept.
** - Except when the thread running Lua code is stuck in C (io.read,
**   os.execute, a long string.rep, a __gc that blocks), where neither the
**   hook nor the loop's callback runs: a stop counted while an earlier one
**   is still pending makes the handler itself leave (leave_stuck), with
**   async-signal-safe work only: SIGKILL to the children's groups (the
**   kill slots, which it can read without a lock), the line on stderr by
**   write(2), _exit. Lost on that path: stdio's buffers (io.write), the
**   trace file, the flags of a shared stdio socket. A single stop while
**   stuck waits for the C code to return: nothing safe could cancel the
**   run from the handler. Cleanup stuck in C after the first stop was
**   taken needs a third (the handler cannot tell that the second will not
**   be taken). An embedded engine never leaves; SIGQUIT's dump waits.
** - A broken pipe is no stop signal: SIGPIPE keeps io/stream.c's handler
**   (a child's or a peer's end that has gone is EPIPE to the writer), which
**   calls braid__interrupt_pipe. Only when braid's own stdout has lost its
**   reader (poll: POLLERR, POLLHUP on fd 1) does it end the run as a
**   signal would, once: braid.run's engine (the one that owns SIGTERM)
**   is cancelled with reason "broken pipe" and the runner exits 141
**   (128 + SIGPIPE, stock lua's death); never a second stop (cleanup
**   writing to it again changes nothing), and after another stop nothing.
**   The handler may run on any thread (a worker's print): it sets the
**   hook and wakes the loop (uv_async_send: async-signal-safe). With no
**   run (module mode outside braid.run, an embedded engine) it is stock
**   lua's: every child's group is SIGKILLed and SIGPIPE's default action
**   ends the process.
** - One engine at a time owns each signal: the most recently attached
**   engine that watches it (sig_engines, a stack: when the owner detaches,
**   the one attached before it that is still attached owns it again).
**   Every engine with signals has its own libuv watchers, so each one's
**   loop wakes; only the owner counts the arrival, so only it is
**   interrupted. Our handler stays in front of libuv's while any engine
**   watches the signal, and libuv's is put back when the last detaches.
*/
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "core.h"

static const struct {
  int num;
  const char *reason;          /* the cancellation's reason */
  const char *again;           /* the line of the second one's exit */
  int runner_only;             /* not for an embedded engine */
} stops[NSTOPS] = {
  {SIGINT, "interrupt", "braid: interrupted again, exiting\n", 0},
  {SIGTERM, "terminated", "braid: terminated again, exiting\n", 1},
  {SIGHUP, "hangup", "braid: hung up again, exiting\n", 1}
};

#define TERM_STOP 1   /* stops[1], SIGTERM: watched by braid.run only */

/* The engines with signals, oldest first; changed only on the threads
** of engines with signals (workers have none), read by the handler only
** through the owners below, one pointer each, which it reads once. */
static struct braid_list sig_engines = {&sig_engines, &sig_engines};
static braid_engine_t *volatile sig_owner[NSTOPS];   /* of each stop */
static braid_engine_t *volatile quit_owner;          /* of SIGQUIT */
static struct sigaction uv_action[NSTOPS];    /* libuv's, called after ours */
static struct sigaction uv_quit;              /* libuv's for SIGQUIT */
/* The host's, from before the first engine watched the signal: libuv
** resets a signal to SIG_DFL when its last watcher goes, which in module
** mode would leave lua.c's Ctrl-C handler ("interrupted!") lost once
** braid.run returned. */
static struct sigaction host_action[NSTOPS];
static struct sigaction host_quit;
static _Atomic uint64_t arrived;              /* the last counted stop, ns */

/* 0.1 s: no hand presses Ctrl-C twice that fast; a duplicate delivery
** comes far sooner. */
#define REPEAT_NS 100000000u

static int stop_index (int signum) {
  int i;
  for (i = 0; i < NSTOPS && stops[i].num != signum; i++) ;
  return i < NSTOPS ? i : -1;
}

void braid__intercept_add (braid_engine_t *E, struct braid_interceptor *ic) {
  int i = stop_index(ic->signum);
  if (i >= 0) atomic_fetch_add(&E->held[i], 1);
  ic->E = E;
  braid__list_push(&E->interceptors, &ic->link);
}

void braid__intercept_remove (struct braid_interceptor *ic) {
  int i = stop_index(ic->signum);
  if (ic->E && i >= 0) atomic_fetch_sub(&ic->E->held[i], 1);
  ic->E = NULL;
  braid__list_remove(&ic->link);
}

int braid__engine_interrupted (braid_engine_t *E) {
  return E->interrupted ? E->interrupt_sig : 0;
}

int braid__engine_watches (braid_engine_t *E, int signum) {
  int i;
  for (i = 0; i < NSTOPS; i++)
    if (stops[i].num == signum) return E->watching[i];
  return 0;
}

struct interrupt_args {
  braid_engine_t *E;
  const char *reason;
};

static int interrupt_p (lua_State *L) {
  struct interrupt_args *a = (struct interrupt_args *) lua_touserdata(L, 1);
  braid_engine_t *E = a->E;
  lua_pushstring(L, a->reason);
  if (!E->embedded) {
    braid__scope_set_reason(L, &E->top, -1);
    braid__scope_cancel(&E->top, &E->top);
    return 0;
  }
  braid__engine_cancel_all(L, E, -1);
  return 0;
}

/* Whether stdout can take a write now: the second signal's exit flushes
** what the script wrote, but not into a pipe whose reader stopped reading
** (a pager at its prompt), where the flush would hang the exit. */
static int stdout_takes (void) {
  struct pollfd p = {STDOUT_FILENO, POLLOUT, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT) && !(p.revents & POLLERR);
}

/* Cancels what E runs for signal signum (the status the runner exits
** with: braid__engine_interrupted). */
static void engine_cancel (braid_engine_t *E, int signum, const char *reason) {
  struct interrupt_args a;
  if (E->interrupt_sig == 0) E->interrupt_sig = signum;
  a.E = E;
  a.reason = reason;
  braid__engine_call(E, interrupt_p, &a);
}

/* The one path of every interrupt. */
static void engine_interrupt (braid_engine_t *E, int i) {
  struct braid_list *n;
  for (n = E->interceptors.prev; n != &E->interceptors; n = n->prev) {
    struct braid_interceptor *ic = container_of(n, struct braid_interceptor,
                                                link);
    if (ic->fn(ic, stops[i].num)) return;
  }
  if (E->interrupted++ && !E->embedded) {   /* the second one: leave now */
    fputs(stops[i].again, stderr);
    braid__exit_hooks_run(E);   /* no child left running */
    if (stdout_takes())   /* stdout only: a pipe io.popen opened could hang */
      fflush(stdout);   /* what the script wrote (io.write): never in a handler */
    _exit(128 + stops[i].num);
  }
  engine_cancel(E, stops[i].num, stops[i].reason);
}

/* stdout's reader has gone: the first stop, unless the run already ends
** (a signal, os.exit), which this changes nothing in. Returns whether it
** cancelled. */
static int engine_pipe (braid_engine_t *E) {
  if (E->interrupted || E->exiting) return 0;
  E->interrupted = 1;
  engine_cancel(E, SIGPIPE, "broken pipe");
  return 1;
}

/* Handles the signals that arrived and were not handled yet: the dumps
** SIGQUIT asks for first, then the interrupts, then a broken stdout.
** Returns whether anything may have been cancelled (an interrupt, or the
** broken stdout's first arrival): a dump, or a broken stdout in a run
** that already ends, must not cut the running cleanup short. */
int braid__interrupt_dispatch (braid_engine_t *E) {
  int i, gone = 1, stopped = 0;
  atomic_store(&E->hook_wanted, 0);   /* a later arrival sets it again */
  while (atomic_load(&E->quits) > 0) {
    atomic_fetch_sub(&E->quits, 1);
    braid__dump_signal(E);
  }
  for (i = 0; i < NSTOPS; i++)
    while (atomic_load(&E->pending[i]) > 0) {
      atomic_fetch_sub(&E->pending[i], 1);
      engine_interrupt(E, i);
      stopped = 1;
    }
  if (atomic_compare_exchange_strong(&E->pipe_gone, &gone, 2))
    stopped |= engine_pipe(E);
  return stopped;
}

static void dispatch (braid_engine_t *E) {
  braid__engine_enter(E);
  braid__interrupt_dispatch(E);
  braid__engine_leave(E);
}

static void stop_cb (uv_signal_t *h, int signum) {
  (void) signum;
  dispatch((braid_engine_t *) h->data);
}

static void pipe_cb (uv_async_t *h) {
  dispatch((braid_engine_t *) h->data);
}

/* Whether a stop signal came within REPEAT_NS of the last counted one,
** whichever that was (else it counts, from now): one counter says which
** is the second, so one window says which is a repeat (a SIGINT then a
** SIGTERM 1 ms apart, `kill` of a group and a supervisor, is one press).
** clock_gettime is async-signal-safe; the exchange keeps two threads that
** take a signal at once apart. */
static int repeated (void) {
  struct timespec ts;
  uint64_t now, last;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  now = (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
  last = atomic_load(&arrived);
  if (last != 0 && now - last < REPEAT_NS) return 1;
  return !atomic_compare_exchange_strong(&arrived, &last, now);
}

static void kill_all(void);

/* Whether an arrival counted earlier is still pending: neither the hook
** nor the loop's callback got to it in REPEAT_NS at least, so the thread
** running Lua code is in C. */
static int stuck (braid_engine_t *E) {
  int i;
  for (i = 0; i < NSTOPS; i++)
    if (atomic_load(&E->pending[i]) > 0) return 1;
  return 0;
}

/* The second stop's exit, from the handler (see the header). */
static void leave_stuck (int i) {
  ssize_t n;
  kill_all();
  n = write(STDERR_FILENO, stops[i].again, strlen(stops[i].again));
  (void) n;   /* nothing to do about a stderr that is gone */
  _exit(128 + stops[i].num);
}

/* Ours, in front of libuv's: count the arrival, stop the running Lua code
** at its next instruction, then let libuv wake the loop. Only
** async-signal-safe work: an atomic add and lua_sethook (or leave_stuck's). */
static void stop_handler (int signum, siginfo_t *info, void *ctx) {
  braid_engine_t *E;
  const struct sigaction *uv;
  int i = stop_index(signum), saved = errno;
  if (i >= 0) {
    uv = &uv_action[i];
    E = sig_owner[i];
    if (E && E->watching[i] && !repeated()) {
      if (!E->embedded && !atomic_load(&E->held[i]) && stuck(E))
        leave_stuck(i);
      atomic_fetch_add(&E->pending[i], 1);
      braid__hook_interrupt(E);
    }
  } else if (signum == SIGQUIT) {   /* a dump, also of a script that spins */
    uv = &uv_quit;
    E = quit_owner;
    if (E && E->signals) {
      atomic_fetch_add(&E->quits, 1);
      braid__hook_interrupt(E);
    }
  } else {
    return;
  }
  errno = saved;
  if (uv->sa_flags & SA_SIGINFO)
    uv->sa_sigaction(signum, info, ctx);
  else if (uv->sa_handler != SIG_DFL && uv->sa_handler != SIG_IGN)
    uv->sa_handler(signum);
}

static void watch (braid_engine_t *E, uv_signal_t *h, int signum,
                   uv_signal_cb cb) {
  uv_signal_init(E->loop, h);
  h->data = E;
  E->refs++;
  uv_signal_start(h, cb, signum);
  uv_unref((uv_handle_t *) h);
}

/* The newest engine in sig_engines that watches stop i (i < 0: any,
** for SIGQUIT), or NULL. */
static braid_engine_t *newest_watching (int i) {
  struct braid_list *n;
  for (n = sig_engines.prev; n != &sig_engines; n = n->prev) {
    braid_engine_t *E = container_of(n, braid_engine_t, sig_link);
    if (i < 0 || E->watching[i]) return E;
  }
  return NULL;
}

/* Starts watching the signals (braid_new with opts.signals: SIGINT and
** SIGQUIT; braid.run: SIGTERM and SIGHUP too). E owns them from now on,
** until it detaches or another engine attaches. */
void braid__interrupt_attach (braid_engine_t *E) {
  struct sigaction sa;
  int i;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = stop_handler;
  sa.sa_flags = SA_SIGINFO | SA_RESTART;
  sigemptyset(&sa.sa_mask);   /* one at a time: the first sent counts */
  sigaddset(&sa.sa_mask, SIGQUIT);
  for (i = 0; i < NSTOPS; i++) sigaddset(&sa.sa_mask, stops[i].num);
  atomic_store(&E->quits, 0);
  atomic_store(&E->hook_wanted, 0);
  if (quit_owner == NULL) sigaction(SIGQUIT, NULL, &host_quit);
  watch(E, &E->sigquit, SIGQUIT, stop_cb);   /* libuv's handler */
  if (quit_owner == NULL) sigaction(SIGQUIT, &sa, &uv_quit);   /* ours first */
  if (!E->embedded) {   /* braid.run's: a broken stdout (pipe_cb) */
    atomic_store(&E->pipe_gone, 0);
    uv_async_init(E->loop, &E->pipe_wake, pipe_cb);
    E->pipe_wake.data = E;
    E->refs++;
    uv_unref((uv_handle_t *) &E->pipe_wake);
  }
  for (i = 0; i < NSTOPS; i++) {
    if (stops[i].runner_only && E->embedded) continue;
    atomic_store(&E->pending[i], 0);
    if (sig_owner[i] == NULL) sigaction(stops[i].num, NULL, &host_action[i]);
    watch(E, &E->sigstop[i], stops[i].num, stop_cb);
    E->watching[i] = 1;
    if (sig_owner[i] == NULL)
      sigaction(stops[i].num, &sa, &uv_action[i]);
  }
  braid__list_push(&sig_engines, &E->sig_link);
  for (i = 0; i < NSTOPS; i++)
    if (E->watching[i]) sig_owner[i] = E;
  quit_owner = E;
  E->signals = 1;
}

/* After the close of a watcher: the host's action is back where libuv
** left SIG_DFL (its last watcher of the signal went); where another
** watcher of libuv's remains (an application's own), libuv's stays. */
static void host_restore (int signum, const struct sigaction *host) {
  struct sigaction cur;
  if (sigaction(signum, NULL, &cur) == 0 && !(cur.sa_flags & SA_SIGINFO) &&
      cur.sa_handler == SIG_DFL)
    sigaction(signum, host, NULL);
}

/* Stops watching. The engine attached before E that is still attached
** owns what E owned; where none is left, libuv's handler goes back in
** place (and is removed with its last watcher), then the host's. */
void braid__interrupt_detach (braid_engine_t *E) {
  int i;
  if (!E->signals) return;
  E->signals = 0;
  braid__list_remove(&E->sig_link);   /* the owners first: the handler */
  for (i = 0; i < NSTOPS; i++)        /* counts nothing more in E */
    if (sig_owner[i] == E) sig_owner[i] = newest_watching(i);
  if (quit_owner == E) quit_owner = newest_watching(-1);
  for (i = 0; i < NSTOPS; i++) {
    if (!E->watching[i]) continue;
    E->watching[i] = 0;
    if (sig_owner[i] == NULL) sigaction(stops[i].num, &uv_action[i], NULL);
    uv_close((uv_handle_t *) &E->sigstop[i], braid__engine_handle_closed);
    if (sig_owner[i] == NULL) host_restore(stops[i].num, &host_action[i]);
  }
  if (quit_owner == NULL) sigaction(SIGQUIT, &uv_quit, NULL);
  uv_close((uv_handle_t *) &E->sigquit, braid__engine_handle_closed);
  if (quit_owner == NULL) host_restore(SIGQUIT, &host_quit);
  if (!E->embedded)
    uv_close((uv_handle_t *) &E->pipe_wake, braid__engine_handle_closed);
}

/* From io/stream.c's SIGPIPE handler, on whatever thread wrote: only
** async-signal-safe work (see the header). */
void braid__interrupt_pipe (void) {
  struct pollfd p = {STDOUT_FILENO, 0, 0};
  struct sigaction dfl;
  braid_engine_t *E;
  int none = 0;
  if (poll(&p, 1, 0) != 1 || !(p.revents & (POLLERR | POLLHUP)))
    return;                    /* not stdout: EPIPE to the writer */
  E = sig_owner[TERM_STOP];    /* braid.run's engine */
  if (E && E->watching[TERM_STOP]) {
    if (atomic_compare_exchange_strong(&E->pipe_gone, &none, 1)) {
      braid__hook_interrupt(E);   /* Lua code that runs stops */
      uv_async_send(&E->pipe_wake);   /* else the loop handles it */
    }
    return;
  }
  kill_all();                  /* no run: as stock lua, no child left */
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &dfl, NULL);
  raise(SIGPIPE);              /* taken when the handler returns */
}

/* ---- leaving at once (prim.h) ----
** One list for the whole process, not one per engine: a worker's engine
** runs on its own thread, and a second Ctrl-C or an os.exit on the main
** thread must still kill the groups of the children it started. The
** mutex orders every add and remove (each engine's thread makes its own)
** against the walk on the leaving thread, so a hook is never run after
** its owner removed it (and freed its memory). */
static struct braid_list exit_hooks = {&exit_hooks, &exit_hooks};
static pthread_mutex_t exit_mu = PTHREAD_MUTEX_INITIALIZER;

void braid__exit_hook_add (braid_engine_t *E, struct braid_exit_hook *h) {
  h->E = E;
  pthread_mutex_lock(&exit_mu);
  braid__list_push(&exit_hooks, &h->link);
  pthread_mutex_unlock(&exit_mu);
}

void braid__exit_hook_remove (struct braid_exit_hook *h) {
  pthread_mutex_lock(&exit_mu);
  braid__list_remove(&h->link);
  pthread_mutex_unlock(&exit_mu);
}

/* The hooks of E, and those of every other engine that may run here;
** every child's group first. */
void braid__exit_hooks_run (braid_engine_t *E) {
  struct braid_list *n;
  kill_all();
  pthread_mutex_lock(&exit_mu);
  for (n = exit_hooks.next; n != &exit_hooks; n = n->next) {
    struct braid_exit_hook *h = container_of(n, struct braid_exit_hook, link);
    if (h->E == E || h->any_thread) h->fn(h);
  }
  pthread_mutex_unlock(&exit_mu);
}

/* braid_close: E's hooks that remain (handles still closing on an
** embedder's loop) leave the list; their owners' removal later is
** harmless (a removed node points at itself). A child still being
** stopped keeps its kill slot: a hard exit kills it all the same. */
void braid__exit_hooks_drop (braid_engine_t *E) {
  struct braid_list *n, *next;
  pthread_mutex_lock(&exit_mu);
  for (n = exit_hooks.next; n != &exit_hooks; n = next) {
    next = n->next;
    if (container_of(n, struct braid_exit_hook, link)->E == E)
      braid__list_remove(n);
  }
  pthread_mutex_unlock(&exit_mu);
}

/* ---- the kill slots (prim.h) ----
** The signal handler reads them while the thread it interrupted may hold
** any lock, so there is none: a slot is claimed by a compare-exchange on
** `used`, a chunk appended by one on `next`, and chunks are never freed
** (nothing a handler may be reading goes away). */
#define KILL_CHUNK 256

struct kill_chunk {
  struct braid_kill_slot slot[KILL_CHUNK];
  struct kill_chunk *_Atomic next;
};

static struct kill_chunk kill_slots;   /* most runs need no other */

struct braid_kill_slot *braid__kill_slot_take (void) {
  struct kill_chunk *c = &kill_slots, *next, *none;
  int i;
  for (;;) {
    for (i = 0; i < KILL_CHUNK; i++) {
      unsigned char unused = 0;
      if (atomic_load(&c->slot[i].used) == 0 &&
          atomic_compare_exchange_strong(&c->slot[i].used, &unused, 1))
        return &c->slot[i];
    }
    if ((next = atomic_load(&c->next)) == NULL) {
      if ((next = calloc(1, sizeof *next)) == NULL) return NULL;
      none = NULL;
      if (!atomic_compare_exchange_strong(&c->next, &none, next)) {
        free(next);            /* another thread appended one */
        next = none;
      }
    }
    c = next;
  }
}

void braid__kill_slot_give (struct braid_kill_slot *s) {
  atomic_store(&s->target, 0);
  atomic_store(&s->used, 0);
}

/* SIGKILL to every target: async-signal-safe. */
static void kill_all (void) {
  struct kill_chunk *c;
  int i, t;
  for (c = &kill_slots; c != NULL; c = atomic_load(&c->next))
    for (i = 0; i < KILL_CHUNK; i++)
      if ((t = atomic_load(&c->slot[i].target)) != 0) kill(t, SIGKILL);
}

int braid_interrupt (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  if (E == NULL || !E->running) return UV_EINVAL;
  braid__engine_enter(E);
  engine_interrupt(E, 0);
  braid__engine_leave(E);   /* a braid_close from an on_cancel: E is gone */
  return 0;
}
