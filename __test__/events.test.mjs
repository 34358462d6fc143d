// Events, completions, watches, waitFor, run and promote.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { collector, freshManager, runChild, sleep } from './helpers.mjs'

describe('events', () => {
  let ctx
  before(() => {
    ctx = freshManager({ longRunningIntervalMs: 100 })
  })
  after(() => ctx.cleanup())
  const m = () => ctx.manager

  test('one completion event per task, with exit-aware previews', async () => {
    const c = collector(m())
    const ok = await m().spawn({ sessionId: 'E', command: 'echo fine' })
    const bad = await m().spawn({ sessionId: 'E', command: 'echo context; seq 1 3000; echo boom >&2; exit 9' })
    await m().wait(ok.taskId)
    await m().wait(bad.taskId)
    await c.until((ev) => ev.filter((e) => e.type === 'completion').length >= 2)
    await sleep(100)
    c.off()
    const completions = c.events.filter((e) => e.type === 'completion').map((e) => e.completion)
    assert.equal(completions.filter((x) => x.taskId === ok.taskId).length, 1)
    assert.equal(completions.filter((x) => x.taskId === bad.taskId).length, 1)
    const okC = completions.find((x) => x.taskId === ok.taskId)
    assert.deepEqual([okC.status, okC.exitCode, okC.outputPreview, okC.outputTruncated], ['completed', 0, 'fine\n', false])
    assert.equal(okC.sessionId, 'E')
    assert.equal(okC.command, 'echo fine')
    const badC = completions.find((x) => x.taskId === bad.taskId)
    assert.equal(badC.status, 'failed')
    assert.equal(badC.exitCode, 9)
    assert.equal(badC.outputTruncated, true)
    assert.ok(badC.outputPreview.startsWith('context\n1\n'))
    assert.ok(badC.outputPreview.endsWith('3000\nboom\n'))
    assert.match(badC.outputPreview, /omitted; full output:/)
  })

  test('unsubscribed listeners are not called; a throwing listener does not stop delivery', async () => {
    const calls = { gone: 0, thrower: 0, good: 0 }
    const offGone = m().onEvent(() => calls.gone++)
    offGone()
    const offThrow = m().onEvent(() => {
      calls.thrower++
      throw new Error('listener failure, on purpose')
    })
    const good = collector(m())
    const s = await m().spawn({ sessionId: 'E', command: 'true' })
    await good.until((ev) => ev.some((e) => e.type === 'completion' && e.completion.taskId === s.taskId))
    const s2 = await m().spawn({ sessionId: 'E', command: 'true' })
    await good.until((ev) => ev.some((e) => e.type === 'completion' && e.completion.taskId === s2.taskId))
    offThrow()
    good.off()
    assert.equal(calls.gone, 0)
    assert.ok(calls.thrower >= 2, 'the throwing listener kept being called')
  })

  test('long_running repeats while a task runs', async () => {
    const c = collector(m())
    const s = await m().spawn({ sessionId: 'E', command: 'sleep 0.45' })
    await m().wait(s.taskId)
    c.off()
    const ticks = c.events.filter((e) => e.type === 'long_running' && e.taskId === s.taskId)
    assert.ok(ticks.length >= 3, `only ${ticks.length} long_running events`)
    assert.ok(ticks[1].elapsedMs > ticks[0].elapsedMs)
    assert.equal(ticks[0].command, 'sleep 0.45')
  })

  test('regex watch with a capture, substring watch across two writes, task_exit safety net', async () => {
    const c = collector(m())
    const s = await m().spawn({ sessionId: 'E', command: 'sleep 0.2; printf "server listen"; sleep 0.2; echo "ing on port 3000"; sleep 0.1' })
    const re = m().watch(s.taskId, { regex: 'port (\\d+)', once: true })
    const sub = m().watch(s.taskId, { pattern: 'listening on' })
    const never = m().watch(s.taskId, { pattern: 'never printed' })
    const removed = m().watch(s.taskId, { pattern: 'server' })
    assert.equal(m().unwatch(s.taskId, removed), true)
    assert.equal(m().unwatch(s.taskId, removed), false)
    await m().wait(s.taskId)
    await c.until((ev) => ev.some((e) => e.type === 'completion' && e.completion.taskId === s.taskId))
    c.off()
    const mine = c.events.filter((e) => e.type === 'pattern_match' && e.taskId === s.taskId)
    const byWatch = (id) => mine.filter((e) => e.watchId === id)
    assert.deepEqual(byWatch(re).map((e) => [e.matchText, e.groups, e.reason, e.stream]), [['port 3000', ['3000'], 'pattern_match', 'stdout']])
    assert.deepEqual(byWatch(sub).map((e) => [e.matchText, e.matchOffset, e.context]), [['listening on', 7, 'server listening on port 3000']])
    assert.deepEqual(byWatch(never).map((e) => e.reason), ['task_exit'])
    assert.deepEqual(byWatch(removed), [])
    // Matches come before the completion.
    const completionAt = c.events.findIndex((e) => e.type === 'completion' && e.completion.taskId === s.taskId)
    assert.ok(c.events.findIndex((e) => e.watchId === never) < completionAt)
  })

  test('watch errors: bad regex, too many watches, finished task', async () => {
    const s = await m().spawn({ sessionId: 'E', command: 'sleep 5' })
    assert.throws(() => m().watch(s.taskId, { regex: '(unclosed' }), (e) => e.code === 'E_INVALID' && /regex/.test(e.message))
    assert.throws(() => m().watch(s.taskId, {}), (e) => e.code === 'E_INVALID')
    for (let i = 0; i < 8; i++) m().watch(s.taskId, { pattern: `p${i}` })
    assert.throws(() => m().watch(s.taskId, { pattern: 'ninth' }), (e) => e.code === 'E_LIMIT')
    await m().kill(s.taskId)
    assert.throws(() => m().watch(s.taskId, { pattern: 'x' }), (e) => e.code === 'E_EXITED')
  })

  test('waitFor resolves matched, exited and timeout, and rejects when aborted', async () => {
    const s = await m().spawn({ sessionId: 'E', command: 'echo booting; sleep 0.2; echo "ready on 8080"; sleep 0.3' })
    const matched = await m().waitFor(s.taskId, { regex: 'ready on (\\d+)' })
    assert.equal(matched.reason, 'matched')
    assert.equal(matched.matchText, 'ready on 8080')
    assert.deepEqual(matched.groups, ['8080'])
    assert.equal(matched.matchOffset, 8)
    assert.equal(matched.snapshot.status, 'running')
    const early = await m().waitFor(s.taskId, { pattern: 'booting' })
    assert.equal(early.reason, 'matched', 'output printed before the call counts')
    const exited = await m().waitFor(s.taskId, { pattern: 'never' })
    assert.equal(exited.reason, 'exited')
    assert.equal(exited.snapshot.status, 'completed')
    assert.equal((await m().waitFor(s.taskId, { pattern: 'ready' })).reason, 'matched', 'a finished task is searched too')

    const slow = await m().spawn({ sessionId: 'E', command: 'sleep 5' })
    const timedOut = await m().waitFor(slow.taskId, { pattern: 'x', timeoutMs: 50 })
    assert.equal(timedOut.reason, 'timeout')
    assert.equal(timedOut.snapshot.status, 'running')
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 30)
    await assert.rejects(m().waitFor(slow.taskId, { pattern: 'x', signal: ac.signal }), (e) => e.code === 'E_ABORTED')
    await assert.rejects(m().waitFor(slow.taskId, { regex: '[' }), (e) => e.code === 'E_INVALID')
    await m().kill(slow.taskId)
  })

  test('run: inline when it ends within waitMs (nothing queued), promoted otherwise (completion queued)', async () => {
    const local = freshManager()
    try {
      const lm = local.manager
      const c = collector(lm)
      const inline = await lm.run({ sessionId: 'R', command: 'echo quick; exit 3', waitMs: 5000 })
      assert.equal(inline.promoted, false)
      assert.equal(inline.status, 'failed')
      assert.equal(inline.output, 'quick\n[exit code 3; status failed]')
      assert.equal(inline.completionDelivered, true)
      const ok = await lm.run({ sessionId: 'R', command: 'echo fine', waitMs: 5000 })
      assert.equal(ok.output, 'fine\n')
      const promoted = await lm.run({ sessionId: 'R', command: 'sleep 0.3; echo later', waitMs: 50 })
      assert.equal(promoted.promoted, true)
      assert.equal(promoted.status, 'running')
      assert.match(promoted.output, new RegExp(promoted.taskId))
      assert.equal(promoted.notifyOnCompletion, true)
      await lm.wait(promoted.taskId)
      await c.until((ev) => ev.some((e) => e.type === 'completion'))
      await sleep(50)
      assert.deepEqual(c.events.filter((e) => e.type === 'completion').map((e) => e.completion.taskId), [promoted.taskId])
      assert.deepEqual(lm.drainCompletions('R').map((x) => [x.taskId, x.outputPreview]), [[promoted.taskId, 'later\n']])
      c.off()
    } finally {
      await local.cleanup()
    }
  })

  test('notifyOnCompletion false queues nothing until promote', async () => {
    const local = freshManager()
    try {
      const lm = local.manager
      const running = await lm.spawn({ sessionId: 'Q', command: 'sleep 0.2', notifyOnCompletion: false })
      const finished = await lm.spawn({ sessionId: 'Q', command: 'echo done', notifyOnCompletion: false })
      await lm.wait(finished.taskId)
      assert.deepEqual(lm.drainCompletions('Q'), [])
      const c = collector(lm)
      const p = lm.promote(finished.taskId)
      assert.equal(p.notifyOnCompletion, true)
      assert.equal(p.completionDelivered, false)
      assert.deepEqual(lm.drainCompletions('Q').map((x) => x.taskId), [finished.taskId], 'promoting a finished task queues it at once')
      lm.promote(running.taskId)
      await lm.wait(running.taskId)
      await c.until((ev) => ev.filter((e) => e.type === 'completion').length >= 2)
      assert.deepEqual(c.events.filter((e) => e.type === 'completion').map((e) => e.completion.taskId).sort(), [finished.taskId, running.taskId].sort())
      assert.equal(lm.drainCompletions('Q').length, 2)
      assert.throws(() => lm.promote('bash-0000000000000000'), (e) => e.code === 'E_NOT_FOUND')
      c.off()
    } finally {
      await local.cleanup()
    }
  })

  test('a listener does not keep the process alive', async () => {
    const out = await runChild(`
      const fs = require('fs'), os = require('os'), path = require('path')
      const m = new TaskManager({ storageDir: fs.mkdtempSync(path.join(os.tmpdir(), 'bgshell-ev-')) })
      m.onEvent(() => {})
      m.spawn({ sessionId: 'x', command: 'sleep 2' }).then(() => console.log('spawned'))`)
    assert.equal(out.trim(), 'spawned')
  })
})
