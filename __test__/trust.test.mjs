// Adversarial tests: a store whose content, layout, owner or disk turns against its user, and
// crashes at the worst instant. Canary files outside the store must stay untouched (content and
// mode); no unrelated process may be signalled; no exit code may be lost or invented.
// Tests that need root (a second user, chown, a tmpfs) run in CI, which is root; elsewhere they
// skip and say why.
import { describe, test, after } from 'node:test'
import assert from 'node:assert/strict'
import { spawn as spawnProcess, execFileSync, spawnSync } from 'node:child_process'
import {
  chmodSync, chownSync, existsSync, mkdirSync, readFileSync, readdirSync, readlinkSync, rmSync, statSync,
  symlinkSync, writeFileSync, appendFileSync, copyFileSync,
} from 'node:fs'
import { join } from 'node:path'
import { TaskManager, alive, gone, readJson, runChild, sessionHash, sleep, tempDir, root } from './helpers.mjs'

const isRoot = process.getuid?.() === 0
const NEEDS_ROOT = isRoot ? false : 'needs root (a second user, chown or a tmpfs mount); CI runs as root'
const cleanups = []
after(() => {
  for (const f of cleanups.reverse()) f()
})
function scratch() {
  const d = tempDir('bgshell-trust-')
  cleanups.push(() => rmSync(d, { recursive: true, force: true }))
  return d
}

/** A 512 KiB tmpfs on a fresh directory, unmounted after the tests (root only). */
function smallTmpfs() {
  const mnt = scratch()
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=512k,mode=0700', 'tmpfs', mnt])
  cleanups.push(() => spawnSync('umount', ['-l', mnt]))
  return mnt
}

/** Fills every free block of the filesystem at `mnt`; returns the filler file (remove it to free them). */
function fillDisk(mnt) {
  const filler = join(mnt, 'filler')
  try {
    for (;;) appendFileSync(filler, Buffer.alloc(4096))
  } catch (e) {
    assert.equal(e.code, 'ENOSPC')
  }
  return filler
}

/** This process's spare file in a session directory (`TaskPaths::spare`). */
const spareIn = (dir) => join(dir, `.spare.json.tmp.${process.pid}.session`)

/** A file outside the store whose content and mode must never change. */
function canary(dir, name = 'canary') {
  mkdirSync(dir, { recursive: true })
  const p = join(dir, name)
  writeFileSync(p, `precious ${name}\n`, { mode: 0o640 })
  chmodSync(p, 0o640)
  return {
    path: p,
    check(what) {
      assert.ok(existsSync(p), `${what}: ${p} was deleted`)
      assert.equal(readFileSync(p, 'utf8'), `precious ${name}\n`, `${what}: ${p} was changed`)
      assert.equal(statSync(p).mode & 0o777, 0o640, `${what}: ${p} changed mode`)
    },
  }
}

function record(overrides) {
  const now = Date.now()
  return {
    schema_version: 4, task_id: 'abcd1234', session_id: 'T', command: 'echo hi', mode: 'pipes',
    workdir: '/tmp', project_root: '/tmp', status: 'completed', started_at: now - 5000,
    finished_at: now - 4000, duration_ms: 1000, timeout_ms: null, exit_code: 0, child_pid: null,
    pgid: null, completion_delivered: false, notify_on_completion: true, compressed: true,
    pty_rows: null, pty_cols: null, status_reason: null, ...overrides,
  }
}

function writeBundle(storageDir, name, rec, session = rec.session_id) {
  const d = join(storageDir, 'bash-tasks', sessionHash(session))
  mkdirSync(d, { recursive: true, mode: 0o700 })
  writeFileSync(join(d, `${name}.json`), JSON.stringify(rec, null, 2), { mode: 0o600 })
  return d
}

/** Runs SQL on tasks.db with Python's sqlite3 (the test machine's python3). */
function sql(db, statement, params = []) {
  execFileSync('python3', ['-c', `import sqlite3, json, sys
c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2], json.loads(sys.argv[3])); c.commit()`, db, statement, JSON.stringify(params)])
}

