// opencode-bgshell: durable background bash for opencode. opencode.json:
//   { "plugin": ["opencode-bgshell"] }   or   ["opencode-bgshell", { "foregroundWaitMs": 30000 }]
//
// Glue only: the tools, reminders and session lifecycle are bgshell/agent's. Here they meet
// opencode's plugin API: each agent tool becomes a plugin tool (its JSON Schema parameters as
// zod), a reminder is a prompt sent with client.session.promptAsync (the model is woken without
// a user message), and a session's tasks are replayed when the plugin starts (every session of
// this directory that still owes a reminder), when the session is first used, and on
// session.idle. Completions are acked only after opencode accepted the prompt.
//
// opencode calls every export of this module as a plugin: export nothing else from here.
import type { Hooks, Plugin, PluginOptions } from '@opencode-ai/plugin'
import { BgshellAgent, bashPermissions, shellCommands, type BgshellAgentOptions, type ObjectSchema, type ParamSchema, type PermissionRequest } from 'bgshell/agent'
import { z } from 'zod'

interface OpencodeBgshellOptions {
  /** Store root; default $BGSHELL_HOME, else ~/.local/state/bgshell. */
  storageDir?: string
  /** How long a foreground `bash` call waits before the command moves to the background (ms). */
  foregroundWaitMs?: number
  /** Any other ManagerOptions (defaultTimeoutMs, maxRunning, ...). */
  manager?: BgshellAgentOptions['manager']
}

/**
 * What to ask opencode before a tool runs: `bash` exactly as opencode's own bash asks (see
 * bashPermissions in bgshell/agent); `bash_write` as the commands the typed text would run in
 * the terminal's shell (the text as one pattern when it holds none, or the keys pressed).
 */
function permissionsFor(
  tool: string,
  args: Record<string, unknown>,
  context: { directory: string; worktree: string },
): PermissionRequest[] {
  const scope = { cwd: context.directory, directory: context.directory, worktree: context.worktree }
  if (tool === 'bash') return bashPermissions(String(args.command), scope)
  if (tool !== 'bash_write') return []
  const input = typeof args.input === 'string' ? args.input : ''
  const keys = Array.isArray(args.keys) ? args.keys.map(String) : []
  const metadata = { command: input, taskId: args.task_id, keys }
  const asked = input.trim() === '' ? [] : bashPermissions(input, scope)
  if (asked.some((r) => r.permission === 'bash')) return asked.map((r) => ({ ...r, metadata: { ...r.metadata, ...metadata } }))
  const text = input.trim() !== '' ? input.trim() : keys.join(' ')
  if (text === '') return asked
  const words = shellCommands(text)[0]?.words ?? [text]
  return [...asked, { permission: 'bash', patterns: [text], always: [`${words[0] ?? text} *`], metadata }]
}

function zodOf(param: ParamSchema): z.ZodType {
  let type: z.ZodType
  if (param.type === 'string') type = param.enum ? z.enum(param.enum as [string, ...string[]]) : z.string()
  else if (param.type === 'number') type = z.number()
  else if (param.type === 'boolean') type = z.boolean()
  else type = z.array(z.string())
  return param.description ? type.describe(param.description) : type
}

function zodShape(schema: ObjectSchema): Record<string, z.ZodType> {
  return Object.fromEntries(
    Object.entries(schema.properties).map(([name, param]) => {
      const type = zodOf(param)
      return [name, schema.required.includes(name) ? type : type.optional()]
    }),
  )
}

export const BgshellPlugin: Plugin = async ({ client, directory }, pluginOptions?: PluginOptions): Promise<Hooks> => {
  const options = (pluginOptions ?? {}) as OpencodeBgshellOptions
  const agent = new BgshellAgent({
    harness: 'opencode',
    manager: {
      ...(options.storageDir !== undefined ? { storageDir: options.storageDir } : {}),
      ...options.manager,
    },
    ...(options.foregroundWaitMs !== undefined ? { foregroundWaitMs: options.foregroundWaitMs } : {}),
    // opencode's own bash: "...output truncated...\n\nFull output saved to: <path>".
    outputStyle: 'opencode',
    retries: 5,
    async deliver(sessionID, text) {
      const response = await client.session.promptAsync({
        path: { id: sessionID },
        query: { directory },
        body: { parts: [{ type: 'text', text }] },
      })
      // Not handed over: the completions stay drainable; offered again (retries, next idle).
      if (response.error !== undefined) throw new Error(`promptAsync failed: ${JSON.stringify(response.error)}`)
    },
  })
  agent.start()

  // A toast in the TUI when a background task ends (opencode serve without a TUI ignores it).
  agent.manager.onEvent((event) => {
    if (event.type !== 'completion') return
    const c = event.completion
    if (!agent.manager.get(c.taskId)?.notifyOnCompletion) return
    const ok = c.status === 'completed'
    const exit = c.exitCode === undefined ? c.status : `${c.status}, exit ${c.exitCode}`
    const tui = (client as { tui?: typeof client.tui }).tui
    if (!tui) return
    void tui
      .showToast({
        query: { directory },
        body: {
          title: `Background task ${ok ? 'finished' : 'ended'}`,
          message: `${c.taskId} (${exit}): ${c.command.replace(/\s+/g, ' ').slice(0, 80)}`,
          variant: ok ? 'success' : 'error',
        },
      })
      .catch(() => {})
  })

  // Completions that ended while opencode was down: replay every session of this directory that
  // still owes a reminder, once opencode has finished starting this plugin. (A prompt refused
  // this early is offered again: see `retries`, and on the session's next idle.)
  setTimeout(() => {
    try {
      for (const sessionID of agent.pendingSessions({ projectRoot: directory })) void agent.attach(sessionID)
    } catch {
      // disposed already
    }
  }, 0)

  const tools: Hooks['tool'] = {}
  for (const spec of agent.tools) {
    tools[spec.name] = {
      description: spec.description,
      args: zodShape(spec.parameters),
      async execute(args, context) {
        // Asked as opencode's own bash asks: the same permission keys and patterns, so the
        // user's `permission` rules (deny / ask / allow) apply; a denial throws here.
        for (const request of permissionsFor(spec.name, args as Record<string, unknown>, context)) await context.ask(request)
        await agent.replayOnce(context.sessionID)
        const out = await spec.execute(args as Record<string, unknown>, {
          sessionId: context.sessionID,
          cwd: context.directory,
          projectRoot: directory,
          signal: context.abort,
          // opencode 1.18 drops a plugin tool's ctx.metadata() (it returns an Effect nobody
          // runs); a later opencode that honours it shows the output while it runs.
          onUpdate: (output) => {
            try {
              context.metadata({ metadata: { output } })
            } catch {}
          },
        })
        // A command that failed is an answer, as with opencode's own bash; a failed call throws.
        if (out.isError) throw new Error(out.text)
        const task = out.details.task
        return { title: out.title, output: out.text, metadata: { taskId: task?.taskId, exitCode: task?.exitCode } }
      },
    }
  }

  return {
    tool: tools,

    async event({ event }) {
      // Pull, do not push: when a session goes idle, offer what is still undelivered.
      if (event.type === 'session.idle') await agent.attach(event.properties.sessionID)
    },

    async dispose() {
      // Tasks keep running and record their exit; the next opencode run replays them.
      await agent.close()
    },
  } as Hooks
}
