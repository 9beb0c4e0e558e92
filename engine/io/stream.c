/*
** stream.c: braid's one buffered stream (stream.h), under TCP streams
** (tcp.c) and a child's pipes (process.c, exec.c), and the SIGPIPE policy.
**
** Invariants:
** - One read buffer per stream, allocated on the first read (first_buf,
**   64 KiB unless the owner asks for less) and grown
**   only while a reader waits for more than it holds (a long line, "a")
**   or the stream is drained; libuv reads straight into its free tail.
**   Once started, reading stays on until 64 KiB are buffered with nobody
**   waiting (back-pressure: the peer or child blocks), the end, or an
**   error; a task that waits starts it again. The handle is referenced
**   only while a task waits to read or the stream is drained, so an idle
**   stream never keeps the loop alive (deadlock detection stays exact).
** - Every wait is a braid_suspendk op, as an embedder's would be. The one
**   reader's op is s->rop until resumed and s->reader until its
**   continuation ran (or its on_cancel), so no other task takes the data
**   it was woken for. The op's data points at the stream, which the owner
**   keeps valid while the object named by the method's first argument is
**   on the task's stack. Callbacks resume with at most an integer status;
**   continuations build the Lua results, in the task.
** - A write that the kernel does not take at once (uv_try_write) and a
**   shutdown need a request that libuv may hold after the task let go, so
**   each is its own allocation (struct stream_req), freed by its callback.
**   A write holds a registry reference to its Lua string, since libuv
**   writes from it, until its callback or until the stream closes
**   (libuv reads it no more then, and after braid_close on an
**   application's loop the callback must not touch the engine).
** - The buffer is braid's memory on the script's behalf: its capacity is
**   charged against the engine's memory limit (a refusal ends reading with
**   UV_ENOMEM, kind "memory"), and it never grows past the owner's cap
**   max_buf + 1 (exec's max_output): the byte past the cap ends reading
**   with s->over, kind "limit". read_line's max_line bounds what a waiting
**   reader grows it to (the reader is woken as soon as a line cannot fit).
** - A write is handed to libuv in buffers under 4 GiB each
**   (braid__stream_uv_write): uv_buf_init's length is an unsigned.
** - The end libuv reports is checked by one more recv (stream_end): a
**   peer's reset is an error however late the reader started, its FIN a
**   clean end.
** - Cancelling a read only stops that wait (buffered data stays);
**   cancelling a write or a shutdown closes the stream (the only way to
**   undo a write libuv has partly done, and nothing half-written is then
**   followed by later data).
*/
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include "io/stream.h"

#define READ_BUF 65536   /* the first buffer, and the pause threshold */

/* ---- the buffer ---- */

/* The handle is referenced while someone waits on what it reads. */
static void stream_ref (struct braid_stream *s) {
  if (!s->live) return;
  if (s->rop || s->drain) uv_ref(&s->h.handle);
  else uv_unref(&s->h.handle);
}

static void stream_stop (struct braid_stream *s) {
  if (!s->reading) return;
  uv_read_stop(&s->h.stream);
  s->reading = 0;
}

/* The length of the first buffered line with its "\n", or 0 while no line
** is whole. */
static size_t line_len (struct braid_stream *s) {
  const char *p, *nl;
  if (s->len <= s->scan) return 0;
  p = s->buf + s->off;
  if ((nl = memchr(p + s->scan, '\n', s->len - s->scan)) != NULL)
    return (size_t) (nl - p) + 1;
  s->scan = s->len;
  return 0;
}

/* Is what is buffered, with no "\n" in it, already longer than a line may
** be (a "\r" at its end may still be part of a "\r\n")? */
static int line_over (struct braid_stream *s) {
  return s->len > 0 && s->len - 1 > s->max_line;
}

/* Has the waiting reader (s->mode) got what it waits for? */
static int stream_ready (struct braid_stream *s) {
  if (s->rerr || !s->live) return 1;
  switch (s->mode) {
    case BRAID_READ_SOME: return s->len > 0;
    case BRAID_READ_LINE: return line_len(s) > 0 || line_over(s);
    default: return 0;
  }
}

/* Resumes the waiting reader; its continuation looks at the stream again.
** It stays s->reader until then. */
static void stream_wake (struct braid_stream *s) {
  braid_op_t *op = s->rop;
  s->rop = NULL;
  stream_ref(s);
  braid_resume(op, 0);
}

