// Shared helpers for bench/run.mjs and bench/soak.mjs: clocks, statistics, /proc readings,
// temporary stores, a completion tracker for bgshell and the plain child_process baseline.
import { createRequire } from 'node:module'
import { spawn as cpSpawn, execFile } from 'node:child_process'
import { openSync, closeSync, writeFileSync, readFileSync, mkdtempSync, rmSync, readdirSync, mkdirSync } from 'node:fs'
import { createHash, randomBytes } from 'node:crypto'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import v8 from 'node:v8'
import vm from 'node:vm'

const require = createRequire(import.meta.url)
export const root = join(dirname(fileURLToPath(import.meta.url)), '..')
export const indexPath = join(root, 'index.js')
export const { TaskManager } = require(indexPath)

// ---------------------------------------------------------------------------------------------
// Wall clock with sub-millisecond resolution, comparable with bash's $EPOCHREALTIME.
// Date.now() is CLOCK_REALTIME in whole ms; performance.now() is monotonic with ns resolution.
// The offset between them is taken at the instant Date.now() ticks to a new millisecond, which
// pins it to well under a microsecond. Recalibrated before every round (the clocks may drift).
let offset = 0
export function calibrate() {
  const samples = []
  for (let k = 0; k < 3; k++) {
    const d0 = Date.now()
    let d, p
    do {
      p = performance.now()
      d = Date.now()
    } while (d === d0)
    samples.push(d - p)
  }
  samples.sort((a, b) => a - b)
  offset = samples[1]
}
calibrate()
/** Unix time in ms with µs precision. */
export const nowReal = () => offset + performance.now()

/** The `END <seconds.micros>` stamp a task printed, as unix ms; null when absent. */
export function readEnd(path) {
  let text
  try {
    text = readFileSync(path, 'utf8')
  } catch {
    return null
  }
  const m = /END (\d+)[.,](\d{1,6})/.exec(text)
  if (!m) return null
  return Number(m[1]) * 1000 + Number(m[2].padEnd(6, '0')) / 1000
}

// ---------------------------------------------------------------------------------------------
// Statistics.
export function percentile(values, p) {
  if (!values.length) return NaN
  const s = [...values].sort((a, b) => a - b)
  const rank = Math.ceil((p / 100) * s.length) - 1
  return s[Math.min(s.length - 1, Math.max(0, rank))]
}
export const median = (values) => {
  if (!values.length) return NaN
  const s = [...values].sort((a, b) => a - b)
  const mid = s.length >> 1
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2
}
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms))

// ---------------------------------------------------------------------------------------------
// /proc readings.
export function procStatus(pid = 'self') {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8')
  const field = (name) => {
    const m = new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(text)
    return m ? Number(m[1]) : NaN
  }
  return { threads: field('Threads'), rssKb: field('VmRSS'), hwmKb: field('VmHWM') }
}
/** CPU time in ms used by this process and by its reaped descendants (clock-tick resolution). */
export function cpuMs() {
  const stat = readFileSync('/proc/self/stat', 'utf8')
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const tick = 1000 / 100 // USER_HZ
  const [utime, stime, cutime, cstime] = [f[11], f[12], f[13], f[14]].map(Number)
  return { self: (utime + stime) * tick, children: (cutime + cstime) * tick }
}
/** Resets VmHWM to the current RSS (Linux ≥ 4.0); false when the kernel refuses. */
export function resetPeakRss() {
  try {
    writeFileSync('/proc/self/clear_refs', '5')
    return true
  } catch {
    return false
  }
}
/** Private and proportional memory of another process, in KB, from smaps_rollup. */
export function privateMemKb(pid) {
  try {
    const t = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8')
    const f = (n) => Number(new RegExp(`^${n}:\\s+(\\d+)`, 'm').exec(t)?.[1] ?? NaN)
    return { rss: f('Rss'), pss: f('Pss'), priv: f('Private_Clean') + f('Private_Dirty') }
  } catch {
    return null
  }
}
export function parentPid(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
  } catch {
    return null
  }
}
/** Every live process whose command line contains `needle` (zombies excluded). */
export function processesMatching(needle) {
  const found = []
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    try {
      const cmd = readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ')
      if (!cmd.includes(needle)) continue
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
      if (stat.slice(stat.lastIndexOf(')') + 2)[0] === 'Z') continue
      found.push({ pid: Number(name), cmd: cmd.trim() })
    } catch {
      /* gone meanwhile */
    }
  }
  return found
}

