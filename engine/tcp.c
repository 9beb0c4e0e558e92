/*
** tcp.c: braid.tcp.connect, braid.tcp.listen, and the stream and server
** objects they return.
**
** Invariants:
** - A stream or server is a malloc'd struct with its uv_tcp_t embedded; the
**   Lua userdata only holds a pointer to it (`ud` points back at that slot).
**   uv_close runs exactly once (`closing`), the struct is freed in the close
**   callback, and the callback clears the userdata's pointer, so a method on
**   a closed object raises kind "closed" instead of touching freed memory.
**   __gc of a stream starts its close; it never frees an open handle.
** - Every open stream and server is a struct braid_resource of the scope
**   that made it (a connection's stream: its handler task's scope), so it is
**   closed when that scope ends.
** - One read buffer per stream, allocated on the first read and reused:
**   libuv reads straight into its free tail. Once started, reading stays on
**   (no read_start/read_stop per call) until the buffer is full, EOF or an
**   error. The handle is referenced only while a task waits to read, so an
**   idle stream never keeps the loop alive (deadlock detection stays exact).
** - A write that the kernel does not take at once, a shutdown and a connect
**   are operations (struct tcp_op, tcp_connect) owned jointly by the task and
**   by libuv: each is freed by whichever lets go last. The task lets go in
**   its continuation, or through the op's resource when its scope ends
**   without resuming it (abandonment). A write holds a registry reference to
**   its Lua string until the write callback, since libuv writes from it.
** - Cancelling a read only stops that wait (buffered data stays); cancelling
**   a write or a shutdown closes the stream (the only way to undo a write
**   libuv has partly done); cancelling a connect closes the half-open handle.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "internal.h"

#define STREAM_MT "braid.TcpStream"
#define SERVER_MT "braid.TcpServer"
#define READ_BUF 65536
#define MAX_LINE (1 << 20)         /* read_line refuses longer lines */

struct tcp_stream {
  uv_tcp_t tcp;
  braid_engine_t *E;
  struct tcp_stream **ud;          /* the userdata's slot, or NULL */
  struct braid_resource res;       /* in its scope while `attached` */
  struct braid_wait rwait;         /* the one pending read */
  char *buf;
  size_t cap, off, len;            /* buffered bytes: buf[off, off+len) */
  size_t scan;                     /* bytes after off known to hold no \n */
  int rerr;                        /* UV_EOF or an error once reading ended */
  unsigned char reading, waiting, closing, attached;
};

/* ---- streams: lifetime ---- */

static void stream_close_cb (uv_handle_t *h) {
  struct tcp_stream *s = container_of(h, struct tcp_stream, tcp);
  if (s->ud) *s->ud = NULL;
  free(s->buf);
  free(s);
}

/* Closes the stream (once). A task waiting to read is woken and finds the
** stream closed; pending writes end with UV_ECANCELED. Runs no Lua. */
static void stream_close (struct tcp_stream *s) {
  if (s->closing) return;
  s->closing = 1;
  if (s->attached) {
    braid__resource_remove(&s->res);
    s->attached = 0;
  }
  if (s->waiting) {
    s->waiting = 0;
    braid__task_wake(s->rwait.task, WAKE_OK);
  }
  uv_close((uv_handle_t *) &s->tcp, stream_close_cb);
}

static void stream_res_close (struct braid_resource *r) {
  struct tcp_stream *s = container_of(r, struct tcp_stream, res);
  s->attached = 0;   /* the scope has already unlinked it */
  stream_close(s);
}

/* A new stream with an initialised handle, or NULL (rc set). */
static struct tcp_stream *stream_new (braid_engine_t *E, int *rc) {
  struct tcp_stream *s = calloc(1, sizeof *s);
  if (s == NULL) {
    *rc = UV_ENOMEM;
    return NULL;
  }
  s->E = E;
  braid__list_init(&s->res.link);
  s->res.close = stream_res_close;
  if ((*rc = uv_tcp_init(E->loop, &s->tcp)) != 0) {
    free(s);
    return NULL;
  }
  uv_unref((uv_handle_t *) &s->tcp);   /* referenced only while a read waits */
  return s;
}

static void stream_attach (struct tcp_stream *s, struct braid_task *t) {
  braid__resource_add(t, &s->res);
  s->attached = 1;
}

