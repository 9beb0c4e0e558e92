/*
** repl.c: the interactive session of the braid command (`braid` on a
** terminal, `braid -i`): reading input from the loop, line editing with
** libedit (its own interface, el_gets in unbuffered mode), keeping the
** partly typed line intact while tasks print, Ctrl-C, and history. The
** session itself (prompts, evaluation, printing values) is lua/repl.lua,
** the root task's body; this file gives it `repl`, a table of C functions.
**
** Invariants:
** - Input is read only from the loop: a uv_poll_t on fd 0 is active (and
**   keeps the loop alive) only while the root task waits in repl.readline;
**   libedit is in unbuffered mode (terminal in raw mode) exactly as long.
** - libedit's readline-compatible layer is not used: in libedit
**   3.1-20221030 its rl_callback_read_char writes a '\0' through
**   rl_line_buffer after el_gets may have moved the buffer that pointer
**   points into (a line of about 1 KB, 2 KB, ... crossing the size of
**   libedit's conversion buffer): heap corruption on a long or pasted line.
**   el_gets returns that buffer itself, valid until the next call.
** - libedit runs in the user's LC_CTYPE (from the environment), made the
**   thread's own around its calls only (edit_enter, edit_leave): braid
**   never calls setlocale, and in the "C" locale libedit dropped every
**   byte above 127 as it was typed (UTF-8 text lost its non-ASCII).
** - fd 0 keeps its blocking mode: uv_poll_init makes it non-blocking, which
**   on a terminal would also make stdout non-blocking, so it is restored.
** - One session per process (the runner runs one engine): its state is the
**   static `R`. This file is linked into build/braid only, never into
**   braid.so, so the module does not depend on libedit.
*/
#define _GNU_SOURCE   /* wcswidth */
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>
#include <wchar.h>
#include <histedit.h>
#include "core/prim.h"

extern const char braid__repl_source[];

/* READ_NOMEM: a buffer for the input could not grow; the read raises
** kind "memory" in the session's task. */
enum { READ_NONE, READ_LINE, READ_EOF, READ_INTR, READ_NOMEM };

static struct repl {
  braid_engine_t *E;
  uv_poll_t poll;
  uv_signal_t cont;            /* SIGCONT, in edit mode (R.edit) */
  int open, pollable, edit, hidden;
  braid_op_t *reader;          /* the op of the task in repl.readline */
  int result;                  /* READ_* once the read is over */
  char *line;                  /* malloc'd, for READ_LINE */
  char *acc;                   /* plain mode: bytes read, not yet a line */
  size_t acc_n, acc_cap;
  char prompt[64];
  braid_task_t *entry;         /* the entry running now, anchored */
  int entry_ref;
  char *histfile;
  EditLine *el;                /* with R.edit */
  History *hist;
  locale_t loc;                /* LC_CTYPE for libedit, or (locale_t) 0 */
  struct braid_interceptor ic; /* Ctrl-C: the prompt's or the entry's */
  struct braid_session session;
} R = {.entry_ref = LUA_NOREF};

/* ---- reading a line ---- */

static void read_stop (void) {
  if (R.pollable) uv_poll_stop(&R.poll);
  if (R.edit) el_set(R.el, EL_UNBUFFERED, 0);   /* the terminal is cooked */
  R.reader = NULL;
  R.hidden = 0;
}

/* The read ended with `result`: the waiting task is made ready. */
static void read_done (int result) {
  braid_op_t *op = R.reader;
  R.result = result;
  read_stop();
  braid_resume(op, 0);
}

/* Around calls into libedit: its LC_CTYPE is current; edit_enter returns
** the locale to restore. */
static locale_t edit_enter (void) {
  return R.loc ? uselocale(R.loc) : (locale_t) 0;
}

static void edit_leave (locale_t old) {
  if (R.loc) uselocale(old);
}

