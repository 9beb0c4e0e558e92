# braid: build, test, run. `make run` and `make test` work on a fresh Debian
# machine: missing packages are installed first (see the deps target).

PKGS      := liblua5.4-dev lua5.4 libuv1-dev lua-busted pkg-config
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
LUA_CFLAGS = $(shell pkg-config --cflags lua5.4 libuv 2>/dev/null)
LIBS       = $(shell pkg-config --libs lua5.4 libuv 2>/dev/null) -lm
UV_LIBS    = $(shell pkg-config --libs libuv 2>/dev/null)

CORE      := loop task scope group timer error channel dump
CORE_OBJS := $(CORE:%=$(BUILD)/%.o) $(BUILD)/braid_lua.o
HEADERS   := engine/internal.h engine/braid.h

.PHONY: all deps run test bench fuzz clean

all: deps $(BUILD)/braid $(BUILD)/braid.so $(BUILD)/libbraid.a

# Installs what is missing, with apt-get (sudo when not root); elsewhere,
# says exactly what to install.
deps: $(BUILD)/.deps
$(BUILD)/.deps: Makefile
	@missing=""; for p in $(PKGS) $(EXTRA_PKGS); do \
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

$(BUILD)/braid_lua.c: lua/braid.lua tools/embed.lua $(BUILD)/.deps
	lua5.4 tools/embed.lua braid__lua_source lua/braid.lua > $@

$(BUILD)/braid_lua.o: $(BUILD)/braid_lua.c
	$(CC) $(CFLAGS) -fPIC -c $< -o $@

$(BUILD)/%.o: engine/%.c $(HEADERS) $(BUILD)/.deps
	$(CC) $(CFLAGS) $(WARN) -fPIC $(LUA_CFLAGS) -Iengine -c $< -o $@

$(BUILD)/libbraid.a: $(CORE_OBJS)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/braid: $(BUILD)/main.o $(BUILD)/libbraid.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

# The module for stock lua5.4: Lua's symbols come from the interpreter.
$(BUILD)/braid.so: $(CORE_OBJS)
	$(CC) $(LDFLAGS) -shared -o $@ $^ $(UV_LIBS) -lm

run: all
	$(RUN_ENV) $(BUILD)/braid examples/demo.lua

test: all
	@BUILD=$(BUILD) $(SAN_ENV) RUN_ENV="$(RUN_ENV)" spec/run

# The cancellation fuzzer over FUZZ_SEEDS seeds from FUZZ_FIRST; braid's own
# reports of errors raised while cancelling go to $(BUILD)/fuzz.stderr.
FUZZ_SEEDS ?= 2000
FUZZ_FIRST ?= 1
fuzz: all
	$(SAN_ENV) LUA_CPATH='$(BUILD)/?.so;;' lua5.4 tools/fuzz.lua $(FUZZ_FIRST) $(FUZZ_SEEDS) 2>$(BUILD)/fuzz.stderr \
	  || { tail -5 $(BUILD)/fuzz.stderr; exit 1; }

bench: all
	BUILD=$(BUILD) bench/run

clean:
	rm -rf build
