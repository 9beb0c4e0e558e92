/*
** fs_file.c: braid.fs.open(path, [mode]) -> file, with file:read([n |
** "a"]), file:read_line(), file:lines(), file:write(s), file:seek([whence,
** [offset]]), file:close(); and braid.fs.lines(path) (Lua, on top).
**
** A file is a malloc'd struct braid_file found from Lua through a box
** userdata, whose one user value is the path as the script gave it (for
** the errors of its methods: "file:read /tmp/x: ...", field `path`).
** Reads fill one buffer with positioned reads (uv_fs_read at the file's
** own offset), each request a struct file_req of its own; the
** continuation looks again and may read again, so a long line or "a"
** grows the buffer as it comes, charged against the memory limit and
** bounded by max_line for lines.
**
** Invariants:
** - At most one request is in flight per file (`busy`); a second task's
**   call is a usage error, as for streams.
** - A request libuv still owns is never freed or reused: a cancelled call
**   detaches it (req->op = NULL) and its callback frees it. Its effect
**   (bytes read into the buffer, the position a write moved) is kept all
**   the same, and the next call on the file first waits for it (adopts
**   it), so nothing touches the buffer while libuv writes into it. The
**   descriptor is closed only when no request is in flight: closing a
**   file with one in flight marks it (`closing`) and the callback closes
**   it then, so a detached read never reads a descriptor number reused by
**   another file.
** - The position the script sees is `pos - len` (pos: where the next read
**   starts; len: bytes read ahead and not handed out yet). A write or a
**   seek drops what was read ahead.
** - A file is a resource of the scope that opened it: the scope's end,
**   close(), __close and __gc close it. The struct is freed once it is
**   closed and no request is in flight.
** - Opening is a request too (struct open_req), so that it is
**   cancellable: an open cancelled in flight closes what it opened. A
**   FIFO never waits in open(2) on a pool thread (every mode opens
**   O_NONBLOCK): opened to read it waits for its writer on the loop
**   (fs.h's wait, a poll); opened to write only, which fails (ENXIO)
**   while it has no reader, a stat confirms it is a FIFO and the open is
**   tried again every FIFO_RETRY_MS (the wait's timer).
*/
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "io/fs.h"

#define FILE_MT "braid.File"
#define FILE_CHUNK (64 * 1024)
#define FILE_MAX_LINE (1 << 20)
#define FILE_WRITE_MAX ((size_t) 1 << 30)   /* one write(2); uv_buf_t's
                                            ** length is an unsigned int */

struct braid_file;

struct file_req {
  uv_fs_t req;
  struct braid_file *f;
  braid_op_t *op;              /* the waiting call; NULL once detached */
  char *data;                  /* a write's copy of its string */
  size_t want, done;           /* a write's length, and bytes written */
};

struct braid_file {
  braid_engine_t *E;
  uv_file fd;
  braid_resource_t res;
  struct braid_file **box;     /* the Lua object; NULL once it is gone */
  struct file_req *busy;       /* the request in flight, or NULL */
  struct braid_charge charge;  /* buf, against the memory limit */
  char *buf;
  size_t cap, off, len;        /* read ahead: buf[off, off + len) */
  int64_t pos;                 /* where the next read starts */
  size_t max_line;
  int err;                     /* a read error to hand out, or 0 */
  unsigned char eof, closing, append;
  unsigned char seekable;      /* a regular file (or a device): positioned
                                  I/O; a FIFO or socket reads in order */
};

static void file_free (struct braid_file *f) {
  braid__charge_set(&f->charge, f->E, 0);
  free(f->buf);
  free(f);
}

/* Closes the descriptor once nothing reads or writes it, and frees the
** struct; before that, only marks it. Runs no Lua. */
static void file_close (struct braid_file *f) {
  if (!f->closing) {
    f->closing = 1;
    braid_resource_remove(&f->res);
    if (f->box) *f->box = NULL;
    f->box = NULL;
  }
  if (f->busy) return;          /* the request's callback finishes this */
  if (f->fd >= 0) close(f->fd);
  f->fd = -1;
  file_free(f);
}

static void file_res_close (braid_resource_t *r) {
  file_close(container_of(r, struct braid_file, res));
}

static void file_req_cb (uv_fs_t *req);

