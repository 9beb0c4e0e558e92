/*
** group.c: braid.gather, braid.race, braid.any and braid.map.
**
** A group is a scope (kind SCOPE_GROUP) whose members are the tasks it
** spawns from functions plus the existing tasks it is given ("adopted").
** Each member has a watcher that judges its outcome by the group's mode, so
** fail-fast, races, deadlines and limits are all decided here, in C, in the
** order members end. The calling task waits in braid__scope_join until every
** member has ended, then the group's outcome is raised or returned.
**
** Invariants: the group userdata (with its member slots) sits on the
** caller's stack for the whole call; a slot is taken by a member while its
** task is watched (m->task) and is free otherwise, chained from g->free, so
** a limited map has only `limit` slots. The registry table at list_ref
** holds the member functions (map: items and fn), then a member's task
** object; gather moves an ended member's result to list.results and drops
** its task (not one the group cancelled, when not settling: the group
** raises, and a fail-fast that ends thousands pays nothing per member),
** race and any keep their ended tasks readable until the close.
*/
#include <limits.h>
#include <string.h>
#include "core.h"

enum { GROUP_GATHER, GROUP_RACE, GROUP_ANY };

struct group_member {
  struct braid_watch watch;
  struct braid_group *g;
  struct braid_task *task;    /* NULL while the slot is free */
  int index, adopted, next;   /* next: the next free slot, while free */
};

struct braid_group {
  struct braid_scope scope;
  int mode, settle, limit, packed, map;
  int n, next, running, winner, decided, ok;
  int slots, free;             /* member slots, the first free one */
  int list_ref;                /* {members...}; map: items, fn; results */
  int line;                    /* where the group was called (user value 1) */
  void *progress;              /* {progress = ...}: anchored in the list */
  struct group_member m[1];
};

static const char *const mode_names[] = {"gather", "race", "any"};

static void group_start_more (lua_State *L, struct braid_group *g);

/* Pushes the error and the failure record of the ended task at idx (its
** object: an ended task has no t->ref to push it by). [-0, +2, -] */
static void push_failure (lua_State *L, int idx) {
  lua_getiuservalue(L, idx, 1);
  lua_getiuservalue(L, idx, 4);
}

/* settle mode's {ok = false, error = e} for the value e on top, which it
** replaces. [-1, +1, m] */
static void push_failed (lua_State *L) {
  lua_createtable(L, 0, 2);
  lua_insert(L, -2);
  lua_setfield(L, -2, "error");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "ok");
}

/* settle mode's {ok = true, value = v1, n = n, v1, ..., vn} for the task
** object at idx that ended ok. [-0, +1, m] */
static void push_ok (lua_State *L, int idx) {
  int k, n, o;
  lua_createtable(L, 0, 3);
  o = lua_gettop(L);
  n = braid__task_results(L, idx, 1);
  for (k = n; k >= 1; k--) lua_rawseti(L, o, k);
  lua_pushboolean(L, 1);
  lua_setfield(L, o, "ok");
  lua_rawgeti(L, o, 1);
  lua_setfield(L, o, "value");
  lua_pushinteger(L, n);
  lua_setfield(L, o, "n");
}

/* Gather keeps the result of the ended member i, whose task object is at
** list + 1, in list.results (its outcome in settle mode) and lets the task
** go, so that a limited map holds only the tasks that run. [-0, +0, m] */
static void member_keep (lua_State *L, struct braid_group *g, int list,
                         int i) {
  struct braid_task *t = (struct braid_task *) lua_touserdata(L, list + 1);
  /* Not settling, a member that did not end ok makes the group raise: it
  ** has no result to keep (a fail-fast cancels thousands at once). */
  if (g->settle || t->status == TASK_OK) {
    lua_getfield(L, list, "results");
    if (!g->settle) braid__task_results(L, list + 1, 0);
    else if (t->status == TASK_OK) push_ok(L, list + 1);
    else if (t->status == TASK_FAILED || !g->scope.deadline_fired) {
      lua_getiuservalue(L, list + 1, 1);
      push_failed(L);
    } else {
      lua_pushnil(L);   /* cut off by the deadline: group_close_k says so */
    }
    lua_rawseti(L, -2, i);
    lua_pop(L, 1);
  }
  lua_pushnil(L);
  lua_rawseti(L, list, i);
}

