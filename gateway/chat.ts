// POST /v1/chat/completions: validate, reserve the most the call can cost, route (mesh nodes and
// external providers, scored; failover before the first token), then stream or return the answer
// and settle exactly once — from a node's signed receipt, or from a provider's usage.
import type { Context } from 'hono'
import type {
  DoneFrame,
  EndpointName,
  FinishReason,
  InferenceRequestFrame,
  InferenceResponseFrame,
  Usage,
} from '../protocols/index.ts'
import type { Directory } from '../src/mesh/directory.ts'
import type { AuthVars } from './api-routes.ts'
import { requireAuth } from './api-routes.ts'
import { type Answered, clientClosed, tryCandidates } from './attempts.ts'
import type { Billing } from './billing.ts'
import { ApiError } from './errors.ts'
import { Meter } from './meter.ts'
import { clientSignal, readJsonObject, requestHeader } from './node-request.ts'
import {
  type CompletionMeta,
  chunkBody,
  completionBody,
  meshUnsupported,
  newCompletionId,
  parseChatRequest,
  toSampling,
  toWireMessages,
  usageBody,
  usageChunkBody,
} from './openai.ts'
import { MESH_PROVIDER, PROVIDER_ONLY_FIELDS } from './providers/catalog.ts'
import {
  contentOf,
  openProviderChat,
  type ProviderChatAnswer,
  parseEvent,
  upstreamChatBody,
  usageOf,
} from './providers/chat.ts'
import type { InferenceCall, MeshRouter } from './router.ts'
import type { RoutePlan, Routing } from './routing.ts'
import { streamEvents } from './sse.ts'
import { countChatTokens, countTokens } from './tokens.ts'
import type { SettlementOutcome, X402Gate } from './x402.ts'

export interface CompletedInference {
  requestId: string
  model: string
  /** The node that served it, or `provider:<name>`. */
  nodePeerId: string
  /** Set when an external provider served it. */
  provider?: string
  endpoint: EndpointName
  usage: Usage
  finishReason: FinishReason
  ttftMs: number
  durationMs: number
  /** Who paid: an API key's balance, or an x402 payment. */
  payer: 'api_key' | 'x402'
}

/** Who served a call, as a completed inference names it: a node's peer id, or `provider:<name>` and the provider. */
export function servedFields(servedBy: {
  node?: string
  provider?: string
}): Pick<CompletedInference, 'nodePeerId' | 'provider'> {
  if (servedBy.provider != null) return { nodePeerId: `provider:${servedBy.provider}`, provider: servedBy.provider }
  return { nodePeerId: servedBy.node ?? '' }
}

export interface ChatDeps {
  directory: Directory
  router: MeshRouter
  routing: Routing
  billing: Billing | undefined
  x402?: X402Gate | undefined
  onComplete?: ((info: CompletedInference) => void) | undefined
}

type Answer = { kind: 'node'; call: InferenceCall } | { kind: 'provider'; answer: ProviderChatAnswer }

/** Tries the plan's candidates in order until one answers (tryCandidates picks the error otherwise). */
function route(
  deps: ChatDeps,
  plan: RoutePlan,
  frame: InferenceRequestFrame,
  clientBody: Record<string, unknown>,
  signal: AbortSignal,
): Promise<Answered<Answer>> {
  return tryCandidates<Answer>(deps.routing, plan, frame.model, signal, async ({ candidate }) => {
    if (candidate.kind === 'node') {
      const result = await deps.router.tryNode(candidate.node.peerId, frame, signal)
      if ('call' in result) return { value: { kind: 'node', call: result.call } }
      return { nodeOutcome: result.outcome, fatal: result.fatal }
    }
    const body = upstreamChatBody(candidate.upstream, clientBody, candidate.upstreamModel, PROVIDER_ONLY_FIELDS)
    const result = await openProviderChat(candidate.upstream, body, signal)
    if ('answer' in result) return { value: { kind: 'provider', answer: result.answer } }
    return result
  })
}

