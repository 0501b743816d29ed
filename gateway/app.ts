// The gateway's HTTP app (hono): /health, the OpenAI-compatible /v1 routes, and error mapping
// at the edge. It holds no inference state: everything it routes to comes from the Directory.
import { randomUUID } from 'node:crypto'
import { Hono } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import { HTTPException } from 'hono/http-exception'
import { routePath } from 'hono/route'
import type {
  DoneFrame,
  FinishReason,
  InferenceRequestFrame,
  InferenceResponseFrame,
  Usage,
} from '../protocols/index.ts'
import type { Hold } from '../src/ledger/ledger.ts'
import type { Logger } from '../src/log.ts'
import type { Directory, NodeEntry } from '../src/mesh/directory.ts'
import type { Accounts } from './accounts.ts'
import { type AuthVars, apiRoutes, clientAddress, requireAuth } from './api-routes.ts'
import type { Billing } from './billing.ts'
import { type ChainDeps, chainRoutes } from './chain-routes.ts'
import { ApiError, invalidRequest, modelNotFound, rateLimited, unauthorized } from './errors.ts'
import type { GatewayMetrics, MetricsAccess } from './metrics.ts'
import { type ModelsDeps, modelRoutes, modelsDeployedBy } from './models.ts'
import { clientSignal, readJsonBody } from './node-request.ts'
import {
  type CompletionMeta,
  chunkBody,
  completionBody,
  newCompletionId,
  parseChatRequest,
  toSampling,
  toWireMessages,
  usageChunkBody,
} from './openai.ts'
import type { Pricing } from './pricing.ts'
import type { TokenBuckets } from './rate-limit.ts'
import type { InferenceCall, MeshRouter } from './router.ts'
import { streamEvents } from './sse.ts'
import { PaymentRequiredError, type SettlementOutcome, type X402Gate } from './x402.ts'

export interface CompletedInference {
  requestId: string
  model: string
  nodePeerId: string
  usage: Usage
  finishReason: FinishReason
  ttftMs: number
  durationMs: number
  /** Who paid: an API key's balance, or an x402 payment. */
  payer: 'api_key' | 'x402'
}

export interface AppDeps {
  directory: Directory
  router: MeshRouter
  accounts: Accounts
  pricing: Pricing
  /** Billing off (undefined) serves authenticated calls without charging: for benchmarks only. */
  billing: Billing | undefined
  /** Requests per API key, or per client address without one. */
  limits: TokenBuckets
  /** Failed logins per email and per client address. */
  loginFailures: TokenBuckets
  /** Largest request body accepted, in bytes. @default 8 MiB */
  maxBodyBytes?: number
  onComplete?: (info: CompletedInference) => void
  /** Wallets, deposits and withdrawals on chain; absent when settlement is off. */
  chain?: ChainDeps
  /** Pay per request with x402 on paid endpoints called without an API key; absent: off. */
  x402?: X402Gate
  /** Models: upload, registry, deploy, download; absent: not served. */
  models?: ModelsDeps
  /** GET /metrics; absent: not served. */
  metrics?: { registry: GatewayMetrics; access: MetricsAccess }
  /** One JSON line per request (id, method, route, status, time); absent: none. */
  logger?: Logger
}

/** A request id a client may choose (X-Request-Id); anything else is replaced by our own. */
const REQUEST_ID = /^[\w.:-]{1,128}$/

const LOOPBACK_ADDRESS = /^(127\.|::1$|::ffff:127\.)/

/** Uploads carry their own size limit (the model's), checked as the file streams in. */
const UPLOAD_PATH = '/api/models/upload'

const isV1 = (path: string): boolean => path === '/v1' || path.startsWith('/v1/')

function errorResponse(path: string, err: ApiError): Response {
  if (err instanceof PaymentRequiredError) return Response.json(err.body, { status: 402, headers: err.headers })
  return Response.json(isV1(path) ? err.toOpenAI() : err.toDocs(), { status: err.status, headers: err.headers })
}

