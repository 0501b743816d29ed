// Metered billing of a call: reserve its maximum cost before any work starts, then settle the
// actual cost from the usage (completed, or what was delivered before an abort) and free the rest.
import type { WireChatMessage } from '../protocols/index.ts'
import { type Hold, InsufficientBalanceError, type Ledger } from '../src/ledger/ledger.ts'
import { costOf, formatUsd } from '../src/payments/money.ts'
import { insufficientBalance } from './errors.ts'
import type { Pricing } from './pricing.ts'

/** Context size assumed for a model whose capabilities have not been seen yet. */
const FALLBACK_CONTEXT = 8192

/**
 * An upper bound on the prompt's tokens without its tokenizer: a byte-level BPE token is at least
 * one byte, and chat templates add a little per message and around the whole conversation.
 */
export function promptTokenBound(messages: WireChatMessage[]): number {
  let bytes = 0
  for (const m of messages) bytes += Buffer.byteLength(m.content, 'utf8') + 16
  return bytes + 128
}

export interface Usage {
  promptTokens: number
  completionTokens: number
}

export class Billing {
  constructor(
    private readonly ledger: Ledger,
    private readonly pricing: Pricing,
  ) {}

  /** The most a call can cost: the prompt bound plus max_tokens (or the whole context). */
  maxCost(model: string, messages: WireChatMessage[], maxTokens: number | undefined, contextSize?: number): bigint {
    const completion = maxTokens ?? contextSize ?? FALLBACK_CONTEXT
    return costOf(
      { promptTokens: promptTokenBound(messages), completionTokens: completion },
      this.pricing.priceOf(model),
    )
  }

  /** Reserves the maximum cost, or throws the documented 402. */
  async reserve(accountId: string, amount: bigint, requestId: string): Promise<Hold> {
    try {
      return await this.ledger.reserve(accountId, amount, requestId)
    } catch (err) {
      if (err instanceof InsufficientBalanceError) {
        throw insufficientBalance(formatUsd(err.available < 0n ? 0n : err.available), formatUsd(err.required))
      }
      throw err
    }
  }

  /** Charges the actual usage (never more than the hold) and frees the rest. */
  async settle(hold: Hold, model: string, requestId: string, usage: Usage): Promise<void> {
    const cost = costOf(usage, this.pricing.priceOf(model))
    await this.ledger.settle(hold.id, cost, {
      model,
      requestId,
      tokensIn: usage.promptTokens,
      tokensOut: usage.completionTokens,
    })
  }

  async release(hold: Hold): Promise<void> {
    await this.ledger.release(hold.id)
  }
}