/* libedit's reader of one character, UTF-8 decoded in its locale. poll_cb
** saw a byte; what completes a character or follows an Esc (the rest of a
** key's sequence) comes within SEQ_MS or never: a lone Esc or a stray
** byte waited in read() with the loop, every task with it, until the next
** key. Then -1 (EAGAIN): el_gets drops the partial key and returns. Other
** keys that wait for the next one (^V, ^R's search) still block, as
** libedit's own reader does. */
#define SEQ_MS 100

static int after_esc;   /* edit_getc's last character was an Esc */
static int back = -1;   /* a byte paste_take read for edit_getc, or -1 */

static int edit_getc (EditLine *el, wchar_t *wc) {
  char buf[MB_LEN_MAX];
  size_t n = 0;
  int got = 0;   /* bytes read by this call */
  (void) el;
  for (;;) {
    struct pollfd p = {0, POLLIN, 0};
    mbstate_t st;
    ssize_t r;
    size_t k;
    if (back >= 0) {
      buf[n] = (char) back;
      back = -1;
    } else {
      if (got || after_esc) {
        int ready = poll(&p, 1, SEQ_MS);
        if (ready < 0 && errno == EINTR) continue;
        if (ready == 0) {
          after_esc = 0;
          errno = EAGAIN;
          return -1;
        }
      }
      r = read(0, buf + n, 1);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return (int) r;   /* 0: hung up; -1: errno says */
    }
    got = 1;
    for (n++;;) {
      memset(&st, 0, sizeof st);
      k = mbrtowc(wc, buf, n, &st);
      if (k < (size_t) -2) {
        after_esc = *wc == 033;
        return 1;
      }
      if (k == (size_t) -2 && n < sizeof buf) break;   /* more bytes */
      if (n == 1) {   /* not a character: dropped */
        n = 0;
        break;
      }
      buf[0] = buf[n - 1];   /* what broke the sequence starts anew */
      n = 1;
    }
  }
}

/* A paste, in edit mode: el_gets takes one key per call, at a cost that
** grows with the line, so a paste of one 19 KB line took 6.6 s of CPU
** (quadratic; 200 KB, minutes, the loop turning once per byte). What
** fd 0 holds at once of a run of printable ASCII and tabs (what emacs mode
** inserts as typed) goes into the line with one el_insertstr, then a key
** bound to ed-redisplay (REDISPLAY, pushed as input) has libedit redraw
** the line once, from where its cursor is; the byte that ended the run is
** left in `back` for el_gets. One byte per read: what follows stays in
** the terminal, where the loop's poll sees it. A lone byte (typing) goes
** to el_gets as before; nothing is taken in vi mode or after an Esc.
** Returns whether a redisplay was pushed. */
#define PASTE_MAX 4096   /* bytes per turn of the loop */
#define REDISPLAY "\033[9000~"   /* no terminal sends it */

