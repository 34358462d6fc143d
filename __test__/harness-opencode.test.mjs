// opencode-bgshell in the real `opencode serve` (opencode-ai from npm, its own embedded Bun):
// opencode.json lists `"plugin": ["opencode-bgshell"]`, opencode installs it by name with its
// embedded npm from the test registry, and the test drives a session through the HTTP API
// against the scripted model; the scenarios are in harness-scenarios.mjs. Each home is a temp
// dir (HOME, XDG dirs, npm cache, BGSHELL_HOME): nothing touches the real home.
// The harness comes from `node scripts/harnesses.mjs` (the cache folder CI keeps).
import { mkdirSync, writeFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { collectLines, kill, start, until } from './harness-lib.mjs'
import { DENIED_MARKER, harnessSuite } from './harness-scenarios.mjs'

function freePort() {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** One opencode message part as a transcript entry, or nothing. */
function entryOf(role, part) {
  if (part.type === 'text') return [{ role, text: part.text }]
  // A tool call counts once it has a result (pending and running parts have none).
  if (part.type === 'tool' && part.state?.status === 'completed') return [{ role: 'tool', text: part.state.output }]
  if (part.type === 'tool' && part.state?.status === 'error') return [{ role: 'tool', text: part.state.error }]
  return []
}

async function install(h, { home, env: base, model }) {
  const project = join(home, 'project')
  mkdirSync(project)
  // Installed by name: opencode's embedded npm fetches it (from the test registry) at start.
  writeFileSync(
    join(project, 'opencode.json'),
    JSON.stringify({
      plugin: ['opencode-bgshell'],
      model: 'mock/scripted',
      small_model: 'mock/scripted',
      share: 'disabled',
      // The user's rules for bash, which our bash must honour as opencode's own does.
      permission: { bash: { '*': 'allow', [`touch *${DENIED_MARKER}*`]: 'deny' } },
      autoupdate: false,
      provider: {
        mock: {
          npm: '@ai-sdk/openai-compatible',
          name: 'Scripted',
          options: { baseURL: model.url, apiKey: 'test' },
          models: { scripted: { name: 'Scripted', tool_call: true } },
        },
      },
    }),
  )
  const env = {
    ...base,
    OPENCODE_DISABLE_AUTOUPDATE: '1',
    OPENCODE_DISABLE_MODELS_FETCH: '1',
    OPENCODE_DISABLE_LSP_DOWNLOAD: '1',
    OPENCODE_DISABLE_DEFAULT_PLUGINS: '1',
  }
  let sessionId

  return async function launch() {
    const port = await freePort()
    const child = start(h.binPath, ['serve', '--port', String(port), '--hostname', '127.0.0.1', '--print-logs'], {
      cwd: project,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const logs = collectLines(child.stderr)
    collectLines(child.stdout)
    const base = `http://127.0.0.1:${port}`
    async function api(method, path, body) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`opencode exited:\n${logs.slice(-30).join('\n')}`)
      const res = await fetch(`${base}${path}`, {
        method,
        headers: { 'content-type': 'application/json', 'x-opencode-directory': project },
        ...(body ? { body: JSON.stringify(body) } : {}),
        signal: AbortSignal.timeout(30_000),
      })
      const text = await res.text()
      if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
      return text ? JSON.parse(text) : undefined
    }
    await until(
      async () => {
        try {
          return (await fetch(`${base}/config`, { signal: AbortSignal.timeout(5_000) })).ok
        } catch (error) {
          if (child.exitCode !== null || child.signalCode !== null) throw error
          return false
        }
      },
      90_000,
      'opencode serve to answer',
    )
    sessionId ??= (await api('POST', '/session', {})).id
    // The event stream: toasts, tool-part updates.
    const events = []
    const stream = new AbortController()
    void (async () => {
      try {
        const res = await fetch(`${base}/event`, { headers: { 'x-opencode-directory': project }, signal: stream.signal })
        const decoder = new TextDecoder()
        let buf = ''
        for await (const chunk of res.body) {
          buf += decoder.decode(chunk, { stream: true })
          let i
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const data = buf.slice(0, i).split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5)).join('')
            buf = buf.slice(i + 2)
            try {
              if (data) events.push(JSON.parse(data))
            } catch {}
          }
        }
      } catch {}
    })()
    return {
      prompt: (text) => api('POST', `/session/${sessionId}/prompt_async`, { parts: [{ type: 'text', text }] }),
      abort: () => api('POST', `/session/${sessionId}/abort`),
      ui: () => ({ toasts: events.filter((e) => e.type === 'tui.toast.show').map((e) => e.properties) }),
      async transcript() {
        const messages = await api('GET', `/session/${sessionId}/message`)
        return messages.flatMap((m) => m.parts.flatMap((p) => entryOf(m.info.role, p)))
      },
      kill: async () => {
        stream.abort()
        await kill(child)
      },
    }
  }
}

harnessSuite('opencode-', (h) => `opencode-bgshell in opencode-ai@${h.version}`, install)
