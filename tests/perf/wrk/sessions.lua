-- wrk: POST session, every request a new session id (a search registered).
-- Arguments (after --): id prefix. created_at is left out: the server's time applies.

local counter = 0
thread_id = 0 -- set by setup() in each thread's own Lua state
local prefix = "bench"
local started = 0
local results = {}
for i = 0, 9 do
  results[#results + 1] = '{"object_id":"o' .. i .. '","rank":' .. (1 - i / 10) .. "}"
end
local tail = '","search_query":"red running shoes","search_results":['
  .. table.concat(results, ",") .. '],"search_meta":{"lang":"en"},"user_id":"u1"}'

function setup(thread)
  thread:set("thread_id", started)
  started = started + 1
end

function init(args)
  prefix = args[1] or prefix
  wrk.method = "POST"
  wrk.path = "/api/v1/clickstream/session"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = '{"session_id":"' .. prefix .. "-" .. thread_id .. "-" .. counter .. tail
  return wrk.format(nil, nil, nil, body)
end

dofile(string.gsub(debug.getinfo(1, "S").source, "^@(.*/)[^/]*$", "%1") .. "report.lua")
