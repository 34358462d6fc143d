// The `bgshell` CLI (bin/bgshell.js), run as a child process on a temporary store.
// Runs under `node --test` and `bun test` (process.execPath is node or bun).
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { TaskManager, root, tempDir, alive, gone } from './helpers.mjs'

const cliPath = join(root, 'bin', 'bgshell.js')
const store = tempDir('bgshell-cli-test-')
const ID = /^bash-[0-9a-f]{16}$/

/** Runs the CLI; resolves with { code, stdout, stderr } whatever the exit code. */
function cli(...args) {
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [cliPath, ...args],
      { env: { ...process.env, BGSHELL_HOME: store }, encoding: 'utf8', timeout: 30000 },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') reject(new Error(`${err.message}\n${stderr}`))
        else resolve({ code: err ? err.code : 0, stdout, stderr })
      },
    )
  })
}

/** `bgshell run -- ...`, asserting success; returns the task id. */
async function run(...command) {
  const r = await cli('run', '--', ...command)
  assert.equal(r.code, 0, r.stderr)
  const id = r.stdout.trim()
  assert.match(id, ID)
  return id
}

/** A manager on the same store, to check the CLI's effects through the library. */
function inspect(fn) {
  const manager = new TaskManager({ storageDir: store })
  return Promise.resolve(fn(manager)).finally(() => manager.close())
}

after(async () => {
  // Kill whatever a failed test left running, then drop the store.
  await inspect(async (m) => {
    for (const t of m.list()) {
      if (['starting', 'running', 'killing'].includes(t.status)) {
        await m.kill(t.taskId, { signal: 'SIGKILL' }).catch(() => {})
      }
    }
  }).catch(() => {})
  rmSync(store, { recursive: true, force: true })
})

test('run prints a task id at once; ls lists it; logs prints its output', async () => {
  const id = await run('echo', 'hello-from-cli')
  const w = await cli('wait', id)
  assert.equal(w.code, 0, w.stderr)

  const ls = await cli('ls')
  assert.equal(ls.code, 0, ls.stderr)
  const lines = ls.stdout.trimEnd().split('\n')
  assert.match(lines[0], /^ID\s+STATUS\s+EXIT\s+AGE\/DURATION\s+SESSION\s+COMMAND$/)
  const row = lines.find((l) => l.startsWith(id))
  assert.ok(row, `ls shows ${id}:\n${ls.stdout}`)
  assert.match(row, /\bcompleted\b/)
  assert.match(row, /\bcli\b/)
  assert.match(row, /echo hello-from-cli$/)

  const logs = await cli('logs', id)
  assert.equal(logs.code, 0, logs.stderr)
  assert.equal(logs.stdout, 'hello-from-cli\n')
})

test('ls shows a multi-line command on one line; --session filters', async () => {
  const id = await (async () => {
    const r = await cli('run', '--session', 'cli-test-other', '--', 'echo a\necho b')
    assert.equal(r.code, 0, r.stderr)
    return r.stdout.trim()
  })()
  await cli('wait', id)
  const ls = await cli('ls', '--session', 'cli-test-other')
  assert.equal(ls.code, 0, ls.stderr)
  const lines = ls.stdout.trimEnd().split('\n')
  assert.equal(lines.length, 2, ls.stdout)
  assert.ok(lines[1].startsWith(id))
  assert.match(lines[1], /cli-test-other\s+echo a echo b$/)
  for (const line of lines) assert.ok(line.length <= 100, `line fits 100 columns: ${line}`)

  const all = await cli('ls', '--all')
  assert.ok(all.stdout.includes(id))
})

test('logs --stderr prints stderr', async () => {
  const id = await run('echo out; echo err >&2')
  await cli('wait', id)
  const logs = await cli('logs', '--stderr', id)
  assert.equal(logs.code, 0, logs.stderr)
  assert.equal(logs.stdout, 'err\n')
})

