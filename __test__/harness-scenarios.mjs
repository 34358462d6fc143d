// The scenarios every real harness must pass, written once; harness-pi.test.mjs and
// harness-opencode.test.mjs run them with `harnessSuite(prefix, title, install)`, where
//
//   install(h, { home, env, model }) -> sets up a fresh home (its own HOME, npm prefix and cache,
//                                store; `env` has them) with the adapter installed by name from
//                                the test registry, and returns `launch`
//   launch()                  -> a running harness on the home's one session (the same session
//                                again after a restart), with:
//     prompt(text)               sends a user message (the scripted model reads CALL lines)
//     transcript()               [{ role: 'user' | 'assistant' | 'tool', text }] of the session
//     kill()                     SIGKILL (its process group), as a crash would
//
// The model server tells what woke the model: `model.remindersFor(taskId)` are the requests
// whose last user message was a reminder naming that task.
import { after, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import { existsSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { harnesses, missing } from '../scripts/harnesses.mjs'
import { TaskManager, alive, tempDir } from './helpers.mjs'
import { HEADER, TASK_ID, dropPacks, killAll, killStoreTasks, npmEnv, packAll, startModel, startRegistry, unpackable, until } from './harness-lib.mjs'

/** A command naming this must never run: each harness's rules deny it (see the installs). */
export const DENIED_MARKER = 'denied-marker'

const call = (tool, args) => `CALL ${tool} ${JSON.stringify(args)}`

/** The reminders in a transcript that name `taskId`. */
const remindersIn = (entries, taskId) => entries.filter((e) => e.role === 'user' && e.text.startsWith(HEADER) && e.text.includes(taskId))

/** The last tool result naming a task id, once `count` tool results are there. */
async function toolResult(h, count, what, ms = 30_000) {
  const tools = await until(async () => {
    const t = (await h.transcript()).filter((e) => e.role === 'tool')
    return t.length >= count ? t : null
  }, ms, what).catch(async (error) => {
    // What the session holds, to tell a harness that stopped from one that is slow.
    const tail = (await h.transcript().catch(() => [])).slice(-6).map((e) => `${e.role}: ${e.text.slice(0, 300)}`)
    throw new Error(`${error.message}; the transcript ends:\n${tail.join('\n')}`)
  })
  return tools[count - 1]
}

const idIn = (text) => text.match(TASK_ID)?.[0]

/** Waits for the model to have answered the reminder naming `taskId`; returns the reminder text. */
async function reminded(h, model, taskId, what) {
  await until(async () => model.remindersFor(taskId).length > 0 && remindersIn(await h.transcript(), taskId).length > 0, 30_000, what)
  return remindersIn(await h.transcript(), taskId)[0].text
}

/**
 * The scenarios for every harness whose name starts with `prefix` (scripts/harnesses.mjs), with
 * one registry and one model for the file, and every process killed at the end.
 */
export function harnessSuite(prefix, title, install) {
  let registry
  let model
  // Made by the first scenario that needs them, inside its own (long) timeout: packing takes a
  // while, and Bun gives hooks only 5 s.
  let ready
  const start = () =>
    (ready ??= (async () => {
      registry = await startRegistry(packAll().tarballs)
      model = await startModel()
    })())
  after(async () => {
    await killAll()
    await registry?.close()
    await model?.close()
    dropPacks()
  })
  for (const h of harnesses.filter((x) => x.name.startsWith(prefix))) {
    const driver = {
      async setup() {
        await start()
        const home = tempDir(`bgshell-${h.name}-`)
        const storageDir = join(home, 'bgshell')
        const cleanup = async () => {
          try {
            if (existsSync(storageDir)) killStoreTasks(storageDir)
          } finally {
            rmSync(home, { recursive: true, force: true })
          }
        }
        try {
          const env = { ...process.env, ...npmEnv(home, registry.url), BGSHELL_HOME: storageDir }
          delete env.BGSHELL_SUPERVISOR
          return { launch: await install(h, { home, env, model }), cleanup, home, storageDir }
        } catch (error) {
          await cleanup()
          throw error
        }
      },
    }
    scenarios(title(h), async () => (await start(), { driver, model }), unpackable() ?? missing(h) ?? undefined)
  }
}

/** Declares the scenarios; `await ctx()` gives { driver, model }; `skip` (a reason) skips them. */
function scenarios(name, ctx, skip) {
  // CI installs every harness (.ci/run sets BGSHELL_CI): there a missing one fails, not skips.
  if (skip && process.env.BGSHELL_CI) {
    test(`${name}: the harness is installed`, () => assert.fail(skip))
    return
  }
  const opts = { timeout: 240_000, ...(skip ? { skip } : {}) }
  describe(name, () => {
    const cleanups = []
    after(async () => {
      // Every home is removed even when one cleanup fails; the first failure is reported.
      const results = await Promise.allSettled(cleanups.reverse().map((c) => c()))
      const failed = results.find((r) => r.status === 'rejected')
      if (failed) throw failed.reason
    })

    test('background reminder with no user prompt, exactly once; promoted foreground; bash_kill; pty with bash_write', opts, async () => {
      const { driver, model } = await ctx()
      const { launch, cleanup } = await driver.setup()
      cleanups.push(cleanup)
      const h = await launch()
      try {
        // A background task: its reminder wakes the model, with nothing typed after the prompt.
        await h.prompt(call('bash', { command: 'echo bg-out; sleep 1; exit 3', background: true }))
        const bg = idIn((await toolResult(h, 1, 'the background tool result')).text)
        assert.ok(bg, 'the bash tool named no task')
        const bgReminder = await reminded(h, model, bg, 'the background reminder')
        assert.match(bgReminder, /failed \(exit code 3\)/)
        assert.match(bgReminder, /bg-out/)

        // A foreground command outliving wait_seconds moves to the background and reminds later.
        await h.prompt(call('bash', { command: 'sleep 2; echo promoted-out', wait_seconds: 0.3 }))
        const promotedResult = (await toolResult(h, 2, 'the promoted tool result')).text
        const promoted = idIn(promotedResult)
        assert.ok(promoted, `no task id in the promoted result: ${promotedResult}`)
        assert.doesNotMatch(promotedResult, /promoted-out/, 'the command had not finished when it was promoted')
        const promotedReminder = await reminded(h, model, promoted, 'the promoted reminder')
        assert.match(promotedReminder, /completed \(exit code 0\)/)
        assert.match(promotedReminder, /promoted-out/)

        // bash_kill: the model learns of the end from the tool result; no reminder follows.
        await h.prompt(`${call('bash', { command: 'sleep 60', background: true })}\n${call('bash_kill', { task_id: '$TASK' })}`)
        const killed = idIn((await toolResult(h, 3, 'the sleep task')).text)
        const killResult = (await toolResult(h, 4, 'the bash_kill result')).text
        assert.match(killResult, new RegExp(`${killed} killed`))

        // A pty task driven with bash_write: it reads a line, answers, and exits 0.
        await h.prompt(
          [
            call('bash', { command: "read -r -p 'name? ' n; echo hello-$n; sleep 0.2", pty: true, background: true }),
            call('bash_write', { task_id: '$TASK', input: 'world', keys: ['enter'] }),
          ].join('\n'),
        )
        const pty = idIn((await toolResult(h, 5, 'the pty task')).text)
        assert.match((await toolResult(h, 6, 'the bash_write result')).text, /Wrote \d+ bytes/)
        const ptyReminder = await reminded(h, model, pty, 'the pty reminder')
        assert.match(ptyReminder, /completed \(exit code 0\)/)
        assert.match(ptyReminder, /hello-world/)

        // A last round trip, after which nothing may have been repeated.
        await h.prompt(call('bash_status', {}))
        const list = (await toolResult(h, 7, 'the bash_status list')).text
        for (const id of [bg, promoted, killed, pty]) assert.match(list, new RegExp(id))
        const entries = await h.transcript()
        for (const id of [bg, promoted, pty]) {
          assert.equal(remindersIn(entries, id).length, 1, `reminders naming ${id} in the transcript`)
          assert.equal(model.remindersFor(id).length, 1, `model requests woken by a reminder naming ${id}`)
        }
        assert.equal(remindersIn(entries, killed).length, 0, 'a killed task was reminded')
        assert.equal(model.remindersFor(killed).length, 0, 'a killed task woke the model')
      } finally {
        await h.kill()
      }
    })

    test('the harness\'s rules stop bash and bash_write; foreground output sized like its bash, streamed; a cancelled call kills its command; UI', opts, async () => {
      const { driver, model } = await ctx()
      const { launch, cleanup, home, storageDir } = await driver.setup()
      cleanups.push(cleanup)
      const marker = join(home, 'project', DENIED_MARKER)
      const h = await launch()
      const store = new TaskManager({ storageDir })
      try {
        // A denied command never runs, in the background or typed into a pty.
        await h.prompt(
          [
            call('bash', { command: `touch ${DENIED_MARKER}`, background: true }),
            call('bash', { command: 'bash --norc', pty: true, background: true }),
            call('bash_write', { task_id: '$TASK', input: `touch ${DENIED_MARKER}`, keys: ['enter'] }),
          ].join('\n'),
        )
        const denied = (await toolResult(h, 1, 'the denied bash')).text
        assert.doesNotMatch(denied, TASK_ID, `a denied command was started: ${denied}`)
        assert.match(denied, /blocked|rule|denied|prevent/i, denied)
        const pty = idIn((await toolResult(h, 2, 'the pty task')).text)
        assert.ok(pty, 'no pty task')
        const write = (await toolResult(h, 3, 'the denied bash_write')).text
        assert.doesNotMatch(write, /Wrote \d+ bytes/)
        assert.match(write, /blocked|rule|denied|prevent/i, write)
        // Stopped through the model (a kill from outside would remind, racing the next prompt).
        await h.prompt(call('bash_kill', { task_id: pty }))
        assert.match((await toolResult(h, 4, 'the pty kill')).text, new RegExp(`${pty} killed`))
        assert.ok(!existsSync(marker), 'a denied command ran')

        // A long foreground result: the end, sized like the harness's own bash, and the full file.
        await h.prompt(call('bash', { command: 'for i in $(seq 1 2500); do echo line-$i; done; sleep 1; echo tail-end' }))
        const big = (await toolResult(h, 5, 'the long foreground result', 90_000)).text
        const path = big.match(/Full output(?: saved to)?: (\S+?)\]?$/m)?.[1]
        assert.ok(path && existsSync(path), `no full output path in: ${big.slice(0, 300)}`)
        assert.match(big, /line-2500\ntail-end/)
        assert.doesNotMatch(big, /\nline-1\n/)
        assert.ok(big.split('\n').length <= 2010, `${big.split('\n').length} lines`)
        if (h.updates) assert.ok(h.updates().some((u) => u.includes('line-2500')), 'no streamed output while it ran')

        // A background task with a label: the UI hears of it.
        await h.prompt(call('bash', { command: 'sleep 1; echo ui-done', background: true, label: 'ui-task' }))
        const uiTask = idIn((await toolResult(h, 6, 'the labelled task')).text)
        await reminded(h, model, uiTask, 'the labelled task reminder')
        const ui = h.ui()
        if (ui.status) {
          await until(() => h.ui().status.includes('bg: 1 running'), 10_000, 'the status line count')
          await until(() => h.ui().status.at(-1) === null, 10_000, 'the status line cleared')
          await h.prompt('/bg list')
          await until(() => h.ui().notifications.some((n) => n.includes(uiTask)), 10_000, '/bg list')
        }
        if (ui.toasts) await until(() => h.ui().toasts.some((t) => t.message.includes(uiTask)), 10_000, 'the toast')

        // Cancelling the call kills the foreground command.
        await h.prompt(call('bash', { command: 'echo abort-start; sleep 60' }))
        const running = await until(() => store.list({ status: ['running'] }).find((t) => t.command.includes('abort-start')), 30_000, 'the foreground task')
        await h.abort()
        await until(() => ['killed', 'failed'].includes(store.get(running.taskId)?.status), 15_000, 'the aborted task to end')
        assert.equal(store.get(running.taskId).status, 'killed')
        assert.ok(!alive(running.pid), 'the aborted command still runs')
      } finally {
        await store.close()
        await h.kill()
      }
    })

    test('SIGKILLed while a task runs: the restart delivers the real exit with no user message, and no later restart repeats it; watches are kept', opts, async () => {
      const { driver, model } = await ctx()
      const { launch, cleanup, home } = await driver.setup()
      cleanups.push(cleanup)
      // A task with a repeating watch: its first match before the crash, its second after.
      const go = join(home, 'go-watch')
      let h = await launch()
      let taskPid
      let id
      let watched
      // The model is shared by the file's harnesses: requests are told apart by task id.
      const ticks = (text) => model.requests.filter((r) => r.last.startsWith(HEADER) && r.last.includes(watched) && r.last.includes(text))
      try {
        await h.prompt(
          [
            call('bash', { command: `echo tick-1; while [ ! -e ${go} ]; do sleep 0.1; done; echo tick-2; sleep 120`, background: true }),
            call('bash_watch', { task_id: '$TASK', pattern: 'tick-', repeat: true }),
          ].join('\n'),
        )
        watched = idIn((await toolResult(h, 1, 'the watched task')).text)
        assert.match((await toolResult(h, 2, 'the bash_watch result')).text, /Watching .* at every match/)
        await until(() => ticks('tick-1').length > 0, 30_000, 'the reminder of the first match')
        await h.prompt(call('bash', { command: 'sleep 3; echo restart-out; exit 7', background: true }))
        const started = (await toolResult(h, 3, 'the background tool result')).text
        id = idIn(started)
        taskPid = Number(started.match(/pid (\d+)/)?.[1])
        assert.ok(id && taskPid, `no task id and pid in: ${started}`)
      } finally {
        await h.kill()
      }
      assert.ok(alive(taskPid), 'the task died with the harness')
      assert.equal(model.remindersFor(id).length, 0, 'reminded before the task ended')
      // The task ends while no harness runs.
      await until(() => !alive(taskPid), 30_000, 'the task to end')

      h = await launch()
      try {
        // No prompt: the restarted harness delivers the completion by itself.
        const reminder = await reminded(h, model, id, 'the reminder after the restart')
        assert.match(reminder, /failed \(exit code 7\)/)
        assert.match(reminder, /restart-out/)
        // The watch was kept with its task: the match printed now reaches the model unasked.
        writeFileSync(go, '')
        await until(() => ticks('tick-2').length > 0, 30_000, 'the reminder of the match after the restart')
        await h.prompt(call('bash_watch', { task_id: watched, action: 'list' }))
        const listed = (await toolResult(h, 4, 'the watch list')).text
        assert.match(listed, /watch-1: pattern "tick-", repeating, at most 10\/min, 2 matches so far/)
        await h.prompt(call('bash_watch', { task_id: watched, action: 'remove', watch_id: 'watch-1' }))
        assert.match((await toolResult(h, 5, 'the watch removal')).text, /Removed watch-1/)
      } finally {
        await h.kill()
      }

      h = await launch()
      try {
        // A full round trip through the restarted harness; the completion stays delivered.
        await h.prompt(call('bash_status', { task_id: id }))
        const status = (await toolResult(h, 6, 'bash_status after the second restart')).text
        assert.match(status, new RegExp(`${id} failed exit=7`))
        assert.equal(remindersIn(await h.transcript(), id).length, 1, 'reminders naming the task in the transcript')
        assert.equal(model.remindersFor(id).length, 1, 'model requests woken by the reminder')
        // Each match was told once: none lost in the crash, none told again by a restart.
        assert.equal(ticks('tick-1').length, 1, 'requests woken by the first match')
        assert.equal(ticks('tick-2').length, 1, 'requests woken by the second match')
        await h.prompt(call('bash_watch', { task_id: watched, action: 'list' }))
        assert.match((await toolResult(h, 7, 'the empty watch list')).text, /has no watches/)
      } finally {
        await h.kill()
      }
    })
  })
}
