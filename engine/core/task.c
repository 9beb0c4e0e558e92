/*
** task.c: the task object (braid.Task) and its lifecycle: spawning,
** starting in a pooled coroutine, ending once the body and every member
** of its scope have ended; results, await, cancel, and braid.spawn,
** braid.current, braid.yield.
**
** Invariants:
** - A task's userdata is anchored by t->ref from spawn until it ends, and
**   its coroutine by the userdata's first user value while it runs; after
**   the end that slot holds the results or the error instead.
** - User value 4 holds a failure record (error.c): while the task runs,
**   the one of the last error raised in it or handed to it; after the end,
**   the one of its own failure, or nil. It lives with the task object.
** - A task's coroutine is made (or taken from the pool) when it starts, not
**   when it is spawned, and goes back to the pool when it ends, so spawning
**   many tasks that each finish quickly keeps few coroutines alive.
*/
#include <stdio.h>
#include <string.h>
#include "core.h"

#define TASK_MT "braid.Task"

const char *const braid__status_names[] = {
  "pending", "running", "suspended", "ok", "failed", "cancelled"
};

const struct braid_type braid__task_type = {TASK_MT};

struct braid_task *braid__task_check (lua_State *L, int idx,
                                     const char *fname) {
  return (struct braid_task *) braid__check_tagged(L, idx, &braid__task_type,
                                                   fname);
}

/* The task's name: set by the script, else where its function is defined;
** made when first asked for (a report, tostring), never at the spawn.
** A function of braid's own Lua side (a pool:map member's) is named after
** where the task was spawned, the script's line, and a C function by its
** global name ("math.floor"): "[braid]:531" and "[C]:-1" said nothing. A
** callable table or userdata is named by its __call.
** idx is the task object's stack index, or 0 for a live task. */
const char *braid__task_name (lua_State *L, struct braid_task *t, int idx) {
  const char *name = "?";
  if (idx) lua_pushvalue(L, idx);
  else if (t->ref != LUA_NOREF) braid__task_push(L, t);
  else return "?";
  idx = lua_gettop(L);
  if (lua_getiuservalue(L, -1, 2) == LUA_TSTRING) {
    name = lua_tostring(L, -1);
    lua_settop(L, idx - 1);
    return name;
  }
  switch (luaL_getmetafield(L, -1, "__call")) {   /* a callable: its __call */
    case LUA_TNIL: break;
    case LUA_TFUNCTION: lua_replace(L, -2); break;
    default: lua_pop(L, 1);
  }
  if (lua_isfunction(L, -1)) {
    lua_Debug ar;
    lua_pushvalue(L, -1);
    lua_getinfo(L, ">S", &ar);
    if (*ar.what == 'C') {
      if (!braid__global_name_push(L, -1)) lua_pushliteral(L, "C function");
    } else if (strcmp(ar.source, "=[braid]") == 0) {
      braid__task_site(L, t, idx);
    } else if (*ar.what == 'm') {   /* a chunk (braid_run_string's): its
                                    ** name, as the runner's main task */
      lua_pushstring(L, ar.short_src);
    } else {
      lua_pushfstring(L, "%s:%d", ar.short_src, ar.linedefined);
    }
    name = lua_tostring(L, -1);
    lua_setiuservalue(L, idx, 2);   /* interned and anchored from now on */
  }
  lua_settop(L, idx - 1);
  return name;
}

/* Pushes where the task was spawned, "file:line" (a string). idx is the
** task object's stack index, or 0 for a live task. */
const char *braid__task_site (lua_State *L, struct braid_task *t, int idx) {
  lua_Debug ar;
  int top = lua_gettop(L);
  if (idx) lua_pushvalue(L, idx);
  else if (t->ref != LUA_NOREF) braid__task_push(L, t);
  else lua_pushnil(L);
  if (lua_type(L, -1) == LUA_TUSERDATA &&
      lua_getiuservalue(L, -1, 3) == LUA_TFUNCTION) {
    lua_getinfo(L, ">S", &ar);
    if (t->line > 0) lua_pushfstring(L, "%s:%d", ar.short_src, t->line);
    else lua_pushstring(L, ar.short_src);
  } else {
    lua_pushliteral(L, "?");
  }
  lua_replace(L, top + 1);
  lua_settop(L, top + 1);
  return lua_tostring(L, -1);
}

