/*
** dump.c: introspection: braid.tasks(), braid.dump() and the SIGQUIT
** (Ctrl-\) dump of a running script.
**
** Everything here reads the scope tree from the engine's top scope; it
** never changes it, so it is safe from any task and from the SIGQUIT
** callback (which runs it under lua_pcall on the scheduler's thread).
*/
#include <stdio.h>
#include "core.h"

static const char *const kind_names[] = {
  "top", "task", "scope", "shield", "timeout", "group"
};

/* Appends the live tasks below s to the table at the stack top. */
static void collect (lua_State *L, struct braid_scope *s) {
  struct braid_list *n;
  for (n = s->subs.next; n != &s->subs; n = n->next) {
    struct braid_scope *sub = container_of(n, struct braid_scope, link);
    if (sub->kind == SCOPE_TASK) {
      braid__task_push(L, sub->task);
      lua_rawseti(L, -2, luaL_len(L, -2) + 1);
    }
    collect(L, sub);
  }
}

/* braid.tasks() -> list of the live tasks, parents before children. */
static int l_dump_tasks (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  lua_newtable(L);
  if (E->running) collect(L, &E->top);
  return 1;
}

/* One line for task t at `depth`, then its subtree. */
static void dump_task (lua_State *L, luaL_Buffer *b, struct braid_task *t,
                       int depth);

static void dump_scope (lua_State *L, luaL_Buffer *b, struct braid_scope *s,
                        int depth) {
  struct braid_list *n;
  for (n = s->subs.next; n != &s->subs; n = n->next) {
    struct braid_scope *sub = container_of(n, struct braid_scope, link);
    if (sub->kind == SCOPE_TASK) {
      dump_task(L, b, sub->task, depth);
    } else {
      int i;
      for (i = 0; i < depth; i++) luaL_addstring(b, "  ");
      lua_pushfstring(L, "[%s%s]\n", kind_names[sub->kind],
                      sub->cancelled ? ", cancelled" : "");
      luaL_addvalue(b);
      dump_scope(L, b, sub, depth + 1);
    }
  }
}

static void dump_task (lua_State *L, luaL_Buffer *b, struct braid_task *t,
                       int depth) {
  braid_engine_t *E = t->E;
  const char *where = braid__task_where(L, t);
  int i;
  lua_insert(L, -2);   /* the buffer's slot must stay at the top */
  for (i = 0; i < depth; i++) luaL_addstring(b, "  ");
  lua_pushfstring(L, "task %I \"%s\" %s%s", (lua_Integer) t->id,
                  braid__task_name(L, t, 0), braid__status_names[t->status],
                  where);
  luaL_addvalue(b);
  lua_remove(L, -2);
  if (t->scope.cancelled) luaL_addstring(b, ", cancelled");
  if (t->waiting) {
    uint64_t ms = braid__now_ms(E) - t->w->since;
    lua_pushfstring(L, ", waits on %s for %f s", t->w->what, ms / 1000.0);
    luaL_addvalue(b);
  }
  luaL_addchar(b, '\n');
  dump_scope(L, b, &t->scope, depth + 1);
}

/* Pushes the live task tree as text. */
static void dump_push (lua_State *L, braid_engine_t *E) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  if (E->running) dump_scope(L, &b, &E->top, 0);
  luaL_pushresult(&b);
}

/* braid.dump() -> text: prints the live task tree (to stderr) with what each
** task waits on and for how long, and returns it. */
static int l_dump_dump (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  dump_push(L, E);
  fprintf(stderr, "braid: %d live task(s)\n%s", (int) E->live,
          lua_tostring(L, -1));
  fflush(stderr);
  return 1;
}

static int dump_p (lua_State *L) {
  lua_settop(L, 0);
  l_dump_dump(L);
  return 0;
}

/* SIGQUIT: print the dump, keep running. */
void braid__dump_signal (braid_engine_t *E) {
  lua_State *S = E->S;   /* a dump that fails is not fatal: no engine_call */
  lua_pushcfunction(S, dump_p);
  lua_pushlightuserdata(S, E);
  if (lua_pcall(S, 1, 0, 0) != LUA_OK) lua_pop(S, 1);
}

void braid__open_dump (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"tasks", l_dump_tasks},
    {"dump", l_dump_dump},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}