export function createApp(deps: AppDeps): Hono<AuthVars> {
  const startedAt = Date.now()
  const app = new Hono<AuthVars>()

  const metrics = deps.metrics?.registry
  const fail = (path: string, err: ApiError): Response => {
    metrics?.error(err.code)
    return errorResponse(path, err)
  }

  // Counted first, so every answer (errors and refusals included) is in the metrics.
  if (metrics != null) {
    app.use('*', async (c, next) => {
      const started = performance.now()
      try {
        await next()
      } finally {
        const route = routePath(c, -1)
        metrics.request(
          c.req.method,
          route === '*' ? 'unmatched' : route,
          c.res.status,
          (performance.now() - started) / 1000,
        )
      }
    })
  }

  // Every request has an id (the client's X-Request-Id, or ours), answered in X-Request-Id and
  // logged; a chat completion's id is its completion id, which its node logs too.
  app.use('*', async (c, next) => {
    const given = c.req.header('x-request-id')
    c.set('requestId', given != null && REQUEST_ID.test(given) ? given : randomUUID())
    const started = performance.now()
    try {
      await next()
    } finally {
      if (!c.res.headers.has('X-Request-Id')) c.res.headers.set('X-Request-Id', c.get('requestId') as string)
      deps.logger?.info(
        {
          reqId: c.get('requestId'),
          method: c.req.method,
          path: c.req.path,
          status: c.res.status,
          ms: Math.round((performance.now() - started) * 10) / 10,
        },
        'request',
      )
    }
  })

  app.onError((err, c) => {
    if (err instanceof ApiError) return fail(c.req.path, err)
    if (err instanceof HTTPException) {
      const status = err.status as ApiError['status']
      const type = status === 413 ? 'invalid_request_error' : status >= 500 ? 'server_error' : 'invalid_request_error'
      return fail(c.req.path, new ApiError(status, err.message || 'Request rejected.', type, `http_${status}`))
    }
    return fail(
      c.req.path,
      new ApiError(500, 'Internal error. Retry or contact support.', 'server_error', 'internal_error'),
    )
  })

  app.notFound((c) =>
    fail(c.req.path, new ApiError(404, `No route for ${c.req.method} ${c.req.path}.`, 'not_found_error', 'not_found')),
  )

  const tooLarge = (c: { req: { path: string } }, maxSize: number): Response => {
    const err = new ApiError(
      413,
      `The request body exceeds ${maxSize} bytes.`,
      'invalid_request_error',
      'body_too_large',
    )
    // The rest of the body is never read: the connection cannot carry another request.
    err.headers.Connection = 'close'
    return errorResponse(c.req.path, err)
  }
  const limitBody = (maxSize: number) => bodyLimit({ maxSize, onError: (c) => tooLarge(c, maxSize) })
  // Prompts can be long; account and admin bodies are small.
  const inferenceMax = deps.maxBodyBytes ?? 8 * 1024 * 1024
  const inferenceBodies = limitBody(inferenceMax)
  const otherBodies = limitBody(64 * 1024)
  app.use('*', async (c, next) => {
    // Only requests that carry a body pay for the check (it materialises the request stream).
    const length = c.req.header('content-length')
    const chunked = c.req.header('transfer-encoding') != null
    if (length == null && !chunked) return next()
    if (c.req.path === UPLOAD_PATH) return next()
    const v1 = isV1(c.req.path)
    if (chunked) return v1 ? inferenceBodies(c, next) : otherBodies(c, next)
    // A declared length is checked as bodyLimit does, without materialising the request.
    const max = v1 ? inferenceMax : 64 * 1024
    if (Number.parseInt(length ?? '0', 10) > max) return tooLarge(c, max)
    return next()
  })

  // Who is calling: a valid bearer key attaches its account; routes that need one say so.
  app.use('*', async (c, next) => {
    const header = c.req.header('authorization')
    const m = header != null ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null
    if (m?.[1] != null) {
      const auth = await deps.accounts.authenticate(m[1])
      if (auth != null) c.set('auth', auth)
    }
    await next()
  })

  // Rate limits, with their headers on every response (errors included).
  app.use('*', async (c, next) => {
    const auth = c.get('auth')
    const take = deps.limits.take(auth != null ? `key:${auth.key.id}` : `ip:${clientAddress(c)}`)
    const limit = String(take.limit)
    const remaining = String(take.remaining)
    const reset = String(take.reset)
    // Set before the route runs: a response built from the context carries them, and a stream
    // written straight to the socket (sse.ts) sends them with its first event.
    c.header('X-RateLimit-Limit', limit)
    c.header('X-RateLimit-Remaining', remaining)
    c.header('X-RateLimit-Reset', reset)
    try {
      if (!take.allowed) throw rateLimited(take.retryAfter)
      await next()
    } finally {
      // Error and not-found responses are built without the context's headers.
      const headers = c.res.headers
      if (!headers.has('X-RateLimit-Limit')) {
        headers.set('X-RateLimit-Limit', limit)
        headers.set('X-RateLimit-Remaining', remaining)
        headers.set('X-RateLimit-Reset', reset)
      }
    }
  })

  app.use('/v1/*', async (c, next) => {
    // No key at all on a paid endpoint: x402. A key that is wrong stays a 401.
    const price = deps.x402?.price(c.req.path)
    if (c.get('auth') == null && c.req.header('authorization') == null && price != null && deps.x402 != null) {
      if (c.req.header('payment-signature') == null && c.req.header('x-payment') == null) {
        throw deps.x402.required(c, c.req.path)
      }
      // Verified before any work. The route uses it (gate.use) when its work starts; if it never
      // does (a bad request, no node), the payment was not used and may be sent again.
      const payment = await deps.x402.verify(c, c.req.path)
      c.set('x402', payment)
      try {
        return await next()
      } finally {
        if (!payment.used) deps.x402.release(payment)
      }
    }
    requireAuth(c)
    await next()
  })

  app.route(
    '/api',
    apiRoutes({
      accounts: deps.accounts,
      pricing: deps.pricing,
      loginFailures: deps.loginFailures,
      servedModels: () => [...deps.directory.models().keys()],
      ...(deps.models != null
        ? {
            registryModels: () => (deps.models as ModelsDeps).registry.models().map((m) => m.id),
            modelsDeployedBy: (account: string) => modelsDeployedBy(deps.models as ModelsDeps, account),
          }
        : {}),
      nodeCount: () => deps.directory.nodes().length,
    }),
  )

  if (deps.chain != null) app.route('/api', chainRoutes(deps.chain))
  if (deps.models != null) app.route('/api', modelRoutes(deps.models))

  app.get('/health', (c) => c.json({ status: 'ok', uptime: Math.floor((Date.now() - startedAt) / 1000) }))

  if (deps.metrics != null) {
    const { registry, access } = deps.metrics
    app.get('/metrics', async (c) => {
      const admin = c.get('auth')?.account.role === 'admin'
      const loopback = LOOPBACK_ADDRESS.test(clientAddress(c))
      if (!(access === 'public' || admin || (access === 'loopback-or-admin' && loopback))) {
        if (c.get('auth') == null)
          throw unauthorized('Metrics need an admin key here: Authorization: Bearer <admin key>.')
        throw new ApiError(403, 'Only admin keys may read the metrics.', 'authentication_error', 'forbidden')
      }
      return c.body(await registry.text(), 200, { 'Content-Type': registry.contentType })
    })
  }

  const modelObject = (id: string, nodes: NodeEntry[]) => {
    const caps = nodes.map((n) => n.capabilities?.models.find((m) => m.id === id)).find((m) => m != null)
    return {
      id,
      object: 'model' as const,
      created: Math.floor(Math.min(...nodes.map((n) => n.joinedAt)) / 1000),
      owned_by: 'cluster',
      nodes: nodes.length,
      ...(caps ? { context_length: caps.contextSize } : {}),
    }
  }

  app.get('/v1/models', (c) => {
    const data = [...deps.directory.models()].map(([id, nodes]) => modelObject(id, nodes))
    data.sort((a, b) => a.id.localeCompare(b.id))
    return c.json({ object: 'list', data })
  })

  app.get('/v1/models/:id{.+}', (c) => {
    const id = c.req.param('id')
    const nodes = deps.directory.nodesServing(id)
    if (nodes.length === 0) throw modelNotFound(id)
    return c.json(modelObject(id, nodes))
  })

  app.post('/v1/chat/completions', async (c) => {
    const auth = c.get('auth')
    const payment = c.get('x402')
    if (payment == null) requireAuth(c)
    const signal = clientSignal(c)
    let json: unknown
    try {
      json = await readJsonBody(c)
    } catch {
      throw invalidRequest('The request body is not valid JSON.')
    }
    const req = parseChatRequest(json)
    const meta: CompletionMeta = { id: newCompletionId(), created: Math.floor(Date.now() / 1000), model: req.model }
    // The completion id is the request's id from here on: it goes to the node in the request frame.
    c.set('requestId', meta.id)
    c.header('X-Request-Id', meta.id)
    const frame: InferenceRequestFrame = {
      type: 'request',
      id: meta.id,
      model: req.model,
      messages: toWireMessages(req.messages),
      sampling: toSampling(req),
    }
    // An unknown model is a 404 before any money moves.
    if (deps.directory.nodesServing(req.model).length === 0 && !deps.directory.knowsModel(req.model)) {
      throw modelNotFound(req.model)
    }
    // API key: the maximum cost is reserved now (x402: the middleware verified the payment).
    const keyMeter = auth != null ? new Meter(deps.billing, auth.account.id, req.model, meta.id) : undefined
    await keyMeter?.reserve(frame, contextSizeOf(deps.directory, req.model))

    const started = performance.now()
    const cancel = new AbortController()
    const onClientGone = (): void => cancel.abort()
    signal.addEventListener('abort', onClientGone, { once: true })
    let call: InferenceCall
    try {
      call = await deps.router.open(frame, cancel.signal)
    } catch (err) {
      signal.removeEventListener('abort', onClientGone)
      await keyMeter?.cancel()
      throw err
    }
    // x402: a node answered, so the payment is used now (its flat price), and settles alongside.
    let settlement: Promise<SettlementOutcome> | undefined
    let meter = keyMeter as Meter
    if (payment != null) {
      const used = await (deps.x402 as X402Gate).use(payment, meta.id)
      settlement = used.settlement
      meter = new Meter(deps.billing, used.account.id, req.model, meta.id, payment.amount - payment.debtPaid)
      await meter.reserveFlat()
    }
    const ttftMs = performance.now() - started
    const complete = (finishReason: FinishReason, usage: Usage): void =>
      deps.onComplete?.({
        requestId: meta.id,
        model: req.model,
        nodePeerId: call.nodePeerId,
        usage,
        finishReason,
        ttftMs: Math.round(ttftMs),
        durationMs: Math.round(performance.now() - started),
        payer: payment != null ? 'x402' : 'api_key',
      })

    // Which node answered: for operators and tests (routing headers grow with external providers).
    c.header('x-cluster-node', call.nodePeerId)
    if (req.stream !== true) {
      try {
        const { text, done } = await collect(call, meter)
        // A plain answer is delivered whole or not at all: a client gone by now pays nothing.
        if (signal.aborted)
          throw new ApiError(400, 'The client closed the request.', 'invalid_request_error', 'client_closed')
        await meter.finish(call.nodePeerId, done, false)
        complete(done.finishReason, done.usage)
        const settled = await settlement
        if (settled?.status === 'failed') {
          throw (deps.x402 as X402Gate).required(c, '/v1/chat/completions', `settlement_failed: ${settled.reason}`)
        }
        if (settled?.status === 'settled') c.header(settled.header.name, settled.header.value)
        return c.json(completionBody(meta, text, done.finishReason, done.usage))
      } finally {
        signal.removeEventListener('abort', onClientGone)
        // A plain answer is delivered whole or not at all: a failed one costs nothing.
        await meter.cancel()
      }
    }

    const includeUsage = req.stream_options?.include_usage === true
    return streamEvents(c, cancel, async (sse) => {
      // The role chunk leaves in the same write as the first chunk after it (one write, one
      // packet for the client's first token). JSON has no raw newline: one `data:` line each.
      let head = `data: ${JSON.stringify(chunkBody(meta, { role: 'assistant', content: '' }, null, includeUsage))}\n\n`
      const send = async (body: unknown): Promise<void> => {
        const event = `${head}data: ${JSON.stringify(body)}\n\n`
        head = ''
        await sse.write(event)
      }
      let finished = false
      let done: DoneFrame | undefined
      // A settlement that fails ends the stream with an error event; the request stays unpaid.
      let unpaid: string | undefined
      void settlement?.then((o) => {
        if (o.status === 'failed') unpaid = o.reason
      })
      const paymentError = (reason: string) => ({
        error: {
          message: `The x402 payment failed to settle (${reason}); this request is recorded as unpaid and the payer is not served again until it pays for it.`,
          type: 'payment_error',
          code: 'payment_failed',
          param: null,
        },
      })
      try {
        let frame: InferenceResponseFrame = call.first
        for (;;) {
          if (cancel.signal.aborted) {
            if (frame.type === 'done') done = frame
            break
          }
          if (unpaid != null) {
            await send(paymentError(unpaid))
            break
          }
          if (frame.type === 'delta') {
            if (frame.text.length > 0) await send(chunkBody(meta, { content: frame.text }, null, includeUsage))
            // Counted once written: an abort pays for what was delivered.
            meter.delivered(frame)
          } else if (frame.type === 'done') {
            done = frame
            await meter.finish(call.nodePeerId, frame, false)
            await send(chunkBody(meta, {}, frame.finishReason, includeUsage))
            if (includeUsage) await send(usageChunkBody(meta, frame.usage))
            // The answer is out; its payment is told before [DONE] (it did not hold the stream).
            const settled = await settlement
            if (settled?.status === 'failed') await send(paymentError(settled.reason))
            // The headers left before the settlement ended: its PAYMENT-RESPONSE comes as an SSE
            // comment (ignored by SSE parsers, readable by whoever wants the receipt).
            if (settled?.status === 'settled') await sse.write(`: ${settled.header.name}: ${settled.header.value}\n\n`)
            await sse.write('data: [DONE]\n\n')
            complete(frame.finishReason, frame.usage)
            finished = true
            break
          } else {
            await send({ error: { message: frame.message, type: 'server_error', code: frame.code, param: null } })
            break
          }
          const next = await call.rest.next()
          if (next.done) {
            await send({
              error: {
                message: 'The node closed the stream early.',
                type: 'server_error',
                code: 'node_failed',
                param: null,
              },
            })
            break
          }
          frame = next.value
        }
      } catch {
        if (!cancel.signal.aborted) {
          await send({
            error: { message: 'The node failed mid-stream.', type: 'server_error', code: 'node_failed', param: null },
          }).catch(() => undefined)
        }
      } finally {
        signal.removeEventListener('abort', onClientGone)
        if (finished) call.close()
        else {
          // The client left: the node was told to stop; its done frame brings the receipt.
          if (cancel.signal.aborted && done == null) done = await call.drain()
          call.abort()
        }
        // Billed for what reached the client, with the node's receipt; a failed node, nothing.
        await meter.finish(call.nodePeerId, cancel.signal.aborted ? done : undefined, true)
      }
    })
  })

  return app
}

