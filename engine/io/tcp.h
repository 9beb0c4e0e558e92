/*
** tcp.h: a socket stream (tcp.c): TCP or a unix socket, one kind of
** object, shared by braid.tcp.connect (tcp.c), braid.unix.connect
** (unix.c) and the streams a server accepts (tcp_server.c). Its reading,
** writing and shutdown are io/stream.c's. And the servers' common part.
*/
#ifndef BRAID_TCP_H
#define BRAID_TCP_H

#include "braid.h"
#include "core/prim.h"
#include "io/stream.h"

/* A stream's struct is malloc'd; its object (a userdata) holds a pointer
** to it. It is freed when both its handle has closed and its object is
** collected, so a method's continuation always finds it. */
struct braid_tcp {
  struct braid_stream s;
  braid_resource_t res;            /* in its scope while `attached` */
  unsigned char attached, owned, closed;   /* owned: by a Lua object */
};

/* A new stream with an initialised handle (a uv_pipe_t when `pipe`, else
** a uv_tcp_t), owned by nobody yet (a close frees it), or NULL with *rc
** set. */
struct braid_tcp *braid__tcp_new(braid_engine_t *E, int pipe, int *rc);

/* Pushes an empty stream object, made before the stream is bound to it so
** that running out of memory leaves no handle without an owner.
** [-0, +1, m] */
struct braid_tcp **braid__tcp_newud(lua_State *L);

/* Binds ts to its object (which then owns it), with read_line's limit. */
void braid__tcp_bind(struct braid_tcp **ud, struct braid_tcp *ts,
                     size_t max_line);

/* Makes ts a resource of the running task's innermost scope (t NULL) or
** of handler task t's own scope. Runs no Lua. */
void braid__tcp_attach(lua_State *L, struct braid_tcp *ts, braid_task_t *t);

/* The port at arg, checked (0 to 65535), or a usage error naming fname. */
int braid__tcp_check_port(lua_State *L, int arg, const char *fname);
/* The host name or address at arg: a non-empty string without a zero byte
** (C would stop there and reach another host), else a usage error; `def`
** when arg is none or nil, unless def is NULL. */
const char *braid__tcp_check_host(lua_State *L, int arg, const char *fname,
                                  const char *def);

/* Is host (not an address braid__tcp_addr takes) a name for the resolver?
** Not when the C library would read it as an IPv4 address in inet_aton's
** old forms ("0", "0x0", "0177.0.0.1", "2130706433", "127.1": 0.0.0.0
** listens on every interface), which braid refuses: an IPv4 address is a
** dotted quad. `strict` also asks for a name's characters (letters,
** digits, '-', '.', '_'), as tcp.listen does. */
int braid__tcp_is_name(const char *host, int strict);

/* The usage error's text for a host that is neither. */
#define BRAID_TCP_HOST_EXPECTED "IP address (IPv4 as a dotted quad a.b.c.d, " \
  "or IPv6) or host name expected"

/* host (a numeric IPv4 or IPv6 address, or "localhost": 127.0.0.1) and
** port as a socket address: 0, or UV_EINVAL for anything else. */
int braid__tcp_addr(const char *host, int port, struct sockaddr_storage *sa);

/* How braid__listen makes a server: fname names the function in errors,
** `where` the address ("127.0.0.1:80", a socket's path); the handler and
** the options table are at those stack indices; bind binds the handle
** (uv_tcp_t, or uv_pipe_t when `pipe`) as ud says; `path` is a unix
** socket's name ("@name": abstract, no file), kept for server:path() and,
** when it names a file, removed when the server closes. */
struct braid_listen {
  const char *fname, *where, *path;
  int handler, opts, pipe;
  int (*bind)(uv_stream_t *h, void *ud);
  void *ud;
};

/* Makes, binds and starts a server as `how` says and pushes its object,
** a resource of the calling scope; raises kind "io" (or "memory") when it
** cannot listen, usage errors for bad options. Inside a task.
** [-0, +1, v] */
int braid__listen(lua_State *L, const struct braid_listen *how);

/* Adds braid.tcp.listen to the table at the stack top and makes the
** server objects' class (tcp_server.c). */
void braid__open_tcp_server(lua_State *L);

#endif
