// Settlement: the payouts of charged calls (each backed by a node's signed receipt) go on chain in
// batches — one debit per payer, one credit per payee. A batch is written to the ledger, with its
// id, before it is sent: after a crash the same batch is checked on chain (settled → recorded with
// its tx hash) or sent again under the same id, which the escrow accepts once only.
import { type Address, getAddress, type Hex, parseEventLogs } from 'viem'
import type { Ledger, Payout, SettlementBatch } from '../ledger/ledger.ts'
import { minAmount } from '../payments/money.ts'
import { clusterEscrowAbi, testUsdcAbi } from './artifacts.ts'
import { CallRefusedError, type EscrowClient } from './escrow.ts'

export interface SettlerOptions {
  intervalMs: number
  /** Payouts per batch. @default 100 */
  maxPayouts?: number
  /** Receives what was earned on nodes that gave no payout address. @default the gateway's address */
  payoutAddress?: string | undefined
  /** Where to look for the logs of earlier batches (the escrow's deployment block). @default 0 */
  fromBlock?: bigint
  log?: (line: string) => void
}

export interface SettleResult {
  settled: SettlementBatch[]
  failed: SettlementBatch[]
  /** Payouts left pending because their payer cannot cover them on chain now. */
  uncovered: number
}

export class Settler {
  private timer: NodeJS.Timeout | undefined
  private running: Promise<SettleResult> | undefined
  private stopped = false
  private readonly payoutAddress: Address

  constructor(
    private readonly ledger: Ledger,
    private readonly client: EscrowClient,
    private readonly options: SettlerOptions,
  ) {
    this.payoutAddress = getAddress(options.payoutAddress ?? client.address)
  }

  start(): void {
    const tick = (): void => {
      if (this.stopped) return
      this.timer = setTimeout(() => {
        void this.run()
          .catch((err: unknown) => this.options.log?.(`settlement: ${(err as Error).message.split('\n')[0]}`))
          .finally(tick)
      }, this.options.intervalMs)
    }
    tick()
  }

  async stop(): Promise<void> {
    this.stopped = true
    clearTimeout(this.timer)
    await this.running?.catch(() => undefined)
  }

  /** One round: finish batches a previous run left open, then settle what is pending. One at a time. */
  run(): Promise<SettleResult> {
    this.running ??= this.round().finally(() => {
      this.running = undefined
    })
    return this.running
  }

  private payer(p: { payer: string }): Address {
    return p.payer === '' ? this.client.address : getAddress(p.payer)
  }

  private payee(p: { payee: string }): Address {
    return p.payee === '' ? this.payoutAddress : getAddress(p.payee)
  }

  private async round(): Promise<SettleResult> {
    const result: SettleResult = { settled: [], failed: [], uncovered: 0 }
    for (const open of this.ledger.batches('pending')) await this.finish(open, result)
    const limit = this.options.maxPayouts ?? 100
    const seen = new Set<string>()
    for (;;) {
      const pending = this.ledger.pendingPayouts(limit + seen.size).filter((p) => !seen.has(p.id))
      if (pending.length === 0 || this.stopped) break
      const chosen = await this.covered(pending.slice(0, limit))
      for (const p of pending.slice(0, limit)) seen.add(p.id)
      result.uncovered += Math.min(pending.length, limit) - chosen.length
      if (chosen.length === 0) continue
      const batch = await this.ledger.createBatch(chosen.map((p) => p.id))
      await this.finish(batch, result)
    }
    if (result.uncovered > 0) {
      this.options.log?.(`settlement: ${result.uncovered} payout(s) wait for their payer's escrow balance or cap`)
    }
    return result
  }

  /** The payouts whose payers' escrow balance and cap for this gateway cover them, in order. */
  private async covered(payouts: Payout[]): Promise<Payout[]> {
    const left = new Map<Address, bigint>()
    for (const payer of new Set(payouts.map((p) => this.payer(p)))) {
      if (payer === this.client.address) {
        const needed = payouts.filter((p) => this.payer(p) === payer).reduce((s, p) => s + p.amount, 0n)
        await this.topUpHouse(needed).catch((err: unknown) =>
          this.options.log?.(`settlement: could not top up the gateway's escrow account: ${(err as Error).message}`),
        )
      }
      const { balance, cap } = await this.client.capacity(payer)
      left.set(payer, minAmount(balance, cap))
    }
    // What open batches will take is not available to new ones.
    return payouts.filter((p) => {
      const payer = this.payer(p)
      const room = left.get(payer) ?? 0n
      if (p.amount > room) return false
      left.set(payer, room - p.amount)
      return true
    })
  }

