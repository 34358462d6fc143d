// bgshell/agent: the harness-neutral part of an agent adapter, written once for every harness.
//
// - the tools (names, descriptions, JSON Schema parameters, what each one does and answers);
// - reminders: task events batched per session into ONE message, handed to the harness, and the
//   completions acked only after the harness accepted the message (at-least-once hand-over,
//   exactly-once per ack);
// - the session lifecycle: replay a session once (reattach running tasks, finalise those that
//   ended while the harness was down), then offer its undelivered completions.
//
// An adapter (pi-bgshell, opencode-bgshell) maps `agent.tools` onto its harness's tool API,
// gives `deliver` (how a message reaches the model), and calls `attach(sessionId)` when a
// session starts or goes idle. Source: agent/index.mts; `npm run build:agent` emits
// agent/index.mjs and agent/index.d.mts, which the package ships.
import { TaskManager } from '../index.js'
import type { Completion, ManagerOptions, RunResult, TaskEvent, TaskSnapshot } from '../index.js'

/** First line of every reminder. */
export const REMINDER_HEADER = '[BACKGROUND BASH COMPLETED]'

/** Longest output (in characters) quoted per task in one reminder. */
const PREVIEW_CHARS = 2000

type EventOf<T extends TaskEvent['type']> = Omit<Extract<TaskEvent, { type: T }>, 'type'>

/** What one reminder entry is about: a task event, tagged by `kind` instead of `type`. */
export type ReminderItem =
  | { kind: 'completion'; completion: Completion }
  | ({ kind: 'long_running' } & EventOf<'long_running'>)
  | ({ kind: 'pattern_match' } & EventOf<'pattern_match'>)

/** A task event as a reminder item. */
export function itemOf(event: TaskEvent): ReminderItem {
  if (event.type === 'completion') return { kind: 'completion', completion: event.completion }
  const { type, ...rest } = event
  return { kind: type, ...rest } as ReminderItem
}

function sessionOf(item: ReminderItem): string {
  return item.kind === 'completion' ? item.completion.sessionId : item.sessionId
}

function oneLine(command: string, max = 120): string {
  const line = command.replace(/\s+/g, ' ').trim()
  return line.length > max ? `${line.slice(0, max - 1)}…` : line
}

function seconds(ms: number | undefined): string {
  return ms === undefined ? '?' : `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)}s`
}

function indent(text: string): string {
  const body = text.length > PREVIEW_CHARS ? `…${text.slice(-PREVIEW_CHARS)}` : text
  return body
    .replace(/\s+$/, '')
    .split('\n')
    .map((line) => `    ${line}`)
    .join('\n')
}

/** One reminder for several events: the header line, then one entry per task. */
export function formatReminder(items: ReminderItem[]): string {
  const lines = [REMINDER_HEADER]
  for (const item of items) {
    if (item.kind === 'completion') {
      const c = item.completion
      const exit = c.exitCode === undefined ? 'no exit code' : `exit code ${c.exitCode}`
      const signal = c.signal ? `, ${c.signal}` : ''
      lines.push(`- ${c.taskId}: ${c.status} (${exit}${signal}) after ${seconds(c.durationMs)}: ${oneLine(c.command)}`)
      if (c.outputPreview.trim() !== '') {
        lines.push(`  output${c.outputTruncated ? ' (truncated; use bash_status for more)' : ''}:`)
        lines.push(indent(c.outputPreview))
      } else {
        lines.push('  (no output)')
      }
    } else if (item.kind === 'long_running') {
      lines.push(`- ${item.taskId}: still running after ${seconds(item.elapsedMs)}: ${oneLine(item.command)}`)
      lines.push('  use bash_status to read its output or bash_kill to stop it')
    } else if (item.reason === 'task_exit') {
      lines.push(`- ${item.taskId}: watch ${item.watchId} ended: the task exited without a match`)
    } else {
      lines.push(`- ${item.taskId}: watch ${item.watchId} matched ${JSON.stringify(item.matchText)}`)
      if (item.context.trim() !== '') lines.push(indent(item.context))
    }
  }
  return lines.join('\n')
}

