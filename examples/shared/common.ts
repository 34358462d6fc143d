// Reminder formatting, delivery discipline and tool helpers shared by the bgshell reference adapters
// (examples/pi-extension/ and examples/opencode-plugin/ import this one file as '../shared/common.ts').
// Only types come from 'bgshell' here; each adapter's tsconfig.json maps 'bgshell' to the package
// linked into its own node_modules, since this folder has no node_modules of its own.
import type { Completion, TaskEvent, TaskManager, TaskSnapshot } from 'bgshell'

/** First line of every reminder the adapters hand to the harness. */
export const REMINDER_HEADER = '[BACKGROUND BASH COMPLETED]'

/** Longest preview (in characters) quoted per task in one reminder. */
const PREVIEW_CHARS = 2000

export type ReminderItem =
  | { kind: 'completion'; completion: Completion }
  | { kind: 'long_running'; taskId: string; sessionId: string; command: string; elapsedMs: number }
  | {
      kind: 'pattern_match'
      taskId: string
      sessionId: string
      watchId: string
      matchText: string
      context: string
      reason: 'pattern_match' | 'task_exit'
    }

/** The events of `onEvent` as reminder items (the union is narrowed by `type`). */
export function itemOf(event: TaskEvent): ReminderItem {
  switch (event.type) {
    case 'completion':
      return { kind: 'completion', completion: event.completion }
    case 'long_running':
      return {
        kind: 'long_running',
        taskId: event.taskId,
        sessionId: event.sessionId,
        command: event.command,
        elapsedMs: event.elapsedMs,
      }
    case 'pattern_match':
      return {
        kind: 'pattern_match',
        taskId: event.taskId,
        sessionId: event.sessionId,
        watchId: event.watchId,
        matchText: event.matchText,
        context: event.context,
        reason: event.reason,
      }
  }
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

/** One reminder for several events: header line, then one entry per task. */
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

export interface ReminderQueueOptions {
  manager: TaskManager
  /**
   * Hands one reminder to the harness. Returning (or resolving) means it was handed over, and
   * the completions in it are then acked; throwing (or rejecting) leaves them undelivered, so
   * the next drain (next session start, next idle, next tool call) offers them again.
   */
  deliver(sessionId: string, text: string, taskIds: string[]): void | Promise<void>
  /** Events of other sessions are ignored when this returns false. Default: all sessions. */
  accepts?(sessionId: string): boolean
  /** Events arriving within this window become one reminder. Default 50 ms. */
  debounceMs?: number
  /** Called when deliver or ack fails; default: ignore (the completion stays drainable). */
  onError?(error: unknown): void
}

/**
 * Collects task events per session, hands each batch over as ONE reminder, and acks the
 * completions only after the harness accepted it (at-least-once, exactly-once per ack).
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

  /**
   * Acks a completion the model already saw in a tool result and drops it from the queue, so
   * no reminder repeats it.
   */
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

  /** Queues the session's undelivered completions from the store (after a restart, on idle). */
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
    } finally {
      for (const id of taskIds) this.inFlight.delete(id)
    }
  }
}

/** One line per task: id, status, exit code, signal, command. */
export function describe(task: TaskSnapshot): string {
  const exit = task.exitCode === undefined ? '' : ` exit=${task.exitCode}`
  const signal = task.signal ? ` ${task.signal}` : ''
  return `${task.taskId} ${task.status}${exit}${signal} ${task.command.replace(/\s+/g, ' ').slice(0, 100)}`
}

export function errorCode(error: unknown): string | undefined {
  return (error as { code?: string } | null)?.code
}

export const NOT_SUPPORTED = 'bash_write is not supported yet'

/** Status line plus the end of the output (the rendered screen for a pty task). */
export async function statusText(
  manager: TaskManager,
  task: TaskSnapshot,
  lines = 50,
  stream: 'combined' | 'stdout' | 'stderr' = 'combined',
): Promise<string> {
  const screen = (manager as { screen?: TaskManager['screen'] }).screen
  if (task.mode === 'pty' && typeof screen === 'function') {
    return `${describe(task)}\n--- screen ---\n${(await screen.call(manager, task.taskId)).replace(/\s+$/, '')}`
  }
  const tail = await manager.tail(task.taskId, { lines, stream: task.mode === 'pty' ? 'pty' : stream, stripAnsi: true })
  return `${describe(task)}${tail.truncated ? '\n(earlier output omitted)' : ''}\n${tail.text}`
}

/** TaskManager.write when this bgshell build has it, else a clear "not supported yet". */
export async function writeText(manager: TaskManager, taskId: string, input = '', keys: string[] = []): Promise<string> {
  const write = (manager as { write?: TaskManager['write'] }).write
  if (typeof write !== 'function') {
    return `${NOT_SUPPORTED}: this bgshell build has no TaskManager.write (pty input).`
  }
  try {
    const bytes = write.call(manager, taskId, [input, ...keys.map((key) => ({ key }))])
    return `Wrote ${bytes} bytes to ${taskId}.`
  } catch (error) {
    if (errorCode(error) === 'E_NOT_PTY') throw new Error(`${taskId} was not started with pty: true; it reads no input.`)
    if (errorCode(error) === 'E_EXITED') throw new Error(`${taskId} has already exited.`)
    throw error
  }
}