/* Judges member m, whose task t has ended, by the group's mode; frees its
** slot. L is E->S in scheduler context, or the calling task's for a task
** that had ended before the group adopted it (early). */
static void member_judge (lua_State *L, struct group_member *m,
                          struct braid_task *t, int early) {
  struct braid_group *g = m->g;
  int ok = t->status == TASK_OK, list = lua_gettop(L) + 1;
  /* A member cancelled by anything but this group owes a value: failed. */
  int failed = !ok && (t->status == TASK_FAILED || !g->scope.cancelled);
  int adopted = m->adopted, i = m->index;
  g->running -= !adopted;
  g->ok += ok;
  m->task = NULL;
  m->next = g->free;
  g->free = (int) (m - g->m);
  if (g->progress)   /* a member cancelled by the group is not counted */
    braid__progress()->update(g->progress, g->running, ok, failed);
  if (!ok && !failed && !g->settle) {   /* cancelled by the group: nothing */
    if (adopted) braid__scope_left(&g->scope);   /* to judge or keep (a */
    return;                                      /* fail-fast ends 10k) */
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->list_ref);
  lua_rawgeti(L, list, i);
  if (g->mode == GROUP_GATHER) {
    if (failed && !g->settle) {
      push_failure(L, list + 1);
      braid__scope_fail(L, &g->scope, -2, -1);
    }
    member_keep(L, g, list, i);
  } else if (!g->decided && (g->mode == GROUP_RACE ? ok || failed : ok)) {
    g->decided = 1;
    g->winner = i;
    if (failed) {
      push_failure(L, list + 1);
      braid__scope_fail(L, &g->scope, -2, -1);
    } else {
      braid__scope_cancel(&g->scope, &g->scope);
    }
  } else if (t->status == TASK_FAILED && g->decided && !early) {
    /* (an early one's error was raised or reported where it failed) */
    push_failure(L, list + 1);
    braid__error_report(L, -2, -1, "braid: error while cancelling: ");
  }
  lua_settop(L, list - 1);
  if (adopted) braid__scope_left(&g->scope);
  group_start_more(L, g);
}

static void member_done (struct braid_watch *w, struct braid_task *t) {
  struct group_member *m = container_of(w, struct group_member, watch);
  member_judge(m->g->scope.E->S, m, t, 0);
}

/* Watches the task object at the stack top as member i (1-based) in a free
** slot. */
static void member_watch (lua_State *L, struct braid_group *g, int i,
                          int adopted) {
  struct group_member *m = &g->m[g->free];
  g->free = m->next;
  m->task = (struct braid_task *) lua_touserdata(L, -1);
  m->g = g;
  m->index = i;
  m->adopted = adopted;
  m->watch.done = member_done;
  braid__list_init(&m->watch.link);
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->list_ref);
  lua_pushvalue(L, -2);
  lua_rawseti(L, -2, i);
  lua_pop(L, 1);
  if (TASK_DONE(m->task)) {   /* adopted, already over */
    g->scope.pending++;
    member_judge(L, m, m->task, 1);
    return;
  }
  if (adopted) g->scope.pending++;
  else g->running++;
  braid__list_push(&m->task->watchers, &m->watch.link);
  /* An ended task before it in the list decided the group, whose cancel
  ** (braid__group_on_cancel) reached only the members adopted by then. */
  if (adopted && g->scope.cancelled) braid__task_cancel(m->task, NULL, 0);
}

/* Starts member functions while the limit allows and nothing decided. */
static void group_start_more (lua_State *L, struct braid_group *g) {
  while (g->next < g->n && !g->scope.cancelled &&
         (g->limit == 0 || g->running < g->limit)) {
    int i = ++g->next, list, nargs = 0;
    struct braid_task *t;
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->list_ref);
    list = lua_gettop(L);
    if (g->map) {
      lua_getfield(L, list, "fn");
      lua_getfield(L, list, "items");
      lua_rawgeti(L, -1, i);   /* raw: no script runs in scheduler context */
      lua_replace(L, -2);
      lua_pushinteger(L, i);
      nargs = 2;
    } else if (lua_rawgeti(L, list, i) == LUA_TNIL ||
               braid__test_tagged(L, -1, &braid__task_type)) {
      lua_settop(L, list - 1);   /* adopted (nil: gather kept its result) */
      continue;
    }
    t = braid__task_spawn(L, &g->scope, list + 1, nargs);
    t->line = g->line;   /* members were spawned where the group was called */
    lua_getfield(L, list, "site");
    lua_setiuservalue(L, -2, 3);
    member_watch(L, g, i, 0);
    if (g->progress) braid__progress()->update(g->progress, g->running, 0, 0);
    lua_settop(L, list - 1);
  }
}

