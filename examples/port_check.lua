-- port_check.lua: checks many host:port pairs at once, each under a
-- timeout, and prints "open" or "closed" (with the reason) for each.
-- Run: build/braid examples/port_check.lua [host:port ...] [--timeout S]
-- Without targets it checks a few ports on 127.0.0.1 only.

local targets, timeout = {}, 1.0
local i = 1
while i <= #arg do
  if arg[i] == "--timeout" then
    timeout = assert(tonumber(arg[i + 1]), "--timeout needs a number")
    i = i + 1
  else
    local host, port = arg[i]:match("^(.*):(%d+)$")
    assert(host, "expected host:port, got " .. arg[i])
    targets[#targets + 1] = {host = host, port = tonumber(port)}
  end
  i = i + 1
end

-- One port that is surely open: our own listener, for the demonstration.
local own
if #targets == 0 then
  own = braid.tcp.listen("127.0.0.1", 0, function(conn) conn:close() end)
  for _, p in ipairs({22, 80, 443, 5432, 6379, 8080, own:port()}) do
    targets[#targets + 1] = {host = "127.0.0.1", port = p}
  end
end

-- Checks one target: true, or false and why. Never raises.
local function check(t)
  local ok, err = pcall(braid.tcp.connect, t.host, t.port, {timeout = timeout})
  if ok then
    err:close()
    return true
  end
  return false, err.code or tostring(err)
end

local results = braid.map(targets, function(t)
  return {check(t)}
end, {limit = 64})

for n, t in ipairs(targets) do
  local open, why = results[n][1], results[n][2]
  print(("%-24s %s"):format(t.host .. ":" .. t.port,
                            open and "open" or ("closed (" .. why .. ")")))
end
if own then own:close() end
