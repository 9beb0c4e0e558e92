/*
** internal.h: declarations shared by the files of engine/.
**
** The model, in one paragraph. An engine owns (or borrows) one uv_loop_t and
** a FIFO ready queue drained by one uv_idle_t. A task is a Lua coroutine plus
** a struct braid_task kept in a full userdata. Every task owns a stack of
** scopes (its own task scope at the bottom, then braid.scope, timeout,
** shield and group scopes pushed by the body); scopes form one tree across
** tasks, and cancellation travels down that tree eagerly, stopping at
** shields. A task waits on at most one operation at a time (t->wait); the
** operation's cancel hook undoes it at the C level. Callbacks never resume a
** task: they mark it ready and the scheduler resumes it, so ordering is ours.
*/
#ifndef BRAID_INTERNAL_H
#define BRAID_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>
#include "lua.h"
#include "lauxlib.h"

#include "braid.h"

#define container_of(ptr, type, field) \
  ((type *) ((char *) (ptr) - offsetof(type, field)))

/* An intrusive doubly-linked list; an empty list points at itself. */
struct braid_list {
  struct braid_list *prev, *next;
};

void braid__list_init(struct braid_list *l);
void braid__list_push(struct braid_list *head, struct braid_list *node);
void braid__list_remove(struct braid_list *node);
#define braid__list_empty(l) ((l)->next == (l))

/* ---- timers: one uv_timer_t drives a binary heap of these ---- */

struct braid_timer {
  uint64_t due;                       /* engine clock, nanoseconds */
  uint64_t seq;                       /* ties fire in arming order */
  unsigned idx;                       /* heap slot + 1; 0 when not armed */
  unsigned char late;                 /* deadlines fire after the others */
  unsigned char in_late;              /* due, on E's list of late ones */
  struct braid_timer *next_late, *prev_late;
  void (*cb)(struct braid_timer *tm);
};

void braid__timer_start(braid_engine_t *E, struct braid_timer *tm,
                        uint64_t delay_ns, void (*cb)(struct braid_timer *));
void braid__timer_stop(braid_engine_t *E, struct braid_timer *tm);
uint64_t braid__now(braid_engine_t *E);
uint64_t braid__now_ms(braid_engine_t *E);
int braid__timer_advance(braid_engine_t *E);   /* virtual clock step */
void braid__timer_quiet(braid_engine_t *E);     /* no task ready */
uint64_t braid__check_ns(lua_State *L, int arg, const char *fname);

/* ---- waits: what a suspended task is waiting on ---- */

struct braid_task;

/* A watcher is told when a task ends (awaiters, group members). */
struct braid_watch {
  struct braid_list link;
  void (*done)(struct braid_watch *w, struct braid_task *t);
};

/* Bytes of a braid_suspend op's data kept inside the task itself: an op
** this small allocates nothing (braid.sleep's timer fits). */
#define BRAID_OP_INLINE 64

struct braid_wait {
  struct braid_task *task;
  /* Undo the operation at the C level; NULL for waits that cancellation
  ** must not interrupt (a scope joining its children). */
  void (*cancel)(struct braid_wait *w);
  const char *what;                    /* for deadlock reports and dump */
  uint64_t since;                      /* loop time (ms) the wait began */
  union {
    struct {                           /* the scheduler's own waits */
      struct braid_watch watch;        /* in the waited-on object's queue */
      struct braid_task *target;       /* task:await */
      int slot, got;                   /* channel hand-offs, permits */
    };
    struct {                           /* braid_suspend (api.c) */
      lua_State *L;                    /* the thread that suspended */
      braid_k_fn k;
      braid_cancel_fn on_cancel;
      void *data;                      /* inline, or a userdata */
      int state, nres;
      unsigned char holds;             /* counted in E->io_ops */
      union { void *p; double d; uint64_t u; char bytes[BRAID_OP_INLINE]; }
        inl;                           /* aligned as a Lua userdata */
    };
  };
};

/* braid_op_t is the task's wait: ops live inside their task. */
#define OP_WAIT(op) ((struct braid_wait *) (op))
#define WAIT_OP(w) ((braid_op_t *) (w))
void braid__op_release(struct braid_task *t);
void braid__op_timer(braid_op_t *op);

/* ---- scopes ---- */

/* Something a scope started that must not outlive it (a process, a socket,
** a server). When the scope ends, close() runs for every resource still
** attached; it must stop the thing without running Lua (kill, uv_close) and
** detach it. The owner removes the resource earlier when it ends first. */
struct braid_resource {
  struct braid_list link;
  void (*close)(struct braid_resource *r);
};

enum { SCOPE_TOP, SCOPE_TASK, SCOPE_PLAIN, SCOPE_SHIELD, SCOPE_TIMEOUT,
       SCOPE_GROUP };

