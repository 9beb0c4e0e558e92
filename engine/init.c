/*
** init.c: the library list, as Lua's linit.c: every library of the braid
** table, its opener and the BRAID_MOD_* capability it needs (0: always
** there). The module opener (require "braid", the runner) and the
** embedding sandbox (braid_new, which allows only options.modules) both
** open braid through luaopen_braid, so this table is the one place that
** names braid's primitives; the core names none.
*/
#include <string.h>
#include "core/prim.h"

extern const char braid__lua_source[];

static const struct {
  const char *name;            /* as the braid table has it */
  void (*open)(lua_State *L);  /* adds it to the table at the stack top */
  unsigned needs;              /* BRAID_MOD_* bits; 0: none */
} libs[] = {
  /* the core */
  {"run", braid__open_engine, 0},
  {"spawn", braid__open_task, 0},
  {"scope", braid__open_scope, 0},
  {"gather", braid__open_group, 0},
  {"now", braid__open_timer, 0},
  {"channel", braid__open_channel, 0},
  {"semaphore", braid__open_sync, 0},
  {"select", braid__open_select, 0},
  {"dump", braid__open_dump, 0},
  {"Error", braid__open_error, 0},
  {"_metatable", braid__open_metatable, 0},   /* braid.lua takes it */
  /* the primitives (engine/io/) */
  {"sleep", braid__open_sleep, 0},
  {"ticker", braid__open_ticker, 0},
  {"clock", braid__open_clock, 0},
  {"exec", braid__open_process, BRAID_MOD_PROCESS},
  {"fs", braid__open_fs, BRAID_MOD_FS},
  {"tcp", braid__open_tcp, BRAID_MOD_NET},
  {"unix", braid__open_unix, BRAID_MOD_NET},   /* after tcp: its objects */
  {"udp", braid__open_udp, BRAID_MOD_NET},
  {"dns", braid__open_dns, BRAID_MOD_NET},
  {"http", braid__open_http, BRAID_MOD_NET},
  {"signal", braid__open_signal, BRAID_MOD_SIGNAL},
  {"progress", braid__open_progress, 0},
  {"worker", braid__open_worker, 0},
  {"stdin", braid__open_stdio, BRAID_MOD_PROCESS},
  {"json", braid__open_json, 0},     /* the Lua side uses it (http.lua) */
};

/* Names an opener above adds besides its own, when its module is allowed
** (braid.process comes with braid.exec, braid.stdout and braid.stderr with
** braid.stdin). */
static const char *const absent_too[] = {"process", "stdout", "stderr"};

/* Once complete, the braid table and its module tables (braid.fs, ...)
** explain a misspelt name (prim.h: braid__strict_fields); the table of
** names a sandbox may leave out is below the braid table. */
static void strict_tables (lua_State *L) {
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    int plain = lua_type(L, -1) == LUA_TTABLE;
    if (plain && lua_getmetatable(L, -1)) {
      lua_pop(L, 1);
      plain = 0;                    /* a class's methods: strict already */
    }
    if (plain && lua_type(L, -2) == LUA_TSTRING) {
      lua_pushfstring(L, "braid.%s", lua_tostring(L, -2));
      lua_newtable(L);              /* nothing in it may be absent */
      braid__strict_fields(L, -3, lua_tostring(L, -2));
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, -2);
  braid__strict_fields(L, -2, "braid");
  lua_remove(L, -2);
}

LUA_API int luaopen_braid (lua_State *L) {
  unsigned mods;
  size_t i;
  braid__open_core(L);                       /* pushes the braid table */
  mods = braid__engine_modules(L);
  lua_newtable(L);                 /* the names a sandbox may leave out */
  for (i = 0; i < sizeof libs / sizeof *libs; i++) {
    if (libs[i].needs == 0) continue;
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, libs[i].name);
  }
  for (i = 0; i < sizeof absent_too / sizeof *absent_too; i++) {
    lua_pushboolean(L, 1);
    lua_setfield(L, -2, absent_too[i]);
  }
  lua_insert(L, -2);
  for (i = 0; i < sizeof libs / sizeof *libs; i++)
    if ((libs[i].needs & mods) == libs[i].needs) libs[i].open(L);
  /* The Lua-side library gets the C table and completes it. */
  if (luaL_loadbuffer(L, braid__lua_source, strlen(braid__lua_source),
                      "=[braid]") != LUA_OK)
    return lua_error(L);
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
  strict_tables(L);
  return 1;
}
