-- examples/retry_spec.lua: how to test a workflow on the virtual clock.
-- Run with busted (`make test` does): an hour of backoff takes milliseconds,
-- and braid.now() says exactly when each attempt happened.
local braid = require "braid"
local retry = require "examples.retry"

-- A fake backend that fails `n` times, then answers; it logs the (virtual)
-- time of every call.
local function flaky(n, log)
  return function(key)
    log[#log + 1] = braid.now()
    braid.sleep(0.5)                                  -- the request takes time
    if #log <= n then error("backend busy", 0) end
    return "value of " .. key
  end
end

local function virtual(fn)
  return function() return braid.run(fn, {clock = "virtual"}) end
end

describe("examples/retry.lua", function()
  it("backs off 1, 2, 4 s between attempts", virtual(function()
    local log = {}
    local v = retry.call(flaky(3, log), {attempts = 5, backoff = 1}, "k")
    assert.are.equal("value of k", v)
    -- attempts at 0, 0.5+1, 2+0.5+2, 4.5+0.5+4 (each request takes 0.5 s)
    assert.are.same({0, 1.5, 4, 8.5}, log)
  end))

  it("caps the backoff", virtual(function()
    local log = {}
    retry.call(flaky(4, log), {attempts = 5, backoff = 1, max_backoff = 2}, "k")
    assert.are.same({0, 1.5, 4, 6.5, 9}, log)
  end))

  it("raises the last error when every attempt failed", virtual(function()
    local log = {}
    local ok, e = pcall(retry.call, flaky(10, log), {attempts = 3, backoff = 1}, "k")
    assert.is_false(ok)
    assert.are.equal("backend busy", e)
    assert.are.equal(3, #log)
  end))

  it("gives up at the deadline, in the middle of an attempt", virtual(function()
    local log = {}
    local ok, e = pcall(retry.call, flaky(10, log),
                        {attempts = 10, backoff = 1, deadline = 5}, "k")
    assert.is_false(ok)
    assert.is_true(braid.is_timeout(e))
    assert.are.equal(5, braid.now())               -- exactly at the deadline
    assert.are.same({0, 1.5, 4}, log)              -- the third was cut short
  end))

  it("stops retrying when its task is cancelled", virtual(function()
    local log = {}
    local t = braid.spawn(retry.call, flaky(10, log), {attempts = 10}, "k")
    braid.sleep(1.8)                               -- during the 2nd attempt
    t:cancel()
    local ok, e = pcall(t.await, t)
    assert.is_false(ok)
    assert.is_true(braid.is_cancelled(e))
    assert.are.equal("cancelled", t:status())
    assert.are.equal(2, #log)
    assert.are.equal(1.8, braid.now())
  end))
end)
