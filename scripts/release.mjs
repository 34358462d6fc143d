// Publishes a release: `npm run release -- [--registry URL] [--tag TAG] [--no-build] [--dry-run]`.
// 1. builds the addon and the supervisor (`npm run build`; --no-build reuses the ones in the
//    repository root);
// 2. copies them into each platform package, npm/<platform>/ (one per napi.targets entry), and
//    publishes it (its version must be bgshell's: `npm version` runs `napi version`, which syncs it);
// 3. publishes bgshell from a staging copy whose package.json lists those packages in
//    optionalDependencies (the repository's package.json does not, so that `npm install` here
//    never fetches a published binary);
// 4. publishes every packages/*/ that is not private (the harness adapters), after bgshell.
// Credentials come from npm's own config (~/.npmrc, NPM_CONFIG_USERCONFIG, ...). bgshell and its
// platform packages publish with --ignore-scripts: `prepare` would build Rust again, and the
// binaries are already in place. The adapters' own scripts (e.g. a TypeScript build) do run.
import { execFileSync } from 'node:child_process'
import { existsSync, readdirSync, rmSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseArgs } from 'node:util'
import { preparePlatforms, readJson, stageRoot } from './stage.mjs'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { values: opts } = parseArgs({
  options: {
    registry: { type: 'string' },
    tag: { type: 'string' },
    'no-build': { type: 'boolean' },
    'dry-run': { type: 'boolean' },
  },
})

const npm = (args) => execFileSync('npm', args, { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' })

const publishArgs = [
  ...(opts.registry ? ['--registry', opts.registry] : []),
  ...(opts.tag ? ['--tag', opts.tag] : []),
  ...(opts['dry-run'] ? ['--dry-run'] : []),
]
function publish(dir, { ignoreScripts = true } = {}) {
  const { name, version } = readJson(join(dir, 'package.json'))
  console.log(`release: publishing ${name}@${version}${opts.registry ? ` to ${opts.registry}` : ''}`)
  npm(['publish', dir, ...publishArgs, ...(ignoreScripts ? ['--ignore-scripts'] : [])])
}

if (!opts['no-build']) execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' })

// 2. The platform packages, each with its .node and its supervisor.
const { dirs, optionalDependencies } = preparePlatforms(root)
for (const dir of dirs) publish(dir)

// 3. bgshell itself, naming the platform packages.
const stage = stageRoot(root, optionalDependencies)
try {
  publish(stage)
} finally {
  rmSync(stage, { recursive: true, force: true })
}

// 4. The adapters, which depend on bgshell.
const packages = join(root, 'packages')
const adapters = existsSync(packages) ? readdirSync(packages).sort() : []
for (const name of adapters) {
  const dir = join(packages, name)
  if (!existsSync(join(dir, 'package.json')) || readJson(join(dir, 'package.json')).private) continue
  publish(dir, { ignoreScripts: false })
}
console.log('release: done')
