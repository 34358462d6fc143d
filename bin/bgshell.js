#!/usr/bin/env node
// bgshell: inspect and control the background shell tasks in a bgshell store
// (the one `new TaskManager()` uses: $BGSHELL_HOME, else $XDG_STATE_HOME/bgshell,
// else ~/.local/state/bgshell; `--store DIR` overrides it).
'use strict'

const { TaskManager } = require('../index.js')

const USAGE_LINE = 'usage: bgshell run|ls|logs|wait|kill|gc ... (bgshell help for more)'

const HELP = `bgshell: inspect and control durable background shell tasks

usage:
  bgshell run [--session S] [--timeout MS] [--notify] -- <command...>
      Start the command (words joined with spaces, run by the shell) in the
      current directory, in session S (default "cli"). Prints the task id and
      returns at once; the task keeps running. --timeout 0 means no deadline
      (default: the library's, 30 min). --notify queues a completion for the
      session's harness; without it the task can be removed by gc once it ends.
  bgshell ls [--all] [--session S]
      List tasks: running ones and those that ended in the last hour, or all
      of them with --all.
  bgshell logs <id> [-f|--follow] [--stderr]
      Print the task's stdout (or stderr). -f follows until the task ends.
  bgshell wait <id> [--timeout MS]
      Wait for the task to end; prints "<id> <status> exit=<code>". Exits 0 if
      it completed, 1 if it failed, was killed, timed out or is still running
      when MS pass.
  bgshell kill <id> [--signal SIGTERM|SIGINT|SIGHUP|SIGKILL] [--grace MS]
      Signal the task's process group (SIGKILL follows after the grace) and
      print the final status line. Exits 0 once the task has ended.
  bgshell gc [--older-than MS]
      Remove ended, delivered tasks older than MS (default 24 h) and
      quarantine unreadable ones; prints "removed N, quarantined M".
  bgshell help
      This text.

options for every command:
  --store DIR   use the store at DIR instead of $BGSHELL_HOME,
                $XDG_STATE_HOME/bgshell or ~/.local/state/bgshell

exit codes: 0 ok; 1 the task did not complete (wait) or an error; 2 usage error.
`

const TERMINAL = new Set(['completed', 'failed', 'killed', 'timed_out'])
const SIGNALS = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGKILL']
const HOUR_MS = 3600 * 1000

class UsageError extends Error {}

// ---------------------------------------------------------------- arguments

/**
 * Parses `args` against `spec` ({ '--name': 'bool' | 'value', '-f': '--follow' (alias) }).
 * With `stopAtPositional`, the first positional and everything after it (or everything
 * after `--`) is returned as `rest` unparsed.
 */
function parseArgs(args, spec, { stopAtPositional = false } = {}) {
  const opts = {}
  const positionals = []
  let rest = null
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    if (arg === '--') {
      rest = args.slice(i + 1)
      break
    }
    if (arg.length > 1 && arg.startsWith('-')) {
      let name = arg
      let inline
      const eq = arg.indexOf('=')
      if (arg.startsWith('--') && eq > 0) {
        name = arg.slice(0, eq)
        inline = arg.slice(eq + 1)
      }
      if (name === '-h' || name === '--help') {
        opts.help = true
        continue
      }
      let kind = spec[name]
      if (kind && kind.startsWith('-')) {
        name = kind
        kind = spec[name]
      }
      if (!kind) throw new UsageError(`unknown option ${name}`)
      const key = name.replace(/^-+/, '').replace(/-([a-z])/g, (_, c) => c.toUpperCase())
      if (kind === 'bool') {
        if (inline !== undefined) throw new UsageError(`option ${name} takes no value`)
        opts[key] = true
      } else {
        let value = inline
        if (value === undefined) {
          if (i + 1 >= args.length) throw new UsageError(`option ${name} needs a value`)
          value = args[++i]
        }
        opts[key] = value
      }
      continue
    }
    if (stopAtPositional) {
      rest = args.slice(i)
      break
    }
    positionals.push(arg)
  }
  return { opts, positionals, rest }
}

