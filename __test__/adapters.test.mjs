// opencode-bgshell and bgshell/agent in-process, with a stub opencode client: what the real
// harness tests (harness-*.test.mjs) cannot see from outside — batching into ONE reminder, a
// refused promptAsync offered again on session.idle, watches, long-running notices, dispose.
// The plugin is the one a user installs: the packed tarballs (bgshell, opencode-bgshell, zod)
// installed by name from the test registry into a temp project. Bun (opencode's runtime)
// imports its index.ts as shipped; Node has no TypeScript loader for node_modules, so there the
// installed index.ts is transpiled (typescript's transpileModule) to index.mjs beside it first.
import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { TaskManager, alive, root, sleep, tempDir } from './helpers.mjs'
import { killAll, npmEnv, packAll, run as runCommand, startRegistry, unpackable } from './harness-lib.mjs'
import { harnesses, missing } from '../scripts/harnesses.mjs'

const isBun = Boolean(process.versions.bun)
const TIMEOUT = { timeout: 120_000 }
const HEADER = '[BACKGROUND BASH COMPLETED]'
const why = unpackable()

const cleanups = []
after(async () => {
  await killAll()
  for (const dir of cleanups) rmSync(dir, { recursive: true, force: true })
})
function scratch(prefix) {
  const dir = tempDir(prefix)
  cleanups.push(dir)
  return dir
}

async function until(predicate, ms = 15_000, what = 'condition') {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await predicate()) return
    await sleep(20)
  }
  assert.fail(`timed out after ${ms} ms waiting for ${what}`)
}

/** The output text of a tool answer (a string, or opencode's { title, output, metadata }). */
const text = (answer) => (typeof answer === 'string' ? answer : answer.output)

let installed
/** opencode-bgshell installed by name from the packed tarballs; its module, imported. */
function loadOpencodePlugin() {
  installed ??= (async () => {
    const { tarballs, dest } = packAll()
    cleanups.push(dest)
    const registry = await startRegistry(tarballs)
    const app = scratch('bgshell-oc-app-')
    try {
      writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }))
      const r = await runCommand('npm', ['install', 'opencode-bgshell'], { cwd: app, env: { ...process.env, ...npmEnv(app, registry.url) } })
      assert.equal(r.code, 0, `npm install opencode-bgshell failed:\n${r.output}`)
    } finally {
      await registry.close()
    }
    const pkg = join(app, 'node_modules', 'opencode-bgshell')
    const manifest = JSON.parse(readFileSync(join(pkg, 'package.json'), 'utf8'))
    let entry = join(pkg, manifest.exports['./server'])
    if (!isBun) {
      const ts = createRequire(join(root, 'package.json'))('typescript')
      const js = ts.transpileModule(readFileSync(entry, 'utf8'), {
        compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, verbatimModuleSyntax: false },
      }).outputText
      entry = join(pkg, 'index.mjs')
      writeFileSync(entry, js)
    }
    return { module: await import(pathToFileURL(entry).href), manifest, pkg, app }
  })()
  return installed
}

test('opencode-bgshell installs by name with an opencode entry point, and exports only plugin functions', TIMEOUT, async (t) => {
  if (why) return t.skip(why)
  const { module, manifest, pkg } = await loadOpencodePlugin()
  // opencode's entry: exports["./server"], else main; both name the shipped index.ts.
  assert.equal(manifest.exports['./server'], './index.ts')
  assert.equal(manifest.main, 'index.ts')
  assert.ok(!existsSync(join(pkg, 'tsconfig.json')), 'a tsconfig.json shipped with the plugin changes how opencode\'s Bun resolves it')
  assert.equal(manifest.peerDependenciesMeta['@opencode-ai/plugin'].optional, true)
  // opencode calls every export of a plugin module as a plugin.
  const exports = Object.entries(module).filter(([name]) => name !== 'default' || module.default !== undefined)
  assert.ok(exports.length >= 1)
  for (const [name, value] of exports) assert.equal(typeof value, 'function', `export ${name} is not a plugin function`)
})

