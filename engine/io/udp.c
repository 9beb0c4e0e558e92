/*
** udp.c: braid.udp.bind(host, port) and braid.udp.open() -> socket;
** sock:send(data, host, port), sock:recv() -> data, host, port,
** sock:address() -> host, port, sock:close().
**
** Invariants:
** - A socket is a malloc'd struct with its uv_udp_t embedded, found from
**   Lua through a box userdata (as signal.c's waiters). uv_close runs
**   exactly once (udp_close); the memory goes in the close callback.
** - The socket reads only while a task waits in recv(), and stops after
**   one datagram: a datagram nobody asked for stays in the kernel's
**   buffer (which drops what overflows, as UDP does), so braid's memory
**   never grows with a flood. The datagram read is kept in the socket's
**   one 64 KiB buffer (`pending`) until a recv takes it: a waiter
**   cancelled in the turn its datagram came leaves it for the next recv.
** - One task receives at a time; another one's recv is a usage error.
** - A send that the kernel cannot take at once (uv_udp_try_send says
**   EAGAIN) waits: its request is its own allocation holding the string
**   (a registry reference), freed by its callback, which libuv always
**   runs (also after the socket closed); a cancelled send is detached.
** - The socket is a resource of the scope that made it: when that scope
**   ends, or on close(), __close or __gc, it is closed; a task waiting in
**   recv() or send() is woken with a "closed" error.
*/
#include <stdlib.h>
#include <string.h>
#include "core/prim.h"
#include "io/tcp.h"

#define UDP_MT "braid.UdpSocket"
#define UDP_BUF (64 * 1024)    /* the largest datagram (65507 bytes) fits */

struct udp_sock {
  uv_udp_t handle;
  braid_resource_t res;
  braid_engine_t *E;
  struct udp_sock **box;       /* the Lua object; NULL once it is gone */
  braid_op_t *receiver;        /* the task waiting in recv, or NULL */
  struct braid_list sends;     /* struct udp_send waiting for libuv */
  struct braid_charge charge;  /* buf, against the memory limit */
  char *buf;
  struct sockaddr_storage from;
  ssize_t pending;             /* a datagram's length in buf, or -1; an
                                  error (< -1) to hand to the receiver */
  unsigned char closing;
};

struct udp_send {
  uv_udp_send_t req;
  struct braid_list link;      /* in the socket's sends while it waits */
  braid_engine_t *E;
  braid_op_t *op;              /* the waiting task, or NULL: detached */
  int ref;                     /* the string libuv writes from */
  int status;
};

/* op data: the request (NULL once done), then its status. */
struct send_wait {
  struct udp_send *sd;
  int status;
};

static void udp_close_cb (uv_handle_t *h) {
  struct udp_sock *u = container_of((uv_udp_t *) h, struct udp_sock, handle);
  braid__charge_set(&u->charge, u->E, 0);
  free(u->buf);
  free(u);
}

/* Closes the socket once: waiting tasks are woken (their continuations
** find it closed), sends still in libuv are detached. Runs no Lua. */
static void udp_close (struct udp_sock *u) {
  if (u->closing) return;
  u->closing = 1;
  braid_resource_remove(&u->res);
  if (u->box) *u->box = NULL;
  u->box = NULL;
  if (u->receiver) {
    braid_op_t *op = u->receiver;
    u->receiver = NULL;
    braid_resume(op, 0);
  }
  while (!braid__list_empty(&u->sends)) {
    struct udp_send *sd = container_of(u->sends.next, struct udp_send, link);
    braid_op_t *op = sd->op;
    braid__list_remove(&sd->link);
    sd->op = NULL;
    sd->status = UV_ECANCELED;
    if (op) {
      struct send_wait *w = (struct send_wait *) braid_op_data(op);
      w->sd = NULL;
      w->status = UV_ECANCELED;
      braid_resume(op, 0);
    }
  }
  uv_close((uv_handle_t *) &u->handle, udp_close_cb);
}

static void udp_res_close (braid_resource_t *r) {
  udp_close(container_of(r, struct udp_sock, res));
}

/* The open socket at 1; raises kind "closed" when it is closed. */
static struct udp_sock *udp_check (lua_State *L, const char *fname) {
  struct udp_sock **box = braid__check_object(L, 1, UDP_MT, fname);
  if (*box == NULL)
    braid_error(L, "closed", NULL, "%s: the socket is closed", fname);
  return *box;
}

