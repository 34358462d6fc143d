#!/usr/bin/env node
// `npm run bench`: bgshell side by side with a plain child_process baseline.
//
//   node bench/run.mjs                 full run (about 1.5-2 minutes on 2 cores)
//   BENCH_QUICK=1 node bench/run.mjs   smoke run (15-25 s)
//   TMPDIR=/dev/shm node bench/run.mjs  the same with every store on tmpfs
//   BENCH_JSON=out.json ...            also write every raw figure as JSON
//
// Every figure runs several rounds, bgshell and baseline interleaved (bgshell round, baseline
// round, ...); the table shows the median over rounds of each round's percentile, and the ratio
// bgshell / baseline. Latencies that start at the child's own `END $EPOCHREALTIME` stamp use a
// calibrated wall clock (lib.mjs). Stores live under os.tmpdir() and are removed at the end.
import { execFile, execSync, spawn as cpSpawn } from 'node:child_process'
import { writeFileSync, readFileSync, openSync, fstatSync, readSync, closeSync, statSync, writeSync, fsyncSync, renameSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { join, dirname } from 'node:path'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import {
  TaskManager,
  Bg,
  Baseline,
  indexPath,
  calibrate,
  nowReal,
  readEnd,
  percentile,
  median,
  sleep,
  procStatus,
  cpuMs,
  resetPeakRss,
  privateMemKb,
  parentPid,
  fullGc,
  tempDir,
  removeDir,
  removeAllDirs,
  killBaselineChildren,
  closeAllBg,
  sampleSpawnExit,
  bgStart,
  newAdopted,
  adoptedRound,
  writeBundles,
  jsScan,
} from './lib.mjs'

const QUICK = process.env.BENCH_QUICK === '1'
const MiB = 1024 * 1024
const C = QUICK
  ? { rounds: 2, seq: 15, conc: 50, concBatches: 1, short: 15, adoptRounds: 1, adoptTasks: 6, burst: 200, burstRounds: 1, live: 100, liveRounds: 1, tailBytes: 64 * MiB, tailCalls: 30, tailRounds: 2, replayN: 2000, replayRounds: 1, replayRepeat: 2 }
  : { rounds: 5, seq: 40, conc: 50, concBatches: 2, short: 40, adoptRounds: 6, adoptTasks: 8, burst: 1000, burstRounds: 3, live: 200, liveRounds: 5, tailBytes: 1024 * MiB, tailCalls: 100, tailRounds: 5, replayN: 10000, replayRounds: 3, replayRepeat: 3 }
const LOST_MS = 30000 // a completion not seen within this is counted as lost
const SESSION = 'bench-session'
const CMD = 'echo ready; echo "END $EPOCHREALTIME"'

const started = Date.now()
const results = { quick: QUICK, config: C, figures: {} }
const log = (...a) => console.error(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...a)

process.on('exit', () => {
  killBaselineChildren()
  removeAllDirs()
})
let interrupted = false
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    if (interrupted) return
    interrupted = true
    log(`${sig}: stopping`)
    try {
      killBaselineChildren()
      await closeAllBg()
      removeAllDirs()
    } catch (e) {
      log(`cleanup: ${e.message}`)
    } finally {
      process.exit(130)
    }
  })
}

const stat = (xs) => ({ n: xs.length, p50: percentile(xs, 50), p95: percentile(xs, 95), max: Math.max(...xs) })

async function warmBg(bg, cwd = bg.storageDir) {
  for (let i = 0; i < 3; i++) {
    const s = await bg.manager.spawn({ sessionId: 'warmup', command: 'true', cwd })
    await bg.completion(s.taskId, LOST_MS)
  }
}
async function warmBase(base) {
  for (let i = 0; i < 3; i++) {
    const t = base.spawn('true')
    await t.spawned
    await t.exited
  }
}

// ---------------------------------------------------------------------------------------------
// 0. What the store's filesystem charges for the primitives both sides use.
function figureFs() {
  const dir = tempDir('bgshell-bench-fs-')
  const c = []
  const f = []
  const r = []
  const w = []
  const body = 'x'.repeat(700)
  for (let i = 0; i < (QUICK ? 100 : 300); i++) {
    let t = performance.now()
    const fd = openSync(join(dir, `.f${i}.tmp`), 'wx', 0o600)
    c.push(performance.now() - t)
    writeSync(fd, body)
    t = performance.now()
    fsyncSync(fd)
    f.push(performance.now() - t)
    closeSync(fd)
    t = performance.now()
    renameSync(join(dir, `.f${i}.tmp`), join(dir, `f${i}.json`))
    r.push(performance.now() - t)
    t = performance.now()
    writeFileSync(join(dir, `f${i}.json`), body)
    w.push(performance.now() - t)
  }
  removeDir(dir)
  return { create: stat(c), fsync: stat(f), rename: stat(r), overwrite: stat(w) }
}

