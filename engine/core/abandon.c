/*
** abandon.c: cancelling a task, and abandoning one that did not end within
** its grace period: its operation is undone, the to-be-closed variables of
** its coroutine and of the user coroutines it waits through run, its
** members are abandoned first, and it ends "cancelled".
*/
#include <stdio.h>
#include "core.h"

/* Cancels the task (its own scope) with the reason at `reason` (0: none). */
void braid__task_cancel (struct braid_task *t, lua_State *L, int reason) {
  if (TASK_DONE(t) || t->scope.cancelled) return;
  if (reason) braid__scope_set_reason(L, &t->scope, reason);
  braid__scope_cancel(&t->scope, &t->scope);
}

/* braid__scope_each_task's callback that abandons each member. */
void braid__abandon_each (struct braid_task *t, void *ud) {
  braid__task_abandon_as(t, (const char *) ud);
}

/* A member of one of the scopes t owns (innermost first) that has not
** ended, or NULL. */
static struct braid_task *live_member (struct braid_task *t) {
  struct braid_scope *s;
  for (s = braid__task_inner(t); ; s = s->outer) {
    struct braid_list *n;
    for (n = s->subs.next; n != &s->subs; n = n->next) {
      struct braid_scope *sub = container_of(n, struct braid_scope, link);
      if (sub->kind == SCOPE_TASK && !TASK_DONE(sub->task)) return sub->task;
    }
    if (s == &t->scope) return NULL;
  }
}

static void abandon_one(struct braid_task *t, const char *why);

/* Abandons t and every task below it, each after its members, in a loop:
** a task's abandonment abandoned its members by recursion, and a chain of
** 50000 nested tasks overflowed the C stack (braid_close, or a shielded
** chain at its grace period). No task here contains the running one. */
static void abandon_tree (struct braid_task *t, const char *why) {
  struct braid_task *cur = t, *m;
  for (;;) {
    while ((m = live_member(cur)) != NULL) cur = m;
    if (cur == t) {
      abandon_one(t, why);
      return;
    }
    m = cur->scope.outer->task;   /* the task whose scope cur is in */
    abandon_one(cur, why);
    cur = m;
  }
}

/* ---- guarded <close> handlers ----
** Lua 5.4.4's lua_resetthread unwinds the frames of the thread but keeps
** its message handler index (L->errfunc; Lua 5.5 clears it: lstate.c
** resetCI). A task suspended inside a pcall with a handler (the body of a
** braid.scope, shield or timeout, an xpcall) is reset with that index
** pointing at a slot the closing has overwritten: the first <close>
** handler that raises calls that slot's value as the message handler,
** and its error becomes "error in error handling", also for the handlers
** after it. So while a reset runs, every metatable with a __close among
** the values on the thread's stack has it replaced by close_guard, which
** calls the handler under a pcall of its own (braid's message handler:
** the error keeps its traceback) and hands its error on to the next
** handler, as Lua does; the metatables get their __close back after. */

enum { GUARD_ERROR = 1, GUARD_FAILED, GUARD_DEPTH };   /* the state table */

/* The __close a guard stands for (upvalue 1), with the state table
** (upvalue 2) shared by the guards of one reset. (obj, err) */
static int close_guard (lua_State *L) {
  int st = lua_upvalueindex(2);
  lua_Integer depth;
  lua_settop(L, 2);
  lua_rawgeti(L, st, GUARD_DEPTH);
  depth = lua_tointeger(L, -1);
  lua_pop(L, 1);
  lua_pushvalue(L, lua_upvalueindex(1));
  if (depth > 0) {   /* a <close> variable inside a handler: as Lua would */
    lua_insert(L, 1);
    lua_call(L, 2, 0);
    return 0;
  }
  lua_pushcfunction(L, braid__error_msgh);
  lua_insert(L, 1);                          /* 1: msgh, 4: handler */
  lua_pushvalue(L, 2);
  if (lua_rawgeti(L, st, GUARD_FAILED) != LUA_TNIL) {
    lua_pop(L, 1);
    lua_rawgeti(L, st, GUARD_ERROR);         /* an earlier handler's error */
  } else {
    lua_pop(L, 1);
    lua_pushvalue(L, 3);
  }
  lua_pushinteger(L, 1);
  lua_rawseti(L, st, GUARD_DEPTH);
  if (lua_pcall(L, 2, 0, 1) != LUA_OK) {
    lua_rawseti(L, st, GUARD_ERROR);
    lua_pushboolean(L, 1);
    lua_rawseti(L, st, GUARD_FAILED);
  }
  lua_pushinteger(L, 0);
  lua_rawseti(L, st, GUARD_DEPTH);
  return 0;
}

