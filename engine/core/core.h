/*
** core.h: declarations shared by the files of engine/core/, and by them
** only: primitives and front ends see the core through braid.h and
** prim.h, where tasks, scopes and the engine are opaque.
**
** The model, in one paragraph. An engine owns (or borrows) one uv_loop_t and
** a FIFO ready queue drained by one uv_idle_t. A task is a Lua coroutine plus
** a struct braid_task kept in a full userdata. Every task owns a stack of
** scopes (its own task scope at the bottom, then braid.scope, timeout,
** shield and group scopes pushed by the body); scopes form one tree across
** tasks, and cancellation travels down that tree eagerly, stopping at
** shields. A task waits on at most one operation at a time (t->w); the
** operation's cancel hook undoes it at the C level. Callbacks never resume a
** task: they mark it ready and the scheduler resumes it, so ordering is ours.
*/
#ifndef BRAID_CORE_H
#define BRAID_CORE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "lua.h"
#include "lauxlib.h"

#include "braid.h"
#include "prim.h"

#define NSTOPS 3   /* the signals that stop a run: INT, TERM, HUP */

/* ---- core objects, checked by a tag ----
** A task, channel, semaphore or event begins with a pointer to its type:
** the check is two loads and a compare, and a script cannot forge it
** (auxlib.c). The name is the metatable's, for messages. */
struct braid_type { const char *name; };
extern const struct braid_type braid__task_type, braid__chan_type;

/* Only braid's C code writes a tag, while a script with the debug library
** can give any userdata any metatable, or replace the registry's
** (docs/internals.md, "Safe against scripts"). lua_rawlen is 0 for
** anything but a full userdata, so a short one is never read. */
static inline void *braid__test_tagged (lua_State *L, int idx,
                                        const struct braid_type *type) {
  const struct braid_type **p = (const struct braid_type **)
                                lua_touserdata(L, idx);
  if (p && lua_rawlen(L, idx) >= sizeof *p && *p == type) return p;
  return NULL;
}
/* The "bad argument" error for a value at idx that is not a `type`. */
void *braid__tag_error(lua_State *L, int idx, const struct braid_type *type,
                       const char *fname);

static inline void *braid__check_tagged (lua_State *L, int idx,
                                         const struct braid_type *type,
                                         const char *fname) {
  void *p = braid__test_tagged(L, idx, type);
  return p ? p : braid__tag_error(L, idx, type, fname);
}

/* ---- timers: one uv_timer_t drives a heap of these, and a few runs ---- */

struct braid_heap_ent {
  uint64_t due, seq;
  struct braid_timer *tm;
};
#define TIMER_RUNS 4   /* delays kept as runs at once (timer.c) */
/* Spares a long-lived engine keeps after a burst: pooled coroutines
** (task.c) and wait records (sched.c), as many of each. */
#define BRAID_SPARES 256

uint64_t braid__now_ms(braid_engine_t *E);
int braid__timer_advance(braid_engine_t *E);   /* virtual clock step */
void braid__timer_quiet(braid_engine_t *E);     /* no task ready */

/* ---- waits: what a suspended task is waiting on ---- */

struct braid_task;

/* Bytes of a braid_suspend op's data kept inside the task itself: an op
** this small allocates nothing. Sized by measurement: braid.sleep's op (a
** timer and the op, 56 bytes) is the one a program has thousands of at
** once; proc:close's is 32; the others (streams, files, lookups, exec)
** are larger than any inline area worth carrying in every task, and are
** few at a time. */
#define BRAID_OP_INLINE 56

/* A channel operation waiting in one of a channel's queues (channel.c): a
** plain send or recv is its task's own wait (t->w->chan); a braid.select
** (select.c) has one for each case. The values stay on the stack of the
** thread suspended in the call (L): a sender's at val_idx, where a
** receiver copies it from; a value handed to a receiver is pushed on top,
** where its continuation finds it (as braid_resume does). */
struct braid_select;
struct braid_chan_node {
  struct braid_list link;        /* in the channel's senders or receivers */
  struct braid_task *task;
  lua_State *L;                  /* the thread suspended in the call */
  struct braid_select *sel;      /* the select it is a case of, or NULL */
  lua_Integer ticket;            /* a handed value's place in the order */
  int chan_idx, val_idx;         /* on L's stack: the channel, the value */
  int idx;                       /* the case's index in sel */
  unsigned char recv;            /* a receiver (else a sender) */
  unsigned char got;             /* handed a value or its value taken;
                                 ** 0 when woken by close */
};

