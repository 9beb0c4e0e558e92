/*
** xchan.h: shared channels (io/xchan.c), as the value copier (io/xcopy.c)
** sees them: a message names a channel by pointer and holds a reference.
*/
#ifndef BRAID_XCHAN_H
#define BRAID_XCHAN_H

#include "lua.h"

struct braid_xchan;

/* The shared channel at idx, or NULL when it is something else. */
struct braid_xchan *braid__xchan_test(lua_State *L, int idx);

/* References: any thread. The last release frees the channel and the
** values still in it. */
void braid__xchan_ref(struct braid_xchan *ch);
void braid__xchan_release(struct braid_xchan *ch);

/* Pushes a new handle of ch in L (a reference of its own). [-0, +1, m] */
void braid__xchan_push(lua_State *L, struct braid_xchan *ch);

/* Adds braid.channel's {shared = true} to the braid table at the top. */
void braid__open_xchan(lua_State *L);

#endif
