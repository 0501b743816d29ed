// /v1/embeddings (OpenAI's shapes) and /v1/rerank (the providers' common rerank shape): served by
// mesh nodes whose model can embed or rank (node-llama-cpp, over /cluster/vectors/1.0.0, paid from
// their signed receipts) or by providers that offer them; billed per prompt token with API keys,
// per request with x402.
import type { Context, Hono } from 'hono'
import { z } from 'zod'
import { type DoneFrame, encodeVector, type Receipt, type Usage } from '../protocols/index.ts'
import { costOf } from '../src/payments/money.ts'
import type { AuthVars } from './api-routes.ts'
import { type Attempt, tryCandidates } from './attempts.ts'
import { invalidRequest } from './errors.ts'
import type { MediaDeps } from './media-routes.ts'
import { type EmbedResult, type MeshVectors, MeshVectorsError, type RerankResult } from './mesh-vectors.ts'
import { clientSignal, readJsonObject } from './node-request.ts'
import { parseBody } from './openai.ts'
import { PaidCall } from './paid-call.ts'
import { PROVIDER_ONLY_FIELDS } from './providers/catalog.ts'
import { callUpstream, forwardBody, readAnswer } from './providers/upstream-call.ts'
import type { Candidate, RoutePlan } from './routing.ts'
import { countTokens } from './tokens.ts'

export interface VectorsDeps extends MediaDeps {
  vectors: MeshVectors
}

const EmbeddingsSchema = z.object({
  model: z.string().min(1, 'must be a non-empty string'),
  input: z.union(
    [
      z.string().min(1, 'must not be empty'),
      z
        .array(z.string().min(1, 'must not be empty'))
        .min(1, 'must not be empty')
        .max(2048, 'must have at most 2048 inputs'),
    ],
    'must be a string or an array of strings',
  ),
  encoding_format: z.enum(['float', 'base64']).nullish(),
  dimensions: z.number().int().min(1).max(65_536).nullish(),
  user: z.string().max(256).optional(),
  provider: z.string().min(1).optional(),
})

const RerankSchema = z.object({
  model: z.string().min(1, 'must be a non-empty string'),
  query: z.string().min(1, 'must be a non-empty string'),
  documents: z
    .array(z.union([z.string(), z.object({ text: z.string() })], 'must be a string or {"text": …}'))
    .min(1, 'must not be empty')
    .max(1000, 'must have at most 1000 documents'),
  top_n: z.number().int().min(1).nullish(),
  return_documents: z.boolean().nullish(),
  provider: z.string().min(1).optional(),
})

/** An upper bound on the tokens of texts without their tokenizer: a token is at least one byte. */
const tokenBound = (texts: string[]): number => texts.reduce((n, t) => n + Buffer.byteLength(t, 'utf8') + 4, 8)

type ProviderCandidate = Extract<Candidate, { kind: 'provider' }>

type Served<T> = { kind: 'node'; peerId: string; result: T } | { kind: 'provider'; body: Record<string, unknown> }

/** A node's refusal: its fault (next candidate) or the request's (400, no failover). */
function nodeFailure(err: unknown): Attempt<never> {
  if (!(err instanceof MeshVectorsError)) return { nodeOutcome: 'failed' }
  if (err.failover || err.code === 'model_not_found') return { nodeOutcome: err.code }
  if (err.code === 'aborted') return { nodeOutcome: 'client_closed' }
  // The node's refusal is said as it is, with the field it names (its error frame's param).
  return { nodeOutcome: err.code, fatal: invalidRequest(err.message, err.param ?? null, err.code) }
}

async function providerJson(
  candidate: ProviderCandidate,
  endpoint: 'embeddings' | 'rerank',
  json: Record<string, unknown>,
  signal: AbortSignal,
): Promise<Attempt<Served<never>>> {
  const body = forwardBody(candidate.upstream, json, candidate.upstreamModel, PROVIDER_ONLY_FIELDS)
  const sent = await callUpstream(candidate.upstream, endpoint, {
    body: JSON.stringify(body),
    contentType: 'application/json',
    signal,
  })
  if ('failure' in sent) return sent
  // The least an answer must have: its list (data for embeddings, results for rerank).
  const read = await readAnswer(candidate.upstream, sent.res, endpoint === 'embeddings' ? 'data' : 'results', signal)
  if ('failure' in read) return read
  return { value: { kind: 'provider', body: read.body } }
}

/** Prompt tokens a provider reports (OpenAI's usage, or Cohere's billed units); undefined if none. */
function reportedTokens(body: Record<string, unknown>): number | undefined {
  const usage = body.usage as { prompt_tokens?: unknown; total_tokens?: unknown } | undefined
  const n = usage?.prompt_tokens ?? usage?.total_tokens
  if (typeof n === 'number' && Number.isSafeInteger(n) && n >= 0) return n
  return undefined
}

