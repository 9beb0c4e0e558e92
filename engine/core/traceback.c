/*
** traceback.c: the tracebacks braid keeps about failures (a failure
** record's, a braid.Error's `traceback` field): luaL_traceback's text
** (Lua 5.4), made cheaper.
**
** luaL_traceback searches package.loaded (two levels deep: every loaded
** module's fields and every global) for a name of each frame's function.
** With many modules loaded that search is most of what a failure costs
** (over 100 us), and failures come in thousands (fail-fast, timeouts).
** Here the search's answer is kept per function, in a weak-keyed table
** (the collector drops an entry with its function): a name found is
** checked again each time (a lookup or two), a "none" is trusted while the
** function lives (so a function that becomes a global only after it
** appeared in a traceback keeps its plain description), and all is
** forgotten at each braid.run's start.
*/
#include <string.h>
#include "core.h"

static const char names_key = 'n';

#define LEVELS1 10   /* frames shown before the skip */
#define LEVELS2 11   /* frames shown after it */

/* luaL_traceback's search: the value at objidx in the table on top, or in
** the tables in it (level 2); pushes "key" or "key.field". */
static int findfield (lua_State *L, int objidx, int level) {
  if (level == 0 || !lua_istable(L, -1)) return 0;
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      if (lua_rawequal(L, objidx, -1)) {
        lua_pop(L, 1);
        return 1;
      } else if (findfield(L, objidx, level - 1)) {
        lua_remove(L, -2);
        lua_pushliteral(L, ".");
        lua_insert(L, -2);
        lua_concat(L, 3);
        return 1;
      }
    }
    lua_pop(L, 1);
  }
  return 0;
}

/* Is the function at f still package.loaded[...] under `name`, as the
** search gave it ("_G." left out; "module.field", where the module's own
** name may hold dots)? Raw lookups: a strict _G's __index never runs. */
static int name_holds (lua_State *L, int f, const char *name) {
  const char *dot = strrchr(name, '.');
  int top = lua_gettop(L), ok = 0;
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  if (dot == NULL) {   /* loaded._G[name], or loaded[name] */
    lua_pushliteral(L, LUA_GNAME);
    if (lua_rawget(L, top + 1) == LUA_TTABLE) {
      lua_pushstring(L, name);
      lua_rawget(L, -2);
      ok = lua_rawequal(L, -1, f);
    }
    if (!ok) {
      lua_pushstring(L, name);
      lua_rawget(L, top + 1);
      ok = lua_rawequal(L, -1, f);
    }
  } else {
    lua_pushlstring(L, name, (size_t) (dot - name));
    if (lua_rawget(L, top + 1) == LUA_TTABLE) {
      lua_pushstring(L, dot + 1);
      lua_rawget(L, -2);
      ok = lua_rawequal(L, -1, f);
    }
  }
  lua_settop(L, top);
  return ok;
}

/* Replaces the function on top with a global name of it and returns 1,
** or pops it and returns 0. */
static int global_name (lua_State *L) {
  int f = lua_gettop(L), top = f - 1;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &names_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    braid__push_weak_table(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &names_key);
  }
  lua_pushvalue(L, f);
  switch (lua_rawget(L, top + 2)) {
    case LUA_TBOOLEAN:   /* searched: none */
      lua_settop(L, top);
      return 0;
    case LUA_TSTRING:
      if (name_holds(L, f, lua_tostring(L, -1))) {
        lua_replace(L, f);
        lua_settop(L, f);
        return 1;
      }
      break;
  }
  lua_pop(L, 1);
  lua_getfield(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  luaL_checkstack(L, 6, "not enough stack");
  if (findfield(L, f, 2)) {
    const char *name = lua_tostring(L, -1);
    if (strncmp(name, LUA_GNAME ".", 3) == 0) {
      lua_pushstring(L, name + 3);
      lua_remove(L, -2);
    }
    lua_pushvalue(L, f);
    lua_pushvalue(L, -2);
    lua_rawset(L, top + 2);
    lua_replace(L, f);
    lua_settop(L, f);
    return 1;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, f);
  lua_pushboolean(L, 0);
  lua_rawset(L, top + 2);
  lua_settop(L, top);
  return 0;
}

