// Builds the supervisor (crates/bgshell-supervisor; `napi build` builds only the addon's package)
// and puts it next to the .node file, where the addon looks for it at run time
// (src/launcher.rs, locate_supervisor). On Linux with glibc it links the binary statically:
// every task execs it, and without the dynamic loader (libgcc_s, libc) an exec and exit costs
// ~0.6 ms instead of ~0.85 ms here. If static linking is not possible (no libc.a), or
// BGSHELL_DYNAMIC_SUPERVISOR=1, it builds the ordinary dynamic binary instead.
// It builds for the host triple, as `napi build --platform` does, so the two share the
// dependencies' artifacts, and takes the binary's path from cargo's own report.
import { copyFileSync, rmSync, chmodSync } from 'node:fs'
import { execFileSync, spawnSync } from 'node:child_process'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const profile = process.argv[2] === 'debug' ? 'debug' : 'release'
const host = /^host: (.+)$/m.exec(execFileSync('rustc', ['-vV'], { encoding: 'utf8' }))?.[1]

// cargo <command> for the supervisor's package; the path of the binary it built, or null.
function cargo(command, extra = []) {
  const args = [command, '-p', 'bgshell-supervisor', '--bin', 'bgshell-supervisor', '--message-format=json-render-diagnostics']
  if (host) args.push('--target', host)
  if (profile === 'release') args.push('--release')
  args.push(...extra)
  const res = spawnSync('cargo', args, { cwd: root, stdio: ['inherit', 'pipe', 'inherit'], encoding: 'utf8', maxBuffer: 64 << 20 })
  if (res.status !== 0) return null
  const built = res.stdout
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line))
    .find((m) => m.reason === 'compiler-artifact' && m.target?.name === 'bgshell-supervisor' && m.executable)
  return built?.executable ?? null
}

let binary = null
if (process.platform === 'linux' && host?.endsWith('-linux-gnu') && process.env.BGSHELL_DYNAMIC_SUPERVISOR !== '1') {
  binary = cargo('rustc', ['--', '-C', 'target-feature=+crt-static'])
  if (!binary) console.error('bgshell: static link of bgshell-supervisor failed; building the dynamic binary')
}
binary ??= cargo('build')
if (!binary) {
  console.error('bgshell-supervisor could not be built (cargo build -p bgshell-supervisor failed)')
  process.exit(1)
}
const to = join(root, 'bgshell-supervisor')
// Unlink first: a supervisor still running from the old binary keeps its inode (no ETXTBSY).
rmSync(to, { force: true })
copyFileSync(binary, to)
chmodSync(to, 0o755)
console.log(`copied ${binary} -> ${to}`)
