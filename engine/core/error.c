/*
** error.c: braid.Error objects, the failure records behind top-level
** reports, and the message handler every task body runs under.
**
** User error values are never wrapped or changed. What braid adds about a
** failure (the failing task's traceback, its name and spawn site) is kept
** beside the value, in a weak-keyed table in the registry, so the report
** printed at the top can say where the error came from while the value
** itself stays rawequal end to end. Cancellation errors carry no traceback:
** they are outcomes, not failures, and fail-fast creates thousands at once.
*/
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "core.h"

#define ERROR_MT "braid.Error"

static void error_vpush (lua_State *L, const char *kind, const char *code,
                         int traceback, const char *fmt, va_list ap) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushvfstring(L, fmt, ap);
  lua_setfield(L, -2, "message");
  if (code) {
    lua_pushstring(L, code);
    lua_setfield(L, -2, "code");
  }
  if (traceback) {
    braid__traceback(L, L, 1);
    lua_setfield(L, -2, "traceback");
  }
  luaL_setmetatable(L, ERROR_MT);
}

/* Pushes a new braid.Error of `kind`, with `code` (a libuv error name, or
** NULL) and a formatted message. [-0, +1, m] */
int braid_pusherror (lua_State *L, const char *kind, const char *code,
                       const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_vpush(L, kind, code, 1, fmt, ap);
  va_end(ap);
  return 1;
}

/* Raises a new braid.Error. [-0, +0, v] */
int braid_error (lua_State *L, const char *kind, const char *code,
                        const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  error_vpush(L, kind, code, 1, fmt, ap);
  va_end(ap);
  return lua_error(L);
}

/* Raises a "usage" error whose message starts with the caller's position,
** as luaL_error does. [-0, +0, v] */
int braid_usageerror (lua_State *L, const char *fmt, ...) {
  va_list ap;
  luaL_where(L, 1);
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 2);
  return braid_error(L, "usage", NULL, "%s", lua_tostring(L, -1));
}

/* The familiar "bad argument #n to 'name' (...)" as a usage error. */
int braid_argerror (lua_State *L, int arg, const char *fname,
                           const char *extramsg) {
  return braid_usageerror(L, "bad argument #%d to '%s' (%s)", arg, fname,
                            extramsg);
}

int braid__error_uv (lua_State *L, int rc, const char *fname) {
  if (rc == UV_ENOMEM)
    return braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  return braid_error(L, "io", uv_err_name(rc), "%s: %s", fname,
                     uv_strerror(rc));
}

/* The kind of the braid.Error at idx, or NULL for any other value. */
const char *braid_error_kind (lua_State *L, int idx) {
  const char *kind = NULL;
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return NULL;
  luaL_getmetatable(L, ERROR_MT);
  if (lua_rawequal(L, -1, -2)) {
    lua_pushliteral(L, "kind");
    lua_rawget(L, idx);
    kind = lua_tostring(L, -1);   /* interned: outlives the pop */
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  return kind;
}

int braid__is_cancel (lua_State *L, int idx) {
  const char *k = braid_error_kind(L, idx);
  return k != NULL && strcmp(k, "cancelled") == 0;
}

static int tolstring_k (lua_State *L) {
  luaL_tolstring(L, 1, NULL);
  return 1;
}

/* Pushes tostring(value at idx) and returns it, never raising: a
** __tostring that fails, yields or returns a non-string gives a plain
** description instead, so reporting an error cannot raise another. */
const char *braid__tostring (lua_State *L, int idx) {
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, tolstring_k);
  lua_pushvalue(L, idx);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(%s value whose __tostring failed)",
                    luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}

/* Pushes the cancellation error a task sees when `cause` reached it. It is
** made once per cause and shared by every task that cancellation reached:
** fail-fast cancels thousands of tasks at once, and under memory pressure
** each one's own table would cost an emergency collection. */
void braid__push_cancel (lua_State *L, struct braid_scope *cause) {
  if (cause->cancel_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, cause->cancel_ref);
    return;
  }
  lua_createtable(L, 0, 4);
  lua_pushliteral(L, "cancelled");
  lua_setfield(L, -2, "kind");
  if (cause->reason_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, cause->reason_ref);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "reason");
    lua_pushfstring(L, "cancelled (%s)", braid__tostring(L, -1));
    lua_replace(L, -3);
    lua_pop(L, 1);
  } else if (cause->deadline_fired) {
    lua_pushliteral(L, "cancelled (deadline passed)");
  } else if (cause->error_ref != LUA_NOREF) {
    lua_pushliteral(L, "cancelled (a sibling failed)");
  } else {
    lua_pushliteral(L, "cancelled");
  }
  lua_setfield(L, -2, "message");
  luaL_setmetatable(L, ERROR_MT);
  lua_pushvalue(L, -1);
  cause->cancel_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

