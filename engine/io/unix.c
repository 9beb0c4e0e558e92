/*
** unix.c: braid.unix.connect(path) and braid.unix.listen(path, handler):
** unix-domain sockets, as the same stream and server objects as TCP
** (tcp.c, tcp_server.c), so one stream implementation serves both.
**
** braid makes the sockets itself and hands them to libuv (uv_pipe_open):
** libuv 1.44 cannot name Linux's abstract sockets ("@name": a name
** starting with a NUL byte, no file), and a stale socket file must be told
** from a live one before it is replaced. A unix connect completes (or
** fails) at once, so connecting does not suspend: a listener whose
** backlog is full refuses with EAGAIN instead of making it wait.
**
** Invariants:
** - A socket made here is either handed to a libuv handle (which closes
**   it) or closed here before the call raises.
** - A server removes the socket file it made when it closes (tcp_server.c);
**   an existing file is replaced only when it is a socket nobody listens
**   on (a server that died without closing), never a live socket or any
**   other file.
*/
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <sys/sysmacros.h>
#endif
#include "core/prim.h"
#include "io/tcp.h"

struct unix_addr {
  struct sockaddr_un sun;
  socklen_t len;
  const char *path;            /* as given: "@name" for an abstract one */
};

/* path as a unix socket address: 0, or UV_EINVAL (empty, or a NUL byte
** inside) or UV_ENAMETOOLONG. "@name" names an abstract socket (Linux). */
static int unix_addr_make (const char *path, size_t len,
                           struct unix_addr *a) {
  memset(a, 0, sizeof *a);
  a->path = path;
  a->sun.sun_family = AF_UNIX;
  if (len == 0 || strlen(path) != len) return UV_EINVAL;
  if (len >= sizeof a->sun.sun_path) return UV_ENAMETOOLONG;
  memcpy(a->sun.sun_path, path, len);
  if (path[0] == '@') {
#ifdef __linux__
    a->sun.sun_path[0] = '\0';
    a->len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len);
#else
    return UV_EINVAL;
#endif
  } else {
    a->len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len + 1);
  }
  return 0;
}

/* A new non-blocking, close-on-exec unix stream socket, or -errno. */
static int unix_socket (void) {
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  if (fd < 0) return -errno;
  if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0 ||
      fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
    int rc = -errno;
    close(fd);
    return rc;
  }
  return fd;
}

/* Connects a new socket to a: the socket, or -errno. */
static int unix_connect_fd (const struct unix_addr *a) {
  int fd = unix_socket(), rc;
  if (fd < 0) return fd;
  do rc = connect(fd, (const struct sockaddr *) &a->sun, a->len);
  while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    rc = -errno;
    close(fd);
    return rc;
  }
  return fd;
}

