/*
** braid.h: embedding braid, a concurrency engine for Lua 5.4 on libuv.
**
** Today this header covers opening braid in a lua_State and running a
** function as the root task; the fuller embedding API (an application's own
** uv_loop_t, suspending C functions, limits) is tracked as its own issue.
*/
#ifndef BRAID_H
#define BRAID_H

#include "lua.h"

#define BRAID_VERSION_MAJOR 0
#define BRAID_VERSION_MINOR 1
#define BRAID_VERSION_PATCH 0
#define BRAID_VERSION "0.1.0"

#ifndef BRAID_API
#define BRAID_API extern
#endif

typedef struct braid_engine braid_engine_t;

/* Opens the braid module in L and pushes its table, as require "braid"
** does. The engine lives as long as L. [-0, +1, m] */
BRAID_API int luaopen_braid(lua_State *L);

/* Asks the running root task to stop, as Ctrl-C does (reason "interrupt").
** Returns 0, or UV_EINVAL when nothing is running. Safe from a libuv
** callback on the engine's loop; not from another thread or a signal
** handler. */
BRAID_API int braid_interrupt(lua_State *L);

#endif