/** Hands one reminder to the harness; see ReminderQueueOptions.deliver. */
export type Deliver = (sessionId: string, text: string, taskIds: string[]) => void | Promise<void>

export interface ReminderQueueOptions {
  manager: TaskManager
  /**
   * Hands one reminder to the harness. Returning (or resolving) means it was handed over, and
   * the completions in it are then acked; throwing (or rejecting) leaves them undelivered, so
   * the next drain (next session start, next idle) offers them again.
   */
  deliver: Deliver
  /** Events of other sessions are ignored when this returns false. Default: all sessions. */
  accepts?(sessionId: string): boolean
  /** Events arriving within this window become one reminder. Default 50 ms. */
  debounceMs?: number
  /** Called when deliver or ack fails; default: ignore (the completion stays drainable). */
  onError?(error: unknown): void
  /** Called when a hand-over to the session failed (its completions stay drainable). */
  onUndelivered?(sessionId: string): void
}

/**
 * Collects task events per session, hands each batch over as ONE reminder, and acks the
 * completions only after the harness accepted it.
 */
export class ReminderQueue {
  private readonly pending = new Map<string, ReminderItem[]>()
  private readonly timers = new Map<string, ReturnType<typeof setTimeout>>()
  /** Completions queued or being delivered: an event and a drain must not send one twice. */
  private readonly inFlight = new Set<string>()
  /** Completions the model already learnt of from a tool result (bash_kill): never remind. */
  private readonly discarded = new Set<string>()
  private unsubscribe: (() => void) | undefined
  private stopped = false

  constructor(private readonly options: ReminderQueueOptions) {}

  /** Subscribes to the manager's events. */
  start(): void {
    if (this.unsubscribe || this.stopped) return
    this.unsubscribe = this.options.manager.onEvent((event) => this.push(itemOf(event)))
  }

  /** Unsubscribes and drops what was not handed over yet (it stays drainable in the store). */
  stop(): void {
    this.stopped = true
    this.unsubscribe?.()
    this.unsubscribe = undefined
    for (const timer of this.timers.values()) clearTimeout(timer)
    this.timers.clear()
    this.pending.clear()
    this.inFlight.clear()
  }

  push(item: ReminderItem): void {
    if (this.stopped) return
    const sessionId = sessionOf(item)
    if (this.options.accepts && !this.options.accepts(sessionId)) return
    if (item.kind === 'completion') {
      const id = item.completion.taskId
      if (this.inFlight.has(id) || this.discarded.has(id)) return
      this.inFlight.add(id)
    }
    const list = this.pending.get(sessionId) ?? []
    list.push(item)
    this.pending.set(sessionId, list)
    if (!this.timers.has(sessionId)) {
      this.timers.set(
        sessionId,
        setTimeout(() => void this.flush(sessionId), this.options.debounceMs ?? 50),
      )
    }
  }

  /** Acks a completion the model already saw in a tool result, so no reminder repeats it. */
  discard(sessionId: string, taskId: string): void {
    this.discarded.add(taskId)
    this.inFlight.delete(taskId)
    const list = this.pending.get(sessionId)
    if (list) {
      const kept = list.filter((i) => !(i.kind === 'completion' && i.completion.taskId === taskId))
      if (kept.length > 0) this.pending.set(sessionId, kept)
      else this.pending.delete(sessionId)
    }
    this.options.manager.ackCompletions(sessionId, [taskId])
  }

  /** Queues the session's undelivered completions from the store and hands them over now. */
  async drain(sessionId: string): Promise<void> {
    if (this.stopped) return
    for (const completion of this.options.manager.drainCompletions(sessionId)) {
      this.push({ kind: 'completion', completion })
    }
    await this.flush(sessionId)
  }

