// The CLI parts of issue 14: `run` keeps argument boundaries, labels in `ls`, and `bgshell attach`
// driven through a real pseudo-terminal (a small python3 driver stands in for a person's terminal).
import { test, after } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawn, spawnSync } from 'node:child_process'
import { rmSync, readFileSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { TaskManager, root, tempDir } from './helpers.mjs'

const cliPath = join(root, 'bin', 'bgshell.js')
const store = tempDir('bgshell-attach-test-')
const env = { ...process.env, BGSHELL_HOME: store }
const hasPython = spawnSync('python3', ['-c', 'import pty'], { stdio: 'ignore' }).status === 0
// Bun cannot drive a terminal in raw mode the way Node does; the CLI runs under Node.
const nodeBin = process.versions.bun ? 'node' : process.execPath

function cli(...args) {
  return new Promise((resolve, reject) => {
    execFile(nodeBin, [cliPath, ...args], { env, encoding: 'utf8', timeout: 30000 }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') reject(new Error(`${err.message}\n${stderr}`))
      else resolve({ code: err ? err.code : 0, stdout, stderr })
    })
  })
}

const manager = new TaskManager({ storageDir: store, killGraceMs: 300 })
after(async () => {
  for (const t of manager.list()) {
    if (['starting', 'running', 'killing'].includes(t.status)) await manager.kill(t.taskId, { signal: 'SIGKILL' }).catch(() => {})
  }
  await manager.close()
  rmSync(store, { recursive: true, force: true })
})

async function ran(...args) {
  const r = await cli('run', ...args)
  assert.equal(r.code, 0, r.stderr)
  const id = r.stdout.trim()
  const done = await manager.wait(id, { timeoutMs: 20000 })
  return { id, done, stdout: (await manager.readOutput(id)).data }
}

test('run -- words keeps each argument whole; one word is shell text', async () => {
  let r = await ran('--', 'bash', '-c', 'for i in 1 2; do echo "n=$i"; done')
  assert.equal(r.stdout, 'n=1\nn=2\n')
  r = await ran('--', 'printf', '%s|', 'a b', "it's", '$HOME', '', '*')
  assert.equal(r.stdout, "a b|it's|$HOME||*|")
  r = await ran('--', 'echo one && echo two')
  assert.equal(r.stdout, 'one\ntwo\n')
  assert.equal(manager.get(r.id).command, 'echo one && echo two')
})

test('run --label names a task; ls shows a LABEL column only when a task has one', async () => {
  const plain = await cli('ls', '--session', 'nolabel')
  assert.match(plain.stdout.split('\n')[0], /^ID\s+STATUS\s+EXIT\s+AGE\/DURATION\s+SESSION\s+COMMAND$/)
  const r = await cli('run', '--session', 'labelled', '--label', 'web server', '--', 'sleep', '30')
  assert.equal(r.code, 0, r.stderr)
  const id = r.stdout.trim()
  assert.equal(manager.get(id).label, 'web server')
  const ls = await cli('ls', '--session', 'labelled')
  const [header, row] = ls.stdout.trimEnd().split('\n')
  assert.match(header, /^ID\s+STATUS\s+EXIT\s+AGE\/DURATION\s+SESSION\s+LABEL\s+COMMAND$/)
  assert.match(row, new RegExp(`^${id}\\s+running\\s+-\\s+\\S+\\s+labelled\\s+web server\\s+sleep 30$`))
  const bad = await cli('run', '--label', 'a\nb', '--', 'true')
  assert.equal(bad.code, 1)
  assert.match(bad.stderr, /E_INVALID/)
  await manager.kill(id)
})

/** A person's terminal: python3 runs `argv` on a new pty of rows x cols; commands on its stdin. */
const DRIVER = `
import os, sys, json, select, fcntl, termios, struct, signal
argv = json.loads(sys.argv[1]); rows, cols = int(sys.argv[2]), int(sys.argv[3])
m, s = os.openpty()
fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack('HHHH', rows, cols, 0, 0))
pid = os.fork()
if pid == 0:
    os.setsid(); fcntl.ioctl(s, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2): os.dup2(s, fd)
    os.close(m); os.close(s); os.execvp(argv[0], argv)
os.close(s)
buf = b''
while True:
    r, _, _ = select.select([m, 0], [], [])
    if m in r:
        try: data = os.read(m, 65536)
        except OSError: data = b''
        if not data: break
        sys.stdout.buffer.write(data); sys.stdout.flush()
    if 0 in r:
        chunk = os.read(0, 65536)
        if not chunk: continue
        buf += chunk
        while b'\\n' in buf:
            line, buf = buf.split(b'\\n', 1)
            cmd = json.loads(line)
            if 'write' in cmd: os.write(m, cmd['write'].encode())
            if 'resize' in cmd:
                fcntl.ioctl(m, termios.TIOCSWINSZ, struct.pack('HHHH', cmd['resize'][0], cmd['resize'][1], 0, 0))
_, status = os.waitpid(pid, 0)
sys.stderr.write('EXIT %d\\n' % os.waitstatus_to_exitcode(status)); sys.exit(0)
`

