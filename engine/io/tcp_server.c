/*
** tcp_server.c: braid.tcp.listen, and the server objects it and
** braid.unix.listen (unix.c, through braid__listen) return: each connection
** a server accepts becomes a stream (tcp.c: the same objects for TCP and
** unix sockets) handed to a handler task.
**
** Invariants:
** - A server is a malloc'd struct with its uv_tcp_t (or, for a unix
**   socket, uv_pipe_t) embedded; the Lua
**   userdata only holds a pointer to it. uv_close runs exactly once
**   (`closing`); the struct is freed in the close callback, which clears
**   the userdata's pointer, so a method on a closed server raises kind
**   "closed". A collected server keeps serving: its scope owns it.
** - Every open server is a braid_resource_t of the scope that made it,
**   so it is closed when that scope ends. Its handlers are tasks of that
**   scope, watched (struct tcp_conn) so that closing the server cancels
**   them; each connection's stream is a resource of its handler's own
**   scope.
** - Accepting runs in a libuv callback: the handler task is spawned on the
**   scheduler's thread under braid__engine_call. A connection that cannot
**   be handed to a handler (its scope takes no new members, out of memory)
**   is accepted and closed at once, since libuv stops accepting until the
**   announced connection is taken.
** - listen makes its Lua objects before it listens, so running out of
**   memory can never leave a server listening with no handler.
** - A unix socket server made its socket file when it bound: it removes
**   the file when it closes (and when listening fails after the bind), if
**   the path still names that socket (its dev and inode), never a file
**   put there since.
*/
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "core/prim.h"
#include "io/gai.h"
#include "io/tcp.h"

#define SERVER_MT "braid.TcpServer"

struct tcp_server {
  union {
    uv_handle_t handle;
    uv_stream_t stream;
    uv_tcp_t tcp;
    uv_pipe_t pipe;
  } h;
  braid_engine_t *E;
  struct tcp_server **ud;
  braid_resource_t res;
  braid_scope_t *scope;            /* where handlers are spawned */
  struct braid_list conns;         /* struct tcp_conn: running handlers */
  size_t max_line;                 /* opts.max_line, for each stream */
  int handler_ref;                 /* {handler, function that listened} */
  int site_line;                   /* where listen was called, for reports */
  int port;
  char *path;                      /* a unix socket's name, as given */
  dev_t dev;                       /* and its file, while `unlink` */
  ino_t ino;
  unsigned char closing, pipe, unlink;   /* unlink: remove the file */
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
  struct tcp_server *srv = container_of(h, struct tcp_server, h.handle);
  if (srv->ud) *srv->ud = NULL;
  free(srv->path);
  free(srv);
}

/* Notes the socket file the bind made, to remove it later; a path that
** names no socket now (removed already) is not removed then. */
static void server_mark (struct tcp_server *srv) {
  struct stat st;
  srv->unlink = lstat(srv->path, &st) == 0 && S_ISSOCK(st.st_mode);
  srv->dev = st.st_dev;
  srv->ino = st.st_ino;
}

/* The socket file a unix server made goes with it, if the path still
** names it: anything put there since (a file, another server's socket) is
** left alone. The open socket keeps its inode alive, so no other file can
** have the same one; a file put there between the lstat and the unlink
** would still go (no call unlinks by inode). */
static void server_unlink (struct tcp_server *srv) {
  struct stat st;
  if (srv->unlink && lstat(srv->path, &st) == 0 && S_ISSOCK(st.st_mode) &&
      st.st_dev == srv->dev && st.st_ino == srv->ino)
    unlink(srv->path);
  srv->unlink = 0;
}

/* Stops listening and cancels the handlers still running. Runs no Lua. */
static void server_close (struct tcp_server *srv) {
  if (srv->closing) return;
  srv->closing = 1;
  server_unlink(srv);
  braid_resource_remove(&srv->res);
  braid__unref(srv->E, srv->handler_ref);
  srv->handler_ref = LUA_NOREF;
  while (!braid__list_empty(&srv->conns)) {
    struct tcp_conn *k = container_of(srv->conns.next, struct tcp_conn, link);
    braid__list_remove(&k->link);     /* k lives on until its task ends */
    braid__task_cancel(k->task, NULL, 0);
  }
  uv_close(&srv->h.handle, server_close_cb);
}

static void server_res_close (braid_resource_t *r) {
  server_close(container_of(r, struct tcp_server, res));
}

static void refused_close_cb (uv_handle_t *h) {
  free(h);
}