/* [co, state, saved]: guards the __close of every metatable among the
** values in the slots of co's frames, keeping the originals in saved
** (metatable -> __close). */
static int guard_p (lua_State *S) {
  lua_State *co = lua_tothread(S, 1);
  lua_Debug ar;
  int level, n;
  for (level = 0; lua_getstack(co, level, &ar); level++) {
    for (n = 1; lua_checkstack(co, 1) && lua_getlocal(co, &ar, n); n++) {
      lua_xmove(co, S, 1);
      if (lua_getmetatable(S, -1)) {
        lua_pushliteral(S, "__close");
        if (lua_rawget(S, -2) != LUA_TNIL &&
            lua_tocfunction(S, -1) != close_guard) {
          lua_pushvalue(S, -2);
          lua_insert(S, -2);
          lua_rawset(S, 3);                  /* saved[mt] = __close */
          lua_pushliteral(S, "__close");
          lua_pushvalue(S, -2);
          lua_rawget(S, 3);
          lua_pushvalue(S, 2);
          lua_pushcclosure(S, close_guard, 2);
          lua_rawset(S, -3);
        } else {
          lua_pop(S, 1);
        }
        lua_pop(S, 1);
      }
      lua_pop(S, 1);
    }
  }
  return 0;
}

/* Puts back the __close of the metatables in the table on S's top (those
** a handler did not change meanwhile); pops it. */
static void guard_undo (lua_State *S) {
  int saved = lua_gettop(S);
  lua_pushnil(S);
  while (lua_next(S, saved)) {
    lua_pushliteral(S, "__close");
    if (lua_rawget(S, -3) == LUA_TFUNCTION &&
        lua_tocfunction(S, -1) == close_guard) {
      lua_pop(S, 1);
      lua_pushliteral(S, "__close");
      lua_insert(S, -2);
      lua_rawset(S, -3);
    } else {
      lua_pop(S, 2);
    }
  }
  lua_pop(S, 1);
}

/* Resets co, running its to-be-closed variables (guarded, above): the
** last cleanup of a task that already overran its grace period, so it is
** bounded too. An error a handler raised (the last one) is left on co's
** top. */
static int abandon_reset (braid_engine_t *E, lua_State *co) {
  lua_State *S = E->S;
  struct braid_bound b;
  int status, guarded, top = lua_gettop(S);
  lua_pushcfunction(S, guard_p);
  lua_pushthread(co);
  lua_xmove(co, S, 1);
  lua_createtable(S, 3, 0);                  /* top + 1: state */
  lua_pushinteger(S, 0);
  lua_rawseti(S, -2, GUARD_DEPTH);
  lua_newtable(S);                           /* top + 2: saved */
  lua_pushvalue(S, -2);
  lua_pushvalue(S, -2);
  lua_insert(S, top + 1);
  lua_insert(S, top + 1);
  /* out of memory: the handlers run unguarded, as Lua runs them */
  guarded = lua_pcall(S, 3, 0, 0) == LUA_OK;
  if (!guarded) lua_pop(S, 1);
  braid__bound(E, co, &b);
  status = lua_resetthread(co);
  braid__unbound(E, co, &b);
  guard_undo(S);
  if (guarded && status == LUA_OK &&
      lua_rawgeti(S, top + 1, GUARD_FAILED) != LUA_TNIL) {
    lua_rawgeti(S, top + 1, GUARD_ERROR);
    lua_xmove(S, co, 1);
    status = LUA_ERRRUN;
  }
  lua_settop(S, top);
  return status;
}

/* Closes the to-be-closed variables of the user coroutines that task t is
** suspended through (a braid call made inside coroutine.wrap or resume),
** innermost first: lua_resetthread of the task's own thread does not
** reach into them. Runs in scheduler context, before t->co is reset. */
static void abandon_user_coroutines (braid_engine_t *E, struct braid_task *t) {
  lua_State *S = E->S;
  int tbl, n = 0;
  lua_rawgetp(S, LUA_REGISTRYINDEX, &braid__suspended_key);
  tbl = lua_gettop(S);
  lua_pushthread(t->co);
  lua_xmove(t->co, S, 1);
  for (;;) {   /* push the coroutine the thread on top is resuming */
    int found = 0;
    luaL_checkstack(S, 4, "coroutine chain");
    lua_pushnil(S);
    while (lua_next(S, tbl)) {
      if (lua_rawequal(S, -1, -3)) {
        lua_pop(S, 1);
        found = 1;
        break;
      }
      lua_pop(S, 1);
    }
    if (!found) break;
    n++;
  }
  for (; n > 0; n--) {
    lua_State *co = lua_tothread(S, tbl + 1 + n);
    lua_pushthread(co);
    lua_xmove(co, S, 1);
    lua_pushnil(S);
    lua_rawset(S, tbl);
    if (abandon_reset(E, co) != LUA_OK) {
      lua_xmove(co, S, 1);
      braid_report(S, -1, "braid: error in a <close> handler of an "
                          "abandoned task: ");
      lua_pop(S, 1);
    }
  }
  lua_settop(S, tbl - 1);
}

