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
