/*
** prim.h: the one internal interface of the core, for what braid.h cannot
** express. Primitives (engine/io/) and front ends (engine/cli/) include
** braid.h and this file, never core.h: tasks, scopes and the engine stay
** opaque to them, so they cannot read E->, t-> or scope fields. The layer
** check (tools/layers.sh, part of make test) holds them to it.
**
** What is here and why it is not public: helpers for building Lua objects
** the way braid's own are built, a server's handler tasks (spawned into
** the scope the server belongs to, watched so that closing the server
** cancels them), Ctrl-C interception (script signal waiters, the REPL),
** the REPL's session hooks, and the library openers the library list
** (engine/init.c) calls.
*/
#ifndef BRAID_PRIM_H
#define BRAID_PRIM_H

#include "lua.h"
#include "lauxlib.h"
#include "braid.h"

#define container_of(ptr, type, field) \
  ((type *) ((char *) (ptr) - offsetof(type, field)))

/* An intrusive doubly-linked list; an empty list points at itself, and so
** does a removed node, so removing twice is harmless. */
struct braid_list {
  struct braid_list *prev, *next;
};

void braid__list_init(struct braid_list *l);
void braid__list_push(struct braid_list *head, struct braid_list *node);
void braid__list_remove(struct braid_list *node);
#define braid__list_empty(l) ((l)->next == (l))

/* An on/off switch from the environment (BRAID_ARENA): 1 for "1", "on",
** "yes", "true", 0 for "0", "off", "no", "false" (any case); unset or
** empty is dflt, and so is anything else, after one warning line on
** stderr naming the variable and the value. Read once per process:
** *cache starts at -1 (where the answer is kept). */
int braid__env_flag(const char *name, int dflt, int *cache);

/* ---- building Lua objects ---- */

/* Makes the metatable `name` with the metamethods `meta` (or NULL) and
** `methods` found through __index: directly, or through `index` (a
** function with the methods table as its upvalue) for objects that also
** have fields. Pushes the methods table. [-0, +1, m] */
void braid__class(lua_State *L, const char *name, const luaL_Reg *meta,
                  const luaL_Reg *methods, lua_CFunction index);

/* Makes the table at idx (braid, braid.fs) explain a name it lacks:
** reading one raises the usage error "<name> has no field 'sleap' (did
** you mean 'sleep'?)", except for the names in the table at the stack
** top (popped), which read as nil: modules a sandbox leaves out, so that
** `if braid.fs then` keeps working. Names starting with "_" read as nil.
** braid__class does the same for methods ("braid.Channel has no method
** 'sned'"). [-1, +0, m] */
void braid__strict_fields(lua_State *L, int idx, const char *name);

/* Adds _metatable to the table at the stack top: braid.lua's raw
** getmetatable, for its classes hidden behind __metatable. [-0, +0, m] */
void braid__open_metatable(lua_State *L);

/* For a braid__class `index` function (methods table: upvalue 1) when the
** key at 2 is neither a method nor a field: raises "<what> has no field
** or method 'nmae' (did you mean 'name'?)", suggesting from the methods
** and `fields` (NULL-terminated). Keys that are not strings and names
** starting with "_" read as nil (pushed; returns 1). Only on a miss:
** found keys keep their fast path. */
int braid__index_missing(lua_State *L, const char *what,
                         const char *const *fields);

/* Argument checks naming the function as the script wrote it (fname:
** "braid.fs.read_file", "channel:send"; a method's self is argument #1),
** raising Lua's familiar "bad argument #idx to 'fname' (... expected, got
** ...)" as a usage error. braid__check_object returns the userdata at idx
** when its metatable is `tname` ("braid.Channel"); braid__check_integer
** accepts what lua_tointegerx does. */
void *braid__check_object(lua_State *L, int idx, const char *tname,
                          const char *fname);
void braid__check_type(lua_State *L, int idx, int type, const char *fname);
lua_Integer braid__check_integer(lua_State *L, int idx, const char *fname);
/* The string (or number) at idx as C reads it, or NULL for another value
** or a string with a zero byte inside (C would cut it short there). */
const char *braid__cstring(lua_State *L, int idx);

