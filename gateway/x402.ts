// x402 at the gateway: a paid endpoint called without an API key answers 402 with the payment
// requirements; a retry carrying a payment (X-PAYMENT, v1, as the docs show; PAYMENT-SIGNATURE, v2)
// is de-duplicated by its authorization nonce, verified with the facilitator before any work, and
// settled alongside the work once a node has answered — never holding the answer back. A settlement
// that fails takes its credit back and leaves the payer owing what it was served (its next payment
// must cover it); one that times out stays pending and is reconciled by its nonce. Credit left by a
// call that failed after its payment settled pays the payer's next call (that payment is not settled).
import type { Context } from 'hono'
import type { Account, Ledger } from '../src/ledger/ledger.ts'
import { formatUsd } from '../src/payments/money.ts'
import {
  authorizationUsed,
  decodePayment,
  type Facilitator,
  type PaymentPayload,
  type PaymentPayloadV1,
  type PaymentRequirements,
  type PaymentRequirementsV1,
  paymentRequired,
  paymentResponseHeader,
  requirementsFor,
  X402_REASONS,
  type X402Settings,
} from '../src/payments/x402.ts'
import { ApiError } from './errors.ts'
import { requestHeader } from './node-request.ts'
import { publicOrigin } from './origin.ts'

export interface X402GateOptions {
  /** The gateway's public URL (gateway.publicUrl): the resource a payment is for. */
  publicUrl?: URL | undefined
  settings: X402Settings
  facilitator: Facilitator
  ledger: Ledger
  /** Price per request, in USDC base units, per endpoint path. */
  prices: ReadonlyMap<string, bigint>
  /** RPC of the payment's chain, to reconcile settlements by nonce. */
  rpcUrl: string
  /** A settlement not done by then is left pending and reconciled later. @default 30000 */
  settleTimeoutMs?: number
  log?: (line: string) => void
}

/** A 402 in the x402 shape: requirements in the `payment-required` header, how to pay in the body. */
export class PaymentRequiredError extends ApiError {
  constructor(
    message: string,
    readonly body: object,
    header: string,
  ) {
    super(402, message, 'insufficient_quota', 'payment_required')
    this.headers['payment-required'] = header
  }
}

/** A payment checked by the facilitator, not yet used. */
export interface VerifiedPayment {
  path: string
  version: 1 | 2
  payer: string
  nonce: string
  validBefore: number
  amount: bigint
  /** Of `amount`, what pays off earlier unpaid requests. */
  debtPaid: bigint
  payload: PaymentPayload | PaymentPayloadV1
  requirements: PaymentRequirements | PaymentRequirementsV1
  /** Set by use(): the work started and the payment is being settled. */
  used: boolean
  /**
   * The payer's credit (left by a request that failed after its payment settled) pays for this one:
   * the payment only proved who pays and is not settled.
   */
  covered?: boolean
}

export type SettlementOutcome =
  | { status: 'settled'; txHash: string; header: { name: string; value: string } }
  | { status: 'failed'; reason: string }
  | { status: 'pending' }
  /** Paid from the payer's credit: nothing to settle. */
  | { status: 'covered' }

export class X402Gate {
  /** payer!nonce of payments being used right now: a copy arriving meanwhile starts nothing. */
  /** Payments that only proved who pays (credit paid): payer!nonce → valid before (unix s). */
  private readonly coveredNonces = new Map<string, number>()
  private readonly inflight = new Set<string>()
  private readonly settleTimeoutMs: number
  private reconciling: Promise<void> | undefined

  constructor(private readonly options: X402GateOptions) {
    this.settleTimeoutMs = options.settleTimeoutMs ?? 30_000
  }

  /** The price of a paid endpoint, or undefined when it is not paid by x402. */
  price(path: string): bigint | undefined {
    return this.options.prices.get(path)
  }

  private resource(c: Context, path: string) {
    return {
      url: new URL(path, publicOrigin(c, this.options.publicUrl)).toString(),
      description: `Cluster ${path}`,
      mimeType: 'application/json',
    }
  }