/* Pushes an empty stream object, made before the stream is bound to it so
** that running out of memory leaves no handle without an owner.
** [-0, +1, m] */
static struct tcp_stream **stream_newud (lua_State *L) {
  struct tcp_stream **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  luaL_setmetatable(L, STREAM_MT);
  return ud;
}

/* Binds s to its object and, when t is given, makes it a resource of t's
** innermost scope. */
static void stream_bind (struct tcp_stream **ud, struct tcp_stream *s,
                         struct braid_task *t) {
  *ud = s;
  s->ud = ud;
  uv_tcp_nodelay(&s->tcp, 1);
  if (t) stream_attach(s, t);
}

/* The open stream at idx; raises kind "closed" when it is closed. */
static struct tcp_stream *stream_check (lua_State *L, int idx,
                                        const char *fname) {
  struct tcp_stream **ud = luaL_checkudata(L, idx, STREAM_MT);
  if (*ud == NULL || (*ud)->closing)
    braid__error_raise(L, "closed", NULL, "stream:%s: the stream is closed",
                       fname);
  return *ud;
}

static int io_error (lua_State *L, int rc, const char *what) {
  return braid__error_raise(L, "io", uv_err_name(rc), "%s: %s", what,
                            uv_strerror(rc));
}

/* ---- streams: reading ---- */

static void stream_alloc_cb (uv_handle_t *h, size_t hint, uv_buf_t *b) {
  struct tcp_stream *s = container_of(h, struct tcp_stream, tcp);
  (void) hint;
  /* Move what is buffered to the front only when the tail gets short. */
  if (s->off > 0 && (s->len == 0 || s->cap - s->off - s->len < s->cap / 4)) {
    memmove(s->buf, s->buf + s->off, s->len);
    s->off = 0;
  }
  b->base = s->buf + s->off + s->len;
  b->len = s->cap - s->off - s->len;
}

static void stream_read_cb (uv_stream_t *h, ssize_t n, const uv_buf_t *b) {
  struct tcp_stream *s = container_of(h, struct tcp_stream, tcp);
  (void) b;
  if (n > 0) {
    s->len += (size_t) n;
    if (s->off + s->len == s->cap && s->off == 0) {   /* full: pause */
      uv_read_stop(h);
      s->reading = 0;
    }
  } else if (n < 0) {
    if (n == UV_ENOBUFS) {
      uv_read_stop(h);
      s->reading = 0;
      return;
    }
    s->rerr = (int) n;
    uv_read_stop(h);
    s->reading = 0;
  } else {
    return;
  }
  if (s->waiting) {
    s->waiting = 0;
    uv_unref((uv_handle_t *) h);
    braid__task_wake(s->rwait.task, WAKE_OK);
  }
}

static void read_cancel (struct braid_wait *w) {
  struct tcp_stream *s = container_of(w, struct tcp_stream, rwait);
  s->waiting = 0;
  uv_unref((uv_handle_t *) &s->tcp);   /* reading goes on, into the buffer */
}

/* Makes t wait for more data on s. Returns 0 or a libuv error. */
static int stream_want (struct tcp_stream *s, struct braid_task *t,
                        const char *what) {
  int rc;
  if (s->buf == NULL) {
    if ((s->buf = malloc(READ_BUF)) == NULL) return UV_ENOMEM;
    s->cap = READ_BUF;
  }
  if (!s->reading) {
    rc = uv_read_start((uv_stream_t *) &s->tcp, stream_alloc_cb,
                       stream_read_cb);
    if (rc != 0) return rc;
    s->reading = 1;
  }
  s->waiting = 1;
  uv_ref((uv_handle_t *) &s->tcp);
  braid__task_wait(t, &s->rwait, read_cancel, what);
  return 0;
}

/* Pushes and consumes `n` buffered bytes, plus `skip` more not pushed. */
static void stream_take (lua_State *L, struct tcp_stream *s, size_t n,
                         size_t skip) {
  lua_pushlstring(L, s->buf + s->off, n);
  s->off += n + skip;
  s->len -= n + skip;
  s->scan = 0;
  if (s->len == 0) s->off = 0;
}

/* Reading has ended and the buffer is drained: pushes nil at EOF, else
** raises the read error (ECONNRESET, ...) as kind "io". */
static int stream_end (lua_State *L, struct tcp_stream *s, const char *what) {
  if (s->rerr == UV_EOF) {
    lua_pushnil(L);
    return 1;
  }
  return io_error(L, s->rerr, what);
}

static int busy_error (lua_State *L, const char *fname) {
  return braid__error_usage(L, "stream:%s: another task is already reading "
                            "this stream", fname);
}