/* A task's wait record, t->w: a block of its own, taken when the task
** starts and given back when it ends (sched.c), so that a task that is
** pending or has ended does not carry it. */
struct braid_wait {
  /* Undo the operation at the C level; NULL for waits that cancellation
  ** must not interrupt (a scope joining its children). */
  void (*cancel)(struct braid_wait *w);
  /* The task was woken with something handed to it (a channel's value, a
  ** permit) and ends without running again (abandoned, braid_close):
  ** give it back. Called by braid__op_release; NULL for most waits
  ** (braid__task_wait clears it) and cleared by the continuation. */
  void (*release)(struct braid_wait *w);
  const char *what;                    /* for deadlock reports and dump */
  struct braid_task *task;             /* whose wait it is (WAIT_TASK) */
  uint64_t since;                      /* loop time (ms) the wait began */
  union {
    struct {                           /* the scheduler's own waits */
      struct braid_watch watch;        /* in the waited-on object's queue */
      struct braid_task *target;       /* task:await */
      void *obj;                       /* the semaphore waited on */
    };
    struct braid_chan_node chan;       /* channel.c, select.c */
    struct {                           /* braid_suspend (suspend.c) */
      lua_State *L;                    /* the thread that suspended */
      braid_k_fn k;
      braid_cancel_fn on_cancel;
      int nres;
      unsigned char state;
      unsigned char holds;             /* counted in E->io_ops */
      unsigned char soft;              /* braid_suspend_soft */
      unsigned char ext;               /* data is a userdata, at inl.p */
      union { void *p; double d; uint64_t u; char bytes[BRAID_OP_INLINE]; }
        inl;                           /* the data, aligned as a userdata */
    };
  };
};

/* braid_op_t is the task's wait: an op lives in its task's wait record. */
#define OP_WAIT(op) ((struct braid_wait *) (op))
#define WAIT_OP(w) ((braid_op_t *) (w))
#define WAIT_TASK(wp) ((wp)->task)
void braid__op_release(struct braid_task *t);
/* Frees the block of the last op's data over BRAID_OP_INLINE bytes, if w
** holds one (suspend.c): before another kind of wait reuses the record's
** union, and when the task ends. */
void braid__op_data_drop(struct braid_task *t, struct braid_wait *w);
/* The same block taken from w and not freed (NULL if w holds none), with
** its size for the state's allocator: braid__engine_exit_close frees it
** after the state. */
void *braid__op_data_take(struct braid_wait *w, size_t *size);
/* Wait records (sched.c): get raises "not enough memory" (scheduler
** context: with the reserve, as any allocation there); put takes a task's
** back when it ends; drop frees the spare ones, while the allocator that
** made them is still the state's (the end of braid.run, braid_close). */
struct braid_wait *braid__wait_get(lua_State *L, struct braid_task *t);
void braid__wait_put(struct braid_task *t);
void braid__wait_drop(braid_engine_t *E, lua_State *L);

/* ---- scopes ---- */

enum { SCOPE_TOP, SCOPE_TASK, SCOPE_PLAIN, SCOPE_SHIELD, SCOPE_TIMEOUT,
       SCOPE_GROUP };

/* A scope's hot part. What only some scopes use is elsewhere: a braid.scope's
** handle in struct braid_plain_scope, a group's members in struct
** braid_group (group.c, which the kind says), and the timers and the
** timeout a deadline or a grace period needs in a struct made on first use
** (scope.c), so that the scope inside every task stays small. */
struct braid_scope {
  braid_engine_t *E;
  struct braid_task *task;     /* owning task; NULL for the engine's top */
  struct braid_scope *outer;   /* enclosing scope, maybe another task's */
  struct braid_list link;      /* in outer->subs */
  struct braid_list subs;      /* nested scopes and children's task scopes */
  braid_resource_t resources;  /* a list: this one is its head */
  unsigned pending;            /* members not ended (children, adopted) */
  unsigned char kind, cancelled, joining;
  unsigned char deadline_fired : 1, body_failed : 1;
  unsigned char own_grace : 1; /* more->grace_ns is its own (else outer's) */
  unsigned char cut : 1;       /* a member ended cancelled after it was:
                               ** its cancel cut work off (scope_close) */
  unsigned short grace_id;     /* its grace, set by braid__scope_init: 0 the
                               ** engine's, else E->graces[id]; GRACE_WALK:
                               ** look it up through the outer scopes */
  int base;                    /* stack slot below the body's results */
  struct braid_scope *cause;   /* the scope whose cancel reached this one */
  struct scope_more *more;     /* made on first use: most scopes need none */
};

