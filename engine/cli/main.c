/*
** main.c: the braid command: runs a script (or -e chunks, or stdin) as the
** root task, following the stock lua command's conventions; with -i, or
** with a terminal on stdin and nothing to run, the REPL (repl.c).
**
** Exit status: 0 when the root task returns, 1 when it fails (the error and
** where it came from go to stderr), 2 for usage errors, 130 after Ctrl-C
** (143 SIGTERM, 129 SIGHUP), 141 once stdout's reader has gone.
*/
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "lualib.h"
#include "core/prim.h"
#include "cli/repl.h"

/* as lua.c names them */
#define LUA_INIT_VAR        "LUA_INIT"
#define LUA_INITVARVERSION  LUA_INIT_VAR LUA_VERSUFFIX

static const char usage_text[] =
  "usage: braid [options] [script [args]]\n"
  "       braid trace FILE [--svg OUT.svg]   (summarise a --trace file)\n"
  "Runs a Lua 5.4 script as braid's root task: it ends when the script and\n"
  "every task it started have ended. With no script and a terminal on stdin\n"
  "(or with -i), starts the REPL: each entry runs as a task.\n"
  "Options:\n"
  "  -e stat          run the string 'stat' (may be repeated)\n"
  "  -i               enter the REPL after running the script and -e chunks\n"
  "  -v, --version    print the version (then run what else is asked for)\n"
  "  -h, --help       print this help and exit\n"
  "  --grace S        seconds cancelled tasks get for cleanup (default 5)\n"
  "  --virtual-time   run on a virtual clock (sleeps take no real time)\n"
  "  --progress       braid.gather, map, race and any draw a progress line\n"
  "  --trace FILE     record an execution trace (Chrome trace-event JSON,\n"
  "                   for ui.perfetto.dev; `braid trace FILE` summarises)\n"
  "  --               stop handling options\n"
  "  -                run standard input\n"
  "Exit status: 0 ok, 1 the script failed (or its cleanup after a signal),\n"
  "2 usage error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129\n"
  "hung up (SIGHUP), 141 stdout's reader has gone (as SIGPIPE ends lua).\n";

extern const char braid__trace_source[];   /* lua/trace.lua, compiled in */

/* braid trace FILE [--svg OUT]: reads a trace (lua/trace.lua). */
static int trace_command (int argc, char **argv) {
  lua_State *L = luaL_newstate();
  int i, code = 1;
  if (L == NULL) {
    fprintf(stderr, "braid trace: not enough memory\n");
    return 1;
  }
  luaL_openlibs(L);
  if (luaL_loadbuffer(L, braid__trace_source, strlen(braid__trace_source),
                      "=[braid trace]") == LUA_OK &&
      lua_pcall(L, 0, 1, 0) == LUA_OK) {
    for (i = 0; i < argc; i++) lua_pushstring(L, argv[i]);
    if (lua_pcall(L, argc, 1, 0) == LUA_OK) code = (int) lua_tointeger(L, -1);
  }
  if (lua_type(L, -1) == LUA_TSTRING)
    fprintf(stderr, "braid trace: %s\n", lua_tostring(L, -1));
  lua_close(L);
  return code;
}

static int usage (const char *fmt, const char *what) {
  fprintf(stderr, "braid: ");
  fprintf(stderr, fmt, what);
  fprintf(stderr, "\n%s", usage_text);
  return 2;
}

/* The root task's body, every chunk in order as one function: it names
** the task after what it runs (the script, "stdin", or "(command line)"
** for -e alone; the REPL names itself "repl"), then runs LUA_INIT, the -e
** chunks, then the script with its arguments. What it uses is taken here,
** before any of those chunks runs: they may replace `braid` or `table`. */
static const char root_source[] =
  "local chunks, n, args = ...\n"
  "local current = braid.current\n"
  "return function()\n"
  "  current().name = chunks.name\n"
  "  for i = 1, n - 1 do chunks[i]() end\n"
  "  return chunks[n](args())\n"
  "end\n";

/* Whether the error at idx is EPIPE: after stdout's reader went, a write
** to it that raised before the stop came is that stop, not a failure. */
static int is_epipe (lua_State *L, int idx) {
  int r;
  lua_getfield(L, idx, "code");
  r = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "EPIPE") == 0;
  lua_pop(L, 1);
  return r;
}

