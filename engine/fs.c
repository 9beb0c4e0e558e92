/*
** fs.c: braid.fs, files and directories on libuv's fs requests:
** read_file, write_file, append_file, stat, list, mkdir, remove, rename.
**
** Each call is one struct fs_op, malloc'd, with one uv_fs_t embedded that
** is reused step after step (open, read or write in chunks, close); the
** steps chain in fs_cb without waking the task, which is woken once, when
** the whole operation has ended. The loop never blocks: every step runs on
** libuv's thread pool.
**
** Invariants:
** - Ownership of an op is in exactly one place. While its task waits, the
**   op is attached: a small userdata on the task's stack (the box, which
**   the continuation receives) points at it, and the box's __gc frees it if
**   the continuation never runs (an abandoned task, an error while pushing
**   the results). Cancellation detaches it: the box is cleared, uv_cancel
**   is tried, and fs_cb, which libuv calls exactly once per request either
**   way, closes any descriptor the op opened and frees it.
** - op->fd is the descriptor the op owns, -1 once a close has been started.
** - Bytes written come from the op's own copy of the string, never from
**   the Lua string itself, so a detached write cannot outlive its source.
** - A uv_fs_t is cleaned up before it is reused and when the op is freed
**   (uv_fs_req_cleanup is idempotent); a scandir request keeps its entries
**   until the continuation has read them.
*/
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "internal.h"

#define FSOP_MT "braid.FsOp"
#define CHUNK_MIN (64 * 1024)
#define CHUNK_MAX (1024 * 1024)   /* per request: keeps cancellation prompt */

enum { OP_READ, OP_WRITE, OP_APPEND, OP_STAT, OP_LIST, OP_MKDIR, OP_REMOVE,
       OP_RENAME };

struct fs_op {
  struct braid_wait wait;
  struct fs_op **box;        /* the Lua-side owner; NULL once detached */
  uv_fs_t req;
  int kind;
  int busy;                  /* a request is in flight */
  int err;                   /* the first failure, a UV_E* code, or 0 */
  int unlink_err;            /* remove(): why unlink refused, before rmdir */
  uv_file fd;
  char *buf;                 /* read: what came so far; write: the data */
  size_t len, cap, off;
  uv_stat_t st;
};

static void fs_cb (uv_fs_t *req);

static void fs_op_free (struct fs_op *op) {
  uv_fs_req_cleanup(&op->req);
  free(op->buf);
  free(op);
}

/* Starts the next read into the buffer, growing it first when full. */
static int fs_read_next (struct fs_op *op) {
  uv_buf_t b;
  size_t n;
  if (op->cap - op->len < CHUNK_MIN) {
    size_t cap = op->cap ? op->cap * 2 : CHUNK_MIN;
    char *p = realloc(op->buf, cap);
    if (p == NULL) return UV_ENOMEM;
    op->buf = p;
    op->cap = cap;
  }
  n = op->cap - op->len;
  b = uv_buf_init(op->buf + op->len, n > CHUNK_MAX ? CHUNK_MAX : (unsigned) n);
  return uv_fs_read(op->req.loop, &op->req, op->fd, &b, 1, -1, fs_cb);
}

static int fs_write_next (struct fs_op *op) {
  size_t n = op->len - op->off;
  uv_buf_t b = uv_buf_init(op->buf + op->off,
                           n > CHUNK_MAX ? CHUNK_MAX : (unsigned) n);
  return uv_fs_write(op->req.loop, &op->req, op->fd, &b, 1, -1, fs_cb);
}

/* Starts closing the op's descriptor; 0, or a code when even that failed
** to start (the descriptor is then given up: there is nothing else to do). */
static int fs_close_fd (struct fs_op *op) {
  uv_file fd = op->fd;
  op->fd = -1;
  return uv_fs_close(op->req.loop, &op->req, fd, fs_cb);
}

/* The op ended (well or not): hand it to its task, which is woken. */
static void fs_done (struct fs_op *op) {
  braid__task_wake(op->wait.task, WAKE_OK);
}

