/*
** auxlib.c: small helpers every layer uses (prim.h): intrusive lists,
** building braid's Lua classes, and checking options tables.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include "core.h"

void braid__list_init (struct braid_list *l) { l->prev = l->next = l; }

void braid__list_push (struct braid_list *head, struct braid_list *node) {
  node->prev = head->prev;
  node->next = head;
  head->prev->next = node;
  head->prev = node;
}

void braid__list_remove (struct braid_list *node) {
  node->prev->next = node->next;
  node->next->prev = node->prev;
  node->prev = node->next = node;
}

int braid__env_flag (const char *name, int dflt, int *cache) {
  static const char *const words[] = {"0", "off", "no", "false",
                                      "1", "on", "yes", "true"};
  const char *v;
  int i, flag = __atomic_load_n(cache, __ATOMIC_RELAXED);
  if (flag >= 0) return flag;
  v = getenv(name);
  flag = dflt;
  if (v != NULL && *v != '\0') {
    for (i = 0; i < 8 && strcasecmp(v, words[i]) != 0; i++) ;
    if (i < 8) flag = i >= 4;
    else fprintf(stderr, "braid: ignoring %s=%s (not 0/1, off/on, no/yes, "
                 "false/true)\n", name, v);
  }
  /* atomic: workers' threads read it too (after the first state, which
  ** is the main thread's, has read it: the warning comes once) */
  __atomic_store_n(cache, flag, __ATOMIC_RELAXED);
  return flag;
}

/* For a wrapper around one of Lua's own functions (in upvalue 1): calls
** it with the first nargs arguments and returns all its results. */
int braid__call_wrapped (lua_State *L, int nargs) {
  lua_settop(L, nargs);
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, nargs, LUA_MULTRET);
  return lua_gettop(L);
}

void braid__write_args (lua_State *L, const char *fname) {
  int i, n = lua_gettop(L);
  for (i = 2; i <= n || i == 2; i++)
    if (!lua_isstring(L, i)) braid_argerror(L, i, fname, "string expected");
  if (n > 2) lua_concat(L, n - 1);   /* no metamethod: all are strings */
}

int braid__is_callable (lua_State *L, int idx) {
  if (lua_isfunction(L, idx)) return 1;
  if (luaL_getmetafield(L, idx, "__call") == LUA_TNIL) return 0;
  lua_pop(L, 1);
  return 1;
}

/* Pushes a new table with weak keys. [-0, +1, m] */
void braid__push_weak_table (lua_State *L) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "k");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
}

/* ---- names that do not exist ---- */

/* The edit distance between a and b (insertions, deletions, substitutions
** and swaps of neighbours), or more than `most` once it cannot be within
** it. Names are short: longer ones are simply too far. */
static size_t name_distance (const char *a, const char *b, size_t most) {
  size_t la = strlen(a), lb = strlen(b), i, j;
  size_t d[34][34];
  if (la > 32 || lb > 32) return most + 1;
  if ((la > lb ? la - lb : lb - la) > most) return most + 1;
  for (i = 0; i <= la; i++) d[i][0] = i;
  for (j = 0; j <= lb; j++) d[0][j] = j;
  for (i = 1; i <= la; i++)
    for (j = 1; j <= lb; j++) {
      size_t c = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
      if (d[i - 1][j] + 1 < c) c = d[i - 1][j] + 1;
      if (d[i][j - 1] + 1 < c) c = d[i][j - 1] + 1;
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
          d[i - 2][j - 2] + 1 < c)
        c = d[i - 2][j - 2] + 1;
      d[i][j] = c;
    }
  return d[la][lb];
}

/* Raises "<what> has no <noun> 'key' (did you mean 'near'?)" for the
** string key at kidx, `near` the public name of the table at tidx closest
** to it (within two edits, and fewer than the key's length), if any. A
** usage error with the script's position, as braid_usageerror's. */
static int missing_error (lua_State *L, int tidx, int kidx, const char *what,
                          const char *noun) {
  const char *key = lua_tostring(L, kidx), *best = NULL;
  size_t best_d = 3, klen = strlen(key);
  lua_pushnil(L);
  while (lua_next(L, tidx)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) == LUA_TSTRING && lua_tostring(L, -1)[0] != '_') {
      const char *name = lua_tostring(L, -1);
      size_t dist = name_distance(key, name, 2);
      /* Ties go to the first name in sort order: the suggestion must not
      ** depend on the table's traversal order. */
      if (dist < klen && (dist < best_d || (dist == best_d && best &&
                                            strcmp(name, best) < 0))) {
        best_d = dist;
        best = name;
      }
    }
  }
  if (best)
    return braid_usageerror(L, "%s has no %s '%s' (did you mean '%s'?)",
                            what, noun, key, best);
  return braid_usageerror(L, "%s has no %s '%s'", what, noun, key);
}

