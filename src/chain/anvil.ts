// anvil (Foundry's local Ethereum node) from the @foundry-rs/anvil npm package, as a child process on
// 127.0.0.1. Runtime code: `npm start` runs its local chain with it (src/chain/devchain.ts), and the tests
// and scripts/contracts.ts use it too.
import { type ChildProcess, spawn } from 'node:child_process'
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

/**
 * Path of the native binary of a Foundry tool installed from npm (@foundry-rs/<tool> pulls in the one
 * package for this platform). Spawning it directly, rather than the package's node launcher, means a
 * kill reaches the process itself.
 */
export function foundryBinary(tool: 'forge' | 'anvil' | 'cast'): string {
  const arch = process.arch === 'x64' ? 'amd64' : process.arch
  const exe = process.platform === 'win32' ? `${tool}.exe` : tool
  const pkg = `@foundry-rs/${tool}-${process.platform}-${arch}`
  try {
    return require.resolve(`${pkg}/bin/${exe}`)
  } catch {
    throw new Error(`${pkg} is not installed: run npm ci (${tool} comes from the @foundry-rs/${tool} npm package)`)
  }
}

export interface Anvil {
  /** http://127.0.0.1:<port> */
  url: string
  port: number
  /** Stops anvil (SIGTERM: it dumps its state first when started with --state) and waits for it to exit. */
  stop(): Promise<void>
}

/** How long stop() waits after SIGTERM (a state dump included) before it kills anvil outright. */
const STOP_GRACE_MS = 15_000

/** anvil processes still running: sent SIGTERM if this process exits without stopping them. */
const running = new Set<ChildProcess>()
let exitHookInstalled = false

function installExitHook(): void {
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once('exit', () => {
    for (const child of running) child.kill('SIGTERM')
  })
}

/**
 * Starts anvil on 127.0.0.1 and resolves once it listens: on a free port the OS picks unless `extraArgs`
 * names one (`--port N`); chain id 31337, the standard test mnemonic and automine unless `extraArgs` says
 * otherwise (any anvil flag but --host). If this process exits without stop(), anvil gets SIGTERM.
 */
export function startAnvil(extraArgs: string[] = []): Promise<Anvil> {
  if (extraArgs.some((arg) => arg === '--host' || arg.startsWith('--host='))) {
    return Promise.reject(new Error('startAnvil: anvil always listens on 127.0.0.1 (no --host)'))
  }
  // anvil refuses a repeated --port, so the default applies only when none is given
  const hasPort = extraArgs.some((arg) => arg === '--port' || arg === '-p' || arg.startsWith('--port='))
  const args = ['--host', '127.0.0.1', ...(hasPort ? [] : ['--port', '0']), ...extraArgs]
  installExitHook()
  const child = spawn(foundryBinary('anvil'), args, { stdio: ['ignore', 'pipe', 'pipe'] })
  running.add(child)
  const exited = new Promise<void>((resolveExit) => {
    const done = (): void => {
      running.delete(child)
      resolveExit()
    }
    child.once('exit', done)
    child.once('error', done) // not started at all (no 'exit' then)
  })
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), STOP_GRACE_MS)
      await exited
      clearTimeout(timer)
    }
    await exited
  }
  return new Promise((resolvePromise, reject) => {
    let output = ''
    let listening = false
    const timer = setTimeout(() => {
      void stop()
      reject(new Error(`anvil did not start within 15 s:\n${output}`))
    }, 15_000)
    // Keep draining both pipes for anvil's whole life, so its logging never blocks it.
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      if (output.length < 65_536) output += chunk
    })
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      if (output.length < 65_536) output += chunk
      const port = Number(/Listening on 127\.0\.0\.1:(\d+)/.exec(output)?.[1])
      if (port > 0 && !listening) {
        listening = true
        clearTimeout(timer)
        resolvePromise({ url: `http://127.0.0.1:${port}`, port, stop })
      }
    })
    child.once('error', (error) => {
      clearTimeout(timer)
      reject(error)
    })
    child.once('exit', (code, signal) => {
      clearTimeout(timer)
      reject(new Error(`anvil exited (${code ?? signal}) before listening:\n${output}`))
    })
  })
}