export function chatRoute(deps: ChatDeps) {
  return async (c: Context<AuthVars>): Promise<Response> => {
    const auth = c.get('auth')
    const payment = c.get('x402')
    if (payment == null) requireAuth(c)
    const signal = clientSignal(c)
    const json = await readJsonObject(c)
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
    // Unknown model or provider: a 4xx before any money moves.
    const plan = deps.routing.plan(req.model, 'chat', req.provider, meshUnsupported(req))
    // API key: the maximum cost is reserved now (x402: the middleware verified the payment).
    const keyMeter = auth != null ? new Meter(deps.billing, auth.account.id, req.model, meta.id) : undefined
    if (keyMeter != null && deps.billing != null) {
      await keyMeter.reserve(
        deps.billing.maxCost(
          req.model,
          frame.messages,
          frame.sampling.maxTokens,
          contextSizeOf(deps.directory, req.model),
          bodyBytesOf(c, json),
        ),
      )
    }

    const started = performance.now()
    const cancel = new AbortController()
    const onClientGone = (): void => cancel.abort()
    signal.addEventListener('abort', onClientGone, { once: true })
    let routed: Answered<Answer>
    try {
      routed = await route(deps, plan, frame, json, cancel.signal)
    } catch (err) {
      signal.removeEventListener('abort', onClientGone)
      await keyMeter?.cancel()
      throw err
    }
    const answer = routed
    // x402: a candidate answered, so the payment is used now (its flat price), and settles alongside.
    let settlement: Promise<SettlementOutcome> | undefined
    let meter = keyMeter as Meter
    if (payment != null) {
      try {
        const used = await (deps.x402 as X402Gate).use(payment, meta.id, (account) => {
          meter = new Meter(deps.billing, account.id, req.model, meta.id, payment.amount - payment.debtPaid)
          return meter.reserveFlat()
        })
        settlement = used.settlement
      } catch (err) {
        // The candidate answered but cannot be paid for: its work is stopped, nothing is left running.
        answer.end()
        if (answer.value.kind === 'node') answer.value.call.abort()
        else if (answer.value.answer.stream) answer.value.answer.body.destroy()
        signal.removeEventListener('abort', onClientGone)
        throw err
      }
    }
    const ttftMs = performance.now() - started
    const provider = answer.value.kind === 'provider' ? answer.scored.candidate.provider : undefined
    // `node`: the node that finished the answer (another one when it was continued elsewhere).
    const complete = (finishReason: FinishReason, usage: Usage, node?: string): void =>
      deps.onComplete?.({
        requestId: meta.id,
        model: req.model,
        ...servedFields(
          provider != null ? { provider } : { node: node ?? (answer.value as { call: InferenceCall }).call.nodePeerId },
        ),
        endpoint: 'chat',
        usage,
        finishReason,
        ttftMs: Math.round(ttftMs),
        durationMs: Math.round(performance.now() - started),
        payer: payment != null ? 'x402' : 'api_key',
      })

    // Where it went, and why.
    c.header('x-cluster-provider', answer.scored.candidate.provider)
    c.header('x-cluster-route', deps.routing.describe(plan, answer.scored, routed.tried))
    const ctx: Served = { c, frame, deps, meta, signal, cancel, onClientGone, meter, settlement, complete, started }
    const { value } = answer
    if (value.kind === 'node') {
      c.header('x-cluster-node', value.call.nodePeerId)
      return serveNode(ctx, answer, value.call, req.stream === true, req.stream_options?.include_usage === true)
    }
    return serveProvider(ctx, answer, value.answer, frame, req.stream_options?.include_usage === true)
  }
}

interface Served {
  c: Context<AuthVars>
  /** The request as sent to the node (a continuation re-sends it). */
  frame: InferenceRequestFrame
  deps: ChatDeps
  meta: CompletionMeta
  signal: AbortSignal
  cancel: AbortController
  onClientGone: () => void
  meter: Meter
  settlement: Promise<SettlementOutcome> | undefined
  complete: (finishReason: FinishReason, usage: Usage, node?: string) => void
  started: number
}

