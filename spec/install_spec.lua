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
    -- and the directories it made (bin, lib/..., share/man/man1): PREFIX stays
    assert.are.equal("", h.sh("find " .. p .. " -mindepth 1"))
    os.execute("rm -rf " .. p)
  end)

  it("uninstall leaves a directory that holds something else, and PREFIX", function()
    local p = tmpdir()
    assert(os.execute("mkdir -p " .. p .. "/lib " .. p .. "/share/man/man1 && touch " ..
                      p .. "/lib/other " .. p .. "/share/man/man1/other.1"))
    local _, err, code = h.sh("make -s install PREFIX=" .. p .. san)
    assert.are.equal(0, code, err)
    _, err, code = h.sh("make -s uninstall PREFIX=" .. p .. san)
    assert.are.equal(0, code, err)
    assert.are.equal("./lib/other\n./share/man/man1/other.1\n", files_under(p))
    assert.are.equal(p .. "\n" .. p .. "/lib\n" .. p .. "/lib/other\n" .. p .. "/share\n" ..
                     p .. "/share/man\n" .. p .. "/share/man/man1\n" .. p ..
                     "/share/man/man1/other.1\n", h.sh("find " .. p .. " | sort"))
    os.execute("rm -rf " .. p)
  end)

  it("puts the module under PREFIX/lib/lua/5.4 when lua5.4.pc has no INSTALL_CMOD (staged with DESTDIR)", function()
    -- a lua5.4.pc without Debian's INSTALL_* variables, as a self-built Lua's
    local pcdir, stage = tmpdir(), tmpdir()
    assert(os.execute("grep -v INSTALL_ \"$(pkg-config --variable=pcfiledir lua5.4)/lua5.4.pc\" > " ..
                      pcdir .. "/lua5.4.pc"))
    local env = "PKG_CONFIG_PATH=" .. pcdir .. " PKG_CONFIG_LIBDIR=" .. pcdir ..
                ":$(pkg-config --variable pc_path pkg-config) "
    assert.are.equal("\n", h.sh(env .. "pkg-config --variable=INSTALL_CMOD lua5.4"))
    local _, err, code = h.sh(env .. "make -s install DESTDIR=" .. stage .. " PREFIX=/usr" .. san)
    assert.are.equal(0, code, err)
    local files = files_under(stage)
    assert.truthy(files:find("\n./usr/lib/lua/5.4/braid.so\n", 1, true), files)
    assert.falsy(files:find("^./braid.so\n") or files:find("\n./braid.so\n"), files)
    _, err, code = h.sh(env .. "make -s uninstall DESTDIR=" .. stage .. " PREFIX=/usr" .. san)
    assert.are.equal(0, code, err)
    assert.are.equal(stage .. "\n" .. stage .. "/usr\n", h.sh("find " .. stage .. " | sort"))
    os.execute("rm -rf " .. pcdir .. " " .. stage)
  end)

  it("runs ldconfig on uninstall where install runs it (root, /usr or /usr/local, not staged)", function()
    for _, target in ipairs{"install", "uninstall"} do
      local out = h.sh("make -n " .. target .. " PREFIX=/usr/local" .. san)
      assert.truthy(out:find("ldconfig", 1, true), target)
    end
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
  it("shows examples that run", function()
    -- each .nf block of EXAMPLES, as a shell script, with this build's braid,
    -- in a fresh directory (examples/ being the sources')
    local src = assert(h.slurp("docs/braid.1"))
    local section = assert(src:match("\n%.SH EXAMPLES\n(.-)\n%.SH "))
    local root = h.sh("pwd"):gsub("\n$", "")
    local bin = assert(os.getenv("BRAID_BIN"))
    local run_env = os.getenv("BRAID_RUN_ENV") or ""
    local n = 0
    for block in section:gmatch("\n%.nf\n(.-)\n%.fi") do
      n = n + 1
      local cmd = block:gsub("\\%-", "-")
                       :gsub("%f[%w]braid ", function() return run_env .. " '" .. bin .. "' " end)
                       :gsub("examples/", root .. "/examples/")
      local dir = tmpdir()
      local out, err, code = h.sh("cd " .. dir .. " && timeout 60 sh -c " ..
                                  "'" .. cmd:gsub("'", "'\\''") .. "'")
      os.execute("rm -rf " .. dir)
      assert.are.equal(0, code, block .. "\n" .. err)
      assert.are.equal("", err, block)
      assert.truthy(#out > 0, block)
      if block:find("3600", 1, true) then assert.are.equal("10800.0\n", out) end
    end
    assert.are.equal(3, n)
  end)

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
