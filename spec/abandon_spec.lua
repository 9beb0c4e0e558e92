local braid = require "braid"
local h = require "helper"

-- Abandonment after the grace period (review of 2026-12-02, "prims" 7, 8).
describe("abandonment", function()
  -- The report named the grace period of the task's own scope (here never:
  -- math.huge, shown as 9.22337e+09 s) rather than the one that ran out.
  it("reports the grace period that ran out, not that of an inner scope cancelled before", function()
    local p = h.script([[
      pcall(braid.scope, function(outer)
        outer:spawn(function()
          braid.scope(function(inner)
            inner:spawn(function() pcall(braid.sleep, 100); braid.shield(braid.sleep, 100) end)
            braid.sleep(1)
            inner:cancel("inner")
            braid.sleep(100)
          end, {grace = math.huge})
        end)
        braid.sleep(2); outer:cancel("outer")
      end, {grace = 1.5})
      print("done")
    ]])
    local out, err, code = h.braid("--virtual-time " .. p)
    os.remove(p)
    assert.are.equal(0, code, err)
    assert.are.equal("done\n", out)
    local _, n = err:gsub("abandoned: still running 1%.5 s after it was cancelled", "")
    assert.are.equal(2, n, err)
    assert.is_nil(err:find("e+09", 1, true), err)
  end)

  -- Stopped in Lua code, it ended with the reason that cancelled it before,
  -- although the report said it was abandoned.
  it("ends a task stopped while running Lua code with the abandonment reason", h.run(function()
    local t, t2
    pcall(braid.scope, function(s)
      t = s:spawn(function() pcall(braid.sleep, 10); braid.shield(braid.sleep, 10) end)
      t2 = s:spawn(function() pcall(braid.sleep, 10); while true do end end)
      braid.sleep(0.01)
      s:cancel("first")
    end, {grace = 0.05})
    for _, x in ipairs({t, t2}) do
      local ok, e = x:result()
      assert.is_false(ok)
      assert.are.equal("cancelled", x:status())
      assert.are.equal("abandoned after its grace period", e.reason)
      assert.are.equal("cancelled (abandoned after its grace period)", e.message)
    end
  end))
end)
