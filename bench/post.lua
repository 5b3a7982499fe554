-- wrk script for bench/ingest.py: POST one body over and over, count the answers.
--
--   cat bench/post.lua bench/report.lua > /tmp/post.lua
--   wrk -t2 -c32 -d20s --latency -s /tmp/post.lua http://127.0.0.1:8000/postbacks/passes \
--       -- tests/data/vendor_example.xml TOKEN
--
-- Arguments after "--": the file whose bytes are the request body (sent raw, as
-- text/xml) and, optionally, a token sent as "Authorization: Bearer <token>".
-- Run through bench/ingest.py, which appends bench/report.lua (done(): the BENCH_RESULT line).

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

-- done(): bench/report.lua, appended by bench/ingest.py's wrk_script.
