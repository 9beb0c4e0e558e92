-- echo_server.lua: a TCP echo server on 127.0.0.1. Each connection is a
-- task; Ctrl-C cancels them all and closes the server, then braid exits.
-- Run: build/braid examples/echo_server.lua [port]   (default: a free port)
-- Try: socat - TCP:127.0.0.1:<port>

local port = tonumber(arg[1]) or 0

local server = braid.tcp.listen("127.0.0.1", port, function(conn)
  local ok, err = pcall(function()
    while true do
      local data = conn:read()
      if data == nil then break end   -- the client closed its side
      conn:write(data)
    end
  end)
  -- A client that resets the connection must not stop the server.
  if not ok and not braid.is_cancelled(err) then
    io.stderr:write("connection failed: ", tostring(err), "\n")
  end
  conn:close()
end)

print(("echo server listening on 127.0.0.1:%d (Ctrl-C to stop)"):format(server:port()))
io.stdout:flush()
braid.sleep(math.huge)   -- serve until cancelled (Ctrl-C)