static int paste_take (void) {
  char run[PASTE_MAX + 1];
  size_t n = 0;
  const char *editor;
  if (after_esc || back >= 0 || el_get(R.el, EL_EDITOR, &editor) ||
      strcmp(editor, "emacs") != 0)
    return 0;
  while (n < PASTE_MAX) {
    struct pollfd p = {0, POLLIN, 0};
    unsigned char c;
    ssize_t r;
    if (poll(&p, 1, 0) != 1 || !(p.revents & POLLIN)) break;
    r = read(0, &c, 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;   /* el_gets reads the end or the error again */
    if ((c < 0x20 && c != '\t') || c >= 0x7f) {
      back = c;
      break;
    }
    run[n++] = (char) c;
  }
  if (n == 1 && back < 0) {   /* typing */
    back = (unsigned char) run[0];
    return 0;
  }
  if (n == 0) return 0;
  run[n] = '\0';
  el_insertstr(R.el, run);   /* -1 past libedit's line limit: dropped, as
                             ** el_gets drops a key there */
  el_push(R.el, REDISPLAY);
  return 1;
}

/* Edit mode: one key (or key sequence) from fd 0 to libedit. el_gets
** returns the whole line so far: ending with a newline when the line is
** entered, a lone ^D when Ctrl-D came on an empty line; NULL when the line
** is empty (a key that left it so), also when the read failed: then errno
** says so, or fd 0 is hung up. */
static int edit_key (void) {
  int n = 0;
  const char *s;
  errno = 0;
  s = el_gets(R.el, &n);
  if (s == NULL || n <= 0) {
    struct pollfd p = {0, POLLIN, 0};
    if ((errno != 0 && errno != EINTR && errno != EAGAIN) ||
        (poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR | POLLNVAL))))
      return READ_EOF;
    return READ_NONE;
  }
  if (n == 1 && s[0] == '\004') return READ_EOF;
  if (s[n - 1] != '\n' && s[n - 1] != '\r') return READ_NONE;
  R.line = braid__malloc((size_t) n);
  if (R.line == NULL) return READ_NOMEM;
  memcpy(R.line, s, (size_t) n - 1);
  R.line[n - 1] = '\0';
  return READ_LINE;
}

/* Plain mode: takes one line out of the accumulator, if it holds one
** (R.result READ_LINE); returns 0 when it holds none. With no memory for
** the line, the line stays where it is and R.result is READ_NOMEM. */
static int acc_take (void) {
  char *nl = R.acc_n ? memchr(R.acc, '\n', R.acc_n) : NULL;
  size_t n;
  if (nl == NULL) return 0;
  n = (size_t) (nl - R.acc);
  R.line = braid__malloc(n + 1);
  if (R.line == NULL) {
    R.result = READ_NOMEM;
    return 1;
  }
  memcpy(R.line, R.acc, n);
  R.line[n] = '\0';
  if (n > 0 && R.line[n - 1] == '\r') R.line[n - 1] = '\0';
  memmove(R.acc, nl + 1, R.acc_n - n - 1);
  R.acc_n -= n + 1;
  R.result = READ_LINE;
  return 1;
}

/* Plain mode: reads what fd 0 has; returns READ_NONE while no line is
** complete. At the end of input, a last unterminated line still counts.
** READ_NOMEM when the buffer could not grow (what it holds stays). */
static int acc_fill (void) {
  ssize_t n;
  if (R.acc_cap - R.acc_n < 4096) {
    size_t cap = R.acc_cap * 2 + 4096;
    char *acc = braid__realloc(R.acc, cap);
    if (acc == NULL) return READ_NOMEM;
    R.acc = acc;
    R.acc_cap = cap;
  }
  n = read(0, R.acc + R.acc_n, R.acc_cap - R.acc_n);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return READ_NONE;
  if (n > 0) {
    R.acc_n += (size_t) n;
    return acc_take() ? R.result : READ_NONE;
  }
  if (R.acc_n > 0) {
    R.acc[R.acc_n++] = '\n';
    return acc_take() ? R.result : READ_EOF;
  }
  return READ_EOF;
}

static void poll_cb (uv_poll_t *h, int status, int events) {
  (void) h; (void) events;
  if (R.reader == NULL) return;
  if (status < 0) {
    read_done(READ_EOF);
    return;
  }
  if (R.edit) {
    locale_t old = edit_enter();
    int pushed = paste_take(), r = pushed ? edit_key() : READ_NONE;
    if (r == READ_NONE && (!pushed || back >= 0)) r = edit_key();
    edit_leave(old);
    if (r != READ_NONE) read_done(r);
  } else {
    int r = acc_fill();
    if (r != READ_NONE) read_done(r);
  }
}

/* The reading task was cancelled (or abandoned after its line came). */
static void read_cancel (braid_op_t *op) {
  if (R.reader == op) read_stop();
}

