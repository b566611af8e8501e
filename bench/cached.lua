-- One token, always the same: the cached path.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"context": {"method": "GET", "uri": "/api/users", "headers": {"user-agent": "wrk"}}, ' ..
           '"credentials": {"type": "bearer", "token": "bench-cached-token-0123456789"}}'
