/*
** error.c: braid.Error objects, the failure records behind top-level
** reports, and the message handler every task body runs under.
**
** User error values are never wrapped or changed. What braid adds about a
** failure (the failing task's traceback, its name and spawn site) is kept
** in a record that travels beside the value, with the task and the scopes
** that hold it (see "failure records" below), so the report printed at
** the top can say where the error came from while the value itself stays
** rawequal end to end. Cancellation errors carry no traceback:
** they are outcomes, not failures, and fail-fast creates thousands at once.
**
** Just over 600 lines, on purpose: the error object, its record and the
** report read one another's fields, and splitting them would put one
** concept (what braid knows about a failure) behind a second interface.
*/
#define _GNU_SOURCE   /* strerrorname_np */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "core.h"

#define ERROR_MT "braid.Error"

/* The metatable is also kept under this key: luaL_setmetatable's lookup by
** name (a string made from the C name, then a hash lookup) was ~240
** instructions, paid twice per task that a fail-fast cancel reaches (its
** cancellation error, and telling it from other errors) and once more
** for every braid_error_kind. */
static const char error_mt_key = 0;
#define PUSH_ERROR_MT(L) lua_rawgetp(L, LUA_REGISTRYINDEX, &error_mt_key)

static void error_setmt (lua_State *L) {
  PUSH_ERROR_MT(L);
  lua_setmetatable(L, -2);
}

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
  error_setmt(L);
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

/* Pushes the caller's position, as luaL_where(L, 1) does, except that
** frames of braid's own Lua side (lua/braid.lua, chunk "=[braid]") are
** passed over: a usage error raised through one of its wrappers (braid.http,
** braid.fs.mkdir, ...) names the script's line, not braid's. */
static void usage_where (lua_State *L) {
  lua_Debug ar;
  int level;
  for (level = 1; lua_getstack(L, level, &ar); level++) {
    lua_getinfo(L, "Sl", &ar);
    if (strcmp(ar.source, "=[braid]") == 0) continue;
    if (ar.currentline > 0) {
      lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
      return;
    }
    break;
  }
  lua_pushliteral(L, "");
}

/* Raises a "usage" error whose message starts with the caller's position,
** as luaL_error does. [-0, +0, v] */
int braid_usageerror (lua_State *L, const char *fmt, ...) {
  va_list ap;
  usage_where(L);
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

/* Does libuv know rc? Its name for an unknown code is "Unknown system
** error N", made in a static buffer by uv_err_name (not thread-safe), so
** ask the reentrant form. */
static int uv_knows (int rc) {
  char buf[64];
  return strncmp(uv_err_name_r(rc, buf, sizeof buf), "Unknown", 7) != 0;
}

const char *braid__errname (int rc) {
  const char *n;
  if (uv_knows(rc)) return uv_err_name(rc);
  n = rc < 0 ? strerrorname_np(-rc) : NULL;
  return n ? n : "UNKNOWN";
}

const char *braid__strerror (int rc) {
  if (uv_knows(rc)) return uv_strerror(rc);
  if (rc < 0 && strerrorname_np(-rc) != NULL)
    return strerror(-rc);   /* a known errno: glibc's constant text */
  return "unknown error";
}

int braid__error_uv (lua_State *L, int rc, const char *fname) {
  if (rc == UV_ENOMEM)
    return braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  return braid_error(L, "io", braid__errname(rc), "%s: %s", fname,
                     braid__strerror(rc));
}

/* The kind of the braid.Error at idx, or NULL for any other value. */
const char *braid_error_kind (lua_State *L, int idx) {
  const char *kind = NULL;
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) != LUA_TTABLE || !lua_getmetatable(L, idx)) return NULL;
  PUSH_ERROR_MT(L);
  if (lua_rawequal(L, -1, -2)) {
    lua_pushliteral(L, "kind");
    /* only a string: the table holds it past the pop (a number's
    ** lua_tostring would make one that nothing holds) */
    if (lua_rawget(L, idx) == LUA_TSTRING) kind = lua_tostring(L, -1);
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
  braid_engine_t *E = braid_engine(L);
  struct braid_bound b;
  int status, bounded;
  idx = lua_absindex(L, idx);
  if (lua_type(L, idx) == LUA_TSTRING) {   /* no script code, no hook */
    lua_pushvalue(L, idx);                  /* (a cancel reason, mostly) */
    return lua_tostring(L, -1);
  }
  lua_pushcfunction(L, tolstring_k);
  lua_pushvalue(L, idx);
  /* A script's __tostring always runs bounded: a report, a cancellation's
  ** message or a usage error must not spin (a runner or REPL task has no
  ** budget; a cancelled task would spin its whole grace period and be
  ** abandoned for it). On the thread a task runs, armed by hook.c, a
  ** budget already counts it, and a bound of its own would hand the
  ** script a fresh budget each time; a task that only unwinds (t->stop)
  ** raises at its first instruction anyway. Any other thread (the
  ** scheduler's, reporting for a task it abandons) has no such hook. */
  bounded = E && (E->current == NULL || L != E->running_co ||
                  (E->budget == 0 && !E->current->stop));
  if (bounded) braid__bound(E, L, &b);
  status = lua_pcall(L, 1, 1, 0);
  if (bounded) braid__unbound(E, L, &b);
  if (status != LUA_OK) {
    lua_pop(L, 1);
    lua_pushfstring(L, "(%s value whose __tostring failed)",
                    luaL_typename(L, idx));
  }
  return lua_tostring(L, -1);
}