#ifdef __linux__
/* Does a socket of this network namespace listen on the socket file st
** describes? 1 yes, 0 no, -1 cannot tell. Asks the kernel (sock_diag,
** the source of ss -xl) for the listening unix sockets with the file each
** is bound to, and compares device and inode, so relative paths and
** symbolic links do not matter. Unlike a connect, this is invisible to
** the server. */
static int unix_listening (const struct stat *st) {
  struct {
    struct nlmsghdr h;
    struct unix_diag_req r;
  } req;
  union {
    struct nlmsghdr h;
    char b[16384];
  } buf;
  int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  int found = 0, done = 0;
  if (fd < 0) return -1;
  memset(&req, 0, sizeof req);
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = SOCK_DIAG_BY_FAMILY;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.r.sdiag_family = AF_UNIX;
  req.r.udiag_states = 1u << 10;   /* TCP_LISTEN */
  req.r.udiag_show = UDIAG_SHOW_VFS;
  if (send(fd, &req, sizeof req, 0) != (ssize_t) sizeof req) done = found = -1;
  while (!done && found == 0) {
    struct nlmsghdr *h;
    ssize_t n = recv(fd, buf.b, sizeof buf.b, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      found = -1;
      break;
    }
    for (h = &buf.h; NLMSG_OK(h, (size_t) n); h = NLMSG_NEXT(h, n)) {
      struct unix_diag_msg *m;
      struct rtattr *at;
      int len;
      if (h->nlmsg_type == NLMSG_DONE) {
        done = 1;
        break;
      }
      if (h->nlmsg_type == NLMSG_ERROR) {   /* no unix_diag in the kernel */
        found = -1;
        break;
      }
      m = (struct unix_diag_msg *) NLMSG_DATA(h);
      len = (int) (h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
      for (at = (struct rtattr *) (m + 1); RTA_OK(at, len);
           at = RTA_NEXT(at, len)) {
        const struct unix_diag_vfs *v;
        if (at->rta_type != UNIX_DIAG_VFS) continue;
        v = (const struct unix_diag_vfs *) RTA_DATA(at);
        /* the kernel's own dev_t: 12 bits of major, 20 of minor */
        if (v->udiag_vfs_ino == st->st_ino &&
            v->udiag_vfs_dev >> 20 == major(st->st_dev) &&
            (v->udiag_vfs_dev & 0xfffff) == minor(st->st_dev))
          found = 1;
      }
    }
  }
  close(fd);
  return found;
}
#endif

/* Is the file at a a socket that nobody listens on? A live server must
** not notice the question: on Linux the kernel is asked first, and only
** a socket it does not know as listening (none, or one in another network
** namespace, or no sock_diag) is probed with a connect, which a stale
** socket refuses. */
static int unix_stale (const struct unix_addr *a) {
  struct stat st;
  int fd;
  if (a->path[0] == '@' || lstat(a->path, &st) != 0 || !S_ISSOCK(st.st_mode))
    return 0;
#ifdef __linux__
  if (unix_listening(&st) == 1) return 0;
#endif
  fd = unix_connect_fd(a);
  if (fd >= 0) {
    close(fd);
    return 0;
  }
  return fd == -ECONNREFUSED;
}

/* braid__listen's bind: a socket bound to the address, for the pipe. */
static int unix_bind (uv_stream_t *h, void *ud) {
  const struct unix_addr *a = (const struct unix_addr *) ud;
  int fd = unix_socket(), rc;
  if (fd < 0) return fd;
  rc = bind(fd, (const struct sockaddr *) &a->sun, a->len);
  if (rc < 0 && errno == EADDRINUSE && unix_stale(a)) {
    unlink(a->path);
    rc = bind(fd, (const struct sockaddr *) &a->sun, a->len);
  }
  if (rc < 0) {
    rc = -errno;
    close(fd);
    return rc;
  }
  if ((rc = uv_pipe_open((uv_pipe_t *) h, fd)) != 0) {
    if (a->path[0] != '@') unlink(a->path);
    close(fd);
  }
  return rc;
}

/* The path at arg as an address, or a usage error naming fname. */
static void unix_check_path (lua_State *L, int arg, const char *fname,
                             struct unix_addr *a) {
  size_t len;
  const char *path;
  int rc;
  if (lua_type(L, arg) != LUA_TSTRING)
    braid_argerror(L, arg, fname, "string expected (a socket path)");
  path = lua_tolstring(L, arg, &len);
  if ((rc = unix_addr_make(path, len, a)) == UV_ENAMETOOLONG)
    braid_argerror(L, arg, fname, "socket path too long");
  else if (rc != 0)
    braid_argerror(L, arg, fname, "socket path expected (not empty, no "
                   "NUL byte)");
}

static const char *const connect_options[] = {"max_line", "timeout", NULL};

/* braid.unix.connect(path, [opts]) -> stream: a stream like a TCP one.
** opts.max_line is its line limit; opts.timeout is accepted for symmetry
** with braid.tcp.connect (a unix connect never waits). */
static int l_unix_connect (lua_State *L) {
  struct unix_addr a;
  struct braid_tcp **ud, *ts;
  size_t max_line;
  braid_engine_t *E = braid_check_task(L, "braid.unix.connect");
  int fd, rc;
  unix_check_path(L, 1, "braid.unix.connect", &a);
  braid__check_options(L, 2, "braid.unix.connect", connect_options);
  braid__opt_seconds(L, 2, "timeout", BRAID_NEVER, "braid.unix.connect");
  max_line = braid__opt_limit(L, 2, "max_line", BRAID_MAX_LINE,
                              "braid.unix.connect");
  ud = braid__tcp_newud(L);   /* the owner before the handle */
  if ((ts = braid__tcp_new(E, 1, &rc)) == NULL)
    return braid__error_uv(L, rc, "braid.unix.connect");
  if ((fd = unix_connect_fd(&a)) < 0) {
    braid__stream_close(&ts->s);   /* owned by nobody: the close frees it */
    return braid_error(L, "io", braid__errname(fd), "braid.unix.connect %s: %s",
                       a.path, braid__strerror(fd));
  }
  if ((rc = uv_pipe_open(&ts->s.h.pipe, fd)) != 0) {
    close(fd);
    braid__stream_close(&ts->s);
    return braid__error_uv(L, rc, "braid.unix.connect");
  }
  braid__tcp_bind(ud, ts, max_line);
  braid__tcp_attach(L, ts, NULL);
  return 1;
}

/* braid.unix.listen(path, handler, [opts]) -> server: as braid.tcp.listen,
** on a unix socket; the socket file is removed when the server closes.
** opts: backlog, max_line. */
static int l_unix_listen (lua_State *L) {
  struct braid_listen how;
  struct unix_addr a;
  braid_check_task(L, "braid.unix.listen");
  unix_check_path(L, 1, "braid.unix.listen", &a);
  if (!braid__is_callable(L, 2))
    braid_argerror(L, 2, "braid.unix.listen", "function expected");
  memset(&how, 0, sizeof how);
  how.fname = "braid.unix.listen";
  how.where = a.path;
  how.path = a.path;
  how.handler = 2;
  how.opts = 3;
  how.pipe = 1;
  how.bind = unix_bind;
  how.ud = &a;
  return braid__listen(L, &how);
}

/* Sets braid.unix on the braid table at the stack top. [-0, +0, m] */
void braid__open_unix (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"connect", l_unix_connect},
    {"listen", l_unix_listen},
    {NULL, NULL}
  };
  braid__stream_sigpipe();
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "unix");
}
