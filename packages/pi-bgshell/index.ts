// pi-bgshell: durable background bash for pi. `pi install npm:pi-bgshell`.
//
// Glue only: the tools, reminders and session lifecycle are bgshell/agent's. Here they meet
// pi's extension API: each agent tool becomes a pi tool (JSON Schema parameters, which pi
// validates as is), reminders become custom messages sent with triggerTurn (the model is woken
// without a user message), and a session's tasks are replayed on session_start, so completions
// that ended while pi was down arrive then. Events stop on session_shutdown; tasks keep running.
import type { ExtensionAPI, ExtensionContext } from '@mariozechner/pi-coding-agent'
import { BgshellAgent, describeTask, type BgshellAgentOptions } from 'bgshell/agent'

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

    // The status line: how many of this session's tasks run (none: no status).
    let ui: ExtensionContext['ui'] | undefined
    const RUNNING = ['starting', 'running', 'killing'] as const
    const refreshStatus = () => {
      if (!ui || shutDown || sessionId === undefined) return
      try {
        const running = agent.manager.list({ sessionId, status: [...RUNNING] }).length
        ui.setStatus('bgshell', running > 0 ? `bg: ${running} running` : undefined)
      } catch {
        // closed meanwhile
      }
    }
    agent.manager.onEvent((event) => {
      if (event.type === 'completion') refreshStatus()
    })

    pi.on('session_start', async (_event, ctx) => {
      sessionId = ctx.sessionManager.getSessionId()
      ui = ctx.ui
      agent.start()
      await agent.attach(sessionId)
      refreshStatus()
    })

    pi.on('session_shutdown', async () => {
      shutDown = true
      ui = undefined
      await agent.close()
    })

    // /bg: the person's view of the tasks (list, logs, kill), and a picker where pi has a UI.
    pi.registerCommand('bg', {
      description: 'Background bash tasks: /bg [list | logs <id> | kill <id>]',
      handler: async (args, ctx) => {
        const id = sessionOf(ctx)
        ui = ctx.ui
        const [verb = '', taskId] = args.trim().split(/\s+/)
        const tasks = agent.manager.list({ sessionId: id })
        const show = (text: string) => ctx.ui.notify(text, 'info')
        const logs = async (t: string) => {
          const task = agent.manager.get(t)
          if (!task) return ctx.ui.notify(`No task ${t}`, 'error')
          show(await agent.statusText(task, 40))
        }
        const kill = async (t: string) => {
          const task = await agent.manager.kill(t).catch((error: Error) => error)
          if (task instanceof Error) return ctx.ui.notify(task.message, 'error')
          // The person stopped it: the model gets no reminder of it.
          agent.queue.discard(id, task.taskId)
          show(`Killed: ${describeTask(task)}`)
          refreshStatus()
        }
        if (verb === 'logs' && taskId) return logs(taskId)
        if (verb === 'kill' && taskId) return kill(taskId)
        if (tasks.length === 0) return show('No background tasks in this session.')
        if (verb === '' && ctx.hasUI) {
          // A panel: pick a task, then what to do with it.
          const picked = await ctx.ui.select('Background tasks', tasks.map(describeTask))
          const task = tasks.find((t) => describeTask(t) === picked)
          if (!task) return
          const action = await ctx.ui.select(describeTask(task), RUNNING.includes(task.status as never) ? ['logs', 'kill'] : ['logs'])
          if (action === 'logs') return logs(task.taskId)
          if (action === 'kill') return kill(task.taskId)
          return
        }
        show(tasks.map(describeTask).join('\n'))
      },
    })

    for (const tool of agent.tools) {
      pi.registerTool({
        name: tool.name,
        label: tool.label,
        description: tool.description,
        // A tool that replaces pi's bash does not inherit its system-prompt text: give our own.
        ...(tool.promptSnippet ? { promptSnippet: tool.promptSnippet } : {}),
        ...(tool.promptGuidelines ? { promptGuidelines: tool.promptGuidelines } : {}),
        // pi validates tool arguments against plain JSON Schema (0.73 and 1.x alike).
        parameters: tool.parameters as never,
        async execute(_toolCallId, params, signal, onUpdate, ctx) {
          ui ??= ctx.ui
          let out
          try {
            out = await tool.execute(params as Record<string, unknown>, {
              sessionId: sessionOf(ctx),
              cwd: ctx.cwd,
              ...(signal ? { signal } : {}),
              // A running foreground command's output, as pi's own bash streams it.
              ...(onUpdate ? { onUpdate: (text: string) => onUpdate({ content: [{ type: 'text', text }], details: {} }) } : {}),
            })
          } finally {
            refreshStatus()
          }
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
