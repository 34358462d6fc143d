// Launching: real processes, output straight to files, cwd/env/shell semantics.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, mkdirSync, realpathSync, readdirSync, readlinkSync } from 'node:fs'
import { join } from 'node:path'
import { freshManager } from './helpers.mjs'

describe('spawn', () => {
  let ctx
  before(() => {
    ctx = freshManager()
  })
  after(() => ctx.cleanup())

  const run = async (options) => {
    const started = await ctx.manager.spawn({ sessionId: 'spawn-tests', ...options })
    assert.equal(started.status, 'running')
    return ctx.manager.wait(started.taskId)
  }
  const out = (snap) => readFileSync(snap.stdoutPath, 'utf8')
  const err = (snap) => readFileSync(snap.stderrPath, 'utf8')

  test('non-zero exit is failed with the real code', async () => {
    const snap = await run({ command: 'echo before; exit 7' })
    assert.equal(snap.status, 'failed')
    assert.equal(snap.exitCode, 7)
    assert.equal(snap.signal, undefined)
    assert.equal(out(snap), 'before\n')
  })

  test('stderr goes to its own file', async () => {
    const snap = await run({ command: 'echo to-out; echo to-err >&2' })
    assert.equal(snap.status, 'completed')
    assert.equal(snap.exitCode, 0)
    assert.equal(out(snap), 'to-out\n')
    assert.equal(err(snap), 'to-err\n')
  })

  test('cwd is honoured', async () => {
    const dir = realpathSync(ctx.storageDir)
    mkdirSync(join(dir, 'work'))
    const snap = await run({ command: 'pwd', cwd: join(dir, 'work') })
    assert.equal(out(snap), join(dir, 'work') + '\n')
    assert.equal(snap.cwd, join(dir, 'work'))
    assert.equal(snap.projectRoot, join(dir, 'work'))
  })

  test('env overrides reach the command and the environment is inherited', async () => {
    // HOME comes from the environment the process started with (Bun does not pass later
    // process.env edits down to native code, so the test does not rely on them).
    const snap = await run({ command: 'echo "$FOO|$HOME|$BGSHELL_TASK_ID"', env: { FOO: 'bar baz' } })
    assert.equal(out(snap), `bar baz|${process.env.HOME}|${snap.taskId}\n`)
  })

  test('agentEnv sets the agent-friendly variables, env still wins', async () => {
    const snap = await run({ command: 'echo "$NO_COLOR $TERM $PAGER $GIT_PAGER $PYTHONUNBUFFERED"', agentEnv: true, env: { PAGER: 'less' } })
    assert.equal(out(snap), '1 dumb less cat 1\n')
  })

  test('bash syntax works', async () => {
    const snap = await run({ command: 'declare -A m=([k]=v); arr=(1 2 3); [[ ${m[k]} == v ]] && echo "${#arr[@]} $((2**10)) $(echo sub)"; cat <<< "here"' })
    assert.equal(out(snap), '3 1024 sub\nhere\n')
  })

  test('a 200 KiB multi-line command runs from its script file', async () => {
    const lines = []
    for (let i = 0; i < 4000; i++) lines.push(`x${i}=${'y'.repeat(40)} # line ${i}`)
    lines.push('echo "last ${#x3999}"')
    const command = lines.join('\n')
    assert.ok(command.length > 200 * 1024)
    const snap = await run({ command })
    assert.equal(snap.status, 'completed', err(snap))
    assert.equal(out(snap), 'last 40\n')
    assert.equal(readFileSync(snap.stdoutPath.replace(/\.stdout$/, '.sh'), 'utf8'), command)
  })

  test('stdin is /dev/null (cat sees end-of-file at once) and only fds 0-2 are open', async () => {
    const started = await ctx.manager.spawn({ sessionId: 'spawn-tests', command: 'cat; echo cat-done; exec sleep 5' })
    // `exec sleep` keeps the task's pid: look at the descriptors it holds, from outside.
    let fds = []
    for (let i = 0; i < 250 && !out(started).includes('cat-done'); i++) await new Promise((r) => setTimeout(r, 20))
    assert.equal(out(started), 'cat-done\n')
    fds = readdirSync(`/proc/${started.pid}/fd`).map(Number).sort((a, b) => a - b)
    assert.deepEqual(fds, [0, 1, 2])
    assert.equal(readlinkSync(`/proc/${started.pid}/fd/0`), '/dev/null')
    assert.equal(readlinkSync(`/proc/${started.pid}/fd/1`), started.stdoutPath)
    assert.equal(readlinkSync(`/proc/${started.pid}/fd/2`), started.stderrPath)
    await ctx.manager.kill(started.taskId, { signal: 'SIGKILL' })
  })

  test('each task runs in its own process group', async () => {
    const started = await ctx.manager.spawn({ sessionId: 'spawn-tests', command: 'ps -o pgid= -p $$; sleep 0.2' })
    assert.equal(started.pgid, started.pid)
    const snap = await ctx.manager.wait(started.taskId)
    assert.equal(Number(out(snap).trim()), started.pid)
    assert.notEqual(started.pgid, process.pid)
  })

  test('50 concurrent spawns get distinct ids and all complete', async () => {
    const local = freshManager({ maxRunning: 64 })
    try {
      const snaps = await Promise.all(
        Array.from({ length: 50 }, (_, i) => local.manager.spawn({ sessionId: 'burst', command: `echo ${i}` })),
      )
      assert.equal(new Set(snaps.map((s) => s.taskId)).size, 50)
      for (const s of snaps) assert.match(s.taskId, /^bash-[0-9a-f]{16}$/)
      const done = await Promise.all(snaps.map((s) => local.manager.wait(s.taskId)))
      done.forEach((s, i) => {
        assert.equal(s.status, 'completed')
        assert.equal(readFileSync(s.stdoutPath, 'utf8'), `${i}\n`)
      })
      assert.equal(local.manager.list({ sessionId: 'burst' }).length, 50)
    } finally {
      await local.cleanup()
    }
  })

  test('a missing shell is E_SPAWN and the task is recorded as failed', async () => {
    const local = freshManager({ shell: '/nonexistent/bash' })
    try {
      await assert.rejects(local.manager.spawn({ sessionId: 's', command: 'true' }), (e) => e.code === 'E_SPAWN' && /nonexistent/.test(e.message))
      const [rec] = local.manager.list({ sessionId: 's' })
      assert.equal(rec.status, 'failed')
      assert.match(rec.statusReason, /^spawn failed/)
    } finally {
      await local.cleanup()
    }
  })
})