/* The message of a cancellation with the reason on L's top, made without
** running the script's metamethods: inside a hook nothing could stop a
** __tostring that loops (no hook runs inside one). The message of the
** error already made for the cause when there is one, else a plain
** description of the reason. [-0, +1, m] */
static void cancel_message_plain (lua_State *L, struct braid_scope *cause) {
  if (SCOPE_REF(cause, cancel_ref) != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, cause->more->cancel_ref);
    lua_pushliteral(L, "message");
    lua_rawget(L, -2);
    lua_remove(L, -2);
    if (lua_type(L, -1) == LUA_TSTRING) return;
    lua_pop(L, 1);
  }
  switch (lua_type(L, -1)) {
  case LUA_TSTRING: case LUA_TNUMBER:
    lua_pushvalue(L, -1);
    lua_pushfstring(L, "cancelled (%s)", lua_tostring(L, -1));
    lua_remove(L, -2);
    break;
  case LUA_TBOOLEAN: case LUA_TNIL:
    lua_pushfstring(L, "cancelled (%s)", lua_isnil(L, -1) ? "nil" :
                    lua_toboolean(L, -1) ? "true" : "false");
    break;
  default:
    lua_pushfstring(L, "cancelled (%s: %p)", luaL_typename(L, -1),
                    lua_topointer(L, -1));
  }
}

/* Pushes the cancellation error a task sees when `cause` reached it: a
** table of its own, which the task may change. The first one made is kept
** on the cause (released with it); when memory is short (the scheduler
** has spent its reserve) every task the cause reaches gets that one
** instead: fail-fast cancels thousands at once, and each new table would
** cost an emergency collection then. In a hook (`hooked`) the message
** runs no metamethod of the reason (cancel_message_plain). */
static void push_cancel (lua_State *L, struct braid_scope *cause,
                         int hooked) {
  if (SCOPE_REF(cause, cancel_ref) != LUA_NOREF && cause->E->reserve == NULL) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, cause->more->cancel_ref);
    return;
  }
  lua_createtable(L, 0, 4);
  lua_pushliteral(L, "cancelled");
  lua_setfield(L, -2, "kind");
  if (SCOPE_REF(cause, reason_ref) != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, cause->more->reason_ref);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "reason");
    if (hooked) {
      cancel_message_plain(L, cause);
      lua_replace(L, -2);
    } else {
      lua_pushfstring(L, "cancelled (%s)", braid__tostring(L, -1));
      lua_replace(L, -3);
      lua_pop(L, 1);
    }
  } else if (cause->deadline_fired) {
    lua_pushliteral(L, "cancelled (deadline passed)");
  } else if (SCOPE_REF(cause, error_ref) != LUA_NOREF) {
    /* the engine fails a deadlocked task's own scope: no sibling did */
    int top = lua_gettop(L), deadlock = 0;
    braid__scope_push_error(L, cause);
    if (lua_istable(L, -1)) {
      lua_pushliteral(L, "kind");
      deadlock = lua_rawget(L, -2) == LUA_TSTRING &&
                 strcmp(lua_tostring(L, -1), "deadlock") == 0;
    }
    lua_settop(L, top);
    lua_pushstring(L, deadlock ? "cancelled (deadlock: every task was waiting)"
                               : "cancelled (a sibling failed)");
  } else {
    lua_pushliteral(L, "cancelled");
  }
  lua_setfield(L, -2, "message");
  error_setmt(L);
  if (SCOPE_REF(cause, cancel_ref) == LUA_NOREF) {   /* re-checked: the */
    braid__scope_more(cause);     /* __tostring of the reason may have made one */
    lua_pushvalue(L, -1);
    cause->more->cancel_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
}