let gcFn
/** A full GC (exposed at run time, so no node flag is needed). */
export function fullGc() {
  if (!gcFn) {
    v8.setFlagsFromString('--expose-gc')
    gcFn = vm.runInNewContext('gc')
  }
  gcFn()
  gcFn()
}

// ---------------------------------------------------------------------------------------------
// Temporary stores, removed at exit.
const dirs = new Set()
export function tempDir(prefix) {
  const d = mkdtempSync(join(tmpdir(), prefix))
  dirs.add(d)
  return d
}
export function removeDir(d) {
  // Retries: after an interruption, tasks that are still ending may write into the store.
  rmSync(d, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 })
  dirs.delete(d)
}
export function removeAllDirs() {
  for (const d of [...dirs]) {
    try {
      removeDir(d)
    } catch (e) {
      console.error(`could not remove ${d}: ${e.message}`)
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A session of many stored tasks, written straight to disk (no index rows), for replay figures.
const sessionHash = (s) => createHash('sha256').update(s).digest('hex').slice(0, 16)
/** `n` terminal bundles of `session` (a third of them undelivered); returns their directory. */
export function writeBundles(storageDir, session, n) {
  const dir = join(storageDir, 'bash-tasks', sessionHash(session))
  mkdirSync(dir, { recursive: true, mode: 0o700 })
  const statuses = [
    ['completed', 0],
    ['failed', 1],
    ['killed', 143],
    ['timed_out', 124],
  ]
  const base = Date.now() - 3600_000
  for (let i = 0; i < n; i++) {
    const [status, exit_code] = statuses[i % 4]
    const task_id = 'bash-' + randomBytes(8).toString('hex')
    const rec = {
      schema_version: 4,
      task_id,
      session_id: session,
      command: `npm run build -- --target ${i}`,
      mode: 'pipes',
      workdir: storageDir,
      project_root: storageDir,
      status,
      started_at: base + i * 10,
      finished_at: base + i * 10 + 5,
      duration_ms: 5,
      timeout_ms: 1800000,
      exit_code,
      child_pid: null,
      pgid: 100000 + i,
      completion_delivered: i % 3 !== 0,
      notify_on_completion: true,
      compressed: true,
      pty_rows: null,
      pty_cols: null,
      status_reason: null,
    }
    writeFileSync(join(dir, `${task_id}.json`), JSON.stringify(rec, null, 2), { mode: 0o600 })
  }
  return dir
}
/** What a plain-Node harness does to load a session: read and parse every bundle. */
export function jsScan(dir) {
  const recs = []
  for (const name of readdirSync(dir)) {
    if (!name.endsWith('.json') || name.startsWith('.')) continue
    recs.push(JSON.parse(readFileSync(join(dir, name), 'utf8')))
  }
  recs.sort((a, b) => a.started_at - b.started_at)
  return recs
}

// ---------------------------------------------------------------------------------------------
// bgshell: a manager plus a map of completion-event arrival times.
const openBgs = new Set()
/** On interruption: kill what the open managers started (bounded wait). */
export async function closeAllBg(ms = 10000) {
  await Promise.race([Promise.all([...openBgs].map((b) => b.manager.close({ killRunning: true }).catch(() => {}))), sleep(ms)])
}
export class Bg {
  constructor(options = {}) {
    openBgs.add(this)
    // `Manager`: another build's TaskManager class, for bench/ab.mjs.
    const { Manager = TaskManager, ...rest } = options
    this.storageDir = rest.storageDir ?? tempDir('bgshell-bench-')
    this.manager = new Manager({
      storageDir: this.storageDir,
      maxRunning: 1100,
      killGraceMs: 200,
      longRunningIntervalMs: 0,
      ...rest,
    })
    this.arrived = new Map()
    this.waiters = new Map()
    this.events = 0
    this.duplicates = 0
    this.seen = new Set()
    this.unsubscribe = this.manager.onEvent((e) => {
      if (e.type !== 'completion') return
      const t = nowReal()
      const id = e.completion.taskId
      this.events++
      if (this.seen.has(id)) this.duplicates++
      this.seen.add(id)
      const w = this.waiters.get(id)
      if (w) {
        this.waiters.delete(id)
        w({ t, completion: e.completion })
      } else this.arrived.set(id, { t, completion: e.completion })
    })
  }
  /** Resolves with { t, completion } at the completion event, or null after `ms`. */
  completion(id, ms = 60000) {
    const got = this.arrived.get(id)
    if (got) {
      this.arrived.delete(id)
      return Promise.resolve(got)
    }
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(id)
        resolve(null)
      }, ms)
      this.waiters.set(id, (v) => {
        clearTimeout(timer)
        resolve(v)
      })
    })
  }
  async close({ keepStore = false } = {}) {
    openBgs.delete(this)
    this.unsubscribe()
    await this.manager.close({ killRunning: true })
    if (!keepStore) removeDir(this.storageDir)
  }
}

