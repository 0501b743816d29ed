// The money side of one call: a hold at admission, then exactly one settlement — from a node's
// done frame and signed receipt, or from an external provider's usage (counted by us when it sends
// none) — or a release. An x402 call holds and charges its flat price instead.
import type { DoneFrame, Usage } from '../protocols/index.ts'
import type { Hold } from '../src/ledger/ledger.ts'
import type { Billing } from './billing.ts'

export class Meter {
  private hold: Hold | undefined
  private completionTokens = 0
  private settled = false

  constructor(
    private readonly billing: Billing | undefined,
    private readonly accountId: string,
    private readonly model: string,
    private readonly requestId: string,
    /** x402: the price paid for the request, charged whatever the tokens. */
    private readonly flat?: bigint,
  ) {}

  /** Reserves `amount` (API keys: the call's most it can cost), or throws the documented 402. */
  async reserve(amount: bigint): Promise<void> {
    if (this.billing == null) return
    this.hold = await this.billing.reserve(this.accountId, amount, this.requestId)
  }

  /** Reserves the flat price (x402: the payment just credited). */
  async reserveFlat(): Promise<void> {
    if (this.flat == null) return
    await this.reserve(this.flat)
  }

  /** Completion tokens that reached the client (what an early end pays for). */
  delivered(tokens: number): void {
    this.completionTokens += tokens
  }

  get deliveredTokens(): number {
    return this.completionTokens
  }

  /** Frees the hold without charging, unless the call was settled already. */
  async cancel(): Promise<void> {
    if (this.settled || this.billing == null || this.hold == null) return
    this.settled = true
    await this.billing.release(this.hold)
  }

  private take(): Hold | undefined {
    if (this.settled || this.billing == null || this.hold == null) return undefined
    this.settled = true
    return this.hold
  }

  /**
   * Settles once, from a node's done frame: its usage, or — `early`, the client having left — no
   * more completion tokens than were delivered. No done frame: nothing is charged. Gives the usage
   * billed (undefined when nothing was).
   */
  async finish(node: string, done: DoneFrame | undefined, early: boolean): Promise<Usage | undefined> {
    const hold = this.take()
    if (hold == null || this.billing == null) return undefined
    if (done == null) {
      await this.billing.release(hold)
      return undefined
    }
    const usage: Usage = early
      ? {
          promptTokens: done.usage.promptTokens,
          completionTokens: Math.min(done.usage.completionTokens, this.completionTokens),
        }
      : done.usage
    await this.billing.settle(hold, {
      model: this.model,
      requestId: this.requestId,
      node,
      done,
      usage,
      ...(this.flat != null ? { flat: this.flat } : {}),
    })
    return usage
  }

  /**
   * Settles once for work an external provider did (no receipt: the gateway pays the provider).
   * `unitCost` prices work that is not tokens (images, audio) for API keys. Gives the usage billed
   * (undefined when nothing was: no tokens and no unit cost).
   */
  async finishProvider(usage: Usage, unitCost?: bigint): Promise<Usage | undefined> {
    const hold = this.take()
    if (hold == null || this.billing == null) return undefined
    if (usage.promptTokens === 0 && usage.completionTokens === 0 && unitCost == null) {
      await this.billing.release(hold)
      return undefined
    }
    await this.billing.charge(hold, {
      model: this.model,
      requestId: this.requestId,
      usage,
      ...(this.flat != null ? { flat: this.flat } : {}),
      ...(unitCost != null ? { unitCost } : {}),
    })
    return usage
  }
}
