// bgshell reference adapter for pi (@mariozechner/pi-coding-agent): durable background bash.
//
//   pi -e ./examples/pi-extension/index.ts
//   (it imports ../shared/common.ts: copy examples/shared/ along with this folder, side by side)
//
// Tools: bash (foreground with auto-promote, or background: true), bash_status, bash_kill,
// bash_watch, bash_write. Completions, long-running notices and watch matches of this session
// become ONE custom message per batch, sent with triggerTurn + deliverAs 'followUp', and the
// completions are acked only after pi accepted that message. Tasks are replayed on
// session_start (their undelivered completions are sent then); events stop on session_shutdown.
import type { AgentToolResult, ExtensionAPI, ExtensionContext } from '@mariozechner/pi-coding-agent'
import { StringEnum } from '@mariozechner/pi-ai'
import { Type } from 'typebox'
import { TaskManager, type ManagerOptions, type RunResult, type TaskSnapshot } from 'bgshell'
import { NOT_SUPPORTED, REMINDER_HEADER, ReminderQueue, describe, statusText, writeText } from '../shared/common.ts'

export interface BgshellPiOptions {
  /** Passed to `new TaskManager()`; `harness` defaults to 'pi', `agentEnv` to true. */
  manager?: ManagerOptions
  /** How long a foreground `bash` call waits before the command moves to the background. */
  foregroundWaitMs?: number
  /** customType of the reminder messages. */
  customType?: string
}

type Details = { task?: TaskSnapshot; tasks?: TaskSnapshot[]; [key: string]: unknown }

const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGKILL'] as const

function result(text: string, details: Details = {}): AgentToolResult<Details> {
  return { content: [{ type: 'text', text }], details }
}

