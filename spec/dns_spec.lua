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

-- Regression (review of 2026-12-02): a lookup in flight held up the exit
-- after it was cancelled or timed out, for as long as getaddrinfo took
-- (uv_getaddrinfo's request kept the loop alive). build/slowgai.so's
-- getaddrinfo sleeps for names starting with "slow".
local build = os.getenv("BUILD") or "build"
local shim = build .. "/slowgai.so"
local function preload(secs)
  local f = io.open(shim)
  if f then f:close()
  else assert(os.execute("cc -O2 -shared -fPIC -o " .. shim .. " tests/slowgai.c -ldl")) end
  -- after whatever is preloaded already (ASan's runtime must come first)
  local pre = os.getenv("LD_PRELOAD")
  return "SLOWGAI_SECONDS=" .. secs .. " LD_PRELOAD='" ..
         (pre and pre ~= "" and pre .. " " or "") .. shim .. "'"
end
local function elapsed(cmd)
  local p = io.popen("s=$(date +%s%N); " .. cmd ..
                     "; echo \"$?\" $(( ($(date +%s%N) - s) / 1000000 ))")
  local out = p:read("a")
  p:close()
  local code, ms = out:match("(%d+) (%d+)\n$")
  return tonumber(code), tonumber(ms), out
end

describe("an abandoned name lookup", function()
  it("holds up neither a timeout nor the exit (dns.resolve, tcp.connect, tcp.listen)", function()
    local script = h.script([[
      local n = 0
      for _, f in ipairs{
        function() return braid.dns.resolve("slow.example") end,
        function() return braid.tcp.connect("slow.example", 80) end,
        function() return braid.tcp.listen("slow.example", 0, print) end,
      } do
        local ok, e = pcall(braid.timeout, 0.1, f)
        assert(braid.is_timeout(e), tostring(e))
        n = n + 1
      end
      -- more lookups than resolver threads: the queued ones leave at once
      local ok, e = pcall(braid.timeout, 0.1, braid.gather,
        table.unpack((function()
          local t = {}
          for i = 1, 20 do t[i] = function() return braid.dns.resolve("slow" .. i) end end
          return t
        end)()))
      assert(braid.is_timeout(e), tostring(e))
      assert(#braid.dns.resolve("localhost") >= 1)
      print("done " .. n)
    ]])
    finally(function() os.remove(script) end)
    local code, ms, out = elapsed(preload(3) .. " " ..
      (os.getenv("BRAID_RUN_ENV") or "") .. " " .. os.getenv("BRAID_BIN") ..
      " " .. script .. " 2>&1")
    assert.are.equal("done 3\n", out:match("^(.-)%d+ %d+\n$"))
    assert.are.equal(0, code)
    assert.is_true(ms < 2000, "took " .. ms .. " ms")
  end)

  it("does not hold up the exit after Ctrl-C", function()
    local script = h.script('braid.dns.resolve("slow.example")')
    finally(function() os.remove(script) end)
    local code, ms = elapsed(preload(3) .. " " ..
      (os.getenv("BRAID_RUN_ENV") or "") .. " " .. os.getenv("BRAID_BIN") ..
      " --grace 0.2 " .. script .. " 2>/dev/null & P=$!; sleep 0.3; " ..
      "kill -INT $P; wait $P")
    assert.are.equal(130, code)
    assert.is_true(ms < 2000, "took " .. ms .. " ms")
  end)

  it("lets braid.run return and close its loop; a late result is dropped", function()
    -- stock lua5.4 with the module: braid.run closes its loop with the
    -- lookup's thread still asleep, the result arrives with no engine
    -- left, and a later run resolves as usual
    local code, _, out = elapsed(preload(1.5) .. " " ..
      (os.getenv("BRAID_RUN_ENV") or "") .. " lua5.4 -e '" .. [[
      local braid = require "braid"
      local function ms()
        local p = io.popen("date +%s%N")
        local n = p:read("n")
        p:close()
        return n // 1000000
      end
      local t0 = ms()
      braid.run(function()
        local ok, e = pcall(braid.timeout, 0.05, braid.dns.resolve, "slow.example")
        assert(braid.is_timeout(e))
      end)
      print("run took", ms() - t0 < 1000)
      os.execute("sleep 2")
      braid.run(function() assert(#braid.dns.resolve("localhost") >= 1) end)
      print("done")
    ]] .. "' 2>&1")
    assert.are.equal("run took\ttrue\ndone\n", out:match("^(.-)%d+ %d+\n$"))
    assert.are.equal(0, code)
  end)
end)

describe("braid.dns.resolve beyond ASCII", function()
  it("looks a name beyond ASCII up in its IDNA form, as libuv did", function()
    local script = h.script([[
      print(braid.dns.resolve("bücher.example")[1])
      print(braid.dns.resolve("例え.テスト")[1])
      print(pcall(braid.dns.resolve, "\255.example"))
    ]])
    finally(function() os.remove(script) end)
    local code, _, out = elapsed(preload(3) .. " " ..
      (os.getenv("BRAID_RUN_ENV") or "") .. " " .. os.getenv("BRAID_BIN") ..
      " " .. script .. " 2>&1")
    assert.are.equal("127.0.0.42\n127.0.0.43\nfalse\tbraid.dns.resolve " ..
                     "\255.example: invalid argument\n",
                     out:match("^(.-)%d+ %d+\n$"))
    assert.are.equal(0, code)
  end)
end)