void braid__push_cancel (lua_State *L, struct braid_scope *cause) {
  push_cancel(L, cause, 0);
}

void braid__push_cancel_hooked (lua_State *L, struct braid_scope *cause) {
  push_cancel(L, cause, 1);
}

/* ---- failure records ----
** A record is a table { value = the error, traceback = ..., task = the
** chain of tasks it failed in, also = {"..."} }: what braid adds about a
** failure. It is kept with what holds the error, never by the value alone,
** so that an equal string from another failure is never taken for it, and
** it goes when they go:
** - a task's user value 4: while it runs, the record of the last error
**   that reached a braid boundary in it (the message handler) or that
**   braid raised into it (task:await, task:result, a scope or group
**   ending): its "carry", so that a re-raise keeps the first record; after
**   its end, the record of its own failure (nil when it did not fail).
** - a scope's record_ref, beside error_ref: released with it, in
**   braid__scope_release. A failure moving from a member to its scope
**   takes the member's record along.
** - the engine's hand-out slot (hand_key): the record of the last error
**   braid handed to code, in a task or outside (braid.run raising the
**   root's error, braid_task_result, the REPL's session). One record.
** - for collectable errors (tables, userdata, functions, threads) also a
**   weak-keyed table by value: identity is exact, so any holder of the
**   value finds it for a report, and the collector drops the entry with
**   the value. A re-raise is judged by the carry alone (error_record).
**   Strings, numbers and booleans never go there: nothing would free them.
** A report (braid_report) finds a value's record in the weak table, else
** in the hand-out slot, else in the running task's carry. */

#define ALSO_MAX 100   /* record.also: the errors listed under a report */

static const char info_key = 'i';
static const char hand_key = 'h';

static int collectable (lua_State *L, int idx) {
  switch (lua_type(L, idx)) {
    case LUA_TTABLE: case LUA_TUSERDATA: case LUA_TFUNCTION: case LUA_TTHREAD:
      return 1;
    default:
      return 0;
  }
}

/* Keeps the record on top if its value is rawequal to the value at idx,
** else replaces it with nil; returns whether it matched. Allocates
** nothing: "value" is a key of the record, so it is interned already. */
static int record_match (lua_State *L, int idx) {
  int ok = 0;
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_pushliteral(L, "value");
    lua_rawget(L, -2);
    ok = lua_rawequal(L, -1, idx);
    lua_pop(L, 1);
  }
  if (!ok) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  return ok;
}

/* Pushes the record the weak table keeps for the collectable value at
** idx, or nil. Allocates nothing. */
static int record_by_identity (lua_State *L, int idx) {
  if (collectable(L, idx)) {
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &info_key) == LUA_TTABLE) {
      lua_pushvalue(L, idx);
      lua_rawget(L, -2);
      lua_remove(L, -2);
      if (lua_type(L, -1) == LUA_TTABLE) return 1;
    }
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  return 0;
}

/* Pushes the carry of live task t when it is the record of the value at
** idx, or nil. Allocates nothing. */
static int record_carried (lua_State *L, int idx, struct braid_task *t) {
  if (t == NULL || t->ref == LUA_NOREF) {
    lua_pushnil(L);
    return 0;
  }
  braid__task_push(L, t);
  lua_getiuservalue(L, -1, 4);
  lua_remove(L, -2);
  return record_match(L, idx);
}