/* Pushes the line read (a string), nil at the end of input, or false when
** Ctrl-C discarded the input. Frees the line. Raises kind "memory" when
** the input could not be buffered. */
static int read_push (lua_State *L) {
  switch (R.result) {
    case READ_NOMEM:
      R.result = READ_NONE;
      return braid_error(L, "memory", NULL, "repl.readline: not enough "
                         "memory for the input");
    case READ_LINE:
      lua_pushstring(L, R.line);
      free(R.line);
      R.line = NULL;
      break;
    case READ_INTR: lua_pushboolean(L, 0); break;
    default: lua_pushnil(L); break;
  }
  R.result = READ_NONE;
  return 1;
}

static int readline_k (lua_State *L, braid_op_t *op) {
  (void) op;
  return read_push(L);
}

/* Shows the prompt and waits for fd 0 from the loop. */
static int readline_start (braid_op_t *op, void *ud) {
  (void) ud;
  R.reader = op;
  if (R.edit) {
    locale_t old = edit_enter();
    el_set(R.el, EL_UNBUFFERED, 1);   /* raw; shows the prompt */
    edit_leave(old);
  }
  return uv_poll_start(&R.poll, UV_READABLE, poll_cb);
}

/* repl.readline(prompt) -> line | nil (end of input) | false (Ctrl-C):
** shows the prompt and suspends the task until a line is entered. */
static int l_repl_readline (lua_State *L) {
  const char *prompt = luaL_checkstring(L, 1);
  braid_check_suspend(L, "repl.readline");
  R.result = READ_NONE;
  if (!R.edit) {
    fputs(prompt, stdout);
    fflush(stdout);
    if (acc_take()) return read_push(L);
    if (!R.pollable) {   /* a regular file: reading it never blocks long */
      while ((R.result = acc_fill()) == READ_NONE) ;
      return read_push(L);
    }
  }
  snprintf(R.prompt, sizeof R.prompt, "%s", prompt);
  fflush(stdout);
  fflush(stderr);
  return braid_suspendk(L, "input", 0, readline_start, read_cancel, NULL,
                        readline_k);
}

/* ---- output while the prompt is shown ---- */

/* Clears the prompt and the partly typed line from the screen so that
** output can be written; returns 1 when it did (repl_show must follow). */
static int repl_hide (void) {
  if (R.reader == NULL || R.hidden) return 0;
  fflush(stdout);
  fflush(stderr);
  if (R.edit) {
    locale_t old = edit_enter();
    const LineInfoW *li = el_wline(R.el);
    int n = (int) (li->cursor - li->buffer), cols = 0, up;
    int w = wcswidth(li->buffer, (size_t) n);   /* columns, not bytes */
    el_get(R.el, EL_GETTC, "co", &cols);
    edit_leave(old);
    if (w < 0) w = n;
    if (cols <= 0) cols = 80;
    up = (int) (strlen(R.prompt) + (size_t) w) / cols;
    if (up > 0) printf("\033[%dA", up);
    fputs("\r\033[J", stdout);
  } else {
    fputc('\n', stdout);
  }
  fflush(stdout);
  R.hidden = 1;
  return 1;
}

/* Draws the prompt and the partly typed line again, on a line of their
** own (a newline first unless the output ended with one). */
static void repl_show (int at_line_start) {
  if (!R.hidden) return;
  R.hidden = 0;
  fflush(stderr);
  if (!at_line_start) fputc('\n', stdout);
  fflush(stdout);
  if (R.edit) {
    locale_t old = edit_enter();
    el_set(R.el, EL_REFRESH);
    edit_leave(old);
  } else {
    fputs(R.prompt, stdout);
    fflush(stdout);
  }
}

/* For C code that draws on the terminal (a progress line, prim.h). */
static const struct braid_term_guard repl_guard = {repl_hide, repl_show};

/* repl.hide() -> boolean: before a task writes to the terminal. */
static int l_repl_hide (lua_State *L) {
  lua_pushboolean(L, repl_hide());
  return 1;
}