/* Starts writing what fr has not written yet (at the file's position);
** 0 or a libuv error. */
static int file_write_rest (struct braid_file *f, struct file_req *fr) {
  size_t n = fr->want - fr->done;
  uv_buf_t b = uv_buf_init(fr->data + fr->done, (unsigned)
                           (n < FILE_WRITE_MAX ? n : FILE_WRITE_MAX));
  return uv_fs_write(braid_loop(f->E), &fr->req, f->fd, &b, 1,
                     f->append || !f->seekable ? -1 : f->pos, file_req_cb);
}

static void file_req_cb (uv_fs_t *req) {
  struct file_req *fr = container_of(req, struct file_req, req);
  struct braid_file *f = fr->f;
  braid_op_t *op = fr->op;
  ssize_t n = req->result;
  if (req->fs_type == UV_FS_WRITE && !f->closing && n >= 0) {
    /* a short write (a full disk, a file size limit, write(2)'s 2 GiB)
    ** goes on with the rest, which then reports the failure, if any */
    if (!f->append) f->pos += n;
    else {   /* the write went to the end, and left the offset there */
      off_t end = lseek(f->fd, 0, SEEK_CUR);
      if (end >= 0) f->pos = (int64_t) end;
    }
    fr->done += (size_t) n;
    if (n > 0 && fr->done < fr->want) {
      uv_fs_req_cleanup(req);
      if ((n = file_write_rest(f, fr)) == 0) return;   /* still busy */
    } else if (fr->done < fr->want) {
      n = UV_EIO;                /* wrote nothing, said nothing */
    }
  }
  f->busy = NULL;
  if (req->fs_type == UV_FS_READ && !f->closing) {
    if (n < 0) f->err = (int) n;
    else if (n == 0) f->eof = 1;
    else {
      f->len += (size_t) n;
      f->pos += n;
    }
  } else if (req->fs_type == UV_FS_WRITE && !f->closing && n < 0) {
    f->err = (int) n;
  }
  uv_fs_req_cleanup(req);
  free(fr->data);
  free(fr);
  if (f->closing) file_close(f);   /* deferred until now */
  if (op) braid_resume(op, 0);
}

/* The open file at 1, or kind "closed". */
static struct braid_file *file_check (lua_State *L, const char *fname) {
  struct braid_file **box = braid__check_object(L, 1, FILE_MT, fname);
  braid_check_task(L, fname);
  if (*box == NULL)
    braid_error(L, "closed", NULL, "%s: the file is closed", fname);
  return *box;
}

struct req_args {
  struct braid_file *f;
  struct file_req *fr;
};

static int req_start (braid_op_t *op, void *ud) {
  struct req_args *a = (struct req_args *) ud;
  *(struct file_req **) braid_op_data(op) = a->fr;
  a->fr->op = op;
  a->f->busy = a->fr;
  return 0;
}

static void req_cancel (braid_op_t *op) {
  struct file_req *fr = *(struct file_req **) braid_op_data(op);
  if (fr->f->busy == fr) fr->op = NULL;   /* detached: its callback frees */
}

/* A request is in flight: another task's (a usage error), or one a
** cancelled call left behind, which this call waits for before k runs
** the call again. */
static int file_adopt (lua_State *L, struct braid_file *f, const char *fname,
                       braid_k_fn k) {
  struct req_args a;
  if (f->busy->op)
    return braid_usageerror(L, "%s: another task is using the file", fname);
  braid_check_suspend(L, fname);
  a.f = f;
  a.fr = f->busy;
  return braid_suspendk(L, "file", sizeof a.fr, req_start, req_cancel, &a,
                        k);
}

/* Raises kind "io" for err (a libuv code) on the file whose box is at 1,
** naming fname and the file's path, with field `path`, and `what` or the
** code's text; running out of memory stays kind "memory" without a path,
** as everywhere. */
static int file_raise_what (lua_State *L, int err, const char *fname,
                            const char *what) {
  lua_getiuservalue(L, 1, 1);
  return braid__fs_raise(L, fname, err, lua_tostring(L, -1), NULL, what);
}

static int file_raise (lua_State *L, int err, const char *fname) {
  return file_raise_what(L, err, fname, NULL);
}