/* Pushes ", spawned at file:line", or "" for a spawn braid cannot place
** (the runner's main task, a REPL entry): reports leave it out rather
** than print "?". [-0, +1, m] */
const char *braid__task_where (lua_State *L, struct braid_task *t) {
  const char *site = braid__task_site(L, t, 0);
  if (strcmp(site, "?") == 0) lua_pushliteral(L, "");
  else lua_pushfstring(L, ", spawned at %s", site);
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

/* Creates a task that will run the callable at fidx with the nargs values
** after it, as a member of `into`; leaves the task object on the stack.
** [-0, +1, m] */
struct braid_task *braid__task_spawn (lua_State *L, struct braid_scope *into,
                                      int fidx, int nargs) {
  braid_engine_t *E = braid_engine(L);
  struct braid_task *t;
  int i;
  /* Its cleanup (the <close> handlers abandon_reset runs) could not wait
  ** for a member, and the scope goes when the cleanup ends. */
  if (into->task && into->task->abandoned)
    braid_usageerror(L, "cannot start a task in a task that is being "
                     "abandoned after its grace period");
  fidx = lua_absindex(L, fidx);
  t = (struct braid_task *) lua_newuserdatauv(L, sizeof *t, 4);
  memset(t, 0, sizeof *t);
  t->type = &braid__task_type;
  if (nargs == 0) lua_pushvalue(L, fidx);
  else {
    lua_createtable(L, nargs + 1, 0);
    for (i = 0; i <= nargs; i++) {
      lua_pushvalue(L, fidx + i);
      lua_rawseti(L, -2, i + 1);
    }
  }
  lua_setiuservalue(L, -2, 1);
  lua_pushvalue(L, fidx);
  lua_setiuservalue(L, -2, 2);
  t->E = E;
  t->id = ++E->next_id;
  t->nargs = nargs;
  t->status = TASK_PENDING;
  braid__list_init(&t->watchers);
  /* A group's members were spawned where it was called: it says so. */
  if (into->kind != SCOPE_GROUP && (t->line = braid__frame_push(L, L, 1)) >= 0)
    lua_setiuservalue(L, -2, 3);   /* the file: from the function */
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->tasks_ref);   /* the anchors */
  lua_rawgeti(L, -1, 0);   /* braid.Task, kept there: no lookup by name */
  lua_setmetatable(L, -3);
  /* Anchor before linking: a failed allocation must leave no task in the
  ** scope tree that the collector could free. */
  lua_pushvalue(L, -2);
  braid__task_anchor(L, E, t, lua_gettop(L) - 1);
  lua_pop(L, 1);   /* the anchors */
  braid__scope_init(&t->scope, E, SCOPE_TASK, t, into);
  E->live++;
  braid__task_ready(t);
  if (E->trace) braid__trace_spawn(t, L, fidx);
  return t;
}

/* Keeps a finished coroutine for reuse. An abandoned one is not kept: it
** was reset in the middle of a pcall, and lua_resetthread (5.4.4) leaves
** that pcall's message handler index behind. */
static void pool_put (braid_engine_t *E, lua_State *S, struct braid_task *t,
                      lua_State *co) {
  /* An error escaped task_main's pcall: only a hook's can (at its call
  ** or return), and Lua leaves such a thread's hooks off (allowhook 0,
  ** which no reset restores): a body that spun on it could not be
  ** stopped, so it is not reused either. */
  int died = lua_status(co) != LUA_OK;
  if (died) lua_resetthread(co);
  lua_settop(co, 0);
  if (E->pool_n >= BRAID_SPARES || t->abandoned || t->nopool || died) {
    braid__coset_remove(E, co);
    return;
  }
  lua_rawgeti(S, LUA_REGISTRYINDEX, E->pool_ref);
  lua_pushthread(co);
  lua_xmove(co, S, 1);
  lua_rawseti(S, -2, ++E->pool_n);
  lua_pop(S, 1);
}