  /** Hands the session's queued items over now. */
  async flush(sessionId: string): Promise<void> {
    const timer = this.timers.get(sessionId)
    if (timer) clearTimeout(timer)
    this.timers.delete(sessionId)
    const items = this.pending.get(sessionId)
    this.pending.delete(sessionId)
    if (!items || items.length === 0 || this.stopped) return
    const taskIds = items.flatMap((i) => (i.kind === 'completion' ? [i.completion.taskId] : []))
    try {
      await this.options.deliver(sessionId, formatReminder(items), taskIds)
      // Handed over: ack even if stop() ran meanwhile (a failed ack only means one more reminder).
      if (taskIds.length > 0) this.options.manager.ackCompletions(sessionId, taskIds)
    } catch (error) {
      this.options.onError?.(error)
      this.options.onUndelivered?.(sessionId)
    } finally {
      for (const id of taskIds) this.inFlight.delete(id)
    }
  }
}

/** One line per task: id, status, exit code, signal, command. */
export function describeTask(task: TaskSnapshot): string {
  const exit = task.exitCode === undefined ? '' : ` exit=${task.exitCode}`
  const signal = task.signal ? ` ${task.signal}` : ''
  return `${task.taskId} ${task.status}${exit}${signal} ${oneLine(task.command, 100)}`
}

function errorCode(error: unknown): string | undefined {
  return (error as { code?: string } | null)?.code
}

// ---------------------------------------------------------------------------------------------
// Tools

/** The JSON Schema subset the tools' parameters use (pi takes it as is; opencode maps it to zod). */
export type ParamSchema =
  | { type: 'string'; description?: string; enum?: readonly string[] }
  | { type: 'number'; description?: string }
  | { type: 'boolean'; description?: string }
  | { type: 'array'; description?: string; items: { type: 'string' } }

export interface ObjectSchema {
  type: 'object'
  properties: Record<string, ParamSchema>
  required: string[]
  additionalProperties: false
}

/** What the harness tells a tool about the call. */
export interface CallContext {
  sessionId: string
  /** Working directory of the session; commands run here. */
  cwd: string
  /** Recorded with each task; `pendingSessions({ projectRoot })` finds them again. Default cwd. */
  projectRoot?: string
  /** Aborted when the harness cancels the call. */
  signal?: AbortSignal
}

/**
 * A tool's answer. `isError`: the call failed (no such task, ...). `failed`: the command ran and
 * failed (non-zero exit, killed, timed out); harnesses differ in showing that as an error (pi's
 * own bash does, opencode's does not).
 */
export interface ToolOutput {
  text: string
  isError: boolean
  failed?: boolean
  /** Short title (opencode shows it). */
  title: string
  details: { task?: TaskSnapshot; tasks?: TaskSnapshot[]; [key: string]: unknown }
}

export interface AgentTool {
  name: string
  /** Human-readable name (pi shows it). */
  label: string
  description: string
  parameters: ObjectSchema
  execute(params: Record<string, unknown>, ctx: CallContext): Promise<ToolOutput>
}

function object(properties: Record<string, ParamSchema>, required: string[] = []): ObjectSchema {
  return { type: 'object', properties, required, additionalProperties: false }
}

const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGKILL'] as const

function output(text: string, title: string, details: ToolOutput['details'] = {}, isError = false): ToolOutput {
  return { text, title, details, isError }
}

const ms = (s: unknown): number | undefined => (typeof s === 'number' ? Math.round(s * 1000) : undefined)
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined)

// ---------------------------------------------------------------------------------------------
// The agent

export interface BgshellAgentOptions {
  /** Recorded with every task ('pi', 'opencode', ...). */
  harness: string
  /** Hands a reminder to the model; see ReminderQueueOptions.deliver. */
  deliver: Deliver
  /** Passed to `new TaskManager()`; `harness` and `agentEnv: true` are filled in. */
  manager?: ManagerOptions
  /** How long a foreground `bash` call waits before the command moves to the background. */
  foregroundWaitMs?: number
  /** Only these sessions' events become reminders. Default: all. */
  accepts?(sessionId: string): boolean
  /** Events arriving within this window become one reminder (ms, default 50). */
  debounceMs?: number
  /** A reminder could not be delivered (it stays drainable), or a replay failed. */
  onError?(error: unknown): void
  /**
   * After a refused hand-over, offer the session's completions again up to this many times, the
   * first after `retryDelayMs` (default 500), each next one after twice as long. Default 0: the
   * next `attach` offers them.
   */
  retries?: number
  retryDelayMs?: number
}