/* Makes room for FILE_CHUNK more bytes after the buffered ones. */
static int file_grow (struct braid_file *f) {
  size_t need = f->len + FILE_CHUNK, cap;
  char *p;
  if (f->off > 0) {
    memmove(f->buf, f->buf + f->off, f->len);
    f->off = 0;
  }
  if (f->cap >= need) return 0;
  cap = f->cap ? f->cap : FILE_CHUNK;
  while (cap < need) cap *= 2;
  if (braid__charge_set(&f->charge, f->E, cap) != 0) return UV_ENOMEM;
  if ((p = realloc(f->buf, cap)) == NULL) {
    braid__charge_set(&f->charge, f->E, f->cap);
    return UV_ENOMEM;
  }
  f->buf = p;
  f->cap = cap;
  return 0;
}

/* Reads the next chunk, then runs k (which looks again). */
static int file_fill (lua_State *L, struct braid_file *f, const char *fname,
                      braid_k_fn k) {
  struct req_args a;
  uv_buf_t b;
  int rc;
  if ((rc = file_grow(f)) != 0) return braid__error_uv(L, rc, fname);
  braid_check_suspend(L, fname);
  if ((a.fr = braid__calloc(1, sizeof *a.fr)) == NULL)
    return braid__error_uv(L, UV_ENOMEM, fname);
  a.f = a.fr->f = f;
  b = uv_buf_init(f->buf + f->off + f->len, FILE_CHUNK);
  rc = uv_fs_read(braid_loop(f->E), &a.fr->req, f->fd, &b, 1,
                  f->seekable ? f->pos : -1, file_req_cb);
  if (rc != 0) {
    free(a.fr);
    return file_raise(L, rc, fname);
  }
  return braid_suspendk(L, "file read", sizeof a.fr, req_start, req_cancel,
                        &a, k);
}

/* Raises a read error once the buffered bytes are handed out. */
static void file_raise_err (lua_State *L, struct braid_file *f,
                            const char *fname) {
  int err = f->err;
  f->err = 0;
  file_raise(L, err, fname);
}

static int file_read_line_k (lua_State *L, braid_op_t *op);
static int file_lines_k (lua_State *L, braid_op_t *op);

/* read_line: the next line without "\n" or "\r\n"; at the end the
** unterminated rest, then nil. */
/* k: the caller's continuation, which calls this again as fname. */
static int file_read_line (lua_State *L, const char *fname, braid_k_fn k) {
  struct braid_file *f = file_check(L, fname);
  char *nl;
  if (f->busy) return file_adopt(L, f, fname, k);
  nl = f->len ? memchr(f->buf + f->off, '\n', f->len) : NULL;
  if (nl) {
    size_t n = (size_t) (nl - (f->buf + f->off)), keep = n;
    if (keep > 0 && f->buf[f->off + keep - 1] == '\r') keep--;
    if (keep > f->max_line) goto too_long;
    lua_pushlstring(L, f->buf + f->off, keep);
    f->off += n + 1;
    f->len -= n + 1;
    return 1;
  }
  if (f->len > f->max_line + 1) {   /* "\r" before a "\n" not counted */
  too_long:
    lua_getiuservalue(L, 1, 1);
    braid__push_limit_error(L, f->max_line, "max_line", "%s %s: line longer "
                            "than %I bytes (the max_line option of "
                            "braid.fs.open raises the limit)", fname,
                            lua_tostring(L, -1), (lua_Integer) f->max_line);
    lua_insert(L, -2);
    lua_setfield(L, -2, "path");
    return lua_error(L);
  }
  if (f->err) file_raise_err(L, f, fname);
  if (f->eof) {
    if (f->len == 0) {
      lua_pushnil(L);
      return 1;
    }
    lua_pushlstring(L, f->buf + f->off, f->len);
    f->off = f->len = 0;
    return 1;
  }
  return file_fill(L, f, fname, k);
}

static int file_read_line_k (lua_State *L, braid_op_t *op) {
  (void) op;
  lua_settop(L, 1);
  return file_read_line(L, "file:read_line", file_read_line_k);
}

static int l_file_read_line (lua_State *L) {
  lua_settop(L, 1);
  return file_read_line(L, "file:read_line", file_read_line_k);
}

static int file_read_k (lua_State *L, braid_op_t *op);