/* Pushes the record of the value at idx known to task t (t's carry, the
** record of this failure; then the weak table), or nil. Allocates
** nothing. [-0, +1, -] */
void braid__error_push_record (lua_State *L, int idx, struct braid_task *t) {
  idx = lua_absindex(L, idx);
  if (record_carried(L, idx, t)) return;
  lua_pop(L, 1);
  record_by_identity(L, idx);
}

/* Pushes the function of co's first frame from level on that has a line
** and is not braid's own Lua side (the script's: usage errors and group
** sites pass over braid's wrappers too), then, below it, the function of
** the wrapper frame nearest it (the one the script called), or false;
** returns 0, pushing nothing, when there is no such frame. */
static int script_frame_push (lua_State *L, lua_State *co, int level) {
  lua_Debug ar;
  int via = 0;   /* a wrapper's function is on co's top */
  for (; lua_getstack(co, level, &ar); level++) {
    lua_getinfo(co, "Slf", &ar);
    if (ar.currentline <= 0) {
      lua_pop(co, 1);
    } else if (strcmp(ar.source, "=[braid]") == 0) {
      if (via) lua_remove(co, -2);   /* a caller is nearer the script */
      via = 1;
    } else {
      if (!via) {
        lua_pushboolean(co, 0);
        lua_insert(co, -2);
      }
      if (co != L) lua_xmove(co, L, 2);
      return 1;
    }
  }
  if (via) lua_pop(co, 1);
  return 0;
}

/* Notes on the record on top where braid hands its error to task t: the
** script's function that L runs it in (the caller of the braid function
** raising it, past braid's Lua wrappers: pcall(braid.map, ...) and pool:map
** hand it through them) and the wrapper it called. A raise from that
** function in t, by itself or through that wrapper, is a re-raise
** (error_record). Allocates nothing: record_new made the fields, so their
** keys are interned and setting them adds no slot. */
static void record_hand_site (lua_State *L, struct braid_task *t) {
  lua_pushliteral(L, "hand_task");
  if (lua_rawget(L, -2) != LUA_TNUMBER) {   /* not one of record_new's */
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  if (!script_frame_push(L, L, 1)) {
    lua_pushboolean(L, 0);
    lua_pushboolean(L, 0);
  }
  lua_setfield(L, -3, "hand_fn");
  lua_setfield(L, -2, "hand_via");
  lua_pushinteger(L, (lua_Integer) t->id);
  lua_setfield(L, -2, "hand_task");
}

/* The record on top (a table, or nil: none) goes with an error braid now
** hands to code: t's carry (t: the task it is raised in, or NULL outside
** tasks) and the engine's hand-out slot. Pops it; allocates nothing (the
** slot exists from the start). [-1, +0, -] */
void braid__error_hand (lua_State *L, struct braid_task *t) {
  if (t && t->ref != LUA_NOREF) {
    if (lua_type(L, -1) == LUA_TTABLE) record_hand_site(L, t);
    braid__task_push(L, t);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 4);
    lua_pop(L, 1);
  }
  if (lua_isnil(L, -1)) {   /* a nil would remove the slot */
    lua_pop(L, 1);
    lua_pushboolean(L, 0);
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &hand_key);
}

/* Forgets the records kept by value, the one handed out and the
** tracebacks' names: at each braid.run's start, so nothing of a previous
** run is found. */
void braid__error_forget (lua_State *L) {
  lua_pushnil(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &info_key);
  braid__traceback_forget(L);
  lua_pushboolean(L, 0);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &hand_key);
}

/* The hand-out slot exists from the engine's opening, so that setting it
** never allocates. [-0, +0, m] */
static void records_init (lua_State *L) {
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &hand_key) == LUA_TNIL) {
    lua_pushboolean(L, 0);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &hand_key);
  }
  lua_pop(L, 1);
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
    /* A site braid does not know (a REPL entry) is left out, not "?". */
    int shown = in->kind != SCOPE_TOP && strcmp(site, "?") != 0;
    lua_pushfstring(L, "%s%s %I \"%s\"%s%s%s", lead,
                    lead[0] == 't' ? "" : " task", (lua_Integer) t->id,
                    braid__task_name(L, t, 0),
                    shown ? ", spawned at " : "", shown ? site : "",
                    scope_words[in->kind]);
    lua_remove(L, -2);
    luaL_addvalue(&b);
    lead = "\n    inside";
    t = in->task;
  }
  luaL_pushresult(&b);
}