static int read_k (lua_State *L, int status, lua_KContext ctx);

/* stream:read([n]) -> string | nil: up to n bytes (default: whatever has
** arrived), waiting for at least one; nil at EOF. */
static int l_stream_read (lua_State *L) {
  struct braid_task *t;
  stream_check(L, 1, "read");
  t = braid__task_current(L, "stream:read");
  if (!lua_isnoneornil(L, 2) &&
      (!lua_isinteger(L, 2) || lua_tointeger(L, 2) <= 0))
    braid__error_argerror(L, 2, "read", "positive integer expected");
  lua_settop(L, 2);
  braid__task_checkcancel(L, t);
  return read_k(L, LUA_OK, 0);
}

static int read_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = braid__engine(L)->current;
  struct tcp_stream *s;
  int rc;
  (void) status;
  if (ctx) braid__task_resumed(L, t);
  s = stream_check(L, 1, "read");
  if (s->len > 0) {
    size_t n = s->len;
    if (!lua_isnoneornil(L, 2) && (size_t) lua_tointeger(L, 2) < n)
      n = (size_t) lua_tointeger(L, 2);
    stream_take(L, s, n, 0);
    return 1;
  }
  if (s->rerr) return stream_end(L, s, "stream:read");
  braid__task_checkyield(L, t, "stream:read");
  if (s->waiting) return busy_error(L, "read");
  if ((rc = stream_want(s, t, "tcp read")) != 0)
    return io_error(L, rc, "stream:read");
  return braid__task_yield(L, t, 1, read_k);
}

static int line_k (lua_State *L, int status, lua_KContext ctx);

/* stream:read_line() -> string | nil: the next line without its "\n" (and
** without a "\r" before it); at EOF the unterminated rest, then nil. */
static int l_stream_read_line (lua_State *L) {
  struct braid_task *t;
  stream_check(L, 1, "read_line");
  t = braid__task_current(L, "stream:read_line");
  braid__task_checkcancel(L, t);
  return line_k(L, LUA_OK, 0);
}

static int line_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_task *t = braid__engine(L)->current;
  struct tcp_stream *s;
  char *nl;
  int rc;
  (void) status;
  if (ctx) braid__task_resumed(L, t);
  s = stream_check(L, 1, "read_line");
  nl = s->len > s->scan ? memchr(s->buf + s->off + s->scan, '\n',
                                 s->len - s->scan) : NULL;
  if (nl) {
    size_t n = (size_t) (nl - (s->buf + s->off));
    size_t cr = n > 0 && s->buf[s->off + n - 1] == '\r';
    stream_take(L, s, n - cr, 1 + cr);
    return 1;
  }
  s->scan = s->len;
  if (s->rerr) {
    if (s->len > 0 && s->rerr == UV_EOF) {
      stream_take(L, s, s->len, 0);
      return 1;
    }
    return stream_end(L, s, "stream:read_line");
  }
  if (s->buf && s->len == s->cap) {   /* a long line: grow the buffer */
    char *nb;
    if (s->cap >= MAX_LINE)
      return braid__error_raise(L, "io", "ENOBUFS", "stream:read_line: line "
                                "longer than %d bytes", MAX_LINE);
    if ((nb = realloc(s->buf, s->cap * 2)) == NULL)
      return io_error(L, UV_ENOMEM, "stream:read_line");
    s->buf = nb;
    s->cap *= 2;
  }
  braid__task_checkyield(L, t, "stream:read_line");
  if (s->waiting) return busy_error(L, "read_line");
  if ((rc = stream_want(s, t, "tcp read_line")) != 0)
    return io_error(L, rc, "stream:read_line");
  return braid__task_yield(L, t, 1, line_k);
}

/* stream:lines() -> iterator over read_line, for a generic for. */
static int l_stream_lines (lua_State *L) {
  stream_check(L, 1, "lines");
  lua_pushcfunction(L, l_stream_read_line);
  lua_pushvalue(L, 1);
  return 2;
}

/* ---- streams: writes and shutdown ---- */

/* A write or a shutdown in flight. */
struct tcp_op {
  union {
    uv_write_t write;
    uv_shutdown_t shutdown;
  } req;
  braid_engine_t *E;
  struct braid_wait wait;
  struct braid_resource res;   /* lets the task's scope let go of it */
  struct tcp_stream *s;
  int ref;                     /* the string being written */
  int status;
  unsigned char done, waiting, orphan;
};

