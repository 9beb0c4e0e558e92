/*
** scope.c: scopes, cancellation, deadlines, fail-fast and grace periods;
** braid.scope, braid.shield and braid.timeout.
**
** Invariants:
** - Scopes form one tree: a scope's subs are the scopes nested in it by its
**   own task and the task scopes of the tasks spawned into it. A scope ends
**   only after every member has ended (pending == 0).
** - `cancelled` is effective, not requested: braid__scope_cancel sets it on
**   the scope and on everything below it except shields, and a new scope
**   inherits it from its outer one, so a task checks one flag (its innermost
**   scope's) at every suspension point.
** - A scope's first error (error_ref) is raised unchanged when it ends; later
**   errors are reported and kept on the first's `suppressed` list. Its
**   failure record (record_ref, error.c) comes with it from the member or
**   body that failed, and is handed on with it.
** - Scopes other than task scopes live in userdata on their task's stack, so
**   their memory is the collector's; braid__scope_release is the one place
**   that stops their timers, unlinks them and drops their references.
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "core.h"

#define SCOPE_MT "braid.Scope"

/* The id of grace period ns among E's (1 up), or GRACE_WALK when E has
** GRACE_IDS - 1 others already. */
static unsigned short grace_intern (braid_engine_t *E, uint64_t ns) {
  unsigned i;
  for (i = 1; i <= E->ngraces; i++)
    if (E->graces[i] == ns) return (unsigned short) i;
  if (E->ngraces + 1 >= GRACE_IDS) return GRACE_WALK;
  E->graces[++E->ngraces] = ns;
  return (unsigned short) E->ngraces;
}

static void grace_cb (struct braid_timer *tm);

/* A member joins o after o's cancel: o's grace timer runs (from now, if
** no member was left to start it at the cancel), or a member waiting,
** shielded, in a scope cancelled empty was never abandoned. */
static void grace_late (struct braid_scope *o) {
  uint64_t grace = braid__scope_grace(o);
  if (grace == BRAID_NEVER || (o->more && o->more->grace.idx != 0)) return;
  braid__scope_more(o);
  if (o->more->cancel_ns == 0) o->more->cancel_ns = uv_hrtime();
  braid_timer_start(o->E, &o->more->grace, grace, grace_cb);
}

void braid__scope_init (struct braid_scope *s, braid_engine_t *E, int kind,
                        struct braid_task *t, struct braid_scope *outer) {
  s->E = E;   /* s is zeroed (a new userdata, a new task): `more` may be set */
  s->kind = (unsigned char) kind;
  s->task = t;
  s->outer = outer;
  braid__list_init(&s->subs);
  braid__list_init(&s->link);
  s->resources.prev = s->resources.next = &s->resources;
  if (s->own_grace && E->own_graces++ == 0) E->ngraces = 0;
  s->grace_id = s->own_grace ? grace_intern(E, s->more->grace_ns)
                             : outer ? outer->grace_id : 0;
  if (outer == NULL) return;
  braid__list_push(&outer->subs, &s->link);
  if (kind == SCOPE_TASK) outer->pending++;
  if (outer->cancelled && kind != SCOPE_SHIELD) {
    s->cancelled = 1;
    s->cause = outer->cause;
    if (kind == SCOPE_TASK) grace_late(outer);
  }
}

struct braid_scope *braid__scope_next (struct braid_scope *top,
                                       struct braid_scope *s, int *depth) {
  if (s->subs.next != &s->subs) {
    ++*depth;
    return container_of(s->subs.next, struct braid_scope, link);
  }
  for (; s != top; s = s->outer, --*depth)
    if (s->link.next != &s->outer->subs)
      return container_of(s->link.next, struct braid_scope, link);
  return NULL;
}

/* A scope's struct more (core.h), made when it first needs it; freed on
** release. A deadline's is taken before the scope is entered
** (braid__scope_deadline_ready), where running out can be raised in the
** calling task; elsewhere it is made where nothing can be refused (a
** cancel may come from any callback; a failure is kept in scheduler
** context), so it comes from braid__calloc_must (memory.c). */
static struct scope_more *more_init (struct braid_scope *s,
                                     struct scope_more *m) {
  m->s = s;
  m->reason_ref = m->error_ref = m->record_ref = m->cancel_ref = LUA_NOREF;
  s->more = m;
  return m;
}

