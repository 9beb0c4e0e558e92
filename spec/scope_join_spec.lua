local braid = require "braid"
local h = require "helper"

describe("braid.scope joining", function()
  -- Regression: a member spawned (from another task) after the scope's last
  -- member ended, but before the scope's task resumed, was left running
  -- after the scope returned, and later read the freed scope (ASan:
  -- heap-use-after-free in braid__scope_left).
  it("waits for a member spawned after the last one ended, before the join resumed", h.run(function()
    local sc_handle, c_done, late_ran, late
    braid.spawn(function()
      while not c_done do braid.yield() end
      late = sc_handle:spawn(function() braid.sleep(0.01) late_ran = true end)
    end)
    braid.scope(function(sc)
      sc_handle = sc
      sc:spawn(function() braid.yield() c_done = true end)
    end)
    assert.is_not_nil(late)
    assert.are.equal("ok", late:status())
    assert.is_true(late_ran)
  end))
end)
