// Puts the supervisor binary next to the .node file, where the addon looks for it at run time
// (src/launcher.rs, locate_supervisor). On Linux with glibc it first relinks the binary
// statically: every task execs it, and without the dynamic loader (libgcc_s, libc) an exec and
// exit costs ~0.6 ms instead of ~0.85 ms here. Only the binary is rebuilt; if static linking is
// not possible (no libc.a), the dynamic binary `napi build` made is used.
// `napi build` may build into target/<triple>/<profile> or target/<profile>: take the newest one.
import { copyFileSync, rmSync, chmodSync, statSync, readdirSync } from 'node:fs'
import { execFileSync, spawnSync } from 'node:child_process'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const profile = process.argv[2] === 'debug' ? 'debug' : 'release'
const targetDir = process.env.CARGO_TARGET_DIR ?? join(root, 'target')

if (process.platform === 'linux' && process.env.BGSHELL_DYNAMIC_SUPERVISOR !== '1') {
  const host = /^host: (.+)$/m.exec(execFileSync('rustc', ['-vV'], { encoding: 'utf8' }))?.[1]
  if (host?.endsWith('-linux-gnu')) {
    const args = ['rustc', '--bin', 'bgshell-supervisor', '--target', host]
    if (profile === 'release') args.push('--release')
    args.push('--', '-C', 'target-feature=+crt-static')
    const res = spawnSync('cargo', args, { cwd: root, stdio: 'inherit' })
    if (res.status !== 0) console.error('bgshell: static link of bgshell-supervisor failed; using the dynamic binary')
  }
}
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
// Unlink first: a supervisor still running from the old binary keeps its inode (no ETXTBSY).
rmSync(to, { force: true })
copyFileSync(candidates[0].p, to)
chmodSync(to, 0o755)
console.log(`copied ${candidates[0].p} -> ${to}`)