test('bgshell/agent resolves through the exports map of the installed bgshell, under Node and Bun, with its types', TIMEOUT, async (t) => {
  if (why) return t.skip(why)
  const { app } = await loadOpencodePlugin()
  const script = join(app, 'agent-smoke.mjs')
  writeFileSync(
    script,
    `import { BgshellAgent, REMINDER_HEADER, formatReminder } from 'bgshell/agent'
import { TaskManager } from 'bgshell'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
const delivered = []
const agent = new BgshellAgent({ harness: 'smoke', manager: { storageDir: mkdtempSync(join(tmpdir(), 'bgshell-agent-')) }, deliver: (s, text) => void delivered.push(text) })
agent.start()
const out = await agent.tool('bash').execute({ command: 'echo agent-smoke; exit 2' }, { sessionId: 's', cwd: process.cwd() })
await agent.close()
console.log(JSON.stringify({ manager: agent.manager instanceof TaskManager, tools: agent.tools.map((t) => t.name), text: out.text, failed: out.failed, header: formatReminder([]) === REMINDER_HEADER }))
`,
  )
  const bun = join(root, 'node_modules', '.bin', 'bun')
  const runtimes = [isBun ? 'node' : process.execPath, ...(existsSync(bun) ? [isBun ? process.execPath : bun] : [])]
  assert.ok(runtimes.length === 2 || !process.env.BGSHELL_CI, `no Bun at ${bun}`)
  for (const runtime of runtimes) {
    const r = await runCommand(runtime, [script], { cwd: app })
    assert.equal(r.code, 0, `${runtime} ${script}:\n${r.output}`)
    assert.deepEqual(JSON.parse(r.output.trim().split('\n').at(-1)), {
      manager: true,
      tools: ['bash', 'bash_output', 'bash_status', 'bash_kill', 'bash_watch', 'bash_write'],
      text: 'agent-smoke\n\nCommand exited with code 2',
      failed: true,
      header: true,
    })
  }
  // A TypeScript consumer (NodeNext) finds the types of both entry points.
  writeFileSync(join(app, 'consumer.mts'), `import { BgshellAgent, type AgentTool } from 'bgshell/agent'\nimport { TaskManager } from 'bgshell'\nconst tools: AgentTool[] = new BgshellAgent({ harness: 'x', deliver: () => {} }).tools\nconst m: TaskManager = new TaskManager()\nvoid tools, m\n`)
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
  writeFileSync(
    join(app, 'tsconfig.consumer.json'),
    JSON.stringify({ compilerOptions: { noEmit: true, strict: true, module: 'nodenext', moduleResolution: 'nodenext', types: [], lib: ['es2023', 'dom'] }, files: ['consumer.mts'] }),
  )
  const r = await runCommand(isBun ? 'node' : process.execPath, [tsc, '-p', join(app, 'tsconfig.consumer.json')], { cwd: app })
  assert.equal(r.code, 0, `tsc:\n${r.output}`)
})

// Each adapter against the types of the harness it runs in, as installed from npm by
// scripts/harnesses.mjs; pi 1.6 is reached under pi 0.73's package name, as pi aliases it.
const typeChecks = [
  { adapter: 'pi-bgshell', harness: 'pi-0.73.1', modules: { '@mariozechner/pi-coding-agent': '@mariozechner/pi-coding-agent' } },
  { adapter: 'pi-bgshell', harness: 'pi-1.6.0', modules: { '@mariozechner/pi-coding-agent': '@earendil-works/pi-coding-agent' } },
  { adapter: 'opencode-bgshell', harness: 'types-opencode-plugin-1.18.33', modules: { '@opencode-ai/plugin': '@opencode-ai/plugin/dist/index.d.ts', zod: 'zod' } },
]
for (const { adapter, harness, modules } of typeChecks) {
  test(`${adapter} type-checks (strict) against ${harness}`, TIMEOUT, async (t) => {
    const h = harnesses.find((x) => x.name === harness)
    const why = missing(h) ?? (existsSync(join(root, 'agent', 'index.d.mts')) ? null : 'agent/index.d.mts is missing: run `npm run build:agent`')
    if (why && process.env.BGSHELL_CI) assert.fail(why)
    if (why) return t.skip(why)
    const dir = scratch(`bgshell-tsc-${adapter}-`)
    const paths = {
      'bgshell/agent': [join(root, 'agent', 'index.d.mts')],
      ...Object.fromEntries(Object.entries(modules).map(([name, real]) => [name, [join(h.dir, 'node_modules', real)]])),
    }
    writeFileSync(
      join(dir, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          noEmit: true,
          strict: true,
          target: 'es2022',
          module: 'esnext',
          moduleResolution: 'bundler',
          lib: ['es2023', 'dom'],
          types: [],
          skipLibCheck: true,
          paths,
        },
        files: [join(root, 'packages', adapter, 'index.ts')],
      }),
    )
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
    const r = await runCommand(isBun ? 'node' : process.execPath, [tsc, '-p', dir, '--pretty', 'false'])
    assert.equal(r.code, 0, `tsc (${adapter} against ${harness}):\n${r.output}`)
  })
}

