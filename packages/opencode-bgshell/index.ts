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
import { BgshellAgent, type BgshellAgentOptions, type ObjectSchema, type ParamSchema } from 'bgshell/agent'
import { z } from 'zod'

interface OpencodeBgshellOptions {
  /** Store root; default $BGSHELL_HOME, else ~/.local/state/bgshell. */
  storageDir?: string
  /** How long a foreground `bash` call waits before the command moves to the background (ms). */
  foregroundWaitMs?: number
  /** Any other ManagerOptions (defaultTimeoutMs, maxRunning, ...). */
  manager?: BgshellAgentOptions['manager']
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
        await agent.replayOnce(context.sessionID)
        const out = await spec.execute(args as Record<string, unknown>, {
          sessionId: context.sessionID,
          cwd: context.directory,
          projectRoot: directory,
          signal: context.abort,
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
