-- wrk script for the post_1m workload: every request POSTs a 1 MiB body.
wrk.method = "POST"
wrk.body = string.rep("a", 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
