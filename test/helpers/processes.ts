// Running the `cluster` command as a user would, from tests: each started process keeps its
// output (to check what it printed) and is killed by killAll() if a test leaves it running.
import { type ChildProcess, spawn } from 'node:child_process'
import { join } from 'node:path'

export const ROOT = join(import.meta.dirname, '..', '..')

export type ClusterProcess = ChildProcess & { output: () => string; stdoutText: () => string; stderrText: () => string }

const started: ClusterProcess[] = []

/** Starts `cluster ARGS…` (PORT=0 unless the caller's env says otherwise). */
export function cluster(args: string[], env: NodeJS.ProcessEnv = {}): ClusterProcess {
  const child = spawn(process.execPath, [join(ROOT, 'bin', 'cluster.js'), ...args], {
    cwd: ROOT,
    env: { ...process.env, PORT: '0', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  }) as ClusterProcess
  let out = ''
  let err = ''
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString()
  })
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString()
  })
  child.output = () => `${out}${err}`
  child.stdoutText = () => out
  child.stderrText = () => err
  started.push(child)
  return child
}

/** Resolves when the process has exited (at once if it already has). */
export function exited(child: ChildProcess): Promise<void> {
  return child.exitCode != null || child.signalCode != null
    ? Promise.resolve()
    : new Promise((r) => child.once('exit', () => r()))
}

/** Kills whatever this file's processes left running, and waits for them. */
export async function killAll(): Promise<void> {
  for (const c of started) if (c.exitCode == null && c.signalCode == null) c.kill('SIGKILL')
  await Promise.all(started.map(exited))
}

/** All output of every process started so far. */
export function allOutput(): string {
  return started.map((c) => c.output()).join('\n')
}

/** Runs a short `cluster` command to its end. */
export async function runCluster(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  const child = cluster(args)
  await exited(child)
  return { code: child.exitCode, out: child.stdoutText(), err: child.stderrText() }
}
