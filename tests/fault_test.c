/*
** fault_test.c: allocation fault injection. Runs tests/fault_workflow.lua
** (one braid.run using every primitive) in a lua_State whose allocator
** fails exactly the Nth growing allocation, for N = 1 .. the count of a
** clean run (or a sample of them), each in a forked child so that a crash
** or a hang is caught. Each run must succeed or raise an error saying "not
** enough memory"; after lua_close no byte may be left allocated and no
** descriptor open. Prints TAP lines ("ok N - ...") that spec/run counts.
**
** With --c-heap the Lua state's allocations never fail; instead braid's
** own C heap (timers, requests, waiters: braid__malloc and friends in
** engine/core/memory.c) fails exactly its Nth allocation, for N = 1 ..
** the count of a clean run: each such failure must end the same way (a
** "memory" error, or a run that succeeds), never an abort.
**
**   fault_test [--only N] [--from A] [--to B] [--step K] [--samples M]
**              [--jobs J] [--timeout S] [--relief BYTES] [--verbose]
**              [--c-heap] [--direct]   (with --only: no fork, for a debugger)
*/
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>
#include "lua.h"
#include "lauxlib.h"
#include "lualib.h"

#define WORKFLOW "tests/fault_workflow.lua"
#define MEM "not enough memory"

LUA_API int luaopen_braid (lua_State *L);

/* engine/core/memory.c: braid's C-heap allocations so far, and the one
** that fails (0: none). */
extern size_t braid__cheap_count, braid__cheap_fail;
static int cheap;   /* --c-heap: fail braid's C heap, not Lua's */

/* ---- the child: one run with allocation `fail_at` failing ---- */

static size_t live, count, fail_at, relief = 48 * 1024, freed;
static int exhausted;

/* Memory runs out at the fail_at-th growing allocation: it fails, and so
** does every growing allocation after it until `relief` bytes have been
** freed (0: just the one). A single failure alone tests little: Lua
** collects and retries, and the retry would succeed. */
static void *fault_alloc (void *ud, void *ptr, size_t osize, size_t nsize) {
  size_t old = ptr ? osize : 0;
  void *p;
  (void) ud;
  if (nsize < old) freed += old - nsize;
  if (nsize == 0) {
    free(ptr);
    live -= old;
    return NULL;
  }
  if (nsize > old) {
    if (++count == fail_at) {
      exhausted = 1;
      freed = 0;
      return NULL;
    }
    if (exhausted && freed < relief) return NULL;
    exhausted = 0;
  }
  p = realloc(ptr, nsize);
  if (p) live = live - old + nsize;
  return p;
}