/* A detached op's request came back: close what it opened, then free it. */
static void fs_detached (struct fs_op *op) {
  if (op->req.fs_type == UV_FS_OPEN && op->req.result >= 0)
    op->fd = (uv_file) op->req.result;
  uv_fs_req_cleanup(&op->req);
  if (op->fd >= 0 && fs_close_fd(op) == 0) {
    op->busy = 1;
    return;
  }
  fs_op_free(op);
}

/* Decides the step after a failure or the last transfer: close the
** descriptor if one is open, else hand the op back. */
static void fs_finish (struct fs_op *op, int err) {
  if (err < 0 && op->err == 0) op->err = err;
  if (op->fd >= 0) {
    int rc = fs_close_fd(op);
    if (rc == 0) {
      op->busy = 1;
      return;
    }
    if (op->err == 0) op->err = rc;
  }
  fs_done(op);
}

static void fs_cb (uv_fs_t *req) {
  struct fs_op *op = container_of(req, struct fs_op, req);
  ssize_t r = req->result;
  int rc = 0;
  op->busy = 0;
  if (op->box == NULL) {
    fs_detached(op);
    return;
  }
  if (req->fs_type == UV_FS_SCANDIR) {   /* the continuation reads them */
    if (r < 0) op->err = (int) r;
    fs_done(op);
    return;
  }
  if (req->fs_type == UV_FS_LSTAT && r == 0) op->st = req->statbuf;
  uv_fs_req_cleanup(req);
  if (r < 0) {
    fs_finish(op, (int) r);
    return;
  }
  switch (req->fs_type) {
    case UV_FS_OPEN:
      op->fd = (uv_file) r;
      if (op->kind != OP_READ && op->len == 0) {   /* nothing to write */
        fs_finish(op, 0);
        return;
      }
      rc = op->kind == OP_READ ? fs_read_next(op) : fs_write_next(op);
      break;
    case UV_FS_READ:
      if (r == 0) {
        fs_finish(op, 0);
        return;
      }
      op->len += (size_t) r;
      rc = fs_read_next(op);
      break;
    case UV_FS_WRITE:
      if (r == 0) {   /* no progress: never spin */
        fs_finish(op, UV_EIO);
        return;
      }
      op->off += (size_t) r;
      if (op->off >= op->len) {
        fs_finish(op, 0);
        return;
      }
      rc = fs_write_next(op);
      break;
    default:   /* close, lstat, mkdir, unlink, rmdir, rename: the last step */
      fs_done(op);
      return;
  }
  if (rc < 0) fs_finish(op, rc);
  else op->busy = 1;
}

/* Detaches the op from its box: a request in flight is cancelled if libuv
** still can, and fs_cb frees the op when it returns; an idle op is freed.
** A close is never cancelled: op->fd is already -1, so a cancelled close
** would leak the descriptor. */
static void fs_detach (struct fs_op *op) {
  *op->box = NULL;
  op->box = NULL;
  if (!op->busy) fs_op_free(op);
  else if (op->req.fs_type != UV_FS_CLOSE) uv_cancel((uv_req_t *) &op->req);
}

static void fs_cancel (struct braid_wait *w) {
  fs_detach(container_of(w, struct fs_op, wait));
}

/* The box's __gc: the op was never handed over (see the invariants). */
static int l_fs_gc (lua_State *L) {
  struct fs_op **box = (struct fs_op **) lua_touserdata(L, 1);
  if (*box) fs_detach(*box);
  return 0;
}

/* Checks that argument `arg` is a path: a string without zero bytes. */
static const char *fs_check_path (lua_State *L, int arg, const char *fname) {
  size_t len;
  const char *p;
  if (lua_type(L, arg) != LUA_TSTRING)   /* numbers are no paths */
    braid__error_argerror(L, arg, fname, "string expected");
  p = lua_tolstring(L, arg, &len);
  if (strlen(p) != len)
    braid__error_argerror(L, arg, fname, "path contains a zero byte");
  return p;
}

