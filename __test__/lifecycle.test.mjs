// Exit detection, kill, timeouts and the running limit, with real process groups.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, existsSync, statSync } from 'node:fs'
import { freshManager, alive, gone, landed, supervisorOf } from './helpers.mjs'

const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/** Waits until the task has written `text` to stdout. */
async function printed(snap, text) {
  for (let i = 0; i < 500; i++) {
    if (existsSync(snap.stdoutPath) && readFileSync(snap.stdoutPath, 'utf8').includes(text)) return
    await sleep(10)
  }
  throw new Error(`task never printed ${text}`)
}

describe('lifecycle', () => {
  let ctx
  before(() => {
    ctx = freshManager({ killGraceMs: 300 })
  })
  after(() => ctx.cleanup())
  const spawn = (command, extra = {}) => ctx.manager.spawn({ sessionId: 'life', command, ...extra })

  test('kill takes the whole group: a sleeping grandchild dies too', async () => {
    const snap = await spawn('sleep 60 & echo "gc $!"; wait')
    await printed(snap, 'gc ')
    const grandchild = Number(readFileSync(snap.stdoutPath, 'utf8').match(/gc (\d+)/)[1])
    assert.ok(alive(grandchild))
    const killed = await ctx.manager.kill(snap.taskId)
    assert.equal(killed.status, 'killed')
    assert.equal(killed.exitCode, 143)
    assert.equal(killed.signal, 'SIGTERM')
    assert.ok(await gone(grandchild), 'grandchild still alive after kill')
    assert.ok(!alive(snap.pid))
  })

  test('a task that ignores SIGTERM is SIGKILLed after the grace', async () => {
    const snap = await spawn("trap '' TERM; echo armed; while :; do sleep 0.05; done")
    await printed(snap, 'armed')
    const killed = await ctx.manager.kill(snap.taskId, { graceMs: 200 })
    assert.equal(killed.status, 'killed')
    assert.equal(killed.exitCode, 137)
    assert.equal(killed.signal, 'SIGKILL')
    assert.ok(killed.durationMs >= 200, `killed before the grace ended (${killed.durationMs} ms)`)
    assert.ok(!alive(snap.pid))
  })

  test('kill with SIGINT sends that signal', async () => {
    const snap = await spawn('echo up; exec sleep 60')
    await printed(snap, 'up')
    const killed = await ctx.manager.kill(snap.taskId, { signal: 'SIGINT' })
    assert.equal(killed.status, 'killed')
    assert.equal(killed.exitCode, 130)
    assert.equal(killed.signal, 'SIGINT')
  })

  test('killing a finished task returns it unchanged', async () => {
    const snap = await spawn('exit 4')
    const done = await ctx.manager.wait(snap.taskId)
    const again = await ctx.manager.kill(snap.taskId, { signal: 'SIGKILL' })
    assert.deepEqual(again, done)
    assert.equal(again.status, 'failed')
  })

  test('timeout ends the task as timed_out/124 and the process is gone', async () => {
    const snap = await spawn('sleep 60 & wait', { timeoutMs: 200 })
    const done = await ctx.manager.wait(snap.taskId)
    assert.equal(done.status, 'timed_out')
    assert.equal(done.exitCode, 124)
    assert.match(done.statusReason, /timed out after 200 ms/)
    assert.ok(done.durationMs >= 200)
    assert.ok(!alive(snap.pid))
    // The manager recorded the end: its supervisor exits without writing a marker.
    assert.ok(await gone(supervisorOf(snap)))
    assert.equal(existsSync(snap.stdoutPath.replace(/stdout$/, 'exit')), false)
  })

  test('timeoutMs 0 means no deadline', async () => {
    const local = freshManager({ defaultTimeoutMs: 100 })
    try {
      const snap = await local.manager.spawn({ sessionId: 's', command: 'sleep 0.4', timeoutMs: 0 })
      assert.equal(snap.timeoutMs, undefined)
      assert.equal((await local.manager.wait(snap.taskId)).status, 'completed')
      const dflt = await local.manager.spawn({ sessionId: 's', command: 'sleep 5' })
      assert.equal(dflt.timeoutMs, 100)
      assert.equal((await local.manager.wait(dflt.taskId)).status, 'timed_out')
    } finally {
      await local.cleanup()
    }
  })

  test('death by a signal is 128+N with the signal named', async () => {
    const snap = await spawn('kill -USR1 $$')
    const done = await ctx.manager.wait(snap.taskId)
    assert.equal(done.status, 'failed')
    assert.equal(done.exitCode, 128 + 10)
    assert.equal(done.signal, 'SIGUSR1')
  })

  test('maxRunning gives E_LIMIT, and a kill frees the slot', async () => {
    const local = freshManager({ maxRunning: 2 })
    try {
      const a = await local.manager.spawn({ sessionId: 's', command: 'sleep 60' })
      await local.manager.spawn({ sessionId: 's', command: 'sleep 60' })
      await assert.rejects(local.manager.spawn({ sessionId: 's', command: 'sleep 60' }), (e) => {
        assert.equal(e.code, 'E_LIMIT')
        assert.match(e.message, /2 of 2/)
        return true
      })
      await local.manager.kill(a.taskId)
      const c = await local.manager.spawn({ sessionId: 's', command: 'true' })
      assert.equal((await local.manager.wait(c.taskId)).status, 'completed')
    } finally {
      await local.cleanup()
    }
  })

  test('wait with timeoutMs resolves with the still-running snapshot', async () => {
    const snap = await spawn('sleep 60')
    const still = await ctx.manager.wait(snap.taskId, { timeoutMs: 50 })
    assert.equal(still.status, 'running')
    await ctx.manager.kill(snap.taskId)
  })

  test('wait rejects with E_ABORTED when its AbortSignal fires, before or during the wait', async () => {
    const snap = await spawn('sleep 60')
    const ac = new AbortController()
    const pending = ctx.manager.wait(snap.taskId, { signal: ac.signal })
    setTimeout(() => ac.abort(), 30)
    await assert.rejects(pending, (e) => e.code === 'E_ABORTED')
    await assert.rejects(ctx.manager.wait(snap.taskId, { signal: AbortSignal.abort() }), (e) => e.code === 'E_ABORTED')
    assert.equal(ctx.manager.get(snap.taskId).status, 'running', 'aborting a wait does not touch the task')
    await ctx.manager.kill(snap.taskId)
  })

  test('close({killRunning}) kills what runs; later calls are E_CLOSED', async () => {
    const local = freshManager()
    const snap = await local.manager.spawn({ sessionId: 's', command: 'sleep 60' })
    await local.manager.close({ killRunning: true })
    assert.ok(await gone(snap.pid))
    assert.equal(local.manager.get(snap.taskId).status, 'killed')
    await assert.rejects(local.manager.spawn({ sessionId: 's', command: 'true' }), (e) => e.code === 'E_CLOSED')
    await assert.rejects(local.manager.wait(snap.taskId), (e) => e.code === 'E_CLOSED')
    await local.cleanup()
  })

  test('close() without killRunning leaves tasks running; they still record their exit', async () => {
    const local = freshManager()
    const snap = await local.manager.spawn({ sessionId: 's', command: 'sleep 0.3; exit 5' })
    await local.manager.close()
    assert.ok(alive(snap.pid))
    assert.ok(await gone(snap.pid))
    const markerPath = snap.stdoutPath.replace(/stdout$/, 'exit')
    for (let i = 0; i < 100 && !existsSync(markerPath); i++) await sleep(10)
    assert.equal(readFileSync(markerPath, 'utf8').trim(), '5')
    assert.equal(statSync(markerPath).mode & 0o777, 0o600, 'the marker is private')
    await local.cleanup()
  })

  test('a supervisor that does not answer (SIGSTOP) makes write() fail with E_IO after a bounded wait, not E_EXITED', { timeout: 30_000 }, async () => {
    const local = freshManager({ killGraceMs: 100 })
    const t = await local.manager.spawn({ sessionId: 'stop-w', command: 'cat', mode: 'pty' })
    const dir = t.ptyPath.slice(0, t.ptyPath.lastIndexOf('/'))
    const sup = JSON.parse(readFileSync(`${dir}/${t.taskId}.json`, 'utf8')).supervisor_pid
    assert.equal(local.manager.write(t.taskId, 'a'), 1)
    process.kill(sup, 'SIGSTOP')
    try {
      assert.throws(() => local.manager.write(t.taskId, 'b'), (e) => e.code === 'E_IO' && /did not answer within 6 s/.test(e.message))
    } finally {
      try { process.kill(sup, 'SIGCONT') } catch {}
    }
    assert.equal(local.manager.write(t.taskId, 'c'), 1, 'a resumed supervisor answers again')
    await local.cleanup()
  })

  test('a supervisor that does not answer (SIGSTOP) does not make kill() hang: the proven group is killed directly', async () => {
    const local = freshManager({ killGraceMs: 100 })
    const t = await local.manager.spawn({ sessionId: 'stop', command: 'sleep 30' })
    const dir = t.stdoutPath.slice(0, t.stdoutPath.lastIndexOf('/'))
    const sup = JSON.parse(readFileSync(`${dir}/${t.taskId}.json`, 'utf8')).supervisor_pid
    process.kill(sup, 'SIGSTOP')
    try {
      const done = await local.manager.kill(t.taskId)
      assert.equal(done.status, 'killed')
      assert.ok(await gone(t.pid), 'the task survived kill()')
    } finally {
      try { process.kill(sup, 'SIGCONT') } catch {}
    }
    await local.cleanup()
  })
})
