// Publishing end to end: a private registry (verdaccio, offline: no uplinks) on 127.0.0.1, the
// documented release command publishing there (the platform package, bgshell, packages/*), then
// `npm install bgshell` by name in a fresh project with no Rust toolchain on PATH, and a pipes task
// and a pty task run from that install under Node and under Bun. Uses the build in the repository
// root (`npm install` made it), so the release runs with --no-build.
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync, spawn } from 'node:child_process'
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { createServer } from 'node:net'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { bareEnv, bunBin, nodeBin, root, tempDir } from './helpers.mjs'

const VERDACCIO = '6.8.0'
const TIMEOUT = { timeout: 240_000 }
const cache = join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'bgshell-test')
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))

let work // temp dir: verdaccio's config and storage, the npm config and cache, the app
let registry // { pid, url, child }
let env // bareEnv plus the temp npm config

/** verdaccio's entry script, installed once into ~/.cache/bgshell-test (moved into place whole). */
function verdaccioScript() {
  const dir = join(cache, `verdaccio-${VERDACCIO}`)
  const script = join(dir, 'node_modules', 'verdaccio', 'bin', 'verdaccio')
  if (existsSync(script)) return script
  const staging = `${dir}.partial-${process.pid}`
  mkdirSync(staging, { recursive: true })
  try {
    execFileSync('npm', ['install', '--prefix', staging, '--no-save', '--no-audit', '--no-fund', '--ignore-scripts', `verdaccio@${VERDACCIO}`], {
      env: bareEnv,
      stdio: ['ignore', 'ignore', 'pipe'],
    })
    if (!existsSync(script)) renameSync(staging, dir)
  } finally {
    rmSync(staging, { recursive: true, force: true })
  }
  return script
}

/**
 * One HTTP request on its own connection. Not fetch(): its pooled keep-alive connection may have
 * been closed by verdaccio during a long publish, and the next request then fails.
 */
function request(method, url, body) {
  return new Promise((resolve, reject) => {
    const headers = body ? { 'content-type': 'application/json' } : {}
    const req = httpRequest(url, { method, headers, agent: false }, (res) => {
      let text = ''
      res.setEncoding('utf8')
      res.on('data', (chunk) => (text += chunk))
      res.on('end', () => resolve({ status: res.statusCode, text }))
      res.on('error', reject)
    })
    req.on('error', reject)
    req.end(body && JSON.stringify(body))
  })
}

function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** Starts verdaccio and resolves once it answers /-/ping; rejects with its log if it exits first. */
async function startRegistry() {
  const script = verdaccioScript()
  const port = await freePort()
  const url = `http://127.0.0.1:${port}/`
  const dir = join(work, 'verdaccio')
  mkdirSync(dir)
  const config = join(dir, 'config.yaml')
  writeFileSync(
    config,
    [
      `storage: ${join(dir, 'storage')}`,
      'auth:',
      '  htpasswd:',
      `    file: ${join(dir, 'htpasswd')}`,
      'uplinks: {}',
      'packages:',
      "  '**':",
      '    access: $all',
      '    publish: $authenticated',
      'log: { type: stdout, format: pretty, level: warn }',
      '',
    ].join('\n'),
  )
  const logFile = join(dir, 'log')
  const log = openSync(logFile, 'w')
  const child = spawn(nodeBin, [script, '--config', config, '--listen', `127.0.0.1:${port}`], { env: bareEnv, stdio: ['ignore', log, log] })
  closeSync(log)
  registry = { pid: child.pid, url, child }
  let exited = false
  child.once('exit', () => (exited = true))
  const deadline = Date.now() + 60_000
  while (Date.now() < deadline) {
    if (exited) throw new Error(`verdaccio exited during startup:\n${readFileSync(logFile, 'utf8')}`)
    try {
      if ((await request('GET', `${url}-/ping`)).status === 200) return
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`verdaccio did not answer on ${url} within 60 s:\n${readFileSync(logFile, 'utf8')}`)
}

/** Adds a user (htpasswd) and returns its token, as `npm adduser` would. */
async function addUser() {
  const res = await request('PUT', `${registry.url}-/user/org.couchdb.user:bgshell-test`, {
    name: 'bgshell-test',
    password: 'bgshell-test-password',
  })
  assert.equal(res.status, 201, `adding a user failed: ${res.text}`)
  return JSON.parse(res.text).token
}

async function stopRegistry() {
  if (!registry || registry.child.exitCode !== null || registry.child.signalCode !== null) return
  const exited = new Promise((r) => registry.child.once('exit', r))
  process.kill(registry.pid, 'SIGTERM')
  const killer = setTimeout(() => process.kill(registry.pid, 'SIGKILL'), 2000)
  await exited
  clearTimeout(killer)
}
// Should the test process end without `after` (an uncaught error), verdaccio must not outlive it.
const killOnExit = () => registry?.child.exitCode === null && registry.child.signalCode === null && process.kill(registry.pid, 'SIGKILL')
process.once('exit', killOnExit)

after(async () => {
  try {
    await stopRegistry()
  } finally {
    process.removeListener('exit', killOnExit)
    if (work) rmSync(work, { recursive: true, force: true })
  }
})

/**
 * The registry up, everything published with the release command, and bgshell installed by name
 * in a fresh project: done once, inside the first test (a hook's timeout is 5 s under Bun, and
 * the first run installs verdaccio), and shared by the others. Resolves with the project's path.
 */
let ready
function setUp() {
  ready ??= (async () => {
    work = tempDir('bgshell-publish-')
    await startRegistry()
    const token = await addUser()
    const npmrc = join(work, 'npmrc')
    const host = registry.url.replace(/^http:/, '')
    writeFileSync(npmrc, `registry=${registry.url}\n${host}:_authToken=${token}\n`, { mode: 0o600 })
    env = { ...bareEnv, NPM_CONFIG_USERCONFIG: npmrc, NPM_CONFIG_CACHE: join(work, 'npm-cache'), NPM_CONFIG_UPDATE_NOTIFIER: 'false' }
    execFileSync('npm', ['run', 'release', '--', '--registry', registry.url, '--no-build'], { cwd: root, env, stdio: ['ignore', 'pipe', 'pipe'] })
    const app = join(work, 'app')
    mkdirSync(app)
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }))
    // Scripts are not ignored: nothing in bgshell may try to build at install time.
    execFileSync('npm', ['install', 'bgshell', '--no-audit', '--no-fund'], { cwd: app, env, stdio: ['ignore', 'pipe', 'pipe'] })
    return app
  })()
  return ready
}

