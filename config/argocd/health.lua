-- Argo CD health of kubenova's kinds (compute.kubenova.io): Instance, Image, ClusterImage,
-- Snapshot and Migration. Argo CD reads each kind's script from its own argocd-cm key; all of
-- them are this one, which looks at obj.kind. It runs without Lua's string library: only base
-- and table functions are used.
--
-- Every kind: Progressing until the manager has observed the latest spec; Degraded when
-- Stalled (an instance in Error or refusing a request; an import, snapshot or migration that
-- failed).
-- Instance: Degraded while its node is down (Ready Unknown, reason NodeDown: nobody can tell
--   whether it runs); Healthy when it runs (or is rescued) as its spec asks; Suspended when it rests
--   where its spec asks without running (Stopped, Paused, Suspended, Shelved,
--   ShelvedOffloaded) or waits in Resized for a confirm or a revert; else Progressing.
-- Image, ClusterImage, Snapshot, Migration: Healthy when Ready (Available, Succeeded);
--   Suspended for a cold migration waiting for its instance's confirm or revert; else
--   Progressing.
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

-- say sets the message from a condition when it has one, else to fallback.
local function say(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    hs.message = c.message
  else
    hs.message = fallback
  end
end

if obj.status == nil or obj.status.observedGeneration == nil or obj.metadata.generation == nil
    or obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the manager to observe the latest spec"
  return hs
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")

if obj.kind == "Instance" then
  local vmState = obj.status.vmState or ""
  local resting = { Stopped = true, Paused = true, Suspended = true, Shelved = true, ShelvedOffloaded = true }
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
    if resting[vmState] then
      hs.status = "Suspended"
    end
    say(ready, "The instance is " .. vmState .. " as its spec asks")
  elseif (stalled ~= nil and stalled.status == "True") or vmState == "Error" then
    hs.status = "Degraded"
    say(stalled, "The instance is in Error")
  elseif ready ~= nil and ready.reason == "NodeDown" then
    hs.status = "Degraded"
    say(ready, "The instance's node is down")
  elseif vmState == "Resized" and ready ~= nil and ready.reason == "Resized" then
    hs.status = "Suspended"
    say(ready, "Resized: waiting for a confirm or a revert")
  else
    hs.status = "Progressing"
    say(ready, "The instance is " .. vmState)
  end
  return hs
end

local phase = obj.status.phase or "Pending"
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  say(ready, phase)
elseif stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  say(stalled, phase)
else
  hs.status = "Progressing"
  if reconciling ~= nil and reconciling.status == "True" and reconciling.reason == "Resized" then
    hs.status = "Suspended"
  end
  say(reconciling, phase)
end
return hs