/**
 * Everything an adapter needs: the manager, the tools, the reminder queue, and the session
 * lifecycle. Call `start()` once, `attach(sessionId)` when a session starts (and whenever it may
 * have undelivered completions, e.g. on idle), `close()` when the harness shuts down (tasks keep
 * running; the next `attach` replays them).
 */
export class BgshellAgent {
  readonly manager: TaskManager
  readonly queue: ReminderQueue
  readonly tools: AgentTool[]
  readonly foregroundWaitMs: number
  private readonly replayed = new Map<string, Promise<void>>()
  /** Retries used per session since its last successful hand-over. */
  private readonly retried = new Map<string, number>()
  private closed = false

  constructor(private readonly options: BgshellAgentOptions) {
    this.manager = new TaskManager({ agentEnv: true, ...options.manager, harness: options.harness })
    this.foregroundWaitMs = options.foregroundWaitMs ?? 30_000
    this.queue = new ReminderQueue({
      manager: this.manager,
      deliver: async (sessionId, text, taskIds) => {
        await options.deliver(sessionId, text, taskIds)
        this.retried.delete(sessionId)
      },
      ...(options.accepts ? { accepts: options.accepts } : {}),
      ...(options.debounceMs !== undefined ? { debounceMs: options.debounceMs } : {}),
      ...(options.onError ? { onError: options.onError } : {}),
      onUndelivered: (sessionId) => this.retry(sessionId),
    })
    this.tools = [this.bashTool(), this.statusTool(), this.killTool(), this.watchTool(), this.writeTool()]
  }

  /** Subscribes to task events (reminders flow from now on). */
  start(): void {
    this.queue.start()
  }

  /**
   * The session's tasks are replayed the first time (running ones reattached, ended ones
   * finalised with their real exit), then its undelivered completions are handed over.
   */
  async attach(sessionId: string, options: { projectRoot?: string } = {}): Promise<void> {
    if (this.closed) return
    await this.replayOnce(sessionId, options)
    await this.queue.drain(sessionId)
  }

  /** Replays the session's tasks the first time it is seen (no reminder is handed over here). */
  replayOnce(sessionId: string, options: { projectRoot?: string } = {}): Promise<void> {
    let replay = this.replayed.get(sessionId)
    if (!replay) {
      replay = this.manager.replay(sessionId, options).then(
        () => undefined,
        (error: unknown) => this.options.onError?.(error),
      )
      this.replayed.set(sessionId, replay)
    }
    return replay
  }

  /**
   * Sessions of this harness that may owe the model a reminder: tasks that asked for one and
   * were not delivered yet (still running, or ended while nobody listened).
   */
  pendingSessions(filter: { projectRoot?: string } = {}): string[] {
    const tasks = this.manager.list({ harness: this.options.harness, ...filter })
    return [...new Set(tasks.filter((t) => t.notifyOnCompletion && !t.completionDelivered).map((t) => t.sessionId))]
  }

  private retry(sessionId: string): void {
    const used = this.retried.get(sessionId) ?? 0
    if (this.closed || used >= (this.options.retries ?? 0)) return
    this.retried.set(sessionId, used + 1)
    const timer = setTimeout(() => void this.attach(sessionId).catch(() => {}), (this.options.retryDelayMs ?? 500) * 2 ** used)
    ;(timer as { unref?: () => void }).unref?.()
  }

