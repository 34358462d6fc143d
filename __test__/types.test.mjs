// Types a strict TypeScript project accepts: fixtures/ts-consumer/consumer.ts uses the whole API
// and must type-check against index.d.ts with strict + isolatedModules + noEmit, resolved as a
// consumer resolves it (node_modules/bgshell -> this package, "types": "index.d.ts"); files in
// fixtures/ts-consumer/invalid/ must be rejected, which proves the check can fail.
import { after, test } from 'node:test'
import assert from 'node:assert/strict'
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { createRequire } from 'node:module'
import { TaskManager, root, tempDir } from './helpers.mjs'

const fixture = join(root, '__test__', 'fixtures', 'ts-consumer')
const tscJs = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
const NO_TSC = `TypeScript is not installed at ${tscJs}: add "typescript" to devDependencies and run npm install`
const TIMEOUT = { timeout: 120_000 }

/** The fixture copied to a temp dir with node_modules/bgshell linked to this package. */
let project
function consumerProject() {
  if (!project) {
    project = tempDir('bgshell-ts-consumer-')
    cpSync(fixture, project, { recursive: true })
    mkdirSync(join(project, 'node_modules'))
    symlinkSync(root, join(project, 'node_modules', 'bgshell'), 'dir')
  }
  return project
}

/** Runs tsc on a tsconfig written into the consumer project; returns { status, output }. */
function tsc(name, config) {
  const dir = consumerProject()
  writeFileSync(join(dir, name), JSON.stringify(config, null, 2))
  // tsc is plain JS: Node runs it, and so does Bun when it is the test runtime.
  const r = spawnSync(process.execPath, [tscJs, '-p', name, '--pretty', 'false'], { cwd: dir, encoding: 'utf8', timeout: 100_000 })
  return { status: r.status, output: `${r.stdout}${r.stderr}` }
}

test('the consumer using the whole API type-checks with strict, isolatedModules, noEmit', TIMEOUT, (t) => {
  if (!existsSync(tscJs)) return t.skip(NO_TSC)
  const base = JSON.parse(readFileSync(join(fixture, 'tsconfig.json'), 'utf8')).compilerOptions
  assert.equal(base.strict, true)
  assert.equal(base.isolatedModules, true)
  assert.equal(base.noEmit, true)
  assert.notEqual(base.skipLibCheck, true, 'index.d.ts itself must be checked')
  const { status, output } = tsc('tsconfig.json', JSON.parse(readFileSync(join(fixture, 'tsconfig.json'), 'utf8')))
  assert.equal(status, 0, `tsc failed:\n${output}`)
})

test('it also type-checks with exactOptionalPropertyTypes, noUncheckedIndexedAccess and verbatimModuleSyntax', TIMEOUT, (t) => {
  if (!existsSync(tscJs)) return t.skip(NO_TSC)
  const { status, output } = tsc('tsconfig.strictest.json', {
    extends: './tsconfig.json',
    compilerOptions: {
      exactOptionalPropertyTypes: true,
      noUncheckedIndexedAccess: true,
      noPropertyAccessFromIndexSignature: true,
      verbatimModuleSyntax: true,
    },
    // consumer.cts is CommonJS, which verbatimModuleSyntax rejects by design.
    files: ['consumer.ts'],
  })
  assert.equal(status, 0, `tsc failed:\n${output}`)
})

const invalid = {
  'list-status.ts': /list-status\.ts\(\d+,\d+\): error TS2322: Type '"sleeping"' is not assignable to type 'TaskStatus'/,
  'event-not-narrowed.ts': /event-not-narrowed\.ts\(\d+,\d+\): error TS2339: Property 'completion' does not exist on type 'TaskEvent'/,
  'spawn-without-session.ts': /spawn-without-session\.ts\(\d+,\d+\): error TS2345:.*\n.*Property 'sessionId' is missing/,
  'kill-signal.ts': /kill-signal\.ts\(\d+,\d+\): error TS2322: Type '"SIGSTOP"' is not assignable/,
  'snapshot-exit-code.ts': /snapshot-exit-code\.ts\(\d+,\d+\): error TS18047: 'snap' is possibly 'null'/,
  'spawn-mode.ts': /spawn-mode\.ts\(\d+,\d+\): error TS2322: Type '"tty"' is not assignable to type 'TaskMode( \| undefined)?'/,
}

