-- http_spec.lua: braid.http and braid.json, against spec/http_server.py
-- (Python's http.server on 127.0.0.1, started here and killed in
-- teardown), plain and over TLS with a certificate made by openssl now.
local braid = require "braid"
local h = require "helper"

local start_server = h.http_server

local URL, PID, TLS_URL, TLS_PID, CERT, KEY

setup(function()
  URL, PID = start_server("http")
  local base = os.tmpname()
  CERT, KEY = base .. ".crt", base .. ".key"
  local _, err, code = h.sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 "
    .. "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout "
    .. KEY .. " -out " .. CERT)
  assert(code == 0, err)
  os.remove(base)
  TLS_URL, TLS_PID = start_server("https", CERT, KEY)
end)

teardown(function()
  if PID then os.execute("kill " .. PID) end
  if TLS_PID then os.execute("kill " .. TLS_PID) end
  if CERT then os.remove(CERT) os.remove(KEY) end
end)

-- The server's connection counts.
local function stats()
  return braid.http.get(URL .. "/stats"):json()
end

-- Waits, bounded, until cond() holds.
local function wait_until(cond, what)
  local t0 = braid.now()
  while not cond() do
    if braid.now() - t0 > 10 then error("timed out waiting: " .. what) end
    braid.sleep(0.02)
  end
end

