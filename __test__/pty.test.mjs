// PTY mode: interactive programs on a real pseudo-terminal, held by the task's supervisor.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readlinkSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { freshManager, tempDir, runChild, sleep, TaskManager, gone } from './helpers.mjs'

describe('pty', () => {
  let ctx
  before(() => {
    ctx = freshManager({ killGraceMs: 300 })
  })
  after(() => ctx.cleanup())
  const m = () => ctx.manager
  const pty = (command, extra = {}) => m().spawn({ sessionId: 'pty', command, mode: 'pty', ...extra })

  test('the program runs on a terminal of the asked size, with a real TERM; the snapshot says so', async () => {
    const s = await pty('stty size; echo "TERM=$TERM"; [ -t 0 ] && [ -t 1 ] && echo tty-yes', { rows: 50, cols: 120 })
    assert.equal(s.mode, 'pty')
    assert.equal(s.rows, 50)
    assert.equal(s.cols, 120)
    assert.match(s.ptyPath, /\.pty$/)
    assert.equal(s.stderrPath, undefined)
    assert.equal(s.stdoutPath, undefined)
    const done = await m().wait(s.taskId)
    assert.equal(done.status, 'completed')
    assert.equal(await m().screen(s.taskId), '50 120\nTERM=xterm-256color\ntty-yes')
    assert.equal(statSync(s.ptyPath).mode & 0o777, 0o600)
  })

  test('text and keys written to a read loop echo on the screen', async () => {
    const s = await pty('while IFS= read -r line; do echo "got: $line"; [ "$line" = quit ] && break; done')
    assert.equal(m().write(s.taskId, 'hello'), 5)
    assert.equal(m().write(s.taskId, [{ key: 'enter' }]), 1)
    await m().waitFor(s.taskId, { pattern: 'got: hello' })
    assert.equal(m().write(s.taskId, ['wor', { key: 'backspace' }, 'rld', { key: 'ENTER' }]), 8)
    await m().waitFor(s.taskId, { pattern: 'got: world' })
    m().write(s.taskId, ['quit', { key: 'return' }])
    await m().wait(s.taskId)
    assert.equal(await m().screen(s.taskId), 'hello\ngot: hello\nworld\ngot: world\nquit\ngot: quit')
  })

  test('ctrl keys reach the program', async () => {
    const s = await pty('cat')
    await sleep(100)
    m().write(s.taskId, [{ key: 'ctrl-c' }])
    const done = await m().wait(s.taskId)
    assert.equal(done.status, 'failed')
    assert.equal(done.signal, 'SIGINT')
  })

  test('a screen clear leaves only the new text', async () => {
    const s = await pty('echo old text; printf "\\033[H\\033[2J"; echo new text')
    await m().wait(s.taskId)
    assert.equal(await m().screen(s.taskId), 'new text')
  })

  test('the alternate screen and cursor movement are rendered', async () => {
    const s = await pty('printf "main\\n\\033[?1049h"; printf "\\033[5;3Hin alt"; sleep 0.3; printf "\\033[?1049l"; echo back')
    await m().waitFor(s.taskId, { pattern: 'in alt' })
    assert.equal(await m().screen(s.taskId), '\n\n\n\n  in alt')
    await m().wait(s.taskId)
    assert.equal(await m().screen(s.taskId), 'main\nback')
  })

  test('cursor-position queries get an answer', async () => {
    const s = await pty('printf "abc"; printf "\\033[6n"; IFS= read -rs -d R pos; echo; echo "pos=${pos#*[}"', { timeoutMs: 5000 })
    const done = await m().wait(s.taskId)
    assert.equal(done.status, 'completed')
    assert.match(await m().screen(s.taskId), /pos=1;4$/)
  })

  test('resize reaches stty size and is stored', async () => {
    const s = await pty('IFS= read -r _; stty size')
    m().resize(s.taskId, 30, 100)
    assert.deepEqual([m().get(s.taskId).rows, m().get(s.taskId).cols], [30, 100])
    m().write(s.taskId, [{ key: 'enter' }])
    await m().wait(s.taskId)
    assert.equal(await m().screen(s.taskId), '\n30 100')
  })

  test('every error of write, resize and screen', async () => {
    const pipes = await m().spawn({ sessionId: 'pty', command: 'sleep 5' })
    const live = await pty('cat')
    assert.throws(() => m().write(pipes.taskId, 'x'), (e) => e.code === 'E_NOT_PTY')
    assert.throws(() => m().resize(pipes.taskId, 10, 10), (e) => e.code === 'E_NOT_PTY')
    await assert.rejects(m().screen(pipes.taskId), (e) => e.code === 'E_NOT_PTY')
    assert.throws(() => m().write(live.taskId, [{ key: 'hyper' }]), (e) => e.code === 'E_INVALID' && /hyper/.test(e.message))
    assert.throws(() => m().write(live.taskId, 'x'.repeat(1024 * 1024 + 1)), (e) => e.code === 'E_TOO_LARGE')
    for (const [r, c] of [[0, 80], [501, 80], [24, 0], [24, 1001]]) {
      assert.throws(() => m().resize(live.taskId, r, c), (e) => e.code === 'E_INVALID', `${r}x${c}`)
      await assert.rejects(pty('true', { rows: r, cols: c }), (e) => e.code === 'E_INVALID', `spawn ${r}x${c}`)
    }
    assert.throws(() => m().write('bash-0000000000000000', 'x'), (e) => e.code === 'E_NOT_FOUND')
    await m().kill(live.taskId)
    await m().kill(pipes.taskId)
    assert.throws(() => m().write(live.taskId, 'x'), (e) => e.code === 'E_EXITED')
    assert.throws(() => m().resize(live.taskId, 10, 10), (e) => e.code === 'E_EXITED')
  })

  test("kill of a program that ignores HUP and TERM ends with SIGKILL after the grace", async () => {
    const s = await pty("trap '' HUP TERM; echo armed; cat")
    await m().waitFor(s.taskId, { pattern: 'armed' })
    const k = await m().kill(s.taskId, { graceMs: 200 })
    assert.equal(k.status, 'killed')
    assert.equal(k.exitCode, 137)
    assert.ok(await gone(s.pid))
  })

  test('a pty task times out as timed_out/124', async () => {
    const s = await pty('cat', { timeoutMs: 200 })
    const done = await m().wait(s.taskId)
    assert.equal(done.status, 'timed_out')
    assert.equal(done.exitCode, 124)
  })

  test('a terminal session outlives its manager: replayed, written to, finished', async () => {
    const storageDir = tempDir()
    const out = await runChild(`
      const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)} })
      m.spawn({ sessionId: 'keep', mode: 'pty', command: 'echo waiting; IFS= read -r line; echo "you said: $line"' })
        .then((s) => console.log(s.taskId))`)
    const taskId = out.trim()
    const fresh = new TaskManager({ storageDir })
    const [t] = await fresh.replay('keep')
    assert.equal(t.taskId, taskId)
    assert.equal(t.status, 'running')
    await fresh.waitFor(taskId, { pattern: 'waiting' })
    assert.equal(await fresh.screen(taskId), 'waiting')
    fresh.write(taskId, ['still here', { key: 'enter' }])
    const done = await fresh.wait(taskId)
    assert.equal(done.status, 'completed')
    assert.equal(await fresh.screen(taskId), 'waiting\nstill here\nyou said: still here')
    await fresh.close()
  })

  test('no pty descriptor stays open in the manager after 20 pty tasks', async () => {
    const ptmx = () => readdirSync('/proc/self/fd').filter((fd) => {
      try {
        const target = readlinkSync(join('/proc/self/fd', fd))
        return target === '/dev/ptmx' || target.startsWith('/dev/pts/')
      } catch {
        return false
      }
    }).length
    const local = freshManager({ maxRunning: 32 })
    try {
      const before = ptmx()
      const tasks = await Promise.all(Array.from({ length: 20 }, (_, i) => local.manager.spawn({ sessionId: 'many', mode: 'pty', command: `echo ${i}` })))
      await Promise.all(tasks.map((t) => local.manager.wait(t.taskId)))
      for (const [i, t] of tasks.entries()) assert.equal(await local.manager.screen(t.taskId), String(i))
      assert.equal(ptmx(), before)
      assert.equal(before, 0)
    } finally {
      await local.cleanup()
    }
  })
})