struct braid_scope {
  braid_engine_t *E;
  struct braid_task *task;     /* owning task; NULL for the engine's top */
  struct braid_scope *outer;   /* enclosing scope, maybe another task's */
  struct braid_list link;      /* in outer->subs */
  struct braid_list subs;      /* nested scopes and children's task scopes */
  struct braid_list resources; /* struct braid_resource */
  unsigned pending;            /* members not ended (children, adopted) */
  unsigned char kind, cancelled, joining, deadline_fired, body_failed;
  int base;                    /* stack slot below the body's results */
  struct braid_scope *cause;   /* the scope whose cancel reached this one */
  int reason_ref;              /* cancel reason given to this scope */
  int error_ref;               /* first error of a member or the body */
  double grace;                /* seconds members get after a cancel */
  struct scope_timers *timers; /* made on first use: most scopes need none */
  uint64_t timeout_ns;         /* as given, for the timeout message */
  struct braid_scope **handle; /* the script's scope object, if any */
  void (*on_cancel)(struct braid_scope *s);   /* groups: adopted tasks */
  void (*release)(struct braid_scope *s);     /* groups: their references */
  /* Where braid.spawn at this scope puts children instead (a REPL entry's
  ** task scope: the session). NULL: here. */
  struct braid_scope *adopt;
  /* Judges members that end instead of fail-fast (the REPL's session
  ** reports failures and carries on). NULL: fail-fast. */
  void (*member_done)(struct braid_scope *s, struct braid_task *t);
};

void braid__scope_init(struct braid_scope *s, braid_engine_t *E, int kind,
                       struct braid_task *t, struct braid_scope *outer);
void braid__scope_cancel(struct braid_scope *s, struct braid_scope *cause);
void braid__scope_set_reason(lua_State *L, struct braid_scope *s, int idx);
void braid__scope_release(struct braid_scope *s);
void braid__resource_add(struct braid_task *t, struct braid_resource *r);
void braid__resource_remove(struct braid_resource *r);
void braid__scope_member_done(lua_State *L, struct braid_scope *s,
                              struct braid_task *t);
void braid__scope_fail(lua_State *L, struct braid_scope *s, int idx);
void braid__scope_left(struct braid_scope *s);
void braid__scope_deadline(struct braid_scope *s, uint64_t ns);
void *braid__scope_push(lua_State *L, struct braid_task *t, int kind,
                        size_t size);
int braid__scope_join(lua_State *L, struct braid_scope *s, lua_KFunction k);
int braid__scope_body(lua_State *L, struct braid_scope *s, int base,
                      int nargs);

/* ---- tasks ---- */

enum { TASK_PENDING, TASK_RUNNING, TASK_SUSPENDED, TASK_OK, TASK_FAILED,
       TASK_CANCELLED };
enum { WAKE_NONE, WAKE_OK, WAKE_CANCEL, WAKE_NOYIELD };

struct braid_task {
  braid_engine_t *E;
  lua_State *co;               /* NULL before start and after the end */
  int ref;                     /* registry anchor of the userdata, live only */
  unsigned id;
  unsigned char status, queued, wake, abandoned;
  unsigned char nopool;        /* hit the instruction budget: not reused */
  int nargs;                   /* arguments packed with the function */
  int nres;                    /* results kept after the end */
  struct braid_scope *inner;   /* innermost scope of the running body */
  struct braid_scope scope;    /* the task's own scope */
  struct braid_wait *wait;     /* the pending operation, or NULL */
  struct braid_wait w;         /* storage for the built-in waits */
  struct braid_task *next;     /* ready queue */
  struct braid_list watchers;  /* struct braid_watch */
  int line;                    /* spawn site: this line of user value 3 */
};

#define TASK_DONE(t) ((t)->status >= TASK_OK)

struct braid_task *braid__task_current(lua_State *L, const char *fname);
struct braid_task *braid__task_check(lua_State *L, int idx);
struct braid_task *braid__task_spawn(lua_State *L, struct braid_scope *into,
                                     int fidx, int nargs);
void braid__task_ready(struct braid_task *t);
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
int braid__is_callable(lua_State *L, int idx);
void braid__open_coroutine(lua_State *L);
void braid__task_push(lua_State *L, struct braid_task *t);
void braid__task_cancel(struct braid_task *t, lua_State *L, int reason);
void braid__task_abandon(struct braid_task *t);
void braid__task_finish(struct braid_task *t);
void braid__task_drain(braid_engine_t *E);
void braid__task_kick(braid_engine_t *E);
const char *braid__task_name(lua_State *L, struct braid_task *t, int idx);
const char *braid__task_site(lua_State *L, struct braid_task *t, int idx);

/* ---- errors ---- */

int braid__error_push(lua_State *L, const char *kind, const char *code,
                      const char *fmt, ...);
int braid__error_raise(lua_State *L, const char *kind, const char *code,
                       const char *fmt, ...);
int braid__error_usage(lua_State *L, const char *fmt, ...);
int braid__error_argerror(lua_State *L, int arg, const char *fname,
                          const char *extramsg);
const char *braid__error_kind(lua_State *L, int idx);
int braid__is_cancel(lua_State *L, int idx);
void braid__push_cancel(lua_State *L, struct braid_scope *cause);
void braid__error_record(lua_State *L, int idx, lua_State *co, int level,
                         struct braid_task *t);
