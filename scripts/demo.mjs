// A tour of bgshell for newcomers: three real tasks in one session, each ending differently.
// Run with `npm run demo` (the addon must be built: `npm install`).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { TaskManager } from '../index.js'

// A throwaway store, so the demo never touches ~/.local/state/bgshell.
const storageDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bgshell-demo-'))
// A short kill grace keeps the timed-out task from holding the demo up.
const manager = new TaskManager({ storageDir, killGraceMs: 500 })
const sessionId = 'demo-session'

const cases = [
  { name: 'succeeds', command: 'echo "hello from $BGSHELL_TASK_ID"; echo "second line"', expect: { status: 'completed', exitCode: 0 } },
  { name: 'fails', command: 'echo "something went wrong" >&2; exit 3', expect: { status: 'failed', exitCode: 3 } },
  // The supervisor enforces the deadline: SIGTERM to the group, SIGKILL after the grace, code 124.
  { name: 'times out', command: 'sleep 30', timeoutMs: 500, expect: { status: 'timed_out', exitCode: 124 } },
]

let failures = 0
try {
  // spawn() resolves once the task runs and its "running" record is on disk; all three run at once.
  const spawned = await Promise.all(
    cases.map((c) => manager.spawn({ sessionId, command: c.command, timeoutMs: c.timeoutMs, cwd: os.tmpdir() })),
  )
  // wait() resolves at the terminal state; exits come from the supervisor, nothing polls.
  const finished = await Promise.all(spawned.map((s) => manager.wait(s.taskId)))

  finished.forEach((snap, i) => {
    const { name, expect } = cases[i]
    const { taskId, status, exitCode, signal, durationMs, statusReason } = snap
    console.log(`\n== ${name}: ${cases[i].command}`)
    console.log(JSON.stringify({ taskId, status, exitCode, signal, durationMs, statusReason }))
    // Output goes straight from the child into files in the store; read them like any file.
    for (const [label, file] of [['stdout', snap.stdoutPath], ['stderr', snap.stderrPath]]) {
      const text = file && fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : ''
      if (text) console.log(`${label}:\n  ${text.trimEnd().split('\n').join('\n  ')}`)
    }
    if (status !== expect.status || exitCode !== expect.exitCode) {
      console.error(`UNEXPECTED: ${name} ended ${status}/${exitCode}, expected ${expect.status}/${expect.exitCode}`)
      failures++
    }
  })

  // list() reads the SQLite index: every task of the session, oldest first.
  console.log(`\n== list({ sessionId: '${sessionId}' })`)
  console.table(
    manager.list({ sessionId }).map((t) => ({ taskId: t.taskId, status: t.status, exitCode: t.exitCode, ms: t.durationMs, command: t.command.slice(0, 40) })),
  )
} catch (err) {
  // Every bgshell error carries a stable code (E_INVALID, E_SPAWN, E_IO, ...).
  console.error(`demo failed: ${err.code ?? 'error'}: ${err.message}`)
  failures++
} finally {
  // close() stops watching; the tasks are all finished here, so nothing is left running.
  await manager.close()
  fs.rmSync(storageDir, { recursive: true, force: true })
}

if (failures > 0) {
  console.error(`\n${failures} problem(s): bgshell did not behave as expected`)
  process.exit(1)
}
console.log('\nAll three tasks ended as expected.')
