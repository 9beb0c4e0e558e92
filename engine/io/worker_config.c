/*
** worker_config.c: the application's say over the workers its engine
** makes (braid_worker_config, braid.h): their engine options and a setup
** function run in each new worker's state. Kept in the owner's registry;
** braid.worker reads it for every worker it starts (braid__wk_options).
*/
#include <string.h>
#include "io/worker.h"

static const char config_key = 'w';

struct wk_config {
  braid_options_t opts;
  int has_opts;
  braid_worker_setup_fn setup;
  void *ud;
};

/* The options and setup of a new worker of L's engine. */
void braid__wk_options (lua_State *L, struct braid_worker *w) {
  struct wk_config *cfg;
  braid__engine_options(braid_engine(L), &w->eopts);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &config_key);
  cfg = (struct wk_config *) lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (cfg == NULL) return;
  if (cfg->has_opts) {
    w->eopts = cfg->opts;
    w->eopts.signals = 0;   /* the main thread's */
    w->eopts.trace = NULL;  /* one file per engine: workers would truncate
                            ** the embedder's and race on its list */
  }
  w->setup = cfg->setup;
  w->setup_ud = cfg->ud;
}

static int wk_config_p (lua_State *L) {
  struct wk_config *in = (struct wk_config *) lua_touserdata(L, 1);
  struct wk_config *cfg;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &config_key) == LUA_TNIL) {
    cfg = (struct wk_config *) lua_newuserdatauv(L, sizeof *cfg, 0);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &config_key);
  } else {
    cfg = (struct wk_config *) lua_touserdata(L, -1);
  }
  *cfg = *in;
  return 0;
}

int braid_worker_config (braid_engine_t *E, const braid_options_t *opts,
                         braid_worker_setup_fn setup, void *ud) {
  lua_State *L = braid_state(E);
  struct wk_config in;
  memset(&in, 0, sizeof in);
  if (opts) in.opts = *opts, in.has_opts = 1;
  in.setup = setup;
  in.ud = ud;
  lua_pushcfunction(L, wk_config_p);
  lua_pushlightuserdata(L, &in);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    lua_pop(L, 1);
    return UV_ENOMEM;
  }
  return 0;
}