/* Pushes a new record of the value at idx (without a traceback or task);
** a collectable value's goes in the weak table too. [-0, +1, m] */
static void record_new (lua_State *L, int idx) {
  lua_createtable(L, 0, 7);
  lua_pushvalue(L, idx);
  lua_setfield(L, -2, "value");
  lua_pushboolean(L, 0);   /* braid__error_hand fills them in */
  lua_setfield(L, -2, "hand_fn");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "hand_via");
  lua_pushinteger(L, 0);
  lua_setfield(L, -2, "hand_task");
  if (!collectable(L, idx)) return;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &info_key) != LUA_TTABLE) {
    lua_pop(L, 1);
    braid__push_weak_table(L);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &info_key);
  }
  lua_pushvalue(L, idx);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

/* braid.any raises the "all_failed" error at idx in task t, with the
** failure records of its members' errors (its `errors`) in the list on
** top, false for none: its record, made now (the traceback from
** braid.any, t's chain) with the list as `causes`, goes with it (braid__error_hand), so
** its report lists them. Pops the list. [-1, +0, m] */
void braid__error_causes (lua_State *L, int idx, struct braid_task *t) {
  idx = lua_absindex(L, idx);
  record_new(L, idx);
  lua_insert(L, -2);
  lua_setfield(L, -2, "causes");
  braid__traceback(L, L, 0);   /* from braid.any, as a message handler's */
  lua_setfield(L, -2, "traceback");
  push_chain(L, t);
  lua_setfield(L, -2, "task");
  braid__error_hand(L, t);
}

