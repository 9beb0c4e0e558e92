-- braid.lua: the Lua side of the braid module. The C core passes in its
-- table; this file adds what is best said in Lua, composing C primitives.
-- Nothing here may be needed for cancellation or fail-fast to hold: those
-- live in C.
local M <const> = ...

local Error <const> = M.Error
local getmetatable, type = getmetatable, type

local function kind_is(kind)
  return function(e)
    return type(e) == "table" and getmetatable(e) == Error and e.kind == kind
  end
end

-- braid.is_timeout(e) -> boolean: e is braid's "timeout" error.
M.is_timeout = kind_is("timeout")

-- braid.is_cancelled(e) -> boolean: e is braid's "cancelled" error.
M.is_cancelled = kind_is("cancelled")

-- braid.is_error(e) -> boolean: e is any braid.Error.
function M.is_error(e)
  return type(e) == "table" and getmetatable(e) == Error
end

M.version = "0.1.0"

-- ---- braid.json: lua-cjson, loaded on first use ----
-- A private instance (cjson.new), so a script's own cjson settings and
-- braid's do not meet. Where `require "cjson"` finds nothing (an embedded
-- engine without the package library that did not preload cjson), the
-- functions raise kind "usage" saying so.
local cjson_inst
local function cjson()
  if cjson_inst then return cjson_inst end
  local ok, mod = pcall(require, "cjson")
  if not ok or type(mod) ~= "table" or type(mod.new) ~= "function" then
    error(Error.new{kind = "usage", message = "braid.json needs lua-cjson (the "
                .. "Debian package lua-cjson; require \"cjson\" failed)"}, 3)
  end
  cjson_inst = mod.new()
  cjson_inst.encode_sparse_array(true)       -- {[1]=1,[5]=5}: an object
  cjson_inst.decode_invalid_numbers(false)   -- JSON only: no NaN, no hex
  cjson_inst.encode_invalid_numbers(false)
  return cjson_inst
end

local json = {}
M.json = json