/* What a scope needs only once it fails, is cancelled with a reason, has a
** deadline or a grace period of its own, or its members outlive a cancel:
** made on first use (scope.c), freed by braid__scope_release. Read the
** refs with SCOPE_REF (LUA_NOREF without the struct). */
struct scope_more {
  struct braid_timer deadline, grace;
  struct braid_scope *s;
  uint64_t timeout_ns;         /* braid.timeout's, as given, for its message */
  uint64_t grace_ns;           /* members' time after a cancel; NEVER */
  uint64_t cancel_ns;          /* when a cancel reached it with members
                               ** (hrtime), for those not started yet */
  int reason_ref;              /* cancel reason given to this scope */
  int error_ref;               /* first error of a member or the body */
  int record_ref;              /* its failure record (error.c), if any */
  int cancel_ref;              /* the cancellation error it causes, made once */
};
#define SCOPE_REF(s, f) ((s)->more ? (s)->more->f : LUA_NOREF)
/* The struct, made now if need be: where nothing can be raised it comes
** from braid__calloc_must (the reserve behind it, memory.c). */
struct scope_more *braid__scope_more(struct braid_scope *s);
/* Members' grace period after a cancel: s's own, else its outer scope's as
** it was when s was made (a scope's own is set before anything nests in
** it), else the engine's. */
uint64_t braid__scope_grace(const struct braid_scope *s);
int braid__scope_grace_ready(struct braid_scope *s, uint64_t ns);
/* For a task scope s cancelled before its task started: when its grace
** period ends (hrtime), counted from the cancel that reached its outer
** scope when that is known, else from now. */
uint64_t braid__scope_grace_end(const struct braid_scope *s);

/* braid.scope's: the script's scope object points back at it. */
struct braid_plain_scope {
  struct braid_scope s;
  struct braid_scope **handle; /* NULL once the scope has ended */
};

/* group.c: what a group does when cancelled (cancel its adopted tasks) and
** when released (drop its references). */
void braid__group_on_cancel(struct braid_scope *s);
void braid__group_release(struct braid_scope *s);

void braid__scope_init(struct braid_scope *s, braid_engine_t *E, int kind,
                       struct braid_task *t, struct braid_scope *outer);
void braid__scope_cancel(struct braid_scope *s, struct braid_scope *cause);
void braid__scope_set_reason(lua_State *L, struct braid_scope *s, int idx);
void braid__scope_release(struct braid_scope *s);
struct braid_task *braid__scope_member_done(lua_State *L,
                                            struct braid_scope *s,
                                            struct braid_task *t);
void braid__scope_fail(lua_State *L, struct braid_scope *s, int idx,
                       int rec);
void braid__scope_push_record(lua_State *L, struct braid_scope *s);
void braid__scope_push_error(lua_State *L, struct braid_scope *s);
int braid__scope_raise(lua_State *L, struct braid_scope *s);
/* error_ref of a scope that failed when its error could not be kept */
#define SCOPE_ERR_NOMEM (-3)
void braid__scope_left(struct braid_scope *s);
/* The scope after s in a walk of top's tree, parents before children, and
** its depth (top's members at 0; start with s = top, depth = -1); NULL at
** the end. A loop, not recursion: a chain of nested tasks may be 100k
** deep (dump.c, run.c's deadlock report, embed.c's exit). */
struct braid_scope *braid__scope_next(struct braid_scope *top,
                                      struct braid_scope *s, int *depth);
void braid__scope_deadline(struct braid_scope *s, uint64_t ns);
void *braid__scope_new(lua_State *L, size_t size);
void braid__scope_enter(struct braid_task *t, struct braid_scope *s, int kind);
int braid__scope_deadline_ready(braid_engine_t *E, struct braid_scope *s);
int braid__scope_join(lua_State *L, struct braid_scope *s, lua_KFunction k);
int braid__scope_body(lua_State *L, struct braid_scope *s, int base,
                      int nargs);

/* ---- tasks ---- */

enum { TASK_PENDING, TASK_RUNNING, TASK_SUSPENDED, TASK_OK, TASK_FAILED,
       TASK_CANCELLED };
enum { WAKE_NONE, WAKE_OK, WAKE_CANCEL, WAKE_NOYIELD };
enum { STOP_NONE, STOP_BUDGET, STOP_GRACE };