/* Pushes the host and port of sa. [-0, +2, m] */
static int push_addr (lua_State *L, const struct sockaddr_storage *sa) {
  char host[64] = "?";
  int port = 0;
  if (sa->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *) sa;
    uv_ip6_name(a, host, sizeof host);
    port = ntohs(a->sin6_port);
  } else if (sa->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *) sa;
    uv_ip4_name(a, host, sizeof host);
    port = ntohs(a->sin_port);
  }
  lua_pushstring(L, host);
  lua_pushinteger(L, port);
  return 2;
}

/* ---- receiving ---- */

static void udp_alloc_cb (uv_handle_t *h, size_t size, uv_buf_t *buf) {
  struct udp_sock *u = container_of((uv_udp_t *) h, struct udp_sock, handle);
  (void) size;
  *buf = uv_buf_init(u->buf, UDP_BUF);
}

static void udp_recv_cb (uv_udp_t *h, ssize_t nread, const uv_buf_t *buf,
                         const struct sockaddr *addr, unsigned flags) {
  struct udp_sock *u = container_of(h, struct udp_sock, handle);
  braid_op_t *op;
  (void) buf;
  if (nread == 0 && addr == NULL) return;   /* nothing more for now */
  if (nread >= 0) {
    memcpy(&u->from, addr, addr->sa_family == AF_INET6 ?
           sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in));
    /* a datagram longer than the buffer was cut: say so, not deliver */
    u->pending = (flags & UV_UDP_PARTIAL) ? UV_EMSGSIZE : nread;
  } else {
    u->pending = nread < -1 ? nread : UV_EIO;
  }
  uv_udp_recv_stop(h);   /* one datagram per recv: the kernel keeps the rest */
  if ((op = u->receiver) != NULL) {
    u->receiver = NULL;
    braid_resume(op, 0);
  }
}

static int recv_start (braid_op_t *op, void *ud) {
  struct udp_sock *u = (struct udp_sock *) ud;
  int rc = uv_udp_recv_start(&u->handle, udp_alloc_cb, udp_recv_cb);
  if (rc != 0) return rc;
  *(struct udp_sock **) braid_op_data(op) = u;
  u->receiver = op;
  return 0;
}

static void recv_cancel (braid_op_t *op) {
  struct udp_sock *u = *(struct udp_sock **) braid_op_data(op);
  if (u->receiver == op) {
    u->receiver = NULL;
    uv_udp_recv_stop(&u->handle);
  }
}

/* Hands the pending datagram (or error) to the caller. */
static int recv_take (lua_State *L, struct udp_sock *u, const char *fname) {
  ssize_t n = u->pending;
  u->pending = -1;
  if (n < 0) return braid__error_uv(L, (int) n, fname);
  lua_pushlstring(L, u->buf, (size_t) n);
  return 1 + push_addr(L, &u->from);
}

/* The socket object is at 1: it may have closed meanwhile. */
static int recv_k (lua_State *L, braid_op_t *op) {
  struct udp_sock **box = (struct udp_sock **) lua_touserdata(L, 1);
  (void) op;
  if (*box == NULL)
    return braid_error(L, "closed", NULL, "sock:recv: the socket was "
                       "closed while receiving");
  if ((*box)->pending == -1)   /* cannot happen: woken with nothing */
    return braid_error(L, "io", NULL, "sock:recv: nothing received");
  return recv_take(L, *box, "sock:recv");
}

/* sock:recv() -> data, host, port: waits for the next datagram. */
static int l_udp_recv (lua_State *L) {
  struct udp_sock *u = udp_check(L, "sock:recv");
  braid_check_task(L, "sock:recv");
  lua_settop(L, 1);
  if (u->receiver)
    return braid_usageerror(L, "sock:recv: another task is receiving");
  if (u->pending != -1) return recv_take(L, u, "sock:recv");
  braid_check_suspend(L, "sock:recv");
  return braid_suspendk(L, "udp recv", sizeof u, recv_start, recv_cancel,
                        u, recv_k);
}

/* ---- sending ---- */

