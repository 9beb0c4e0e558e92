/*
** progress.c: braid.progress(total, [label]), a progress line on stderr
** for a script's own loops, and the one that braid.gather, race, any and
** map draw with {progress = ...} (core/group.c counts their members,
** through the ops this file registers in prim.h).
**
** On a terminal it is one line redrawn in place -- label, bar, done/total,
** running, failed, elapsed, rate, ETA -- at most 10 times a second, and
** cleared when the progress ends; elsewhere it writes one plain line per
** tenth done, and one at the end. While the REPL shows its prompt, the
** line is drawn above the prompt (braid__term_hide/show, prim.h).
**
** Invariants:
** - A progress belongs to the scope that made it (a braid_resource): it
**   ends, and its line is cleared, when that scope ends, whatever the
**   script did. Ending twice is harmless.
** - Drawing is plain write(2) on fd 2, never Lua: the resource's close may
**   run where Lua cannot.
*/
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "core/prim.h"

#define PROGRESS_MT "braid.Progress"
#define REDRAW_NS 100000000u   /* at most 10 redraws a second */
#define LINE_MAX_ 512

struct progress {
  braid_resource_t res;        /* in the scope that made it */
  braid_engine_t *E;
  double total, done;
  long failed, running;
  uint64_t start_ns;           /* engine clock: virtual when it is */
  uint64_t drawn_ns;           /* uv_hrtime of the last redraw */
  int tty, decile, ended;
  int shown;                   /* a line is on the terminal now */
  int above;                   /* drawn above the REPL's prompt */
  char label[64];
};

static struct progress *progress_push(lua_State *L, braid_engine_t *E,
                                      double total, const char *label);

static void out (const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w <= 0) return;   /* stderr is gone: nothing to tell anyone */
    s += w;
    n -= (size_t) w;
  }
}

