-- A new JWT for every request, from TOKENS_FILE (one per line), after the first TOKENS_SKIP of them.
local tokens = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do tokens[#tokens + 1] = line end
local n = tonumber(os.getenv("TOKENS_SKIP") or "0")
request = function()
  n = n % #tokens + 1
  local body = '{"credentials": {"type": "bearer", "token": "' .. tokens[n] .. '"}}'
  return wrk.format("POST", "/plugin/authenticate", {["Content-Type"] = "application/json"}, body)
end
