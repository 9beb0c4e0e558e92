/*
** braid.h: embedding braid, a concurrency engine for Lua 5.4 on libuv.
**
** A C application creates an engine on its own uv_loop_t (or lets braid
** own one), runs Lua code as tasks, adds C functions that suspend the
** calling task until a libuv callback resumes it, limits memory and
** instructions for untrusted scripts, and closes the engine with nothing
** of braid's left on its loop. docs/embedding.md is the guide.
**
** Conventions: functions returning int return 0 (or a count) on success
** and a negative libuv error code (UV_E*) on failure. Nothing here is
** thread-safe: call it on the loop's thread, never from a signal handler.
** A braid_engine_t must not be used after braid_close.
*/
#ifndef BRAID_H
#define BRAID_H

#include <stddef.h>
#include <stdint.h>
#include "lua.h"
#include "uv.h"

#define BRAID_VERSION_MAJOR 0
#define BRAID_VERSION_MINOR 1
#define BRAID_VERSION_PATCH 0
#define BRAID_VERSION "0.1.0"

#ifndef BRAID_API
#define BRAID_API extern
#endif

/* ---- types ---- */

typedef struct braid_engine braid_engine_t;   /* one engine, one lua_State */
typedef struct braid_task braid_task_t;       /* a task handed to C */
typedef struct braid_op braid_op_t;           /* one suspension of a task */

/* Lua standard libraries (braid_options_t.libs): any subset works (base
** is always there). braid's own functions keep what they use of table,
** string, math and os whatever the scripts get; strings keep their
** methods (("x"):upper()) even without BRAID_LIB_STRING. */
#define BRAID_LIB_BASE      0x001u  /* always; dofile/loadfile need IO */
#define BRAID_LIB_PACKAGE   0x002u  /* full require: reads files, loads C */
#define BRAID_LIB_COROUTINE 0x004u
#define BRAID_LIB_TABLE     0x008u
#define BRAID_LIB_IO        0x010u
#define BRAID_LIB_OS        0x020u  /* without it: os.time/clock/date only */
#define BRAID_LIB_STRING    0x040u
#define BRAID_LIB_MATH      0x080u
#define BRAID_LIB_UTF8      0x100u
#define BRAID_LIB_DEBUG     0x200u
#define BRAID_LIB_BINARY    0x400u  /* load() accepts precompiled chunks */
#define BRAID_LIBS_SAFE     0x1cdu  /* base coroutine table string math utf8 */
#define BRAID_LIBS_ALL      0x7ffu  /* what the braid runner opens */

/* braid modules that reach outside the process (braid_options_t.modules).
** Those not allowed are absent from the braid table. */
#define BRAID_MOD_PROCESS   0x01u   /* braid.exec, braid.process */
#define BRAID_MOD_FS        0x02u   /* braid.fs */
#define BRAID_MOD_NET       0x04u   /* braid.tcp, braid.dns, braid.unix,
                                       braid.udp, braid.http */
#define BRAID_MOD_SIGNAL    0x08u   /* braid.signal */
#define BRAID_MODS_ALL      0x0fu

/* Options for braid_new; all-zero (or NULL) gives the safe defaults: the
** BRAID_LIBS_SAFE libraries, no outside-reaching module, no limits, no
** signal watchers. */
typedef struct braid_options {
  unsigned libs;             /* BRAID_LIB_* bits; 0 means BRAID_LIBS_SAFE */
  unsigned modules;          /* BRAID_MOD_* bits */
  size_t memory_limit;       /* bytes the state and braid's buffers for it
                                may hold; 0: no limit */
  int instruction_budget;    /* VM instructions per resume; 0: no limit */
  int signals;               /* nonzero: Ctrl-C cancels, SIGQUIT dumps */
  const char *trace;         /* a file to record an execution trace in
                                (Chrome trace-event JSON) until braid_close;
                                NULL: none */
  int plain_malloc;          /* nonzero: the state allocates with malloc,
                                not braid's huge-page arena */
} braid_options_t;