/* read(n): up to n bytes (waiting for at least one), nil at the end;
** read("a") or read(): everything left, "" at the end. The argument is
** at 2. */
static int file_read (lua_State *L) {
  struct braid_file *f = file_check(L, "file:read");
  int all = lua_isnoneornil(L, 2) ||
            (lua_type(L, 2) == LUA_TSTRING && strcmp(lua_tostring(L, 2), "a")
             == 0);
  lua_Integer n = 0;
  int isint = 1;
  if (!all)   /* 1.0 and 2^16 count too, as for a stream's read */
    n = lua_tointegerx(L, 2, &isint);
  if (!all && (!isint || n <= 0))
    return braid_argerror(L, 2, "file:read", "positive integer or \"a\" "
                          "expected");
  if (f->busy) return file_adopt(L, f, "file:read", file_read_k);
  if (!all && f->len > 0) {
    size_t take = (size_t) n < f->len ? (size_t) n : f->len;
    lua_pushlstring(L, f->buf + f->off, take);
    f->off += take;
    f->len -= take;
    return 1;
  }
  if (f->err) file_raise_err(L, f, "file:read");
  if (f->eof) {
    if (all) {
      lua_pushlstring(L, f->buf ? f->buf + f->off : "", f->len);
      f->off = f->len = 0;
    } else {
      lua_pushnil(L);
    }
    return 1;
  }
  return file_fill(L, f, "file:read", file_read_k);
}

static int file_read_k (lua_State *L, braid_op_t *op) {
  (void) op;
  lua_settop(L, 2);
  return file_read(L);
}

static int l_file_read (lua_State *L) {
  lua_settop(L, 2);
  return file_read(L);
}

/* file:lines() -> iterator over read_line, speaking as file:lines (also
** after it waited: its own continuation). */
static int file_lines_k (lua_State *L, braid_op_t *op) {
  (void) op;
  lua_settop(L, 1);
  return file_read_line(L, "file:lines", file_lines_k);
}

static int l_file_lines_step (lua_State *L) {
  lua_settop(L, 1);
  return file_read_line(L, "file:lines", file_lines_k);
}

static int l_file_lines (lua_State *L) {
  braid__check_object(L, 1, FILE_MT, "file:lines");
  lua_pushcfunction(L, l_file_lines_step);
  lua_pushvalue(L, 1);
  return 2;
}

static int l_file_write (lua_State *L);

/* A request left behind has ended: the write starts now. */
static int file_write_again_k (lua_State *L, braid_op_t *op) {
  (void) op;
  lua_settop(L, 2);
  return l_file_write(L);
}

static int file_write_k (lua_State *L, braid_op_t *op) {
  struct braid_file **box = (struct braid_file **) lua_touserdata(L, 1);
  (void) op;
  if (*box == NULL)
    return braid_error(L, "closed", NULL, "file:write: the file was "
                       "closed while writing");
  if ((*box)->err) file_raise_err(L, *box, "file:write");
  lua_settop(L, 1);
  return 1;
}

/* file:write(s) -> file: writes s at the file's position (at the end in
** append modes), from a copy of s. */
static int l_file_write (lua_State *L) {
  struct braid_file *f = file_check(L, "file:write");
  struct req_args a;
  size_t len;
  const char *s;
  int rc;
  braid__write_args(L, "file:write");
  s = lua_tolstring(L, 2, &len);
  lua_settop(L, 2);
  if (f->busy) return file_adopt(L, f, "file:write", file_write_again_k);
  f->pos -= (int64_t) f->len;   /* what was read ahead is dropped */
  f->off = f->len = 0;
  f->eof = 0;
  if (len == 0) {
    lua_settop(L, 1);
    return 1;
  }
  braid_check_suspend(L, "file:write");
  if ((a.fr = braid__calloc(1, sizeof *a.fr)) == NULL ||
      (a.fr->data = braid__malloc(len)) == NULL) {
    free(a.fr);
    return braid__error_uv(L, UV_ENOMEM, "file:write");
  }
  memcpy(a.fr->data, s, len);
  a.f = a.fr->f = f;
  a.fr->want = len;
  if ((rc = file_write_rest(f, a.fr)) != 0) {
    free(a.fr->data);
    free(a.fr);
    return file_raise(L, rc, "file:write");
  }
  return braid_suspendk(L, "file write", sizeof a.fr, req_start, req_cancel,
                        &a, file_write_k);
}

static int l_file_seek (lua_State *L);

static int file_seek_k (lua_State *L, braid_op_t *op) {
  (void) op;
  lua_settop(L, 3);
  return l_file_seek(L);
}