void braid__group_on_cancel (struct braid_scope *s) {
  struct braid_group *g = (struct braid_group *) s;
  int i;
  for (i = 0; i < g->slots; i++) {
    struct braid_task *t = g->m[i].task;
    if (t && g->m[i].adopted) braid__task_cancel(t, NULL, 0);
  }
}

void braid__group_release (struct braid_scope *s) {
  struct braid_group *g = (struct braid_group *) s;
  int i;
  if (g->progress) braid__progress()->end(g->progress);
  g->progress = NULL;
  for (i = 0; i < g->slots; i++)
    if (g->m[i].task) braid__list_remove(&g->m[i].watch.link);
  luaL_unref(s->E->S, LUA_REGISTRYINDEX, g->list_ref);
  g->list_ref = LUA_NOREF;
}

/* Did the deadline leave a member without its value? (One that ended in
** the same turn as the deadline keeps its result.) */
static int group_cut_off (struct braid_group *g) {
  return g->mode == GROUP_GATHER ? g->ok < g->n : !g->winner;
}

/* How many members the deadline cut off, of a group whose members have
** all ended: gather's were all ok but these (a failure raises first);
** settling, those without an outcome in list.results (cut off, or never
** started under a limit); race's none ended; any's (it keeps its tasks)
** are those that neither succeeded nor failed, or never started (limit).
** list: the member list. */
static int group_cut_count (lua_State *L, struct braid_group *g, int list) {
  int i, cut = 0, gather = g->mode == GROUP_GATHER;
  if (gather && !g->settle) return g->n - g->ok;
  if (g->mode == GROUP_RACE) return g->n;
  if (gather) lua_getfield(L, list, "results");
  for (i = 1; i <= g->n; i++) {   /* any's: a function, never started */
    struct braid_task *m;
    if (gather) {
      cut += lua_rawgeti(L, -1, i) == LUA_TNIL;
    } else {
      lua_rawgeti(L, list, i);
      m = braid__test_tagged(L, -1, &braid__task_type) ?
          (struct braid_task *) lua_touserdata(L, -1) : NULL;
      cut += m == NULL || (m->status != TASK_OK && m->status != TASK_FAILED);
    }
    lua_pop(L, 1);
  }
  if (gather) lua_pop(L, 1);
  return cut;
}

/* "braid.gather timed out after 0.05 s (1 of 2 unfinished)", as
** braid.timeout says it; ns: the timeout as given. */
static int group_timeout_error (lua_State *L, struct braid_group *g,
                                uint64_t ns, int cut) {
  char buf[32];
  snprintf(buf, sizeof buf, "%g", (double) ns / 1e9);
  return braid_pusherror(L, "timeout", NULL, "braid.%s timed out after %s s "
                         "(%d of %d unfinished)",
                         g->map ? "map" : mode_names[g->mode], buf, cut, g->n);
}

