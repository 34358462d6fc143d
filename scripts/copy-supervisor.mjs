// Puts the supervisor binary that cargo built next to the .node file, where the addon looks
// for it at run time (src/launcher.rs, locate_supervisor). `napi build` may build into
// target/<triple>/<profile> or target/<profile>: take the newest one.
import { copyFileSync, chmodSync, statSync, readdirSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const profile = process.argv[2] === 'debug' ? 'debug' : 'release'
const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, 'target')
const dirs = [join(targetDir, profile)]
for (const entry of readdirSync(targetDir, { withFileTypes: true })) {
  if (entry.isDirectory() && entry.name.includes('-')) dirs.push(join(targetDir, entry.name, profile))
}
const candidates = dirs
  .map((d) => join(d, 'bgshell-supervisor'))
  .flatMap((p) => {
    try {
      return [{ p, mtime: statSync(p).mtimeMs }]
    } catch {
      return []
    }
  })
  .sort((a, b) => b.mtime - a.mtime)
if (candidates.length === 0) {
  console.error(`bgshell-supervisor was not built (looked in ${dirs.join(', ')})`)
  process.exit(1)
}
const to = join(root, 'bgshell-supervisor')
copyFileSync(candidates[0].p, to)
chmodSync(to, 0o755)
console.log(`copied ${candidates[0].p} -> ${to}`)
