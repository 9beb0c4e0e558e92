-- spec/helper.lua: shared by every spec. `run(fn)` returns an `it` body that
-- runs fn as braid's root task (braid.run itself raises when a libuv handle
-- is left open), then checks that no task is left alive.
local braid = require "braid"

local helper = {}

-- helper.run(fn, [opts]) -> function for `it`: fn runs under braid.run.
function helper.run(fn, opts)
  return function()
    braid.run(fn, opts)
  end
end

-- helper.virtual(fn): the same on the virtual clock (sleeps cost no time).
function helper.virtual(fn)
  return helper.run(fn, {clock = "virtual"})
end

-- helper.closer(counts, key) -> a to-be-closed value that counts how often
-- it was closed in counts[key].
function helper.closer(counts, key)
  return setmetatable({}, {__close = function() counts[key] = (counts[key] or 0) + 1 end})
end

-- helper.read_pid(path) -> the pid a child or grandchild wrote to path,
-- waited for (bounded, in a task).
function helper.read_pid(path)
  local t0 = braid.now()
  while braid.now() - t0 < 10 do
    local f = io.open(path)
    local pid = f and tonumber(f:read("a"))
    if f then f:close() end
    if pid then return pid end
    braid.sleep(0.01)
  end
  error("the child never wrote its pid to " .. path)
end

-- helper.proc_state(pid) -> the state letter of /proc/<pid>/stat ("S",
-- "Z", ...), nil once the process is reaped.
function helper.proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local s = f:read("a")   -- nil when it was reaped between open and read
  f:close()
  return s and s:match("%) (%a)")
end

-- helper.gone_within(pid, secs) -> true once pid is reaped (not a zombie),
-- or false and its state after secs. Waits with braid.sleep: inside a task.
function helper.gone_within(pid, secs)
  local braid = require "braid"
  local t0 = braid.now()
  while helper.proc_state(pid) do
    if braid.now() - t0 > secs then return false, helper.proc_state(pid) end
    braid.sleep(0.01)
  end
  return true
end

-- helper.tmp() -> a fresh path that does not exist yet.
function helper.tmp()
  local p = os.tmpname()
  os.remove(p)
  return p
end

-- helper.slurp(path) -> the file's contents, or nil when it cannot be read.
function helper.slurp(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- helper.sh(cmd) -> stdout, stderr, exit code of a shell command.
function helper.sh(cmd)
  local dir = helper.tmp()
  local o, e = dir .. ".out", dir .. ".err"
  local ok, _, code = os.execute(cmd .. " >" .. o .. " 2>" .. e)
  local out, err = helper.slurp(o) or "", helper.slurp(e) or ""
  os.remove(o)
  os.remove(e)
  return out, err, ok and 0 or code
end

-- helper.braid(args, [stdin]) -> stdout, stderr, exit code of build/braid.
function helper.braid(args, stdin)
  local cmd = (os.getenv("BRAID_RUN_ENV") or "") .. " " ..
              os.getenv("BRAID_BIN") .. " " .. args
  if stdin then
    local p = os.tmpname()
    local f = assert(io.open(p, "wb"))
    f:write(stdin)
    f:close()
    cmd = cmd .. " <" .. p
    local o, e, c = helper.sh(cmd)
    os.remove(p)
    return o, e, c
  end
  return helper.sh(cmd .. " </dev/null")
end

-- helper.script(src) -> path of a temporary script holding src.
function helper.script(src)
  local p = helper.tmp() .. ".lua"   -- tmpname's own file is not left behind
  local f = assert(io.open(p, "wb"))
  f:write(src)
  f:close()
  return p
end

-- helper.pty(steps, args, [env]) -> transcript, ok, status: plays the steps
-- (spec/pty_driver.py's; each a list {op, arg, secs}) against `$BRAID_BIN
-- args` on a pseudo-terminal (TERM=xterm, HOME a fresh directory, plus
-- the `env` string), bounded by `timeout 60`. The sanitizer settings of
-- BRAID_RUN_ENV apply to braid only, not to python.
function helper.pty(steps, args, env)
  local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
  local lines = {}
  for i, s in ipairs(steps) do lines[i] = table.concat(s, "\t") end
  local scenario = os.tmpname()
  local f = assert(io.open(scenario, "wb"))
  f:write(table.concat(lines, "\n"), "\n")
  f:close()
  local home = os.tmpname()
  os.remove(home)
  assert(os.execute("mkdir -p " .. q(home)))
  local cmd = "env -u LD_PRELOAD timeout 60 /usr/bin/python3 spec/pty_driver.py " ..
              q(scenario) .. " -- env HOME=" .. q(home) .. " TERM=xterm " ..
              (os.getenv("BRAID_RUN_ENV") or "") .. " " .. (env or "") .. " " ..
              q(assert(os.getenv("BRAID_BIN"))) .. " " .. args
  local out, err = helper.sh(cmd)
  os.remove(scenario)
  os.execute("rm -rf " .. q(home))
  return out .. err, out:match("\nOK\n$") ~= nil, tonumber(out:match("\nstatus=(%d+)\n"))
end

-- helper.http_server(scheme, [cert, key]) -> base URL, pid: starts the test
-- server spec/http_server.py (kill the pid in teardown).
function helper.http_server(scheme, cert, key)
  local base = os.tmpname()
  local portfile = base .. ".port"
  local cmd = "/usr/bin/python3 spec/http_server.py " .. portfile
  if cert then cmd = cmd .. " " .. cert .. " " .. key end
  local p = assert(io.popen(cmd .. " >/dev/null 2>&1 & echo $!"))
  local pid = p:read("l")
  p:close()
  os.remove(base)
  for _ = 1, 1000 do
    local f = io.open(portfile)
    if f then
      local port = f:read("n")
      f:close()
      os.remove(portfile)
      return scheme .. "://127.0.0.1:" .. port, pid
    end
    os.execute("sleep 0.01")
  end
  os.execute("kill " .. pid)
  error("the test server did not start")
end

return helper