/* Every member has ended: return or raise the group's outcome. */
static int group_close_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_group *g = (struct braid_group *) ctx;
  struct braid_scope *s = &g->scope;
  struct braid_task *t = s->task;
  int i, list, n = g->n;
  uint64_t timeout_ns = s->more ? s->more->timeout_ns : 0;   /* released below */
  (void) status;
  t->wake = WAKE_NONE;
  s->joining = 0;
  braid__task_set_inner(t, s->outer);
  lua_rawgeti(L, LUA_REGISTRYINDEX, g->list_ref);
  list = lua_gettop(L);
  if (SCOPE_REF(s, error_ref) != LUA_NOREF) return braid__scope_raise(L, s);
  /* Left once, before anything that can raise (a results table, a full
  ** stack): a group raising while still linked in its outer scope would
  ** leave a collectable userdata there. Its fields stay readable: the
  ** userdata is on this frame's stack. */
  braid__scope_release(s);
  if (s->cancelled && s->cause != s) {
    braid__push_cancel(L, s->cause);
    return lua_error(L);
  }
  if (s->deadline_fired && !g->settle && group_cut_off(g)) {
    group_timeout_error(L, g, timeout_ns, group_cut_count(L, g, list));
    return lua_error(L);
  }
  if (g->mode == GROUP_RACE) {
    if (!g->winner) return 0;
    lua_rawgeti(L, list, g->winner);
    return braid__task_results(L, lua_gettop(L), 1);
  }
  if (g->mode == GROUP_ANY) {
    if (g->winner) {
      lua_rawgeti(L, list, g->winner);
      return braid__task_results(L, lua_gettop(L), 1);
    }
    braid_pusherror(L, "all_failed", NULL, "braid.any: all %d failed", n);
    lua_createtable(L, n, 0);
    lua_createtable(L, n, 0);   /* their failure records, for the report */
    for (i = 1; i <= n; i++) {
      lua_rawgeti(L, list, i);
      lua_getiuservalue(L, -1, 1);
      lua_rawseti(L, -4, i);
      if (lua_getiuservalue(L, -1, 4) != LUA_TTABLE) {
        lua_pop(L, 1);
        lua_pushboolean(L, 0);
      }
      lua_rawseti(L, -3, i);
      lua_pop(L, 1);
    }
    lua_insert(L, -2);
    lua_pushinteger(L, n);   /* as table.pack: a nil error leaves a hole */
    lua_setfield(L, -2, "n");
    lua_setfield(L, -3, "errors");
    braid__error_causes(L, -2, t);
    return lua_error(L);
  }
  lua_getfield(L, list, "results");
  if (g->settle) {   /* the members cut off, or not run: the timeout */
    int cut = group_cut_count(L, g, list);
    if (cut > 0) group_timeout_error(L, g, timeout_ns, cut);
    for (i = 1; cut > 0 && i <= n; i++) {
      if (lua_rawgeti(L, list + 1, i) == LUA_TNIL) {
        lua_pushvalue(L, list + 2);
        push_failed(L);
        lua_rawseti(L, list + 1, i);
      }
      lua_pop(L, 1);
    }
  }
  lua_settop(L, list + 1);
  if (g->packed) {   /* map: the results table itself */
    lua_pushinteger(L, n);
    lua_setfield(L, -2, "n");
    return 1;
  }
  luaL_checkstack(L, n, "too many results");
  for (i = 1; i <= n; i++) lua_rawgeti(L, list + 1, i);
  return n;
}

/* race and any take group_options + 1: they have no settle mode. */
static const char *const group_options[] = {
  "settle", "timeout", "limit", "grace", "progress", NULL
};

/* Watches the adopted tasks, then starts member functions: [g]. */
static int group_start_p (lua_State *L) {
  struct braid_group *g = (struct braid_group *) lua_touserdata(L, 1);
  int i;
  g->next = g->n;   /* none starts while adopting: the list holds its task */
  for (i = 1; !g->map && i <= g->n; i++) {   /* adopt the tasks first */
    lua_rawgeti(L, LUA_REGISTRYINDEX, g->list_ref);
    lua_rawgeti(L, -1, i);
    if (braid__test_tagged(L, -1, &braid__task_type)) member_watch(L, g, i, 1);
    lua_pop(L, 2);
  }
  g->next = 0;
  group_start_more(L, g);
  return 0;
}

/* {progress = true | label}, or braid --progress unless it says false:
** the group draws a progress line (prim.h), anchored in the member list
** at the stack top, ended when the group's scope is released. */
static void group_progress (lua_State *L, struct braid_group *g, int opts,
                            const char *fname) {
  const struct braid_progress_ops *ops = braid__progress();
  int want = braid__progress_by_default(), list = lua_gettop(L);
  const char *label = fname;
  if (opts && lua_getfield(L, opts, "progress") != LUA_TNIL) {
    want = lua_toboolean(L, -1);
    if (lua_type(L, -1) == LUA_TSTRING) label = lua_tostring(L, -1);
  }
  if (want && ops) {
    g->progress = ops->start(L, label, g->n);
    lua_setfield(L, list, "progress");
  }
  lua_settop(L, list);
}