  /** The 402 for `path`: at its price (plus what the payer owes), with `reason` when a payment failed. */
  required(c: Context, path: string, reason?: string, amount?: bigint): PaymentRequiredError {
    const price = amount ?? (this.price(path) as bigint)
    const { header, body } = paymentRequired(this.options.settings, this.resource(c, path), price, reason)
    const words = `Payment required: $${formatUsd(price)} USDC on ${this.options.settings.network} to ${this.options.settings.payTo}. Sign an EIP-3009 authorization for the requirements in the payment-required header (base64 JSON) and resend the request with it in X-PAYMENT (x402 v1) or PAYMENT-SIGNATURE (x402 v2), or use an API key.`
    return new PaymentRequiredError(reason ? `${words} Your payment was refused: ${reason}.` : words, body, header)
  }

  /**
   * Checks the payment of a request to `path`: decodes it, refuses a copy of one in use or used
   * before, and verifies it with the facilitator. Throws the 402 to answer when it does not pass.
   */
  async verify(c: Context, path: string): Promise<VerifiedPayment> {
    const price = this.price(path) as bigint
    const decoded = decodePayment({
      paymentSignature: requestHeader(c, 'payment-signature'),
      xPayment: requestHeader(c, 'x-payment'),
    })
    if ('error' in decoded) throw this.required(c, path, decoded.error)
    const { authorization } = decoded
    const payer = authorization.from
    const nonce = authorization.nonce
    const key = `${payer.toLowerCase()}!${nonce.toLowerCase()}`
    // Checked and taken in one step (no await in between): of copies sent at once, one goes on.
    if (this.inflight.has(key) || this.coveredNonces.has(key) || this.options.ledger.hasX402Payment(payer, nonce)) {
      throw this.required(c, path, X402_REASONS.nonceUsed)
    }
    const debt = this.options.ledger.x402Debt(payer)
    const amount = price + debt
    this.inflight.add(key)
    try {
      const { v1, v2 } = requirementsFor(this.options.settings, this.resource(c, path), amount)
      const requirements = decoded.version === 1 ? v1 : v2
      const result = await this.options.facilitator.verify(decoded.payload, requirements)
      if (!result.isValid) {
        const reason =
          debt > 0n && authorization.value < amount
            ? `unpaid_previous_request: this payer owes $${formatUsd(debt)} for an earlier request whose payment failed to settle`
            : (result.invalidReason ?? 'invalid_payment')
        throw this.required(c, path, reason, amount)
      }
      return {
        path,
        version: decoded.version,
        payer,
        nonce,
        validBefore: Number(authorization.validBefore),
        amount,
        debtPaid: debt,
        payload: decoded.payload,
        requirements,
        used: false,
        // Owing nothing, with credit for the whole price: the credit pays, this payment is not taken.
        ...(debt === 0n && this.options.ledger.x402Credit(payer) >= price ? { covered: true } : {}),
      }
    } catch (err) {
      this.inflight.delete(key)
      if (err instanceof ApiError) throw err
      this.options.log?.(`x402 verify failed: ${(err as Error).message.split('\n')[0]}`)
      throw new ApiError(
        502,
        'The payment facilitator could not be reached; retry.',
        'server_error',
        'facilitator_unavailable',
      )
    }
  }

  private keyOf(p: { payer: string; nonce: string }): string {
    return `${p.payer.toLowerCase()}!${p.nonce.toLowerCase()}`
  }

  /** Gives up a verified payment that was not used (no node could serve): it may be sent again. */
  release(payment: VerifiedPayment): void {
    if (!payment.used) this.inflight.delete(this.keyOf(payment))
  }

