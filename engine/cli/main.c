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

/* Runs every chunk in order as one function: the root task's body. */
/* The root task: named after what it runs (the script, "stdin", or
** "(command line)" for -e alone; the REPL names itself "repl"), then the
** -e chunks, then the script with its arguments. */
static const char root_source[] =
  "local chunks, n = ...\n"
  "local current = braid.current\n"
  "return function()\n"
  "  current().name = chunks.name\n"
  "  for i = 1, n - 1 do chunks[i]() end\n"
  "  return chunks[n](table.unpack(chunks.args, 1, chunks.args.n))\n"
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

int main (int argc, char **argv) {
  lua_State *L;
  int i, script = 0, nchunks = 0, status, code, virtual_time = 0;
  int from_stdin = 0, base, interactive = 0, sig, version = 0, progress = 0;
  double grace = 5;
  const char *what, *trace = NULL;
  braid__stdio_fill();   /* before anything may open an fd */
  if (argc >= 2 && strcmp(argv[1], "trace") == 0)   /* ./trace runs a file */
    return trace_command(argc - 2, argv + 2);
  for (i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) { i++; break; }
    if (strcmp(a, "-") == 0) { from_stdin = i; break; }
    if (a[0] != '-') break;
    if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
      /* as lua -v: the version, then whatever else was asked for */
      printf("braid %s (%s, libuv %s)\n", BRAID_VERSION, LUA_RELEASE,
             uv_version_string());
      fflush(stdout);
      version = 1;
      continue;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      fputs(usage_text, stdout);
      return 0;
    }
    if (strcmp(a, "-e") == 0) {
      if (++i == argc) return usage("'%s' needs an argument", a);
      nchunks++;
    } else if (strcmp(a, "--grace") == 0) {
      char *end;
      if (++i == argc) return usage("'%s' needs an argument", a);
      grace = strtod(argv[i], &end);
      if (*end || end == argv[i] || !(grace >= 0))
        return usage("--grace wants a number of seconds, not '%s'", argv[i]);
    } else if (strcmp(a, "--trace") == 0) {
      if (++i == argc) return usage("'%s' needs an argument", a);
      trace = argv[i];
    } else if (strcmp(a, "--progress") == 0) {
      progress = 1;
    } else if (strcmp(a, "--virtual-time") == 0) {
      virtual_time = 1;
    } else if (strcmp(a, "-i") == 0) {
      interactive = 1;
    } else {
      return usage("unrecognized option '%s'", a);
    }
  }
  if (from_stdin) ;
  else if (i < argc) script = i;
  else if (version && nchunks == 0 && !interactive) return 0;
  else if (nchunks == 0 && !interactive) {
    if (isatty(0)) interactive = 1;
    else from_stdin = argc;   /* no "-" on the command line */
  }
  base = script ? script : (from_stdin && from_stdin < argc ? from_stdin : 0);

  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "braid: cannot create a Lua state: not enough memory\n");
    return 1;
  }
  luaL_openlibs(L);
  luaL_requiref(L, "braid", luaopen_braid, 1);
  braid__progress_default(progress);   /* groups read it (prim.h) */
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
  for (int k = 1, n = 0; k < argc && k != script && k != from_stdin; k++) {
    if (strcmp(argv[k], "--grace") == 0 || strcmp(argv[k], "--trace") == 0) {
      k++;
      continue;
    }
    if (strcmp(argv[k], "-e") != 0) continue;
    k++;
    if (luaL_loadbuffer(L, argv[k], strlen(argv[k]), "=(command line)")) {
      fprintf(stderr, "braid: %s\n", lua_tostring(L, -1));
      lua_close(L);
      return 1;
    }
    lua_rawseti(L, 1, ++n);
  }
  if (script || from_stdin) {
    what = script ? argv[script] : NULL;
    if (luaL_loadfile(L, what)) {
      fprintf(stderr, "braid: %s\n", lua_tostring(L, -1));
      lua_close(L);
      return 1;
    }
    nchunks++;
    lua_rawseti(L, 1, nchunks);
  }
  if (nchunks > 0) {
    lua_pushstring(L, script ? argv[script] : from_stdin ? "stdin"
                                                         : "(command line)");
    lua_setfield(L, 1, "name");
    luaL_loadbuffer(L, root_source, sizeof root_source - 1, "=[braid main]");
    lua_pushvalue(L, 1);
    lua_pushinteger(L, nchunks);
    lua_call(L, 2, 1);                                   /* 2: root */
  } else {
    lua_pushnil(L);
  }
  if (interactive) braid__repl_push(L);   /* the chunks run first */

  lua_getglobal(L, "braid");
  lua_getfield(L, -1, "run");                            /* braid.run */
  lua_pushvalue(L, 2);
  lua_createtable(L, 0, 2);
  lua_pushnumber(L, grace);
  lua_setfield(L, -2, "grace");
  lua_pushstring(L, virtual_time ? "virtual" : "real");
  lua_setfield(L, -2, "clock");
  if (trace) {
    lua_pushstring(L, trace);
    lua_setfield(L, -2, "trace");
  }
  {
    /* the main chunk gets the script's arguments as ... */
    int nargs = base ? argc - base - 1 : 0;
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "pack");
    lua_remove(L, -2);
    for (int k = 0; k < nargs; k++) lua_pushstring(L, argv[base + 1 + k]);
    lua_call(L, nargs, 1);
    lua_setfield(L, 1, "args");
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
}
