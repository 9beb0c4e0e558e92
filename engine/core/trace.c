/*
** trace.c: the execution recorder: what the scheduler does, written as
** Chrome trace-event JSON (ui.perfetto.dev, chrome://tracing) while it
** happens. One track (tid) per task, named when it is spawned (where its
** function is defined) and again when the script sets task.name, sorted
** by id, so parents come before children; the scheduler itself is tid 0. A task's track holds "run" slices for each
** stretch it ran and a slice for each wait, labelled by what it waited on
** (braid_op_label); instants mark spawns, cancellations, failures,
** timeouts and abandonment; flows join a spawn to the child's first run
** and a cancellation's origin to each task it reached; a counter event at
** each scheduler drain that changed them gives live tasks, ready tasks and
** open libuv handles.
**
** Invariants:
** - The core calls in with one branch per event (`if (E->trace)`), and
**   only here is anything recorded: recording never changes what the
**   scheduler does, and costs nothing when it is off.
** - Memory is bounded: events go into one fixed buffer written out with
**   write(2) when it fills (an engine is single-threaded) and completed on
**   every way out (trace_file.c); a write error stops the recording, not
**   the run.
** - Events are written in the order they happen with the clock read then
**   (virtual under the virtual clock), so timestamps never go back, on any
**   track. A task's slices nest: "run" and its waits alternate; a wait is
**   closed when the task runs again or ends.
** - A flow endpoint is bound to the slice around it; where a task has
**   none open (it failed and waits for nothing yet), a zero-length slice
**   is written for the flow to bind to.
*/
#include <stdio.h>
#include <string.h>
#include "core/trace.h"

/* ---- writing ---- */

static void put (struct braid_trace *tr, const char *s, size_t n) {
  memcpy(tr->buf + tr->len, s, n);
  tr->len += n;
}

#define PUTS(tr, lit) put(tr, lit, sizeof(lit) - 1)

static const char digit_pairs[] =
  "00010203040506070809101112131415161718192021222324252627282930313233343536"
  "37383940414243444546474849505152535455565758596061626364656667686970717273"
  "7475767778798081828384858687888990919293949596979899";

/* Decimal digits of v ending just before end; returns where they start. */
static char *fmt_uint (char *end, uint64_t v) {
  uint32_t w;
  while (v > UINT32_MAX) {
    const char *d = digit_pairs + (v % 100) * 2;
    v /= 100;
    end -= 2;
    end[0] = d[0];
    end[1] = d[1];
  }
  w = (uint32_t) v;   /* 32-bit divisions are cheaper */
  while (w >= 100) {
    const char *d = digit_pairs + (w % 100) * 2;
    w /= 100;
    end -= 2;
    end[0] = d[0];
    end[1] = d[1];
  }
  if (w >= 10) {
    end -= 2;
    end[0] = digit_pairs[w * 2];
    end[1] = digit_pairs[w * 2 + 1];
  } else {
    *--end = (char) ('0' + w);
  }
  return end;
}

static void put_uint (struct braid_trace *tr, uint64_t v) {
  size_t n = v < 10 ? 1 : v < 100 ? 2 : v < 1000 ? 3 : v < 10000 ? 4 : 5;
  uint64_t x;
  for (x = v / 100000; x > 0; x /= 10) n++;
  fmt_uint(tr->buf + tr->len + n, v);   /* straight into the buffer */
  tr->len += n;
}

/* A number formatted once and written several times. */
struct num { size_t n; char s[24]; };

static void num_init (struct num *m, uint64_t v) {
  char tmp[24], *p = fmt_uint(tmp + 24, v);
  m->n = (size_t) (tmp + 24 - p);
  memcpy(m->s, p, m->n);
}

static void put_num (struct braid_trace *tr, const struct num *m) {
  memcpy(tr->buf + tr->len, m->s, sizeof m->s);   /* fixed size: no call */
  tr->len += m->n;
}

