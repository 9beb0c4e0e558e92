/*
** stdio.c: braid.stdin, braid.stdout and braid.stderr: braid's own
** standard streams as io/stream.c's streams (read, read_line, lines;
** write with back-pressure), so that reading the terminal or a pipe waits
** in one task instead of freezing all of them (as io.read does).
**
** Invariants:
** - The stream never changes the file description braid shares with its
**   parent (a shell keeps its terminal and pipes blocking): it works on a
**   description of its own, opened through /proc/self/fd/N (a new one for
**   a terminal, a pipe or a FIFO), which libuv may make non-blocking and
**   closes. Where that cannot be opened (a socket) it works on a dup and
**   restores the shared description's flags when it closes, and at a hard
**   exit (an exit hook).
** - A regular file or a device (epoll cannot wait on them) is pumped
**   through a pipe by a thread of its own, which only ever touches the two
**   fds (and stdout's or stderr's perr): it ends at the end of the input,
**   or when braid closes its end of the pipe (EPIPE), and then closes the
**   other. A write to the file that fails (ENOSPC, EIO) is never lost:
**   the pump keeps its errno in perr and drops what comes after (reading
**   on, so braid's writes never wait on it); the next write raises it,
**   and so does close; once the run has ended braid.run does
**   (braid__run_late_error), unless a write or close raised it already.
**   A write returns once the pipe took the bytes, as on any pipe; the
**   pump's error comes one write later.
** - Each stream is made on first use in a run and belongs to the run's top
**   scope (closed when braid.run ends); the Lua object is cached in the
**   registry and replaced once that run's stream has closed. The struct is
**   freed when the handle has closed and the object is collected.
*/
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "core/prim.h"
#include "io/stream.h"

#define STD_MT "braid.StdStream"

static const char *const std_names[3] = {"stdin", "stdout", "stderr"};

struct std_stream {
  struct braid_stream s;
  braid_resource_t res;          /* in the top scope while attached */
  struct braid_exit_hook hook;   /* restores `flags` at a hard exit */
  int fd;                        /* 0, 1 or 2 */
  int flags;                     /* the shared description's, or -1 */
  unsigned char attached, owned, closed;
  unsigned char stale;           /* its run has ended */
  pthread_t pump;                /* stdout's or stderr's to a file */
  int joinable;
  _Atomic int perr;              /* the pump's failed write: errno */
  unsigned char reported;        /* perr was raised to the script */
};

/* ---- the pump, for what epoll cannot wait on ---- */

struct pump {
  int from, to, close_from;
  _Atomic int *err;              /* stdout's, stderr's: perr; stdin: NULL */
};

static void *pump_main (void *arg) {
  struct pump pu = *(struct pump *) arg;
  char buf[65536];
  int failed = 0;
  free(arg);
  for (;;) {
    ssize_t n = read(pu.from, buf, sizeof buf), off = 0;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    while (off < n && !failed) {
      ssize_t w = write(pu.to, buf + off, (size_t) (n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0 && pu.err == NULL) goto done;   /* braid closed stdin's */
      if (w <= 0) {              /* the file's: braid raises it */
        atomic_store(pu.err, w < 0 ? errno : EIO);
        failed = 1;
      } else {
        off += w;
      }
    }
  }
done:
  if (pu.close_from) close(pu.from);
  else close(pu.to);
  return NULL;
}

/* A pipe between fd and the returned end (-1 on failure), with a thread
** copying between them: detached for stdin (its read may block forever),
** joined (*th) once braid's end is closed for stdout and stderr, so that
** what was written is out before braid exits. */
static int pump_start (int fd, pthread_t *th, int *joinable,
                       _Atomic int *err) {
  int p[2];
  pthread_attr_t attr;
  sigset_t all, old;
  int rc;
  struct pump *pu = malloc(sizeof *pu);
  if (pu == NULL || pipe2(p, O_CLOEXEC) != 0) {
    free(pu);
    return -1;
  }
  if (fd == 0) pu->from = 0, pu->to = p[1], pu->close_from = 0;
  else pu->from = p[0], pu->to = fd, pu->close_from = 1;
  pu->err = fd == 0 ? NULL : err;
  pthread_attr_init(&attr);
  if (fd == 0) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  /* The thread takes no signals: they stay with braid's loop thread (a
  ** closed pipe is EPIPE to it, not SIGPIPE). */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  rc = pthread_create(th, &attr, pump_main, pu);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0) {
    pthread_attr_destroy(&attr);
    free(pu);
    close(p[0]);
    close(p[1]);
    return -1;
  }
  pthread_attr_destroy(&attr);
  *joinable = fd != 0;
  return fd == 0 ? p[0] : p[1];
}

/* ---- the stream ---- */

