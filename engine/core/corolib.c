/*
** corolib.c: the coroutine library as seen from inside tasks, in the shape
** of Lua's lcorolib.c: resume, wrap, yield, isyieldable and close replaced
** so that a braid call inside a script's own coroutine suspends the whole
** task (its yield, carrying BRAID_MARKER, is passed outward), and so that
** the coroutines braid runs tasks in cannot be resumed or closed from
** elsewhere. Outside tasks they behave as Lua's own.
*/
#include "core.h"

/* user coroutines suspended in a braid call -> the thread resuming them */
const char braid__suspended_key = 's';

static void suspended_mark (lua_State *L, lua_State *co, int on) {
  lua_rawgetp(L, LUA_REGISTRYINDEX, &braid__suspended_key);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  if (on) lua_pushthread(L);   /* the resumer: abandoning walks the chain */
  else lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static int co_resume_k (lua_State *L, int status, lua_KContext ctx);

/* A continuation's context: the scope recorded at the resume (a pointer,
** so its low bit is free) and whether it is coroutine.resume's. */
#define CO_CTX(base, isresume) \
  ((lua_KContext) ((uintptr_t) (base) | (uintptr_t) (isresume)))
#define CO_CTX_BASE(ctx) \
  ((struct braid_scope *) ((uintptr_t) (ctx) & ~(uintptr_t) 1))
#define CO_CTX_ISRESUME(ctx) ((int) ((uintptr_t) (ctx) & 1))

/* Resumes co like coroutine.resume and leaves `nres >= 0` values (or an
** error, -1) on L. A braid yield inside co suspends L's task as well, and
** the loop resumes co when the task is resumed. `base` is the task's
** innermost scope when the script resumed co (NULL: record it now): a
** plain yield of co while another is innermost (one co opened and has not
** left) is refused by l_co_yield, since the scope lives on co's stack and
** must be left by its body before the task runs on without it. */
static int co_resume (lua_State *L, lua_State *co, int narg, int isresume,
                      struct braid_scope *base) {
  for (;;) {
    int status, nres;
    if (!lua_checkstack(co, narg)) {
      lua_pushliteral(L, "too many arguments to resume");
      return -1;
    }
    braid_engine_t *E = braid_engine(L);
    struct braid_task *t = E->current;
    /* Resumed from where the task cannot yield (a table.sort comparator):
    ** braid calls inside co are refused before they start anything. */
    unsigned cut = t != NULL && !lua_isyieldable(L);
    lua_State *outer = E->running_co;
    struct braid_scope *outer_base = E->co_base;
    if (base == NULL && t != NULL) base = braid__task_inner(t);
    lua_xmove(L, co, narg);
    E->co_base = base;
    braid__co_enter(E, co);
    braid__hook_rearm(E, co, 1);   /* the task's budget and grace, or a
                                     ** bound, go on */
    E->noyield += cut;
    status = lua_resume(co, L, narg, &nres);
    E->noyield -= cut;
    E->co_base = outer_base;
    braid__co_leave(E, outer);
    if (status == LUA_YIELD && nres == 1 &&
        lua_touserdata(co, -1) == BRAID_MARKER) {
      lua_pop(co, 1);
      if (!lua_isyieldable(L) || t == NULL) {
        /* The call cannot suspend after all: undo the wait it registered
        ** (a watcher, a timer, yield's self-wake) before its continuation
        ** raises, or a later wake-up would resume the task while it
        ** waits on something else. */
        if (t) {
          if (t->waiting && t->w->cancel) t->w->cancel(t->w);
          t->waiting = 0;
          braid__task_unready(E, t);
          t->wake = WAKE_NOYIELD;
        }
        narg = 0;
        continue;
      }
      suspended_mark(L, co, 1);
      return braid__task_yield(L, t, CO_CTX(base, isresume), co_resume_k);
    }
    if (status == LUA_OK || status == LUA_YIELD) {
      if (!lua_checkstack(L, nres + 1)) {
        lua_pop(co, nres);
        lua_pushliteral(L, "too many results to resume");
        return -1;
      }
      lua_xmove(co, L, nres);
      return nres;
    }
    lua_xmove(co, L, 1);
    return -1;
  }
}

static int co_finish (lua_State *L, lua_State *co, int r, int isresume) {
  if (isresume) {
    if (r < 0) {
      lua_pushboolean(L, 0);
      lua_insert(L, -2);
      return 2;
    }
    lua_pushboolean(L, 1);
    lua_insert(L, -(r + 1));
    return r + 1;
  }
  if (r < 0) {   /* as coroutine.wrap: close the coroutine, add position */
    int stat = lua_status(co);
    if (stat != LUA_OK && stat != LUA_YIELD) {
      stat = lua_resetthread(co);
      lua_xmove(co, L, 1);
      lua_remove(L, -2);
    }
    if (stat != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
      luaL_where(L, 1);
      lua_insert(L, -2);
      lua_concat(L, 2);
    }
    return lua_error(L);
  }
  return r;
}

static lua_State *co_of (lua_State *L, int isresume) {
  return isresume ? lua_tothread(L, 1) : lua_tothread(L, lua_upvalueindex(1));
}

static int co_resume_k (lua_State *L, int status, lua_KContext ctx) {
  int isresume = CO_CTX_ISRESUME(ctx);
  lua_State *co = co_of(L, isresume);
  (void) status;
  suspended_mark(L, co, 0);
  lua_settop(L, isresume);   /* a task is resumed with no values */
  return co_finish(L, co, co_resume(L, co, 0, isresume, CO_CTX_BASE(ctx)),
                   isresume);
}

/* Is co suspended inside a braid call: a task's own coroutine, or one a
** task waits through? Resuming or closing it from anywhere else would run
** that call's continuation, or free what the scheduler still uses. */
static int co_in (lua_State *L, const void *key, lua_State *co) {
  int in;
  lua_rawgetp(L, LUA_REGISTRYINDEX, key);
  lua_pushthread(co);
  lua_xmove(co, L, 1);
  in = lua_rawget(L, -2) != LUA_TNIL;
  lua_pop(L, 2);
  return in;
}

static int co_held (lua_State *L, lua_State *co) {
  braid_engine_t *E = braid_engine(L);
  return lua_status(co) == LUA_YIELD &&
         ((E && braid__coset_has(E, co)) ||
          co_in(L, &braid__suspended_key, co));
}

#define CO_HELD_MSG \
  "cannot resume coroutine: it is suspended in a braid call of a task"

static int l_co_resume (lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  if (co_held(L, co)) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, CO_HELD_MSG);
    return 2;
  }
  return co_finish(L, co, co_resume(L, co, lua_gettop(L) - 1, 1, NULL), 1);
}