-- braid.json.null: what JSON null decodes to and encodes from.
-- (lua-cjson's null, a light userdata; set on first use of braid.json.)

-- braid.json.encode(value) -> string. An empty table encodes as {}; an
-- array is a table with keys 1..n. Raises kind "json" for what JSON
-- cannot hold (a function, NaN, a cycle or nesting over 1000).
function json.encode(v)
  local c = cjson()
  local ok, s = pcall(c.encode, v)
  if not ok then
    error(Error.new{kind = "json", message = "braid.json.encode: " .. tostring(s)}, 2)
  end
  return s
end

-- braid.json.decode(s) -> value. null becomes braid.json.null; [] and {}
-- both become an empty table. Raises kind "json" with `position` (the
-- byte where parsing failed, from 1) for text that is not JSON.
function json.decode(s)
  if type(s) ~= "string" then
    error(Error.new{kind = "usage", message = "bad argument #1 to "
                .. "'braid.json.decode' (string expected, got " .. type(s) .. ")"}, 2)
  end
  local c = cjson()
  local ok, v = pcall(c.decode, s)
  if not ok then
    local msg = tostring(v)
    error(Error.new{kind = "json", message = "braid.json.decode: " .. msg,
                position = tonumber(msg:match("at character (%d+)"))}, 2)
  end
  return v
end

setmetatable(json, {__index = function(t, k)
  if k == "null" then
    local n = cjson().null
    rawset(t, "null", n)
    return n
  end
end})

-- ---- braid.http: the Lua side (engine/io/http*.c hold the transfers) ----
local http = M.http
if http then
  local request, open, Response = http._request, http._open, http.Response
  http._request, http._open = nil, nil
  local concat, pairs = table.concat, pairs

  local function escape(s)
    return (tostring(s):gsub("[^%w%-%._~]", function(ch)
      return string.format("%%%02X", ch:byte())
    end))
  end

  -- A copy of opts with the query in the URL, a table body as JSON (with
  -- its content type unless one is given), a function body's chunks
  -- gathered (the function is called until it returns nil).
  local function prepare(opts, fname)
    if type(opts) ~= "table" then return opts end
    local body, query = opts.body, opts.query
    if type(body) ~= "table" and type(body) ~= "function" and query == nil then
      return opts
    end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    if query ~= nil then
      if type(query) ~= "table" then
        error(Error.new{kind = "usage", message = "bad option 'query' to '" ..
                    fname .. "' (table expected)"}, 3)
      end
      local keys = {}
      for k in pairs(query) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      local parts = {}
      for _, k in ipairs(keys) do
        local v = query[k]
        if type(v) == "table" then
          for _, x in ipairs(v) do parts[#parts + 1] = escape(k) .. "=" .. escape(x) end
        else
          parts[#parts + 1] = escape(k) .. "=" .. escape(v)
        end
      end
      if #parts > 0 and type(o.url) == "string" then
        o.url = o.url .. (o.url:find("?", 1, true) and "&" or "?") .. concat(parts, "&")
      end
      o.query = nil
    end
    if type(body) == "table" then
      o.body = json.encode(body)
      local h, has = {}, false
      for k, v in pairs(o.headers or {}) do
        h[k] = v
        if type(k) == "string" and k:lower() == "content-type" then has = true end
      end
      if not has then h["Content-Type"] = "application/json" end
      o.headers = h
    elseif type(body) == "function" then
      local chunks = {}
      for chunk in body do chunks[#chunks + 1] = chunk end
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
      error(Error.new{kind = "usage", message = "bad argument #1 to '" .. fname
                  .. "' (string expected, got " .. type(fields.url) .. ")"}, 3)
    end
    if opts ~= nil and type(opts) ~= "table" then
      error(Error.new{kind = "usage", message = "bad argument #2 to '" .. fname
                  .. "' (table expected, got " .. type(opts) .. ")"}, 3)
    end
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    for k, v in pairs(fields) do o[k] = v end
    return o
  end

  -- braid.http.get(url, [opts]) -> res.
  function http.get(url, opts)
    if opts == nil and type(url) == "string" then   -- the common case
      return request({url = url}, "braid.http.get")
    end
    return request(prepare(with(opts, {url = url, method = "GET"},
                                "braid.http.get"), "braid.http.get"),
                   "braid.http.get")
  end

  -- braid.http.post(url, body, [opts]) -> res; a table body is JSON.
  function http.post(url, body, opts)
    local fname = "braid.http.post"
    if opts ~= nil and type(opts) ~= "table" then
      error(Error.new{kind = "usage", message = "bad argument #3 to '" .. fname
                  .. "' (table expected, got " .. type(opts) .. ")"}, 2)
    end
    return request(prepare(with(opts, {url = url, method = "POST", body = body},
                                fname), fname), fname)
  end

  local function check_res(self, fname)
    if getmetatable(self) ~= "braid.HttpResponse" then
      error(Error.new{kind = "usage", message = "bad argument #1 to '" .. fname
                  .. "' (braid.HttpResponse expected, got " .. type(self) .. ")"}, 3)
    end
  end

  -- res:read("a") reads the rest of the body; res:read([n]) is C's.
  local read = Response.read
  function Response:read(n)
    if n ~= "a" then return read(self, n) end
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

  -- res:lines() -> iterator over the body's lines (without "\n" or
  -- "\r\n"), as they arrive: server-sent events, NDJSON.
  function Response:lines()
    check_res(self, "res:lines")
    local buf, pos, done = "", 1, false
    if self.body then buf, done = self.body, true end
    return function()
      while true do
        local nl = buf:find("\n", pos, true)
        if nl then
          local line = buf:sub(pos, nl - 1)
          pos = nl + 1
          if line:sub(-1) == "\r" then line = line:sub(1, -2) end
          return line
        end
        if done then
          if pos <= #buf then
            local line = buf:sub(pos)
            buf, pos = "", 1
            return line
          end
          return nil
        end
        local chunk = read(self)
        buf = buf:sub(pos)
        pos = 1
        if chunk then buf = buf .. chunk else done = true end
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
