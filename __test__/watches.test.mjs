// Output watches as an agent keeps them: several per task, repeating under a rate limit with a
// summary, listed and removed, and kept with the task so that they survive a harness restart.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { TaskManager, collector, freshManager, landed, readJson, sessionHash, sleep, tempDir } from './helpers.mjs'

const matchesOf = (events, taskId, watchId) => events.filter((e) => e.type === 'pattern_match' && e.taskId === taskId && e.watchId === watchId)

/** Resolves once the file holds `text` (checked every 10 ms, for at most 20 s). */
async function printed(path, text) {
  for (const end = Date.now() + 20_000; Date.now() < end; await sleep(10)) {
    if (existsSync(path) && readFileSync(path, 'utf8').includes(text)) return true
  }
  return false
}

test('several repeating watches: rate limit with a summary at the end, listed, removed', { timeout: 60_000 }, async () => {
  const ctx = freshManager()
  try {
    const m = ctx.manager
    const c = collector(m)
    const t = await m.spawn({
      sessionId: 'W1',
      stdin: 'pipe',
      command: 'for i in $(seq 1 25); do echo "tick $i"; done; echo "warn A"; read x; echo "warn B"; exit 0',
    })
    const ticks = m.watch(t.taskId, { pattern: 'tick', maxPerMinute: 5 })
    const warns = m.watch(t.taskId, { regex: 'warn (\\w)' })
    const gone = m.watch(t.taskId, { pattern: 'never printed', once: true })
    assert.equal(m.unwatch(t.taskId, gone), true)
    assert.equal(m.unwatch(t.taskId, gone), false, 'a removed watch is gone')
    assert.ok(await c.until((ev) => matchesOf(ev, t.taskId, ticks).length >= 5 && matchesOf(ev, t.taskId, warns).length >= 1))
    // Every tick was found; five were sent, the other twenty wait for the summary.
    let listed
    for (const end = Date.now() + 20_000; Date.now() < end; await sleep(10)) {
      listed = m.watches(t.taskId)
      if (listed.find((w) => w.watchId === ticks)?.matches === 25) break
    }
    assert.deepEqual(
      listed.map((w) => ({ id: w.watchId, pattern: w.pattern, regex: w.regex, once: w.once, max: w.maxPerMinute, matches: w.matches, held: w.suppressed })),
      [
        { id: ticks, pattern: 'tick', regex: undefined, once: false, max: 5, matches: 25, held: 20 },
        { id: warns, pattern: undefined, regex: 'warn (\\w)', once: false, max: 10, matches: 1, held: 0 },
      ],
    )
    m.write(t.taskId, '\n')
    await m.wait(t.taskId)
    assert.ok(await c.until((ev) => ev.some((e) => e.type === 'completion' && e.completion.taskId === t.taskId)))
    c.off()
    const tickEvents = matchesOf(c.events, t.taskId, ticks)
    assert.deepEqual(
      tickEvents.map((e) => [e.reason, e.context, e.suppressed]),
      [
        ['pattern_match', 'tick 1', undefined],
        ['pattern_match', 'tick 2', undefined],
        ['pattern_match', 'tick 3', undefined],
        ['pattern_match', 'tick 4', undefined],
        ['pattern_match', 'tick 5', undefined],
        ['rate_limited', 'tick 25', 20],
      ],
    )
    assert.deepEqual(
      matchesOf(c.events, t.taskId, warns).map((e) => [e.reason, e.groups]),
      [
        ['pattern_match', ['A']],
        ['pattern_match', ['B']],
      ],
      'a repeating watch that matched ends with its task, without task_exit',
    )
    const completionAt = c.events.findIndex((e) => e.type === 'completion')
    assert.ok(c.events.findIndex((e) => e.reason === 'rate_limited') < completionAt, 'the summary comes before the completion')
    assert.deepEqual(m.watches(t.taskId), [], 'watches end with their task')
    assert.equal(m.unwatch(t.taskId, ticks), false)
    const json = readJson(join(ctx.storageDir, 'bash-tasks', sessionHash('W1'), `${t.taskId}.json`))
    assert.equal(json.watches, undefined, 'the ended task keeps no watch')
    assert.throws(() => m.watch(t.taskId, { pattern: 'x', maxPerMinute: 0 }), (e) => e.code === 'E_INVALID' || e.code === 'E_EXITED')
    const live = await m.spawn({ sessionId: 'W1', command: 'sleep 30' })
    assert.throws(() => m.watch(live.taskId, { pattern: 'x', maxPerMinute: 0 }), (e) => e.code === 'E_INVALID' && /maxPerMinute/.test(e.message))
    assert.throws(() => m.watches('not a task id'), (e) => e.code === 'E_INVALID')
  } finally {
    await ctx.cleanup()
  }
})

