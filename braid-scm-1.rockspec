-- braid-scm-1.rockspec: `luarocks --lua-version 5.4 make` from a checkout
-- builds the module (braid.so) and the runner (bin/braid) against the
-- system's libuv and installs them into the rock tree.
rockspec_format = "3.0"
package = "braid"
version = "scm-1"
source = {
  url = "git+https://example.invalid/braid.git",
}
description = {
  summary = "Structured concurrency for Lua 5.4 on libuv: gather, timeouts, cancellation",
  detailed = [[
    braid runs Lua coroutines as tasks on a libuv loop: scopes in which
    nothing outlives its parent, fail-fast gather/race/any/map, timeouts and
    cancellation enforced in C, processes, files, TCP, DNS and signals, all
    cancellable.
  ]],
  license = "MIT",
}
-- braid.json is braid's own codec (engine/io/json.c); `braid trace` uses
-- lua-cjson when it is installed and its own decoder otherwise.
dependencies = {
  "lua >= 5.4, < 5.5",
}
external_dependencies = {
  LIBUV = { header = "uv.h", library = "uv" },
  LIBCURL = { library = "curl" },   -- its header is multiarch on Debian
}
build = {
  type = "make",
  build_target = "all",
  build_variables = {
    CFLAGS = "$(CFLAGS)",
  },
  install_target = "rock-install",
  install_variables = {
    INST_LIBDIR = "$(LIBDIR)",
    INST_BINDIR = "$(BINDIR)",
  },
}
