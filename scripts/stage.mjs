// What a release publishes, staged from the repository: shared by scripts/release.mjs and the
// tests that install bgshell by name (__test__/harness-lib.mjs).
// - preparePlatforms: copies the built `.node` and `bgshell-supervisor` into each platform
//   package, npm/<platform>/ (one per napi.targets entry), checking its version is bgshell's;
// - stageRoot: a copy of bgshell (the files `npm pack` would take) whose package.json lists the
//   platform packages in optionalDependencies (the repository's does not, so that `npm install`
//   here never fetches a published binary).
import { execFileSync } from 'node:child_process'
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { parseTriple } from '@napi-rs/cli'

export const readJson = (file) => JSON.parse(readFileSync(file, 'utf8'))
const writeJson = (file, value) => writeFileSync(file, `${JSON.stringify(value, null, 2)}\n`)

/** The platform package directories, filled; and the optionalDependencies naming them. */
export function preparePlatforms(root) {
  const pkg = readJson(join(root, 'package.json'))
  const { binaryName } = pkg.napi
  const dirs = []
  const optionalDependencies = {}
  for (const triple of pkg.napi.targets) {
    const platform = parseTriple(triple).platformArchABI
    const dir = join(root, 'npm', platform)
    const nodeFile = `${binaryName}.${platform}.node`
    for (const file of [nodeFile, 'bgshell-supervisor']) {
      if (!existsSync(join(root, file))) {
        throw new Error(`${file} is missing from ${root}: build it on ${platform} first (npm run build)`)
      }
      copyFileSync(join(root, file), join(dir, file))
    }
    chmodSync(join(dir, 'bgshell-supervisor'), 0o755)
    const platformPkg = readJson(join(dir, 'package.json'))
    if (platformPkg.version !== pkg.version) {
      throw new Error(`${platformPkg.name} is at ${platformPkg.version}, bgshell at ${pkg.version}: run \`npx napi version\` (\`npm version\` does)`)
    }
    dirs.push(dir)
    optionalDependencies[platformPkg.name] = pkg.version
  }
  return { dirs, optionalDependencies }
}

/** A staging directory holding bgshell as it is published; the caller removes it. */
export function stageRoot(root, optionalDependencies) {
  const pkg = readJson(join(root, 'package.json'))
  const stage = mkdtempSync(join(tmpdir(), 'bgshell-stage-'))
  const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' })
  const [packed] = JSON.parse(out)
  for (const { path } of packed.files) {
    mkdirSync(dirname(join(stage, path)), { recursive: true })
    copyFileSync(join(root, path), join(stage, path))
  }
  writeJson(join(stage, 'package.json'), { ...pkg, optionalDependencies: { ...pkg.optionalDependencies, ...optionalDependencies } })
  return stage
}