// ---------------------------------------------------------------------------------------------
// 1. Spawn latency and exit-detection latency at a given concurrency.
const stats = (r) => ({ spawn: stat(r.spawn), exit: stat(r.exit), lost: r.lost, errors: r.errors })
async function bgSpawnExit(bg, conc, total) {
  const start = bgStart(bg, { sessionId: SESSION, command: CMD, lostMs: LOST_MS })
  return stats(await sampleSpawnExit(conc, total, start, (e) => log('bgshell spawn error', e.code, e.message)))
}
async function baseSpawnExit(base, conc, total) {
  const start = async () => {
    const t = base.spawn(CMD, LOST_MS)
    const spawnMs = (await t.spawned) - t.t0
    return { spawnMs, stdoutPath: t.stdoutPath, ended: t.exited }
  }
  return stats(await sampleSpawnExit(conc, total, start))
}
async function figureSpawnExit(conc, total) {
  const bg = new Bg()
  // The same with `durability: 'strict'` (every record write fsynced before it counts), for the record.
  const strict = new Bg({ durability: 'strict' })
  const base = new Baseline()
  await warmBg(bg)
  await warmBg(strict)
  await warmBase(base)
  const rounds = { bg: [], strict: [], base: [] }
  for (let r = 0; r < C.rounds; r++) {
    rounds.bg.push(await bgSpawnExit(bg, conc, total))
    rounds.strict.push(await bgSpawnExit(strict, conc, total))
    rounds.base.push(await baseSpawnExit(base, conc, total))
  }
  await bg.close()
  await strict.close()
  base.close()
  return rounds
}

// ---------------------------------------------------------------------------------------------
// 2. A short task's whole life (`true`): spawn -> completion, against bare bash -c true.
async function figureShortLife() {
  const bg = new Bg()
  const base = new Baseline()
  await warmBg(bg)
  await warmBase(base)
  const rounds = { bg: [], floor: [], base: [] }
  let lost = 0
  for (let r = 0; r < C.rounds; r++) {
    const bgL = []
    for (let i = 0; i < C.short; i++) {
      const t0 = nowReal()
      const s = await bg.manager.spawn({ sessionId: SESSION, command: 'true', cwd: bg.storageDir })
      const c = await bg.completion(s.taskId, LOST_MS)
      if (!c) lost++
      else bgL.push(c.t - t0)
    }
    rounds.bg.push(stat(bgL))
    const floorL = []
    for (let i = 0; i < C.short; i++) {
      const t0 = nowReal()
      await new Promise((resolve, reject) => {
        const child = cpSpawn('bash', ['-c', 'true'], { stdio: 'ignore' })
        child.once('error', reject)
        child.once('exit', resolve)
      })
      floorL.push(nowReal() - t0)
    }
    rounds.floor.push(stat(floorL))
    const baseL = []
    for (let i = 0; i < C.short; i++) {
      const t = base.spawn('true', LOST_MS)
      await t.spawned
      const te = await t.exited
      if (te == null) lost++
      else baseL.push(te - t.t0)
    }
    rounds.base.push(stat(baseL))
  }
  await bg.close()
  base.close()
  return { ...rounds, lost }
}

// ---------------------------------------------------------------------------------------------
// 3. Exit detection of a task adopted by replay() after the manager that spawned it exited.
async function figureAdopted() {
  // Rounds alternate: the default outputCapBytes (the supervisor watches the output files with
  // inotify to enforce the cap) and outputCapBytes: 0 (no inotify in the supervisor).
  const out = { capped: newAdopted(), uncapped: newAdopted() }
  for (let r = 0; r < C.adoptRounds; r++) {
    await adoptedRound(out.capped, { tasks: C.adoptTasks, lostMs: LOST_MS })
    await adoptedRound(out.uncapped, { tasks: C.adoptTasks, lostMs: LOST_MS, outputCapBytes: 0 })
  }
  for (const v of Object.values(out)) {
    v.wait = stat(v.waitL)
    v.event = stat(v.eventL)
    v.replayMs = stat(v.replayL)
  }
  return out
}