/* Accepts the pending connection and closes it at once: libuv stops
** accepting until the one it announced is taken. */
static void server_refuse (struct tcp_server *srv) {
  union { uv_handle_t h; uv_tcp_t tcp; uv_pipe_t pipe; } *tmp;
  int rc = UV_ENOMEM;
  if ((tmp = malloc(sizeof *tmp)) != NULL)
    rc = srv->pipe ? uv_pipe_init(braid_loop(srv->E), &tmp->pipe, 0)
                   : uv_tcp_init(braid_loop(srv->E), &tmp->tcp);
  if (rc == 0) {
    uv_accept(&srv->h.stream, (uv_stream_t *) &tmp->h);
    uv_close(&tmp->h, refused_close_cb);
  } else {
    free(tmp);
  }
}

/* Accepts one connection and spawns its handler (braid__engine_call). */
static int server_accept (lua_State *S) {
  struct tcp_server *srv = lua_touserdata(S, 1);
  struct braid_tcp *ts, **ud;
  braid_task_t *t;
  struct tcp_conn *k;
  int rc;
  lua_rawgeti(S, LUA_REGISTRYINDEX, srv->handler_ref);      /* 2 */
  lua_rawgeti(S, 2, 1);                                     /* 3: handler */
  ud = braid__tcp_newud(S);                                        /* 4 */
  if ((ts = braid__tcp_new(srv->E, srv->pipe, &rc)) == NULL) {
    server_refuse(srv);
    return 0;
  }
  if (uv_accept(&srv->h.stream, &ts->s.h.stream) != 0) {
    braid__stream_close(&ts->s);
    return 0;
  }
  braid__tcp_bind(ud, ts, srv->max_line);   /* if the spawn fails, __gc closes it */
  t = braid__spawn(S, srv->scope, 3, 1);
  /* Reports name where listen was called, not "spawned at ?". */
  if (lua_rawgeti(S, 2, 2) == LUA_TFUNCTION)
    braid__task_set_site(S, t, -1, srv->site_line);
  lua_pop(S, 1);
  braid__tcp_attach(S, ts, t);       /* the handler's own scope owns the stream */
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
  struct tcp_server *srv = container_of(h, struct tcp_server, h.stream);

  if (status < 0 || srv->closing) return;   /* EMFILE and the like: retry */
  /* A scope being cancelled, or ending, takes no new members: refuse. */
  if (!braid__scope_open(srv->scope)) {
    server_refuse(srv);
    return;
  }
  braid__engine_call(srv->E, server_accept, srv);
}

static const char *const listen_options[] = {"backlog", "max_line", NULL};

int braid__listen (lua_State *L, const struct braid_listen *how) {
  braid_engine_t *E = braid_engine(L);
  struct tcp_server *srv, **ud;
  int rc, ref, backlog, line = 0;
  size_t limit, max_line;
  lua_Debug ar;
  braid__check_options(L, how->opts, how->fname, listen_options);
  limit = braid__opt_limit(L, how->opts, "backlog", 511, how->fname);
  backlog = limit > INT_MAX ? INT_MAX : (int) limit;   /* no cast overflow */
  max_line = braid__opt_limit(L, how->opts, "max_line", BRAID_MAX_LINE,
                              how->fname);
  /* The Lua objects first: once the server listens, nothing may raise. */
  /* the pointer, then whether it is a unix server, which tostring says
  ** also once the server is closed and freed */
  ud = lua_newuserdatauv(L, sizeof *ud + 1, 0);
  *ud = NULL;
  *(unsigned char *) (ud + 1) = how->path != NULL;
  luaL_setmetatable(L, SERVER_MT);
  lua_createtable(L, 2, 0);
  lua_pushvalue(L, how->handler);
  lua_rawseti(L, -2, 1);
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "fl", &ar)) {
    line = ar.currentline;    /* the file is found from the function */
    lua_rawseti(L, -2, 2);      /* the script's listen call */
  }
  ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if ((srv = braid__calloc(1, sizeof *srv)) == NULL ||
      (how->path && (srv->path = braid__malloc(strlen(how->path) + 1)) ==
                    NULL)) {
    free(srv);
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return braid_error(L, "memory", NULL, "%s: not enough memory",
                       how->fname);
  }
  if (how->path) strcpy(srv->path, how->path);
  srv->E = E;
  srv->max_line = max_line;
  srv->handler_ref = ref;
  srv->site_line = line;
  srv->pipe = how->pipe;
  braid__list_init(&srv->conns);
  srv->res.close = server_res_close;
  rc = how->pipe ? uv_pipe_init(braid_loop(E), &srv->h.pipe, 0)
                 : uv_tcp_init(braid_loop(E), &srv->h.tcp);
  if (rc != 0) {
    free(srv->path);
    free(srv);
    goto fail;
  }
  srv->closing = 1;   /* until it listens: a failure closes it quietly */
  if ((rc = how->bind(&srv->h.stream, how->ud)) == 0) {
    if (how->pipe && how->path && how->path[0] != '@') server_mark(srv);
    rc = uv_listen(&srv->h.stream, backlog, server_connection_cb);
  }
  if (rc == 0 && !how->pipe) {
    struct sockaddr_storage sa;
    int len = sizeof sa;
    if ((rc = uv_tcp_getsockname(&srv->h.tcp, (struct sockaddr *) &sa,
                                 &len)) == 0)
      srv->port = ntohs(sa.ss_family == AF_INET6 ?
                        ((struct sockaddr_in6 *) &sa)->sin6_port :
                        ((struct sockaddr_in *) &sa)->sin_port);
  }
  if (rc != 0) {
    server_unlink(srv);
    uv_close(&srv->h.handle, server_close_cb);
    goto fail;
  }
  srv->closing = 0;
  /* A server made inside braid.shield belongs to the shield: its handlers
  ** run shielded as the code that made it does. */
  srv->scope = braid__scope_here(L, 1);
  braid__scope_resource_add(srv->scope, &srv->res);
  *ud = srv;
  srv->ud = ud;
  return 1;
