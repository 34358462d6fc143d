// What the packages hold and what the loader says when they are incomplete. bgshell's tarball
// carries the JS, types and CLI; the platform package, npm/linux-x64-gnu, carries the addon and the
// supervisor (publish.test.mjs installs both from a registry and runs tasks from them).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { bareEnv, nodeBin, root, tempDir, which } from './helpers.mjs'

const TIMEOUT = { timeout: 60_000 }
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const platformPkg = JSON.parse(readFileSync(join(root, 'npm', 'linux-x64-gnu', 'package.json'), 'utf8'))

/** The files `npm pack` would put in the tarball of `dir`, with their modes. */
function packed(dir) {
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: dir, env: bareEnv, encoding: 'utf8' })
  return new Map(JSON.parse(out)[0].files.map((f) => [f.path, f.mode]))
}

/**
 * Requires a copy of the loader (index.js, binding.js, package.json) in a child, from a directory
 * with no .node; `setup(dir)` may add files first, `preload` runs before the require.
 */
function loadCopy({ preload = '', setup } = {}) {
  const dir = tempDir('bgshell-nobinary-')
  try {
    for (const f of ['index.js', 'binding.js', 'guard.js', 'package.json']) copyFileSync(join(root, f), join(dir, f))
    setup?.(dir)
    const script = `${preload}
try { require(${JSON.stringify(join(dir, 'index.js'))}); console.log(JSON.stringify({ loaded: true })) }
catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, isError: e instanceof Error, cause: Boolean(e.cause) })) }`
    const out = execFileSync(nodeBin, ['-e', script], { env: bareEnv, encoding: 'utf8', timeout: 30_000 })
    return JSON.parse(out.trim().split('\n').at(-1))
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

test('the toolchain-free environment the package tests use really hides cargo and rustc', () => {
  assert.equal(which('cargo'), null, 'cargo is still on the reduced PATH')
  assert.equal(which('rustc'), null, 'rustc is still on the reduced PATH')
  assert.ok(which('npm'), 'npm must stay reachable')
})

test("bgshell's tarball holds the loader, types and CLI, and no binary", TIMEOUT, () => {
  const files = packed(root)
  for (const need of ['index.js', 'binding.js', 'guard.js', 'index.d.ts', 'package.json', 'bin/bgshell.js']) {
    assert.ok(files.has(need), `${need} missing from the tarball: ${[...files.keys()].join(', ')}`)
  }
  assert.ok(files.get('bin/bgshell.js') & 0o111, 'the CLI is not executable in the tarball')
  for (const path of files.keys()) {
    assert.ok(!path.endsWith('.node') && path !== 'bgshell-supervisor', `${path} belongs in the platform package`)
    assert.ok(!/^(src|target|__test__|examples|scripts|bench|npm|packages)\//.test(path) && !path.endsWith('.rs'), `${path} should not be published`)
  }
  // The repository lists no optionalDependencies: scripts/release.mjs adds them to what it publishes.
  assert.equal(pkg.optionalDependencies, undefined)
})

test('the platform package declares linux x64 glibc and ships the addon and the supervisor', () => {
  assert.equal(platformPkg.name, 'bgshell-linux-x64-gnu')
  assert.equal(platformPkg.version, pkg.version)
  assert.deepEqual([platformPkg.os, platformPkg.cpu, platformPkg.libc], [['linux'], ['x64'], ['glibc']])
  assert.equal(platformPkg.main, 'bgshell.linux-x64-gnu.node')
  assert.deepEqual(platformPkg.files.sort(), ['bgshell-supervisor', 'bgshell.linux-x64-gnu.node'])
  assert.deepEqual(pkg.napi.targets, ['x86_64-unknown-linux-gnu'], 'only the built and tested target is declared')
})

test('with no addon installed the loader names the platform and the package to install', () => {
  const res = loadCopy()
  assert.equal(res.isError, true)
  assert.equal(res.code, 'E_PLATFORM')
  assert.equal(res.cause, true, "napi-rs's own errors stay in `cause`")
  assert.match(res.message, /linux-x64-gnu/)
  assert.match(res.message, new RegExp(`npm install bgshell-linux-x64-gnu@${pkg.version.replaceAll('.', '\\.')}`))
})

test('a platform package that is installed but cannot load is named, with the reason', () => {
  const res = loadCopy({
    setup(dir) {
      const installed = join(dir, 'node_modules', 'bgshell-linux-x64-gnu')
      mkdirSync(installed, { recursive: true })
      writeFileSync(join(installed, 'package.json'), JSON.stringify({ ...platformPkg, main: 'bgshell.linux-x64-gnu.node' }))
      writeFileSync(join(installed, 'bgshell.linux-x64-gnu.node'), 'not a shared object')
    },
  })
  assert.equal(res.code, 'E_PLATFORM')
  assert.match(res.message, /for linux-x64-gnu is installed \(bgshell-linux-x64-gnu\) but failed to load: .*(invalid ELF header|too short)/)
})

test('on a platform without a package the loader says it is unsupported and lists what is', () => {
  const preload = `Object.defineProperty(process, 'platform', { value: 'darwin' }); Object.defineProperty(process, 'arch', { value: 'arm64' })`
  const res = loadCopy({ preload })
  assert.equal(res.code, 'E_PLATFORM')
  assert.match(res.message, /does not support darwin-arm64/)
  assert.match(res.message, /linux-x64-gnu only/)
  assert.match(res.message, /no bgshell-darwin-arm64 package/)
})

test('an addon installed without its supervisor fails spawn with E_SPAWN naming bgshell-supervisor', TIMEOUT, () => {
  const dir = tempDir('bgshell-nosupervisor-')
  try {
    for (const f of ['index.js', 'binding.js', 'guard.js', 'package.json']) copyFileSync(join(root, f), join(dir, f))
    for (const f of readdirSync(root).filter((f) => f.endsWith('.node'))) copyFileSync(join(root, f), join(dir, f))
    const script = join(dir, 'spawn.cjs')
    writeFileSync(
      script,
      `const { TaskManager } = require('./index.js')
const m = new TaskManager({ storageDir: ${JSON.stringify(join(dir, 'store'))} })
m.spawn({ sessionId: 's', command: 'true' }).then(
  () => console.log(JSON.stringify({ ok: true })),
  (e) => console.log(JSON.stringify({ code: e.code, message: e.message })))`,
    )
    const out = execFileSync(nodeBin, [script], { env: bareEnv, encoding: 'utf8', timeout: 30_000 })
    const res = JSON.parse(out.trim().split('\n').at(-1))
    assert.equal(res.code, 'E_SPAWN')
    assert.match(res.message, /bgshell-supervisor/)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})
