/*
** timer.c: the engine clock, the timer heap (braid.h's braid_timer_t),
** the one conversion of durations, and braid.now. braid.sleep is a
** primitive on top of it (io/sleep.c).
**
** Every sleeper, deadline and grace period is a struct braid_timer,
** ordered by (due, seq), in one heap (four children a node, keys inline)
** or in a run: a list of timers armed with the same delay, which are due
** in the order they were armed (the clock only goes forward), so a run
** takes and gives them at its ends, touching no other timer (the earliest
** timer is the least of the heap's top and TIMER_RUNS heads). A program
** arms the same delay again and again (20k sleeps of 50 ms, a timeout per
** request), and the heap's pops for those were ~5% of W2's cycles, mostly
** cache misses. E->runs keeps up to TIMER_RUNS delays. A delay gets a free
** run only when it is among the last TIMER_RUNS delays that went to the
** heap (E->run_seen), so one-off delays (sleep_until, a ticker's next tick,
** jittered retries) do not take the runs, while a timeout's deadline and
** the waits inside it, armed in turn, each get one; a timer whose delay
** has no run goes to the heap. A run that empties frees its place. One
** uv_timer_t is armed for the earliest timer and is stopped when there is
** none, so timers never keep a loop alive that has nothing to wake.
**
** A timer's idx says where it is: a heap slot + 1, RUN_IDX(k) in run k,
** or 0. Its next/prev link it in its run, or, once due, in the late list
** (never both: it leaves the run before it joins that list).
** On the virtual clock the uv_timer_t is never armed: when the loop runs
** dry, braid__timer_advance jumps the clock to the earliest entry instead.
*/
#include <limits.h>
#include <math.h>
#include "core.h"

uint64_t braid_now (braid_engine_t *E) {
  return E->virtual_clock ? E->vnow : uv_hrtime();
}

/* Milliseconds, cheaply: the loop's cached time, or the virtual clock. */
uint64_t braid__now_ms (braid_engine_t *E) {
  if (E->virtual_clock) return E->vnow / 1000000;
  return E->loop ? uv_now(E->loop) : 0;
}

/* The heap keeps each entry's key beside its pointer, and has four
** children a node: a pop compares keys in one array instead of chasing a
** pointer into every timer it passes (each a cache miss once thousands
** sleep: W2's pops were 6% of its cycles), over half as many levels. */
#define ARITY 4

static int before (uint64_t due, uint64_t seq, uint64_t due2, uint64_t seq2) {
  return due < due2 || (due == due2 && seq < seq2);
}

static int heap_less (const struct braid_heap_ent *a,
                      const struct braid_heap_ent *b) {
  return before(a->due, a->seq, b->due, b->seq);
}

static void heap_set (braid_engine_t *E, unsigned i, struct braid_heap_ent e) {
  E->heap[i] = e;
  e.tm->idx = i + 1;
}

static void heap_up (braid_engine_t *E, unsigned i) {
  struct braid_heap_ent e = E->heap[i];
  while (i > 0) {
    unsigned p = (i - 1) / ARITY;
    if (!heap_less(&e, &E->heap[p])) break;
    heap_set(E, i, E->heap[p]);
    i = p;
  }
  heap_set(E, i, e);
}

static void heap_down (braid_engine_t *E, unsigned i) {
  struct braid_heap_ent e = E->heap[i];
  for (;;) {
    unsigned c = ARITY * i + 1, k, end = c + ARITY, m = c;
    if (c >= E->heap_n) break;
    if (end > E->heap_n) end = E->heap_n;
    for (k = c + 1; k < end; k++)
      if (heap_less(&E->heap[k], &E->heap[m])) m = k;
    if (!heap_less(&E->heap[m], &e)) break;
    heap_set(E, i, E->heap[m]);
    i = m;
  }
  heap_set(E, i, e);
}

#define RUN_IDX(k) (UINT_MAX - (unsigned) (k))
#define IN_RUN(tm) ((tm)->idx > RUN_IDX(TIMER_RUNS))

/* Appends tm to the run of its delay, or to a free run; 0 when neither
** takes it (it goes to the heap). */
static int run_append (braid_engine_t *E, struct braid_timer *tm,
                       uint64_t delay) {
  struct braid_timer_run *r, *spare = NULL;
  for (r = E->runs; r < E->runs + TIMER_RUNS; r++) {
    if (r->head == NULL) {
      if (spare == NULL) spare = r;
    } else if (r->delay == delay) {
      /* Out of order only when the clock went back: braid.run starts
      ** the virtual clock at 0 again while an embedder's timer runs. */
      if (before(tm->due, tm->seq, r->tail->due, r->tail->seq)) return 0;
      break;
    }
  }
  if (r == E->runs + TIMER_RUNS) {
    int k, seen = 0;
    for (k = 0; k < TIMER_RUNS; k++) seen |= E->run_seen[k] == delay;
    if (!seen) {
      E->run_seen[E->run_next++ % TIMER_RUNS] = delay;
      return 0;
    }
    if ((r = spare) == NULL) return 0;
    r->delay = delay;
  }
  tm->next = NULL;
  tm->prev = r->tail;
  if (r->tail) r->tail->next = tm;
  else r->head = tm;
  r->tail = tm;
  tm->idx = RUN_IDX(r - E->runs);
  return 1;
}