// ---------------------------------------------------------------------------------------------
// The baseline: what a harness writes with plain child_process. A detached spawn (own session,
// so own process group), stdout/stderr to files opened with fs.openSync, a JSON metadata file
// written with fs.writeFileSync at 'spawn' and again at 'exit'.
const baseChildren = new Set()
export class Baseline {
  constructor() {
    this.dir = tempDir('bgshell-bench-base-')
  }
  /**
   * Starts `command` under bash. Returns { t0, id, stdoutPath, child, spawned, exited }:
   * `spawned` resolves with the time the running metadata is written, `exited` with the time the
   * terminal metadata is written (or null after `ms`).
   */
  spawn(command, ms = 60000) {
    const t0 = nowReal()
    const id = 'base-' + randomBytes(8).toString('hex')
    const stdoutPath = join(this.dir, `${id}.stdout`)
    const metaPath = join(this.dir, `${id}.json`)
    const out = openSync(stdoutPath, 'a', 0o600)
    const err = openSync(join(this.dir, `${id}.stderr`), 'a', 0o600)
    const meta = {
      schema_version: 4,
      task_id: id,
      session_id: 'bench',
      command,
      mode: 'pipes',
      workdir: this.dir,
      status: 'starting',
      started_at: Date.now(),
      finished_at: null,
      duration_ms: null,
      timeout_ms: null,
      exit_code: null,
      child_pid: null,
      pgid: null,
      completion_delivered: false,
      status_reason: null,
    }
    const child = cpSpawn('bash', ['-c', command], { detached: true, stdio: ['ignore', out, err], cwd: this.dir })
    closeSync(out)
    closeSync(err)
    baseChildren.add(child)
    const spawned = new Promise((resolve, reject) => {
      child.once('error', reject)
      child.once('spawn', () => {
        meta.status = 'running'
        meta.child_pid = child.pid
        meta.pgid = child.pid
        writeFileSync(metaPath, JSON.stringify(meta, null, 2), { mode: 0o600 })
        resolve(nowReal())
      })
    })
    const exited = new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), ms)
      child.once('exit', (code, signal) => {
        clearTimeout(timer)
        baseChildren.delete(child)
        const end = Date.now()
        meta.status = signal ? 'killed' : code === 0 ? 'completed' : 'failed'
        meta.exit_code = code ?? 128
        meta.finished_at = end
        meta.duration_ms = end - meta.started_at
        meta.child_pid = null
        writeFileSync(metaPath, JSON.stringify(meta, null, 2), { mode: 0o600 })
        resolve(nowReal())
      })
    })
    spawned.catch(() => {})
    return { t0, id, stdoutPath, child, spawned, exited }
  }
  close() {
    removeDir(this.dir)
  }
}
export function killBaselineChildren() {
  for (const c of baseChildren) {
    try {
      process.kill(-c.pid, 'SIGKILL')
    } catch {
      /* already gone */
    }
  }
}

