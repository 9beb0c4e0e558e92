/*
** tcp.c: TCP streams, the objects braid.tcp.connect returns and a server
** hands its handlers (tcp_server.c), and braid.tcp.connect. The streams'
** reading, writing and shutdown are io/stream.c's, the same as a child's
** pipes.
**
** Invariants:
** - A stream is a malloc'd struct braid_tcp with its uv_tcp_t embedded;
**   the Lua userdata only holds a pointer to it. uv_close runs exactly once
**   (braid__stream_close). The struct is freed when both its handle has
**   closed and its object is collected (`closed`, `owned`), so a method's
**   continuation always finds it; a method on a closed stream raises kind
**   "closed". __gc starts the close; it never frees an open handle.
** - Every open stream is a braid_resource_t of the scope that made it (a
**   connection's stream: its handler task's scope), so it is closed when
**   that scope ends; it leaves its scope as it starts closing, whoever
**   closes it (the closing hook: a cancelled write closes it too).
** - A connect is a braid_suspendk op, as an embedder's would be. Its
**   request is its own allocation (struct tcp_connect), which libuv may
**   hold after the task let go; it is freed by whichever of the task
**   (continuation or on_cancel) and libuv lets go last. Its op data points
**   at it; callbacks resume with no values, and the continuation binds the
**   stream to the object made before suspending, in the task. Cancelling
**   a connect closes the half-open handle and abandons a name lookup in
**   flight (gai.c: nothing waits for its thread).
*/
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/gai.h"
#include "io/tcp.h"

#define STREAM_MT "braid.TcpStream"
#define LIMIT_OPT "braid.tcp.connect or braid.tcp.listen"
#define UNIX_LIMIT_OPT "braid.unix.connect or braid.unix.listen"

static void tcp_closing (struct braid_stream *s) {
  struct braid_tcp *ts = container_of(s, struct braid_tcp, s);
  if (ts->attached) {
    braid_resource_remove(&ts->res);
    ts->attached = 0;
  }
}

static void tcp_free (struct braid_tcp *ts) {
  braid__stream_free(&ts->s);
  free(ts);
}

static void tcp_closed (struct braid_stream *s) {
  struct braid_tcp *ts = container_of(s, struct braid_tcp, s);
  ts->closed = 1;
  if (!ts->owned) tcp_free(ts);
}

static const struct braid_stream_hooks tcp_hooks = {
  tcp_closing, tcp_closed, NULL
};

static void tcp_res_close (braid_resource_t *r) {
  struct braid_tcp *ts = container_of(r, struct braid_tcp, res);
  ts->attached = 0;   /* the scope has already unlinked it */
  braid__stream_close(&ts->s);
}

struct braid_tcp *braid__tcp_new (braid_engine_t *E, int pipe, int *rc) {
  /* plain calloc, not braid__calloc: an accept that cannot get one refuses
  ** the connection quietly, which the C-heap fault sweep cannot tell from
  ** a lost connection (connect raises kind "memory") */
  struct braid_tcp *ts = calloc(1, sizeof *ts);
  if (ts == NULL) {
    *rc = UV_ENOMEM;
    return NULL;
  }
  ts->res.close = tcp_res_close;
  *rc = pipe ? uv_pipe_init(braid_loop(E), &ts->s.h.pipe, 0)
             : uv_tcp_init(braid_loop(E), &ts->s.h.tcp);
  if (*rc != 0) {
    free(ts);
    return NULL;
  }
  braid__stream_init(&ts->s, E, &tcp_hooks, "the stream");
  ts->s.limit_opt = pipe ? UNIX_LIMIT_OPT : LIMIT_OPT;
  return ts;
}

void braid__tcp_attach (lua_State *L, struct braid_tcp *ts,
                        braid_task_t *t) {
  if (t) braid__task_resource_add(t, &ts->res);
  else braid_resource_add(L, &ts->res);
  ts->attached = 1;
}

struct braid_tcp **braid__tcp_newud (lua_State *L) {
  struct braid_tcp **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  luaL_setmetatable(L, STREAM_MT);
  return ud;
}

void braid__tcp_bind (struct braid_tcp **ud, struct braid_tcp *ts,
                      size_t max_line) {
  *ud = ts;
  ts->owned = 1;
  ts->s.max_line = max_line;
  if (ts->s.h.handle.type == UV_TCP) uv_tcp_nodelay(&ts->s.h.tcp, 1);
}

/* The open stream at 1; raises kind "closed" when it is closed. */
static struct braid_stream *tcp_check (lua_State *L, const char *fname) {
  struct braid_tcp **ud = braid__check_object(L, 1, STREAM_MT, fname);
  if (*ud == NULL || !(*ud)->s.live)
    braid_error(L, "closed", NULL, "%s: the stream is closed", fname);
  return &(*ud)->s;
}