static int l_co_wrapped (lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  if (co_held(L, co)) return luaL_error(L, CO_HELD_MSG);
  return co_finish(L, co, co_resume(L, co, lua_gettop(L), 0, NULL), 0);
}

static int l_co_wrap (lua_State *L) {
  lua_State *co;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_pushcclosure(L, l_co_wrapped, 1);
  return 1;
}

static int in_task_body (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  return E->current != NULL && E->current->co == L;
}

static int l_co_yield (lua_State *L) {
  braid_engine_t *E = braid__draining;
  struct braid_task *t;
  if (E == NULL || L != E->running_co)   /* not a generator in a task: */
    E = braid_engine(L);                  /* look it up (the registry) */
  t = E ? E->current : NULL;
  if (t != NULL) {
    if (t->co == L)
      return luaL_error(L, "attempt to yield from outside a coroutine");
    if (L == E->running_co && braid__task_inner(t) != E->co_base)
      return braid_usageerror(L, "coroutine.yield: cannot yield out of a "
                                "braid.scope, timeout, move_on or shield "
                                "opened inside this coroutine: it would "
                                "stay open while the task runs on; yield "
                                "after it returns (or pass values through "
                                "a channel)");
  }
  return lua_yield(L, lua_gettop(L));
}

static int l_co_isyieldable (lua_State *L) {
  lua_State *co = lua_isnone(L, 1) ? L : lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  lua_pushboolean(L, lua_isyieldable(co) && !in_task_body(co));
  return 1;
}

/* coroutine.close(co): Lua's own (upvalue 1), except for a coroutine a
** task runs in or is suspended through: resetting it would free what the
** scheduler still uses (the task's scopes, a pending operation's data). */
static int l_co_close (lua_State *L) {
  lua_State *co = lua_tothread(L, 1);
  luaL_argexpected(L, co, 1, "coroutine");
  if (co_held(L, co))
    return braid_usageerror(L, "coroutine.close: cannot close a coroutine "
                              "that a braid task runs in or is suspended "
                              "through (cancel the task instead)");
  return braid__call_wrapped(L, 1);
}

static void weak_table (lua_State *L, const void *key) {
  braid__push_weak_table(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, key);
}

/* Replaces resume, wrap, yield, isyieldable and close in the coroutine
** table at the stack top. They behave as Lua's own outside tasks. */
void braid__open_coroutine (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"resume", l_co_resume},
    {"wrap", l_co_wrap},
    {"yield", l_co_yield},
    {"isyieldable", l_co_isyieldable},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
  lua_getfield(L, -1, "close");
  if (lua_isfunction(L, -1)) {
    lua_pushcclosure(L, l_co_close, 1);
    lua_setfield(L, -2, "close");
  } else {
    lua_pop(L, 1);
  }
  weak_table(L, &braid__suspended_key);
}

