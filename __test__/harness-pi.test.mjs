// pi-bgshell in the real pi, per supported pi version: `pi install npm:pi-bgshell` from the test
// registry (pi runs the npm on PATH), then `pi --mode rpc` against the scripted model; the
// scenarios are in harness-scenarios.mjs. Each home is a temp dir (HOME, PI_CODING_AGENT_DIR,
// npm prefix and cache, BGSHELL_HOME): nothing touches the real home.
// The harnesses come from `node scripts/harnesses.mjs` (the cache folder CI keeps).
import { mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { nodeFor } from '../scripts/harnesses.mjs'
import { collectLines, kill, run, start, textOf, until } from './harness-lib.mjs'
import { DENIED_MARKER, harnessSuite } from './harness-scenarios.mjs'

/** The text of a pi message (custom messages carry a string). */
const piText = (m) => (typeof m.content === 'string' ? m.content : textOf({ content: (m.content ?? []).filter((p) => p.type === 'text') }))

async function install(h, { home, env: base, model }) {
  const node = nodeFor(h)
  const agentDir = join(home, '.pi', 'agent')
  const project = join(home, 'project')
  mkdirSync(agentDir, { recursive: true })
  mkdirSync(project)
  writeFileSync(
    join(agentDir, 'models.json'),
    JSON.stringify({
      providers: {
        mock: {
          baseUrl: model.url,
          api: 'openai-completions',
          apiKey: 'test',
          compat: { supportsDeveloperRole: false, supportsReasoningEffort: false },
          models: [{ id: 'scripted', reasoning: false }],
        },
      },
    }),
  )
  const env = {
    ...base,
    // pi and the npm it runs use this Node.
    PATH: `${dirname(node)}:${process.env.PATH}`,
    PI_CODING_AGENT_DIR: agentDir,
    PI_SKIP_VERSION_CHECK: '1',
    PI_TELEMETRY: '0',
  }
  // Another extension's tool_call hook: pi's own way to block a tool call. Nothing of ours may
  // bypass it (the scenarios check that a command naming DENIED_MARKER never runs).
  mkdirSync(join(agentDir, 'extensions'), { recursive: true })
  writeFileSync(
    join(agentDir, 'extensions', 'blocker.ts'),
    `export default function (pi) {
  pi.on('tool_call', async (event) => {
    if (JSON.stringify(event.input ?? {}).includes('${DENIED_MARKER}')) return { block: true, reason: 'blocked by the test policy' }
  })
}
`,
  )
  const installed = await run(node, [h.binPath, 'install', 'npm:pi-bgshell'], { cwd: project, env })
  if (installed.code !== 0) throw new Error(`pi install npm:pi-bgshell failed (${installed.code}):\n${installed.output}`)

  let sessionFile
  return async function launch() {
    const args = [h.binPath, '--mode', 'rpc', '--provider', 'mock', '--model', 'scripted']
    if (sessionFile) args.push('--session', sessionFile)
    const child = start(node, args, { cwd: project, env: { ...env, PI_OFFLINE: '1' }, stdio: ['pipe', 'pipe', 'pipe'] })
    const lines = collectLines(child.stdout)
    const errors = collectLines(child.stderr)
    let seq = 0
    async function request(command) {
      const id = `t${++seq}`
      child.stdin.write(`${JSON.stringify({ ...command, id })}\n`)
      const line = await until(
        () => {
          if (child.exitCode !== null || child.signalCode !== null) throw new Error(`pi exited: ${errors.join('\n')}`)
          return lines.find((l) => l.startsWith('{') && JSON.parse(l).id === id)
        },
        30_000,
        `pi's answer to ${command.type}`,
      )
      const response = JSON.parse(line)
      if (!response.success) throw new Error(`${command.type} failed: ${line}`)
      return response.data
    }
    const state = await request({ type: 'get_state' })
    sessionFile ??= state.sessionFile
    const ui = () => {
      const requests = lines.filter((l) => l.includes('"extension_ui_request"')).map((l) => JSON.parse(l))
      return {
        status: requests.filter((r) => r.method === 'setStatus' && r.statusKey === 'bgshell').map((r) => r.statusText ?? null),
        notifications: requests.filter((r) => r.method === 'notify').map((r) => r.message),
      }
    }
    return {
      prompt: (message) => request({ type: 'prompt', message, streamingBehavior: 'followUp' }),
      abort: () => request({ type: 'abort' }),
      ui,
      /** Tool results streamed while a tool runs (pi's onUpdate), as text. */
      updates: () =>
        lines
          .filter((l) => l.includes('"tool_execution_update"'))
          .map((l) => JSON.parse(l))
          .map((e) => textOf({ content: (e.partialResult?.content ?? []).filter((p) => p.type === 'text') })),
      async transcript() {
        const { messages } = await request({ type: 'get_messages' })
        return messages.flatMap((m) => {
          if (m.role === 'user' || m.role === 'custom') return [{ role: 'user', text: piText(m) }]
          if (m.role === 'toolResult') return [{ role: 'tool', text: piText(m) }]
          if (m.role === 'assistant') return [{ role: 'assistant', text: piText(m) }]
          return []
        })
      },
      kill: () => kill(child),
    }
  }
}

harnessSuite('pi-', (h) => `pi-bgshell in ${h.pkg}@${h.version}`, install)