/* stream:read([n | "a"]) -> string | nil: up to n bytes (default: whatever
** has arrived), waiting for at least one, nil at EOF; "a": everything
** until EOF. */
static int l_stream_read (lua_State *L) {
  return braid__stream_read(L, tcp_check(L, "stream:read"), BRAID_READ_SOME,
                            "stream:read");
}

/* stream:read_line() -> string | nil: the next line without its "\n" (and
** without a "\r" before it); at EOF the unterminated rest, then nil. */
static int l_stream_read_line (lua_State *L) {
  return braid__stream_read_line(L, tcp_check(L, "stream:read_line"),
                                 "stream:read_line");
}

/* stream:lines() -> iterator over read_line, for a generic for. */
static int l_stream_lines (lua_State *L) {
  tcp_check(L, "stream:lines");
  return braid__stream_lines(L, l_stream_read_line);
}

/* stream:write(s) -> stream: returns once libuv has written all of s (so a
** slow peer slows the writer down instead of growing its memory). */
static int l_stream_write (lua_State *L) {
  return braid__stream_write(L, tcp_check(L, "stream:write"),
                             "stream:write");
}

/* stream:shutdown() -> stream: half-close, once pending writes are done;
** the peer reads EOF, and this side can still read. */
static int l_stream_shutdown (lua_State *L) {
  return braid__stream_shutdown(L, tcp_check(L, "stream:shutdown"),
                                "stream:shutdown");
}

/* stream:close(): closes at once; never waits, so it suits __close. */
static int l_stream_close (lua_State *L) {
  struct braid_tcp **ud = braid__check_object(L, 1, STREAM_MT, "stream:close");
  if (*ud) braid__stream_close(&(*ud)->s);
  return 0;
}

static int l_stream_gc (lua_State *L) {
  struct braid_tcp **ud = luaL_checkudata(L, 1, STREAM_MT);
  struct braid_tcp *ts = *ud;
  if (ts) {
    *ud = NULL;
    ts->owned = 0;
    if (ts->closed) tcp_free(ts);
    else braid__stream_close(&ts->s);   /* tcp_closed frees it */
  }
  return 0;
}

static int l_stream_tostring (lua_State *L) {
  struct braid_tcp **ud = luaL_checkudata(L, 1, STREAM_MT);
  lua_pushfstring(L, "<%s stream %p%s>", *ud && (*ud)->s.h.handle.type ==
                  UV_NAMED_PIPE ? "unix" : "tcp", (void *) ud,
                  *ud && (*ud)->s.live ? "" : " closed");
  return 1;
}

/* ---- braid.tcp.connect ---- */

struct tcp_connect {
  braid_engine_t *E;
  braid_op_t *op;                 /* the waiting task's, until finished */
  braid_timer_t timer;            /* opts.timeout */
  struct braid_gai *gai;          /* the name's lookup, while in flight */
  uv_connect_t req;
  struct addrinfo *ai, *next;     /* resolved addresses, the next to try */
  struct braid_tcp *s;            /* the current attempt, then the result */
  size_t max_line;                /* opts.max_line, for the stream */
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
  if (c->gai) {                   /* its thread frees what it finds */
    braid__gai_abandon(c->gai);
    c->gai = NULL;
  }
  if (c->s && c->busy) {          /* a half-open connect: close undoes it */
    braid__stream_close(&c->s->s);
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
  if ((c->s = braid__tcp_new(c->E, 0, &rc)) == NULL) return rc;
  rc = uv_tcp_connect(&c->req, &c->s->s.h.tcp, sa, connect_cb);
  if (rc == 0) {
    c->busy++;
    return 0;
  }
  braid__stream_close(&c->s->s);
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
  braid__stream_close(&c->s->s);
  c->s = NULL;
  conn_try(c, status);
}

static void gai_cb (struct braid_gai *g, int status, struct addrinfo *res) {
  struct tcp_connect *c = (struct tcp_connect *) braid__gai_data(g);
  c->gai = NULL;   /* stopping abandons a lookup: this one was not */
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
    braid__stream_close(&c->s->s);
    c->s = NULL;
  }
  c->owned = 0;
  conn_free(c);
}

struct conn_args {
  struct tcp_connect *c;
  const char *host;
  int port;
  uint64_t timeout;            /* ns; BRAID_NEVER: none */
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
  braid_op_label(op, "tcp connect %s:%d", a->host, a->port);
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
    rc = braid__gai_start(braid_loop(c->E), &c->gai, a->host, portstr,
                          &hints, gai_cb, c);
    if (rc != 0) conn_finish(c, rc);
  }
  if (c->op && a->timeout != BRAID_NEVER)   /* else finished at once */
    braid_timer_start(c->E, &c->timer, a->timeout, conn_timeout_cb);
  return 0;
}

static void conn_cancel (braid_op_t *op) {
  conn_release(*(struct tcp_connect **) braid_op_data(op));
}

