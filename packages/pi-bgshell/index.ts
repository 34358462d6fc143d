// pi-bgshell: durable background bash for pi. `pi install npm:pi-bgshell`.
//
// Glue only: the tools, reminders and session lifecycle are bgshell/agent's. Here they meet
// pi's extension API: each agent tool becomes a pi tool (JSON Schema parameters, which pi
// validates as is), reminders become custom messages sent with triggerTurn (the model is woken
// without a user message), and a session's tasks are replayed on session_start, so completions
// that ended while pi was down arrive then. Events stop on session_shutdown; tasks keep running.
import type { ExtensionAPI, ExtensionContext } from '@mariozechner/pi-coding-agent'
import { BgshellAgent, type BgshellAgentOptions } from 'bgshell/agent'

export interface PiBgshellOptions {
  /** Passed to `new TaskManager()` (storageDir, defaultTimeoutMs, ...). */
  manager?: BgshellAgentOptions['manager']
  /** How long a foreground `bash` call waits before the command moves to the background (ms). */
  foregroundWaitMs?: number
  /** customType of the reminder messages (default 'bgshell'). */
  customType?: string
}

/** Environment knobs, for users who cannot pass options: see README.md. */
function fromEnv(): PiBgshellOptions {
  const wait = Number(process.env.BGSHELL_FOREGROUND_WAIT_MS)
  return Number.isFinite(wait) && wait > 0 ? { foregroundWaitMs: wait } : {}
}

export function createExtension(options: PiBgshellOptions = {}) {
  return function bgshell(pi: ExtensionAPI): void {
    let sessionId: string | undefined
    let shutDown = false
    const agent = new BgshellAgent({
      harness: 'pi',
      ...(options.manager ? { manager: options.manager } : {}),
      ...(options.foregroundWaitMs !== undefined ? { foregroundWaitMs: options.foregroundWaitMs } : {}),
      accepts: (id) => id === sessionId,
      deliver(_sessionId, text, taskIds) {
        if (shutDown) throw new Error('pi session is shut down')
        // Returning normally is the hand-over after which the completions are acked; pi throws
        // here once the session is gone, and they stay for the next session_start.
        pi.sendMessage(
          { customType: options.customType ?? 'bgshell', content: text, display: true, details: { taskIds } },
          { triggerTurn: true, deliverAs: 'followUp' },
        )
      },
    })

    // A tool call made before session_start (a late registration) adopts its session too.
    const sessionOf = (ctx: ExtensionContext): string => {
      const id = ctx.sessionManager.getSessionId()
      if (sessionId === undefined && !shutDown) {
        sessionId = id
        agent.start()
      }
      return id
    }

    pi.on('session_start', async (_event, ctx) => {
      sessionId = ctx.sessionManager.getSessionId()
      agent.start()
      await agent.attach(sessionId)
    })

    pi.on('session_shutdown', async () => {
      shutDown = true
      await agent.close()
    })

    for (const tool of agent.tools) {
      pi.registerTool({
        name: tool.name,
        label: tool.label,
        description: tool.description,
        // pi validates tool arguments against plain JSON Schema (0.73 and 1.x alike).
        parameters: tool.parameters as never,
        async execute(_toolCallId, params, signal, _onUpdate, ctx) {
          const out = await tool.execute(params as Record<string, unknown>, {
            sessionId: sessionOf(ctx),
            cwd: ctx.cwd,
            ...(signal ? { signal } : {}),
          })
          // Like pi's own bash tool, a failed command is a tool error.
          if (out.isError || out.failed) throw new Error(out.text)
          return { content: [{ type: 'text' as const, text: out.text }], details: out.details }
        },
      })
    }
  }
}

/** The extension pi loads: default options (store in $BGSHELL_HOME or ~/.local/state/bgshell). */
export default createExtension(fromEnv())
