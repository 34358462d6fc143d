// Runs the Rust unit tests for the host triple, which is how `napi build` builds the addon:
// cargo then reuses the release artifacts of `npm install` instead of building them again.
import { execFileSync } from 'node:child_process'

const host = execFileSync('rustc', ['-vV'], { encoding: 'utf8' }).match(/^host: (.+)$/m)[1]
// --workspace: the crates under crates/ (platform seam, shared code, supervisor) have their own tests.
execFileSync('cargo', ['test', '--workspace', '--release', '--target', host, ...process.argv.slice(2)], { stdio: 'inherit' })
