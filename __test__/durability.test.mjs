// Restarts and crashes: replay, exit facts kept with no manager alive, completions, compatibility.
import { test, describe } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, writeFileSync, mkdirSync, existsSync, readdirSync, rmSync, utimesSync, openSync, writeSync, closeSync } from 'node:fs'
import { spawn as spawnProcess, execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { TaskManager, tempDir, alive, gone, runChild, sleep, sessionHash, sqlite, readJson, root, landed } from './helpers.mjs'

/** Spawns one task from a child process that exits right after; returns the running snapshot. */
async function spawnFromChild(storageDir, options, { selfKill = false } = {}) {
  const out = await runChild(
    `const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)}, killGraceMs: 200 })
     m.spawn(${JSON.stringify(options)}).then((s) => {
       process.stdout.write(JSON.stringify(s) + '\\n', () => { ${selfKill ? "process.kill(process.pid, 'SIGKILL')" : ''} })
     })`,
    { allowSignal: selfKill },
  )
  return JSON.parse(out.trim().split('\n')[0])
}

/** Writes a bundle by hand, as aft (or a crashed manager) would have left it. */
function writeBundle(storageDir, record, { dir, files = {} } = {}) {
  const d = dir ?? join(storageDir, 'bash-tasks', sessionHash(record.session_id))
  mkdirSync(d, { recursive: true, mode: 0o700 })
  writeFileSync(join(d, `${record.task_id}.json`), typeof record === 'string' ? record : JSON.stringify(record, null, 2), { mode: 0o600 })
  for (const [ext, content] of Object.entries(files)) writeFileSync(join(d, `${record.task_id}.${ext}`), content, { mode: 0o600 })
  return d
}

function aftRecord(overrides) {
  const now = Date.now()
  return {
    schema_version: 4,
    task_id: 'abcd1234',
    session_id: 'compat',
    command: 'echo from aft',
    mode: 'pipes',
    workdir: '/tmp',
    project_root: '/tmp',
    status: 'completed',
    started_at: now - 5000,
    finished_at: now - 4000,
    duration_ms: 1000,
    timeout_ms: null,
    exit_code: 0,
    child_pid: null,
    pgid: null,
    completion_delivered: false,
    notify_on_completion: true,
    compressed: true,
    pty_rows: null,
    pty_cols: null,
    status_reason: null,
    ...overrides,
  }
}

describe('durability', () => {
  test('a task whose manager exited is finalised by replay with its real exit code and end time', async () => {
    const storageDir = tempDir()
    const clean = await spawnFromChild(storageDir, { sessionId: 'S', command: 'sleep 0.3; echo done; exit 3' })
    const crashed = await spawnFromChild(storageDir, { sessionId: 'S', command: 'sleep 0.3; exit 0' }, { selfKill: true })
    assert.ok(await gone(clean.pid))
    assert.ok(await gone(crashed.pid))
    await sleep(300) // the ends lie in the past, so "end time" cannot be "time noticed"
    const m = new TaskManager({ storageDir })
    const replayedAt = Date.now()
    const tasks = await m.replay('S')
    const byId = Object.fromEntries(tasks.map((t) => [t.taskId, t]))
    assert.equal(byId[clean.taskId].status, 'failed')
    assert.equal(byId[clean.taskId].exitCode, 3)
    assert.equal(byId[crashed.taskId].status, 'completed')
    assert.equal(byId[crashed.taskId].exitCode, 0)
    for (const t of [byId[clean.taskId], byId[crashed.taskId]]) {
      assert.ok(t.finishedAt < replayedAt - 200, `finishedAt ${t.finishedAt} is the time it was noticed (${replayedAt})`)
      assert.ok(t.finishedAt >= t.startedAt + 300)
      assert.equal(t.durationMs, t.finishedAt - t.startedAt)
    }
    // A look from another process (get) tells the truth too, without a replay.
    const other = await spawnFromChild(storageDir, { sessionId: 'S2', command: 'exit 5' })
    assert.ok(await gone(other.pid))
    await sleep(100)
    const seen = m.get(other.taskId)
    assert.equal(seen.status, 'failed')
    assert.equal(seen.exitCode, 5)
    assert.equal(m.list({ sessionId: 'S2' })[0].status, 'failed')
    // The completions are drainable, oldest first.
    const drained = m.drainCompletions('S')
    assert.deepEqual(drained.map((c) => c.taskId).sort(), [clean.taskId, crashed.taskId].sort())
    assert.equal(drained.find((c) => c.taskId === clean.taskId).outputPreview, 'done\n')
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('a running task is adopted by replay and its exit is seen without polling the store', async () => {
    const storageDir = tempDir()
    const snap = await spawnFromChild(storageDir, { sessionId: 'S', command: 'sleep 0.6; exit 6' })
    const m = new TaskManager({ storageDir })
    const [replayed] = await m.replay('S')
    assert.equal(replayed.status, 'running')
    assert.equal(replayed.pid, snap.pid)
    const done = await m.wait(snap.taskId)
    assert.equal(done.status, 'failed')
    assert.equal(done.exitCode, 6)
    // And it can be killed once adopted.
    const other = await spawnFromChild(storageDir, { sessionId: 'S', command: 'sleep 30' })
    await m.replay('S')
    const killed = await m.kill(other.taskId)
    assert.equal(killed.status, 'killed')
    assert.equal(killed.exitCode, 143)
    assert.ok(!alive(other.pid))
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('a kill recorded by a manager that died before signalling is carried out by the next one', async () => {
    const storageDir = tempDir()
    const snap = await spawnFromChild(storageDir, { sessionId: 'S', command: 'sleep 30' }, { selfKill: true })
    // The window: kill() made `killing` durable, then its manager died before the signal went out.
    const jsonPath = join(storageDir, 'bash-tasks', sessionHash('S'), `${snap.taskId}.json`)
    writeFileSync(jsonPath, JSON.stringify({ ...readJson(jsonPath), status: 'killing' }, null, 2), { mode: 0o600 })
    assert.ok(alive(snap.pid))
    const m = new TaskManager({ storageDir, killGraceMs: 200 })
    const [replayed] = await m.replay('S')
    assert.equal(replayed.status, 'killing')
    const done = await m.wait(snap.taskId, { timeoutMs: 5000 })
    assert.equal(done.status, 'killed')
    assert.equal(done.exitCode, 143)
    assert.ok(await gone(snap.pid, 2000))
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('a deadline kills a task while no manager is alive; replay says timed_out/124', async () => {
    const storageDir = tempDir()
    const snap = await spawnFromChild(storageDir, { sessionId: 'S', command: 'sleep 30', timeoutMs: 400 })
    assert.ok(alive(snap.pid))
    assert.ok(await gone(snap.pid, 5000), 'the deadline was not kept without a manager')
    const m = new TaskManager({ storageDir })
    // Its supervisor may still be writing the marker: replay then adopts it, and wait settles.
    const [replayed] = await m.replay('S')
    const t = await m.wait(replayed.taskId)
    assert.equal(t.status, 'timed_out')
    assert.equal(t.exitCode, 124)
    assert.ok(t.durationMs >= 400)
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('drain/ack across two restarts: at-least-once until acked, never again after, never another session', async () => {
    const storageDir = tempDir()
    await runChild(`
      const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)} })
      ;(async () => {
        for (const c of ['exit 0', 'exit 1', 'echo x']) await m.wait((await m.spawn({ sessionId: 'A', command: c })).taskId)
        await m.wait((await m.spawn({ sessionId: 'B', command: 'true' })).taskId)
        await m.wait((await m.spawn({ sessionId: 'A', command: 'true', notifyOnCompletion: false })).taskId)
      })()`)
    let m = new TaskManager({ storageDir })
    await m.replay('A')
    const first = m.drainCompletions('A')
    assert.equal(first.length, 3, 'the silent task is not a completion')
    assert.deepEqual(m.drainCompletions('A').map((c) => c.taskId), first.map((c) => c.taskId), 'drain is a peek')
    for (let i = 1; i < first.length; i++) assert.ok(first[i - 1].durationMs !== undefined)
    assert.deepEqual(m.ackCompletions('B', [first[0].taskId]), [], 'never acked from another session')
    assert.deepEqual(m.ackCompletions('A', [first[0].taskId, 'bash-0000000000000000']), [first[0].taskId])
    assert.deepEqual(m.ackCompletions('A', [first[0].taskId]), [first[0].taskId], 'idempotent')
    await m.close()

    m = new TaskManager({ storageDir })
    await m.replay('A')
    const second = m.drainCompletions('A')
    assert.deepEqual(second.map((c) => c.taskId), first.slice(1).map((c) => c.taskId))
    assert.equal(m.drainCompletions('B').length, 1)
    assert.throws(() => m.ackCompletions('A', ['../x']), (e) => e.code === 'E_INVALID')
    m.ackCompletions('A', second.map((c) => c.taskId))
    await m.close()

    m = new TaskManager({ storageDir })
    await m.replay('A')
    assert.deepEqual(m.drainCompletions('A'), [])
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('completion previews: short success, long failure with head, tail and where the rest is', async () => {
    const storageDir = tempDir()
    const m = new TaskManager({ storageDir })
    const ok = await m.spawn({ sessionId: 'P', command: 'echo fine' })
    const bad = await m.spawn({ sessionId: 'P', command: 'echo first-line; seq 1 5000; echo the-error >&2; exit 2' })
    await m.wait(ok.taskId)
    await m.wait(bad.taskId)
    const [c1, c2] = ['ok', 'bad'].map((k) => m.drainCompletions('P').find((c) => c.taskId === (k === 'ok' ? ok.taskId : bad.taskId)))
    assert.equal(c1.outputPreview, 'fine\n')
    assert.equal(c1.outputTruncated, false)
    assert.equal(c2.outputTruncated, true)
    assert.ok(c2.outputPreview.startsWith('first-line\n1\n'))
    assert.ok(c2.outputPreview.endsWith('5000\nthe-error\n'))
    assert.match(c2.outputPreview, /bytes omitted; full output: .*\.stdout/)
    assert.ok(c2.outputPreview.length < 2600)
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('aft bundles of schema 2, 3 and 4 replay with defaults; a running one is finalised from its marker', async () => {
    const storageDir = tempDir()
    const v2 = aftRecord({ schema_version: 2, task_id: 'aaaa0002', status: 'failed', exit_code: 2 })
    delete v2.mode
    delete v2.project_root
    delete v2.notify_on_completion
    delete v2.compressed
    delete v2.pty_rows
    delete v2.pty_cols
    const v3 = aftRecord({ schema_version: 3, task_id: 'aaaa0003', status: 'killed', exit_code: null })
    delete v3.pty_rows
    delete v3.pty_cols
    const v4 = aftRecord({ task_id: 'aaaa0004', status: 'running', finished_at: null, duration_ms: null, exit_code: null, child_pid: 999999, pgid: 999999 })
    writeBundle(storageDir, v2)
    writeBundle(storageDir, v3)
    writeBundle(storageDir, v4, { files: { exit: '7\n', stdout: 'aft output\n', stderr: '' } })
    const m = new TaskManager({ storageDir })
    const tasks = Object.fromEntries((await m.replay('compat')).map((t) => [t.taskId, t]))
    assert.equal(tasks.aaaa0002.status, 'failed')
    assert.equal(tasks.aaaa0002.mode, 'pipes')
    assert.equal(tasks.aaaa0002.notifyOnCompletion, true)
    assert.equal(tasks.aaaa0002.compressed, true)
    assert.equal(tasks.aaaa0003.status, 'killed')
    assert.equal(tasks.aaaa0004.status, 'failed')
    assert.equal(tasks.aaaa0004.exitCode, 7)
    // What bgshell wrote back is schema 4 with every required field.
    const written = readJson(join(storageDir, 'bash-tasks', sessionHash('compat'), 'aaaa0004.json'))
    assert.equal(written.schema_version, 4)
    for (const k of ['task_id', 'session_id', 'command', 'workdir', 'status', 'started_at', 'finished_at', 'duration_ms', 'timeout_ms', 'exit_code', 'child_pid', 'pgid', 'completion_delivered', 'status_reason']) {
      assert.ok(k in written, k)
    }
    assert.equal(m.drainCompletions('compat').length, 3)
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('schema 1, 99 and corrupt bundles are quarantined with their sibling files, never deleted', async () => {
    const storageDir = tempDir()
    const good = aftRecord({ task_id: 'good0001' })
    const dir = writeBundle(storageDir, good)
    writeBundle(storageDir, aftRecord({ task_id: 'old00001', schema_version: 1 }), { files: { stdout: 'old out' } })
    writeBundle(storageDir, aftRecord({ task_id: 'new00099', schema_version: 99 }), { files: { exit: '0' } })
    writeFileSync(join(dir, 'bad00001.json'), '{"schema_version": 4, "task_id": ')
    const m = new TaskManager({ storageDir })
    const tasks = await m.replay('compat')
    assert.deepEqual(tasks.map((t) => t.taskId), ['good0001'])
    const q = join(storageDir, 'bash-tasks-quarantine', sessionHash('compat'))
    assert.deepEqual(readdirSync(q).sort(), ['bad00001.json', 'new00099.exit', 'new00099.json', 'old00001.json', 'old00001.stdout'])
    assert.equal(readFileSync(join(q, 'old00001.stdout'), 'utf8'), 'old out')
    assert.deepEqual(readdirSync(dir).sort(), ['good0001.json'])
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('legacy <store>/pi/bash-tasks/<hash> directories are found', async () => {
    const storageDir = tempDir()
    const legacy = join(storageDir, 'pi', 'bash-tasks', sessionHash('legacy'))
    writeBundle(storageDir, aftRecord({ task_id: 'leg00001', session_id: 'legacy' }), { dir: legacy, files: { stdout: 'legacy out\n' } })
    const m = new TaskManager({ storageDir })
    const [t] = await m.replay('legacy')
    assert.equal(t.taskId, 'leg00001')
    assert.equal(t.stdoutPath, join(legacy, 'leg00001.stdout'))
    assert.equal(m.get('leg00001').status, 'completed')
    assert.equal(m.drainCompletions('legacy')[0].outputPreview, 'legacy out\n')
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('starting, killing, vanished, orphaned and pid-reused records settle as they must', async () => {
    const storageDir = tempDir()
    const now = Date.now()
    // A live process that is not the one recorded (wrong start time): never adopted, never signalled.
    const stranger = spawnProcess('sleep', ['30'], { stdio: 'ignore', detached: true })
    // A real process group running for "more than 24 h".
    const ancient = spawnProcess('sleep', ['30'], { stdio: 'ignore', detached: true })
    const startTicks = (pid) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[19])
    const base = { session_id: 'edge', finished_at: null, duration_ms: null, exit_code: null }
    writeBundle(storageDir, aftRecord({ ...base, task_id: 'start001', status: 'starting', started_at: now - 60000 }))
    writeBundle(storageDir, aftRecord({ ...base, task_id: 'kill0001', status: 'killing', child_pid: 999998, pgid: 999998 }), { files: { exit: '143' } })
    writeBundle(storageDir, aftRecord({ ...base, task_id: 'kill0002', status: 'killing', child_pid: 999997, pgid: 999997 }))
    writeBundle(storageDir, aftRecord({ ...base, task_id: 'gone0001', status: 'running', child_pid: 999996, pgid: 999996 }))
    writeBundle(storageDir, aftRecord({ ...base, task_id: 'reuse001', status: 'running', child_pid: stranger.pid, pgid: stranger.pid, child_start_ticks: startTicks(stranger.pid) + 1 }))
    writeBundle(storageDir, aftRecord({ ...base, task_id: 'orph0001', status: 'running', started_at: now - 25 * 3600 * 1000, child_pid: ancient.pid, pgid: ancient.pid, child_start_ticks: startTicks(ancient.pid) }))
    const m = new TaskManager({ storageDir })
    const t = Object.fromEntries((await m.replay('edge')).map((x) => [x.taskId, x]))
    assert.equal(t.start001.status, 'failed')
    assert.equal(t.start001.statusReason, 'spawn aborted')
    assert.equal(t.kill0001.status, 'killed')
    assert.equal(t.kill0001.exitCode, 143)
    assert.equal(t.kill0001.signal, 'SIGTERM')
    assert.equal(t.kill0002.status, 'killed')
    assert.equal(t.gone0001.status, 'failed')
    assert.equal(t.gone0001.statusReason, 'process exited without exit marker')
    assert.equal(t.reuse001.status, 'failed', 'a reused pid is not adopted')
    assert.ok(alive(stranger.pid), 'a reused pid was signalled')
    assert.equal(t.orph0001.statusReason, 'orphaned (>24h)')
    assert.ok(await gone(ancient.pid), 'the orphan group still lives')
    stranger.kill('SIGKILL')
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('a missing or corrupt index is rebuilt from the JSON; a lost JSON is restored from its row', async () => {
    const storageDir = tempDir()
    let m = new TaskManager({ storageDir })
    const a = await m.spawn({ sessionId: 'IX', command: 'echo a' })
    const b = await m.spawn({ sessionId: 'IX', command: 'echo b' })
    await m.wait(a.taskId)
    await m.wait(b.taskId)
    await m.close()
    // Lose b's JSON: the row brings it back.
    const bJson = join(storageDir, 'bash-tasks', sessionHash('IX'), `${b.taskId}.json`)
    const original = readJson(bJson)
    rmSync(bJson)
    m = new TaskManager({ storageDir })
    await m.replay('IX')
    assert.deepEqual(readJson(bJson), original)
    await m.close()
    // Corrupt the index: it is set aside and rebuilt.
    for (const f of readdirSync(storageDir).filter((f) => f.startsWith('tasks.db'))) rmSync(join(storageDir, f))
    writeFileSync(join(storageDir, 'tasks.db'), 'this is not a database at all, not even close'.repeat(200))
    m = new TaskManager({ storageDir })
    const replayed = await m.replay('IX')
    assert.equal(replayed.length, 2)
    assert.deepEqual(m.list({ sessionId: 'IX' }).map((t) => t.taskId).sort(), [a.taskId, b.taskId].sort())
    assert.ok(readdirSync(storageDir).some((f) => f.startsWith('tasks.db.corrupt.')), 'the corrupt index was not kept aside')
    const rows = sqlite(join(storageDir, 'tasks.db'), 'SELECT count(*) AS n FROM bash_tasks')
    if (rows) assert.equal(rows[0].n, 2)
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('two processes x 30 tasks into one session: 60 valid bundles and rows', async () => {
    const storageDir = tempDir()
    const script = `
      const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)}, maxRunning: 40 })
      ;(async () => {
        const snaps = await Promise.all(Array.from({ length: 30 }, (_, i) => m.spawn({ sessionId: 'shared', command: 'echo ' + i })))
        await Promise.all(snaps.map((s) => m.wait(s.taskId)))
        console.log(m.ackCompletions('shared', snaps.slice(0, 10).map((s) => s.taskId)).length)
        if (process.env.CLOSE) await m.close()
      })()`
    const outs = await Promise.all([runChild(script, { env: { CLOSE: '1' } }), runChild(script)])
    assert.deepEqual(outs.map((o) => o.trim()), ['10', '10'])
    const dir = join(storageDir, 'bash-tasks', sessionHash('shared'))
    const jsons = readdirSync(dir).filter((f) => !f.startsWith('.') && f.endsWith('.json'))
    assert.equal(jsons.length, 60)
    // Updates rewrite a per-process spare file and swap it in; close() removed the first
    // process's. The one that exited without close() left its spare: a temp file of a dead
    // writer, which the next load removes.
    const dots = readdirSync(dir).filter((f) => f.startsWith('.'))
    assert.equal(dots.length, 1, `temp files left behind: ${dots}`)
    assert.match(dots[0], /^\.spare\.json\.tmp\.\d+\.session$/)
    const loader = new TaskManager({ storageDir })
    assert.equal((await loader.replay('shared')).length, 60)
    await loader.close()
    assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('.')), [], 'temp files left behind')
    let delivered = 0
    for (const f of jsons) {
      const r = readJson(join(dir, f))
      assert.equal(r.status, 'completed')
      delivered += r.completion_delivered ? 1 : 0
    }
    assert.equal(delivered, 20)
    const rows = sqlite(join(storageDir, 'tasks.db'), "SELECT count(*) AS n, sum(completion_delivered) AS d FROM bash_tasks WHERE session_id = 'shared' AND status = 'completed'")
    if (rows) assert.deepEqual(rows[0], { n: 60, d: 20 })
    const m = new TaskManager({ storageDir })
    assert.equal(m.drainCompletions('shared').length, 40)
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('gc removes old delivered tasks, keeps undelivered and running ones, ages out quarantine', async () => {
    const storageDir = tempDir()
    const m = new TaskManager({ storageDir })
    const delivered = await m.spawn({ sessionId: 'G', command: 'true' })
    const undelivered = await m.spawn({ sessionId: 'G', command: 'true' })
    const silent = await m.spawn({ sessionId: 'G', command: 'true', notifyOnCompletion: false })
    const running = await m.spawn({ sessionId: 'G', command: 'sleep 30' })
    for (const s of [delivered, undelivered, silent]) await m.wait(s.taskId)
    m.ackCompletions('G', [delivered.taskId])
    assert.deepEqual(await m.gc(), { removed: 0, quarantined: 0 }, 'everything is younger than the retention')
    const q = join(storageDir, 'bash-tasks-quarantine', 'ffffffffffffffff')
    mkdirSync(q, { recursive: true })
    writeFileSync(join(q, 'old.json'), '{}')
    writeFileSync(join(q, 'new.json'), '{}')
    const longAgo = new Date(Date.now() - 31 * 24 * 3600 * 1000)
    utimesSync(join(q, 'old.json'), longAgo, longAgo)
    writeBundle(storageDir, aftRecord({ task_id: 'junk0001', session_id: 'G', schema_version: 1 }))
    const report = await m.gc({ olderThanMs: 0 })
    assert.deepEqual(report, { removed: 2, quarantined: 1 })
    assert.equal(m.get(delivered.taskId), null)
    assert.equal(m.get(silent.taskId), null)
    assert.equal(existsSync(delivered.stdoutPath), false)
    assert.equal(m.get(undelivered.taskId).status, 'completed')
    assert.equal(m.get(running.taskId).status, 'running')
    assert.deepEqual(readdirSync(q), ['new.json'])
    await m.close({ killRunning: true })
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('a full disk (ENOSPC on a small tmpfs) gives E_IO, leaves no half-written bundle and no process', async (t) => {
    const mnt = tempDir('bgshell-enospc-')
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m,mode=0700', 'tmpfs', mnt], { stdio: 'pipe' })
    } catch (e) {
      return t.skip(`cannot mount a small tmpfs here (needs root and mount rights): ${String(e.message).split('\n')[0]}`)
    }
    try {
      const storageDir = join(mnt, 'store')
      const m = new TaskManager({ storageDir })
      const first = await m.spawn({ sessionId: 'full', command: 'echo fits' })
      await m.wait(first.taskId)
      const dir = join(storageDir, 'bash-tasks', sessionHash('full'))
      // The supervisor exits just after the manager recorded the end: let it.
      assert.ok(await gone(readJson(join(dir, `${first.taskId}.json`)).supervisor_pid))
      const before = readdirSync(dir).sort()
      // Fill the filesystem to the last byte.
      const chunk = Buffer.alloc(64 * 1024, 120)
      const fd = openSync(join(mnt, 'filler'), 'w')
      try {
        for (;;) writeSync(fd, chunk)
      } catch (e) {
        assert.equal(e.code, 'ENOSPC')
      }
      try {
        for (;;) writeSync(fd, Buffer.alloc(1, 120))
      } catch {}
      closeSync(fd)
      const marker = 'sleep 31.4159'
      await assert.rejects(m.spawn({ sessionId: 'full', command: marker }), (e) => {
        assert.equal(e.code, 'E_IO')
        assert.ok(e.message.includes(dir), e.message)
        assert.match(e.message, /space/i)
        return true
      })
      assert.deepEqual(readdirSync(dir).sort(), before, 'a half-written bundle or temp file was left')
      const ps = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' })
      assert.ok(!ps.includes(marker), 'a process was started although its record could not be written')
      assert.equal(m.get(first.taskId).status, 'completed', 'what was stored is kept')
      // Space comes back: the manager works again.
      rmSync(join(mnt, 'filler'))
      const again = await m.spawn({ sessionId: 'full', command: 'echo again' })
      assert.equal((await m.wait(again.taskId)).status, 'completed')
      await m.close()
    } finally {
      execFileSync('umount', ['-l', mnt])
      rmSync(mnt, { recursive: true, force: true })
    }
  })

  test('a supervisor killed while its manager watches: the manager watches the command and keeps its deadline', async () => {
    const storageDir = tempDir()
    const m = new TaskManager({ storageDir, killGraceMs: 200 })
    const s = await m.spawn({ sessionId: 'SK', command: 'sleep 30', timeoutMs: 600 })
    const json = readJson(join(storageDir, 'bash-tasks', sessionHash('SK'), `${s.taskId}.json`))
    process.kill(json.supervisor_pid, 'SIGKILL')
    await sleep(150)
    assert.ok(alive(s.pid), 'the command dies with its supervisor')
    assert.equal(m.get(s.taskId).status, 'running')
    const done = await m.wait(s.taskId)
    assert.equal(done.status, 'timed_out')
    assert.equal(done.exitCode, 124)
    assert.ok(!alive(s.pid))
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('an old unreadable bundle is quarantined by gc and kept: its 30 days start at quarantine', async () => {
    const storageDir = tempDir()
    const dir = writeBundle(storageDir, aftRecord({ task_id: 'anci0001', session_id: 'Q', schema_version: 1 }))
    const longAgo = new Date(Date.now() - 40 * 24 * 3600 * 1000)
    utimesSync(join(dir, 'anci0001.json'), longAgo, longAgo)
    const m = new TaskManager({ storageDir })
    assert.deepEqual(await m.gc(), { removed: 0, quarantined: 1 })
    assert.deepEqual(readdirSync(join(storageDir, 'bash-tasks-quarantine', sessionHash('Q'))), ['anci0001.json'])
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('a spawn cut short by its manager dying after go: replay adopts the running command, records its exit, kill stops it', async () => {
    const storageDir = tempDir()
    // Make each record look as a manager that died between `go` and recording "running" leaves
    // it: starting, with its supervisor's identity (written before `go`) and no command pid.
    const cutShort = async (command) => {
      const snap = await spawnFromChild(storageDir, { sessionId: 'SA', command })
      const path = join(storageDir, 'bash-tasks', sessionHash('SA'), `${snap.taskId}.json`)
      const rec = readJson(path)
      Object.assign(rec, { status: 'starting', child_pid: null, pgid: null, child_start_ticks: undefined })
      writeFileSync(path, JSON.stringify(rec, null, 2))
      return snap
    }
    const long = await cutShort('sleep 30')
    const short = await cutShort('sleep 0.5; exit 3')
    assert.ok(alive(long.pid))
    const m = new TaskManager({ storageDir, killGraceMs: 200 })
    const t = Object.fromEntries((await m.replay('SA')).map((x) => [x.taskId, x]))
    assert.equal(t[long.taskId].status, 'running', 'a command that runs is adopted, not "spawn aborted"')
    assert.equal(t[long.taskId].pid, long.pid, 'the command is found as its supervisor\'s child')
    const ended = await m.wait(short.taskId)
    assert.equal(ended.status, 'failed')
    assert.equal(ended.exitCode, 3, 'the real exit code is recorded')
    const killed = await m.kill(long.taskId)
    assert.equal(killed.status, 'killed')
    assert.ok(await gone(long.pid), 'kill() stopped the adopted command')
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('close() lets spawns in flight finish, and killRunning then stops them', async () => {
    const storageDir = tempDir()
    const m = new TaskManager({ storageDir, maxRunning: 32, killGraceMs: 100 })
    const marker = `inflight-${process.pid}-${Date.now()}`
    const spawns = Array.from({ length: 10 }, () => m.spawn({ sessionId: 'IF', command: `sleep 30 # ${marker}` }).catch((e) => e))
    await sleep(2)
    await m.close({ killRunning: true })
    const results = await Promise.all(spawns)
    for (const r of results) {
      if (r instanceof Error) assert.equal(r.code, 'E_CLOSED')
      else assert.equal(m.get(r.taskId).status, 'killed')
    }
    await sleep(100)
    assert.ok(!execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' }).includes(marker), 'a spawned command outlived close({killRunning})')
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('the exit marker: none once the manager recorded the end; written when the manager stops answering after the exit, and a later manager takes its code', { timeout: 30_000 }, async () => {
    const storageDir = tempDir()
    const go = join(storageDir, 'go')
    // A manager in a child process spawns two tasks and says where they are. The first ends now;
    // the second ends when the file 'go' appears, which comes after the child is stopped.
    const child = spawnProcess(process.execPath, ['-e', `
      const { TaskManager } = require(${JSON.stringify(join(root, 'index.js'))})
      const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)} })
      ;(async () => {
        const now = await m.spawn({ sessionId: 'M', command: 'exit 2' })
        await m.wait(now.taskId)
        const later = await m.spawn({ sessionId: 'M', command: 'while [ ! -e ${go} ]; do sleep 0.02; done; exit 3' })
        console.log(JSON.stringify({ now: now.taskId, later: later.taskId, dir: require('node:path').dirname(later.stdoutPath) }))
      })()
      setInterval(() => {}, 1000)`], { stdio: ['ignore', 'pipe', 'inherit'] })
    try {
      const line = await new Promise((resolve, reject) => {
        let out = ''
        child.stdout.on('data', (d) => {
          out += d
          if (out.includes('\n')) resolve(out.split('\n')[0])
        })
        child.once('exit', (code) => reject(new Error(`the manager's process exited (${code})`)))
      })
      const { now, later, dir } = JSON.parse(line)
      // Recorded by its manager, which told the supervisor: no marker.
      assert.ok(await gone(readJson(join(dir, `${now}.json`)).supervisor_pid))
      assert.equal(existsSync(join(dir, `${now}.exit`)), false, 'a marker was written although the manager recorded the end')
      // The manager stops; the task ends; its supervisor, unanswered, writes the marker after its
      // bounded wait (5 s) and exits.
      process.kill(child.pid, 'SIGSTOP')
      writeFileSync(go, '')
      const sup = readJson(join(dir, `${later}.json`)).supervisor_pid
      assert.ok(await gone(sup, 15_000), 'the supervisor waits for a stopped manager only a bounded time')
      assert.equal(readFileSync(join(dir, `${later}.exit`), 'utf8').trim(), '3')
      assert.equal(readJson(join(dir, `${later}.json`)).status, 'running', 'the stopped manager recorded nothing')
      // The stopped manager dies; the next one settles the task from the marker.
      child.kill('SIGKILL')
      assert.ok(await gone(child.pid))
      const m = new TaskManager({ storageDir })
      const done = await m.wait(later)
      assert.deepEqual([done.status, done.exitCode], ['failed', 3])
      await m.close()
    } finally {
      child.kill('SIGKILL')
    }
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('durability: strict and batched both record every transition; an unknown policy is E_INVALID', async () => {
    const storageDir = tempDir()
    assert.throws(() => new TaskManager({ storageDir, durability: 'lazy' }), { code: 'E_INVALID', message: /durability must be 'batched' or 'strict'/ })
    for (const durability of ['strict', 'batched']) {
      const m = new TaskManager({ storageDir, durability })
      const t = await m.spawn({ sessionId: `D-${durability}`, command: 'exit 4' })
      const done = await m.wait(t.taskId)
      assert.deepEqual([done.status, done.exitCode], ['failed', 4])
      await m.close()
      const json = readJson(join(storageDir, 'bash-tasks', sessionHash(`D-${durability}`), `${t.taskId}.json`))
      assert.deepEqual([json.status, json.exit_code], ['failed', 4], durability)
    }
    rmSync(storageDir, { recursive: true, force: true })
  })

  test('temp files of a writer that died are removed by replay and gc', async () => {
    const storageDir = tempDir()
    const dir = writeBundle(storageDir, aftRecord({ task_id: 'tmpf0001', session_id: 'TF' }))
    const stale = join(dir, '.tmpf0001.json.tmp.999999.tmpf0001')
    writeFileSync(stale, '{"half": ')
    const m = new TaskManager({ storageDir })
    await m.replay('TF')
    assert.equal(existsSync(stale), false)
    writeFileSync(stale, '{"half": ')
    await m.gc()
    assert.equal(existsSync(stale), false)
    assert.equal(m.get('tmpf0001').status, 'completed')
    await m.close()
    rmSync(storageDir, { recursive: true, force: true })
  })
})
