#!/usr/bin/env node
// `npm run soak`: a bounded soak of one store under restarts and crashes (not part of the tests).
//
//   SOAK_SECONDS=600 node bench/soak.mjs     (default 600 s)
//   SOAK_KEEP=1 keeps the store and journals; on problems they are kept unless SOAK_KEEP=0
//
// The parent process never touches a manager until the end. It starts a manager in a child
// process (this file with --child), lets it live a few seconds, then stops it with SIGTERM or
// crashes it with SIGKILL (about one time in three), waits a moment with no manager alive, and
// starts the next one, all on one store. Each child replays every session, keeps about 50 tasks
// running (random lifetimes, exit codes, output sizes; some get a short timeout, some are killed
// on a schedule whichever child is alive then), and runs a drain -> ack loop, journaling what it
// did to a file outside the store. Each task's plan is written into its command text
// (`: bgsoak-<marker> n=... life=... code=...`), so the store alone says what should have
// happened. At the end a last child finishes (no new spawns) and a fresh manager in the parent
// replays all sessions and checks: every task accounted for with the status its plan and the
// journal call for, every completion acked exactly once and never drained after its ack, nothing
// left to drain, no process of the soak left, no temp files and no unparsable bundles in the
// store, output caps respected. Prints a one-line summary; exits 1 on any problem.
import { spawn as cpSpawn } from 'node:child_process'
import { appendFileSync, readFileSync, readdirSync, statSync, existsSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { TaskManager, tempDir, removeDir, sleep, processesMatching } from './lib.mjs'

const SESSIONS = ['soak-a', 'soak-b', 'soak-c']
const TARGET_RUNNING = 50
const CAP = 1024 * 1024
const TERMINAL = new Set(['completed', 'failed', 'killed', 'timed_out'])
const self = fileURLToPath(import.meta.url)

// ---------------------------------------------------------------------------------------------
// Plans: everything the verifier needs is in the command text.
function makePlan(n, rnd = Math.random) {
  const life = rnd() < 0.2 ? 0 : Math.round((0.2 + rnd() * 5.8) * 100) / 100
  const code = [0, 0, 0, 0, 1, 2, 3, 42][Math.floor(rnd() * 8)]
  const r = rnd()
  const bytes = r < 0.4 ? 0 : r < 0.6 ? 100 : r < 0.8 ? 10_000 : r < 0.92 ? 256 * 1024 : 3 * 1024 * 1024
  let kill = null
  let to = null
  const x = rnd()
  if (life >= 1.5 && x < 0.15) kill = Math.round(300 + rnd() * (life * 1000 - 1100)) // ≥ 0.8 s before the end
  else if (life >= 1.5 && x < 0.3) to = Math.round(300 + rnd() * (life * 1000 - 1100)) // a deadline it cannot meet
  else if (x < 0.4) to = Math.round(life * 1000 + 3000 + rnd() * 5000) // a deadline it meets
  const stderr = rnd() < 0.2
  return { n, life, code, bytes, kill, to, stderr }
}
function planCommand(marker, p) {
  const parts = [`: bgsoak-${marker} n=${p.n} life=${p.life} code=${p.code} bytes=${p.bytes} kill=${p.kill ?? '-'} to=${p.to ?? '-'}`]
  if (p.bytes) parts.push(`head -c ${p.bytes} /dev/zero | tr '\\0' a`)
  if (p.stderr) parts.push('echo "some diagnostics" >&2')
  if (p.life) parts.push(`sleep ${p.life}`)
  parts.push(`exit ${p.code}`)
  return parts.join('; ')
}
function parsePlan(command) {
  const m = /^: bgsoak-(\w+) n=(\S+) life=(\S+) code=(\d+) bytes=(\d+) kill=([^;\s]+) to=([^;\s]+)/.exec(command)
  if (!m) return null
  const num = (s) => (s === '-' ? null : Number(s))
  return { marker: m[1], n: m[2], life: Number(m[3]), code: Number(m[4]), bytes: Number(m[5]), kill: num(m[6]), to: num(m[7]) }
}

// ---------------------------------------------------------------------------------------------
// Child: one manager's life.
async function child() {
  const { SOAK_STORE: storageDir, SOAK_MARKER: marker, SOAK_JOURNAL: journal, SOAK_MODE: mode, SOAK_INDEX: index } = process.env
  const j = (rec) => appendFileSync(journal, JSON.stringify({ ...rec, at: Date.now() }) + '\n')
  let stopping = false
  process.on('SIGTERM', () => {
    stopping = true
  })
  const m = new TaskManager({ storageDir, maxRunning: 200, killGraceMs: 300, outputCapBytes: CAP, longRunningIntervalMs: 0 })
  j({ t: 'start', pid: process.pid, mode })
  const running = new Map() // id -> { plan, startedAt, killSent }
  const finishedEarly = new Set()
  const evented = new Set()
  let pendingSpawns = 0
  let pendingKills = 0
  let counter = 0
  m.onEvent((e) => {
    if (e.type !== 'completion') return
    const id = e.completion.taskId
    if (evented.has(id)) j({ t: 'dup-event', id })
    evented.add(id)
    if (!running.delete(id)) finishedEarly.add(id)
  })
  for (const s of SESSIONS) {
    const snaps = await m.replay(s)
    for (const snap of snaps) {
      if (TERMINAL.has(snap.status)) continue
      // Adopted by this replay and already ended: its event may run before replay() resolves.
      if (finishedEarly.delete(snap.taskId)) continue
      running.set(snap.taskId, { plan: parsePlan(snap.command), startedAt: snap.startedAt, killSent: snap.status === 'killing' })
    }
  }
  j({ t: 'replayed', running: running.size })

  const spawnOne = () => {
    const plan = makePlan(`${index}-${counter++}`)
    const sessionId = SESSIONS[Math.floor(Math.random() * SESSIONS.length)]
    j({ t: 'spawning', n: plan.n })
    pendingSpawns++
    const startedAt = Date.now()
    m.spawn({ sessionId, command: planCommand(marker, plan), cwd: storageDir, timeoutMs: plan.to ?? 0, env: { SOAK_MARKER: marker } })
      .then((s) => {
        j({ t: 'spawned', n: plan.n, id: s.taskId, s: sessionId })
        if (!finishedEarly.delete(s.taskId)) running.set(s.taskId, { plan, startedAt: s.startedAt ?? startedAt, killSent: false })
      })
      .catch((e) => j({ t: 'spawn-error', n: plan.n, code: e.code, message: e.message }))
      .finally(() => pendingSpawns--)
  }
  const drainAck = () => {
    for (const s of SESSIONS) {
      const pending = m.drainCompletions(s)
      if (!pending.length) continue
      const ids = pending.map((c) => c.taskId)
      j({ t: 'drain', s, ids, statuses: pending.map((c) => c.status) })
      const acked = m.ackCompletions(s, ids)
      j({ t: 'ack', s, ids: acked })
    }
  }
  let lastReconcile = Date.now()
  while (!stopping) {
    const now = Date.now()
    if (mode === 'run') {
      const want = Math.min(10, TARGET_RUNNING - running.size - pendingSpawns)
      for (let k = 0; k < want; k++) spawnOne()
    }
    for (const [id, t] of running) {
      if (t.plan?.kill == null || t.killSent || now < t.startedAt + t.plan.kill) continue
      t.killSent = true
      pendingKills++
      j({ t: 'kill', id })
      m.kill(id, { signal: 'SIGTERM', graceMs: 300 })
        .then((s) => j({ t: 'killed', id, status: s.status, exitCode: s.exitCode }))
        .catch((e) => j({ t: 'kill-error', id, code: e.code, message: e.message }))
        .finally(() => pendingKills--)
    }
    drainAck()
    if (now - lastReconcile > 2000) {
      // A safety net so a missing event cannot stall the top-up; journaled, as it should not happen.
      lastReconcile = now
      for (const id of [...running.keys()]) {
        const s = m.get(id)
        if (s && TERMINAL.has(s.status)) {
          await sleep(50)
          if (running.delete(id)) j({ t: 'no-event', id, status: s.status })
        }
      }
      if (Math.random() < 0.2) await m.gc()
    }
    if (mode === 'finish' && running.size === 0 && pendingSpawns === 0 && pendingKills === 0) {
      drainAck()
      break
    }
    await sleep(100)
  }
  await m.close()
  j({ t: 'exit', running: running.size })
  process.exit(0)
}

// ---------------------------------------------------------------------------------------------
// Parent: restarts, crashes, and the final check.
function startChild(env) {
  const c = cpSpawn(process.execPath, [self, '--child'], { env: { ...process.env, ...env }, stdio: ['ignore', 'inherit', 'inherit'] })
  c.exited = new Promise((resolve) => c.once('exit', (code, signal) => resolve({ code, signal })))
  return c
}
async function stopChild(c, signal, ms = 20000) {
  c.kill(signal)
  const timer = sleep(ms).then(() => 'timeout')
  if ((await Promise.race([c.exited, timer])) === 'timeout') {
    c.kill('SIGKILL')
    await c.exited
    return false
  }
  return true
}
function readJournal(path) {
  if (!existsSync(path)) return []
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .flatMap((l) => {
      try {
        return [JSON.parse(l)]
      } catch {
        return [{ t: 'garbled', line: l }]
      }
    })
}
function walk(dir, out = []) {
  for (const name of readdirSync(dir)) {
    const p = join(dir, name)
    const st = statSync(p)
    out.push({ p, name, dir: st.isDirectory(), size: st.size })
    if (st.isDirectory()) walk(p, out)
  }
  return out
}

async function parent() {
  const seconds = Number(process.env.SOAK_SECONDS ?? 600)
  const storageDir = tempDir('bgshell-soak-store-')
  const journalDir = tempDir('bgshell-soak-journal-')
  const marker = randomBytes(6).toString('hex')
  const started = Date.now()
  const deadline = started + seconds * 1000
  const children = [] // { index, pid, how, journal }
  const problems = []
  const problem = (msg) => {
    if (problems.length < 200) problems.push(msg)
  }
  const say = (...a) => console.error(`[soak ${((Date.now() - started) / 1000).toFixed(0)}s]`, ...a)
  let current = null
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
      current?.kill('SIGKILL')
      console.error(`interrupted; store ${storageDir}, journals ${journalDir} left for inspection`)
      process.exit(130)
    })
  }
  let index = 0
  let hung = 0
  while (Date.now() < deadline) {
    const journal = join(journalDir, `${String(index).padStart(4, '0')}.jsonl`)
    const c = (current = startChild({ SOAK_STORE: storageDir, SOAK_MARKER: marker, SOAK_JOURNAL: journal, SOAK_MODE: 'run', SOAK_INDEX: String(index) }))
    const life = Math.min(2000 + Math.random() * 6000, Math.max(0, deadline - Date.now()))
    const early = await Promise.race([c.exited, sleep(life).then(() => null)])
    let how
    if (early) {
      how = `exited by itself (${early.code ?? early.signal})`
      problem(`manager run ${index} exited on its own: ${JSON.stringify(early)}`)
    } else if (Math.random() < 0.33) {
      await stopChild(c, 'SIGKILL')
      how = 'SIGKILL'
    } else {
      if (!(await stopChild(c, 'SIGTERM'))) {
        hung++
        how = 'hung on SIGTERM, SIGKILLed'
        problem(`manager run ${index} did not exit within 20 s of SIGTERM`)
      } else how = 'SIGTERM'
    }
    children.push({ index, pid: c.pid, how, journal })
    if (index % 10 === 0) say(`run ${index} ended (${how})`)
    index++
    await sleep(Math.random() * 500) // sometimes no manager is alive for a while
  }
  // A last run spawns nothing, lets every task end (kills included), drains and acks.
  {
    const journal = join(journalDir, `${String(index).padStart(4, '0')}.jsonl`)
    const c = (current = startChild({ SOAK_STORE: storageDir, SOAK_MARKER: marker, SOAK_JOURNAL: journal, SOAK_MODE: 'finish', SOAK_INDEX: String(index) }))
    const r = await Promise.race([c.exited, sleep(120000).then(() => null)])
    if (!r) {
      problem('the finishing manager did not finish within 120 s')
      await stopChild(c, 'SIGKILL')
    } else if (r.code !== 0) problem(`the finishing manager exited with ${JSON.stringify(r)}`)
    children.push({ index, pid: c.pid, how: 'finish', journal })
  }
  say('verifying')

  // --- the journals, in order (managers never overlap) ---
  const events = []
  for (const ch of children) for (const rec of readJournal(ch.journal)) events.push({ ...rec, run: ch.index })
  const sigkilledPids = new Set(children.filter((c) => c.how.includes('SIGKILL')).map((c) => c.pid))
  const spawnedIds = new Map() // id -> n
  const killResult = new Map() // id -> status returned by kill()
  const ackCount = new Map()
  const ackSeq = new Map()
  const drainSeqs = new Map() // id -> [seq]
  const drainStatus = new Map()
  const uncertain = new Set() // drained, then the run died before journaling the ack
  let spawnErrors = 0
  let noEvent = 0
  let dupEvents = 0
  let lastDrain = null
  events.forEach((e, seq) => {
    if (e.t === 'garbled') problem(`garbled journal line in run ${e.run}`)
    if (e.t === 'spawned') spawnedIds.set(e.id, e.n)
    if (e.t === 'spawn-error') {
      spawnErrors++
      problem(`spawn error in run ${e.run}: ${e.code} ${e.message}`)
    }
    if (e.t === 'killed') killResult.set(e.id, e.status)
    if (e.t === 'kill-error' && e.code !== 'E_CLOSED') problem(`kill error in run ${e.run}: ${e.code} ${e.message}`)
    if (e.t === 'no-event') {
      noEvent++
      problem(`run ${e.run}: no completion event for ${e.id} (${e.status})`)
    }
    if (e.t === 'dup-event') {
      dupEvents++
      problem(`run ${e.run}: completion event twice for ${e.id}`)
    }
    if (e.t === 'drain') {
      if (lastDrain) for (const id of lastDrain.ids) uncertain.add(id) // previous drain never got its ack line
      lastDrain = e
      e.ids.forEach((id, i) => {
        if (ackSeq.has(id)) problem(`${id} drained again (run ${e.run}) after it was acked (run ${events[ackSeq.get(id)].run})`)
        drainSeqs.set(id, [...(drainSeqs.get(id) ?? []), seq])
        drainStatus.set(id, e.statuses[i])
      })
    }
    if (e.t === 'ack') {
      lastDrain = null
      for (const id of e.ids) {
        ackCount.set(id, (ackCount.get(id) ?? 0) + 1)
        if (!ackSeq.has(id)) ackSeq.set(id, seq)
      }
    }
    if (e.t === 'start' || e.t === 'exit') {
      if (lastDrain) for (const id of lastDrain.ids) uncertain.add(id)
      lastDrain = null
    }
  })
  if (lastDrain) for (const id of lastDrain.ids) uncertain.add(id)
  for (const id of ackSeq.keys()) uncertain.delete(id)

  // --- a fresh manager replays every session ---
  const m = new TaskManager({ storageDir, outputCapBytes: CAP })
  const tasks = new Map()
  for (const s of SESSIONS) {
    for (const t of await m.replay(s)) tasks.set(t.taskId, t)
  }
  for (const t of tasks.values()) {
    if (!TERMINAL.has(t.status)) {
      problem(`${t.taskId} is still ${t.status} after the finishing run`)
      const w = await m.wait(t.taskId, { timeoutMs: 15000 })
      tasks.set(t.taskId, w)
    }
  }
  const listed = SESSIONS.reduce((n, s) => n + m.list({ sessionId: s }).length, 0)
  if (listed !== tasks.size) problem(`list() shows ${listed} tasks, replay ${tasks.size}`)
  for (const s of SESSIONS) {
    const left = m.drainCompletions(s)
    if (left.length) problem(`${left.length} completions of ${s} still undrained/unacked at the end, e.g. ${left[0].taskId} (${left[0].status})`)
  }

  // --- every task: the status its plan calls for ---
  const byStatus = {}
  const seenN = new Map()
  let spawnAborted = 0
  let spawnAbortedKilled = 0
  let capChecked = 0
  for (const [id, t] of tasks) {
    byStatus[t.status] = (byStatus[t.status] ?? 0) + 1
    const plan = parsePlan(t.command)
    if (!plan || plan.marker !== marker) {
      problem(`${id}: a task the soak did not plan: ${t.command.slice(0, 60)}`)
      continue
    }
    if (seenN.has(plan.n)) problem(`plan ${plan.n} ran twice: ${seenN.get(plan.n)} and ${id}`)
    seenN.set(plan.n, id)
    const where = `${id} (plan ${plan.n}: life ${plan.life}s code ${plan.code} kill ${plan.kill ?? '-'} timeout ${plan.to ?? '-'})`
    const interrupted = (/spawn/.test(t.statusReason ?? '') && t.status === 'failed') || (t.status === 'killed' && t.exitCode == null)
    if (interrupted) {
      // Its spawning run died mid-spawn: acceptable only then, and never for a journaled spawn.
      let bundle = {}
      try {
        bundle = JSON.parse(readFileSync(t.stdoutPath.replace(/\.stdout$/, '.json'), 'utf8'))
      } catch {}
      // A spawn cut short by a crash ends "failed: spawn aborted" once the next manager gives up
      // on it; killed with no exit code when that manager was asked to kill it meanwhile.
      spawnAborted++
      if (t.status === 'killed') spawnAbortedKilled++
      if (spawnedIds.has(id)) problem(`${where}: spawn() resolved, yet the task ended as ${t.status} "${t.statusReason}"`)
      else if (!sigkilledPids.has(bundle.manager_pid))
        problem(`${where}: ${t.status} "${t.statusReason}", yet its manager (pid ${bundle.manager_pid}) was stopped gracefully: close() resolved before this spawn() settled`)
      continue
    }
    const natural =
      plan.to != null && plan.to < plan.life * 1000
        ? { status: 'timed_out', exitCode: 124 }
        : plan.code === 0
          ? { status: 'completed', exitCode: 0 }
          : { status: 'failed', exitCode: plan.code }
    const got = `${t.status}/${t.exitCode ?? '-'}${t.statusReason ? ` "${t.statusReason}"` : ''}`
    if (t.status === 'killed') {
      if (plan.kill == null) problem(`${where}: killed, but the soak never killed it (${got})`)
      else if (![143, 137].includes(t.exitCode)) problem(`${where}: killed with exit code ${t.exitCode}`)
    } else if (killResult.get(id) === 'killed') {
      problem(`${where}: kill() returned killed, the store says ${got}`)
    } else if (t.status !== natural.status || t.exitCode !== natural.exitCode) {
      problem(`${where}: expected ${natural.status}/${natural.exitCode}, got ${got}`)
    }
    if (killResult.has(id) && killResult.get(id) !== t.status) problem(`${where}: kill() returned ${killResult.get(id)}, the store says ${t.status}`)
    if (drainStatus.has(id) && drainStatus.get(id) !== t.status) problem(`${where}: completion said ${drainStatus.get(id)}, the store says ${t.status}`)
    // Completions: acked exactly once (or acked durably by a run that died before journaling it).
    const acks = ackCount.get(id) ?? 0
    if (acks > 1) problem(`${where}: acked ${acks} times`)
    if (acks === 0 && !uncertain.has(id)) problem(`${where}: completion never acked (delivered=${t.completionDelivered})`)
    if (acks === 0 && uncertain.has(id) && !t.completionDelivered) problem(`${where}: drained, never acked, not delivered`)
    if (!t.completionDelivered) problem(`${where}: completion not delivered at the end`)
    // Output caps.
    if (plan.bytes > CAP && t.stdoutPath && existsSync(t.stdoutPath)) {
      capChecked++
      // Head + tail: the logical size keeps growing (offsets never move); the disk use stays at
      // the cap, plus at most one block for each kept half (README, output cap).
      const st = statSync(t.stdoutPath)
      const used = st.blocks * 512
      if (used > CAP + 2 * st.blksize) problem(`${where}: stdout uses ${used} bytes of disk, over the ${CAP}-byte cap`)
    }
  }
  for (const [id, n] of spawnedIds) if (!tasks.has(id)) problem(`${id} (plan ${n}) was spawned but is not in the store`)
  await m.close()

  // --- nothing of the soak left running ---
  await sleep(1000)
  const leftovers = processesMatching(`bgsoak-${marker}`)
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue
    try {
      if (readFileSync(`/proc/${name}/environ`, 'utf8').includes(`SOAK_MARKER=${marker}`) && !leftovers.some((l) => l.pid === Number(name))) {
        const stat = readFileSync(`/proc/${name}/stat`, 'utf8')
        if (stat.slice(stat.lastIndexOf(')') + 2)[0] !== 'Z') leftovers.push({ pid: Number(name), cmd: readFileSync(`/proc/${name}/cmdline`, 'utf8').replace(/\0/g, ' ') })
      }
    } catch {}
  }
  for (const p of processesMatching(storageDir)) if (!leftovers.some((l) => l.pid === p.pid)) leftovers.push(p)
  for (const l of leftovers) problem(`process left: ${l.pid} ${l.cmd.slice(0, 100)}`)

  // --- the store: no temp files, every bundle parses ---
  let tempFiles = 0
  let badBundles = 0
  let quarantined = 0
  for (const f of walk(storageDir)) {
    if (f.p.includes('bash-tasks-quarantine') && !f.dir) quarantined++
    if (f.name.startsWith('.')) {
      tempFiles++
      problem(`temp file left: ${f.p}`)
    }
    if (!f.dir && f.name.endsWith('.json') && f.p.includes('/bash-tasks/')) {
      try {
        const r = JSON.parse(readFileSync(f.p, 'utf8'))
        if (r.schema_version !== 4 || !TERMINAL.has(r.status)) throw new Error(`schema ${r.schema_version}, status ${r.status}`)
      } catch (e) {
        badBundles++
        problem(`bad bundle ${f.p}: ${e.message}`)
      }
    }
  }
  if (quarantined) problem(`${quarantined} files quarantined`)

  const kills = events.filter((e) => e.t === 'kill').length
  const acked = [...ackCount.values()].reduce((a, b) => a + b, 0)
  const crashed = children.filter((c) => c.how === 'SIGKILL').length
  const statusText = Object.entries(byStatus)
    .sort()
    .map(([k, v]) => `${k} ${v}`)
    .join(', ')
  const summary =
    `soak ${seconds} s: ${children.length} manager runs (${crashed} SIGKILLed, ${hung} hung), ${tasks.size} tasks (${statusText}; ${spawnAborted} spawns cut short by a crash, ${spawnAbortedKilled} of them then killed), ` +
    `${kills} kills sent, ${acked} completions acked (+${uncertain.size} acked by a run that died before journaling), ` +
    `${spawnErrors} spawn errors, ${noEvent} missing / ${dupEvents} duplicate events, ${capChecked} capped outputs checked, ` +
    `leftover processes ${leftovers.length}, temp files ${tempFiles}, bad bundles ${badBundles} — ${problems.length ? `${problems.length} PROBLEMS` : 'OK'}`
  if (problems.length) {
    console.error('problems:')
    for (const p of problems.slice(0, 50)) console.error('  ' + p)
  }
  console.log(summary)
  if (process.env.SOAK_KEEP === '1' || (problems.length && process.env.SOAK_KEEP !== '0')) console.error(`kept: store ${storageDir}, journals ${journalDir}`)
  else {
    removeDir(storageDir)
    removeDir(journalDir)
  }
  process.exit(problems.length ? 1 : 0)
}

if (process.argv.includes('--child')) await child()
else await parent()
