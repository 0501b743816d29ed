// The gateway's HTTP app (hono): /health, the OpenAI-compatible /v1 routes, and error mapping
// at the edge. It holds no inference state: everything it routes to comes from the Directory.
import { randomUUID } from 'node:crypto'
import { Hono } from 'hono'
import { bodyLimit } from 'hono/body-limit'
import { cors } from 'hono/cors'
import { HTTPException } from 'hono/http-exception'
import { routePath } from 'hono/route'
import type { Logger } from '../src/log.ts'
import type { Directory, NodeEntry } from '../src/mesh/directory.ts'
import type { Accounts } from './accounts.ts'
import { type AuthVars, apiRoutes, clientAddress, requireAuth } from './api-routes.ts'
import type { Billing } from './billing.ts'
import { type ChainDeps, chainRoutes } from './chain-routes.ts'
import { type CompletedInference, chatRoute } from './chat.ts'
import { ApiError, modelNotFound, rateLimited, unauthorized } from './errors.ts'
import { MAX_AUDIO_BYTES, mediaRoutes } from './media-routes.ts'
import type { MeshVectors } from './mesh-vectors.ts'
import type { GatewayMetrics, MetricsAccess } from './metrics.ts'
import { type ModelsDeps, modelRoutes, modelsDeployedBy } from './models.ts'
import { requestHeader } from './node-request.ts'
import type { Pricing } from './pricing.ts'
import { MESH_PROVIDER } from './providers/catalog.ts'
import type { LoginFailures, RegistrationLimits, TokenBuckets } from './rate-limit.ts'
import type { MeshRouter } from './router.ts'
import type { Routing } from './routing.ts'
import { vectorsRoutes } from './vectors-routes.ts'
import { PaymentRequiredError, type X402Gate } from './x402.ts'

export type { CompletedInference } from './chat.ts'

