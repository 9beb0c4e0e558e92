/*
** spawn.c: starting a child (vfork.c's clone) and waiting for its exit
** without libuv's uv_process_t, for process.c; signalling the child or its
** process group, and the timing of a group's stop; the request as the
** script gives it (argv, cwd, env, env_add, group, stdout and stderr), and
** braid.env.
**
** Why not uv_spawn: libuv 1.44 forks, copying the parent's page tables, so
** each spawn costs more the bigger braid's heap is; a clone sharing the
** memory (CLONE_VM|CLONE_VFORK, vfork.c, as glibc's posix_spawn does, which
** braid used before) stays flat. It also puts the child in a process group
** of its own before exec, with no window in which a grandchild could start
** in braid's group, which uv_spawn cannot express (UV_PROCESS_DETACHED is a
** new session: it would lose the controlling terminal).
**
** Invariants:
** - The child gets default signal dispositions and an empty signal mask, as
**   uv_spawn's children did: braid's SIGPIPE handler and blocked signals
**   are not inherited (vfork.c).
** - The program is searched in the PATH of the child's environment (opts.env
**   or env_add's, else braid's), "/usr/bin:/bin" without one, as execvp in
**   uv_spawn's child did; a candidate that exists but cannot be executed
**   (EACCES) lets the search go on, and is the error if nothing else runs.
**   The child reports exec's and chdir's failures before braid goes on
**   (vfork.c), so ENOENT, EACCES and a bad cwd raise at the call.
** - The exit is waited for on a pidfd (pidfd_open + uv_poll) where the
**   kernel has one, else on SIGCHLD (a uv_signal_t per child; libuv shares
**   one handler between its watchers). Either way braid only ever calls
**   waitpid on its own pids, never waitpid(-1): libuv's own SIGCHLD
**   handling (an embedder's uv_spawn on the same loop) reaps its pids, braid
**   its own.
** - P_PROC, the reap handle, is live from a successful spawn until the exit
**   has been reaped; its close callback closes the pidfd. Except for exec's
**   usual child (reap_later: no stdin pipe, an output captured): its exit
**   matters only once both outputs have ended, and by then the child has
**   nearly always exited, so braid__reap_watch (from braid__proc_update)
**   first just tries waitpid and only then opens a pidfd. That saves a
**   pidfd and its five epoll_ctl per child. Until then the child is
**   unreaped (a zombie at most): its pid, and so its group's number, cannot
**   be reused, and signalling the group stays safe.
*/
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "io/process.h"

extern char **environ;

int braid__spawn_no_pidfd;   /* tests: take the SIGCHLD path */

/* ---- reaping ---- */

static void reap_close_cb (uv_handle_t *h) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  if (p->pidfd >= 0) close(p->pidfd);
  p->pidfd = -1;
  braid__proc_handle_closed(p);
}

void braid__reap_close (struct braid_proc *p) {
  if (!p->live[P_PROC]) return;
  p->live[P_PROC] = 0;
  uv_close(&p->reap.handle, reap_close_cb);
}

/* Reaps the child if it has exited; returns 1 when it did. */
static int reap_now (struct braid_proc *p) {
  int st = 0;
  pid_t r;
  do r = waitpid(p->pid, &st, WNOHANG); while (r < 0 && errno == EINTR);
  if (r == 0) return 0;
  braid__reap_close(p);        /* nothing more to wait for */
  if (r < 0)   /* ECHILD: reaped by someone else; no status to report */
    braid__proc_exited(p, 0, 0);
  else if (WIFSIGNALED(st))
    braid__proc_exited(p, 0, WTERMSIG(st));
  else
    braid__proc_exited(p, WEXITSTATUS(st), 0);
  return 1;
}

/* The reap handle's wake-up (a pidfd poll or a SIGCHLD may also come for
** nothing: another child's SIGCHLD, a spurious wakeup). */
static void reap_try (struct braid_proc *p) {
  if (p->live[P_PROC] && !p->exited) reap_now(p);
}

