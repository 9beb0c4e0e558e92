-- pipeline.lua: a bounded-concurrency pipeline: a producer feeds N workers
-- over a channel, a collector gathers their results, the whole run has a
-- deadline, and one failing item fails it fast (everything else is
-- cancelled and cleaned up).
--
--   build/braid examples/pipeline.lua [items] [workers] [--fail N]
--
-- Each "item" is pretend work (a sleep of 20-80 ms). With --fail N the N-th
-- item raises, which cancels the producer, the other workers and the collector.

local items, workers, fail_at = 40, 4, nil
do
  local rest = {}
  for i = 1, #arg do
    if arg[i] == "--fail" then fail_at = tonumber(arg[i + 1]); arg[i + 1] = nil
    elseif arg[i] then rest[#rest + 1] = arg[i] end
  end
  items = tonumber(rest[1]) or items
  workers = tonumber(rest[2]) or workers
end

local jobs = braid.channel(workers)     -- producer -> workers
local results = braid.channel(workers)  -- workers -> collector
local done, t0 = 0, braid.now()

local function progress(final)
  io.stderr:write(string.format("\r%3d/%d done, %.1f s%s", done, items,
    braid.now() - t0, final and "\n" or ""))
end

local function process(item)
  braid.sleep(0.02 + (item * 37 % 7) / 100)
  if item == fail_at then error("item " .. item .. " is corrupt", 0) end
  return item * item
end

local ok, err = pcall(braid.timeout, 30, function()
  braid.scope(function(s)
    s:spawn(function()                          -- producer
      for i = 1, items do jobs:send(i) end
      jobs:close()
    end)
    local pool = {}
    for w = 1, workers do
      pool[w] = function()
        for item in jobs:iter() do results:send({item, process(item)}) end
      end
    end
    s:spawn(function()                          -- workers, then close results
      braid.gather(table.unpack(pool))
      results:close()
    end)
    local sum = 0                               -- collector: this task
    for r in results:iter() do
      sum = sum + r[2]
      done = done + 1
      progress()
    end
    progress(true)
    print(string.format("processed %d items with %d workers: sum of squares = %d",
                        done, workers, sum))
  end)
end)
if not ok then
  progress(true)
  print("pipeline failed: " .. tostring(err))
  error(err, 0)   -- the runner reports it and exits 1
end
