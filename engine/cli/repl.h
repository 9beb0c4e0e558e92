/*
** repl.h: the REPL (repl.c), for the runner (main.c).
*/
#ifndef BRAID_REPL_H
#define BRAID_REPL_H

#include "lua.h"

/* Takes the function at the top (what runs before the prompt: -e chunks
** and the script; or nil) and pushes the root function of an interactive
** session. [-1, +1, m] */
void braid__repl_push(lua_State *L);

#endif
