# braid: build, test, run. `make run` and `make test` work on a fresh Debian
# machine: missing packages are installed first (see the deps target).

PKGS      := liblua5.4-dev lua5.4 libuv1-dev lua-busted pkg-config socat \
             librsvg2-bin luarocks groff-base
# braid.http (engine/io/http*.c); lua-cjson only speeds up `braid trace`
# (lua/trace.lua has its own decoder) and spec/trace_check.lua: braid.json
# is braid's own (engine/io/json.c)
PKGS      += libcurl4-openssl-dev lua-cjson
# the specs' helpers: Python's http.server and pty (spec/http_server.py,
# spec/pty_driver.py) and openssl for the TLS specs' certificate
PKGS      += python3 openssl
BUILD     ?= build
CC        ?= cc
CFLAGS    ?= -O2 -g
WARN      := -Wall -Wextra -Werror=implicit-function-declaration
ifeq ($(SANITIZE),1)
BUILD     := build/san
CFLAGS    := -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
             -fno-sanitize-recover=undefined
LDFLAGS   += -fsanitize=address,undefined
SAN_ENV   := LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
             ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1
RUN_ENV   := ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1
endif
# ThreadSanitizer (workers): `make SANITIZE=thread` builds into build/tsan;
# `make SANITIZE=thread test-threads` runs the worker specs under it (stock
# lua5.4 with libtsan preloaded; tools/tsan.supp lists what is not ours).
ifeq ($(SANITIZE),thread)
BUILD     := build/tsan
CFLAGS    := -O1 -g -fsanitize=thread -fno-omit-frame-pointer
LDFLAGS   += -fsanitize=thread
SAN_ENV   := LD_PRELOAD="$$($(CC) -print-file-name=libtsan.so)" \
             TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$(CURDIR)/tools/tsan.supp"
RUN_ENV   := TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/tools/tsan.supp"
endif
LUA_CFLAGS = $(shell pkg-config --cflags lua5.4 libuv libcurl 2>/dev/null)
LIBS       = $(shell pkg-config --libs lua5.4 libuv libcurl 2>/dev/null) -lm
UV_LIBS    = $(shell pkg-config --libs libuv libcurl 2>/dev/null)

