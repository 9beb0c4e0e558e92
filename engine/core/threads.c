/*
** threads.c: what a worker (io/worker.c) needs to know of the engine that
** starts it, so that the worker's own engine is made with the same
** sandbox: its modules, its limits, the libraries it was opened with.
*/
#include "core.h"

void braid__engine_options (braid_engine_t *E, braid_options_t *out) {
  out->modules = E->modules;
  out->memory_limit = E->mem_limit;
  out->instruction_budget = E->budget;
  out->signals = 0;   /* signals are the main thread's */
  /* braid_new keeps only whether binary chunks load: an embedded engine's
  ** worker gets the safe libraries, the runner's (or the module's) all */
  out->libs = !E->embedded ? BRAID_LIBS_ALL
            : BRAID_LIBS_SAFE | (E->binary ? BRAID_LIB_BINARY : 0);
}

int braid__engine_files (braid_engine_t *E) {
  return !E->embedded || E->files;
}

/* A worker's engine makes the coroutine running its Lua code known to the
** owner's thread (prim.h; hook.c keeps *slot up to date). */
void braid__engine_publish (braid_engine_t *E, lua_State *_Atomic *slot,
                            _Atomic int *busy) {
  E->pub_co = slot;
  E->pub_busy = busy;
}

/* The grace period of E's tasks after a cancel (braid.run's opts.grace;
** a worker's). */
void braid__engine_set_grace (braid_engine_t *E, uint64_t ns) {
  E->grace_ns = ns;   /* E->top's, and its tasks' unless they set one */
}
