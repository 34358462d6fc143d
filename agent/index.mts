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
import { createReadStream, statSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, isAbsolute, join, relative, resolve } from 'node:path'
import { TaskManager } from '../index.js'
import type { Completion, ManagerOptions, SpawnOptions, TaskEvent, TaskSnapshot } from '../index.js'

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
      lines.push(`- ${c.taskId}${labelOf(c)}: ${c.status} (${exit}${signal}) after ${seconds(c.durationMs)}: ${oneLine(c.command)}`)
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
    } else if (item.reason === 'rate_limited') {
      lines.push(`- ${item.taskId}: watch ${item.watchId} matched ${item.suppressed ?? 0} more times (over its rate limit); the last:`)
      if (item.context.trim() !== '') lines.push(indent(item.context))
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
  return `${task.taskId}${labelOf(task)} ${task.status}${exit}${signal} ${oneLine(task.command, 100)}`
}

/** ` [label]` when the task carries one (bgshell versions with SpawnOptions.label). */
function labelOf(task: { label?: string } | object): string {
  const label = (task as { label?: unknown }).label
  return typeof label === 'string' && label !== '' ? ` [${label}]` : ''
}

function errorCode(error: unknown): string | undefined {
  return (error as { code?: string } | null)?.code
}

// ---------------------------------------------------------------------------------------------
// Permissions: what opencode's own bash tool asks (opencode 1.18.33, its ShellTool.collect and
// ShellTool.ask), so that a `permission.bash` rule set applies to our `bash` exactly as to the
// built-in one. opencode parses the command with tree-sitter-bash and, for every `command` node:
//   - pattern: the command's text (with the redirections of its redirected statement), e.g.
//     `git push origin main`, `echo hi > out.txt`; `cd`-like commands give none;
//   - always (what "always allow" stores): the command's arity prefix + " *", e.g. `git push *`;
//   - external_directory: for file commands (rm, cp, mv, cat, ...), each path argument outside
//     the project asks for `<dir>/*` first.
// Declarations (export, local, declare, readonly, typeset) and unset are not `command` nodes
// there, so they give no pattern either. This is a small hand-written bash scanner, not
// tree-sitter: it finds the same commands in lists, pipelines, subshells, groups, command
// substitutions (also inside double quotes), if/while/for/case bodies and heredocs.

/** One `context.ask` of opencode (`@opencode-ai/plugin` ToolContext.ask). */
export interface PermissionRequest {
  permission: string
  patterns: string[]
  always: string[]
  metadata: Record<string, unknown>
}

/** A simple command found in a bash text: its source text and its words (as written). */
export interface ShellCommand {
  text: string
  words: string[]
}

/** How many leading words name a command's kind ("git push *"): opencode's BashArity table. */
const ARITY: Record<string, number> = {
  cat: 1, cd: 1, chmod: 1, chown: 1, cp: 1, echo: 1, env: 1, export: 1, grep: 1, kill: 1, killall: 1, ln: 1, ls: 1,
  mkdir: 1, mv: 1, ps: 1, pwd: 1, rm: 1, rmdir: 1, sleep: 1, source: 1, tail: 1, touch: 1, unset: 1, which: 1,
  aws: 3, az: 3, bazel: 2, brew: 2, bun: 2, 'bun run': 3, 'bun x': 3, cargo: 2, 'cargo add': 3, 'cargo run': 3, cdk: 2,
  cf: 2, cmake: 2, composer: 2, consul: 2, 'consul kv': 3, crictl: 2, deno: 2, 'deno task': 3, doctl: 3, docker: 2,
  'docker builder': 3, 'docker compose': 3, 'docker container': 3, 'docker image': 3, 'docker network': 3,
  'docker volume': 3, eksctl: 2, 'eksctl create': 3, firebase: 2, flyctl: 2, gcloud: 3, gh: 3, git: 2, 'git config': 3,
  'git remote': 3, 'git stash': 3, go: 2, gradle: 2, helm: 2, heroku: 2, hugo: 2, ip: 2, 'ip addr': 3, 'ip link': 3,
  'ip netns': 3, 'ip route': 3, kind: 2, 'kind create': 3, kubectl: 2, 'kubectl kustomize': 3, 'kubectl rollout': 3,
  kustomize: 2, make: 2, mc: 2, 'mc admin': 3, minikube: 2, mongosh: 2, mysql: 2, mvn: 2, ng: 2, npm: 2, 'npm exec': 3,
  'npm init': 3, 'npm run': 3, 'npm view': 3, nvm: 2, nx: 2, openssl: 2, 'openssl req': 3, 'openssl x509': 3, pip: 2,
  pipenv: 2, pnpm: 2, 'pnpm dlx': 3, 'pnpm exec': 3, 'pnpm run': 3, poetry: 2, podman: 2, 'podman container': 3,
  'podman image': 3, psql: 2, pulumi: 2, 'pulumi stack': 3, pyenv: 2, python: 2, rake: 2, rbenv: 2, 'redis-cli': 2,
  rustup: 2, serverless: 2, sfdx: 3, skaffold: 2, sls: 2, sst: 2, swift: 2, systemctl: 2, terraform: 2,
  'terraform workspace': 3, tmux: 2, turbo: 2, ufw: 2, vault: 2, 'vault auth': 3, 'vault kv': 3, vercel: 2, volta: 2,
  wp: 2, yarn: 2, 'yarn dlx': 3, 'yarn run': 3,
}