static void reap_poll_cb (uv_poll_t *h, int status, int events) {
  (void) status; (void) events;
  reap_try((struct braid_proc *) h->data);
}

static void reap_sig_cb (uv_signal_t *h, int signum) {
  (void) signum;
  reap_try((struct braid_proc *) h->data);
}

/* Can this kernel give pidfds? Asked once. */
static int reap_pidfd_possible (void) {
#ifdef SYS_pidfd_open
  static int works = -1;
  if (braid__spawn_no_pidfd) return 0;
  if (works < 0) {
    int fd = (int) syscall(SYS_pidfd_open, getpid(), 0);
    works = fd >= 0;
    if (fd >= 0) close(fd);
  }
  return works;
#else
  return 0;
#endif
}

/* Watches p's exit on a pidfd; returns 0, or -1 when there is none. */
static int reap_pidfd (struct braid_proc *p) {
#ifdef SYS_pidfd_open
  uv_loop_t *loop = braid_loop(p->E);
  int fd;
  if (braid__spawn_no_pidfd) return -1;
  if ((fd = (int) syscall(SYS_pidfd_open, p->pid, 0)) < 0) return -1;
  if (uv_poll_init(loop, &p->reap.poll, fd) != 0) {
    close(fd);
    return -1;
  }
  p->pidfd = fd;
  p->reap.poll.data = p;
  uv_poll_start(&p->reap.poll, UV_READABLE, reap_poll_cb);
  return 0;
#else
  (void) p;
  return -1;
#endif
}

/* Watches SIGCHLD for p (libuv shares one handler between watchers). */
static void reap_sigchld (struct braid_proc *p) {
  uv_signal_init(braid_loop(p->E), &p->reap.sig);
  p->reap.sig.data = p;
  uv_signal_start(&p->reap.sig, reap_sig_cb, SIGCHLD);
}

/* Waits for p's exit from now on (braid_spawn_opts.reap_later): reaps it
** at once when it has already exited, which needs no handle at all; else
** on a pidfd, else on SIGCHLD (started before the second look, so an exit
** in between is not missed). Returns 1 when it reaped the child
** (braid__proc_exited has run). */
int braid__reap_watch (struct braid_proc *p) {
  if (p->pid <= 0 || p->exited || p->live[P_PROC]) return 0;
  if (reap_now(p)) return 1;
  p->live[P_PROC] = 1;
  p->open++;
  if (reap_pidfd(p) == 0) return 0;
  reap_sigchld(p);
  return reap_now(p);
}

/* ---- starting ---- */

int braid__spawn_start (struct braid_proc *p,
                        const struct braid_spawn_opts *o) {
  int rc, pidfds = reap_pidfd_possible();
  int later = o->reap_later && pidfds, sigchld = !pidfds;
  pid_t pid = -1;
  p->pidfd = -1;
  /* The SIGCHLD path: watch before the child exists, so that an exit
  ** right after the spawn is not missed. */
  if (sigchld) reap_sigchld(p);
  if ((rc = braid__vfork_start(o, &pid)) != 0) {
    if (sigchld) {   /* closed at once: nothing was started */
      p->live[P_PROC] = 1;
      p->open++;
      braid__reap_close(p);
    }
    return uv_translate_sys_error(rc);
  }
  p->pid = pid;
  p->group = (unsigned char) (o->group != 0);
  if (later) return 0;         /* braid__reap_watch, from process.c */
  p->live[P_PROC] = 1;
  p->open++;
  if (!sigchld && reap_pidfd(p) != 0) {
    /* The pidfd went missing after all: watch SIGCHLD, and look once. */
    reap_sigchld(p);
    kill(getpid(), SIGCHLD);
  }
  return 0;
}