  /**
   * The gateway's own escrow account pays for usage not backed by a user's deposit (x402 payments,
   * which arrive as USDC in the gateway's wallet, and admin credit). Before settling such usage it
   * moves what it needs from the wallet into that account, and authorizes itself once.
   */
  private async topUpHouse(needed: bigint): Promise<void> {
    const house = this.client.address
    const { balance, cap } = await this.client.capacity(house)
    if (cap < needed) {
      await this.client.send({ functionName: 'authorizeGateway', args: [house, 2n ** 256n - 1n] })
    }
    if (balance >= needed) return
    const inWallet = await this.client.publicClient.readContract({
      address: this.client.usdc,
      abi: testUsdcAbi,
      functionName: 'balanceOf',
      args: [house],
    })
    const amount = minAmount(needed - balance, inWallet)
    if (amount <= 0n) return
    const approve = await this.client.wallet.writeContract({
      address: this.client.usdc,
      abi: testUsdcAbi,
      functionName: 'approve',
      args: [this.client.escrow, amount],
    })
    await this.client.publicClient.waitForTransactionReceipt({ hash: approve })
    await this.client.send({ functionName: 'deposit', args: [amount] })
    this.options.log?.(`settlement: moved ${amount} USDC units from the gateway's wallet into its escrow account`)
  }

  /** Sends an open batch (or finds it settled already) and records the outcome. */
  private async finish(batch: SettlementBatch, result: SettleResult): Promise<void> {
    const batchId = batch.batchId as Hex
    if (await this.isSettled(batchId)) {
      await this.ledger.settleBatch(batch.id, await this.findSettlement(batchId))
      result.settled.push(batch)
      return
    }
    const merge = (entries: Array<[Address, bigint]>): Map<Address, bigint> => {
      const m = new Map<Address, bigint>()
      for (const [k, v] of entries) m.set(k, (m.get(k) ?? 0n) + v)
      return m
    }
    const debits = merge(batch.debits.map((d) => [this.payer(d), d.amount]))
    const credits = merge(batch.credits.map((c) => [this.payee(c), c.amount]))
    try {
      const { hash } = await this.client.send({
        functionName: 'settle',
        args: [
          batchId,
          [...debits].map(([payer, amount]) => ({ payer, amount })),
          [...credits].map(([payee, amount]) => ({ payee, amount })),
        ],
      })
      await this.ledger.settleBatch(batch.id, hash)
      result.settled.push(batch)
    } catch (err) {
      if (!(err instanceof CallRefusedError)) {
        // It may have been mined: the batch stays open, and the next round checks it on chain
        // before sending it again under the same id.
        this.options.log?.(`settlement batch ${batch.id} unconfirmed: ${(err as Error).message.split('\n')[0]}`)
        return
      }
      // Refused because an earlier send of this batch was mined since the check above: that send
      // is its settlement. Failing it would put its payouts in a new batch, paying them twice.
      if (await this.isSettled(batchId)) {
        await this.ledger.settleBatch(batch.id, await this.findSettlement(batchId))
        result.settled.push(batch)
        return
      }
      // Refused by the chain: nothing moved; its payouts wait for a later batch.
      this.options.log?.(`settlement batch ${batch.id} refused: ${err.reason}`)
      await this.ledger.failBatch(batch.id, err.reason)
      result.failed.push(batch)
    }
  }

  /** Whether the escrow has recorded `batchId` as settled by this gateway. */
  private isSettled(batchId: Hex): Promise<boolean> {
    return this.client.publicClient.readContract({
      address: this.client.escrow,
      abi: clusterEscrowAbi,
      functionName: 'isBatchSettled',
      args: [this.client.address, batchId],
    })
  }

  /** The transaction that settled `batchId` for this gateway. */
  private async findSettlement(batchId: Hex): Promise<string> {
    const raw = await this.client.publicClient.getLogs({
      address: this.client.escrow,
      fromBlock: this.options.fromBlock ?? 0n,
      toBlock: 'latest',
      event: clusterEscrowAbi.find((e) => e.type === 'event' && e.name === 'BatchSettled') as never,
      args: { batchId, gateway: this.client.address } as never,
    })
    const [log] = parseEventLogs({ abi: clusterEscrowAbi, logs: raw, eventName: 'BatchSettled' })
    return log?.transactionHash ?? ''
  }
}