export interface AppDeps {
  directory: Directory
  router: MeshRouter
  /** Candidates (mesh nodes, external providers), their scores and measurements. */
  routing: Routing
  /** Embeddings and rerank on mesh nodes. */
  vectors: MeshVectors
  accounts: Accounts
  pricing: Pricing
  /** Billing off (undefined) serves authenticated calls without charging: for benchmarks only. */
  billing: Billing | undefined
  /** Requests per API key, or per client address without one. */
  limits: TokenBuckets
  /** Failed logins per email and client address, per address, and per email. */
  loginFailures: LoginFailures
  /** Sign-ups per client address and in all. */
  registrations?: RegistrationLimits
  /** A key was revoked through the API (admin sockets holding it are closed). */
  onKeyRevoked?: (keyId: string) => void
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

const TRANSCRIPTIONS_PATH = '/v1/audio/transcriptions'

/** Uploads carry their own size limit (the model's), checked as the file streams in. */
const UPLOAD_PATH = '/api/models/upload'

const isV1 = (path: string): boolean => path === '/v1' || path.startsWith('/v1/')

/** Response headers a browser's script may read (x402, routing, rate limits, request ids). */
const EXPOSED_HEADERS = [
  'payment-required',
  'payment-response',
  'x-payment-response',
  'x-cluster-provider',
  'x-cluster-route',
  'x-cluster-node',
  'x-request-id',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
  'retry-after',
]

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
    const given = requestHeader(c, 'x-request-id')
    c.set('requestId', given != null && REQUEST_ID.test(given) ? given : randomUUID())
    const started = performance.now()
    try {
      await next()
    } finally {
      if (!c.res.headers.has('X-Request-Id')) c.res.headers.set('X-Request-Id', c.get('requestId') as string)
      const line = {
        reqId: c.get('requestId'),
        method: c.req.method,
        path: c.req.path,
        status: c.res.status,
        ms: Math.round((performance.now() - started) * 10) / 10,
      }
      // Written after the answer has left (a stream's first token included), not in front of it.
      if (deps.logger != null) {
        const logger = deps.logger
        setImmediate(() => logger.info(line, 'request'))
      }
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

  // Browsers (a web app, an agent paying with x402 from a page) may call from any origin: keys travel
  // in the Authorization header, never in cookies, so no origin gains anything by it. A preflight is
  // answered here, before auth and the rate limit; the headers a client reads are exposed.
  const corsHeaders = cors({ origin: '*', exposeHeaders: EXPOSED_HEADERS, maxAge: 600 })
  app.use('*', (c, next) => (requestHeader(c, 'origin') != null ? corsHeaders(c, next) : next()))

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
  // An audio file to transcribe, with its form fields.
  const audioMax = MAX_AUDIO_BYTES + 64 * 1024
  const audioBodies = limitBody(audioMax)

  // Who is calling: a valid bearer key attaches its account; routes that need one say so.
  app.use('*', async (c, next) => {
    const header = requestHeader(c, 'authorization')
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

  // After the rate limit: a refused body is a request like any other (counted, with the headers).
  app.use('*', async (c, next) => {
    // Only requests that carry a body pay for the check (it materialises the request stream).
    const length = requestHeader(c, 'content-length')
    const chunked = requestHeader(c, 'transfer-encoding') != null
    if (length == null && !chunked) return next()
    if (c.req.path === UPLOAD_PATH) return next()
    const v1 = isV1(c.req.path)
    const audio = c.req.path === TRANSCRIPTIONS_PATH
    if (chunked) return audio ? audioBodies(c, next) : v1 ? inferenceBodies(c, next) : otherBodies(c, next)
    // A declared length is checked as bodyLimit does, without materialising the request.
    const max = audio ? audioMax : v1 ? inferenceMax : 64 * 1024
    if (Number.parseInt(length ?? '0', 10) > max) return tooLarge(c, max)
    return next()
  })

  app.use('/v1/*', async (c, next) => {
    // No key at all on a paid endpoint: x402. A key that is wrong stays a 401.
    // Every paid endpoint is a POST: another method is no call to pay for (it finds no route).
    const price = c.req.method === 'POST' ? deps.x402?.price(c.req.path) : undefined
    if (c.get('auth') == null && requestHeader(c, 'authorization') == null && price != null && deps.x402 != null) {
      if (requestHeader(c, 'payment-signature') == null && requestHeader(c, 'x-payment') == null) {
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
      ...(deps.registrations != null ? { registrations: deps.registrations } : {}),
      ...(deps.onKeyRevoked != null ? { onKeyRevoked: deps.onKeyRevoked } : {}),
      servedModels: () => [...deps.directory.models().keys()],
      providerModels: () => [...deps.routing.providerModelIds()],
      ...(deps.models != null
        ? {
            registryModels: () => (deps.models as ModelsDeps).registry.models().map((m) => m.id),
            modelsDeployedBy: (account: string) => modelsDeployedBy(deps.models as ModelsDeps, account),
          }
        : {}),
      nodeCount: () => deps.directory.nodes().length,
    }),
  )

  // Fine-tuning is in the docs but not built yet: its routes say so (501) instead of "no route".
  app.all('/api/finetune/*', (c) => {
    requireAuth(c)
    throw new ApiError(
      501,
      'Fine-tuning is not available on this gateway yet: no node can train LoRA adapters. Inference, embeddings, rerank and the model API work.',
      'server_error',
      'not_implemented',
    )
  })

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

  // Models served by the mesh and those the enabled providers list, each with who serves it.
  const listed = (id: string): Record<string, unknown> | undefined => {
    const nodes = deps.directory.nodesServing(id)
    const providers = deps.routing.providersOf(id)
    if (nodes.length === 0 && providers.length === 0) return undefined
    const base =
      nodes.length > 0
        ? modelObject(id, nodes)
        : { id, object: 'model' as const, created: Math.floor(startedAt / 1000), owned_by: providers[0] as string }
    return { ...base, providers: [...(nodes.length > 0 ? [MESH_PROVIDER] : []), ...providers] }
  }

  app.get('/v1/models', (c) => {
    const ids = new Set([...deps.directory.models().keys(), ...deps.routing.providerModelIds()])
    const data = [...ids]
      .sort((a, b) => a.localeCompare(b))
      .map(listed)
      .filter((m) => m != null)
    return c.json({ object: 'list', data })
  })

  app.get('/v1/models/:id{.+}', (c) => {
    const id = c.req.param('id')
    const model = listed(id)
    if (model == null) throw modelNotFound(id)
    return c.json(model)
  })

  app.post('/v1/chat/completions', chatRoute(deps))
  mediaRoutes(app, deps)
  vectorsRoutes(app, deps)

  return app
}