/* The earliest armed timer (the heap's top or a run's head), or NULL. */
static struct braid_timer *timer_first (braid_engine_t *E) {
  struct braid_timer *best = E->heap_n > 0 ? E->heap[0].tm : NULL, *h;
  uint64_t due = best ? E->heap[0].due : 0, seq = best ? E->heap[0].seq : 0;
  int k;
  for (k = 0; k < TIMER_RUNS; k++)
    if ((h = E->runs[k].head) != NULL &&
        (best == NULL || before(h->due, h->seq, due, seq))) {
      best = h;
      due = h->due;
      seq = h->seq;
    }
  return best;
}

static void timer_cb (uv_timer_t *h);

/* Keep the uv_timer_t armed for the earliest timer. One due never (math.huge,
** ~292 years) is not armed, so that it keeps no loop alive: a task waiting
** on one alone is a deadlock, reported, as on the virtual clock. */
static void timer_rearm (braid_engine_t *E) {
  struct braid_timer *first = timer_first(E);
  uint64_t now, ms;
  if (first == NULL || E->virtual_clock || first->due >= BRAID_NEVER) {
    if (E->armed_due) uv_timer_stop(&E->timer);
    E->armed_due = 0;
    return;
  }
  if (E->armed_due == first->due) return;
  now = uv_hrtime();
  ms = first->due > now ? (first->due - now + 999999) / 1000000 : 0;
  uv_update_time(E->loop);
  uv_timer_start(&E->timer, timer_cb, ms, 0);
  uv_ref((uv_handle_t *) &E->timer);   /* unreferenced by the autojump */
  E->armed_due = first->due;
}

/* Takes tm out of its run or the heap, leaving the uv_timer_t as it is. */
static void timer_unlink (braid_engine_t *E, struct braid_timer *tm) {
  if (IN_RUN(tm)) {
    struct braid_timer_run *r = &E->runs[UINT_MAX - tm->idx];
    if (tm->prev) tm->prev->next = tm->next;
    else r->head = tm->next;
    if (tm->next) tm->next->prev = tm->prev;
    else r->tail = tm->prev;
    tm->next = tm->prev = NULL;
  } else {
    unsigned i = tm->idx - 1;
    E->heap_n--;
    if (i != E->heap_n) {
      heap_set(E, i, E->heap[E->heap_n]);
      heap_down(E, i);
      heap_up(E, E->heap[i].tm->idx - 1);
    }
  }
  tm->idx = 0;
}

/* The list of due deadlines waiting for the other due timers to fire. It
** lives on the engine, not on timer_fire's stack, so that a timer stopped
** while on it (its scope released by a callback that fired before it, e.g.
** a grace period abandoning the task that owns the deadline) is unlinked
** and never touched again. */
static void late_unlink (braid_engine_t *E, struct braid_timer *tm) {
  if (tm->prev) tm->prev->next = tm->next;
  else E->late_head = tm->next;
  if (tm->next) tm->next->prev = tm->prev;
  else E->late_tail = tm->prev;
  tm->next = tm->prev = NULL;
  tm->in_late = 0;
}

static void late_append (braid_engine_t *E, struct braid_timer *tm) {
  tm->next = NULL;
  tm->prev = E->late_tail;
  if (E->late_tail) E->late_tail->next = tm;
  else E->late_head = tm;
  E->late_tail = tm;
  tm->in_late = 1;
}

/* Fires, in order, every entry due at `now`; deadlines (late entries) fire
** after the rest, so a result that arrives in the same turn as a deadline
** is delivered first and wins. */
static void timer_fire (braid_engine_t *E, uint64_t now) {
  struct braid_timer *tm;
  while ((tm = timer_first(E)) != NULL && tm->due <= now) {
    timer_unlink(E, tm);   /* the caller rearms once, after the batch */
    if (tm->late) late_append(E, tm);
    else tm->cb(tm);
  }
  while (E->late_head) {
    tm = E->late_head;
    late_unlink(E, tm);
    tm->cb(tm);
  }
}

static void timer_cb (uv_timer_t *h) {
  braid_engine_t *E = container_of(h, braid_engine_t, timer);
  braid__engine_enter(E);
  E->armed_due = 0;
  timer_fire(E, uv_hrtime());
  timer_rearm(E);
  braid__engine_leave(E);
}

