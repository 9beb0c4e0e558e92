/*
** fs_watch.c: braid.fs.watch(path, [opts]) -> watcher; watcher:next() ->
** {path = ..., event = "change" | "rename" | "overflow"} | nil;
** `for ev in watcher do`; watcher:close().
**
** A watcher is a malloc'd struct with a uv_fs_event_t embedded, found from
** Lua through a box userdata (as signal.c's waiters), started when it is
** made: changes that happen while no task waits are queued for the next
** next().
**
** Invariants:
** - The queue is bounded (WATCH_MAX events): an event equal to one already
**   queued (same name, same kind) is merged into it, and past the bound
**   events are dropped and one "overflow" event says so, so a flood never
**   grows memory.
** - With opts.debounce, queued events become ready only once the watched
**   path has been quiet that long (each event re-arms the engine timer);
**   without it they are ready at once.
** - One task waits at a time (`waiter` is its op). The handle is
**   referenced exactly while a task waits, so a waiting task counts as
**   something that can wake up (no deadlock report) and an idle watcher
**   never keeps the loop alive.
** - The watcher is a resource of the scope that made it: when that scope
**   ends, or on close(), __close or __gc, the handle is closed (exactly
**   once), the queue is freed, a waiting task is woken and its next()
**   returns nil (the end of a for loop); the memory goes in the close
**   callback.
** - The watch follows what the path named when it was made (inotify
**   watches an inode): once a "rename" of the watched path itself finds the
**   path gone or naming another inode (deleted, moved away, replaced), the
**   kernel has dropped or will never again report that path, so the
**   handle is stopped (`gone`) and next() returns nil after the events
**   queued so far, at once, also for a task waiting then (debounce or not).
*/
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "io/fs.h"

#define WATCH_MT "braid.Watcher"
#define WATCH_MAX 1024

enum { EV_CHANGE, EV_RENAME, EV_OVERFLOW };
static const char *const ev_names[] = {"change", "rename", "overflow"};

struct watch_ev {
  struct braid_list link;
  int kind;
  char name[1];                /* "" for the watched path itself */
};

struct watcher {
  uv_fs_event_t handle;
  braid_resource_t res;
  braid_timer_t quiet;         /* the debounce */
  braid_engine_t *E;
  struct watcher **box;        /* the Lua object; NULL once it is gone */
  braid_op_t *waiter;          /* the task waiting in next(), or NULL */
  struct braid_list queue;     /* struct watch_ev, oldest first */
  char *path;                  /* as given */
  uint64_t debounce;           /* ns; 0: none */
  uint64_t dev, ino;           /* what the path named when watched */
  unsigned queued;
  unsigned char ready, overflowed, referenced, is_dir, closing, gone;
};

static void watch_update_ref (struct watcher *w) {
  int want = w->waiter != NULL;
  if (want == w->referenced) return;
  w->referenced = (unsigned char) want;
  if (want) uv_ref((uv_handle_t *) &w->handle);
  else uv_unref((uv_handle_t *) &w->handle);
}

/* Wakes the waiting task when something is ready for it. */
static void watch_wake (struct watcher *w) {
  braid_op_t *op = w->waiter;
  if (op == NULL || (!w->ready && !w->closing && !w->gone)) return;
  w->waiter = NULL;
  if (!w->closing) watch_update_ref(w);
  braid_resume(op, 0);
}

static void watch_quiet_cb (braid_timer_t *tm) {
  struct watcher *w = container_of(tm, struct watcher, quiet);
  w->ready = !braid__list_empty(&w->queue);
  watch_wake(w);
}

/* Queues an event, merged into an equal one, dropped past the bound. */
static void watch_push (struct watcher *w, int kind, const char *name) {
  struct braid_list *n;
  struct watch_ev *ev;
  size_t len = strlen(name);
  for (n = w->queue.next; n != &w->queue; n = n->next) {
    ev = container_of(n, struct watch_ev, link);
    if (ev->kind == kind && strcmp(ev->name, name) == 0) return;
  }
  if (w->queued >= WATCH_MAX) {
    if (w->overflowed) return;
    w->overflowed = 1;
    kind = EV_OVERFLOW;
    name = "";
    len = 0;
  }
  if ((ev = malloc(sizeof *ev + len)) == NULL) {
    w->overflowed = 1;           /* lost: say so once memory comes back */
    return;
  }
  ev->kind = kind;
  memcpy(ev->name, name, len + 1);
  braid__list_push(&w->queue, &ev->link);
  w->queued++;
}

/* Whether the path still names the inode watched. A stat on the loop's
** thread, as the one that made the watcher: only after a rename that
** may concern the watched path itself. */
static int watch_still_there (struct watcher *w) {
  uv_fs_t req;
  int rc = uv_fs_stat(NULL, &req, w->path, NULL), same;
  same = rc == 0 && req.statbuf.st_dev == w->dev &&
         req.statbuf.st_ino == w->ino;
  uv_fs_req_cleanup(&req);
  return same;
}

