/*
** anchor.c: where live tasks are anchored against the collector: a table
** of braid's own (E->tasks_ref; [0] holds braid.Task's metatable, for
** spawn), from a task's spawn to its end.
**
** Invariants:
** - A live task's object is at slot t->ref; every other slot up to
**   E->slot_top holds the number of the next free slot (the free chain,
**   from E->slot_free; 0 ends it). Nothing but t->ref keeps a slot number.
** - Not luaL_ref: anchoring never asks the table for its length, which
**   luaL_ref does and which costs a search once the registry's array part
**   is full (hundreds of instructions per spawn at 20000 live tasks).
** - A Lua table never shrinks, so after a burst the table would keep the
**   size of its peak: braid__anchors_compact moves the live tasks to a
**   table of their own size once they fill less than an eighth of it.
*/
#include "core.h"

/* Pushes the live task t's object. */
void braid__task_push (lua_State *L, struct braid_task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->E->tasks_ref);
  lua_rawgeti(L, -1, t->ref);
  lua_replace(L, -2);
}

/* Anchors the task object on top (popped) in the anchors table at `tab`;
** only a new slot allocates, and then nothing changed when it raises.
** [-1, +0, m] */
void braid__task_anchor (lua_State *L, braid_engine_t *E,
                         struct braid_task *t, int tab) {
  int slot = E->slot_free, next = 0;
  if (slot) {
    lua_rawgeti(L, tab, slot);
    next = (int) lua_tointeger(L, -1);
    lua_pop(L, 1);
  } else {
    slot = E->slot_top + 1;
  }
  lua_rawseti(L, tab, slot);
  if (slot > E->slot_top) E->slot_top = slot;
  else E->slot_free = next;
  t->ref = slot;
}

/* The task has ended: its slot goes to the head of the free chain.
** Allocates nothing (the slot exists). */
void braid__task_unanchor (lua_State *L, braid_engine_t *E,
                           struct braid_task *t) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->tasks_ref);
  lua_pushinteger(L, E->slot_free);
  lua_rawseti(L, -2, t->ref);
  lua_pop(L, 1);
  E->slot_free = t->ref;
  t->ref = LUA_NOREF;
}

#define COMPACT_MIN 4096   /* slots: smaller tables are left as they are */

/* The task at slot i of the anchors table at idx, or NULL (a free slot;
** or, put there through the debug library, a value that is no task).
** Pushes the slot's value. */
static struct braid_task *anchored (lua_State *L, int idx, int i) {
  lua_rawgeti(L, idx, i);
  return (struct braid_task *) braid__test_tagged(L, -1, &braid__task_type);
}

/* Counts the tasks in the anchors table at idx: counted, not taken from
** E->live, because a table too small for them would allocate half-way
** through the renumbering. */
static int anchors_live (lua_State *L, braid_engine_t *E, int idx) {
  int i, n = 0;
  for (i = 1; i <= E->slot_top; i++) {
    n += anchored(L, idx, i) != NULL;
    lua_pop(L, 1);
  }
  return n;
}

/* [E]: moves the live tasks to a new table of their own size, numbered
** from 1. The table is made before anything changes and is big enough for
** them, so no step after it allocates: a failure leaves the old one. */
static int l_anchors_compact (lua_State *L) {
  braid_engine_t *E = (braid_engine_t *) lua_touserdata(L, 1);
  int i, n = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, E->tasks_ref);   /* 2: the old one */
  lua_createtable(L, anchors_live(L, E, 2), 1);       /* 3: the new one */
  lua_rawgeti(L, 2, 0);
  lua_rawseti(L, 3, 0);   /* braid.Task's metatable: the one hash slot */
  for (i = 1; i <= E->slot_top; i++) {
    struct braid_task *t = anchored(L, 2, i);
    if (t != NULL) {
      t->ref = ++n;
      lua_rawseti(L, 3, n);
    } else {
      lua_pop(L, 1);
    }
  }
  lua_rawseti(L, LUA_REGISTRYINDEX, E->tasks_ref);   /* an existing key */
  E->slot_top = n;
  E->slot_free = 0;
  return 0;
}

/* The scheduler is idle (sched.c): shrinks the anchors table when the
** live tasks fill less than an eighth of it (O(slot_top), paid for by the
** burst that grew it). A refused table is not asked for again until the
** table has changed size. */
void braid__anchors_compact (braid_engine_t *E) {
  if (E->slot_top < COMPACT_MIN || (unsigned) E->slot_top / 8 <= E->live ||
      E->slot_top == E->compact_refused)
    return;
  if (braid__engine_try(E, l_anchors_compact, E) != LUA_OK) {
    lua_pop(E->S, 1);   /* the old table stays */
    E->compact_refused = E->slot_top;
  }
}