// ---------------------------------------------------------------------------------------------
// 4. A burst of `true` tasks: total time, lost, event-loop stall, peak RSS and threads.
async function burstRun(kind, n) {
  const bg = kind === 'bg' ? new Bg() : null
  const base = kind === 'base' ? new Baseline() : null
  if (bg) await warmBg(bg)
  else await warmBase(base)
  fullGc()
  await sleep(100)
  const before = procStatus()
  const hwmReset = resetPeakRss()
  let peakThreads = before.threads
  let peakRss = before.rssKb
  const sampler = setInterval(() => {
    const s = procStatus()
    peakThreads = Math.max(peakThreads, s.threads)
    peakRss = Math.max(peakRss, s.rssKb)
  }, 5)
  // The histogram records nothing for its first interval (nor for the first after a reset):
  // let it run a little first. A 1 ms interval timer measures the same thing independently.
  const h = monitorEventLoopDelay({ resolution: 1 })
  h.enable()
  let lastTick = performance.now()
  let maxGap = 0
  const ticker = setInterval(() => {
    const now = performance.now()
    maxGap = Math.max(maxGap, now - lastTick)
    lastTick = now
  }, 1)
  await sleep(50)
  maxGap = 0
  let lost = 0
  let errors = 0
  const cpu0 = cpuMs()
  const t0 = nowReal()
  let last = t0
  await Promise.all(
    Array.from({ length: n }, async () => {
      if (bg) {
        let s
        try {
          s = await bg.manager.spawn({ sessionId: SESSION, command: 'true', cwd: bg.storageDir })
        } catch (e) {
          errors++
          if (errors < 4) log('bgshell burst spawn error', e.code, e.message)
          return
        }
        const c = await bg.completion(s.taskId, LOST_MS)
        if (!c) lost++
        else last = Math.max(last, c.t)
      } else {
        const t = base.spawn('true', LOST_MS)
        try {
          await t.spawned
        } catch {
          errors++
          return
        }
        const te = await t.exited
        if (te == null) lost++
        else last = Math.max(last, te)
      }
    }),
  )
  const totalMs = last - t0
  await sleep(200) // supervisors exit (and are reaped) a little after their report
  const cpu1 = cpuMs()
  h.disable()
  clearInterval(sampler)
  clearInterval(ticker)
  const after = procStatus()
  const res = {
    totalMs,
    lost,
    errors,
    stallMs: h.max / 1e6,
    maxGapMs: maxGap,
    cpuSelfMsPerTask: (cpu1.self - cpu0.self) / n,
    cpuChildrenMsPerTask: (cpu1.children - cpu0.children) / n,
    peakRssMb: (hwmReset ? after.hwmKb : peakRss) / 1024,
    rssBeforeMb: before.rssKb / 1024,
    threadsBefore: before.threads,
    threadsPeak: Math.max(peakThreads, after.threads),
    threadsAfter: after.threads,
    duplicates: bg ? bg.duplicates : 0,
  }
  if (bg) await bg.close()
  else base.close()
  return res
}
async function figureBurst() {
  const rounds = { bg: [], base: [] }
  for (let r = 0; r < C.burstRounds; r++) {
    rounds.bg.push(await burstRun('bg', C.burst))
    rounds.base.push(await burstRun('base', C.burst))
  }
  return rounds
}