# engine/: core/ (the engine, scheduler, tasks, scopes), io/ (the
# primitives), cli/ (the runner and the REPL), init.c (the library list).
CORE      := $(patsubst engine/%.c,%,$(wildcard engine/core/*.c))
IO        := $(patsubst engine/%.c,%,$(wildcard engine/io/*.c))
CORE_OBJS := $(CORE:%=$(BUILD)/%.o) $(IO:%=$(BUILD)/%.o) $(BUILD)/init.o \
             $(BUILD)/braid_lua.o
HEADERS   := engine/braid.h $(wildcard engine/*/*.h)
PREFIX    ?= /usr/local
SONAME    := libbraid.so.0
EMBED     := $(BUILD)/libbraid.so $(BUILD)/embed_test $(BUILD)/embed-app \
             $(BUILD)/fault_test $(BUILD)/slowgai.so

.PHONY: all deps run test test-threads layers bench fuzz soak faultsweep valgrind clean install \
        uninstall rock-install

all: deps $(BUILD)/braid $(BUILD)/braid.so $(BUILD)/libbraid.a $(EMBED)

# Installs what is missing, with apt-get (sudo when not root); elsewhere,
# says exactly what to install.
deps: $(BUILD)/.deps
$(BUILD)/.deps: Makefile
	@if ! command -v dpkg >/dev/null; then \
	  echo "no dpkg here: not checking for $(PKGS) (Debian names)"; \
	  mkdir -p $(BUILD); touch $@; exit 0; fi; \
	missing=""; for p in $(PKGS) $(EXTRA_PKGS); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if ! command -v apt-get >/dev/null; then \
	    echo "braid needs:$$missing (Debian package names: Lua 5.4 headers and interpreter, libuv 1.x headers, busted, pkg-config)"; exit 1; fi; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  echo "installing:$$missing"; \
	  ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || $$sudo apt-get update -qq; \
	  $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null \
	    || { $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || exit 1; \
	fi
	@mkdir -p $(BUILD) && touch $@

$(BUILD)/braid_lua.c: lua/braid.lua lua/http.lua tools/embed.lua $(BUILD)/.deps
	lua5.4 tools/embed.lua braid__lua_source lua/braid.lua lua/http.lua > $@

$(BUILD)/braid_lua.o: $(BUILD)/braid_lua.c
	$(CC) $(CFLAGS) -fPIC -c $< -o $@

$(BUILD)/%.o: engine/%.c $(HEADERS) $(BUILD)/.deps
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(WARN) -fPIC $(LUA_CFLAGS) -Iengine -c $< -o $@

$(BUILD)/libbraid.a: $(CORE_OBJS)
	rm -f $@ && ar rcs $@ $^

# The REPL (engine/cli/repl.c, lua/repl.lua) and libedit: the runner only.
PKGS      += libedit-dev
REPL_OBJS := $(BUILD)/cli/repl.o $(BUILD)/repl_lua.o
$(BUILD)/repl_lua.c: lua/repl.lua tools/embed.lua $(BUILD)/.deps
	lua5.4 tools/embed.lua braid__repl_source lua/repl.lua > $@
$(BUILD)/repl_lua.o: $(BUILD)/repl_lua.c
	$(CC) $(CFLAGS) -c $< -o $@

# `braid trace FILE` (lua/trace.lua): the runner only.
REPL_OBJS += $(BUILD)/trace_lua.o
$(BUILD)/trace_lua.c: lua/trace.lua tools/embed.lua $(BUILD)/.deps
	lua5.4 tools/embed.lua braid__trace_source lua/trace.lua > $@
$(BUILD)/trace_lua.o: $(BUILD)/trace_lua.c
	$(CC) $(CFLAGS) -c $< -o $@

$(BUILD)/braid: $(BUILD)/cli/main.o $(REPL_OBJS) $(BUILD)/libbraid.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -ledit

# The module for stock lua5.4: Lua's symbols come from the interpreter.
$(BUILD)/braid.so: $(CORE_OBJS)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(UV_LIBS) -lm

# Embedding: the shared library links Lua and libuv itself (not braid.so).
$(BUILD)/libbraid.so: $(CORE_OBJS)
	$(CC) $(LDFLAGS) -shared -Wl,-soname,$(SONAME) -o $@ $^ $(LIBS)

$(BUILD)/embed_test: tests/embed_test.c $(BUILD)/libbraid.a engine/braid.h \
                    $(BUILD)/doc_example.inc $(BUILD)/doc_thread.inc
	$(CC) $(CFLAGS) $(WARN) $(LUA_CFLAGS) -Iengine -I$(BUILD) -o $@ $< $(BUILD)/libbraid.a $(LDFLAGS) $(LIBS)

# The suspending-function example of docs/embedding.md, as the guide shows
# it: embed_test compiles and runs it (the C block defining query_start).
$(BUILD)/doc_example.inc: docs/embedding.md
	@mkdir -p $(dir $@)
	awk '/^```c/ { n = ""; next } /^```/ { if (n ~ /query_start/) \
	  { printf "%s", n; exit } n = ""; next } { n = n $$0 "\n" }' $< > $@
$(BUILD)/doc_thread.inc: docs/embedding.md
	@mkdir -p $(dir $@)
	awk '/^```c/ { n = ""; next } /^```/ { if (n ~ /job_start/) \
	  { printf "%s", n; exit } n = ""; next } { n = n $$0 "\n" }' $< > $@

# Allocation fault injection (tests/fault_test.c, tests/fault_workflow.lua).
$(BUILD)/fault_test: tests/fault_test.c $(BUILD)/libbraid.a
	$(CC) $(CFLAGS) $(WARN) $(LUA_CFLAGS) -Iengine -o $@ $< $(BUILD)/libbraid.a $(LDFLAGS) $(LIBS)

# A getaddrinfo that sleeps for names starting with "slow" (LD_PRELOAD, the
# DNS specs): plain flags, no sanitizer, so it preloads after ASan's runtime.
$(BUILD)/slowgai.so: tests/slowgai.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -shared -fPIC -o $@ $< -ldl

$(BUILD)/embed-app: examples/embed/app.c $(BUILD)/libbraid.a engine/braid.h
	$(CC) $(CFLAGS) $(WARN) $(LUA_CFLAGS) -Iengine -o $@ $< $(BUILD)/libbraid.a $(LDFLAGS) $(LIBS)

# Install: the runner, the module (where stock lua5.4 looks for C modules
# under PREFIX), the embedding header and libraries, braid.pc and braid.1.
# `make uninstall` removes exactly what this installs, and then the
# directories under PREFIX that this left empty.
# pkg-config prints an empty line (and succeeds) for a variable the .pc
# lacks (a self-built Lua's has no INSTALL_CMOD): that is the fallback too.
CMOD_DIR  = $(or $(shell pkg-config --define-variable=prefix=$(PREFIX) \
              --variable=INSTALL_CMOD lua5.4 2>/dev/null),$(PREFIX)/lib/lua/5.4)
INSTALLED = bin/braid include/braid.h lib/libbraid.a lib/$(SONAME).1.0 \
            lib/$(SONAME) lib/libbraid.so lib/pkgconfig/braid.pc \
            share/man/man1/braid.1
INST_DIRS = $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/include \
            $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/share/man/man1 \
            $(DESTDIR)$(CMOD_DIR)
# a system prefix, as root, not staged: make the soname known (or forgotten)
LDCONFIG  = if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && \
              { [ "$(PREFIX)" = /usr ] || [ "$(PREFIX)" = /usr/local ]; }; then \
              ldconfig; fi
install: all
	install -d $(INST_DIRS)
	install -m 755 $(BUILD)/braid $(DESTDIR)$(PREFIX)/bin/braid
	install -m 644 $(BUILD)/braid.so $(DESTDIR)$(CMOD_DIR)/braid.so
	install -m 644 engine/braid.h $(DESTDIR)$(PREFIX)/include/braid.h
	install -m 644 $(BUILD)/libbraid.a $(DESTDIR)$(PREFIX)/lib/libbraid.a
	install -m 755 $(BUILD)/libbraid.so $(DESTDIR)$(PREFIX)/lib/$(SONAME).1.0
	ln -sf $(SONAME).1.0 $(DESTDIR)$(PREFIX)/lib/$(SONAME)
	ln -sf $(SONAME) $(DESTDIR)$(PREFIX)/lib/libbraid.so
	sed -e 's|@PREFIX@|$(PREFIX)|' tools/braid.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/braid.pc
	install -m 644 docs/braid.1 $(DESTDIR)$(PREFIX)/share/man/man1/braid.1
	@$(LDCONFIG)

# Each directory install made, then its parents, while empty (rmdir never
# removes one that is not), up to PREFIX itself, which stays.
uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/,$(INSTALLED)) \
	  $(DESTDIR)$(CMOD_DIR)/braid.so
	@for d in $(INST_DIRS); do \
	  while case "$$d" in "$(DESTDIR)$(PREFIX)"/*) true;; *) false;; esac && \
	        [ -d "$$d" ] && rmdir "$$d" 2>/dev/null; do d=$$(dirname "$$d"); done; \
	done
	@$(LDCONFIG)

# LuaRocks (braid-scm-1.rockspec, build.type "make"): builds as `make
# all`, installs the module and the runner where the rock tree says.
rock-install: all
	install -d $(INST_LIBDIR) $(INST_BINDIR)
	install -m 644 $(BUILD)/braid.so $(INST_LIBDIR)/braid.so
	install -m 755 $(BUILD)/braid $(INST_BINDIR)/braid

run: all
	$(RUN_ENV) $(BUILD)/braid examples/demo.lua

test: all layers
	@BUILD=$(BUILD) $(SAN_ENV) RUN_ENV="$(RUN_ENV)" spec/run

# The specs of threads (workers) alone: with SANITIZE=thread, under TSan.
test-threads: all
	@BUILD=$(BUILD) BRAID_BIN=$(CURDIR)/$(BUILD)/braid LUA_CPATH="$(CURDIR)/$(BUILD)/?.so;;" \
	  LUA_PATH="$(CURDIR)/?.lua;$(CURDIR)/spec/?.lua;;" $(SAN_ENV) \
	  lua5.4 /usr/bin/busted -o TAP spec/worker_spec.lua spec/xchan_spec.lua 2>&1 | tee $(BUILD)/threads.tap; \
	p=$$(grep -c '^ok ' $(BUILD)/threads.tap); f=$$(grep -c '^not ok ' $(BUILD)/threads.tap); \
	grep -q '^1\.\.[0-9]' $(BUILD)/threads.tap || f=$$((f + 1)); \
	echo "$$p passed, $$f failed"; [ "$$f" -eq 0 ]

# The layer check: which file may include and call what (tools/layers.sh).
layers: all
	@BUILD=$(BUILD) tools/layers.sh

# The cancellation fuzzer over FUZZ_SEEDS seeds from FUZZ_FIRST; braid's own
# reports of errors raised while cancelling go to $(BUILD)/fuzz.stderr, with
# each seed's number first, so that a hang (the whole run is bounded: 2 s a
# seed) names its seed.
FUZZ_SEEDS ?= 2000
FUZZ_FIRST ?= 1
fuzz: all
	$(SAN_ENV) FUZZ_TRACE=1 LUA_CPATH='$(BUILD)/?.so;;' timeout $$((2 * $(FUZZ_SEEDS) + 60)) \
	  lua5.4 tools/fuzz.lua $(FUZZ_FIRST) $(FUZZ_SEEDS) 2>$(BUILD)/fuzz.stderr \
	  || { tail -5 $(BUILD)/fuzz.stderr; echo "fuzz: failed or hung at $$(grep '^seed' $(BUILD)/fuzz.stderr | tail -1)"; exit 1; }

# Soak: 10 rounds of 1M short-lived tasks through a channel and 100k
# concurrent sleepers, memory flat across rounds (tools/soak.lua).
soak: all
	$(RUN_ENV) $(BUILD)/braid tools/soak.lua $(SOAK_ROUNDS)

# Fault injection over every allocation of the workflow, with memory
# coming back after 48 KB, 4 KB and at once (make test runs a sample of
# FAULT_SAMPLES, default 150, at 48 KB), then over every allocation of
# braid's own C heap (make test runs them all).
faultsweep: all
	$(RUN_ENV) $(BUILD)/fault_test
	$(RUN_ENV) $(BUILD)/fault_test --relief 4096
	$(RUN_ENV) $(BUILD)/fault_test --relief 0
	$(RUN_ENV) $(BUILD)/fault_test --c-heap

# valgrind memcheck over the examples, the embedding binaries, engine cases
# and fuzzer seeds (tools/valgrind.sh); ends with one summary line.
valgrind: all
	BUILD=$(BUILD) tools/valgrind.sh

bench: all
	BUILD=$(BUILD) bench/run

clean:
	rm -rf build
