// The argument contract at the JavaScript boundary (API.md "Errors", guard.js): every argument
// error is E_INVALID with a sentence naming the method; a method that returns a Promise never
// throws; strings that are not well-formed Unicode are refused; options must be objects.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { rmSync } from 'node:fs'
import { TaskManager, tempDir, alive } from './helpers.mjs'

const ASYNC = ['spawn', 'wait', 'kill', 'replay', 'gc', 'readOutput', 'tail', 'waitFor', 'run', 'screen', 'close']
const SYNC = ['get', 'list', 'drainCompletions', 'ackCompletions', 'onEvent', 'watch', 'unwatch', 'promote', 'write', 'resize']
const isInvalid = (method) => (e) => {
  assert.equal(e.code, 'E_INVALID', `${method}: ${e.code} ${e.message}`)
  assert.match(e.message, new RegExp(`${method}\\(\\)`), `${method}: the message names the method`)
  return true
}

test('wrong types are E_INVALID; Promise-returning methods reject, never throw', async () => {
  const storageDir = tempDir()
  const m = new TaskManager({ storageDir })
  for (const method of ASYNC) {
    let result
    assert.doesNotThrow(() => { result = m[method](42, 42, 42) }, `${method} threw synchronously`)
    assert.ok(result instanceof Promise, `${method} returns a Promise`)
    await assert.rejects(result, isInvalid(method))
  }
  const m2 = new TaskManager({ storageDir })
  for (const method of SYNC) assert.throws(() => m2[method](42, 42, 42), isInvalid(method))
  // A value of the wrong type deep inside options: napi's conversion error becomes ours.
  await assert.rejects(m2.spawn({ sessionId: 's', command: 5 }), (e) => e.code === 'E_INVALID' && /spawn\(\).*command/.test(e.message))
  assert.throws(() => new TaskManager({ storageDir, maxRunning: 'many' }), (e) => e.code === 'E_INVALID' && /maxRunning/.test(e.message))
  await m2.close()
  rmSync(storageDir, { recursive: true, force: true })
})

test('options that are not objects are refused, not ignored: kill(id, 42) kills nothing', async () => {
  const storageDir = tempDir()
  const m = new TaskManager({ storageDir })
  const t = await m.spawn({ sessionId: 'K', command: 'sleep 30' })
  await assert.rejects(m.kill(t.taskId, 42), isInvalid('kill'))
  assert.ok(alive(t.pid), 'the task was killed by a call with invalid options')
  await m.close({ killRunning: true })
  rmSync(storageDir, { recursive: true, force: true })
})

test('strings with lone surrogates are refused: two different session ids never become one', async () => {
  const storageDir = tempDir()
  const m = new TaskManager({ storageDir })
  await assert.rejects(m.spawn({ sessionId: 'a\ud800', command: 'true' }), isInvalid('spawn'))
  await assert.rejects(m.spawn({ sessionId: 's', command: 'echo \udfff' }), isInvalid('spawn'))
  assert.throws(() => m.drainCompletions('a\ud801'), isInvalid('drainCompletions'))
  assert.throws(() => m.ackCompletions('s', ['bash-\ud800']), isInvalid('ackCompletions'))
  await assert.rejects(m.spawn({ sessionId: 's', command: 'true', env: { X: '\ud800' } }), isInvalid('spawn'))
  // Well-formed text outside the BMP is fine.
  const ok = await m.spawn({ sessionId: 'emoji 😀', command: 'true' })
  assert.equal((await m.wait(ok.taskId)).status, 'completed')
  await m.close()
  rmSync(storageDir, { recursive: true, force: true })
})