/* The struct made where running out can be raised: -1 when it could not
** be. */
static int more_try (struct braid_scope *s) {
  struct scope_more *m;
  if (s->more) return 0;
  if ((m = braid__calloc(1, sizeof *m)) == NULL) return -1;
  more_init(s, m);
  return 0;
}

struct scope_more *braid__scope_more (struct braid_scope *s) {
  if (s->more) return s->more;
  return more_init(s, braid__calloc_must(s->E, 1, sizeof *s->more));
}

uint64_t braid__scope_grace (const struct braid_scope *s) {
  braid_engine_t *E = s->E;
  if (s->grace_id != GRACE_WALK)
    return s->grace_id ? E->graces[s->grace_id] : E->grace_ns;
  for (; s; s = s->outer)
    if (s->own_grace) return s->more->grace_ns;
  return E->grace_ns;
}

/* The end of the grace period of s, a member that starts after its outer
** scope was cancelled: from that cancel when it was recorded. */
uint64_t braid__scope_grace_end (const struct braid_scope *s) {
  const struct braid_scope *o = s->outer;
  uint64_t from = o && o->cancelled && o->more && o->more->cancel_ns ?
                  o->more->cancel_ns : uv_hrtime();
  return from + braid__scope_grace(s);
}

/* Gives s, not entered yet, a grace period of its own: 0, or -1 out of
** memory (raised by the caller, before anything nests in s). */
int braid__scope_grace_ready (struct braid_scope *s, uint64_t ns) {
  if (more_try(s) != 0) return -1;
  s->more->grace_ns = ns;
  s->own_grace = 1;   /* its grace_id: braid__scope_init */
  return 0;
}