int braid__group_running (int pgid) {
  DIR *d;
  struct dirent *e;
  int found = 0;
  if (kill(-pgid, 0) != 0 && errno == ESRCH) return 0;
  /* Members left may be zombies that init has not reaped yet (some
  ** containers' init reaps late): they have ended, so look at each one's
  ** state. */
  if ((d = opendir("/proc")) == NULL) return 1;
  while (!found && (e = readdir(d)) != NULL) {
    char path[300], buf[512], *rp, state;
    int fd, pg;
    ssize_t n;
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) continue;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) continue;
    buf[n] = '\0';
    if ((rp = strrchr(buf, ')')) == NULL) continue;   /* after comm */
    if (sscanf(rp + 1, " %c %*d %d", &state, &pg) != 2) continue;
    found = pg == pgid && state != 'Z' && state != 'X';
  }
  closedir(d);
  return found;
}

int braid__proc_target (struct braid_proc *p) {
  if (p->pid <= 0) return 0;   /* never started */
  if (!p->exited) return p->group ? -p->pid : p->pid;
  /* The leader is reaped: its group's number cannot be reused while any
  ** member is left (the kernel keeps the pid in use as a pgid). */
  return p->group && !p->group_done ? -p->pid : 0;
}

int braid__proc_signal (struct braid_proc *p, int sig) {
  int target;
  /* Leftovers of a reaped leader that have all ended free the number. */
  if (p->exited && braid__group_empty(p)) p->group_done = 1;
  target = braid__proc_target(p);
  return target != 0 ? kill(target, sig) : -1;
}

/* ---- stopping a group ---- */

/* Is the group, whose leader is reaped, empty? */
int braid__group_empty (struct braid_proc *p) {
  return !p->group || p->group_done || !braid__group_running(p->pid);
}

static void proc_stop_tick (uv_timer_t *h);

/* Arms the stop's next look: at the SIGKILL deadline while the child runs;
** once it is reaped, every few ms (doubling up to 100) until its group is
** empty or the deadline. */
void braid__proc_stop_arm (struct braid_proc *p) {
  uint64_t now = uv_now(p->timer.loop), wait;
  uint64_t left = p->deadline == BRAID_NEVER ? BRAID_NEVER :
                  p->deadline > now ? p->deadline - now : 0;
  if (p->exited) {
    wait = p->poll_ms < left ? p->poll_ms : left;
    if (p->poll_ms < 100) p->poll_ms *= 2;
  } else if (left == BRAID_NEVER) {
    return;                    /* kill_grace = math.huge: no SIGKILL */
  } else {
    wait = left;
  }
  uv_timer_start(&p->timer, proc_stop_tick, wait, 0);
}

static void proc_stop_tick (uv_timer_t *h) {
  struct braid_proc *p = (struct braid_proc *) h->data;
  if (p->exited && braid__group_empty(p)) {
    p->group_done = 1;
    braid__proc_update(p);
    return;
  }
  if (p->deadline != BRAID_NEVER && uv_now(p->timer.loop) >= p->deadline) {
    braid__proc_signal(p, SIGKILL);
    p->killed = 1;
    if (p->exited) {           /* the leftovers die now; init reaps them */
      p->group_done = 1;
      braid__proc_update(p);
    }
    return;                    /* else the exit comes */
  }
  braid__proc_stop_arm(p);
}

/* ---- the request, from Lua ---- */

struct braid_stdio braid__proc_stdio_opt (lua_State *L, int idx,
                                          const char *key, int dflt,
                                          const char *fname) {
  struct braid_stdio io;
  const char *v;
  io.how = dflt;
  io.path = NULL;
  if (!lua_istable(L, idx)) return io;
  lua_getfield(L, idx, key);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0)
      braid_usageerror(L, "bad option '%s' to '%s' (\"pipe\", \"inherit\", "
                       "\"null\" or a file's path expected)", key, fname);
    v = lua_tostring(L, -1);
    if (strlen(v) != lua_rawlen(L, -1))
      braid_usageerror(L, "bad option '%s' to '%s' (a path must not "
                       "contain a zero byte)", key, fname);
    if (strcmp(v, "pipe") == 0) io.how = PROC_PIPE;
    else if (strcmp(v, "inherit") == 0) io.how = PROC_INHERIT;
    else if (strcmp(v, "null") == 0) io.how = PROC_NULL;
    else if (strcmp(v, "stdout") == 0) {   /* never a file's name */
      if (strcmp(key, "stderr") != 0)
        braid_usageerror(L, "bad option '%s' to '%s' (\"stdout\" is for "
                         "stderr)", key, fname);
      io.how = PROC_TO_STDOUT;
    }
    else {
      io.how = PROC_FILE;
      io.path = v;             /* anchored in opts, on the caller's stack */
    }
  }
  lua_pop(L, 1);
  return io;
}



