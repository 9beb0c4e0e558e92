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

/* braid.tasks() -> list of the live tasks, parents before children. */
static int l_dump_tasks (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  struct braid_scope *s = &E->top;
  lua_Integer n = 0;
  int depth = -1;
  lua_newtable(L);
  if (E->running)
    while ((s = braid__scope_next(&E->top, s, &depth)) != NULL)
      if (s->kind == SCOPE_TASK) {
        braid__task_push(L, s->task);
        lua_rawseti(L, -2, ++n);
      }
  return 1;
}

/* Indentation: two spaces a level, up to MAX_INDENT levels; deeper lines
** say their depth instead of growing (a 100k-deep chain took 5.6 GB). */
#define MAX_INDENT 32
static const char spaces[2 * MAX_INDENT + 1] =
  "                                                                ";

/* Appends s's line (a task's, or a nested scope's kind) to b. */
static void dump_line (lua_State *L, luaL_Buffer *b, struct braid_scope *s,
                       int depth) {
  const char *indent = spaces + 2 * (MAX_INDENT - (depth < MAX_INDENT ?
                                                   depth : MAX_INDENT));
  if (depth > MAX_INDENT) {
    lua_pushfstring(L, "%s(depth %d) ", indent, depth);
    luaL_addvalue(b);
    indent = "";
  }
  if (s->kind == SCOPE_TASK) {
    struct braid_task *t = s->task;
    const char *where = braid__task_where(L, t);
    lua_pushfstring(L, "%stask %I \"%s\" %s%s%s", indent, (lua_Integer) t->id,
                    braid__task_name(L, t, 0),
                    braid__status_names[t->status], where,
                    t->scope.cancelled ? ", cancelled" : "");
    lua_remove(L, -2);   /* `where`: the buffer's slot must be just below */
    luaL_addvalue(b);
    if (t->waiting) {
      uint64_t ms = braid__now_ms(t->E) - t->w->since;
      lua_pushfstring(L, ", waits on %s for %f s", t->w->what, ms / 1000.0);
      luaL_addvalue(b);
    }
    luaL_addchar(b, '\n');
  } else {
    lua_pushfstring(L, "%s[%s%s]\n", indent, kind_names[s->kind],
                    s->cancelled ? ", cancelled" : "");
    luaL_addvalue(b);
  }
}

/* Pushes the live task tree as text. */
static void dump_push (lua_State *L, braid_engine_t *E) {
  luaL_Buffer b;
  struct braid_scope *s = &E->top;
  int depth = -1;
  luaL_buffinit(L, &b);
  if (E->running)
    while ((s = braid__scope_next(&E->top, s, &depth)) != NULL)
      dump_line(L, &b, s, depth);
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