/* Task status (braid_task_status). */
enum { BRAID_PENDING, BRAID_RUNNING, BRAID_SUSPENDED, BRAID_OK,
       BRAID_FAILED, BRAID_CANCELLED };

/* ---- engine lifecycle ---- */

/* Creates an engine on `loop` (NULL: braid creates and owns one), with a
** new lua_State opened as `opts` says and braid as the global `braid`.
** Returns NULL when out of memory, the loop cannot be set up or the trace
** file cannot be created; it then leaves nothing on `loop`. */
BRAID_API braid_engine_t *braid_new(uv_loop_t *loop,
                                    const braid_options_t *opts);

/* The engine's main lua_State, owned by the engine; valid until braid_close.
** Use it to register C functions and to push functions and arguments. */
BRAID_API lua_State *braid_state(braid_engine_t *E);

/* The loop the engine runs on (the application's, or braid's own). */
BRAID_API uv_loop_t *braid_loop(braid_engine_t *E);

/* Runs the loop with uv_run(loop, mode); returns the number of tasks still
** alive afterwards (0: all ended). With UV_RUN_DEFAULT a positive count
** means every live task waits on something that nothing can wake. Not
** callable from inside a callback of the same loop: from a task (a C
** function a script calls), or while braid_run or braid's callbacks run
** on that loop, it returns UV_EBUSY and runs nothing. Returns 0 when a
** callback closed E meanwhile (braid_close; E is gone then). An
** application that runs its own loop with uv_run need not call this at
** all. */
BRAID_API int braid_run(braid_engine_t *E, uv_run_mode mode);

/* Cancels and abandons every live task (cancel hooks run, to-be-closed
** variables run), closes every handle braid added to the loop, closes the
** Lua state and frees the engine. On an application's loop, braid's
** handles finish closing in that loop's next iteration, as with uv_close;
** the application's own handles are untouched. Callable any time outside
** a task, also from a callback of the application's loop, while
** braid_run drives it too, and from an op's on_cancel, whether a braid
** call outside any task runs it (braid_cancel, braid_interrupt, a
** deadline firing) or a task's cancel does: the engine then closes as
** that call, or the scheduler's turn, returns. An engine that owns its loop (braid_new(NULL, ...)) may be
** closed from a callback of that loop only while braid_run drives it,
** which closes the loop as it returns; where the application runs
** braid_loop(E) with uv_run itself, close E after uv_run returns. */
BRAID_API void braid_close(braid_engine_t *E);

/* Asks the engine's tasks to stop, as Ctrl-C does (reason "interrupt"); in
** an embedded engine it cancels the live tasks only and never exits the
** process. Returns 0 (always, for an engine made by braid_new), or
** UV_EINVAL when braid is not open in L, or, in a state the application
** opened braid in (luaopen_braid), outside braid.run. Safe from a libuv
** callback on the engine's loop; not from another thread or a signal
** handler. */
BRAID_API int braid_interrupt(lua_State *L);

/* Opens the braid module in L and pushes its table, as require "braid"
** does; for a lua_State the application made itself (use braid.run from
** Lua there). [-0, +1, m] */
BRAID_API int luaopen_braid(lua_State *L);

/* ---- running code ---- */

/* Compiles `code` (text only unless BRAID_LIB_BINARY) and starts it as a
** task; *out (may be NULL) gets the task, held for the application until
** braid_task_release. Returns 0; or UV_EINVAL (syntax error) or UV_ENOMEM
** with the error message pushed on braid_state(E). Outside tasks only. */
BRAID_API int braid_run_string(braid_engine_t *E, const char *code,
                               const char *chunkname, braid_task_t **out);

/* As braid_run_string for a file; UV_ENOENT (message pushed) when the file
** cannot be read. */
BRAID_API int braid_run_file(braid_engine_t *E, const char *path,
                             braid_task_t **out);