/* Whether an event may be the watched path's own: a file's events all
** are; libuv names one of a directory itself after its last component
** ("" when the path ends in "/"). */
static int watch_is_self (const struct watcher *w, const char *filename) {
  const char *end = w->path + strlen(w->path), *p;
  if (!w->is_dir || filename == NULL || filename[0] == '\0') return 1;
  while (end > w->path + 1 && end[-1] == '/') end--;   /* "dir/" */
  for (p = end; p > w->path && p[-1] != '/'; p--) {}
  return strlen(filename) == (size_t) (end - p) &&
         memcmp(filename, p, (size_t) (end - p)) == 0;
}

static void watch_cb (uv_fs_event_t *h, const char *filename, int events,
                      int status) {
  struct watcher *w = container_of(h, struct watcher, handle);
  if (w->closing || w->gone) return;
  if (status < 0) {
    watch_push(w, EV_OVERFLOW, "");
  } else {
    /* A file's every event: its last name removed while another link or
    ** an open descriptor keeps it is only IN_ATTRIB, a "change". */
    int gone = ((events & UV_RENAME) || !w->is_dir) &&
               watch_is_self(w, filename) && !watch_still_there(w);
    /* The watched directory's own event carries its last component as
    ** the name, which would read as an entry of that name ("d/d"): once
    ** the path is gone, the event is the path's own. */
    watch_push(w, (events & UV_RENAME) ? EV_RENAME : EV_CHANGE,
               w->is_dir && filename && !gone ? filename : "");
    if (gone) {
      if (!(events & UV_RENAME))   /* a path that went says "rename" */
        watch_push(w, EV_RENAME, "");
      w->gone = 1;             /* deleted, moved away or replaced */
      uv_fs_event_stop(h);
      braid_timer_stop(w->E, &w->quiet);
      w->ready = !braid__list_empty(&w->queue);
      watch_wake(w);
      return;
    }
  }
  if (w->debounce) {
    braid_timer_start(w->E, &w->quiet, w->debounce, watch_quiet_cb);
  } else {
    w->ready = 1;
    watch_wake(w);
  }
}

static void watch_close_cb (uv_handle_t *h) {
  struct watcher *w = container_of((uv_fs_event_t *) h, struct watcher,
                                   handle);
  free(w->path);
  free(w);
}

/* Closes the watcher once; runs no Lua. */
static void watch_close (struct watcher *w) {
  if (w->closing) return;
  w->closing = 1;
  braid_resource_remove(&w->res);
  braid_timer_stop(w->E, &w->quiet);
  while (!braid__list_empty(&w->queue)) {
    struct braid_list *n = w->queue.next;
    braid__list_remove(n);
    free(container_of(n, struct watch_ev, link));
  }
  w->queued = 0;
  if (w->box) *w->box = NULL;
  w->box = NULL;
  watch_wake(w);
  uv_close((uv_handle_t *) &w->handle, watch_close_cb);
}

static void watch_res_close (braid_resource_t *r) {
  watch_close(container_of(r, struct watcher, res));
}

/* Pushes the oldest ready event as {path, event} and drops it. */
static int watch_take (lua_State *L, struct watcher *w) {
  struct watch_ev *ev = container_of(w->queue.next, struct watch_ev, link);
  lua_createtable(L, 0, 2);
  if (ev->name[0]) lua_pushfstring(L, "%s/%s", w->path, ev->name);
  else lua_pushstring(L, w->path);
  lua_setfield(L, -2, "path");
  lua_pushstring(L, ev_names[ev->kind]);
  lua_setfield(L, -2, "event");
  braid__list_remove(&ev->link);
  if (ev->kind == EV_OVERFLOW) w->overflowed = 0;
  free(ev);
  w->queued--;
  if (braid__list_empty(&w->queue)) w->ready = 0;
  return 1;
}

static int next_start (braid_op_t *op, void *ud) {
  struct watcher *w = (struct watcher *) ud;
  *(struct watcher **) braid_op_data(op) = w;
  w->waiter = op;
  watch_update_ref(w);
  return 0;
}

static void next_cancel (braid_op_t *op) {
  struct watcher *w = *(struct watcher **) braid_op_data(op);
  if (w->waiter == op) {
    w->waiter = NULL;
    watch_update_ref(w);
  }
}

/* The watcher object is at 1; it may have closed meanwhile. */
static int next_k (lua_State *L, braid_op_t *op) {
  struct watcher **box = (struct watcher **) lua_touserdata(L, 1);
  (void) op;
  if (*box == NULL || !(*box)->ready) {
    lua_pushnil(L);
    return 1;
  }
  return watch_take(L, *box);
}

