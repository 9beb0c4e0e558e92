/*
** tcp.h: a TCP stream (tcp.c), shared by braid.tcp.connect (tcp.c) and the
** streams a server accepts (tcp_server.c). Its reading, writing and
** shutdown are io/stream.c's.
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

/* A new stream with an initialised handle, owned by nobody yet (a close
** frees it), or NULL with *rc set. */
struct braid_tcp *braid__tcp_new(braid_engine_t *E, int *rc);

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

/* Adds braid.tcp.listen to the table at the stack top and makes the
** server objects' class (tcp_server.c). */
void braid__open_tcp_server(lua_State *L);

#endif
