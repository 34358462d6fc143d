// What the real-harness tests (harness-pi.test.mjs, harness-opencode.test.mjs) share:
// - the packages as a user gets them: `npm pack` of bgshell (and of npm/* platform packages when
//   the tree has them) and of packages/*, served by a tiny npm registry on 127.0.0.1, so pi and
//   opencode install `pi-bgshell` / `opencode-bgshell` BY NAME with their own npm. Other packages
//   the adapters depend on (zod) come from tarballs that `node scripts/harnesses.mjs` fetched into
//   the cache folder; nothing else is served, so the install is offline;
// - a scripted model: an OpenAI-compatible chat-completions server (SSE) on 127.0.0.1 whose
//   replies are read from the prompt (see Model below);
// - processes started in their own process group, each killed by pid at the end.
import { execFileSync, spawn } from 'node:child_process'
import { createHash } from 'node:crypto'
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import { join } from 'node:path'
import { depsDir } from '../scripts/harnesses.mjs'
import { preparePlatforms, stageRoot } from '../scripts/stage.mjs'
import { root, sleep, tempDir } from './helpers.mjs'

export const HEADER = '[BACKGROUND BASH COMPLETED]'
export const TASK_ID = /bash-[0-9a-f]{16}/g

/** Polls `predicate` every 50 ms until it returns a truthy value (returned), or fails after `ms`. */
export async function until(predicate, ms, what) {
  const end = Date.now() + ms
  for (;;) {
    const value = await predicate()
    if (value) return value
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`)
    await sleep(50)
  }
}

// ---------------------------------------------------------------------------------------------
// Processes

const started = new Set()

/** Starts a process in its own group; `killAll()` (or `kill(child)`) ends it and its children. */
export function start(command, args, options) {
  const child = spawn(command, args, { ...options, detached: true })
  started.add(child)
  child.once('exit', () => started.delete(child))
  return child
}

/** SIGKILLs the process group of `child` (by its pid) and waits for the exit. */
export async function kill(child) {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  try {
    process.kill(-child.pid, 'SIGKILL')
  } catch {
    try {
      process.kill(child.pid, 'SIGKILL')
    } catch {}
  }
  await exited
}

export async function killAll() {
  await Promise.all([...started].map(kill))
}

/** Kills, by pid, the tasks a bgshell store still runs (their supervisors hold them). */
export function killStoreTasks(storageDir) {
  const out = execFileSync(process.execPath, ['-e', `
    const { TaskManager } = require(${JSON.stringify(join(root, 'index.js'))})
    const m = new TaskManager({ storageDir: ${JSON.stringify(storageDir)} })
    const live = m.list({ status: ['starting', 'running', 'killing'] })
    Promise.all(live.map((t) => m.replay(t.sessionId)))
      .then(() => Promise.all(m.list({ status: ['starting', 'running', 'killing'] }).map((t) => m.kill(t.taskId, { signal: 'SIGKILL', graceMs: 0 }).catch(() => {}))))
      .then(() => m.close({ killRunning: true }))
      .then(() => console.log(live.length))
  `], { encoding: 'utf8' })
  return Number(out.trim())
}

// ---------------------------------------------------------------------------------------------
// Packages and the registry

const pack = (dir, dest) => {
  const out = execFileSync('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dest], {
    cwd: dir,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  return join(dest, JSON.parse(out)[0].filename)
}

/** Why the packages cannot be packed as a user gets them, or null. */
export function unpackable() {
  for (const f of ['agent/index.mjs', 'index.js']) {
    if (!existsSync(join(root, f))) return `${f} is missing: run \`npm run build\` (or \`npm run build:agent\`)`
  }
  if (!readdirSync(root).some((f) => f.endsWith('.node')) && !existsSync(join(root, 'npm'))) {
    return 'no built addon (*.node): run `npm run build`'
  }
  return null
}

let packed
/**
 * Tarballs: bgshell, npm/* (when present), packages/*, and the fetched dependencies. Packed once
 * per process while `dest` exists (Bun runs every test file in one process; each file's after()
 * removes it).
 */
/** Removes the packs, if any were made (without packing them first). */
export function dropPacks() {
  if (packed) rmSync(packed.dest, { recursive: true, force: true })
  packed = undefined
}

