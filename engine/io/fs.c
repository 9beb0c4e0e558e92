/*
** fs.c: braid.fs, files and directories on libuv's fs requests:
** read_file, write_file, append_file, stat, list, mkdir, remove, rename.
**
** Each call suspends its task with braid_suspendk, as an embedder's C
** function would. The work is one struct fs_op, malloc'd by the start
** function, with one uv_fs_t embedded that is reused step after step
** (open, read or write in chunks, close); the steps chain in fs_cb, which
** resumes the op once, when the whole operation has ended. The
** continuation fs_k turns the outcome into Lua values (or the io error) in
** the task and frees the fs_op. The loop never blocks: every step runs on
** libuv's thread pool, except a FIFO's (or socket's) reads and writes.
**
** A FIFO must not hold a pool thread in open(2) or read(2), where nobody
** can cancel it (braid could not even exit). So read_file, write_file and
** append_file open O_NONBLOCK and look at what opened (fstat: no I/O): a
** FIFO or socket is then read or written on the loop, non-blocking, when a
** poll handle says it can (a FIFO read waits for a writer, and ends when
** the writers have gone); anything else is made blocking again and goes
** to the pool. Opening a FIFO to write fails (ENXIO) while it has no
** reader: a stat confirms it is a FIFO, and the open is tried again every
** FIFO_RETRY_MS on a timer, so the wait is the loop's and cancellable.
**
** Invariants:
** - The op's data (struct fs_call, inline in the task) only points at the
**   fs_op: a request libuv still owns after a cancel must not live in the
**   op, which ends with the cancel. Ownership of an fs_op is in exactly one
**   place. Until its op ends it is the op's: fs_k frees it, and so does
**   fs_cancel when the op ends without fs_k (abandoned after the resume).
**   Cancelling a busy fs_op detaches it (fo->op = NULL): uv_cancel is
**   tried, and fs_cb, which libuv calls exactly once per request either
**   way, closes any descriptor the op opened and frees it.
** - A request that fails to start frees its fs_op at once and resumes the
**   op with the code in the fs_call, so nothing is owned then.
** - fs_k frees the fs_op whether or not building the results raises: they
**   are built under lua_pcall.
** - fo->fd is the descriptor the op owns, -1 once a close has been started.
** - Bytes written come from the op's own copy of the string, never from
**   the Lua string itself, so a detached write cannot outlive its source.
** - A uv_fs_t is cleaned up before it is reused and when the op is freed
**   (uv_fs_req_cleanup is idempotent); a scandir request keeps its entries
**   until the continuation has read them.
** - fo->wait is the poll or timer handle of a FIFO's wait, on the loop,
**   while no request is in flight; it has its own memory, freed by its
**   close callback, and is closed before the descriptor it polls.
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/fs.h"

void braid__open_fs_path(lua_State *L);    /* fs_path.c */
void braid__open_fs_watch(lua_State *L);   /* fs_watch.c */
void braid__open_fs_file(lua_State *L);    /* fs_file.c */
void braid__open_fs_tree(lua_State *L);    /* fs_tree.c */
void braid__open_fs_copy(lua_State *L);    /* fs_copy.c */

#define CHUNK_MIN (64 * 1024)
#define CHUNK_MAX (1024 * 1024)   /* per request: keeps cancellation prompt */
#define FIFO_ROUNDS 16            /* chunks per poll callback: fair to others */

/* read_file's max_size by default: the file becomes one Lua string, so a
** file near memory sizes is no read_file's; 64 MiB (as exec's max_output)
** reads any configuration, page or data file a script handles whole, and
** stops /dev/zero or a runaway log within a second. */
#define READ_MAX_SIZE ((size_t) 64 << 20)

enum { OP_READ, OP_WRITE, OP_APPEND, OP_STAT, OP_LIST, OP_MKDIR, OP_REMOVE,
       OP_RENAME };

/* What each call waits on (braid.dump, deadlock reports)... */
static const char *const op_names[] = {
  "read_file", "write_file", "append_file", "stat", "list", "mkdir",
  "remove", "rename"
};

/* ...and the function, as the script wrote it, that messages name. */
static const char *const fnames[] = {
  "braid.fs.read_file", "braid.fs.write_file", "braid.fs.append_file",
  "braid.fs.stat", "braid.fs.list", "braid.fs.mkdir", "braid.fs.remove",
  "braid.fs.rename"
};