/* On the virtual clock the uv_timer_t is the autojump instead. Time jumps
** when the loop runs dry (run.c), and also when it does not but no task
** is ready and none waits for the outside world (E->io_ops: every op but
** a sleep): an idle server or signal watcher must not freeze the clock.
** An op in flight (a child, a request, a read) holds it still, so real
** work finishes before a virtual deadline passes. The timer fires in the
** loop's next turn, after the I/O already due; it is unreferenced so that
** a dry loop is still seen as dry. */
static void autojump_cb (uv_timer_t *h) {
  braid_engine_t *E = container_of(h, braid_engine_t, timer);
  braid__engine_enter(E);
  if (E->ready_head == NULL && E->io_ops == 0) braid__timer_advance(E);
  braid__engine_leave(E);
}

void braid__timer_quiet (braid_engine_t *E) {
  if (!E->virtual_clock || timer_first(E) == NULL || E->io_ops) return;
  uv_timer_start(&E->timer, autojump_cb, 0, 0);
  uv_unref((uv_handle_t *) &E->timer);
}

/* Jumps the virtual clock to the earliest timer and fires what is due;
** 0 when there is none to jump to. A timer set for never (BRAID_NEVER: a
** sleep, deadline or grace of ~292 years or more) is never jumped to:
** waiting on it alone is a deadlock, as on the real clock it is a hang. */
int braid__timer_advance (braid_engine_t *E) {
  struct braid_timer *first = timer_first(E);
  if (first == NULL || first->due >= BRAID_NEVER) return 0;
  if (first->due > E->vnow) E->vnow = first->due;
  timer_fire(E, E->vnow);
  return 1;
}

/* The heap's next size (it only grows). */
static unsigned heap_next_cap (braid_engine_t *E) {
  return E->heap_cap ? E->heap_cap * 2 : 64;
}

int braid__timer_reserve (braid_engine_t *E) {
  struct braid_heap_ent *h;
  if (E->heap_n < E->heap_cap) return 0;
  h = braid__realloc(E->heap, heap_next_cap(E) * sizeof *h);
  if (h == NULL) return UV_ENOMEM;
  E->heap = h;
  E->heap_cap = heap_next_cap(E);
  return 0;
}

/* Arming cannot fail: braid's own timers that a call arms (a sleep, a
** deadline) have their slot reserved by the call (braid__timer_reserve,
** which raises "memory" naming it), and the rest (a grace period from a
** cancel, from anywhere) cannot be refused, so a heap that cannot grow
** spends the memory reserve (memory.c: the run then fails with kind
** "memory"). */
void braid_timer_start (braid_engine_t *E, struct braid_timer *tm,
                         uint64_t delay_ns, void (*cb)(struct braid_timer *)) {
  uint64_t now = braid_now(E);
  if (tm->idx || tm->in_late) braid_timer_stop(E, tm);
  tm->due = delay_ns > UINT64_MAX - now ? UINT64_MAX : now + delay_ns;
  tm->seq = E->timer_seq++;
  tm->cb = cb;
  if (!run_append(E, tm, delay_ns)) {
    if (E->heap_n == E->heap_cap) {
      unsigned cap = heap_next_cap(E);
      E->heap = braid__realloc_must(E, E->heap, cap * sizeof *E->heap);
      E->heap_cap = cap;
    }
    E->heap[E->heap_n].due = tm->due;
    E->heap[E->heap_n].seq = tm->seq;
    E->heap[E->heap_n].tm = tm;
    heap_up(E, E->heap_n++);
  }
  if (timer_first(E) == tm) timer_rearm(E);
}

void braid_timer_stop (braid_engine_t *E, struct braid_timer *tm) {
  if (tm->in_late) late_unlink(E, tm);   /* due, not fired yet: never will */
  if (tm->idx) {
    int first = timer_first(E) == tm;
    timer_unlink(E, tm);
    if (first) timer_rearm(E);
  }
}

/* braid.h: seconds at `arg` as nanoseconds, the one conversion every
** duration goes through. */
uint64_t braid_check_seconds (lua_State *L, int arg, const char *fname) {
  lua_Number s;
  if (!lua_isnumber(L, arg))
    braid_argerror(L, arg, fname, "number expected (seconds)");
  s = lua_tonumber(L, arg);
  if (s != s) braid_argerror(L, arg, fname, "seconds must not be NaN");
  return braid__ns(s);
}

uint64_t braid__ns (double s) {
  if (!(s > 0)) return 0;                 /* NaN too */
  if (s >= (double) BRAID_NEVER / 1e9) return BRAID_NEVER;   /* ~292 years */
  return (uint64_t) (s * 1e9);
}

/* braid.now() -> seconds on the engine's monotonic (or virtual) clock. */
static int l_timer_now (lua_State *L) {
  braid_engine_t *E = braid_engine(L);
  lua_pushnumber(L, (lua_Number) braid_now(E) / 1e9);
  return 1;
}

void braid__open_timer (lua_State *L) {
  static const luaL_Reg funcs[] = {
    {"now", l_timer_now},
    {NULL, NULL}
  };
  luaL_setfuncs(L, funcs, 0);
}
