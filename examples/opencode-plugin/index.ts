// bgshell reference adapter for opencode (@opencode-ai/plugin): durable background bash.
//
//   opencode.json: { "plugin": ["file:///path/to/examples/opencode-plugin/index.ts"] }
//   (options: ["file:///…/index.ts", { "foregroundWaitMs": 30000, "storageDir": "…" }])
//
// Tools: bash (foreground with auto-promote, or background: true), bash_status, bash_kill,
// bash_watch, bash_write. opencode ignores progress metadata from plugin tools, so nothing is
// pushed while a command runs: output is pulled with bash_status. Completions, long-running
// notices and watch matches of a session become ONE prompt sent with
// client.session.promptAsync; completions are acked only after opencode accepted it. A
// session's tasks are replayed the first time the plugin sees that session (tool call or
// session.idle), and undelivered completions are offered again whenever the session goes idle.
//
// opencode calls every export of this module as a plugin: export nothing else from here.
import { tool, type Hooks, type Plugin, type PluginOptions } from '@opencode-ai/plugin'
import { TaskManager, type ManagerOptions } from 'bgshell'
import { REMINDER_HEADER, ReminderQueue, describe, statusText, writeText } from '../shared/common.ts'

interface BgshellOpencodeOptions {
  /** Store root; default $BGSHELL_HOME, else ~/.local/state/bgshell. */
  storageDir?: string
  /** How long a foreground `bash` call waits before the command moves to the background. */
  foregroundWaitMs?: number
  /** Any other ManagerOptions; `harness` defaults to 'opencode', `agentEnv` to true. */
  manager?: ManagerOptions
}