/* The body raised, and its to-be-closed variables have run. In a task's
** own task_main (ctx 1) the error is returned, its status kept in
** t->raised, so that the coroutine ends as one that returned: one that
** raised is dead until lua_resetthread, which shrinks its stack (a copy)
** that its next task grows again, a cost per failed or cancelled task
** (~7% of W3's cancel, when 10k siblings end at once). A task_main a
** script called (the debug library hands it out) raises as any call does,
** so no value a body returns can pass for an error. */
static int task_main_k (lua_State *L, int status, lua_KContext ctx) {
  if (status != LUA_OK && status != LUA_YIELD) {
    if (!ctx) return lua_error(L);
    braid_engine(L)->current->raised = (unsigned char) status;
    return 1;
  }
  return lua_gettop(L) - 1;   /* the results, above the message handler */
}

/* A task's coroutine runs its body under lua_pcallk, with braid's message
** handler: when the body raises, Lua closes its to-be-closed variables
** right there, in the task (braid calls work in them, and may suspend; the
** memory limit and budget apply; an error they raise becomes the task's),
** rather than later, outside it, when the coroutine is reset. Then the
** error goes on to the scheduler (task_main_k). [fn, args...] */
int braid__task_main (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  lua_Debug ar;
  /* the scheduler's call: the running task's thread, nothing below it */
  lua_KContext own = E && E->current && E->current->co == L &&
                     !lua_getstack(L, 1, &ar);
  luaL_checkany(L, 1);   /* the debug library can reach it: no function */
  lua_pushcfunction(L, braid__error_msgh);
  lua_insert(L, 1);
  return task_main_k(L, lua_pcallk(L, lua_gettop(L) - 2, LUA_MULTRET, 1, own,
                                   task_main_k), own);
}

/* Lets go of the pooled coroutines (memory is short). */
void braid__task_pool_drop (lua_State *S, braid_engine_t *E) {
  int i;
  lua_rawgeti(S, LUA_REGISTRYINDEX, E->pool_ref);
  for (i = 1; i <= BRAID_SPARES; i++) {   /* taken ones leave their slot set */
    if (i <= E->pool_n) {   /* pooled: in the task coroutines' set too */
      lua_rawgeti(S, -1, i);
      braid__coset_remove(E, lua_tothread(S, -1));
      lua_pop(S, 1);
    }
    lua_pushnil(S);   /* never allocates: a nil is not inserted */
    lua_rawseti(S, -2, i);
  }
  E->pool_n = 0;
  lua_pop(S, 1);
}