/* Raises a usage error unless the value at idx is nil, none or a plain
** table whose keys are all in `allowed` (NULL-terminated). */
void braid__check_options(lua_State *L, int idx, const char *fname,
                          const char *const *allowed);

/* opts[key] (opts at idx) as a non-negative number, or def when absent:
** counts (a backlog, a line limit), not durations. */
double braid__opt_number(lua_State *L, int idx, const char *key, double def,
                         const char *fname);

/* opts[key] (opts at idx: nil or a table) as a duration in nanoseconds, or
** def when absent: the one reading of every duration option (grace,
** timeout, kill_grace), checked as braid_check_seconds checks an argument.
** A number of seconds is required and NaN is refused (a usage error "bad
** option 'key' to 'fname' (...)"); a negative number is 0; about 292 years
** or more (math.huge) is BRAID_NEVER, which a caller leaves unarmed.
** [-0, +0, v] */
uint64_t braid__opt_seconds(lua_State *L, int idx, const char *key,
                            uint64_t def, const char *fname);

/* Is the value at idx callable (a function, or has __call)? */
int braid__is_callable(lua_State *L, int idx);
/* The name of the value's type as Lua's messages give it: an object's
** __name ("braid.SharedChannel") where it has one. [-0, +1, m] */
const char *braid__type_name(lua_State *L, int idx);
/* x:write(s, ...): the strings or numbers from index 2 on, joined into one
** string at 2 (as Lua's file:write writes every argument), or a usage
** error naming fname. */
void braid__write_args(lua_State *L, const char *fname);

/* Pushes a new table with weak keys. [-0, +1, m] */
void braid__push_weak_table(lua_State *L);

/* Pushes tostring(value at idx), never raising; returns it. [-0, +1, m] */
const char *braid__tostring(lua_State *L, int idx);
/* Pushes a string or number as itself, anything else as its type name:
** for usage errors about a script's value, running none of its code. */
const char *braid__describe(lua_State *L, int idx);

/* Calls f(ud) on the engine's scheduler thread under lua_pcall: for libuv
** callbacks that must run Lua code (spawn a task, cancel one). An error
** there (out of memory with the reserve spent) is fatal. */
void braid__engine_call(braid_engine_t *E, lua_CFunction f, void *ud);

/* Releases a registry reference from a libuv callback (no lua_State at
** hand); LUA_NOREF is ignored. */
void braid__unref(braid_engine_t *E, int ref);

/* Seconds as nanoseconds for braid_timer_start, the conversion behind
** braid_check_seconds: NaN and negatives are 0, ~292 years or more
** BRAID_NEVER (a plain cast overflows). */
uint64_t braid__ns(double seconds);

/* ---- out of memory ---- */

/* braid's own C heap: malloc, calloc and realloc, counted so that tests
** can make the Nth fail (tests/fault_test.c --c-heap). A failure is
** reported as a braid.Error of kind "memory" naming the function
** ("braid.fs.read_file: not enough memory"): raised at once in the
** calling task, or, from a callback, handed to the op (which ends with
** UV_ENOMEM) so that its continuation raises it (memory.c). */
void *braid__malloc(size_t n);
char *braid__strdup(const char *s);   /* braid__malloc's copy of s */
void *braid__calloc(size_t n, size_t size);
void *braid__realloc(void *p, size_t n);
extern size_t braid__cheap_count, braid__cheap_fail;

/* braid's C buffers and the memory limit (memory.c). Bytes braid holds in
** C for a script (stream read buffers, exec's captured output, a file
** being read, the copy of a string being written to a file) count in
** braid_memory_used beside the Lua state's, and an embedded engine's
** memory_limit bounds the sum. braid__mem_charge adds delta bytes (a
** negative delta releases): 0, or UV_ENOMEM when growth would pass the
** limit even after Lua's emergency collection, which a refusal runs (no
** finalizers: safe in callbacks; docs/internals.md) (nothing is counted
** then; the call the buffer works for fails with kind "memory"). A
** release never fails. Unlike the state's own
** allocations a charge is refused also outside tasks; braid's bookkeeping
** (tasks, scopes, timers, requests) is not charged, so it is never
** refused. */
int braid__mem_charge(braid_engine_t *E, ptrdiff_t delta);