const paymentError = (reason: string) => ({
  error: {
    message: `The x402 payment failed to settle (${reason}); this request is recorded as unpaid and the payer is not served again until it pays for it.`,
    type: 'payment_error',
    code: 'payment_failed',
    param: null,
  },
})

const streamError = (message: string, code: string) => ({
  error: { message, type: 'server_error', code, param: null },
})

/** A plain answer is delivered whole or not at all: its payment is told in the headers. */
async function settledHeaders(s: Served): Promise<void> {
  const settled = await s.settlement
  if (settled?.status === 'failed') {
    throw (s.deps.x402 as X402Gate).required(s.c, '/v1/chat/completions', `settlement_failed: ${settled.reason}`)
  }
  if (settled?.status === 'settled') s.c.header(settled.header.name, settled.header.value)
}

async function serveNode(
  s: Served,
  answer: Answered<Answer>,
  call: InferenceCall,
  stream: boolean,
  includeUsage: boolean,
): Promise<Response> {
  const { c, meta, signal, cancel, meter, settlement, complete, frame } = s
  const firstAt = performance.now()
  const measured = (done: DoneFrame): void =>
    s.deps.routing.success(answer.scored.candidate, s.meta.model, {
      ttftMs: firstAt - answer.t0,
      tokens: done.usage.completionTokens,
      generationMs: performance.now() - firstAt,
    })
  if (!stream) {
    try {
      const { text, done } = await collect(call, meter)
      // A plain answer is delivered whole or not at all: a client gone by now pays nothing.
      if (signal.aborted) throw clientClosed()
      // x402: paid before it is charged or counted (a payment that failed gets a 402 and costs nothing).
      await settledHeaders(s)
      await meter.finish(call.nodePeerId, done, false)
      measured(done)
      complete(done.finishReason, done.usage)
      return c.json(completionBody(meta, text, done.finishReason, done.usage))
    } finally {
      answer.end()
      signal.removeEventListener('abort', s.onClientGone)
      // A plain answer is delivered whole or not at all: a failed one costs nothing.
      await meter.cancel()
    }
  }

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
    // The node answering now: another one when the first dies mid-stream (continued from what was sent).
    let current = call
    let text = ''
    let continued = 0
    const tried = new Set<string>([call.nodePeerId])
    /** The node failed mid-answer: the answer goes on on another node, or the stream ends with an error. */
    const resume = async (why: string): Promise<InferenceResponseFrame | undefined> => {
      if (cancel.signal.aborted) return undefined
      if (continued === 0) s.deps.routing.failure(answer.scored.candidate, meta.model, why)
      current.abort()
      const next = await continueElsewhere(s, frame, text, meter.deliveredTokens, tried, cancel.signal)
      if (next == null) {
        await send(streamError(`The node failed mid-stream (${why}).`, 'node_failed')).catch(() => undefined)
        return undefined
      }
      continued++
      tried.add(next.nodePeerId)
      current = next
      // For whoever reads the stream closely: where it went on (SSE parsers skip comments).
      await sse.write(`: x-cluster-continued-on: ${next.nodePeerId}\n\n`)
      return next.first
    }
    try {
      let next: InferenceResponseFrame | undefined = current.first
      for (;;) {
        if (next == null) break
        const f: InferenceResponseFrame = next
        if (cancel.signal.aborted) {
          if (f.type === 'done') done = f
          break
        }
        if (unpaid != null) {
          await send(paymentError(unpaid))
          break
        }
        if (f.type === 'delta') {
          if (f.text.length > 0) await send(chunkBody(meta, { content: f.text }, null, includeUsage))
          text += f.text
          // Counted once written: an abort pays for what was delivered.
          meter.delivered(f.tokens)
        } else if (f.type === 'done') {
          done = f
          await meter.finish(current.nodePeerId, f, false)
          if (continued === 0) measured(f)
          await send(chunkBody(meta, {}, f.finishReason, includeUsage))
          if (includeUsage) await send(usageChunkBody(meta, f.usage))
          // The answer is out; its payment is told before [DONE] (it did not hold the stream).
          const settled = await settlement
          if (settled?.status === 'failed') await send(paymentError(settled.reason))
          // The headers left before the settlement ended: its PAYMENT-RESPONSE comes as an SSE
          // comment (ignored by SSE parsers, readable by whoever wants the receipt).
          if (settled?.status === 'settled') await sse.write(`: ${settled.header.name}: ${settled.header.value}\n\n`)
          await sse.write('data: [DONE]\n\n')
          complete(f.finishReason, f.usage, current.nodePeerId)
          finished = true
          break
        } else if (f.code === 'internal') {
          next = await resume('internal')
          continue
        } else {
          await send(streamError(f.message, f.code))
          break
        }
        try {
          const r = await current.rest.next()
          next = r.done ? await resume('closed') : r.value
        } catch {
          next = await resume('reset')
        }
      }
    } catch {
      if (!cancel.signal.aborted) {
        await send(streamError('The node failed mid-stream.', 'node_failed')).catch(() => undefined)
      }
    } finally {
      answer.end()
      signal.removeEventListener('abort', s.onClientGone)
      if (finished) current.close()
      else {
        // The client left: the node was told to stop; its done frame brings the receipt.
        if (cancel.signal.aborted && done == null) done = await current.drain()
        current.abort()
      }
      // x402 whose payment failed mid-answer: what reached the client was served, so it is charged
      // (the payer then owes it: the failed payment's credit is taken back).
      const served =
        unpaid != null && !finished
          ? await meter.finishProvider({ promptTokens: 0, completionTokens: meter.deliveredTokens })
          : undefined
      // Billed for what reached the client, with the node's receipt; a failed node, nothing.
      const billed = await meter.finish(current.nodePeerId, cancel.signal.aborted ? done : undefined, true)
      // A call cut short and charged is a call: counted, logged and told like any other.
      const charged = served ?? billed
      if (!finished && charged != null) complete('abort', charged, current.nodePeerId)
    }
  })
}