/* libuv let go; the task may still hold the op. */
static void op_done (struct tcp_op *op, int status) {
  op->status = status;
  op->done = 1;
  luaL_unref(op->E->S, LUA_REGISTRYINDEX, op->ref);
  op->ref = LUA_NOREF;
  if (op->waiting) {
    op->waiting = 0;
    braid__task_wake(op->wait.task, WAKE_OK);
  } else if (op->orphan) {
    free(op);
  }
}

static void write_cb (uv_write_t *req, int status) {
  op_done(container_of(req, struct tcp_op, req.write), status);
}

static void shutdown_cb (uv_shutdown_t *req, int status) {
  op_done(container_of(req, struct tcp_op, req.shutdown), status);
}

/* The task lets go of the op (its continuation, or its scope ended). */
static void op_release (struct tcp_op *op) {
  op->waiting = 0;
  if (op->done) free(op);
  else op->orphan = 1;
}

static void op_res_close (struct braid_resource *r) {
  op_release(container_of(r, struct tcp_op, res));
}

/* A write cannot be taken back once libuv has started it: close the
** stream, so that it ends now (UV_ECANCELED) and nothing half-written is
** followed by later data. */
static void op_cancel (struct braid_wait *w) {
  struct tcp_op *op = container_of(w, struct tcp_op, wait);
  op->waiting = 0;
  stream_close(op->s);
}

static struct tcp_op *op_new (lua_State *L, struct tcp_stream *s) {
  struct tcp_op *op = calloc(1, sizeof *op);
  if (op == NULL) io_error(L, UV_ENOMEM, "tcp");
  op->E = s->E;
  op->s = s;
  op->ref = LUA_NOREF;
  braid__list_init(&op->res.link);
  op->res.close = op_res_close;
  return op;
}

static void op_wait (struct tcp_op *op, struct braid_task *t,
                     const char *what) {
  op->waiting = 1;
  braid__resource_add(t, &op->res);
  braid__task_wait(t, &op->wait, op_cancel, what);
}

/* Shared continuation of write and shutdown: the stream object at 1. */
static int op_k (lua_State *L, int status, lua_KContext ctx) {
  struct tcp_op *op = (struct tcp_op *) ctx;
  struct braid_task *t = braid__engine(L)->current;
  int rc = op->done ? op->status : UV_ECANCELED;
  (void) status;
  braid__resource_remove(&op->res);
  op_release(op);
  braid__task_resumed(L, t);
  if (rc == UV_ECANCELED)
    return braid__error_raise(L, "closed", "ECANCELED", "stream: the stream "
                              "was closed during the operation");
  if (rc < 0) return io_error(L, rc, "stream");
  lua_settop(L, 1);
  return 1;
}

/* stream:write(s) -> stream: returns once libuv has written all of s (so a
** slow peer slows the writer down instead of growing its memory). */
static int l_stream_write (lua_State *L) {
  struct tcp_stream *s = stream_check(L, 1, "write");
  struct braid_task *t = braid__task_current(L, "stream:write");
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  struct tcp_op *op;
  uv_buf_t b;
  int rc;
  lua_settop(L, 2);
  braid__task_checkyield(L, t, "stream:write");
  braid__task_checkcancel(L, t);
  b = uv_buf_init((char *) data, (unsigned) len);
  rc = len ? uv_try_write((uv_stream_t *) &s->tcp, &b, 1) : 0;
  if (rc == (int) len) {   /* the common case: no request, no suspension */
    lua_settop(L, 1);
    return 1;
  }
  if (rc < 0 && rc != UV_EAGAIN) return io_error(L, rc, "stream:write");
  if (rc > 0) b = uv_buf_init((char *) data + rc, (unsigned) (len - rc));
  op = op_new(L, s);
  lua_pushvalue(L, 2);
  op->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  rc = uv_write(&op->req.write, (uv_stream_t *) &s->tcp, &b, 1, write_cb);
  if (rc != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, op->ref);
    free(op);
    return io_error(L, rc, "stream:write");
  }
  op_wait(op, t, "tcp write");
  lua_settop(L, 1);
  return braid__task_yield(L, t, (lua_KContext) op, op_k);
}