/* Raises the io error for a failed operation on `path` (with `to` for a
** rename): kind "io", code the libuv error name, and a `path` field. */
static int fs_raise (lua_State *L, const char *fname, int err,
                     const char *path, const char *to) {
  if (to)
    braid__error_push(L, "io", uv_err_name(err), "braid.fs.%s %s -> %s: %s",
                      fname, path, to, uv_strerror(err));
  else
    braid__error_push(L, "io", uv_err_name(err), "braid.fs.%s %s: %s", fname,
                      path, uv_strerror(err));
  lua_pushstring(L, path);
  lua_setfield(L, -2, "path");
  return lua_error(L);
}

/* Allocates an op owned by a new box on the stack. [-0, +1, m] */
static struct fs_op *fs_op_new (lua_State *L, int kind) {
  struct fs_op **box = (struct fs_op **) lua_newuserdatauv(L, sizeof *box, 0);
  struct fs_op *op;
  *box = NULL;
  luaL_setmetatable(L, FSOP_MT);
  op = calloc(1, sizeof *op);
  if (op == NULL) {
    luaL_error(L, "not enough memory");
    return NULL;
  }
  op->kind = kind;
  op->fd = -1;
  op->box = box;
  *box = op;
  return op;
}

static int fs_k (lua_State *L, int status, lua_KContext ctx);

/* Common tail of every call: the first request is started (rc its result),
** the task waits for the whole op. */
static int fs_wait (lua_State *L, struct braid_task *t, struct fs_op *op,
                    int rc, const char *fname) {
  if (rc < 0) return fs_raise(L, fname, rc, lua_tostring(L, 1),
                              op->kind == OP_RENAME ? lua_tostring(L, 2)
                                                    : NULL);
  op->busy = 1;
  braid__task_wait(t, &op->wait, fs_cancel, fname);
  return braid__task_yield(L, t, (lua_KContext) op->box, fs_k);
}

static const char *const op_names[] = {
  "read_file", "write_file", "append_file", "stat", "list", "mkdir",
  "remove", "rename"
};

static int cmp_names (const void *a, const void *b) {
  return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* list(): the scandir entries as a sorted array. uv_fs_scandir_next frees
** each entry at the next call, so the names become Lua strings first, in a
** table that anchors them while their pointers are sorted in a userdata
** (nothing leaks if a push raises); then the result is built. [-0, +1, m] */
static void fs_push_list (lua_State *L, struct fs_op *op) {
  uv_dirent_t ent;
  const char **names;
  lua_Integer n = 0, i;
  lua_createtable(L, op->req.result > 0 ? (int) op->req.result : 0, 0);
  while (uv_fs_scandir_next(&op->req, &ent) == 0) {
    lua_pushstring(L, ent.name);
    lua_rawseti(L, -2, ++n);
  }
  names = (const char **) lua_newuserdatauv(L, (size_t) n * sizeof *names + 1,
                                            0);
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, -2, i + 1);
    names[i] = lua_tostring(L, -1);
    lua_pop(L, 1);   /* still anchored by the table */
  }
  qsort(names, (size_t) n, sizeof *names, cmp_names);
  lua_createtable(L, (int) n, 0);
  for (i = 0; i < n; i++) {
    lua_pushstring(L, names[i]);
    lua_rawseti(L, -2, i + 1);
  }
  lua_replace(L, -3);
  lua_pop(L, 1);
}

static void fs_push_stat (lua_State *L, const uv_stat_t *st) {
  const char *type = "other";
  switch (st->st_mode & S_IFMT) {
    case S_IFREG: type = "file"; break;
    case S_IFDIR: type = "directory"; break;
    case S_IFLNK: type = "link"; break;
  }
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, (lua_Integer) st->st_size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (lua_Number) st->st_mtim.tv_sec +
                    (lua_Number) st->st_mtim.tv_nsec / 1e9);
  lua_setfield(L, -2, "mtime");
  lua_pushstring(L, type);
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer) (st->st_mode & 07777));
  lua_setfield(L, -2, "mode");
}

