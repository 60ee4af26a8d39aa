// Runs one execution of a state machine definition on aws-local-stepfunctions (npm, pinned in package.json),
// with every Task state answered by the Python side (tests/asl_local/bridge.py) over stdin/stdout, one JSON
// object per line:
//   Python -> Node, first line: {definition, input, context, tasks: [state names], tokenPrefix}
//   Node -> Python, per Task:   {task: name, input, token?}   (the effective input, after Parameters; the task
//                                                              token of a .waitForTaskToken Task)
//   Python -> Node, the answer: {output} or {error, cause}     (an error is matched by Retry/Catch by its name)
//   Node -> Python, at the end: {done: "SUCCEEDED" | "FAILED", output | error + cause, path: [state names]}
// Wait states and Retry pauses take no time (waitTimeOverrides / retryIntervalOverrides of 0 ms).
import { createInterface } from 'node:readline'
import { StateMachine } from 'aws-local-stepfunctions'

const lines = createInterface({ input: process.stdin, crlfDelay: Infinity })[Symbol.asyncIterator]()
const receive = async () => {
  const next = await lines.next()
  if (next.done) throw new Error('the Python side closed the pipe')
  return JSON.parse(next.value)
}
const send = (message) => process.stdout.write(JSON.stringify(message) + '\n')

const setup = await receive()
const states = setup.definition.States
const zeroFor = (type, has) =>
  Object.fromEntries(Object.entries(states).filter(([, s]) => s.Type === type || (has && has in s)).map(([n]) => [n, 0]))

// $$.Task.Token: a new token for each run of a .waitForTaskToken Task (attempts included), read when the
// state's Parameters are evaluated; the context object is copied shallowly, so the getter survives.
let tokensUsed = 0
const currentToken = () => `${setup.tokenPrefix}${tokensUsed}`
const context = { ...setup.context, Task: { get Token() { return currentToken() } } }

const taskResourceLocalHandlers = {}
for (const name of setup.tasks) {
  const waits = String(states[name].Resource).endsWith('.waitForTaskToken')
  taskResourceLocalHandlers[name] = async (input) => {
    send({ task: name, input, ...(waits ? { token: currentToken() } : {}) })
    const answer = await receive()
    if (waits) tokensUsed += 1
    if ('error' in answer) {
      const err = new Error(answer.cause)
      err.name = answer.error
      throw err
    }
    return answer.output
  }
}

const machine = new StateMachine(setup.definition, { validationOptions: { checkArn: true, checkPaths: true } })
const execution = machine.run(setup.input, {
  context,
  overrides: {
    taskResourceLocalHandlers,
    waitTimeOverrides: zeroFor('Wait'),
    retryIntervalOverrides: zeroFor(null, 'Retry'),
  },
})
const path = []
let failed = null
const watching = (async () => {
  for await (const event of execution.eventLogs) {
    if (event.type === 'StateEntered') path.push(event.state.name)
    if (event.type === 'ExecutionFailed') failed = { error: event.Error, cause: event.Cause }
  }
})()
try {
  const output = await execution.result
  await watching
  send({ done: 'SUCCEEDED', output, path })
} catch (err) {
  await watching
  send({ done: 'FAILED', ...(failed ?? { error: err.name, cause: String(err.message) }), path })
}