/* __index of a braid class's methods table: obj:sned() says "braid.Channel
** has no method 'sned' (did you mean 'send'?)" rather than "attempt to
** call a nil value". Upvalue 1: the class name. Non-string keys, and
** names starting with "_" (probes for private fields), are nil. */
static int l_method_missing (lua_State *L) {
  if (lua_type(L, 2) != LUA_TSTRING || lua_tostring(L, 2)[0] == '_')
    return 0;
  return missing_error(L, 1, 2, lua_tostring(L, lua_upvalueindex(1)),
                       "method");
}

/* __index of braid's module tables: braid.sleap says "braid has no field
** 'sleap' (did you mean 'sleep'?)". Upvalue 1: the table's name; upvalue
** 2: the names that may be absent (modules an embedding sandbox leaves
** out), which stay nil so that `if braid.fs then` still works; upvalue 3:
** the table's own __index function from before (braid.stdin and its
** siblings are made on first use, io/stdio.c), asked first. */
static int l_field_missing (lua_State *L) {
  if (lua_type(L, lua_upvalueindex(3)) == LUA_TFUNCTION) {
    lua_pushvalue(L, lua_upvalueindex(3));
    lua_pushvalue(L, 1);
    lua_pushvalue(L, 2);
    lua_call(L, 2, 1);
    if (!lua_isnil(L, -1)) return 1;
    lua_pop(L, 1);
  }
  if (lua_type(L, 2) != LUA_TSTRING || lua_tostring(L, 2)[0] == '_')
    return 0;
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(2)) != LUA_TNIL) return 0;
  return missing_error(L, 1, 2, lua_tostring(L, lua_upvalueindex(1)),
                       "field");
}

int braid__index_missing (lua_State *L, const char *what,
                          const char *const *fields) {
  int t;
  if (lua_type(L, 2) != LUA_TSTRING || lua_tostring(L, 2)[0] == '_') {
    lua_pushnil(L);
    return 1;
  }
  lua_newtable(L);   /* the names to suggest from: methods and fields */
  t = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, lua_upvalueindex(1))) {
    lua_pop(L, 1);
    lua_pushvalue(L, -1);
    lua_pushboolean(L, 1);
    lua_rawset(L, t);
  }
  for (; *fields; fields++) {
    lua_pushboolean(L, 1);
    lua_setfield(L, t, *fields);
  }
  return missing_error(L, t, 2, what, "field or method");
}

void braid__strict_fields (lua_State *L, int idx, const char *name) {
  idx = lua_absindex(L, idx);
  lua_createtable(L, 0, 1);
  lua_pushstring(L, name);
  lua_pushvalue(L, -3);                 /* the absent names */
  if (!lua_getmetatable(L, idx)) lua_pushnil(L);
  else if (lua_getfield(L, -1, "__index") != LUA_TFUNCTION) {
    lua_pop(L, 2);
    lua_pushnil(L);
  }
  else lua_remove(L, -2);               /* the previous __index */
  lua_pushcclosure(L, l_field_missing, 3);
  lua_setfield(L, -2, "__index");
  lua_pushstring(L, name);              /* as a class's: scripts can */
  lua_setfield(L, -2, "__metatable");   /* neither read nor replace it */
  lua_setmetatable(L, idx);
  lua_pop(L, 1);
}

/* _metatable(v) -> the metatable of v, also one its __metatable hides
** (braid.lua's classes check their objects with it). */
static int l_metatable (lua_State *L) {
  luaL_checkany(L, 1);
  if (!lua_getmetatable(L, 1)) lua_pushnil(L);
  return 1;
}

void braid__open_metatable (lua_State *L) {
  lua_pushcfunction(L, l_metatable);
  lua_setfield(L, -2, "_metatable");
}

/* Makes the metatable `name` for a braid object: the metamethods `meta`
** (or NULL), and `methods` found through __index, directly or, when
** `index` is given, through that function with the methods table as its
** upvalue (for objects that also have fields). Pushes the methods table.
** [-0, +1, m] */
void braid__class (lua_State *L, const char *name, const luaL_Reg *meta,
                   const luaL_Reg *methods, lua_CFunction index) {
  luaL_newmetatable(L, name);
  if (meta) luaL_setfuncs(L, meta, 0);
  lua_pushstring(L, name);      /* scripts can neither read nor replace it */
  lua_setfield(L, -2, "__metatable");
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_createtable(L, 0, 2);     /* a misspelt method explains itself */
  lua_pushstring(L, name);
  lua_pushcclosure(L, l_method_missing, 1);
  lua_setfield(L, -2, "__index");
  lua_pushstring(L, name);      /* braid.Channel ... are these tables */
  lua_setfield(L, -2, "__metatable");
  lua_setmetatable(L, -2);
  lua_pushvalue(L, -1);
  if (index) lua_pushcclosure(L, index, 1);
  lua_setfield(L, -3, "__index");
  lua_remove(L, -2);
}

/* The name of the type of the value at idx as Lua's own messages give it:
** an object's __name ("braid.Channel") where it has one. [-0, +1, m] */
const char *braid__type_name (lua_State *L, int idx) {
  if (luaL_getmetafield(L, idx, "__name") == LUA_TSTRING)
    return lua_tostring(L, -1);
  if (lua_type(L, idx) == LUA_TLIGHTUSERDATA)
    return lua_pushliteral(L, "light userdata");
  return lua_pushstring(L, luaL_typename(L, idx));
}