static void stream_alloc_cb (uv_handle_t *h, size_t hint, uv_buf_t *b) {
  struct braid_stream *s = container_of(h, struct braid_stream, h.handle);
  (void) hint;
  /* Move what is buffered to the front only when the tail gets short. */
  if (s->len == 0) s->off = 0;
  else if (s->off > 0 && s->cap - s->off - s->len < s->cap / 4) {
    memmove(s->buf, s->buf + s->off, s->len);
    s->off = 0;
  }
  if (s->off + s->len == s->cap) {   /* full, or no buffer yet: grow */
    /* Full means off == 0 and len == cap <= max_buf (reading stops past
    ** it), so the clamp still lets the buffer grow. */
    size_t cap = s->cap ? s->cap * 2 : s->first_buf;
    char *nb = NULL;
    if (cap > s->max_buf + 1) cap = s->max_buf + 1;
    if (braid__charge_set(&s->charge, s->E, cap) != 0 ||
        (nb = braid__realloc(s->buf, cap)) == NULL) {
      braid__charge_set(&s->charge, s->E, s->cap);
      b->base = NULL;                /* read_cb gets UV_ENOBUFS */
      b->len = 0;
      return;
    }
    s->buf = nb;
    s->cap = cap;
    s->collected = 0;
  }
  b->base = s->buf + s->off + s->len;
  b->len = s->cap - s->off - s->len;
  if (b->len > s->max_buf + 1 - s->len)   /* one byte past the cap tells */
    b->len = s->max_buf + 1 - s->len;
}

/* The end libuv reported, or the error it hid: on POLLHUP after a short
** read, libuv reports the end without reading again, so a reset that came
** with the last bytes (a RST, no FIN) would read as a clean end. One more
** recv tells: 0 after the peer's FIN, the error after a reset. A child's
** pipe that is no socket gives ENOTSOCK: a plain end. */
static int stream_end (struct braid_stream *s) {
  uv_os_fd_t fd;
  char c;
  if (uv_fileno(&s->h.handle, &fd) != 0 ||
      recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) >= 0 || errno == EAGAIN ||
      errno == EWOULDBLOCK || errno == EINTR || errno == ENOTSOCK)
    return UV_EOF;
  return uv_translate_sys_error(errno);
}

static void stream_read_cb (uv_stream_t *h, ssize_t n, const uv_buf_t *b) {
  struct braid_stream *s = container_of(h, struct braid_stream, h.stream);
  (void) b;
  if (n == 0) return;
  if (n > 0) {
    s->len += (size_t) n;
    if (s->len > s->max_buf) {       /* over the owner's cap: reading ends */
      s->over = 1;
      s->rerr = UV_ENOBUFS;
      stream_stop(s);
    }
  } else if (n == UV_ENOBUFS && s->rop && s->collected == 0) {
    s->collected = 1;                /* no memory: the reader collects */
    stream_stop(s);                  /* and reading starts again */
    stream_wake(s);
    return;
  } else {                           /* the end, an error, or no memory */
    s->rerr = n == UV_ENOBUFS ? UV_ENOMEM : n == UV_EOF ? stream_end(s)
                                                         : (int) n;
    stream_stop(s);
  }
  if (s->rop && stream_ready(s)) stream_wake(s);
  if (s->rerr) {
    if (s->hooks->ended) s->hooks->ended(s);
  } else if (!s->rop && !s->drain && s->len >= READ_BUF) {
    stream_stop(s);                  /* back-pressure */
  }
}

int braid__stream_start (struct braid_stream *s) {
  int rc;
  if (!s->live || s->reading || s->rerr) return 0;
  rc = uv_read_start(&s->h.stream, stream_alloc_cb, stream_read_cb);
  if (rc != 0) {
    s->rerr = rc;
    if (s->hooks->ended) s->hooks->ended(s);
    return rc;
  }
  s->reading = 1;
  return 0;
}

void braid__stream_drain (struct braid_stream *s, int on) {
  s->drain = (unsigned char) (on != 0);
  if (on) braid__stream_start(s);
  stream_ref(s);
}

/* ---- lifetime ---- */

void braid__stream_init (struct braid_stream *s, braid_engine_t *E,
                         const struct braid_stream_hooks *hooks,
                         const char *name) {
  s->E = E;
  s->hooks = hooks;
  s->name = name;
  s->limit_opt = "";
  s->max_line = BRAID_MAX_LINE;
  s->max_buf = BRAID_NO_LIMIT;
  s->max_buf_opt = "";
  s->first_buf = READ_BUF;
  braid__list_init(&s->writes);
  s->live = 1;
  uv_unref(&s->h.handle);
}