/* file:seek([whence = "cur", [offset = 0]]) -> position: as Lua's
** file:seek ("set", "cur", "end"). */
static int l_file_seek (lua_State *L) {
  static const char *const whences[] = {"set", "cur", "end", NULL};
  struct braid_file *f = file_check(L, "file:seek");
  int w = 1;
  lua_settop(L, 3);
  if (f->busy) return file_adopt(L, f, "file:seek", file_seek_k);
  lua_Integer off = 0;
  int64_t base, at;
  if (!lua_isnoneornil(L, 2)) {
    const char *s = lua_type(L, 2) == LUA_TSTRING ? lua_tostring(L, 2) : "";
    for (w = 0; whences[w] && strcmp(whences[w], s) != 0; w++) {}
    if (!whences[w])
      return braid_argerror(L, 2, "file:seek", "\"set\", \"cur\" or \"end\" "
                            "expected");
  }
  if (!lua_isnoneornil(L, 3)) off = braid__check_integer(L, 3, "file:seek");
  if (!f->seekable) return file_raise(L, UV_ESPIPE, "file:seek");
  if (w == 0) base = 0;
  else if (w == 1) base = f->pos - (int64_t) f->len;
  else {
    off_t end = lseek(f->fd, 0, SEEK_END);   /* the size, without I/O */
    if (end < 0)
      return file_raise(L, uv_translate_sys_error(errno), "file:seek");
    base = (int64_t) end;
  }
  /* base is at least 0: only a positive offset can overflow */
  if (off > 0 && base > INT64_MAX - (int64_t) off)
    return file_raise_what(L, UV_EINVAL, "file:seek", "position too large");
  at = base + off;
  if (at < 0)
    return file_raise_what(L, UV_EINVAL, "file:seek", "position before the "
                           "start");
  if (w != 1 || off != 0) {
    f->pos = at;
    f->off = f->len = 0;
    f->eof = 0;
  }
  lua_pushinteger(L, (lua_Integer) at);
  return 1;
}

/* file:close(), __close, __gc: closing twice is harmless. */
static int l_file_close (lua_State *L) {
  struct braid_file **box = braid__check_object(L, 1, FILE_MT, "file:close");
  if (*box) file_close(*box);
  return 0;
}

static int l_file_tostring (lua_State *L) {
  struct braid_file **box = braid__check_object(L, 1, FILE_MT, "tostring");
  lua_pushfstring(L, "<file %p%s>", (void *) box, *box ? "" : " closed");
  return 1;
}

static const char *const open_options[] = {"max_line", NULL};

/* An open in flight: its own allocation, as fs.c's requests, with the
** file made beforehand so that the continuation cannot fail. Detached by
** a cancel (op NULL), its callback closes what it opened and frees it. */
struct open_req {
  uv_fs_t req;
  braid_op_t *op;
  struct braid_file *f;
  struct braid_fs_wait *wait;  /* a FIFO waiting for its other end, or NULL */
  char *path;                  /* to open again (a FIFO without a reader) */
  int flags;
  int done;                    /* no request in flight: the callback ran */
  int fifo;                    /* the path is a FIFO without a reader */
};

/* Opening a FIFO to read blocks until a writer comes, on a pool thread
** that cancelling cannot free (and a few such starve the pool, and keep
** braid from exiting): such an open does not wait (O_NONBLOCK), and the
** waiting is done on the loop (fs.h's wait: a poll to read, a timer to
** open again to write). Readable is data, or a writer come and gone (the
** end of the file); a writer that comes and writes nothing is seen only
** once it writes or leaves. */
static void fifo_wait_stop (struct open_req *o) {
  braid__fs_wait_stop(&o->wait);
}

static void open_req_free (struct open_req *o) {
  fifo_wait_stop(o);
  if (o->req.fs_type == UV_FS_OPEN && o->req.result >= 0 && o->done)
    close((int) o->req.result);
  uv_fs_req_cleanup(&o->req);
  free(o->path);
  free(o->f);
  free(o);
}

static void fifo_wait_cb (uv_poll_t *h, int status, int events) {
  struct open_req *o = (struct open_req *) FS_WAIT_OWNER(h);
  (void) status;   /* an error is the first read's to report */
  (void) events;
  fifo_wait_stop(o);
  braid_resume(o->op, 0);
}

static void open_cb (uv_fs_t *req);

