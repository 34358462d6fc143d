// bgshell's entry point. binding.js is the loader napi-rs generates (`napi build --platform
// --js binding.js` rewrites it): it loads `bgshell.<platform>.node` from beside itself (a build
// in this repository) or from the platform's package, `bgshell-<platform>` (an install, where
// npm, pnpm, yarn and Bun pick it from bgshell's optionalDependencies). When neither loads, its
// error blames an npm bug; this one names the platform and the package to install instead.
'use strict'

/** The platforms with a published package: built and tested (README, "Platforms and runtimes"). */
const SUPPORTED = ['linux-x64-gnu']

/** napi-rs's name for this platform, as in its package names: linux-x64-gnu, darwin-arm64, ... */
function platformName() {
  const { platform, arch } = process
  if (platform === 'win32') return `win32-${arch}-msvc`
  if (platform !== 'linux') return `${platform}-${arch}`
  let musl = false
  try {
    const header = process.report?.getReport?.()?.header
    musl = header ? !header.glibcVersionRuntime : require('fs').readFileSync('/usr/bin/ldd', 'utf8').includes('musl')
  } catch {
    // Unknown: glibc is by far the commoner.
  }
  return `linux-${arch}-${musl ? 'musl' : 'gnu'}`
}

function loadError(cause) {
  const name = platformName()
  const pkg = `bgshell-${name}`
  const { version } = require('./package.json')
  let message
  if (!SUPPORTED.includes(name)) {
    message =
      `bgshell does not support ${name} yet: it is built and tested for ${SUPPORTED.join(', ')} only, ` +
      `and there is no ${pkg} package to install (see bgshell's README, "Platforms and runtimes").`
  } else {
    let installed = false
    let reason = ''
    try {
      require.resolve(`${pkg}/package.json`)
      installed = true
      require(pkg)
    } catch (e) {
      reason = e.message
    }
    message = installed
      ? `bgshell's native addon for ${name} is installed (${pkg}) but failed to load: ${reason}`
      : `bgshell's native addon for ${name} is missing: install the package ${pkg} ` +
        `(npm install ${pkg}@${version}). bgshell lists it in optionalDependencies, so it was skipped ` +
        `if optional dependencies were omitted or the lockfile was made on another platform.`
  }
  const error = new Error(message)
  error.code = 'E_PLATFORM'
  error.cause = cause
  return error
}

let binding
try {
  binding = require('./binding.js')
} catch (error) {
  if (!/Cannot find native binding|Failed to load native binding/.test(error?.message)) throw error
  throw loadError(error)
}

// The class with its argument contract enforced at the boundary (guard.js), which reads the
// values of the string enums from the addon's exports.
const TaskManager = require('./guard.js')(binding.TaskManager, binding)
module.exports = { ...binding, TaskManager }
// Named, so that Node's CommonJS-to-ESM detection sees it: `import { TaskManager } from 'bgshell'`.
module.exports.TaskManager = TaskManager
