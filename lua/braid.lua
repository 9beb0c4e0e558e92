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

-- Pools of workers. braid.worker (io/worker.c) owns the threads and the
-- crossing; a pool only spreads calls over its workers.
local Pool <const> = {}
Pool.__index = Pool

local function usage(fname, msg)
  error(Error.new{kind = "usage", message = fname .. ": " .. msg}, 3)
end

-- The call slot of one worker, given back however the call ends.
local Slot <const> = {__close = function(s) s[1][s[2]] = s[1][s[2]] - 1 end}

-- braid.pool([n], source, [opts]) -> pool: n workers (default
-- braid.cpu_count()), each made by braid.worker(source, opts); they belong
-- to the scope the pool was made in. Errors: braid.worker's.
function M.pool(n, source, opts)
  if M.current() == nil then usage("braid.pool", "not inside a braid task") end
  if type(n) == "string" then n, source, opts = nil, n, source end
  n = n or M.cpu_count()
  if math.type(n) ~= "integer" or n < 1 then
    error(Error.new{kind = "usage", message = "bad argument #1 to "
      .. "'braid.pool' (positive integer expected)"}, 2)
  end
  local self = setmetatable({n = n, workers = {}, busy = {}}, Pool)
  for i = 1, n do
    local ok, w = pcall(M.worker, source, opts)
    if not ok then
      self:close()
      error(w, 2)
    end
    self.workers[i], self.busy[i] = w, 0
  end
  return self
end

-- pool:call(fname, ...) -> ...: worker:call on the worker with the fewest
-- calls in flight.
function Pool:call(fname, ...)
  local busy, best = self.busy, 1
  for i = 2, self.n do
    if busy[i] < busy[best] then best = i end
  end
  busy[best] = busy[best] + 1
  local slot <close> = setmetatable({busy, best}, Slot)
  return self.workers[best]:call(fname, ...)
end

-- pool:map(list, fname, [opts]) -> results: braid.map over the pool,
-- fname(item, i) in a worker for every item; opts as braid.map's, limit
-- defaulting to two calls per worker (the next item goes to whichever
-- worker is free first).
function Pool:map(list, fname, opts)
  local o = {limit = 2 * self.n}
  if type(opts) == "table" then
    for k, v in pairs(opts) do o[k] = v end
  end
  return M.map(list, function(item, i) return self:call(fname, item, i) end, o)
end

-- pool:close(): closes every worker (each waits for its thread to end).
function Pool:close()
  for _, w in ipairs(self.workers) do w:close() end
end
Pool.__close = Pool.close

-- braid.map(list, fname, {module = source, workers = n, ...}): fname runs
-- in a pool of n workers (default braid.cpu_count()) loading source, made
-- for this call and closed after it; other options are braid.map's. With
-- a function instead of a name, braid.map as ever.
local map <const> = M.map
function M.map(list, fn, opts)
  if type(fn) ~= "string" then return map(list, fn, opts) end
  local o, source, n = {}, nil, nil
  if type(opts) == "table" then
    for k, v in pairs(opts) do
      if k == "module" then source = v
      elseif k == "workers" then n = v
      else o[k] = v end
    end
  end
  if source == nil then
    usage("braid.map", "a function name needs opts.module (the workers' "
          .. "module, file or chunk)")
  end
  local pool <close> = M.pool(n, source)
  return pool:map(list, fn, o)
end