fail:
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  if (rc == UV_ENOMEM)
    return braid_error(L, "memory", NULL, "%s: not enough memory",
                       how->fname);
  return braid_error(L, "io", braid__errname(rc), "%s %s: %s", how->fname,
                     how->where, braid__strerror(rc));
}

static int tcp_bind (uv_stream_t *h, void *ud) {
  return uv_tcp_bind((uv_tcp_t *) h, (const struct sockaddr *) ud, 0);
}

/* Listens on sa; host and port (for messages) at 1 and 2, the handler at
** 3, the options at 4. */
static int tcp_listen_at (lua_State *L, struct sockaddr_storage *sa) {
  struct braid_listen how;
  const char *host = lua_isnoneornil(L, 1) ? "127.0.0.1" : lua_tostring(L, 1);
  char where[96];
  snprintf(where, sizeof where, strchr(host, ':') ? "[%.64s]:%d" : "%.64s:%d",
           host, (int) lua_tointeger(L, 2));
  memset(&how, 0, sizeof how);
  how.fname = "braid.tcp.listen";
  how.where = where;
  how.handler = 3;
  how.opts = 4;
  how.bind = tcp_bind;
  how.ud = sa;
  return braid__listen(L, &how);
}

/* A host name being resolved: its own allocation, which outlives the
** lookup (gai.c) only until the task lets go. */
struct listen_gai {
  struct braid_gai *req;       /* the lookup, until done */
  braid_op_t *op;
  struct addrinfo *res;
  int status, done;
};

static void listen_gai_free (struct listen_gai *g) {
  if (g->res) uv_freeaddrinfo(g->res);
  free(g);
}

static void listen_gai_cb (struct braid_gai *req, int status,
                           struct addrinfo *res) {
  struct listen_gai *g = (struct listen_gai *) braid__gai_data(req);
  g->req = NULL;
  g->done = 1;
  g->status = status;
  g->res = res;
  braid_resume(g->op, 0);
}

struct gai_args {
  uv_loop_t *loop;
  const char *host;
  struct listen_gai *g;
};

static int listen_gai_start (braid_op_t *op, void *ud) {
  struct gai_args *a = (struct gai_args *) ud;
  struct addrinfo hints;
  int rc;
  *(struct listen_gai **) braid_op_data(op) = a->g;
  a->g->op = op;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  rc = braid__gai_start(a->loop, &a->g->req, a->host, NULL, &hints,
                        listen_gai_cb, a->g);
  if (rc != 0) {                /* never started: the continuation says so */
    a->g->done = 1;
    a->g->status = rc;
    braid_resume(op, 0);
  }
  return 0;
}

/* A lookup in flight is abandoned (its thread frees what it finds). */
static void listen_gai_cancel (braid_op_t *op) {
  struct listen_gai *g = *(struct listen_gai **) braid_op_data(op);
  if (!g->done) braid__gai_abandon(g->req);
  listen_gai_free(g);
}