/** Reads a whole answer (non-streaming requests). */
async function collect(call: InferenceCall, meter: Meter): Promise<{ text: string; done: DoneFrame }> {
  let text = ''
  let frame: InferenceResponseFrame = call.first
  try {
    for (;;) {
      if (frame.type === 'delta') {
        text += frame.text
        meter.delivered(frame)
      } else if (frame.type === 'done') {
        call.close()
        return { text, done: frame }
      } else {
        throw new ApiError(502, `The node failed: ${frame.message}`, 'server_error', 'node_failed')
      }
      const next = await call.rest.next()
      if (next.done)
        throw new ApiError(502, 'The node closed the stream before finishing.', 'server_error', 'node_failed')
      frame = next.value
    }
  } catch (err) {
    call.abort()
    if (err instanceof ApiError) throw err
    throw new ApiError(502, 'The node failed while answering.', 'server_error', 'node_failed')
  }
}

function contextSizeOf(directory: Directory, model: string): number | undefined {
  const sizes = directory
    .nodesServing(model)
    .map((n) => n.capabilities?.models.find((m) => m.id === model)?.contextSize)
    .filter((n): n is number => n != null)
  return sizes.length > 0 ? Math.max(...sizes) : undefined
}

/**
 * The money side of one call: a hold at admission, then exactly one settlement — the node's usage
 * when it finished, or the prompt and the tokens delivered when the client left early; either only
 * with the node's receipt. Otherwise a release.
 */
