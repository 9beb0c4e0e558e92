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

-- braid.gather(..., {progress = true | label}) and braid.map(list, fn,
-- {progress = ...}): a braid.progress line counting the members as they
-- end (failed ones as failed; cancelled ones not at all), closed with the
-- call. `braid --progress` sets M._progress: every gather and map draws
-- one unless its options say progress = false.
do
  local c_gather, c_map, progress = M.gather, M.map, M.progress
  local select, setmetatable, pack, unpack = select, setmetatable, table.pack, table.unpack
  local is_cancelled = M.is_cancelled

  local function counted(p, f)
    return function(...)
      p:_running(1)
      local _ <close> = setmetatable({}, {__close = function(_, err)
        p:_running(-1)
        if err == nil then p:add(1)
        elseif not is_cancelled(err) then p:fail(1) end
      end})
      return f(...)
    end
  end

  -- the progress option of the plain table opts, or the default
  local function wanted(opts)
    local want
    if type(opts) == "table" and getmetatable(opts) == nil then want = opts.progress end
    if want == nil then want = M._progress end
    if want and progress and M.current() then return want end
  end

  if c_gather and progress then
    function M.gather(...)
      local n = select("#", ...)
      local opts = n > 0 and select(n, ...) or nil
      local want = wanted(opts)
      if not want then return c_gather(...) end
      local args = pack(...)
      local members = (type(opts) == "table" and getmetatable(opts) == nil) and n - 1 or n
      local p <close> = progress(members, type(want) == "string" and want or "braid.gather")
      for i = 1, members do
        if type(args[i]) == "function" then args[i] = counted(p, args[i]) end
      end
      return c_gather(unpack(args, 1, args.n))
    end

    function M.map(list, fn, opts)
      local want = wanted(opts)
      if not want or type(list) ~= "table" or type(fn) ~= "function" then
        return c_map(list, fn, opts)
      end
      local p <close> = progress(#list, type(want) == "string" and want or "braid.map")
      return c_map(list, counted(p, fn), opts)
    end
  end
end
