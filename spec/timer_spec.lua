-- The engine's timers: a heap, and runs of timers armed with the same delay
-- (engine/core/timer.c). Whatever holds them, they fire in (due, arming)
-- order, and a stopped one never fires. On the virtual clock a sleep wakes
-- exactly at its due time, so the order and the times are exact.
local braid = require "braid"
local h = require "helper"

-- (Times are binary fractions, so that sums are exact and equal dues tie.)
-- Sleeps `plan` ({start, delay} pairs: wait until start, then sleep delay)
-- in one task each, spawned in the given order; returns the wake-ups as
-- {index, time} in the order they happened.
local function wakes(plan)
  local t0, log = braid.now(), {}
  braid.gather(function()
    for i, p in ipairs(plan) do
      braid.spawn(function()
        if p[1] > 0 then braid.sleep(p[1]) end
        braid.sleep(p[2])
        log[#log + 1] = {i, braid.now() - t0}
      end)
    end
  end)
  return log
end

-- The order every wake-up must have: due time, then the order of arming
-- (a later start arms later; equal starts arm in spawn order).
local function expected(plan)
  local order = {}
  for i, p in ipairs(plan) do order[i] = {i, p[1] + p[2]} end
  table.sort(order, function(a, b)
    if a[2] ~= b[2] then return a[2] < b[2] end
    if plan[a[1]][1] ~= plan[b[1]][1] then return plan[a[1]][1] < plan[b[1]][1] end
    return a[1] < b[1]
  end)
  return order
end

local function check(plan)
  local got, want = wakes(plan), expected(plan)
  assert.are.equal(#want, #got)
  for k = 1, #want do
    assert.are.equal(want[k][1], got[k][1], "wake-up " .. k .. " out of order")
    assert.is_true(math.abs(want[k][2] - got[k][2]) < 1e-6,
                   "task " .. got[k][1] .. " woke at " .. got[k][2] .. ", due " .. want[k][2])
  end
end

describe("timers", function()
  it("fire in order when one delay is armed many times, ties in arming order", h.virtual(function()
    local plan = {}
    for i = 1, 300 do plan[i] = {(i % 7) * 0.25, 2} end
    check(plan)
  end))

  it("fire in order across more delays than the runs hold, mixed with the heap", h.virtual(function()
    local plan, delays = {}, {5, 1, 3, 0.5, 2, 4, 1.5, 0.75, 3, 1}
    for i = 1, 400 do plan[i] = {(i * 37 % 11) * 0.125, delays[i % #delays + 1]} end
    check(plan)
  end))

  it("fire in order when delays come in groups, more of them than the runs hold", h.virtual(function()
    local plan, delays = {}, {5, 1, 3, 0.5, 2, 4, 1.5, 0.75, 3.5, 1.25}
    -- five start times; at each, tasks arm in spawn order, eight in a row
    -- with one delay, so runs are taken, emptied and taken again
    for i = 1, 400 do plan[i] = {(i % 5) * 0.125, delays[(i // 40) % #delays + 1]} end
    check(plan)
  end))

  it("fire in order when a long delay arrives first and short ones follow", h.virtual(function()
    local plan = {{0, 100}, {0, 60}, {0, 30}, {0, 10}, {0, 5}}
    for i = 1, 200 do plan[#plan + 1] = {i / 128, 1} end
    for i = 1, 50 do plan[#plan + 1] = {i / 64, 1 / 1024} end
    check(plan)
  end))

  it("a sleep cancelled at the head, middle or tail of its run never fires; the rest keep their times", h.virtual(function()
    local t0, woke = braid.now(), {}
    braid.gather(function()
      local tasks = {}
      for i = 1, 9 do
        tasks[i] = braid.spawn(function()
          braid.sleep(i * 0.1)   -- arm at 0.1, 0.2, ...: one run of 1 s
          braid.sleep(1)
          woke[#woke + 1] = {i, braid.now() - t0}
        end)
      end
      braid.sleep(0.95)   -- every sleeper is in its 1 s sleep now
      for _, i in ipairs({1, 5, 9, 4, 6}) do tasks[i]:cancel() end
    end)
    assert.are.same({2, 3, 7, 8}, {woke[1][1], woke[2][1], woke[3][1], woke[4][1]})
    assert.are.equal(4, #woke)
    for _, w in ipairs(woke) do
      assert.is_true(math.abs(w[2] - (w[1] * 0.1 + 1)) < 1e-6)
    end
  end))

  it("fire in order after cancels emptied every run, delays new and old", h.virtual(function()
    for round = 1, 3 do
      local tasks = {}
      for d = 1, 12 do   -- each delay twice: the second takes a run
        tasks[d] = braid.spawn(braid.sleep, 50 + (d + 1) // 2 + round)
      end
      braid.yield()   -- every sleep is armed
      for _, t in ipairs(tasks) do t:cancel() end
    end
    local plan = {}
    for i = 1, 60 do plan[i] = {0, (i % 6) + 1} end
    check(plan)
  end))

  it("deadlines of one delay in a run: the ones stopped early never fire, the rest time out on time", h.virtual(function()
    local t0, out = braid.now(), {}
    braid.gather(function()
      for i = 1, 100 do
        braid.spawn(function()
          local ok, e = pcall(braid.timeout, 1, braid.sleep, i % 2 == 0 and 0.5 or 2)
          out[i] = {ok or e.kind, braid.now() - t0}
        end)
      end
    end)
    for i = 1, 100 do
      if i % 2 == 0 then assert.are.same({true, 0.5}, out[i])
      else assert.are.same({"timeout", 1}, out[i]) end
    end
  end))

  it("keep order on the real clock too", h.run(function()
    local plan = {}
    for i = 1, 30 do plan[i] = {0, i % 3 == 0 and 0.3 or 0.01} end
    local log = wakes(plan)
    assert.are.equal(30, #log)
    for k = 2, #log do assert.is_true(log[k][2] >= log[k - 1][2]) end
    for k = 1, 20 do assert.are_not.equal(0, log[k][1] % 3) end   -- the 10 ms ones first
    for _, w in ipairs(log) do
      assert.is_true(w[2] >= (w[1] % 3 == 0 and 0.3 or 0.01))
    end
  end))

  -- libuv's poll timeout was computed from the time read before the drain:
  -- a sleeper beside a task computing for 1 s woke 0.5 s late (at 1.5 s)
  it("wake on time after a drain that ran Lua code for a while (real clock)", h.run(function()
    local t0 = braid.now()
    local s = braid.spawn(function() braid.sleep(0.5) return braid.now() - t0 end)
    braid.yield()
    braid.spawn(function() local e = braid.now() + 1 while braid.now() < e do end end)
    local woke = s:await()
    assert.is_true(woke >= 1 and woke < 1.3, "a sleep of 0.5 s woke at " .. woke .. " s")
  end))
end)
