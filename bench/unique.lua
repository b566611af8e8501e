-- A new token for every request: every request misses the cache. The prefix keeps runs apart.
local counter = 0
local prefix = os.getenv("TOKEN_PREFIX") or tostring(os.time())
request = function()
  counter = counter + 1
  local body = '{"credentials": {"type": "bearer", "token": "u' .. prefix .. '-' .. counter .. '"}}'
  return wrk.format("POST", "/plugin/authenticate", {["Content-Type"] = "application/json"}, body)
end
