-- spec/soak_spec.lua: a small version of tools/soak.lua (`make soak` runs
-- 10 rounds of 1M tasks and 100k sleepers): 4 rounds of 50k short-lived
-- tasks through a channel and 10k concurrent 50 ms sleepers, with memory
-- flat under generous tolerances: the Lua heap of round 4 within 256 KB of
-- round 2, RSS of round 4 within 16 MB of round 3. Under ASan
-- (`make SANITIZE=1 test`) RSS is not compared: ASan's quarantine holds
-- freed memory (256 MB by default), so RSS grows without any leak.
local h = require "helper"
local soak = dofile("tools/soak.lua")

local asan = (os.getenv("LD_PRELOAD") or ""):find("asan", 1, true) ~= nil

describe("soak (small)", function()
  it("runs 4 rounds of 50k tasks through a channel and 10k sleepers with flat memory", h.run(function()
    local rows = soak.soak{rounds = 4, tasks = 50000, sleepers = 10000,
                           heap_tol_kb = 256, rss_tol_kb = asan and math.huge or 16384,
                           quiet = true}
    assert.are.equal(4, #rows)
    for _, row in ipairs(rows) do assert.is_true(row.peak >= 5000) end
  end))
end)