static int panic (lua_State *L) {
  printf("lua panic: %s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
  fflush(stdout);
  _exit(5);
}

static int l_kill (lua_State *L) {
  (void) L;
  kill(getpid(), SIGUSR1);
  return 0;
}

/* [dir as a light userdata] -> the workflow's results: libraries, braid,
** the script. Everything that allocates runs in here, protected. */
static int run_workflow (lua_State *L) {
  lua_pushstring(L, (const char *) lua_touserdata(L, 1));
  lua_replace(L, 1);
  luaL_openlibs(L);
  luaL_requiref(L, "braid", luaopen_braid, 0);
  lua_pop(L, 1);
  if (luaL_loadfile(L, WORKFLOW) != LUA_OK) return lua_error(L);
  lua_pushvalue(L, 1);
  lua_pushcfunction(L, l_kill);
  lua_call(L, 2, 1);
  return 1;
}

/* The number of open descriptors; `show` prints each one's target. */
static int count_fds (int show) {
  DIR *d = opendir("/proc/self/fd");
  struct dirent *e;
  char path[300], target[256];
  int n = 0;
  if (d == NULL) return -1;
  while ((e = readdir(d)) != NULL) {
    ssize_t len;
    if (e->d_name[0] == '.') continue;
    n++;
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    if (show && (len = readlink(path, target, sizeof target - 1)) > 0)
      printf("  fd %s: %.*s\n", e->d_name, (int) len, target);
  }
  closedir(d);
  return n;
}

/* Exit status: 0 the run succeeded, 1 it raised the memory error, 2 it
** raised something else, 3 memory or descriptors were left behind. */
static int child_run (const char *dir) {
  uv_loop_t loop;
  lua_State *L;
  int status, fds, rc = 0;
  /* libuv's process-wide signal pipe is made once, by the first loop: make
  ** it before counting descriptors. */
  uv_loop_init(&loop);
  uv_loop_close(&loop);
  fds = count_fds(0);
  L = lua_newstate(fault_alloc, NULL);
  if (L == NULL) {
    printf("lua_newstate: " MEM "\n");
    return 1;
  }
  lua_atpanic(L, panic);
  lua_pushcfunction(L, run_workflow);
  lua_pushlightuserdata(L, (void *) dir);
  status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_OK) {
    printf("result: %s\n", lua_tostring(L, -1) ? lua_tostring(L, -1) : "?");
  } else {
    const char *msg = NULL, *kind = NULL;
    if (lua_type(L, -1) == LUA_TTABLE) {   /* a braid.Error: no metamethods */
      lua_pushliteral(L, "kind");
      lua_rawget(L, -2);
      kind = lua_tostring(L, -1);
      lua_pushliteral(L, "message");
      lua_rawget(L, -3);
    }
    msg = lua_tostring(L, -1);
    printf("error: %s%s%s%s\n", msg ? msg : "(not a string)",
           kind ? " (kind " : "", kind ? kind : "", kind ? ")" : "");
    rc = msg && strstr(msg, MEM) ? 1 : 2;
    /* braid's own allocations fail one way: a braid.Error of kind
    ** "memory" (Lua's may be its own "not enough memory" string). */
    if (cheap && (kind == NULL || strcmp(kind, "memory") != 0)) rc = 2;
  }
  lua_close(L);
  if (live != 0) {
    printf("leak: %zu bytes left allocated after lua_close\n", live);
    rc = 3;
  }
  if (count_fds(0) != fds) {
    printf("leak: %d descriptors open before, %d after:\n", fds, count_fds(0));
    count_fds(1);
    rc = 3;
  }
  printf("allocations: %zu\n", cheap ? braid__cheap_count : count);
  fflush(stdout);
  return rc;
}

/* ---- the parent: forks the runs, judges them ---- */

static int timeout_s = 10, verbose;

struct slot {
  pid_t pid;
  size_t n;
  FILE *out;
  char dir[64];
};

static void rm_dir (const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  char path[512];
  if (d == NULL) return;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    unlink(path);
  }
  closedir(d);
  rmdir(dir);
}

static void slot_start (struct slot *s, size_t n) {
  s->n = n;
  s->out = tmpfile();
  snprintf(s->dir, sizeof s->dir, "/tmp/braid-fault-XXXXXX");
  if (s->out == NULL || mkdtemp(s->dir) == NULL) {
    perror("fault_test");
    exit(1);
  }
  fflush(stdout);
  s->pid = fork();
  if (s->pid < 0) {
    perror("fork");
    exit(1);
  }
  if (s->pid == 0) {
    dup2(fileno(s->out), 1);
    dup2(fileno(s->out), 2);
    alarm((unsigned) timeout_s);   /* a hang ends in SIGALRM */
    if (cheap) braid__cheap_fail = n;
    else fail_at = n;
    exit(child_run(s->dir));
  }
}

/* Prints the TAP line for the run in s; returns 1 when it passed. The
** clean run (n 0) also gives the number of allocations in *total. */
static int slot_judge (struct slot *s, int wstatus, size_t *total) {
  static const char *const what[] = {
    "succeeded", "raised " MEM, "raised another error",
    "left memory or descriptors behind"
  };
  char line[512], verdict[128];
  int code = WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1;
  int ok = code == 0 || (code == 1 && s->n > 0);
  if (code >= 0 && code <= 3) snprintf(verdict, sizeof verdict, "%s", what[code]);
  else if (code == 5) snprintf(verdict, sizeof verdict, "Lua panicked");
  else if (code >= 0) snprintf(verdict, sizeof verdict, "exited %d", code);
  else if (WTERMSIG(wstatus) == SIGALRM)
    snprintf(verdict, sizeof verdict, "hung (killed after %d s)", timeout_s);
  else snprintf(verdict, sizeof verdict, "crashed (%s)", strsignal(WTERMSIG(wstatus)));
  if (s->n == 0)
    printf("%sok - fault%s: the clean run %s\n", ok ? "" : "not ",
           cheap ? " (C heap)" : "", verdict);
  else
    printf("%sok %zu - fault: %sallocation %zu failing: the run %s\n",
           ok ? "" : "not ", s->n, cheap ? "braid's C-heap " : "", s->n,
           verdict);
  rewind(s->out);
  while (fgets(line, sizeof line, s->out)) {
    if (total && strncmp(line, "allocations: ", 13) == 0)
      *total = (size_t) strtoull(line + 13, NULL, 10);
    if (!ok || verbose) printf("#   %s", line);
  }
  if (!ok && s->n > 0)
    printf("#   reproduce: build/fault_test --only %zu --relief %zu%s\n", s->n,
           relief, cheap ? " --c-heap" : "");
  fclose(s->out);
  rm_dir(s->dir);
  fflush(stdout);
  return ok;
}