export function createBgshellExtension(options: BgshellPiOptions = {}) {
  return function bgshellExtension(pi: ExtensionAPI): void {
    const manager = new TaskManager({ harness: 'pi', agentEnv: true, ...options.manager })
    const foregroundWaitMs = options.foregroundWaitMs ?? 30_000
    let sessionId: string | undefined
    let shutDown = false

    const queue = new ReminderQueue({
      manager,
      accepts: (id) => id === sessionId,
      deliver(_sessionId, text, taskIds) {
        if (shutDown) throw new Error('pi session is shut down')
        // pi.sendMessage returns nothing and throws after shutdown: returning normally is the
        // hand-over after which ReminderQueue acks the completions.
        pi.sendMessage(
          { customType: options.customType ?? 'bgshell', content: text, display: true, details: { taskIds } },
          { triggerTurn: true, deliverAs: 'followUp' },
        )
      },
    })

    // The session's id; a tool call made before session_start (e.g. after a late registration)
    // adopts its session too, so reminders flow either way.
    const sessionOf = (ctx: ExtensionContext): string => {
      const id = ctx.sessionManager.getSessionId()
      if (sessionId === undefined && !shutDown) {
        sessionId = id
        queue.start()
      }
      return id
    }

    pi.on('session_start', async (_event, ctx) => {
      sessionId = ctx.sessionManager.getSessionId()
      queue.start()
      try {
        // Reattach to tasks still running, finalise those that ended while pi was away.
        await manager.replay(sessionId)
      } catch (error) {
        if (ctx.hasUI) ctx.ui.notify(`bgshell: replay failed: ${(error as Error).message}`, 'warning')
      }
      await queue.drain(sessionId)
    })

    pi.on('session_shutdown', async () => {
      shutDown = true
      queue.stop()
      // Tasks keep running and record their exit; the next session_start replays them.
      await manager.close()
    })

    pi.registerTool({
      name: 'bash',
      label: 'Bash',
      description:
        'Run a bash command in the current working directory. It runs in the foreground for up to ' +
        `wait_seconds (default ${foregroundWaitMs / 1000}); if it is still running then, it moves to ` +
        'the background and you get a message starting with ' +
        `${REMINDER_HEADER} when it ends. Set background: true for servers, watchers and long builds. ` +
        'Optionally provide a timeout in seconds (the command is killed then).',
      parameters: Type.Object({
        command: Type.String({ description: 'Bash command to run' }),
        timeout: Type.Optional(Type.Number({ description: 'Kill the command after this many seconds' })),
        background: Type.Optional(Type.Boolean({ description: 'Start it in the background and return its task id at once' })),
        wait_seconds: Type.Optional(Type.Number({ description: 'Foreground wait before moving to the background' })),
        pty: Type.Optional(Type.Boolean({ description: 'Run it in a pseudo-terminal (interactive programs)' })),
      }),
      async execute(_toolCallId, params, signal, _onUpdate, ctx) {
        const base = {
          sessionId: sessionOf(ctx),
          command: params.command,
          cwd: ctx.cwd,
          mode: params.pty ? ('pty' as const) : ('pipes' as const),
          ...(params.timeout !== undefined ? { timeoutMs: Math.round(params.timeout * 1000) } : {}),
        }
        if (params.background) {
          const task = await manager.spawn({ ...base, notifyOnCompletion: true })
          return result(
            `Started background task ${task.taskId} (pid ${task.pid ?? '?'}). You will get a ` +
              `${REMINDER_HEADER} message when it ends; use bash_status to read its output meanwhile.`,
            { task },
          )
        }
        const waitMs = params.wait_seconds !== undefined ? Math.round(params.wait_seconds * 1000) : foregroundWaitMs
        const running = manager.run({ ...base, waitMs })
        // run() takes no AbortSignal and names the task only when it resolves: on abort, answer
        // at once and kill the task as soon as its id is known.
        const aborted = new Promise<'aborted'>((resolve) => {
          if (signal?.aborted) resolve('aborted')
          signal?.addEventListener('abort', () => resolve('aborted'), { once: true })
        })
        const first = await Promise.race([running, aborted])
        if (first === 'aborted') {
          void running.then((r) => (r.status === 'running' ? manager.kill(r.taskId) : r)).catch(() => {})
          throw new Error('Command aborted')
        }
        const run: RunResult = first
        if (run.promoted) return result(run.output, { task: run })
        const body = run.output.trim() === '' ? '(no output)' : run.output
        // The preview is exit-aware: a failure ends with "[exit code N; status S]". Like pi's own
        // bash tool, a failed command is a tool error.
        if (run.status !== 'completed') throw new Error(body)
        return result(body, { task: run })
      },
    })

    pi.registerTool({
      name: 'bash_status',
      label: 'Bash status',
      description:
        'Without task_id: list the background tasks of this session. With task_id: its status and the ' +
        'last lines of its output (pull output here; it is not streamed).',
      parameters: Type.Object({
        task_id: Type.Optional(Type.String()),
        lines: Type.Optional(Type.Number({ description: 'How many trailing lines (default 50)' })),
        stream: Type.Optional(StringEnum(['combined', 'stdout', 'stderr'] as const)),
      }),
      async execute(_toolCallId, params, _signal, _onUpdate, ctx) {
        if (params.task_id === undefined) {
          const tasks = manager.list({ sessionId: sessionOf(ctx) })
          return result(tasks.length === 0 ? 'No tasks in this session.' : tasks.map(describe).join('\n'), { tasks })
        }
        const task = manager.get(params.task_id)
        if (!task) throw new Error(`No task ${params.task_id}`)
        return result(await statusText(manager, task, params.lines, params.stream), { task })
      },
    })

    pi.registerTool({
      name: 'bash_kill',
      label: 'Bash kill',
      description: 'Stop a task: signal its whole process group (SIGKILL follows after a grace period).',
      parameters: Type.Object({
        task_id: Type.String(),
        signal: Type.Optional(StringEnum(SIGNALS)),
      }),
      async execute(_toolCallId, params, _signal, _onUpdate, ctx) {
        const task = await manager.kill(params.task_id, params.signal ? { signal: params.signal } : undefined)
        // The model learns of the end here: no reminder for it.
        queue.discard(sessionOf(ctx), task.taskId)
        return result(describe(task), { task })
      },
    })

    pi.registerTool({
      name: 'bash_watch',
      label: 'Bash watch',
      description:
        'Watch a task\'s output for a substring (pattern) or a regular expression (regex). ' +
        'wait: true blocks until it matches, the task exits, or timeout_seconds pass; otherwise ' +
        `a ${REMINDER_HEADER} message arrives when it matches.`,
      parameters: Type.Object({
        task_id: Type.String(),
        pattern: Type.Optional(Type.String()),
        regex: Type.Optional(Type.String()),
        wait: Type.Optional(Type.Boolean()),
        timeout_seconds: Type.Optional(Type.Number()),
      }),
      async execute(_toolCallId, params, signal, _onUpdate) {
        const what = {
          ...(params.pattern !== undefined ? { pattern: params.pattern } : {}),
          ...(params.regex !== undefined ? { regex: params.regex } : {}),
        }
        if (!params.wait) {
          const watchId = manager.watch(params.task_id, { ...what, once: true })
          return result(`Watching ${params.task_id} (${watchId}); you will be told when it matches.`, { watchId })
        }
        const found = await manager.waitFor(params.task_id, {
          ...what,
          ...(params.timeout_seconds !== undefined ? { timeoutMs: Math.round(params.timeout_seconds * 1000) } : {}),
          ...(signal ? { signal } : {}),
        })
        const text =
          found.reason === 'matched'
            ? `Matched ${JSON.stringify(found.matchText)} at byte ${found.matchOffset}; task ${found.snapshot.status}.`
            : found.reason === 'exited'
              ? `The task exited first: ${describe(found.snapshot)}`
              : `No match yet; task ${found.snapshot.status}.`
        return result(text, { task: found.snapshot, reason: found.reason })
      },
    })

    pi.registerTool({
      name: 'bash_write',
      label: 'Bash write',
      description:
        'Type into an interactive task started with pty: true. input is sent as typed; keys are ' +
        'pressed after it (enter, tab, esc, up, down, ctrl-c, ...). Read the result with bash_status.',
      parameters: Type.Object({
        task_id: Type.String(),
        input: Type.Optional(Type.String({ description: 'Text to type' })),
        keys: Type.Optional(Type.Array(Type.String(), { description: 'Keys to press after the text, e.g. ["enter"]' })),
      }),
      async execute(_toolCallId, params) {
        const text = await writeText(manager, params.task_id, params.input, params.keys)
        return result(text, { supported: !text.startsWith(NOT_SUPPORTED) })
      },
    })
  }
}

/** The extension pi loads: default options (store in $BGSHELL_HOME or ~/.local/state/bgshell). */
export default function bgshell(pi: ExtensionAPI): void {
  createBgshellExtension()(pi)
}
