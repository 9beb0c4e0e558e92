local braid = require "braid"
local h = require "helper"

describe("braid.dns.resolve", function()
  it("resolves localhost to 127.0.0.1 and/or ::1, without duplicates", h.run(function()
    local addrs = braid.dns.resolve("localhost")
    assert.is_true(#addrs >= 1)
    local seen, loopback = {}, false
    for _, a in ipairs(addrs) do
      assert.is_nil(seen[a], "duplicate address " .. a)
      seen[a] = true
      if a == "127.0.0.1" or a == "::1" then loopback = true end
    end
    assert.is_true(loopback)
  end))

  it("returns a numeric address as itself", h.run(function()
    assert.are.same({"127.0.0.1"}, braid.dns.resolve("127.0.0.1"))
    assert.are.same({"::1"}, braid.dns.resolve("::1"))
  end))

  it("raises kind io with an EAI_ code and the host for a name under .invalid", h.run(function()
    local ok, e = pcall(braid.dns.resolve, "no-such-host.invalid")
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.matches("^EAI_", e.code)
    assert.are.equal("no-such-host.invalid", e.host)
    assert.matches("no%-such%-host%.invalid", tostring(e))
  end))

  it("raises usage errors for a missing or empty host", h.run(function()
    local ok, e = pcall(braid.dns.resolve)
    assert.are.equal("usage", e.kind)
    ok, e = pcall(braid.dns.resolve, "")
    assert.are.equal("usage", e.kind)
  end))

  it("is cancellable: the lookup is undone or detached and nothing leaks", function()
    local script = h.script([[
      for k = 0, 10 do
        local t = braid.spawn(braid.dns.resolve, "localhost")
        for _ = 1, k do braid.yield() end
        t:cancel("stop")
        local ok, r = pcall(t.await, t)
        assert(ok or braid.is_cancelled(r))
      end
      local ok, e = pcall(braid.timeout, 0, braid.dns.resolve, "localhost")
      assert(braid.is_timeout(e))
      print("done")
    ]])
    finally(function() os.remove(script) end)
    local out, err, code = h.braid(script)
    assert.are.equal("", err)
    assert.are.equal("done\n", out)
    assert.are.equal(0, code)
  end)
end)