static void stream_close_cb (uv_handle_t *h) {
  struct braid_stream *s = container_of(h, struct braid_stream, h.handle);
  s->hooks->closed(s);
}

/* A write or a shutdown in flight, freed by its callback. */
struct stream_req {
  union {
    uv_write_t write;
    uv_shutdown_t shutdown;
  } req;
  struct braid_stream *s;
  braid_op_t *op;                /* the waiting task's; NULL once it let go */
  struct braid_list link;        /* in s->writes while it holds `ref` */
  int ref;                       /* the string being written, or LUA_NOREF */
};

/* Lets go of r's string. */
static void req_unref (struct stream_req *r) {
  if (r->ref == LUA_NOREF) return;
  braid__list_remove(&r->link);
  braid__unref(r->s->E, r->ref);
  r->ref = LUA_NOREF;
}

void braid__stream_close (struct braid_stream *s) {
  if (!s->live) return;
  s->live = 0;
  s->reading = 0;
  if (s->hooks->closing) s->hooks->closing(s);
  if (!s->rerr) s->len = 0;
  while (!braid__list_empty(&s->writes))
    req_unref(container_of(s->writes.next, struct stream_req, link));
  if (s->rop) stream_wake(s);
  uv_close(&s->h.handle, stream_close_cb);
}

void braid__stream_free (struct braid_stream *s) {
  free(s->buf);
  braid__charge_set(&s->charge, s->E, 0);
  s->buf = NULL;
  s->cap = s->off = s->len = 0;
}

/* ---- reading ---- */

/* Pushes and consumes `n` buffered bytes, plus `skip` more not pushed. A
** buffer grown past the first size goes once it is empty. */
static void stream_consume (lua_State *L, struct braid_stream *s, size_t n,
                            size_t skip) {
  lua_pushlstring(L, s->buf ? s->buf + s->off : "", n);
  s->off += n + skip;
  s->len -= n + skip;
  s->scan = s->scan > n + skip ? s->scan - (n + skip) : 0;
  if (s->len == 0) {
    s->off = 0;
    if (s->cap > READ_BUF) braid__stream_free(s);
  }
}

static int line_error (lua_State *L, struct braid_stream *s,
                       const char *fname) {
  if (s->limit_opt[0] == '\0')   /* braid.stdin: no option sets it */
    braid__push_limit_error(L, s->max_line, "max_line", "%s: line longer "
                            "than %I bytes (the bytes stay: read(n) takes "
                            "them)", fname, (lua_Integer) s->max_line);
  else
    braid__push_limit_error(L, s->max_line, "max_line", "%s: line longer "
                            "than %I bytes (the max_line option of %s "
                            "raises the limit)", fname,
                            (lua_Integer) s->max_line, s->limit_opt);
  return lua_error(L);
}

int braid__stream_take (lua_State *L, struct braid_stream *s, int mode,
                        size_t n, const char *fname) {
  size_t k;
  switch (mode) {
    case BRAID_READ_SOME:
      if (s->len == 0) break;
      stream_consume(L, s, s->len < n ? s->len : n, 0);
      return 1;
    case BRAID_READ_LINE:
      if ((k = line_len(s)) > 0) {
        size_t cr = k > 1 && s->buf[s->off + k - 2] == '\r';
        if (k - 1 - cr > s->max_line) return line_error(L, s, fname);
        stream_consume(L, s, k - 1 - cr, 1 + cr);
        return 1;
      }
      if (line_over(s)) return line_error(L, s, fname);
      if (s->len == 0 || s->rerr != UV_EOF) break;
      if (s->len > s->max_line) return line_error(L, s, fname);
      stream_consume(L, s, s->len, 0);   /* the unterminated rest */
      return 1;
    default:
      if (s->rerr != UV_EOF) break;
      stream_consume(L, s, s->len, 0);
      return 1;
  }
  if (s->rerr == UV_EOF) {
    lua_pushnil(L);
    return 1;
  }
  if (s->over) {
    braid__push_limit_error(L, s->max_buf, s->max_buf_opt, "%s: %s longer "
                            "than %I bytes (the %s option raises the limit)",
                            fname, s->name, (lua_Integer) s->max_buf,
                            s->max_buf_opt);
    return lua_error(L);
  }
  if (s->rerr) return braid__error_uv(L, s->rerr, fname);
  if (!s->live)
    return braid_error(L, "closed", NULL, "%s: %s is closed", fname,
                       s->name);
  return 0;
}