/** The words that name a command's kind: the longest arity-table prefix, else the first word. */
export function arityPrefix(words: string[]): string[] {
  for (let n = words.length; n > 0; n--) {
    const arity = ARITY[words.slice(0, n).join(' ')]
    if (arity !== undefined) return words.slice(0, arity)
  }
  return words.slice(0, 1)
}

const CHDIR = new Set(['cd', 'chdir', 'popd', 'pushd', 'push-location', 'set-location'])
const FILE_COMMANDS = new Set([...CHDIR, 'rm', 'cp', 'mv', 'mkdir', 'touch', 'chmod', 'chown', 'cat',
  'get-content', 'set-content', 'add-content', 'copy-item', 'move-item', 'remove-item', 'new-item', 'rename-item'])
const DECLARATIONS = new Set(['export', 'local', 'declare', 'readonly', 'typeset', 'unset'])
/** Words that open or continue a compound command; what follows them starts a command. */
const LEADING_KEYWORDS = new Set(['if', 'then', 'elif', 'else', 'do', 'while', 'until', '!', '{', 'time'])
const CLOSING_KEYWORDS = new Set(['fi', 'done', '}', 'esac'])

/**
 * The simple commands of a bash text, in order (nested ones after the command holding them).
 * Never throws: what it cannot read ends the scan.
 */