static const char info_key = 'i';

/* The weak-keyed table of failure records, made on first use. */
static void push_info_table (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &info_key) == LUA_TTABLE) return;
  lua_pop(L, 1);
  braid__push_weak_table(L);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &info_key);
}

/* Forgets every record: string keys never leave a weak table by
** themselves, so the engine clears it at the end of each run. */
void braid__error_forget (lua_State *L) {
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &info_key);
  braid__traceback_forget(L);
}

static const char *const scope_words[] = {
  "", "", " (in braid.scope)", " (in braid.shield)", " (under braid.timeout)",
  " (in braid.gather/race/any/map)"
};

/* Pushes the failing task and the chain of tasks it sat in, one a line:
** what a person needs to tell which child of which gather failed. */
static void push_chain (lua_State *L, struct braid_task *t) {
  luaL_Buffer b;
  const char *lead = "task";
  luaL_buffinit(L, &b);
  while (t) {
    struct braid_scope *in = t->scope.outer;
    const char *site = braid__task_site(L, t, 0);
    lua_pushfstring(L, "%s%s %d \"%s\"%s%s%s", lead,
                    lead[0] == 't' ? "" : " task", (int) t->id,
                    braid__task_name(L, t, 0),
                    in->kind == SCOPE_TOP ? "" : ", spawned at ",
                    in->kind == SCOPE_TOP ? "" : site, scope_words[in->kind]);
    lua_remove(L, -2);
    luaL_addvalue(&b);
    lead = "\n    inside";
    t = in->task;
  }
  luaL_pushresult(&b);
}

static void error_record (lua_State *L, int idx, lua_State *co, int level,
                          struct braid_task *t) {
  idx = lua_absindex(L, idx);
  if (lua_isnil(L, idx)) return;
  push_info_table(L);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) != LUA_TNIL) {
    lua_pop(L, 2);
    return;
  }
  lua_pop(L, 1);
  lua_pushvalue(L, idx);
  lua_createtable(L, 0, 3);
  braid__traceback(L, co, level);
  if (braid_error_kind(L, idx) != NULL) {   /* braid's own: fill the field */
    lua_getfield(L, idx, "traceback");
    if (lua_isnil(L, -1)) {
      lua_pushvalue(L, -2);
      lua_setfield(L, idx, "traceback");
    }
    lua_pop(L, 1);
  }
  lua_setfield(L, -2, "traceback");
  if (t) {
    push_chain(L, t);
    lua_setfield(L, -2, "task");
  }
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* The message handler of every task body: records, returns the value as is. */
int braid__error_msgh (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  if (!braid__is_cancel(L, 1) && E->current)
    braid__error_record(L, 1, L, 1, E->current);
  lua_settop(L, 1);
  return 1;
}

static void error_report (lua_State *L, int idx, const char *prefix) {
  idx = lua_absindex(L, idx);
  fprintf(stderr, "%s%s\n", prefix, braid__tostring(L, idx));
  lua_pop(L, 1);
  push_info_table(L);
  lua_pushvalue(L, idx);
  if (lua_rawget(L, -2) == LUA_TTABLE) {
    if (lua_getfield(L, -1, "task") == LUA_TSTRING)
      fprintf(stderr, "  in %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "traceback") == LUA_TSTRING)
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    if (lua_getfield(L, -1, "also") == LUA_TTABLE) {
      lua_Integer i, n = luaL_len(L, -1);
      for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        fprintf(stderr, "  also raised while cancelling: %s\n",
                lua_tostring(L, -1));
        lua_pop(L, 1);
      }
    }
    lua_pop(L, 1);
  } else if (braid_error_kind(L, idx) != NULL) {
    lua_getfield(L, idx, "traceback");
    if (lua_isstring(L, -1)) fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  fflush(stderr);
}

static void error_suppress (lua_State *L, int first, int idx) {
  push_info_table(L);
  lua_pushvalue(L, first);
  if (lua_rawget(L, -2) != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, first);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
  }
  if (lua_getfield(L, -1, "also") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "also");
  }
  braid__tostring(L, idx);
  lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  lua_pop(L, 3);
  if (braid_error_kind(L, first) == NULL) return;
  if (lua_getfield(L, first, "suppressed") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, first, "suppressed");
  }
  lua_pushvalue(L, idx);
  lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  lua_pop(L, 1);
}