/* A read: what it waits for; the op's data while it waits. */
struct read_op {
  struct braid_stream *s;
  const char *fname;
  size_t n;
  int mode;
};

/* The trace's label of a wait on s: "tcp 127.0.0.1:8080 read" for a
** socket, else "stdout read". */
static void stream_label (braid_op_t *op, struct braid_stream *s,
                          const char *verb) {
  struct sockaddr_storage sa;
  int len = (int) sizeof sa;
  char host[64];
  if (!braid_tracing(s->E)) return;
  if (s->h.handle.type == UV_TCP &&
      uv_tcp_getpeername(&s->h.tcp, (struct sockaddr *) &sa, &len) == 0 &&
      uv_ip_name((struct sockaddr *) &sa, host, sizeof host) == 0)
    braid_op_label(op, "tcp %s:%d %s", host,
                   ntohs(((struct sockaddr_in *) &sa)->sin_port), verb);
  else
    braid_op_label(op, "%s %s", s->name, verb);
}

static int read_start (braid_op_t *op, void *ud) {
  struct read_op *r = (struct read_op *) braid_op_data(op);
  *r = *(struct read_op *) ud;
  stream_label(op, r->s, "read");
  r->s->rop = r->s->reader = op;
  r->s->mode = (unsigned char) r->mode;
  stream_ref(r->s);
  return 0;
}

/* Cancelled, or abandoned after its resume: reading goes on into the
** buffer, for the next reader. */
static void read_cancel (braid_op_t *op) {
  struct braid_stream *s = ((struct read_op *) braid_op_data(op))->s;
  if (s->rop == op) s->rop = NULL;
  if (s->reader == op) s->reader = NULL;
  stream_ref(s);
}

static int read_k (lua_State *L, braid_op_t *op);

/* Serves r now, or suspends until the stream has more. A buffer refused
** by the memory limit while a reader waits is tried once more after a
** full collection (read_cb wakes the reader for it): the charge itself,
** made in a libuv callback, could only run the emergency collection
** (memory.c), which leaves what awaits a finalizer (a luaL_Buffer's box)
** uncollected. Here, in the reader's call, finalizers may run (in a
** finalizer lua_gc does nothing, and a reader cannot wait there). */
static int stream_read (lua_State *L, struct read_op *r) {
  if (r->s->collected == 1) {
    lua_gc(L, LUA_GCCOLLECT);
    r->s->collected = 2;
  }
  if (braid__stream_take(L, r->s, r->mode, r->n, r->fname)) return 1;
  braid_check_suspend(L, r->fname);
  if (braid__stream_start(r->s) < 0)   /* reading ended: raise its error */
    return braid__stream_take(L, r->s, r->mode, r->n, r->fname);
  return braid_suspendk(L, r->fname, sizeof *r, read_start, read_cancel, r,
                        read_k);
}

/* The op is reused if it waits again: its data is copied out first. */
static int read_k (lua_State *L, braid_op_t *op) {
  struct read_op r = *(struct read_op *) braid_op_data(op);
  r.s->reader = NULL;
  return stream_read(L, &r);
}

static int stream_read_first (lua_State *L, struct read_op *r) {
  if (r->s->reader)
    return braid_usageerror(L, "%s: another task is reading %s", r->fname,
                            r->s->name);
  return stream_read(L, r);
}

int braid__stream_read (lua_State *L, struct braid_stream *s, int dflt,
                        const char *fname) {
  struct read_op r;
  braid_check_task(L, fname);
  r.s = s;
  r.fname = fname;
  r.n = SIZE_MAX;
  r.mode = dflt;
  if (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "a") == 0)
    r.mode = BRAID_READ_ALL;
  else if (!lua_isnoneornil(L, 2)) {
    int isint;
    lua_Integer n = lua_tointegerx(L, 2, &isint);   /* 1.0 counts too */
    if (!isint || n <= 0)
      return braid_argerror(L, 2, fname, "positive integer or \"a\" "
                            "expected");
    r.mode = BRAID_READ_SOME;
    r.n = (size_t) n;
  }
  lua_settop(L, 1);
  return stream_read_first(L, &r);
}

int braid__stream_read_line (lua_State *L, struct braid_stream *s,
                             const char *fname) {
  struct read_op r;
  braid_check_task(L, fname);
  r.s = s;
  r.fname = fname;
  r.n = 0;
  r.mode = BRAID_READ_LINE;
  lua_settop(L, 1);
  return stream_read_first(L, &r);
}