test('pi-bgshell is a pi package that does not pull pi in', TIMEOUT, (t) => {
  if (why) return t.skip(why)
  const manifest = JSON.parse(readFileSync(join(root, 'packages', 'pi-bgshell', 'package.json'), 'utf8'))
  assert.ok(manifest.keywords.includes('pi-package'))
  assert.deepEqual(manifest.pi.extensions, ['./index.ts'])
  assert.match(manifest.dependencies.bgshell, /^\^\d/)
  for (const peer of Object.keys(manifest.peerDependencies ?? {})) {
    assert.equal(manifest.peerDependenciesMeta?.[peer]?.optional, true, `peer ${peer} must be optional, or pi install pulls it in`)
  }
  assert.deepEqual(Object.keys(manifest.dependencies), ['bgshell'])
})

/** A stub of the SDK client: records promptAsync calls; `refuse(n)` makes the next n fail. */
function stubClient() {
  const calls = []
  const toasts = []
  let refusals = 0
  const client = {
    tui: {
      async showToast(options) {
        toasts.push(options)
        return { data: true, error: undefined }
      },
    },
    session: {
      async promptAsync(options) {
        calls.push(options)
        if (refusals > 0) {
          refusals--
          return { data: undefined, error: { name: 'NotFoundError', data: { message: 'stub refused' } } }
        }
        return { data: undefined, error: undefined }
      },
    },
  }
  return { client, calls, toasts, refuse: (n) => (refusals = n), texts: () => calls.map((c) => c.body.parts.map((p) => p.text).join('')) }
}

let sessionCounter = 0
async function opencode(t, { storageDir = scratch('bgshell-oc-store-'), stub = stubClient(), manager, directory = scratch('bgshell-oc-project-') } = {}) {
  const { BgshellPlugin } = (await loadOpencodePlugin()).module
  const input = {
    client: stub.client,
    project: { id: 'project', worktree: directory, time: { created: 0 } },
    directory,
    worktree: directory,
    experimental_workspace: { register() {} },
    serverUrl: new URL('http://127.0.0.1:4096'),
    $: undefined,
  }
  const hooks = await BgshellPlugin(input, { storageDir, foregroundWaitMs: 5000, ...(manager ? { manager } : {}) })
  const metadata = []
  const asks = []
  /** What ask answers: a rule per permission pattern, as opencode's rule set would. */
  const rules = { deny: [], ask: [] }
  const context = {
    sessionID: `ses_test_${process.pid}_${++sessionCounter}`,
    messageID: 'msg_1',
    agent: 'build',
    directory,
    worktree: directory,
    abort: new AbortController().signal,
    metadata: (m) => metadata.push(m),
    ask: async (request) => {
      asks.push(request)
      if (request.patterns.some((p) => rules.deny.some((r) => r.test(p)))) throw new Error(`denied by rule: ${request.permission} ${request.patterns.join(', ')}`)
    },
  }
  // bash answers { title, output, metadata } (the tests read its task id); the others' text.
  const run = async (name, args) => {
    const answer = await hooks.tool[name].execute(args, context)
    return name === 'bash' ? answer : text(answer)
  }
  const store = new TaskManager({ storageDir })
  t.after(async () => {
    await hooks.dispose?.()
    // The plugin's own manager started these; kill them through the store (close() only
    // kills what the closing manager spawned).
    for (const task of store.list({ status: ['starting', 'running', 'killing'] })) {
      await store.kill(task.taskId, { signal: 'SIGKILL' }).catch(() => {})
    }
    await store.close()
  })
  return { hooks, stub, context, run, store, storageDir, metadata, input, asks, rules }
}

/** A plugin instance starts a background task and is disposed; the task then ends. */
async function endedWhileDown(t, command) {
  const first = await opencode(t)
  const id = (await first.run('bash', { command, background: true })).metadata.taskId
  const pid = first.store.get(id).pid
  await first.hooks.dispose()
  await until(() => !alive(pid), 10_000, 'the task to end')
  return { first, id }
}