export function packAll() {
  if (packed && existsSync(packed.dest)) return packed
  const dest = tempDir('bgshell-packs-')
  // As a release publishes them (scripts/stage.mjs): bgshell naming its platform packages in
  // optionalDependencies, the platform packages holding the built addon and supervisor.
  const { dirs: platforms, optionalDependencies } = preparePlatforms(root)
  const stage = stageRoot(root, optionalDependencies)
  const dirs = [stage, ...platforms]
  const base = join(root, 'packages')
  if (existsSync(base)) for (const d of readdirSync(base).sort()) if (existsSync(join(base, d, 'package.json'))) dirs.push(join(base, d))
  let tarballs
  try {
    tarballs = dirs.map((d) => pack(d, dest))
  } finally {
    rmSync(stage, { recursive: true, force: true })
  }
  if (existsSync(depsDir)) for (const f of readdirSync(depsDir)) if (f.endsWith('.tgz')) tarballs.push(join(depsDir, f))
  packed = { dest, tarballs }
  return packed
}

function manifestOf(tarball) {
  const json = execFileSync('tar', ['-xOzf', tarball, 'package/package.json'], { encoding: 'utf8' })
  return JSON.parse(json)
}

/**
 * A read-only npm registry on 127.0.0.1 serving exactly these tarballs (one version each).
 * `hits` counts tarball downloads by package name.
 */
export async function startRegistry(tarballs) {
  const packages = new Map()
  const files = new Map()
  const server = createServer((req, res) => {
    const url = decodeURIComponent(req.url.split('?')[0])
    if (url.startsWith('/-/files/')) {
      const file = files.get(url.slice('/-/files/'.length))
      if (!file) return res.writeHead(404).end()
      server.hits.set(file.name, (server.hits.get(file.name) ?? 0) + 1)
      res.writeHead(200, { 'content-type': 'application/octet-stream' })
      return res.end(readFileSync(file.path))
    }
    const name = url.slice(1)
    const entry = packages.get(name)
    if (!entry) return res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not found"}')
    res.writeHead(200, { 'content-type': 'application/json' })
    res.end(JSON.stringify(entry))
  })
  server.hits = new Map()
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const url = `http://127.0.0.1:${server.address().port}/`
  for (const path of tarballs) {
    const manifest = manifestOf(path)
    const data = readFileSync(path)
    const fileName = `${manifest.name.replace('/', '-')}-${manifest.version}.tgz`
    files.set(fileName, { path, name: manifest.name })
    packages.set(manifest.name, {
      name: manifest.name,
      'dist-tags': { latest: manifest.version },
      versions: {
        [manifest.version]: {
          ...manifest,
          _id: `${manifest.name}@${manifest.version}`,
          dist: {
            tarball: `${url}-/files/${fileName}`,
            shasum: createHash('sha1').update(data).digest('hex'),
            integrity: `sha512-${createHash('sha512').update(data).digest('base64')}`,
          },
        },
      },
    })
  }
  return { url, server, close: () => new Promise((r) => server.close(r)) }
}

/** npm settings for a child: this registry, caches and prefixes inside `home`, nothing global. */
export function npmEnv(home, registry) {
  mkdirSync(join(home, '.npm-global'), { recursive: true })
  return {
    HOME: home,
    npm_config_registry: registry,
    npm_config_cache: join(home, '.npm-cache'),
    npm_config_prefix: join(home, '.npm-global'),
    npm_config_userconfig: join(home, '.npmrc'),
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    XDG_CONFIG_HOME: join(home, '.config'),
    XDG_DATA_HOME: join(home, '.local', 'share'),
    XDG_CACHE_HOME: join(home, '.cache'),
    XDG_STATE_HOME: join(home, '.local', 'state'),
  }
}

// ---------------------------------------------------------------------------------------------
// The scripted model

/** The text of an OpenAI chat message (string or parts). */
export function textOf(message) {
  const c = message?.content
  if (typeof c === 'string') return c
  if (Array.isArray(c)) return c.map((p) => (typeof p === 'string' ? p : (p.text ?? ''))).join('')
  return ''
}

/**
 * An OpenAI-compatible chat-completions server on 127.0.0.1. Its script is in the prompt: a user
 * message with lines `CALL <tool> <json args>` makes the model call those tools one after the
 * other (one per reply; `$TASK` in the args stands for the last task id a tool result named),
 * then answer `done`. A reminder (a user message starting with the header) is answered `noted`.
 * Anything else is answered `ok`. Every request is kept in `requests`, with what woke it.
 */
