// The argument contract of the JavaScript surface (API.md, "Errors"), kept at the boundary:
// - every argument error is an Error with code E_INVALID and a sentence naming the method and
//   the argument, also when napi's own conversion refused a value of the wrong type;
// - a method that returns a Promise never throws: every failure is a rejection;
// - a string that is not well-formed Unicode (a lone surrogate) is refused: napi would turn it into
//   U+FFFD silently, and two different session ids could become one;
// - an options argument that is given must be an object;
// - an option whose type is a string union (mode, stdin, status, signal, stream, durability) must
//   hold one of its values. The values are the addon's: each union is a Rust enum
//   (src/bindings/enums.rs) that napi exports as an object of its values and declares in index.d.ts.
'use strict'

const CODES = new Set(['E_INVALID', 'E_NOT_FOUND', 'E_LIMIT', 'E_SPAWN', 'E_IO', 'E_NOT_PTY', 'E_EXITED', 'E_TOO_LARGE', 'E_CLOSED', 'E_ABORTED', 'E_INTERNAL'])

// Argument kinds: 's' string, 'o' object, 'o?' optional object, 'a' array of strings,
// 'w' write input (string or array), 'n' number, 'f' function.
// `enums`: the options (in the object argument) whose values an enum of the addon lists;
// 'Name[]' for an array of them.
const SPAWN_ENUMS = { mode: 'TaskMode', stdin: 'StdinMode' }
const CONSTRUCTOR = { args: ['o?'], enums: { durability: 'Durability' } }
const METHODS = {
  spawn: { args: ['o'], async: true, enums: SPAWN_ENUMS },
  get: { args: ['s'] },
  list: { args: ['o?'], enums: { status: 'TaskStatus[]' } },
  wait: { args: ['s', 'o?'], async: true },
  kill: { args: ['s', 'o?'], async: true, enums: { signal: 'KillSignal' } },
  replay: { args: ['s', 'o?'], async: true },
  drainCompletions: { args: ['s'] },
  ackCompletions: { args: ['s', 'a'] },
  gc: { args: ['o?'], async: true },
  readOutput: { args: ['s', 'o?'], async: true, enums: { stream: 'OutputStream' } },
  tail: { args: ['s', 'o?'], async: true, enums: { stream: 'TailStream' } },
  onEvent: { args: ['f'] },
  watch: { args: ['s', 'o'] },
  unwatch: { args: ['s', 's'] },
  watches: { args: ['s'] },
  waitFor: { args: ['s', 'o'], async: true },
  promote: { args: ['s'] },
  run: { args: ['o'], async: true, enums: SPAWN_ENUMS },
  write: { args: ['s', 'w'] },
  closeStdin: { args: ['s'] },
  resize: { args: ['s', 'n', 'n'] },
  screen: { args: ['s'], async: true },
  close: { args: ['o?'], async: true },
}

function invalid(message) {
  const e = new Error(message)
  e.code = 'E_INVALID'
  return e
}

const describe = (v) => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v === 'string' ? 'a string' : typeof v)

/** Lone surrogates anywhere in a string, or in the strings of an object or array (two levels). */
// Plain loops: this runs on every call, and a burst of calls made in one turn feels every
// allocation (issue #15).
function badUnicode(value, depth = 0) {
  if (typeof value === 'string') return !value.isWellFormed()
  if (depth > 2 || value === null || typeof value !== 'object') return false
  if (Array.isArray(value)) {
    for (const v of value) if (badUnicode(v, depth + 1)) return true
    return false
  }
  for (const k of Object.keys(value)) if (!k.isWellFormed() || badUnicode(value[k], depth + 1)) return true
  return false
}

/** 'a', 'b' or 'c' */
const oneOf = (values) => values.map((v) => `'${v}'`).join(', ').replace(/, ([^,]*)$/, ' or $1')
const shown = (v) => (typeof v === 'string' ? JSON.stringify(v) : typeof v === 'number' || typeof v === 'boolean' ? String(v) : describe(v))