/* A reader may have come: open again. */
static void fifo_retry_cb (uv_timer_t *h) {
  struct open_req *o = (struct open_req *) FS_WAIT_OWNER(h);
  uv_loop_t *loop = h->loop;
  int rc;
  fifo_wait_stop(o);
  uv_fs_req_cleanup(&o->req);
  o->done = 0;
  rc = uv_fs_open(loop, &o->req, o->path, o->flags, 0666, open_cb);
  if (rc != 0) {
    o->req.result = rc;
    o->done = 1;
    braid_resume(o->op, 0);
  }
}

/* 0 when o, a FIFO opened to write without a reader, waits to try again. */
static int fifo_retry_start (struct open_req *o) {
  return braid__fs_wait_start(o->req.loop, &o->wait, o, -1, 0, NULL,
                              fifo_retry_cb) != 0 ? -1 : 0;
}

/* 0 when o opened a FIFO to read and now waits for a writer. */
static int fifo_wait_start (struct open_req *o) {
  struct stat st;
  int fd = (int) o->req.result;
  if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_RDONLY || fstat(fd, &st) != 0 ||
      !S_ISFIFO(st.st_mode))
    return -1;
  return braid__fs_wait_start(braid_loop(o->f->E), &o->wait, o, fd,
                              UV_READABLE, fifo_wait_cb, NULL) != 0 ? -1 : 0;
}

static void open_cb (uv_fs_t *req) {
  struct open_req *o = container_of(req, struct open_req, req);
  o->done = 1;
  if (o->op == NULL) {
    open_req_free(o);
    return;
  }
  if (req->fs_type == UV_FS_STAT) {   /* after ENXIO: a FIFO, no reader? */
    o->fifo = req->result == 0 && S_ISFIFO(req->statbuf.st_mode);
    uv_fs_req_cleanup(req);
    req->result = UV_ENXIO;
    if (!o->fifo || fifo_retry_start(o) != 0) braid_resume(o->op, 0);
    return;
  }
  if (req->result == UV_ENXIO && (o->flags & O_ACCMODE) == O_WRONLY) {
    if (o->fifo) {
      if (fifo_retry_start(o) == 0) return;
    } else {
      uv_fs_req_cleanup(req);
      o->done = 0;
      if (uv_fs_stat(req->loop, req, o->path, open_cb) == 0) return;
      o->done = 1;
      req->result = UV_ENXIO;
    }
  }
  if (req->result < 0 || fifo_wait_start(o) != 0) braid_resume(o->op, 0);
}

struct open_args {
  uv_loop_t *loop;
  const char *path;
  int flags;
  struct open_req *o;
};

static int open_start (braid_op_t *op, void *ud) {
  struct open_args *a = (struct open_args *) ud;
  int rc, flags = a->flags | O_CLOEXEC;
  *(struct open_req **) braid_op_data(op) = a->o;
  a->o->op = op;
  flags |= O_NONBLOCK;         /* a FIFO: never waits in open(2) */
  a->o->flags = flags;
  rc = uv_fs_open(a->loop, &a->o->req, a->path, flags, 0666, open_cb);
  if (rc != 0) {               /* never started: k reports it */
    a->o->req.result = rc;
    a->o->done = 1;
    braid_resume(op, 0);
  }
  return 0;
}

/* Ends the op without k: an open in flight is detached (uv_cancel is
** tried; open_cb closes and frees), a finished one (a FIFO waiting for its
** other end too) is undone now. */
static void open_cancel (braid_op_t *op) {
  struct open_req *o = *(struct open_req **) braid_op_data(op);
  o->op = NULL;
  if (o->done) open_req_free(o);
  else uv_cancel((uv_req_t *) &o->req);
}

/* The file object made before suspending is at 4. */
static int open_k (lua_State *L, braid_op_t *op) {
  struct open_req *o = *(struct open_req **) braid_op_data(op);
  struct braid_file *f = o->f;
  int rc = (int) o->req.result;
  if (rc < 0) {
    o->req.result = -1;          /* nothing to close */
    open_req_free(o);
    return braid__fs_raise(L, "braid.fs.open", rc, lua_tostring(L, 1), NULL,
                           NULL);
  }
  f->fd = rc;
  {
    struct stat st;   /* no I/O: the open descriptor's own type */
    int fl = fcntl(rc, F_GETFL);
    f->seekable = fstat(rc, &st) == 0 && !S_ISFIFO(st.st_mode) &&
                  !S_ISSOCK(st.st_mode) && !S_ISCHR(st.st_mode);
    /* read and written on the pool: blocking, whatever opened it */
    if (fl >= 0 && (fl & O_NONBLOCK)) fcntl(rc, F_SETFL, fl & ~O_NONBLOCK);
  }
  o->f = NULL;
  o->req.result = -1;            /* the descriptor is the file's now */
  open_req_free(o);
  braid_resource_add(L, &f->res);
  f->box = (struct braid_file **) lua_touserdata(L, 4);
  *f->box = f;
  lua_settop(L, 4);
  return 1;
}