/* The name is resolved: listen on its first address. */
static int listen_gai_k (lua_State *L, braid_op_t *op) {
  struct listen_gai *g = *(struct listen_gai **) braid_op_data(op);
  struct sockaddr_storage sa;
  int rc = g->status;
  int port = (int) lua_tointeger(L, 2);
  if (rc == 0 && g->res == NULL) rc = UV_EAI_NONAME;
  if (rc == 0) {
    memset(&sa, 0, sizeof sa);
    memcpy(&sa, g->res->ai_addr, g->res->ai_addrlen);
    if (sa.ss_family == AF_INET6)
      ((struct sockaddr_in6 *) &sa)->sin6_port = htons((uint16_t) port);
    else
      ((struct sockaddr_in *) &sa)->sin_port = htons((uint16_t) port);
  }
  listen_gai_free(g);
  if (rc == UV_ENOMEM || rc == UV_EAI_MEMORY)
    return braid__error_uv(L, UV_ENOMEM, "braid.tcp.listen");
  if (rc < 0) {
    braid_pusherror(L, "io", braid__errname(rc), "braid.tcp.listen %s: %s",
                    lua_tostring(L, 1), braid__strerror(rc));
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "host");
    return lua_error(L);
  }
  return tcp_listen_at(L, &sa);
}

/* braid.tcp.listen([host], port, handler, [opts]) -> server. host defaults
** to "127.0.0.1"; an address (IPv4, IPv6, "localhost") listens at once, a
** host name is resolved first (a cancellable wait) and the server listens
** on its first address. port 0 picks a free one. Each connection runs
** handler(stream) as a child task of the calling scope. opts: backlog
** (default 511), max_line (each stream's line limit). */
static int l_tcp_listen (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "braid.tcp.listen");
  struct sockaddr_storage sa;
  struct gai_args a;
  const char *host = braid__tcp_check_host(L, 1, "braid.tcp.listen",
                                           "127.0.0.1");
  int port;
  port = braid__tcp_check_port(L, 2, "braid.tcp.listen");
  if (!braid__is_callable(L, 3))
    braid_argerror(L, 3, "braid.tcp.listen", "function expected");
  braid__check_options(L, 4, "braid.tcp.listen", listen_options);
  lua_settop(L, 4);
  if (braid__tcp_addr(host, port, &sa) == 0) return tcp_listen_at(L, &sa);
  if (!braid__tcp_is_name(host, 1))
    braid_argerror(L, 1, "braid.tcp.listen", BRAID_TCP_HOST_EXPECTED);
  braid_check_suspend(L, "braid.tcp.listen");
  if ((a.g = braid__calloc(1, sizeof *a.g)) == NULL)
    return braid__error_uv(L, UV_ENOMEM, "braid.tcp.listen");
  a.loop = braid_loop(E);
  a.host = host;
  return braid_suspendk(L, "tcp.listen resolve", sizeof a.g,
                        listen_gai_start, listen_gai_cancel, &a,
                        listen_gai_k);
}

static struct tcp_server *server_check (lua_State *L, const char *fname) {
  struct tcp_server **ud = braid__check_object(L, 1, SERVER_MT, fname);
  if (*ud == NULL || (*ud)->closing)
    braid_error(L, "closed", NULL, "%s: the server is closed", fname);
  return *ud;
}

/* server:port() -> the port it listens on; nil for a unix socket. */
static int l_server_port (lua_State *L) {
  struct tcp_server *srv = server_check(L, "server:port");
  if (srv->pipe) lua_pushnil(L);
  else lua_pushinteger(L, srv->port);
  return 1;
}

/* server:path() -> the unix socket's name, as given; nil for TCP. */
static int l_server_path (lua_State *L) {
  struct tcp_server *srv = server_check(L, "server:path");
  if (srv->pipe) lua_pushstring(L, srv->path);
  else lua_pushnil(L);
  return 1;
}

/* server:close(): stops listening and cancels the running handlers. */
static int l_server_close (lua_State *L) {
  struct tcp_server **ud = braid__check_object(L, 1, SERVER_MT,
                                               "server:close");
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
  if (*ud && !(*ud)->closing && (*ud)->pipe)
    lua_pushfstring(L, "<unix server on %s>", (*ud)->path);
  else if (*ud && !(*ud)->closing)
    lua_pushfstring(L, "<tcp server on port %d>", (*ud)->port);
  else
    lua_pushfstring(L, "<%s server closed>",
                    *(unsigned char *) (ud + 1) ? "unix" : "tcp");
  return 1;
}

/* Adds listen to the braid.tcp table at the stack top. */
void braid__open_tcp_server (lua_State *L) {
  static const luaL_Reg server_methods[] = {
    {"port", l_server_port},
    {"path", l_server_path},
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
    {"listen", l_tcp_listen},
    {NULL, NULL}
  };
  braid__class(L, SERVER_MT, server_meta, server_methods, NULL);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
