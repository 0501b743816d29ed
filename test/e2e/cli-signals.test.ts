// Stopping `cluster start` the ways a user does: SIGTERM to the `npm start` process alone (as a
// process manager or `kill <pid>` sends it), and SIGTERM or SIGINT while it is still starting. Each
// time, everything it started (anvil included) is gone within 5 s. Also: a second `cluster start` on a
// data dir in use says so.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import { createServer } from 'node:net'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { tempDir, waitFor } from '../helpers/fixtures.ts'
import { cluster, exited, killAll, ROOT, runCluster } from '../helpers/processes.ts'

interface Proc {
  pid: number
  ppid: number
  pgid: number
  state: string
  comm: string
}

/** Every process on the machine, as ps sees it. */
function processes(): Proc[] {
  const out = execFileSync('ps', ['-eo', 'pid=,ppid=,pgid=,stat=,comm='], { encoding: 'utf8' })
  return out
    .split('\n')
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f.length >= 5)
    .map(([pid, ppid, pgid, state, ...comm]) => ({
      pid: Number(pid),
      ppid: Number(ppid),
      pgid: Number(pgid),
      state: state as string,
      comm: comm.join(' '),
    }))
}

/** The processes below `root` (not itself). */
function descendants(root: number): Proc[] {
  const all = processes()
  const found: Proc[] = []
  let frontier = [root]
  while (frontier.length > 0) {
    const children = all.filter((p) => frontier.includes(p.ppid))
    found.push(...children)
    frontier = children.map((p) => p.pid)
  }
  return found
}

/** Still running: present and not a zombie (this container's PID 1 may not reap orphans). */
const running = (pids: number[]): Proc[] => processes().filter((p) => pids.includes(p.pid) && !p.state.startsWith('Z'))

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const server = createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })

const answers = async (url: string): Promise<boolean> => {
  try {
    await fetch(url, { signal: AbortSignal.timeout(1_000) })
    return true
  } catch {
    return false
  }
}

