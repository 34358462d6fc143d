// Installable without a toolchain: `npm pack` ships the built addon and the supervisor, the
// tarball installs into a fresh project with no Rust on PATH, and a spawn/wait smoke works there
// under Node and under Bun. Also: the loader's error when no binary matches this platform.
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawnSync } from 'node:child_process'
import { copyFileSync, existsSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { delimiter, join } from 'node:path'
import { root, tempDir } from './helpers.mjs'

const isBun = Boolean(process.versions.bun)
const TIMEOUT = { timeout: 120_000 }

/** PATH without any directory holding cargo, rustc or rustup: what a user without Rust has. */
const toolchainFree = (process.env.PATH ?? '')
  .split(delimiter)
  .filter((dir) => dir && !['cargo', 'rustc', 'rustup'].some((tool) => existsSync(join(dir, tool))))
  .join(delimiter)
const bareEnv = { ...process.env, PATH: toolchainFree }
delete bareEnv.BGSHELL_SUPERVISOR
delete bareEnv.BGSHELL_HOME

/** Absolute path of `name` on the toolchain-free PATH, or null. */
function which(name) {
  const r = spawnSync('sh', ['-c', `command -v ${name}`], { env: bareEnv, encoding: 'utf8' })
  return r.status === 0 ? r.stdout.trim() : null
}

const nodeBin = isBun ? which('node') : process.execPath
const bunBin = isBun ? process.execPath : join(root, 'node_modules', '.bin', 'bun')

/** The tarball and the installed project, made once and shared by the tests below. */
let prepared
function prepare() {
  prepared ??= (async () => {
    const work = tempDir('bgshell-pack-')
    const packJson = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', work], {
      cwd: root,
      env: bareEnv,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const [pack] = JSON.parse(packJson)
    const tarball = join(work, pack.filename)
    const app = join(work, 'app')
    execFileSync('mkdir', ['-p', app])
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }))
    const started = Date.now()
    execFileSync('npm', ['install', tarball, '--ignore-scripts', '--offline', '--no-audit', '--no-fund'], {
      cwd: app,
      env: bareEnv,
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    return { work, pack, tarball, app, installMs: Date.now() - started }
  })()
  return prepared
}

after(async () => {
  if (prepared) rmSync((await prepared).work, { recursive: true, force: true })
})

const smoke = `
import { TaskManager } from 'bgshell'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
const m = new TaskManager({ storageDir: mkdtempSync(join(tmpdir(), 'bgshell-smoke-')) })
const t = await m.spawn({ sessionId: 'smoke', command: 'echo smoke-out; echo smoke-err >&2; exit 7' })
const done = await m.wait(t.taskId, { timeoutMs: 20000 })
const out = await m.readOutput(t.taskId)
const run = await m.run({ sessionId: 'smoke', command: 'echo ran', waitMs: 20000 })
await m.close()
console.log(JSON.stringify({ status: done.status, exitCode: done.exitCode, stdout: out.data, run: run.output, promoted: run.promoted }))
`

test('the toolchain-free PATH really hides cargo and rustc', () => {
  assert.equal(which('cargo'), null, 'cargo is still on the reduced PATH')
  assert.equal(which('rustc'), null, 'rustc is still on the reduced PATH')
  assert.ok(which('npm'), 'npm must stay reachable')
})

