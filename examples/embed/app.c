/*
** examples/embed/app.c: an application that embeds braid on its own loop.
**
** The application owns a uv_loop_t and does its own work on it (a
** heartbeat timer). It gives scripts one suspending C function,
** app.query(key), answered later from a libuv timer callback as a real
** backend would answer from a socket. It runs a workflow that gathers
** several queries under a deadline, then an untrusted script that never
** yields, which the instruction budget stops without freezing the loop.
**
** Build: make (build/embed-app). Against an installed braid:
**   cc app.c $(pkg-config --cflags --libs braid) -o app
*/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "lauxlib.h"
#include "braid.h"

/* ---- app.query(key): a suspending C function ---- */

struct query {
  uv_timer_t timer;            /* the "backend" answering later */
  braid_op_t *op;
  char key[64];
};

struct query_args {
  uv_loop_t *loop;
  const char *key;
};

static void query_closed_cb (uv_handle_t *h) {
  free(h->data);
}

/* The backend answers: "slow" keys take 5 s, others ~10 ms per letter. */
static void query_answer_cb (uv_timer_t *h) {
  struct query *q = (struct query *) h->data;
  lua_State *S = braid_op_state(q->op);
  if (strcmp(q->key, "missing") == 0) {
    lua_pushfstring(S, "no record for '%s'", q->key);
    braid_resume_error(q->op);            /* raised in the script, as is */
  } else {
    lua_pushfstring(S, "%s=%d", q->key, (int) strlen(q->key) * 7);
    braid_resume(q->op, 1);
  }
  uv_close((uv_handle_t *) &q->timer, query_closed_cb);
}

static int query_start (braid_op_t *op, void *ud) {
  struct query_args *a = (struct query_args *) ud;
  struct query *q = (struct query *) calloc(1, sizeof *q);
  uint64_t ms;
  if (q == NULL) return UV_ENOMEM;
  *(struct query **) braid_op_data(op) = q;
  q->op = op;
  snprintf(q->key, sizeof q->key, "%s", a->key);
  ms = strncmp(q->key, "slow", 4) == 0 ? 5000 : 10 * strlen(q->key);
  uv_timer_init(a->loop, &q->timer);
  q->timer.data = q;
  return uv_timer_start(&q->timer, query_answer_cb, ms, 0);
}

/* The task was cancelled (here: by the deadline): drop the request. */
static void query_cancel (braid_op_t *op) {
  struct query *q = *(struct query **) braid_op_data(op);
  printf("app: query '%s' cancelled\n", q->key);
  uv_close((uv_handle_t *) &q->timer, query_closed_cb);
}

static int l_app_query (lua_State *L) {
  struct query_args a;
  a.loop = (uv_loop_t *) lua_touserdata(L, lua_upvalueindex(1));
  a.key = luaL_checkstring(L, 1);
  return braid_suspend(L, "app.query", sizeof(struct query *), query_start,
                       query_cancel, &a);
}

/* ---- the application's own work ---- */

static int beats;
static void heartbeat_cb (uv_timer_t *h) {
  (void) h;
  beats++;
}

static const char workflow[] =
  "local function q(key) return function() return app.query(key) end end\n"
  "local r = table.pack(braid.gather(q'user', q'orders', q'missing',\n"
  "  q'slow-report', {timeout = 0.3, settle = true}))\n"
  "local out = {}\n"
  "for i = 1, r.n do\n"
  "  local o = r[i]\n"
  "  out[i] = o.ok and o.value or ('failed: ' .. tostring(o.error))\n"
  "end\n"
  "return table.concat(out, '\\n')\n";

static const char runaway[] = "local n = 0 while true do n = n + 1 end";

/* Runs the loop until the task ends; prints its outcome. */
static int finish (braid_engine_t *E, uv_loop_t *loop, braid_task_t *t,
                   const char *name) {
  lua_State *L = braid_state(E);
  int n, ok;
  while (braid_task_status(t) < BRAID_OK) uv_run(loop, UV_RUN_ONCE);
  n = braid_task_result(E, t);
  ok = lua_toboolean(L, -n);
  printf("%s %s:\n%s\n", name, ok ? "returned" : "failed",
         luaL_tolstring(L, -n + 1, NULL));
  lua_settop(L, 0);
  braid_task_release(E, t);
  return ok;
}

int main (void) {
  uv_loop_t loop;
  uv_timer_t heartbeat;
  braid_options_t opts = {0};
  braid_engine_t *E;
  braid_task_t *t;
  lua_State *L;
  int ok1, ok2;

  uv_loop_init(&loop);
  uv_timer_init(&loop, &heartbeat);
  uv_timer_start(&heartbeat, heartbeat_cb, 10, 10);

  opts.memory_limit = 16u << 20;           /* untrusted scripts: 16 MiB */
  opts.instruction_budget = 10000000;      /* per resume */
  E = braid_new(&loop, &opts);             /* safe libraries only */
  if (E == NULL) {
    fprintf(stderr, "app: cannot create the braid engine\n");
    return 1;
  }
  L = braid_state(E);
  lua_newtable(L);
  lua_pushlightuserdata(L, &loop);
  lua_pushcclosure(L, l_app_query, 1);
  lua_setfield(L, -2, "query");
  lua_setglobal(L, "app");

  if (braid_run_string(E, workflow, "=workflow", &t) != 0) {
    fprintf(stderr, "app: %s\n", lua_tostring(L, -1));
    return 1;
  }
  ok1 = finish(E, &loop, t, "workflow");

  braid_run_string(E, runaway, "=runaway", &t);
  ok2 = finish(E, &loop, t, "runaway");

  braid_close(E);                          /* braid's handles: closing */
  printf("app: heartbeat ran %s while scripts ran\n",
         beats > 5 ? "on" : "NOT");
  uv_close((uv_handle_t *) &heartbeat, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&loop) != 0) {
    fprintf(stderr, "app: handles left on the loop\n");
    return 1;
  }
  printf("app: loop closed cleanly\n");
  return ok1 && !ok2 ? 0 : 1;
}