describe('opencode-bgshell (stub client)', () => {
  test('the module exports only plugin functions, and the plugin returns the six tools', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const mod = (await loadOpencodePlugin()).module
    // opencode calls every export of a plugin module as a plugin.
    for (const [name, value] of Object.entries(mod)) assert.equal(typeof value, 'function', `export ${name} is not a plugin function`)
    const { hooks } = await opencode(t)
    assert.deepEqual(Object.keys(hooks.tool).sort(), ['bash', 'bash_kill', 'bash_output', 'bash_status', 'bash_watch', 'bash_write'])
    for (const def of Object.values(hooks.tool)) {
      assert.equal(typeof def.description, 'string')
      assert.equal(typeof def.execute, 'function')
      for (const arg of Object.values(def.args)) assert.equal(typeof arg.safeParse, 'function', 'args are zod schemas from tool.schema')
    }
    assert.equal(hooks.tool.bash.args.command.safeParse(42).success, false)
    assert.equal(typeof hooks.dispose, 'function')
    assert.equal(typeof hooks.event, 'function')
  })

  test('a background bash spawns a task; its completion reaches session.promptAsync once and is acked', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, stub, context, store, metadata } = await opencode(t)
    const started = await run('bash', { command: 'echo oc-out-1; sleep 0.2; echo oc-out-2', background: true })
    const id = started.metadata.taskId
    assert.match(started.output, new RegExp(`Started background task ${id}`))
    assert.equal(store.get(id).notifyOnCompletion, true)
    await until(() => stub.calls.length === 1, 15_000, 'the reminder')
    const [call] = stub.calls
    assert.deepEqual(call.path, { id: context.sessionID })
    assert.equal(call.body.parts.length, 1)
    assert.equal(call.body.parts[0].type, 'text')
    const text = call.body.parts[0].text
    assert.ok(text.startsWith(`${HEADER}\n`), text)
    assert.match(text, new RegExp(`- ${id}: completed \\(exit code 0\\) after [0-9.]+s: echo oc-out-1`))
    assert.match(text, /oc-out-1\n\s*oc-out-2/)
    await until(() => store.get(id).completionDelivered, 5000, 'the ack')
    assert.deepEqual(store.drainCompletions(context.sessionID), [])
    await sleep(200)
    assert.equal(stub.calls.length, 1, 'reminded exactly once')
    assert.deepEqual(metadata, [], 'no progress is pushed through ctx.metadata')
  })

  test('foreground bash answers inline, or moves to the background after wait_seconds and reminds', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, stub } = await opencode(t)
    const inline = await run('bash', { command: 'echo inline-out; exit 3' })
    assert.equal(inline.output, 'inline-out\n\nCommand exited with code 3')
    assert.equal(inline.metadata.exitCode, 3)
    const promoted = await run('bash', { command: 'sleep 0.5; echo late-out', wait_seconds: 0.1 })
    const id = promoted.metadata.taskId
    assert.match(promoted.output, new RegExp(`moved to the background as task ${id}`))
    await until(() => stub.calls.length === 1, 15_000, 'the reminder')
    assert.match(stub.texts()[0], new RegExp(`${id}: completed \\(exit code 0\\).*late-out`, 's'))
    assert.ok(!stub.texts()[0].includes('inline-out'), 'an inline result is not reminded')
  })

  test('completions that arrive together become ONE reminder', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, stub, context } = await opencode(t)
    const gate = join(context.directory, 'go')
    const ids = []
    for (const name of ['first', 'second']) {
      const r = await run('bash', { command: `while [ ! -e ${gate} ]; do sleep 0.01; done; echo ${name}-out`, background: true })
      ids.push(r.metadata.taskId)
    }
    writeFileSync(gate, '')
    await until(() => stub.calls.length >= 1, 15_000, 'the reminder')
    await sleep(300)
    assert.equal(stub.calls.length, 1, `expected one reminder, got:\n${stub.texts().join('\n---\n')}`)
    const text = stub.texts()[0]
    assert.equal(text.split('\n')[0], HEADER)
    for (const id of ids) assert.ok(text.includes(`- ${id}: completed (exit code 0)`), text)
    assert.match(text, /first-out/)
    assert.match(text, /second-out/)
  })

  test('a refused promptAsync leaves the completion undelivered; session.idle offers it again', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, stub, hooks, context, store } = await opencode(t)
    stub.refuse(1)
    const id = (await run('bash', { command: 'echo retry-out', background: true })).metadata.taskId
    await until(() => stub.calls.length === 1, 15_000, 'the refused reminder')
    await sleep(100)
    assert.deepEqual(store.drainCompletions(context.sessionID).map((c) => c.taskId), [id], 'not acked when refused')
    await hooks.event({ event: { type: 'session.idle', properties: { sessionID: context.sessionID } } })
    assert.equal(stub.calls.length, 2)
    assert.match(stub.texts()[1], new RegExp(`${id}: completed.*retry-out`, 's'))
    assert.deepEqual(store.drainCompletions(context.sessionID), [])
    await hooks.event({ event: { type: 'session.idle', properties: { sessionID: context.sessionID } } })
    assert.equal(stub.calls.length, 2, 'nothing left to offer')
  })

  test('bash_status pulls output; bash_kill stops a task and no reminder repeats it', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, stub, store, context } = await opencode(t)
    const id = (await run('bash', { command: 'echo status-out; sleep 30', background: true })).metadata.taskId
    await until(async () => (await run('bash_status', { task_id: id })).includes('status-out'), 10_000, 'the output')
    assert.match(await run('bash_status', { task_id: id }), new RegExp(`^${id} running echo status-out; sleep 30\\n`))
    assert.match(await run('bash_status', {}), new RegExp(`${id} running`))
    const killed = await run('bash_kill', { task_id: id, signal: 'SIGINT' })
    assert.match(killed, new RegExp(`${id} killed exit=130 SIGINT`))
    await sleep(300)
    assert.equal(stub.calls.length, 0, `no reminder for a killed task: ${stub.texts().join('\n')}`)
    assert.equal(store.get(id).completionDelivered, true)
    assert.deepEqual(store.drainCompletions(context.sessionID), [])
    await assert.rejects(run('bash_status', { task_id: 'bash-0000000000000000' }), /No task/)
  })

  test('bash_watch: a match arrives as a reminder; wait: true blocks until a match, the exit or the timeout', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, stub } = await opencode(t)
    const id = (await run('bash', { command: 'sleep 0.3; echo READY-42; sleep 30', background: true })).metadata.taskId
    assert.match(await run('bash_watch', { task_id: id, pattern: 'READY-42' }), /^Watching/)
    await until(() => stub.calls.length === 1, 15_000, 'the match reminder')
    const text = stub.texts()[0]
    assert.ok(text.startsWith(`${HEADER}\n`))
    assert.match(text, new RegExp(`- ${id}: watch \\S+ matched "READY-42"`))
    assert.match(await run('bash_watch', { task_id: id, pattern: 'never', wait: true, timeout_seconds: 0.2 }), /^No match yet; task running/)
    await run('bash_kill', { task_id: id })
    const quick = (await run('bash', { command: 'sleep 0.2; echo GO-7', background: true })).metadata.taskId
    assert.match(await run('bash_watch', { task_id: quick, regex: 'GO-\\d', wait: true, timeout_seconds: 10 }), /^Matched "GO-7"/)
    const ends = (await run('bash', { command: 'sleep 0.1', background: true })).metadata.taskId
    assert.match(await run('bash_watch', { task_id: ends, pattern: 'x', wait: true, timeout_seconds: 10 }), /^The task exited first/)
  })

  test('long_running events become reminders too, then the completion does', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, stub } = await opencode(t, { manager: { longRunningIntervalMs: 150 } })
    const id = (await run('bash', { command: 'sleep 0.5; echo lr-done', background: true })).metadata.taskId
    await until(() => stub.texts().some((text) => text.includes(`${id}: completed`)), 15_000, 'the completion')
    const texts = stub.texts()
    assert.ok(texts.every((text) => text.startsWith(`${HEADER}\n`)))
    assert.match(texts[0], new RegExp(`^\\[BACKGROUND BASH COMPLETED\\]\\n- ${id}: still running after 0\\.[0-9]s: sleep 0\\.5; echo lr-done\\n`))
    assert.match(texts.at(-1), /lr-done/)
  })

  test('pty: true runs in a terminal; bash_write types into it; bash_status shows the screen', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run } = await opencode(t)
    let id
    try {
      id = (await run('bash', { command: 'cat', pty: true, background: true })).metadata.taskId
    } catch (error) {
      // A build without pty support rejects mode 'pty'; the tool passes that error through.
      assert.equal(error.code, 'E_INVALID')
      return t.skip(`this bgshell build has no pty: ${error.message}`)
    }
    const wrote = await run('bash_write', { task_id: id, input: 'typed-in', keys: ['enter'] })
    assert.match(wrote, new RegExp(`^Wrote \\d+ bytes to ${id}`))
    await until(async () => /typed-in\n.*typed-in/s.test(await run('bash_status', { task_id: id })), 10_000, 'the echoed line')
    assert.match(await run('bash_status', { task_id: id }), /--- screen ---/)
    const pipes = (await run('bash', { command: 'sleep 30', background: true })).metadata.taskId
    await assert.rejects(run('bash_write', { task_id: pipes, input: 'x' }), /not started with pty: true/)
  })

  test('dispose stops events; a new plugin instance replays the session and delivers what ended meanwhile', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const first = await opencode(t)
    const id = (await first.run('bash', { command: 'sleep 0.5; echo after-dispose', background: true })).metadata.taskId
    await first.hooks.dispose()
    await assert.rejects(first.run('bash', { command: 'true' }), (e) => e.code === 'E_CLOSED')
    await sleep(900)
    assert.equal(first.stub.calls.length, 0, 'no reminder after dispose')
    // opencode restarts: a new plugin instance on the same store sees the session go idle.
    const second = await opencode(t, { storageDir: first.storageDir })
    const sessionID = first.context.sessionID
    await second.hooks.event({ event: { type: 'session.idle', properties: { sessionID } } })
    assert.equal(second.stub.calls.length, 1)
    assert.deepEqual(second.stub.calls[0].path, { id: sessionID })
    assert.match(second.stub.texts()[0], new RegExp(`^\\[BACKGROUND BASH COMPLETED\\]\\n- ${id}: completed \\(exit code 0\\).*after-dispose`, 's'))
    assert.deepEqual(second.store.drainCompletions(sessionID), [])
  })

  test('a new plugin instance in the same directory delivers what ended meanwhile when it starts, with no event, once', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { first, id } = await endedWhileDown(t, 'sleep 0.3; echo at-start; exit 5')
    const other = await opencode(t, { storageDir: first.storageDir })
    const second = await opencode(t, { storageDir: first.storageDir, directory: first.input.directory })
    await until(() => second.stub.calls.length === 1, 10_000, 'the reminder at start')
    assert.deepEqual(second.stub.calls[0].path, { id: first.context.sessionID })
    assert.match(second.stub.texts()[0], new RegExp(`- ${id}: failed \\(exit code 5\\).*at-start`, 's'))
    await until(() => second.store.get(id)?.completionDelivered, 5000, 'the ack')
    await second.hooks.event({ event: { type: 'session.idle', properties: { sessionID: first.context.sessionID } } })
    assert.equal(second.stub.calls.length, 1, 'delivered once')
    assert.equal(other.stub.calls.length, 0, 'an instance for another directory delivered it')
  })

  test('at start, a prompt opencode refuses is offered again without any event', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { first, id } = await endedWhileDown(t, 'echo refused-at-start')
    const stub = stubClient()
    stub.refuse(1)
    const second = await opencode(t, { storageDir: first.storageDir, directory: first.input.directory, stub })
    await until(() => stub.calls.length === 2, 30_000, 'the second offer')
    assert.match(stub.texts()[1], new RegExp(`- ${id}: completed.*refused-at-start`, 's'))
    await until(() => second.store.get(id)?.completionDelivered, 5000, 'the ack')
  })
  test('permissions: bash asks what opencode\'s own bash asks; a denial stops the command; bash_write is asked too', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, asks, rules, context } = await opencode(t)
    await run('bash', { command: 'git status && echo hi > out.txt' })
    assert.deepEqual(asks, [
      { permission: 'bash', patterns: ['git status', 'echo hi > out.txt'], always: ['git status *', 'echo *'], metadata: { command: 'git status && echo hi > out.txt' } },
    ])
    // A file command naming a path outside the project asks external_directory first.
    asks.length = 0
    const outside = scratch('bgshell-oc-outside-')
    await run('bash', { command: `cat ${join(outside, 'nothing')} || true` })
    assert.equal(asks[0].permission, 'external_directory')
    assert.deepEqual(asks[0].patterns, [join(outside, '*')])
    assert.deepEqual(asks[1].patterns, [`cat ${join(outside, 'nothing')}`, 'true'])
    // deny: the call fails and nothing runs.
    rules.deny.push(/^touch /)
    const marker = join(context.directory, 'denied-marker')
    await assert.rejects(run('bash', { command: `touch ${marker}`, background: true }), /denied by rule/)
    await sleep(300)
    assert.ok(!existsSync(marker), 'a denied command ran')
    // bash_write: what the typed text would run in the terminal's shell.
    const pty = await run('bash', { command: 'bash --norc', pty: true, background: true })
    asks.length = 0
    await assert.rejects(run('bash_write', { task_id: pty.metadata.taskId, input: `touch ${marker}`, keys: ['enter'] }), /denied by rule/)
    assert.deepEqual(asks.at(-1).patterns, [`touch ${marker}`])
    await run('bash_write', { task_id: pty.metadata.taskId, input: 'exit', keys: ['enter'] })
    assert.deepEqual(asks.at(-1).patterns, ['exit'])
    assert.ok(!existsSync(marker), 'a denied pty input ran')
  })

  test('a toast when a background task ends, none for a foreground command', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, stub } = await opencode(t)
    await run('bash', { command: 'echo fg' })
    const bg = await run('bash', { command: 'exit 4', background: true, label: 'the-build' })
    await until(() => stub.toasts.length === 1, 15_000, 'the toast')
    assert.equal(stub.toasts[0].body.variant, 'error')
    assert.match(stub.toasts[0].body.message, new RegExp(`${bg.metadata.taskId} \\(failed, exit 4\\)`))
    await sleep(200)
    assert.equal(stub.toasts.length, 1)
  })

  test('foreground output is sized like opencode\'s bash (2000 lines / 50 KB) and names the full output; progress goes to ctx.metadata', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, metadata } = await opencode(t)
    const big = await run('bash', { command: 'for i in $(seq 1 3000); do echo line-$i; done; sleep 0.6' })
    const lines = big.output.split('\n')
    assert.equal(lines[0], '...output truncated...')
    const path = lines[2].replace('Full output saved to: ', '')
    assert.ok(existsSync(path), `no full output file: ${lines[2]}`)
    assert.equal(readFileSync(path, 'utf8').split('\n').length, 3001)
    assert.equal(lines.at(-1), 'line-3000')
    assert.equal(lines.length, 4 + 1990)
    assert.ok(metadata.some((m) => m.metadata.output.includes('line-3000')), 'no progress while it ran')
  })

  test('bash_output pages by offset, filters by regex with context, picks the stream, strips ANSI', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { run, store } = await opencode(t)
    const r = await run('bash', { command: "printf '\\033[31mred\\033[0m\\n'; for i in 1 2 3 4 5 6; do echo row-$i; done; echo oops >&2" })
    const id = r.metadata.taskId
    const page = await run('bash_output', { task_id: id, max_bytes: 19 })
    assert.match(page, /stdout bytes 0-19 of 49; more from offset 19\nred\nrow-1\n$/)
    const next = await run('bash_output', { task_id: id, offset: 19, max_bytes: 6 })
    assert.match(next, /stdout bytes 19-25 of 49; more from offset 25\nrow-2\n$/)
    const grep = await run('bash_output', { task_id: id, regex: 'row-[35]', context: 1 })
    assert.match(grep, /2 matching lines/)
    assert.match(grep, /\n3-row-2\n4:row-3\n5-row-4\n6:row-5\n7-row-6/)
    assert.match(await run('bash_output', { task_id: id, stream: 'stderr' }), /\noops/)
    assert.match(await run('bash_output', { task_id: id, regex: '(' }).catch((e) => e.message), /Invalid regex/)
    void store
  })

  test('an aborted foreground call kills its command', TIMEOUT, async (t) => {
    if (why) return t.skip(why)
    const { hooks, context, store } = await opencode(t)
    const controller = new AbortController()
    const pending = hooks.tool.bash.execute({ command: 'echo started; sleep 30' }, { ...context, abort: controller.signal })
    let task
    await until(() => (task = store.list({ sessionId: context.sessionID, status: ['running'] })[0]), 10_000, 'the task')
    controller.abort()
    await assert.rejects(pending, /Command aborted; task bash-[0-9a-f]+ was killed/)
    assert.equal(store.get(task.taskId).status, 'killed')
    assert.ok(!alive(task.pid))
  })
})