static void abandon_report (lua_State *L, struct braid_task *t,
                            const char *why) {
  braid_engine_t *E = t->E;
  uint64_t grace = E->grace_expired ? E->grace_expired
                                    : braid__scope_grace(t->scope.outer);
  if (E->closing) return;   /* braid_close abandons by design */
  if (why)
    fprintf(stderr, "braid: task %llu (%s%s) abandoned: %s\n",
            (unsigned long long) t->id,
            braid__task_name(L, t, 0), braid__task_where(L, t), why);
  else
    fprintf(stderr, "braid: task %llu (%s%s) abandoned: still running %g s "
            "after it was cancelled\n", (unsigned long long) t->id, braid__task_name(L, t, 0),
            braid__task_where(L, t), (double) grace / 1e9);
  lua_pop(L, 1);
}

/* The task whose scope s is a member of (NULL for the top's). */
static struct braid_task *parent_of (struct braid_task *t) {
  return t->scope.outer ? t->scope.outer->task : NULL;
}

/* Whether x is t or one of its members, at any depth. */
static int within (struct braid_task *x, struct braid_task *t) {
  while (x && x != t) x = parent_of(x);
  return x != NULL;
}

/* Whether the running task is within t: its Lua code is then on the C
** stack, below the caller. */
static int running_within (braid_engine_t *E, struct braid_task *t) {
  return within(E->current, t);
}

void braid__task_abandon (struct braid_task *t) {
  braid__task_abandon_as(t, NULL);
}

/* Ends a task that did not finish within its grace period: its operation
** is undone, its to-be-closed variables run (lua_resetthread), and it ends
** cancelled. Runs in scheduler context, or (see prim.h) makes the tasks
** from the running one up to t only unwind. */
void braid__task_abandon_as (struct braid_task *t, const char *why) {
  braid_engine_t *E = t->E;
  lua_State *S = E->S;
  int reported = t->abandoned;   /* said already (hook.c's task_stop) */
  if (TASK_DONE(t)) return;
  if (running_within(E, t)) {
    /* The running task cannot be reset from under its own code: it only
    ** unwinds from its next instruction, and t is abandoned when the
    ** scheduler has it back (sched.c), as any other. */
    if (!reported) abandon_report(S, t, why);
    t->abandoned = 1;   /* braid calls refuse to wait from now on */
    E->current->abandoned = 1;
    E->current->stop = STOP_GRACE;
    braid__hook_stop(E);
    /* Both contain the running task, so one contains the other: keep the
    ** outer, whose abandonment takes the inner one with it (its grace
    ** timer fired once: a request dropped here would not come again). */
    if (E->abandon_later == NULL || within(E->abandon_later, t)) {
      E->abandon_later = t;
      E->abandon_why = why;
    }
    return;
  }
  abandon_tree(t, why);
}

/* Abandons t, whose members have all ended: its nested scopes go, its
** operation is undone, its to-be-closed variables run. */
static void abandon_one (struct braid_task *t, const char *why) {
  braid_engine_t *E = t->E;
  lua_State *S = E->S;
  struct braid_task *prev = E->current;
  int reported = t->abandoned;   /* said already (hook.c's task_stop) */
  if (TASK_DONE(t)) return;   /* it was only waiting for its members */
  while (braid__task_inner(t) != &t->scope) {
    struct braid_scope *s = braid__task_inner(t);
    braid__task_set_inner(t, s->outer);
    braid__scope_release(s);
  }
  if (E->trace) braid__trace_abandon(t);
  if (t->waiting && t->w->cancel) t->w->cancel(t->w);
  else braid__op_release(t);   /* completed, continuation not run */
  t->waiting = 0;
  t->abandoned = 1;
  if (t->co) {
    E->current = t;
    abandon_user_coroutines(E, t);
    if (abandon_reset(E, t->co) != LUA_OK) {
      lua_xmove(t->co, S, 1);
      braid_report(S, -1, "braid: error in a <close> handler of an "
                          "abandoned task: ");
      lua_pop(S, 1);
    }
    E->current = prev;
    braid__coset_remove(E, t->co);
    t->co = NULL;   /* not pooled: see pool_put */
  }
  if (!reported) abandon_report(S, t, why);
  t->scope.body_failed = 1;
  braid__task_push(S, t);
  braid__abandon_push(S, t);
  lua_setiuservalue(S, -2, 1);
  lua_pop(S, 1);
  braid__task_finish(t);
}

/* Also for a task stopped while it ran Lua code (hook.c), which unwound
** with the cancellation it had (task.c). */
void braid__abandon_push (lua_State *S, struct braid_task *t) {
  /* Whatever cancelled it before, it ends abandoned: a reason given then,
  ** and the cancellation error made with it, give way. */
  if (t->scope.more) {
    luaL_unref(S, LUA_REGISTRYINDEX, t->scope.more->reason_ref);
    luaL_unref(S, LUA_REGISTRYINDEX, t->scope.more->cancel_ref);
    t->scope.more->reason_ref = t->scope.more->cancel_ref = LUA_NOREF;
  }
  lua_pushliteral(S, "abandoned after its grace period");
  braid__scope_set_reason(S, &t->scope, -1);
  lua_pop(S, 1);
  t->scope.cancelled = 1;
  t->scope.cause = &t->scope;
  braid__push_cancel(S, &t->scope);
}

