#!/usr/bin/env node
// Where the time goes: runs a small workload under `perf trace` (root, Linux) and splits one
// task's spawn, exit detection and adoption into phases from the syscalls of the manager's
// threads, the supervisor and bash, between marker syscalls the workload makes from JS
// (getpriority(4000000 + 10*i + k), which fails harmlessly). Used for BENCHMARKS.md.
//
//   node bench/breakdown.mjs            (N=25 tasks each; BREAKDOWN_N to change)
//
// perf trace adds a few microseconds per traced syscall, so phases read a little long; compare
// them with each other and with the untraced figures of bench/run.mjs.
import { execFileSync, execFile } from 'node:child_process'
import { readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import os from 'node:os'
import { fileURLToPath } from 'node:url'
import { Bg, Baseline, indexPath, sleep, tempDir, removeAllDirs, percentile } from './lib.mjs'

const N = Number(process.env.BREAKDOWN_N ?? 25)
const CMD = 'echo ready; echo "END $EPOCHREALTIME"'
const mark = (k, i) => {
  try {
    os.getPriority(4000000 + i * 10 + k)
  } catch {}
}

async function workload() {
  const bg = new Bg()
  for (let i = 0; i < 3; i++) {
    const s = await bg.manager.spawn({ sessionId: 'warm', command: 'true', cwd: bg.storageDir })
    await bg.completion(s.taskId)
  }
  await sleep(50)
  for (let i = 0; i < N; i++) {
    mark(1, i)
    const s = await bg.manager.spawn({ sessionId: 'S', command: CMD, cwd: bg.storageDir })
    mark(2, i)
    await bg.completion(s.taskId)
    mark(3, i)
    await sleep(40) // let the supervisor finish exiting before the next task
  }
  await bg.close()
  const base = new Baseline()
  for (let i = 0; i < 3; i++) {
    const t = base.spawn('true')
    await t.spawned
    await t.exited
  }
  for (let i = 0; i < N; i++) {
    mark(4, i)
    const t = base.spawn(CMD)
    await t.spawned
    mark(5, i)
    await t.exited
    mark(6, i)
    await sleep(20)
  }
  base.close()
  // Adoption: a manager in a child process spawns, then exits; this process replays.
  const storageDir = tempDir('bgshell-bench-adopt-')
  const k = Math.min(N, 10)
  for (let round = 0; round * k < N; round++) {
    const cmds = Array.from({ length: k }, (_, i) => `sleep ${(0.4 + 0.08 * i).toFixed(2)}; echo "END $EPOCHREALTIME"`)
    const out = await new Promise((resolve, reject) =>
      execFile(
        process.execPath,
        [
          '-e',
          `const { TaskManager } = require(${JSON.stringify(indexPath)});
           const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)} });
           Promise.all(${JSON.stringify(cmds)}.map((command) => m.spawn({ sessionId: 'adopt', command, cwd: ${JSON.stringify(storageDir)} })))
             .then((s) => process.stdout.write(JSON.stringify(s.map((x) => x.taskId)), () => process.exit(0)))`,
        ],
        { encoding: 'utf8' },
        (e, o) => (e ? reject(e) : resolve(o)),
      ),
    )
    const ids = JSON.parse(out)
    const adopter = new Bg({ storageDir })
    await adopter.manager.replay('adopt')
    await Promise.all(
      ids.map(async (id, i) => {
        await adopter.manager.wait(id)
        mark(8, round * k + i)
      }),
    )
    adopter.unsubscribe()
    await adopter.manager.close()
  }
  removeAllDirs()
}

// ---------------------------------------------------------------------------------------------
function parse(path) {
  const events = []
  const pending = new Map()
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    const m = /^\s*([\d.]+|\?) \(\s*([\d.]+)?\s*(?:ms)?\s*\): (\S+?)\/(\d+) (.*)$/.exec(line)
    if (!m) continue
    const [, tsText, durText, comm, tid, text] = m
    const cont = /^\s*\.\.\. \[continued\]: (\w+)\(/.exec(text)
    if (cont) {
      const p = pending.get(`${tid}:${cont[1]}`)
      pending.delete(`${tid}:${cont[1]}`)
      if (!p || durText == null) continue
      p.end = p.ts + Number(durText)
      p.text += text
      events.push(p)
      continue
    }
    const name = /^(\w+)\(/.exec(text)?.[1]
    if (!name || tsText === '?') continue
    const ev = { ts: Number(tsText), end: Number(tsText) + Number(durText ?? 0), name, comm, tid: Number(tid), text }
    if (durText == null && text.trimEnd().endsWith('...')) pending.set(`${tid}:${name}`, ev)
    else events.push(ev)
  }
  events.sort((a, b) => a.ts - b.ts)
  return events
}

function analyse(events) {
  const markers = new Map()
  for (const e of events) {
    const m = e.name === 'getpriority' && /who: (\d+)/.exec(e.text)
    if (m && Number(m[1]) >= 4000000) markers.set(Number(m[1]) - 4000000, e.ts)
  }
  const at = (k, i) => markers.get(i * 10 + k)
  const isSup = (e) => e.comm.startsWith('bgshell-superv')
  const isBash = (e) => e.comm === 'bash'
  const isMgr = (e) => !isSup(e) && !isBash(e) && e.comm !== 'sleep'
  const after = (t, pred, until = Infinity) => events.find((e) => e.ts >= t && e.ts <= until && pred(e))
  const before = (t, pred, from = -Infinity) => {
    for (let j = events.length - 1; j >= 0; j--) {
      const e = events[j]
      if (e.ts <= t && e.ts >= from && pred(e)) return e
    }
  }
  const creat = (e) => e.name === 'openat' && /CREAT/.test(e.text)
  const phases = { spawn: {}, exit: {}, baseSpawn: {}, baseExit: {}, adopt: {} }
  const add = (group, name, v) => {
    if (v == null || Number.isNaN(v) || v < 0) return
    ;(group[name] ??= []).push(v)
  }
  for (let i = 0; i < N; i++) {
    const m1 = at(1, i)
    const m2 = at(2, i)
    const m3 = at(3, i)
    if (m1 != null && m2 != null && m3 != null) {
      const P = phases.spawn
      // spawn(): the manager execs the supervisor (which waits for `go`), writes `starting`
      // (a new file: temp + rename), sends `go`; the supervisor execs bash and reports; the
      // manager updates the record to `running` (its spare file swapped in: renameat2).
      const c1 = after(m1, (e) => isMgr(e) && e.name === 'clone3', m2)
      const r1 = c1 && after(c1.end, (e) => isMgr(e) && e.name === 'rename', m2)
      const c2 = c1 && after(c1.ts, (e) => isSup(e) && e.name === 'clone3', m3)
      const fl = c2 && after(c2.end, (e) => isMgr(e) && e.name === 'flock', m3)
      const x2 = fl && after(fl.ts, (e) => isMgr(e) && e.name === 'renameat2', m3)
      if (r1 && c1 && c2 && fl && x2 && c2.ts >= r1.end) {
        add(P, 'JS call → tokio worker: validate, build record', c1.ts - m1)
        add(P, 'vfork/exec supervisor (clone3 in the manager)', c1.end - c1.ts)
        add(P, '`starting` JSON: create temp, write, rename (the supervisor starts meanwhile)', r1.end - c1.end)
        add(P, '`go` → supervisor vfork/execs bash', c2.end - r1.end)
        add(P, '`started` report → manager takes the session lock', fl.ts - c2.end)
        add(P, '`running` JSON: read, write the spare, exchange', x2.end - fl.ts)
        add(P, 'index row queued + promise resolves in JS', m2 - Math.min(x2.end, m2))
        add(P, 'total (spawn() call → resolved)', m2 - m1)
      }
      // The end: the supervisor reports; the manager writes the final record, announces the
      // completion and tells the supervisor `recorded` (which then exits without a marker).
      const X = phases.exit
      const eg = after(m1, (e) => isBash(e) && e.name === 'exit_group', m3)
      const sw = eg && after(eg.ts, (e) => isSup(e) && e.name === 'wait4', m3)
      const fl3 = sw && after(sw.end, (e) => isMgr(e) && e.name === 'flock', m3)
      const x3 = fl3 && after(fl3.ts, (e) => isMgr(e) && e.name === 'renameat2', m3)
      if (eg && sw && fl3 && x3) {
        add(X, 'bash exit → supervisor reaps it (pidfd)', sw.end - eg.ts)
        add(X, '`exit` report → manager takes the session lock', fl3.ts - sw.end)
        add(X, 'final JSON: read, write the spare, exchange', x3.end - fl3.ts)
        add(X, 'index row queued + preview read + event reaches JS', m3 - x3.end)
        add(X, 'total (bash exit → completion event)', m3 - eg.ts)
      }
    }
    const m4 = at(4, i)
    const m5 = at(5, i)
    const m6 = at(6, i)
    if (m4 != null && m5 != null && m6 != null) {
      const B = phases.baseSpawn
      const cl = after(m4, (e) => e.name === 'clone' && e.comm === 'node', m5)
      const ex = cl && after(cl.ts, (e) => isBash(e) && e.name === 'execve', m6)
      if (cl && ex) {
        add(B, 'open .stdout + .stderr, build the spawn (JS)', cl.ts - m4)
        add(B, 'fork (clone in the main thread)', cl.end - cl.ts)
        add(B, 'child: PATH search + exec bash', ex.end - cl.end)
        add(B, "'spawn' event + metadata writeFileSync", m5 - ex.end)
        add(B, 'total (call → spawned)', m5 - m4)
      }
      const E = phases.baseExit
      const eg = after(m4, (e) => isBash(e) && e.name === 'exit_group', m6)
      const wt = eg && after(eg.ts, (e) => e.name === 'wait4' && e.comm === 'node', m6)
      if (eg && wt) {
        add(E, 'bash exit → libuv SIGCHLD → waitpid', wt.end - eg.ts)
        add(E, "'exit' event + metadata writeFileSync", m6 - wt.end)
        add(E, 'total (bash exit → exit event)', m6 - eg.ts)
      }
    }
    const m8 = at(8, i)
    if (m8 != null) {
      const A = phases.adopt
      // The adopting manager wakes when the marker is renamed into the session directory.
      // Tasks end 80 ms apart: every search stays within 50-70 ms of the wait() resolving, so
      // that the previous task's syscalls are never taken for this one's.
      const r = before(m8, (e) => isMgr(e) && e.name === 'renameat2', m8 - 50)
      const fl = r && before(r.ts, (e) => isMgr(e) && e.name === 'flock', m8 - 50)
      const sr = fl && before(fl.ts, (e) => isSup(e) && e.name === 'rename', m8 - 60)
      // The bash this supervisor reaped (wait4's upid), so that tasks ending close together
      // are not mixed up.
      const sw = sr && before(sr.ts, (e) => e.tid === sr.tid && e.name === 'wait4' && /upid: \d+/.test(e.text), m8 - 60)
      const bashPid = sw && Number(/upid: (\d+)/.exec(sw.text)[1])
      const eg = bashPid && before(sw.ts, (e) => e.tid === bashPid && e.name === 'exit_group', m8 - 70)
      if (r && fl && sr && sw && eg) {
        add(A, 'bash exit → supervisor has renamed its exit marker into place', sr.end - eg.ts)
        add(A, 'marker renamed → the adopting manager wakes (inotify) and takes the lock', fl.ts - sr.end)
        add(A, 'final JSON: read, write the spare, exchange', r.end - fl.ts)
        add(A, 'wait() resolves in JS', m8 - r.end)
        add(A, 'total (bash exit → wait() resolved)', m8 - eg.ts)
      }
    }
  }
  return phases
}

function table(title, group) {
  const rows = Object.entries(group)
  if (!rows.length) return `${title}: no complete samples\n`
  const n = Math.max(...rows.map(([, v]) => v.length))
  return [
    `**${title}** (n=${n}, ms)`,
    '',
    '| phase | p50 | p90 |',
    '|---|---|---|',
    ...rows.map(([k, v]) => `| ${k} | ${percentile(v, 50).toFixed(2)} | ${percentile(v, 90).toFixed(2)} |`),
    '',
  ].join('\n')
}

if (process.argv[2] === '--workload') {
  await workload()
  process.exit(0)
} else {
  const out = join(os.tmpdir(), `bgshell-breakdown-${process.pid}.txt`)
  const self = fileURLToPath(import.meta.url)
  try {
    execFileSync(
      'perf',
      ['trace', '-T', '-e', 'getpriority,fsync,rename,renameat2,clone3,clone,execve,exit_group,flock,wait4', '-o', out, '--', process.execPath, self, '--workload'],
      { stdio: ['ignore', 'inherit', 'inherit'], env: { ...process.env, BREAKDOWN_N: String(N) } },
    )
  } catch (e) {
    console.error(`perf trace failed (needs perf and root): ${e.message}`)
    process.exit(1)
  }
  const phases = analyse(parse(out))
  rmSync(out, { force: true })
  console.log(`perf trace breakdown, ${new Date().toISOString()}, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}\n`)
  console.log(table('bgshell spawn()', phases.spawn))
  console.log(table('baseline spawn', phases.baseSpawn))
  console.log(table('bgshell exit detection', phases.exit))
  console.log(table('baseline exit detection', phases.baseExit))
  console.log(table('bgshell exit detection of an adopted task (after replay)', phases.adopt))
}