/* stream:shutdown(): half-close, once pending writes are done; the peer
** reads EOF, and this side can still read. */
static int l_stream_shutdown (lua_State *L) {
  struct tcp_stream *s = stream_check(L, 1, "shutdown");
  struct braid_task *t = braid__task_current(L, "stream:shutdown");
  struct tcp_op *op;
  int rc;
  lua_settop(L, 1);
  braid__task_checkyield(L, t, "stream:shutdown");
  braid__task_checkcancel(L, t);
  op = op_new(L, s);
  rc = uv_shutdown(&op->req.shutdown, (uv_stream_t *) &s->tcp, shutdown_cb);
  if (rc != 0) {
    free(op);
    return io_error(L, rc, "stream:shutdown");
  }
  op_wait(op, t, "tcp shutdown");
  return braid__task_yield(L, t, (lua_KContext) op, op_k);
}

/* stream:close(): closes at once; never waits, so it suits __close. */
static int l_stream_close (lua_State *L) {
  struct tcp_stream **ud = luaL_checkudata(L, 1, STREAM_MT);
  if (*ud) stream_close(*ud);
  return 0;
}

static int l_stream_gc (lua_State *L) {
  struct tcp_stream **ud = luaL_checkudata(L, 1, STREAM_MT);
  if (*ud) {
    (*ud)->ud = NULL;
    stream_close(*ud);
    *ud = NULL;
  }
  return 0;
}

static int l_stream_tostring (lua_State *L) {
  struct tcp_stream **ud = luaL_checkudata(L, 1, STREAM_MT);
  lua_pushfstring(L, "<tcp stream %p%s>", (void *) ud,
                  *ud && !(*ud)->closing ? "" : " closed");
  return 1;
}

/* ---- connect ---- */

struct tcp_connect {
  braid_engine_t *E;
  struct braid_wait wait;
  struct braid_resource res;
  struct braid_timer timer;       /* opts.timeout */
  uv_getaddrinfo_t gai;
  uv_connect_t req;
  struct addrinfo *ai, *next;     /* resolved addresses, the next to try */
  struct tcp_stream *s;           /* the current attempt, then the result */
  int status, busy;               /* busy: libuv callbacks still to come */
  unsigned char waiting, owned, stopped;
};

static void conn_free (struct tcp_connect *c) {
  if (c->busy || c->owned) return;
  if (c->ai) uv_freeaddrinfo(c->ai);
  free(c);
}

/* Ends the attempt for good: no more callbacks will act. */
static void conn_stop (struct tcp_connect *c) {
  c->stopped = 1;
  braid__timer_stop(c->E, &c->timer);
  if (c->busy && c->s == NULL) uv_cancel((uv_req_t *) &c->gai);
  if (c->s && c->busy) {          /* a half-open connect: close undoes it */
    stream_close(c->s);
    c->s = NULL;
  }
}

static void conn_finish (struct tcp_connect *c, int status) {
  conn_stop(c);
  c->status = status;
  if (c->waiting) {
    c->waiting = 0;
    braid__task_wake(c->wait.task, WAKE_OK);
  }
}

static void connect_cb (uv_connect_t *req, int status);

/* Starts connecting to sa; 0 or a libuv error. */
static int conn_attempt (struct tcp_connect *c, const struct sockaddr *sa) {
  int rc;
  if ((c->s = stream_new(c->E, &rc)) == NULL) return rc;
  rc = uv_tcp_connect(&c->req, &c->s->tcp, sa, connect_cb);
  if (rc == 0) {
    c->busy++;
    return 0;
  }
  stream_close(c->s);
  c->s = NULL;
  return rc;
}

/* Tries the resolved addresses in turn, from c->next. */
static void conn_try (struct tcp_connect *c, int last) {
  while (c->next) {
    const struct sockaddr *sa = c->next->ai_addr;
    c->next = c->next->ai_next;
    if ((last = conn_attempt(c, sa)) == 0) return;
  }
  conn_finish(c, last);
}

static void connect_cb (uv_connect_t *req, int status) {
  struct tcp_connect *c = container_of(req, struct tcp_connect, req);
  c->busy--;
  if (c->stopped) {
    conn_free(c);
    return;
  }
  if (status == 0) {
    conn_finish(c, 0);
    return;
  }
  stream_close(c->s);
  c->s = NULL;
  conn_try(c, status);
}

static void gai_cb (uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct tcp_connect *c = container_of(req, struct tcp_connect, gai);
  c->busy--;
  if (c->stopped) {
    if (res) uv_freeaddrinfo(res);
    conn_free(c);
    return;
  }
  c->ai = c->next = res;
  if (status < 0) conn_finish(c, status);
  else conn_try(c, UV_EAI_NONAME);
}

