/*
** worker.h: what the two sides of a worker share (io/worker.c, the
** owner's side and the Lua API; io/worker_thread.c, the worker's thread;
** io/wsig.c, the wake-ups; io/worker_config.c, the application's say):
** the shared record, a call, and who may touch which field (worker.c's
** opening comment says it in full).
*/
#ifndef BRAID_WORKER_H
#define BRAID_WORKER_H

#include "core/prim.h"
#include "io/xcopy.h"
#include <stdatomic.h>

enum { CALL_OK, CALL_ERROR, CALL_CLOSED, CALL_NOMEM };
enum { SRC_CHUNK, SRC_FILE, SRC_MODULE };
enum { WK_COPY_NONE, WK_COPY_ARGS, WK_COPY_RESULTS };

struct braid_worker;

/* One side's wake-up: an eventfd the other side writes, polled on this
** side's loop. Not a uv_async_t: libuv 1.44's uv_async_send makes the
** woken loop spin until the sender's write has returned, which on a
** loaded machine cost most of a round trip. Both eventfds are the owner's:
** opened before the thread starts, closed after it is joined, so either
** side may write one outside the lock (a write after the other side
** stopped polling is harmless). `pending` (under w->mu) keeps it to one
** write per wake-up: braid__wsig_arm sets it and says whether to write;
** the receiver clears it under mu where it takes the queue. */
struct braid_wsig {
  uv_poll_t poll;
  int fd;
  unsigned char pending;      /* mu */
};

/* Opens s's eventfd: 0 or a negative code. */
int braid__wsig_open(struct braid_wsig *s);

/* Polls s on loop, on the loop's thread: 0 or a negative code (nothing
** to close then). */
int braid__wsig_start(uv_loop_t *loop, struct braid_wsig *s, uv_poll_cb cb);

/* Under w->mu, after queuing: 1 when the caller must braid__wsig_wake(s)
** once it has unlocked (no wake-up was pending). */
int braid__wsig_arm(struct braid_wsig *s);
void braid__wsig_wake(struct braid_wsig *s);

/* On s's side, in cb: empties the eventfd (then clear s->pending under
** mu where the queue is taken). */
void braid__wsig_drain(struct braid_wsig *s);

struct braid_wcall {
  struct braid_list link;        /* requests, then done, then replies */
  struct braid_list cancel_link; /* in w->cancels once cancelled (mu) */
  struct braid_list run_link;    /* in w->running from start to reply (mu) */
  struct braid_worker *w;
  char *fname;
  char *buf;                     /* the arguments, then the reply */
  size_t len;
  int status;                    /* of the reply: CALL_* */
  unsigned char replied;         /* mu: the worker is done with it */
  unsigned char delivered;       /* owner: its task will take the reply */
  unsigned char ended;           /* worker: its task ended (no more cancels) */
  unsigned char copying;         /* worker: its arguments were being
                                 ** decoded, its results encoded (WK_*) */
  braid_op_t *op;                /* owner: the waiting call, or NULL */
  braid_task_t *task;            /* worker: the task running it */
  lua_State *L;                  /* mu: the task's thread, while it runs */
  struct braid_watch watch;      /* worker: the task ended */
  braid_timer_t grace;           /* worker: cancelled, abandoned at expiry */
  char *tb;                      /* worker: the traceback of its error */
};

struct braid_worker {
  uv_mutex_t mu;
  /* mu */
  struct braid_list requests;    /* calls for the worker (link) */
  struct braid_list cancels;     /* their cancels (cancel_link) */
  struct braid_list replies;     /* calls answered (link) */
  struct braid_list running;     /* calls started, not answered (run_link) */
  lua_State *bootL;              /* the worker's state while it loads */
  _Atomic unsigned unacked;      /* cancels and stop not yet seen
                                 ** (changed under mu, read without) */
  unsigned char stop, exited;
  /* the coroutine running Lua code in the worker's engine, hooked with
  ** the running calls' threads while pub_busy is set by the owner
  ** (braid__engine_publish) */
  lua_State *_Atomic pub_co;
  _Atomic int pub_busy;
  /* the owner's */
  struct braid_wsig osig;         /* the owner's wake-up */
  uv_timer_t otimer;
  uv_thread_t thread;
  braid_resource_t res;
  struct braid_list close_waits; /* the closes waiting (struct close_wait) */
  unsigned inflight;
  int orefs;                     /* the userdata, osig, otimer */
  unsigned char closing, joined;
  /* the options, fixed before the thread starts */
  char *source, *path, *cpath;
  size_t source_len;              /* a chunk may hold zero bytes */
  int skind;
  struct braid_xlimits lim;
  uint64_t grace_ns;             /* its tasks' grace period */
  braid_options_t eopts;
  struct braid_charge charge;     /* eopts.memory_limit, reserved from the
                                  ** maker's limit while the worker lives */
  braid_worker_setup_fn setup;   /* braid_worker_config's */
  void *setup_ud;
  /* the worker's */
  struct braid_wsig wsig;         /* the worker's wake-up */
  braid_engine_t *WE;
  int fns_ref;
  char *load_err;                /* the encoded error of a failed load */
  char *boot_tb;                 /* its traceback */
  uint64_t boot_end;             /* a load closed: its grace period ends */
  unsigned char boot_stopped;    /* then it only unwinds */
  size_t load_len;
  struct braid_list done;        /* calls whose task ended */
  unsigned ncalls;
  unsigned char wstopping, wclosed;
};

/* Frees a call and what it holds; the owner's, or a call never queued. */
void braid__wk_call_free(struct braid_wcall *c);

/* Under w->mu: every thread of the worker that may be running Lua code
** polls at its next instruction (braid__hook_poll). */
void braid__wk_hook_all(struct braid_worker *w);

/* The engine options and setup of a new worker of L's engine: the
** owner's options, or what the application gave braid_worker_config
** (worker_config.c). */
void braid__wk_options(lua_State *L, struct braid_worker *w);

/* The worker thread's body (uv_thread_create): its engine and loop, the
** chunk, the calls until stopped, then everything closed; says it exited
** as its last act. */
void braid__wk_main(void *arg);

#endif