void braid__error_suppress(lua_State *L, int first, int idx);
void braid__error_report(lua_State *L, int idx, const char *prefix);
const char *braid__error_tostring(lua_State *L, int idx);
int braid__error_msgh(lua_State *L);
void braid__error_forget(lua_State *L);

/* ---- the engine ---- */

struct braid_engine {
  uv_loop_t *loop;
  uv_loop_t own_loop;
  lua_State *L;                /* the state the engine was opened in */
  lua_State *S;                /* scheduler's own thread, anchored */
  int S_ref;
  int pool_ref, pool_n;        /* finished coroutines kept for reuse */
  int running, interrupted, virtual_clock, deadlocks;
  uv_idle_t idle;              /* active only while tasks are ready */
  uv_timer_t timer;            /* armed for the earliest heap timer */
  uv_signal_t sigint, sigquit;
  struct braid_task *ready_head, *ready_tail;
  struct braid_task *current;
  unsigned io_ops;             /* ops pending that hold the virtual clock */
  unsigned noyield;            /* coroutines resumed where the task cannot
                               ** yield, now running (task.c co_resume) */
  struct braid_timer **heap;
  unsigned heap_n, heap_cap;
  uint64_t timer_seq, vnow, armed_due;
  struct braid_timer *late_head, *late_tail;   /* due deadlines, to fire */
  unsigned next_id, live;
  struct braid_scope top;      /* parent of the root task */
  struct braid_task *root;
  double grace;
  /* Embedding (api.c). E is malloc'd: it outlives the Lua state while
  ** braid's handles are still closing on a loop the application owns. */
  int refs;                    /* the Lua state, plus each open handle */
  unsigned char embedded;      /* made by braid_new: tasks live at top */
  unsigned char owns_loop;     /* braid_new(NULL): braid closes the loop */
  unsigned char signals;       /* SIGINT/SIGQUIT watchers attached */
  unsigned char attached;      /* idle and timer initialised on E->loop */
  unsigned char closing;       /* braid_close: abandonment is silent */
  unsigned char binary;        /* precompiled chunks may be loaded */
  unsigned char loading;       /* braid_run_string: the limit applies */
  size_t mem_used, mem_limit;  /* bytes; limit 0: none */
  int budget;                  /* instructions per resume; 0: none */
  int anchors_ref;             /* tasks handed to the application */
  /* The REPL's hooks; NULL outside it. on_interrupt returns 1 when it has
  ** handled a Ctrl-C. A deadlock fails `focus` (the running entry) when it
  ** is set and alive, else the root. */
  int (*on_interrupt)(braid_engine_t *E);
  struct braid_task *focus;
  struct braid_list signal_waiters; /* signal.c: the script's waiters */
  /* The memory reserve (loop.c). alloc_f/alloc_ud: the allocator braid.run
  ** wraps (NULL when embedded: braid__alloc is the state's own). */
  lua_Alloc alloc_f;
  void *alloc_ud;
  void *reserve;               /* freed when the scheduler runs out */
  unsigned char oom;           /* it was: fail at the next safe point */
};

braid_engine_t *braid__engine(lua_State *L);
braid_engine_t *braid__engine_new(void);
void braid__engine_box(lua_State *L, braid_engine_t *E);
int braid__engine_attach(braid_engine_t *E, uv_loop_t *loop, int signals);
void braid__engine_detach(braid_engine_t *E);
void braid__engine_unref(braid_engine_t *E);
void *braid__alloc(void *ud, void *ptr, size_t osize, size_t nsize);
void braid__reserve_take(braid_engine_t *E);
void braid__reserve_free(braid_engine_t *E);
void *braid__reserve_spend(braid_engine_t *E, void *ptr, size_t osize,
                           size_t nsize);
void braid__engine_oom(lua_State *S, braid_engine_t *E);
void braid__budget_set(braid_engine_t *E, lua_State *co);
void braid__engine_fatal(braid_engine_t *E);
void braid__open_task(lua_State *L);
void braid__open_scope(lua_State *L);
void braid__open_timer(lua_State *L);
void braid__open_group(lua_State *L);
void braid__open_channel(lua_State *L);
void braid__open_dump(lua_State *L);
void braid__dump_signal(braid_engine_t *E);
void braid__open_error(lua_State *L);
void braid__open_tcp(lua_State *L);
void braid__open_process(lua_State *L);
void braid__open_fs(lua_State *L);
void braid__open_dns(lua_State *L);
void braid__open_signal(lua_State *L);
int braid__signal_interrupt(braid_engine_t *E);
void braid__push_weak_table(lua_State *L);
void braid__class(lua_State *L, const char *name, const luaL_Reg *meta,
                  const luaL_Reg *methods, lua_CFunction index);
void braid__check_options(lua_State *L, int idx, const char *fname,
                          const char *const *allowed);
double braid__opt_number(lua_State *L, int idx, const char *key, double def,
                         const char *fname);

/* repl.c (the runner only): takes the function at the top (what runs
** before the prompt: -e chunks and the script; or nil) and pushes the root
** function of an interactive session. [-1, +1, m] */
void braid__repl_push(lua_State *L);

#define BRAID_MARKER ((void *) &braid__marker)
extern const char braid__marker;

#endif