/* The continuation: the arguments are still at 1 (and 2), the box is ctx.
** The results are pushed before the op is freed: the box's __gc frees it
** if pushing raises. */
static int fs_k (lua_State *L, int status, lua_KContext ctx) {
  struct fs_op **box = (struct fs_op **) ctx;
  struct fs_op *op = *box;
  struct braid_task *t = braid__engine(L)->current;
  int n = 0;
  (void) status;
  braid__task_resumed(L, t);   /* cancelled or refused: op detached */
  if (op->kind == OP_REMOVE && op->req.fs_type == UV_FS_UNLINK &&
      (op->err == UV_EISDIR || op->err == UV_EPERM)) {
    /* unlink refused what may be a directory: try rmdir, and report
    ** unlink's reason if the path was no directory after all. */
    int rc, why = op->err;
    *box = NULL;
    fs_op_free(op);
    op = fs_op_new(L, OP_REMOVE);
    op->unlink_err = why;
    rc = uv_fs_rmdir(t->E->loop, &op->req, lua_tostring(L, 1), fs_cb);
    return fs_wait(L, t, op, rc, "remove");
  }
  if (op->err == UV_ENOTDIR && op->unlink_err) op->err = op->unlink_err;
  if (op->err < 0) {
    int err = op->err, kind = op->kind;
    *box = NULL;
    fs_op_free(op);   /* now: a failed read may hold a large buffer */
    return fs_raise(L, op_names[kind], err, lua_tostring(L, 1),
                    kind == OP_RENAME ? lua_tostring(L, 2) : NULL);
  }
  switch (op->kind) {
    case OP_READ:
      lua_pushlstring(L, op->buf ? op->buf : "", op->len);
      n = 1;
      break;
    case OP_STAT:
      fs_push_stat(L, &op->st);
      n = 1;
      break;
    case OP_LIST:
      fs_push_list(L, op);
      n = 1;
      break;
  }
  *box = NULL;
  fs_op_free(op);
  return n;
}

/* Checks the call and makes its op; leaves the box on the stack. */
static struct braid_task *fs_begin (lua_State *L, int kind) {
  const char *fname = op_names[kind];
  struct braid_task *t = braid__task_current(L, fname);
  fs_check_path(L, 1, fname);
  if (kind == OP_RENAME) fs_check_path(L, 2, fname);
  braid__task_checkyield(L, t, fname);
  braid__task_checkcancel(L, t);
  return t;
}

/* braid.fs.read_file(path) -> string: the whole file, read in chunks. */
static int l_fs_read_file (lua_State *L) {
  struct braid_task *t;
  struct fs_op *op;
  t = fs_begin(L, OP_READ);
  lua_settop(L, 1);
  op = fs_op_new(L, OP_READ);
  return fs_wait(L, t, op, uv_fs_open(t->E->loop, &op->req, lua_tostring(L, 1),
                                      O_RDONLY, 0, fs_cb), "read_file");
}

static int fs_write (lua_State *L, int kind) {
  struct braid_task *t;
  struct fs_op *op;
  const char *s;
  size_t len;
  int flags = O_WRONLY | O_CREAT | (kind == OP_APPEND ? O_APPEND : O_TRUNC);
  t = fs_begin(L, kind);
  if (lua_type(L, 2) != LUA_TSTRING)
    braid__error_argerror(L, 2, op_names[kind], "string expected");
  s = lua_tolstring(L, 2, &len);
  lua_settop(L, 2);
  op = fs_op_new(L, kind);
  op->buf = malloc(len ? len : 1);
  if (op->buf == NULL) return luaL_error(L, "not enough memory");
  memcpy(op->buf, s, len);
  op->len = op->cap = len;
  return fs_wait(L, t, op, uv_fs_open(t->E->loop, &op->req, lua_tostring(L, 1),
                                      flags, 0666, fs_cb), op_names[kind]);
}

