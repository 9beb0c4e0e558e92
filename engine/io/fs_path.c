/*
** fs_path.c: the braid.fs calls that are one libuv request each: chmod,
** realpath, and the private _mkdtemp that braid.fs.tmpdir (Lua,
** lua/braid.lua) makes its directory with. The whole-file and directory
** calls are fs.c's; the tree walks (walk, mkdir with parents, exists,
** tmpdir) are Lua on top of both; recursive remove's walk is fs_tree.c's,
** copy's chunked job fs_copy.c's.
**
** Invariants, as fs.c's: the uv_fs_t lives in a malloc'd struct path_op,
** never in the op's data (libuv may own it after a cancel). Until the op
** ends the path_op is the op's: the continuation frees it, or path_cancel
** when the op ends without one. Cancelling a request in flight detaches
** it: uv_cancel is tried, and path_cb, which libuv calls exactly once,
** frees it.
*/
#include <stdlib.h>
#include <string.h>
#include "io/fs.h"

enum { P_CHMOD, P_REALPATH, P_MKDTEMP };

static const char *const path_fnames[] = {
  "braid.fs.chmod", "braid.fs.realpath", "braid.fs.tmpdir"
};

static const char *const path_waits[] = {"chmod", "realpath", "tmpdir"};

struct path_op {
  braid_op_t *op;            /* the call waiting for it; NULL once detached */
  uv_fs_t req;
  int busy;
};

/* The op's data: inline in the task. */
struct path_call {
  struct path_op *po;        /* NULL when the request could not start */
  int kind, err;
};

struct path_args {
  uv_loop_t *loop;
  int kind, mode;
  const char *path;
};

static void path_op_free (struct path_op *po) {
  uv_fs_req_cleanup(&po->req);
  free(po);
}

static void path_cb (uv_fs_t *req) {
  struct path_op *po = container_of(req, struct path_op, req);
  po->busy = 0;
  if (po->op == NULL) path_op_free(po);
  else braid_resume(po->op, 0);
}

/* Sends the request; when it cannot start, resumes the op at once with the
** code, so that the continuation raises the usual error with the path. */
static int path_start (braid_op_t *op, void *ud) {
  const struct path_args *a = (const struct path_args *) ud;
  struct path_call *c = (struct path_call *) braid_op_data(op);
  struct path_op *po = (struct path_op *) braid__calloc(1, sizeof *po);
  int rc = UV_ENOMEM;
  c->kind = a->kind;
  if (po != NULL) {
    po->op = op;
    switch (a->kind) {
      case P_CHMOD:
        rc = uv_fs_chmod(a->loop, &po->req, a->path, a->mode, path_cb);
        break;
      case P_REALPATH:
        rc = uv_fs_realpath(a->loop, &po->req, a->path, path_cb);
        break;
      default:
        rc = uv_fs_mkdtemp(a->loop, &po->req, a->path, path_cb);
        break;
    }
    if (rc == 0) {
      po->busy = 1;
      c->po = po;
      return 0;
    }
    path_op_free(po);
  }
  c->err = rc;
  braid_resume(op, 0);
  return 0;
}

static void path_cancel (braid_op_t *op) {
  struct path_op *po = ((struct path_call *) braid_op_data(op))->po;
  if (po == NULL) return;
  po->op = NULL;
  if (po->busy) uv_cancel((uv_req_t *) &po->req);
  else path_op_free(po);
}

/* [string] -> the string as a Lua value (under lua_pcall). */
static int l_path_push (lua_State *L) {
  lua_pushstring(L, (const char *) lua_touserdata(L, 1));
  return 1;
}

/* The continuation: the path is at 1. A result is
** built under lua_pcall, so that the request is freed even if that
** raises (memory). */
static int path_k (lua_State *L, braid_op_t *op) {
  struct path_call *c = (struct path_call *) braid_op_data(op);
  struct path_op *po = c->po;
  int kind = c->kind, err = po ? (int) po->req.result : c->err;
  const char *fname = path_fnames[kind];
  if (err >= 0 && (kind == P_REALPATH || kind == P_MKDTEMP)) {
    int status;
    lua_pushcfunction(L, l_path_push);
    lua_pushlightuserdata(L, kind == P_REALPATH ? po->req.ptr
                                                : (void *) po->req.path);
    status = lua_pcall(L, 1, 1, 0);
    path_op_free(po);
    return status == LUA_OK ? 1 : lua_error(L);
  }
  if (po) path_op_free(po);
  if (err < 0) {
    return braid__fs_raise(L, fname, err, lua_tostring(L, 1), NULL, NULL);
  }
  return 0;
}

/* Checks the task and the path at 1 (a string without zero bytes). */
static void path_begin (lua_State *L, struct path_args *a, int kind) {
  const char *fname = path_fnames[kind];
  memset(a, 0, sizeof *a);
  a->kind = kind;
  a->loop = braid_loop(braid_check_task(L, fname));
  braid__fs_check_path(L, 1, fname, 1);
  a->path = lua_tostring(L, 1);
}

static int path_suspend (lua_State *L, struct path_args *a) {
  braid_check_suspend(L, path_fnames[a->kind]);
  return braid_suspendk(L, path_waits[a->kind], sizeof(struct path_call),
                        path_start, path_cancel, a, path_k);
}

/* braid.fs.chmod(path, mode): sets the permission bits (0 to 0o7777). */
static int l_fs_chmod (lua_State *L) {
  struct path_args a;
  lua_Integer mode;
  path_begin(L, &a, P_CHMOD);
  if (!lua_isinteger(L, 2) || (mode = lua_tointeger(L, 2)) < 0 ||
      mode > 07777)
    return braid_argerror(L, 2, "braid.fs.chmod", "mode (an integer from 0 "
                          "to 0o7777) expected");
  a.mode = (int) mode;
  lua_settop(L, 1);
  return path_suspend(L, &a);
}

/* braid.fs.realpath(path) -> the absolute path, links resolved. */
static int l_fs_realpath (lua_State *L) {
  struct path_args a;
  path_begin(L, &a, P_REALPATH);
  lua_settop(L, 1);
  return path_suspend(L, &a);
}

/* braid.fs._mkdtemp(template) -> path: template ends in "XXXXXX". */
static int l_fs_mkdtemp (lua_State *L) {
  struct path_args a;
  path_begin(L, &a, P_MKDTEMP);
  lua_settop(L, 1);
  return path_suspend(L, &a);
}

/* Adds chmod, realpath and _mkdtemp to the braid.fs table at the
** stack top. [-0, +0, m] */
void braid__open_fs_path (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"chmod", l_fs_chmod},
    {"realpath", l_fs_realpath},
    {"_mkdtemp", l_fs_mkdtemp},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}