/* Pops a function and its `nargs` arguments (pushed in that order on
** braid_state(E)) and starts function(args) as a task; *out as above.
** Returns 0, or UV_ENOMEM, or UV_EINVAL (called from inside a task), with
** nothing left pushed. */
BRAID_API int braid_spawn_function(braid_engine_t *E, int nargs,
                                   braid_task_t **out);

/* The task's status, one of BRAID_PENDING ... BRAID_CANCELLED. */
BRAID_API int braid_task_status(braid_task_t *task);

/* For an ended task, pushes on braid_state(E) what task:result() returns:
** true and the results, or false and the error (the very value raised).
** Returns the number of values pushed, or UV_EBUSY (nothing pushed) while
** the task has not ended, or UV_ENOMEM when the stack cannot hold them. */
BRAID_API int braid_task_result(braid_engine_t *E, braid_task_t *task);

/* Cancels the task, as task:cancel() does; returns 0, or UV_EALREADY when
** it had already ended. Never blocks: the task ends later, in the loop. */
BRAID_API int braid_cancel(braid_engine_t *E, braid_task_t *task);

/* The application is done with the task handle (the task itself runs on);
** the pointer is invalid afterwards. braid_close releases the rest. */
BRAID_API void braid_task_release(braid_engine_t *E, braid_task_t *task);

/* ---- suspending C functions ---- */

/* start(op, ud) begins the operation (arms a timer, sends a request) and
** keeps in braid_op_data(op) what the callbacks, on_cancel and k will
** need; ud (the call's arguments, often on the C stack) is handed to start
** only. It returns 0, or, without having resumed op, a negative libuv
** code that fails the call with an "io" error (kind "memory" for
** UV_ENOMEM, as braid reports running out of memory everywhere). It may
** resume op at once.
** Handles need memory of their own: uv_close finishes after the op. */
typedef int (*braid_start_fn)(braid_op_t *op, void *ud);

/* Ends an op that will not run its continuation. Called when the task is
** cancelled before the op completed, is abandoned, or the engine closes:
** undo the operation so that nothing calls braid_resume for op afterwards
** and nothing is left behind. For an op suspended with a continuation k
** it is also called when the task is abandoned (or the engine closes)
** after braid_resume but before k ran: release what k would have
** consumed. Exactly one of k and on_cancel then ends every started op. */
typedef void (*braid_cancel_fn)(braid_op_t *op);

/* The continuation of an op, run in the task when it runs again after
** braid_resume(op, n), with those n values on top of L's stack and
** braid_op_data(op) still valid. Like a lua_CFunction it returns how many
** values (from the top) the suspended call returns; it may raise, and as
** its last act it may suspend again (return braid_suspendk(...)), as
** often as it likes, in constant memory. The stack below the n values is
** the suspending function's: leave it in place. A new braid_suspendk
** reuses the op, so copy what its start needs out of braid_op_data(op)
** into its ud first. */
typedef int (*braid_k_fn)(lua_State *L, braid_op_t *op);

/* Suspends the running task: a lua_CFunction ends with
** `return braid_suspend(L, "app.query", size, start, on_cancel, ud);`.
** It raises a usage error outside a task or where Lua cannot yield, and
** the cancellation when the task is already cancelled (start is then not
** called). Otherwise it gives op `size` zeroed bytes of the caller's
** (braid_op_data), calls start, and yields; the Lua caller later gets the
** values given to braid_resume or the error given to braid_resume_error.
** `what` (a static string) names the wait in deadlock reports and
** braid.dump, and these messages of braid_suspend's own, as given: a
** function whose wait is labelled otherwise than the script calls it
** calls braid_check_suspend(L, "app.query") first, as braid's primitives
** do ("braid.sleep" waits in "sleep"). Results that cannot be moved onto
** the task's stack raise kind "memory" instead. An op and up to 56 bytes
** of data live in the task's wait record: suspending allocates nothing;
** larger data is a block of the state's allocator (counted in its memory
** limit), freed when the task next waits or ends. */
BRAID_API int braid_suspend(lua_State *L, const char *what, size_t size,
                            braid_start_fn start, braid_cancel_fn on_cancel,
                            void *ud);