const startTicks = (pid) => Number(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[19])

describe('trust', () => {
  test('a bundle or index row whose content names a path outside the store is quarantined or ignored, never used', async () => {
    const storageDir = scratch()
    const outside = join(scratch(), 'victim')
    const c = ['json', 'stdout', 'exit', 'sh'].map((ext) => canary(outside, `x.${ext}`))
    const evil = `../../../${outside.split('/').slice(-2).join('/')}/x`
    // The JSON names another task (a path) than its file; another names an absolute path.
    const dir = writeBundle(storageDir, 'good0001', record({ task_id: evil, completion_delivered: true, finished_at: 1 }))
    writeBundle(storageDir, 'good0002', record({ task_id: join(outside, 'x') }))
    // A JSON in the wrong session's directory (its session_id is another session's).
    writeBundle(storageDir, 'good0003', record({ task_id: 'good0003', session_id: 'OTHER' }), 'T')
    const m = new TaskManager({ storageDir })
    // A crafted index row: metadata naming a path, key columns of a real-looking task.
    const meta = JSON.stringify(record({ task_id: evil }))
    sql(join(storageDir, 'tasks.db'), `INSERT INTO bash_tasks (harness, session_id, task_id, project_key, command, cwd, status,
      started_at, compressed, completion_delivered, metadata) VALUES ('default','T','rowx0001','k','echo','/tmp','completed',1,1,0,?)`, [meta])
    const replayed = await m.replay('T')
    assert.deepEqual(replayed.map((t) => t.taskId), [], 'no invalid bundle or row is a task')
    assert.equal(m.get('good0001'), null)
    assert.equal(m.get('rowx0001'), null)
    assert.deepEqual(m.drainCompletions('T'), [])
    assert.deepEqual(m.list({ sessionId: 'T' }), [])
    await assert.rejects(m.readOutput('good0001'), { code: 'E_NOT_FOUND' })
    await assert.rejects(m.tail('rowx0001'), { code: 'E_NOT_FOUND' })
    assert.deepEqual(await m.gc({ olderThanMs: 0 }), { removed: 0, quarantined: 0 }, 'replay already set them aside')
    const q = readdirSync(join(storageDir, 'bash-tasks-quarantine', sessionHash('T'))).sort()
    assert.deepEqual(q, ['good0001.json', 'good0002.json', 'good0003.json'])
    assert.deepEqual(readdirSync(dir), [], 'nothing was written in their place')
    for (const k of c) k.check('replay/get/gc of crafted bundles')
    await m.close()
  })

  test('no symlink is followed: session directory, quarantine, legacy layout, bundle files', async () => {
    const storageDir = scratch()
    const outside = scratch()
    const c = canary(outside)
    // A session directory that is a symlink to a directory holding a bundle and a canary.
    mkdirSync(join(storageDir, 'bash-tasks'), { recursive: true, mode: 0o700 })
    const fakeSession = join(outside, 'session')
    mkdirSync(fakeSession)
    writeFileSync(join(fakeSession, 'link0001.json'), JSON.stringify(record({ task_id: 'link0001', session_id: 'L', completion_delivered: true, finished_at: 1 })))
    const fc = canary(fakeSession, 'link0001.stdout')
    symlinkSync(fakeSession, join(storageDir, 'bash-tasks', sessionHash('L')))
    // The legacy layout through a symlinked harness directory.
    symlinkSync(outside, join(storageDir, 'pi'))
    // A session with one symlinked bundle JSON (to a canary) and one good bundle.
    const d = writeBundle(storageDir, 'good0001', record({ task_id: 'good0001', session_id: 'S' }))
    symlinkSync(c.path, join(d, 'evil0001.json'))
    // The quarantine directory itself is a symlink outside.
    const qOutside = join(outside, 'q')
    mkdirSync(qOutside)
    symlinkSync(qOutside, join(storageDir, 'bash-tasks-quarantine'))
    const m = new TaskManager({ storageDir })
    await assert.rejects(m.replay('L'), { code: 'E_IO' }, 'a symlinked session directory is refused')
    assert.equal(m.get('link0001'), null)
    await assert.rejects(m.spawn({ sessionId: 'L', command: 'true' }), { code: 'E_IO' })
    const s = await m.replay('S')
    assert.deepEqual(s.map((t) => t.taskId), ['good0001'], 'one symlinked JSON does not fail the session')
    assert.equal(m.drainCompletions('S').length, 1)
    assert.deepEqual(await m.gc({ olderThanMs: 0 }), { removed: 0, quarantined: 0 })
    assert.deepEqual(readdirSync(qOutside), [], 'nothing was moved through a symlinked quarantine')
    c.check('symlinks'); fc.check('symlinked session')
    assert.deepEqual(readdirSync(fakeSession).sort(), ['link0001.json', 'link0001.stdout'])
    // With a real quarantine directory, the symlinked JSON is moved aside as a link.
    rmSync(join(storageDir, 'bash-tasks-quarantine'))
    const m2 = new TaskManager({ storageDir })
    await m2.replay('S')
    const moved = join(storageDir, 'bash-tasks-quarantine', sessionHash('S'), 'evil0001.json')
    assert.equal(readlinkSync(moved), c.path, 'quarantined as the link it is')
    c.check('quarantine of a symlink')
    await m.close(); await m2.close()
  })

  test('a store root the user owns is made private; one another user owns is refused', { skip: NEEDS_ROOT, timeout: 60_000 }, async () => {
    const base = scratch()
    chmodSync(base, 0o755)
    // Ours but loose (0777, tasks.db 0666): tightened before use.
    const loose = join(base, 'loose')
    mkdirSync(loose)
    chmodSync(loose, 0o777)
    writeFileSync(join(loose, 'tasks.db'), '')
    chmodSync(join(loose, 'tasks.db'), 0o666)
    const m = new TaskManager({ storageDir: loose })
    assert.equal(statSync(loose).mode & 0o777, 0o700)
    assert.equal(statSync(join(loose, 'tasks.db')).mode & 0o777, 0o600)
    await m.spawn({ sessionId: 'U', command: 'true' }).then((t) => m.wait(t.taskId))
    // A second user can no longer plant anything in it, nor read the index.
    const nobody = (cmd, args) => spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', cmd, ...args], { encoding: 'utf8' })
    // A Node the second user can run (this runtime may live in root's home); checked first, so
    // the refusals below are the store's doing.
    const nodeForNobody = ['/usr/bin/node', '/usr/local/bin/node', process.execPath].find((n) => existsSync(n) && nobody(n, ['-e', 'process.exit(0)']).status === 0)
    assert.ok(nodeForNobody, 'no Node that uid 65534 can run')
    const asNobody = (script) => nobody(nodeForNobody, ['-e', script])
    assert.equal(asNobody(`require('fs').statSync(${JSON.stringify(base)})`).status, 0, 'the second user can reach the stores\' parent')
    const plant = asNobody(`require('fs').writeFileSync(${JSON.stringify(join(loose, 'bash-tasks', 'x'))}, 'x')`)
    assert.match(plant.stderr, /EACCES/, 'another user wrote into the store')
    const peek = asNobody(`require('fs').readFileSync(${JSON.stringify(join(loose, 'tasks.db'))})`)
    assert.match(peek.stderr, /EACCES/, 'another user read the index')
    await m.close()
    // Owned by another user (even 0777): refused, with the path and the reason.
    const foreign = join(base, 'foreign')
    mkdirSync(foreign)
    chmodSync(foreign, 0o777)
    chownSync(foreign, 65534, 65534)
    assert.throws(() => new TaskManager({ storageDir: foreign }), (e) => e.code === 'E_IO' && e.message.includes(foreign) && /belongs to uid 65534/.test(e.message))
    // A tasks.db planted by another user in our root: refused.
    const planted = join(base, 'planted')
    mkdirSync(planted, { mode: 0o700 })
    writeFileSync(join(planted, 'tasks.db'), '')
    chownSync(join(planted, 'tasks.db'), 65534, 65534)
    assert.throws(() => new TaskManager({ storageDir: planted }), (e) => e.code === 'E_IO' && e.message.includes('tasks.db'))
    // The second user's own manager on our store is refused too (from a copy of the addon it
    // can read: the checkout may sit in a private directory).
    const addon = join(base, 'addon')
    mkdirSync(addon, { mode: 0o755 })
    for (const f of readdirSync(root).filter((f) => /^(index\.js|binding\.js|guard\.js|package\.json|.*\.node|bgshell-supervisor)$/.test(f))) copyFileSync(join(root, f), join(addon, f))
    const theirs = asNobody(`const { TaskManager } = require(${JSON.stringify(join(addon, 'index.js'))})
      try { new TaskManager({ storageDir: ${JSON.stringify(loose)} }); console.log('opened') } catch (e) { console.log(e.code) }`)
    assert.equal(theirs.stdout.trim(), 'E_IO')
    // A symlinked root is refused.
    symlinkSync(loose, join(base, 'link'))
    assert.throws(() => new TaskManager({ storageDir: join(base, 'link') }), { code: 'E_IO' })
  })

  test('sockets of pty tasks are private (0600)', async () => {
    const storageDir = scratch()
    const m = new TaskManager({ storageDir })
    const t = await m.spawn({ sessionId: 'P', command: 'cat', mode: 'pty' })
    const sock = join(storageDir, 'bash-tasks', sessionHash('P'), `${t.taskId}.sock`)
    const end = Date.now() + 5000
    while (!existsSync(sock) && Date.now() < end) await sleep(10)
    assert.equal(statSync(sock).mode & 0o777, 0o600)
    await m.close({ killRunning: true })
  })

  test('no process is signalled without proof it is the task: reused pids, pgid 0 and 1', async () => {
    const storageDir = scratch()
    // An unrelated live process whose pid records name, started long after those tasks did.
    const stranger = spawnProcess('sleep', ['60'], { stdio: 'ignore', detached: true })
    cleanups.push(() => { try { stranger.kill('SIGKILL') } catch {} })
    const ticks = startTicks(stranger.pid)
    const hourAgo = Date.now() - 3600_000
    const base = { session_id: 'ID', status: 'running', finished_at: null, duration_ms: null, exit_code: null }
    // aft records (no start times): kill(), an expired deadline, the 24 h orphan rule.
    writeBundle(storageDir, 'kill0001', record({ ...base, task_id: 'kill0001', started_at: hourAgo, child_pid: stranger.pid, pgid: stranger.pid }))
    writeBundle(storageDir, 'dead0001', record({ ...base, task_id: 'dead0001', started_at: hourAgo, timeout_ms: 1000, child_pid: stranger.pid, pgid: stranger.pid }))
    writeBundle(storageDir, 'orph0001', record({ ...base, task_id: 'orph0001', started_at: Date.now() - 25 * 3600_000, child_pid: stranger.pid, pgid: stranger.pid }))
    // Records that do name their process exactly, but groups 0 (the manager's own) and 1.
    const victims = [0, 1].map(() => spawnProcess('sleep', ['60'], { stdio: 'ignore', detached: true }))
    for (const v of victims) cleanups.push(() => { try { v.kill('SIGKILL') } catch {} })
    victims.forEach((v, g) => writeBundle(storageDir, `pgid000${g}`, record({ ...base, task_id: `pgid000${g}`, started_at: hourAgo, child_pid: v.pid, child_start_ticks: startTicks(v.pid), pgid: g })))
    // Run the manager in a child process: if it signalled its own group, the child dies.
    const out = await runChild(`(async () => {
      const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)}, killGraceMs: 100 })
      const r = Object.fromEntries((await m.replay('ID')).map((t) => [t.taskId, t.status]))
      const k = await m.kill('pgid0000', { signal: 'SIGKILL' }).then((t) => t.status, (e) => e.code)
      const k1 = await m.kill('pgid0001', { signal: 'SIGKILL' }).then((t) => t.status, (e) => e.code)
      const k2 = await m.kill('kill0001').then((t) => t.status, (e) => e.code)
      await m.close()
      console.log(JSON.stringify({ r, k, k1, k2 }))
    })()`)
    // runChild rejects if the manager's process died of a signal (its own group killed).
    const res = JSON.parse(out.trim())
    assert.ok(alive(stranger.pid), 'an unrelated process was signalled')
    assert.deepEqual([res.r.pgid0000, res.r.pgid0001], ['running', 'running'], 'proven processes are adopted')
    assert.deepEqual([res.k, res.k1], ['killed', 'killed'], 'kill() reaches the proven process itself')
    for (const v of victims) assert.ok(await gone(v.pid), 'the proven process was not stopped')
    assert.equal(res.r.kill0001, 'failed', 'a process that started after the task is not the task')
    assert.equal(res.r.dead0001, 'failed')
    assert.equal(res.r.orph0001, 'failed', 'the orphan rule signalled nothing (the process is not the task)')
    assert.equal(res.k2, 'failed')
  })

  test('a manager SIGKILLed in the middle of a burst of spawns: every command that ran is recorded with its real outcome, none runs untracked, none twice', { timeout: 60_000 }, async () => {
    const storageDir = scratch()
    const log = join(scratch(), 'ran.log')
    writeFileSync(log, '')
    const N = 30
    for (const delay of [5, 40, 120]) {
      const session = `burst-${delay}`
      // Each command appends its id when it starts, sleeps a little, then exits 0 (or 3 for odd ones).
      await runChild(`
        const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)}, maxRunning: 64 })
        for (let i = 0; i < ${N}; i++) {
          m.spawn({ sessionId: ${JSON.stringify(session)}, command: 'echo "$BGSHELL_TASK_ID" >> ${log}; sleep 0.4; exit ' + (i % 2 ? 3 : 0) }).catch(() => {})
        }
        setTimeout(() => process.kill(process.pid, 'SIGKILL'), ${delay})`, { allowSignal: true })
    }
    const m = new TaskManager({ storageDir, killGraceMs: 200 })
    const all = []
    for (const delay of [5, 40, 120]) all.push(...(await m.replay(`burst-${delay}`)))
    // Wait for everything adopted to end.
    const final = []
    for (const t of all) final.push(t.status === 'running' || t.status === 'starting' || t.status === 'killing' ? await m.wait(t.taskId) : t)
    const ran = readFileSync(log, 'utf8').split('\n').filter(Boolean)
    const byId = Object.fromEntries(final.map((t) => [t.taskId, t]))
    assert.equal(new Set(ran).size, ran.length, 'a command ran twice')
    for (const id of ran) {
      const t = byId[id]
      assert.ok(t, `command ${id} ran but has no record`)
      assert.notEqual(t.statusReason?.startsWith('spawn aborted'), true, `command ${id} ran but is recorded "spawn aborted"`)
      assert.ok(['completed', 'failed'].includes(t.status), `${id}: ${t.status}`)
      assert.ok([0, 3].includes(t.exitCode), `${id} has its real exit code, got ${t.exitCode} (${t.statusReason})`)
    }
    for (const t of final) {
      if (!ran.includes(t.taskId)) assert.match(t.statusReason ?? '', /^spawn (aborted|failed)/, `${t.taskId} did not run, yet is ${t.status}`)
    }
    // Nothing runs untracked: no command is left; a supervisor may still be exiting (its marker,
    // which ended the task, is written just before it exits), so it gets a moment to go.
    const running = () => execFileSync('ps', ['-eo', 'stat=,args='], { encoding: 'utf8' }).split('\n').filter((l) => l.includes(log) && !l.startsWith('Z'))
    assert.deepEqual(running().filter((l) => !l.includes('bgshell-supervisor')), [], 'a command runs untracked')
    for (const end = Date.now() + 5000; running().length > 0 && Date.now() < end; ) await sleep(20)
    assert.deepEqual(running(), [], 'a supervisor outlived its task')
    await m.close()
  })

  test('another process holding the index locked: the synchronous calls return while it still holds it', { timeout: 60_000 }, async () => {
    const storageDir = scratch()
    const m = new TaskManager({ storageDir })
    const t = await m.spawn({ sessionId: 'LK', command: 'echo done' })
    await m.wait(t.taskId)
    const db = join(storageDir, 'tasks.db')
    // Holds the index's write lock for 20 s, or until killed (the old code waited 5 s per
    // statement on it, on the JS thread).
    const holder = spawnProcess('python3', ['-c', `import sqlite3, sys, time
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute('BEGIN EXCLUSIVE'); c.execute("UPDATE bash_tasks SET command = command")
print('locked', flush=True); time.sleep(20)`, db], { stdio: ['ignore', 'pipe', 'inherit'] })
    cleanups.push(() => holder.kill('SIGKILL'))
    await new Promise((resolve, reject) => {
      holder.stdout.once('data', resolve)
      holder.once('exit', () => reject(new Error('the lock holder could not lock the index')))
    })
    const stillLocked = () => spawnSync('python3', ['-c', `import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)
try:
    c.execute('BEGIN IMMEDIATE'); print('free')
except sqlite3.OperationalError: print('locked')`, db], { encoding: 'utf8' }).stdout.trim() === 'locked'
    assert.ok(stillLocked())
    assert.equal(m.get(t.taskId).status, 'completed')
    assert.equal(m.list({ sessionId: 'LK' }).length, 1)
    assert.equal(m.drainCompletions('LK').length, 1)
    assert.deepEqual(m.ackCompletions('LK', [t.taskId, t.taskId.replace(/.$/, 'x')]), [t.taskId])
    const s = await m.spawn({ sessionId: 'LK', command: 'true' })
    assert.equal(m.promote(s.taskId).notifyOnCompletion, true)
    assert.ok(stillLocked(), 'the calls waited until the other process let go of the index')
    holder.kill('SIGKILL')
    await m.wait(s.taskId)
    await m.close()
    // After a restart (replay, as harnesses do), the completion is there: the JSON is the truth.
    const m2 = new TaskManager({ storageDir })
    await m2.replay('LK')
    assert.deepEqual(m2.drainCompletions('LK').map((c) => c.taskId), [s.taskId])
    await m2.close()
  })

  test('disk full while a task runs: the exit code is kept and written once space returns', { skip: NEEDS_ROOT, timeout: 60_000 }, async () => {
    const mnt = smallTmpfs()
    const storageDir = join(mnt, 'store')
    const m = new TaskManager({ storageDir })
    const t = await m.spawn({ sessionId: 'DF', command: 'read x < /dev/null; sleep 0.5; exit 7' })
    const json = join(storageDir, 'bash-tasks', sessionHash('DF'), `${t.taskId}.json`)
    // Updates rewrite the session's spare file (fsutil::replace_via_spare), which reuses its own
    // blocks and so would still take the final record on a full disk. A directory in its place
    // makes the write fall back to a new temp file, which needs blocks the disk has not.
    const spare = spareIn(join(storageDir, 'bash-tasks', sessionHash('DF')))
    assert.ok(existsSync(spare), 'the running update used a spare')
    rmSync(spare)
    mkdirSync(spare)
    const filler = fillDisk(mnt)
    const done = await m.wait(t.taskId)
    assert.deepEqual([done.status, done.exitCode], ['failed', 7])
    assert.deepEqual([m.get(t.taskId).status, m.get(t.taskId).exitCode], ['failed', 7])
    assert.equal(readJson(json).status, 'running', 'the disk took no write (else this test proves nothing)')
    assert.deepEqual(m.drainCompletions('DF').map((c) => [c.taskId, c.exitCode]), [[t.taskId, 7]])
    rmSync(filler)
    const end = Date.now() + 15_000
    while (readJson(json).status === 'running' && Date.now() < end) await sleep(50)
    assert.deepEqual([readJson(json).status, readJson(json).exit_code], ['failed', 7], 'the outcome reached the disk')
    await m.close()
    // A manager that died while the disk was full: the supervisor's marker keeps the code.
    const out = await runChild(`const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)} })
      m.spawn({ sessionId: 'DF2', command: 'sleep 0.5; exit 5' }).then((t) => { console.log(t.taskId); process.stdout.write('', () => {
        const fs = require('fs'); try { for (;;) fs.appendFileSync(${JSON.stringify(filler)}, Buffer.alloc(4096)) } catch {}
        setTimeout(() => process.kill(process.pid, 'SIGKILL'), 1500) }) })`, { allowSignal: true })
    const id = out.trim()
    rmSync(filler)
    const m2 = new TaskManager({ storageDir })
    const [r] = await m2.replay('DF2')
    const final = r.status === 'failed' ? r : await m2.wait(id)
    assert.deepEqual([final.status, final.exitCode], ['failed', 5])
    await m2.close()
  })

  test('disk full while a task runs: the final record still lands, in the blocks of the session\'s spare file', { skip: NEEDS_ROOT, timeout: 60_000 }, async () => {
    const mnt = smallTmpfs()
    const storageDir = join(mnt, 'store')
    const m = new TaskManager({ storageDir })
    const t = await m.spawn({ sessionId: 'DS', command: 'read x < /dev/null; sleep 0.5; exit 6' })
    const dir = join(storageDir, 'bash-tasks', sessionHash('DS'))
    assert.ok(existsSync(spareIn(dir)), 'the running update left a spare')
    const filler = fillDisk(mnt)
    assert.throws(() => writeFileSync(join(mnt, 'probe'), 'x'.repeat(4096)), { code: 'ENOSPC' })
    const done = await m.wait(t.taskId)
    assert.deepEqual([done.status, done.exitCode], ['failed', 6])
    const json = readJson(join(dir, `${t.taskId}.json`))
    assert.deepEqual([json.status, json.exit_code], ['failed', 6], 'the final record is on disk although the disk is full')
    assert.ok(await gone(json.supervisor_pid), 'the supervisor, told recorded, exits')
    assert.equal(existsSync(join(dir, `${t.taskId}.exit`)), false, 'recorded by the manager: no marker')
    rmSync(filler)
    await m.close()
  })

  test('readOutput always makes progress: maxBytes 1..3 pages a multibyte text to its end', async () => {
    const storageDir = scratch()
    const m = new TaskManager({ storageDir })
    const text = 'a€b😀c日本\n'
    const t = await m.spawn({ sessionId: 'RO', command: `printf '%s' '${text}'` })
    await m.wait(t.taskId)
    for (const maxBytes of [1, 2, 3]) {
      let offset = 0
      let got = ''
      for (let i = 0; i < 100; i++) {
        const page = await m.readOutput(t.taskId, { offset, maxBytes })
        got += page.data
        if (page.eof) break
        assert.ok(page.nextOffset > offset, `maxBytes ${maxBytes}: no progress at offset ${offset}`)
        offset = page.nextOffset
      }
      assert.equal(got, text, `maxBytes ${maxBytes}`)
    }
    await m.close()
  })

  test('a spawn that rejects leaves nothing to drain; close() releases tasks.db and the store', async () => {
    const storageDir = scratch()
    const m = new TaskManager({ storageDir, shell: '/nonexistent/shell' })
    await assert.rejects(m.spawn({ sessionId: 'SR', command: 'true' }), { code: 'E_SPAWN' })
    assert.deepEqual(m.drainCompletions('SR'), [])
    const ok = new TaskManager({ storageDir })
    const t = await ok.spawn({ sessionId: 'SR', command: 'sleep 0.2' })
    await ok.wait(t.taskId)
    m.list({}); ok.list({})
    await m.close(); await ok.close()
    const held = readdirSync('/proc/self/fd').map((fd) => { try { return readlinkSync(`/proc/self/fd/${fd}`) } catch { return '' } }).filter((p) => p.startsWith(storageDir))
    assert.deepEqual(held, [], 'descriptors into the store are still open after close()')
  })
})