test('the release command publishes the platform package, bgshell (naming it) and every packages/*', TIMEOUT, async () => {
  await setUp()
  const meta = async (name) => {
    const res = await request('GET', `${registry.url}${name.replace('/', '%2f')}`)
    assert.equal(res.status, 200, `${name} is not on the registry`)
    return JSON.parse(res.text)
  }
  const platform = await meta('bgshell-linux-x64-gnu')
  assert.deepEqual(Object.keys(platform.versions), [pkg.version])
  const bgshell = await meta('bgshell')
  assert.deepEqual(bgshell.versions[pkg.version].optionalDependencies, { 'bgshell-linux-x64-gnu': pkg.version })
  const packages = join(root, 'packages')
  for (const dir of existsSync(packages) ? readdirSync(packages) : []) {
    const file = join(packages, dir, 'package.json')
    if (!existsSync(file)) continue
    const adapter = JSON.parse(readFileSync(file, 'utf8'))
    if (!adapter.private) await meta(adapter.name)
  }
})

test('`npm install bgshell` puts the binaries in the platform package and none in bgshell', TIMEOUT, async () => {
  const app = await setUp()
  const mod = join(app, 'node_modules')
  const platformDir = join(mod, 'bgshell-linux-x64-gnu')
  assert.deepEqual(readdirSync(platformDir).sort(), ['README.md', 'bgshell-supervisor', 'bgshell.linux-x64-gnu.node', 'package.json'])
  assert.ok(statSync(join(platformDir, 'bgshell-supervisor')).mode & 0o111, 'the installed supervisor is not executable')
  const rootFiles = readdirSync(join(mod, 'bgshell'))
  assert.ok(!rootFiles.some((f) => f.endsWith('.node') || f === 'bgshell-supervisor'), `binaries in bgshell: ${rootFiles}`)
  assert.ok(!existsSync(join(mod, 'bgshell', 'target')), 'nothing was built at install time')
  // The CLI, from the bin link npm made, loads the addon from the platform package too.
  const ls = execFileSync(join(mod, '.bin', 'bgshell'), ['ls', '--all', '--store', join(work, 'cli-store')], { cwd: app, env, encoding: 'utf8' })
  assert.match(ls, /^ID +STATUS +EXIT/)
})

// A pipes task and a pty task. The supervisor can only be the one beside the .node in
// node_modules/bgshell-linux-x64-gnu: bgshell has none and BGSHELL_SUPERVISOR is unset.
const smoke = `
import { TaskManager } from 'bgshell'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
const storageDir = mkdtempSync(join(tmpdir(), 'bgshell-smoke-'))
const m = new TaskManager({ storageDir })
try {
  const pipes = await m.spawn({ sessionId: 'smoke', command: 'echo hi' })
  const pipesDone = await m.wait(pipes.taskId, { timeoutMs: 20000 })
  const out = await m.readOutput(pipes.taskId)
  const pty = await m.spawn({ sessionId: 'smoke', command: 'read -r line && printf "got: %s\\n" "$line"', mode: 'pty' })
  m.write(pty.taskId, ['typed in', { key: 'enter' }])
  const echoed = await m.waitFor(pty.taskId, { pattern: 'got: typed in', timeoutMs: 20000 })
  const ptyDone = await m.wait(pty.taskId, { timeoutMs: 20000 })
  const screen = await m.screen(pty.taskId)
  console.log(JSON.stringify({ pipes: [pipesDone.status, pipesDone.exitCode, out.data], pty: [echoed.reason, ptyDone.status, ptyDone.exitCode, screen] }))
} finally {
  await m.close({ killRunning: true })
  rmSync(storageDir, { recursive: true, force: true })
}
`

for (const [runtime, bin] of [
  ['Node', nodeBin],
  ['Bun', bunBin],
]) {
  test(`a pipes task and a pty task run from the installed package under ${runtime}`, TIMEOUT, async () => {
    assert.ok(bin && existsSync(bin), `${runtime} binary not found (looked for ${bin})`)
    const app = await setUp()
    const file = join(app, 'smoke.mjs')
    writeFileSync(file, smoke)
    const out = execFileSync(bin, [file], { cwd: app, env, encoding: 'utf8', timeout: 60_000 })
    assert.deepEqual(JSON.parse(out.trim().split('\n').at(-1)), {
      pipes: ['completed', 0, 'hi\n'],
      pty: ['matched', 'completed', 0, 'typed in\ngot: typed in'],
    })
  })
}