/** How many times one answer may move to another node. */
const MAX_CONTINUATIONS = 2

/**
 * Continues an answer whose node died mid-stream on another node serving the model: the request
 * again, with what was already sent as the start of the assistant's turn (the engine continues a
 * last assistant message) and max_tokens less what was delivered. Undefined when no node takes it.
 * The dead node gave no receipt, so its part is not charged; the new node's receipt counts the
 * prefix as prompt.
 */
async function continueElsewhere(
  s: Served,
  request: InferenceRequestFrame,
  sent: string,
  deliveredTokens: number,
  tried: ReadonlySet<string>,
  signal: AbortSignal,
): Promise<InferenceCall | undefined> {
  if (tried.size > MAX_CONTINUATIONS) return undefined
  let plan: RoutePlan
  try {
    plan = s.deps.routing.plan(request.model, 'chat', MESH_PROVIDER)
  } catch {
    return undefined
  }
  const messages = [...request.messages]
  const last = messages.at(-1)
  if (last?.role === 'assistant') messages[messages.length - 1] = { ...last, content: last.content + sent }
  else messages.push({ role: 'assistant', content: sent })
  const max = request.sampling.maxTokens
  if (max != null && deliveredTokens >= max) return undefined
  const resumed: InferenceRequestFrame = {
    ...request,
    messages,
    sampling: { ...request.sampling, ...(max != null ? { maxTokens: max - deliveredTokens } : {}) },
  }
  for (const { candidate } of plan.ordered) {
    if (candidate.kind !== 'node' || tried.has(candidate.node.peerId) || signal.aborted) continue
    const result = await s.deps.router.tryNode(candidate.node.peerId, resumed, signal)
    if ('call' in result) return result.call
  }
  return undefined
}