class Meter {
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

  /** Reserves the flat price (x402: the payment just credited). */
  async reserveFlat(): Promise<void> {
    if (this.billing == null || this.flat == null) return
    this.hold = await this.billing.reserve(this.accountId, this.flat, this.requestId)
  }

  async reserve(frame: InferenceRequestFrame, contextSize: number | undefined): Promise<void> {
    if (this.billing == null) return
    const max = this.billing.maxCost(this.model, frame.messages, frame.sampling.maxTokens, contextSize)
    this.hold = await this.billing.reserve(this.accountId, max, this.requestId)
  }

  delivered(frame: { tokens: number }): void {
    this.completionTokens += frame.tokens
  }

  /** Frees the hold without charging, unless the call was settled already. */
  async cancel(): Promise<void> {
    if (this.settled || this.billing == null || this.hold == null) return
    this.settled = true
    await this.billing.release(this.hold)
  }

  /**
   * Settles once, from the node's done frame: its usage, or — `early`, the client having left — no
   * more completion tokens than were delivered. No done frame: nothing is charged.
   */
  async finish(node: string, done: DoneFrame | undefined, early: boolean): Promise<void> {
    if (this.settled || this.billing == null || this.hold == null) return
    this.settled = true
    if (done == null) return this.billing.release(this.hold)
    const usage: Usage = early
      ? {
          promptTokens: done.usage.promptTokens,
          completionTokens: Math.min(done.usage.completionTokens, this.completionTokens),
        }
      : done.usage
    await this.billing.settle(this.hold, {
      model: this.model,
      requestId: this.requestId,
      node,
      done,
      usage,
      ...(this.flat != null ? { flat: this.flat } : {}),
    })
  }
}
