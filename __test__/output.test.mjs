// Reading output: paging by byte offset, tails, ANSI stripping, previews.
import { test, describe, before, after } from 'node:test'
import assert from 'node:assert/strict'
import { readFileSync, statSync } from 'node:fs'
import { freshManager } from './helpers.mjs'

describe('output', () => {
  let ctx
  before(() => {
    ctx = freshManager()
  })
  after(() => ctx.cleanup())
  const run = async (command, extra = {}) => {
    const s = await ctx.manager.spawn({ sessionId: 'out', command, ...extra })
    return ctx.manager.wait(s.taskId)
  }

  test('100-byte pages over 1000 € characters reassemble exactly, never splitting one', async () => {
    const snap = await run(`for i in $(seq 1000); do printf '€'; done`)
    let offset = 0
    let text = ''
    let pages = 0
    for (;;) {
      const page = await ctx.manager.readOutput(snap.taskId, { offset, maxBytes: 100 })
      assert.equal(page.offset, offset)
      assert.equal(page.totalBytes, 3000)
      assert.ok(!page.data.includes('\ufffd'), `page at ${offset} split a character`)
      assert.equal(Buffer.byteLength(page.data), page.nextOffset - offset)
      text += page.data
      offset = page.nextOffset
      pages++
      if (page.eof) break
    }
    assert.equal(text, '€'.repeat(1000))
    assert.equal(pages, 31) // 33 characters (99 bytes) per page
  })

  test('invalid bytes become U+FFFD; stderr is its own stream', async () => {
    const snap = await run(`printf 'a\\xffb'; printf 'err' >&2`)
    const page = await ctx.manager.readOutput(snap.taskId)
    assert.equal(page.data, 'a\ufffdb')
    assert.equal(page.eof, true)
    assert.equal((await ctx.manager.readOutput(snap.taskId, { stream: 'stderr' })).data, 'err')
    await assert.rejects(ctx.manager.readOutput(snap.taskId, { stream: 'pty' }), (e) => e.code === 'E_INVALID')
    await assert.rejects(ctx.manager.readOutput('bash-0000000000000000'), (e) => e.code === 'E_NOT_FOUND')
  })

  test('a follower of a running task is told there is more to come', async () => {
    const s = await ctx.manager.spawn({ sessionId: 'out', command: 'echo one; sleep 0.3; echo two' })
    await ctx.manager.waitFor(s.taskId, { pattern: 'one' })
    const first = await ctx.manager.readOutput(s.taskId)
    assert.equal(first.data, 'one\n')
    assert.equal(first.eof, false)
    await ctx.manager.wait(s.taskId)
    const rest = await ctx.manager.readOutput(s.taskId, { offset: first.nextOffset })
    assert.deepEqual([rest.data, rest.eof], ['two\n', true])
  })

  test('tail of a 256 MiB output returns the last line', async () => {
    const local = freshManager({ outputCapBytes: 0 }) // 0: no cap, the default 100 MiB would cut it
    try {
      const s = await local.manager.spawn({ sessionId: 'big', command: 'head -c 268435456 /dev/zero | tr "\\0" x; echo; echo last-line' })
      const snap = await local.manager.wait(s.taskId)
      assert.equal(snap.outputBytes, 268435456 + 11)
      assert.deepEqual(await local.manager.tail(snap.taskId, { lines: 1 }), { text: 'last-line\n', truncated: true })
      const bytes = await local.manager.tail(snap.taskId, { bytes: 12 })
      assert.equal(bytes.text, 'x\nlast-line\n')
      // lines: 2 reaches into the 256 MiB line, of which only the last 256 KiB are read.
      const two = await local.manager.tail(snap.taskId, { lines: 2 })
      assert.equal(two.truncated, true)
      assert.equal(two.text.length, 256 * 1024)
      assert.match(two.text, /^x+\nlast-line\n$/)
    } finally {
      await local.cleanup()
    }
  })

  test('tail: combined is stdout then stderr; stripAnsi removes escapes and collapses redraws', async () => {
    const snap = await run(`printf '\\033[32mgreen\\033[0m\\n 10%%\\r 55%%\\r100%%\\n'; printf '\\033]0;title\\007err line\\n' >&2`)
    const combined = await ctx.manager.tail(snap.taskId, { stream: 'combined', stripAnsi: true })
    assert.equal(combined.text, 'green\n100%\nerr line\n')
    assert.equal(combined.truncated, false)
    const raw = await ctx.manager.tail(snap.taskId, { lines: 1 })
    assert.equal(raw.text, ' 10%\r 55%\r100%\n')
    await assert.rejects(ctx.manager.tail(snap.taskId, { stream: 'both' }), (e) => e.code === 'E_INVALID')
  })

  test('past the cap a file keeps its head and its end; readers never see the dropped bytes', async () => {
    const local = freshManager({ outputCapBytes: 8192 })
    try {
      const s = await local.manager.spawn({ sessionId: 'cap', command: 'for i in $(seq 1 5000); do echo "line $i"; done; echo late; exit 1' })
      const done = await local.manager.wait(s.taskId)
      const st = statSync(done.stdoutPath)
      assert.ok(st.size > 40_000, 'the logical size counts everything printed')
      assert.ok(st.blocks * 512 <= 8192 + 2 * st.blksize, `disk use ${st.blocks * 512}`)
      let offset = 0
      let text = ''
      let dropped = 0
      for (;;) {
        const page = await local.manager.readOutput(s.taskId, { offset })
        dropped += page.droppedBytes ?? 0
        text += page.data
        offset = page.nextOffset
        if (page.eof) break
      }
      assert.ok(!text.includes('\0'), 'a page shows a hole (NUL bytes)')
      assert.ok(text.startsWith('line 1\nline 2\n') && text.endsWith('line 5000\nlate\n'))
      assert.equal(Buffer.byteLength(text) + dropped, st.size)
      const [c] = local.manager.drainCompletions('cap')
      assert.equal(c.outputTruncated, true)
      assert.ok(c.outputPreview.startsWith('line 1\n'))
      assert.match(c.outputPreview, /line 5000\nlate\n\[output cap of 8192 bytes reached: \d+ bytes in the middle were dropped; the first and the latest output are kept\]$/)
    } finally {
      await local.cleanup()
    }
  })
})