export const BgshellPlugin: Plugin = async ({ client }, pluginOptions?: PluginOptions): Promise<Hooks> => {
  const options = (pluginOptions ?? {}) as BgshellOpencodeOptions
  const manager = new TaskManager({
    harness: 'opencode',
    agentEnv: true,
    ...(options.storageDir !== undefined ? { storageDir: options.storageDir } : {}),
    ...options.manager,
  })
  const foregroundWaitMs = options.foregroundWaitMs ?? 30_000

  const queue = new ReminderQueue({
    manager,
    async deliver(sessionID, text) {
      const response = await client.session.promptAsync({
        path: { id: sessionID },
        body: { parts: [{ type: 'text', text }] },
      })
      // Not handed over: the completions stay drainable and come back on the next idle.
      if (response.error !== undefined) throw new Error(`promptAsync failed: ${JSON.stringify(response.error)}`)
    },
  })
  queue.start()

  // Replay each session once (reattach running tasks, finalise those that ended while opencode
  // was down), then offer its undelivered completions.
  const seen = new Map<string, Promise<void>>()
  function attach(sessionID: string): Promise<void> {
    let ready = seen.get(sessionID)
    if (!ready) {
      ready = manager
        .replay(sessionID)
        .then(
          () => queue.drain(sessionID),
          () => queue.drain(sessionID),
        )
        .catch(() => {})
      seen.set(sessionID, ready)
    }
    return ready
  }

  const s = tool.schema
  return {
    tool: {
      bash: tool({
        description:
          'Run a bash command in the session directory. It runs in the foreground for up to wait_seconds ' +
          `(default ${foregroundWaitMs / 1000}); if it is still running then, it moves to the background and ` +
          `a message starting with ${REMINDER_HEADER} arrives when it ends. Set background: true for servers, ` +
          'watchers and long builds. timeout (seconds) kills the command then.',
        args: {
          command: s.string().describe('Bash command to run'),
          timeout: s.number().optional().describe('Kill the command after this many seconds'),
          background: s.boolean().optional().describe('Start it in the background and return its task id at once'),
          wait_seconds: s.number().optional().describe('Foreground wait before moving to the background'),
          pty: s.boolean().optional().describe('Run it in a pseudo-terminal (interactive programs)'),
        },
        async execute(args, context) {
          await attach(context.sessionID)
          const base = {
            sessionId: context.sessionID,
            command: args.command,
            cwd: context.directory,
            mode: args.pty ? ('pty' as const) : ('pipes' as const),
            ...(args.timeout !== undefined ? { timeoutMs: Math.round(args.timeout * 1000) } : {}),
          }
          if (args.background) {
            const task = await manager.spawn({ ...base, notifyOnCompletion: true })
            return {
              title: `background ${task.taskId}`,
              output:
                `Started background task ${task.taskId} (pid ${task.pid ?? '?'}). A ${REMINDER_HEADER} ` +
                'message arrives when it ends; use bash_status to read its output meanwhile.',
              metadata: { taskId: task.taskId },
            }
          }
          const waitMs = args.wait_seconds !== undefined ? Math.round(args.wait_seconds * 1000) : foregroundWaitMs
          const running = manager.run({ ...base, waitMs })
          // run() takes no AbortSignal and names the task only when it resolves: on abort,
          // answer at once and kill the task as soon as its id is known.
          const aborted = new Promise<'aborted'>((resolve) => {
            if (context.abort.aborted) resolve('aborted')
            context.abort.addEventListener('abort', () => resolve('aborted'), { once: true })
          })
          const first = await Promise.race([running, aborted])
          if (first === 'aborted') {
            void running.then((r) => (r.status === 'running' ? manager.kill(r.taskId) : r)).catch(() => {})
            throw new Error('Command aborted')
          }
          if (first.promoted) return { title: `background ${first.taskId}`, output: first.output, metadata: { taskId: first.taskId } }
          // The preview is exit-aware: a failure ends with "[exit code N; status S]".
          const output = first.output.trim() === '' ? '(no output)' : first.output
          return { title: args.command, output, metadata: { taskId: first.taskId, exitCode: first.exitCode } }
        },
      }),

      bash_status: tool({
        description:
          'Without task_id: list the background tasks of this session. With task_id: its status and the ' +
          'last lines of its output. Output is never streamed: pull it here.',
        args: {
          task_id: s.string().optional(),
          lines: s.number().optional().describe('How many trailing lines (default 50)'),
          stream: s.enum(['combined', 'stdout', 'stderr']).optional(),
        },
        async execute(args, context) {
          await attach(context.sessionID)
          if (args.task_id === undefined) {
            const tasks = manager.list({ sessionId: context.sessionID })
            return tasks.length === 0 ? 'No tasks in this session.' : tasks.map(describe).join('\n')
          }
          const task = manager.get(args.task_id)
          if (!task) throw new Error(`No task ${args.task_id}`)
          return statusText(manager, task, args.lines, args.stream)
        },
      }),

      bash_kill: tool({
        description: 'Stop a task: signal its whole process group (SIGKILL follows after a grace period).',
        args: {
          task_id: s.string(),
          signal: s.enum(['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGKILL']).optional(),
        },
        async execute(args, context) {
          const task = await manager.kill(args.task_id, args.signal ? { signal: args.signal } : undefined)
          // The model learns of the end here: no reminder for it.
          queue.discard(context.sessionID, task.taskId)
          return describe(task)
        },
      }),

      bash_watch: tool({
        description:
          "Watch a task's output for a substring (pattern) or a regular expression (regex). wait: true " +
          'blocks until it matches, the task exits, or timeout_seconds pass; otherwise a ' +
          `${REMINDER_HEADER} message arrives when it matches.`,
        args: {
          task_id: s.string(),
          pattern: s.string().optional(),
          regex: s.string().optional(),
          wait: s.boolean().optional(),
          timeout_seconds: s.number().optional(),
        },
        async execute(args, context) {
          const what = {
            ...(args.pattern !== undefined ? { pattern: args.pattern } : {}),
            ...(args.regex !== undefined ? { regex: args.regex } : {}),
          }
          if (!args.wait) {
            const watchId = manager.watch(args.task_id, { ...what, once: true })
            return `Watching ${args.task_id} (${watchId}); you will be told when it matches.`
          }
          const found = await manager.waitFor(args.task_id, {
            ...what,
            signal: context.abort,
            ...(args.timeout_seconds !== undefined ? { timeoutMs: Math.round(args.timeout_seconds * 1000) } : {}),
          })
          if (found.reason === 'matched') {
            return `Matched ${JSON.stringify(found.matchText)} at byte ${found.matchOffset}; task ${found.snapshot.status}.`
          }
          if (found.reason === 'exited') return `The task exited first: ${describe(found.snapshot)}`
          return `No match yet; task ${found.snapshot.status}.`
        },
      }),

      bash_write: tool({
        description:
          'Type into an interactive task started with pty: true. input is sent as typed; keys are ' +
          'pressed after it (enter, tab, esc, up, down, ctrl-c, ...). Read the result with bash_status.',
        args: {
          task_id: s.string(),
          input: s.string().optional().describe('Text to type'),
          keys: s.array(s.string()).optional().describe('Keys to press after the text, e.g. ["enter"]'),
        },
        async execute(args) {
          return writeText(manager, args.task_id, args.input, args.keys)
        },
      }),
    },

    async event({ event }) {
      // Pull, do not push: when a session goes idle, offer what is still undelivered.
      if (event.type === 'session.idle') {
        await attach(event.properties.sessionID)
        await queue.drain(event.properties.sessionID)
      }
    },

    async dispose() {
      queue.stop()
      // Tasks keep running and record their exit; the next opencode run replays them.
      await manager.close()
    },
  }
}