static void conn_timeout_cb (struct braid_timer *tm) {
  conn_finish(container_of(tm, struct tcp_connect, timer), UV_ETIMEDOUT);
}

static void conn_cancel (struct braid_wait *w) {
  struct tcp_connect *c = container_of(w, struct tcp_connect, wait);
  c->waiting = 0;
  conn_stop(c);
}

/* The task lets go: a finished connection nobody took is closed. */
static void conn_release (struct tcp_connect *c) {
  c->waiting = 0;
  conn_stop(c);
  if (c->s) {
    stream_close(c->s);
    c->s = NULL;
  }
  c->owned = 0;
  conn_free(c);
}

static void conn_res_close (struct braid_resource *r) {
  conn_release(container_of(r, struct tcp_connect, res));
}

static int connect_k (lua_State *L, int status, lua_KContext ctx) {
  struct tcp_connect *c = (struct tcp_connect *) ctx;
  struct braid_task *t = braid__engine(L)->current;
  struct tcp_stream **ud = stream_newud(L);   /* may raise: c still owns s */
  struct tcp_stream *s = c->status == 0 ? c->s : NULL;
  int rc = c->status;
  (void) status;
  c->s = NULL;
  braid__resource_remove(&c->res);
  conn_release(c);
  if (s && t->wake != WAKE_OK) {   /* the wake-up raises: drop the stream */
    stream_close(s);
    s = NULL;
  }
  braid__task_resumed(L, t);
  if (rc < 0)
    return braid__error_raise(L, "io", uv_err_name(rc), "tcp.connect %s:%d: "
                              "%s", lua_tostring(L, 1),
                              (int) lua_tointeger(L, 2), uv_strerror(rc));
  stream_bind(ud, s, t);
  return 1;
}

static const char *const connect_options[] = {"timeout", NULL};

/* braid.tcp.connect(host, port, [opts]) -> stream. opts.timeout (seconds)
** bounds resolution and connection; errors are kind "io" with `code`. */
static int l_tcp_connect (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "tcp.connect");
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  double timeout;
  struct tcp_connect *c;
  struct sockaddr_storage sa;
  char portstr[16];
  int rc;
  if (port < 0 || port > 65535)
    braid__error_argerror(L, 2, "tcp.connect", "port out of range");
  braid__check_options(L, 3, "tcp.connect", connect_options);
  timeout = braid__opt_number(L, 3, "timeout", -1, "tcp.connect");
  lua_settop(L, 2);
  braid__task_checkyield(L, t, "tcp.connect");
  braid__task_checkcancel(L, t);
  if ((c = calloc(1, sizeof *c)) == NULL) io_error(L, UV_ENOMEM, "tcp.connect");
  c->E = t->E;
  c->owned = 1;
  c->waiting = 1;
  braid__list_init(&c->res.link);
  c->res.close = conn_res_close;
  braid__resource_add(t, &c->res);
  braid__task_wait(t, &c->wait, conn_cancel, "tcp connect");
  /* A numeric address needs no resolver thread. */
  if (uv_ip4_addr(host, (int) port, (struct sockaddr_in *) &sa) == 0 ||
      uv_ip6_addr(host, (int) port, (struct sockaddr_in6 *) &sa) == 0) {
    if ((rc = conn_attempt(c, (struct sockaddr *) &sa)) != 0)
      conn_finish(c, rc);
  } else {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof portstr, "%d", (int) port);
    rc = uv_getaddrinfo(t->E->loop, &c->gai, gai_cb, host, portstr, &hints);
    if (rc == 0) c->busy++;
    else conn_finish(c, rc);
  }
  if (c->waiting && timeout >= 0)   /* else it finished at once: woken */
    braid__timer_start(t->E, &c->timer, (uint64_t) (timeout * 1e9),
                       conn_timeout_cb);
  return braid__task_yield(L, t, (lua_KContext) c, connect_k);
}

/* ---- servers ---- */

struct tcp_server {
  uv_tcp_t tcp;
  braid_engine_t *E;
  struct tcp_server **ud;
  struct braid_resource res;
  struct braid_scope *scope;       /* where handlers are spawned */
  struct braid_list conns;         /* struct tcp_conn: running handlers */
  int handler_ref;
  int port;
  unsigned char closing;
};

/* A handler task, watched so that server:close() can cancel it. */
struct tcp_conn {
  struct braid_watch watch;
  struct braid_list link;          /* in the server's conns, or alone */
  struct braid_task *task;
};