/* A buffer's charge, embedded zeroed in what owns the buffer: the bytes
** it counts, and, while they are not 0, a reference that keeps E's memory
** allocated (not its Lua state), since a buffer may be freed by a libuv
** callback after braid_close. braid__charge_set makes c count `bytes`
** (charging or releasing the difference): 0, or UV_ENOMEM with c
** unchanged. Set it to 0 before freeing the buffer's owner; harmless when
** it counts nothing. Runs no Lua: callbacks may call it. (struct
** braid_charge is braid.h's: braid_charge_set is this, for applications.) */
int braid__charge_set(struct braid_charge *c, braid_engine_t *E,
                      size_t bytes);

/* A message between threads (io/xcopy.c: a shared channel's value, a
** worker call's arguments, results or error) counts against its sender's
** memory limit until it is freed, on whatever thread. braid__xcharge,
** on E's thread, charges n bytes to E: 0 and *acct (a reference to hand
** to braid__xcharge_back with the same n when the message is freed), or
** UV_ENOMEM with nothing charged (over the limit, or out of memory).
** braid__xcharge_back may be called on any thread, after E is gone too
** (NULL: nothing); E's thread takes the bytes off its count lazily (before
** it judges the limit, and in braid_memory_used). */
struct braid_xacct;
int braid__xcharge(braid_engine_t *E, size_t n, struct braid_xacct **acct);
void braid__xcharge_back(struct braid_xacct *a, size_t n);

/* Caps on what one call may buffer (exec's max_output, read_file's
** max_size, a stream's max_line). braid__opt_limit reads opts[key] (opts
** at idx) as a number of bytes: def when absent, a usage error unless a
** non-negative number, and BRAID_NO_LIMIT from 2^63 on (math.huge
** lifts the cap). braid__push_limit_error pushes the error for going over
** one: kind "limit", the formatted message (which names the cap and the
** option), and the fields `limit` (bytes) and `option` (its name).
** [-0, +1, m] */
#define BRAID_NO_LIMIT (SIZE_MAX / 2)
size_t braid__opt_limit(lua_State *L, int idx, const char *key, size_t def,
                        const char *fname);
void braid__push_limit_error(lua_State *L, size_t limit, const char *option,
                             const char *fmt, ...);

/* Opens /dev/null on whichever of fds 0-2 the process lacks, before a loop
** is made (libuv aborts when it closes a loop fd numbered 0-2). */
void braid__stdio_fill(void);
/* uv_loop_init for a loop braid makes (braid.run, braid_open without a
** loop, a worker's thread), after braid__stdio_fill. */
int braid__loop_init(uv_loop_t *loop);

/* libuv's name ("ENOENT") and message for the error code rc; for an errno
** that libuv 1.44 does not know (ENOEXEC, EBADMSG...) the C library's,
** never libuv's "Unknown system error -8". Thread-safe (workers). */
const char *braid__errname(int rc);
const char *braid__strerror(int rc);

/* Raises the error for libuv code rc from the function fname: kind
** "memory" ("fname: not enough memory") for UV_ENOMEM, else kind "io"
** with the code ("fname: <libuv's message>"). [-0, +0, v] */
int braid__error_uv(lua_State *L, int rc, const char *fname);

/* Makes room in the timer heap for one more timer, so that arming it
** next cannot fail: 0, or UV_ENOMEM (raise it, naming the function). */
int braid__timer_reserve(braid_engine_t *E);

/* ---- tasks and scopes, opaque ---- */

typedef struct braid_scope braid_scope_t;

/* The scope the running task makes things in now, as braid_resource_add
** uses it: its innermost task scope or braid.scope (not the bookkeeping
** scopes of timeout, shield or a group), or, with `shields`, a braid.shield
** scope too: a server's handlers must not be born into the cancellation a
** shield keeps out. Inside a task only. */
braid_scope_t *braid__scope_here(lua_State *L, int shields);

/* The engine's top scope: what is in it lasts until braid.run ends (an
** embedded engine's: until braid_close). */
braid_scope_t *braid__scope_top(braid_engine_t *E);

/* Makes r a resource of scope s (from braid__scope_here). */
void braid__scope_resource_add(braid_scope_t *s, braid_resource_t *r);