/**
 * A provider's event as it arrived, framed again: every line of its data gets its own `data:` (the
 * client's parser joins them back with newlines), so nothing in it can start an event of its own.
 */
function sseEvent(event: { event?: string | undefined; data: string }): string {
  // Per event on every stream: one line (the usual case) is written as it is.
  const data = /[\r\n]/.test(event.data) ? event.data.split(/\r\n|\r|\n/).join('\ndata: ') : event.data
  return `${event.event ? `event: ${event.event}\n` : ''}data: ${data}\n\n`
}

/** The id, created time and model a provider's chunk carries (those it lacks stay as they were). */
function providerChunkMeta(data: unknown, was: CompletionMeta): CompletionMeta {
  const d = data as { id?: unknown; created?: unknown; model?: unknown } | undefined
  if (d == null || typeof d !== 'object') return was
  return {
    id: typeof d.id === 'string' ? d.id : was.id,
    created: typeof d.created === 'number' && Number.isSafeInteger(d.created) ? d.created : was.created,
    model: typeof d.model === 'string' ? d.model : was.model,
  }
}

const finishOf = (body: unknown): FinishReason => {
  const choices = (body as { choices?: Array<{ finish_reason?: unknown }> })?.choices
  const reason = Array.isArray(choices) ? choices.find((ch) => ch?.finish_reason != null)?.finish_reason : undefined
  return reason === 'length' ? 'length' : 'stop'
}

