// Puts the supervisor binary that cargo built next to the .node file, where the addon looks
// for it at run time (src/launcher.rs, locate_supervisor).
import { copyFileSync, chmodSync } from 'node:fs'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const profile = process.argv[2] === 'debug' ? 'debug' : 'release'
const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, 'target')
const from = join(targetDir, profile, 'bgshell-supervisor')
const to = join(root, 'bgshell-supervisor')
copyFileSync(from, to)
chmodSync(to, 0o755)
console.log(`copied ${from} -> ${to}`)