test('every file in invalid/ has an expected error listed here', () => {
  assert.deepEqual(readdirSync(join(fixture, 'invalid')).sort(), Object.keys(invalid).sort())
})

/** One tsc run over all invalid files (each file's errors are reported under its own name). */
let invalidRun
function checkInvalid() {
  invalidRun ??= tsc('tsconfig.invalid.json', {
    extends: './tsconfig.json',
    files: Object.keys(invalid).map((f) => `invalid/${f}`),
  })
  return invalidRun
}

for (const [file, expected] of Object.entries(invalid)) {
  test(`a wrong use is rejected: invalid/${file}`, TIMEOUT, (t) => {
    if (!existsSync(tscJs)) return t.skip(NO_TSC)
    const { status, output } = checkInvalid()
    assert.notEqual(status, 0, 'tsc accepted the invalid files')
    assert.match(output, expected)
    assert.doesNotMatch(output, /index\.d\.ts/, 'the errors must be in the consumers, not in index.d.ts')
  })
}

test('index.d.ts declares exactly the methods the native TaskManager has, and the consumer calls each', () => {
  // The exported class is guard.js's subclass of the native one: both prototypes make the surface.
  const protos = [TaskManager.prototype, Object.getPrototypeOf(TaskManager.prototype)]
  const native = [...new Set(protos.flatMap((p) => Object.getOwnPropertyNames(p)))].filter((n) => n !== 'constructor').sort()
  const dts = readFileSync(join(root, 'index.d.ts'), 'utf8')
  const body = dts.slice(dts.indexOf('export declare class TaskManager {'))
  const classBody = body.slice(0, body.indexOf('\n}\n'))
  const declared = [...classBody.matchAll(/^ {2}(?:get )?([A-Za-z_]\w*)\(/gm)].map((m) => m[1]).filter((n) => n !== 'constructor').sort()
  assert.deepEqual(declared, native, 'index.d.ts and the native class disagree')
  const consumer = readFileSync(join(fixture, 'consumer.ts'), 'utf8')
  const missing = native.filter((name) => !new RegExp(`manager\\.${name}\\b`).test(consumer))
  assert.deepEqual(missing, [], `consumer.ts does not use: ${missing.join(', ')}`)
})

// The string unions napi generates from src/bindings/enums.rs, and the objects the addon exports
// for them (guard.js reads the values from those). src/bindings/enums.rs's tests check the same
// unions against the store's, the manager's and the signal table's names.
const ENUMS = ['Durability', 'KillSignal', 'OutputStream', 'StdinMode', 'TailStream', 'TaskMode', 'TaskStatus', 'WaitForReason']

test('each string union generated into index.d.ts lists exactly the values of the enum the addon exports', () => {
  const binding = createRequire(import.meta.url)(join(root, 'index.js'))
  const dts = readFileSync(join(root, 'index.d.ts'), 'utf8')
  const header = readFileSync(join(root, 'types', 'header.d.ts'), 'utf8')
  const exported = Object.entries(binding).filter(([, v]) => v !== null && typeof v === 'object' && Object.values(v).every((x) => typeof x === 'string'))
  assert.deepEqual(exported.map(([name]) => name).sort(), ENUMS)
  for (const [name, values] of exported) {
    const declared = [...dts.matchAll(new RegExp(`^export type ${name} = (.*)$`, 'gm'))]
    assert.equal(declared.length, 1, `index.d.ts declares ${name} ${declared.length} times`)
    const members = declared[0][1].split(' | ').map((m) => {
      assert.match(m, /^'[^']*'$/, `${name}: ${m} is not a string literal`)
      return m.slice(1, -1)
    })
    assert.deepEqual(members.sort(), Object.values(values).sort(), `${name}: index.d.ts and the addon disagree`)
    assert.doesNotMatch(header, new RegExp(`\\b(type|interface|enum|class) ${name}\\b`), `${name} is generated; types/header.d.ts must not declare it`)
  }
})

after(() => {
  if (project) rmSync(project, { recursive: true, force: true })
})
