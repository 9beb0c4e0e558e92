-- spec/runner_args_spec.lua: the runner's command line as the stock lua
-- command takes it (engine/cli/main.c): many script arguments, -e chunks
-- (glued or not) that change the globals the runner's own glue would use,
-- LUA_INIT. Every run is bounded by coreutils `timeout`.
local h = require "helper"

local BIN = assert(os.getenv("BRAID_BIN"), "BRAID_BIN is not set (run spec/run)")
local RUN_ENV = os.getenv("BRAID_RUN_ENV") or ""

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- run(args, [env], [stdin]) -> stdout, stderr, code of `env braid args`.
local function run(args, env, stdin)
  local cmd = RUN_ENV .. " " .. (env or "") .. " timeout 60 " .. q(BIN) .. " " .. args
  if stdin then
    local p = h.script(stdin)
    local o, e, c = h.sh(cmd .. " <" .. q(p))
    os.remove(p)
    return o, e, c
  end
  return h.sh(cmd .. " </dev/null")
end

-- "1 2 ... n"
local function numbers(n)
  local t = {}
  for i = 1, n do t[i] = tostring(i) end
  return table.concat(t, " ")
end

local COUNT = 'print(select("#", ...), #arg, arg[#arg], (select(select("#", ...), ...)))\n'

describe("script arguments", function()
  it("takes 5000 of them in arg and in ... (they overran the C stack's 20 slots from 80 on)", function()
    local p = h.script(COUNT)
    local out, err, code = run(q(p) .. " " .. numbers(5000))
    os.remove(p)
    assert.are.equal(0, code, err)
    assert.are.equal("5000\t5000\t5000\t5000\n", out)
  end)

  it("takes 100 of them for a script read from standard input ('-')", function()
    local out, err, code = run("- " .. numbers(100), nil, COUNT)
    assert.are.equal(0, code, err)
    assert.are.equal("100\t100\t100\t100\n", out)
  end)

  it("keeps them as given: empty strings, spaces, and none", function()
    local p = h.script('print(select("#", ...), #arg, ("[%s]"):rep(select("#", ...)):format(...))')
    local out, err, code = run(q(p) .. " '' 'a b' ''")
    assert.are.equal(0, code, err)
    assert.are.equal("3\t3\t[][a b][]\n", out)
    out, err, code = run(q(p))
    os.remove(p)
    assert.are.equal(0, code, err)
    assert.are.equal("0\t0\t\n", out)
  end)
end)

describe("-e chunks", function()
  it("may replace table and braid: the script still runs with its arguments", function()
    local p = h.script('print(type(table), type(braid), ...)')
    local out, err, code = run("-e 'table = {}' -e 'braid = nil' " .. q(p) .. " x y")
    os.remove(p)
    assert.are.equal(0, code, err)
    assert.are.equal("table\tnil\tx\ty\n", out)
  end)

  it("are taken glued to -e ('-estat'), as lua takes them, in order with the others", function()
    local out, err, code = run("'-eprint(1)' -e 'print(2)' '-eprint(3, ...)'")
    assert.are.equal(0, code, err)
    assert.are.equal("1\n2\n3\n", out)
  end)

  it("still need their stat after a lone -e", function()
    local _, err, code = run("-e")
    assert.are.equal(2, code)
    assert.matches("'-e' needs an argument", err, 1, true)
  end)
end)

describe("LUA_INIT", function()
  it("runs before the -e chunks, in the root task, with braid usable", function()
    local out, err, code = run("-e 'print(x)'",
      "LUA_INIT='braid.sleep(0.01) x = braid.current().name print(\"init\")'")
    assert.are.equal(0, code, err)
    assert.are.equal("init\n(command line)\n", out)
  end)

  it("is LUA_INIT_5_4 when that is set, as for lua5.4", function()
    local out, err, code = run("-e 'print(1)'", "LUA_INIT_5_4='print(54)' LUA_INIT='print(0)'")
    assert.are.equal(0, code, err)
    assert.are.equal("54\n1\n", out)
  end)

  it("runs the file named after '@', before a script that gets its arguments", function()
    local init = h.script('print("from file", select("#", ...))')
    local p = h.script('print("script", ...)')
    local out, err, code = run(q(p) .. " a b", "LUA_INIT=" .. q("@" .. init))
    os.remove(init)
    os.remove(p)
    assert.are.equal(0, code, err)
    assert.are.equal("from file\t0\nscript\ta\tb\n", out)
  end)

  it("fails like a chunk: exit 1 with the place, before anything else runs", function()
    local out, err, code = run("-e 'print(1)'", "LUA_INIT='error(\"boom\")'")
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.matches("^braid: LUA_INIT:1: boom\n", err)
    out, err, code = run("-e 'print(1)'", "LUA_INIT='x ='")
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.matches("^braid: LUA_INIT:1: unexpected symbol near <eof>\n", err)
    out, err, code = run("-e 'print(1)'", "LUA_INIT=@/nonexistent/init.lua")
    assert.are.equal(1, code)
    assert.are.equal("", out)
    assert.matches("^braid: cannot open /nonexistent/init.lua", err)
  end)
end)