/* braid_suspend with a continuation k (NULL: return the resumed values),
** as lua_yieldk is lua_yield with one. */
BRAID_API int braid_suspendk(lua_State *L, const char *what, size_t size,
                             braid_start_fn start, braid_cancel_fn on_cancel,
                             void *ud, braid_k_fn k);

/* The `size` bytes given to braid_suspend, owned by braid; valid from
** start until braid_resume/braid_resume_error or on_cancel returns, and,
** for an op with a continuation, until k or on_cancel returns. */
BRAID_API void *braid_op_data(braid_op_t *op);

/* The lua_State on which to push the results or the error for op, from a
** libuv callback; not a task's state (do not call Lua functions on it). */
BRAID_API lua_State *braid_op_state(braid_op_t *op);

/* Pops `nresults` values from braid_op_state(op) and makes them the
** suspended call's results (or k's arguments); the task runs later, from
** the loop. Returns 0, or UV_EALREADY when op was already resumed and its
** task has not run since (the values are popped). Callable from any
** callback on the engine's loop, once, and never after on_cancel: once
** the task runs on, the op (a part of its task) serves the task's next
** suspension, or another task's, or is freed, and no call can tell. Where
** two completions race (a reply and a timeout), the first detaches the
** other (stops the timer, forgets op) before it resumes. */
BRAID_API int braid_resume(braid_op_t *op, int nresults);

/* Pops one value from braid_op_state(op) and makes the suspended call
** raise it, unchanged. Neither k nor on_cancel runs afterwards: release
** the op's resources first. Returns 0 or UV_EALREADY, as braid_resume. */
BRAID_API int braid_resume_error(braid_op_t *op);

/* braid_suspend for a wait that cancellation only cuts short: a courtesy
** wait (a close waiting for a child to be reaped). Where the running task
** cannot wait (outside a task, where Lua cannot yield, while the task is
** cancelled or being abandoned) it returns 0 at once without calling
** start; when the task is cancelled during the wait, on_cancel runs and
** the call returns 0 instead of raising (the next suspension point raises:
** cancellation stays level-triggered). Otherwise it returns what
** braid_suspend returns. */
BRAID_API int braid_suspend_soft(lua_State *L, const char *what, size_t size,
                                 braid_start_fn start,
                                 braid_cancel_fn on_cancel, void *ud);

/* The checks a suspending function makes before any side effect, so that
** nothing is started that a refusal would have to undo. Both raise a
** "usage" error naming `fname` as the script wrote it ("channel:send",
** "braid.fs.read_file", "app.get"; used as given) outside a task, and
** raise the task's cancellation when it is cancelled. braid_check_suspend
** also refuses where the task cannot suspend: inside a C function or
** metamethod that cannot yield, or while the task is being abandoned.
** Both return the engine. */
BRAID_API braid_engine_t *braid_check_task(lua_State *L, const char *fname);
BRAID_API braid_engine_t *braid_check_suspend(lua_State *L,
                                              const char *fname);

/* The engine an op's task belongs to (for braid_loop, braid_timer_start). */
BRAID_API braid_engine_t *braid_op_engine(braid_op_t *op);

/* The engine of L (any thread of its state), or NULL when braid is not
** open in it. */
BRAID_API braid_engine_t *braid_engine(lua_State *L);

/* ---- time ---- */