/* Does s still take new members (not cancelled, not ended)? */
int braid__scope_open(braid_scope_t *s);

/* Starts the callable at fidx with the nargs values after it as a task,
** a member of `into`; pushes the task object. [-0, +1, m] */
braid_task_t *braid__spawn(lua_State *L, braid_scope_t *into, int fidx,
                           int nargs);

/* Where task t was spawned, for reports, when no Lua call of the script
** spawned it (a server's handler, spawned from a callback): the file of
** the function at fidx and line (as the script's call that asked for it:
** where braid.tcp.listen was called), or fidx 0 for a place braid cannot
** name (left out of reports). [-0, +0, -] */
void braid__task_set_site(lua_State *L, braid_task_t *t, int fidx,
                          int line);

/* Makes r a resource of task t's own scope (a connection's stream belongs
** to its handler). */
void braid__task_resource_add(braid_task_t *t, braid_resource_t *r);

/* A watcher is told, once, when a task ends. */
struct braid_watch {
  struct braid_list link;
  void (*done)(struct braid_watch *w, braid_task_t *t);
};

void braid__task_watch(braid_task_t *t, struct braid_watch *w);

/* Cancels task t with the value at `reason` on L (0: none, L may then be
** NULL); nothing when it has ended or was cancelled. */
void braid__task_cancel(braid_task_t *t, lua_State *L, int reason);

/* The task object at idx, or a "bad argument" error naming fname. */
braid_task_t *braid__task_check(lua_State *L, int idx, const char *fname);

/* Pushes the object of a live task. [-0, +1, -] */
void braid__task_push(lua_State *L, braid_task_t *t);

uint64_t braid__task_id(braid_task_t *t);
int braid__task_cancelled(braid_task_t *t);

/* Ends a cancelled task now: its to-be-closed variables run, it ends
** "cancelled" without waiting for the rest of its grace period. Runs in
** scheduler context (braid__engine_call). When the running task is t or
** one of its members (an interceptor run by the interrupt hook), that
** one cannot be reset from under itself: it only unwinds from its next
** instruction on, and t is abandoned when the scheduler has it back (of
** two such requests, the outer task, which takes the inner with it). The
** report on stderr says `why` (NULL: the grace period has passed). */
void braid__task_abandon(braid_task_t *t);
void braid__task_abandon_as(braid_task_t *t, const char *why);

/* ---- Ctrl-C ---- */

/* An interceptor is asked, newest first, before an interrupt (Ctrl-C,
** SIGTERM, SIGHUP, braid_interrupt as SIGINT) does its default (cancel
** the root task; a second one exits): fn returns 1 when it handled the
** signal `signum`. Runs no Lua. */
struct braid_interceptor {
  struct braid_list link;
  int (*fn)(struct braid_interceptor *ic, int signum);
  /* A script's waiter for this stop signal (0: none, the REPL's): while
  ** one is there, that signal never makes the handler itself leave when
  ** the main thread is stuck in C: the script decides what it means. */
  int signum;
  braid_engine_t *E;           /* set while added */
};

void braid__intercept_add(braid_engine_t *E, struct braid_interceptor *ic);
void braid__intercept_remove(struct braid_interceptor *ic);

/* The signal that interrupted the run (SIGINT, SIGTERM, SIGHUP), or 0. */
int braid__engine_interrupted(braid_engine_t *E);

/* Does the engine take signum itself (through its interceptors)? A script's
** waiter for it is then an interceptor rather than a watcher of its own. */
int braid__engine_watches(braid_engine_t *E, int signum);

/* ---- another thread asking a state to poll (io/worker.c) ---- */

/* Callable from any thread while L is alive: the thread L (a task's, or
** the main one) stops at its next Lua instruction, on its own OS thread,
** and calls its state's poll function (nothing if none), then, inside a
** task, raises the task's cancellation if the poll cancelled it. How a
** worker reaches Lua code that never returns to its loop, as Ctrl-C does
** (core/hook.c). braid__hook_poll_set pops a function and makes it the
** poll function of L's state. [-1, +0, m] */
void braid__hook_poll_set(lua_State *L);
void braid__hook_poll(lua_State *L);

