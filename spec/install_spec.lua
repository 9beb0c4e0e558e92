-- spec/install_spec.lua: braid installed as a user installs it (issue 16):
-- `make install` into a temporary prefix, each piece used from there (the
-- module from stock lua5.4 with that prefix's standard path, the runner, a
-- C program built with pkg-config), `make uninstall` removing exactly that,
-- and `luarocks make` into a temporary tree. Also the man page, checked by
-- groff for warnings.
local h = require "helper"

local build = os.getenv("BUILD") or "build"
local san = build:find("san") and " SANITIZE=1" or ""

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. d))
  return d
end

local function files_under(dir)
  local out = h.sh("cd " .. dir .. " && find . -type f -o -type l | sort")
  return out
end

describe("make install", function()
  it("installs the module, the runner, the embedding kit and the man page; uninstall removes them", function()
    local p = tmpdir()
    local _, err, code = h.sh("make -s install PREFIX=" .. p .. san)
    assert.are.equal(0, code, err)
    local cmod = h.sh("pkg-config --define-variable=prefix=" .. p ..
                      " --variable=INSTALL_CMOD lua5.4"):gsub("%s+$", "")
    -- the module, from stock lua5.4, with only that prefix's standard path
    local out
    out, err, code = h.sh("LUA_CPATH='" .. cmod .. "/?.so' LUA_PATH='' lua5.4 -e " ..
      "'local b = require \"braid\" print(b.run(function() b.sleep(0.01) return \"module ok\" end))'")
    assert.are.equal(0, code, err)
    assert.are.equal("module ok\n", out)
    -- the runner
    out, err, code = h.sh(p .. "/bin/braid -e 'print(\"runner ok\")'")
    assert.are.equal(0, code, err)
    assert.are.equal("runner ok\n", out)
    -- an embedding program, built with pkg-config (rpath: a non-system prefix)
    local pc = "PKG_CONFIG_PATH=" .. p .. "/lib/pkgconfig"
    out, err, code = h.sh(pc .. " cc -o " .. p .. "/app examples/embed/app.c $(" .. pc ..
      " pkg-config --cflags --libs braid) -Wl,-rpath," .. p .. "/lib && " .. p .. "/app")
    assert.are.equal(0, code, err)
    assert.truthy(out:find("loop closed cleanly", 1, true) or err:find("loop closed cleanly", 1, true), out .. err)
    os.remove(p .. "/app")
    -- the man page
    assert.truthy(files_under(p):find("share/man/man1/braid.1", 1, true))
    _, err, code = h.sh("make -s uninstall PREFIX=" .. p .. san)
    assert.are.equal(0, code, err)
    assert.are.equal("", files_under(p))
    os.execute("rm -rf " .. p)
  end)
end)

describe("the rockspec", function()
  it("builds with `luarocks --lua-version 5.4 make` into a tree whose module works", function()
    local tree = tmpdir()
    local _, err, code = h.sh("luarocks --lua-version 5.4 make --tree " .. tree ..
                              " braid-scm-1.rockspec")
    assert.are.equal(0, code, err)
    local out
    out, err, code = h.sh("LUA_CPATH='" .. tree .. "/lib/lua/5.4/?.so' lua5.4 -e " ..
      "'local b = require \"braid\" print(b.run(function() return b.gather(function() return 1 end) end))'")
    assert.are.equal(0, code, err)
    assert.are.equal("1\n", out)
    os.execute("rm -rf " .. tree)
  end)
end)

describe("braid.1", function()
  it("formats without warnings", function()
    -- env -u LD_PRELOAD: the sanitizer build preloads ASan, which troff trips
    local _, err, code = h.sh("env -u LD_PRELOAD groff -man -z -ww docs/braid.1")
    assert.are.equal(0, code, err)
    assert.are.equal("", err)
  end)
end)

describe("braid -v", function()
  it("prints the version and then runs the script, as lua -v does", function()
    local script = h.script("print('ran', ...)")
    local out, err, code = h.braid("-v " .. script .. " a b")
    os.remove(script)
    assert.are.equal(0, code, err)
    assert.truthy(out:find("^braid %d+%.%d+%.%d+"), out)
    assert.truthy(out:find("ran\ta\tb\n", 1, true), out)
  end)
end)