/* A timer on the engine's clock (the real monotonic clock, or the virtual
** one of braid.run{clock = "virtual"}), kept with all of braid's timers
** (a heap, and lists of timers armed with the same delay).
** The struct is the caller's (embed it in what it times, zeroed); its
** fields are braid's. */
typedef struct braid_timer braid_timer_t;
struct braid_timer {            /* every field is braid's */
  uint64_t due, seq;            /* engine clock (ns); ties fire in order */
  unsigned idx;                 /* where it is armed; 0 when not */
  unsigned char late, in_late;  /* deadlines fire after other due timers */
  braid_timer_t *next, *prev;   /* in a run, or in the due deadlines */
  void (*cb)(braid_timer_t *tm);
};

/* Arms tm to call cb once, `ns` nanoseconds from now (re-arming it if it
** is armed). cb runs from the loop and must not run Lua code. An armed
** timer keeps the engine's loop alive, unless it is due never (ns of
** BRAID_NEVER: it can wake nothing). Never fails: when braid's timer
** heap (where a timer goes unless a list of its delay takes it) cannot
** grow, braid spends its memory reserve (the engine's tasks are then
** cancelled with a "memory" error, as when the scheduler runs out). */
BRAID_API void braid_timer_start(braid_engine_t *E, braid_timer_t *tm,
                                 uint64_t ns, void (*cb)(braid_timer_t *tm));

/* Disarms tm; harmless when it is not armed. */
BRAID_API void braid_timer_stop(braid_engine_t *E, braid_timer_t *tm);

/* The engine clock, in nanoseconds. */
BRAID_API uint64_t braid_now(braid_engine_t *E);

/* Declares that op waits only on a braid timer (as braid.sleep does), so
** that on the virtual clock time may jump over it; every other op holds
** the virtual clock still until it completes. Call it from start. */
BRAID_API void braid_op_timer(braid_op_t *op);

/* Describes what op waits on ("sleep 0.5", "exec git status"), printf
** style, for the execution trace (braid --trace); call it from start. Does
** nothing, and formats nothing, when no trace is being recorded. Without
** it the wait is labelled with the `what` given to braid_suspend. */
BRAID_API void braid_op_label(braid_op_t *op, const char *fmt, ...);

/* Nonzero while E records an execution trace. */
BRAID_API int braid_tracing(braid_engine_t *E);

/* Seconds at Lua stack index arg as nanoseconds, checked one way for every
** duration: a number is required ("bad argument" naming fname otherwise),
** NaN is refused, a negative number counts as 0, and anything from about
** 292 years on (math.huge included) means never: BRAID_NEVER. */
#define BRAID_NEVER (UINT64_MAX / 2)
BRAID_API uint64_t braid_check_seconds(lua_State *L, int arg,
                                       const char *fname);

/* ---- resources: what a scope started must not outlive it ---- */

/* A process, socket or server that the scope which made it stops when it
** ends. The struct is the owner's (embedded in the thing it stands for);
** set `close` and leave the other fields to braid. */
typedef struct braid_resource braid_resource_t;
struct braid_resource {
  /* Stops the thing without running Lua (kill it, uv_close it); called
  ** at most once, after braid has detached the resource. */
  void (*close)(braid_resource_t *r);
  braid_resource_t *prev, *next;   /* braid's */
};

/* Attaches r to the scope the running task makes things in now: its
** innermost braid.scope, else the task's own scope (never the inner scopes
** of braid.timeout, braid.shield or a group, which a result returned from
** them outlives). Inside a task only (braid_check_task first, before the
** thing is made): outside one it raises a "usage" error. */
BRAID_API void braid_resource_add(lua_State *L, braid_resource_t *r);

/* Detaches r (its owner stopped it first); harmless when detached. */
BRAID_API void braid_resource_remove(braid_resource_t *r);

/* ---- workers (braid.worker, braid.pool) ---- */

/* The worker setup hook: runs on a worker's own thread, on its new state,
** before its chunk loads (register the application's C functions there:
** lua_register, luaL_requiref). It must be safe to call from any thread,
** several at once. */
typedef void (*braid_worker_setup_fn)(lua_State *L, void *ud);

