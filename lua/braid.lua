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
