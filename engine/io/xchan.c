/*
** xchan.c: shared channels, braid.channel(n, {shared = true}): a channel
** that workers and their owner use alike, with a local channel's rules
** (FIFO, capacity n and back-pressure, 0 a rendezvous, close, recv giving
** nil, false once closed and drained). Values cross by copy (io/xcopy.c).
**
** The channel is a C object (struct braid_xchan) shared by threads and
** reference-counted: each engine holds it through its own userdata
** handles, and a message that names it (an argument of worker:call, a
** value in another shared channel) holds a reference of its own. Its
** mutex guards the values (copied buffers, in FIFO order) and the queues
** of waiting operations.
**
** Waiting: an operation that cannot complete links a waiter (in its op's
** data) in the channel's queue and suspends. Whoever changes the channel
** (a send, a receive, close) notifies the waiters it may concern, which
** only queues them in their own engine's hub (struct xhub: an eventfd
** polled on that engine's loop, one per engine and loop) and writes the
** eventfd. The hub's callback retries each notified waiter on its own
** thread. So every exchange is made by a task on its own thread, under the
** channel's mutex, and a waiter cancelled before it retried has exchanged
** nothing: no value is lost or duplicated.
** Two exceptions, both the local channel's rules too: a rendezvous sender
** offers its value in the queue and a receiver takes it from there (the
** sender, cancelled after that, raises its cancellation though its value
** was delivered: it cannot go back); and a receiver whose value was taken
** but whose task was abandoned before it ran again gives the value back to
** the front of the channel.
**
** Lock order: a channel's mutex, then a hub's. A hub's memory lives while
** its loop user or a waiter holds it (counted on its own thread); its fd
** is closed under its mutex, so a notifier never writes a closed fd.
*/
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "core/prim.h"
#include "io/xcopy.h"
#include "io/xchan.h"

#define XCHAN_MT "braid.SharedChannel"

enum { XW_WAIT, XW_DONE, XW_CLOSED };

struct xmsg {
  struct braid_list link;        /* in ch->queue (mu); self when out */
  struct xwait *sender;          /* a rendezvous offer's sender, or NULL */
  char *buf;
  size_t len;
};

struct braid_xchan {
  uv_mutex_t mu;
  _Atomic int refs;
  size_t cap;
  /* mu */
  struct braid_list queue;       /* values (xmsg), oldest first */
  size_t count;                  /* buffered ones (offers not counted) */
  struct braid_list senders, receivers;   /* waiters (xwait) */
  int closed;
};

struct xhub {
  struct braid_loop_user user;
  uv_mutex_t mu;
  uv_poll_t poll;
  int fd;                        /* mu: -1 once closed */
  int pending;                   /* mu: a wake-up is written */
  struct braid_list ready;       /* mu: notified waiters */
  int refs;                      /* the loop user's and waiters' (own thread) */
  int nwait;
};

struct xwait {
  struct braid_list link;        /* in senders/receivers (ch mu) */
  struct braid_list ready_link;  /* in hub->ready (hub mu) */
  struct braid_xchan *ch;
  struct xhub *hub;
  braid_op_t *op;
  struct xmsg *msg;              /* a sender's value; a receiver's got */
  int recv, status;
  unsigned char offered, taken;  /* a rendezvous sender's (ch mu) */
};

/* ---- references ---- */

void braid__xchan_ref (struct braid_xchan *ch) {
  atomic_fetch_add(&ch->refs, 1);
}

static void msg_free (struct xmsg *m) {
  braid__xcopy_free(m->buf, m->len);
  free(m);
}

void braid__xchan_release (struct braid_xchan *ch) {
  if (atomic_fetch_sub(&ch->refs, 1) != 1) return;
  while (!braid__list_empty(&ch->queue)) {   /* no offer: its sender holds one */
    struct xmsg *m = container_of(ch->queue.next, struct xmsg, link);
    braid__list_remove(&m->link);
    msg_free(m);
  }
  uv_mutex_destroy(&ch->mu);
  free(ch);
}

/* ---- hubs: one per engine and loop ---- */

static const char hub_key = 'x';