/* args() -> the script's arguments (upvalue 1, a sequence), as lua.c
** pushes them: on a stack grown for them, or "too many script arguments". */
static int script_args (lua_State *L) {
  int k, n = (int) lua_rawlen(L, lua_upvalueindex(1));
  luaL_checkstack(L, n + 3, "too many script arguments");
  for (k = 1; k <= n; k++) lua_rawgeti(L, lua_upvalueindex(1), k);
  return n;
}

/* LUA_INIT_5_4, else LUA_INIT, as lua.c reads it (NULL: neither is set),
** and the chunk name for it. */
static const char *luainit (const char **name) {
  const char *init = getenv(LUA_INITVARVERSION);
  *name = "=" LUA_INITVARVERSION;
  if (init == NULL) {
    init = getenv(LUA_INIT_VAR);
    *name = "=" LUA_INIT_VAR;
  }
  return init;
}

/* LUA_INIT loaded: "@file" names a file to run, anything else is a chunk.
** Loaded onto the stack (or an error message, returning non-zero); pushes
** nothing when neither variable is set. */
static int load_luainit (lua_State *L, int *loaded) {
  const char *name, *init = luainit(&name);
  *loaded = init != NULL;
  if (init == NULL) return LUA_OK;
  if (init[0] == '@') return luaL_loadfile(L, init + 1);
  return luaL_loadbuffer(L, init, strlen(init), name);
}

/* What the command line asks for. */
typedef struct Options {
  int script, from_stdin;   /* argv index of the script, or of "-" */
  int interactive, version, progress, virtual_time;
  int nstats;               /* the -e chunks: stats[0 .. nstats-1] */
  const char **stats;
  double grace;
  const char *trace;
} Options;

/* Reads the options before the script: -1 to go on (o filled in, argv
** index of what follows them in *next), or the exit status. */
static int parse_options (int argc, char **argv, Options *o, int *next) {
  int i;
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) { i++; break; }
    if (strcmp(a, "-") == 0) { o->from_stdin = i; break; }
    if (a[0] != '-') break;
    if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      /* as lua -v: the version, then whatever else was asked for */
      printf("braid %s (%s, libuv %s)\n", BRAID_VERSION, LUA_RELEASE,
             uv_version_string());
      fflush(stdout);
      o->version = 1;
      continue;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(usage_text, stdout);
      return 0;
    }
    if (a[1] == 'e') {   /* "-e stat", or "-estat" as lua.c takes it */
      if (a[2] == '\0' && ++i == argc)
        return usage("'%s' needs an argument", a);
      o->stats[o->nstats++] = a[2] == '\0' ? argv[i] : a + 2;
    } else if (strcmp(a, "--grace") == 0) {
      char *end;
      if (++i == argc) return usage("'%s' needs an argument", a);
      o->grace = strtod(argv[i], &end);
      if (*end || end == argv[i] || !(o->grace >= 0))
        return usage("--grace wants a number of seconds, not '%s'", argv[i]);
    } else if (strcmp(a, "--trace") == 0) {
      if (++i == argc) return usage("'%s' needs an argument", a);
      o->trace = argv[i];
    } else if (strcmp(a, "--progress") == 0) {
      o->progress = 1;
    } else if (strcmp(a, "--virtual-time") == 0) {
      o->virtual_time = 1;
    } else if (strcmp(a, "-i") == 0) {
      o->interactive = 1;
    } else {
      return usage("unrecognized option '%s'", a);
    }
  }
  *next = i;
  return -1;
}

