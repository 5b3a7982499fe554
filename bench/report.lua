-- The end of every bench wrk script: bench/ingest.py's wrk_script appends it to the script's own
-- text (post.lua, bench/alerts.py's paced script), which keeps each thread in `threads` (its
-- setup) and counts per thread the answers `ok` (200) and `not_ok`, and optionally `failures`
-- (failing postbacks sent). done() prints one line "BENCH_RESULT " + a JSON object: requests,
-- seconds, requests/s, latency p50/p90/p99/max/mean in milliseconds, answers with status 200 and
-- without, and wrk's socket errors; then "BENCH_FAILURES N".

function done(summary, latency, requests)
   local ok_total, not_ok_total, failures_total = 0, 0, 0
   for _, thread in ipairs(threads) do
      ok_total = ok_total + thread:get("ok")
      not_ok_total = not_ok_total + thread:get("not_ok")
      failures_total = failures_total + (thread:get("failures") or 0)
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
   io.write(string.format('BENCH_FAILURES %d\n', failures_total))
end