/* "bad argument #idx to 'fname' (expected expected, got <type>)", as a
** usage error. */
static int type_error (lua_State *L, int idx, const char *fname,
                       const char *expected) {
  const char *got = braid__type_name(L, idx);
  return braid_argerror(L, idx, fname,
                        lua_pushfstring(L, "%s expected, got %s", expected,
                                        got));
}

void *braid__check_object (lua_State *L, int idx, const char *tname,
                           const char *fname) {
  void *p = luaL_testudata(L, idx, tname);
  if (p == NULL) type_error(L, idx, fname, tname);
  return p;
}

void *braid__tag_error (lua_State *L, int idx, const struct braid_type *type,
                        const char *fname) {
  type_error(L, idx, fname, type->name);
  return NULL;
}

void braid__check_type (lua_State *L, int idx, int type, const char *fname) {
  if (lua_type(L, idx) != type)
    type_error(L, idx, fname, lua_typename(L, type));
}

/* The string (or number) at idx for C, which would stop at a zero byte:
** NULL for anything else and for a string with one inside. */
const char *braid__cstring (lua_State *L, int idx) {
  size_t len;
  const char *s = lua_isstring(L, idx) ? lua_tolstring(L, idx, &len) : NULL;
  return s && strlen(s) == len ? s : NULL;
}

lua_Integer braid__check_integer (lua_State *L, int idx, const char *fname) {
  int isnum;
  lua_Integer v = lua_tointegerx(L, idx, &isnum);
  if (!isnum) {
    if (lua_isnumber(L, idx))
      braid_argerror(L, idx, fname, "number has no integer representation");
    type_error(L, idx, fname, "number");
  }
  return v;
}

/* Pushes what the value at idx is, for a usage error, without running any
** of the script's code (a __tostring could loop or raise there): a string
** or number as itself, anything else as its type. */
const char *braid__describe (lua_State *L, int idx) {
  int type = lua_type(L, idx);
  if (type == LUA_TSTRING || type == LUA_TNUMBER) {
    lua_pushvalue(L, idx);
    return lua_tostring(L, -1);
  }
  return lua_pushstring(L, lua_typename(L, type));
}

/* Checks the optional options table at idx against `allowed`. */
void braid__check_options (lua_State *L, int idx, const char *fname,
                           const char *const *allowed) {
  if (lua_isnoneornil(L, idx)) return;
  if (!lua_istable(L, idx) || lua_getmetatable(L, idx))   /* as API.md says */
    braid_argerror(L, idx, fname, lua_pushfstring(L, "options table "
                   "expected: a plain table without a metatable, got %s",
                   lua_istable(L, idx) ? "a table with a metatable"
                                       : luaL_typename(L, idx)));
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int i, ok = 0;
    if (lua_type(L, -2) == LUA_TSTRING)
      for (i = 0; allowed[i]; i++)
        if (strcmp(lua_tostring(L, -2), allowed[i]) == 0) ok = 1;
    if (!ok) {
      lua_pop(L, 1);
      braid_usageerror(L, "bad argument #%d to '%s' (unknown option '%s')",
                         idx, fname, braid__describe(L, -1));
    }
    lua_pop(L, 1);
  }
}

/* opts[key] as a non-negative number, or def when absent. */
double braid__opt_number (lua_State *L, int idx, const char *key, double def,
                          const char *fname) {
  double v = def;
  if (lua_isnoneornil(L, idx)) return def;
  lua_pushstring(L, key);   /* raw: select's cases may have a metatable */
  lua_rawget(L, idx);
  if (!lua_isnil(L, -1)) {
    v = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : -1;
    if (v != v || v < 0)
      braid_usageerror(L, "bad option '%s' to '%s' (non-negative number "
                         "expected, got %s)", key, fname,
                         braid__describe(L, -1));
  }
  lua_pop(L, 1);
  return v;
}

/* opts[key] as a duration in nanoseconds, or def when absent: every
** duration option is read here, checked as braid_check_seconds checks an
** argument (NaN refused, negative 0, ~292 years or more BRAID_NEVER). */
uint64_t braid__opt_seconds (lua_State *L, int idx, const char *key,
                             uint64_t def, const char *fname) {
  uint64_t ns = def;
  if (lua_isnoneornil(L, idx)) return def;
  lua_pushstring(L, key);   /* raw: select's cases may have a metatable */
  lua_rawget(L, idx);
  if (!lua_isnil(L, -1)) {
    lua_Number s = lua_tonumber(L, -1);
    if (!lua_isnumber(L, -1))
      braid_usageerror(L, "bad option '%s' to '%s' (number of seconds "
                       "expected, got %s)", key, fname,
                       braid__describe(L, -1));
    if (s != s)
      braid_usageerror(L, "bad option '%s' to '%s' (seconds must not be "
                       "NaN)", key, fname);
    ns = braid__ns(s);
  }
  lua_pop(L, 1);
  return ns;
}