/* ---- best effort ----
** What braid adds about an error (records, reports, suppressed lists) is
** allocated in scheduler context. Out of memory with the reserve spent,
** it is left out rather than failing the scheduler: each runs protected,
** with its values passed as arguments (a protected call has a frame of its
** own). */

static int best_effort (lua_State *L, lua_CFunction f, void *ud, int a,
                        int b) {
  a = lua_absindex(L, a);
  b = b ? lua_absindex(L, b) : 0;
  if (!lua_checkstack(L, 5)) return -1;
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, ud);
  lua_pushvalue(L, a);
  if (b) lua_pushvalue(L, b);
  if (lua_pcall(L, b ? 3 : 2, 0, 0) == LUA_OK) return 0;
  lua_pop(L, 1);
  return -1;
}

struct record_args {
  lua_State *co;
  int level;
  struct braid_task *t;
};

static int record_p (lua_State *L) {
  struct record_args *a = (struct record_args *) lua_touserdata(L, 1);
  error_record(L, 2, a->co, a->level, a->t);
  return 0;
}

/* Records where the error at idx was raised (the traceback of co from
** level), unless it already is: the first record is the failing task's,
** later ones are its re-raises. */
void braid__error_record (lua_State *L, int idx, lua_State *co, int level,
                          struct braid_task *t) {
  struct record_args a;
  if (co == L) {   /* the message handler: the traceback is of L itself */
    error_record(L, idx, co, level, t);
    return;
  }
  a.co = co;
  a.level = level;
  a.t = t;
  best_effort(L, record_p, &a, idx, 0);
}

static int report_p (lua_State *L) {
  error_report(L, 2, (const char *) lua_touserdata(L, 1));
  return 0;
}

/* Prints the error at idx with what is known of where it came from (or,
** when even that cannot be allocated, says so). Never raises. */
void braid_report (lua_State *L, int idx, const char *prefix) {
  if (best_effort(L, report_p, (void *) prefix, idx, 0) != 0) {
    fprintf(stderr, "%s(an error that could not be reported: not enough "
            "memory)\n", prefix);
    fflush(stderr);
  }
}

static int suppress_p (lua_State *L) {
  error_suppress(L, 2, 3);
  return 0;
}

/* A member raised `idx` while the scope was already failing with `first`:
** report it now, list it under first's report, and keep it on
** first.suppressed when first is braid's own. */
void braid__error_suppress (lua_State *L, int first, int idx) {
  braid_report(L, idx, "braid: error while cancelling: ");
  best_effort(L, suppress_p, NULL, first, idx);
}

static int l_error_tostring (lua_State *L) {
  lua_getfield(L, 1, "message");
  if (!lua_isstring(L, -1)) {
    lua_getfield(L, 1, "kind");
    lua_pushfstring(L, "braid error (%s)", luaL_optstring(L, -1, "?"));
  }
  return 1;
}

/* braid.Error { kind = ..., message = ..., ... }: wraps a table as a
** braid.Error, for the Lua-side library and for scripts. */
static int l_error_new (lua_State *L) {
  braid__check_type(L, 1, LUA_TTABLE, "braid.Error.new");
  lua_settop(L, 1);
  luaL_setmetatable(L, ERROR_MT);
  return 1;
}

/* Makes the braid.Error metatable, unless it exists: the core does it
** first, so that every error it raises from then on is a braid.Error.
** [-0, +0, m] */
void braid__error_init (lua_State *L) {
  if (luaL_newmetatable(L, ERROR_MT)) {
    lua_pushcfunction(L, l_error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "braid.Error");
    lua_setfield(L, -2, "__name");
    lua_pushcfunction(L, l_error_new);
    lua_setfield(L, -2, "new");
  }
  lua_pop(L, 1);
}

void braid__open_error (lua_State *L) {
  braid__error_init(L);
  luaL_getmetatable(L, ERROR_MT);
  lua_setfield(L, -2, "Error");
}
