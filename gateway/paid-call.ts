// The money and bookkeeping of one call to a non-chat endpoint: who pays (an API key's balance, held
// before any work; or an x402 payment, used once a candidate has answered), the one settlement, the
// routing headers, and the completed-inference record (stats, events, logs).
import { randomUUID } from 'node:crypto'
import type { Context } from 'hono'
import type { Usage } from '../protocols/index.ts'
import { type AuthVars, requireAuth } from './api-routes.ts'
import type { Answered } from './attempts.ts'
import { type ChatDeps, type CompletedInference, servedFields } from './chat.ts'
import { Meter } from './meter.ts'
import type { RoutePlan } from './routing.ts'
import type { SettlementOutcome, X402Gate } from './x402.ts'

export class PaidCall {
  readonly requestId: string
  readonly started = performance.now()
  private settlement: Promise<SettlementOutcome> | undefined
  private meterNow: Meter | undefined

  private constructor(
    private readonly c: Context<AuthVars>,
    private readonly deps: ChatDeps,
    readonly endpoint: CompletedInference['endpoint'],
    readonly model: string,
    prefix: string,
  ) {
    this.requestId = `${prefix}-${randomUUID()}`
    c.set('requestId', this.requestId)
    c.header('X-Request-Id', this.requestId)
  }

  /** Checks who pays and (API key) holds `maxCost`; throws the documented 401/402. */
  static async open(
    c: Context<AuthVars>,
    deps: ChatDeps,
    endpoint: CompletedInference['endpoint'],
    model: string,
    maxCost: bigint,
    prefix: string,
  ): Promise<PaidCall> {
    const payment = c.get('x402')
    const auth = payment == null ? requireAuth(c) : undefined
    const call = new PaidCall(c, deps, endpoint, model, prefix)
    if (auth != null) {
      const meter = new Meter(deps.billing, auth.account.id, model, call.requestId)
      await meter.reserve(maxCost)
      call.meterNow = meter
    }
    return call
  }

  get payer(): 'api_key' | 'x402' {
    return this.c.get('x402') != null ? 'x402' : 'api_key'
  }

  /**
   * A candidate answered: the x402 payment (if any) is used now and settles alongside; the routing
   * headers say where it went.
   */
  async answered(plan: RoutePlan, answer: Answered<unknown>): Promise<void> {
    const payment = this.c.get('x402')
    if (payment != null) {
      const used = await (this.deps.x402 as X402Gate).use(payment, this.requestId, (account) => {
        this.meterNow = new Meter(
          this.deps.billing,
          account.id,
          this.model,
          this.requestId,
          payment.amount - payment.debtPaid,
        )
        return this.meterNow.reserveFlat()
      })
      this.settlement = used.settlement
    }
    const { candidate } = answer.scored
    this.c.header('x-cluster-provider', candidate.provider)
    this.c.header('x-cluster-route', this.deps.routing.describe(plan, answer.scored, answer.tried))
    if (candidate.kind === 'node') this.c.header('x-cluster-node', candidate.node.peerId)
  }

  get meter(): Meter | undefined {
    return this.meterNow
  }

  /** Frees the hold when nothing was delivered. */
  async release(): Promise<void> {
    await this.meterNow?.cancel()
  }

  /** The x402 settlement in the headers of a whole answer, or the 402 when it failed. */
  async settledHeaders(path: string): Promise<void> {
    const settled = await this.settlement
    if (settled?.status === 'failed') {
      throw (this.deps.x402 as X402Gate).required(this.c, path, `settlement_failed: ${settled.reason}`)
    }
    if (settled?.status === 'settled') this.c.header(settled.header.name, settled.header.value)
  }

  /** Records the completed call: stats, the inference:complete event, the log line. */
  complete(servedBy: { node?: string; provider?: string }, usage: Usage, ttftMs: number): void {
    this.deps.onComplete?.({
      requestId: this.requestId,
      model: this.model,
      ...servedFields(servedBy),
      endpoint: this.endpoint,
      usage,
      finishReason: 'stop',
      ttftMs: Math.round(ttftMs),
      durationMs: Math.round(performance.now() - this.started),
      payer: this.payer,
    })
  }
}
