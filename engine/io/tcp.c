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
** - Every open stream and server is a braid_resource_t of the scope
**   that made it (a connection's stream: its handler task's scope), so it is
**   closed when that scope ends.
** - One read buffer per stream, allocated on the first read and reused:
**   libuv reads straight into its free tail. Once started, reading stays on
**   (no read_start/read_stop per call) until the buffer is full, EOF or an
**   error. The handle is referenced only while a task waits to read, so an
**   idle stream never keeps the loop alive (deadlock detection stays exact).
** - Every wait is a braid_suspendk op, as an embedder's would be. The
**   object waited on keeps the op (a stream its one pending read, a write,
**   shutdown or connect request its task's op) and clears it when it
**   resumes the op or the op's on_cancel runs; the op's data points back at
**   the object and is cleared on resume, so an on_cancel that comes after
**   the resume (the task abandoned before its continuation ran) finds
**   nothing to undo. Callbacks resume with at most an integer status; the
**   continuations build the Lua results, in the task.
** - A write that the kernel does not take at once, a shutdown and a connect
**   need a request that libuv may hold after the task let go, so each is
**   its own allocation (struct tcp_req, tcp_connect), never op data: a
**   write or shutdown request is freed by its callback; a connect is freed
**   by whichever of the task (continuation or on_cancel) and libuv lets go
**   last. A write holds a registry reference to its Lua string until the
**   write callback, since libuv writes from it.
** - Cancelling a read only stops that wait (buffered data stays); cancelling
**   a write or a shutdown closes the stream (the only way to undo a write
**   libuv has partly done); cancelling a connect closes the half-open handle.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/stream.h"

#define STREAM_MT "braid.TcpStream"
#define SERVER_MT "braid.TcpServer"
#define READ_BUF 65536
#define MAX_LINE (1 << 20)         /* read_line refuses longer lines */

struct tcp_stream {
  uv_tcp_t tcp;
  braid_engine_t *E;
  struct tcp_stream **ud;          /* the userdata's slot, or NULL */
  braid_resource_t res;            /* in its scope while `attached` */
  braid_op_t *rop;                 /* the one pending read, or NULL */
  char *buf;
  size_t cap, off, len;            /* buffered bytes: buf[off, off+len) */
  size_t scan;                     /* bytes after off known to hold no \n */
  int rerr;                        /* UV_EOF or an error once reading ended */
  unsigned char reading, closing, attached;
};

/* ---- streams: lifetime ---- */

static void stream_close_cb (uv_handle_t *h) {
  struct tcp_stream *s = container_of(h, struct tcp_stream, tcp);
  if (s->ud) *s->ud = NULL;
  free(s->buf);
  free(s);
}

/* Resumes the pending read, whose continuation looks at the stream again
** (the data, the end, or the stream closed). */
static void stream_wake (struct tcp_stream *s) {
  braid_op_t *op = s->rop;
  s->rop = NULL;
  *(struct tcp_stream **) braid_op_data(op) = NULL;   /* nothing to cancel */
  uv_unref((uv_handle_t *) &s->tcp);
  braid_resume(op, 0);
}

/* Closes the stream (once). A task waiting to read is woken and finds the
** stream closed; pending writes end with UV_ECANCELED. Runs no Lua. */
static void stream_close (struct tcp_stream *s) {
  if (s->closing) return;
  s->closing = 1;
  if (s->attached) {
    braid_resource_remove(&s->res);
    s->attached = 0;
  }
  if (s->rop) stream_wake(s);
  uv_close((uv_handle_t *) &s->tcp, stream_close_cb);
}

static void stream_res_close (braid_resource_t *r) {
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
  s->res.close = stream_res_close;
  if ((*rc = uv_tcp_init(braid_loop(E), &s->tcp)) != 0) {
    free(s);
    return NULL;
  }
  uv_unref((uv_handle_t *) &s->tcp);   /* referenced only while a read waits */
  return s;
}

/* Makes s a resource of the running task's innermost scope (t NULL) or
** of handler task t's own scope. */
static void stream_attach (lua_State *L, struct tcp_stream *s,
                           braid_task_t *t) {
  if (t) braid__task_resource_add(t, &s->res);
  else braid_resource_add(L, &s->res);
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

/* Binds s to its object. */
static void stream_bind (struct tcp_stream **ud, struct tcp_stream *s) {
  *ud = s;
  s->ud = ud;
  uv_tcp_nodelay(&s->tcp, 1);
}

/* The open stream at idx; raises kind "closed" when it is closed. */
static struct tcp_stream *stream_check (lua_State *L, int idx,
                                        const char *fname) {
  struct tcp_stream **ud = luaL_checkudata(L, idx, STREAM_MT);
  if (*ud == NULL || (*ud)->closing)
    braid_error(L, "closed", NULL, "stream:%s: the stream is closed",
                       fname);
  return *ud;
}

static int io_error (lua_State *L, int rc, const char *what) {
  return braid_error(L, "io", uv_err_name(rc), "%s: %s", what,
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
  if (s->rop) stream_wake(s);
}

/* A read op's data is its stream, until the op is resumed. */
static int read_start (braid_op_t *op, void *ud) {
  struct tcp_stream *s = (struct tcp_stream *) ud;
  *(struct tcp_stream **) braid_op_data(op) = s;
  s->rop = op;
  uv_ref((uv_handle_t *) &s->tcp);
  return 0;
}

static void read_cancel (braid_op_t *op) {
  struct tcp_stream *s = *(struct tcp_stream **) braid_op_data(op);
  if (s == NULL) return;               /* resumed: nothing was consumed */
  s->rop = NULL;
  uv_unref((uv_handle_t *) &s->tcp);   /* reading goes on, into the buffer */
}

static int busy_error (lua_State *L, const char *fname) {
  return braid_usageerror(L, "%s: another task is already reading this "
                            "stream", fname);
}

/* Suspends the task until more data (or the end) arrives on s, then runs
** k, which looks again; the stream object is at 1. Raises a usage error
** where the task cannot wait, or when another task reads s. */
static int stream_wait (lua_State *L, struct tcp_stream *s, const char *fname,
                        const char *what, braid_k_fn k) {
  int rc;
  braid_check_suspend(L, fname);
  if (s->rop) return busy_error(L, fname);
  if (s->buf == NULL) {
    if ((s->buf = malloc(READ_BUF)) == NULL)
      return io_error(L, UV_ENOMEM, fname);
    s->cap = READ_BUF;
  }
  if (!s->reading) {
    rc = uv_read_start((uv_stream_t *) &s->tcp, stream_alloc_cb,
                       stream_read_cb);
    if (rc != 0) return io_error(L, rc, fname);
    s->reading = 1;
  }
  return braid_suspendk(L, what, sizeof s, read_start, read_cancel, s, k);
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

static int read_k (lua_State *L, braid_op_t *op);

/* stream:read([n]) -> string | nil: up to n bytes (default: whatever has
** arrived), waiting for at least one; nil at EOF. */
static int l_stream_read (lua_State *L) {
  stream_check(L, 1, "read");
  braid_check_task(L, "stream:read");
  if (!lua_isnoneornil(L, 2) &&
      (!lua_isinteger(L, 2) || lua_tointeger(L, 2) <= 0))
    braid_argerror(L, 2, "read", "positive integer expected");
  lua_settop(L, 2);
  return read_k(L, NULL);
}

/* Also read's first look: buffered data is returned without suspending. */
static int read_k (lua_State *L, braid_op_t *op) {
  struct tcp_stream *s = stream_check(L, 1, "read");
  (void) op;
  if (s->len > 0) {
    size_t n = s->len;
    if (!lua_isnoneornil(L, 2) && (size_t) lua_tointeger(L, 2) < n)
      n = (size_t) lua_tointeger(L, 2);
    stream_take(L, s, n, 0);
    return 1;
  }
  if (s->rerr) return stream_end(L, s, "stream:read");
  return stream_wait(L, s, "stream:read", "tcp read", read_k);
}

static int line_k (lua_State *L, braid_op_t *op);

/* stream:read_line() -> string | nil: the next line without its "\n" (and
** without a "\r" before it); at EOF the unterminated rest, then nil. */
static int l_stream_read_line (lua_State *L) {
  stream_check(L, 1, "read_line");
  braid_check_task(L, "stream:read_line");
  return line_k(L, NULL);
}

/* Also read_line's first look; it suspends again while no line is whole. */
static int line_k (lua_State *L, braid_op_t *op) {
  struct tcp_stream *s = stream_check(L, 1, "read_line");
  char *nl;
  (void) op;
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
      return braid_error(L, "io", "ENOBUFS", "stream:read_line: line "
                                "longer than %d bytes", MAX_LINE);
    if ((nb = realloc(s->buf, s->cap * 2)) == NULL)
      return io_error(L, UV_ENOMEM, "stream:read_line");
    s->buf = nb;
    s->cap *= 2;
  }
  return stream_wait(L, s, "stream:read_line", "tcp read_line", line_k);
}

/* stream:lines() -> iterator over read_line, for a generic for. */
static int l_stream_lines (lua_State *L) {
  stream_check(L, 1, "lines");
  lua_pushcfunction(L, l_stream_read_line);
  lua_pushvalue(L, 1);
  return 2;
}

/* ---- streams: writes and shutdown ---- */

/* A write or a shutdown in flight, freed by its callback. */
struct tcp_req {
  union {
    uv_write_t write;
    uv_shutdown_t shutdown;
  } req;
  braid_engine_t *E;
  braid_op_t *op;              /* the waiting task's; NULL once it let go */
  struct tcp_stream *s;
  int ref;                     /* the string being written, or LUA_NOREF */
};

/* libuv let go: hands the status to the task, if it still waits. */
static void req_done (struct tcp_req *r, int status) {
  braid__unref(r->E, r->ref);
  if (r->op) {
    *(struct tcp_req **) braid_op_data(r->op) = NULL;
    lua_pushinteger(braid_op_state(r->op), status);
    braid_resume(r->op, 1);
  }
  free(r);
}

static void write_cb (uv_write_t *req, int status) {
  req_done(container_of(req, struct tcp_req, req.write), status);
}

static void shutdown_cb (uv_shutdown_t *req, int status) {
  req_done(container_of(req, struct tcp_req, req.shutdown), status);
}

static int req_start (braid_op_t *op, void *ud) {
  struct tcp_req *r = (struct tcp_req *) ud;
  *(struct tcp_req **) braid_op_data(op) = r;
  r->op = op;
  return 0;
}

/* A write cannot be taken back once libuv has started it: close the
** stream, so that it ends now (UV_ECANCELED) and nothing half-written is
** followed by later data. The callback, still to come, frees r. The
** string goes now: uv_close has closed the socket, so libuv reads it no
** more, and when the callback comes the engine may be gone (braid_close
** on an application's loop). */
static void req_cancel (braid_op_t *op) {
  struct tcp_req *r = *(struct tcp_req **) braid_op_data(op);
  if (r == NULL) return;   /* done already: only its status was left */
  r->op = NULL;
  stream_close(r->s);
  braid__unref(r->E, r->ref);
  r->ref = LUA_NOREF;
}

/* A request holding `ref` (LUA_NOREF: none), released if this raises. The
** request is the callback's to free, whether or not a task waits for it. */
static struct tcp_req *req_new (lua_State *L, struct tcp_stream *s, int ref) {
  struct tcp_req *r = calloc(1, sizeof *r);
  if (r == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    io_error(L, UV_ENOMEM, "tcp");
  }
  r->E = s->E;
  r->s = s;
  r->ref = ref;
  return r;
}

/* Shared continuation of write and shutdown: the stream object at 1, the
** status on top. */
static int req_k (lua_State *L, braid_op_t *op) {
  int rc = (int) lua_tointeger(L, -1);
  (void) op;
  if (rc == UV_ECANCELED)
    return braid_error(L, "closed", "ECANCELED", "stream: the stream "
                              "was closed during the operation");
  if (rc < 0) return io_error(L, rc, "stream");
  lua_settop(L, 1);
  return 1;
}

/* stream:write(s) -> stream: returns once libuv has written all of s (so a
** slow peer slows the writer down instead of growing its memory). */
static int l_stream_write (lua_State *L) {
  struct tcp_stream *s = stream_check(L, 1, "write");
  braid_check_task(L, "stream:write");
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  struct tcp_req *r;
  uv_buf_t b;
  int rc;
  lua_settop(L, 2);
  braid_check_suspend(L, "stream:write");
  b = uv_buf_init((char *) data, (unsigned) len);
  rc = len ? uv_try_write((uv_stream_t *) &s->tcp, &b, 1) : 0;
  if (rc == (int) len) {   /* the common case: no request, no suspension */
    lua_settop(L, 1);
    return 1;
  }
  if (rc < 0 && rc != UV_EAGAIN) return io_error(L, rc, "stream:write");
  if (rc > 0) b = uv_buf_init((char *) data + rc, (unsigned) (len - rc));
  lua_pushvalue(L, 2);
  r = req_new(L, s, luaL_ref(L, LUA_REGISTRYINDEX));   /* ref may raise */
  rc = uv_write(&r->req.write, (uv_stream_t *) &s->tcp, &b, 1, write_cb);
  if (rc != 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    free(r);
    return io_error(L, rc, "stream:write");
  }
  lua_settop(L, 1);
  return braid_suspendk(L, "tcp write", sizeof r, req_start, req_cancel, r,
                        req_k);
}

/* stream:shutdown(): half-close, once pending writes are done; the peer
** reads EOF, and this side can still read. */
static int l_stream_shutdown (lua_State *L) {
  struct tcp_stream *s = stream_check(L, 1, "shutdown");
  braid_check_task(L, "stream:shutdown");
  struct tcp_req *r;
  int rc;
  lua_settop(L, 1);
  braid_check_suspend(L, "stream:shutdown");
  r = req_new(L, s, LUA_NOREF);
  rc = uv_shutdown(&r->req.shutdown, (uv_stream_t *) &s->tcp, shutdown_cb);
  if (rc != 0) {
    free(r);
    return io_error(L, rc, "stream:shutdown");
  }
  return braid_suspendk(L, "tcp shutdown", sizeof r, req_start, req_cancel,
                        r, req_k);
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
  braid_op_t *op;                 /* the waiting task's, until finished */
  braid_timer_t timer;            /* opts.timeout */
  uv_getaddrinfo_t gai;
  uv_connect_t req;
  struct addrinfo *ai, *next;     /* resolved addresses, the next to try */
  struct tcp_stream *s;           /* the current attempt, then the result */
  int status, busy;               /* busy: libuv callbacks still to come */
  unsigned char owned, stopped;   /* owned: by the task, until k/on_cancel */
};

static void conn_free (struct tcp_connect *c) {
  if (c->busy || c->owned) return;
  if (c->ai) uv_freeaddrinfo(c->ai);
  free(c);
}

/* Ends the attempt for good: no more callbacks will act. */
static void conn_stop (struct tcp_connect *c) {
  if (c->stopped) return;
  c->stopped = 1;
  braid_timer_stop(c->E, &c->timer);
  if (c->busy && c->s == NULL) uv_cancel((uv_req_t *) &c->gai);
  if (c->s && c->busy) {          /* a half-open connect: close undoes it */
    stream_close(c->s);
    c->s = NULL;
  }
}

static void conn_finish (struct tcp_connect *c, int status) {
  conn_stop(c);
  c->status = status;
  if (c->op) {
    braid_op_t *op = c->op;
    c->op = NULL;
    braid_resume(op, 0);   /* k takes the outcome from c */
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

static void conn_timeout_cb (braid_timer_t *tm) {
  conn_finish(container_of(tm, struct tcp_connect, timer), UV_ETIMEDOUT);
}

/* The task lets go (its continuation, or on_cancel): a finished
** connection nobody took is closed. */
static void conn_release (struct tcp_connect *c) {
  c->op = NULL;
  conn_stop(c);
  if (c->s) {
    stream_close(c->s);
    c->s = NULL;
  }
  c->owned = 0;
  conn_free(c);
}

struct conn_args {
  struct tcp_connect *c;
  const char *host;
  int port;
  double timeout;
};

static int conn_start (braid_op_t *op, void *ud) {
  struct conn_args *a = (struct conn_args *) ud;
  struct tcp_connect *c = a->c;
  struct sockaddr_storage sa;
  char portstr[16];
  int rc;
  *(struct tcp_connect **) braid_op_data(op) = c;
  c->op = op;
  c->owned = 1;
  /* A numeric address needs no resolver thread. */
  if (uv_ip4_addr(a->host, a->port, (struct sockaddr_in *) &sa) == 0 ||
      uv_ip6_addr(a->host, a->port, (struct sockaddr_in6 *) &sa) == 0) {
    if ((rc = conn_attempt(c, (struct sockaddr *) &sa)) != 0)
      conn_finish(c, rc);
  } else {
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof portstr, "%d", a->port);
    rc = uv_getaddrinfo(braid_loop(c->E), &c->gai, gai_cb, a->host, portstr,
                        &hints);
    if (rc == 0) c->busy++;
    else conn_finish(c, rc);
  }
  if (c->op && a->timeout >= 0)   /* else it finished at once: resumed */
    braid_timer_start(c->E, &c->timer, braid__ns(a->timeout),
                      conn_timeout_cb);
  return 0;
}

static void conn_cancel (braid_op_t *op) {
  conn_release(*(struct tcp_connect **) braid_op_data(op));
}

/* The stream object made before suspending is at 3; binding the
** connection to it cannot fail, so the stream always has an owner. */
static int connect_k (lua_State *L, braid_op_t *op) {
  struct tcp_connect *c = *(struct tcp_connect **) braid_op_data(op);
  struct tcp_stream *s = c->status == 0 ? c->s : NULL;
  int rc = c->status;
  c->s = NULL;
  conn_release(c);
  if (rc < 0)
    return braid_error(L, "io", uv_err_name(rc), "tcp.connect %s:%d: "
                              "%s", lua_tostring(L, 1),
                              (int) lua_tointeger(L, 2), uv_strerror(rc));
  stream_bind((struct tcp_stream **) lua_touserdata(L, 3), s);
  stream_attach(L, s, NULL);
  lua_settop(L, 3);
  return 1;
}

static const char *const connect_options[] = {"timeout", NULL};

/* braid.tcp.connect(host, port, [opts]) -> stream. opts.timeout (seconds)
** bounds resolution and connection; errors are kind "io" with `code`. */
static int l_tcp_connect (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "tcp.connect");
  struct conn_args a;
  lua_Integer port;
  a.host = luaL_checkstring(L, 1);
  port = luaL_checkinteger(L, 2);
  if (port < 0 || port > 65535)
    braid_argerror(L, 2, "tcp.connect", "port out of range");
  a.port = (int) port;
  braid__check_options(L, 3, "tcp.connect", connect_options);
  a.timeout = braid__opt_number(L, 3, "timeout", -1, "tcp.connect");
  lua_settop(L, 2);
  braid_check_suspend(L, "tcp.connect");
  stream_newud(L);                                          /* 3 */
  /* Allocated here, not in conn_start, so that running out of memory reads
  ** "tcp.connect: ..." as ever. braid_suspendk cannot raise before
  ** conn_start takes c over: it checks only what was just checked. */
  if ((a.c = calloc(1, sizeof *a.c)) == NULL)
    return io_error(L, UV_ENOMEM, "tcp.connect");
  a.c->E = E;
  return braid_suspendk(L, "tcp connect", sizeof a.c, conn_start,
                        conn_cancel, &a, connect_k);
}

/* ---- servers ---- */

struct tcp_server {
  uv_tcp_t tcp;
  braid_engine_t *E;
  struct tcp_server **ud;
  braid_resource_t res;
  braid_scope_t *scope;            /* where handlers are spawned */
  struct braid_list conns;         /* struct tcp_conn: running handlers */
  int handler_ref;
  int port;
  unsigned char closing;
};

/* A handler task, watched so that server:close() can cancel it. */
struct tcp_conn {
  struct braid_watch watch;
  struct braid_list link;          /* in the server's conns, or alone */
  braid_task_t *task;
};

static void conn_task_done (struct braid_watch *w, braid_task_t *t) {
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
  braid_resource_remove(&srv->res);
  braid__unref(srv->E, srv->handler_ref);
  srv->handler_ref = LUA_NOREF;
  while (!braid__list_empty(&srv->conns)) {
    struct tcp_conn *k = container_of(srv->conns.next, struct tcp_conn, link);
    braid__list_remove(&k->link);     /* k lives on until its task ends */
    braid__task_cancel(k->task, NULL, 0);
  }
  uv_close((uv_handle_t *) &srv->tcp, server_close_cb);
}

static void server_res_close (braid_resource_t *r) {
  server_close(container_of(r, struct tcp_server, res));
}

/* Accepts one connection and spawns its handler (braid__engine_call). */
static int server_accept (lua_State *S) {
  struct tcp_server *srv = lua_touserdata(S, 1);
  struct tcp_stream *s, **ud;
  braid_task_t *t;
  struct tcp_conn *k;
  int rc;
  lua_rawgeti(S, LUA_REGISTRYINDEX, srv->handler_ref);      /* 2 */
  ud = stream_newud(S);                                     /* 3 */
  if ((s = stream_new(srv->E, &rc)) == NULL) return 0;
  if (uv_accept((uv_stream_t *) &srv->tcp, (uv_stream_t *) &s->tcp) != 0) {
    stream_close(s);
    return 0;
  }
  stream_bind(ud, s);         /* if the spawn fails, __gc closes it */
  t = braid__spawn(S, srv->scope, 2, 1);
  stream_attach(S, s, t);     /* the handler's own scope owns the stream */
  if ((k = malloc(sizeof *k)) == NULL) return 0;   /* not cancellable by
                                                      server:close, still a
                                                      child of the scope */
  braid__list_init(&k->link);
  k->watch.done = conn_task_done;
  k->task = t;
  braid__task_watch(t, &k->watch);
  braid__list_push(&srv->conns, &k->link);
  return 0;
}

static void server_connection_cb (uv_stream_t *h, int status) {
  struct tcp_server *srv = container_of(h, struct tcp_server, tcp);

  if (status < 0 || srv->closing) return;   /* EMFILE and the like: retry */
  /* A scope being cancelled, or ending, takes no new members: refuse. */
  if (!braid__scope_open(srv->scope)) {
    uv_tcp_t *tmp = malloc(sizeof *tmp);
    if (tmp && uv_tcp_init(braid_loop(srv->E), tmp) == 0) {
      uv_accept(h, (uv_stream_t *) tmp);
      uv_close((uv_handle_t *) tmp, (uv_close_cb) free);
    } else {
      free(tmp);
    }
    return;
  }
  braid__engine_call(srv->E, server_accept, srv);
}

static const char *const listen_options[] = {"backlog", NULL};

/* braid.tcp.listen([host], port, handler, [opts]) -> server. host defaults
** to "127.0.0.1"; port 0 picks a free one. Each connection runs
** handler(stream) as a child task of the calling scope. */
static int l_tcp_listen (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "tcp.listen");
  const char *host = luaL_optstring(L, 1, "127.0.0.1");
  lua_Integer port = luaL_checkinteger(L, 2);
  struct sockaddr_storage sa;
  struct tcp_server *srv, **ud;
  int rc, ref, backlog, len = sizeof sa;
  if (port < 0 || port > 65535)
    braid_argerror(L, 2, "tcp.listen", "port out of range");
  if (!braid__is_callable(L, 3))
    braid_argerror(L, 3, "tcp.listen", "function expected");
  braid__check_options(L, 4, "tcp.listen", listen_options);
  backlog = (int) braid__opt_number(L, 4, "backlog", 511, "tcp.listen");
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  if (uv_ip4_addr(host, (int) port, (struct sockaddr_in *) &sa) != 0 &&
      uv_ip6_addr(host, (int) port, (struct sockaddr_in6 *) &sa) != 0)
    braid_argerror(L, 1, "tcp.listen", "numeric IP address expected");
  /* The Lua objects first: once the server listens, nothing may raise. */
  ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  luaL_setmetatable(L, SERVER_MT);
  lua_pushvalue(L, 3);
  ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if ((srv = calloc(1, sizeof *srv)) == NULL) {
    rc = UV_ENOMEM;
    goto fail;
  }
  srv->E = E;
  srv->handler_ref = ref;
  braid__list_init(&srv->conns);
  srv->res.close = server_res_close;
  if ((rc = uv_tcp_init(braid_loop(E), &srv->tcp)) != 0) {
    free(srv);
    goto fail;
  }
  srv->closing = 1;   /* until it listens: a failure closes it quietly */
  if ((rc = uv_tcp_bind(&srv->tcp, (struct sockaddr *) &sa, 0)) != 0 ||
      (rc = uv_listen((uv_stream_t *) &srv->tcp, backlog,
                      server_connection_cb)) != 0 ||
      (rc = uv_tcp_getsockname(&srv->tcp, (struct sockaddr *) &sa, &len))) {
    uv_close((uv_handle_t *) &srv->tcp, server_close_cb);
    goto fail;
  }
  srv->closing = 0;
  srv->port = ntohs(((struct sockaddr_in *) &sa)->sin_port);
  srv->scope = braid__scope_here(L);
  braid_resource_add(L, &srv->res);
  *ud = srv;
  srv->ud = ud;
  return 1;
fail:
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  return braid_error(L, "io", uv_err_name(rc), "tcp.listen %s:%d: %s",
                            host, (int) port, uv_strerror(rc));
}

static struct tcp_server *server_check (lua_State *L, const char *fname) {
  struct tcp_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (*ud == NULL || (*ud)->closing)
    braid_error(L, "closed", NULL, "server:%s: the server is closed",
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
** gone fail with EPIPE: braid__stream_sigpipe, io/stream.c.) */
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
  braid__stream_sigpipe();
  braid__class(L, STREAM_MT, stream_meta, stream_methods, NULL);
  braid__class(L, SERVER_MT, server_meta, server_methods, NULL);
  lua_pop(L, 2);
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "tcp");
}