int main (int argc, char **argv) {
  size_t from = 1, to = 0, step = 1, samples = 0, n, total = 0;
  int i, jobs = 0, running = 0, failed = 0, status, direct = 0;
  struct slot *slots, clean;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : "0";
    if (strcmp(a, "--verbose") == 0) { verbose = 1; continue; }
    if (strcmp(a, "--direct") == 0) { direct = 1; continue; }
    if (strcmp(a, "--c-heap") == 0) { cheap = 1; continue; }
    if (strcmp(a, "--only") == 0) from = to = strtoull(v, NULL, 10);
    else if (strcmp(a, "--from") == 0) from = strtoull(v, NULL, 10);
    else if (strcmp(a, "--to") == 0) to = strtoull(v, NULL, 10);
    else if (strcmp(a, "--step") == 0) step = strtoull(v, NULL, 10);
    else if (strcmp(a, "--samples") == 0) samples = strtoull(v, NULL, 10);
    else if (strcmp(a, "--jobs") == 0) jobs = atoi(v);
    else if (strcmp(a, "--timeout") == 0) timeout_s = atoi(v);
    else if (strcmp(a, "--relief") == 0) relief = strtoull(v, NULL, 10);
    else {
      fprintf(stderr, "usage: fault_test [--only N] [--from A] [--to B] "
              "[--step K] [--samples M] [--jobs J] [--timeout S] "
              "[--relief BYTES] [--verbose] [--c-heap] [--direct]\n");
      return 2;
    }
    i++;
  }
  if (jobs <= 0) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    jobs = cpus < 1 ? 1 : cpus > 8 ? 8 : (int) cpus;
  }
  if (step == 0) step = 1;
  if (direct) {   /* --only N --direct: in this process, for a debugger */
    char dir[] = "/tmp/braid-fault-XXXXXX";
    if (mkdtemp(dir) == NULL) return 1;
    if (cheap) braid__cheap_fail = from;
    else fail_at = from;
    status = child_run(dir);
    rm_dir(dir);
    return status;
  }
  /* The clean run counts the allocations and must itself pass. */
  slot_start(&clean, 0);
  waitpid(clean.pid, &status, 0);
  if (!slot_judge(&clean, status, &total) || total == 0) return 1;
  printf("# the clean run makes %zu %sallocations\n", total,
         cheap ? "C-heap " : "");
  if (to == 0 || to > total) to = total;
  if (samples > 0 && (to - from + 1) / samples > step)
    step = (to - from + 1) / samples;
  slots = calloc((size_t) jobs, sizeof *slots);
  for (n = from; n <= to || running > 0; ) {
    if (n <= to && running < jobs) {
      for (i = 0; slots[i].pid != 0; i++) {}
      slot_start(&slots[i], n);
      running++;
      n += step;
      continue;
    }
    {
      pid_t pid = waitpid(-1, &status, 0);
      if (pid < 0) {
        if (errno == EINTR) continue;
        perror("waitpid");
        return 1;
      }
      for (i = 0; i < jobs && slots[i].pid != pid; i++) {}
      if (i == jobs) continue;
      failed += !slot_judge(&slots[i], status, NULL);
      slots[i].pid = 0;
      running--;
    }
  }
  free(slots);
  printf("# %d failed\n", failed);
  return failed > 0;
}
