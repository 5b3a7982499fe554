-- wrk script for bench/ingest.py: POST one body over and over, count the answers.
--
--   wrk -t2 -c32 -d20s --latency -s bench/post.lua http://127.0.0.1:8000/postbacks/passes \
--       -- tests/data/vendor_example.xml TOKEN
--
-- Arguments after "--": the file whose bytes are the request body (sent raw, as
-- text/xml) and, optionally, a token sent as "Authorization: Bearer <token>".
-- done() prints one line starting with "BENCH_RESULT " followed by a JSON object:
-- requests, seconds, requests/s, latency p50/p90/p99/max in milliseconds, the number of
-- answers with status 200 and without, and wrk's socket errors.

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s post.lua URL -- BODY_FILE [TOKEN]")
   end
   local file = assert(io.open(path, "rb"))
   wrk.method = "POST"
   wrk.body = file:read("*a")
   file:close()
   wrk.headers["Content-Type"] = "text/xml"
   if args[2] ~= nil and args[2] ~= "" then
      wrk.headers["Authorization"] = "Bearer " .. args[2]
   end
   ok = 0
   not_ok = 0
   other_status = {}
end

function response(status, headers, body)
   if status == 200 then
      ok = ok + 1
   else
      not_ok = not_ok + 1
   end
end

function done(summary, latency, requests)
   local ok_total, not_ok_total = 0, 0
   for _, thread in ipairs(threads) do
      ok_total = ok_total + thread:get("ok")
      not_ok_total = not_ok_total + thread:get("not_ok")
   end
   local seconds = summary.duration / 1e6
   local errors = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests": %d, "seconds": %.3f, "rps": %.1f, '
      .. '"p50_ms": %.3f, "p90_ms": %.3f, "p99_ms": %.3f, "max_ms": %.3f, "mean_ms": %.3f, '
      .. '"status_200": %d, "status_other": %d, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
      summary.requests, seconds, summary.requests / seconds,
      latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
      latency.max / 1000, latency.mean / 1000,
      ok_total, not_ok_total,
      errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
