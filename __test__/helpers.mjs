// Shared test helpers: temporary stores, process liveness, reading the SQLite index.
import { existsSync, mkdtempSync, readdirSync, statSync, readFileSync, rmSync } from 'node:fs'
import { execFileSync, execFile, spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { tmpdir } from 'node:os'
import { delimiter, dirname, join } from 'node:path'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)
export const { TaskManager } = require('../index.js')
export const root = join(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '..')

export function tempDir(prefix = 'bgshell-test-') {
  return mkdtempSync(join(tmpdir(), prefix))
}

/** A manager on a fresh temporary store; `cleanup()` closes it (killing its tasks) and removes the store. */
export function freshManager(options = {}) {
  const storageDir = tempDir()
  const manager = new TaskManager({ storageDir, killGraceMs: 300, ...options })
  return {
    manager,
    storageDir,
    async cleanup() {
      await manager.close({ killRunning: true })
      rmSync(storageDir, { recursive: true, force: true })
    },
  }
}

/** True while `pid` runs (a zombie counts as gone). */
export function alive(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}

/** Resolves once `pid` is gone, checking every 20 ms for at most `ms`. */
export async function gone(pid, ms = 5000) {
  const end = Date.now() + ms
  while (alive(pid) && Date.now() < end) await new Promise((r) => setTimeout(r, 20))
  return !alive(pid)
}

/** The supervisor pid recorded in a task's bundle (`snap`: a snapshot with an output path). */
export function supervisorOf(snap) {
  const out = snap.stdoutPath ?? snap.ptyPath
  return readJson(join(dirname(out), `${snap.taskId}.json`)).supervisor_pid
}

/**
 * Every path under `dir` with its size and mode, to prove a call left a store untouched.
 * Paths containing `skip` are neither stat'ed nor walked: a task still finishing there may
 * rename its files between readdir and stat.
 */
export function tree(dir, skip) {
  const out = []
  const walk = (d) => {
    for (const name of readdirSync(d).sort()) {
      const p = join(d, name)
      if (skip && p.includes(skip)) continue
      const st = statSync(p)
      out.push(`${p.slice(dir.length)} ${st.mode.toString(8)} ${st.isDirectory() ? '-' : st.size}`)
      if (st.isDirectory()) walk(p)
    }
  }
  walk(dir)
  return out
}

let python
/** Runs a query on tasks.db with Python's sqlite3 (reads the WAL too); null when python3 is missing. */
export function sqlite(dbPath, sql, params = []) {
  if (python === undefined) {
    try {
      execFileSync('python3', ['-c', 'import sqlite3'], { stdio: 'ignore' })
      python = true
    } catch {
      python = false
    }
  }
  if (!python) return null
  const script = `import sqlite3, json, sys
c = sqlite3.connect(sys.argv[1]); c.row_factory = sqlite3.Row
print(json.dumps([dict(r) for r in c.execute(sys.argv[2], json.loads(sys.argv[3]))]))`
  return JSON.parse(execFileSync('python3', ['-c', script, dbPath, sql, JSON.stringify(params)], { encoding: 'utf8' }))
}

export function readJson(path) {
  return JSON.parse(readFileSync(path, 'utf8'))
}

/** Runs `script` (CommonJS, with `TaskManager` in scope) in a child Node/Bun process; resolves with its stdout. */
export function runChild(script, { allowSignal = false, env } = {}) {
  const prelude = `const { TaskManager } = require(${JSON.stringify(join(root, 'index.js'))});\n`
  return new Promise((resolve, reject) => {
    const options = { encoding: 'utf8', timeout: 30000, env: env ? { ...process.env, ...env } : process.env }
    execFile(process.execPath, ['-e', prelude + script], options, (err, out, stderr) => {
      if (err && !(allowSignal && err.signal)) reject(new Error(`${err.message}\n${stderr}`))
      else resolve(out)
    })
  })
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

/**
 * Collects a manager's events; `until(pred)` resolves whether `pred(events)` came to hold
 * (checked every 10 ms, for at most `ms`).
 */
export function collector(manager, ms = 20_000) {
  const events = []
  const off = manager.onEvent((e) => events.push(e))
  return {
    events,
    off,
    async until(pred) {
      for (const end = Date.now() + ms; !pred(events) && Date.now() < end; ) await sleep(10)
      return pred(events)
    },
  }
}

/**
 * Resolves true once `path` exists (checking every 10 ms, for at most `ms`). The supervisor's exit
 * marker may land just after wait() resolves: the completion fires on the manager's own record.
 */
export async function landed(path, ms = 10_000) {
  for (const end = Date.now() + ms; !existsSync(path) && Date.now() < end; ) await sleep(10)
  return existsSync(path)
}

export function sessionHash(sessionId) {
  return createHash('sha256').update(sessionId).digest('hex').slice(0, 16)
}

/**
 * The environment of a user without Rust: PATH without any directory holding cargo, rustc or
 * rustup, no BGSHELL_SUPERVISOR/BGSHELL_HOME, and none of the npm_* variables `npm test` sets (an
 * inherited npm_config_* would override a child npm's own config).
 */
export const bareEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !/^npm_/i.test(k) && k !== 'BGSHELL_SUPERVISOR' && k !== 'BGSHELL_HOME'),
)
bareEnv.PATH = (process.env.PATH ?? '')
  .split(delimiter)
  .filter((dir) => dir && !['cargo', 'rustc', 'rustup'].some((tool) => existsSync(join(dir, tool))))
  .join(delimiter)

/** Absolute path of `name` on bareEnv's PATH, or null. */
export function which(name) {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { env: bareEnv, encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : null
}

export const isBun = Boolean(process.versions.bun)
/** The Node and the Bun that run an installed package in the package tests. */
export const nodeBin = isBun ? which('node') : process.execPath
export const bunBin = isBun ? process.execPath : join(root, 'node_modules', '.bin', 'bun')
