-- spec/regress_spec.lua: minimized findings of tools/fuzz.lua. Each `it`
-- names the symptom; the commit that added it names the engine fix.
local braid = require "braid"
local h = require "helper"

describe("fuzz regressions", function()
  -- fuzz seed 15023 (from 4877, under ASan): timer_fire kept due deadlines
  -- on a list on its stack; a grace period firing in the same turn
  -- abandoned the task owning one of them, whose scope release freed it.
  it("does not touch a deadline freed by a grace period that fired in the same turn", h.virtual(function()
    local closed = 0
    braid.scope(function(s)
      s:spawn(function()
        braid.shield(function()
          local c <close> = setmetatable({}, {__close = function() closed = closed + 1 end})
          braid.timeout(4, braid.sleep, 1000)   -- due at 4, armed before the grace
        end)
      end)
      braid.sleep(1)
      s:cancel()
    end, {grace = 3})                           -- grace period ends at 4 too
    assert.are.equal(1, closed)
    assert.are.equal(4, braid.now())
  end))
end)
