-- braid.lua: the Lua side of the braid module. The C core passes in its
-- table; this file adds what is best said in Lua, composing C primitives.
-- Nothing here may be needed for cancellation or fail-fast to hold: those
-- live in C.
local M <const> = ...

local Error <const> = M.Error
local getmetatable, type = getmetatable, type

local function kind_is(kind)
  return function(e)
    return type(e) == "table" and getmetatable(e) == Error and e.kind == kind
  end
end

-- braid.is_timeout(e) -> boolean: e is braid's "timeout" error.
M.is_timeout = kind_is("timeout")

-- braid.is_cancelled(e) -> boolean: e is braid's "cancelled" error.
M.is_cancelled = kind_is("cancelled")

-- braid.is_error(e) -> boolean: e is any braid.Error.
function M.is_error(e)
  return type(e) == "table" and getmetatable(e) == Error
end

M.version = "0.1.0"

local pack, unpack, rawequal = table.pack, table.unpack, rawequal
local setmetatable, pcall, error = setmetatable, pcall, error

-- A usage error raised from the Lua side, naming the function.
local function usage(fmt, ...)
  error(Error.new{kind = "usage", message = fmt:format(...)}, 0)
end

-- braid.move_on(seconds, fn, ...) -> true, results... | false: fn(...)
-- under a deadline, as braid.timeout, except that the deadline passing is
-- an answer, not an error: false when it cut fn short. Errors of fn (a
-- timeout of its own included) and a cancellation from outside are raised
-- unchanged. Usage errors name braid.move_on.
do
  -- Records what fn's body raised, without catching it: a timeout error
  -- that comes out of braid.timeout and is not that one is move_on's own.
  local Witness <const> = {__close = function(w, e) w.raised = e end}
  local timeout = M.timeout

  function M.move_on(seconds, fn, ...)
    if type(seconds) ~= "number" or seconds ~= seconds then
      usage("bad argument #1 to 'braid.move_on' (number expected (seconds), "
            .. "got %s)", seconds ~= seconds and "NaN" or type(seconds))
    end
    if type(fn) ~= "function" then
      usage("bad argument #2 to 'braid.move_on' (function expected, got %s)",
            type(fn))
    end
    local w <const> = setmetatable({}, Witness)
    local function body(...)
      local _ <close> = w
      w.entered = true
      return fn(...)
    end
    local r = pack(pcall(timeout, seconds, body, ...))
    if r[1] then return true, unpack(r, 2, r.n) end
    local e = r[2]
    if not w.entered and M.is_error(e) and e.kind == "usage" then
      -- braid.timeout's own refusal (outside a task, cannot suspend here):
      -- said in move_on's name.
      usage("%s", (e.message:gsub("braid%.timeout", "braid.move_on")))
    end
    if M.is_timeout(e) and not rawequal(e, w.raised) then return false end
    error(e, 0)
  end
end

-- braid.condition([lock]) -> condition: tasks wait on it, holding the
-- lock, until another task holding it notifies them. cond:wait() releases
-- the lock while it waits and holds it again when it returns, also when
-- the wait raises (cancellation included); cond:notify([n = 1]) wakes the
-- n longest waiting tasks, cond:notify_all() every one; cond.lock is the
-- lock (a new braid.lock() when none is given). Calling any of them
-- without holding the lock is a usage error.
do
  local Condition <const> = {}
  Condition.__index = Condition
  Condition.__name = "braid.Condition"
  setmetatable(Condition, {__index = function(_, k)   -- as braid's classes
    if type(k) == "string" and k:sub(1, 1) ~= "_" then
      usage("braid.Condition has no method '%s' (it has wait, notify, "
            .. "notify_all and the field lock)", k)
    end
  end})

  local function check(c, fname)
    if getmetatable(c) ~= Condition then
      usage("bad argument #1 to '%s' (braid.Condition expected, got %s)",
            fname, type(c))
    end
    if not c.lock:owned() then
      usage("%s: the condition's lock is not held by this task", fname)
    end
  end

  local function wake(c, n)
    local ws = c._waiters
    for _ = 1, math.min(n, #ws) do
      table.remove(ws, 1):set()
    end
  end

  function Condition:wait()
    check(self, "condition:wait")
    local ev, ws, lock = M.event(), self._waiters, self.lock
    ws[#ws + 1] = ev
    lock:release()
    local ok, e = pcall(ev.wait, ev)
    M.shield(lock.acquire, lock)     -- held again whatever happened
    if not ok then
      for i = 1, #ws do
        if ws[i] == ev then table.remove(ws, i) break end
      end
      -- A notification that reached this waiter as it was cancelled goes
      -- to the next one rather than being lost.
      if ev:is_set() then wake(self, 1) end
      error(e, 0)
    end
  end

  function Condition:notify(n)
    check(self, "condition:notify")
    if n ~= nil and (math.type(n) ~= "integer" or n < 0) then
      usage("bad argument #2 to 'condition:notify' (non-negative integer "
            .. "expected, got %s)", tostring(n))
    end
    wake(self, n or 1)
  end

  function Condition:notify_all()
    check(self, "condition:notify_all")
    wake(self, #self._waiters)
  end

  function M.condition(lock)
    if lock == nil then
      lock = M.lock()
    elseif getmetatable(lock) ~= "braid.Lock" then
      usage("bad argument #1 to 'braid.condition' (braid.Lock expected, got "
            .. "%s)", type(lock))
    end
    return setmetatable({lock = lock, _waiters = {}}, Condition)
  end
end

-- braid.tcp.listen(host, ...) takes a host name too: it is resolved
-- (braid.dns.resolve: cancellable, under the caller's deadlines) and the
-- server listens on its first address. Addresses go straight to C (a tail
-- call, so that reports name the script's listen call).
if rawget(M, "tcp") and rawget(M, "dns") then
  local listen, resolve = M.tcp.listen, M.dns.resolve
  M.tcp.listen = function(host, port, ...)
    if type(host) == "string" and host ~= "localhost" and
       host:find("^%w[%w%-%.]*$") and not host:find("^[%d.]+$") then
      local ok, r = pcall(resolve, host)
      if not ok then
        if M.is_error(r) and r.kind == "io" then
          error(Error.new{kind = "io", code = r.code, host = host,
                          message = ("braid.tcp.listen %s: %s"):format(
                            host, (r.message:gsub("^braid%.dns%.resolve [^:]*: ", "")))}, 0)
        end
        error(r, 0)
      end
      host = r[1]
    end
    return listen(host, port, ...)
  end
end