/** Refuses an option value that its enum does not list; `enums` maps enum names to their values. */
function checkEnums(method, fields, options, enums) {
  if (!fields || options === undefined || options === null) return
  for (const field in fields) {
    const type = fields[field]
    const v = options[field]
    const array = type.endsWith('[]')
    const values = enums[array ? type.slice(0, -2) : type]
    if (v === undefined || !values) continue
    if (!array) {
      if (!values.includes(v)) throw invalid(`${method}(): ${field} must be ${oneOf(values)} (got ${shown(v)})`)
    } else if (!Array.isArray(v)) {
      throw invalid(`${method}(): ${field} must be an array of ${oneOf(values)}, got ${describe(v)}`)
    } else {
      const bad = v.findIndex((x) => !values.includes(x))
      if (bad >= 0) throw invalid(`${method}(): ${field} must hold only ${oneOf(values)} (got ${shown(v[bad])})`)
    }
  }
}

/** Whether `v` is of argument kind `kind`. */
function isKind(kind, v) {
  switch (kind) {
    case 's':
      return typeof v === 'string'
    case 'o':
      return v !== null && typeof v === 'object' && !Array.isArray(v)
    case 'o?':
      return v === undefined || v === null || (typeof v === 'object' && !Array.isArray(v))
    case 'a':
      return Array.isArray(v) && v.every((x) => typeof x === 'string')
    case 'w':
      return typeof v === 'string' || Array.isArray(v)
    case 'n':
      return typeof v === 'number'
    case 'f':
      return typeof v === 'function'
  }
  return false
}
const WANT = { s: 'a string', o: 'an object', 'o?': 'an object (or left out)', a: 'an array of strings', w: 'a string or an array', n: 'a number', f: 'a function' }

function check(method, { args: kinds, enums: fields }, args, enums) {
  for (let i = 0; i < kinds.length; i++) {
    const kind = kinds[i]
    const v = args[i]
    if (!isKind(kind, v)) throw invalid(`argument ${i + 1} of ${method}() must be ${WANT[kind]}, got ${describe(v)}`)
    if (badUnicode(v)) throw invalid(`argument ${i + 1} of ${method}() contains a lone surrogate: strings must be well-formed Unicode`)
    if (kind === 'o' || kind === 'o?') checkEnums(method, fields, v, enums)
  }
}

/**
 * Native errors without one of our codes: a caught Rust panic (napi's GenericFailure) is
 * E_INTERNAL; the rest are napi's conversion errors, that is argument errors.
 */
function ours(method, e) {
  if (e && CODES.has(e.code)) return e
  if (e?.code === 'GenericFailure') {
    const internal = new Error(`${method}(): bgshell hit an internal error (a bug; please report it): ${e.message}`)
    internal.code = 'E_INTERNAL'
    internal.cause = e
    return internal
  }
  const wrapped = invalid(`${method}(): an argument has the wrong type or value: ${e?.message ?? e}`)
  wrapped.cause = e
  return wrapped
}

/**
 * `Native` is the addon's TaskManager; `binding` the addon's exports, where each string enum is
 * an object of its values (`{ Pipes: 'pipes', Pty: 'pty' }`).
 */
module.exports = function guard(Native, binding = {}) {
  const enums = {}
  for (const [name, value] of Object.entries(binding)) {
    const values = value !== null && typeof value === 'object' ? Object.values(value) : []
    if (values.length && values.every((v) => typeof v === 'string')) enums[name] = values
  }
  class TaskManager extends Native {
    constructor(options) {
      check('TaskManager', CONSTRUCTOR, [options], enums)
      try {
        super(options)
      } catch (e) {
        throw ours('TaskManager', e)
      }
    }
  }
  for (const [name, spec] of Object.entries(METHODS)) {
    const { async } = spec
    const native = Native.prototype[name]
    if (typeof native !== 'function') continue
    const rejected = (e) => Promise.reject(ours(name, e))
    Object.defineProperty(TaskManager.prototype, name, {
      configurable: true,
      writable: true,
      value: async
        ? function (...a) {
            try {
              check(name, spec, a, enums)
              return native.apply(this, a).catch(rejected)
            } catch (e) {
              return Promise.reject(ours(name, e))
            }
          }
        : function (...a) {
            check(name, spec, a, enums)
            try {
              return native.apply(this, a)
            } catch (e) {
              throw ours(name, e)
            }
          },
    })
  }
  Object.defineProperty(TaskManager, 'name', { value: 'TaskManager' })
  return TaskManager
}