static void send_cb (uv_udp_send_t *req, int status) {
  struct udp_send *sd = container_of(req, struct udp_send, req);
  braid_op_t *op = sd->op;
  braid__list_remove(&sd->link);
  braid__unref(sd->E, sd->ref);
  free(sd);
  if (op) {
    struct send_wait *w = (struct send_wait *) braid_op_data(op);
    w->sd = NULL;
    w->status = status;
    braid_resume(op, 0);
  }
}

struct send_args {
  struct udp_sock *u;
  struct udp_send *sd;
  const struct sockaddr *sa;
  const char *data;
  size_t len;
};

static int send_start (braid_op_t *op, void *ud) {
  struct send_args *a = (struct send_args *) ud;
  struct send_wait *w = (struct send_wait *) braid_op_data(op);
  uv_buf_t b = uv_buf_init((char *) a->data, (unsigned) a->len);
  int rc = uv_udp_send(&a->sd->req, &a->u->handle, &b, 1, a->sa, send_cb);
  if (rc != 0) {               /* never started: the request is still ours */
    braid__unref(a->sd->E, a->sd->ref);
    free(a->sd);
    return rc;
  }
  w->sd = a->sd;
  w->status = 0;
  a->sd->op = op;
  braid__list_push(&a->u->sends, &a->sd->link);
  return 0;
}

/* A cancelled send is detached: libuv may be writing the bytes. */
static void send_cancel (braid_op_t *op) {
  struct send_wait *w = (struct send_wait *) braid_op_data(op);
  if (w->sd) w->sd->op = NULL;
}

static int send_k (lua_State *L, braid_op_t *op) {
  struct send_wait *w = (struct send_wait *) braid_op_data(op);
  if (w->status == UV_ECANCELED && *(void **) lua_touserdata(L, 1) == NULL)
    return braid_error(L, "closed", NULL, "sock:send: the socket was closed "
                       "while sending");
  if (w->status < 0) return braid__error_uv(L, w->status, "sock:send");
  lua_settop(L, 1);
  return 1;
}

/* sock:send(data, host, port) -> sock: sends one datagram; waits only when
** the kernel cannot take it at once. */
static int l_udp_send (lua_State *L) {
  struct udp_sock *u = udp_check(L, "sock:send");
  struct sockaddr_storage sa;
  struct send_args a;
  uv_buf_t b;
  const char *host;
  int port, rc;
  braid_check_task(L, "sock:send");
  if (lua_type(L, 2) != LUA_TSTRING)
    braid_argerror(L, 2, "sock:send", "string expected");
  host = braid__tcp_check_host(L, 3, "sock:send", NULL);
  a.data = lua_tolstring(L, 2, &a.len);
  port = braid__tcp_check_port(L, 4, "sock:send");
  if (braid__tcp_addr(host, port, &sa) != 0)
    braid_argerror(L, 3, "sock:send", "IP address expected");
  if (a.len > UDP_BUF)
    return braid__error_uv(L, UV_EMSGSIZE, "sock:send");
  lua_settop(L, 4);
  b = uv_buf_init((char *) a.data, (unsigned) a.len);
  rc = uv_udp_try_send(&u->handle, &b, 1, (const struct sockaddr *) &sa);
  if (rc >= 0) {
    lua_settop(L, 1);
    return 1;
  }
  if (rc != UV_EAGAIN)
    return braid_error(L, "io", braid__errname(rc), "sock:send %s:%d: %s",
                       host, port, braid__strerror(rc));
  braid_check_suspend(L, "sock:send");
  if ((a.sd = braid__calloc(1, sizeof *a.sd)) == NULL)
    return braid_error(L, "memory", NULL, "sock:send: not enough memory");
  lua_pushvalue(L, 2);
  a.sd->ref = luaL_ref(L, LUA_REGISTRYINDEX);   /* until send_cb */
  a.sd->E = braid_engine(L);
  braid__list_init(&a.sd->link);
  a.u = u;
  a.sa = (const struct sockaddr *) &sa;
  return braid_suspendk(L, "udp send", sizeof(struct send_wait), send_start,
                        send_cancel, &a, send_k);
}

/* ---- the socket ---- */