struct fs_op {
  braid_op_t *op;            /* the call waiting for it; NULL once detached */
  struct braid_fs_wait *wait;   /* a FIFO's wait, or NULL */
  char *path;                /* write_file, append_file: to open again */
  braid_engine_t *E;
  uv_fs_t req;
  int kind;
  int busy;                  /* a request is in flight */
  int err;                   /* the first failure, a UV_E* code, or 0 */
  int over;                  /* read: more than max bytes came */
  int fifo;                  /* the path is a FIFO waiting for a reader */
  uv_file fd;
  char *buf;                 /* read: what came so far; write: the data */
  size_t len, cap, off;
  size_t max;                /* read: max_size */
  struct braid_charge charge;   /* buf's bytes, against the memory limit */
  uv_stat_t st;
};

/* The op's data: inline in the task, so suspending allocates nothing. */
struct fs_call {
  struct fs_op *fo;          /* NULL when the request could not start */
  int kind;
  int err;                   /* why it could not start */
  int unlink_err;            /* remove(): why unlink refused, before rmdir */
};

/* What a call asks for: start's argument, on the C stack. */
struct fs_args {
  uv_loop_t *loop;
  int kind, mode, unlink_err;
  const char *path, *to;
  const char *data;          /* write_file, append_file */
  size_t len;
  size_t max;                /* read_file: max_size */
};

static void fs_cb (uv_fs_t *req);
static void fs_retry_cb (uv_timer_t *h);

static void fs_wait_free_cb (uv_handle_t *h) {
  free(h);   /* the handle is the wait's first member */
}

void braid__fs_wait_stop (struct braid_fs_wait **slot) {
  if (*slot == NULL) return;
  uv_close(&(*slot)->u.handle, fs_wait_free_cb);
  *slot = NULL;
}

int braid__fs_wait_start (uv_loop_t *loop, struct braid_fs_wait **slot,
                          void *owner, int fd, int events,
                          uv_poll_cb poll_cb, uv_timer_cb timer_cb) {
  struct braid_fs_wait *w = braid__calloc(1, sizeof *w);
  int rc;
  if (w == NULL) return UV_ENOMEM;
  w->owner = owner;
  if (fd < 0) {
    uv_timer_init(loop, &w->u.timer);
  } else if ((rc = uv_poll_init(loop, &w->u.poll, fd)) != 0) {
    free(w);
    return rc;
  }
  *slot = w;
  rc = fd < 0 ? uv_timer_start(&w->u.timer, timer_cb, FIFO_RETRY_MS, 0)
              : uv_poll_start(&w->u.poll, events, poll_cb);
  if (rc != 0) braid__fs_wait_stop(slot);
  return rc;
}

static void fs_wait_stop (struct fs_op *fo) {
  braid__fs_wait_stop(&fo->wait);
}

/* Frees fo and its buffer, and releases the buffer's charge (fo may go
** after braid_close: the charge keeps E's memory until then). */
static void fs_op_free (struct fs_op *fo) {
  fs_wait_stop(fo);
  uv_fs_req_cleanup(&fo->req);
  free(fo->path);
  free(fo->buf);
  braid__charge_set(&fo->charge, fo->E, 0);
  free(fo);
}

/* Makes room for the next read, growing the buffer first when full: at
** most one byte past max_size (that byte tells the file is longer), each
** growth charged against the memory limit. *np: how many bytes to read
** (at most CHUNK_MAX); 0 or UV_ENOMEM. */
static int fs_read_room (struct fs_op *fo, size_t *np) {
  size_t n, want = fo->max - fo->len + 1;   /* len <= max: want >= 1 */
  if (fo->cap - fo->len < CHUNK_MIN && fo->cap - fo->len < want) {
    size_t cap = fo->cap ? fo->cap * 2 : CHUNK_MIN;
    char *p;
    if (cap - fo->len > want) cap = fo->len + want;   /* still > fo->cap */
    if (braid__charge_set(&fo->charge, fo->E, cap) != 0) return UV_ENOMEM;
    p = braid__realloc(fo->buf, cap);   /* fs_cb: the op fails */
    if (p == NULL) {
      braid__charge_set(&fo->charge, fo->E, fo->cap);
      return UV_ENOMEM;
    }
    fo->buf = p;
    fo->cap = cap;
  }
  n = fo->cap - fo->len;
  if (n > want) n = want;
  if (n > CHUNK_MAX) n = CHUNK_MAX;
  *np = n;
  return 0;
}