function parseMs(value, name) {
  if (value === undefined) return undefined
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(Number(value))) {
    throw new UsageError(`option ${name} needs a whole number of milliseconds, got "${value}"`)
  }
  return Number(value)
}

function parseSignal(value) {
  if (value === undefined) return undefined
  let sig = value.toUpperCase()
  if (!sig.startsWith('SIG')) sig = 'SIG' + sig
  if (!SIGNALS.includes(sig)) throw new UsageError(`option --signal must be one of ${SIGNALS.join(', ')}, got "${value}"`)
  return sig
}

function oneId(positionals, command) {
  if (positionals.length === 0) throw new UsageError(`${command} needs a task id`)
  if (positionals.length > 1) throw new UsageError(`${command} takes one task id, got ${positionals.length} arguments`)
  return positionals[0]
}

// ------------------------------------------------------------------- output

let stdoutClosed = false
process.stdout.on('error', (err) => {
  // `bgshell logs ID | head`: the reader went away; nothing left worth saying.
  if (err && err.code === 'EPIPE') {
    stdoutClosed = true
    process.exit(process.exitCode ?? 0)
  }
  throw err
})

/** Writes to stdout, respecting back-pressure so long logs don't pile up in memory. */
function out(text) {
  return new Promise((resolve) => {
    if (stdoutClosed || text.length === 0) return resolve()
    if (process.stdout.write(text)) resolve()
    else process.stdout.once('drain', resolve)
  })
}

function statusLine(snap) {
  return `${snap.taskId} ${snap.status} exit=${snap.exitCode ?? '-'}\n`
}

/** Control characters (newlines, tabs, escapes) become spaces so one task is one line. */
function oneLine(text) {
  return text.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').trim()
}

function truncate(text, width) {
  const chars = Array.from(text)
  if (chars.length <= width) return text
  if (width <= 1) return chars.slice(0, width).join('')
  return chars.slice(0, width - 1).join('') + '…'
}