/* Microseconds with three decimals: the format's unit, our nanoseconds.
** Events come in bursts at one instant: the last one written is kept. */
static void put_us (struct braid_trace *tr, uint64_t ns) {
  if (ns != tr->ts_ns || tr->ts_len == 0) {
    char tmp[32], *p;
    uint64_t frac = ns % 1000;
    tmp[31] = (char) ('0' + frac % 10);
    tmp[30] = (char) ('0' + frac / 10 % 10);
    tmp[29] = (char) ('0' + frac / 100);
    tmp[28] = '.';
    p = fmt_uint(tmp + 28, ns / 1000);
    tr->ts_len = (size_t) (tmp + 32 - p);
    memcpy(tr->ts_text, p, tr->ts_len);
    tr->ts_ns = ns;
  }
  memcpy(tr->buf + tr->len, tr->ts_text, sizeof tr->ts_text);   /* no call */
  tr->len += tr->ts_len;
}

/* A JSON string, at most TRACE_TEXT_MAX bytes of s; bytes outside ASCII
** become '?' (a script's strings need not be UTF-8). */
static void put_str (struct braid_trace *tr, const char *s, size_t n) {
  char *p = tr->buf + tr->len;
  size_t i;
  if (n > TRACE_TEXT_MAX) n = TRACE_TEXT_MAX;
  *p++ = '"';
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char) s[i];
    if (c == '"' || c == '\\') { *p++ = '\\'; *p++ = (char) c; }
    else if (c == '\n') { *p++ = '\\'; *p++ = 'n'; }
    else if (c < 0x20 || c == 0x7f) *p++ = ' ';
    else if (c >= 0x80) *p++ = '?';
    else *p++ = (char) c;
  }
  *p++ = '"';
  tr->len = (size_t) (p - tr->buf);
}

static void put_cstr (struct braid_trace *tr, const char *s) {
  put_str(tr, s, strlen(s));
}

/* The clock, read once for a task stopping and the next one starting: a
** task that stops while others are ready leaves its time for the next
** reading, which comes at once (the drain goes on). */
static uint64_t trace_now (struct braid_trace *tr) {
  braid_engine_t *E = tr->E;
  if (tr->now_kept) {
    tr->now_kept = 0;
    return tr->now;
  }
  return E->virtual_clock ? E->vnow : uv_hrtime() - tr->t0;
}

/* Starts an event: ,{"ph":"X","pid":1,"tid":N,"ts":T  (the caller closes
** it). Events come in bursts on one track at one instant (a wait ends and
** a run begins): the text after "ph" is kept and reused. */
static void ev (struct braid_trace *tr, char ph, uint64_t tid,
                uint64_t ts) {
  if (tr->len > TRACE_BUF - TRACE_EVENT_MAX) braid__trace_flush(tr);
  if (tid != tr->key_tid || ts != tr->key_ts || tr->key_len == 0) {
    size_t save = tr->len;
    PUTS(tr, "\",\"pid\":1,\"tid\":");
    put_uint(tr, tid);
    PUTS(tr, ",\"ts\":");
    put_us(tr, ts);
    tr->key_len = tr->len - save;
    memcpy(tr->key_text, tr->buf + save, sizeof tr->key_text);
    tr->key_tid = tid;
    tr->key_ts = ts;
    tr->len = save;
  }
  memcpy(tr->buf + tr->len, ",\n{\"ph\":\"", 9);
  tr->buf[tr->len + 9] = ph;
  tr->len += 10;
  memcpy(tr->buf + tr->len, tr->key_text, sizeof tr->key_text);  /* no call */
  tr->len += tr->key_len;
}

static uint64_t task_tid (struct braid_task *t) {
  return t ? t->id : 0;
}

/* ---- tracks ---- */