/* The methods' names in messages, as the script wrote them: by stream. */
enum { M_READ, M_READ_LINE, M_LINES, M_WRITE, M_CLOSE };
static const char *const method_names[3][5] = {
  {"stdin:read", "stdin:read_line", "stdin:lines", "stdin:write",
   "stdin:close"},
  {"stdout:read", "stdout:read_line", "stdout:lines", "stdout:write",
   "stdout:close"},
  {"stderr:read", "stderr:read_line", "stderr:lines", "stderr:write",
   "stderr:close"}
};

static void std_free (struct std_stream *ss) {
  braid__exit_hook_remove(&ss->hook);   /* done in std_closing: harmless */
  braid__stream_free(&ss->s);
  free(ss);
}

static void std_restore (struct std_stream *ss) {
  if (ss->flags >= 0) fcntl(ss->fd, F_SETFL, ss->flags);
}

static void std_hook (struct braid_exit_hook *h) {
  std_restore(container_of(h, struct std_stream, hook));
}

static void std_closing (struct braid_stream *s) {
  struct std_stream *ss = container_of(s, struct std_stream, s);
  /* here, not in std_closed: an embedder's loop may run that after
  ** braid_close, when the engine's list is gone */
  braid__exit_hook_remove(&ss->hook);
  if (ss->attached) {
    ss->attached = 0;
    braid_resource_remove(&ss->res);
  }
}

/* Once braid's end of the pump's pipe is closed: the pump writes the
** rest, then ends. Returns the pump's error (an errno) that the script
** was not given yet, or 0. */
static int std_join (struct std_stream *ss) {
  if (ss->joinable) {
    pthread_join(ss->pump, NULL);
    ss->joinable = 0;
  }
  return ss->reported ? 0 : atomic_load(&ss->perr);
}

static void std_closed (struct braid_stream *s) {
  struct std_stream *ss = container_of(s, struct std_stream, s);
  std_restore(ss);
  std_join(ss);
  ss->closed = 1;
  if (!ss->owned) std_free(ss);
}

static const struct braid_stream_hooks std_hooks = {
  std_closing, std_closed, NULL
};

/* The run ends: what the pump failed to write is braid.run's error. */
static void std_res_close (braid_resource_t *r) {
  struct std_stream *ss = container_of(r, struct std_stream, res);
  int e;
  ss->attached = 0;
  ss->stale = 1;
  braid__stream_close(&ss->s);   /* closes braid's end: the pump ends */
  if ((e = std_join(ss)) != 0) {
    ss->reported = 1;
    braid__run_late_error(ss->s.E, uv_translate_sys_error(e),
                          method_names[ss->fd][M_WRITE]);
  }
}

/* An fd for braid's fd, on a description of braid's own where it can be;
** *flags: the shared description's flags to restore, or -1. */
static int std_fd (struct std_stream *ss, int fd, int *flags) {
  char path[32];
  int nfd;
  uv_handle_type t = uv_guess_handle(fd);
  *flags = -1;
  if (t == UV_FILE || t == UV_UNKNOWN_HANDLE)
    return pump_start(fd, &ss->pump, &ss->joinable, &ss->perr);
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  nfd = open(path, (fd == 0 ? O_RDONLY : O_WRONLY) | O_CLOEXEC | O_NOCTTY);
  if (nfd >= 0) return nfd;
  *flags = fcntl(fd, F_GETFL);
  return fcntl(fd, F_DUPFD_CLOEXEC, 3);
}

/* The stream at 1 (its name for method m: *fname); raises kind "closed"
** once its run has ended. */
static struct std_stream *std_check (lua_State *L, int m, const char **fname) {
  struct std_stream **box = braid__check_object(L, 1, STD_MT,
                                                method_names[0][m]);
  *fname = *box ? method_names[(*box)->fd][m] : method_names[0][m];
  if (*box == NULL || (*box)->stale)
    braid_error(L, "closed", NULL, "%s: the stream is closed (braid.run "
                "ended)", *fname);
  return *box;
}

static int l_std_read (lua_State *L) {
  const char *fname;
  struct std_stream *ss = std_check(L, M_READ, &fname);
  return braid__stream_read(L, &ss->s, BRAID_READ_SOME, fname);
}

static int l_std_read_line (lua_State *L) {
  const char *fname;
  struct std_stream *ss = std_check(L, M_READ_LINE, &fname);
  return braid__stream_read_line(L, &ss->s, fname);
}

static int l_std_lines (lua_State *L) {
  const char *fname;
  std_check(L, M_LINES, &fname);
  return braid__stream_lines(L, l_std_read_line);
}

/* Raises e, the pump's error, once given to the script. */
static int std_raise (lua_State *L, struct std_stream *ss, int e,
                      const char *fname) {
  ss->reported = 1;
  return braid__error_uv(L, uv_translate_sys_error(e), fname);
}