/* watcher:next() -> {path, event} | nil: the next change, waiting for
** one; nil once the watcher is closed. */
static int watch_next (lua_State *L) {
  struct watcher **box = braid__check_object(L, 1, WATCH_MT,
                                             "watcher:next");
  struct watcher *w = *box;
  braid_check_task(L, "watcher:next");
  lua_settop(L, 1);
  if (w == NULL) {
    lua_pushnil(L);
    return 1;
  }
  if (w->waiter)
    return braid_usageerror(L, "watcher:next: another task waits on this "
                            "watcher");
  if (w->ready) return watch_take(L, w);
  if (w->gone) {
    lua_pushnil(L);
    return 1;
  }
  braid_check_suspend(L, "watcher:next");
  return braid_suspendk(L, "fs.watch", sizeof w, next_start, next_cancel, w,
                        next_k);
}

static int l_watch_next (lua_State *L) { return watch_next(L); }

/* for ev in watcher do: the generic for calls watcher(nil, nil). */
static int l_watch_call (lua_State *L) { return watch_next(L); }

static int l_watch_close (lua_State *L) {
  struct watcher **box = braid__check_object(L, 1, WATCH_MT,
                                             "watcher:close");
  if (*box) watch_close(*box);
  return 0;
}

static int l_watch_tostring (lua_State *L) {
  struct watcher **box = braid__check_object(L, 1, WATCH_MT, "tostring");
  if (*box) lua_pushfstring(L, "<watcher of %s>", (*box)->path);
  else lua_pushliteral(L, "<watcher (closed)>");
  return 1;
}

static const char *const watch_options[] = {"debounce", NULL};

/* braid.fs.watch(path, [opts]) -> watcher of a file or a directory (its
** entries, not deeper); opts.debounce (seconds) delivers changes once the
** path has been quiet that long. */
static int l_fs_watch (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "braid.fs.watch");
  struct watcher **box, *w;
  const char *path;
  size_t len;
  uv_fs_t req;
  uint64_t debounce;
  int rc;
  braid__check_type(L, 1, LUA_TSTRING, "braid.fs.watch");
  path = lua_tolstring(L, 1, &len);
  if (strlen(path) != len || len == 0)
    braid_argerror(L, 1, "braid.fs.watch", "path expected (not empty, no "
                   "zero byte)");
  braid__check_options(L, 2, "braid.fs.watch", watch_options);
  debounce = braid__opt_seconds(L, 2, "debounce", 0, "braid.fs.watch");
  if (debounce >= BRAID_NEVER)
    braid_usageerror(L, "bad option 'debounce' to 'braid.fs.watch' "
                     "(a finite number of seconds expected)");
  box = (struct watcher **) lua_newuserdatauv(L, sizeof *box, 0);
  *box = NULL;
  luaL_setmetatable(L, WATCH_MT);
  if ((debounce && braid__timer_reserve(E) != 0) ||
      (w = braid__calloc(1, sizeof *w)) == NULL)
    return braid_error(L, "memory", NULL, "braid.fs.watch: not enough "
                       "memory");
  if ((w->path = braid__malloc(len + 1)) == NULL) {
    free(w);
    return braid_error(L, "memory", NULL, "braid.fs.watch: not enough "
                       "memory");
  }
  memcpy(w->path, path, len + 1);
  /* A directory's events name its entries; a file's, the file. (A stat
  ** on the loop's thread, as inotify_add_watch is anyway.) */
  rc = uv_fs_stat(braid_loop(E), &req, path, NULL);
  w->is_dir = rc == 0 && (req.statbuf.st_mode & S_IFMT) == S_IFDIR;
  w->dev = req.statbuf.st_dev;
  w->ino = req.statbuf.st_ino;
  uv_fs_req_cleanup(&req);
  if (rc == 0) rc = uv_fs_event_init(braid_loop(E), &w->handle);
  if (rc != 0) {
    free(w->path);
    free(w);
    return braid__fs_raise(L, "braid.fs.watch", rc, path, NULL, NULL);
  }
  w->E = E;
  w->debounce = debounce;
  braid__list_init(&w->queue);
  w->res.close = watch_res_close;
  braid_resource_add(L, &w->res);
  w->box = box;
  *box = w;
  w->referenced = 1;
  watch_update_ref(w);
  if ((rc = uv_fs_event_start(&w->handle, watch_cb, w->path, 0)) != 0) {
    watch_close(w);
    return braid__fs_raise(L, "braid.fs.watch", rc, path, NULL, NULL);
  }
  return 1;
}

/* Adds watch to the braid.fs table at the stack top. [-0, +0, m] */
void braid__open_fs_watch (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"next", l_watch_next},
    {"close", l_watch_close},
    {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__call", l_watch_call},
    {"__close", l_watch_close},
    {"__gc", l_watch_close},
    {"__tostring", l_watch_tostring},
    {NULL, NULL}
  };
  braid__class(L, WATCH_MT, meta, methods, NULL);
  lua_pop(L, 1);
  lua_pushcfunction(L, l_fs_watch);
  lua_setfield(L, -2, "watch");
}
