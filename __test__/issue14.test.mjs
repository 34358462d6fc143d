// Issue 14, library parts: the output cap keeps head + tail, stdin pipes for pipes tasks,
// labels, resource use. Real processes; waits are on events, never on fixed sleeps.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, statSync, existsSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { freshManager, TaskManager, readJson, sleep } from './helpers.mjs'

const CAP = 64 * 1024
/** Prints a head marker, `n` numbered filler lines (28 bytes each), then a tail marker. */
const flood = (n, after = '') =>
  `echo HEAD-MARKER; seq -f 'filler line number %08g' 1 ${n}; echo TAIL-MARKER${after}`

const code = (fn) => {
  try {
    fn()
  } catch (e) {
    return e.code
  }
  return 'no error'
}

describe('output cap: head + tail', () => {
  let ctx
  before(() => {
    ctx = freshManager({ outputCapBytes: CAP })
  })
  after(() => ctx.cleanup())
  const m = () => ctx.manager

  test('a running task keeps its first and latest output, disk use stays at the cap, offsets stay', async () => {
    // 2.6 MB of output, then the task waits (still running) for its stdin to close.
    const s = await m().spawn({ sessionId: 'cap', command: `${flood(100_000)}; echo READY; cat >/dev/null`, stdin: 'pipe' })
    await m().waitFor(s.taskId, { pattern: 'READY' })
    // The supervisor punches on inotify's word, just behind the writer: let it catch up.
    const bound = (st) => st.blocks * 512 <= CAP + 4 * st.blksize
    for (let i = 0; i < 500 && !bound(statSync(s.stdoutPath)); i++) await sleep(10)
    const st = statSync(s.stdoutPath)
    const printed = 12 + 100_000 * 28 + 12 + 6
    assert.equal(st.size, printed, 'the logical size is everything printed: offsets never move')
    assert.ok(bound(st), `disk use ${st.blocks * 512} stays near the cap ${CAP}`)
    assert.equal((await m().get(s.taskId)).status, 'running')

    // readOutput from 0: the head, then a page that skips the dropped range and says so.
    const first = await m().readOutput(s.taskId, { offset: 0, maxBytes: 1 << 20 })
    assert.ok(first.data.startsWith('HEAD-MARKER\nfiller line number 00000001\n'))
    assert.equal(first.droppedBytes, undefined)
    assert.ok(first.nextOffset >= CAP / 2 && first.nextOffset < CAP / 2 + st.blksize, `head kept: ${first.nextOffset}`)
    const second = await m().readOutput(s.taskId, { offset: first.nextOffset, maxBytes: 1 << 20 })
    assert.ok(second.droppedBytes > 2_000_000, `dropped ${second.droppedBytes}`)
    assert.equal(second.offset, first.nextOffset + second.droppedBytes)
    assert.equal(second.nextOffset, printed)
    assert.ok(second.data.endsWith('TAIL-MARKER\nREADY\n'))
    assert.ok(!first.data.includes('\0') && !second.data.includes('\0'))
    // Kept bytes sit at their original offsets: line k starts at 12 + (k-1)*26.
    const line = second.data.slice(second.data.indexOf('\n') + 1).split('\n')[0]
    const k = Number(line.slice('filler line number '.length))
    assert.equal(second.offset + second.data.indexOf('\n') + 1, 12 + (k - 1) * 28)

    // tail: the end; a note only when the window reaches the dropped range.
    const t = await m().tail(s.taskId, { lines: 3 })
    assert.equal(t.text, 'filler line number 00100000\nTAIL-MARKER\nREADY\n')
    const big = await m().tail(s.taskId, { bytes: 1 << 20 })
    assert.match(big.text, /^\[\.\.\. \d+ bytes dropped here by the output cap/)
    assert.ok(big.truncated && big.text.endsWith('READY\n'))
    m().closeStdin(s.taskId)
    const done = await m().wait(s.taskId)
    assert.equal(done.status, 'completed')
  })

  test('output written before the file watch starts is cut when it starts, the task still running', async () => {
    // The supervisor watches a task's files only once it has run 20 ms (cap.rs, WATCH_AFTER):
    // these 300 KB per stream are written at once, then nothing more until stdin closes.
    const size = 300_000
    const s = await m().spawn({
      sessionId: 'cap',
      command: `head -c ${size} /dev/zero | tr '\\0' o; head -c ${size} /dev/zero | tr '\\0' e >&2; cat >/dev/null`,
      stdin: 'pipe',
    })
    const done = (p) => {
      const st = statSync(p)
      return st.size === size && st.blocks * 512 <= CAP + 4 * st.blksize
    }
    for (let i = 0; i < 500 && !(done(s.stdoutPath) && done(s.stderrPath)); i++) await sleep(10)
    for (const p of [s.stdoutPath, s.stderrPath]) {
      const st = statSync(p)
      assert.equal(st.size, size)
      assert.ok(st.blocks * 512 <= CAP + 4 * st.blksize, `${p}: disk use ${st.blocks * 512} comes down to the cap ${CAP}`)
    }
    assert.equal((await m().get(s.taskId)).status, 'running')
    m().closeStdin(s.taskId)
    assert.equal((await m().wait(s.taskId)).status, 'completed')
  })

  test('previews show head, end and a note of what was dropped', async () => {
    const events = []
    const off = m().onEvent((e) => e.type === 'completion' && events.push(e.completion))
    const s = await m().spawn({ sessionId: 'cap', command: `${flood(50_000)} >&2; exit 3` })
    await m().wait(s.taskId)
    const c = m().drainCompletions('cap').find((x) => x.taskId === s.taskId)
    assert.ok(c.outputPreview.startsWith('HEAD-MARKER\n'))
    assert.match(c.outputPreview, /TAIL-MARKER\n/)
    assert.match(c.outputPreview, /\[output cap of 65536 bytes reached: \d+ bytes in the middle were dropped/)
    assert.ok(c.outputTruncated)
    m().ackCompletions('cap', [s.taskId])
    for (let i = 0; i < 100 && !events.some((e) => e.taskId === s.taskId); i++) await sleep(20)
    off()
    const ok = await m().run({ sessionId: 'cap', command: flood(50_000), waitMs: 60_000 })
    assert.match(ok.output, /TAIL-MARKER\n/)
    assert.match(ok.output, /bytes in the middle were dropped/)
  })

  test('a pty transcript is capped the same way', async () => {
    const s = await m().spawn({ sessionId: 'cap', mode: 'pty', command: flood(50_000) })
    await m().wait(s.taskId)
    const st = statSync(s.ptyPath)
    assert.ok(st.size > 1_000_000)
    assert.ok(st.blocks * 512 <= CAP + 4 * st.blksize, `disk use ${st.blocks * 512}`)
    const t = await m().tail(s.taskId, { lines: 1 })
    assert.equal(t.text.trim(), 'TAIL-MARKER')
    const page = await m().readOutput(s.taskId, { offset: 0, maxBytes: 16 })
    assert.ok(page.data.startsWith('HEAD-MARKER'))
  })

  test('a watch sees output after the dropped range', async () => {
    const s = await m().spawn({ sessionId: 'cap', command: `${flood(100_000)}; echo the-end-is-here` })
    await m().wait(s.taskId)
    const r = await m().waitFor(s.taskId, { pattern: 'the-end-is-here' })
    assert.equal(r.reason, 'matched')
  })
})

describe('stdin pipes', () => {
  let ctx
  before(() => {
    ctx = freshManager()
  })
  after(() => ctx.cleanup())
  const m = () => ctx.manager

  test("write() feeds a stdin: 'pipe' task and closeStdin() sends EOF", async () => {
    const s = await m().spawn({ sessionId: 'in', command: 'cat; echo "<eof>"', stdin: 'pipe' })
    assert.equal(s.stdin, 'pipe')
    const bundle = readJson(join(dirname(s.stdoutPath), `${s.taskId}.json`))
    assert.equal(bundle.stdin, 'pipe')
    assert.equal(m().write(s.taskId, 'hello\n'), 6)
    assert.equal(m().write(s.taskId, ['a', { key: 'tab' }, 'b', { key: 'enter' }]), 4)
    await m().waitFor(s.taskId, { pattern: 'a\tb' })
    m().closeStdin(s.taskId)
    const done = await m().wait(s.taskId)
    assert.equal(done.status, 'completed')
    assert.equal(readFileSync(s.stdoutPath, 'utf8'), 'hello\na\tb\r<eof>\n')
  })

  test('errors: no pipe, a pty task, a closed pipe, an ended task', async () => {
    const plain = await m().spawn({ sessionId: 'in', command: 'sleep 30' })
    assert.equal(plain.stdin, undefined)
    assert.equal(code(() => m().write(plain.taskId, 'x')), 'E_NOT_PTY')
    try {
      m().write(plain.taskId, 'x')
    } catch (e) {
      assert.match(e.message, /stdin: 'pipe'/)
    }
    assert.equal(code(() => m().closeStdin(plain.taskId)), 'E_NOT_PTY')
    await m().kill(plain.taskId)
    await assert.rejects(m().spawn({ sessionId: 'in', command: 'cat', stdin: 'pipe', mode: 'pty' }), { code: 'E_INVALID' })
    await assert.rejects(m().spawn({ sessionId: 'in', command: 'cat', stdin: 'file' }), { code: 'E_INVALID' })
    const tty = await m().spawn({ sessionId: 'in', command: 'cat', mode: 'pty' })
    assert.equal(code(() => m().closeStdin(tty.taskId)), 'E_INVALID')
    await m().kill(tty.taskId)

    const s = await m().spawn({ sessionId: 'in', command: 'cat >/dev/null; echo done; sleep 30', stdin: 'pipe' })
    m().closeStdin(s.taskId)
    m().closeStdin(s.taskId) // idempotent
    await m().waitFor(s.taskId, { pattern: 'done' })
    assert.equal(code(() => m().write(s.taskId, 'late')), 'E_INVALID')
    await m().kill(s.taskId)
    assert.equal(code(() => m().write(s.taskId, 'x')), 'E_EXITED')
    assert.equal(code(() => m().closeStdin(s.taskId)), 'E_EXITED')
  })

  test('a program that closed its stdin: write() says so and the supervisor lives on (SIGPIPE ignored)', async () => {
    const s = await m().spawn({ sessionId: 'in', command: 'exec 0<&-; echo closed; sleep 30', stdin: 'pipe' })
    await m().waitFor(s.taskId, { pattern: 'closed' })
    let err
    try {
      m().write(s.taskId, 'x')
    } catch (e) {
      err = e
    }
    assert.equal(err?.code, 'E_INVALID')
    assert.match(err.message, /EPIPE/)
    assert.equal((await m().get(s.taskId)).status, 'running')
    await m().kill(s.taskId)
    assert.equal((await m().wait(s.taskId)).status, 'killed')
  })

  test('the pipe outlives the manager: another manager writes and closes it', async () => {
    const a = new TaskManager({ storageDir: ctx.storageDir })
    const s = await a.spawn({ sessionId: 'in', command: 'read line; echo "got:$line"; cat; echo bye', stdin: 'pipe' })
    await a.close()
    const b = new TaskManager({ storageDir: ctx.storageDir })
    try {
      assert.equal(b.write(s.taskId, 'from-b\n'), 7)
      await b.waitFor(s.taskId, { pattern: 'got:from-b' })
      b.closeStdin(s.taskId)
      const done = await b.wait(s.taskId)
      assert.equal(done.status, 'completed')
      assert.equal(readFileSync(s.stdoutPath, 'utf8'), 'got:from-b\nbye\n')
    } finally {
      await b.close({ killRunning: true })
    }
  })
})

describe('labels and resource use', () => {
  let ctx
  before(() => {
    ctx = freshManager()
  })
  after(() => ctx.cleanup())
  const m = () => ctx.manager

  test('a label is stored, listed, in the bundle, the completion and a promoted run', async () => {
    const s = await m().spawn({ sessionId: 'lab', command: 'echo hi', label: 'dev server ✓' })
    assert.equal(s.label, 'dev server ✓')
    await m().wait(s.taskId)
    assert.equal(m().get(s.taskId).label, 'dev server ✓')
    assert.equal(m().list({ sessionId: 'lab' }).find((t) => t.taskId === s.taskId).label, 'dev server ✓')
    assert.equal(readJson(join(dirname(s.stdoutPath), `${s.taskId}.json`)).label, 'dev server ✓')
    assert.equal(m().drainCompletions('lab').find((c) => c.taskId === s.taskId).label, 'dev server ✓')
    const unlabelled = await m().spawn({ sessionId: 'lab', command: 'true' })
    assert.equal(unlabelled.label, undefined)
    assert.ok(!readFileSync(join(dirname(s.stdoutPath), `${unlabelled.taskId}.json`), 'utf8').includes('"label"'))
    const r = await m().run({ sessionId: 'lab', command: 'read x', stdin: 'pipe', label: 'waiter', waitMs: 0 })
    assert.ok(r.promoted)
    assert.match(r.output, new RegExp(`task ${r.taskId} \\(waiter\\)`))
    m().closeStdin(r.taskId)
    await m().wait(r.taskId)
  })

  test('labels are validated', async () => {
    for (const label of ['', '   ', 'two\nlines', 'tab\there', 'esc\u001b[31m', 'x'.repeat(129)]) {
      await assert.rejects(m().spawn({ sessionId: 'lab', command: 'true', label }), { code: 'E_INVALID' }, JSON.stringify(label))
    }
  })

  test("rusage: peak RSS and CPU of the task's process tree, in the snapshot, bundle and completion", async () => {
    // A grandchild (python under bash) allocates ~64 MiB and burns CPU; bash reaps it.
    const py = `import time\nb = bytearray(64 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass`
    const s = await m().spawn({ sessionId: 'use', command: `python3 -c '${py}'; echo done` })
    assert.equal(s.rusage, undefined, 'none while it runs')
    const done = await m().wait(s.taskId)
    assert.equal(done.status, 'completed')
    assert.ok(done.rusage, 'rusage once ended')
    assert.ok(done.rusage.maxRssKb >= 60 * 1024, `maxRssKb ${done.rusage.maxRssKb}`)
    // process_time counts user + system time of the python process.
    const cpu = done.rusage.userMs + done.rusage.systemMs
    assert.ok(cpu >= 290, `userMs + systemMs = ${cpu}`)
    const bundle = readJson(join(dirname(s.stdoutPath), `${s.taskId}.json`))
    assert.deepEqual(bundle.rusage, { max_rss_kb: done.rusage.maxRssKb, user_ms: done.rusage.userMs, system_ms: done.rusage.systemMs })
    const c = m().drainCompletions('use').find((x) => x.taskId === s.taskId)
    assert.deepEqual(c.rusage, done.rusage)
    assert.deepEqual(m().get(s.taskId).rusage, done.rusage)
  })

  test('a task that ended while no manager ran has no rusage (its marker holds only the code)', async () => {
    const a = new TaskManager({ storageDir: ctx.storageDir })
    const s = await a.spawn({ sessionId: 'use2', command: 'cat', stdin: 'pipe' })
    await a.close()
    const exitPath = join(dirname(s.stdoutPath), `${s.taskId}.exit`)
    // Ends it through its supervisor's socket, with no manager listening to the supervisor.
    const b = new TaskManager({ storageDir: ctx.storageDir })
    b.closeStdin(s.taskId)
    await b.close()
    for (let i = 0; i < 500 && !existsSync(exitPath); i++) await sleep(20)
    const c = new TaskManager({ storageDir: ctx.storageDir })
    try {
      const [snap] = await c.replay('use2')
      assert.equal(snap.status, 'completed')
      assert.equal(snap.rusage, undefined)
    } finally {
      await c.close()
    }
  })
})