export function shellCommands(source: string): ShellCommand[] {
  // Pre-order, as tree-sitter's descendantsOfType: a command's slot is taken before the
  // commands nested in it are scanned.
  const out: (ShellCommand | null)[] = []
  let i = 0
  let backticks = 0
  const heredocs: string[] = []
  const n = source.length

  function skipSpaces(): void {
    for (;;) {
      if (source[i] === ' ' || source[i] === '\t') i++
      else if (source[i] === '\\' && source[i + 1] === '\n') i += 2
      else if (source[i] === '#' && (i === 0 || /[\s;&|()]/.test(source[i - 1]!))) {
        while (i < n && source[i] !== '\n') i++
      } else return
    }
  }

  /** After a newline: skips the bodies of pending heredocs. */
  function skipHeredocs(): void {
    while (heredocs.length > 0 && i < n) {
      const delim = heredocs.shift()!
      for (;;) {
        const end = source.indexOf('\n', i)
        const line = source.slice(i, end < 0 ? n : end)
        i = end < 0 ? n : end + 1
        if (line.replace(/^\t+/, '') === delim || end < 0) break
      }
    }
  }

  /** Reads to the `close` matching an opener already consumed; nested commands are scanned. */
  function nested(close: ')' | '`'): void {
    if (close === '`') backticks++
    try {
      list(close)
    } finally {
      if (close === '`') backticks--
    }
    if (source[i] === close) i++
  }

  /** Skips `((...))`, `[[ ... ]]`-like text up to `close`, keeping quotes and nesting. */
  function skipTo(close: string): void {
    while (i < n && !source.startsWith(close, i)) {
      if (source[i] === '$' && source[i + 1] === '(' && source[i + 2] !== '(') {
        i += 2
        nested(')')
      } else if (source[i] === '"' || source[i] === "'" || source[i] === '`') word()
      else i++
    }
    i = Math.min(n, i + close.length)
  }

  /** One word (quotes, expansions, substitutions), returned as written; '' when none. */
  function word(): string {
    const start = i
    while (i < n) {
      const c = source[i]!
      if (c === '\\') {
        i += 2
      } else if (c === "'") {
        const end = source.indexOf("'", i + 1)
        i = end < 0 ? n : end + 1
      } else if (c === '"') {
        i++
        while (i < n && source[i] !== '"') {
          if (source[i] === '\\') i += 2
          else if (source[i] === '$' && source[i + 1] === '(' && source[i + 2] !== '(') {
            i += 2
            nested(')')
          } else if (source[i] === '`') {
            i++
            nested('`')
          } else i++
        }
        i++
      } else if (c === '`') {
        if (backticks > 0) break
        i++
        nested('`')
      } else if (c === '$' && source.startsWith('$((', i)) {
        i += 3
        skipTo('))')
      } else if (c === '$' && source[i + 1] === '(') {
        i += 2
        nested(')')
      } else if (c === '$' && source[i + 1] === '{') {
        i += 2
        skipTo('}')
      } else if ((c === '<' || c === '>') && source[i + 1] === '(' ) {
        i += 2
        nested(')')
      } else if (/[\s;&|()<>]/.test(c)) {
        break
      } else {
        i++
      }
    }
    return source.slice(start, Math.min(i, n))
  }

  /** A redirection operator at i (with its fd), or ''. */
  function redirection(): string {
    const m = /^(?:\d+|&)?(?:<<<|<<-|<<|>>|>&|<&|>\||<>|>|<)/.exec(source.slice(i, i + 8))
    // `&>` / `&>>` too; a bare `&` is a separator.
    return m ? m[0] : ''
  }

  /** A simple command (or a compound one) starting at i. */
  function command(): void {
    skipSpaces()
    if (i >= n) return
    const c = source[i]!
    if (c === '(' && source[i + 1] === '(') {
      i += 2
      skipTo('))')
      return
    }
    if (c === '(') {
      i++
      nested(')')
      return
    }
    // [[ ... ]] and [ ... ] are test commands, not commands.
    if (source.startsWith('[[', i) && /\s/.test(source[i + 2] ?? ' ')) {
      i += 2
      skipTo(']]')
      return
    }
    if (c === '[' && /\s/.test(source[i + 1] ?? ' ')) {
      i += 1
      skipTo(']')
      return
    }
    const start = i
    const slot = out.length
    out.push(null)
    let end = i
    const words: string[] = []
    let assignmentsOnly = true
    let first: string | undefined
    for (;;) {
      skipSpaces()
      if (i >= n) break
      const op = /[<>]/.test(source[i]!) && source[i + 1] === '(' ? '' : redirection()
      if (op) {
        i += op.length
        skipSpaces()
        const target = word()
        if (op.startsWith('<<') && op !== '<<<') heredocs.push(target.replace(/^['"]|['"]$/g, '').replace(/\\/g, ''))
        end = i
        continue
      }
      const ch = source[i]!
      if (/[;&|\n()]/.test(ch)) break
      const w = word()
      if (w === '') {
        i++
        continue
      }
      if (first === undefined) {
        if (words.length === 0 && assignmentsOnly && /^[A-Za-z_][A-Za-z0-9_]*(\[[^\]]*\])?\+?=/.test(w)) {
          end = i
          continue
        }
        if (LEADING_KEYWORDS.has(w)) return command()
        if (CLOSING_KEYWORDS.has(w)) return
        if (w === 'for' || w === 'select') {
          // for NAME in WORDS; do ... : the header holds no command (substitutions aside).
          while (i < n && !/[;\n]/.test(source[i]!)) word() || i++
          return
        }
        if (w === 'case') {
          caseBody()
          return
        }
        if (w === 'function') {
          skipSpaces()
          word()
          return
        }
        assignmentsOnly = false
        first = w
      }
      // An argument that is one expansion only is no word of the command (tree-sitter's
      // simple_expansion, expansion, command_substitution nodes).
      if (!/^(\$[A-Za-z_][A-Za-z0-9_]*|\$[0-9@*#?$!-]|\$\{[^}]*\}|\$\(.*\)|`.*`)$/s.test(w)) words.push(w)
      end = i
    }
    // A function definition `name() { ... }`.
    if (first !== undefined && words.length === 1 && source.startsWith('()', i)) {
      i += 2
      return
    }
    if (first !== undefined && !DECLARATIONS.has(first)) out[slot] = { text: source.slice(start, end).trim(), words }
  }

  function caseBody(): void {
    // case WORD in (PATTERN) LIST ;; ... esac
    while (i < n) {
      skipSpaces()
      const w = word()
      if (w === 'in') break
      if (w === '') i++
    }
    for (;;) {
      // patterns up to ')'
      while (i < n && source[i] !== ')') {
        skipSpaces()
        const w = word()
        if (w === 'esac') return
        if (w === '') i++
      }
      i++
      list(undefined, true)
      if (source.startsWith(';;', i)) i += 2
      else if (source.startsWith(';&', i)) i += 2
      skipSpaces()
      while (source[i] === '\n') {
        i++
        skipHeredocs()
        skipSpaces()
      }
      if (source.startsWith('esac', i) || i >= n) {
        i += 4
        return
      }
    }
  }

  /** Commands separated by ; & && || | |& and newlines, up to `close` (not consumed) or the end. */
  function list(close?: ')' | '`', inCase = false): void {
    while (i < n) {
      const before = i
      command()
      skipSpaces()
      const c = source[i]
      if (c === undefined) return
      if (close && c === close) return
      if (inCase && source.startsWith(';;', i)) return
      if (inCase && source.startsWith(';&', i)) return
      if (inCase && /^esac\b/.test(source.slice(i))) return
      if (c === '\n') {
        i++
        skipHeredocs()
      } else if (/[;&|]/.test(c)) {
        i++
      } else if (c === ')' || c === '`') {
        // unbalanced closer: skip it
        i++
      } else if (c !== '(' && i === before) {
        i++
      }
    }
  }

  try {
    list()
  } catch {
    // unreadable: what was found stands
  }
  return out.filter((c): c is ShellCommand => c !== null)
}

function unquote(text: string): string {
  if (text.length >= 2 && (text[0] === '"' || text[0] === "'") && text[0] === text.at(-1)) return text.slice(1, -1)
  return text
}

function isInside(dir: string, path: string): boolean {
  const rel = relative(dir, path)
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel))
}

/** Where the session's project is: paths inside it ask no external_directory permission. */
export interface ProjectScope {
  /** Working directory the command runs in (relative paths resolve here). */
  cwd: string
  /** The project directory (opencode: ToolContext.directory). */
  directory: string
  /** The project's worktree root (opencode: ToolContext.worktree); '/' means none. */
  worktree?: string
}

/**
 * What opencode's own bash asks before running `command`, in order: `external_directory`
 * (when a file command names a path outside the project, or the cwd is outside it), then
 * `bash` with one pattern per command. Nothing when the text holds no command.
 */
export function bashPermissions(command: string, scope: ProjectScope): PermissionRequest[] {
  const inProject = (p: string) =>
    isInside(scope.directory, p) || (scope.worktree !== undefined && scope.worktree !== '/' && isInside(scope.worktree, p))
  const dirs = new Set<string>()
  const patterns = new Set<string>()
  const always = new Set<string>()
  for (const cmd of shellCommands(command)) {
    const name = cmd.words[0]
    if (name !== undefined && FILE_COMMANDS.has(name)) {
      for (const arg of cmd.words.slice(1)) {
        if (arg.startsWith('-') || (name === 'chmod' && arg.startsWith('+'))) continue
        let path = unquote(arg)
        if (path === '~') path = homedir()
        else if (path.startsWith('~/')) path = join(homedir(), path.slice(2))
        const glob = /[?*[]/.exec(path)
        if (glob) path = glob.index === 0 ? '' : path.slice(0, glob.index)
        if (!path || path.includes('$') || path.includes('`')) continue
        const resolved = resolve(scope.cwd, path)
        if (inProject(resolved)) continue
        let isDir = false
        try {
          isDir = statSync(resolved).isDirectory()
        } catch {}
        dirs.add(isDir ? resolved : dirname(resolved))
      }
    }
    if (cmd.words.length > 0 && !(name !== undefined && CHDIR.has(name))) {
      patterns.add(cmd.text)
      always.add(`${arityPrefix(cmd.words).join(' ')} *`)
    }
  }
  if (!inProject(scope.cwd)) dirs.add(scope.cwd)
  const requests: PermissionRequest[] = []
  if (dirs.size > 0) {
    const directories = [...dirs]
    const globs = directories.map((d) => join(d, '*'))
    requests.push({ permission: 'external_directory', patterns: globs, always: globs, metadata: { command, directories, patterns: globs } })
  }
  if (patterns.size > 0) {
    requests.push({ permission: 'bash', patterns: [...patterns], always: [...always], metadata: { command } })
  }
  return requests
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
  /** Aborted when the harness cancels the call: a foreground command is killed. */
  signal?: AbortSignal
  /** Progress of a foreground command: the end of its output so far (sized like the result). */
  onUpdate?(text: string): void
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
  /** One line for a harness's list of available tools (pi's promptSnippet). */
  promptSnippet?: string
  /** Guideline bullets for the system prompt (pi's promptGuidelines). */
  promptGuidelines?: string[]
  execute(params: Record<string, unknown>, ctx: CallContext): Promise<ToolOutput>
}

function object(properties: Record<string, ParamSchema>, required: string[] = []): ObjectSchema {
  return { type: 'object', properties, required, additionalProperties: false }
}

const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGKILL'] as const

function output(text: string, title: string, details: ToolOutput['details'] = {}, isError = false): ToolOutput {
  return { text, title, details, isError }
}

/** Foreground results are sized like pi's and opencode's own bash: the last 2000 lines or 50 KB. */
export const OUTPUT_MAX_LINES = 2000
export const OUTPUT_MAX_BYTES = 50 * 1024
/** bash_output: default page, most matches, most bytes scanned for a regex per call. */
const PAGE_BYTES = 16 * 1024
const MAX_MATCHES = 200
const SCAN_BYTES = 16 << 20
/** How often a running foreground command's output is pushed to CallContext.onUpdate. */
const UPDATE_INTERVAL_MS = 250
const TERMINAL = new Set<string>(['completed', 'failed', 'killed', 'timed_out'])

/** How a truncated foreground result names its full output: like pi's bash or opencode's. */
export type OutputStyle = 'pi' | 'opencode'

/** Removes ANSI escape sequences (CSI, OSC, single-character escapes). */
export function stripAnsi(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g, '')
}

function formatSize(bytes: number): string {
  if (bytes < 1024) return `${bytes}B`
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)}KB`
  return `${(bytes / (1024 * 1024)).toFixed(1)}MB`
}

/** Why a finished foreground command failed, in the words of pi's bash; '' when it did not. */
function statusLine(task: TaskSnapshot): string {
  if (task.status === 'completed') return ''
  if (task.status === 'timed_out') return `Command timed out after ${((task.timeoutMs ?? 0) / 1000).toFixed(0)} seconds (exit code ${task.exitCode ?? 124})`
  if (task.status === 'killed') return `Command was killed${task.signal ? ` (${task.signal})` : ''}`
  return `Command exited with code ${task.exitCode ?? '?'}${task.signal ? ` (${task.signal})` : ''}`
}

/** The files holding a task's full output (the non-empty ones; stdout when both are empty). */
function outputFiles(task: TaskSnapshot): string[] {
  const all = (task.mode === 'pty' ? [task.ptyPath] : [task.stdoutPath, task.stderrPath]).filter((p): p is string => Boolean(p))
  const used = all.filter((p) => {
    try {
      return statSync(p).size > 0
    } catch {
      return false
    }
  })
  return used.length > 0 ? used : all.slice(0, 1)
}

/** Lines in these files (a last line without a newline counts). */
async function countLines(files: string[]): Promise<number> {
  let lines = 0
  for (const file of files) {
    let last = 10
    try {
      for await (const chunk of createReadStream(file)) {
        for (let i = 0; i < chunk.length; i++) if (chunk[i] === 10) lines++
        if (chunk.length > 0) last = chunk[chunk.length - 1]!
      }
    } catch {
      continue
    }
    if (last !== 10) lines++
  }
  return lines
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
  /** How a truncated foreground result names its full output (default 'pi'). */
  outputStyle?: OutputStyle
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
  /** The deadline a spawn without `timeout` gets (ms; 0 = none): the manager's default. */
  readonly defaultTimeoutMs: number
  readonly outputStyle: OutputStyle
  private readonly replayed = new Map<string, Promise<void>>()
  /** Retries used per session since its last successful hand-over. */
  private readonly retried = new Map<string, number>()
  private closed = false

  constructor(private readonly options: BgshellAgentOptions) {
    this.manager = new TaskManager({ agentEnv: true, ...options.manager, harness: options.harness })
    this.foregroundWaitMs = options.foregroundWaitMs ?? 30_000
    this.defaultTimeoutMs = options.manager?.defaultTimeoutMs ?? 1_800_000
    this.outputStyle = options.outputStyle ?? 'pi'
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
    this.tools = [this.bashTool(), this.outputTool(), this.statusTool(), this.killTool(), this.watchTool(), this.writeTool()]
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
    const deadline = this.defaultTimeoutMs === 0 ? 'none' : `${this.defaultTimeoutMs / 1000} s (${+(this.defaultTimeoutMs / 60_000).toFixed(1)} minutes)`
    return {
      name: 'bash',
      label: 'Bash',
      description:
        'Run a bash command in the working directory. It runs in the foreground for up to ' +
        `wait_seconds (default ${waitDefault}); if it is still running then, it moves to the ` +
        `background and you get a message starting with ${REMINDER_HEADER} when it ends. Set ` +
        'background: true for servers, watchers and long builds: it returns a task id at once. ' +
        `timeout (seconds) kills the command then; the default deadline is ${deadline}, for ` +
        'background tasks too, and timeout: 0 means no deadline (servers). A finished foreground ' +
        `command shows the last ${OUTPUT_MAX_LINES} lines or ${OUTPUT_MAX_BYTES / 1024} KB of its output ` +
        '(stdout and stderr, ANSI codes removed) and names the file with the full output; read ' +
        'more with bash_output. Background tasks survive a restart of the harness.',
      promptSnippet: 'Run bash commands; long ones move to the background and report back when they end',
      promptGuidelines: [
        `Start servers, watchers and long builds with bash background: true; a ${REMINDER_HEADER} message tells you when each ends, so do not poll or sleep waiting for it.`,
        `bash kills a command after ${deadline} unless you pass timeout (seconds); pass timeout: 0 for a server that must keep running.`,
        'Read a background task\'s output with bash_output (offset paging, regex with context) or bash_status (the last lines); stop it with bash_kill.',
        'To hear of a line in a running task\'s output (a server ready, an error), use bash_watch (repeat: true for every match, rate-limited) instead of polling; bash_watch action: list shows the watches a task keeps.',
      ],
      parameters: object(
        {
          command: { type: 'string', description: 'Bash command to run' },
          timeout: {
            type: 'number',
            description: `Kill the command after this many seconds (default ${deadline}, also with background: true; 0 = no deadline)`,
          },
          background: { type: 'boolean', description: 'Start it in the background and return its task id at once (default false)' },
          wait_seconds: { type: 'number', description: `Foreground wait before it moves to the background (default ${waitDefault})` },
          pty: { type: 'boolean', description: 'Run it in a pseudo-terminal (interactive programs; type into it with bash_write)' },
          label: { type: 'string', description: 'A short name for the task, shown in lists and reminders' },
        },
        ['command'],
      ),
      execute: async (params, ctx) => {
        const command = String(params.command)
        const timeoutMs = ms(params.timeout)
        const label = str(params.label)
        const base: SpawnOptions = {
          sessionId: ctx.sessionId,
          command,
          cwd: ctx.cwd,
          mode: params.pty ? ('pty' as const) : ('pipes' as const),
          ...(ctx.projectRoot !== undefined ? { projectRoot: ctx.projectRoot } : {}),
          ...(timeoutMs !== undefined ? { timeoutMs } : {}),
          // Stored by bgshell versions with SpawnOptions.label; ignored by older ones.
          ...(label !== undefined ? ({ label } as object) : {}),
        }
        if (params.background) {
          const task = await this.manager.spawn({ ...base, notifyOnCompletion: true })
          return output(
            `Started background task ${task.taskId}${labelOf(task)} (pid ${task.pid ?? '?'}). You will get a ` +
              `${REMINDER_HEADER} message when it ends; use bash_output or bash_status to read its output meanwhile.`,
            `background ${task.taskId}`,
            { task },
          )
        }
        return this.foreground(base, ms(params.wait_seconds) ?? this.foregroundWaitMs, ctx)
      },
    }
  }

  /**
   * A foreground command: spawned without a reminder, its output streamed to ctx.onUpdate; it
   * moves to the background (a reminder follows) if still running after waitMs; aborting
   * ctx.signal kills it.
   */
  private async foreground(base: SpawnOptions, waitMs: number, ctx: CallContext): Promise<ToolOutput> {
    const aborted = (taskId?: string, status?: string) =>
      Object.assign(new Error(taskId ? `Command aborted; task ${taskId} was ${status ?? 'killed'}.` : 'Command aborted before it started.'), {
        code: 'E_ABORTED',
      })
    if (ctx.signal?.aborted) throw aborted()
    const task = await this.manager.spawn({ ...base, notifyOnCompletion: false })
    const stream = task.mode === 'pty' ? ('pty' as const) : ('combined' as const)
    let streaming = Boolean(ctx.onUpdate)
    let timer: ReturnType<typeof setTimeout> | undefined
    let last = ''
    const tick = async () => {
      try {
        const t = await this.manager.tail(task.taskId, { lines: OUTPUT_MAX_LINES, bytes: OUTPUT_MAX_BYTES, stream, stripAnsi: true })
        if (streaming && t.text !== last) {
          last = t.text
          ctx.onUpdate?.(t.text)
        }
      } catch {
        // the next tick, or the result, shows it
      }
      if (streaming) timer = setTimeout(() => void tick(), UPDATE_INTERVAL_MS)
    }
    if (streaming) timer = setTimeout(() => void tick(), UPDATE_INTERVAL_MS)
    let done: TaskSnapshot
    try {
      done = await this.manager.wait(task.taskId, { timeoutMs: waitMs, ...(ctx.signal ? { signal: ctx.signal } : {}) })
    } catch (error) {
      if (errorCode(error) !== 'E_ABORTED') throw error
      const killed = await this.manager.kill(task.taskId).catch(() => undefined)
      throw aborted(task.taskId, killed?.status)
    } finally {
      streaming = false
      if (timer) clearTimeout(timer)
    }
    if (!TERMINAL.has(done.status)) {
      // Promoted: a reminder follows when it ends (at once if it ended just now).
      const promoted = this.manager.promote(task.taskId)
      const sofar = await this.manager.tail(task.taskId, { lines: 20, stream, stripAnsi: true }).catch(() => ({ text: '' }))
      const text =
        `Still running after ${+(waitMs / 1000).toFixed(1)} s; moved to the background as task ${task.taskId}. You will ` +
        `get a ${REMINDER_HEADER} message when it ends; use bash_output to read its output meanwhile.` +
        (sofar.text.trim() !== '' ? `\nOutput so far (last lines):\n${sofar.text.replace(/\n$/, '')}` : '')
      return output(text, `background ${task.taskId}`, { task: promoted, promoted: true })
    }
    const result = await this.resultText(done)
    const body = result.text === '' ? '(no output)' : result.text
    const status = statusLine(done)
    return {
      ...output(status ? `${body}\n\n${status}` : body, oneLine(base.command, 60), {
        task: done,
        truncated: result.truncated,
        ...(result.fullOutputPath ? { fullOutputPath: result.fullOutputPath } : {}),
      }),
      failed: done.status !== 'completed',
    }
  }

  /**
   * A finished command's output sized like the harness's own bash: the last 2000 lines or
   * 50 KB, ANSI codes removed, and where the full output is when that was not all of it.
   */
  async resultText(task: TaskSnapshot): Promise<{ text: string; truncated: boolean; fullOutputPath?: string }> {
    const stream = task.mode === 'pty' ? ('pty' as const) : ('combined' as const)
    // opencode truncates a plugin tool's answer at the same limits: leave room for the header.
    const room = this.outputStyle === 'opencode' ? { lines: OUTPUT_MAX_LINES - 10, bytes: OUTPUT_MAX_BYTES - 1024 } : { lines: OUTPUT_MAX_LINES, bytes: OUTPUT_MAX_BYTES }
    const tail = await this.manager.tail(task.taskId, { ...room, stream, stripAnsi: true })
    const text = tail.text.replace(/\n$/, '')
    if (!tail.truncated) return { text, truncated: false }
    const files = outputFiles(task)
    const fullOutputPath = files.join(' and ')
    if (this.outputStyle === 'opencode') {
      return { text: `...output truncated...\n\nFull output saved to: ${fullOutputPath}\n\n${text}`, truncated: true, fullOutputPath }
    }
    const total = await countLines(files)
    const shown = text.split('\n').length
    const byLines = shown >= OUTPUT_MAX_LINES
    const limit = byLines ? '' : ` (${formatSize(OUTPUT_MAX_BYTES)} limit)`
    return {
      text: `${text}\n\n[Showing lines ${Math.max(1, total - shown + 1)}-${total} of ${total}${limit}. Full output: ${fullOutputPath}]`,
      truncated: true,
      fullOutputPath,
    }
  }

  private outputTool(): AgentTool {
    return {
      name: 'bash_output',
      label: 'Bash output',
      description:
        "Read a task's output (running or ended): a page of bytes from offset (use the next offset it " +
        'reports to read on), or with regex only the matching lines, each with context lines around ' +
        'it and its line number. stream: stdout (default), stderr, or pty for a pty task. ANSI codes ' +
        'are removed.',
      parameters: object(
        {
          task_id: { type: 'string', description: 'Task id (bash-…)' },
          stream: { type: 'string', enum: ['stdout', 'stderr', 'pty'], description: 'Which output (default stdout; pty for a pty task)' },
          offset: { type: 'number', description: 'Byte offset to start at (default 0)' },
          max_bytes: { type: 'number', description: `Most bytes to return (default ${PAGE_BYTES}, at most ${OUTPUT_MAX_BYTES})` },
          regex: { type: 'string', description: 'Only lines matching this JavaScript regular expression' },
          context: { type: 'number', description: 'With regex: lines of context before and after each match (default 0)' },
          max_matches: { type: 'number', description: `With regex: stop after this many matches (default ${MAX_MATCHES})` },
        },
        ['task_id'],
      ),
      execute: async (params) => {
        const taskId = String(params.task_id)
        const task = this.manager.get(taskId)
        if (!task) return output(`No task ${taskId}`, taskId, {}, true)
        const stream = (str(params.stream) ?? (task.mode === 'pty' ? 'pty' : 'stdout')) as 'stdout' | 'stderr' | 'pty'
        if ((stream === 'pty') !== (task.mode === 'pty')) {
          return output(`${taskId} is a ${task.mode} task: its output is ${task.mode === 'pty' ? 'pty' : 'stdout and stderr'}.`, taskId, {}, true)
        }
        const offset = typeof params.offset === 'number' && params.offset > 0 ? Math.floor(params.offset) : 0
        const regexText = str(params.regex)
        if (regexText === undefined) {
          const maxBytes = Math.min(OUTPUT_MAX_BYTES, typeof params.max_bytes === 'number' && params.max_bytes > 0 ? Math.floor(params.max_bytes) : PAGE_BYTES)
          const page = await this.manager.readOutput(taskId, { stream, offset, maxBytes })
          const dropped = (page as { droppedBytes?: number }).droppedBytes
          const more = page.nextOffset < page.totalBytes
          const head =
            `${describeTask(task)}\n${stream} bytes ${page.offset}-${page.nextOffset} of ${page.totalBytes}` +
            (dropped ? ` (${dropped} bytes before this page were dropped by the output cap)` : '') +
            (more ? `; more from offset ${page.nextOffset}` : page.eof ? '; end of output' : '; the task is still writing')
          return output(`${head}\n${stripAnsi(page.data)}`, `${taskId} ${stream}`, { task, nextOffset: page.nextOffset, totalBytes: page.totalBytes })
        }
        let regex: RegExp
        try {
          regex = new RegExp(regexText)
        } catch (error) {
          return output(`Invalid regex ${JSON.stringify(regexText)}: ${(error as Error).message}`, taskId, {}, true)
        }
        const context = typeof params.context === 'number' && params.context > 0 ? Math.floor(params.context) : 0
        const maxMatches = typeof params.max_matches === 'number' && params.max_matches > 0 ? Math.floor(params.max_matches) : MAX_MATCHES
        // Scan up to SCAN_BYTES from offset; lines are numbered from the offset.
        let data = ''
        let at = offset
        let totalBytes = 0
        for (;;) {
          const page = await this.manager.readOutput(taskId, { stream, offset: at, maxBytes: 1 << 20 })
          data += page.data
          totalBytes = page.totalBytes
          if (page.nextOffset <= at || page.nextOffset - offset >= SCAN_BYTES) {
            at = page.nextOffset
            break
          }
          at = page.nextOffset
        }
        const lines = stripAnsi(data).split('\n')
        if (lines.at(-1) === '') lines.pop()
        const hits: number[] = []
        for (let i = 0; i < lines.length && hits.length < maxMatches; i++) if (regex.test(lines[i]!)) hits.push(i)
        const shown: string[] = []
        let prevEnd = -1
        let bytes = 0
        for (const hit of hits) {
          const from = Math.max(hit - context, prevEnd + 1)
          if (prevEnd >= 0 && from > prevEnd + 1) shown.push('--')
          for (let i = from; i <= Math.min(lines.length - 1, hit + context); i++) {
            const line = `${i + 1}${i === hit ? ':' : '-'}${lines[i]}`
            shown.push(line)
            bytes += line.length + 1
            prevEnd = i
          }
          if (bytes > OUTPUT_MAX_BYTES) break
        }
        const scanned = at < totalBytes ? `; scanned bytes ${offset}-${at} of ${totalBytes}, continue with offset ${at}` : ''
        const head =
          `${describeTask(task)}\n${hits.length}${hits.length >= maxMatches ? '+' : ''} matching lines of ${stream} ` +
          `for /${regexText}/ (line numbers from offset ${offset})${scanned}`
        return output(`${head}\n${shown.join('\n')}`, `${taskId} grep`, { task, matches: hits.length })
      },
    }
  }

  private statusTool(): AgentTool {
    return {
      name: 'bash_status',
      label: 'Bash status',
      description:
        'Without task_id: list the tasks of this session. With task_id: its status and the last ' +
        'lines of its output (the screen of a pty task). For paging by offset or a regex search, use bash_output.',
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
        "Watch a task's output for a substring (pattern) or a regular expression (regex). " +
        `Without wait, a ${REMINDER_HEADER} message arrives when it matches: once by default; with repeat: true, ` +
        'at every match, at most max_per_minute (default 10) a minute, then one summary of the rest. ' +
        'wait: true blocks until it matches, the task exits, or timeout_seconds pass. ' +
        "Watches stay with the task across restarts; action: 'list' shows a task's watches, " +
        "action: 'remove' with watch_id removes one.",
      parameters: object(
        {
          task_id: { type: 'string', description: 'Task id (bash-…)' },
          action: { type: 'string', enum: ['add', 'list', 'remove'], description: "add (default), list, or remove" },
          pattern: { type: 'string', description: 'add: substring to look for' },
          regex: { type: 'string', description: 'add: regular expression to look for' },
          repeat: { type: 'boolean', description: 'add: tell at every match, not only the first (default false)' },
          max_per_minute: { type: 'number', description: 'add with repeat: most matches told per minute (default 10)' },
          wait: { type: 'boolean', description: 'add: block until it matches (default false)' },
          timeout_seconds: { type: 'number', description: 'With wait: give up after this many seconds' },
          watch_id: { type: 'string', description: 'remove: the watch to remove (watch-…)' },
        },
        ['task_id'],
      ),
      execute: async (params, ctx) => {
        const taskId = String(params.task_id)
        const action = str(params.action) ?? 'add'
        if (action === 'list') {
          const watches = this.manager.watches(taskId)
          const lines = watches.map((w) => {
            const what = w.pattern !== undefined ? `pattern ${JSON.stringify(w.pattern)}` : `regex ${JSON.stringify(w.regex)}`
            const how = w.once ? 'once' : `repeating, at most ${w.maxPerMinute}/min`
            return `- ${w.watchId}: ${what}, ${how}, ${w.matches} match${w.matches === 1 ? '' : 'es'} so far`
          })
          const text = lines.length ? `Watches on ${taskId}:\n${lines.join('\n')}` : `${taskId} has no watches.`
          return output(text, `watches ${taskId}`, { watches })
        }
        if (action === 'remove') {
          const watchId = str(params.watch_id)
          if (watchId === undefined) return output('remove needs watch_id (see action: list).', taskId, {}, true)
          const removed = this.manager.unwatch(taskId, watchId)
          return output(removed ? `Removed ${watchId} from ${taskId}.` : `${taskId} has no watch ${watchId}.`, `unwatch ${taskId}`, { removed }, !removed)
        }
        if (action !== 'add') return output(`Unknown action ${JSON.stringify(action)}: use add, list or remove.`, taskId, {}, true)
        const pattern = str(params.pattern)
        const regex = str(params.regex)
        const what = { ...(pattern !== undefined ? { pattern } : {}), ...(regex !== undefined ? { regex } : {}) }
        if (!params.wait) {
          const repeat = params.repeat === true
          const max = typeof params.max_per_minute === 'number' ? Math.floor(params.max_per_minute) : undefined
          const watchId = this.manager.watch(taskId, { ...what, once: !repeat, ...(repeat && max !== undefined ? { maxPerMinute: max } : {}) })
          const how = repeat ? 'at every match' : 'when it matches'
          return output(`Watching ${taskId} (${watchId}); you will be told ${how}.`, `watch ${taskId}`, { watchId })
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
