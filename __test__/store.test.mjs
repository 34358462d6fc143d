// The bundle on disk, the SQLite index, permissions, validation and lookups.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { statSync, readFileSync, realpathSync, writeFileSync, mkdirSync, symlinkSync, existsSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { createHash } from 'node:crypto'
import { execFileSync } from 'node:child_process'
import { freshManager, tree, sqlite, readJson, tempDir, root, TaskManager, landed, gone } from './helpers.mjs'

const mode = (p) => statSync(p).mode & 0o777
const sessionHash = (s) => createHash('sha256').update(s).digest('hex').slice(0, 16)

describe('store', () => {
  let ctx
  before(() => {
    ctx = freshManager({ harness: 'pi' })
  })
  after(() => ctx.cleanup())

  test('spawn/wait round trip: the bundle on disk, field by field', async () => {
    const cwd = realpathSync(ctx.storageDir)
    const started = await ctx.manager.spawn({ sessionId: 'ses-1', command: 'sleep 0.3; echo hi', cwd, timeoutMs: 60000, compressed: false })
    const dir = join(ctx.storageDir, 'bash-tasks', sessionHash('ses-1'))
    assert.equal(dirname(started.stdoutPath), dir)
    const running = readJson(join(dir, `${started.taskId}.json`))
    assert.equal(running.status, 'running')
    assert.equal(running.child_pid, started.pid)
    assert.equal(running.pgid, started.pid)

    const done = await ctx.manager.wait(started.taskId)
    const json = readJson(join(dir, `${started.taskId}.json`))
    const expected = {
      schema_version: 4,
      task_id: started.taskId,
      session_id: 'ses-1',
      command: 'sleep 0.3; echo hi',
      mode: 'pipes',
      workdir: cwd,
      project_root: cwd,
      status: 'completed',
      started_at: done.startedAt,
      finished_at: done.finishedAt,
      duration_ms: done.finishedAt - done.startedAt,
      timeout_ms: 60000,
      exit_code: 0,
      child_pid: null,
      pgid: started.pid,
      completion_delivered: false,
      notify_on_completion: true,
      compressed: false,
      pty_rows: null,
      pty_cols: null,
      status_reason: null,
      harness: 'pi',
      project_key: done.projectKey,
    }
    for (const [k, v] of Object.entries(expected)) assert.deepEqual(json[k], v, `field ${k}`)
    assert.match(json.project_key, /^[0-9a-f]{16}$/)
    assert.equal(json.supervisor_pid > 0, true)
    assert.equal(typeof json.child_start_ticks, 'number')
    assert.equal(readFileSync(join(dir, `${started.taskId}.stdout`), 'utf8'), 'hi\n')
    // The manager recorded the end and told the supervisor so: it exits without a marker.
    assert.ok(await gone(json.supervisor_pid), 'the supervisor exits')
    assert.equal(existsSync(join(dir, `${started.taskId}.exit`)), false, 'no exit marker when the manager recorded the end')
    assert.equal(done.outputBytes, 3)
    // Pretty-printed, as FORMAT.md says.
    assert.match(readFileSync(join(dir, `${started.taskId}.json`), 'utf8'), /^\{\n  "schema_version": 4,/)
  })

  test('store files are private and the SQLite row mirrors the JSON', async (t) => {
    const started = await ctx.manager.spawn({ sessionId: 'ses-perm', command: 'echo row; exit 2' })
    const done = await ctx.manager.wait(started.taskId)
    const dir = dirname(done.stdoutPath)
    assert.equal(mode(ctx.storageDir), 0o700)
    assert.equal(mode(join(ctx.storageDir, 'bash-tasks')), 0o700)
    assert.equal(mode(dir), 0o700)
    for (const ext of ['json', 'stdout', 'stderr']) assert.equal(mode(join(dir, `${done.taskId}.${ext}`)), 0o600, ext)
    assert.equal(mode(join(ctx.storageDir, 'tasks.db')), 0o600)

    // The row is written by the index's writer thread; any read of the index commits what is
    // still queued first, so after this list() the row is on disk for another process to read.
    assert.equal(ctx.manager.list({ sessionId: 'ses-perm' }).length, 1)
    const rows = sqlite(join(ctx.storageDir, 'tasks.db'), 'SELECT * FROM bash_tasks WHERE task_id = ?', [done.taskId])
    if (rows === null) return t.skip('python3 with sqlite3 is not installed, so the row cannot be read')
    assert.equal(rows.length, 1)
    const row = rows[0]
    assert.equal(row.harness, 'pi')
    assert.equal(row.session_id, 'ses-perm')
    assert.equal(row.status, 'failed')
    assert.equal(row.exit_code, 2)
    assert.equal(row.pid, null)
    assert.equal(row.pgid, started.pgid)
    assert.equal(row.started_at, done.startedAt)
    assert.equal(row.completed_at, done.finishedAt)
    assert.equal(row.stdout_path, done.stdoutPath)
    assert.equal(row.stderr_path, done.stderrPath)
    assert.equal(row.cwd, done.cwd)
    assert.equal(row.project_key, done.projectKey)
    assert.equal(row.completion_delivered, 0)
    assert.equal(row.compressed, 1)
    assert.equal(row.output_bytes, 4)
    assert.deepEqual(JSON.parse(row.metadata), readJson(join(dir, `${done.taskId}.json`)))
    const wal = sqlite(join(ctx.storageDir, 'tasks.db'), 'PRAGMA journal_mode')
    assert.equal(wal[0].journal_mode, 'wal')
  })

  test('every E_INVALID case leaves the store untouched', async () => {
    const m = ctx.manager
    const first = await m.spawn({ sessionId: 'inv', command: 'true' })
    await m.wait(first.taskId)
    // The supervisor may still be exiting just after wait() resolves: let it.
    assert.ok(await gone(readJson(join(ctx.storageDir, 'bash-tasks', sessionHash('inv'), `${first.taskId}.json`)).supervisor_pid))
    const before = tree(ctx.storageDir, sessionHash('inv-sig')).filter((l) => !l.includes('tasks.db'))
    const cases = [
      ['empty command', () => m.spawn({ sessionId: 'inv', command: '' })],
      ['blank command', () => m.spawn({ sessionId: 'inv', command: '   \n' })],
      ['NUL in command', () => m.spawn({ sessionId: 'inv', command: 'echo a\0b' })],
      ['command over 1 MiB', () => m.spawn({ sessionId: 'inv', command: 'x'.repeat(1024 * 1024 + 1) })],
      ['missing cwd', () => m.spawn({ sessionId: 'inv', command: 'true', cwd: '/nonexistent/dir' })],
      ['cwd is a file', () => m.spawn({ sessionId: 'inv', command: 'true', cwd: '/etc/hostname' })],
      ['empty session id', () => m.spawn({ sessionId: '', command: 'true' })],
      ['NUL in session id', () => m.spawn({ sessionId: 'a\0b', command: 'true' })],
      ['session id over 512 bytes', () => m.spawn({ sessionId: 's'.repeat(513), command: 'true' })],
      ['negative timeout', () => m.spawn({ sessionId: 'inv', command: 'true', timeoutMs: -1 })],
      ['bad mode', () => m.spawn({ sessionId: 'inv', command: 'true', mode: 'tty' })],
      ['pty rows out of range', () => m.spawn({ sessionId: 'inv', command: 'true', mode: 'pty', rows: 0 })],
      ['pty cols out of range', () => m.spawn({ sessionId: 'inv', command: 'true', mode: 'pty', cols: 1001 })],
      ['../x as task id (wait)', () => m.wait('../x')],
      ['../x as task id (kill)', () => m.kill('../x')],
      ['bad kill signal', async () => m.kill((await m.spawn({ sessionId: 'inv-sig', command: 'true' })).taskId, { signal: 'SIGSTOP' })],
    ]
    for (const [name, call] of cases) {
      await assert.rejects(call(), (e) => {
        assert.equal(e.code, 'E_INVALID', `${name}: ${e.code} ${e.message}`)
        assert.ok(e.message.length > 10, name)
        return true
      }, name)
    }
    for (const bad of ['../x', '', 'a/b', 'x'.repeat(65), 'bash-..']) {
      assert.throws(() => m.get(bad), (e) => e.code === 'E_INVALID', `get(${JSON.stringify(bad)})`)
    }
    const after = tree(ctx.storageDir, sessionHash('inv-sig')).filter((l) => !l.includes('tasks.db'))
    assert.deepEqual(after, before)
  })

  test('unknown ids: get is null, wait and kill are E_NOT_FOUND', async () => {
    assert.equal(ctx.manager.get('bash-0000000000000000'), null)
    await assert.rejects(ctx.manager.wait('bash-0000000000000000'), (e) => e.code === 'E_NOT_FOUND' && e.message.includes('bash-0000000000000000'))
    await assert.rejects(ctx.manager.kill('bash-0000000000000000'), (e) => e.code === 'E_NOT_FOUND')
  })

  test('list filters by session, status, project root and harness', async () => {
    const local = freshManager({ harness: 'opencode' })
    try {
      const projA = tempDir('bgshell-proj-a-')
      const projB = tempDir('bgshell-proj-b-')
      const m = local.manager
      const a1 = await m.spawn({ sessionId: 'A', command: 'true', cwd: projA })
      const a2 = await m.spawn({ sessionId: 'A', command: 'exit 1', cwd: projB })
      const b1 = await m.spawn({ sessionId: 'B', command: 'sleep 60', cwd: projA })
      await m.wait(a1.taskId)
      await m.wait(a2.taskId)
      const ids = (l) => l.map((s) => s.taskId).sort()
      assert.deepEqual(ids(m.list({ sessionId: 'A' })), [a1.taskId, a2.taskId].sort())
      assert.deepEqual(ids(m.list({ status: ['running'] })), [b1.taskId])
      assert.deepEqual(ids(m.list({ sessionId: 'A', status: ['failed', 'killed'] })), [a2.taskId])
      assert.deepEqual(ids(m.list({ projectRoot: projA })), [a1.taskId, b1.taskId].sort())
      assert.deepEqual(ids(m.list({ harness: 'opencode' })), [a1.taskId, a2.taskId, b1.taskId].sort())
      assert.deepEqual(m.list({ harness: 'pi' }), [])
      assert.equal(m.list().length, 3)
      assert.throws(() => m.list({ status: ['sleeping'] }), (e) => e.code === 'E_INVALID')
      // Another manager on the same store sees the same tasks, and get works across sessions.
      const other = new TaskManager({ storageDir: local.storageDir })
      assert.deepEqual(ids(other.list({ sessionId: 'A' })), [a1.taskId, a2.taskId].sort())
      assert.equal(other.get(b1.taskId).status, 'running')
      await other.close()
    } finally {
      await local.cleanup()
    }
  })

  test('list and replay of many tasks give the very objects get gives, output sizes included', async () => {
    // Enough tasks in one session for the bulk path (one directory listing for output sizes,
    // the objects made by one JSON.parse), of every shape.
    const { manager: m, storageDir, cleanup } = freshManager()
    try {
      const session = 'bulk-shapes'
      const dir = join(storageDir, 'bash-tasks', sessionHash(session))
      mkdirSync(dir, { recursive: true, mode: 0o700 })
      const statuses = ['completed', 'failed', 'killed', 'timed_out']
      for (let i = 0; i < 40; i++) {
        const id = `bulk${String(i).padStart(4, '0')}`
        const pty = i % 5 === 0
        const rec = {
          schema_version: 4, task_id: id, session_id: session, command: i % 7 ? `echo ${i}` : 'printf "é ✓ \\u2028"', mode: pty ? 'pty' : 'pipes',
          workdir: storageDir, project_root: i % 2 ? storageDir : null, status: statuses[i % 4], started_at: 1000 + i, finished_at: 2000 + i,
          duration_ms: 1000, timeout_ms: i % 3 ? 5000 : null, exit_code: i % 4 === 2 ? null : i, child_pid: null, pgid: i % 3 ? 100 + i : null,
          completion_delivered: i % 2 === 0, notify_on_completion: true, compressed: i % 2 === 0, pty_rows: pty ? 24 : null, pty_cols: pty ? 80 : null,
          status_reason: i % 4 === 1 ? 'because' : null, ...(i % 6 === 0 ? { label: `label ${i}`, signal: 'SIGTERM' } : {}),
          ...(i % 8 === 0 ? { rusage: { max_rss_kb: 1000 + i, user_ms: i, system_ms: 2 * i } } : {}), ...(i % 9 === 0 ? { stdin: 'pipe' } : {}),
        }
        writeFileSync(join(dir, `${id}.json`), JSON.stringify(rec, null, 2), { mode: 0o600 })
        if (pty && i % 10 === 0) writeFileSync(join(dir, `${id}.pty`), 'x'.repeat(i + 1))
        if (!pty && i % 3 !== 0) writeFileSync(join(dir, `${id}.stdout`), 'y'.repeat(i))
        if (!pty && i % 4 === 1) writeFileSync(join(dir, `${id}.stderr`), 'zz')
        if (i === 7) symlinkSync('/etc/passwd', join(dir, `${id}.stderr`))
      }
      const real = await m.spawn({ sessionId: session, command: 'echo "ünïcode ✓"', label: 'real one' })
      await m.wait(real.taskId)
      const replayed = await m.replay(session)
      const listed = m.list({ sessionId: session })
      assert.equal(listed.length, 41)
      assert.deepStrictEqual(replayed, listed)
      for (const t of listed) assert.deepStrictEqual(t, m.get(t.taskId), t.taskId)
      assert.equal(listed.find((t) => t.taskId === 'bulk0004').outputBytes, 4)
      assert.equal(listed.find((t) => t.taskId === 'bulk0007').outputBytes, 7 + '/etc/passwd'.length, "a link's own size")
      assert.equal(listed.find((t) => t.taskId === 'bulk0000').outputBytes, 1)
      assert.equal(listed.find((t) => t.taskId === 'bulk0005').outputBytes, undefined)
      assert.equal(listed.find((t) => t.taskId === real.taskId).outputBytes, Buffer.byteLength('ünïcode ✓\n'))
      assert.ok(!('label' in listed.find((t) => t.taskId === 'bulk0001')), 'an absent field is left out, not undefined')
    } finally {
      await m.close()
      cleanup()
    }
  })

  test('an unusable store is E_IO naming the path', async () => {
    const base = tempDir()
    writeFileSync(join(base, 'file'), 'x')
    assert.throws(() => new TaskManager({ storageDir: join(base, 'file', 'store') }), (e) => e.code === 'E_IO' && e.message.includes(join(base, 'file')))
    mkdirSync(join(base, 'real'))
    symlinkSync(join(base, 'real'), join(base, 'link'))
    assert.throws(() => new TaskManager({ storageDir: join(base, 'link') }), (e) => e.code === 'E_IO' && /symlink/.test(e.message))
  })

  test('storageDir defaults to $BGSHELL_HOME, made absolute and private', async () => {
    const base = tempDir()
    const script = `const { TaskManager } = require(${JSON.stringify(join(root, 'index.js'))}); console.log(new TaskManager().storageDir)`
    const out = execFileSync(process.execPath, ['-e', script], { cwd: base, env: { ...process.env, BGSHELL_HOME: 'rel-home' }, encoding: 'utf8' })
    assert.equal(out.trim(), join(realpathSync(base), 'rel-home'))
    assert.equal(mode(join(base, 'rel-home')), 0o700)
    const xdg = execFileSync(process.execPath, ['-e', script], { cwd: base, env: { ...process.env, BGSHELL_HOME: '', XDG_STATE_HOME: join(base, 'xdg') }, encoding: 'utf8' })
    assert.equal(xdg.trim(), join(base, 'xdg', 'bgshell'))
  })
})