/* Gives the task a coroutine holding its function and arguments.
** [-0, +0, m] on S; the task object must be on S's top. */
void braid__task_start (braid_engine_t *E, lua_State *S, struct braid_task *t) {
  lua_State *co;
  int i;
  if (t->w == NULL) {   /* kept when raising */
    t->w = braid__wait_get(S, t);
    if (t->scope.cancelled)   /* before it started: the grace runs on */
      TASK_STARTED(t)->grace_end = braid__scope_grace_end(&t->scope);
  }
  if (E->pool_n > 0) {
    /* Its slot keeps pointing at it until another coroutine is put there
    ** (pool_put), or the pool is dropped: clearing it cost a table write
    ** per start. Meanwhile it keeps alive a coroutine its task did not
    ** give back (abandoned, or the pool full): at most BRAID_SPARES, reset. */
    lua_rawgeti(S, LUA_REGISTRYINDEX, E->pool_ref);
    lua_rawgeti(S, -1, E->pool_n--);
    lua_remove(S, -2);
    co = lua_tothread(S, -1);
  } else {
    co = lua_newthread(S);
    if (braid__coset_add(E, S, co) != 0) luaL_error(S, "not enough memory");
  }
  lua_getiuservalue(S, -2, 1);
  /* A thread that runs nothing has LUA_MINSTACK free slots. */
  if (t->nargs + 4 > LUA_MINSTACK && !lua_checkstack(co, t->nargs + 4)) {
    braid__coset_remove(E, co);   /* not a task's, nor pooled, any more */
    luaL_error(S, "not enough memory");
  }
  lua_pushcfunction(co, braid__task_main);
  if (t->nargs == 0) lua_xmove(S, co, 1);
  else {   /* unpacked on co's stack, not S's: S's may be small */
    lua_xmove(S, co, 1);
    for (i = 1; i <= t->nargs + 1; i++) lua_rawgeti(co, 2, i);
    lua_remove(co, 2);
  }
  lua_setiuservalue(S, -2, 1);   /* the coroutine now anchors everything */
  t->co = co;
}

/* [cause]: pushes the cancellation it causes, running no script code. */
static int cancel_p (lua_State *L) {
  braid__push_cancel_hooked(L, (struct braid_scope *) lua_touserdata(L, 1));
  return 1;
}

/* Makes the cancellation of task scope s the outcome of its task, whose
** object is on S's top. In scheduler context, where nothing may raise:
** out of memory the outcome is Lua's "not enough memory" (interned). */
static void finish_cancelled (lua_State *S, struct braid_scope *s) {
  lua_pushcfunction(S, cancel_p);
  lua_pushlightuserdata(S, s->cause);
  if (lua_pcall(S, 1, 1, 0) != LUA_OK) {
    lua_pop(S, 1);
    lua_pushliteral(S, "not enough memory");
  }
  lua_setiuservalue(S, -2, 1);
}

/* Ends the task once its body and every member of its scope have ended:
** the outcome is the scope's first error, else the body's cancellation,
** else the body's results (already in user value 1). Then the watchers and
** the parent scope are told. Runs in scheduler context, with the task
** object on S's top (popped). Returns the task this ends in turn (the last
** member of its scope ended), for braid__task_finish's loop. */
static struct braid_task *task_finish (struct braid_task *t) {
  braid_engine_t *E = t->E;
  lua_State *S = E->S;
  struct braid_scope *s = &t->scope;
  struct braid_task *next;
  if (E->abandon_later == t) E->abandon_later = NULL;   /* nothing left */
  if (E->trace) braid__trace_finish(t);
  if (SCOPE_REF(s, error_ref) != LUA_NOREF) {
    braid__scope_push_error(S, s);
    lua_setiuservalue(S, -2, 1);
    t->status = TASK_FAILED;
  } else if (s->cut && !s->body_failed && !(E->session && t == E->root)) {
    /* Its body returned, but its cancel cut members off: the task's work
    ** is not done, so it ends cancelled, as a braid.scope raises then.
    ** Not the REPL's root: ending the session cancels the background
    ** tasks on purpose (repl.cancel_background), and the session is ok. */
    finish_cancelled(S, s);
    t->status = TASK_CANCELLED;
  } else {
    t->status = s->body_failed ? TASK_CANCELLED : TASK_OK;
  }
  if (t->status != TASK_OK) t->nres = 0;   /* not a pending task's nargs */
  braid__scope_push_record(S, s);   /* nil unless it failed */
  lua_setiuservalue(S, -2, 4);
  t->waiting = 0;
  braid__task_unready(E, t);
  E->live--;
  while (!braid__list_empty(&t->watchers)) {
    struct braid_watch *w = container_of(t->watchers.next,
                                         struct braid_watch, link);
    braid__list_remove(&w->link);
    w->done(w, t);
  }
  braid__wait_put(t);
  next = braid__scope_member_done(S, s->outer, t);
  braid__scope_release(s);
  braid__task_unanchor(S, E, t);
  lua_pop(S, 1);
  return next;
}