test('watches survive a restart: kept with the task, re-armed by replay, nothing reported twice', { timeout: 60_000 }, async () => {
  const storageDir = tempDir()
  const fifo1 = join(storageDir, 'go1')
  const fifo2 = join(storageDir, 'go2')
  execFileSync('mkfifo', [fifo1, fifo2])
  const session = 'W2'
  const dir = join(storageDir, 'bash-tasks', sessionHash(session))
  let b
  let runningId
  const a = new TaskManager({ storageDir, killGraceMs: 300 })
  try {
    const ca = collector(a)
    // Still running at the restart, printing while no manager watches.
    const running = await a.spawn({
      sessionId: session,
      stdin: 'pipe',
      command: `echo "ready 1"; read x < ${fifo1}; echo "ready 2"; echo "done"; read y`,
    })
    runningId = running.taskId
    // Ending while no manager watches.
    const ending = await a.spawn({ sessionId: session, command: `read x < ${fifo2}; echo "late match"; exit 3` })
    const ready = a.watch(running.taskId, { pattern: 'ready' })
    const done = a.watch(running.taskId, { pattern: 'done', once: true })
    const late = a.watch(ending.taskId, { pattern: 'late' })
    const never = a.watch(ending.taskId, { pattern: 'never printed' })
    assert.ok(await ca.until((ev) => matchesOf(ev, running.taskId, ready).length === 1))
    ca.off()
    const kept = readJson(join(dir, `${running.taskId}.json`)).watches
    assert.deepEqual(
      kept.map((w) => [w.id, w.pattern, w.once]),
      [
        [ready, 'ready', false],
        [done, 'done', true],
      ],
      'the watches are kept in the task bundle',
    )
    await a.close()

    // The harness is gone; both tasks go on.
    writeFileSync(fifo1, 'go\n')
    writeFileSync(fifo2, 'go\n')
    assert.ok(await printed(join(dir, `${running.taskId}.stdout`), 'done'))
    assert.ok(await landed(join(dir, `${ending.taskId}.exit`)))

    b = new TaskManager({ storageDir, killGraceMs: 300 })
    const cb = collector(b)
    const snapshots = await b.replay(session)
    assert.equal(snapshots.find((s) => s.taskId === ending.taskId).exitCode, 3)
    assert.ok(await cb.until((ev) => matchesOf(ev, running.taskId, done).length === 1 && matchesOf(ev, running.taskId, ready).length === 1))
    assert.deepEqual(
      matchesOf(cb.events, running.taskId, ready).map((e) => e.context),
      ['ready 2'],
      'what the first manager reported is not reported again',
    )
    assert.deepEqual(
      matchesOf(cb.events, ending.taskId, late).map((e) => [e.reason, e.context]),
      [['pattern_match', 'late match']],
      'a task that ended meanwhile: its watch has its last word at replay',
    )
    assert.deepEqual(
      matchesOf(cb.events, ending.taskId, never).map((e) => e.reason),
      ['task_exit'],
    )
    assert.deepEqual(
      b.watches(running.taskId).map((w) => [w.watchId, w.matches]),
      [[ready, 2]],
      'the once watch that matched is gone; the repeating one counts on',
    )
    assert.equal(b.watch(running.taskId, { pattern: 'more' }), 'watch-3', 'watch ids go on from the kept ones')
    assert.equal(b.unwatch(running.taskId, ready), true)
    assert.deepEqual(
      readJson(join(dir, `${running.taskId}.json`)).watches.map((w) => w.id),
      ['watch-3'],
      'removal is kept too',
    )
    assert.equal(b.unwatch('bash-0123456789abcdef', 'watch-1'), false, 'an unknown task has no watch to remove')
    cb.off()
    // A closed manager adopts nothing: it reads and edits the watches kept in the store.
    const c = new TaskManager({ storageDir, killGraceMs: 300 })
    await c.close()
    assert.deepEqual(c.watches(running.taskId).map((w) => w.watchId), ['watch-3'])
    assert.equal(c.unwatch(running.taskId, 'watch-3'), true)
    assert.equal(readJson(join(dir, `${running.taskId}.json`)).watches, undefined)
  } finally {
    await a.close({ killRunning: true })
    // The adopted task is not b's own: killRunning would leave it running.
    if (b && runningId) await b.kill(runningId).catch(() => {})
    await b?.close({ killRunning: true })
    rmSync(storageDir, { recursive: true, force: true })
  }
})