/* "file:line" where the function at fidx on L is defined, formatted once
** per place (a loop spawns from one place many times). The cache is keyed
** by what Lua answers, not by the function's address: a function that
** was collected may leave its address to one defined elsewhere. */
static void put_where (struct braid_trace *tr, lua_State *L, int fidx) {
  struct trace_site *c;
  lua_Debug ar;
  if (lua_type(L, fidx) != LUA_TFUNCTION || !lua_checkstack(L, 1)) {
    PUTS(tr, "\"task\"");   /* a callable object */
    return;
  }
  lua_pushvalue(L, fidx);
  lua_getinfo(L, ">S", &ar);
  c = &tr->sites[(unsigned) ar.linedefined % SITE_CACHE];
  if (c->len == 0 || c->line != ar.linedefined ||
      strcmp(c->src, ar.short_src) != 0) {
    char src[80];
    size_t save = tr->len;
    if (ar.linedefined > 0)
      snprintf(src, sizeof src, "%s:%d", ar.short_src, ar.linedefined);
    else
      snprintf(src, sizeof src, "%s", ar.short_src);
    put_cstr(tr, src);   /* at most 2 * 80 bytes, escaped: kept if short */
    c->len = tr->len - save;
    if (c->len > sizeof c->text) {
      c->len = 0;
      return;
    }
    c->line = ar.linedefined;
    memcpy(c->src, ar.short_src, sizeof c->src);
    memcpy(c->text, tr->buf + save, c->len);
    return;
  }
  memcpy(tr->buf + tr->len, c->text, sizeof c->text);
  tr->len += c->len;
}

/* Names t's track: `name` (a JSON string just written by the caller)
** gets " #id"; then its parent and its place, by id, so that a parent's
** track comes before its children's. Starts after the caller's
** {"ph":"M",...,"args":{"name": and the name. */
static void track_name_end (struct braid_trace *tr, struct braid_task *t,
                            const struct num *id) {
  tr->len--;   /* the closing quote: the id goes inside the string */
  PUTS(tr, " #");
  put_num(tr, id);
  PUTS(tr, "\",\"parent\":");
  put_uint(tr, t->scope.outer ? task_tid(t->scope.outer->task) : 0);
  PUTS(tr, "}}");
}

static void track_name_start (struct braid_trace *tr, const struct num *id) {
  if (tr->len > TRACE_BUF - TRACE_EVENT_MAX) braid__trace_flush(tr);
  PUTS(tr, ",\n{\"ph\":\"M\",\"pid\":1,\"tid\":");
  put_num(tr, id);
  PUTS(tr, ",\"name\":\"thread_name\",\"args\":{\"name\":");
}

/* The script named t (task.name = ..., the string at idx on L): its
** track is named again; the last name is the one shown. */
void braid__trace_rename (struct braid_task *t, lua_State *L, int idx) {
  struct braid_trace *tr = t->E->trace;
  size_t n;
  const char *name = lua_tolstring(L, idx, &n);
  struct num id;
  if (name == NULL) return;
  num_init(&id, t->id);
  track_name_start(tr, &id);
  put_str(tr, name, n);
  track_name_end(tr, t, &id);
}

/* A task's track has a slice open: it runs, or it waits. */
static int in_slice (struct braid_task *t) {
  return t && (t->E->current == t || t->status == TASK_SUSPENDED);
}

/* A flow endpoint ("s" or "f") on tid, bound to the slice around it. */
static void flow (struct braid_trace *tr, char ph, uint64_t tid,
                  uint64_t ts, uint64_t id, const char *name, int open) {
  if (!open) {   /* nothing to bind to: a zero-length slice */
    ev(tr, 'X', tid, ts);
    PUTS(tr, ",\"dur\":0,\"name\":");
    put_cstr(tr, name);
    PUTS(tr, "}");
  }
  ev(tr, ph, tid, ts);
  if (*name == 's') PUTS(tr, ",\"bp\":\"e\",\"cat\":\"flow\",\"name\":\"spawn\"");
  else PUTS(tr, ",\"bp\":\"e\",\"cat\":\"flow\",\"name\":\"cancel\"");
  PUTS(tr, ",\"id\":");
  put_uint(tr, id);
  PUTS(tr, "}");
}