static void conn_task_done (struct braid_watch *w, struct braid_task *t) {
  struct tcp_conn *k = container_of(w, struct tcp_conn, watch);
  (void) t;
  braid__list_remove(&k->link);
  free(k);
}

static void server_close_cb (uv_handle_t *h) {
  struct tcp_server *srv = container_of(h, struct tcp_server, tcp);
  if (srv->ud) *srv->ud = NULL;
  free(srv);
}

/* Stops listening and cancels the handlers still running. Runs no Lua. */
static void server_close (struct tcp_server *srv) {
  if (srv->closing) return;
  srv->closing = 1;
  braid__resource_remove(&srv->res);
  luaL_unref(srv->E->S, LUA_REGISTRYINDEX, srv->handler_ref);
  srv->handler_ref = LUA_NOREF;
  while (!braid__list_empty(&srv->conns)) {
    struct tcp_conn *k = container_of(srv->conns.next, struct tcp_conn, link);
    braid__list_remove(&k->link);     /* k lives on until its task ends */
    braid__task_cancel(k->task, NULL, 0);
  }
  uv_close((uv_handle_t *) &srv->tcp, server_close_cb);
}

static void server_res_close (struct braid_resource *r) {
  server_close(container_of(r, struct tcp_server, res));
}

/* Accepts one connection and spawns its handler; on E->S, under pcall. */
static int server_accept (lua_State *S) {
  struct tcp_server *srv = lua_touserdata(S, 1);
  struct tcp_stream *s, **ud;
  struct braid_task *t;
  struct tcp_conn *k;
  int rc;
  lua_rawgeti(S, LUA_REGISTRYINDEX, srv->handler_ref);      /* 2 */
  ud = stream_newud(S);                                     /* 3 */
  if ((s = stream_new(srv->E, &rc)) == NULL) return 0;
  if (uv_accept((uv_stream_t *) &srv->tcp, (uv_stream_t *) &s->tcp) != 0) {
    stream_close(s);
    return 0;
  }
  stream_bind(ud, s, NULL);   /* if the spawn fails, __gc closes it */
  t = braid__task_spawn(S, srv->scope, 2, 1);
  stream_attach(s, t);        /* the handler's own scope owns the stream */
  if ((k = malloc(sizeof *k)) == NULL) return 0;   /* not cancellable by
                                                      server:close, still a
                                                      child of the scope */
  braid__list_init(&k->link);
  k->watch.done = conn_task_done;
  k->task = t;
  braid__list_push(&t->watchers, &k->watch.link);
  braid__list_push(&srv->conns, &k->link);
  return 0;
}

static void server_connection_cb (uv_stream_t *h, int status) {
  struct tcp_server *srv = container_of(h, struct tcp_server, tcp);
  lua_State *S = srv->E->S;
  struct braid_scope *sc = srv->scope;
  if (status < 0 || srv->closing) return;   /* EMFILE and the like: retry */
  /* A scope being cancelled, or ending, takes no new members: refuse. */
  if (sc->cancelled || (sc->joining && sc->pending == 0)) {
    uv_tcp_t *tmp = malloc(sizeof *tmp);
    if (tmp && uv_tcp_init(srv->E->loop, tmp) == 0) {
      uv_accept(h, (uv_stream_t *) tmp);
      uv_close((uv_handle_t *) tmp, (uv_close_cb) free);
    } else {
      free(tmp);
    }
    return;
  }
  lua_pushcfunction(S, server_accept);
  lua_pushlightuserdata(S, srv);
  if (lua_pcall(S, 1, 0, 0) != LUA_OK) lua_pop(S, 1);   /* out of memory */
}

static const char *const listen_options[] = {"backlog", NULL};

