-- demo.lua: what braid is for, in three short acts. Run: make run
-- (or build/braid examples/demo.lua). Uses the global `braid` of the runner.

local t0 = braid.now()
local function say(fmt, ...)
  print(string.format("[%5.0f ms] " .. fmt, (braid.now() - t0) * 1000, ...))
end

-- A pretend download: takes `secs`, then returns a size.
local function fetch(name, secs)
  say("fetch %-8s started", name)
  braid.sleep(secs)
  say("fetch %-8s done", name)
  return #name * 1000
end

print("1. gather: three fetches at once, results in argument order")
local a, b, c = braid.gather(
  function() return fetch("alpha", 0.20) end,
  function() return fetch("beta", 0.10) end,
  function() return fetch("gamma", 0.15) end)
say("gather returned %d, %d, %d (took ~200 ms, not 450)", a, b, c)

print("\n2. timeout: give up on a slow fetch after 100 ms")
local ok, err = pcall(braid.timeout, 0.1, fetch, "slow", 5)
say("timeout raised: %s (is_timeout = %s)", tostring(err), braid.is_timeout(err))

print("\n3. fail-fast: one task fails, its siblings are cancelled and clean up")
ok, err = pcall(braid.gather,
  function()
    local conn <close> = setmetatable({}, {__close = function()
      say("worker 1: connection closed during cancellation")
    end})
    fetch("big-file", 10)
  end,
  function()
    braid.sleep(0.05)
    say("worker 2: config is invalid, raising")
    error("invalid config: port must be a number")
  end)
say("gather raised: %s", tostring(err))
say("no task is left running; the script exits 0")
