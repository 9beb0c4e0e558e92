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

  -- Review "prims" 4: reset inside a pcall with a message handler (here
  -- braid.shield's), Lua 5.4.4 called the overwritten handler slot when a
  -- <close> handler raised: its error came as "error in error handling",
  -- to the report and to the next handler.
  it("reports the error of a <close> handler of a task abandoned while suspended, and hands it on", function()
    local p = h.script([[
      local ran = {}
      local mt_b = {__close = function(_, e) ran[#ran + 1] = "b:" .. tostring(e); error("b fails") end}
      local mt_n = {__close = function(_, e) ran[#ran + 1] = "inner:" .. tostring(e) end}
      local mt_c = {__close = function(_, e) ran[#ran + 1] = "c:" .. tostring(e); error({"c's table"}) end}
      local orig_b = mt_b.__close
      pcall(braid.scope, function(s)
        s:spawn(function()
          local a <close> = setmetatable({}, {__close = function(_, e)
            -- a <close> variable of the handler's own gets nil: it returns
            local n <close> = setmetatable({}, mt_n)
            ran[#ran + 1] = "a:" .. tostring(e)
          end})
          local b <close> = setmetatable({}, mt_b)
          braid.shield(braid.sleep, 100)
        end)
        -- through a coroutine of the script's own, inside a timeout
        s:spawn(function()
          coroutine.wrap(function()
            local c <close> = setmetatable({}, mt_c)
            braid.timeout(50, braid.shield, braid.sleep, 100)
          end)()
        end)
        braid.sleep(0.01)
        s:cancel()
      end, {grace = 0.05})
      print(table.concat(ran, " | "))
      print(rawequal(mt_b.__close, orig_b))
    ]])
    local out, err, code = h.braid(p)
    os.remove(p)
    assert.are.equal(0, code, err)
    local lines = {}
    for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
    assert.matches("^b:nil | a:[^|]*:%d+: b fails | inner:nil", lines[1])
    assert.matches("c:nil", lines[1], 1, true)
    assert.are.equal("true", lines[2])
    assert.is_nil(err:find("error in error handling", 1, true), err)
    assert.matches("error in a <close> handler of an abandoned task: [^\n]*:%d+: b fails\n", err)
    assert.matches("error in a <close> handler of an abandoned task: table: ", err, 1, true)
    assert.matches("stack traceback:", err, 1, true)
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