static int l_std_write (lua_State *L) {
  const char *fname;
  struct std_stream *ss = std_check(L, M_WRITE, &fname);
  int e = atomic_load_explicit(&ss->perr, memory_order_relaxed);
  if (e != 0) return std_raise(L, ss, e, fname);   /* an earlier write's */
  return braid__stream_write(L, &ss->s, fname);
}

/* Closes the stream; on a file, once the pump has written the rest,
** raises what it failed to write. */
static int l_std_close (lua_State *L) {
  struct std_stream **box = braid__check_object(L, 1, STD_MT,
                                                method_names[0][M_CLOSE]);
  int e;
  if (*box == NULL) return 0;
  braid__stream_close(&(*box)->s);
  if ((e = std_join(*box)) != 0)
    return std_raise(L, *box, e, method_names[(*box)->fd][M_CLOSE]);
  return 0;
}

static int l_std_gc (lua_State *L) {
  struct std_stream **box = (struct std_stream **) lua_touserdata(L, 1);
  struct std_stream *ss = *box;
  if (ss == NULL) return 0;
  *box = NULL;
  ss->owned = 0;
  if (ss->closed) std_free(ss);
  else braid__stream_close(&ss->s);   /* std_closed frees it */
  return 0;
}

static int l_std_tostring (lua_State *L) {
  struct std_stream **box = braid__check_object(L, 1, STD_MT, "tostring");
  lua_pushfstring(L, "<braid.%s%s>", *box ? std_names[(*box)->fd] : "",
                  *box && (*box)->s.live ? "" : " closed");
  return 1;
}

/* Pushes this run's stream for fd, made on first use. */
static void std_push (lua_State *L, int fd) {
  braid_engine_t *E = braid_engine(L);
  struct std_stream **box, *ss;
  int nfd, flags, rc;
  lua_pushfstring(L, "braid.%s", std_names[fd]);
  if (lua_rawget(L, LUA_REGISTRYINDEX) == LUA_TUSERDATA &&
      !(*(struct std_stream **) lua_touserdata(L, -1))->stale)
    return;                    /* this run's (perhaps closed by the script) */
  lua_pop(L, 1);
  braid_check_task(L, fd == 0 ? "braid.stdin" : fd == 1 ? "braid.stdout"
                                                        : "braid.stderr");
  box = lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, STD_MT);
  if ((ss = braid__calloc(1, sizeof *ss)) == NULL)
    braid_error(L, "memory", NULL, "braid.%s: not enough memory",
                std_names[fd]);
  if ((nfd = std_fd(ss, fd, &flags)) < 0) {
    rc = uv_translate_sys_error(errno);
    free(ss);
    braid__error_uv(L, rc, std_names[fd]);
  }
  ss->fd = fd;
  ss->flags = flags;
  uv_pipe_init(braid_loop(E), &ss->s.h.pipe, 0);
  braid__stream_init(&ss->s, E, &std_hooks, std_names[fd]);
  ss->owned = 1;
  *box = ss;
  braid__list_init(&ss->hook.link);
  ss->hook.fn = std_hook;
  ss->hook.any_thread = 1;   /* reads fd and flags, set above */
  braid__exit_hook_add(E, &ss->hook);
  if ((rc = uv_pipe_open(&ss->s.h.pipe, nfd)) != 0) {
    close(nfd);
    braid__stream_close(&ss->s);
    braid__error_uv(L, rc, std_names[fd]);
  }
  ss->res.close = std_res_close;
  ss->attached = 1;
  braid__scope_resource_add(braid__scope_top(E), &ss->res);
  lua_pushfstring(L, "braid.%s", std_names[fd]);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
}

/* The braid table's __index: braid.stdin, braid.stdout, braid.stderr. */
static int l_braid_index (lua_State *L) {
  const char *k = lua_tostring(L, 2);
  int fd;
  if (lua_type(L, 2) != LUA_TSTRING) return 0;
  for (fd = 0; fd < 3 && strcmp(k, std_names[fd]) != 0; fd++) ;
  if (fd == 3) return 0;
  std_push(L, fd);
  return 1;
}

void braid__open_stdio (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"read", l_std_read},
    {"read_line", l_std_read_line},
    {"lines", l_std_lines},
    {"write", l_std_write},
    {"close", l_std_close},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__gc", l_std_gc},
    {"__close", l_std_close},
    {"__tostring", l_std_tostring},
    {NULL, NULL}
  };
  braid__class(L, STD_MT, metamethods, methods, NULL);
  lua_pop(L, 1);
  lua_newtable(L);                     /* the braid table's metatable */
  lua_pushcfunction(L, l_braid_index);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
}