async function serveProvider(
  s: Served,
  answer: Answered<Answer>,
  reply: ProviderChatAnswer,
  frame: InferenceRequestFrame,
  includeUsage: boolean,
): Promise<Response> {
  const { c, signal, cancel, meter, settlement, complete } = s
  const promptCount = (): Promise<number> => countChatTokens(frame.messages)
  if (!reply.stream) {
    try {
      if (signal.aborted) throw clientClosed()
      // Billed from the provider's usage; counted by us when it sends none (and then shown to the client).
      const usage = reply.usage ?? {
        promptTokens: await promptCount(),
        completionTokens: await countTokens(reply.content),
      }
      await settledHeaders(s)
      await meter.finishProvider(usage)
      s.deps.routing.success(answer.scored.candidate, s.meta.model, { ttftMs: performance.now() - answer.t0 })
      complete(finishOf(reply.body), usage)
      const body = reply.usage != null ? reply.body : { ...reply.body, usage: usageBody(usage) }
      return c.json(body)
    } finally {
      answer.end()
      signal.removeEventListener('abort', s.onClientGone)
      await meter.cancel()
    }
  }

  return streamEvents(c, cancel, async (sse) => {
    const firstAt = performance.now()
    let text = ''
    let usage: Usage | undefined
    let finish: FinishReason = 'stop'
    let finished = false
    // The provider's own chunk id and model name, for a usage chunk we add.
    let chunkMeta: CompletionMeta = s.meta
    let unpaid: string | undefined
    void settlement?.then((o) => {
      if (o.status === 'failed') unpaid = o.reason
    })
    const abortUpstream = (): void => {
      reply.body.destroy()
    }
    cancel.signal.addEventListener('abort', abortUpstream, { once: true })
    try {
      const pending = [...reply.held]
      // The events held until the first token leave in one write (one packet for the first token).
      let out = ''
      for (;;) {
        let event = pending.shift()
        if (event == null) {
          if (out !== '') {
            await sse.write(out)
            out = ''
          }
          const next = await reply.rest.next()
          if (next.done) break
          event = next.value
        }
        if (cancel.signal.aborted) break
        if (unpaid != null) {
          await sse.write(`${out}data: ${JSON.stringify(paymentError(unpaid))}\n\n`)
          out = ''
          break
        }
        if (event.data === '[DONE]') {
          finished = true
          break
        }
        const data = parseEvent(event)
        if (chunkMeta === s.meta) chunkMeta = providerChunkMeta(data, s.meta)
        const u = usageOf(data)
        if (u != null) usage = u
        const choices = (data as { choices?: unknown[] } | undefined)?.choices
        // The usage chunk we asked for is the client's only when it asked for it too.
        if (u != null && Array.isArray(choices) && choices.length === 0 && !includeUsage) continue
        const piece = contentOf(data)
        text += piece
        if (finishOf(data) === 'length') finish = 'length'
        out += sseEvent(event)
      }
      if (out !== '') await sse.write(out)
      if (!finished && !cancel.signal.aborted) {
        await sse.write(
          `data: ${JSON.stringify(streamError('The provider ended the stream early.', 'provider_failed'))}\n\n`,
        )
      }
    } catch {
      if (!cancel.signal.aborted) {
        await sse
          .write(`data: ${JSON.stringify(streamError('The provider failed mid-stream.', 'provider_failed'))}\n\n`)
          .catch(() => undefined)
      }
    } finally {
      cancel.signal.removeEventListener('abort', abortUpstream)
      answer.end()
      signal.removeEventListener('abort', s.onClientGone)
      // Billed for what was delivered: the provider's usage when it sent it at the end; else counted.
      const billed: Usage =
        finished && usage != null
          ? usage
          : {
              promptTokens: usage?.promptTokens ?? (await promptCount()),
              completionTokens: await countTokens(text),
            }
      // Billed for what was delivered; x402 whose payment failed mid-answer too (the payer owes it).
      const charged =
        finished || cancel.signal.aborted || unpaid != null ? await meter.finishProvider(billed) : undefined
      if (charged == null) await meter.cancel()
      if (finished) {
        s.deps.routing.success(answer.scored.candidate, s.meta.model, {
          ttftMs: firstAt - answer.t0,
          tokens: billed.completionTokens,
          generationMs: performance.now() - firstAt,
        })
        const settled = await settlement
        if (settled?.status === 'failed') await sse.write(`data: ${JSON.stringify(paymentError(settled.reason))}\n\n`)
        // Asked for usage and the provider sent none: the usage we billed, counted by us, as OpenAI's last chunk.
        if (includeUsage && usage == null)
          await sse.write(`data: ${JSON.stringify(usageChunkBody(chunkMeta, billed))}\n\n`)
        if (settled?.status === 'settled') await sse.write(`: ${settled.header.name}: ${settled.header.value}\n\n`)
        await sse.write('data: [DONE]\n\n')
        complete(finish, billed)
      } else if (charged != null) {
        // Cut short and charged: a call like any other (counted, logged and told).
        complete('abort', charged)
      }
      // A finished answer's body is read to its end (its connection goes back to the pool);
      // anything else is cut off.
      if (finished && !cancel.signal.aborted) reply.body.resume()
      else reply.body.destroy()
    }
  })
}

/** Reads a whole answer (non-streaming requests). */
async function collect(call: InferenceCall, meter: Meter): Promise<{ text: string; done: DoneFrame }> {
  let text = ''
  let frame: InferenceResponseFrame = call.first
  try {
    for (;;) {
      if (frame.type === 'delta') {
        text += frame.text
        meter.delivered(frame.tokens)
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

/** The request's size in bytes: its declared length, else its JSON again. */
function bodyBytesOf(c: Context, json: unknown): number {
  const declared = Number(requestHeader(c, 'content-length'))
  return Number.isSafeInteger(declared) && declared > 0 ? declared : Buffer.byteLength(JSON.stringify(json))
}

function contextSizeOf(directory: Directory, model: string): number | undefined {
  const sizes = directory
    .nodesServing(model)
    .map((n) => n.capabilities?.models.find((m) => m.id === model)?.contextSize)
    .filter((n): n is number => n != null)
  return sizes.length > 0 ? Math.max(...sizes) : undefined
}