struct braid_task {
  const struct braid_type *type;   /* &braid__task_type */
  lua_State *co;               /* NULL before start and after the end */
  uint64_t id;                 /* 64 bits: never repeats (lock owners) */
  int ref;                     /* its slot in E's anchors, live only */
  unsigned char status, wake;
  unsigned char stop;          /* STOP_*: only unwinds from now on */
  /* Bits, so that the 64-bit id costs a task no byte. */
  unsigned char queued : 1, abandoned : 1;
  unsigned char nopool : 1;    /* hit the instruction budget: not reused */
  unsigned char waiting : 1;   /* t->w is its pending operation */
  unsigned char raised : 3;    /* its body raised: the status (task.c) */
  union {                      /* never both: */
    int nargs;                 /* arguments packed with the function (pending) */
    int nres;                  /* results kept after the end */
  };
  int line;                    /* spawn site: this line of user value 3 */
  union {                      /* t->E is the task scope's E: one word */
    struct braid_scope scope;  /* the task's own scope */
    struct { braid_engine_t *E; };
  };
  struct braid_wait *w;        /* from its start to its end, or NULL: the
                               ** wait of a struct braid_started */
  struct braid_task *next;     /* ready queue */
  struct braid_list watchers;  /* struct braid_watch */
};

#define TASK_DONE(t) ((t)->status >= TASK_OK)

/* What a task needs only from its start to its end, in one block with its
** wait record (sched.c), so that a pending task does not carry it. */
struct braid_started {
  struct braid_wait w;         /* first: t->w points here */
  struct braid_scope *inner;   /* innermost scope of the running body */
  uint64_t grace_end;          /* cancelled: abandoned past this (hrtime):
                               ** the grace period from the cancel */
};
#define TASK_STARTED(t) ((struct braid_started *) (t)->w)

/* The task's innermost scope: its own until it starts and after it ends. */
static inline struct braid_scope *braid__task_inner (struct braid_task *t) {
  return t->w ? TASK_STARTED(t)->inner : &t->scope;
}
static inline void braid__task_set_inner (struct braid_task *t,
                                          struct braid_scope *s) {
  TASK_STARTED(t)->inner = s;   /* only a started task enters scopes */
}
_Static_assert(offsetof(struct braid_scope, E) == 0,
               "t->E must alias t->scope.E");

/* The running task, or a usage error naming fname (the fast path, inside
** the task's own coroutine, is inline: after the engine's struct). */
struct braid_task *braid__task_current_slow(lua_State *L, const char *fname);
struct braid_task *braid__task_spawn(lua_State *L, struct braid_scope *into,
                                     int fidx, int nargs);
void braid__task_ready(struct braid_task *t);
/* anchor.c: a live task's place in the anchors table (t->ref). */
void braid__task_anchor(lua_State *L, braid_engine_t *E, struct braid_task *t,
                        int tab);
void braid__task_unanchor(lua_State *L, braid_engine_t *E,
                          struct braid_task *t);
void braid__anchors_compact(braid_engine_t *E);   /* the scheduler is idle */
void braid__coset_trim(braid_engine_t *E);        /* the scheduler is idle */
void braid__task_wake(struct braid_task *t, int how);
void braid__task_wait(struct braid_task *t, struct braid_wait *w,
                      void (*cancel)(struct braid_wait *), const char *what);
int braid__task_yield(lua_State *L, struct braid_task *t, lua_KContext ctx,
                      lua_KFunction k);
void braid__task_resumed(lua_State *L, struct braid_task *t);
int braid__task_k0(lua_State *L, int status, lua_KContext ctx);
void braid__task_checkcancel(lua_State *L, struct braid_task *t);
void braid__task_checkyield(lua_State *L, struct braid_task *t,
                            const char *fname);
int braid__task_results(lua_State *L, int idx, int all);
void braid__open_coroutine(lua_State *L);
int braid__call_wrapped(lua_State *L, int nargs);
void braid__task_unready(braid_engine_t *E, struct braid_task *t);
void braid__task_pool_drop(lua_State *S, braid_engine_t *E);
void braid__abandon_each(struct braid_task *t, void *ud);   /* ud: why */
/* Pushes the error an abandoned task ends with, "cancelled (abandoned
** after its grace period)", whatever cancelled it before. [-0, +1, m] */
void braid__abandon_push(lua_State *S, struct braid_task *t);
void braid__task_start(braid_engine_t *E, lua_State *S, struct braid_task *t);
void braid__task_body_done(braid_engine_t *E, lua_State *S,
                           struct braid_task *t, int status, int nres);