test('wait: exit 0 and "completed" for success, exit 1 for a failing command', async () => {
  const ok = await run('echo', 'hi')
  const w = await cli('wait', ok)
  assert.equal(w.code, 0, w.stderr)
  assert.equal(w.stdout, `${ok} completed exit=0\n`)

  const bad = await run('exit 3')
  const f = await cli('wait', bad)
  assert.equal(f.code, 1, f.stderr)
  assert.equal(f.stdout, `${bad} failed exit=3\n`)
})

test('wait --timeout on a running task exits 1 with the running status', async () => {
  const id = await run('sleep', '30')
  try {
    const w = await cli('wait', '--timeout', '50', id)
    assert.equal(w.code, 1, w.stderr)
    assert.equal(w.stdout, `${id} running exit=-\n`)
  } finally {
    await cli('kill', '--signal', 'SIGKILL', id)
  }
})

test('kill stops a running task and its process is gone', async () => {
  const id = await run('sleep', '30')
  const pid = await inspect((m) => m.get(id).pid)
  assert.ok(pid > 0 && alive(pid), 'the task runs')
  const k = await cli('kill', id)
  assert.equal(k.code, 0, k.stderr)
  assert.match(k.stdout, new RegExp(`^${id} killed exit=\\d+\\n$`))
  assert.ok(await gone(pid), 'the process is gone')
  assert.equal(await inspect((m) => m.get(id).status), 'killed')
})

test('logs -f follows a task that prints over time until it ends', async () => {
  const id = await run('for i in 1 2 3; do echo line$i; sleep 0.1; done; echo done')
  const logs = await cli('logs', '-f', id)
  assert.equal(logs.code, 0, logs.stderr)
  assert.equal(logs.stdout, 'line1\nline2\nline3\ndone\n')
})

test('usage errors exit 2 with one line on stderr', async () => {
  for (const args of [['frobnicate'], ['wait'], [], ['ls', '--bogus'], ['wait', '--timeout', 'soon', 'bash-0123456789abcdef'], ['run']]) {
    const r = await cli(...args)
    assert.equal(r.code, 2, `bgshell ${args.join(' ')}: ${r.stderr}`)
    assert.equal(r.stdout, '')
    const lines = r.stderr.split('\n')
    assert.equal(lines.length, 2, `one line: ${JSON.stringify(r.stderr)}`)
    assert.equal(lines[1], '')
    assert.match(lines[0], /usage: bgshell /)
  }
})

test('help prints usage and exits 0', async () => {
  for (const args of [['help'], ['--help'], ['ls', '-h']]) {
    const r = await cli(...args)
    assert.equal(r.code, 0, r.stderr)
    assert.match(r.stdout, /bgshell run/)
    assert.match(r.stdout, /bgshell logs/)
  }
})

test('library errors exit 1 with the message and code', async () => {
  const r = await cli('wait', 'bash-0000000000000000')
  assert.equal(r.code, 1)
  assert.match(r.stderr, /^bgshell: .+ \(E_NOT_FOUND\)\n$/)
  const bad = await cli('logs', 'not a task id')
  assert.equal(bad.code, 1)
  assert.match(bad.stderr, /^bgshell: .+ \(E_INVALID\)\n$/)
})

test('gc prints its counts and removes ended CLI tasks', async () => {
  const id = await run('true')
  await cli('wait', id)
  const r = await cli('gc', '--older-than', '0')
  assert.equal(r.code, 0, r.stderr)
  const m = /^removed (\d+), quarantined (\d+)\n$/.exec(r.stdout)
  assert.ok(m, r.stdout)
  assert.ok(Number(m[1]) >= 1, r.stdout)
  assert.equal(await inspect((mgr) => mgr.get(id)), null)

  const again = await cli('gc')
  assert.equal(again.code, 0, again.stderr)
  assert.match(again.stdout, /^removed \d+, quarantined \d+\n$/)
})

test('logs of a pty task prints its terminal transcript', async () => {
  const id = await inspect(async (m) => {
    const s = await m.spawn({ sessionId: 'cli', command: 'echo on-a-terminal', mode: 'pty' })
    await m.wait(s.taskId)
    return s.taskId
  })
  const r = await cli('logs', id)
  assert.equal(r.code, 0, r.stderr)
  assert.equal(r.stdout, 'on-a-terminal\r\n')
})