function formatDuration(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return '-'
  ms = Math.max(0, ms)
  if (ms < 1000) return `${Math.round(ms)}ms`
  const s = Math.floor(ms / 1000)
  if (s < 60) return `${(ms / 1000).toFixed(s < 10 ? 1 : 0)}s`
  const pad = (n) => String(n).padStart(2, '0')
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`
  if (s < 86400) return `${Math.floor(s / 3600)}h${pad(Math.floor(s / 60) % 60)}m`
  return `${Math.floor(s / 86400)}d${pad(Math.floor(s / 3600) % 24)}h`
}

/** Running tasks: time since start; ended tasks: how long they ran. */
function ageOrDuration(t, now) {
  if (TERMINAL.has(t.status)) {
    if (t.durationMs !== undefined) return formatDuration(t.durationMs)
    if (t.finishedAt !== undefined) return formatDuration(t.finishedAt - t.startedAt)
    return '-'
  }
  return formatDuration(now - t.startedAt)
}

function table(tasks, now) {
  const total = process.stdout.isTTY && process.stdout.columns ? Math.max(60, process.stdout.columns) : 100
  const rows = tasks.map((t) => [
    t.taskId,
    t.status,
    t.exitCode === undefined ? '-' : String(t.exitCode),
    ageOrDuration(t, now),
    truncate(oneLine(t.sessionId), 16),
    oneLine(t.command),
  ])
  const header = ['ID', 'STATUS', 'EXIT', 'AGE/DURATION', 'SESSION', 'COMMAND']
  const widths = header.slice(0, 5).map((h, i) => Math.max(h.length, ...rows.map((r) => Array.from(r[i]).length)))
  const used = widths.reduce((a, b) => a + b, 0) + 2 * widths.length
  const commandWidth = Math.max(10, total - used)
  const fmt = (r) =>
    r
      .slice(0, 5)
      .map((c, i) => c + ' '.repeat(widths[i] - Array.from(c).length))
      .join('  ') +
    '  ' +
    truncate(r[5], commandWidth)
  return [header, ...rows].map((r) => fmt(r).trimEnd() + '\n').join('')
}

// ----------------------------------------------------------------- commands

/** The task's snapshot after replaying its session, so a task whose manager died reads true. */
async function replayed(manager, id) {
  const snap = manager.get(id)
  if (!snap) {
    const err = new Error(`no task with id "${id}" in ${manager.storageDir}`)
    err.code = 'E_NOT_FOUND'
    throw err
  }
  if (!TERMINAL.has(snap.status)) await manager.replay(snap.sessionId)
  return manager.get(id) ?? snap
}

const commands = {
  run: {
    spec: { '--session': 'value', '--timeout': 'value', '--notify': 'bool', '--store': 'value' },
    stopAtPositional: true,
    check({ opts, positionals, rest }) {
      const words = [...positionals, ...(rest ?? [])]
      if (words.length === 0) throw new UsageError('run needs a command, e.g. bgshell run -- npm test')
      const command = words.join(' ')
      if (command.trim() === '') throw new UsageError('run needs a non-blank command')
      if (opts.session !== undefined && opts.session === '') throw new UsageError('option --session needs a non-empty value')
      return { command, session: opts.session ?? 'cli', timeoutMs: parseMs(opts.timeout, '--timeout'), notify: !!opts.notify }
    },
    async exec(manager, a) {
      const spawn = {
        sessionId: a.session,
        command: a.command,
        cwd: process.cwd(),
        // Nobody drains completions for the CLI; without --notify the task is
        // marked delivered so that gc can remove it once it is old.
        notifyOnCompletion: a.notify,
      }
      if (a.timeoutMs !== undefined) spawn.timeoutMs = a.timeoutMs
      const snap = await manager.spawn(spawn)
      await out(`${snap.taskId}\n`)
    },
  },

  ls: {
    spec: { '--all': 'bool', '-a': '--all', '--session': 'value', '--store': 'value' },
    check({ opts, positionals }) {
      if (positionals.length) throw new UsageError(`ls takes no arguments, got "${positionals[0]}"`)
      return { all: !!opts.all, session: opts.session }
    },
    async exec(manager, a) {
      const filter = a.session !== undefined ? { sessionId: a.session } : undefined
      let tasks = manager.list(filter)
      const stale = [...new Set(tasks.filter((t) => !TERMINAL.has(t.status)).map((t) => t.sessionId))]
      if (stale.length) {
        for (const s of stale) await manager.replay(s)
        tasks = manager.list(filter)
      }
      const now = Date.now()
      if (!a.all) {
        tasks = tasks.filter(
          (t) => !TERMINAL.has(t.status) || now - (t.finishedAt ?? t.startedAt) <= HOUR_MS,
        )
      }
      await out(table(tasks, now))
    },
  },

  logs: {
    spec: { '--follow': 'bool', '-f': '--follow', '--stderr': 'bool', '--store': 'value' },
    check({ opts, positionals }) {
      return { id: oneId(positionals, 'logs'), follow: !!opts.follow, stream: opts.stderr ? 'stderr' : 'stdout' }
    },
    async exec(manager, a) {
      const snap = await replayed(manager, a.id)
      // A pty task has one stream, its terminal transcript.
      const stream = snap && snap.mode === 'pty' ? 'pty' : a.stream
      let offset = 0
      let limit = Infinity // without -f: what existed when we started
      let dryAfterEnd = 0
      for (;;) {
        const page = await manager.readOutput(a.id, { stream, offset, maxBytes: 1 << 20 })
        if (!a.follow && limit === Infinity) limit = page.totalBytes
        await out(page.data)
        const progressed = page.nextOffset > offset
        offset = page.nextOffset
        if (page.eof) break
        if (!a.follow) {
          if (!progressed || offset >= limit) break
          continue
        }
        if (progressed) continue
        // Nothing new: sleep until more output may exist (resolves early when the task ends).
        const snap = await manager.wait(a.id, { timeoutMs: 200 })
        if (TERMINAL.has(snap.status) && ++dryAfterEnd > 3) break // never spin on an ended task
      }
    },
  },

  wait: {
    spec: { '--timeout': 'value', '--store': 'value' },
    check({ opts, positionals }) {
      return { id: oneId(positionals, 'wait'), timeoutMs: parseMs(opts.timeout, '--timeout') }
    },
    async exec(manager, a) {
      await replayed(manager, a.id)
      const snap = await manager.wait(a.id, a.timeoutMs === undefined ? {} : { timeoutMs: a.timeoutMs })
      await out(statusLine(snap))
      process.exitCode = snap.status === 'completed' ? 0 : 1
    },
  },

  kill: {
    spec: { '--signal': 'value', '-s': '--signal', '--grace': 'value', '--store': 'value' },
    check({ opts, positionals }) {
      return { id: oneId(positionals, 'kill'), signal: parseSignal(opts.signal), graceMs: parseMs(opts.grace, '--grace') }
    },
    async exec(manager, a) {
      await replayed(manager, a.id)
      const options = {}
      if (a.signal) options.signal = a.signal
      if (a.graceMs !== undefined) options.graceMs = a.graceMs
      const snap = await manager.kill(a.id, options)
      await out(statusLine(snap))
      process.exitCode = TERMINAL.has(snap.status) ? 0 : 1
    },
  },

  gc: {
    spec: { '--older-than': 'value', '--store': 'value' },
    check({ opts, positionals }) {
      if (positionals.length) throw new UsageError(`gc takes no arguments, got "${positionals[0]}"`)
      return { olderThanMs: parseMs(opts.olderThan, '--older-than') }
    },
    async exec(manager, a) {
      const res = await manager.gc(a.olderThanMs === undefined ? {} : { olderThanMs: a.olderThanMs })
      await out(`removed ${res.removed}, quarantined ${res.quarantined}\n`)
    },
  },
}

// --------------------------------------------------------------------- main

async function main(argv) {
  // Global options before the command: --store DIR, -h/--help.
  let store
  let i = 0
  for (; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--store') {
      if (i + 1 >= argv.length) throw new UsageError('option --store needs a value')
      store = argv[++i]
    } else if (arg.startsWith('--store=')) {
      store = arg.slice('--store='.length)
    } else if (arg === '-h' || arg === '--help') {
      return out(HELP)
    } else break
  }
  const name = argv[i]
  if (name === undefined) throw new UsageError('missing command')
  if (name === 'help') return out(HELP)
  const cmd = Object.prototype.hasOwnProperty.call(commands, name) ? commands[name] : null
  if (!cmd) throw new UsageError(`unknown command "${name}"`)

  const parsed = parseArgs(argv.slice(i + 1), cmd.spec, { stopAtPositional: cmd.stopAtPositional })
  if (parsed.opts.help) return out(HELP)
  if (parsed.opts.store !== undefined) store = parsed.opts.store
  if (store === '') throw new UsageError('option --store needs a non-empty value')
  if (!cmd.stopAtPositional && parsed.rest) parsed.positionals.push(...parsed.rest)
  const args = cmd.check(parsed)

  const manager = new TaskManager(store === undefined ? {} : { storageDir: store })
  try {
    await cmd.exec(manager, args)
  } finally {
    // Stops watching only: tasks keep running.
    await manager.close().catch(() => {})
  }
}

main(process.argv.slice(2)).then(
  () => {
    if (process.exitCode === undefined) process.exitCode = 0
  },
  (err) => {
    if (err instanceof UsageError) {
      process.stderr.write(`bgshell: ${err.message}; ${USAGE_LINE}\n`)
      process.exitCode = 2
    } else if (err && err.code) {
      process.stderr.write(`bgshell: ${err.message} (${err.code})\n`)
      process.exitCode = 1
    } else {
      process.stderr.write(`bgshell: ${err && err.stack ? err.stack : err}\n`)
      process.exitCode = 1
    }
  },
)