extern const char braid__suspended_key;
/* A task's coroutine runs this at its bottom (corolib.c tells them so). */
int braid__task_main(lua_State *L);
/* The set of coroutines some task runs in (coset.c): add (with L's
** allocator) returns 0 or UV_ENOMEM; remove of one not in it does nothing;
** drop frees the set once every task has ended. */
int braid__coset_has(const braid_engine_t *E, const lua_State *co);
int braid__coset_add(braid_engine_t *E, lua_State *L, lua_State *co);
void braid__coset_remove(braid_engine_t *E, lua_State *co);
void braid__coset_drop(braid_engine_t *E, lua_State *L);
extern const char *const braid__status_names[];
void braid__task_finish(struct braid_task *t);
void braid__task_drain(braid_engine_t *E);
void braid__task_kick(braid_engine_t *E);
const char *braid__task_name(lua_State *L, struct braid_task *t, int idx);
const char *braid__task_site(lua_State *L, struct braid_task *t, int idx);
const char *braid__task_where(lua_State *L, struct braid_task *t);

/* ---- errors ---- */

int braid__is_cancel(lua_State *L, int idx);
void braid__push_cancel(lua_State *L, struct braid_scope *cause);
/* The same from inside a Lua hook: runs no script metamethod (a reason's
** __tostring), which nothing could stop there. */
void braid__push_cancel_hooked(lua_State *L, struct braid_scope *cause);
/* Failure records (error.c): a record travels with its error, on the
** task (user value 4) and on the scopes (record_ref) that hold it. */
void braid__error_record(lua_State *L, int idx, lua_State *co, int level,
                         struct braid_task *t);
void braid__error_push_record(lua_State *L, int idx, struct braid_task *t);
void braid__error_hand(lua_State *L, struct braid_task *t);
void braid__error_causes(lua_State *L, int idx, struct braid_task *t);
void braid__error_suppress(lua_State *L, struct braid_scope *s, int idx,
                           int rec);
void braid__error_report(lua_State *L, int idx, int rec, const char *prefix);
int braid__error_msgh(lua_State *L);
void braid__traceback(lua_State *L, lua_State *L1, int level);
/* Pushes on L the function of L1's first frame from level on that is at a
** line (past C functions: pcall(braid.spawn, f) was called from the Lua
** code of that line) and returns the line; -1, pushing nothing, when
** there is none. What a spawn site or an error's origin is. */
int braid__frame_push(lua_State *L, lua_State *L1, int level);
int braid__site_push(lua_State *L, int level);
int braid__global_name_push(lua_State *L, int idx);
void braid__traceback_forget(lua_State *L);
void braid__error_forget(lua_State *L);
void braid__error_init(lua_State *L);

/* ---- the engine ---- */

