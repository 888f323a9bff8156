-- wrk: POST session/events, every event id new in the run.
-- Arguments (after --): id prefix, events per request, sessions in the pool.
-- The events go to "<prefix>-s<n>", n below the pool size: sessions the bench registered
-- beforehand, as clicks belong to searches. created_at is left out: the server's time applies.

local counter = 0
thread_id = 0 -- set by setup() in each thread's own Lua state
local prefix, per_request, pool = "bench", 1, 1000
local started = 0

function setup(thread)
  thread:set("thread_id", started)
  started = started + 1
end

function init(args)
  prefix = args[1] or prefix
  per_request = tonumber(args[2] or per_request)
  pool = tonumber(args[3] or pool)
  wrk.method = "POST"
  wrk.path = "/api/v1/clickstream/session/events"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local base = prefix .. "-" .. thread_id .. "-" .. counter
  local session = prefix .. "-s" .. ((counter * 7919 + thread_id) % pool)
  local events = {}
  for i = 1, per_request do
    local position = i % 10
    events[i] = '{"event_id":"' .. base .. "-" .. i .. '","object_id":"o' .. position
      .. '","meta":{"position":' .. position .. "}}"
  end
  local body = '{"session_id":"' .. session .. '","events":[' .. table.concat(events, ",") .. "]}"
  return wrk.format(nil, nil, nil, body)
end

dofile(string.gsub(debug.getinfo(1, "S").source, "^@(.*/)[^/]*$", "%1") .. "report.lua")