static void hub_unref (struct xhub *h) {
  if (--h->refs > 0) return;
  uv_mutex_destroy(&h->mu);
  free(h);
}

static void hub_closed (uv_handle_t *p) {
  struct xhub *h = (struct xhub *) p->data;
  uv_mutex_lock(&h->mu);
  close(h->fd);
  h->fd = -1;
  uv_mutex_unlock(&h->mu);
  hub_unref(h);
}

static void hub_detach (struct braid_loop_user *u) {
  struct xhub *h = container_of(u, struct xhub, user);
  uv_close((uv_handle_t *) &h->poll, hub_closed);
}

/* Under ch's mutex: w retries on its own thread soon. */
static void notify (struct xwait *w) {
  struct xhub *h = w->hub;
  uint64_t one = 1;
  uv_mutex_lock(&h->mu);
  if (w->ready_link.next == &w->ready_link)
    braid__list_push(&h->ready, &w->ready_link);
  if (!h->pending && h->fd >= 0) {
    h->pending = 1;
    while (write(h->fd, &one, sizeof one) < 0 && errno == EINTR) ;
  }
  uv_mutex_unlock(&h->mu);
}

static void notify_all (struct braid_list *q) {
  struct braid_list *n;
  for (n = q->next; n != q; n = n->next)
    notify(container_of(n, struct xwait, link));
}

static int step (struct xwait *w);

static void hub_cb (uv_poll_t *p, int status, int events) {
  struct xhub *h = (struct xhub *) p->data;
  uint64_t n;
  (void) status;
  (void) events;
  while (read(h->fd, &n, sizeof n) < 0 && errno == EINTR) ;
  uv_mutex_lock(&h->mu);
  h->pending = 0;
  uv_mutex_unlock(&h->mu);
  for (;;) {
    struct xwait *w;
    int r;
    uv_mutex_lock(&h->mu);
    if (braid__list_empty(&h->ready)) {
      uv_mutex_unlock(&h->mu);
      break;
    }
    w = container_of(h->ready.next, struct xwait, ready_link);
    braid__list_remove(&w->ready_link);
    uv_mutex_unlock(&h->mu);
    if (w->status != XW_WAIT) continue;   /* notified again, then done */
    uv_mutex_lock(&w->ch->mu);
    r = step(w);
    uv_mutex_unlock(&w->ch->mu);
    if (r != XW_WAIT) braid_resume(w->op, 0);
  }
}