/* How the workers E's scripts start are made. By default a worker's
** engine is made as E was (its modules, memory limit and instruction
** budget, each per worker; the safe libraries) and nothing else is
** registered in it. opts (copied; NULL keeps that default) replaces those
** options (signals and `trace` are never a worker's); setup (NULL: none)
** runs in each new worker with ud. A script's own
** braid.worker{memory_limit = n} can only lower the limit. Returns 0 or
** UV_ENOMEM. Outside tasks; applies to workers started afterwards. */
BRAID_API int braid_worker_config(braid_engine_t *E,
                                  const braid_options_t *opts,
                                  braid_worker_setup_fn setup, void *ud);

/* ---- errors ---- */

/* Pushes a new braid.Error: {kind = kind, message = the formatted text,
** code = code (a libuv error name, or NULL), traceback = ...}. Kinds
** braid uses: "io", "spawn", "timeout", "cancelled", "closed", "usage",
** "memory", "limit" (a cap such as exec's max_output: the error has the
** fields `limit` and `option`), "deadlock", "all_failed", "http" (`code`
** is then curl's error name), "json". [-0, +1, m] */
BRAID_API int braid_pusherror(lua_State *L, const char *kind,
                              const char *code, const char *fmt, ...);

/* Raises what braid_pusherror pushes. [-0, +0, v] */
BRAID_API int braid_error(lua_State *L, const char *kind, const char *code,
                          const char *fmt, ...);

/* Raises a "usage" error whose message starts with the caller's position,
** as luaL_error does. [-0, +0, v] */
BRAID_API int braid_usageerror(lua_State *L, const char *fmt, ...);

/* Raises the familiar "bad argument #arg to 'fname' (extramsg)" as a
** "usage" error; fname as the script wrote it ("app.get", "db:query",
** whose self is argument #1). [-0, +0, v] */
BRAID_API int braid_argerror(lua_State *L, int arg, const char *fname,
                             const char *extramsg);

/* The kind of the braid.Error at idx, or NULL for any other value (and
** for a braid.Error whose kind is not a string). Valid while the error's
** `kind` field is not changed. */
BRAID_API const char *braid_error_kind(lua_State *L, int idx);

/* Writes the error at idx to stderr, after `prefix`, with what braid knows
** of where it came from: the failing task and the tasks it sat in, its
** traceback, errors raised while cancelling. For a string (number,
** boolean) error that is known for the failure braid handed out last
** (braid_task_result), so report it right after. Never raises.
** [-0, +0, -] */
BRAID_API void braid_report(lua_State *L, int idx, const char *prefix);

/* ---- limits ---- */

/* Bytes the engine holds now for its scripts: its Lua state (all tasks
** together) and braid's C buffers (stream read buffers, exec's captured
** output, files being read, copies of strings being written to files),
** the sum memory_limit bounds. */
BRAID_API size_t braid_memory_used(braid_engine_t *E);

/* An application's C buffer counted as braid's own are: a charge, embedded
** zeroed in what owns the buffer. braid_charge_set makes c count `bytes`
** against E's memory_limit (charging or releasing the difference): 0, or
** UV_ENOMEM, c unchanged, when growing would pass the limit (the caller
** then fails its op, e.g. braid_resume_error or a negative return from
** start, which raises kind "memory"). While c counts bytes it keeps E's
** memory (not its Lua state) allocated, so a close callback after
** braid_close may still set it to 0; set it to 0 before freeing the
** owner. Runs no Lua code: callable from libuv callbacks, on the loop's
** thread. */
typedef struct braid_charge {
  braid_engine_t *E;
  size_t bytes;
} braid_charge_t;
BRAID_API int braid_charge_set(braid_charge_t *c, braid_engine_t *E,
                               size_t bytes);

#endif
