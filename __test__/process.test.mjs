// The harness process: creating a manager and spawning does not keep it alive; tasks outlive it.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { rmSync } from 'node:fs'
import { join } from 'node:path'
import { tempDir, alive, gone, root, TaskManager } from './helpers.mjs'

const runtime = process.execPath // node, or bun when the suite runs under Bun

test('a child process that spawns `sleep 3` and returns exits at once; the task keeps running', async () => {
  const storageDir = tempDir()
  const script = `
    const { TaskManager } = require(${JSON.stringify(join(root, 'index.js'))})
    const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)} })
    m.spawn({ sessionId: 'child', command: 'sleep 3' }).then((s) => console.log(JSON.stringify(s)))
  `
  const stdout = await new Promise((resolve, reject) =>
    execFile(runtime, ['-e', script], { encoding: 'utf8', timeout: 20000 }, (err, out, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(out),
    ),
  )
  const snap = JSON.parse(stdout.trim())
  // The child has exited (execFile resolved); had it waited for the task, sleep 3 would be over.
  assert.equal(snap.status, 'running')
  assert.ok(alive(snap.pid), 'the task died with the process that started it')
  const observer = new TaskManager({ storageDir })
  assert.equal(observer.get(snap.taskId).status, 'running')
  // Its exit is still recorded by the supervisor with no manager alive.
  assert.ok(await gone(snap.pid, 10000))
  const done = await observer.wait(snap.taskId)
  assert.equal(done.status, 'completed')
  assert.equal(done.exitCode, 0)
  await observer.close()
  rmSync(storageDir, { recursive: true, force: true })
})