export async function startModel() {
  const requests = []
  const server = createServer(async (req, res) => {
    let body = ''
    for await (const chunk of req) body += chunk
    if (req.method !== 'POST' || !req.url.endsWith('/chat/completions')) {
      res.writeHead(req.url.endsWith('/models') ? 200 : 404, { 'content-type': 'application/json' })
      return res.end(JSON.stringify({ object: 'list', data: [{ id: 'scripted', object: 'model' }] }))
    }
    const request = JSON.parse(body)
    const reply = replyTo(request)
    requests.push({ at: Date.now(), last: lastUser(request.messages), reply, tools: (request.tools ?? []).map((t) => t.function?.name) })
    respond(res, request, reply)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  let callSeq = 0

  function lastUser(messages) {
    const user = [...messages].reverse().find((m) => m.role === 'user')
    return textOf(user)
  }

  function replyTo(request) {
    const messages = request.messages ?? []
    const tools = new Set((request.tools ?? []).map((t) => t.function?.name))
    const userAt = messages.findLastIndex((m) => m.role === 'user')
    const prompt = textOf(messages[userAt])
    if (prompt.includes(HEADER)) return { text: `noted: ${(prompt.match(TASK_ID) ?? []).join(' ')}` }
    const calls = [...prompt.matchAll(/^CALL (\w+) (.*)$/gm)].map((m) => ({ name: m[1], args: m[2] }))
    if (calls.length === 0 || tools.size === 0) return { text: 'ok' }
    const after = messages.slice(userAt + 1)
    const done = after.filter((m) => m.role === 'tool').length
    if (done >= calls.length) return { text: 'done' }
    const lastTask = after
      .filter((m) => m.role === 'tool')
      .map((m) => textOf(m).match(TASK_ID)?.[0])
      .filter(Boolean)
      .at(-1)
    const { name, args } = calls[done]
    return { tool: { id: `call_${++callSeq}`, name, arguments: args.replaceAll('$TASK', lastTask ?? 'none') } }
  }

  function respond(res, request, reply) {
    const base = { id: `chatcmpl-${requests.length}`, created: Math.floor(Date.now() / 1000), model: request.model }
    const usage = { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15 }
    const finish = reply.tool ? 'tool_calls' : 'stop'
    const message = reply.tool
      ? { role: 'assistant', content: null, tool_calls: [{ index: 0, id: reply.tool.id, type: 'function', function: { name: reply.tool.name, arguments: reply.tool.arguments } }] }
      : { role: 'assistant', content: reply.text }
    if (!request.stream) {
      res.writeHead(200, { 'content-type': 'application/json' })
      return res.end(JSON.stringify({ ...base, object: 'chat.completion', choices: [{ index: 0, message, finish_reason: finish }], usage }))
    }
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    const send = (choices, extra = {}) => res.write(`data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', choices, ...extra })}\n\n`)
    send([{ index: 0, delta: { role: 'assistant', ...(reply.tool ? { tool_calls: message.tool_calls } : { content: reply.text }) }, finish_reason: null }])
    send([{ index: 0, delta: {}, finish_reason: finish }], { usage })
    res.end('data: [DONE]\n\n')
  }

  return {
    url: `http://127.0.0.1:${server.address().port}/v1`,
    requests,
    /** Requests woken by a reminder that names `taskId`. */
    remindersFor: (taskId) => requests.filter((r) => r.last.includes(HEADER) && r.last.includes(taskId)),
    close: () => new Promise((r) => server.close(r)),
  }
}

/** Collects a child's output lines; `lines` grows as they come. */
export function collectLines(stream) {
  const lines = []
  let buf = ''
  stream.setEncoding('utf8')
  stream.on('data', (d) => {
    buf += d
    let i
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(buf.slice(0, i).replace(/\r$/, ''))
      buf = buf.slice(i + 1)
    }
  })
  return lines
}

/**
 * Runs a command to its end without blocking this process (the registry and the model serve
 * from here), killing it after `ms`. Resolves with its exit code and output.
 */
export async function run(command, args, options, ms = 120_000) {
  const child = start(command, args, { ...options, stdio: ['ignore', 'pipe', 'pipe'] })
  let output = ''
  child.stdout.on('data', (d) => (output += d))
  child.stderr.on('data', (d) => (output += d))
  const timer = setTimeout(() => void kill(child), ms)
  const code = await new Promise((resolve) => child.once('exit', (c, s) => resolve(c ?? s)))
  clearTimeout(timer)
  return { code, output }
}