void braid__task_finish (struct braid_task *t) {
  do {
    braid__task_push(t->E->S, t);
    t = task_finish(t);
  } while (t != NULL);
}

/* The body's coroutine returned (nres results on it) or raised: keep the
** outcome in user value 1, recycle the coroutine, and finish now or once
** the members of the task's scope have ended. The task object is on S's
** top (popped). */
void braid__task_body_done (braid_engine_t *E, lua_State *S,
                            struct braid_task *t, int status, int nres) {
  lua_State *co = t->co;
  struct braid_scope *s = &t->scope;
  int i;
  if (t->raised) {   /* task_main_k returned the error */
    status = t->raised;
    t->raised = 0;
  }
  if (status == LUA_OK) {
    t->nres = nres;
    if (nres == 0) lua_pushnil(S);
    else if (nres == 1) lua_xmove(co, S, 1);
    else {   /* one at a time: S's stack may be smaller than co's */
      lua_createtable(S, nres, 0);
      for (i = nres; i >= 1; i--) {
        lua_xmove(co, S, 1);
        lua_rawseti(S, -2, i);
      }
    }
  } else {
    lua_xmove(co, S, 1);
    s->body_failed = 1;
    if (status != LUA_ERRRUN || !braid__is_cancel(S, -1)) {
      if (E->trace) braid__trace_fail(t, S, -1);
      braid__error_record(S, -1, co, 0, t);   /* co: frames if it raised */
      braid__scope_fail(S, s, -2, -1);
      lua_pop(S, 1);
    } else if (t->abandoned) {   /* stopped in Lua code past its grace */
      lua_pop(S, 1);
      braid__abandon_push(S, t);
    }
  }
  lua_setiuservalue(S, -2, 1);
  t->co = NULL;
  pool_put(E, S, t, co);
  if (s->pending > 0) {   /* wait in C for the members: no coroutine needed */
    lua_pop(S, 1);
    braid__task_wait(t, t->w, NULL, "its members");
    t->status = TASK_SUSPENDED;
    s->joining = 1;
    return;
  }
  if ((t = task_finish(t)) != NULL)   /* the task object is still on S */
    braid__task_finish(t);
}

/* The error of the ended task at idx is handed to code: its record goes
** with it, to the running task (NULL outside tasks). [-0, +0, -] */
static void task_hand_error (lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 4);
  braid__error_hand(L, ((struct braid_task *) lua_touserdata(L, idx))->E
                         ->current);
}

/* Pushes the results of the ended task whose object is at idx: all of them,
** or exactly one value (the first, nil included); raises its error instead
** when it did not end ok. [-0, +n, v] */
int braid__task_results (lua_State *L, int idx, int all) {
  struct braid_task *t = (struct braid_task *) lua_touserdata(L, idx);
  int i, n = t->nres;
  idx = lua_absindex(L, idx);
  if (t->status != TASK_OK) {
    task_hand_error(L, idx);
    lua_getiuservalue(L, idx, 1);
    return lua_error(L);
  }
  lua_getiuservalue(L, idx, 1);
  if (n == 0 && all) {
    lua_pop(L, 1);
    return 0;
  }
  if (n <= 1) return 1;
  if (!all) {
    lua_rawgeti(L, -1, 1);
    lua_remove(L, -2);
    return 1;
  }
  luaL_checkstack(L, n, "too many results");
  for (i = 1; i <= n; i++) lua_rawgeti(L, -i, i);
  lua_remove(L, -n - 1);
  return n;
}

static void await_done (struct braid_watch *w, struct braid_task *target) {
  (void) target;
  braid__task_wake(WAIT_TASK(container_of(w, struct braid_wait, watch)), WAKE_OK);
}