// ---------------------------------------------------------------------------------------------
// 5. Memory and threads per live task: n `sleep 5` tasks.
const isAlive = (pid) => {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8')
    return s.slice(s.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}
async function liveRun(kind, n) {
  const bg = kind === 'bg' ? new Bg() : null
  const base = kind === 'base' ? new Baseline() : null
  if (bg) await warmBg(bg)
  else await warmBase(base)
  fullGc()
  await sleep(300)
  fullGc()
  const before = { ...procStatus(), rssKb: privateMemKb('self').rss }
  const pids = []
  let supervisors = []
  const handles = []
  // Two halves, so the marginal cost of the second half can be told from one-time growth.
  let mid
  for (const half of [Math.floor(n / 2), n - Math.floor(n / 2)]) {
    if (bg) {
      const snaps = await Promise.all(Array.from({ length: half }, () => bg.manager.spawn({ sessionId: SESSION, command: 'sleep 5', cwd: bg.storageDir })))
      pids.push(...snaps.map((s) => s.pid))
      if (!supervisors.length) supervisors = snaps.slice(0, 10).map((s) => parentPid(s.pid))
    } else {
      const hs = Array.from({ length: half }, () => base.spawn('sleep 5', LOST_MS))
      await Promise.all(hs.map((h) => h.spawned))
      handles.push(...hs)
      pids.push(...hs.map((h) => h.child.pid))
    }
    await sleep(200)
    fullGc()
    await sleep(100)
    if (!mid) mid = { ...procStatus(), rssKb: privateMemKb('self').rss }
  }
  const after = { ...procStatus(), rssKb: privateMemKb('self').rss }
  const alive = pids.filter(isAlive).length
  const sup = supervisors.map(privateMemKb).filter(Boolean)
  const res = {
    n,
    alive,
    rssBeforeKb: before.rssKb,
    rssAfterKb: after.rssKb,
    perTaskKb: (after.rssKb - before.rssKb) / n,
    marginalKb: (after.rssKb - mid.rssKb) / (n - Math.floor(n / 2)),
    threadsBefore: before.threads,
    threadsAfter: after.threads,
    supervisorPrivKb: sup.length ? median(sup.map((s) => s.priv)) : null,
    supervisorPssKb: sup.length ? median(sup.map((s) => s.pss)) : null,
    supervisorRssKb: sup.length ? median(sup.map((s) => s.rss)) : null,
  }
  if (bg) await bg.close()
  else {
    for (const h of handles) {
      try {
        process.kill(-h.child.pid, 'SIGKILL')
      } catch {}
    }
    await Promise.all(handles.map((h) => h.exited))
    base.close()
  }
  return res
}
// Each round runs in a fresh Node process: in this one, earlier figures have left freed but
// still resident heap behind, which new allocations reuse without growing RSS.
function liveInChild(kind, n) {
  return new Promise((resolve, reject) =>
    execFile(process.execPath, [fileURLToPath(import.meta.url), '--live-child', kind, String(n)], { encoding: 'utf8', timeout: 120000 }, (err, out, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(JSON.parse(out)),
    ),
  )
}
async function figureLive() {
  const rounds = { bg: [], base: [] }
  for (let r = 0; r < C.liveRounds; r++) {
    rounds.bg.push(await liveInChild('bg', C.live))
    rounds.base.push(await liveInChild('base', C.live))
  }
  return rounds
}

// ---------------------------------------------------------------------------------------------
// 6. tail() of a huge output file, against the same backward read written in plain Node.
const MAX_TAIL = 256 * 1024 // as src/output.rs MAX_TAIL_BYTES
function jsTail(path, lines) {
  const fd = openSync(path, 'r')
  try {
    const size = fstatSync(fd).size
    let chunk = 8 * 1024
    for (;;) {
      const take = Math.min(chunk, size, MAX_TAIL)
      const buf = Buffer.allocUnsafe(take)
      readSync(fd, buf, 0, take, size - take)
      const body = buf[take - 1] === 10 ? buf.subarray(0, take - 1) : buf
      let seen = 0
      let i = body.length
      while (seen < lines && (i = body.lastIndexOf(10, i - 1)) >= 0) seen++
      if (seen === lines) return buf.subarray(i + 1).toString('utf8')
      if (take >= size || take >= MAX_TAIL) return buf.toString('utf8')
      chunk *= 4
    }
  } finally {
    closeSync(fd)
  }
}
async function figureTail() {
  const bg = new Bg({ outputCapBytes: 0 })
  const out = {}
  const files = {
    // As the issue gives it: 1 GiB of 'x' and no newline, so the last line is 1 GiB long.
    oneLine: `head -c ${C.tailBytes} /dev/zero | tr '\\0' x; echo last`,
    // The same size as ordinary 64-byte lines.
    lines: `yes 'a line of build output, sixty-four bytes long ..............' | head -c ${C.tailBytes}; echo last`,
    small: `for i in $(seq 1 16); do echo "line $i of a one-kilobyte output ............................"; done; echo last`,
  }
  for (const [name, command] of Object.entries(files)) {
    const t0 = Date.now()
    const s = await bg.manager.spawn({ sessionId: SESSION, command, cwd: bg.storageDir, timeoutMs: 0 })
    const done = await bg.manager.wait(s.taskId, { timeoutMs: 300000 })
    const size = statSync(s.stdoutPath).size
    log(`tail: ${name} output ${(size / MiB).toFixed(1)} MiB written in ${Date.now() - t0} ms (${done.status})`)
    const check = await bg.manager.tail(s.taskId, { lines: 1 })
    const jsCheck = jsTail(s.stdoutPath, 1)
    const rounds = { bg: [], base: [], bytes: size, textBytes: Buffer.byteLength(check.text), ok: check.text.endsWith('last\n') && jsCheck.endsWith('last\n') }
    for (let r = 0; r < C.tailRounds; r++) {
      const a = []
      for (let i = 0; i < C.tailCalls; i++) {
        const t = performance.now()
        await bg.manager.tail(s.taskId, { lines: 1 })
        a.push(performance.now() - t)
      }
      rounds.bg.push(stat(a))
      const b = []
      for (let i = 0; i < C.tailCalls; i++) {
        const t = performance.now()
        await Promise.resolve(jsTail(s.stdoutPath, 1))
        b.push(performance.now() - t)
      }
      rounds.base.push(stat(b))
    }
    out[name] = rounds
  }
  await bg.close()
  return out
}

// ---------------------------------------------------------------------------------------------
// 7. replay() and list() over many stored tasks, bundles written straight to disk.
async function figureReplay() {
  const r = { first: [], again: [], list: [], scan: [], problems: [] }
  for (let round = 0; round < C.replayRounds; round++) {
    const storageDir = tempDir('bgshell-bench-replay-')
    const session = 'replay-session'
    const t0 = Date.now()
    const dir = writeBundles(storageDir, session, C.replayN)
    log(`replay: wrote ${C.replayN} bundles in ${Date.now() - t0} ms`)
    const managers = []
    let t = performance.now()
    const m1 = new TaskManager({ storageDir })
    const tasks = await m1.replay(session)
    r.first.push(performance.now() - t)
    managers.push(m1)
    if (tasks.length !== C.replayN) r.problems.push(`first replay returned ${tasks.length} of ${C.replayN}`)
    const changed = tasks.filter((x) => !['completed', 'failed', 'killed', 'timed_out'].includes(x.status)).length
    if (changed) r.problems.push(`${changed} terminal tasks came back non-terminal`)
    for (let k = 0; k < C.replayRepeat; k++) {
      t = performance.now()
      jsScan(dir)
      r.scan.push(performance.now() - t)
      t = performance.now()
      const m = new TaskManager({ storageDir })
      const again = await m.replay(session)
      r.again.push(performance.now() - t)
      managers.push(m)
      if (again.length !== C.replayN) r.problems.push(`replay returned ${again.length} of ${C.replayN}`)
      t = performance.now()
      const listed = m.list({ sessionId: session })
      r.list.push(performance.now() - t)
      if (listed.length !== C.replayN) r.problems.push(`list returned ${listed.length} of ${C.replayN}`)
    }
    const pending = m1.drainCompletions(session).length
    const expected = Math.ceil(C.replayN / 3)
    if (pending !== expected) r.problems.push(`drainCompletions gave ${pending}, expected ${expected}`)
    for (const m of managers) await m.close()
    removeDir(storageDir)
  }
  return r
}

// ---------------------------------------------------------------------------------------------
const fmt = (v, d = 2) => (v == null || Number.isNaN(v) ? '—' : v >= 100 ? v.toFixed(0) : v.toFixed(d))
const medOf = (rounds, get) => median(rounds.map(get).filter((x) => x != null && !Number.isNaN(x)))

async function main() {
  results.machine = machine()
  results.loadStart = os.loadavg().map((x) => x.toFixed(2)).join(' ')
  log(`bgshell bench ${QUICK ? '(quick)' : ''} on ${os.cpus().length} cpus, node ${process.version}, load ${results.loadStart}`)
  results.figures.fs = figureFs()
  log('1/8 spawn + exit detection, concurrency 1')
  results.figures.c1 = await figureSpawnExit(1, C.seq)
  log('2/8 spawn + exit detection, concurrency 50')
  results.figures.c50 = await figureSpawnExit(C.conc, C.conc * C.concBatches)
  log('3/8 short task life')
  results.figures.short = await figureShortLife()
  log('4/8 adopted exit detection')
  results.figures.adopted = await figureAdopted()
  log('5/8 burst')
  results.figures.burst = await figureBurst()
  log('6/8 memory per live task')
  results.figures.live = await figureLive()
  log('7/8 tail')
  results.figures.tail = await figureTail()
  log('8/8 replay and list')
  results.figures.replay = await figureReplay()
  results.seconds = (Date.now() - started) / 1000
  results.loadEnd = os.loadavg().map((x) => x.toFixed(2)).join(' ')
  report()
}

function machine() {
  const sh = (cmd) => {
    try {
      return execSync(cmd, { encoding: 'utf8' }).trim()
    } catch {
      return '?'
    }
  }
  const node = join(dirname(indexPath), 'bgshell.linux-x64-gnu.node')
  let build = '?'
  try {
    build = `${createHash('sha256').update(readFileSync(node)).digest('hex').slice(0, 12)} (${statSync(node).mtime.toISOString()})`
  } catch {}
  return {
    date: new Date().toISOString(),
    nproc: sh('nproc'),
    memGiB: (os.totalmem() / 2 ** 30).toFixed(1),
    kernel: sh('uname -r'),
    node: process.version,
    cpu: os.cpus()[0]?.model,
    fs: sh(`df -T ${os.tmpdir()} | tail -1 | awk '{print $2}'`),
    build,
  }
}

function report() {
  const f = results.figures
  const rows = []
  const row = (name, bg, base, target, met, unit = 'ms') => {
    const ratio = bg != null && base != null && base !== 0 ? bg / base : null
    const cell = (v) => (unit === '' && Number.isInteger(v) ? String(v) : `${fmt(v)} ${unit}`.trim())
    rows.push(`| ${name} | ${cell(bg)} | ${base == null ? '—' : cell(base)} | ${ratio == null ? '—' : `${ratio.toFixed(2)}×`} | ${target} | ${met == null ? '—' : met ? 'yes' : '**no**'} |`)
  }
  for (const [key, label] of [
    ['c1', 'c=1'],
    ['c50', `c=${C.conc}`],
  ]) {
    const x = f[key]
    for (const [what, name] of [
      ['spawn', 'spawn latency'],
      ['exit', 'exit-detection latency'],
    ]) {
      const b50 = medOf(x.bg, (r) => r[what].p50)
      const a50 = medOf(x.base, (r) => r[what].p50)
      row(`${name} p50, ${label}`, b50, a50, '≤ 1.0× baseline', b50 <= a50)
      row(`${name} p95, ${label}`, medOf(x.bg, (r) => r[what].p95), medOf(x.base, (r) => r[what].p95), '—', null)
    }
    for (const [what, name] of [
      ['spawn', 'spawn latency'],
      ['exit', 'exit-detection latency'],
    ]) {
      row(`${name} p50, ${label}, durability 'strict'`, medOf(x.strict, (r) => r[what].p50), medOf(x.base, (r) => r[what].p50), '—', null)
    }
    const lostBg = [...x.bg, ...x.strict].reduce((s, r) => s + r.lost + r.errors, 0)
    const lostBase = x.base.reduce((s, r) => s + r.lost + r.errors, 0)
    row(`lost completions, ${label} (of ${(x.bg.length + x.strict.length) * (key === 'c1' ? C.seq : C.conc * C.concBatches)})`, lostBg, lostBase, '0', lostBg === 0, '')
  }
  const s = f.short
  const sb = medOf(s.bg, (r) => r.p50)
  const sf = medOf(s.floor, (r) => r.p50)
  row('short task life (`true`) p50 vs bare `bash -c true`', sb, sf, '≤ 1.5× floor', sb <= 1.5 * sf)
  row('short task life (`true`) p50 vs plain-Node baseline', sb, medOf(s.base, (r) => r.p50), '—', null)
  const a = f.adopted.capped
  const a0 = f.adopted.uncapped
  row(`adopted exit seen, wait() p50 (n=${a.wait.n})`, a.wait.p50, null, '—', null)
  row(`adopted exit seen, wait() p95`, a.wait.p95, null, '< 2 ms', a.wait.p95 < 2)
  row(`adopted exit seen, completion event p95`, a.event.p95, null, '< 2 ms', a.event.p95 < 2)
  row(`adopted exit seen, wait() p50, tasks spawned with outputCapBytes: 0`, a0.wait.p50, null, '—', null)
  row(`adopted exit seen, wait() p95, tasks spawned with outputCapBytes: 0`, a0.wait.p95, null, '< 2 ms', a0.wait.p95 < 2)
  const b = f.burst
  const bb = (get) => medOf(b.bg, get)
  const ba = (get) => medOf(b.base, get)
  row(`burst of ${C.burst} \`true\`: total`, bb((r) => r.totalMs), ba((r) => r.totalMs), '—', null)
  const burstLost = b.bg.reduce((x, r) => x + r.lost + r.errors, 0)
  row(`burst: lost (all rounds)`, burstLost, b.base.reduce((x, r) => x + r.lost + r.errors, 0), '0', burstLost === 0, '')
  row(`burst: largest event-loop stall (monitorEventLoopDelay max)`, bb((r) => r.stallMs), ba((r) => r.stallMs), '—', null)
  row(`burst: largest gap between 1 ms timer ticks`, bb((r) => r.maxGapMs), ba((r) => r.maxGapMs), '—', null)
  row(`burst: CPU per task, manager process (all threads)`, bb((r) => r.cpuSelfMsPerTask), ba((r) => r.cpuSelfMsPerTask), '—', null)
  const childB = bb((r) => r.cpuChildrenMsPerTask)
  const childA = ba((r) => r.cpuChildrenMsPerTask)
  row(`burst: CPU per task, child processes (supervisor + bash)`, childB, childA, '≤ 1.3× baseline', childB <= 1.3 * childA)
  // The baseline creates a task's files in its own process, bgshell's supervisor in the child:
  // the sum is the like-for-like figure.
  const total = (r) => r.cpuSelfMsPerTask + r.cpuChildrenMsPerTask
  row(`burst: CPU per task, manager + children`, bb(total), ba(total), '—', null)
  row(`burst: peak RSS of the bench process`, bb((r) => r.peakRssMb), ba((r) => r.peakRssMb), '—', null, 'MB')
  row(`burst: threads before → peak (bgshell ${bb((r) => r.threadsBefore)} → ${bb((r) => r.threadsPeak)})`, bb((r) => r.threadsPeak), ba((r) => r.threadsPeak), '—', null, '')
  const l = f.live
  const lb = medOf(l.bg, (r) => r.perTaskKb)
  row(`RSS per live task (${C.live} \`sleep 5\`), manager process`, lb, medOf(l.base, (r) => r.perTaskKb), '≤ 20 KB', lb <= 20, 'KB')
  const tb = medOf(l.bg, (r) => r.threadsBefore)
  const ta = medOf(l.bg, (r) => r.threadsAfter)
  row(`RSS per live task, marginal (second ${C.live / 2} tasks)`, medOf(l.bg, (r) => r.marginalKb), medOf(l.base, (r) => r.marginalKb), '—', null, 'KB')
  row(`threads with ${C.live} live tasks (bgshell before ${tb})`, ta, medOf(l.base, (r) => r.threadsAfter), 'no growth', ta <= tb, '')
  row(`supervisor process: private memory each`, medOf(l.bg, (r) => r.supervisorPrivKb), null, '—', null, 'KB')
  for (const [name, label] of [
    ['oneLine', `tail(lines: 1), ${fmt(f.tail.oneLine.bytes / MiB, 0)} MiB single-line output`],
    ['lines', `tail(lines: 1), ${fmt(f.tail.lines.bytes / MiB, 0)} MiB of 64-byte lines`],
    ['small', 'tail(lines: 1), 1 KiB output'],
  ]) {
    const t = f.tail[name]
    const v = medOf(t.bg, (r) => r.p50)
    row(`${label} p50`, v, medOf(t.base, (r) => r.p50), '< 1 ms', v < 1)
    row(`${label} p95`, medOf(t.bg, (r) => r.p95), medOf(t.base, (r) => r.p95), '—', null)
  }
  const rp = f.replay
  const first = median(rp.first)
  const again = median(rp.again)
  const scan = median(rp.scan)
  row(`replay of ${C.replayN} stored tasks, first (builds index rows)`, first, scan, '< 200 ms', first < 200)
  row(`replay of ${C.replayN} stored tasks, subsequent`, again, scan, '< 300 ms', again < 300)
  row(`list({sessionId}) of ${C.replayN} tasks`, median(rp.list), scan, '—', null)

  const lines = [
    `| figure | bgshell | baseline | ratio | target | met |`,
    `|---|---|---|---|---|---|`,
    ...rows,
  ]
  const mc = results.machine
  console.log(`bgshell bench${QUICK ? ' (BENCH_QUICK=1)' : ''}, ${mc.date}: ${mc.nproc} cpus (${mc.cpu}), ${mc.memGiB} GiB, kernel ${mc.kernel}, node ${mc.node}, ${os.tmpdir()} on ${mc.fs}, addon ${mc.build}; load average ${results.loadStart} at start, ${results.loadEnd} at end`)
  console.log()
  console.log(lines.join('\n'))
  console.log()
  const notes = []
  notes.push(`rounds: ${C.rounds} (spawn/exit/short), ${C.adoptRounds}×${C.adoptTasks} adopted, ${C.burstRounds} burst, ${C.liveRounds} live, ${C.tailRounds}×${C.tailCalls} tail, ${C.replayRounds}×${C.replayRepeat} replay`)
  notes.push(`adopted: tasks that ended before adoption (excluded) ${a.early + a0.early}; lost ${a.lost + a0.lost}; replay() of the session took p50 ${fmt(a.replayMs.p50)} ms; wait() p50/p95/max ${fmt(a.wait.p50)}/${fmt(a.wait.p95)}/${fmt(a.wait.max)} ms with the cap, ${fmt(a0.wait.p50)}/${fmt(a0.wait.p95)}/${fmt(a0.wait.max)} ms without`)
  notes.push(`burst bgshell rounds: ${b.bg.map((r) => `${fmt(r.totalMs)} ms, stall ${fmt(r.stallMs)} ms, RSS ${fmt(r.rssBeforeMb)}→${fmt(r.peakRssMb)} MB, threads ${r.threadsBefore}→${r.threadsPeak}→${r.threadsAfter}, lost ${r.lost}, errors ${r.errors}, duplicate events ${r.duplicates}`).join('; ')}`)
  notes.push(`burst baseline rounds: ${b.base.map((r) => `${fmt(r.totalMs)} ms, stall ${fmt(r.stallMs)} ms, RSS ${fmt(r.rssBeforeMb)}→${fmt(r.peakRssMb)} MB, threads ${r.threadsBefore}→${r.threadsPeak}→${r.threadsAfter}, lost ${r.lost}`).join('; ')}`)
  notes.push(`live bgshell rounds: ${l.bg.map((r) => `${r.alive}/${r.n} alive, RSS ${r.rssBeforeKb}→${r.rssAfterKb} KB, threads ${r.threadsBefore}→${r.threadsAfter}, supervisor Rss/Pss/private ${r.supervisorRssKb}/${r.supervisorPssKb}/${r.supervisorPrivKb} KB`).join('; ')}`)
  notes.push(`live baseline rounds: ${l.base.map((r) => `${r.alive}/${r.n} alive, RSS ${r.rssBeforeKb}→${r.rssAfterKb} KB, threads ${r.threadsBefore}→${r.threadsAfter}`).join('; ')}`)
  notes.push(`tail: text returned for lines:1 — ${Object.entries(f.tail).map(([k, t]) => `${k} ${t.textBytes} bytes${t.ok ? '' : ' (WRONG END)'}`).join(', ')}`)
  notes.push(`replay rounds: first ${rp.first.map((x) => fmt(x)).join(', ')} ms; subsequent ${rp.again.map((x) => fmt(x)).join(', ')} ms; list ${rp.list.map((x) => fmt(x)).join(', ')} ms; plain-Node scan ${rp.scan.map((x) => fmt(x)).join(', ')} ms${rp.problems.length ? '; PROBLEMS: ' + rp.problems.join('; ') : ''}`)
  const fsx = f.fs
  notes.push(`filesystem of ${os.tmpdir()} (p50/p95 ms): create a new file ${fmt(fsx.create.p50)}/${fmt(fsx.create.p95)}, fsync of 700 B ${fmt(fsx.fsync.p50)}/${fmt(fsx.fsync.p95)}, rename ${fmt(fsx.rename.p50)}/${fmt(fsx.rename.p95)}, writeFileSync over an existing file ${fmt(fsx.overwrite.p50)}/${fmt(fsx.overwrite.p95)}`)
  notes.push(`total bench time ${results.seconds.toFixed(0)} s`)
  console.log(notes.map((n) => `- ${n}`).join('\n'))
  if (process.env.BENCH_JSON) writeFileSync(process.env.BENCH_JSON, JSON.stringify(results, null, 2))
}

const entry =
  process.argv[2] === '--live-child'
    ? () => liveRun(process.argv[3], Number(process.argv[4])).then((r) => process.stdout.write(JSON.stringify(r)))
    : main
entry().then(
  () => process.exit(0),
  (e) => {
    console.error(e)
    process.exit(1)
  },
)