static int columns (void) {
  struct winsize ws;
  if (ioctl(2, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 20) return ws.ws_col;
  return 80;
}

/* Whole seconds as 64-bit integers: an int wrapped past 2^31 s (a total
** of 1e13 gave "ETA -596523h-14m"), and converting a double out of its
** range is undefined. Past MAX_SECS (about 3 million years): ">". */
#define MAX_SECS 1e14

static void fmt_secs (char *buf, size_t size, double s) {
  long long w = (long long) (s < MAX_SECS ? s : MAX_SECS);
  if (s < 60) snprintf(buf, size, "%.1fs", s);
  else if (s < 3600) snprintf(buf, size, "%lldm%02llds", w / 60, w % 60);
  else snprintf(buf, size, "%s%lldh%02lldm", s < MAX_SECS ? "" : ">",
                w / 3600, w / 60 % 60);
}

/* The terminal's line: "label [####----] 3/10 running 2 failed 1 1.2s
** 2.5/s ETA 2.8s", cut to the terminal's width. */
static size_t progress_line (struct progress *p, char *buf, size_t size) {
  double el = (double) (braid_now(p->E) - p->start_ns) / 1e9;
  double frac = p->total > 0 ? p->done / p->total : 0;
  char bar[21], t[48], eta[48];
  int i, n, cols = columns();
  size_t len;
  if (frac > 1) frac = 1;
  for (i = 0; i < 20; i++) bar[i] = i < (int) (frac * 20 + 1e-9) ? '#' : '-';
  bar[20] = '\0';
  fmt_secs(t, sizeof t, el);
  if (p->done > 0 && p->done < p->total && el > 0)
    fmt_secs(eta, sizeof eta, (p->total - p->done) * el / p->done);
  else
    snprintf(eta, sizeof eta, "-");
  n = snprintf(buf, size, "%s%s[%s] %.0f/%.0f", p->label,
               *p->label ? " " : "", bar, p->done, p->total);
  if (n > 0 && p->running > 0 && (size_t) n < size)
    n += snprintf(buf + n, size - (size_t) n, "  running %ld", p->running);
  if (n > 0 && p->failed > 0 && (size_t) n < size)
    n += snprintf(buf + n, size - (size_t) n, "  failed %ld", p->failed);
  if (n > 0 && (size_t) n < size)
    n += snprintf(buf + n, size - (size_t) n, "  %s  %.1f/s  ETA %s", t,
                  el > 0 ? p->done / el : 0.0, eta);
  len = n < 0 ? 0 : (size_t) n >= size ? size - 1 : (size_t) n;
  if (len > (size_t) cols - 1) len = (size_t) cols - 1;
  return len;
}

/* Puts `text` (n bytes, maybe none) where the line is: in place, or above
** the REPL's prompt, which is drawn again below it. */
static void progress_put (struct progress *p, const char *text, size_t n) {
  int hidden = braid__term_hide();
  char buf[LINE_MAX_ + 16];
  size_t len = 0;
  if (hidden && p->above) {   /* back up onto our line above the prompt */
    memcpy(buf, "\033[A", 3);
    len = 3;
  }
  memcpy(buf + len, "\r\033[K", 4);
  len += 4;
  memcpy(buf + len, text, n);
  len += n;
  if (hidden && n > 0) buf[len++] = '\n';   /* the prompt goes below */
  out(buf, len);
  p->above = hidden && n > 0;
  p->shown = n > 0;
  if (hidden) braid__term_show(1);
}

static void progress_draw (struct progress *p, int force) {
  if (p->ended) return;
  if (p->tty) {
    char line[LINE_MAX_];
    uint64_t now = uv_hrtime();
    if (!force && p->shown && now - p->drawn_ns < REDRAW_NS) return;
    p->drawn_ns = now;
    progress_put(p, line, progress_line(p, line, sizeof line));
  } else {
    double q = p->total > 0 ? p->done * 10 / p->total : 0;
    int d = q >= 10 ? 10 : (int) q;   /* done may pass total by far: no int overflow */
    char line[LINE_MAX_], t[48];
    int n;
    if (d <= p->decile || d >= 10) return;   /* the end has its own line */
    p->decile = d;
    fmt_secs(t, sizeof t, (double) (braid_now(p->E) - p->start_ns) / 1e9);
    n = snprintf(line, sizeof line, "%s%s%d%% (%.0f/%.0f) %s\n", p->label,
                 *p->label ? ": " : "", (int) (p->done * 100 / p->total),
                 p->done, p->total, t);
    if (n > 0) out(line, (size_t) n < sizeof line ? (size_t) n : sizeof line - 1);
  }
}

/* Ends p: a terminal's line is cleared; elsewhere one last line. */
static void progress_end (struct progress *p) {
  if (p->ended) return;
  p->ended = 1;
  braid_resource_remove(&p->res);
  if (p->tty) {
    if (p->shown) progress_put(p, "", 0);
  } else {
    char line[LINE_MAX_], t[48], f[40] = "";
    int n;
    fmt_secs(t, sizeof t, (double) (braid_now(p->E) - p->start_ns) / 1e9);
    if (p->failed > 0) snprintf(f, sizeof f, ", %ld failed", p->failed);
    n = snprintf(line, sizeof line, "%s%sdone %.0f/%.0f%s in %s\n", p->label,
                 *p->label ? ": " : "", p->done, p->total, f, t);
    if (n > 0) out(line, (size_t) n < sizeof line ? (size_t) n : sizeof line - 1);
  }
}

static void progress_close_res (braid_resource_t *r) {
  progress_end(container_of(r, struct progress, res));
}

static struct progress *progress_check (lua_State *L, const char *fname) {
  return (struct progress *) braid__check_object(L, 1, PROGRESS_MT, fname);
}

/* The optional count at 2: 1 by default. */
static lua_Number progress_count (lua_State *L, const char *fname) {
  lua_Number n = lua_tonumber(L, 2);
  if (lua_isnoneornil(L, 2)) return 1;
  if (!lua_isnumber(L, 2) || !(n >= 0) || n > 1e15 || n != floor(n))
    braid_argerror(L, 2, fname, "a whole count from 0 expected");
  return n;
}

/* braid.progress(total, [label]) -> p */
static int l_progress_new (lua_State *L) {
  braid_engine_t *E = braid_check_task(L, "braid.progress");
  lua_Number total = lua_tonumber(L, 1);
  const char *label = "";
  struct progress *p;
  if (!lua_isnumber(L, 1) || !(total >= 0) || total > 1e15 ||
      total != floor(total))
    braid_argerror(L, 1, "braid.progress", "a whole count from 0 expected");
  if (!lua_isnoneornil(L, 2)) {
    if (!lua_isstring(L, 2))
      braid_argerror(L, 2, "braid.progress", "string expected");
    label = lua_tostring(L, 2);
  }
  p = progress_push(L, E, total, label);
  p->res.close = progress_close_res;
  braid_resource_add(L, &p->res);
  progress_draw(p, 1);
  return 1;
}

/* p:add([n]) -> p: n more done (1 by default). */
static int l_progress_add (lua_State *L) {
  struct progress *p = progress_check(L, "progress:add");
  lua_Number n = progress_count(L, "progress:add");
  p->done += n;
  progress_draw(p, p->done >= p->total);
  lua_settop(L, 1);
  return 1;
}

/* p:fail([n]) -> p: n more failed (they count as done too). */
static int l_progress_fail (lua_State *L) {
  struct progress *p = progress_check(L, "progress:fail");
  lua_Number n = progress_count(L, "progress:fail");
  p->failed += (long) n;
  p->done += n;
  progress_draw(p, p->done >= p->total);
  lua_settop(L, 1);
  return 1;
}

/* ---- the groups' progress (prim.h): no resource, the group ends it ---- */

/* Copies label into buf (size bytes), cut if longer at a character's
** start: a cut in the middle of a UTF-8 character left a lone lead byte
** on the terminal. */
static void progress_label (char *buf, size_t size, const char *label) {
  size_t n = strlen(label);
  if (n >= size) {
    n = size - 1;
    while (n > 0 && ((unsigned char) label[n] & 0xC0) == 0x80) n--;
  }
  memcpy(buf, label, n);
  buf[n] = '\0';
}

static struct progress *progress_push (lua_State *L, braid_engine_t *E,
                                       double total, const char *label) {
  struct progress *p = (struct progress *) lua_newuserdatauv(L, sizeof *p, 0);
  memset(p, 0, sizeof *p);
  luaL_setmetatable(L, PROGRESS_MT);
  p->E = E;
  p->total = total;
  p->tty = isatty(2);
  p->start_ns = braid_now(E);
  progress_label(p->label, sizeof p->label, label);
  p->res.prev = p->res.next = &p->res;   /* not in a scope */
  return p;
}

static void *group_start (lua_State *L, const char *label, double total) {
  struct progress *p = progress_push(L, braid_engine(L), total, label);
  progress_draw(p, 1);
  return p;
}

static void group_update (void *ud, int running, int ok, int failed) {
  struct progress *p = (struct progress *) ud;
  p->running = running;
  p->done += ok + failed;
  p->failed += failed;
  progress_draw(p, ok + failed > 0 && p->done >= p->total);
}

static void group_end (void *ud) {
  progress_end((struct progress *) ud);
}

static const struct braid_progress_ops group_ops = {
  group_start, group_update, group_end
};

/* p:done(): the progress ends; its line is cleared (on a terminal). */
static int l_progress_done (lua_State *L) {
  progress_end(progress_check(L, "progress:done"));
  return 0;
}

static int l_progress_gc (lua_State *L) {
  progress_end((struct progress *) lua_touserdata(L, 1));
  return 0;
}

void braid__open_progress (lua_State *L) {
  static const luaL_Reg methods[] = {
    {"add", l_progress_add},
    {"fail", l_progress_fail},
    {"done", l_progress_done},
    {NULL, NULL}
  };
  static const luaL_Reg metamethods[] = {
    {"__close", l_progress_done},
    {"__gc", l_progress_gc},
    {NULL, NULL}
  };
  braid__class(L, PROGRESS_MT, metamethods, methods, NULL);
  lua_pop(L, 1);
  lua_pushcfunction(L, l_progress_new);
  lua_setfield(L, -2, "progress");
  braid__progress_ops(&group_ops);
}