static void await_cancel (struct braid_wait *w) {
  braid__list_remove(&w->watch.link);
}

static int await_k (lua_State *L, int status, lua_KContext ctx) {
  (void) status;
  braid__task_resumed(L, (struct braid_task *) ctx);
  return braid__task_results(L, 1, 1);
}

/* task:await() -> ...: the task's results, or its error raised. */
static int l_task_await (lua_State *L) {
  struct braid_task *target = braid__task_check(L, 1, "task:await");
  struct braid_task *t = braid__task_current(L, "task:await");
  lua_settop(L, 1);
  braid__task_checkcancel(L, t);
  if (TASK_DONE(target)) return braid__task_results(L, 1, 1);
  if (t == target)
    braid_usageerror(L, "task:await: a task cannot await itself");
  braid__task_checkyield(L, t, "task:await");
  braid__task_wait(t, t->w, await_cancel, "await");
  if (t->E->trace) braid__trace_label(t->E, "await task %llu",
                                        (unsigned long long) target->id);
  t->w->target = target;
  t->w->watch.done = await_done;
  braid__list_push(&target->watchers, &t->w->watch.link);
  return braid__task_yield(L, t, (lua_KContext) t, await_k);
}

/* task:cancel([reason]) -> boolean: false when the task had already ended. */
static int l_task_cancel (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1, "task:cancel");
  if (TASK_DONE(t)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  braid__task_cancel(t, L, lua_isnoneornil(L, 2) ? 0 : 2);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_task_status (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1, "task:status");
  lua_pushstring(L, braid__status_names[t->status]);
  return 1;
}

static int l_task_done (lua_State *L) {
  lua_pushboolean(L, TASK_DONE(braid__task_check(L, 1, "task:done")));
  return 1;
}

/* task:result() -> true, ... | false, err, for an ended task. */
static int l_task_result (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1, "task:result");
  int n;
  if (!TASK_DONE(t))
    braid_usageerror(L, "task:result: task %I has not ended (it is %s); "
                       "use task:await()", (lua_Integer) t->id, braid__status_names[t->status]);
  lua_settop(L, 1);
  if (t->status != TASK_OK) {
    task_hand_error(L, 1);
    lua_pushboolean(L, 0);
    lua_getiuservalue(L, 1, 1);
    return 2;
  }
  n = braid__task_results(L, 1, 1);
  lua_pushboolean(L, 1);
  lua_replace(L, 1);
  return n + 1;
}

/* Methods (the table in the upvalue), then the fields id, name, parent. */
static int l_task_index (lua_State *L) {
  struct braid_task *t;
  const char *k;
  lua_settop(L, 2);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL) return 1;
  lua_pop(L, 1);
  t = braid__task_check(L, 1, "task");
  k = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : NULL;
  if (k == NULL) lua_pushnil(L);
  else if (strcmp(k, "id") == 0) lua_pushinteger(L, (lua_Integer) t->id);
  else if (strcmp(k, "name") == 0) lua_pushstring(L, braid__task_name(L, t, 1));
  else if (strcmp(k, "parent") == 0) {
    struct braid_scope *p = t->scope.outer;
    if (p && p->task && p->task->ref != LUA_NOREF) braid__task_push(L, p->task);
    else lua_pushnil(L);
  } else {
    static const char *const fields[] = {"id", "name", "parent", NULL};
    return braid__index_missing(L, TASK_MT, fields);
  }
  return 1;
}

static int l_task_newindex (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1, "task");
  if (lua_type(L, 2) != LUA_TSTRING || strcmp(lua_tostring(L, 2), "name"))
    braid_usageerror(L, "task: only 'name' can be set on a task");
  if (!lua_isstring(L, 3))
    braid_usageerror(L, "task.name: string expected, got %s",
                     luaL_typename(L, 3));
  {
    size_t len;
    const char *s = lua_tolstring(L, 3, &len);   /* a number: its string */
    /* reports, dumps and traces carry names as C strings */
    if (strlen(s) != len)
      braid_usageerror(L, "task.name: a name with a zero byte inside");
  }
  lua_settop(L, 3);
  if (t->E->trace) braid__trace_rename(t, L, 3);
  lua_setiuservalue(L, 1, 2);
  return 0;
}

