-- One JWT, always the same (TOKEN): the cached path of a JWT.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"context": {"method": "GET", "uri": "/api/users", "headers": {"user-agent": "wrk"}}, ' ..
           '"credentials": {"type": "bearer", "token": "' .. os.getenv("TOKEN") .. '"}}'