/* Common body of the group functions. Members are at first..first+n-1 (or,
** for map, the list at 1 and the function at 2); options at opts (0: none). */
static int group_run (lua_State *L, int mode, int first, int n, int opts,
                      int map, const char *fname) {
  struct braid_task *t = braid__task_current(L, fname);
  struct braid_group *g;
  int i, slots, limit = 0;
  uint64_t timeout = BRAID_NEVER, grace = braid__scope_grace(braid__task_inner(t));
  /* Every option is checked before the group's scope is pushed: raising
  ** after that would leave braid__task_inner(t) pointing into a collectable userdata. */
  if (opts) {
    /* The Promise.all habit: a list of functions where the options go. */
    if (!map && lua_istable(L, opts)) {
      int listed = lua_rawgeti(L, opts, 1) != LUA_TNIL;
      lua_pop(L, 1);
      if (listed)
        braid_usageerror(L, "bad argument #%d to '%s' (%s takes functions "
                            "as arguments, not a list: %s(table.unpack("
                            "list))%s)", opts, fname, fname, fname,
                            mode == GROUP_GATHER ? ", or braid.map(list, "
                            "function(f) return f() end)" : "");
    }
    braid__check_options(L, opts, fname,
                         group_options + (mode != GROUP_GATHER));
    grace = braid__opt_seconds(L, opts, "grace", grace, fname);
    timeout = braid__opt_seconds(L, opts, "timeout", BRAID_NEVER, fname);
    lua_getfield(L, opts, "limit");
    if (!lua_isnil(L, -1)) {
      /* as Lua's own integer arguments: 2.0 and "2" too, not 1.5 */
      lua_Integer li = lua_tointeger(L, -1);
      if (li < 1)
        braid_usageerror(L, "bad option 'limit' to '%s' (positive integer "
                           "expected)", fname);
      limit = li > INT_MAX ? INT_MAX : (int) li;   /* no silent wrap-around */
    }
    lua_pop(L, 1);
    lua_getfield(L, opts, "progress");   /* group_progress reads it */
    if (!lua_isnil(L, -1) && !lua_isboolean(L, -1) &&
        lua_type(L, -1) != LUA_TSTRING)
      braid_usageerror(L, "bad option 'progress' to '%s' (boolean or label "
                          "string expected, got %s)", fname,
                       braid__describe(L, -1));
    lua_pop(L, 1);
  }
  for (i = 0; !map && i < n; i++) {
    if (braid__test_tagged(L, first + i, &braid__task_type)) {
      if (lua_touserdata(L, first + i) == (void *) t)
        braid_usageerror(L, "%s: a task cannot wait for itself", fname);
    } else if (!braid__is_callable(L, first + i)) {
      /* trailing_options left a table with a metatable among the members */
      int mt = lua_istable(L, first + i) && i == n - 1;
      braid_argerror(L, first + i, fname, lua_pushfstring(L, "function or "
                     "task expected, got %s", mt ? "a table with a metatable: "
                     "options are a plain table without one" :
                     luaL_typename(L, first + i)));
    }
  }
  braid__task_checkyield(L, t, fname);
  braid__task_checkcancel(L, t);
  /* Everything that can fail (allocate, raise) comes before the scope is
  ** entered: afterwards the group is only left through its join. A map
  ** adopts no task: at most limit of its members are watched at once. */
  slots = map && limit && limit < n ? limit : n;
  g = braid__scope_new(L, sizeof *g + (slots > 0 ? slots - 1 : 0) *
                          sizeof g->m[0]);
  g->mode = mode;
  g->map = map;
  g->packed = map;
  g->n = n;
  g->limit = limit;
  g->slots = slots;
  for (i = 0; i < slots; i++) g->m[i].next = i + 1;
  if (opts) {
    lua_getfield(L, opts, "settle");
    g->settle = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  lua_createtable(L, map ? 0 : n, 5);   /* a map's tasks come and go */
  if (mode == GROUP_GATHER) {
    lua_createtable(L, n, 1);
    lua_setfield(L, -2, "results");
  }
  group_progress(L, g, opts, fname);
  if (map) {
    lua_pushvalue(L, 1);
    lua_setfield(L, -2, "items");
    lua_pushvalue(L, 2);
    lua_setfield(L, -2, "fn");
  } else {
    for (i = 1; i <= n; i++) {
      lua_pushvalue(L, first + i - 1);
      lua_rawseti(L, -2, i);
    }
  }
  if ((g->line = braid__site_push(L, 1)) >= 0)   /* the script's line */
    lua_setfield(L, -2, "site");
  g->list_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  /* the deadline's struct first: a grace period after it cannot fail */
  if ((timeout != BRAID_NEVER &&
       braid__scope_deadline_ready(t->E, &g->scope) != 0) ||
      (opts && grace != braid__scope_grace(braid__task_inner(t)) &&
       braid__scope_grace_ready(&g->scope, grace) != 0)) {
    luaL_unref(L, LUA_REGISTRYINDEX, g->list_ref);
    braid_error(L, "memory", NULL, "%s: not enough memory", fname);
  }
  braid__scope_enter(t, &g->scope, SCOPE_GROUP);
  if (timeout != BRAID_NEVER) {   /* its struct is ready: more exists */
    g->scope.more->timeout_ns = timeout;
    braid__scope_deadline(&g->scope, timeout);
  }
  /* Adopting and spawning the members allocate: a failure there (out of
  ** memory) fails the group, which cancels the members already started
  ** and raises it once they have ended. */
  lua_pushcfunction(L, group_start_p);
  lua_pushlightuserdata(L, g);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    braid__scope_fail(L, &g->scope, -1, 0);
    lua_pop(L, 1);
  }
  if (t->E->trace && g->scope.pending)   /* it will wait */
    braid__trace_label(t->E, "%s of %d", fname, n);
  if (braid__scope_join(L, &g->scope, group_close_k) == 0)
    return group_close_k(L, LUA_OK, (lua_KContext) g);
  return 0;
}