/* repl.show(at_line_start): after the write that repl.hide prepared. */
static int l_repl_show (lua_State *L) {
  repl_show(lua_toboolean(L, 1));
  return 0;
}

/* ---- Ctrl-C, entries, the session scope ---- */

static int entry_cancel_p (lua_State *L) {
  braid_task_t *t = (braid_task_t *) lua_touserdata(L, 1);
  if (braid__task_cancelled(t)) {   /* a second Ctrl-C: stop waiting */
    braid__task_abandon_as(t, "Ctrl-C again while it was cleaning up");
    return 0;
  }
  lua_pushliteral(L, "interrupt");
  braid__task_cancel(t, L, lua_gettop(L));
  return 0;
}

/* Ctrl-C: at the prompt it discards the input; while an entry runs it
** cancels the entry (a second one abandons it). Otherwise (the session
** is ending) the engine's default applies. */
static int repl_intercept (struct braid_interceptor *ic, int signum) {
  if (signum != SIGINT) return 0;   /* SIGTERM, SIGHUP: end the session */
  if (R.reader) {
    R.acc_n = 0;   /* the terminal driver drops typed-ahead input too */
    /* (the edited line: the next prompt's unbuffered mode starts empty) */
    read_done(READ_INTR);
    fputs(R.edit ? "^C\n" : "\n", stdout);   /* the terminal echoed ^C */
    fflush(stdout);
    return 1;
  }
  (void) ic;
  if (R.entry && braid_task_status(R.entry) < BRAID_OK) {
    struct termios tio;
    /* the terminal echoed ^C where the cursor was: what follows (the
    ** entry's cleanup output) starts on a line of its own */
    if (isatty(1) && tcgetattr(0, &tio) == 0 && (tio.c_lflag & ECHO) &&
        (tio.c_lflag & ECHOCTL)) {
      fputc('\n', stdout);
      fflush(stdout);
    }
    braid__engine_call(R.E, entry_cancel_p, R.entry);
    return 1;
  }
  return 0;
}

/* A member of the session ended: a background task's failure is printed
** above the prompt and the session goes on. The entry's own outcome is
** the session's to report. */
static void session_failed (lua_State *S, braid_task_t *t, int idx) {
  char prefix[64];
  if (t == R.entry) return;
  repl_hide();
  snprintf(prefix, sizeof prefix, "braid: background task %llu failed: ",
           (unsigned long long) braid__task_id(t));
  braid_report(S, idx, prefix);
  repl_show(1);
}

/* repl.set_entry(task | nil): the entry now running, or none. Its top-level
** braid.spawn goes to the session; Ctrl-C and deadlocks are its. */
static int l_repl_set_entry (lua_State *L) {
  luaL_unref(L, LUA_REGISTRYINDEX, R.entry_ref);
  R.entry_ref = LUA_NOREF;
  R.entry = NULL;
  braid__session_entry(R.E, NULL);
  if (!lua_isnoneornil(L, 1)) {
    braid_task_t *t = braid__task_check(L, 1, "repl.set_entry");
    braid__task_set_site(L, t, 0, 0);   /* not the REPL's own code */
    lua_settop(L, 1);
    R.entry_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    R.entry = t;
    braid__session_entry(R.E, t);
  }
  return 0;
}

/* repl.cancel_background() -> n: cancels the session's tasks (within the
** grace period) and says how many there were. */
static int l_repl_cancel_background (lua_State *L) {
  int count;
  lua_pushliteral(L, "the session ended");
  count = braid__session_cancel(L, lua_gettop(L));
  lua_pushinteger(L, count);
  return 1;
}

/* repl.report(err): prints an error with its task and traceback. */
static int l_repl_report (lua_State *L) {
  lua_settop(L, 1);
  braid_report(L, 1, "");
  return 0;
}