  /**
   * Uses the payment for request `requestId`: records it (crediting the payer's x402 account) and
   * starts its settlement, which runs alongside the work. Returns the account and the settlement.
   */
  async use(
    payment: VerifiedPayment,
    requestId: string,
    /**
     * Holds the request's price on the payer's account; called with no wait after the credit is
     * checked or added, so no other request of the payer can take that credit in between.
     */
    hold: (account: Account) => Promise<void>,
  ): Promise<{ account: Account; settlement: Promise<SettlementOutcome> }> {
    const { ledger } = this.options
    payment.used = true
    const account = await ledger.x402Account(payment.payer)
    if (payment.covered === true && ledger.x402Credit(payment.payer) >= payment.amount) {
      // Its signature proved who pays; the authorization is not settled — and not taken again.
      const held = hold(account)
      this.rememberCovered(payment)
      this.inflight.delete(this.keyOf(payment))
      await held
      return { account, settlement: Promise.resolve({ status: 'covered' }) }
    }
    payment.covered = false
    const recorded = ledger.recordX402Payment(
      {
        nonce: payment.nonce,
        payer: payment.payer,
        amount: payment.amount,
        requestId,
        network: this.options.settings.network,
        validBefore: payment.validBefore,
      },
      payment.debtPaid,
    )
    const held = hold(account)
    await recorded
    await held
    const settlement = this.settle(payment).finally(() => this.inflight.delete(this.keyOf(payment)))
    return { account, settlement }
  }

  /** A payment that only proved who pays: refused if sent again while it is valid. */
  private rememberCovered(payment: VerifiedPayment): void {
    const now = Math.floor(Date.now() / 1000)
    if (this.coveredNonces.size >= 10_000) {
      for (const [key, until] of this.coveredNonces) if (until < now) this.coveredNonces.delete(key)
    }
    this.coveredNonces.set(this.keyOf(payment), payment.validBefore)
  }

  private async settle(payment: VerifiedPayment): Promise<SettlementOutcome> {
    const { ledger, facilitator } = this.options
    let timer: NodeJS.Timeout | undefined
    const timeout = new Promise<'timeout'>((resolve) => {
      timer = setTimeout(() => resolve('timeout'), this.settleTimeoutMs)
    })
    try {
      const result = await Promise.race([facilitator.settle(payment.payload, payment.requirements), timeout])
      if (result === 'timeout') {
        this.options.log?.(`x402 settlement of ${payment.nonce} timed out: pending, reconciled later`)
        return { status: 'pending' }
      }
      if (result.success && result.transaction) {
        await ledger.x402Settled(payment.payer, payment.nonce, result.transaction)
        return {
          status: 'settled',
          txHash: result.transaction,
          header: {
            name: payment.version === 1 ? 'x-payment-response' : 'payment-response',
            value: paymentResponseHeader(result, payment.version),
          },
        }
      }
      if (result.errorReason === X402_REASONS.settlementPending) {
        this.options.log?.(`x402 settlement of ${payment.nonce} sent, not yet confirmed: pending, reconciled later`)
        return { status: 'pending' }
      }
      const reason = result.errorReason ?? 'settlement_failed'
      await ledger.x402Failed(payment.payer, payment.nonce, reason)
      return { status: 'failed', reason }
    } catch (err) {
      // Unknown whether it reached the chain: pending, reconciled by its nonce.
      this.options.log?.(`x402 settlement of ${payment.nonce} errored: ${(err as Error).message.split('\n')[0]}`)
      return { status: 'pending' }
    } finally {
      clearTimeout(timer)
    }
  }

  /**
   * Settles the score of payments left pending (a timeout, a crash): used on chain → settled; past
   * their validity and unused → failed (the payer owes it).
   */
  reconcile(now = Math.floor(Date.now() / 1000)): Promise<void> {
    this.reconciling ??= (async () => {
      const { ledger, settings, rpcUrl } = this.options
      for (const p of ledger.x402Payments('pending')) {
        if (this.inflight.has(this.keyOf(p))) continue
        const used = await authorizationUsed(rpcUrl, settings.asset, p.payer, p.nonce)
        if (used) await ledger.x402Settled(p.payer, p.nonce, '')
        else if (now > p.validBefore)
          await ledger.x402Failed(p.payer, p.nonce, 'not settled before the authorization expired')
      }
    })().finally(() => {
      this.reconciling = undefined
    })
    return this.reconciling
  }
}
