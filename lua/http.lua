-- http.lua: the Lua side of braid.http (and braid.json's name in it:
-- the codec is engine/io/json.c). It is not a chunk
-- of its own: tools/embed.lua appends it to lua/braid.lua at build time,
-- so braid.lua's locals (M, Error, usage, the library functions it keeps)
-- are in scope here, as they were when both were one file.

-- ---- braid.json: engine/io/json.c ----
-- braid.json.encode, braid.json.decode and braid.json.null are C's
-- (json.c); the HTTP side below encodes a table body with it.
local json = M.json

-- ---- braid.http: the Lua side (engine/io/http*.c hold the transfers) ----
local http = rawget(M, "http")
if http then
  local request, open, Response = http._request, http._open, http.Response
  local get_url = http._get
  http._request, http._open, http._get = nil, nil, nil
  local concat, pairs = table.concat, pairs

  -- A number as sent (in a query, a header value, a body chunk): in full,
  -- where tostring would round it to 14 digits (2^60 became
  -- 1.1529215046068e+18, 0.1 + 0.2 became 0.3): integers exactly, a float
  -- in the fewest digits that read back as the same number. NaN and the
  -- infinities have no such text ("nan", "inf" went out as header values):
  -- a usage error naming the call and what held it.
  local function number_text(x, fname, what)
    if math.type(x) == "integer" then return ("%d"):format(x) end
    if x ~= x or x == math.huge or x == -math.huge then
      usage("bad option '%s' to '%s' (a number that is not finite)", what, fname)
    end
    local s = ("%.14g"):format(x)
    return tonumber(s) == x and s or ("%.17g"):format(x)
  end

  local function escape(s)
    return (tostring(s):gsub("[^%w%-%._~]", function(ch)
      return string.format("%%%02X", ch:byte())
    end))
  end

  -- A copy of the headers option h with its number values (also in a
  -- list value) written in full, or nil when it has none (or is not a
  -- table: C refuses that). Raw, as C reads it.
  local function number_headers(h, fname)
    if type(h) ~= "table" then return nil end
    local copy
    for k, v in next, h do
      local nv = v
      if type(v) == "number" then
        nv = number_text(v, fname, "headers")
      elseif type(v) == "table" then
        local n = rawlen(v)
        for i = 1, n do
          if type(rawget(v, i)) == "number" then
            if nv == v then nv = {} for j = 1, n do nv[j] = rawget(v, j) end end
            nv[i] = number_text(nv[i], fname, "headers")
          end
        end
      end
      if nv ~= v then
        if not copy then copy = {} for k2, v2 in next, h do copy[k2] = v2 end end
        copy[k] = nv
      end
    end
    return copy
  end

  -- A copy of opts with the query in the URL, a table body as JSON (with
  -- its content type unless one is given), a function body's chunks
  -- gathered (the function is called until it returns nil).
  local function prepare(opts, fname)
    if type(opts) ~= "table" then return opts end
    local body, query = opts.body, opts.query
    local headers = number_headers(opts.headers, fname)
    if type(body) ~= "table" and type(body) ~= "function" and query == nil
       and headers == nil then
      return opts
    end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    if headers then o.headers = headers end
    if query ~= nil then
      if type(query) ~= "table" then
        usage("bad option 'query' to '%s' (table expected)", fname)
      end
      -- a name is a string or a number; a value a string, a number, a
      -- boolean or a list of those (anything else would be sent as
      -- "table: 0x..." or dropped)
      local function bad(what, t)
        usage("bad option 'query' to '%s' (%s is a %s; strings, numbers, "
              .. "booleans or a list of them expected)", fname, what, t)
      end
      -- A value as sent: a number in full (tostring rounds to 14 digits),
      -- NaN and the infinities refused.
      local function text(x, what)
        local t = type(x)
        if t == "string" then return x end
        if t == "boolean" then return tostring(x) end
        if t ~= "number" then bad(what, t) end
        if x ~= x or x == math.huge or x == -math.huge then
          bad(what, "number that is not finite")
        end
        return number_text(x, fname, "query")
      end
      -- raw (next, rawget): a script's __pairs or __index is not run here;
      -- the pairs are sorted by name, a name given twice (1 and "1") sent
      -- twice
      local fields = {}
      for k, v in next, query do
        local tk = type(k)
        if tk ~= "string" and tk ~= "number" then bad("a name", tk) end
        local name = text(k, "a name")
        if type(v) == "table" then   -- a list: keys 1..n, n of them
          local n = 0
          for _ in next, v do n = n + 1 end
          for i = 1, n do
            local x = rawget(v, i)
            if x == nil then bad(name, "table that is not a list") end
            fields[#fields + 1] = {name, text(x, ("%s[%d]"):format(name, i)), #fields}
          end
        else
          fields[#fields + 1] = {name, text(v, name), #fields}
        end
      end
      table.sort(fields, function(a, b)   -- a list keeps its order
        return a[1] < b[1] or (a[1] == b[1] and a[3] < b[3])
      end)
      local parts = {}
      for i, f in ipairs(fields) do parts[i] = escape(f[1]) .. "=" .. escape(f[2]) end
      if #parts > 0 and type(o.url) == "string" then
        -- before a #fragment (after it, the server never saw the query)
        local base, frag = o.url:match("^([^#]*)(.*)$")
        o.url = base .. (base:find("?", 1, true) and "&" or "?")
                .. concat(parts, "&") .. frag
      end
      o.query = nil
    end
    if type(body) == "table" then
      local ok, text = pcall(json.encode, body)
      if not ok then   -- named, at the script's line (json.encode's is not)
        if not (M.is_error(text) and text.kind == "json") then
          error(text, 0)   -- not enough memory: as it is
        end
        usage("bad option 'body' to '%s' (cannot encode it as JSON: %s)",
              fname, (text.message:gsub("^braid%.json%.encode: ", "")))
      end
      o.body = text
      if o.headers == nil or type(o.headers) == "table" then   -- else C says
        local h, has = {}, false
        for k, v in next, o.headers or {} do
          h[k] = v
          if type(k) == "string" and k:lower() == "content-type" then has = true end
        end
        if not has then h["Content-Type"] = "application/json" end
        o.headers = h
      end
    elseif type(body) == "function" then
      local chunks = {}
      for chunk in body do
        local t = type(chunk)
        if t ~= "string" and t ~= "number" then   -- numbers: as concat
          usage("bad option 'body' to '%s' (the body function's chunks must "
                .. "be strings; chunk #%d is a %s)", fname, #chunks + 1, t)
        end
        chunks[#chunks + 1] = t == "number" and number_text(chunk, fname, "body")
                              or chunk
      end
      o.body = concat(chunks)
    end
    return o
  end

  -- braid.http.request(opts) -> res; docs/API.md.
  function http.request(opts)
    return request(prepare(opts, "braid.http.request"), "braid.http.request")
  end

  -- braid.http.open(opts) -> res whose body is read with res:read/lines.
  function http.open(opts)
    return open(prepare(opts, "braid.http.open"), "braid.http.open")
  end

  local function with(opts, fields, fname)
    if type(fields.url) ~= "string" then
      usage("bad argument #1 to '%s' (string expected, got %s)", fname,
            type(fields.url))
    end
    if opts ~= nil and type(opts) ~= "table" then
      usage("bad argument #2 to '%s' (table expected, got %s)", fname,
            type(opts))
    end
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    for k, v in pairs(fields) do o[k] = v end
    return o
  end

  -- braid.http.get(url, [opts]) -> res.
  function http.get(url, opts)
    if opts == nil and type(url) == "string" then   -- the common case
      return get_url(url, "braid.http.get")   -- C reads the URL alone
    end
    return request(prepare(with(opts, {url = url, method = "GET"},
                                "braid.http.get"), "braid.http.get"),
                   "braid.http.get")
  end

  -- braid.http.post(url, body, [opts]) -> res; a table body is JSON.
  function http.post(url, body, opts)
    local fname = "braid.http.post"
    if opts ~= nil and type(opts) ~= "table" then
      usage("bad argument #3 to '%s' (table expected, got %s)", fname,
            type(opts))
    end
    return request(prepare(with(opts, {url = url, method = "POST", body = body},
                                fname), fname), fname)
  end

  local function check_res(self, fname)
    if getmetatable(self) ~= "braid.HttpResponse" then
      usage("bad argument #1 to '%s' (braid.HttpResponse expected, got %s)",
            fname, type(self))
    end
  end

  -- res:read("a") reads the rest of the body; res:read([n]) is C's.
  local read = Response.read
  function Response:read(n)
    if n ~= "a" then return read(self, n) end
    check_res(self, "res:read")
    local body = self.body   -- request's response: the whole body is there
    if body then return body end
    local parts = {}
    while true do
      local chunk = read(self)
      if chunk == nil then break end
      parts[#parts + 1] = chunk
    end
    return concat(parts)
  end

  -- A line longer than this raises, as a stream's read_line does
  -- (BRAID_MAX_LINE): a server sending no "\n" cannot fill the memory.
  local MAX_LINE <const> = 1 << 20

  local function line_error()
    error(Error.new{kind = "limit", limit = MAX_LINE, option = "max_line",
                    message = ("res:lines: line longer than %d bytes"):format(MAX_LINE)}, 3)
  end

  -- res:lines() -> iterator over the body's lines (without "\n" or
  -- "\r\n"), as they arrive: server-sent events, NDJSON. Each byte is
  -- scanned once: the start of a line that has no end yet is kept in
  -- `parts` (a long line is joined once, not copied at every chunk).
  function Response:lines()
    check_res(self, "res:lines")
    local buf, pos, done = "", 1, false
    local parts, plen = {}, 0   -- the current line's bytes before buf
    if self.body then buf, done = self.body, true end
    return function()
      while true do
        local nl = buf:find("\n", pos, true)
        if nl then
          local line = buf:sub(pos, nl - 1)
          pos = nl + 1
          if plen > 0 then
            parts[#parts + 1] = line
            line, parts, plen = concat(parts), {}, 0
          end
          if line:sub(-1) == "\r" then line = line:sub(1, -2) end
          if #line > MAX_LINE then line_error() end
          return line
        end
        if pos <= #buf then
          parts[#parts + 1] = buf:sub(pos)
          plen = plen + #buf - pos + 1
        end
        buf, pos = "", 1
        if plen > MAX_LINE + 1 then line_error() end   -- + a "\r"
        if done then
          if plen == 0 then return nil end
          local line = concat(parts)
          parts, plen = {}, 0
          if #line > MAX_LINE then line_error() end
          return line
        end
        local chunk = read(self)
        if chunk then buf = chunk else done = true end
      end
    end
  end

  -- res:json() -> the body decoded (read to the end first for a stream).
  function Response:json()
    check_res(self, "res:json")
    local body = self.body
    if body == nil then body = self:read("a") end
    return json.decode(body)
  end
end