/* ---- the hooks (core.h) ---- */

/* t was spawned to run the function at fidx on L: an instant and a flow
** on the spawner's track; t's track is named after where the function is
** defined (until the script names the task) and placed by its id. */
void braid__trace_spawn (struct braid_task *t, lua_State *L, int fidx) {
  struct braid_trace *tr = t->E->trace;
  struct braid_task *parent = t->E->current;
  uint64_t ts = trace_now(tr);
  struct num id;
  num_init(&id, t->id);
  ev(tr, 'i', task_tid(parent), ts);
  PUTS(tr, ",\"s\":\"t\",\"name\":\"spawn\",\"args\":{\"task\":");
  put_num(tr, &id);
  PUTS(tr, "}}");
  flow(tr, 's', task_tid(parent), ts, 2 * t->id, "spawn", parent != NULL);
  track_name_start(tr, &id);
  put_where(tr, L, fidx);
  track_name_end(tr, t, &id);
  PUTS(tr, ",\n{\"ph\":\"M\",\"pid\":1,\"tid\":");
  put_num(tr, &id);
  PUTS(tr, ",\"name\":\"thread_sort_index\",\"args\":{\"sort_index\":");
  put_num(tr, &id);
  PUTS(tr, "}}");
}

/* The name of a wait: a `what` given to braid__task_wait or braid_suspend,
** a string that lives as long as the engine (a literal, a name of braid's
** own), so its escaped text is kept by address. */
static void put_what (struct braid_trace *tr, const char *what) {
  unsigned i = (unsigned) ((uintptr_t) what >> 3) % 8;
  if (tr->what[i] != what || strcmp(tr->what_raw[i], what) != 0) {
    size_t save = tr->len, n, raw = strlen(what);
    put_cstr(tr, what);
    n = tr->len - save;
    if (n > sizeof tr->what_text[i] || raw >= sizeof tr->what_raw[i])
      return;   /* too long to keep */
    tr->what[i] = what;
    memcpy(tr->what_raw[i], what, raw + 1);
    tr->what_len[i] = (unsigned char) n;
    memcpy(tr->what_text[i], tr->buf + save, n);
    return;
  }
  memcpy(tr->buf + tr->len, tr->what_text[i], sizeof tr->what_text[i]);
  tr->len += tr->what_len[i];
}

/* t is about to run: its wait ends (or, the first time, the spawn's flow
** arrives), and a "run" slice begins. */
void braid__trace_resume (struct braid_task *t) {
  struct braid_trace *tr = t->E->trace;
  uint64_t ts = trace_now(tr);
  tr->actor = 0;
  if (t->status == TASK_SUSPENDED) {
    ev(tr, 'E', t->id, ts);
    if (t->wake == WAKE_CANCEL) PUTS(tr, ",\"args\":{\"woke\":\"cancel\"}");
    PUTS(tr, "}");
  }
  ev(tr, 'B', t->id, ts);
  PUTS(tr, ",\"name\":\"run\"}");
  if (t->status == TASK_PENDING)
    flow(tr, 'f', t->id, ts, 2 * t->id, "spawn", 1);
}

/* t stopped running: it waits now (yielded: on t->w, labelled), or its
** body ended and it waits for its members, or it ends. */
void braid__trace_ran (struct braid_task *t, int status) {
  struct braid_trace *tr = t->E->trace;
  uint64_t ts = trace_now(tr);
  ev(tr, 'E', t->id, ts);
  PUTS(tr, "}");
  if (status == LUA_YIELD) {
    ev(tr, 'B', t->id, ts);
    PUTS(tr, ",\"name\":");
    if (tr->has_label && t->waiting &&
        (tr->label_what == NULL || tr->label_what == t->w->what))
      put_cstr(tr, tr->label);
    else put_what(tr, t->waiting ? t->w->what : "yield");
    PUTS(tr, "}");
  } else if (t->scope.pending > 0) {
    ev(tr, 'B', t->id, ts);
    PUTS(tr, ",\"name\":\"its members\"}");
  }
  tr->has_label = 0;
  if (t->E->ready_head) {   /* the drain goes on: the next task starts now */
    tr->now = ts;
    tr->now_kept = 1;
  }
}

