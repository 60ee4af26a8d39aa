// Runs one execution of a state machine definition on aws-local-stepfunctions (npm, pinned in package.json),
// with every Task state (top-level or inside a Map's ItemProcessor) answered by the Python side
// (tests/asl_local/bridge.py) over stdin/stdout, one JSON object per line. Several Tasks may be in flight at
// once (Map iterations side by side): each carries an id and its answer names it.
//   Python -> Node, first line:     {definition, input, context, tasks: [state names], tokenPrefix}
//   Node -> Python, per Task run:   {id, task, input, token?}  (the effective input, after Parameters; the task
//                                                              token of a .waitForTaskToken Task)
//   Python -> Node, its answer:     {id, output} or {id, error, cause}  (an error is matched by Retry/Catch by name)
//   Python -> Node, at any time:    {abort: true}  (execution.abort(), as StopExecution)
//   Node -> Python, when a Map iteration is stopped (its Map failed, or the execution was aborted):
//                                   {abandoned: [{id, task, token?}]}  (its Tasks in flight; no answer is awaited)
//   Node -> Python, at the end:     {done: "SUCCEEDED" | "FAILED" | "ABORTED", output | error + cause,
//                                    path: [[state name, Map iteration index or null], ...]}
// Wait states and Retry pauses take no time (waitTimeOverrides / retryIntervalOverrides of 0 ms).
import { createInterface } from 'node:readline'
import { ExecutionAbortedError, StateMachine } from 'aws-local-stepfunctions'

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })[Symbol.asyncIterator]()
const send = (message) => process.stdout.write(JSON.stringify(message) + '\n')

const first = await lines.next()
if (first.done) throw new Error('the Python side closed the pipe before the setup')
const setup = JSON.parse(first.value)

// Every state by name, nested ones included (names are unique across a state machine, Map item processors
// and Parallel branches too): Task handlers and the Wait/Retry overrides are looked up by name at any depth.
const states = {}
const collect = (machine) => {
  for (const [name, state] of Object.entries(machine.States)) {
    states[name] = state
    for (const inner of [state.ItemProcessor, state.Iterator, ...(state.Branches ?? [])]) if (inner) collect(inner)
  }
}
collect(setup.definition)
const zeroFor = (type, has) =>
  Object.fromEntries(Object.entries(states).filter(([, s]) => s.Type === type || (has && has in s)).map(([n]) => [n, 0]))

// $$.Task.Token: a new token for each run of a .waitForTaskToken Task (attempts included). The getter is read
// while the state's Parameters are evaluated, and the handler is called in the same synchronous stretch
// (StateExecutor.processInput, then TaskStateAction.execute calls it before its first await), so taking
// the token and counting it on entry to the handler gives each concurrent run its own. The context object is
// copied shallowly, so the getter survives.
let tokensUsed = 0
const currentToken = () => `${setup.tokenPrefix}${tokensUsed}`
const context = { ...setup.context, Task: { get Token() { return currentToken() } } }

// Task runs in flight: id -> {resolve, reject, iteration, message}.
const pending = new Map()
let nextId = 0
const handlersFor = (iteration) => Object.fromEntries(setup.tasks.map((name) => {
  const waits = String(states[name].Resource).endsWith('.waitForTaskToken')
  return [name, (input) => {
    const message = { id: nextId++, task: name, input }
    if (waits) {
      message.token = currentToken()
      tokensUsed += 1
    }
    return new Promise((resolve, reject) => {
      pending.set(message.id, { resolve, reject, iteration, message })
      send(message)
    })
  }]
}))

// A Map runs each iteration as an execution of its own (StateMachine.run on the item processor) and aborts the
// others when one fails; it hands every iteration the same run options. Each iteration gets handlers of its
// own here, so that when it is stopped its Tasks in flight are known and reported abandoned: their task
// tokens are closed (SendTask* answers TaskTimedOut, as Step Functions does once an iteration has stopped).
let nextIteration = 0
const abandon = (iteration) => {
  const gone = [...pending.entries()].filter(([, run]) => run.iteration === iteration)
  for (const [id] of gone) pending.delete(id)
  if (gone.length) send({ abandoned: gone.map(([, run]) => ({ id: run.message.id, task: run.message.task,
                                                                ...('token' in run.message ? { token: run.message.token } : {}) })) })
}
const run = StateMachine.prototype.run
StateMachine.prototype.run = function (input, options) {
  if (!options?._rootAbortSignal) return run.call(this, input, options)  // the execution itself
  const iteration = nextIteration++
  const overrides = { ...options.overrides, taskResourceLocalHandlers: handlersFor(iteration) }
  const execution = run.call(this, input, { ...options, overrides })
  options._rootAbortSignal.addEventListener('abort', () => abandon(iteration), { once: true })
  return { ...execution, abort: () => { abandon(iteration); execution.abort() } }
}

const machine = new StateMachine(setup.definition, { validationOptions: { checkArn: true, checkPaths: true } })
const execution = machine.run(setup.input, {
  context,
  overrides: {
    taskResourceLocalHandlers: handlersFor(null),
    waitTimeOverrides: zeroFor('Wait'),
    retryIntervalOverrides: zeroFor(null, 'Retry'),
  },
})

// Answers and aborts, until the Python side closes the pipe.
;(async () => {
  for (let next = await lines.next(); !next.done; next = await lines.next()) {
    const message = JSON.parse(next.value)
    if (message.abort) {
      execution.abort()
      continue
    }
    const run = pending.get(message.id)
    if (!run) continue  // abandoned meanwhile: nobody waits for it
    pending.delete(message.id)
    if ('error' in message) {
      const err = new Error(message.cause)
      err.name = message.error
      run.reject(err)
    } else {
      run.resolve(message.output)
    }
  }
})()

const path = []
let failed = null
const watching = (async () => {
  for await (const event of execution.eventLogs) {
    if (event.type === 'StateEntered') path.push([event.state.name, event.index ?? null])
    if (event.type === 'ExecutionFailed') failed = { error: event.Error, cause: event.Cause }
  }
})()
let end
try {
  const output = await execution.result
  await watching
  end = { done: 'SUCCEEDED', output, path }
} catch (err) {
  await watching
  end = err instanceof ExecutionAbortedError ? { done: 'ABORTED', path }
    : { done: 'FAILED', ...(failed ?? { error: err.name, cause: String(err.message) }), path }
}
// Tasks still in flight (an aborted execution's) hold timers: leave once the end is written.
process.stdout.write(JSON.stringify(end) + '\n', () => process.exit(0))