/* Is the record on top (t's carry, of this value) that of an error braid
** handed to t in the function that raises now (co's script frame from
** level, script_frame_push), raising it by itself or through the wrapper
** it was handed through? Then this is a re-raise: the error going on from
** where braid raised it (task:await, a gather, a scope's end), or raised
** again by the code that caught it (error(e) after a pcall, pool:map's
** wrapper). A raise anywhere else is a new failure with an equal value (a
** module's error table, an equal string, a retry of the failed code,
** another wrapper's error), however equal. [-0, +0, -] */
static int record_reraised (lua_State *L, lua_State *co, int level,
                            struct braid_task *t) {
  int here;
  lua_getfield(L, -1, "hand_task");
  here = lua_tointeger(L, -1) == (lua_Integer) t->id;
  lua_pop(L, 1);
  if (!here || !script_frame_push(L, co, level)) return 0;
  lua_getfield(L, -3, "hand_fn");
  here = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  if (here && lua_toboolean(L, -1)) {   /* raised in a wrapper */
    lua_getfield(L, -2, "hand_via");
    here = lua_rawequal(L, -1, -2);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return here;
}

/* Pushes the record of the error at idx that t carries when it goes on
** with this failure (a re-raise keeps the first record; `trust`: t's own
** end, whose message handler chose it already), or makes one: the
** traceback of co from level and t's chain. Either way it becomes t's
** carry. [-0, +1, m] */
static void error_record (lua_State *L, int idx, lua_State *co, int level,
                          struct braid_task *t, int trust) {
  idx = lua_absindex(L, idx);
  if (record_carried(L, idx, t) && !trust &&
      !record_reraised(L, co, level, t)) {
    lua_pop(L, 1);
    lua_pushnil(L);
  }
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    record_new(L, idx);
    braid__traceback(L, co, level);
    /* braid's own: fill the field (a cancellation, an outcome tasks may
    ** share, keeps none) */
    if (braid_error_kind(L, idx) != NULL && !braid__is_cancel(L, idx)) {
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
  }
  if (t && t->ref != LUA_NOREF) {   /* the carry */
    braid__task_push(L, t);
    lua_pushvalue(L, -2);
    lua_setiuservalue(L, -2, 4);
    lua_pop(L, 1);
  }
}

/* The message handler of every task body: records, returns the value as
** is. nil (error() without a value) is recorded too: its record has no
** "value" field, which matches nil alone (rawequal), and is found only
** where it travels (the carry, a scope, the hand-out slot). */
int braid__error_msgh (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  struct braid_task *t = E->current;
  /* A cancellation is an outcome, with no record, in the task it reached
  ** (fail-fast makes thousands at once); raised in a task that was not
  ** cancelled (awaiting a task cancelled elsewhere, a gather's member
  ** cancelled from outside) it is that task's failure, and its report
  ** says where. */
  if (t && (!braid__is_cancel(L, 1) ||
            !(t->scope.cancelled || braid__task_inner(t)->cancelled)))
    error_record(L, 1, L, 1, t, 0);
  lua_settop(L, 1);
  return 1;
}

static void error_report (lua_State *L, int idx, int rec, const char *prefix,
                          int causes);

/* The line under a list cut at ALSO_MAX: how many more there were. */
static void report_more (lua_Integer more, const char *what) {
  if (more > 0)
    fprintf(stderr, "  ... and %lld more %s\n", (long long) more, what);
}

/* Prints the members' errors of braid.any's "all_failed" error at idx,
** each with its record (the list at recs), as the "also" list, at most
** ALSO_MAX. */
static void report_causes (lua_State *L, int idx, int recs) {
  lua_Integer i, n;
  int errs;
  lua_pushliteral(L, "errors");
  if (lua_rawget(L, idx) != LUA_TTABLE) {
    lua_pop(L, 1);
    return;
  }
  errs = lua_gettop(L);
  /* `n`, as braid.any sets it: a member that raised nil leaves a hole */
  lua_pushliteral(L, "n");
  n = lua_rawget(L, errs) == LUA_TNUMBER && lua_isinteger(L, -1) &&
      lua_tointeger(L, -1) >= 0 ? lua_tointeger(L, -1)
                                : (lua_Integer) lua_rawlen(L, errs);
  lua_pop(L, 1);
  for (i = 1; i <= n && i <= ALSO_MAX; i++) {
    lua_rawgeti(L, errs, i);
    if (lua_type(L, recs) == LUA_TTABLE) lua_rawgeti(L, recs, i);
    else lua_pushnil(L);
    lua_pushfstring(L, "  member %I of %I failed: ", i, n);
    error_report(L, errs + 1, errs + 2, lua_tostring(L, -1), 0);
    lua_settop(L, errs);
  }
  report_more(n - ALSO_MAX, "members failed (err.errors has them all)");
  lua_settop(L, errs - 1);
}

/* Prints the error at idx and its record at rec (0 or nil: none);
** `causes`: also the members' errors the record lists (braid.any's). */
static void error_report (lua_State *L, int idx, int rec, const char *prefix,
                          int causes) {
  if (lua_isnil(L, idx))   /* as lua.c says it: not a message "nil" */
    fprintf(stderr, "%s(error object is a nil value)\n", prefix);
  else {
    fprintf(stderr, "%s%s\n", prefix, braid__tostring(L, idx));
    lua_pop(L, 1);
  }
  if (rec && lua_type(L, rec) == LUA_TTABLE) {
    if (lua_getfield(L, rec, "task") == LUA_TSTRING)
      fprintf(stderr, "  in %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    if (lua_getfield(L, rec, "traceback") == LUA_TSTRING &&
        lua_rawlen(L, -1) > 0)
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    if (causes && lua_getfield(L, rec, "causes") == LUA_TTABLE)
      report_causes(L, idx, lua_gettop(L));
    if (causes) lua_pop(L, 1);
    if (lua_getfield(L, rec, "also") == LUA_TTABLE) {
      lua_Integer i, n = (lua_Integer) lua_rawlen(L, -1);
      for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        fprintf(stderr, "  also raised while cancelling: %s\n",
                lua_tostring(L, -1));
        lua_pop(L, 1);
      }
      lua_getfield(L, -1, "more");   /* error_suppress's count */
      report_more(lua_tointeger(L, -1), "raised while cancelling");
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  } else if (braid_error_kind(L, idx) != NULL) {
    lua_getfield(L, idx, "traceback");
    if (lua_isstring(L, -1) && lua_rawlen(L, -1) > 0)
      fprintf(stderr, "%s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  fflush(stderr);
}

/* Lists the error at idx under the record of s's first error (made now
** when it has none) and keeps it on first.suppressed when first is
** braid's own. */
static void error_suppress (lua_State *L, struct braid_scope *s, int idx) {
  int first;
  braid__scope_push_error(L, s);
  first = lua_gettop(L);
  if (SCOPE_REF(s, record_ref) != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->more->record_ref);
  } else {   /* s has failed: s->more exists */
    record_new(L, first);
    lua_pushvalue(L, -1);
    s->more->record_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  if (lua_getfield(L, -1, "also") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "also");
  }
  /* Bounded: a value raised in many failures (a module's error table)
  ** keeps its record; each of these was reported when it was raised. */
  if (lua_rawlen(L, -1) < ALSO_MAX) {
    braid__tostring(L, idx);
    lua_rawseti(L, -2, (lua_Integer) lua_rawlen(L, -2) + 1);
  } else {   /* counted, for the report's "... and N more" */
    lua_getfield(L, -1, "more");   /* nil at first: 0 */
    lua_pushinteger(L, lua_tointeger(L, -1) + 1);
    lua_setfield(L, -3, "more");
    lua_pop(L, 1);
  }
  lua_pop(L, 2);
  /* raw lengths: no script __len runs here, in scheduler context; and no
  ** list on a cancellation error, an outcome that tasks may share */
  if (braid_error_kind(L, first) != NULL && !braid__is_cancel(L, first)) {
    if (lua_getfield(L, first, "suppressed") != LUA_TTABLE) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_setfield(L, first, "suppressed");
    }
    lua_pushvalue(L, idx);
    lua_rawseti(L, -2, (lua_Integer) lua_rawlen(L, -2) + 1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* ---- best effort ----
** What braid adds about an error (records, reports, suppressed lists) is
** allocated in scheduler context. Out of memory with the reserve spent,
** it is left out rather than failing the scheduler: each runs protected,
** with its values passed as arguments (a protected call has a frame of its
** own). nres: the results kept (0 or 1; nil for one on failure). */

static int best_effort (lua_State *L, lua_CFunction f, void *ud, int a,
                        int b, int nres) {
  a = lua_absindex(L, a);
  b = b ? lua_absindex(L, b) : 0;
  if (!lua_checkstack(L, 5)) {
    if (nres) lua_pushnil(L);
    return -1;
  }
  lua_pushcfunction(L, f);
  lua_pushlightuserdata(L, ud);
  lua_pushvalue(L, a);
  if (b) lua_pushvalue(L, b);
  if (lua_pcall(L, b ? 3 : 2, nres, 0) == LUA_OK) return 0;
  lua_pop(L, 1);
  if (nres) lua_pushnil(L);
  return -1;
}

struct record_args {
  lua_State *co;
  int level;
  struct braid_task *t;
};

static int record_p (lua_State *L) {
  struct record_args *a = (struct record_args *) lua_touserdata(L, 1);
  error_record(L, 2, a->co, a->level, a->t, 1);
  return 1;
}

/* Pushes the record of the error at idx raised in task t: the one t
** knows (its message handler made it), else a new one with the traceback
** of co from level; nil when none can be made. [-0, +1, -] */
void braid__error_record (lua_State *L, int idx, lua_State *co, int level,
                          struct braid_task *t) {
  struct record_args a;
  a.co = co;
  a.level = level;
  a.t = t;
  best_effort(L, record_p, &a, idx, 0, 1);
}

struct report_args {
  const char *prefix;
  int known;    /* the record is the second argument */
};

static int report_p (lua_State *L) {
  struct report_args *a = (struct report_args *) lua_touserdata(L, 1);
  if (!a->known) {   /* the weak table, the hand-out slot, the carry */
    if (!record_by_identity(L, 2)) {
      lua_pop(L, 1);
      lua_rawgetp(L, LUA_REGISTRYINDEX, &hand_key);
      if (!record_match(L, 2)) {
        braid_engine_t *E = braid_engine(L);
        lua_pop(L, 1);
        record_carried(L, 2, E ? E->current : NULL);
      }
    }
  }
  error_report(L, 2, 3, a->prefix, 1);
  return 0;
}

static void report (lua_State *L, int idx, int rec, const char *prefix) {
  struct report_args a;
  a.prefix = prefix;
  a.known = rec != 0;
  if (best_effort(L, report_p, &a, idx, rec, 0) != 0) {
    fprintf(stderr, "%s(an error that could not be reported: not enough "
            "memory)\n", prefix);
    fflush(stderr);
  }
}

/* Prints the error at idx with what is known of where it came from (or,
** when even that cannot be allocated, says so). Never raises. */
void braid_report (lua_State *L, int idx, const char *prefix) {
  report(L, idx, 0, prefix);
}

/* braid_report with the error's record at rec (nil: none) given. */
void braid__error_report (lua_State *L, int idx, int rec,
                          const char *prefix) {
  report(L, idx, rec, prefix);
}

static int suppress_p (lua_State *L) {
  error_suppress(L, (struct braid_scope *) lua_touserdata(L, 1), 2);
  return 0;
}

/* A member raised `idx` (its record at rec, nil: none) while s was already
** failing: report it now, and list it under the report of s's first error
** (and on first.suppressed when first is braid's own). */
void braid__error_suppress (lua_State *L, struct braid_scope *s, int idx,
                            int rec) {
  braid__error_report(L, idx, rec, "braid: error while cancelling: ");
  best_effort(L, suppress_p, s, idx, 0, 0);
}

/* Never raises (tostring of a braid object): braid.Error.new takes any
** table, so message and kind may be anything; a kind that is not a string
** is named by its type. */
static int l_error_tostring (lua_State *L) {
  lua_getfield(L, 1, "message");
  if (!lua_isstring(L, -1)) {
    lua_getfield(L, 1, "kind");
    lua_pushfstring(L, "braid error (%s)",
                    lua_isstring(L, -1) ? lua_tostring(L, -1) :
                    lua_isnil(L, -1) ? "?" : luaL_typename(L, -1));
  }
  return 1;
}

/* braid.Error { kind = ..., message = ..., ... }: wraps a table as a
** braid.Error, for the Lua-side library and for scripts. */
static int l_error_new (lua_State *L) {
  braid__check_type(L, 1, LUA_TTABLE, "braid.Error.new");
  lua_settop(L, 1);
  error_setmt(L);
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
    /* Scripts see braid.Error, a table of its own, as the metatable of
    ** every braid error (getmetatable(e) == braid.Error) and cannot reach
    ** or change the real one, which braid's reports rely on. */
    lua_createtable(L, 0, 2);
    lua_pushcfunction(L, l_error_new);
    lua_setfield(L, -2, "new");
    lua_pushliteral(L, "braid.Error");
    lua_setfield(L, -2, "__name");
    lua_setfield(L, -2, "__metatable");
  }
  lua_rawsetp(L, LUA_REGISTRYINDEX, &error_mt_key);
}

/* braid._usage(message): raises it as a usage error at the script's
** position (usage_where); for lua/braid.lua, which takes it out of the
** braid table. */
static int l_usage (lua_State *L) {
  return braid_usageerror(L, "%s", luaL_checkstring(L, 1));
}

/* braid.Error: the public face of the metatable (its __metatable). */
void braid__open_error (lua_State *L) {
  braid__error_init(L);
  records_init(L);
  luaL_getmetatable(L, ERROR_MT);
  lua_getfield(L, -1, "__metatable");
  lua_setfield(L, -3, "Error");
  lua_pop(L, 1);
  lua_pushcfunction(L, l_usage);
  lua_setfield(L, -2, "_usage");
}

/* prim.h: where a task a primitive spawned was spawned, for reports: the
** file of the function at fidx (0: unknown, left out of reports) and the
** line (0: the file alone). Uservalue 3 and t->line are what
** braid__task_site reads. [-0, +0, -] */
void braid__task_set_site (lua_State *L, struct braid_task *t, int fidx,
                           int line) {
  fidx = fidx ? lua_absindex(L, fidx) : 0;
  braid__task_push(L, t);
  if (fidx) lua_pushvalue(L, fidx);
  else lua_pushnil(L);
  lua_setiuservalue(L, -2, 3);
  lua_pop(L, 1);
  t->line = line;
}