/* repl.add_history(line): keeps the line in the history file. */
static int l_repl_add_history (lua_State *L) {
  const char *line = luaL_checkstring(L, 1);
  HistEvent ev;
  if (!R.edit || line[strspn(line, " \t")] == '\0') return 0;
  if (history(R.hist, &ev, H_FIRST) == 0 && strcmp(ev.str, line) == 0)
    return 0;   /* the same as the last one */
  history(R.hist, &ev, H_ENTER, line);
  if (R.histfile) history(R.hist, &ev, H_SAVE, R.histfile);
  return 0;
}

static char *edit_prompt (EditLine *el) {
  (void) el;
  return R.prompt;
}

/* fg after ^Z (the terminal's own SIGTSTP, which stops braid where it
** is): the shell gave the terminal back in its own modes, so the prompt
** takes raw mode again and shows the line being typed. */
static void cont_cb (uv_signal_t *h, int signum) {
  (void) h;
  (void) signum;
  if (R.reader && R.edit) {
    locale_t old = edit_enter();
    el_set(R.el, EL_PREP_TERM, 0);   /* libedit believes it is raw still */
    el_set(R.el, EL_PREP_TERM, 1);
    el_set(R.el, EL_REFRESH);
    edit_leave(old);
  }
}

/* Sets up libedit and the history as its readline-compatible layer did
** (emacs keys, those layer's extra bindings, ~/.editrc last); returns 0
** when libedit cannot edit here (the session reads plainly). Signals stay
** the loop's; Tab inserts a tab (pasted code keeps its indentation). */
static int edit_open (void) {
  static const char *const binds[][2] = {
    {"^R", "em-inc-search-prev"}, {"^I", "ed-insert"},
    {"\\e[1~", "ed-move-to-beg"}, {"\\e[4~", "ed-move-to-end"},
    {"\\e[7~", "ed-move-to-beg"}, {"\\e[8~", "ed-move-to-end"},
    {"\\e[H", "ed-move-to-beg"}, {"\\e[F", "ed-move-to-end"},
    {"\\e[3~", "ed-delete-next-char"}, {"\\e[2~", "ed-quoted-insert"},
    {"\\e[1;5C", "em-next-word"}, {"\\e[1;5D", "ed-prev-word"},
    {"\\e[5C", "em-next-word"}, {"\\e[5D", "ed-prev-word"},
    {"\\e\\e[C", "em-next-word"}, {"\\e\\e[D", "ed-prev-word"},
    {"\\e[9000~", "ed-redisplay"},   /* REDISPLAY */
  };
  HistEvent ev;
  size_t i;
  R.el = el_init("braid", stdin, stdout, stderr);
  R.hist = history_init();
  if (R.el == NULL || R.hist == NULL) {
    if (R.el) el_end(R.el);
    if (R.hist) history_end(R.hist);
    R.el = NULL;
    R.hist = NULL;
    return 0;
  }
  history(R.hist, &ev, H_SETSIZE, 1000);
  el_set(R.el, EL_HIST, history, R.hist);
  el_set(R.el, EL_SIGNAL, 0);   /* SIGINT is the loop's */
  el_wset(R.el, EL_GETCFN, edit_getc);
  el_set(R.el, EL_PROMPT, edit_prompt);
  el_set(R.el, EL_EDITOR, "emacs");
  /* (el_set would copy the two strings and never free them) */
  for (i = 0; i < sizeof binds / sizeof binds[0]; i++)
    el_set(R.el, EL_BIND, binds[i][0], binds[i][1], NULL);
  el_source(R.el, NULL);
  return 1;
}

