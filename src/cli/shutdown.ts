// SIGINT/SIGTERM for the long-running commands, from their first moment: what has been started so far
// (anvil, the gateway, the node) is stopped, last-first, whether the signal comes during start-up or
// after. A second signal, or 5 s, forces the exit.

/** How long a stop may take before the process exits anyway. */
export const FORCED_EXIT_MS = 5_000

/** The start-up was cut short by a signal: nothing to report, the shutdown handler exits. */
export class StartupAborted extends Error {
  override name = 'StartupAborted'
  constructor() {
    super('stopped during start-up')
  }
}

export class Shutdown {
  private readonly steps: Array<() => unknown> = []
  private readonly controller = new AbortController()
  private stopping: Promise<void> | undefined
  /** A signal began the shutdown (not a failed start-up). */
  signalled = false

  /** Aborted once a signal (or a failed start-up) began the shutdown. */
  get signal(): AbortSignal {
    return this.controller.signal
  }

  /**
   * Registers something being started and how to stop it, and resolves to it once started. A shutdown
   * that begins meanwhile waits for it to finish starting, then stops it (the start-up is told to give
   * up with StartupAborted); one that has begun already stops it as soon as it is up.
   */
  async track<T>(starting: Promise<T>, stop: (started: T) => unknown): Promise<T> {
    const step = (): Promise<unknown> => starting.then(stop, () => undefined)
    if (this.stopping != null) {
      this.stopping = this.stopping.then(() => run(step))
      throw new StartupAborted()
    }
    this.steps.push(step)
    const started = await starting
    this.check()
    return started
  }

  /** Throws StartupAborted once the shutdown has begun: call it between the steps of a start-up. */
  check(): void {
    if (this.stopping != null) throw new StartupAborted()
  }

  /** Stops everything registered, last-first, each once; later calls wait for the same stop. */
  stop(): Promise<void> {
    if (this.stopping == null) {
      this.controller.abort()
      const steps = this.steps.splice(0).reverse()
      this.stopping = (async () => {
        for (const step of steps) await run(step)
      })()
    }
    // Steps added while stopping chain onto `stopping`: wait for those too.
    const wait = async (): Promise<void> => {
      let current: Promise<void> | undefined
      while (current !== this.stopping) {
        current = this.stopping
        await current
      }
    }
    return wait()
  }

  /** SIGINT/SIGTERM stop everything and exit (0 when all stopped, 1 on a failure or after 5 s). */
  installSignalHandlers(): void {
    const handler = (signal: NodeJS.Signals): void => {
      if (this.signalled) process.exit(130)
      this.signalled = true
      process.stderr.write(`\n${signal}: stopping…\n`)
      setTimeout(() => process.exit(1), FORCED_EXIT_MS - 500).unref()
      this.stop().then(
        () => process.exit(0),
        () => process.exit(1),
      )
    }
    process.on('SIGINT', handler)
    process.on('SIGTERM', handler)
  }
}

async function run(step: () => unknown): Promise<void> {
  try {
    await step()
  } catch {
    // one step failing to stop does not keep the others running
  }
}