/* The stream object made before suspending is at 3; binding the
** connection to it cannot fail, so the stream always has an owner. */
static int connect_k (lua_State *L, braid_op_t *op) {
  struct tcp_connect *c = *(struct tcp_connect **) braid_op_data(op);
  struct braid_tcp *ts = c->status == 0 ? c->s : NULL;
  size_t max_line = c->max_line;
  int rc = c->status;
  c->s = NULL;
  conn_release(c);
  if (rc == UV_ENOMEM)
    return braid_error(L, "memory", NULL, "braid.tcp.connect: not enough "
                       "memory");
  if (rc < 0)
    return braid_error(L, "io", braid__errname(rc), "braid.tcp.connect %s:%d: "
                       "%s", lua_tostring(L, 1), (int) lua_tointeger(L, 2),
                       braid__strerror(rc));
  braid__tcp_bind((struct braid_tcp **) lua_touserdata(L, 3), ts, max_line);
  braid__tcp_attach(L, ts, NULL);
  lua_settop(L, 3);
  return 1;
}

int braid__tcp_addr (const char *host, int port,
                     struct sockaddr_storage *sa) {
  if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
  if (uv_ip4_addr(host, port, (struct sockaddr_in *) sa) == 0 ||
      uv_ip6_addr(host, port, (struct sockaddr_in6 *) sa) == 0)
    return 0;
  return UV_EINVAL;
}

int braid__tcp_is_name (const char *host, int strict) {
  struct in_addr in;
  const char *s;
  if (*host == '\0' || inet_aton(host, &in) != 0) return 0;
  if (strict)
    for (s = host; *s; s++)
      if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
            (*s >= '0' && *s <= '9') || *s == '-' || *s == '.' ||
            *s == '_'))
        return 0;
  return 1;
}

int braid__tcp_check_port (lua_State *L, int arg, const char *fname) {
  int isnum;
  lua_Integer port = lua_tointegerx(L, arg, &isnum);
  if (!isnum) braid_argerror(L, arg, fname, "integer expected");
  if (port < 0 || port > 65535)
    braid_argerror(L, arg, fname, "port out of range");
  return (int) port;
}

const char *braid__tcp_check_host (lua_State *L, int arg, const char *fname,
                                  const char *def) {
  const char *host;
  if (def && lua_isnoneornil(L, arg)) return def;
  if (lua_type(L, arg) != LUA_TSTRING)
    braid_argerror(L, arg, fname, "string expected");
  if ((host = braid__cstring(L, arg)) == NULL || *host == '\0')
    braid_argerror(L, arg, fname, "host name or address expected (a "
                   "non-empty string without a zero byte)");
  return host;
}

static const char *const connect_options[] = {"timeout", "max_line", NULL};

/* braid.tcp.connect(host, port, [opts]) -> stream. opts.timeout (seconds)
** bounds resolution and connection; opts.max_line is the stream's line
** limit. Errors are kind "io" with `code`. */
static int l_tcp_connect (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "braid.tcp.connect");
  struct conn_args a;
  size_t max_line;
  a.host = braid__tcp_check_host(L, 1, "braid.tcp.connect", NULL);
  a.port = braid__tcp_check_port(L, 2, "braid.tcp.connect");
  {
    struct sockaddr_storage sa;
    if (braid__tcp_addr(a.host, a.port, &sa) != 0 &&
        !braid__tcp_is_name(a.host, 0))
      braid_argerror(L, 1, "braid.tcp.connect", BRAID_TCP_HOST_EXPECTED);
  }
  braid__check_options(L, 3, "braid.tcp.connect", connect_options);
  a.timeout = braid__opt_seconds(L, 3, "timeout", BRAID_NEVER,
                                 "braid.tcp.connect");
  max_line = braid__opt_limit(L, 3, "max_line", BRAID_MAX_LINE,
                              "braid.tcp.connect");
  lua_settop(L, 2);
  braid_check_suspend(L, "braid.tcp.connect");
  braid__tcp_newud(L);                                             /* 3 */
  /* Allocated here, not in conn_start, so that running out of memory
  ** raises as usual. braid_suspendk cannot raise before conn_start takes
  ** c over: it checks only what was just checked. */
  if ((a.c = braid__calloc(1, sizeof *a.c)) == NULL ||
      (a.timeout != BRAID_NEVER && braid__timer_reserve(E) != 0)) {
    free(a.c);   /* the timer's heap slot is taken here, where it can fail */
    return braid_error(L, "memory", NULL, "braid.tcp.connect: not enough "
                       "memory");
  }
  a.c->E = E;
  a.c->max_line = max_line;
  return braid_suspendk(L, "braid.tcp.connect", sizeof a.c, conn_start,
                        conn_cancel, &a, connect_k);
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
  static const luaL_Reg funcs[] = {
    {"connect", l_tcp_connect},
    {NULL, NULL}
  };
  braid__stream_sigpipe();
  braid__class(L, STREAM_MT, stream_meta, stream_methods, NULL);
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  braid__open_tcp_server(L);
  lua_setfield(L, -2, "tcp");
}