/* braid.fs.write_file(path, s): creates or truncates the file, writes s. */
static int l_fs_write_file (lua_State *L) { return fs_write(L, OP_WRITE); }

/* braid.fs.append_file(path, s): creates the file if needed, appends s. */
static int l_fs_append_file (lua_State *L) { return fs_write(L, OP_APPEND); }

/* braid.fs.stat(path) -> {size, mtime, type, mode}; a symbolic link is
** described itself ("link"), not followed. */
static int l_fs_stat (lua_State *L) {
  struct braid_task *t;
  struct fs_op *op;
  t = fs_begin(L, OP_STAT);
  lua_settop(L, 1);
  op = fs_op_new(L, OP_STAT);
  return fs_wait(L, t, op, uv_fs_lstat(t->E->loop, &op->req,
                                       lua_tostring(L, 1), fs_cb), "stat");
}

/* braid.fs.list(dir) -> sorted array of the names in dir (no "." or ".."). */
static int l_fs_list (lua_State *L) {
  struct braid_task *t;
  struct fs_op *op;
  t = fs_begin(L, OP_LIST);
  lua_settop(L, 1);
  op = fs_op_new(L, OP_LIST);
  return fs_wait(L, t, op, uv_fs_scandir(t->E->loop, &op->req,
                                         lua_tostring(L, 1), 0, fs_cb),
                 "list");
}

/* braid.fs.mkdir(path, [mode = 0777]): one directory (the umask applies). */
static int l_fs_mkdir (lua_State *L) {
  struct braid_task *t;
  struct fs_op *op;
  lua_Integer mode;
  t = fs_begin(L, OP_MKDIR);
  if (lua_isnoneornil(L, 2)) mode = 0777;
  else if (!lua_isinteger(L, 2) || (mode = lua_tointeger(L, 2)) < 0 ||
           mode > 07777)
    return braid__error_argerror(L, 2, "mkdir", "mode (an integer from 0 to "
                                 "0o7777) expected");
  lua_settop(L, 1);
  op = fs_op_new(L, OP_MKDIR);
  return fs_wait(L, t, op, uv_fs_mkdir(t->E->loop, &op->req,
                                       lua_tostring(L, 1), (int) mode, fs_cb),
                 "mkdir");
}

/* braid.fs.remove(path): a file, a link or an empty directory. */
static int l_fs_remove (lua_State *L) {
  struct braid_task *t;
  struct fs_op *op;
  t = fs_begin(L, OP_REMOVE);
  lua_settop(L, 1);
  op = fs_op_new(L, OP_REMOVE);
  return fs_wait(L, t, op, uv_fs_unlink(t->E->loop, &op->req,
                                        lua_tostring(L, 1), fs_cb), "remove");
}

/* braid.fs.rename(from, to): replaces `to` if it exists, as rename(2). */
static int l_fs_rename (lua_State *L) {
  struct braid_task *t;
  struct fs_op *op;
  t = fs_begin(L, OP_RENAME);
  lua_settop(L, 2);
  op = fs_op_new(L, OP_RENAME);
  return fs_wait(L, t, op, uv_fs_rename(t->E->loop, &op->req,
                                        lua_tostring(L, 1),
                                        lua_tostring(L, 2), fs_cb), "rename");
}

/* Sets braid.fs on the braid table at the stack top. [-0, +0, m] */
void braid__open_fs (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"read_file", l_fs_read_file},
    {"write_file", l_fs_write_file},
    {"append_file", l_fs_append_file},
    {"stat", l_fs_stat},
    {"list", l_fs_list},
    {"mkdir", l_fs_mkdir},
    {"remove", l_fs_remove},
    {"rename", l_fs_rename},
    {NULL, NULL}
  };
  if (luaL_newmetatable(L, FSOP_MT)) {
    lua_pushcfunction(L, l_fs_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "fs");
}