function person(argv, rows, cols) {
  const p = spawn('python3', ['-c', DRIVER, JSON.stringify(argv), String(rows), String(cols)], { env })
  let screen = ''
  let err = ''
  const waiters = []
  const check = () => {
    for (const w of [...waiters]) if (w.re.test(screen)) waiters.splice(waiters.indexOf(w), 1) && w.resolve()
  }
  p.stdout.on('data', (d) => {
    screen += d.toString('utf8')
    check()
  })
  p.stderr.on('data', (d) => (err += d))
  const exited = new Promise((resolve) => p.on('close', () => resolve(err)))
  return {
    send: (cmd) => p.stdin.write(JSON.stringify(cmd) + '\n'),
    /** Resolves when the terminal has shown `re`; rejects (naming what it has) if the driver exits first. */
    see: (re) =>
      new Promise((resolve, reject) => {
        waiters.push({ re, resolve })
        check()
        exited.then(() => setImmediate(() => (re.test(screen) ? resolve() : reject(new Error(`never saw ${re}; got:\n${JSON.stringify(screen)}\n${err}`)))))
      }),
    screen: () => screen,
    exited,
    kill: () => p.kill('SIGKILL'),
  }
}

async function until(cond, what) {
  // A condition that changes when another process acts; bounded so a broken build fails.
  for (let i = 0; i < 1000; i++) {
    if (cond()) return
    await new Promise((r) => setTimeout(r, 10))
  }
  assert.fail(`timed out waiting for ${what}`)
}

test('attach: the screen, keys, resize; Ctrl-] detaches and the task keeps running', { skip: !hasPython && 'python3 missing' }, async () => {
  const s = await manager.spawn({
    sessionId: 'cli',
    mode: 'pty',
    command: 'echo before-attach; while IFS= read -r l; do echo "got:$l"; [ "$l" = size ] && stty size; [ "$l" = quit ] && exit 7; done',
  })
  await manager.waitFor(s.taskId, { pattern: 'before-attach' })
  // The bundle, written by whichever manager resized the task (the CLI's here).
  const bundle = () => JSON.parse(readFileSync(join(dirname(s.ptyPath), `${s.taskId}.json`), 'utf8'))
  const p = person([nodeBin, cliPath, 'attach', s.taskId], 30, 100)
  try {
    await p.see(/before-attach/) // the screen as it was, painted on attach
    assert.deepEqual([bundle().pty_rows, bundle().pty_cols], [30, 100], 'the task took the terminal size before the screen was painted')
    p.send({ write: 'hello\r' })
    await p.see(/got:hello/)
    p.send({ resize: [40, 120] })
    await until(() => bundle().pty_rows === 40, 'the resize to reach the task')
    p.send({ write: 'size\r' })
    await p.see(/40 120/)
    p.send({ write: '\x1d' })
    assert.match(await p.exited, /EXIT 0/)
    assert.match(p.screen(), /\[detached from bash-[0-9a-f]{16}; it keeps running\]/)
    assert.equal(manager.get(s.taskId).status, 'running')
    // What the person typed is in the task's transcript too.
    assert.match((await manager.tail(s.taskId)).text, /got:size/)
  } finally {
    p.kill()
  }

  // Attached again, the task ends: the CLI reports it and exits.
  const q = person([nodeBin, cliPath, 'attach', s.taskId], 30, 100)
  try {
    await q.see(/got:size/)
    q.send({ write: 'quit\r' })
    assert.match(await q.exited, /EXIT 0/)
    assert.match(q.screen(), /\[task bash-[0-9a-f]{16} failed exit=7\]/)
  } finally {
    q.kill()
  }
})

test('attach refuses a pipes task and an ended task', async () => {
  const pipes = await manager.spawn({ sessionId: 'cli', command: 'sleep 30' })
  let r = await cli('attach', pipes.taskId)
  assert.equal(r.code, 1)
  assert.match(r.stderr, /not a terminal.*E_NOT_PTY/)
  await manager.kill(pipes.taskId)
  const ended = await manager.spawn({ sessionId: 'cli', command: 'true', mode: 'pty' })
  await manager.wait(ended.taskId)
  r = await cli('attach', ended.taskId)
  assert.equal(r.code, 1)
  assert.match(r.stderr, /has ended.*E_EXITED/)
})