test('npm pack ships the built addon, the supervisor, the loader and the types, and nothing else', TIMEOUT, async () => {
  const { pack } = await prepare()
  const files = new Map(pack.files.map((f) => [f.path, f]))
  const nodeFiles = [...files.keys()].filter((p) => p.endsWith('.node'))
  assert.ok(nodeFiles.length >= 1, `no .node in the tarball: ${[...files.keys()].join(', ')}`)
  for (const need of ['index.js', 'index.d.ts', 'package.json', 'bgshell-supervisor']) {
    assert.ok(files.has(need), `${need} missing from the tarball: ${[...files.keys()].join(', ')}`)
  }
  assert.ok(files.get('bgshell-supervisor').mode & 0o111, 'bgshell-supervisor is not executable in the tarball')
  for (const path of files.keys()) {
    assert.ok(!/^(src|target|__test__|examples|scripts|bench)\//.test(path) && !path.endsWith('.rs'), `${path} should not be published`)
  }
})

test('the tarball installs into a fresh project with --ignore-scripts and no Rust toolchain', TIMEOUT, async () => {
  const { app, pack } = await prepare()
  const installed = join(app, 'node_modules', 'bgshell')
  const nodeFile = pack.files.find((f) => f.path.endsWith('.node')).path
  for (const f of ['index.js', 'index.d.ts', nodeFile, 'bgshell-supervisor']) {
    assert.ok(existsSync(join(installed, f)), `${f} not installed`)
  }
  assert.ok(statSync(join(installed, 'bgshell-supervisor')).mode & 0o111, 'installed supervisor is not executable')
  assert.ok(!existsSync(join(installed, 'target')), 'nothing was built at install time')
})

for (const [runtime, bin] of [
  ['Node', nodeBin],
  ['Bun', bunBin],
]) {
  test(`spawn/wait/readOutput/run smoke in the installed package under ${runtime}`, TIMEOUT, async (t) => {
    if (!bin || !existsSync(bin)) return t.skip(`${runtime} binary not found (looked for ${bin})`)
    const { app } = await prepare()
    const file = join(app, 'smoke.mjs')
    writeFileSync(file, smoke)
    const out = execFileSync(bin, [file], { cwd: app, env: bareEnv, encoding: 'utf8', timeout: 60_000 })
    const res = JSON.parse(out.trim().split('\n').at(-1))
    assert.deepEqual(res, { status: 'failed', exitCode: 7, stdout: 'smoke-out\n', run: 'ran\n', promoted: false })
  })
}

test('with no binary for this platform the loader throws an Error naming the missing binary', () => {
  const dir = tempDir('bgshell-nobinary-')
  try {
    copyFileSync(join(root, 'index.js'), join(dir, 'index.js'))
    const require = createRequire(join(dir, 'index.js'))
    let error
    try {
      require('./index.js')
    } catch (e) {
      error = e
    }
    assert.ok(error instanceof Error, 'loading index.js with no .node next to it must throw')
    assert.match(error.message, /Cannot find native binding/)
    // The top message is napi-rs's generic one; the platform and the file tried are in `cause`.
    const chain = []
    for (let e = error; e; e = e.cause) chain.push(String(e.message))
    const text = chain.join('\n')
    assert.ok(text.includes(`${process.platform}-${process.arch}`), `no ${process.platform}-${process.arch} in:\n${text}`)
    assert.match(text, /bgshell\.[a-z0-9-]+\.node/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

test('an addon installed without its supervisor fails spawn with E_SPAWN naming bgshell-supervisor', TIMEOUT, () => {
  const dir = tempDir('bgshell-nosupervisor-')
  try {
    copyFileSync(join(root, 'index.js'), join(dir, 'index.js'))
    for (const f of readdirSync(root).filter((f) => f.endsWith('.node'))) copyFileSync(join(root, f), join(dir, f))
    const script = `const { TaskManager } = require(${JSON.stringify(join(dir, 'index.js'))})
const m = new TaskManager({ storageDir: ${JSON.stringify(join(dir, 'store'))} })
m.spawn({ sessionId: 's', command: 'true' }).then(
  () => console.log(JSON.stringify({ ok: true })),
  (e) => console.log(JSON.stringify({ code: e.code, message: e.message })))`
    const out = execFileSync(process.execPath, ['-e', script], { env: bareEnv, encoding: 'utf8', timeout: 30_000 })
    const res = JSON.parse(out.trim().split('\n').at(-1))
    assert.equal(res.code, 'E_SPAWN')
    assert.match(res.message, /bgshell-supervisor/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
