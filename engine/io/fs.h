/*
** fs.h: what braid.fs's files (fs.c, fs_file.c, fs_path.c, fs_watch.c)
** share.
*/
#ifndef BRAID_FS_H
#define BRAID_FS_H

#include "core/prim.h"

/* Raises the error for err (a libuv code) from fname on `path` (and `to`
** for a rename or copy): kind "io" with the code, the message "fname path:
** text" (`what`, else the code's text) and a `path` field; when memory ran
** out, kind "memory" as everywhere, without a path. path must stay valid
** until the error is raised (a string on L's stack). [-0, +0, v] */
/* Argument `arg` as a path: a string without zero bytes (and, with
** nonempty, not ""), else a usage error naming fname. */
const char *braid__fs_check_path(lua_State *L, int arg, const char *fname,
                                 int nonempty);
int braid__fs_raise(lua_State *L, const char *fname, int err,
                    const char *path, const char *to, const char *what);

#endif
