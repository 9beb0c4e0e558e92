-- examples/retry.lua: a small workflow library worth testing on the virtual
-- clock (examples/retry_spec.lua does).
--
--   local retry = require "examples.retry"
--   local body = retry.call(fetch, {attempts = 5, backoff = 1, deadline = 30}, url)
--
-- Calls fn(...) until it returns, waiting backoff, 2*backoff, 4*backoff ...
-- seconds between attempts (capped at max_backoff), at most `attempts`
-- times, all within `deadline` seconds (braid.timeout: a cancellation stops
-- an attempt in the middle, not just between attempts). Raises the last
-- attempt's error when every attempt failed.
local braid = require "braid"

local M = {}

function M.call(fn, opts, ...)
  local attempts = opts.attempts or 3
  local backoff, cap = opts.backoff or 1, opts.max_backoff or math.huge
  local args = table.pack(...)
  local function attempt_all()
    local err
    for i = 1, attempts do
      local r = table.pack(pcall(fn, table.unpack(args, 1, args.n)))
      if r[1] then return table.unpack(r, 2, r.n) end
      err = r[2]
      if braid.is_cancelled(err) then error(err, 0) end   -- never retry a cancel
      if i < attempts then braid.sleep(math.min(backoff * 2 ^ (i - 1), cap)) end
    end
    error(err, 0)
  end
  if opts.deadline then return braid.timeout(opts.deadline, attempt_all) end
  return attempt_all()
end

return M