/* Starts the next read into the buffer. */
static int fs_read_next (struct fs_op *fo) {
  uv_buf_t b;
  size_t n;
  int rc = fs_read_room(fo, &n);
  if (rc < 0) return rc;
  b = uv_buf_init(fo->buf + fo->len, (unsigned) n);   /* n <= CHUNK_MAX */
  return uv_fs_read(fo->req.loop, &fo->req, fo->fd, &b, 1, -1, fs_cb);
}

/* Writes the next chunk: at most CHUNK_MAX bytes, so a string of 4 GiB or
** more is written whole (uv_buf_init takes an unsigned). */
static int fs_write_next (struct fs_op *fo) {
  size_t n = fo->len - fo->off;
  uv_buf_t b;
  if (n > CHUNK_MAX) n = CHUNK_MAX;
  b = uv_buf_init(fo->buf + fo->off, (unsigned) n);
  return uv_fs_write(fo->req.loop, &fo->req, fo->fd, &b, 1, -1, fs_cb);
}

/* Starts closing the op's descriptor; 0, or a code when even that failed
** to start (the descriptor is then given up: there is nothing else to do). */
static int fs_close_fd (struct fs_op *fo) {
  uv_file fd = fo->fd;
  fo->fd = -1;
  return uv_fs_close(fo->req.loop, &fo->req, fd, fs_cb);
}

/* A detached op's request came back: close what it opened, then free it. */
static void fs_detached (struct fs_op *fo) {
  if (fo->req.fs_type == UV_FS_OPEN && fo->req.result >= 0)
    fo->fd = (uv_file) fo->req.result;
  uv_fs_req_cleanup(&fo->req);
  if (fo->fd >= 0 && fs_close_fd(fo) == 0) {
    fo->busy = 1;
    return;
  }
  fs_op_free(fo);
}

/* Decides the step after a failure or the last transfer: close the
** descriptor if one is open, else hand the outcome to the task. */
static void fs_finish (struct fs_op *fo, int err) {
  if (err < 0 && fo->err == 0) fo->err = err;
  fs_wait_stop(fo);
  if (fo->fd >= 0) {
    int rc = fs_close_fd(fo);
    if (rc == 0) {
      fo->busy = 1;
      return;
    }
    if (fo->err == 0) fo->err = rc;
  }
  braid_resume(fo->op, 0);
}