/* The options an engine like E's is made with (braid_new's): its
** modules, memory limit and instruction budget, the safe libraries for an
** embedded engine (all for the runner's), no signals. What a worker's
** engine starts from (io/worker.c, core/threads.c). */
void braid__engine_options(braid_engine_t *E, braid_options_t *out);

/* Whether E's scripts may load Lua files by path, as loadfile does: the
** runner's and the module's always, an embedded engine's only when opened
** with BRAID_LIB_IO. braid.worker's file form asks (io/worker.c). */
int braid__engine_files(braid_engine_t *E);

/* Sets the grace period E's cancelled tasks get before they are abandoned
** (5 s by default; BRAID_NEVER: none). For a worker's engine. */
void braid__engine_set_grace(braid_engine_t *E, uint64_t ns);

/* From now on *slot holds the coroutine running Lua code in E (a task's,
** or a coroutine of the script's resumed inside one), NULL between them.
** When a coroutine stops, E's thread replaces it in *slot and then waits
** while *busy is set, before the coroutine can end, be collected or be
** reused. So one other thread may set *busy, read *slot, braid__hook_poll
** what it found and clear *busy (all seq_cst but the clear): how a
** worker's owner reaches a task that spins in Lua code without being a
** call's own task (a task the call spawned). For a worker's engine, on
** its thread, before it runs any Lua; slot and busy outlive E. */
void braid__engine_publish(braid_engine_t *E, lua_State *_Atomic *slot,
                           _Atomic int *busy);
/* ---- state a primitive keeps on the engine's loop ---- */

/* A primitive's state that lives on the engine's loop across tasks (the
** HTTP client's libcurl multi handle, its timer and socket watchers): made
** on first use and registered under `key` (the address of a static of the
** primitive's). When braid detaches from the loop (braid.run ends,
** braid_close) detach(u) runs once, before braid's own handles close: it
** must uv_close every handle it has, so that the loop closes cleanly, and
** must not run Lua. The user is unlinked first; the next use on a new
** loop registers a new one. */
struct braid_loop_user {
  struct braid_list link;
  const void *key;
  void (*detach)(struct braid_loop_user *u);
};

void braid__loop_user_add(braid_engine_t *E, struct braid_loop_user *u);

/* The user registered under key on E's current loop, or NULL. */
struct braid_loop_user *braid__loop_user_find(braid_engine_t *E,
                                              const void *key);
/* ---- leaving at once ---- */

/* An exit hook runs when braid leaves without unwinding (a second Ctrl-C,
** os.exit where it cannot wait): work that cannot wait, such as writing
** the trace. The hooks of every engine in the
** process are on one list under a mutex (a worker's children die with
** the process too): leaving runs the leaving engine's hooks and every
** other engine's hook marked any_thread, which runs on the leaving
** thread while its own engine's thread runs on, so it may read only what
** was set before it was added or what is atomic. A hook is initialised
** with braid__list_init(&h->link) and removes itself with
** braid__exit_hook_remove before its memory goes (harmless when it was
** never added or was removed already); braid_close removes the engine's
** remaining ones. */
struct braid_exit_hook {
  struct braid_list link;
  void (*fn)(struct braid_exit_hook *h);
  braid_engine_t *E;           /* set by braid__exit_hook_add */
  unsigned char any_thread;    /* set before adding it */
};

void braid__exit_hook_add(braid_engine_t *E, struct braid_exit_hook *h);
void braid__exit_hook_remove(struct braid_exit_hook *h);
void braid__exit_hooks_run(braid_engine_t *E);

/* An I/O error found once the run's tasks have ended, which no task can
** be given any more (stdout's pump failed writing the last bytes to a
** file): braid.run raises it (libuv code rc, "fname: message", kind "io")
** unless the root failed; the first one is kept. An embedded engine only
** drops it. */
void braid__run_late_error(braid_engine_t *E, int rc, const char *fname);

/* SIGPIPE (io/stream.c's handler; async-signal-safe): when braid's stdout
** has lost its reader, braid.run is cancelled as by a signal (exit 141),
** and with no run the process dies of SIGPIPE as stock lua does; any
** other broken pipe is left to the writer's EPIPE (interrupt.c). */
void braid__interrupt_pipe(void);