/* Keeps the value at idx as the reason a cancel of s gives. */
void braid__scope_set_reason (lua_State *L, struct braid_scope *s, int idx) {
  if (SCOPE_REF(s, reason_ref) != LUA_NOREF) return;
  braid__scope_more(s);
  lua_pushvalue(L, idx);
  s->more->reason_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Readies s (not entered yet) for a deadline: its timers and a slot in the
** timer heap, so that arming it cannot fail. 0, or -1 out of memory. */
int braid__scope_deadline_ready (braid_engine_t *E, struct braid_scope *s) {
  int made = s->more == NULL;
  if (more_try(s) != 0) return -1;
  if (braid__timer_reserve(E) == 0) return 0;
  if (made) {   /* s is never entered: nothing else will */
    free(s->more);
    s->more = NULL;
  }
  return -1;
}


/* Cancels s and everything below it that is not shielded, undoing the
** pending operation of every task whose innermost scope it reaches. */
/* Cancelling s itself, before its members: grace is s's grace period. */
static void cancel_enter (struct braid_scope *s, struct braid_scope *cause,
                          uint64_t grace) {
  struct braid_task *t = s->task;
  s->cancelled = 1;
  s->cause = cause;
  if (s->E->trace) braid__trace_cancel(s, cause);
  if (s->kind == SCOPE_TASK && t->w)   /* its grace runs from now */
    TASK_STARTED(t)->grace_end = uv_hrtime() + grace;
  if (t && braid__task_inner(t) == s && t->waiting && t->w->cancel &&
      t->wake == WAKE_NONE) {
    t->w->cancel(t->w);
    braid__task_wake(t, WAKE_CANCEL);
  }
  if (s->kind == SCOPE_GROUP) braid__group_on_cancel(s);
}

/* Once its members are cancelled: those still running get s's grace. */
static void cancel_leave (struct braid_scope *s, uint64_t grace) {
  if (s->pending > 0 && grace != BRAID_NEVER &&
      braid__scope_more(s)->grace.idx == 0) {
    s->more->cancel_ns = uv_hrtime();   /* for members that start later */
    braid_timer_start(s->E, &s->more->grace, grace, grace_cb);
  }
}

/* The member of s after `from` (NULL: the first) that a cancel reaches:
** not a shield, not cancelled already (its own members were then). */
static struct braid_scope *cancel_next (struct braid_scope *s,
                                        struct braid_list *from) {
  struct braid_list *n = from ? from->next : s->subs.next;
  for (; n != &s->subs; n = n->next) {
    struct braid_scope *sub = container_of(n, struct braid_scope, link);
    if (sub->kind != SCOPE_SHIELD && !sub->cancelled) return sub;
  }
  return NULL;
}

/* Cancels s and every scope nested in it but those behind a shield, each
** before its members and its grace timer after them. A walk, not
** recursion, carrying the grace period down (a member's is its outer's
** unless it has its own): a chain of 20000 nested tasks took 6 s to
** cancel, each level looking up its grace through all the levels above,
** and a deeper one would overflow the C stack. */
void braid__scope_cancel (struct braid_scope *s, struct braid_scope *cause) {
  struct braid_scope *top = s, *sub;
  uint64_t grace;
  if (s->cancelled) return;
  grace = braid__scope_grace(s);
  cancel_enter(s, cause, grace);
  for (;;) {
    while ((sub = cancel_next(s, NULL)) == NULL) {
      struct braid_scope *up = s->outer;
      cancel_leave(s, grace);
      if (s == top) return;
      if (s->own_grace) grace = braid__scope_grace(up);
      sub = cancel_next(up, &s->link);
      s = up;
      if (sub != NULL) break;
    }
    s = sub;
    if (s->own_grace) grace = s->more->grace_ns;
    cancel_enter(s, cause, grace);
  }
}

void braid__scope_each_task (struct braid_scope *s,
                             void (*fn)(struct braid_task *t, void *ud),
                             void *ud) {
  struct braid_list *n = s->subs.next;
  while (n != &s->subs) {
    struct braid_scope *sub = container_of(n, struct braid_scope, link);
    if (sub->kind == SCOPE_TASK && !TASK_DONE(sub->task)) {
      fn(sub->task, ud);
      if (n->next == n) {   /* it left the list: start again */
        n = s->subs.next;
        continue;
      }
    }
    n = n->next;
  }
}

/* The grace period of a cancelled scope ran out: abandon its members. The
** report names that grace period: a member of a scope nested in s may
** have one of its own (never, say) from an earlier cancel of its own. */
static int grace_abandon (lua_State *L) {
  struct braid_scope *s = (struct braid_scope *) lua_touserdata(L, 1);
  s->E->grace_expired = braid__scope_grace(s);
  braid__scope_each_task(s, braid__abandon_each, NULL);
  s->E->grace_expired = 0;
  return 0;
}

static void grace_cb (struct braid_timer *tm) {
  struct braid_scope *s = container_of(tm, struct scope_more, grace)->s;
  braid__engine_call(s->E, grace_abandon, s);
}

static void deadline_cb (struct braid_timer *tm) {
  struct scope_more *st = container_of(tm, struct scope_more, deadline);
  struct braid_scope *s = st->s;
  if (!s->cancelled) s->deadline_fired = 1;
  if (s->E->trace && !s->cancelled) braid__trace_timeout(s, st->timeout_ns);
  braid__scope_cancel(s, s);
}

/* Sets a deadline `ns` from now; 0 means the deadline has already passed. */
void braid__scope_deadline (struct braid_scope *s, uint64_t ns) {
  struct braid_timer *tm = &braid__scope_more(s)->deadline;
  tm->late = 1;
  if (ns == 0) deadline_cb(tm);
  else braid_timer_start(s->E, tm, ns, deadline_cb);
}

static void resource_link (struct braid_scope *s, braid_resource_t *r) {
  r->prev = s->resources.prev;
  r->next = &s->resources;
  s->resources.prev->next = r;
  s->resources.prev = r;
}

/* Where the running task makes things: its innermost task scope or
** braid.scope. timeout, shield and group scopes are bookkeeping within a
** call; what a call returns from inside them must outlive them. */
struct braid_scope *braid__scope_here (lua_State *L, int shields) {
  struct braid_scope *s = braid__task_inner(braid_engine(L)->current);
  while (s->kind != SCOPE_TASK && s->kind != SCOPE_PLAIN &&
         !(shields && s->kind == SCOPE_SHIELD))
    s = s->outer;
  return s;
}

void braid_resource_add (lua_State *L, braid_resource_t *r) {
  braid__task_current(L, "braid_resource_add");   /* a usage error outside */
  resource_link(braid__scope_here(L, 0), r);
}

void braid__scope_resource_add (struct braid_scope *s, braid_resource_t *r) {
  resource_link(s, r);
}

void braid__task_resource_add (struct braid_task *t, braid_resource_t *r) {
  resource_link(&t->scope, r);
}

void braid_resource_remove (braid_resource_t *r) {
  if (r->next == NULL || r->next == r) return;   /* never added, or gone */
  r->prev->next = r->next;
  r->next->prev = r->prev;
  r->prev = r->next = r;
}

int braid__scope_open (struct braid_scope *s) {
  return !s->cancelled && !(s->joining && s->pending == 0) &&
         !(s->task && s->task->abandoned);   /* braid__task_spawn refuses */
}

braid_scope_t *braid__scope_top (braid_engine_t *E) {
  return &E->top;
}

void braid__scope_release (struct braid_scope *s) {
  lua_State *S = s->E->S;
  if (s->kind == SCOPE_PLAIN) {   /* its handle says "ended" from now on,
                                  ** also when an abandonment released it */
    struct braid_plain_scope *ps = (struct braid_plain_scope *) s;
    if (ps->handle) *ps->handle = NULL;
    ps->handle = NULL;
  }
  while (s->resources.next != &s->resources) {
    braid_resource_t *r = s->resources.next;
    braid_resource_remove(r);
    r->close(r);
  }
  if (s->kind == SCOPE_GROUP) braid__group_release(s);
  braid__list_remove(&s->link);
  if (s->more) {
    struct scope_more *m = s->more;
    braid_timer_stop(s->E, &m->deadline);
    braid_timer_stop(s->E, &m->grace);
    luaL_unref(S, LUA_REGISTRYINDEX, m->reason_ref);
    luaL_unref(S, LUA_REGISTRYINDEX, m->error_ref);
    luaL_unref(S, LUA_REGISTRYINDEX, m->record_ref);
    luaL_unref(S, LUA_REGISTRYINDEX, m->cancel_ref);
    s->more = NULL;
    if (s->own_grace) s->E->own_graces--;
    s->own_grace = 0;
    free(m);
  }
}

/* [s, error, record]: keeps both (the record unless nil). */
static int ref_p (lua_State *L) {
  struct braid_scope *s = (struct braid_scope *) lua_touserdata(L, 1);
  lua_settop(L, 3);
  lua_pushvalue(L, 2);
  s->more->error_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  if (!lua_isnil(L, 3)) s->more->record_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* The body or a member of s failed with the error at idx, whose failure
** record is at rec (0 or nil: none). Keeping the error takes a registry
** slot; when even that cannot be allocated (out of memory in scheduler
** context, the reserve spent), the scope still fails, with Lua's own "not
** enough memory" as its error (SCOPE_ERR_NOMEM). */
void braid__scope_fail (lua_State *L, struct braid_scope *s, int idx,
                        int rec) {
  idx = lua_absindex(L, idx);
  rec = rec ? lua_absindex(L, rec) : 0;
  if (SCOPE_REF(s, error_ref) == LUA_NOREF) {
    braid__scope_more(s)->error_ref = SCOPE_ERR_NOMEM;
    if (lua_checkstack(L, 4)) {
      lua_pushcfunction(L, ref_p);
      lua_pushlightuserdata(L, s);
      lua_pushvalue(L, idx);
      if (rec) lua_pushvalue(L, rec);
      else lua_pushnil(L);
      if (lua_pcall(L, 3, 0, 0) != LUA_OK) lua_pop(L, 1);
    }
    braid__scope_cancel(s, s);
    return;
  }
  braid__scope_push_error(L, s);
  if (!lua_rawequal(L, -1, idx)) {   /* not a re-raise */
    lua_pop(L, 1);
    braid__error_suppress(L, s, idx, rec);
  } else {
    lua_pop(L, 1);
  }
}

/* Pushes the failure record of s's error, or nil. [-0, +1, -] */
void braid__scope_push_record (lua_State *L, struct braid_scope *s) {
  int ref = SCOPE_REF(s, record_ref);
  if (ref == LUA_NOREF) lua_pushnil(L);
  else lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
}

/* Pushes s's first error (s->error_ref is set). [-0, +1, -] */
void braid__scope_push_error (lua_State *L, struct braid_scope *s) {
  if (s->more->error_ref == SCOPE_ERR_NOMEM)   /* interned: no allocation */
    lua_pushliteral(L, "not enough memory");
  else
    lua_rawgeti(L, LUA_REGISTRYINDEX, s->more->error_ref);
}

/* One member of s left; the owner, waiting for the last one, is woken.
** Returns s's task when that ends it (its body has returned and this was
** its scope's last member): the caller finishes it. task_finish does so in
** a loop, so that a chain of nested tasks ending from the leaf up is no
** recursion: each level held a slot of S's stack, and 40 levels wrote past
** its end. */
static struct braid_task *scope_leave (struct braid_scope *s) {
  if (--s->pending > 0) return NULL;
  if (s->more) braid_timer_stop(s->E, &s->more->grace);
  if (!s->joining || s->task == NULL) return NULL;
  if (s->kind == SCOPE_TASK) return s->task;
  braid__task_wake(s->task, WAKE_OK);
  return NULL;
}

void braid__scope_left (struct braid_scope *s) {
  struct braid_task *t = scope_leave(s);
  if (t) braid__task_finish(t);
}

/* Task t, a member of s, ended. A failure fails the scope (fail-fast); a
** cancellation does not. Groups judge their members themselves, and the
** REPL's session (the root task's scope while a session is set, prim.h)
** reports failures and carries on. Returns the task that this ends, for
** the caller to finish (scope_leave). */
struct braid_task *braid__scope_member_done (lua_State *L,
                                             struct braid_scope *s,
                                             struct braid_task *t) {
  /* The top scope does not fail fast either: an embedder's tasks are
  ** independent, and braid.run reads its root task's own outcome. */
  if (t->status == TASK_FAILED && s->kind != SCOPE_GROUP &&
      s->kind != SCOPE_TOP) {
    struct braid_session *session = s->E->session;
    braid__task_push(L, t);
    lua_getiuservalue(L, -1, 1);
    lua_getiuservalue(L, -2, 4);   /* its record */
    if (session && s->task == s->E->root && s == &s->task->scope) {
      braid__error_hand(L, NULL);   /* the record its report finds */
      session->failed(L, t, lua_gettop(L));   /* the REPL carries on */
      lua_pop(L, 2);
    } else {
      braid__scope_fail(L, s, -2, -1);
      lua_pop(L, 3);
    }
  } else if (t->status == TASK_CANCELLED && s->cancelled) {
    s->cut = 1;   /* s's cancel cut it off: scope_close, task_finish */
  }
  return scope_leave(s);
}

/* ---- running a body as a scope ---- */

/* Ends s (popped already) by raising its first error, in its task, with
** its failure record. */
int braid__scope_raise (lua_State *L, struct braid_scope *s) {
  braid__scope_push_record(L, s);
  braid__error_hand(L, s->task);   /* its record goes with it */
  braid__scope_push_error(L, s);
  braid__scope_release(s);
  return lua_error(L);
}

/* Ends s: pops it, then returns the body's results or raises. A body that
** raised a cancellation, or returned while s's cancel cut members off (they
** ended cancelled: their work is not done), ends s with that cancellation:
** a braid.timeout's own deadline as its timeout error, a braid.scope's own
** cancel as nil, another scope's cancel (an outer deadline, a cancel of the
** task, Ctrl-C) raised on. A body that caught the cancellation and returned,
** with no member cut off, returns its results. */
static int scope_close (lua_State *L, struct braid_scope *s) {
  struct braid_task *t = s->task;
  int own = s->cause == s, fired = own && s->deadline_fired;
  uint64_t ns = fired ? s->more->timeout_ns : 0;
  braid__task_set_inner(t, s->outer);
  if (SCOPE_REF(s, error_ref) != LUA_NOREF) return braid__scope_raise(L, s);
  braid__scope_release(s);
  if (own && s->kind == SCOPE_PLAIN) {
    lua_pushnil(L);
    return 1;
  }
  if (!s->body_failed && !s->cut) return lua_gettop(L) - s->base;
  if (fired) {
    char buf[32];
    snprintf(buf, sizeof buf, "%g", (double) ns / 1e9);
    return braid_error(L, "timeout", NULL, "timed out after %s s", buf);
  }
  if (!s->body_failed) braid__push_cancel(L, s->cause);
  return lua_error(L);   /* the cancellation, on top */
}

/* Waits (uninterruptibly: cancelling s cancels its members instead) until
** every member of s has ended; then k(L, LUA_YIELD, s) decides. The caller
** calls k itself when this returns 0 (no member was left). */
int braid__scope_join (lua_State *L, struct braid_scope *s, lua_KFunction k) {
  struct braid_task *t = s->task;
  if (s->pending == 0) return 0;
  s->joining = 1;
  braid__task_wait(t, t->w, NULL, "its members");
  return braid__task_yield(L, t, (lua_KContext) s, k);
}

static int scope_join_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_scope *s = (struct braid_scope *) ctx;
  (void) status;
  s->task->wake = WAKE_NONE;
  s->joining = 0;
  /* A member spawned after the last one ended but before this task was
  ** resumed (scope:spawn from another task, a server's accept) must be
  ** waited for too: closing now would free a scope it still points to. */
  if (s->pending > 0) return braid__scope_join(L, s, scope_join_k);
  return scope_close(L, s);
}

static int scope_body_k (lua_State *L, int status, lua_KContext ctx) {
  struct braid_scope *s = (struct braid_scope *) ctx;
  if (status != LUA_OK && status != LUA_YIELD) {
    s->body_failed = 1;
    if (!braid__is_cancel(L, -1)) {
      braid__error_push_record(L, -1, s->task);   /* its message handler's */
      braid__scope_fail(L, s, -2, -1);
      lua_pop(L, 1);
    }
  }
  braid__scope_join(L, s, scope_join_k);
  return scope_close(L, s);
}

/* Runs the function at base + 1, with the nargs values above it, as the
** body of s, under the message handler at base. s has just been pushed on
** its task's scope stack. Returns like the body, or raises. */
int braid__scope_body (lua_State *L, struct braid_scope *s, int base,
                       int nargs) {
  s->base = base;
  lua_pcallk(L, nargs, LUA_MULTRET, base, (lua_KContext) s, scope_body_k);
  return scope_body_k(L, LUA_OK, (lua_KContext) s);
}

/* Pushes a zeroed userdata of `size` bytes that starts with a scope, not
** entered yet: everything that can fail (allocate, raise) comes between
** this and braid__scope_enter. [-0, +1, m] */
void *braid__scope_new (lua_State *L, size_t size) {
  void *s = lua_newuserdatauv(L, size, 1);
  memset(s, 0, size);
  return s;
}

/* Makes s (from braid__scope_new) a scope of `kind` and the task's
** innermost. Allocates nothing and cannot raise: a scope entered is always
** left through its body's end (braid__scope_body, braid__scope_join), so
** braid__task_inner(t) never points at a userdata the collector could free. */
void braid__scope_enter (struct braid_task *t, struct braid_scope *s,
                         int kind) {
  braid__scope_init(s, t->E, kind, t, braid__task_inner(t));
  braid__task_set_inner(t, s);
}

static const char *const scope_options[] = {"grace", NULL};

/* braid.scope(fn, [opts]) -> ...: runs fn(scope) in the current task; ends
** when fn and every task spawned into the scope have ended. */
static int l_scope_run (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "braid.scope");
  struct braid_plain_scope *ps;
  struct braid_scope *s, **h;
  uint64_t grace;
  if (!braid__is_callable(L, 1))
    braid_argerror(L, 1, "braid.scope", "function expected");
  braid__check_options(L, 2, "braid.scope", scope_options);
  grace = braid__opt_seconds(L, 2, "grace", braid__scope_grace(braid__task_inner(t)),
                             "braid.scope");
  braid__task_checkyield(L, t, "braid.scope");
  braid__task_checkcancel(L, t);
  lua_settop(L, 2);
  h = lua_newuserdatauv(L, sizeof *h, 1);                   /* 3: handle */
  *h = NULL;
  luaL_setmetatable(L, SCOPE_MT);
  ps = braid__scope_new(L, sizeof *ps);                     /* 4 */
  s = &ps->s;
  if (grace != braid__scope_grace(braid__task_inner(t)) &&   /* before: */
      braid__scope_grace_ready(s, grace) != 0)                  /* it raises */
    braid_error(L, "memory", NULL, "braid.scope: not enough memory");
  braid__scope_enter(t, s, SCOPE_PLAIN);                    /* nothing fails after */
  *h = s;
  ps->handle = h;
  lua_pushcfunction(L, braid__error_msgh);                  /* 5 */
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 3);
  return braid__scope_body(L, s, 5, 1);
}