struct braid_engine {
  uv_loop_t *loop;
  uv_loop_t own_loop;
  lua_State *L;                /* the state the engine was opened in */
  lua_State *S;                /* scheduler's own thread, anchored */
  int S_ref;
  int pool_ref, pool_n;        /* finished coroutines kept for reuse */
  int tasks_ref;               /* live tasks' anchors (anchor.c); [0]: braid.Task */
  int slot_top, slot_free;     /* its highest slot; the free chain's head */
  int compact_refused;         /* slot_top when a rebuild was refused */
  int running, interrupted, virtual_clock, deadlocks;
  struct braid_task *abandon_later;   /* asked from inside a task (abandon.c) */
  const char *abandon_why;
  uint64_t grace_expired;      /* while a grace period's end abandons
                               ** members (scope.c): it, for the report */
  uv_idle_t idle;              /* active only while tasks are ready */
  uv_timer_t timer;            /* armed for the earliest heap timer */
  uv_signal_t sigquit;
  uv_signal_t sigstop[NSTOPS]; /* SIGINT, SIGTERM, SIGHUP (interrupt.c) */
  _Atomic int pending[NSTOPS]; /* arrivals not handled yet */
  _Atomic int held[NSTOPS];    /* scripts' waiters for each (interrupt.c) */
  _Atomic int quits;           /* SIGQUITs not handled yet: dumps to print */
  _Atomic int hook_wanted;     /* one came while a task ran: its hook is
                               ** set again until they are handled (hook.c) */
  unsigned char watching[NSTOPS];
  uv_async_t pipe_wake;        /* braid.run's: stdout's reader has gone */
  _Atomic int pipe_gone;       /* 1 when it has, 2 once handled */
  struct braid_list sig_link;   /* in the list of engines with signals */
  int interrupt_sig;           /* the first signal that interrupted */
  lua_State *running_co;       /* the thread running Lua code (hook.c) */
  struct braid_scope *co_base; /* the task's innermost scope when braid's
                               ** coroutine.resume resumed running_co: a
                               ** plain yield leaving another is refused
                               ** (corolib.c) */
  lua_State *_Atomic *pub_co;  /* running_co for another thread, or NULL */
  _Atomic int *pub_busy;       /* (braid__engine_publish, hook.c) */
  long long budget_left;       /* instructions left in this resume */
  struct braid_bound *bound;   /* the innermost script code braid runs for
                               ** itself, bounded (hook.c), or NULL */
  struct braid_task *ready_head, *ready_tail;
  struct braid_task *current;
  struct braid_wait *wait_free;   /* spare wait records, chained (sched.c) */
  unsigned wait_spares;          /* how many: at most WAIT_SPARES_MAX */
  unsigned io_ops;             /* ops pending that hold the virtual clock */
  unsigned noyield;            /* coroutines resumed where the task cannot
                               ** yield, now running (task.c co_resume) */
  lua_State **coset;           /* coset.c: the task coroutines */
  unsigned coset_n, coset_cap;
  struct braid_heap_ent *heap;   /* timer.c: keys inline */
  unsigned heap_n, heap_cap;
  struct braid_timer_run {       /* timer.c: timers of one delay, in order */
    uint64_t delay;
    struct braid_timer *head, *tail;
  } runs[TIMER_RUNS];
  uint64_t run_seen[TIMER_RUNS]; /* the last delays no run took (timer.c) */
  unsigned run_next;             /* where the next one goes */
  uint64_t timer_seq, vnow, armed_due;
  struct braid_timer *late_head, *late_tail;   /* due deadlines, to fire */
  uint64_t next_id;
  unsigned live;
  struct braid_scope top;      /* parent of the root task */
  struct braid_task *root;
  uint64_t grace_ns;           /* braid.run's grace period */
  /* The grace periods scopes have of their own, each once (scope.c):
  ** every scope knows its grace without a walk up the tree, which cost
  ** each level of a deep chain all the levels above. */
#define GRACE_IDS 64
#define GRACE_WALK 0xffff      /* past GRACE_IDS different ones */
  uint64_t graces[GRACE_IDS];  /* [0] unused: the engine's is grace_ns */
  unsigned ngraces;
  unsigned own_graces;         /* live scopes with a grace of their own:
                               ** at 0 no live scope holds an id, and the
                               ** table starts afresh */
  /* Embedding (embed.c). E is malloc'd: it outlives the Lua state while
  ** braid's handles are still closing on a loop the application owns. */
  int refs;                    /* the Lua state, plus each open handle */
  unsigned char embedded;      /* made by braid_new: tasks live at top */
  unsigned char owns_loop;     /* braid_new(NULL): braid closes the loop */
  unsigned char signals;       /* SIGINT/SIGQUIT watchers attached */
  unsigned char attached;      /* idle and timer initialised on E->loop */
  unsigned char closing;       /* braid_close: abandonment is silent */
  unsigned char close_later;   /* braid_close came while `calls` > 0 */
  unsigned char state_closing; /* lua_close of E->L has begun (embed.c) */
  unsigned char in_run;        /* braid_run is inside uv_run */
  int calls;                   /* braid calls in progress that may run the
                               ** application's on_cancel (engine.c) */
  unsigned char binary;        /* precompiled chunks may be loaded */
  unsigned char files;         /* scripts may load files (BRAID_LIB_IO's
                               ** loadfile; braid.worker's file form) */
  unsigned char refusable;     /* allocations whose failure the caller
                               ** handles (braid_run_string's load, the
                               ** anchors' rebuild): the limit applies, the
                               ** reserve is not spent */
  unsigned char gc_probe;      /* a refused charge collects (memory.c) */
  size_t mem_used, mem_limit;  /* bytes; limit 0: none */
  struct braid_xacct *xacct;   /* messages in flight (memory.c), or NULL */
  int budget;                  /* instructions per resume; 0: none */
  int anchors_ref;             /* tasks handed to the application */
  unsigned modules;            /* BRAID_MOD_* the state may open */
  struct braid_list interceptors;   /* Ctrl-C, newest first (prim.h) */
  struct braid_list loop_users;     /* struct braid_loop_user (prim.h) */
  int exit_code;               /* os.exit's, once exiting is set */
  unsigned char exiting;       /* os.exit cancelled the root */
  unsigned char exit_close;    /* os.exit's second argument */
  int late_rc;                 /* an I/O error found as the run ended */
  const char *late_fname;      /* (braid__run_late_error) */
  /* The REPL's session (prim.h); NULL outside it. A deadlock fails the
  ** running `entry` when it is set and alive, else the root. */
  struct braid_session *session;
  struct braid_task *entry;
  /* The memory reserve (memory.c). alloc_f/alloc_ud: the allocator braid.run
  ** wraps (NULL when embedded: braid__alloc is the state's own). */
  lua_Alloc alloc_f;
  void *alloc_ud;
  void *reserve;               /* freed when the scheduler runs out */
  struct braid_arena *arena;   /* the state's small blocks (arena.c); NULL:
                               ** malloc. Owned when embedded; adopted by
                               ** braid.run, orphaned by the box's __gc */
  unsigned char oom;           /* it was: fail at the next safe point */
  struct braid_trace *trace;   /* the recording (trace.c), or NULL */
};

