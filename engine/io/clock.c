/*
** clock.c: braid.clock() and braid.pid(), what a script asks of the world
** outside the engine's clock: the wall-clock time (braid.now stays the
** monotonic, or virtual, engine clock that every duration is measured on)
** and its own process id.
*/
#include "core/prim.h"

/* braid.clock() -> seconds since the Unix epoch as a float, with
** microseconds: the real wall clock even on the virtual clock (a
** timestamp for logs and files; it can jump when the system clock is
** set, so measure durations with braid.now). */
static int l_clock (lua_State *L) {
  uv_timeval64_t tv;
  int rc = uv_gettimeofday(&tv);
  if (rc != 0) return braid__error_uv(L, rc, "braid.clock");
  lua_pushnumber(L, (lua_Number) tv.tv_sec + (lua_Number) tv.tv_usec / 1e6);
  return 1;
}

/* braid.pid() -> the process id of braid (of the embedding application). */
static int l_pid (lua_State *L) {
  lua_pushinteger(L, (lua_Integer) uv_os_getpid());
  return 1;
}

/* Sets braid.clock and braid.pid on the braid table at the stack top.
** [-0, +0, m] */
void braid__open_clock (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"clock", l_clock},
    {"pid", l_pid},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}
