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

/* A FIFO's wait on the loop (fs.c, fs_file.c): a poll of its descriptor
** (read or write when it can), or a timer that opens it again every
** FIFO_RETRY_MS (opening one to write fails while it has no reader); the
** memory goes in the handle's close callback. Nothing waits in open(2) or
** read(2) on a pool thread, where a cancel cannot reach. */
#define FIFO_RETRY_MS 20
struct braid_fs_wait {
  union {
    uv_handle_t handle;
    uv_poll_t poll;
    uv_timer_t timer;
  } u;
  void *owner;
};
#define FS_WAIT_OWNER(h) (((struct braid_fs_wait *) (void *) (h))->owner)

/* Makes *slot (NULL) a new wait for owner: on fd's `events` with poll_cb,
** or with fd < 0 a timer of FIFO_RETRY_MS with timer_cb. 0, or a code with
** *slot NULL. */
int braid__fs_wait_start(uv_loop_t *loop, struct braid_fs_wait **slot,
                         void *owner, int fd, int events, uv_poll_cb poll_cb,
                         uv_timer_cb timer_cb);
/* Closes *slot's wait, if any. */
void braid__fs_wait_stop(struct braid_fs_wait **slot);

#endif