describe("braid.http.request", function()
  it("returns status, lower-case headers, body, url, version and time", h.run(function()
    local res = braid.http.request{url = URL .. "/bytes/1024"}
    assert.are.equal(200, res.status)
    assert.are.equal(1024, #res.body)
    assert.are.equal("application/octet-stream", res.headers["content-type"])
    assert.are.equal("1024", res.headers["content-length"])
    assert.are.equal(URL .. "/bytes/1024", res.url)
    assert.are.equal("1.1", res.http_version)
    assert.is_true(res.time >= 0 and res.time < 30)
  end))

  it("keeps a header block of any size", h.run(function()
    for _, n in ipairs{10, 600, 20000} do
      local res = braid.http.get(URL .. "/bigheader?n=" .. n)
      assert.are.same({n, "z"}, {#res.headers["x-big"], res.headers["x-after"]})
    end
  end))

  it("joins repeated headers and lists them with header_list", h.run(function()
    local res = braid.http.get(URL .. "/headers")
    assert.are.equal("a=1, b=2", res.headers["set-cookie"])
    assert.are.same({"a=1", "b=2"}, res:header_list("Set-Cookie"))
    assert.are.same({"t"}, res:header_list("x-token"))
    assert.are.same({}, res:header_list("x-absent"))
    local lines = {}
    for l in braid.http.get(URL .. "/chunked?n=3"):lines() do lines[#lines + 1] = l end
    assert.are.same({"line 0", "line 1", "line 2"}, lines)
    assert.are.equal("ok", res:read("a"))
  end))

  it("returns 4xx and 5xx as results, and raises them with check", h.run(function()
    assert.are.equal(404, braid.http.get(URL .. "/status/404").status)
    local res = braid.http.get(URL .. "/status/500")
    assert.are.equal(500, res.status)
    assert.are.equal("status 500", res.body)
    local ok, e = pcall(braid.http.get, URL .. "/status/503", {check = true})
    assert.is_false(ok)
    assert.are.equal("http", e.kind)
    assert.are.equal(503, e.status)
    assert.are.equal("status 503", e.body)
    assert.are.equal(URL .. "/status/503", e.url)
  end))

  it("raises kind http with curl's code and the url", h.run(function()
    local srv = braid.tcp.listen("127.0.0.1", 0, function() end)
    local port = srv:port()
    srv:close()
    local url = "http://127.0.0.1:" .. port .. "/"
    local ok, e = pcall(braid.http.get, url)
    assert.is_false(ok)
    assert.are.equal("http", e.kind)
    assert.are.equal("COULDNT_CONNECT", e.code)
    assert.are.equal(url, e.url)
    ok, e = pcall(braid.http.get, "nope://x/")
    assert.are.equal("UNSUPPORTED_PROTOCOL", e.code)
  end))

  -- a 9 MB url made a 9 MB message
  it("shows a long url cut in its messages, and keeps it whole in e.url", h.run(function()
    local srv = braid.tcp.listen("127.0.0.1", 0, function() end)
    local port = srv:port()
    srv:close()
    local url = "http://127.0.0.1:" .. port .. "/" .. ("a"):rep(1e6)
    local ok, e = pcall(braid.http.get, url)
    assert.is_false(ok)
    assert.are.equal("COULDNT_CONNECT", e.code)
    assert.are.equal(url, e.url)
    assert.is_true(#e.message < 400, #e.message)
    assert.matches("^braid%.http%.get http://127%.0%.0%.1:%d+/a+%.%.%.: ", e.message)
    url = URL .. "/status/503?" .. ("b"):rep(5000)
    ok, e = pcall(braid.http.get, url, {check = true})
    assert.are.equal(503, e.status)
    assert.are.equal(url, e.url)
    assert.is_true(#e.message < 400, #e.message)
  end))

  it("follows redirects, or not, up to max_redirects", h.run(function()
    local res = braid.http.get(URL .. "/redirect/3")
    assert.are.equal(200, res.status)
    assert.are.equal("arrived", res.body)
    assert.are.equal(URL .. "/redirect/0", res.url)
    res = braid.http.get(URL .. "/redirect/3", {follow = false})
    assert.are.equal(302, res.status)
    assert.are.equal("/redirect/2", res.headers.location)
    local ok, e = pcall(braid.http.get, URL .. "/redirect/5", {max_redirects = 2})
    assert.is_false(ok)
    assert.are.equal("TOO_MANY_REDIRECTS", e.code)
  end))

  it("sends method, headers, query and bodies", h.run(function()
    local r = braid.http.request{url = URL .. "/echo", method = "PUT",
      headers = {["X-One"] = "1", Accept = "text/plain"}, body = "hello",
      query = {q = "a b&c", n = 2}}:json()
    assert.are.equal("PUT", r.method)
    assert.are.equal("/echo?n=2&q=a%20b%26c", r.path)
    assert.are.equal("1", r.headers["x-one"])
    -- number keys keep their values; the query is read raw (no __pairs,
    -- no __index of the script's runs)
    local q = setmetatable({[1] = "one", tag = {"x", "y"}}, {
      __pairs = function() error("__pairs ran") end,
      __index = function() error("__index ran") end})
    assert.are.equal("/echo?1=one&tag=x&tag=y",
                     braid.http.get(URL .. "/echo", {query = q}):json().path)
    assert.are.equal("hello", r.body)
    r = braid.http.post(URL .. "/echo", {a = {1, 2}}):json()
    assert.are.equal("POST", r.method)
    assert.are.equal("application/json", r.headers["content-type"])
    assert.are.same({a = {1, 2}}, braid.json.decode(r.body))
    local parts = {"ab", "cd", "ef"}
    local i = 0
    r = braid.http.post(URL .. "/echo", function() i = i + 1 return parts[i] end):json()
    assert.are.equal("abcdef", r.body)
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(("z"):rep(100000))
    f:close()
    r = braid.http.request{url = URL .. "/echo", body_file = path}:json()
    os.remove(path)
    assert.are.equal("POST", r.method)
    assert.are.equal(100000, #r.body)
    assert.is_nil(braid.http.get(URL .. "/echo"):json().headers["accept-encoding"])
    assert.matches("gzip", braid.http.get(URL .. "/echo",
      {compressed = true}):json().headers["accept-encoding"])
    local hd = braid.http.request{url = URL .. "/bytes/10", method = "HEAD"}
    assert.are.equal(200, hd.status)
    assert.are.equal("", hd.body)
    assert.are.equal("10", hd.headers["content-length"])
  end))

  it("refuses bad options with usage errors", h.run(function()
    local function usage(opts)
      local ok, e = pcall(braid.http.request, opts)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
      return e.message
    end
    assert.matches("url", usage{})
    assert.matches("unknown", usage{url = URL, colour = 1})
    assert.matches("timeout", usage{url = URL, timeout = "soon"})
    assert.matches("http_version", usage{url = URL, http_version = "9"})
    assert.matches("line break", usage{url = URL, headers = {X = "a\r\nb: c"}})
    assert.matches("body", usage{url = URL, body = true})
    assert.matches("table expected", usage(URL .. "/bytes/1"))   -- get's is a URL
    local ok, e = pcall(braid.http.get, 42)
    assert.are.same({false, "usage"}, {ok, e.kind})
  end))

  -- a chunk that was not a string came out of table.concat as a plain
  -- string error pointing into braid's own Lua side
  it("refuses a body function's chunk that is not a string", h.run(function()
    local function chunks(...)
      local list, i = table.pack(...), 0
      return function() i = i + 1 return list[i] end
    end
    for _, bad in ipairs{{}, false, true, print} do
      for _, call in ipairs{
        {"braid.http.request", function(b) braid.http.request{url = URL .. "/echo", body = b} end},
        {"braid.http.open", function(b) braid.http.open{url = URL .. "/echo", body = b} end},
        {"braid.http.post", function(b) braid.http.post(URL .. "/echo", b) end}} do
        local ok, e = pcall(call[2], chunks("ab", bad))
        assert.is_false(ok)
        assert.is_true(braid.is_error(e), tostring(e))
        assert.are.equal("usage", e.kind)
        assert.is_truthy(e.message:find(call[1], 1, true), e.message)
        assert.matches("chunks must be strings; chunk #2 is a " .. type(bad), e.message)
        assert.matches("^spec/http_spec.lua:%d+: ", e.message)
      end
    end
    -- numbers are taken, as table.concat takes them
    local r = braid.http.post(URL .. "/echo", chunks("ab", 12, 1.5)):json()
    assert.are.equal("ab121.5", r.body)
  end))

  -- C reads these options: a zero byte cut them short (output "/tmp/x\0y"
  -- wrote /tmp/x; method "GET\0X" went as GET), and a method with a control
  -- character went onto the request line
  it("refuses string options with a zero byte, and a method that is not a token", h.run(function()
    for _, opts in ipairs{{output = h.tmp() .. "\0y"}, {method = "GET\0X"},
                          {method = "GE\vT"}, {method = "GET /x HTTP/1.1\r\nX:"},
                          {ca_file = "/etc/ssl\0x"}} do
      opts.url = URL .. "/echo"
      local ok, e = pcall(braid.http.request, opts)
      assert.is_false(ok)
      assert.are.equal("usage", e.kind)
      assert.matches("bad option '[%w_]+' to 'braid.http.request'", e.message)
    end
    assert.are.equal(200, braid.http.request{url = URL .. "/echo", method = "PATCH"}.status)
  end))

  -- harden-h1: a ':' or a space in a header name, or a line break in a
  -- name or value, wrote other headers (or a second request) into this one.
  it("refuses header names that are not tokens and values with CR, LF or NUL", h.run(function()
    local function usage(headers, fname)
      local f = fname == "braid.http.get"
        and function() return braid.http.get(URL .. "/echo", {headers = headers}) end
        or function() return braid.http.request{url = URL .. "/echo", headers = headers} end
      local ok, e = pcall(f)
      assert.is_false(ok, "sent: " .. tostring(ok and e.body))
      assert.are.equal("usage", e.kind)
      return e.message
    end
    assert.matches('braid.http.get: header name "X\\r\\nY" is not a valid token',
                   usage({["X\r\nY"] = "v"}, "braid.http.get"), 1, true)
    assert.matches('braid.http.request: header name "a: b" is not a valid token',
                   usage{["a: b"] = "c"}, 1, true)
    assert.matches('header name "X Y" is not', usage{["X Y"] = "c"}, 1, true)
    assert.matches('header name "X\\0Y" is not', usage{["X\0Y"] = "c"}, 1, true)
    assert.matches('header name "X\\0001" is not', usage{["X\0" .. "1"] = "c"}, 1, true)
    assert.matches('header name "" is not', usage{[""] = "c"}, 1, true)
    assert.matches('header name "Host:" is not', usage{["Host:"] = "evil"}, 1, true)
    assert.matches('header "X" has a line break or NUL in its value',
                   usage{X = "a\r\nInjected: 1"}, 1, true)
    assert.matches('header "X" has a line break', usage{X = "a\nb"}, 1, true)
    assert.matches('header "X" has a line break', usage{X = "a\rb"}, 1, true)
    assert.matches('header "X" has a line break', usage{X = "a\0b"}, 1, true)
    assert.matches('header "X" has a line break', usage{X = {"ok", "a\nb"}}, 1, true)
    local msg = usage{["X" .. ("y"):rep(100) .. "\n"] = "c"}   -- cut in the message
    assert.is_true(msg:find('y"...', 1, true) and not msg:find(("y"):rep(50)), msg)
    -- every token character passes, and a value keeps its spaces and tabs
    local name = "Ab9!#$%&'*+-.^_`|~"
    local r = braid.http.get(URL .. "/echo", {headers = {[name] = "a b\tc"}}):json()
    assert.are.equal("a b\tc", r.headers[name:lower()])
  end))

  -- a NUL cut the URL short (another URL was fetched); a line break came
  -- back raw in libcurl's message
  it("refuses a URL with a control character or NUL, quoting it", h.run(function()
    local function usage(f, ...)
      local ok, e = pcall(f, ...)
      assert.is_false(ok, "fetched: " .. tostring(ok and e.status))
      assert.are.equal("usage", e.kind)
      assert.is_nil(e.message:find("[\r\n%z]"), e.message)
      return e.message
    end
    assert.matches('braid.http.get: URL "' .. URL .. '/echo\\0x" has a control character or NUL at byte ' ..
                   #URL + 6, usage(braid.http.get, URL .. "/echo\0x"), 1, true)
    assert.matches('braid.http.request: URL "http://a\\r\\nHost: b/" has a control',
                   usage(braid.http.request, {url = "http://a\r\nHost: b/"}), 1, true)
    assert.matches('braid.http.open: URL "http://a/\\9" has a control',
                   usage(braid.http.open, {url = "http://a/\t"}), 1, true)
    assert.matches('URL "http://a/\\127"', usage(braid.http.get, "http://a/\127"), 1, true)
    -- a space, and bytes over 127, are libcurl's to judge
    assert.are.equal(200, braid.http.get(URL .. "/echo?a=\xc3\xa9").status)
  end))

  it("times out mid-body with OPERATION_TIMEDOUT, closing the connection", h.run(function()
    local t0 = braid.now()
    local ok, e = pcall(braid.http.get, URL .. "/stall", {timeout = 0.3})
    assert.is_false(ok)
    assert.are.equal("OPERATION_TIMEDOUT", e.code)
    assert.is_true(braid.now() - t0 < 10)
    wait_until(function() return stats().hanging == 0 end, "server sees the close")
  end))

  it("stops at once under braid.timeout; the server sees the close", h.run(function()
    local ok, e = pcall(braid.timeout, 0.2, braid.http.get, URL .. "/hang")
    assert.is_false(ok)
    assert.is_true(braid.is_timeout(e))
    wait_until(function() return stats().hanging == 0 end, "server sees the close")
  end))

  it("fails fast in a gather of 50: the rest are cancelled and their connections closed", h.run(function()
    local fns = {}
    for i = 1, 50 do
      fns[i] = function()
        if i == 25 then
          braid.sleep(0.3)
          return braid.http.get(URL .. "/status/500", {check = true})
        end
        return braid.http.get(URL .. "/hang")
      end
    end
    local t = braid.spawn(function()
      wait_until(function() return stats().hanging == 49 end, "49 hanging requests")
    end)
    local ok, e = pcall(braid.gather, table.unpack(fns))
    assert.is_false(ok)
    assert.are.equal("http", e.kind)
    assert.are.equal(500, e.status)
    t:cancel()
    wait_until(function() return stats().hanging == 0 end, "every connection closed")
  end))

  it("caps the body at max_body with kind limit", h.run(function()
    local ok, e = pcall(braid.http.get, URL .. "/bytes/100000", {max_body = 1000})
    assert.is_false(ok)
    assert.are.equal("limit", e.kind)
    assert.are.equal("max_body", e.option)
    assert.are.equal(1000, e.limit)
    assert.are.equal(100000, #braid.http.get(URL .. "/bytes/100000").body)
  end))

  -- libcurl sends at most 1 MiB of request head and failed past it with
  -- CURLE_OUT_OF_MEMORY: a 2 MiB header value read "not enough memory"
  -- (kind memory) with memory to spare
  it("refuses headers and a URL over libcurl's 1 MiB request head with kind limit", h.run(function()
    local accepted = 0
    -- answers with the length of the longest line of the request's head
    local srv = braid.tcp.listen("127.0.0.1", 0, function(c)
      accepted = accepted + 1
      local longest = 0
      repeat
        local line = c:read_line()
        if line and #line > longest then longest = #line end
      until line == nil or line == ""
      local body = tostring(longest)
      c:write("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: "
              .. #body .. "\r\n\r\n" .. body)
    end, {max_line = 2 * 1024 * 1024})
    local url = "http://127.0.0.1:" .. srv:port() .. "/"
    local cap = 1032192
    local fits = cap - #url - #"X-Big: " - 2
    -- exactly the cap goes out whole, also with a body and libcurl's
    -- own headers for it
    local res = braid.http.request{url = url, headers = {["X-Big"] = ("a"):rep(fits)},
                                   body = ("b"):rep(2000000), compressed = true}
    assert.are.same({200, tostring(fits + #"X-Big: ")}, {res.status, res.body})
    assert.are.equal(1, accepted)
    local function limit(opts, option)
      local ok, e = pcall(braid.http.request, opts)
      assert.is_false(ok)
      assert.are.same({"limit", cap, option}, {e.kind, e.limit, e.option})
      return e.message
    end
    assert.are.equal("braid.http.request: headers and URL longer than the "
                     .. "1032192 bytes libcurl can send (its limit on a "
                     .. "request's head is 1 MiB)",
                     limit({url = url, headers = {["X-Big"] = ("a"):rep(fits + 1)}}, "headers"))
    limit({url = url, headers = {["X-Big"] = ("a"):rep(2 * 1024 * 1024)}}, "headers")
    local half = ("h"):rep(600000)
    limit({url = url, headers = {["X-A"] = half, ["X-B"] = {half}}}, "headers")
    assert.matches("^braid%.http%.request: a request head of %d+ bytes for "
                   .. "this URL is longer than the 1032192 libcurl can send "
                   .. "%(its limit is 1 MiB%)$",
                   limit({url = url .. "?" .. ("q"):rep(1100000)}, "url"))
    local ok, e = pcall(braid.http.get, url .. "?" .. ("q"):rep(1100000))
    assert.are.same({false, "limit", "url"}, {ok, e.kind, e.option})
    -- a user name and password go in base64 (Authorization), a third longer
    local creds = "http://" .. ("u"):rep(800000) .. ":p@" .. url:sub(8)
    assert.matches("the URL's user name and password go in base64, a third longer",
                   limit({url = creds}, "url"), 1, true)
    assert.are.equal(1, accepted)   -- nothing was sent
    srv:close()
  end))

  it("writes the body to a file with output", h.run(function()
    local path = os.tmpname()
    local res = braid.http.get(URL .. "/bytes/300000", {output = path})
    assert.are.equal(200, res.status)
    assert.is_nil(res.body)
    local f = assert(io.open(path, "rb"))
    assert.are.equal(300000, #f:read("a"))
    f:close()
    os.remove(path)
    local ok, e = pcall(braid.http.get, URL .. "/bytes/1", {output = "/nonexistent/x"})
    assert.is_false(ok)
    assert.are.equal("io", e.kind)
    assert.are.equal("ENOENT", e.code)
    -- a write that fails fails the call, also the buffered end of a body
    for _, n in ipairs{10, 300000} do
      ok, e = pcall(braid.http.get, URL .. "/bytes/" .. n, {output = "/dev/full"})
      assert.is_false(ok)
      assert.are.same({"io", "ENOSPC"}, {e.kind, e.code})
    end
    -- and ends open's reading with it
    for _, n in ipairs{10, 300000} do
      ok, e = pcall(function()
        local res <close> = braid.http.open{url = URL .. "/bytes/" .. n, output = "/dev/full"}
        repeat until res:read() == nil
      end)
      assert.is_false(ok)
      assert.are.same({"io", "ENOSPC"}, {e.kind, e.code})
    end
  end))

  it("speaks TLS: verify = false, a custom CA, and refuses an unknown one", h.run(function()
    local ok, e = pcall(braid.http.get, TLS_URL .. "/bytes/10")
    assert.is_false(ok)
    assert.are.equal("PEER_FAILED_VERIFICATION", e.code)
    assert.are.equal(10, #braid.http.get(TLS_URL .. "/bytes/10", {verify = false}).body)
    assert.are.equal("arrived", braid.http.get(TLS_URL .. "/redirect/1",
                                               {ca_file = CERT}).body)
  end))

  it("never carries a request's options to the next one on a reused handle", h.run(function()
    -- one request at a time: each reuses the handle the one before gave back
    local r = braid.http.request{url = URL .. "/echo", method = "PUT", body = "data",
                                 headers = {["X-Secret"] = "s", Authorization = "Basic eDp5"},
                                 compressed = true, http_version = "1.1"}:json()
    assert.are.equal("PUT", r.method)
    r = braid.http.get(URL .. "/echo"):json()
    assert.are.same({"GET", "", nil, nil, nil},
                    {r.method, r.body, r.headers["x-secret"], r.headers.authorization,
                     r.headers["accept-encoding"]})
    assert.are.equal("", braid.http.request{url = URL .. "/echo", method = "HEAD"}.body)
    assert.are.equal("GET", braid.http.get(URL .. "/echo"):json().method)
    -- options every request sets itself (follow, timeouts) are set again
    assert.are.equal(302, braid.http.get(URL .. "/redirect/1", {follow = false}).status)
    assert.are.equal("arrived", braid.http.get(URL .. "/redirect/1").body)
    assert.are.equal(10, #braid.http.get(URL .. "/bytes/10", {timeout = 0.5}).body)
    assert.are.equal("line 1", braid.http.get(URL .. "/chunked?n=2&delay=0.4").body
                     :match("line 1"))
    -- TLS: neither verify = false nor a CA file outlives its request
    for _, opts in ipairs{{verify = false}, {ca_file = CERT}} do
      assert.are.equal(10, #braid.http.get(TLS_URL .. "/bytes/10", opts).body)
      local ok, e = pcall(braid.http.get, TLS_URL .. "/bytes/10")
      assert.is_false(ok)
      assert.are.equal("PEER_FAILED_VERIFICATION", e.code)
    end
    -- nor a proxy
    local ok, e = pcall(braid.http.get, URL .. "/bytes/10", {proxy = "http://127.0.0.1:1"})
    assert.is_false(ok)
    assert.are.equal("COULDNT_CONNECT", e.code)
    assert.are.equal(10, #braid.http.get(URL .. "/bytes/10").body)
  end))

  it("reuses a kept-alive connection, and one the server closed is replaced", h.run(function()
    local s0 = stats()
    for _ = 1, 20 do assert.are.equal(10, #braid.http.get(URL .. "/bytes/10").body) end
    assert.are.equal(s0.opened, stats().opened)   -- one connection all along
    assert.are.equal("closing", braid.http.get(URL .. "/close").body)
    assert.are.equal("bye", braid.http.get(URL .. "/drop").body)
    braid.sleep(0.3)   -- the server has likely closed it by now; either way:
    for _ = 1, 5 do assert.are.equal(10, #braid.http.get(URL .. "/bytes/10").body) end
    local s1 = stats()
    assert.is_true(s1.opened >= s0.opened + 2)
    -- and concurrently: several connections, kept and reused
    local fns = {}
    for i = 1, 8 do fns[i] = function() return #braid.http.get(URL .. "/bytes/" .. i).body end end
    for _ = 1, 3 do
      local r = {braid.gather(table.unpack(fns))}
      for i = 1, 8 do assert.are.equal(i, r[i]) end
    end
  end))

  it("runs many requests concurrently on one loop", h.run(function()
    local fns = {}
    for i = 1, 40 do
      fns[i] = function() return #braid.http.get(URL .. "/bytes/" .. i).body end
    end
    local r = {braid.gather(table.unpack(fns))}
    for i = 1, 40 do assert.are.equal(i, r[i]) end
  end))
end)

describe("braid.http.open", function()
  it("returns at the headers and streams lines as they come (SSE)", h.run(function()
    local res <close> = braid.http.open{url = URL .. "/sse?n=3"}
    assert.are.equal(200, res.status)
    assert.are.equal("text/event-stream", res.headers["content-type"])
    local got = {}
    for line in res:lines() do
      if line ~= "" then got[#got + 1] = line end
    end
    assert.are.same({"data: event 0", "data: event 1", "data: event 2"}, got)
  end))

  it("returns before the body and closes its connection on close", h.run(function()
    local res = braid.http.open{url = URL .. "/stall"}
    assert.are.equal(200, res.status)
    assert.are.equal(("y"):rep(10), res:read())
    res:close()
    assert.is_nil(res:read())
    wait_until(function() return stats().hanging == 0 end, "server sees the close")
  end))

  it("pauses a large body until it is read (back-pressure)", h.run(function()
    local res <close> = braid.http.open{url = URL .. "/bytes/5000000"}
    local n, reads = 0, 0
    while true do
      local chunk = res:read(100000)
      if not chunk then break end
      assert.is_true(#chunk <= 100000)
      n = n + #chunk
      reads = reads + 1
      if reads % 10 == 0 then braid.sleep(0.001) end
    end
    assert.are.equal(5000000, n)
  end))

  it("reads everything with read('a') and json()", h.run(function()
    local res = braid.http.open{url = URL .. "/json"}
    local v = res:json()
    assert.are.equal("braid", v.name)
    assert.is_nil(res:read())
  end))

  it("is closed when its scope ends; a cancelled read leaves it open", h.run(function()
    braid.scope(function()
      local res = braid.http.open{url = URL .. "/stall"}
      res:read()
      local ok = pcall(braid.timeout, 0.1, res.read, res)
      assert.is_false(ok)
      wait_until(function() return stats().hanging == 1 end, "still open")
    end)
    wait_until(function() return stats().hanging == 0 end, "server sees the close")
  end))

  it("raises an error mid-body from the read that reaches it, after the bytes before it", h.run(function()
    local res <close> = braid.http.open{url = URL .. "/stall", timeout = 0.5}
    local got = {}
    local ok, e = pcall(function()
      while true do
        local chunk = res:read()
        if not chunk then break end
        got[#got + 1] = chunk
      end
    end)
    assert.is_false(ok)
    assert.are.equal("OPERATION_TIMEDOUT", e.code)
    assert.are.equal(("y"):rep(10), table.concat(got))
    assert.is_nil(res:read())
    wait_until(function() return stats().hanging == 0 end, "server sees the close")
  end))

  it("raises the transfer's error from open", h.run(function()
    local ok, e = pcall(braid.http.open, {url = URL .. "/hang", timeout = 0.2})
    assert.is_false(ok)
    assert.are.equal("OPERATION_TIMEDOUT", e.code)
  end))
end)

describe("braid.http leaves nothing behind", function()
  it("closes every socket and handle when the run ends", function()
    local before = #braid.run(function() return braid.fs.list("/proc/self/fd") end)
    braid.run(function()
      for _ = 1, 3 do braid.http.get(URL .. "/bytes/10") end
      braid.http.get(URL .. "/close")
      braid.http.get(URL .. "/drop", {query = {delay = 0}})
      braid.sleep(0.1)
      braid.http.get(URL .. "/bytes/10")
      pcall(braid.timeout, 0.1, braid.http.get, URL .. "/hang")
      local res = braid.http.open{url = URL .. "/stall"}
      res:read()
    end)
    local after = #braid.run(function() return braid.fs.list("/proc/self/fd") end)
    assert.are.equal(before, after)
  end)
end)

-- fix-http2: an outside review's defects in braid.http
describe("braid.http files, numbers and options", function()
  local function mkdir()
    local d = h.tmp()
    assert(os.execute("mkdir " .. d))
    return d
  end
  local function ls(d)
    local p = assert(io.popen("ls -A " .. d))
    local s = p:read("a")
    p:close()
    return s
  end

  -- fopen and fread of a FIFO ran on the loop thread: the whole engine,
  -- the request's own timeout included, froze until a writer came
  it("refuses a FIFO as body_file, output or ca_file without blocking", function()
    local d = mkdir()
    local fifo, script = d .. "/fifo", d .. "/t.lua"
    assert(os.execute("mkfifo " .. fifo))
    -- a socket: open fails with ENXIO, reported as what it is
    local sock = d .. "/sock"
    assert(os.execute("/usr/bin/python3 -c 'import socket; socket.socket("
                      .. "socket.AF_UNIX).bind(\"" .. sock .. "\")'"))
    local f = assert(io.open(script, "w"))
    f:write([[
      local url, fifo = arg[1], arg[2]
      for _, key in ipairs{"body_file", "output", "ca_file"} do
        local ok, e = pcall(braid.http.request, {url = url, [key] = fifo, timeout = 1})
        print(key, ok, e.kind, e.code, e.path == fifo,
              e.message:find(key .. " '" .. fifo .. "': it is a FIFO", 1, true) ~= nil)
      end
      local ok, e = pcall(braid.http.request, {url = url, body_file = arg[3]})
      print(ok, e.code, e.message:find("it is a socket", 1, true) ~= nil)
      print(braid.http.request{url = url, output = "/dev/null"}.status)
    ]])
    f:close()
    local out, err, code = h.sh("timeout -k 1 10 " .. os.getenv("BRAID_BIN") .. " "
                                .. script .. " " .. URL .. "/bytes/10 " .. fifo
                                .. " " .. sock)
    os.execute("rm -r " .. d)
    assert.are.equal(0, code, err)
    assert.are.equal("body_file\tfalse\tio\tEINVAL\ttrue\ttrue\n"
                     .. "output\tfalse\tio\tEINVAL\ttrue\ttrue\n"
                     .. "ca_file\tfalse\tio\tEINVAL\ttrue\ttrue\n"
                     .. "false\tEINVAL\ttrue\n200\n", out)
  end)

  -- output was opened "wb" before the transfer: a request that failed
  -- before its first byte had emptied the file
  it("leaves an existing output file as it was when the request fails", h.run(function()
    local d = mkdir()
    local path = d .. "/data"
    local function write(s)
      local f = assert(io.open(path, "wb"))
      f:write(s)
      f:close()
    end
    write("old")
    assert(os.execute("chmod 640 " .. path))
    local function fails(opts)
      opts.output = path
      local ok, e = pcall(braid.http.request, opts)
      assert.is_false(ok)
      assert.are.equal("old", h.slurp(path))
      assert.are.equal("data\n", ls(d))   -- no temporary file left
      return e
    end
    assert.are.equal("COULDNT_CONNECT", fails{url = "http://127.0.0.1:1/x"}.code)
    assert.are.equal("limit", fails{url = URL .. "/bytes/100000", max_body = 10}.kind)
    assert.are.equal(404, fails{url = URL .. "/status/404", check = true}.status)
    assert.are.equal("OPERATION_TIMEDOUT", fails{url = URL .. "/stall", timeout = 0.2}.code)
    assert.is_false(braid.move_on(0.2, braid.http.request, {url = URL .. "/stall", output = path}))
    assert.are.equal("old", h.slurp(path))
    assert.are.equal("data\n", ls(d))
    -- success replaces it whole, keeping its mode; a link keeps pointing
    -- at it
    assert(os.execute("ln -s data " .. d .. "/link"))
    assert.are.equal(200, braid.http.get(URL .. "/bytes/300000", {output = d .. "/link"}).status)
    assert.are.equal(("x"):rep(300000), h.slurp(path))
    assert.are.equal("data\nlink\n", ls(d))
    assert.are.equal("640\n", (h.sh("stat -c %a " .. path)))
    assert.are.equal("link\n", (h.sh("test -L " .. d .. "/link && echo link")))
    -- a new file is made; a directory is refused
    assert.are.equal(200, braid.http.get(URL .. "/bytes/5", {output = d .. "/new"}).status)
    assert.are.equal("xxxxx", h.slurp(d .. "/new"))
    local ok, e = pcall(braid.http.get, URL .. "/bytes/5", {output = d})
    assert.are.same({false, "io", "EISDIR", d}, {ok, e.kind, e.code, e.path})
    os.execute("rm -r " .. d)
  end))

  -- the rename replaced a dangling link with a regular file and never made
  -- its target (curl, io.open and fs.write_file make the target)
  it("writes through a dangling symbolic link, making its target", h.run(function()
    local d = mkdir()
    local function link(to, name) assert(os.execute("ln -s " .. to .. " " .. d .. "/" .. name)) end
    local function is_link(name)
      return h.sh("test -L " .. d .. "/" .. name .. " && echo link") == "link\n"
    end
    assert(os.execute("mkdir " .. d .. "/sub"))
    link("target", "link")                       -- relative to the link's directory
    link("l1", "l2") link("sub/t", "l1")         -- a chain
    link(d .. "/abs", "alink")                   -- absolute
    local function get(name, n)
      return braid.http.get(URL .. "/bytes/" .. n, {output = d .. "/" .. name}).status
    end
    assert.are.equal(200, get("link", 5))
    assert.are.equal("xxxxx", h.slurp(d .. "/target"))
    assert.is_true(is_link("link"))
    assert.are.equal(200, get("l2", 3))
    assert.are.equal("xxx", h.slurp(d .. "/sub/t"))
    assert.is_true(is_link("l2") and is_link("l1"))
    assert.are.equal(200, get("alink", 300000))   -- through the write buffer
    assert.are.equal(300000, #h.slurp(d .. "/abs"))
    assert.is_true(is_link("alink"))
    -- now the target exists: it is replaced, the link kept
    assert.are.equal(200, get("link", 2))
    assert.are.equal("xx", h.slurp(d .. "/target"))
    assert.is_true(is_link("link"))
    -- a target in a missing directory, and a loop, fail naming the link
    link("nodir/x", "m")
    link("b", "a") link("a", "b")
    for name, code in pairs{m = "ENOENT", a = "ELOOP"} do
      local ok, e = pcall(braid.http.get, URL .. "/bytes/1", {output = d .. "/" .. name})
      assert.are.same({false, "io", code, d .. "/" .. name}, {ok, e.kind, e.code, e.path})
    end
    assert.are.equal("a\nabs\nalink\nb\nl1\nl2\nlink\nm\nsub\ntarget\n", ls(d))
    assert.are.equal("t\n", ls(d .. "/sub"))   -- no temporary file left
    os.execute("rm -r " .. d)
  end))

  -- libcurl sent a mix of the two
  it("refuses body together with body_file", h.run(function()
    local path = h.tmp()
    local f = assert(io.open(path, "wb"))
    f:write("FILE")
    f:close()
    local ok, e = pcall(function()
      braid.http.request{url = URL .. "/echo", body = "LONG-STRING", body_file = path}
    end)
    assert.is_false(ok)
    assert.are.equal("usage", e.kind)
    assert.matches("^spec/http_spec.lua:%d+: braid.http.request: give 'body' or 'body_file', not both", e.message)
    ok, e = pcall(braid.http.post, URL .. "/echo", "s", {body_file = path})
    assert.are.same({false, "usage"}, {ok, e.kind})
    assert.matches("braid.http.post", e.message)
    os.remove(path)
  end))

  it("puts the query before a #fragment", h.run(function()
    assert.are.equal("/echo?a=1", braid.http.request{url = URL .. "/echo#frag",
                                                     query = {a = 1}}:json().path)
    assert.are.equal("/echo?z=0&a=1", braid.http.request{url = URL .. "/echo?z=0#f?g",
                                                         query = {a = 1}}:json().path)
  end))

  -- tostring rounds to 14 digits: 2^60 went as 1.1529215046068e+18
  it("sends numbers in header values and body chunks in full", h.run(function()
    local r = braid.http.request{url = URL .. "/echo",
      headers = {["X-N"] = 2^60, ["X-F"] = 0.1 + 0.2, ["X-I"] = math.maxinteger,
                 ["X-L"] = {1/3}},
      body = coroutine.wrap(function()
        coroutine.yield(0.1 + 0.2) coroutine.yield("|") coroutine.yield(2^63)
      end)}:json()
    assert.are.equal(2^60, tonumber(r.headers["x-n"]))
    assert.are.equal("0.30000000000000004", r.headers["x-f"])
    assert.are.equal("9223372036854775807", r.headers["x-i"])
    assert.are.equal(1/3, tonumber(r.headers["x-l"]))
    assert.are.equal("0.30000000000000004|9.2233720368547758e+18", r.body)
  end))

  -- http_version = "3" went over 1.1 with a libcurl without HTTP/3; a
  -- proxy over libcurl's 8 MB limit was dropped and the request went direct
  it("raises when libcurl refuses an option", h.run(function()
    local ok, e = pcall(braid.http.request, {url = URL .. "/echo", proxy = ("p"):rep(9000000)})
    assert.are.same({false, "http", "BAD_FUNCTION_ARGUMENT"}, {ok, e.kind, e.code})
    assert.matches("braid.http.request: libcurl refused option 'proxy'", e.message)
    ok, e = pcall(braid.http.request, {url = URL .. "/echo", http_version = "3"})
    if not ok then   -- this libcurl has no HTTP/3
      assert.matches("option 'http_version'", e.message)
    end
  end))

  -- libcurl could not rewind the file: SEND_FAIL_REWIND
  it("sends body_file again after a 307", h.run(function()
    local path = h.tmp()
    local f = assert(io.open(path, "wb"))
    f:write("FILE-BODY")
    f:close()
    local r = braid.http.request{url = URL .. "/r307", body_file = path}:json()
    os.remove(path)
    assert.are.same({"POST", "/echo", "FILE-BODY"}, {r.method, r.path, r.body})
  end))

  -- lines() copied the line's whole start at every chunk (32 MB: 3.6 s)
  -- and had no cap
  it("caps res:lines at 1 MiB a line", h.run(function()
    local n = 0
    for line in braid.http.open{url = URL .. "/bytes/1048576"}:lines() do n = n + #line end
    assert.are.equal(1048576, n)
    for _, call in ipairs{braid.http.open, braid.http.request} do
      local ok, e = pcall(function()
        for _ in call{url = URL .. "/bytes/3000000"}:lines() do end
      end)
      assert.is_false(ok)
      assert.are.same({"limit", "max_line", 1048576}, {e.kind, e.option, e.limit})
      assert.matches("res:lines: line longer than 1048576 bytes", e.message)
    end
  end))

  it("names the call in errors of read('a') and of a body JSON cannot hold", h.run(function()
    local ok, e = pcall(braid.http.Response.read, 5, "a")
    assert.are.same({false, "usage"}, {ok, e.kind})
    assert.matches("bad argument #1 to 'res:read'", e.message)
    local t = {}
    t.t = t
    ok, e = pcall(function() braid.http.post(URL .. "/echo", t) end)
    assert.are.same({false, "usage"}, {ok, e.kind})
    assert.matches("^spec/http_spec.lua:%d+: bad option 'body' to 'braid.http.post' %(cannot encode it as JSON", e.message)
  end))
end)

describe("braid.json", function()
  it("round-trips values; null and empty arrays as documented", function()
    local j = braid.json
    local v = {s = "x\n\"", n = 1.5, i = 3, t = true, a = {1, "b", {c = {}}}}
    assert.are.same(v, j.decode(j.encode(v)))
    assert.are.equal("null", j.encode(j.null))
    assert.are.equal(j.null, j.decode("[null]")[1])
    assert.are.same({}, j.decode("[]"))
    assert.are.equal("{}", j.encode({}))
    assert.are.equal("[1,2]", j.encode({1, 2}))
  end)

  it("names the position of a decode error", function()
    local ok, e = pcall(braid.json.decode, '{"a": [1, 2,, 3]}')
    assert.is_false(ok)
    assert.are.equal("json", e.kind)
    assert.are.equal(13, e.position)
    assert.matches("character 13", e.message)
    ok, e = pcall(braid.json.decode, 5)
    assert.are.equal("usage", e.kind)
  end)

  it("raises kind json for what JSON cannot hold", function()
    local ok, e = pcall(braid.json.encode, {f = print})
    assert.is_false(ok)
    assert.are.equal("json", e.kind)
    ok, e = pcall(braid.json.encode, 0/0)
    assert.are.equal("json", e.kind)
  end)
end)