braid_engine_t *braid_engine(lua_State *L);
extern _Thread_local braid_engine_t *braid__draining;   /* engine.c */

static inline struct braid_task *braid__task_current (lua_State *L,
                                                      const char *fname) {
  braid_engine_t *E = braid__draining;
  if (E && E->current && E->current->co == L) return E->current;
  return braid__task_current_slow(L, fname);
}
braid_engine_t *braid__engine_new(void);
void braid__engine_box(lua_State *L, braid_engine_t *E);
int braid__engine_attach(braid_engine_t *E, uv_loop_t *loop, int signals);
void braid__engine_detach(braid_engine_t *E);
void braid__engine_unref(braid_engine_t *E);
/* os.exit(code, true) in an embedded engine, just before the exit: closes
** E's state and frees what braid keeps beside it, tasks live or not; a
** later braid_close does nothing (embed.c). */
void braid__engine_exit_close(braid_engine_t *E, lua_State *L);
/* Around a braid call that may run the application's on_cancel outside
** any task (braid_cancel, braid_interrupt, braid's own libuv callbacks): a
** braid_close made meanwhile waits until the outermost call ends, and
** leave then closes E; after leave E may be gone. */
void braid__engine_enter(braid_engine_t *E);
void braid__engine_leave(braid_engine_t *E);
void *braid__alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* The huge-page arena of a state's small blocks (arena.c): new returns NULL
** when it is turned off (BRAID_ARENA=0, AddressSanitizer) or cannot be had;
** adopt takes over a luaL_newstate state's allocator (NULL if it has
** another); orphan lets an adopted arena outlive its engine. */
struct braid_arena *braid__arena_new(void);
void braid__arena_free(struct braid_arena *A);
struct braid_arena *braid__arena_adopt(lua_State *L);
void braid__arena_orphan(struct braid_arena *A);
void braid__arena_closing(struct braid_arena *A);   /* braid_close */
void *braid__arena_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
void braid__reserve_take(braid_engine_t *E);
void braid__reserve_free(braid_engine_t *E);
void *braid__state_alloc(lua_State *L, void *p, size_t osize, size_t nsize);
int braid__engine_try(braid_engine_t *E, lua_CFunction f, void *ud);
void *braid__reserve_spend(braid_engine_t *E, void *ptr, size_t osize,
                           size_t nsize);
void braid__engine_oom(lua_State *S, braid_engine_t *E);
void braid__hook_arm(braid_engine_t *E, lua_State *L, int nested);
void braid__hook_rearm(braid_engine_t *E, lua_State *L, int nested);
void braid__hook_task(braid_engine_t *E, struct braid_task *t);
void braid__hook_stop(braid_engine_t *E);
void braid__hook_interrupt(braid_engine_t *E);
/* Whether a signal that arrived while a task ran is not handled yet
** (interrupt.c). Its handler set a hook on the thread running then; a
** switch of threads or a re-arm can lose that hook, so each of them looks
** here after it (the fence: the switch is made before the look, as the
** handler sees it). One that came while no task ran is the loop's. */
static inline int braid__interrupt_pending (braid_engine_t *E) {
  atomic_signal_fence(memory_order_seq_cst);
  return atomic_load_explicit(&E->hook_wanted, memory_order_relaxed);
}
/* E->running_co changes: to co, which starts running (enter), or away
** from the one that stops (leave: to the one resumed again, or NULL); a
** published engine's slot follows (braid__engine_publish). */
void braid__co_publish(braid_engine_t *E, lua_State *co, int leave);
static inline void braid__co_enter (braid_engine_t *E, lua_State *co) {
  E->running_co = co;
  if (E->pub_co) braid__co_publish(E, co, 0);
}
static inline void braid__co_leave (braid_engine_t *E, lua_State *to) {
  E->running_co = to;
  if (E->pub_co) braid__co_publish(E, to, 1);
  if (to && braid__interrupt_pending(E)) braid__hook_interrupt(E);
}
/* A bound on script code braid runs for itself (hook.c): L's hook before
** it, the instructions not yet granted, the bound it is inside, whether
** the running task was cancelled before it. */
struct braid_bound {
  lua_Hook hook;
  int mask, count, cancelled;
  lua_State *L;
  long long left;
  struct braid_bound *outer;
};
void braid__bound(braid_engine_t *E, lua_State *L, struct braid_bound *b);
void braid__unbound(braid_engine_t *E, lua_State *L, struct braid_bound *b);
void braid__interrupt_attach(braid_engine_t *E);
void braid__interrupt_detach(braid_engine_t *E);
/* The engine's memory goes: its messages' account is left to them. */
void braid__xacct_drop(braid_engine_t *E);
/* braid_close: drops the exit hooks E still has (interrupt.c). */
void braid__exit_hooks_drop(braid_engine_t *E);
int braid__interrupt_dispatch(braid_engine_t *E);
void braid__engine_handle_closed(uv_handle_t *h);
void braid__engine_fatal(braid_engine_t *E, const char *why);
/* braid's own C heap where failing is not an option (memory.c): spend
** the reserve and try again; with none left, fatal. Never NULL. */
void *braid__calloc_must(braid_engine_t *E, size_t n, size_t size);
void *braid__realloc_must(braid_engine_t *E, void *p, size_t n);
void braid__dump_signal(braid_engine_t *E);
/* The task a deadlock or the scheduler running out of memory fails: the
** REPL's running entry, else the root. */
struct braid_task *braid__engine_victim(braid_engine_t *E);
/* Cancels every live task at the top (an embedded engine's) with the
** reason at `reason`. */
void braid__engine_cancel_all(lua_State *L, braid_engine_t *E, int reason);
int braid__run_alloc_begin(lua_State *L, braid_engine_t *E);
void braid__run_alloc_end(lua_State *L, braid_engine_t *E);
/* The scope braid.spawn in t puts children in. */
struct braid_scope *braid__spawn_scope(struct braid_task *t);
/* Applies `fn` to every live member task of s (not to tasks in nested
** scopes); fn may end the task it is given. */
void braid__scope_each_task(struct braid_scope *s,
                            void (*fn)(struct braid_task *t, void *ud),
                            void *ud);