int main (int argc, char **argv) {
  lua_State *L;
  int i = 0, nchunks, status, code, base, sig, init;
  const char *what;
  Options o = {0};
  braid__stdio_fill();   /* before anything may open an fd */
  if (argc >= 2 && strcmp(argv[1], "trace") == 0)   /* ./trace runs a file */
    return trace_command(argc - 2, argv + 2);
  o.grace = 5;
  o.stats = malloc(argc * sizeof *o.stats);
  if (o.stats == NULL) {
    fprintf(stderr, "braid: not enough memory\n");
    return 1;
  }
  code = parse_options(argc, argv, &o, &i);
  if (code >= 0) {
    free(o.stats);
    return code;
  }
  {
    const char *name;
    init = luainit(&name) != NULL;
  }
  if (o.from_stdin) ;
  else if (i < argc) o.script = i;
  else if (o.nstats == 0 && !o.interactive) {
    if (o.version) {   /* lua -v runs LUA_INIT, then nothing */
      if (!init) {
        free(o.stats);
        return 0;
      }
    } else if (isatty(0)) o.interactive = 1;
    else o.from_stdin = argc;   /* no "-" on the command line */
  }
  base = o.script ? o.script
                  : (o.from_stdin && o.from_stdin < argc ? o.from_stdin : 0);

  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "braid: cannot create a Lua state: not enough memory\n");
    free(o.stats);
    return 1;
  }
  luaL_openlibs(L);
  luaL_requiref(L, "braid", luaopen_braid, 1);
  braid__progress_default(o.progress);   /* groups read it (prim.h) */
  lua_pop(L, 1);

  /* arg: the script at 0, its arguments from 1, the command line before. */
  lua_createtable(L, argc, 1);
  for (int k = 0; k < argc; k++) {
    lua_pushstring(L, argv[k]);
    lua_rawseti(L, -2, k - base);
  }
  lua_setglobal(L, "arg");

  /* Load every chunk first: a script that does not compile never starts. */
  lua_newtable(L);                                       /* 1: chunks */
  nchunks = 0;
  if (load_luainit(L, &init) != LUA_OK) goto load_failed;
  if (init) lua_rawseti(L, 1, ++nchunks);
  for (int k = 0; k < o.nstats; k++) {
    if (luaL_loadbuffer(L, o.stats[k], strlen(o.stats[k]), "=(command line)"))
      goto load_failed;
    lua_rawseti(L, 1, ++nchunks);
  }
  free(o.stats);
  o.stats = NULL;
  if (o.script || o.from_stdin) {
    if (luaL_loadfile(L, o.script ? argv[o.script] : NULL)) goto load_failed;
    lua_rawseti(L, 1, ++nchunks);
  }
  if (nchunks > 0) {
    int nargs = base ? argc - base - 1 : 0;
    lua_pushstring(L, o.script ? argv[o.script]
                               : o.from_stdin ? "stdin" : "(command line)");
    lua_setfield(L, 1, "name");
    luaL_loadbuffer(L, root_source, sizeof root_source - 1, "=[braid main]");
    lua_pushvalue(L, 1);
    lua_pushinteger(L, nchunks);
    /* the main chunk gets the script's arguments as ... (none without a
    ** script: the last chunk is then an -e chunk or LUA_INIT) */
    lua_createtable(L, nargs, 0);
    for (int k = 0; k < nargs; k++) {
      lua_pushstring(L, argv[base + 1 + k]);
      lua_rawseti(L, -2, k + 1);
    }
    lua_pushcclosure(L, script_args, 1);
    lua_call(L, 3, 1);                                   /* 2: root */
  } else {
    lua_pushnil(L);
  }
  if (o.interactive) braid__repl_push(L);   /* the chunks run first */

  lua_getglobal(L, "braid");
  lua_getfield(L, -1, "run");                            /* braid.run */
  lua_pushvalue(L, 2);
  lua_createtable(L, 0, 3);
  lua_pushnumber(L, o.grace);
  lua_setfield(L, -2, "grace");
  lua_pushstring(L, o.virtual_time ? "virtual" : "real");
  lua_setfield(L, -2, "clock");
  if (o.trace) {
    lua_pushstring(L, o.trace);
    lua_setfield(L, -2, "trace");
  }
  status = lua_pcall(L, 2, 0, 0);
  sig = braid__engine_interrupted(braid_engine(L));
  what = sig == SIGTERM ? "terminated" : sig == SIGHUP ? "hung up"
       : sig == SIGPIPE ? NULL : "interrupted";   /* stdout gone: quiet */
  code = sig ? 128 + sig : 0;   /* 130, 143, 129, 141: as the shell's */
  if (sig && status == LUA_OK && what) fprintf(stderr, "braid: %s\n", what);
  if (status != LUA_OK) {
    const char *kind = braid_error_kind(L, -1);
    if (sig && kind && (strcmp(kind, "cancelled") == 0 ||
                        (sig == SIGPIPE && is_epipe(L, -1)))) {
      if (what) fprintf(stderr, "braid: %s\n", what);
    } else {
      braid_report(L, -1, "braid: ");
      code = 1;
    }
  }
  lua_close(L);
  return code;

load_failed:   /* LUA_INIT, an -e chunk or the script does not compile */
  fprintf(stderr, "braid: %s\n", lua_tostring(L, -1));
  lua_close(L);
  free(o.stats);
  return 1;
}