/* E's hub, made on first use: NULL when out of memory or fds. */
static struct xhub *hub_get (braid_engine_t *E) {
  struct braid_loop_user *u = braid__loop_user_find(E, &hub_key);
  struct xhub *h;
  if (u) return container_of(u, struct xhub, user);
  h = (struct xhub *) braid__calloc(1, sizeof *h);
  if (h == NULL) return NULL;
  if ((h->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
    free(h);
    return NULL;
  }
  if (uv_mutex_init(&h->mu) != 0) {
    close(h->fd);
    free(h);
    return NULL;
  }
  if (uv_poll_init(braid_loop(E), &h->poll, h->fd) != 0) {
    uv_mutex_destroy(&h->mu);
    close(h->fd);
    free(h);
    return NULL;
  }
  h->poll.data = h;
  uv_poll_start(&h->poll, UV_READABLE, hub_cb);
  uv_unref((uv_handle_t *) &h->poll);
  braid__list_init(&h->ready);
  h->refs = 1;
  h->user.key = &hub_key;
  h->user.detach = hub_detach;
  braid__loop_user_add(E, &h->user);
  return h;
}

/* ---- the operations, under ch's mutex ---- */

static void wait_link (struct xwait *w, struct braid_list *q) {
  if (w->link.next == &w->link) braid__list_push(q, &w->link);
}

/* Tries w's operation: XW_DONE (a receiver's value in w->msg), XW_CLOSED,
** or XW_WAIT with w linked in its queue. */
static int step (struct xwait *w) {
  struct braid_xchan *ch = w->ch;
  if (w->recv) {
    struct xmsg *m;
    if (braid__list_empty(&ch->queue)) {
      if (ch->closed) goto closed;
      wait_link(w, &ch->receivers);
      return XW_WAIT;
    }
    m = container_of(ch->queue.next, struct xmsg, link);
    braid__list_remove(&m->link);
    if (m->sender) {   /* an offer: the receiver owns it now */
      m->sender->taken = 1;
      m->sender->msg = NULL;
      notify(m->sender);
      m->sender = NULL;
    } else {
      ch->count--;
      notify_all(&ch->senders);   /* room */
    }
    w->msg = m;
    braid__list_remove(&w->link);
    return w->status = XW_DONE;
  }
  if (w->taken) {
    braid__list_remove(&w->link);
    return w->status = XW_DONE;
  }
  if (ch->closed) goto closed;
  if (ch->cap == 0) {
    if (!w->offered) {
      w->offered = 1;
      w->msg->sender = w;
      braid__list_push(&ch->queue, &w->msg->link);
      notify_all(&ch->receivers);
    }
    wait_link(w, &ch->senders);
    return XW_WAIT;
  }
  if (ch->count >= ch->cap) {
    wait_link(w, &ch->senders);
    return XW_WAIT;
  }
  braid__list_push(&ch->queue, &w->msg->link);
  w->msg = NULL;
  ch->count++;
  notify_all(&ch->receivers);
  braid__list_remove(&w->link);
  return w->status = XW_DONE;
closed:
  braid__list_remove(&w->link);
  return w->status = XW_CLOSED;
}

/* w's wait is over (its op completes or is cancelled): on w's thread,
** with ch unlocked. */
static void wait_leave (struct xwait *w) {
  struct xhub *h = w->hub;
  uv_mutex_lock(&h->mu);
  braid__list_remove(&w->ready_link);
  uv_mutex_unlock(&h->mu);
  if (--h->nwait == 0 && h->fd >= 0 && !uv_is_closing((uv_handle_t *) &h->poll))
    uv_unref((uv_handle_t *) &h->poll);
  hub_unref(h);
  braid__xchan_release(w->ch);
}

static int op_start (braid_op_t *op, void *ud) {
  struct xwait *src = (struct xwait *) ud;
  struct xwait *w = (struct xwait *) braid_op_data(op);
  struct xhub *h = hub_get(braid_op_engine(op));
  int r;
  if (h == NULL) {
    if (src->msg) msg_free(src->msg);
    return UV_ENOMEM;
  }
  *w = *src;
  src->msg = NULL;
  w->op = op;
  w->hub = h;
  braid__list_init(&w->link);
  braid__list_init(&w->ready_link);
  h->refs++;
  if (h->nwait++ == 0) uv_ref((uv_handle_t *) &h->poll);
  braid__xchan_ref(w->ch);
  uv_mutex_lock(&w->ch->mu);
  r = step(w);
  uv_mutex_unlock(&w->ch->mu);
  if (r != XW_WAIT) braid_resume(op, 0);
  return 0;
}

/* Under ch's mutex: a value a receiver took goes back, to the front. */
static void msg_unget (struct braid_xchan *ch, struct xmsg *m) {
  braid__list_push(ch->queue.next, &m->link);
  ch->count++;
  notify_all(&ch->receivers);
}

/* Cancelled while waiting: undo. Abandoned after completing (before its
** continuation ran): a receiver gives its value back, to the front. */
static void op_cancel (braid_op_t *op) {
  struct xwait *w = (struct xwait *) braid_op_data(op);
  struct braid_xchan *ch = w->ch;
  uv_mutex_lock(&ch->mu);
  braid__list_remove(&w->link);
  if (w->recv && w->msg) {
    msg_unget(ch, w->msg);
    w->msg = NULL;
  } else if (!w->recv && w->msg) {   /* not sent (an offer not taken) */
    braid__list_remove(&w->msg->link);
    msg_free(w->msg);
    w->msg = NULL;
  }
  uv_mutex_unlock(&ch->mu);
  wait_leave(w);
}

/* ---- the Lua API ---- */

static struct braid_xchan *xch_check (lua_State *L, const char *fname) {
  struct braid_xchan **box = (struct braid_xchan **)
    braid__check_object(L, 1, XCHAN_MT, fname);
  return *box;
}

struct braid_xchan *braid__xchan_test (lua_State *L, int idx) {
  struct braid_xchan **box = (struct braid_xchan **)
    luaL_testudata(L, idx, XCHAN_MT);
  return box ? *box : NULL;
}

void braid__xchan_push (lua_State *L, struct braid_xchan *ch) {
  struct braid_xchan **box = (struct braid_xchan **)
    lua_newuserdatauv(L, sizeof *box, 0);
  *box = ch;
  braid__xchan_ref(ch);
  luaL_setmetatable(L, XCHAN_MT);
}

static int send_k (lua_State *L, braid_op_t *op) {
  struct xwait *w = (struct xwait *) braid_op_data(op);
  int status = w->status;
  if (w->msg) msg_free(w->msg);   /* closed: not sent */
  w->msg = NULL;
  wait_leave(w);
  if (status == XW_CLOSED)
    return braid_error(L, "closed", NULL, "channel:send: the channel is "
                       "closed");
  return 0;
}

/* ch:send(v): copies v into the channel; waits while it is full (for a
** rendezvous channel, until a receiver took it). */
static int l_xsend (lua_State *L) {
  struct braid_xchan *ch = xch_check(L, "channel:send");
  struct xwait w;
  struct xmsg *m;
  size_t len;
  char *buf;
  braid_check_suspend(L, "channel:send");
  lua_settop(L, 2);
  buf = braid__xcopy_encode(L, 2, 1, "value", "through a shared channel",
                            NULL, "channel:send", &len);
  m = (struct xmsg *) braid__calloc(1, sizeof *m);
  if (m == NULL) {
    braid__xcopy_free(buf, len);
    return braid_error(L, "memory", NULL, "channel:send: not enough memory");
  }
  braid__list_init(&m->link);
  m->buf = buf;
  m->len = len;
  memset(&w, 0, sizeof w);
  w.ch = ch;
  w.msg = m;
  return braid_suspendk(L, "channel send", sizeof w, op_start, op_cancel, &w,
                        send_k);
}

static int recv_decode_p (lua_State *L) {
  struct xmsg *m = (struct xmsg *) lua_touserdata(L, 1);
  lua_settop(L, 0);
  braid__xcopy_decode(L, m->buf, m->len);
  lua_pushboolean(L, 1);
  return 2;
}

static int recv_k (lua_State *L, braid_op_t *op) {
  struct xwait *w = (struct xwait *) braid_op_data(op);
  struct xmsg *m = w->msg;
  size_t len;
  int rc;
  w->msg = NULL;
  if (m == NULL) {   /* closed and drained */
    wait_leave(w);
    lua_pushnil(L);
    lua_pushboolean(L, 0);
    return 2;
  }
  lua_pushcfunction(L, recv_decode_p);
  lua_pushlightuserdata(L, m);
  rc = lua_pcall(L, 1, 2, 0);
  if (rc == LUA_OK) {
    msg_free(m);
    wait_leave(w);
    return 2;
  }
  /* out of memory here (the copy is this state's): the value is not lost,
  ** another receiver, or a later recv, takes it */
  len = m->len;   /* m is the channel's again once unlocked */
  uv_mutex_lock(&w->ch->mu);
  msg_unget(w->ch, m);
  uv_mutex_unlock(&w->ch->mu);
  wait_leave(w);   /* releases the channel: after the unget */
  return braid__xcopy_decode_fail(L, rc, "channel:recv", len);
}

/* ch:recv() -> v, true, or nil, false once closed and drained. */
static int l_xrecv (lua_State *L) {
  struct xwait w;
  memset(&w, 0, sizeof w);
  w.ch = xch_check(L, "channel:recv");
  w.recv = 1;
  braid_check_suspend(L, "channel:recv");
  return braid_suspendk(L, "channel recv", sizeof w, op_start, op_cancel, &w,
                        recv_k);
}

/* The iterator of ch:iter(): recv's value alone (nil ends the loop). */
static int l_xiter_next (lua_State *L) {
  lua_settop(L, 1);
  return l_xrecv(L);
}

static int l_xiter (lua_State *L) {
  xch_check(L, "channel:iter");
  lua_pushcfunction(L, l_xiter_next);
  lua_pushvalue(L, 1);
  return 2;
}

/* ch:close(): senders waiting and later raise kind "closed"; receivers
** drain the values, then get nil, false. Harmless twice. */
static int l_xclose (lua_State *L) {
  struct braid_xchan *ch = xch_check(L, "channel:close");
  struct braid_list *n, *next;
  uv_mutex_lock(&ch->mu);
  if (!ch->closed) {
    ch->closed = 1;
    for (n = ch->queue.next; n != &ch->queue; n = next) {
      struct xmsg *m = container_of(n, struct xmsg, link);
      next = n->next;
      if (m->sender) braid__list_remove(&m->link);   /* its sender's again */
    }
    notify_all(&ch->senders);
    notify_all(&ch->receivers);
  }
  uv_mutex_unlock(&ch->mu);
  return 0;
}

static int l_xlen (lua_State *L) {
  struct braid_xchan *ch = xch_check(L, "channel:len");
  lua_Integer n;
  uv_mutex_lock(&ch->mu);
  n = (lua_Integer) ch->count;
  uv_mutex_unlock(&ch->mu);
  lua_pushinteger(L, n);
  return 1;
}

static int l_xgc (lua_State *L) {
  struct braid_xchan **box = (struct braid_xchan **) lua_touserdata(L, 1);
  if (*box) braid__xchan_release(*box);
  *box = NULL;
  return 0;
}

static int l_xtostring (lua_State *L) {
  struct braid_xchan *ch = *(struct braid_xchan **) lua_touserdata(L, 1);
  lua_pushfstring(L, "braid.SharedChannel (%p)", (void *) ch);
  return 1;
}

static const char *const chan_options[] = {"shared", NULL};

/* braid.channel([capacity = 0], [opts]): opts.shared makes a shared
** channel; anything else is the local channel (core/channel.c). */
static int l_channel (lua_State *L) {
  struct braid_xchan *ch, **box;
  lua_Integer cap;
  braid__check_options(L, 2, "braid.channel", chan_options);
  if (!lua_istable(L, 2) || lua_getfield(L, 2, "shared") == LUA_TNIL ||
      !lua_toboolean(L, -1)) {
    /* called as a plain C function, not through lua_call, so that its
    ** usage errors name the script's line (a C frame has none) */
    lua_CFunction local = lua_tocfunction(L, lua_upvalueindex(1));
    lua_settop(L, 1);
    return local(L);
  }
  cap = lua_isnoneornil(L, 1) ? 0 : braid__check_integer(L, 1, "braid.channel");
  if (cap < 0)
    braid_argerror(L, 1, "braid.channel", "capacity must not be negative");
  box = (struct braid_xchan **) lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, XCHAN_MT);
  ch = (struct braid_xchan *) braid__calloc(1, sizeof *ch);
  if (ch == NULL || uv_mutex_init(&ch->mu) != 0) {
    free(ch);
    return braid_error(L, "memory", NULL, "braid.channel: not enough memory");
  }
  atomic_init(&ch->refs, 1);
  ch->cap = (size_t) cap;
  braid__list_init(&ch->queue);
  braid__list_init(&ch->senders);
  braid__list_init(&ch->receivers);
  *box = ch;
  return 1;
}

void braid__open_xchan (lua_State *L) {
  static const luaL_Reg meta[] = {
    {"__gc", l_xgc},
    {"__tostring", l_xtostring},
    {NULL, NULL}
  };
  static const luaL_Reg methods[] = {
    {"send", l_xsend},
    {"recv", l_xrecv},
    {"close", l_xclose},
    {"iter", l_xiter},
    {"len", l_xlen},
    {NULL, NULL}
  };
  braid__class(L, XCHAN_MT, meta, methods, NULL);
  lua_setfield(L, -2, "SharedChannel");
  lua_getfield(L, -1, "channel");
  lua_pushcclosure(L, l_channel, 1);
  lua_setfield(L, -2, "channel");
}