/* Pushes a global name of the frame's function and returns 1, or
** returns 0 (pushing nothing). */
static int push_global_name (lua_State *L, lua_Debug *ar) {
  lua_getinfo(L, "f", ar);
  return global_name(L);
}

/* global_name's answer for the function at idx: pushes its name ("math.floor")
** and returns 1, or returns 0 (pushing nothing). A task running a C
** function is named so, as no line defines it. [-0, +(0|1), m] */
int braid__global_name_push (lua_State *L, int idx) {
  lua_pushvalue(L, idx);
  return global_name(L);
}

static void push_func_name (lua_State *L, lua_Debug *ar) {
  if (push_global_name(L, ar)) {
    lua_pushfstring(L, "function '%s'", lua_tostring(L, -1));
    lua_remove(L, -2);
  } else if (*ar->namewhat != '\0') {
    lua_pushfstring(L, "%s '%s'", ar->namewhat, ar->name);
  } else if (*ar->what == 'm') {
    lua_pushliteral(L, "main chunk");
  } else if (*ar->what != 'C') {
    lua_pushfstring(L, "function <%s:%d>", ar->short_src, ar->linedefined);
  } else {
    lua_pushliteral(L, "?");
  }
}

static int last_level (lua_State *L) {
  lua_Debug ar;
  int li = 1, le = 1;
  while (lua_getstack(L, le, &ar)) {
    li = le;
    le *= 2;
  }
  while (li < le) {
    int m = (li + le) / 2;
    if (lua_getstack(L, m, &ar)) li = m + 1;
    else le = m;
  }
  return le - 1;
}

/* Pushes the traceback of L1 from level, as luaL_traceback(L, L1, NULL,
** level) would; "" when L1 has no frame there (an error made outside any
** Lua code, such as a deadlock's: a bare "stack traceback:" says nothing).
** [-0, +1, m] */
void braid__traceback (lua_State *L, lua_State *L1, int level) {
  luaL_Buffer b;
  lua_Debug ar;
  int last = last_level(L1);
  if (!lua_getstack(L1, level, &ar)) {
    lua_pushliteral(L, "");
    return;
  }
  int limit2show = (last - level > LEVELS1 + LEVELS2) ? LEVELS1 : -1;
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "stack traceback:");
  while (lua_getstack(L1, level++, &ar)) {
    if (limit2show-- == 0) {
      int n = last - level - LEVELS2 + 1;
      lua_pushfstring(L, "\n\t...\t(skipping %d levels)", n);
      luaL_addvalue(&b);
      level += n;
    } else {
      lua_getinfo(L1, "Slnt", &ar);
      if (ar.currentline <= 0)
        lua_pushfstring(L, "\n\t%s: in ", ar.short_src);
      else
        lua_pushfstring(L, "\n\t%s:%d: in ", ar.short_src, ar.currentline);
      luaL_addvalue(&b);
      push_func_name(L, &ar);
      luaL_addvalue(&b);
      if (ar.istailcall) luaL_addstring(&b, "\n\t(...tail calls...)");
    }
  }
  luaL_pushresult(&b);
}

int braid__frame_push (lua_State *L, lua_State *L1, int level) {
  lua_Debug ar;
  for (; lua_getstack(L1, level, &ar); level++) {
    lua_getinfo(L1, "fl", &ar);
    if (ar.currentline > 0) {
      if (L1 != L) lua_xmove(L1, L, 1);
      return ar.currentline;
    }
    lua_pop(L1, 1);
  }
  return -1;
}

/* As braid__frame_push(L, L, level), passing over the frames of braid's
** own Lua side (chunk "=[braid]"), as usage errors do: a group made there
** (braid.map's wrapper, pool:map) was placed at braid's line, not at the
** script's. Not for braid.spawn: the source lookup would be paid on every
** spawn, and none is made from braid's Lua side. */
int braid__site_push (lua_State *L, int level) {
  lua_Debug ar;
  for (; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "Slf", &ar);
    if (ar.currentline > 0 && strcmp(ar.source, "=[braid]") != 0)
      return ar.currentline;
    lua_pop(L, 1);
  }
  return -1;
}

/* Forgets the names found. [-0, +0, -] */
void braid__traceback_forget (lua_State *L) {
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &names_key);
}