/* braid.tcp.listen([host], port, handler, [opts]) -> server. host defaults
** to "127.0.0.1"; port 0 picks a free one. Each connection runs
** handler(stream) as a child task of the calling scope. */
static int l_tcp_listen (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "tcp.listen");
  const char *host = luaL_optstring(L, 1, "127.0.0.1");
  lua_Integer port = luaL_checkinteger(L, 2);
  struct sockaddr_storage sa;
  struct tcp_server *srv, **ud;
  int rc, backlog, len = sizeof sa;
  if (port < 0 || port > 65535)
    braid__error_argerror(L, 2, "tcp.listen", "port out of range");
  if (!braid__is_callable(L, 3))
    braid__error_argerror(L, 3, "tcp.listen", "function expected");
  braid__check_options(L, 4, "tcp.listen", listen_options);
  backlog = (int) braid__opt_number(L, 4, "backlog", 511, "tcp.listen");
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  if (uv_ip4_addr(host, (int) port, (struct sockaddr_in *) &sa) != 0 &&
      uv_ip6_addr(host, (int) port, (struct sockaddr_in6 *) &sa) != 0)
    braid__error_argerror(L, 1, "tcp.listen", "numeric IP address expected");
  braid__task_checkcancel(L, t);
  if ((srv = calloc(1, sizeof *srv)) == NULL)
    io_error(L, UV_ENOMEM, "tcp.listen");
  srv->E = t->E;
  srv->handler_ref = LUA_NOREF;
  braid__list_init(&srv->conns);
  braid__list_init(&srv->res.link);
  srv->res.close = server_res_close;
  if ((rc = uv_tcp_init(t->E->loop, &srv->tcp)) != 0) {
    free(srv);
    return io_error(L, rc, "tcp.listen");
  }
  srv->closing = 1;   /* until it listens: a failure closes it quietly */
  if ((rc = uv_tcp_bind(&srv->tcp, (struct sockaddr *) &sa, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *) &srv->tcp, backlog,
                      server_connection_cb)) != 0 ||
      (rc = uv_tcp_getsockname(&srv->tcp, (struct sockaddr *) &sa, &len))) {
    uv_close((uv_handle_t *) &srv->tcp, server_close_cb);
    return braid__error_raise(L, "io", uv_err_name(rc), "tcp.listen %s:%d: "
                              "%s", host, (int) port, uv_strerror(rc));
  }
  srv->closing = 0;
  srv->port = ntohs(((struct sockaddr_in *) &sa)->sin_port);
  srv->scope = t->inner;   /* first: out of memory below, the scope closes it */
  braid__resource_add(t, &srv->res);
  ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = srv;
  srv->ud = ud;
  luaL_setmetatable(L, SERVER_MT);
  lua_pushvalue(L, 3);
  srv->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

static struct tcp_server *server_check (lua_State *L, const char *fname) {
  struct tcp_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (*ud == NULL || (*ud)->closing)
    braid__error_raise(L, "closed", NULL, "server:%s: the server is closed",
                       fname);
  return *ud;
}

/* server:port() -> the port it listens on. */
static int l_server_port (lua_State *L) {
  lua_pushinteger(L, server_check(L, "port")->port);
  return 1;
}

/* server:close(): stops listening and cancels the running handlers. */
static int l_server_close (lua_State *L) {
  struct tcp_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (*ud) server_close(*ud);
  return 0;
}

/* A server the script no longer references keeps serving: its scope owns
** it and closes it when the scope ends. Only the back pointer goes. */
static int l_server_gc (lua_State *L) {
  struct tcp_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (*ud) (*ud)->ud = NULL;
  return 0;
}

static int l_server_tostring (lua_State *L) {
  struct tcp_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (*ud && !(*ud)->closing)
    lua_pushfstring(L, "<tcp server on port %d>", (*ud)->port);
  else
    lua_pushliteral(L, "<tcp server closed>");
  return 1;
}

/* Adds braid.tcp to the table at the stack top. (Writes to a peer that has
** gone fail with EPIPE: see engine_sigpipe in loop.c.) */
void braid__open_tcp (lua_State *L) {
  static const luaL_Reg stream_methods[] = {
    {"read", l_stream_read},
    {"read_line", l_stream_read_line},
    {"lines", l_stream_lines},
    {"write", l_stream_write},
    {"shutdown", l_stream_shutdown},
    {"close", l_stream_close},
    {NULL, NULL}
  };
  static const luaL_Reg stream_meta[] = {
    {"__gc", l_stream_gc},
    {"__close", l_stream_close},
    {"__tostring", l_stream_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg server_methods[] = {
    {"port", l_server_port},
    {"close", l_server_close},
    {NULL, NULL}
  };
  static const luaL_Reg server_meta[] = {
    {"__gc", l_server_gc},
    {"__close", l_server_close},
    {"__tostring", l_server_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"connect", l_tcp_connect},
    {"listen", l_tcp_listen},
    {NULL, NULL}
  };
  braid__class(L, STREAM_MT, stream_meta, stream_methods, NULL);
  braid__class(L, SERVER_MT, server_meta, server_methods, NULL);
  lua_pop(L, 2);
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "tcp");
}