/* Pushes braid's environment as a table of names to values. */
static void push_environ (lua_State *L) {
  char **e;
  lua_newtable(L);
  for (e = environ; e && *e; e++) {
    const char *eq = strchr(*e, '=');
    if (eq == NULL || eq == *e) continue;
    lua_pushlstring(L, *e, (size_t) (eq - *e));
    lua_pushstring(L, eq + 1);
    lua_rawset(L, -3);
  }
}

/* braid.env() -> table: braid's environment, names to values (a copy:
** changing it changes nothing; give it to exec's env). */
static int l_env (lua_State *L) {
  push_environ(L);
  return 1;
}

/* The option at the top must be a table of string names to string (or
** number) values. */
static void check_env_table (lua_State *L, const char *key,
                             const char *fname) {
  int t = lua_gettop(L);
  if (!lua_istable(L, t))
    braid_usageerror(L, "bad option '%s' to '%s' (table expected)", key,
                     fname);
  lua_pushnil(L);
  while (lua_next(L, t)) {
    const char *name = lua_type(L, -2) == LUA_TSTRING
                       ? braid__cstring(L, -2) : NULL;
    if (name == NULL || *name == '\0' || strchr(name, '=') ||
        braid__cstring(L, -1) == NULL)
      braid_usageerror(L, "bad option '%s' to '%s' (names and values "
                       "must be strings without zero bytes, names "
                       "non-empty and without '=')", key, fname);
    lua_pop(L, 1);
  }
}

/* Checks the option at index `from` (check_env_table) and copies its
** names and values into the table at index `to`. */
static void env_merge (lua_State *L, int to, int from, const char *key,
                       const char *fname) {
  lua_pushvalue(L, from);
  check_env_table(L, key, fname);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, to);
  }
  lua_pop(L, 1);
}

/* The child's environment as a table at the top: opts.env (a copy), or
** braid's, with opts.env_add over it; or nothing pushed (returns 0) when
** neither option is given: the child gets braid's own. */
static int push_env (lua_State *L, const char *fname) {
  int t;
  if (!lua_istable(L, 2)) return 0;
  lua_getfield(L, 2, "env");
  lua_getfield(L, 2, "env_add");
  if (lua_isnil(L, -2) && lua_isnil(L, -1)) {
    lua_pop(L, 2);
    return 0;
  }
  lua_newtable(L);
  t = lua_gettop(L);
  if (!lua_isnil(L, t - 2)) env_merge(L, t, t - 2, "env", fname);
  else {
    push_environ(L);
    lua_replace(L, t);
  }
  if (!lua_isnil(L, t - 1)) env_merge(L, t, t - 1, "env_add", fname);
  lua_replace(L, t - 2);
  lua_pop(L, 1);
  return 1;
}

