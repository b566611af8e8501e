-- Straight to the stand-in authorization server: what it serves by itself to the same connections.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = "token=bench-direct&token_type_hint=access_token"