static struct braid_scope *scope_check (lua_State *L, const char *fname) {
  struct braid_scope **h = braid__check_object(L, 1, SCOPE_MT, fname);
  if (*h == NULL)
    braid_usageerror(L, "%s: the scope has ended", fname);
  return *h;
}

/* scope:spawn(fn, ...) -> task, a member of this scope. */
static int l_scope_spawn (lua_State *L) {
  struct braid_scope *s = scope_check(L, "scope:spawn");
  braid__task_current(L, "scope:spawn");
  if (!braid__is_callable(L, 2))
    braid_argerror(L, 2, "scope:spawn", "function expected");
  braid__task_spawn(L, s, 2, lua_gettop(L) - 2);
  return 1;
}

/* scope:cancel([reason]): cancels the body and every member. */
static int l_scope_cancel (lua_State *L) {
  struct braid_scope *s = scope_check(L, "scope:cancel");
  if (!lua_isnoneornil(L, 2)) braid__scope_set_reason(L, s, 2);
  braid__scope_cancel(s, s);
  return 0;
}

/* braid.shield(fn, ...) -> ...: fn runs with outside cancellation deferred. */
static int l_scope_shield (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "braid.shield");
  int nargs = lua_gettop(L) - 1;
  struct braid_scope *s;
  if (!braid__is_callable(L, 1))
    braid_argerror(L, 1, "braid.shield", "function expected");
  braid__task_checkyield(L, t, "braid.shield");
  s = braid__scope_new(L, sizeof *s);
  braid__scope_enter(t, s, SCOPE_SHIELD);
  lua_insert(L, 1);                      /* the scope stays at 1 */
  lua_pushcfunction(L, braid__error_msgh);
  lua_insert(L, 2);
  return braid__scope_body(L, s, 2, nargs);
}