void braid__spawn_args (lua_State *L, const char *fname,
                        struct braid_spawn_opts *o) {
  char **args, **env;
  int i, n, k, anchor, env_idx;
  if (!lua_istable(L, 1))
    braid_argerror(L, 1, fname, "list expected (program and arguments)");
  {   /* the raw length: a __len cannot shorten or overflow the list */
    size_t len = lua_rawlen(L, 1);
    if (len < 1) braid_argerror(L, 1, fname, "empty argument list");
    if (len > (1u << 20)) braid_argerror(L, 1, fname, "too many arguments");
    n = (int) len;
  }
  lua_newtable(L);
  anchor = lua_gettop(L);
  args = lua_newuserdatauv(L, (size_t) (n + 1) * sizeof *args, 0);
  lua_rawsetp(L, anchor, args);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    if ((args[i - 1] = (char *) braid__cstring(L, -1)) == NULL)
      braid_argerror(L, 1, fname, lua_isstring(L, -1)
                     ? "an argument contains a zero byte"
                     : "list of strings expected");
    lua_rawseti(L, anchor, i);
  }
  args[n] = NULL;
  o->file = args[0];
  o->args = args;
  o->group = 1;
  if (!lua_istable(L, 2)) return;
  if (lua_getfield(L, 2, "cwd") != LUA_TNIL) {
    if ((o->cwd = braid__cstring(L, -1)) == NULL)
      braid_usageerror(L, "bad option 'cwd' to '%s' (string without zero "
                       "bytes expected)", fname);
    lua_rawseti(L, anchor, n + 1);
  } else {
    lua_pop(L, 1);
  }
  lua_getfield(L, 2, "interactive");
  o->group = !lua_toboolean(L, -1);   /* the terminal's foreground group */
  lua_pop(L, 1);
  if (lua_getfield(L, 2, "group") != LUA_TNIL) {
    if (!lua_isboolean(L, -1))
      braid_usageerror(L, "bad option 'group' to '%s' (boolean expected)",
                       fname);
    o->group = lua_toboolean(L, -1);
  }
  lua_pop(L, 1);
  if (!push_env(L, fname)) return;
  env_idx = lua_gettop(L);
  lua_pushvalue(L, env_idx);
  lua_rawseti(L, anchor, n + 2);
  k = 0;
  lua_pushnil(L);
  while (lua_next(L, env_idx)) { k++; lua_pop(L, 1); }
  env = lua_newuserdatauv(L, (size_t) (k + 1) * sizeof *env, 0);
  lua_rawsetp(L, anchor, env);
  k = 0;
  lua_pushnil(L);
  while (lua_next(L, env_idx)) {
    lua_pushfstring(L, "%s=%s", lua_tostring(L, -2), lua_tostring(L, -1));
    env[k++] = (char *) lua_tostring(L, -1);
    lua_rawseti(L, anchor, n + 2 + k);
    lua_pop(L, 1);
  }
  env[k] = NULL;
  o->env = env;
  lua_pop(L, 1);
}

/* Is c safe unquoted in a shell word? */
static int shell_plain (unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || strchr("@%+=:,./_-", c) != NULL;
}

void braid__proc_push_cmdline (lua_State *L, int idx, int argc) {
  luaL_Buffer b;
  size_t i, n = (size_t) argc;
  luaL_buffinit(L, &b);
  for (i = 1; i <= n; i++) {
    size_t len, j;
    const char *a;
    int plain = 1;
    lua_rawgeti(L, idx, (lua_Integer) i);
    a = lua_tolstring(L, -1, &len);
    lua_pop(L, 1);             /* a string, still in the anchor */
    if (a == NULL) continue;
    if (luaL_bufflen(&b) > 1000) {
      luaL_addstring(&b, " ...");
      break;
    }
    if (i > 1) luaL_addchar(&b, ' ');
    for (j = 0; j < len; j++) plain = plain && shell_plain((unsigned char) a[j]);
    if (plain && len > 0) {
      luaL_addlstring(&b, a, len);
      continue;
    }
    luaL_addchar(&b, '\'');
    for (j = 0; j < len; j++) {
      if (a[j] == '\'') luaL_addstring(&b, "'\\''");
      else luaL_addchar(&b, a[j]);
    }
    luaL_addchar(&b, '\'');
  }
  luaL_pushresult(&b);
}

/* Sets braid.env on the braid table at the stack top. */
void braid__open_env (lua_State *L) {
  lua_pushcfunction(L, l_env);
  lua_setfield(L, -2, "env");
}
