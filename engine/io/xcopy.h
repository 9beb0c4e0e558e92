/*
** xcopy.h: copying Lua values between lua_States that belong to different
** threads (io/xcopy.c): serialised into one C buffer on one side, rebuilt on
** the other. The buffer holds no Lua value and no pointer into a state, so
** it may be handed to any thread.
*/
#ifndef BRAID_XCOPY_H
#define BRAID_XCOPY_H

#include <stddef.h>
#include "lua.h"

/* The caps one message is held to (a worker's max_depth, max_message). */
struct braid_xlimits {
  int max_depth;          /* nesting of tables */
  size_t max_bytes;       /* the whole buffer */
};

#define BRAID_XCOPY_DEPTH 100
#define BRAID_XCOPY_BYTES ((size_t) 64 << 20)

/* Serialises the n values from stack index first into a new buffer
** (braid__malloc'd, *len bytes; the caller frees it). `root` names the
** values in error paths ("args" gives args[1], args[2].cb ...), `dir`
** says where they go ("to a worker") and `fname` the call that sends them
** ("worker:call"). The buffer is charged to L's engine (prim.h:
** braid__xcharge) until it is freed. Raises kind "usage" for a value that
** cannot cross (a function, userdata, coroutine: the message names its
** path), kind "limit" (fields limit, option) past a cap, kind "memory"
** (over L's engine's memory limit too). Runs no Lua code (raw access: no
** metamethod). [-0, +0, v] */
char *braid__xcopy_encode(lua_State *L, int first, int n, const char *root,
                          const char *dir, const struct braid_xlimits *lim,
                          const char *fname, size_t *len);

/* Pushes the values of a buffer made by braid__xcopy_encode; returns how
** many. Raises only when L runs out of memory. [-0, +n, m] */
int braid__xcopy_decode(lua_State *L, const char *buf, size_t len);

/* A lua_pcall that decoded a message of len bytes failed with rc, its
** error at the top: re-raises it, or, when L ran out of memory (the
** receiver's copy is braid's), a braid error of kind "memory" naming
** fname. [-1, +0, v] */
int braid__xcopy_decode_fail(lua_State *L, int rc, const char *fname,
                             size_t len);

/* Frees a buffer made by braid__xcopy_encode, decoded or not, on any
** thread: the shared channels it names are released and its bytes given
** back to its sender's account (NULL: nothing). braid__xcopy_dup copies
** one, charged to no one (NULL when out of memory). A buffer is never
** freed otherwise. */
void braid__xcopy_free(char *buf, size_t len);
char *braid__xcopy_dup(const char *buf, size_t len);

#endif