  /** Stops reminders and closes the manager; tasks keep running and record their exit. */
  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.queue.stop()
    await this.manager.close()
  }

  /** The tool of that name (adapters that wrap one tool specially). */
  tool(name: string): AgentTool {
    const found = this.tools.find((t) => t.name === name)
    if (!found) throw new Error(`no tool ${name}`)
    return found
  }

  /** A status line plus the end of the output (the rendered screen for a pty task). */
  async statusText(task: TaskSnapshot, lines = 50, stream: 'combined' | 'stdout' | 'stderr' = 'combined'): Promise<string> {
    if (task.mode === 'pty') {
      return `${describeTask(task)}\n--- screen ---\n${(await this.manager.screen(task.taskId)).replace(/\s+$/, '')}`
    }
    const tail = await this.manager.tail(task.taskId, { lines, stream, stripAnsi: true })
    return `${describeTask(task)}${tail.truncated ? '\n(earlier output omitted)' : ''}\n${tail.text}`
  }

  private bashTool(): AgentTool {
    const waitDefault = this.foregroundWaitMs / 1000
    return {
      name: 'bash',
      label: 'Bash',
      description:
        'Run a bash command in the working directory. It runs in the foreground for up to ' +
        `wait_seconds (default ${waitDefault}); if it is still running then, it moves to the ` +
        `background and you get a message starting with ${REMINDER_HEADER} when it ends. Set ` +
        'background: true for servers, watchers and long builds. timeout (seconds) kills the command ' +
        'then. Background tasks survive a restart of the harness.',
      parameters: object(
        {
          command: { type: 'string', description: 'Bash command to run' },
          timeout: { type: 'number', description: 'Kill the command after this many seconds' },
          background: { type: 'boolean', description: 'Start it in the background and return its task id at once' },
          wait_seconds: { type: 'number', description: `Foreground wait before moving to the background (default ${waitDefault})` },
          pty: { type: 'boolean', description: 'Run it in a pseudo-terminal (interactive programs; type into it with bash_write)' },
        },
        ['command'],
      ),
      execute: async (params, ctx) => {
        const command = String(params.command)
        const timeoutMs = ms(params.timeout)
        const base = {
          sessionId: ctx.sessionId,
          command,
          cwd: ctx.cwd,
          mode: params.pty ? ('pty' as const) : ('pipes' as const),
          ...(ctx.projectRoot !== undefined ? { projectRoot: ctx.projectRoot } : {}),
          ...(timeoutMs !== undefined ? { timeoutMs } : {}),
        }
        if (params.background) {
          const task = await this.manager.spawn({ ...base, notifyOnCompletion: true })
          return output(
            `Started background task ${task.taskId} (pid ${task.pid ?? '?'}). You will get a ` +
              `${REMINDER_HEADER} message when it ends; use bash_status to read its output meanwhile.`,
            `background ${task.taskId}`,
            { task },
          )
        }
        const run: RunResult = await this.manager.run({
          ...base,
          waitMs: ms(params.wait_seconds) ?? this.foregroundWaitMs,
          ...(ctx.signal ? { signal: ctx.signal } : {}),
        })
        if (run.promoted) return output(run.output, `background ${run.taskId}`, { task: run })
        // The preview is exit-aware: a failure ends with "[exit code N; status S]".
        const body = run.output.trim() === '' ? '(no output)' : run.output
        return { ...output(body, oneLine(command, 60), { task: run }), failed: run.status !== 'completed' }
      },
    }
  }

  private statusTool(): AgentTool {
    return {
      name: 'bash_status',
      label: 'Bash status',
      description:
        'Without task_id: list the tasks of this session. With task_id: its status and the last ' +
        'lines of its output (the screen of a pty task). Output is not streamed: pull it here.',
      parameters: object({
        task_id: { type: 'string', description: 'Task id (bash-…)' },
        lines: { type: 'number', description: 'How many trailing lines (default 50)' },
        stream: { type: 'string', enum: ['combined', 'stdout', 'stderr'], description: 'Which output (default combined)' },
      }),
      execute: async (params, ctx) => {
        const taskId = str(params.task_id)
        if (taskId === undefined) {
          const tasks = this.manager.list({ sessionId: ctx.sessionId })
          const text = tasks.length === 0 ? 'No tasks in this session.' : tasks.map(describeTask).join('\n')
          return output(text, `${tasks.length} tasks`, { tasks })
        }
        const task = this.manager.get(taskId)
        if (!task) return output(`No task ${taskId}`, taskId, {}, true)
        const lines = typeof params.lines === 'number' ? params.lines : undefined
        const stream = str(params.stream) as 'combined' | 'stdout' | 'stderr' | undefined
        return output(await this.statusText(task, lines, stream), `${taskId} ${task.status}`, { task })
      },
    }
  }

  private killTool(): AgentTool {
    return {
      name: 'bash_kill',
      label: 'Bash kill',
      description: 'Stop a task: signal its whole process group (SIGKILL follows after a grace period).',
      parameters: object(
        {
          task_id: { type: 'string', description: 'Task id (bash-…)' },
          signal: { type: 'string', enum: SIGNALS, description: 'Signal to send first (default SIGTERM)' },
        },
        ['task_id'],
      ),
      execute: async (params, ctx) => {
        const signal = str(params.signal) as (typeof SIGNALS)[number] | undefined
        const task = await this.manager.kill(String(params.task_id), signal ? { signal } : undefined)
        // The model learns of the end here: no reminder for it.
        this.queue.discard(ctx.sessionId, task.taskId)
        return output(describeTask(task), `killed ${task.taskId}`, { task })
      },
    }
  }

  private watchTool(): AgentTool {
    return {
      name: 'bash_watch',
      label: 'Bash watch',
      description:
        "Watch a task's output for a substring (pattern) or a regular expression (regex). wait: true " +
        'blocks until it matches, the task exits, or timeout_seconds pass; otherwise a ' +
        `${REMINDER_HEADER} message arrives when it matches.`,
      parameters: object(
        {
          task_id: { type: 'string', description: 'Task id (bash-…)' },
          pattern: { type: 'string', description: 'Substring to look for' },
          regex: { type: 'string', description: 'Regular expression to look for' },
          wait: { type: 'boolean', description: 'Block until it matches (default false)' },
          timeout_seconds: { type: 'number', description: 'With wait: give up after this many seconds' },
        },
        ['task_id'],
      ),
      execute: async (params, ctx) => {
        const taskId = String(params.task_id)
        const pattern = str(params.pattern)
        const regex = str(params.regex)
        const what = { ...(pattern !== undefined ? { pattern } : {}), ...(regex !== undefined ? { regex } : {}) }
        if (!params.wait) {
          const watchId = this.manager.watch(taskId, { ...what, once: true })
          return output(`Watching ${taskId} (${watchId}); you will be told when it matches.`, `watch ${taskId}`, { watchId })
        }
        const timeoutMs = ms(params.timeout_seconds)
        const found = await this.manager.waitFor(taskId, {
          ...what,
          ...(timeoutMs !== undefined ? { timeoutMs } : {}),
          ...(ctx.signal ? { signal: ctx.signal } : {}),
        })
        const text =
          found.reason === 'matched'
            ? `Matched ${JSON.stringify(found.matchText)} at byte ${found.matchOffset}; task ${found.snapshot.status}.`
            : found.reason === 'exited'
              ? `The task exited first: ${describeTask(found.snapshot)}`
              : `No match yet; task ${found.snapshot.status}.`
        return output(text, `watch ${taskId}: ${found.reason}`, { task: found.snapshot, reason: found.reason })
      },
    }
  }

  private writeTool(): AgentTool {
    return {
      name: 'bash_write',
      label: 'Bash write',
      description:
        'Type into an interactive task started with pty: true. input is sent as typed; keys are ' +
        'pressed after it (enter, tab, esc, up, down, ctrl-c, ...). Read the result with bash_status.',
      parameters: object(
        {
          task_id: { type: 'string', description: 'Task id (bash-…)' },
          input: { type: 'string', description: 'Text to type' },
          keys: { type: 'array', items: { type: 'string' }, description: 'Keys to press after the text, e.g. ["enter"]' },
        },
        ['task_id'],
      ),
      execute: async (params) => {
        const taskId = String(params.task_id)
        const keys = Array.isArray(params.keys) ? params.keys.map(String) : []
        try {
          const bytes = this.manager.write(taskId, [str(params.input) ?? '', ...keys.map((key) => ({ key }))])
          return output(`Wrote ${bytes} bytes to ${taskId}.`, `write ${taskId}`, { bytes })
        } catch (error) {
          if (errorCode(error) === 'E_NOT_PTY') return output(`${taskId} was not started with pty: true; it reads no input.`, taskId, {}, true)
          if (errorCode(error) === 'E_EXITED') return output(`${taskId} has already exited.`, taskId, {}, true)
          throw error
        }
      },
    }
  }
}