/* Splits trailing options from the varargs: returns their index or 0. */
static int trailing_options (lua_State *L, int *n) {
  *n = lua_gettop(L);
  if (*n > 0 && lua_type(L, *n) == LUA_TTABLE && !lua_getmetatable(L, *n))
    return (*n)--;
  if (*n > 0 && lua_type(L, *n) == LUA_TTABLE) lua_pop(L, 1);
  return 0;
}

/* braid.gather(f1, f2, ..., [opts]) -> r1, r2, ... */
static int l_group_gather (lua_State *L) {
  int n, opts = trailing_options(L, &n);
  return group_run(L, GROUP_GATHER, 1, n, opts, 0, "braid.gather");
}

/* braid.race(f1, f2, ..., [opts]) -> ...: the first member to end decides. */
static int l_group_race (lua_State *L) {
  int n, opts = trailing_options(L, &n);
  return group_run(L, GROUP_RACE, 1, n, opts, 0, "braid.race");
}

/* braid.any(f1, f2, ..., [opts]) -> ...: the first member to succeed. */
static int l_group_any (lua_State *L) {
  int n, opts = trailing_options(L, &n);
  return group_run(L, GROUP_ANY, 1, n, opts, 0, "braid.any");
}

/* braid.map(list, fn, [opts]) -> results: fn(item, i) for every item. */
static int l_group_map (lua_State *L) {
  lua_Integer n;
  braid__check_type(L, 1, LUA_TTABLE, "braid.map");
  if (!braid__is_callable(L, 2))
    braid_argerror(L, 2, "braid.map", "function expected");
  lua_settop(L, 3);
  n = (lua_Integer) lua_rawlen(L, 1);   /* raw, as group_start_more reads */
  if (n < 0 || n > INT_MAX)
    braid_argerror(L, 1, "braid.map", "list expected (its length is out of range)");
  return group_run(L, GROUP_GATHER, 0, (int) n, lua_isnil(L, 3) ? 0 : 3, 1,
                   "braid.map");
}

void braid__open_group (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"gather", l_group_gather},
    {"race", l_group_race},
    {"any", l_group_any},
    {"map", l_group_map},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}