/* Whom to SIGKILL at any hard exit, also from the signal handler that
** leaves while the main thread is stuck in C (interrupt.c), where no lock
** may be taken: a slot holds kill(2)'s target (a child's pid, or its
** group's as -pgid; 0: nobody), stored atomically by its owner on any
** thread. Every slot's target is killed, whichever engine took it; a slot
** is given back (its target 0) before the owner forgets it. */
struct braid_kill_slot {
  _Atomic int target;
  _Atomic unsigned char used;
};

struct braid_kill_slot *braid__kill_slot_take(void);   /* NULL: no memory */
void braid__kill_slot_give(struct braid_kill_slot *s);

/* ---- the REPL's session (cli/repl.c) ---- */

/* While a session is set, the root task's scope judges its members with
** `failed` instead of failing fast (a background task's failure is
** reported, the session goes on: the error is at idx on S), and the
** running entry (braid__session_entry) is the task a deadlock or running
** out of memory fails, and the one whose top-level braid.spawn calls
** start tasks in the session (the root's scope) rather than its own. */
struct braid_session {
  void (*failed)(lua_State *S, braid_task_t *t, int idx);
};

void braid__session_set(braid_engine_t *E, struct braid_session *session);
void braid__session_entry(braid_engine_t *E, braid_task_t *entry);

/* Cancels the session's tasks (the root scope's members) with the reason
** at idx; returns how many were live. */
int braid__session_cancel(lua_State *L, int idx);

/* ---- the terminal while the REPL shows its prompt (core/term.c) ---- */

/* hide clears the prompt and the partly typed line, returning 1 when it
** did (then show must follow, once the output is written). The REPL sets
** it while it runs; NULL: none. */
struct braid_term_guard {
  int (*hide)(void);
  void (*show)(int at_line_start);
};
void braid__term_guard(const struct braid_term_guard *g);
int braid__term_hide(void);
void braid__term_show(int at_line_start);

/* The progress line (io/progress.c sets these when braid opens) that the
** core's groups draw with {progress = ...}: start pushes a progress object
** (its owner anchors it) and returns it; update gives the members running
** now and the ones that ended since, ok and failed; end clears it. */
struct braid_progress_ops {
  void *(*start)(lua_State *L, const char *label, double total);
  void (*update)(void *p, int running, int ok, int failed);
  void (*end)(void *p);
};
void braid__progress_ops(const struct braid_progress_ops *ops);
const struct braid_progress_ops *braid__progress(void);
/* braid --progress: groups whose options do not say draw one. */
void braid__progress_default(int on);
int braid__progress_by_default(void);

/* ---- the library openers (engine/init.c lists them) ---- */

/* Each adds its functions to the braid table at the stack top. */
void braid__open_engine(lua_State *L);
void braid__open_task(lua_State *L);
void braid__open_scope(lua_State *L);
void braid__open_group(lua_State *L);
void braid__open_timer(lua_State *L);
void braid__open_channel(lua_State *L);
void braid__open_sync(lua_State *L);
void braid__open_select(lua_State *L);
void braid__open_dump(lua_State *L);
void braid__open_error(lua_State *L);
void braid__open_sleep(lua_State *L);
void braid__open_ticker(lua_State *L);
void braid__open_clock(lua_State *L);
void braid__open_process(lua_State *L);
void braid__open_fs(lua_State *L);
void braid__open_tcp(lua_State *L);
void braid__open_unix(lua_State *L);
void braid__open_udp(lua_State *L);
void braid__open_dns(lua_State *L);
void braid__open_signal(lua_State *L);
void braid__open_progress(lua_State *L);
void braid__open_worker(lua_State *L);
void braid__open_http(lua_State *L);
void braid__open_stdio(lua_State *L);
void braid__open_json(lua_State *L);

/* Opens the core in L (the engine, the scheduler's thread, braid's
** coroutine library) and pushes an empty braid table. [-0, +1, e] */
void braid__open_core(lua_State *L);

/* The BRAID_MOD_* modules the engine of L may open (all but in a
** sandboxed embedded engine). */
unsigned braid__engine_modules(lua_State *L);

#endif