test('an option value its string union does not list is E_INVALID, with a sentence naming the method, the option and the values', async () => {
  const storageDir = tempDir()
  const refused = (method, field, values, got) => (e) => {
    assert.equal(e.code, 'E_INVALID', `${method} ${field}: ${e.code} ${e.message}`)
    assert.equal(e.message, `${method}(): ${field} must ${values} (got ${got})`)
    return true
  }
  assert.throws(() => new TaskManager({ storageDir, durability: 'lazy' }), refused('TaskManager', 'durability', "be 'batched' or 'strict'", '"lazy"'))
  assert.throws(() => new TaskManager({ storageDir, durability: null }), refused('TaskManager', 'durability', "be 'batched' or 'strict'", 'null'))
  const m = new TaskManager({ storageDir })
  const modes = "be 'pipes' or 'pty'"
  const stdin = "be 'null' or 'pipe'"
  const statuses = "hold only 'starting', 'running', 'killing', 'completed', 'failed', 'killed' or 'timed_out'"
  const signals = "be 'SIGTERM', 'SIGINT', 'SIGHUP' or 'SIGKILL'"
  const id = 'bash-0000000000000000'
  const rejected = [
    ['spawn', 'mode', modes, '"tty"', () => m.spawn({ sessionId: 's', command: 'true', mode: 'tty' })],
    ['spawn', 'mode', modes, '"PTY"', () => m.spawn({ sessionId: 's', command: 'true', mode: 'PTY' })],
    ['spawn', 'stdin', stdin, '5', () => m.spawn({ sessionId: 's', command: 'true', stdin: 5 })],
    ['run', 'mode', modes, '"tty"', () => m.run({ sessionId: 's', command: 'true', mode: 'tty', waitMs: 1000 })],
    ['run', 'stdin', stdin, '"file"', () => m.run({ sessionId: 's', command: 'true', stdin: 'file', waitMs: 1000 })],
    ['kill', 'signal', signals, '"SIGSTOP"', () => m.kill(id, { signal: 'SIGSTOP' })],
    ['kill', 'signal', signals, '"sigterm"', () => m.kill(id, { signal: 'sigterm' })],
    ['readOutput', 'stream', "be 'stdout', 'stderr' or 'pty'", '"combined"', () => m.readOutput(id, { stream: 'combined' })],
    ['tail', 'stream', "be 'stdout', 'stderr', 'pty' or 'combined'", '"both"', () => m.tail(id, { stream: 'both' })],
  ]
  for (const [method, field, values, got, call] of rejected) {
    let result
    assert.doesNotThrow(() => { result = call() }, `${method} threw synchronously`)
    await assert.rejects(result, refused(method, field, values, got))
  }
  assert.throws(() => m.list({ status: ['running', 'sleeping'] }), refused('list', 'status', statuses, '"sleeping"'))
  assert.throws(() => m.list({ status: 'running' }), (e) => e.code === 'E_INVALID' && e.message === `list(): status must be an array of ${statuses.slice('hold only '.length)}, got a string`)
  // Every value each union lists is taken (and left-out options are too).
  assert.deepEqual(m.list({ status: ['starting', 'running', 'killing', 'completed', 'failed', 'killed', 'timed_out'] }), [])
  for (const durability of ['batched', 'strict', undefined]) await new TaskManager({ storageDir, durability }).close()
  const t = await m.spawn({ sessionId: 's', command: 'read line; echo "got $line"', mode: 'pipes', stdin: 'pipe' })
  assert.deepEqual([t.mode, t.status, t.stdin], ['pipes', 'running', 'pipe'])
  m.write(t.taskId, 'x\n')
  assert.equal((await m.wait(t.taskId)).status, 'completed')
  for (const stream of ['stdout', 'stderr']) assert.equal((await m.readOutput(t.taskId, { stream })).eof, true)
  for (const stream of ['stdout', 'stderr', 'combined', undefined]) await m.tail(t.taskId, { stream })
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGKILL']) {
    const s = await m.spawn({ sessionId: 's', command: 'sleep 30', stdin: 'null' })
    const killed = await m.kill(s.taskId, { signal, graceMs: 1000 })
    assert.deepEqual([killed.status, killed.signal], ['killed', signal])
  }
  const pty = await m.spawn({ sessionId: 's', command: 'echo hi', mode: 'pty' })
  assert.equal((await m.wait(pty.taskId)).mode, 'pty')
  await m.tail(pty.taskId, { stream: 'pty' })
  await m.readOutput(pty.taskId, { stream: 'pty' })
  await m.close()
  rmSync(storageDir, { recursive: true, force: true })
})
