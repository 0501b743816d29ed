// Metered billing of a call: reserve its maximum cost before any work starts, then settle the
// actual cost from the usage (completed, or what was delivered before an abort) and free the rest.
// A charge needs the node's signed receipt; it is queued for on-chain settlement to the node.
import type { DoneFrame, WireChatMessage } from '../protocols/index.ts'
import { type Hold, InsufficientBalanceError, type Ledger, type UsageRecord } from '../src/ledger/ledger.ts'
import { verifyReceipt } from '../src/mesh/receipts.ts'
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

/** Who the gateway is on the mesh, and where a node wants its earnings paid. */
export interface PayoutInfo {
  gatewayPeerId: string
  /** The node's payout address from its capabilities ('' when it gave none). */
  payeeOf(node: string): string
}

export type SettleOutcome = { charged: bigint } | { refused: string }

export class Billing {
  constructor(
    private readonly ledger: Ledger,
    private readonly pricing: Pricing,
    private readonly payouts: PayoutInfo,
    private readonly log: (msg: string) => void = () => undefined,
  ) {}

  /**
   * The most a call can cost: the prompt bound plus max_tokens (or the whole context). A provider is
   * sent the whole request (tools, schemas, …), so `bodyBytes`, the request's size, bounds its prompt
   * too (a token is at least a byte).
   */
  maxCost(
    model: string,
    messages: WireChatMessage[],
    maxTokens: number | undefined,
    contextSize?: number,
    bodyBytes = 0,
  ): bigint {
    const completion = maxTokens ?? contextSize ?? FALLBACK_CONTEXT
    const prompt = Math.max(promptTokenBound(messages), bodyBytes + 128)
    return costOf({ promptTokens: prompt, completionTokens: completion }, this.pricing.priceOf(model))
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

  /**
   * Charges `usage` (never more than the hold) and frees the rest — only when the node's done frame
   * carries its valid receipt for this request, which then backs the on-chain payout to the node.
   * Without one nothing is charged and the node is not paid.
   */
  async settle(
    hold: Hold,
    call: { model: string; requestId: string; node: string; done: DoneFrame; usage: Usage; flat?: bigint },
  ): Promise<SettleOutcome> {
    const { done } = call
    const check = await verifyReceipt(done.receipt, {
      requestId: call.requestId,
      model: call.model,
      gateway: this.payouts.gatewayPeerId,
      node: call.node,
      promptTokens: done.usage.promptTokens,
      completionTokens: done.usage.completionTokens,
    })
    if (!check.ok) {
      this.log(`receipt of node ${call.node} for ${call.requestId} refused: ${check.reason}; not charged, not paid`)
      await this.ledger.release(hold.id)
      return { refused: check.reason }
    }
    return this.charge(hold, {
      ...call,
      payout: { node: call.node, payee: this.payouts.payeeOf(call.node), receipt: JSON.stringify(done.receipt) },
    })
  }

  /**
   * Charges `usage` (or the flat x402 price, or a unit cost) against the hold and frees the rest. With a payout (a mesh
   * node's receipt) the charge is queued for settlement to that node; without one (an external
   * provider, which the gateway pays itself) it stays with the gateway. Nothing used: released.
   */
  async charge(
    hold: Hold,
    call: {
      model: string
      requestId: string
      usage: Usage
      flat?: bigint
      /** A price per unit of work (images, audio) instead of tokens: charged even with no tokens. */
      unitCost?: bigint
      payout?: UsageRecord['payout']
    },
  ): Promise<SettleOutcome> {
    const { usage } = call
    if (usage.promptTokens === 0 && usage.completionTokens === 0 && call.unitCost == null) {
      await this.ledger.release(hold.id)
      return { charged: 0n }
    }
    const cost = call.flat ?? call.unitCost ?? costOf(usage, this.pricing.priceOf(call.model))
    const tx = await this.ledger.settle(hold.id, cost, {
      model: call.model,
      requestId: call.requestId,
      tokensIn: usage.promptTokens,
      tokensOut: usage.completionTokens,
      ...(call.payout != null ? { payout: call.payout } : {}),
    })
    return { charged: -tx.amount }
  }

  async release(hold: Hold): Promise<void> {
    await this.ledger.release(hold.id)
  }
}