/* <task 3 "name" suspended in sleep 1.2s>: what it waits on, and for how
** long, while it waits. */
static int l_task_tostring (lua_State *L) {
  struct braid_task *t = braid__task_check(L, 1, "tostring");
  const char *name = braid__task_name(L, t, 1);
  if (t->waiting && !TASK_DONE(t) && t->E->running) {
    char secs[32];
    snprintf(secs, sizeof secs, "%.1fs",
             (braid__now_ms(t->E) - t->w->since) / 1000.0);
    lua_pushfstring(L, "<task %I \"%s\" %s in %s %s>", (lua_Integer) t->id, name,
                    braid__status_names[t->status], t->w->what, secs);
  } else {
    lua_pushfstring(L, "<task %I \"%s\" %s>", (lua_Integer) t->id, name,
                    braid__status_names[t->status]);
  }
  return 1;
}

/* braid.spawn(fn, ...) -> task, a child of the caller's innermost scope
** (a REPL entry's top-level spawns go to the session: braid__spawn_scope). */
static int l_task_spawn (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "braid.spawn");
  struct braid_scope *into = braid__spawn_scope(t);
  if (!braid__is_callable(L, 1))
    braid_argerror(L, 1, "braid.spawn", "function expected");
  braid__task_spawn(L, into, 1, lua_gettop(L) - 1);
  return 1;
}

/* The scope braid.spawn in t starts children in: its innermost, except at
** the top level of the REPL's running entry, whose children belong to the
** session (the root task's scope) so that they outlive the entry. */
struct braid_scope *braid__spawn_scope (struct braid_task *t) {
  braid_engine_t *E = t->E;
  struct braid_scope *in = braid__task_inner(t);
  if (t == E->entry && in == &t->scope && E->root)
    return &E->root->scope;
  return in;
}

braid_task_t *braid__spawn (lua_State *L, struct braid_scope *into, int fidx,
                            int nargs) {
  return braid__task_spawn(L, into, fidx, nargs);
}

void braid__task_watch (struct braid_task *t, struct braid_watch *w) {
  braid__list_push(&t->watchers, &w->link);
}

uint64_t braid__task_id (struct braid_task *t) {
  return t->id;
}

int braid__task_cancelled (struct braid_task *t) {
  return t->scope.cancelled;
}

/* braid.current() -> the running task, or nil outside tasks. */
static int l_task_current (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  if (E->current) braid__task_push(L, E->current);
  else lua_pushnil(L);
  return 1;
}

/* The continuation of waits that return nothing (sleep, yield, acquire,
** event wait): raise the cancellation if that is what woke the task. */
static int l_task_yield (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "braid.yield");
  braid__task_checkyield(L, t, "braid.yield");
  braid__task_checkcancel(L, t);
  braid__task_wake(t, WAKE_OK);
  return braid__task_yield(L, t, (lua_KContext) t, braid__task_k0);
}


void braid__open_task (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"await", l_task_await},
    {"cancel", l_task_cancel},
    {"status", l_task_status},
    {"done", l_task_done},
    {"result", l_task_result},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__newindex", l_task_newindex},
    {"__tostring", l_task_tostring},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"spawn", l_task_spawn},
    {"current", l_task_current},
    {"yield", l_task_yield},
    {NULL, NULL}
  };
  braid_engine_t *E = braid_engine(L);
  braid__class(L, TASK_MT, metamethods, methods, l_task_index);
  lua_pop(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->tasks_ref);
  luaL_getmetatable(L, TASK_MT);
  lua_rawseti(L, -2, 0);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}