/* repl.open() -> "edit" | "plain": starts the session in the running root
** task: line editing when stdin and stdout are a terminal that can do it. */
static int l_repl_open (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  const char *term = getenv("TERM"), *home = getenv("HOME");
  int flags = fcntl(0, F_GETFL);
  struct termios tio;
  if (R.open) return luaL_error(L, "repl.open: the session is open");
  memset(&R, 0, sizeof R);
  R.entry_ref = LUA_NOREF;
  R.E = E;
  R.open = 1;
  R.pollable = uv_poll_init(braid_loop(E), &R.poll, 0) == 0;
  if (flags != -1) fcntl(0, F_SETFL, flags);   /* keep fd 0 blocking */
  if (R.pollable && isatty(0) && isatty(1) && term && *term &&
      strcmp(term, "dumb") != 0 && tcgetattr(0, &tio) == 0 &&
      (tio.c_lflag & ECHO)) {
    locale_t old;
    R.loc = newlocale(LC_CTYPE_MASK, "", (locale_t) 0);   /* none: "C" */
    old = edit_enter();
    R.edit = edit_open();
    edit_leave(old);
  }
  if (R.edit) {
    uv_signal_init(braid_loop(E), &R.cont);
    uv_signal_start(&R.cont, cont_cb, SIGCONT);
    uv_unref((uv_handle_t *) &R.cont);   /* the loop's life is the poll's */
  }
  if (R.edit && home && *home) {
    size_t n = strlen(home) + sizeof "/.braid_history";
    R.histfile = braid__malloc(n);   /* none: no history file */
    if (R.histfile) {
      HistEvent ev;
      snprintf(R.histfile, n, "%s/.braid_history", home);
      history(R.hist, &ev, H_LOAD, R.histfile);
    }
  }
  /* Ctrl-C goes to the prompt or the running entry first; the session
  ** (the root task's scope) reports its tasks' failures and goes on. */
  R.ic.fn = repl_intercept;
  braid__intercept_add(E, &R.ic);
  R.session.failed = session_failed;
  braid__session_set(E, &R.session);
  braid__term_guard(&repl_guard);
  lua_pushstring(L, R.edit ? "edit" : "plain");
  return 1;
}

/* repl.close(): ends the session's input side; the tasks go on. */
static int l_repl_close (lua_State *L) {
  if (!R.open) return 0;
  if (R.reader) read_stop();
  if (R.pollable) uv_close((uv_handle_t *) &R.poll, NULL);
  if (R.edit) uv_close((uv_handle_t *) &R.cont, NULL);
  if (R.histfile) {
    HistEvent ev;
    history(R.hist, &ev, H_SAVE, R.histfile);
  }
  if (R.el) el_end(R.el);   /* the terminal as it was */
  if (R.hist) history_end(R.hist);
  if (R.loc) freelocale(R.loc);
  R.el = NULL;
  R.hist = NULL;
  R.loc = (locale_t) 0;
  free(R.histfile);
  free(R.acc);
  free(R.line);
  luaL_unref(L, LUA_REGISTRYINDEX, R.entry_ref);
  R.entry_ref = LUA_NOREF;
  R.entry = NULL;
  braid__intercept_remove(&R.ic);
  braid__term_guard(NULL);
  braid__session_entry(R.E, NULL);   /* the session stays until the run ends */
  R.open = 0;
  R.histfile = R.acc = R.line = NULL;
  return 0;
}

void braid__repl_push (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"open", l_repl_open},
    {"close", l_repl_close},
    {"readline", l_repl_readline},
    {"hide", l_repl_hide},
    {"show", l_repl_show},
    {"set_entry", l_repl_set_entry},
    {"cancel_background", l_repl_cancel_background},
    {"report", l_repl_report},
    {"add_history", l_repl_add_history},
    {NULL, NULL}
  };
  if (luaL_loadbuffer(L, braid__repl_source, strlen(braid__repl_source),
                      "=[braid repl]") != LUA_OK)
    lua_error(L);
  lua_insert(L, -2);
  lua_getglobal(L, "braid");
  lua_insert(L, -2);
  lua_newtable(L);
  luaL_setfuncs(L, funcs, 0);
  lua_insert(L, -2);
  lua_call(L, 3, 1);   /* (braid, repl, prelude) -> the root function */
}