/* ---- channels (channel.c) and braid.select (select.c) ---- */

#define BRAID_CHAN_MT "braid.Channel"

struct braid_chan {
  const struct braid_type *type;  /* &braid__chan_type */
  lua_Integer cap, head, count;   /* ring: slots head+1 .. head+count */
  lua_Integer nback;              /* values given back, before the ring */
  lua_Integer out;                /* tickets handed out (the order) */
  int closed;
  struct braid_list senders, receivers;   /* struct braid_chan_node */
};

/* For a running receiver: takes the next value of channel c (at chan_idx:
** given back, buffered, or a waiting sender's) and pushes it; 0 when there
** is none. [-0, +(0|1), m] */
int braid__chan_take(lua_State *L, struct braid_chan *c, int chan_idx);
/* For a running sender: hands the value at val_idx to the first waiting
** receiver of c (at chan_idx) or buffers it; 0 when the channel is full
** (or closed: check first). [-0, +0, m] */
int braid__chan_put(lua_State *L, struct braid_chan *c, int chan_idx,
                    int val_idx);
/* Queues a waiting operation (n->recv says which queue), FIFO. */
void braid__chan_enqueue(struct braid_chan *c, struct braid_chan_node *n);
/* n (a receiver) was handed a value that its task will never take: gives
** it back to its channel. Scheduler context. */
void braid__chan_release_node(struct braid_chan_node *n);
/* select.c: n, a case of a waiting select, commits: the select's other
** cases leave their queues and its timer stops. */
void braid__select_commit(struct braid_chan_node *n);

/* ---- the execution trace (trace.c): each hook is called as
** `if (E->trace) braid__trace_x(...)`, so that it costs one branch when
** nothing is recorded ---- */

struct braid_trace;
int braid__trace_open(braid_engine_t *E, const char *path);
void braid__trace_close(braid_engine_t *E);
void braid__trace_spawn(struct braid_task *t, lua_State *L, int fidx);
void braid__trace_rename(struct braid_task *t, lua_State *L, int idx);
void braid__trace_resume(struct braid_task *t);
void braid__trace_ran(struct braid_task *t, int status);
void braid__trace_fail(struct braid_task *t, lua_State *S, int idx);
void braid__trace_finish(struct braid_task *t);
void braid__trace_cancel(struct braid_scope *s, struct braid_scope *cause);
void braid__trace_timeout(struct braid_scope *s, uint64_t timeout_ns);
void braid__trace_abandon(struct braid_task *t);
void braid__trace_counters(braid_engine_t *E);
void braid__trace_label(braid_engine_t *E, const char *fmt, ...);

#define BRAID_MARKER ((void *) &braid__marker)
extern const char braid__marker;

#endif
