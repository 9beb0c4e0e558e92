-- embed.lua NAME FILE...: prints the FILEs, one after the other, as one C
-- string named NAME, so the Lua-side library is compiled into the binary
-- and never read from disk at run time. The files make one chunk: a later
-- one sees the locals of those before it (lua/http.lua after braid.lua).
local name = arg[1]
local parts = {}
for i = 2, #arg do
  local f = assert(io.open(arg[i], "rb"))
  local s = f:read("a")
  f:close()
  if s:sub(-1) ~= "\n" then s = s .. "\n" end
  parts[#parts + 1] = s
end
local src = table.concat(parts)
io.write("/* generated from ", table.concat(arg, " ", 2),
         " by tools/embed.lua; do not edit */\n")
io.write("const char ", name, "[] =\n")
for line in src:gmatch("([^\n]*)\n?") do
  io.write('  "', (line:gsub('[\\"]', "\\%0"):gsub("\t", "\\t")), '\\n"\n')
end
io.write(";\n")