static int lines_iter (lua_State *L) {
  lua_settop(L, 0);
  lua_pushvalue(L, lua_upvalueindex(2));
  return lua_tocfunction(L, lua_upvalueindex(1))(L);
}

int braid__stream_lines (lua_State *L, lua_CFunction read_line) {
  lua_pushcfunction(L, read_line);
  lua_pushvalue(L, 1);
  lua_pushcclosure(L, lines_iter, 2);
  return 1;
}

/* ---- writing ---- */

/* A write's or a shutdown's op data. */
struct req_op {
  struct stream_req *r;          /* NULL once its callback ran */
  struct braid_stream *s;
  const char *fname;
};

/* libuv let go: hands the status to the task, if it still waits. */
static void req_done (struct stream_req *r, int status) {
  req_unref(r);
  if (r->op) {
    ((struct req_op *) braid_op_data(r->op))->r = NULL;
    lua_pushinteger(braid_op_state(r->op), status);
    braid_resume(r->op, 1);
  }
  free(r);
}

static void write_cb (uv_write_t *req, int status) {
  req_done(container_of(req, struct stream_req, req.write), status);
}

static void shutdown_cb (uv_shutdown_t *req, int status) {
  struct stream_req *r = container_of(req, struct stream_req, req.shutdown);
  if (status != 0) r->s->shut = 0;   /* not sent: the next one says why */
  req_done(r, status);
}

static int req_start (braid_op_t *op, void *ud) {
  struct req_op *o = (struct req_op *) braid_op_data(op);
  *o = *(struct req_op *) ud;
  o->r->op = op;
  stream_label(op, o->s, "write");
  return 0;
}

/* A write cannot be taken back once libuv has started it: close the
** stream, so that it ends now (UV_ECANCELED). The callback, still to
** come, frees the request. */
static void req_cancel (braid_op_t *op) {
  struct stream_req *r = ((struct req_op *) braid_op_data(op))->r;
  if (r == NULL) return;   /* done already: only its status was left */
  r->op = NULL;
  braid__stream_close(r->s);
}

/* The object at 1, the status on top. */
static int req_k (lua_State *L, braid_op_t *op) {
  struct req_op *o = (struct req_op *) braid_op_data(op);
  int rc = (int) lua_tointeger(L, -1);
  if (rc == UV_ECANCELED)
    return braid_error(L, "closed", "ECANCELED", "%s: %s was closed "
                       "during the operation", o->fname, o->s->name);
  if (rc < 0) return braid__error_uv(L, rc, o->fname);
  lua_settop(L, 1);
  return 1;
}

/* Checks s is open before anything starts on it. */
static void stream_check_live (lua_State *L, struct braid_stream *s,
                               const char *fname) {
  if (!s->live)
    braid_error(L, "closed", NULL, "%s: %s is closed", fname, s->name);
}

/* A request for s holding `ref` (LUA_NOREF: none), released if this
** raises. */
/* A request holding `ref`, or NULL when out of memory (ref kept). */
static struct stream_req *req_new_noraise (struct braid_stream *s, int ref) {
  struct stream_req *r = calloc(1, sizeof *r);
  if (r == NULL) return NULL;
  r->s = s;
  r->ref = ref;
  braid__list_init(&r->link);
  return r;
}