/* One line of the error at idx on S: a string, a braid.Error's kind and
** message, else its type. */
static void put_error (struct braid_trace *tr, lua_State *S, int idx) {
  char tmp[TRACE_TEXT_MAX];
  const char *kind = NULL, *msg = NULL;
  idx = lua_absindex(S, idx);
  if (lua_type(S, idx) == LUA_TSTRING) msg = lua_tostring(S, idx);
  else if (lua_istable(S, idx) && lua_checkstack(S, 2)) {
    lua_pushliteral(S, "kind");
    if (lua_rawget(S, idx) == LUA_TSTRING) kind = lua_tostring(S, -1);
    lua_pushliteral(S, "message");
    if (lua_rawget(S, idx) == LUA_TSTRING) msg = lua_tostring(S, -1);
    snprintf(tmp, sizeof tmp, "%s%s%s", kind ? kind : "", kind ? ": " : "",
             msg ? msg : "(table)");
    lua_pop(S, 2);
    put_cstr(tr, tmp);   /* kept the strings on the stack until here */
    return;
  }
  put_cstr(tr, msg ? msg : luaL_typename(S, idx));
}

/* t's body raised the error at idx on S (not a cancellation). */
void braid__trace_fail (struct braid_task *t, lua_State *S, int idx) {
  struct braid_trace *tr = t->E->trace;
  ev(tr, 'i', t->id, trace_now(tr));
  PUTS(tr, ",\"s\":\"t\",\"name\":\"failure\",\"args\":{\"message\":");
  put_error(tr, S, idx);
  PUTS(tr, "}}");
  tr->actor = t->id;   /* the cancellation it causes comes from t */
}

/* t ends: its wait (for its members, or an abandoned one's) closes. */
void braid__trace_finish (struct braid_task *t) {
  struct braid_trace *tr = t->E->trace;
  struct braid_scope *s = &t->scope;
  uint64_t ts = trace_now(tr);
  const char *how = SCOPE_REF(s, error_ref) != LUA_NOREF ? "failed"
                    : s->body_failed ? "cancelled" : NULL;
  if (t->status == TASK_SUSPENDED) {
    ev(tr, 'E', t->id, ts);
    PUTS(tr, "}");
  }
  if (how) {
    ev(tr, 'i', t->id, ts);
    PUTS(tr, ",\"s\":\"t\",\"name\":\"end\",\"args\":{\"status\":");
    put_cstr(tr, how);
    PUTS(tr, "}}");
    if (*how == 'f') tr->actor = t->id;   /* its parent's fail-fast */
  }
}

/* The reason given to s's cancel, as one line, or NULL. */
static const char *cancel_reason (lua_State *S, struct braid_scope *s,
                                  char *tmp, size_t size) {
  int type, ref = SCOPE_REF(s, reason_ref);
  if (ref == LUA_NOREF || ref == LUA_REFNIL) return NULL;
  type = lua_rawgeti(S, LUA_REGISTRYINDEX, ref);
  if (type == LUA_TSTRING || type == LUA_TNUMBER)
    snprintf(tmp, size, "%s", lua_tostring(S, -1));
  else
    snprintf(tmp, size, "(%s)", lua_typename(S, type));
  lua_pop(S, 1);
  return tmp;
}