/* sock:address() -> host, port the socket is bound to; nil for a
** braid.udp.open() socket before its first send (libuv makes its socket
** then: bound to nothing yet, it has no fd). */
static int l_udp_address (lua_State *L) {
  struct udp_sock *u = udp_check(L, "sock:address");
  struct sockaddr_storage sa;
  uv_os_fd_t fd;
  int len = sizeof sa, rc;
  if (uv_fileno((uv_handle_t *) &u->handle, &fd) == UV_EBADF) {
    lua_pushnil(L);
    return 1;
  }
  if ((rc = uv_udp_getsockname(&u->handle, (struct sockaddr *) &sa, &len)))
    return braid__error_uv(L, rc, "sock:address");
  return push_addr(L, &sa);
}

/* sock:close(), __close, __gc: closing twice is harmless. */
static int l_udp_close (lua_State *L) {
  struct udp_sock **box = braid__check_object(L, 1, UDP_MT, "sock:close");
  if (*box) udp_close(*box);
  return 0;
}

static int l_udp_tostring (lua_State *L) {
  struct udp_sock **box = braid__check_object(L, 1, UDP_MT, "tostring");
  lua_pushfstring(L, "<udp socket %p%s>", (void *) box,
                  *box ? "" : " closed");
  return 1;
}

/* Makes a socket, bound to sa when it is not NULL; pushes its object. */
static int udp_new (lua_State *L, const char *fname,
                    const struct sockaddr *sa, const char *host, int port) {
  braid_engine_t *E = braid_check_task(L, fname);
  struct udp_sock **box, *u;
  int rc;
  box = (struct udp_sock **) lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, UDP_MT);
  if ((u = braid__calloc(1, sizeof *u)) == NULL ||
      (u->buf = braid__malloc(UDP_BUF)) == NULL ||
      braid__charge_set(&u->charge, E, UDP_BUF) != 0) {
    if (u) free(u->buf);
    free(u);
    return braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  if ((rc = uv_udp_init(braid_loop(E), &u->handle)) != 0) {
    braid__charge_set(&u->charge, E, 0);
    free(u->buf);
    free(u);
    return braid__error_uv(L, rc, fname);
  }
  u->E = E;
  u->pending = -1;
  braid__list_init(&u->sends);
  u->res.close = udp_res_close;
  braid_resource_add(L, &u->res);
  u->box = box;
  *box = u;
  if (sa && (rc = uv_udp_bind(&u->handle, sa, 0)) != 0) {
    udp_close(u);
    return braid_error(L, "io", braid__errname(rc), "%s %s:%d: %s", fname,
                       host, port, braid__strerror(rc));
  }
  return 1;
}

/* braid.udp.bind([host], port) -> sock: bound to host (default
** "127.0.0.1"; "0.0.0.0" or "::" for every interface) and port (0: a free
** one, see sock:address()). */
static int l_udp_bind (lua_State *L) {
  struct sockaddr_storage sa;
  const char *host;
  int port;
  /* bind(port): the host left out, as "[host], port" says */
  if (lua_gettop(L) == 1 && lua_type(L, 1) == LUA_TNUMBER) {
    lua_pushnil(L);
    lua_insert(L, 1);
  }
  host = braid__tcp_check_host(L, 1, "braid.udp.bind", "127.0.0.1");
  port = braid__tcp_check_port(L, 2, "braid.udp.bind");
  if (braid__tcp_addr(host, port, &sa) != 0)
    braid_argerror(L, 1, "braid.udp.bind", "IP address expected");
  return udp_new(L, "braid.udp.bind", (const struct sockaddr *) &sa, host,
                 port);
}

/* braid.udp.open() -> sock: not bound; the first send binds it to a free
** port on every interface. */
static int l_udp_open (lua_State *L) {
  return udp_new(L, "braid.udp.open", NULL, NULL, 0);
}

/* Sets braid.udp on the braid table at the stack top. [-0, +0, m] */
void braid__open_udp (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"send", l_udp_send},
    {"recv", l_udp_recv},
    {"address", l_udp_address},
    {"close", l_udp_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", l_udp_close},
    {"__close", l_udp_close},
    {"__tostring", l_udp_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"bind", l_udp_bind},
    {"open", l_udp_open},
    {NULL, NULL}
  };
  braid__class(L, UDP_MT, meta, methods, NULL);
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "udp");
}