/* braid.timeout(seconds, fn, ...) -> ...: fn under a deadline; raises a
** "timeout" error when it passes. */
static int l_scope_timeout (lua_State *L) {
  struct braid_task *t = braid__task_current(L, "braid.timeout");
  uint64_t ns = braid_check_seconds(L, 1, "braid.timeout");
  int nargs = lua_gettop(L) - 2;
  struct braid_scope *s;
  if (!braid__is_callable(L, 2))
    braid_argerror(L, 2, "braid.timeout", "function expected");
  braid__task_checkyield(L, t, "braid.timeout");
  braid__task_checkcancel(L, t);
  s = braid__scope_new(L, sizeof *s);
  if (braid__scope_deadline_ready(t->E, s) != 0)
    braid_error(L, "memory", NULL, "braid.timeout: not enough memory");
  braid__scope_enter(t, s, SCOPE_TIMEOUT);
  s->more->timeout_ns = ns;
  lua_replace(L, 1);                     /* the scope replaces the seconds */
  lua_pushcfunction(L, braid__error_msgh);
  lua_insert(L, 2);
  braid__scope_deadline(s, ns);
  return braid__scope_body(L, s, 2, nargs);
}

void braid__open_scope (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"spawn", l_scope_spawn},
    {"cancel", l_scope_cancel},
    {NULL, NULL}
  };
  static const luaL_Reg funcs[] = {
    {"scope", l_scope_run},
    {"shield", l_scope_shield},
    {"timeout", l_scope_timeout},
    {NULL, NULL}
  };
  braid__class(L, SCOPE_MT, NULL, methods, NULL);
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
