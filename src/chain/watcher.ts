// The deposit watcher: follows the escrow's events for the gateway's ledger. A deposit credits the
// wallet's account (or waits until the wallet is linked), a withdrawal request debits it (not
// what calls in flight hold), a cancelled one gives it back, a completed one squares the account
// with what the escrow paid out — each exactly once (the event's chain, tx and log index are the
// ledger ref), only after `confirmations` blocks, and from where the last run stopped.
import { parseEventLogs } from 'viem'
import type { Ledger } from '../ledger/ledger.ts'
import { clusterEscrowAbi } from './artifacts.ts'
import type { EscrowClient } from './escrow.ts'

export interface WatcherOptions {
  confirmations: number
  pollIntervalMs: number
  /** First block to read when the ledger has no cursor yet (the escrow's deployment). */
  fromBlock: bigint
  /** Blocks per getLogs call. @default 2000 */
  chunk?: bigint
  log?: (line: string) => void
}

const EVENTS = ['Deposited', 'WithdrawRequested', 'WithdrawCancelled', 'Withdrawn'] as const

export class DepositWatcher {
  private timer: NodeJS.Timeout | undefined
  private running: Promise<void> | undefined
  private again = false
  private stopped = false
  private name: string | undefined
  private key: Promise<string> | undefined

  constructor(
    private readonly ledger: Ledger,
    private readonly client: EscrowClient,
    private readonly options: WatcherOptions,
  ) {}

  /**
   * The ledger cursor of this escrow on this chain. The genesis hash is part of it: a local chain
   * started afresh redeploys at the same address, and must be read from its start again.
   */
  async cursorName(): Promise<string> {
    this.name ??= `escrow:${await this.chainKey()}:${this.client.escrow.toLowerCase()}`
    return this.name
  }

  private chainKey(): Promise<string> {
    this.key ??= this.client.publicClient
      .getBlock({ blockNumber: 0n })
      .then((genesis) => `${this.client.chain.id}:${genesis.hash}`)
      .catch((err: unknown) => {
        this.key = undefined
        throw err
      })
    return this.key
  }

  /**
   * The ledger ref of an escrow event: the same for the watcher and for a route that saw the event
   * first. The genesis hash is in it, since a fresh local chain repeats the same tx hashes.
   */
  async ref(txHash: string, logIndex: number): Promise<string> {
    return `chain:${await this.chainKey()}:${txHash}:${logIndex}`
  }

  start(): void {
    const tick = (): void => {
      if (this.stopped) return
      void this.poll()
        .catch((err: unknown) => this.options.log?.(`deposit watcher: ${(err as Error).message.split('\n')[0]}`))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.options.pollIntervalMs)
        })
    }
    tick()
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    await this.running?.catch(() => undefined)
  }

  /** One pass up to the confirmed head; concurrent calls share a pass (and ask for one more). */
  poll(): Promise<void> {
    if (this.running != null) {
      this.again = true
      return this.running
    }
    this.running = (async () => {
      do {
        this.again = false
        await this.pass()
      } while (this.again && !this.stopped)
    })().finally(() => {
      this.running = undefined
    })
    return this.running
  }

  private async pass(): Promise<void> {
    const head = await this.client.publicClient.getBlockNumber({ cacheTime: 0 })
    const safe = head - BigInt(this.options.confirmations)
    const chunk = this.options.chunk ?? 2000n
    const cursor = await this.cursorName()
    let from = (this.ledger.cursor(cursor) ?? this.options.fromBlock - 1n) + 1n
    while (from <= safe && !this.stopped) {
      const to = from + chunk - 1n < safe ? from + chunk - 1n : safe
      const raw = await this.client.publicClient.getLogs({ address: this.client.escrow, fromBlock: from, toBlock: to })
      const logs = parseEventLogs({ abi: clusterEscrowAbi, logs: raw, eventName: [...EVENTS] })
      logs.sort((a, b) =>
        a.blockNumber === b.blockNumber ? a.logIndex - b.logIndex : a.blockNumber < b.blockNumber ? -1 : 1,
      )
      for (const log of logs) {
        const ref = await this.ref(log.transactionHash, log.logIndex)
        const txHash = log.transactionHash
        if (log.eventName === 'Deposited') {
          await this.ledger.chainDeposit({ address: log.args.payer, amount: log.args.amount, ref, txHash })
        } else if (log.eventName === 'WithdrawRequested') {
          await this.ledger.chainWithdrawal({ address: log.args.payer, amount: log.args.amount, ref, txHash })
        } else if (log.eventName === 'WithdrawCancelled') {
          await this.ledger.chainWithdrawCancelled({ address: log.args.payer, amount: log.args.amount, ref, txHash })
        } else if (log.eventName === 'Withdrawn') {
          await this.ledger.chainWithdrawn({ address: log.args.payer, amount: log.args.amount, ref, txHash })
        }
      }
      // Only once every event up to `to` is in the ledger: a crash before this re-reads them, and
      // their refs make the second reading change nothing.
      await this.ledger.setCursor(cursor, to)
      from = to + 1n
    }
  }
}