const doneOf = (usage: Usage, receipt: Receipt): DoneFrame => ({ type: 'done', finishReason: 'stop', usage, receipt })

export function vectorsRoutes(app: Hono<AuthVars>, deps: VectorsDeps): void {
  /** Routes one request and settles it: the node's receipt, or the provider's (else our) token count. */
  async function serve<T extends EmbedResult | RerankResult>(
    c: Context<AuthVars>,
    endpoint: 'embeddings' | 'rerank',
    model: string,
    pinned: string | undefined,
    texts: string[],
    json: Record<string, unknown>,
    onNode: (peerId: string, requestId: string, signal: AbortSignal) => Promise<T>,
  ): Promise<{ served: Served<T>; usage: Usage; call: PaidCall; plan: RoutePlan }> {
    const plan = deps.routing.plan(model, endpoint, pinned)
    const maxCost = costOf({ promptTokens: tokenBound(texts), completionTokens: 0 }, deps.pricing.priceOf(model))
    const call = await PaidCall.open(c, deps, endpoint, model, maxCost, endpoint === 'embeddings' ? 'emb' : 'rerank')
    const signal = clientSignal(c)
    try {
      const answer = await tryCandidates<Served<T>>(deps.routing, plan, model, signal, async ({ candidate }) => {
        if (candidate.kind === 'provider') return providerJson(candidate, endpoint, json, signal)
        try {
          const result = await onNode(candidate.node.peerId, call.requestId, signal)
          return { value: { kind: 'node', peerId: candidate.node.peerId, result } }
        } catch (err) {
          return nodeFailure(err)
        }
      })
      answer.end()
      const { value: served } = answer
      await call.answered(plan, answer)
      // x402: paid before it is charged or counted (a payment that failed gets a 402 and costs nothing).
      await call.settledHeaders(`/v1/${endpoint}`)
      let usage: Usage
      if (served.kind === 'node') {
        usage = served.result.usage
        await call.meter?.finish(served.peerId, doneOf(usage, served.result.receipt), false)
      } else {
        const reported = reportedTokens(served.body)
        let counted = 0
        if (reported == null) for (const t of texts) counted += await countTokens(t)
        usage = { promptTokens: reported ?? counted, completionTokens: 0 }
        await call.meter?.finishProvider(usage)
      }
      deps.routing.success(answer.scored.candidate, model, { ttftMs: performance.now() - answer.t0 })
      call.complete(
        served.kind === 'node' ? { node: served.peerId } : { provider: answer.scored.candidate.provider },
        usage,
        performance.now() - answer.t0,
      )
      return { served, usage, call, plan }
    } finally {
      await call.release()
    }
  }

  app.post('/v1/embeddings', async (c) => {
    const json = await readJsonObject(c)
    const req = parseBody(EmbeddingsSchema, json)
    const input = typeof req.input === 'string' ? [req.input] : req.input
    const { served, usage } = await serve<EmbedResult>(
      c,
      'embeddings',
      req.model,
      req.provider,
      input,
      json,
      (peerId, id, signal) =>
        deps.vectors.embed(
          peerId,
          { id, model: req.model, input, ...(req.dimensions != null ? { dimensions: req.dimensions } : {}) },
          signal,
        ),
    )
    if (served.kind === 'provider') return c.json(served.body)
    const base64 = req.encoding_format === 'base64'
    return c.json({
      object: 'list',
      data: served.result.vectors.map((v, index) => ({
        object: 'embedding',
        index,
        embedding: base64 ? encodeVector(v) : Array.from(v),
      })),
      model: req.model,
      usage: { prompt_tokens: usage.promptTokens, total_tokens: usage.promptTokens },
    })
  })

  app.post('/v1/rerank', async (c) => {
    const json = await readJsonObject(c)
    const req = parseBody(RerankSchema, json)
    const documents = req.documents.map((d) => (typeof d === 'string' ? d : d.text))
    const { served, usage, call } = await serve<RerankResult>(
      c,
      'rerank',
      req.model,
      req.provider,
      [req.query, ...documents],
      json,
      (peerId, id, signal) =>
        deps.vectors.rerank(peerId, { id, model: req.model, query: req.query, documents }, signal),
    )
    if (served.kind === 'provider') return c.json(served.body)
    const ranked = served.result.scores
      .map((relevance_score, index) => ({
        index,
        relevance_score,
        ...(req.return_documents === true ? { document: { text: documents[index] as string } } : {}),
      }))
      .sort((a, b) => b.relevance_score - a.relevance_score || a.index - b.index)
      .slice(0, req.top_n ?? documents.length)
    return c.json({
      id: call.requestId,
      object: 'list',
      model: req.model,
      results: ranked,
      usage: { prompt_tokens: usage.promptTokens, total_tokens: usage.promptTokens },
    })
  })
}