/* The same, raising kind "memory" (and releasing ref) when out of memory. */
static struct stream_req *req_new (lua_State *L, struct braid_stream *s,
                                   int ref, const char *fname) {
  struct stream_req *r = req_new_noraise(s, ref);
  if (r == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  return r;
}

/* [s] -> a registry reference to s, protected by the caller. */
static int write_ref_p (lua_State *L) {
  lua_pushinteger(L, luaL_ref(L, LUA_REGISTRYINDEX));
  return 1;
}

static int req_wait (lua_State *L, struct stream_req *r, const char *fname) {
  struct req_op o;
  o.r = r;
  o.s = r->s;
  o.fname = fname;
  lua_settop(L, 1);
  return braid_suspendk(L, fname, sizeof o, req_start, req_cancel, &o, req_k);
}

size_t braid__write_chunk = (size_t) 1 << 30;

int braid__stream_uv_write (uv_write_t *req, uv_stream_t *h, const char *data,
                            size_t len, uv_write_cb cb) {
  uv_buf_t few[8], *bufs = few;
  size_t chunk = braid__write_chunk, n = len / chunk + (len % chunk != 0), i;
  int rc;
  if (n == 0) n = 1;
  if (n > UINT_MAX) return UV_EINVAL;
  if (n > sizeof few / sizeof *few &&
      (bufs = (uv_buf_t *) braid__malloc(n * sizeof *bufs)) == NULL)
    return UV_ENOMEM;
  for (i = 0; i < n; i++) {
    size_t k = len - i * chunk < chunk ? len - i * chunk : chunk;
    bufs[i] = uv_buf_init((char *) data + i * chunk, (unsigned) k);
  }
  rc = uv_write(req, h, bufs, (unsigned) n, cb);
  if (bufs != few) free(bufs);
  return rc;
}

int braid__stream_write (lua_State *L, struct braid_stream *s,
                         const char *fname) {
  size_t len;
  const char *data;
  struct stream_req *r;
  int rc;
  braid_check_task(L, fname);
  braid__write_args(L, fname);
  data = lua_tolstring(L, 2, &len);
  lua_settop(L, 2);
  stream_check_live(L, s, fname);
  if (len == 0) {
    lua_settop(L, 1);
    return 1;
  }
  braid_check_suspend(L, fname);
  if (len <= braid__write_chunk) {   /* one buffer: try it without a request */
    uv_buf_t b = uv_buf_init((char *) data, (unsigned) len);
    rc = uv_try_write(&s->h.stream, &b, 1);
    if (rc >= 0 && (size_t) rc == len) {   /* the common case: no request, */
      lua_settop(L, 1);                    /* no suspension */
      return 1;
    }
    if (rc < 0 && rc != UV_EAGAIN) return braid__error_uv(L, rc, fname);
    if (rc > 0) {
      data += rc;
      len -= (size_t) rc;
    }
  }
  if (len < (size_t) lua_rawlen(L, 2)) {
    /* Part is sent already: if the rest cannot be queued (out of memory
    ** for the reference or the request), the stream closes, as a
    ** cancelled write does, so nothing half-written is followed by later
    ** data. */
    lua_pushcfunction(L, write_ref_p);
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 1, 1, 0) != LUA_OK ||
        (r = req_new_noraise(s, (int) lua_tointeger(L, -1))) == NULL) {
      if (lua_type(L, -1) == LUA_TNUMBER)
        luaL_unref(L, LUA_REGISTRYINDEX, (int) lua_tointeger(L, -1));
      braid__stream_close(s);
      return braid_error(L, "memory", NULL, "%s: not enough memory (the "
                         "stream was closed after a partial write)", fname);
    }
    lua_pop(L, 1);
  } else {
    lua_pushvalue(L, 2);
    r = req_new(L, s, luaL_ref(L, LUA_REGISTRYINDEX), fname);  /* may raise */
  }
  rc = braid__stream_uv_write(&r->req.write, &s->h.stream, data, len,
                              write_cb);
  if (rc != 0) {   /* UV_ENOMEM (the buffers) */
    int partial = len < (size_t) lua_rawlen(L, 2);
    luaL_unref(L, LUA_REGISTRYINDEX, r->ref);
    free(r);
    if (partial) braid__stream_close(s);
    return braid__error_uv(L, rc, fname);
  }
  braid__list_push(&s->writes, &r->link);
  return req_wait(L, r, fname);
}

int braid__stream_shutdown (lua_State *L, struct braid_stream *s,
                            const char *fname) {
  struct stream_req *r;
  int rc;
  braid_check_task(L, fname);
  lua_settop(L, 1);
  stream_check_live(L, s, fname);
  if (s->shut) return 1;   /* the end is sent or on its way: libuv would
                              say ENOTCONN, as if it were a misuse */
  braid_check_suspend(L, fname);
  r = req_new(L, s, LUA_NOREF, fname);
  rc = uv_shutdown(&r->req.shutdown, &s->h.stream, shutdown_cb);
  if (rc != 0) {
    free(r);
    return braid__error_uv(L, rc, fname);
  }
  s->shut = 1;
  return req_wait(L, r, fname);
}

/* ---- SIGPIPE ---- */

/* A child or peer that has gone is EPIPE to the writer; braid's own
** stdout that has lost its reader ends the run, as SIGPIPE ends lua
** (braid__interrupt_pipe). */
static void sigpipe_handler (int sig) {
  int saved = errno;
  (void) sig;
  braid__interrupt_pipe();
  errno = saved;
}

/* A handler, unlike SIG_IGN, is reset by exec, so child processes still
** start with the default disposition. */
void braid__stream_sigpipe (void) {
  struct sigaction sa;
  if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = sigpipe_handler;
    sigaction(SIGPIPE, &sa, NULL);
  }
}
