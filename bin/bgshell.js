#!/usr/bin/env node
// bgshell: inspect and control the background shell tasks in a bgshell store
// (the one `new TaskManager()` uses: $BGSHELL_HOME, else $XDG_STATE_HOME/bgshell,
// else ~/.local/state/bgshell; `--store DIR` overrides it).
'use strict'

const { TaskManager } = require('../index.js')

const USAGE_LINE = 'usage: bgshell run|ls|logs|wait|kill|attach|gc ... (bgshell help for more)'

const HELP = `bgshell: inspect and control durable background shell tasks

usage:
  bgshell run [--session S] [--timeout MS] [--notify] [--label L] [--pty] -- <command...>
      Start the command in the current directory, in session S (default
      "cli"). One word is shell text, run as given ('npm test && echo ok');
      several words are a program and its arguments, each kept as one
      argument (bgshell run -- bash -c 'for i in 1 2; do echo $i; done').
      Prints the task id and returns at once; the task keeps running.
      --timeout 0 means no deadline (default: the library's, 30 min).
      --notify queues a completion for the session's harness; without it the
      task can be removed by gc once it ends. --label names the task.
      --pty runs it on a terminal (sized like this one), for bgshell attach.
  bgshell ls [--all] [--session S]
      List tasks: running ones and those that ended in the last hour, or all
      of them with --all. A LABEL column appears when a task has a label.
  bgshell attach <id>
      Put this terminal on a running pty task: its screen, your keys, your
      window size. Ctrl-] detaches (the task keeps running).
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

/** One word as POSIX shell text that the shell reads back as exactly that word. */
function shellQuote(word) {
  if (word !== '' && /^[A-Za-z0-9_@%+=:,./-]+$/.test(word)) return word
  return "'" + word.replace(/'/g, "'\\''") + "'"
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
  // The LABEL column only when some task has a label, so scripts reading ls see no change.
  if (tasks.some((t) => t.label)) {
    header.splice(5, 0, 'LABEL')
    tasks.forEach((t, i) => rows[i].splice(5, 0, truncate(oneLine(t.label ?? '-'), 24)))
  }
  const last = header.length - 1
  const widths = header.slice(0, last).map((h, i) => Math.max(h.length, ...rows.map((r) => Array.from(r[i]).length)))
  const used = widths.reduce((a, b) => a + b, 0) + 2 * widths.length
  const commandWidth = Math.max(10, total - used)
  const fmt = (r) =>
    r
      .slice(0, last)
      .map((c, i) => c + ' '.repeat(widths[i] - Array.from(c).length))
      .join('  ') +
    '  ' +
    truncate(r[last], commandWidth)
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
    spec: {
      '--session': 'value',
      '--timeout': 'value',
      '--notify': 'bool',
      '--label': 'value',
      '--pty': 'bool',
      '--store': 'value',
    },
    stopAtPositional: true,
    check({ opts, positionals, rest }) {
      const words = [...positionals, ...(rest ?? [])]
      if (words.length === 0) throw new UsageError('run needs a command, e.g. bgshell run -- npm test')
      // One word is shell text; several are argv, each word quoted so its boundaries survive.
      const command = words.length === 1 ? words[0] : words.map(shellQuote).join(' ')
      if (words.join('').trim() === '') throw new UsageError('run needs a non-blank command')
      if (opts.session !== undefined && opts.session === '') throw new UsageError('option --session needs a non-empty value')
      return {
        command,
        session: opts.session ?? 'cli',
        timeoutMs: parseMs(opts.timeout, '--timeout'),
        notify: !!opts.notify,
        label: opts.label,
        pty: !!opts.pty,
      }
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
      if (a.label !== undefined) spawn.label = a.label
      if (a.pty) {
        spawn.mode = 'pty'
        if (process.stdout.isTTY && process.stdout.rows && process.stdout.columns) {
          spawn.rows = process.stdout.rows
          spawn.cols = process.stdout.columns
        }
      }
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

  attach: {
    spec: { '--store': 'value' },
    check({ positionals }) {
      return { id: oneId(positionals, 'attach') }
    },
    exec: attach,
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

// ------------------------------------------------------------------- attach

const DETACH_KEY = 0x1d // Ctrl-]

/**
 * `bgshell attach <id>`: this terminal on a running pty task, through its supervisor's socket
 * (`attach` request, protocol.rs): the supervisor paints the screen as it is, then streams what
 * the program prints; keys typed here go to the program. The task's terminal takes this
 * terminal's size (and follows it). Ctrl-] detaches; the task keeps running.
 */
async function attach(manager, a) {
  const net = require('node:net')
  const path = require('node:path')
  const snap = await replayed(manager, a.id)
  if (snap.mode !== 'pty') {
    const err = new Error(`task ${a.id} runs with pipes, not a terminal; only pty tasks can be attached (bgshell logs -f follows its output)`)
    err.code = 'E_NOT_PTY'
    throw err
  }
  if (TERMINAL.has(snap.status)) {
    const err = new Error(`task ${a.id} has ended (${snap.status}); there is no terminal to attach to`)
    err.code = 'E_EXITED'
    throw err
  }
  const stdin = process.stdin
  const stdout = process.stdout
  const size = () => (stdout.isTTY && stdout.rows && stdout.columns ? [stdout.rows, stdout.columns] : null)
  const resize = () => {
    const s = size()
    if (s) {
      try {
        manager.resize(a.id, s[0], s[1])
      } catch {}
    }
  }
  resize()
  // The socket sits beside the transcript. Connect by a relative path from that directory:
  // a socket address holds at most 107 bytes, a store path may be longer.
  const dir = path.dirname(snap.ptyPath)
  const cwd = process.cwd()
  process.chdir(dir)
  const sock = net.connect(`./${a.id}.sock`)
  process.chdir(cwd)
  let detached = false
  const wasRaw = stdin.isTTY ? stdin.isRaw : false
  const restore = () => {
    if (stdin.isTTY) stdin.setRawMode(wasRaw)
    stdin.pause()
    stdout.off('resize', resize)
  }
  await new Promise((resolve, reject) => {
    let header = ''
    let attached = false
    sock.once('connect', () => sock.write('attach\n'))
    sock.on('error', (e) => {
      if (!attached) {
        const err = new Error(`cannot reach the terminal of task ${a.id} (it may just have ended): ${e.message}`)
        err.code = 'E_EXITED'
        reject(err)
      } else resolve()
    })
    sock.on('data', (chunk) => {
      if (attached) return stdout.write(chunk)
      header += chunk.toString('latin1')
      const nl = header.indexOf('\n')
      if (nl < 0) return
      const line = header.slice(0, nl)
      if (!line.startsWith('ok')) {
        const err = new Error(`task ${a.id} refused to attach: ${line.replace(/^err /, '')}`)
        err.code = 'E_IO'
        sock.destroy()
        return reject(err)
      }
      attached = true
      if (stdin.isTTY) stdin.setRawMode(true)
      stdin.resume()
      stdin.on('data', (keys) => {
        const at = keys.indexOf(DETACH_KEY)
        if (at < 0) return sock.write(keys)
        if (at > 0) sock.write(keys.subarray(0, at))
        detached = true
        sock.end()
        resolve()
      })
      stdout.on('resize', resize)
      const rest = Buffer.from(header.slice(nl + 1), 'latin1')
      if (rest.length) stdout.write(rest)
    })
    sock.on('close', () => resolve())
  }).finally(restore)
  sock.destroy()
  if (detached) {
    await out(`\r\n[detached from ${a.id}; it keeps running]\r\n`)
    return
  }
  const end = await manager.wait(a.id, { timeoutMs: 5000 })
  await out(`\r\n[task ${a.id} ${end.status}${end.exitCode === undefined ? '' : ` exit=${end.exitCode}`}]\r\n`)
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
