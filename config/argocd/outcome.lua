-- Argo CD health of the kubenova kinds that work toward one outcome: Image and ClusterImage
-- (an import), Snapshot and Migration (one action each). Their status carries a phase and the
-- Ready, Reconciling and Stalled conditions.
-- Argo CD runs this without Lua's string library: only base and table functions are used.
-- Healthy: Ready (the image is Available, the snapshot or migration Succeeded).
-- Degraded: Stalled (the import, snapshot or migration Failed).
-- Suspended: a cold migration waits in Resized for a confirm or a revert of its instance.
-- Progressing: anything in between, or the manager has not yet seen the latest spec.
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

if obj.status == nil or obj.status.observedGeneration == nil or obj.metadata.generation == nil
    or obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the manager to observe the latest spec"
  return hs
end

local ready = condition("Ready")
local stalled = condition("Stalled")
local reconciling = condition("Reconciling")
local phase = obj.status.phase or "Pending"

if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = phase
  if ready.message ~= nil and ready.message ~= "" then
    hs.message = ready.message
  end
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message
  return hs
end
hs.status = "Progressing"
hs.message = phase
if reconciling ~= nil and reconciling.status == "True" then
  if reconciling.reason == "Resized" then
    hs.status = "Suspended"
  end
  if reconciling.message ~= nil and reconciling.message ~= "" then
    hs.message = reconciling.message
  end
end
return hs