/* A FIFO's reads, on the loop: 1 at its end, 0 to wait for more, or an
** error (UV_EFBIG past max_size). */
static int fs_pipe_read (struct fs_op *fo) {
  int i, rc;
  for (i = 0; i < FIFO_ROUNDS; i++) {
    size_t n;
    ssize_t r;
    if ((rc = fs_read_room(fo, &n)) < 0) return rc;
    r = read(fo->fd, fo->buf + fo->len, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    if (r == 0) return 1;
    fo->len += (size_t) r;
    if (fo->len > fo->max) {
      fo->over = 1;
      return UV_EFBIG;
    }
  }
  return 0;
}

/* A FIFO's writes, on the loop: 1 when all is written, 0 to wait, or an
** error (EPIPE: the readers have gone). */
static int fs_pipe_write (struct fs_op *fo) {
  int i;
  for (i = 0; i < FIFO_ROUNDS && fo->off < fo->len; i++) {
    size_t n = fo->len - fo->off;
    ssize_t r = write(fo->fd, fo->buf + fo->off, n > CHUNK_MAX ? CHUNK_MAX
                                                               : n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
    fo->off += (size_t) r;
  }
  return fo->off >= fo->len;
}

/* libuv reports POLLERR (a FIFO whose readers have gone) as UV_EBADF and
** stops the handle: the read or write then says what happened (EPIPE). */
static void fs_poll_cb (uv_poll_t *h, int status, int events) {
  struct fs_op *fo = (struct fs_op *) FS_WAIT_OWNER(h);
  int rc = fo->kind == OP_READ ? fs_pipe_read(fo) : fs_pipe_write(fo);
  (void) events;
  if (rc == 0 && status < 0) rc = status;
  if (rc != 0) fs_finish(fo, rc);
}

/* Makes fo wait on the loop with a new handle (a poll of the descriptor,
** or, with none, a timer): 0 or a code. */
static int fs_wait_start (struct fs_op *fo) {
  return braid__fs_wait_start(fo->req.loop, &fo->wait, fo, fo->fd,
                              fo->kind == OP_READ ? UV_READABLE
                                                  : UV_WRITABLE,
                              fs_poll_cb, fs_retry_cb);
}

/* Opens the path (again); O_NONBLOCK so that a FIFO never blocks open(2). */
static int fs_open (struct fs_op *fo, uv_loop_t *loop, const char *path) {
  int flags = fo->kind == OP_READ ? O_RDONLY : O_WRONLY | O_CREAT |
              (fo->kind == OP_APPEND ? O_APPEND : O_TRUNC);
  return uv_fs_open(loop, &fo->req, path, flags | O_NONBLOCK | O_CLOEXEC,
                    0666, fs_cb);
}

/* A FIFO's reader may have come: open again. */
static void fs_retry_cb (uv_timer_t *h) {
  struct fs_op *fo = (struct fs_op *) FS_WAIT_OWNER(h);
  int rc;
  fs_wait_stop(fo);
  rc = fs_open(fo, h->loop, fo->path);
  if (rc < 0) fs_finish(fo, rc);
  else fo->busy = 1;
}

/* The path is open (O_NONBLOCK): a FIFO or socket waits for its poll;
** anything else is made blocking again for the pool's reads and writes.
** 1: go on on the pool; 0: waiting; or an error. */
static int fs_opened (struct fs_op *fo) {
  struct stat st;
  int fl;
  if (fstat(fo->fd, &st) == 0 &&
      (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))) {
    int rc;
    if (fo->kind != OP_READ && fo->len == 0) return 1;   /* nothing to do */
    rc = fs_wait_start(fo);
    return rc < 0 ? rc : 0;
  }
  fl = fcntl(fo->fd, F_GETFL);
  if (fl < 0 || fcntl(fo->fd, F_SETFL, fl & ~O_NONBLOCK) != 0) return -errno;
  return 1;
}

static void fs_cb (uv_fs_t *req) {
  struct fs_op *fo = container_of(req, struct fs_op, req);
  ssize_t r = req->result;
  int rc = 0;
  fo->busy = 0;
  if (fo->op == NULL) {
    fs_detached(fo);
    return;
  }
  if (req->fs_type == UV_FS_SCANDIR) {   /* the continuation reads them */
    if (r < 0) fo->err = (int) r;
    braid_resume(fo->op, 0);
    return;
  }
  if (req->fs_type == UV_FS_LSTAT && r == 0) fo->st = req->statbuf;
  if (req->fs_type == UV_FS_STAT) {   /* after ENXIO: a FIFO, no reader? */
    fo->fifo = r == 0 && S_ISFIFO(req->statbuf.st_mode);
    uv_fs_req_cleanup(req);
    rc = fo->fifo ? fs_wait_start(fo) : UV_ENXIO;
    if (rc < 0) fs_finish(fo, rc);
    return;
  }
  uv_fs_req_cleanup(req);
  if (r == UV_ENXIO && req->fs_type == UV_FS_OPEN && fo->path != NULL) {
    rc = fo->fifo ? fs_wait_start(fo)
                  : uv_fs_stat(req->loop, req, fo->path, fs_cb);
    if (rc < 0) fs_finish(fo, rc);
    else fo->busy = !fo->fifo;
    return;
  }
  if (r < 0) {
    fs_finish(fo, (int) r);
    return;
  }
  switch (req->fs_type) {
    case UV_FS_OPEN:
      fo->fd = (uv_file) r;
      if ((rc = fs_opened(fo)) <= 0) break;   /* a FIFO waits, or failed */
      if (fo->kind != OP_READ && fo->len == 0) {   /* nothing to write */
        fs_finish(fo, 0);
        return;
      }
      rc = fo->kind == OP_READ ? fs_read_next(fo) : fs_write_next(fo);
      break;
    case UV_FS_READ:
      if (r == 0) {
        fs_finish(fo, 0);
        return;
      }
      fo->len += (size_t) r;
      if (fo->len > fo->max) {   /* longer than max_size */
        fo->over = 1;
        fs_finish(fo, UV_EFBIG);
        return;
      }
      rc = fs_read_next(fo);
      break;
    case UV_FS_WRITE:
      if (r == 0) {   /* no progress: never spin */
        fs_finish(fo, UV_EIO);
        return;
      }
      fo->off += (size_t) r;
      if (fo->off >= fo->len) {
        fs_finish(fo, 0);
        return;
      }
      rc = fs_write_next(fo);
      break;
    default:   /* close, lstat, mkdir, unlink, rmdir, rename: the last step */
      braid_resume(fo->op, 0);
      return;
  }
  if (rc < 0) fs_finish(fo, rc);
  else fo->busy = fo->wait == NULL;
}

/* Makes the fs_op and sends its first request. When that cannot be done
** the op is resumed at once with the code in its fs_call, so that fs_k
** raises the usual error (with the path), not a bare io error. */
static int fs_start (braid_op_t *op, void *ud) {
  const struct fs_args *a = (const struct fs_args *) ud;
  struct fs_call *c = (struct fs_call *) braid_op_data(op);
  struct fs_op *fo = (struct fs_op *) braid__calloc(1, sizeof *fo);
  int rc = UV_ENOMEM;
  braid_op_label(op, "fs.%s %s", op_names[a->kind], a->path ? a->path : "");
  c->kind = a->kind;
  c->unlink_err = a->unlink_err;
  if (fo == NULL) goto failed;
  fo->op = op;
  fo->E = braid_op_engine(op);
  fo->kind = a->kind;
  fo->max = a->max;
  fo->fd = -1;
  switch (a->kind) {
    case OP_READ:
      rc = fs_open(fo, a->loop, a->path);
      break;
    case OP_WRITE: case OP_APPEND:   /* the copy counts: rc is UV_ENOMEM */
      if (braid__charge_set(&fo->charge, fo->E, a->len ? a->len : 1) != 0)
        break;
      fo->buf = (char *) braid__malloc(a->len ? a->len : 1);
      if (fo->buf == NULL) break;
      memcpy(fo->buf, a->data, a->len);
      fo->len = fo->cap = a->len;
      if ((fo->path = braid__strdup(a->path)) == NULL) break;   /* to open
                                                  ** a FIFO again */
      rc = fs_open(fo, a->loop, a->path);
      break;
    case OP_STAT:
      rc = uv_fs_lstat(a->loop, &fo->req, a->path, fs_cb);
      break;
    case OP_LIST:
      rc = uv_fs_scandir(a->loop, &fo->req, a->path, 0, fs_cb);
      break;
    case OP_MKDIR:
      rc = uv_fs_mkdir(a->loop, &fo->req, a->path, a->mode, fs_cb);
      break;
    case OP_REMOVE:
      rc = a->unlink_err ? uv_fs_rmdir(a->loop, &fo->req, a->path, fs_cb)
                         : uv_fs_unlink(a->loop, &fo->req, a->path, fs_cb);
      break;
    case OP_RENAME:
      rc = uv_fs_rename(a->loop, &fo->req, a->path, a->to, fs_cb);
      break;
  }
  if (rc == 0) {
    fo->busy = 1;
    c->fo = fo;
    return 0;
  }
  fs_op_free(fo);
failed:
  c->err = rc;
  braid_resume(op, 0);
  return 0;
}

/* Ends the op without fs_k: a request in flight is detached, cancelled
** if libuv still can, and fs_cb frees it when it returns; an idle fs_op
** (the op was resumed, then its task abandoned) is freed. A close is never
** cancelled: fo->fd is already -1, so a cancelled close would leak the
** descriptor. */
static void fs_cancel (braid_op_t *op) {
  struct fs_op *fo = ((struct fs_call *) braid_op_data(op))->fo;
  if (fo == NULL) return;
  fo->op = NULL;
  if (fo->wait != NULL) {   /* a FIFO's wait: no request in flight */
    fs_wait_stop(fo);
    if (fo->fd >= 0 && fs_close_fd(fo) == 0) fo->busy = 1;   /* fs_cb frees */
    else fs_op_free(fo);
    return;
  }
  if (!fo->busy) fs_op_free(fo);
  else if (fo->req.fs_type != UV_FS_CLOSE) uv_cancel((uv_req_t *) &fo->req);
}

const char *braid__fs_check_path (lua_State *L, int arg, const char *fname,
                                  int nonempty) {
  size_t len;
  const char *p;
  braid__check_type(L, arg, LUA_TSTRING, fname);   /* numbers are no paths */
  p = lua_tolstring(L, arg, &len);
  if (strlen(p) != len)
    braid_argerror(L, arg, fname, "path contains a zero byte");
  if (nonempty && len == 0)
    braid_argerror(L, arg, fname, "path must not be empty");
  return p;
}

int braid__fs_raise (lua_State *L, const char *fname, int err,
                     const char *path, const char *to, const char *what) {
  if (err == UV_ENOMEM) return braid__error_uv(L, err, fname);
  if (what == NULL) what = braid__strerror(err);
  if (to)
    braid_pusherror(L, "io", braid__errname(err), "%s %s -> %s: %s",
                    fname, path, to, what);
  else
    braid_pusherror(L, "io", braid__errname(err), "%s %s: %s", fname, path,
                    what);
  lua_pushstring(L, path);
  lua_setfield(L, -2, "path");
  return lua_error(L);
}

static int fs_raise_limit (lua_State *L, size_t max, const char *path) {
  braid__push_limit_error(L, max, "max_size", "braid.fs.read_file %s: "
                          "file longer than %I bytes (the max_size option "
                          "raises the limit)", path, (lua_Integer) max);
  lua_pushstring(L, path);
  lua_setfield(L, -2, "path");
  return lua_error(L);
}

static int cmp_names (const void *a, const void *b) {
  return strcmp(*(const char *const *) a, *(const char *const *) b);
}

/* list(): the scandir entries as a sorted array. uv_fs_scandir_next frees
** each entry at the next call, so the names become Lua strings first, in a
** table that anchors them while their pointers are sorted in a userdata;
** then the result is built. [-0, +1, m] */
static void fs_push_list (lua_State *L, struct fs_op *fo) {
  uv_dirent_t ent;
  const char **names;
  lua_Integer n = 0, i;
  lua_createtable(L, fo->req.result > 0 ? (int) fo->req.result : 0, 0);
  while (uv_fs_scandir_next(&fo->req, &ent) == 0) {
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

/* [fs_op] -> the result of a read_file, stat or list (under lua_pcall). */
static int l_fs_result (lua_State *L) {
  struct fs_op *fo = (struct fs_op *) lua_touserdata(L, 1);
  switch (fo->kind) {
    case OP_READ: lua_pushlstring(L, fo->buf ? fo->buf : "", fo->len); break;
    case OP_STAT: fs_push_stat(L, &fo->st); break;
    default: fs_push_list(L, fo); break;
  }
  return 1;
}

static int fs_suspend (lua_State *L, struct fs_args *a);

/* The continuation, in the task: the arguments are still at 1 (and 2).
** The fs_op is freed before an error is raised, and after the results
** are built, protected, so that it is freed even if that raises. */
static int fs_k (lua_State *L, braid_op_t *op) {
  struct fs_call *c = (struct fs_call *) braid_op_data(op);
  struct fs_op *fo = c->fo;
  int kind = c->kind, err = fo ? fo->err : c->err, status;
  if (kind == OP_REMOVE && fo && !c->unlink_err &&
      (err == UV_EISDIR || err == UV_EPERM)) {
    /* unlink refused what may be a directory: try rmdir, and report
    ** unlink's reason if the path was no directory after all. */
    struct fs_args a;
    memset(&a, 0, sizeof a);
    a.kind = OP_REMOVE;
    a.loop = fo->req.loop;
    a.unlink_err = err;
    fs_op_free(fo);
    return fs_suspend(L, &a);
  }
  if (err == UV_ENOTDIR && c->unlink_err) err = c->unlink_err;
  if (err < 0) {
    int over = fo && fo->over;
    size_t max = over ? fo->max : 0;
    if (fo) fs_op_free(fo);   /* now: a failed read may hold a large buffer */
    if (over) return fs_raise_limit(L, max, lua_tostring(L, 1));
    return braid__fs_raise(L, fnames[kind], err, lua_tostring(L, 1),
                           kind == OP_RENAME ? lua_tostring(L, 2) : NULL,
                           NULL);
  }
  if (kind != OP_READ && kind != OP_STAT && kind != OP_LIST) {
    fs_op_free(fo);
    return 0;
  }
  lua_pushcfunction(L, l_fs_result);
  lua_pushlightuserdata(L, fo);
  status = lua_pcall(L, 1, 1, 0);
  fs_op_free(fo);
  return status == LUA_OK ? 1 : lua_error(L);
}

/* Suspends the task for the whole operation; the path is at 1 (the
** rename's target at 2), with nothing above the arguments. */
static int fs_suspend (lua_State *L, struct fs_args *a) {
  a->path = lua_tostring(L, 1);
  if (a->kind == OP_RENAME) a->to = lua_tostring(L, 2);
  braid_check_suspend(L, fnames[a->kind]);   /* named, before the start */
  return braid_suspendk(L, op_names[a->kind], sizeof(struct fs_call),
                        fs_start, fs_cancel, a, fs_k);
}

/* Checks the task and the path(s) in that order, as every call does. */
static void fs_begin (lua_State *L, struct fs_args *a, int kind) {
  const char *fname = fnames[kind];
  memset(a, 0, sizeof *a);
  a->kind = kind;
  a->loop = braid_loop(braid_check_task(L, fname));
  braid__fs_check_path(L, 1, fname, 0);
  if (kind == OP_RENAME) braid__fs_check_path(L, 2, fname, 0);
}

static const char *const read_options[] = {"max_size", NULL};

/* braid.fs.read_file(path, [opts]) -> string: the whole file, read in
** chunks. opts.max_size: the most bytes it may have (default 64 MiB,
** math.huge: no cap); a longer one (or /dev/zero) raises kind "limit"
** after reading one byte more, never more. */
static int l_fs_read_file (lua_State *L) {
  struct fs_args a;
  fs_begin(L, &a, OP_READ);
  braid__check_options(L, 2, "braid.fs.read_file", read_options);
  a.max = braid__opt_limit(L, 2, "max_size", READ_MAX_SIZE,
                           "braid.fs.read_file");
  lua_settop(L, 1);
  return fs_suspend(L, &a);
}

static int fs_write (lua_State *L, int kind) {
  struct fs_args a;
  fs_begin(L, &a, kind);
  braid__check_type(L, 2, LUA_TSTRING, fnames[kind]);
  a.data = lua_tolstring(L, 2, &a.len);
  lua_settop(L, 2);
  return fs_suspend(L, &a);
}

/* braid.fs.write_file(path, s): creates or truncates the file, writes s. */
static int l_fs_write_file (lua_State *L) { return fs_write(L, OP_WRITE); }

/* braid.fs.append_file(path, s): creates the file if needed, appends s. */
static int l_fs_append_file (lua_State *L) { return fs_write(L, OP_APPEND); }

/* braid.fs.stat(path) -> {size, mtime, type, mode}; a symbolic link is
** described itself ("link"), not followed. */
static int l_fs_stat (lua_State *L) {
  struct fs_args a;
  fs_begin(L, &a, OP_STAT);
  lua_settop(L, 1);
  return fs_suspend(L, &a);
}

/* braid.fs.list(dir) -> sorted array of the names in dir (no "." or ".."). */
static int l_fs_list (lua_State *L) {
  struct fs_args a;
  fs_begin(L, &a, OP_LIST);
  lua_settop(L, 1);
  return fs_suspend(L, &a);
}

/* braid.fs.mkdir(path, [mode = 0777]): one directory (the umask applies). */
static int l_fs_mkdir (lua_State *L) {
  struct fs_args a;
  lua_Integer mode;
  fs_begin(L, &a, OP_MKDIR);
  if (lua_isnoneornil(L, 2)) mode = 0777;
  else if (!lua_isinteger(L, 2) || (mode = lua_tointeger(L, 2)) < 0 ||
           mode > 07777)
    return braid_argerror(L, 2, "braid.fs.mkdir", "mode (an integer from 0 "
                          "to 0o7777) expected");
  a.mode = (int) mode;
  lua_settop(L, 1);
  return fs_suspend(L, &a);
}

/* braid.fs.remove(path): a file, a link or an empty directory. */
static int l_fs_remove (lua_State *L) {
  struct fs_args a;
  fs_begin(L, &a, OP_REMOVE);
  lua_settop(L, 1);
  return fs_suspend(L, &a);
}

/* braid.fs.rename(from, to): replaces `to` if it exists, as rename(2). */
static int l_fs_rename (lua_State *L) {
  struct fs_args a;
  fs_begin(L, &a, OP_RENAME);
  lua_settop(L, 2);
  return fs_suspend(L, &a);
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
  luaL_newlib(L, funcs);
  braid__open_fs_path(L);   /* chmod, realpath: fs_path.c */
  braid__open_fs_watch(L);  /* watch: fs_watch.c */
  braid__open_fs_file(L);   /* open: fs_file.c */
  braid__open_fs_tree(L);   /* _remove_tree: fs_tree.c */
  braid__open_fs_copy(L);   /* _copy_new, under copy: fs_copy.c */
  lua_setfield(L, -2, "fs");
}