/**
 * Spawn and exit-detection latencies, for bgshell or the baseline alike: `total` tasks, `conc`
 * at a time. `start()` launches one task of a command that prints `END $EPOCHREALTIME` and
 * resolves with `{ spawnMs, stdoutPath, ended }`, `ended` resolving with the moment JS learned
 * of the exit (null: lost); a throw counts as a spawn error. Raw samples in ms.
 */
export async function sampleSpawnExit(conc, total, start, onError = () => {}) {
  const spawn = []
  const exit = []
  let lost = 0
  let errors = 0
  for (let done = 0; done < total; done += conc) {
    calibrate()
    await Promise.all(
      Array.from({ length: Math.min(conc, total - done) }, async () => {
        let task
        try {
          task = await start()
        } catch (e) {
          errors++
          onError(e)
          return
        }
        spawn.push(task.spawnMs)
        const t = await task.ended
        if (t == null) return void lost++
        const end = readEnd(task.stdoutPath)
        if (end != null) exit.push(t - end)
      }),
    )
  }
  return { spawn, exit, lost, errors }
}

/** `start` for sampleSpawnExit: one bgshell task, its exit seen at the completion event. */
export function bgStart(bg, { sessionId, command, lostMs = 30000 }) {
  return async () => {
    const t0 = nowReal()
    const s = await bg.manager.spawn({ sessionId, command, cwd: bg.storageDir })
    const spawnMs = nowReal() - t0
    return { spawnMs, stdoutPath: s.stdoutPath, ended: bg.completion(s.taskId, lostMs).then((c) => c && c.t) }
  }
}

// ---------------------------------------------------------------------------------------------
// Exit detection of tasks adopted by replay() after the manager that spawned them exited (for
// run.mjs and, per build, ab.mjs): the spawning manager lives in a child process that exits as
// soon as its spawns resolved; a new manager replays the session and waits for each task. The
// figures run from the `END` stamp each command printed just before it exited.
function runNode(script) {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 30000 }, (err, out, stderr) => {
      if (err) reject(new Error(`${err.message}\n${stderr}`))
      else resolve(out)
    })
  })
}
export const newAdopted = () => ({ waitL: [], eventL: [], replayL: [], early: 0, lost: 0 })
/** One round into `acc`; `build` is another checkout's index.js and TaskManager (ab.mjs). */
export async function adoptedRound(acc, { tasks: n, lostMs, outputCapBytes, build = { indexPath, Manager: TaskManager } }) {
  const storageDir = tempDir('bgshell-bench-adopt-')
  const cmds = Array.from({ length: n }, (_, i) => `sleep ${(0.5 + 0.07 * i).toFixed(2)}; echo "END $EPOCHREALTIME"`)
  const cap = outputCapBytes == null ? '' : `, outputCapBytes: ${outputCapBytes}`
  const out = await runNode(`const { TaskManager } = require(${JSON.stringify(build.indexPath)});
    const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)}${cap} });
    Promise.all(${JSON.stringify(cmds)}.map((command) => m.spawn({ sessionId: 'adopt', command, cwd: ${JSON.stringify(storageDir)} })))
      .then((s) => process.stdout.write(JSON.stringify(s.map((x) => [x.taskId, x.stdoutPath])), () => process.exit(0)))
      .catch((e) => { console.error(e); process.exit(1) })`)
  const tasks = JSON.parse(out)
  calibrate()
  const bg = new Bg({ storageDir, Manager: build.Manager })
  const t0 = nowReal()
  const snaps = await bg.manager.replay('adopt')
  acc.replayL.push(nowReal() - t0)
  const adoptedAt = nowReal()
  const running = new Set(snaps.filter((s) => s.status === 'running').map((s) => s.taskId))
  await Promise.all(
    tasks.map(async ([id, stdoutPath]) => {
      const w = bg.manager.wait(id, { timeoutMs: lostMs }).then((s) => ({ t: nowReal(), s }))
      const ev = bg.completion(id, lostMs)
      const [wr, er] = await Promise.all([w, ev])
      const end = readEnd(stdoutPath)
      if (!running.has(id) || end == null || end < adoptedAt) return void acc.early++
      if (wr.s.status === 'running') acc.lost++
      else acc.waitL.push(wr.t - end)
      if (!er) acc.lost++
      else acc.eventL.push(er.t - end)
    }),
  )
  await bg.close()
}