/* braid.fs.open(path, [mode = "r"], [opts]) -> file. mode as io.open's:
** "r", "w", "a", "r+", "w+", "a+" (a "b" is accepted and means nothing);
** opts.max_line bounds read_line (default 1 MiB). */
static int l_fs_open (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "braid.fs.open");
  const char *mode = "r";
  char m[4] = {0};
  size_t i, j = 0;
  struct open_args a;
  struct braid_file **box, *f;
  size_t max_line;
  a.path = braid__fs_check_path(L, 1, "braid.fs.open", 1);
  if (!lua_isnoneornil(L, 2)) {
    braid__check_type(L, 2, LUA_TSTRING, "braid.fs.open");
    mode = lua_tostring(L, 2);
  }
  for (i = 0; mode[i] && j < 3; i++) if (mode[i] != 'b') m[j++] = mode[i];
  if (strcmp(m, "r") == 0) a.flags = O_RDONLY;
  else if (strcmp(m, "w") == 0) a.flags = O_WRONLY | O_CREAT | O_TRUNC;
  else if (strcmp(m, "a") == 0) a.flags = O_WRONLY | O_CREAT | O_APPEND;
  else if (strcmp(m, "r+") == 0) a.flags = O_RDWR;
  else if (strcmp(m, "w+") == 0) a.flags = O_RDWR | O_CREAT | O_TRUNC;
  else if (strcmp(m, "a+") == 0) a.flags = O_RDWR | O_CREAT | O_APPEND;
  else
    return braid_argerror(L, 2, "braid.fs.open", "mode \"r\", \"w\", \"a\", "
                          "\"r+\", \"w+\" or \"a+\" expected");
  braid__check_options(L, 3, "braid.fs.open", open_options);
  max_line = braid__opt_limit(L, 3, "max_line", FILE_MAX_LINE,
                              "braid.fs.open");
  braid_check_suspend(L, "braid.fs.open");
  lua_settop(L, 3);
  box = (struct braid_file **) lua_newuserdatauv(L, sizeof *box, 1); /* 4 */
  *box = NULL;
  luaL_setmetatable(L, FILE_MT);
  lua_pushvalue(L, 1);
  lua_setiuservalue(L, 4, 1);   /* the path, for the methods' errors */
  f = braid__calloc(1, sizeof *f);
  a.o = f ? braid__calloc(1, sizeof *a.o) : NULL;
  if (a.o != NULL && (a.o->path = braid__strdup(a.path)) == NULL) {
    free(a.o);
    a.o = NULL;
  }
  if (a.o == NULL) {
    free(f);
    return braid__error_uv(L, UV_ENOMEM, "braid.fs.open");
  }
  f->E = E;
  f->fd = -1;
  f->max_line = max_line;
  f->append = (a.flags & O_APPEND) != 0;
  f->res.close = file_res_close;
  a.o->f = f;
  a.o->req.result = -1;
  a.loop = braid_loop(E);
  return braid_suspendk(L, "fs.open", sizeof a.o, open_start, open_cancel,
                        &a, open_k);
}

/* Adds open to the braid.fs table at the stack top. [-0, +0, m] */
void braid__open_fs_file (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"read", l_file_read},
    {"read_line", l_file_read_line},
    {"lines", l_file_lines},
    {"write", l_file_write},
    {"seek", l_file_seek},
    {"close", l_file_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__close", l_file_close},
    {"__gc", l_file_close},
    {"__tostring", l_file_tostring},
    {NULL, NULL}
  };
  braid__class(L, FILE_MT, meta, methods, NULL);
  lua_pop(L, 1);
  lua_pushcfunction(L, l_fs_open);
  lua_setfield(L, -2, "open");
}
