-- Argo CD health of a kubenova Instance (compute.kubenova.io/Instance).
-- Argo CD runs this without Lua's string library: only base and table functions are used.
-- Healthy: the instance runs (or is rescued) as its spec asks.
-- Suspended: it rests where its spec asks without running (Stopped, Paused, Suspended,
--   Shelved, ShelvedOffloaded), or it waits in Resized for a confirm or a revert.
-- Degraded: Error, or a request the state machine refused (Stalled).
-- Progressing: a task runs, the instance waits for a host, or the manager has not yet seen
--   the latest spec.
local hs = {}

local function condition(conditionType)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == conditionType then
      return c
    end
  end
  return nil
end

local resting = { Stopped = true, Paused = true, Suspended = true, Shelved = true, ShelvedOffloaded = true }

if obj.status == nil or obj.status.observedGeneration == nil or obj.metadata.generation == nil
    or obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the manager to observe the latest spec"
  return hs
end

local vmState = obj.status.vmState or ""
local ready = condition("Ready")
local stalled = condition("Stalled")

if ready ~= nil and ready.status == "True" then
  if resting[vmState] then
    hs.status = "Suspended"
  else
    hs.status = "Healthy"
  end
  hs.message = ready.message
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message
  return hs
end
if vmState == "Error" then
  hs.status = "Degraded"
  hs.message = "The instance is in Error"
  if ready ~= nil and ready.message ~= nil then
    hs.message = ready.message
  end
  return hs
end
if vmState == "Resized" and ready ~= nil and ready.reason == "Resized" then
  hs.status = "Suspended"
  hs.message = ready.message
  return hs
end
hs.status = "Progressing"
hs.message = "The instance is " .. vmState
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
end
return hs