/* s is being cancelled because of cause. When s is the cause, this is the
** origin: who did it (the running task, the failed task whose error makes
** its scope fail fast, the scope's own deadline, an interrupt) and why.
** Every task it reaches gets an instant and a flow from the origin. */
void braid__trace_cancel (struct braid_scope *s, struct braid_scope *cause) {
  braid_engine_t *E = s->E;
  struct braid_trace *tr = E->trace;
  struct braid_task *t = s->task;
  uint64_t ts = trace_now(tr);
  if (s == cause) {
    char tmp[TRACE_TEXT_MAX];
    const char *by, *reason;
    struct braid_task *who = E->current;
    tr->origin_open = 0;   /* a failed task waits for nothing yet */
    if (tr->actor) {
      if (t && t->id == tr->actor && braid__list_empty(&s->subs)) {
        tr->origin = NULL;   /* a failed task's own scope, reaching none */
        return;
      }
      by = "failure";
      tr->origin_tid = tr->actor;
    }
    else {
      if (who) by = "task";
      else if (s->deadline_fired) { by = "timeout"; who = t; }
      else { by = E->interrupted ? "interrupt" : "engine"; who = t; }
      tr->origin_tid = task_tid(who);
      tr->origin_open = in_slice(who);
    }
    reason = cancel_reason(E->S, s, tmp, sizeof tmp);
    ev(tr, 'i', tr->origin_tid, ts);
    PUTS(tr, ",\"s\":\"t\",\"name\":\"cancel\",\"args\":{\"by\":");
    put_cstr(tr, by);
    PUTS(tr, ",\"scope_of\":");
    put_uint(tr, task_tid(t));
    if (reason) {
      PUTS(tr, ",\"reason\":");
      put_cstr(tr, reason);
    }
    PUTS(tr, "}}");
    tr->origin = s;
  }
  if (tr->origin != cause || t == NULL || t->id == tr->origin_tid ||
      (s->kind != SCOPE_TASK && (braid__task_inner(t) != s || s->kind == SCOPE_GROUP)) ||
      TASK_DONE(t))
    return;
  ev(tr, 'i', t->id, ts);
  PUTS(tr, ",\"s\":\"t\",\"name\":\"cancelled\",\"args\":{\"from\":");
  put_uint(tr, tr->origin_tid);
  PUTS(tr, "}}");
  tr->flows++;
  flow(tr, 's', tr->origin_tid, ts, 2 * tr->flows + 1, "cancel",
       tr->origin_open);
  flow(tr, 'f', t->id, ts, 2 * tr->flows + 1, "cancel", in_slice(t));
}

/* s's deadline passed (braid.timeout); its cancel follows. */
void braid__trace_timeout (struct braid_scope *s, uint64_t timeout_ns) {
  struct braid_trace *tr = s->E->trace;
  tr->actor = 0;
  ev(tr, 'i', task_tid(s->task), trace_now(tr));
  PUTS(tr, ",\"s\":\"t\",\"name\":\"timeout\",\"args\":{\"after_ms\":");
  put_us(tr, timeout_ns / 1000);
  PUTS(tr, "}}");
}

void braid__trace_abandon (struct braid_task *t) {
  struct braid_trace *tr = t->E->trace;
  ev(tr, 'i', t->id, trace_now(tr));
  PUTS(tr, ",\"s\":\"t\",\"name\":\"abandoned\"}");
}

/* At each drain: the counters, when they changed. */
void braid__trace_counters (braid_engine_t *E) {
  struct braid_trace *tr = E->trace;
  struct braid_task *t;
  unsigned ready = 0, handles = E->loop->active_handles;
  tr->actor = 0;
  for (t = E->ready_head; t; t = t->next) ready++;
  if (ready == tr->c_ready && E->live == tr->c_live &&
      handles == tr->c_handles)
    return;
  tr->c_ready = ready;
  tr->c_live = E->live;
  tr->c_handles = handles;
  ev(tr, 'C', 0, trace_now(tr));
  PUTS(tr, ",\"name\":\"tasks\",\"args\":{\"live\":");
  put_uint(tr, E->live);
  PUTS(tr, ",\"ready\":");
  put_uint(tr, ready);
  PUTS(tr, ",\"handles\":");
  put_uint(tr, handles);
  PUTS(tr, "}}");
}