describe('stopping cluster start', () => {
  const cleanups: Array<() => Promise<void>> = []
  /** Every process a test saw started: SIGKILLed at the end if a failed test left it running. */
  const seen = new Set<number>()
  let npm: ChildProcess | undefined

  afterAll(async () => {
    if (npm?.pid != null) {
      try {
        process.kill(-npm.pid, 'SIGKILL')
      } catch {
        // the group is gone
      }
    }
    for (const p of running([...seen])) {
      try {
        process.kill(p.pid, 'SIGKILL')
      } catch {
        // gone meanwhile
      }
    }
    await killAll()
    for (const c of cleanups) await c()
  })

  const dir = async (name: string): Promise<string> => {
    const d = await tempDir(name)
    cleanups.push(d.remove)
    return d.path
  }

  it('SIGTERM to the npm process alone stops the gateway, the node and anvil within 5 s', async () => {
    const dataDir = await dir('npm-sigterm')
    const port = await freePort()
    let output = ''
    npm = spawn('npm', ['start', '--silent'], {
      cwd: ROOT,
      env: { ...process.env, PORT: String(port), CLUSTER_DATA_DIR: dataDir },
      detached: true, // its own group, so a failed test can kill all of it; the test signals npm alone
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    const child = npm
    child.stdout?.on('data', (d: Buffer) => {
      output += d.toString()
    })
    child.stderr?.on('data', (d: Buffer) => {
      output += d.toString()
    })
    const devJson = join(dataDir, 'dev.json')
    await waitFor(() => existsSync(devJson) || child.exitCode != null, 60_000, 'dev.json')
    expect(child.exitCode, output).toBeNull()
    const url = (JSON.parse(readFileSync(devJson, 'utf8')) as { gatewayUrl: string }).gatewayUrl
    expect(url).toBe(`http://127.0.0.1:${port}`)
    expect(await answers(`${url}/health`)).toBe(true)
    const tree = descendants(child.pid as number)
    for (const p of tree) seen.add(p.pid)
    expect(tree.map((p) => p.comm)).toContain('anvil')

    // A second `cluster start` on the same data dir: refused in one line, and the first keeps running.
    // Said before it starts anything of its own (its anvil would load, then write, the same chain state).
    const second = await runCluster(['start', '--data-dir', dataDir])
    expect(second.code, second.err).toBe(2)
    expect(second.out).toBe('')
    expect(second.err).toMatch(/^cluster: the data dir .+ is in use by another running instance/)
    expect(second.err.trim().split('\n')).toHaveLength(1)
    expect(await answers(`${url}/health`)).toBe(true)

    const t0 = Date.now()
    process.kill(child.pid as number, 'SIGTERM') // npm only, not its group
    await waitFor(
      async () => running(tree.map((p) => p.pid)).length === 0 && !(await answers(`${url}/health`)),
      6_000,
      'every process npm started to stop',
    ).catch(() => undefined)
    const left = running(tree.map((p) => p.pid))
    expect(left, output).toEqual([])
    // anvil was waited for by cluster, not orphaned (an orphan stays a zombie in this container). (tsx's
    // esbuild helper may outlive node by a moment: it exits once its pipe closes.)
    const anvils = tree.filter((t) => t.comm === 'anvil').map((t) => t.pid)
    expect(processes().filter((p) => anvils.includes(p.pid))).toEqual([])
    expect(await answers(`${url}/health`)).toBe(false)
    expect(Date.now() - t0).toBeLessThan(5_000)
    await Promise.race([exited(child), new Promise((r) => setTimeout(r, 1_000))])
    expect(child.exitCode ?? child.signalCode, output).not.toBeNull()
    expect(output).toContain('SIGTERM: stopping')
  })

  /** `cluster start` on a fresh data dir and a free port, its anvil found once it runs. */
  const starting = async (name: string) => {
    const dataDir = await dir(name)
    const port = await freePort()
    const proc = cluster(['start', '--data-dir', dataDir], { PORT: String(port) })
    const pid = proc.pid as number
    let anvil: Proc | undefined
    await waitFor(
      () => {
        anvil = descendants(pid).find((p) => p.comm === 'anvil')
        return anvil != null || proc.exitCode != null
      },
      30_000,
      'anvil to start',
    )
    expect(anvil, proc.output()).toBeDefined()
    seen.add((anvil as Proc).pid)
    return { proc, pid, port, anvil: anvil as Proc, url: `http://127.0.0.1:${port}` }
  }

  /** Sends `signal` and checks that everything started so far stops within 5 s, cluster waiting for anvil itself. */
  const stopsCleanly = async (started: Awaited<ReturnType<typeof starting>>, signal: 'SIGTERM' | 'SIGINT') => {
    const { proc, pid, anvil, url } = started
    const t0 = Date.now()
    process.kill(pid, signal)
    await Promise.race([exited(proc), new Promise((r) => setTimeout(r, 5_000))])
    expect(proc.exitCode ?? proc.signalCode, proc.output()).not.toBeNull()
    expect(Date.now() - t0).toBeLessThan(5_000)
    await waitFor(() => running([anvil.pid]).length === 0, 1_000, 'anvil to exit').catch(() => undefined)
    expect(running([anvil.pid]), proc.output()).toEqual([])
    // Stopped and waited for by cluster itself, not left to exit on its own (an orphan stays a zombie here).
    expect(processes().filter((p) => p.pid === anvil.pid)).toEqual([])
    expect(proc.exitCode, proc.output()).toBe(0)
    expect(proc.stderrText()).toContain(`${signal}: stopping`)
    expect(proc.stdoutText()).not.toContain('Cluster is running')
    expect(await answers(`${url}/health`)).toBe(false)
  }

  it('SIGTERM during start-up, once anvil runs: anvil is stopped and the command exits', async () => {
    await stopsCleanly(await starting('start-sigterm'), 'SIGTERM')
  })

  it('SIGINT during start-up, once the gateway answers: the gateway, the node and anvil are stopped', async () => {
    const started = await starting('start-sigint')
    const { proc, url } = started
    await waitFor(async () => (await answers(`${url}/health`)) || proc.exitCode != null, 30_000, 'the gateway')
    expect(proc.stdoutText()).not.toContain('Cluster is running')
    await stopsCleanly(started, 'SIGINT')
  })
})
