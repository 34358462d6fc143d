// The reference adapters in examples/, driven in-process with the real harness packages:
// - pi: examples/pi-extension/index.ts loaded by pi's own extension loader into a real pi session
//   (pi's SDK with its faux model provider), in a child process of the test runtime;
// - opencode: examples/opencode-plugin/index.ts called as opencode calls a plugin, with a stub
//   client whose session.promptAsync records the reminders. Bun (opencode's runtime) imports the
//   .ts directly; under Node the plugin is compiled with tsc into a temp dir first.
// Both adapters import their shared helpers from examples/shared/common.ts.
// The harness packages come from `npm install --prefix examples/<adapter> --ignore-scripts`.
import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { execFile, spawnSync } from 'node:child_process'
import { existsSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { TaskManager, root, sleep, tempDir } from './helpers.mjs'

const isBun = Boolean(process.versions.bun)
const TIMEOUT = { timeout: 120_000 }
const HEADER = '[BACKGROUND BASH COMPLETED]'
const piDir = join(root, 'examples', 'pi-extension')
const ocDir = join(root, 'examples', 'opencode-plugin')
const sharedDir = join(root, 'examples', 'shared')
const tscJs = join(root, 'node_modules', 'typescript', 'bin', 'tsc')

/** Why the adapter's harness packages are unusable, or null when they are installed. */
function missing(dir, pkg) {
  const install = `run \`npm install --prefix examples/${dir.split('/').at(-1)} --ignore-scripts\``
  if (!existsSync(join(dir, 'node_modules', ...pkg.split('/'), 'package.json'))) return `${pkg} is not installed: ${install}`
  if (!existsSync(join(dir, 'node_modules', 'bgshell', 'index.js'))) return `node_modules/bgshell is not linked: ${install}`
  return null
}
const piMissing = missing(piDir, '@mariozechner/pi-coding-agent')
const ocMissing = missing(ocDir, '@opencode-ai/plugin')

const cleanups = []
after(() => {
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

test('both adapters import the one shared helper file, and keep no copy of it', () => {
  assert.ok(existsSync(join(sharedDir, 'common.ts')), 'examples/shared/common.ts is missing')
  for (const dir of [piDir, ocDir]) {
    assert.ok(!existsSync(join(dir, 'common.ts')), `${dir}/common.ts is a copy of examples/shared/common.ts`)
    assert.match(readFileSync(join(dir, 'index.ts'), 'utf8'), /from '\.\.\/shared\/common\.ts'/)
  }
})

test('both adapters type-check (strict) against the installed harness types', TIMEOUT, (t) => {
  if (piMissing || ocMissing) return t.skip(piMissing ?? ocMissing)
  if (!existsSync(tscJs)) return t.skip(`TypeScript is not installed at ${tscJs}: add "typescript" to devDependencies`)
  for (const dir of [piDir, ocDir]) {
    const r = spawnSync(process.execPath, [tscJs, '-p', dir, '--pretty', 'false'], { encoding: 'utf8', timeout: 100_000 })
    assert.equal(r.status, 0, `tsc -p ${dir} failed:\n${r.stdout}${r.stderr}`)
  }
})

// ---------------------------------------------------------------------------------------------
// pi

/**
 * Drives a real pi session (pi's SDK, its faux model provider, the extension loaded from
 * examples/pi-extension/index.ts by pi's own loader) and prints one JSON line with what
 * happened. Self-contained: it is serialised with toString() into a child process's script.
 */
async function drivePi(config) {
  const { join } = await import('node:path')
  const { pathToFileURL } = await import('node:url')
  const modules = join(config.piDir, 'node_modules', '@mariozechner')
  const pi = await import(pathToFileURL(join(modules, 'pi-coding-agent', 'dist', 'index.js')).href)
  const ai = await import(pathToFileURL(join(modules, 'pi-ai', 'dist', 'index.js')).href)
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
  const textOf = (m) =>
    typeof m.content === 'string'
      ? m.content
      : (m.content ?? []).map((c) => (c.type === 'text' ? c.text : '')).join('')
  const idIn = (text) => (String(text).match(/bash-[0-9a-f]{16}/) ?? [])[0]
  const lastToolText = (context) => textOf([...context.messages].reverse().find((m) => m.role === 'toolResult') ?? {})

  const faux = ai.registerFauxProvider()
  const authStorage = pi.AuthStorage.inMemory()
  authStorage.setRuntimeApiKey('faux', 'test-key')
  const createRuntime = async ({ cwd, sessionManager, sessionStartEvent }) => {
    const services = await pi.createAgentSessionServices({
      cwd,
      agentDir: config.agentDir,
      authStorage,
      settingsManager: pi.SettingsManager.inMemory({ compaction: { enabled: false }, retry: { enabled: false } }),
      resourceLoaderOptions: { additionalExtensionPaths: [config.extension] },
    })
    const created = await pi.createAgentSessionFromServices({ services, sessionManager, sessionStartEvent, model: faux.getModel() })
    return { ...created, services, diagnostics: services.diagnostics }
  }

  // The scripted model. A function step sees the context, e.g. the reminder it was woken by.
  const woken = []
  const remember = (reply) => (context) => {
    woken.push(textOf(context.messages.at(-1)))
    return ai.fauxAssistantMessage(reply)
  }
  const call = (name, args) => ai.fauxAssistantMessage([ai.fauxToolCall(name, args)], { stopReason: 'toolUse' })
  const withId = (name, args) => (context) => call(name, { task_id: idIn(lastToolText(context)), ...args })
  if (config.phase === 'live') {
    faux.setResponses([
      // prompt 1: a background task; its reminder wakes the model
      call('bash', { command: 'echo pi-bg-out; sleep 0.3; echo pi-bg-done', background: true }),
      ai.fauxAssistantMessage('started'),
      remember('noted background'),
      // prompt 2: foreground inline, then foreground promoted to the background
      call('bash', { command: 'echo fg-inline' }),
      call('bash', { command: 'echo pi-fail; exit 4' }),
      call('bash', { command: 'sleep 0.8; echo promoted-out', wait_seconds: 0.1 }),
      ai.fauxAssistantMessage('promoted'),
      remember('noted promoted'),
      // prompt 3: kill (no reminder follows), list, a pty task typed into and read
      call('bash', { command: 'sleep 30', background: true }),
      withId('bash_kill', {}),
      call('bash_status', {}),
      call('bash', { command: 'cat', pty: true, background: true }),
      (context) => {
        const id = idIn(lastToolText(context))
        return id ? call('bash_write', { task_id: id, input: 'hello-pty', keys: ['enter'] }) : ai.fauxAssistantMessage('no pty')
      },
      (context) => call('bash_status', { task_id: idIn(JSON.stringify(context.messages.slice(-4))) }),
      (context) => call('bash_kill', { task_id: idIn(JSON.stringify(context.messages.slice(-6))) }),
      call('bash', { command: 'sleep 0.2; echo PI-READY; sleep 30', background: true }),
      withId('bash_watch', { pattern: 'PI-READY', wait: true, timeout_seconds: 10 }),
      (context) => call('bash_kill', { task_id: idIn(JSON.stringify(context.messages.slice(-4))) }),
      ai.fauxAssistantMessage('done with tools'),
      // prompt 4: a task that outlives the session
      call('bash', { command: 'sleep 1; echo after-restart', background: true }),
      ai.fauxAssistantMessage('leaving'),
    ])
  } else {
    faux.setResponses([remember('welcome back')])
  }

  const sessionManager = config.sessionFile
    ? pi.SessionManager.open(config.sessionFile, config.sessionDir)
    : pi.SessionManager.create(config.cwd, config.sessionDir)
  const runtime = await pi.createAgentSessionRuntime(createRuntime, { cwd: config.cwd, agentDir: config.agentDir, sessionManager })
  const session = runtime.session
  const customs = () => session.messages.filter((m) => m.role === 'custom')
  const restored = customs().length
  const errors = []
  await session.bindExtensions({ onError: (e) => errors.push(String(e?.error ?? e)) })
  const answered = async (n) => {
    // the n-th new reminder is in the session and the model has answered it
    const end = Date.now() + 15_000
    while (Date.now() < end) {
      const reminder = customs()[restored + n - 1]
      const at = reminder ? session.messages.indexOf(reminder) : -1
      if (at >= 0 && session.messages.slice(at + 1).some((m) => m.role === 'assistant') && !session.isStreaming) return true
      await sleep(20)
    }
    return false
  }

  const out = { phase: config.phase, errors, diagnostics: runtime.diagnostics ?? [] }
  if (config.phase === 'live') {
    out.tools = session.getActiveToolNames()
    await session.prompt('start a background task')
    out.answered1 = await answered(1)
    await session.prompt('run two foreground commands')
    out.answered2 = await answered(2)
    await session.prompt('kill, list, pty')
    await sleep(300) // a kill's completion event would have become a reminder by now
    await session.prompt('start a slow task and leave')
  } else {
    out.answered1 = await answered(1)
  }
  out.sessionId = session.sessionId
  out.sessionFile = session.sessionFile
  out.customs = customs().slice(restored).map((m) => ({ customType: m.customType, display: m.display, text: textOf(m), details: m.details }))
  out.toolResults = session.messages
    .filter((m) => m.role === 'toolResult')
    .map((m) => ({ tool: m.toolName, isError: m.isError, text: textOf(m) }))
  out.woken = woken
  await runtime.dispose() // session_shutdown
  if (config.lingerMs) {
    // the slow task ends meanwhile: with events stopped, nothing may reach the session
    await sleep(config.lingerMs)
    out.customsAfterShutdown = customs().length - restored
  }
  process.stdout.write(`${JSON.stringify(out)}\n`)
}

function runPi(config, storageDir) {
  const dir = scratch('bgshell-pi-driver-')
  const script = join(dir, 'drive.mjs')
  writeFileSync(script, `${drivePi.toString()}\nawait drivePi(JSON.parse(process.argv[2]))\n`)
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [script, JSON.stringify(config)],
      { env: { ...process.env, BGSHELL_HOME: storageDir }, encoding: 'utf8', timeout: 90_000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => {
        if (err) return reject(new Error(`pi driver failed: ${err.message}\n${stderr}`))
        try {
          resolve(JSON.parse(stdout.trim().split('\n').at(-1)))
        } catch {
          reject(new Error(`pi driver printed no result:\n${stdout}\n${stderr}`))
        }
      },
    )
  })
}

describe('pi extension (real pi SDK session, faux model)', () => {
  let live
  const piSetup = () => {
    live ??= (async () => {
      const storageDir = scratch('bgshell-pi-store-')
      const agentDir = scratch('bgshell-pi-agent-')
      const cwd = scratch('bgshell-pi-cwd-')
      const base = { piDir, extension: join(piDir, 'index.ts'), agentDir, cwd, sessionDir: join(agentDir, 'sessions') }
      const out = await runPi({ ...base, phase: 'live', lingerMs: 1500 }, storageDir)
      return { base, storageDir, out }
    })()
    return live
  }

  test('tools are registered and a background completion becomes one reminder that wakes the model, then is acked', TIMEOUT, async (t) => {
    if (piMissing) return t.skip(piMissing)
    const { out, storageDir } = await piSetup()
    assert.deepEqual(out.errors, [])
    assert.deepEqual(out.diagnostics, [])
    for (const name of ['bash', 'bash_status', 'bash_kill', 'bash_watch', 'bash_write']) assert.ok(out.tools.includes(name), `${name} not registered`)
    assert.equal(out.tools.filter((n) => n === 'bash').length, 1, 'bash overrides the built-in, once')
    const started = out.toolResults[0]
    const id = started.text.match(/bash-[0-9a-f]{16}/)[0]
    assert.match(started.text, /Started background task/)
    assert.equal(out.answered1, true, 'the reminder did not trigger a turn')
    const [first] = out.customs
    assert.equal(first.customType, 'bgshell')
    assert.equal(first.display, true)
    assert.deepEqual(first.details, { taskIds: [id] })
    assert.ok(first.text.startsWith(`${HEADER}\n`), first.text)
    assert.match(first.text, new RegExp(`${id}: completed \\(exit code 0\\)`))
    assert.match(first.text, /pi-bg-out\n.*pi-bg-done/s)
    assert.equal(out.woken[0], first.text, 'the model was woken by exactly that reminder')
    const m = new TaskManager({ storageDir })
    assert.equal(m.get(id).completionDelivered, true, 'the completion was acked after pi took the message')
    await m.close()
  })

  test('foreground bash answers inline, or promotes itself and reminds when it ends', TIMEOUT, async (t) => {
    if (piMissing) return t.skip(piMissing)
    const { out } = await piSetup()
    const [, inline, failed, promoted] = out.toolResults
    assert.deepEqual([inline.isError, inline.text], [false, 'fg-inline\n'])
    assert.deepEqual([failed.isError, failed.text], [true, 'pi-fail\n[exit code 4; status failed]'])
    const id = promoted.text.match(/bash-[0-9a-f]{16}/)[0]
    assert.match(promoted.text, /moved to the background/)
    assert.equal(out.answered2, true)
    assert.match(out.customs[1].text, new RegExp(`^\\[BACKGROUND BASH COMPLETED\\]\\n- ${id}: completed .*promoted-out`, 's'))
    assert.equal(out.customs.filter((c) => c.text.includes('fg-inline')).length, 0, 'an inline result is not reminded')
  })

  test('bash_kill ends a task without a reminder; bash_status lists; bash_watch waits; pty tasks take input', TIMEOUT, async (t) => {
    if (piMissing) return t.skip(piMissing)
    const { out } = await piSetup()
    const watched = out.toolResults.find((r) => r.tool === 'bash_watch')
    assert.match(watched.text, /^Matched "PI-READY" at byte \d+; task running\.$/)
    assert.equal(out.toolResults.filter((r) => r.tool === 'bash_kill').length, 3)
    assert.ok(out.toolResults.every((r) => !r.isError || r.text.includes('pi-fail')), JSON.stringify(out.toolResults, null, 1))
    const kill = out.toolResults.find((r) => r.tool === 'bash_kill')
    assert.match(kill.text, /killed exit=143 SIGTERM sleep 30/)
    const killedId = kill.text.match(/bash-[0-9a-f]{16}/)[0]
    assert.ok(!out.customs.some((c) => c.text.includes(killedId)), 'a task killed through bash_kill must not be reminded')
    const list = out.toolResults.find((r) => r.tool === 'bash_status')
    assert.match(list.text, new RegExp(`${killedId} killed`))
    const ptyStart = out.toolResults[out.toolResults.findIndex((r) => r.tool === 'bash_status') + 1]
    if (ptyStart.isError) {
      // A build without pty support rejects mode 'pty' with E_INVALID: the tool reports it.
      assert.match(ptyStart.text, /pty/)
      return
    }
    const write = out.toolResults.find((r) => r.tool === 'bash_write')
    assert.match(write.text, /Wrote \d+ bytes|not supported yet/)
    const screen = out.toolResults.filter((r) => r.tool === 'bash_status')[1]
    if (/Wrote/.test(write.text)) assert.match(screen.text, /hello-pty/)
  })

  test('session_shutdown stops events; session_start replays the task and delivers its completion once', TIMEOUT, async (t) => {
    if (piMissing) return t.skip(piMissing)
    const { out, base, storageDir } = await piSetup()
    const late = out.toolResults.at(-1).text.match(/bash-[0-9a-f]{16}/)[0]
    assert.equal(out.customsAfterShutdown, out.customs.length, 'nothing reached the session after session_shutdown')
    const m = new TaskManager({ storageDir })
    try {
      await m.replay(out.sessionId) // finalises the task that ended with no manager watching
      assert.deepEqual(
        m.drainCompletions(out.sessionId).map((c) => c.taskId),
        [late],
        'the completion of the task that ended after shutdown is still undelivered',
      )
      const resumed = await runPi({ ...base, phase: 'resume', sessionFile: out.sessionFile }, storageDir)
      assert.deepEqual(resumed.errors, [])
      assert.equal(resumed.sessionId, out.sessionId)
      assert.equal(resumed.answered1, true, 'the replayed completion did not trigger a turn')
      assert.equal(resumed.customs.length, 1)
      assert.match(resumed.customs[0].text, new RegExp(`^\\[BACKGROUND BASH COMPLETED\\]\\n- ${late}: completed \\(exit code 0\\).*after-restart`, 's'))
      assert.deepEqual(m.drainCompletions(out.sessionId), [], 'acked once handed to pi')
    } finally {
      await m.close()
    }
  })
})

// ---------------------------------------------------------------------------------------------
// opencode

let ocModule
/**
 * examples/opencode-plugin/index.ts as opencode loads it: Bun imports the .ts, Node a tsc build.
 * The build keeps the layout under examples/ (opencode-plugin/index.js imports
 * ../shared/common.js), with the plugin's node_modules linked above both folders.
 */
function loadOpencodePlugin() {
  ocModule ??= (async () => {
    if (isBun) return import(pathToFileURL(join(ocDir, 'index.ts')).href)
    if (!existsSync(tscJs)) throw new Error(`TypeScript is not installed at ${tscJs}`)
    const out = scratch('bgshell-oc-build-')
    const examples = join(root, 'examples')
    const build = join(out, 'examples')
    const config = {
      extends: join(ocDir, 'tsconfig.json'),
      compilerOptions: {
        noEmit: false,
        allowImportingTsExtensions: false,
        rewriteRelativeImportExtensions: true,
        rootDir: examples,
        outDir: build,
      },
      files: [join(ocDir, 'index.ts')],
    }
    writeFileSync(join(out, 'tsconfig.json'), JSON.stringify(config))
    const r = spawnSync(process.execPath, [tscJs, '-p', join(out, 'tsconfig.json'), '--pretty', 'false'], { encoding: 'utf8', timeout: 100_000 })
    if (r.status !== 0) throw new Error(`compiling the opencode plugin failed:\n${r.stdout}${r.stderr}`)
    const plugin = join(build, 'opencode-plugin', 'index.js')
    for (const file of [plugin, join(build, 'shared', 'common.js')]) {
      if (!existsSync(file)) throw new Error(`compiling the opencode plugin did not emit ${file}`)
    }
    writeFileSync(join(build, 'package.json'), JSON.stringify({ type: 'module' }))
    symlinkSync(join(ocDir, 'node_modules'), join(build, 'node_modules'), 'dir')
    return import(pathToFileURL(plugin).href)
  })()
  return ocModule
}

/** A stub of the SDK client: records promptAsync calls; `refuse(n)` makes the next n fail. */
function stubClient() {
  const calls = []
  let refusals = 0
  const client = {
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
  return { client, calls, refuse: (n) => (refusals = n), texts: () => calls.map((c) => c.body.parts.map((p) => p.text).join('')) }
}

let sessionCounter = 0
async function opencode(t, { storageDir = scratch('bgshell-oc-store-'), stub = stubClient(), manager } = {}) {
  const { BgshellPlugin } = await loadOpencodePlugin()
  const directory = scratch('bgshell-oc-project-')
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
  const context = {
    sessionID: `ses_test_${process.pid}_${++sessionCounter}`,
    messageID: 'msg_1',
    agent: 'build',
    directory,
    worktree: directory,
    abort: new AbortController().signal,
    metadata: (m) => metadata.push(m),
    ask: async () => {},
  }
  const run = (name, args) => hooks.tool[name].execute(args, context)
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
  return { hooks, stub, context, run, store, storageDir, metadata, input }
}

describe('opencode plugin (stub client)', () => {
  test('the module exports only plugin functions, and the plugin returns the five tools', TIMEOUT, async (t) => {
    if (ocMissing) return t.skip(ocMissing)
    const mod = await loadOpencodePlugin()
    // opencode calls every export of a plugin module as a plugin.
    for (const [name, value] of Object.entries(mod)) assert.equal(typeof value, 'function', `export ${name} is not a plugin function`)
    const { hooks } = await opencode(t)
    assert.deepEqual(Object.keys(hooks.tool).sort(), ['bash', 'bash_kill', 'bash_status', 'bash_watch', 'bash_write'])
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
    if (ocMissing) return t.skip(ocMissing)
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
    if (ocMissing) return t.skip(ocMissing)
    const { run, stub } = await opencode(t)
    const inline = await run('bash', { command: 'echo inline-out; exit 3' })
    assert.equal(inline.output, 'inline-out\n[exit code 3; status failed]')
    assert.equal(inline.metadata.exitCode, 3)
    const promoted = await run('bash', { command: 'sleep 0.5; echo late-out', wait_seconds: 0.1 })
    const id = promoted.metadata.taskId
    assert.match(promoted.output, new RegExp(`moved to the background as task ${id}`))
    await until(() => stub.calls.length === 1, 15_000, 'the reminder')
    assert.match(stub.texts()[0], new RegExp(`${id}: completed \\(exit code 0\\).*late-out`, 's'))
    assert.ok(!stub.texts()[0].includes('inline-out'), 'an inline result is not reminded')
  })

  test('completions that arrive together become ONE reminder', TIMEOUT, async (t) => {
    if (ocMissing) return t.skip(ocMissing)
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
    if (ocMissing) return t.skip(ocMissing)
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
    if (ocMissing) return t.skip(ocMissing)
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
    if (ocMissing) return t.skip(ocMissing)
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
    if (ocMissing) return t.skip(ocMissing)
    const { run, stub } = await opencode(t, { manager: { longRunningIntervalMs: 150 } })
    const id = (await run('bash', { command: 'sleep 0.5; echo lr-done', background: true })).metadata.taskId
    await until(() => stub.texts().some((text) => text.includes(`${id}: completed`)), 15_000, 'the completion')
    const texts = stub.texts()
    assert.ok(texts.every((text) => text.startsWith(`${HEADER}\n`)))
    assert.match(texts[0], new RegExp(`^\\[BACKGROUND BASH COMPLETED\\]\\n- ${id}: still running after 0\\.[0-9]s: sleep 0\\.5; echo lr-done\\n`))
    assert.match(texts.at(-1), /lr-done/)
  })

  test('pty: true runs in a terminal; bash_write types into it; bash_status shows the screen', TIMEOUT, async (t) => {
    if (ocMissing) return t.skip(ocMissing)
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
    if (ocMissing) return t.skip(ocMissing)
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
})
