// Two builds of bgshell side by side in one process, rounds interleaved: the same figures as
// run.mjs sections 1, 2 and 3 (spawn and exit-detection latency at c=1 and c=50, short-task life,
// exit of a task adopted by replay()), for judging a change when the filesystem's speed drifts
// between runs minutes apart.
// Also a burst of AB_BURST `true` tasks (all at once, as run.mjs section 4) per side and round,
// for the CPU per task of the manager process and of the child processes (supervisor + bash).
//
//   node bench/ab.mjs <other checkout>       # that checkout's index.js (built) = "A", this one = "B"
//   AB_ROUNDS=6 AB_SEQ=40 AB_BURST=500 node bench/ab.mjs ../old
//   AB_REPLAY=10000 node bench/ab.mjs ../old   # also run.mjs section 7: first and later replay of
//                                              # that many stored tasks (AB_SEQ=0: that alone)
import { createRequire } from 'node:module'
import { join, resolve } from 'node:path'
import { Bg, TaskManager, indexPath, nowReal, median, percentile, closeAllBg, removeAllDirs, sampleSpawnExit, bgStart, newAdopted, adoptedRound, cpuMs, sleep, tempDir, removeDir, writeBundles, jsScan } from './lib.mjs'

const other = process.argv[2]
if (!other) {
  console.error('usage: node bench/ab.mjs <path to another built checkout>')
  process.exit(2)
}
const otherIndex = join(resolve(other), 'index.js')
const A = createRequire(import.meta.url)(otherIndex).TaskManager
const builds = { A: { indexPath: otherIndex, Manager: A }, B: { indexPath, Manager: TaskManager } }
const ROUNDS = Number(process.env.AB_ROUNDS ?? 5)
const SEQ = Number(process.env.AB_SEQ ?? 30)
const REPLAY = Number(process.env.AB_REPLAY ?? 0)
const CONC = 50
const BURST = Number(process.env.AB_BURST ?? 300)
const CMD = 'echo ready; echo "END $EPOCHREALTIME"'
process.on('exit', () => removeAllDirs())

const spawnExit = (bg, conc, total) => sampleSpawnExit(conc, total, bgStart(bg, { sessionId: 'ab', command: CMD }))

/** run.mjs section 7 for one build: a fresh manager's replay of `n` bundles without index rows
 * (first), the plain-Node scan of the same files, then another fresh manager's replay (later). */
async function replays(Manager, n, side) {
  const storageDir = tempDir('bgshell-ab-replay-')
  const dir = writeBundles(storageDir, 'replay-session', n)
  const managers = []
  const replay = async (key) => {
    const t = performance.now()
    const m = new Manager({ storageDir })
    const tasks = await m.replay('replay-session')
    add(side, key, [performance.now() - t])
    managers.push(m)
    if (tasks.length !== n) throw new Error(`${side}: ${key} returned ${tasks.length} of ${n} tasks`)
  }
  await replay('replay first')
  const t = performance.now()
  jsScan(dir)
  add(side, 'plain-Node scan', [performance.now() - t])
  await replay('replay later')
  for (const m of managers) await m.close()
  removeDir(storageDir)
}

async function shortLife(bg, n) {
  const life = []
  for (let i = 0; i < n; i++) {
    const t0 = nowReal()
    const s = await bg.manager.spawn({ sessionId: 'ab', command: 'true', cwd: bg.storageDir })
    const c = await bg.completion(s.taskId, 30000)
    if (c) life.push(c.t - t0)
  }
  return life
}

/** CPU per task (ms) of this process and of its reaped children over a burst of `n` `true` tasks. */
async function burstCpu(bg, n) {
  await sleep(300) // the previous tasks' supervisors have exited and been reaped
  const c0 = cpuMs()
  await Promise.all(
    Array.from({ length: n }, async () => {
      const s = await bg.manager.spawn({ sessionId: 'ab-burst', command: 'true', cwd: bg.storageDir })
      await bg.completion(s.taskId, 60000)
    }),
  )
  await sleep(300) // supervisors exit (and are reaped) a little after their report
  const c1 = cpuMs()
  return { self: (c1.self - c0.self) / n, children: (c1.children - c0.children) / n }
}

const sides = { A: new Bg({ Manager: A }), B: new Bg({ Manager: TaskManager }) }
const acc = {}
const add = (side, key, values) => ((acc[key] ??= { A: [], B: [] })[side].push(...values))
if (SEQ) for (const bg of Object.values(sides)) await shortLife(bg, 5) // warm-up
for (let r = 0; r < ROUNDS; r++) {
  for (const side of r % 2 ? ['B', 'A'] : ['A', 'B']) {
    if (REPLAY) await replays(builds[side].Manager, REPLAY, side)
    if (!SEQ) continue
    const bg = sides[side]
    const one = await spawnExit(bg, 1, SEQ)
    add(side, 'spawn c=1', one.spawn)
    add(side, 'exit detection c=1', one.exit)
    const fifty = await spawnExit(bg, CONC, CONC)
    add(side, 'spawn c=50', fifty.spawn)
    add(side, 'exit detection c=50', fifty.exit)
    add(side, 'short task life', await shortLife(bg, SEQ))
    const adopted = newAdopted()
    await adoptedRound(adopted, { tasks: 8, lostMs: 30000, build: builds[side] })
    add(side, 'adopted exit, wait()', adopted.waitL)
    if (BURST > 0) {
      const cpu = await burstCpu(bg, BURST)
      add(side, `burst of ${BURST}: CPU per task, manager process`, [cpu.self])
      add(side, `burst of ${BURST}: CPU per task, child processes`, [cpu.children])
    }
    add(side, 'lost', [one.lost + fifty.lost + adopted.lost])
  }
}
await closeAllBg()
const f = (v) => (v >= 100 ? v.toFixed(0) : v.toFixed(2))
console.log(`A = ${resolve(other)}, B = this checkout; ${ROUNDS} interleaved rounds\n`)
console.log('| figure | A p50 | B p50 | B/A | A p95 | B p95 |')
console.log('|---|---|---|---|---|---|')
for (const [key, { A: a, B: b }] of Object.entries(acc)) {
  if (key === 'lost') {
    console.log(`| lost | ${a.reduce((x, y) => x + y, 0)} | ${b.reduce((x, y) => x + y, 0)} | | | |`)
    continue
  }
  const [ma, mb] = [median(a), median(b)]
  console.log(`| ${key} | ${f(ma)} ms | ${f(mb)} ms | ${(mb / ma).toFixed(2)}× | ${f(percentile(a, 95))} ms | ${f(percentile(b, 95))} ms |`)
}
