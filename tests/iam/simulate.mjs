// Decides IAM requests with @cloud-copilot/iam-simulate, one JSON request per stdin line, one JSON answer per
// stdout line (tests/aws_iam.py drives it). A request: {principal, action, resource, accountId, context,
// identityPolicies: [{name, policy}], policySet (an id of those policies), resourcePolicy?}. An answer: {result} with Allowed / ImplicitlyDenied /
// ExplicitlyDenied, or {error} when the simulator refuses the request (unknown action, a resource ARN of the
// wrong type for the action, a context key the action does not have).
import { createInterface } from 'node:readline'
import { isWildcardOnlyAction, runSimulation, runUnsafeSimulation } from '@cloud-copilot/iam-simulate'

// Validation (policies, action, resource type, context keys) costs two thirds of a simulation. It is done in
// full the first time a request shape is seen: the same policies, action, context keys and resource ARN up to
// its last '/' or ':' (so the same resource type). Requests of a shape that passed are then only evaluated.
const validated = new Set()
const shapeOf = (req, resource) =>
  JSON.stringify([req.policySet, req.action.toLowerCase(), Object.keys(req.context || {}).sort(),
    !!req.resourcePolicy, resource.slice(0, Math.max(resource.lastIndexOf('/'), resource.lastIndexOf(':')) + 1)])

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })
for await (const line of lines) {
  if (!line.trim()) continue
  let answer
  try {
    const req = JSON.parse(line)
    // Actions that support no resource-level permissions are authorized on "*" (e.g. states:SendTaskSuccess).
    const [service, action] = req.action.split(':')
    const wildcard = await isWildcardOnlyAction(service, action).catch(() => false)  // unknown: refused below
    const resource = wildcard ? '*' : req.resource
    const simulation = {
      identityPolicies: req.identityPolicies,
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      request: {
        action: req.action,
        principal: req.principal,
        resource: { resource, accountId: req.accountId },
        contextVariables: req.context || {},
      },
    }
    if (req.resourcePolicy) simulation.resourcePolicy = req.resourcePolicy
    const shape = shapeOf(req, resource)
    if (validated.has(shape)) {
      process.stdout.write(JSON.stringify({ result: await runUnsafeSimulation(simulation, {}), resource }) + '\n')
      continue
    }
    const out = await runSimulation(simulation, {})
    if (out.resultType === 'error') {
      answer = { error: out.errors.message, details: out.errors, resource }
    } else {
      const result = out.resultType === 'single' ? out.result : out.results[0]
      answer = { result: out.overallResult, resource, ignoredContextKeys: result?.ignoredContextKeys || [] }
      if (out.resultType === 'single' && !answer.ignoredContextKeys.length) validated.add(shape)
    }
  } catch (err) {
    answer = { error: String(err && err.stack ? err.stack : err) }
  }
  process.stdout.write(JSON.stringify(answer) + '\n')
}
