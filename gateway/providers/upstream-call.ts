// One call to an external provider, up to the point where it has answered: the status and (for a
// stream) its first events, or why it failed — retryable (refused, timeout, reset, 5xx, 429) or an
// answer to pass on with its real status when no candidate is left.
import type { Readable } from 'node:stream'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { errors as undiciErrors } from 'undici'
import { ApiError } from '../errors.ts'
import type { Endpoint } from './catalog.ts'
import type { Provider, UpstreamRequest, UpstreamResponse } from './provider.ts'

export type Failure = {
  /** Short outcome for the route header and logs: refused, timeout, reset, http_500, … */
  outcome: string
  /** The error to answer with when this was the last candidate. */
  error: ApiError
  /** Counted against the candidate (cooled down): the provider, not the request, was at fault. */
  providerFault: boolean
}

/**
 * The client's JSON as sent upstream: `provider` removed, fields only another provider understands
 * dropped, the model under the provider's id. Everything else passes as the client sent it.
 */
export function forwardBody(
  provider: Provider,
  clientBody: Record<string, unknown>,
  upstreamModel: string,
  foreignFields: ReadonlySet<string>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(clientBody)) {
    if (k === 'provider') continue
    if (foreignFields.has(k) && !provider.extraFields.has(k)) continue
    out[k] = v
  }
  out.model = upstreamModel
  return out
}

/** Largest error or JSON body read from an upstream. */
const MAX_JSON_BYTES = 32 * 1024 * 1024

export async function readText(body: Readable, max = MAX_JSON_BYTES): Promise<string> {
  const chunks: Buffer[] = []
  let size = 0
  for await (const chunk of body) {
    size += (chunk as Buffer).length
    if (size > max) {
      body.destroy()
      throw new Error(`upstream body over ${max} bytes`)
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString('utf8')
}

/** A failure to reach or hear from the provider. */
export function transportFailure(provider: Provider, err: unknown, signal?: AbortSignal): Failure {
  const e = err as { code?: string; name?: string }
  let outcome = 'failed'
  if (signal?.aborted) outcome = 'client_closed'
  else if (e.code === 'ECONNREFUSED') outcome = 'refused'
  else if (
    err instanceof undiciErrors.HeadersTimeoutError ||
    err instanceof undiciErrors.BodyTimeoutError ||
    err instanceof undiciErrors.ConnectTimeoutError
  )
    outcome = 'timeout'
  else if (e.code === 'ECONNRESET' || err instanceof undiciErrors.SocketError) outcome = 'reset'
  else if (e.code === 'ENOTFOUND' || e.code === 'EAI_AGAIN') outcome = 'unresolved'
  return {
    outcome,
    providerFault: outcome !== 'client_closed',
    error: new ApiError(
      503,
      `The provider '${provider.name}' is unavailable (${outcome}). Try again later or use another provider.`,
      'service_unavailable_error',
      'provider_unavailable',
    ),
  }
}

/** A 2xx from the provider that is not an answer (not JSON, not a stream, no token): its fault. */
export function badAnswer(provider: Provider, outcome: string, detail: string): Failure {
  return {
    outcome,
    providerFault: true,
    error: new ApiError(
      502,
      `The provider '${provider.name}' answered something that is not a valid answer (${detail}).`,
      'server_error',
      'provider_bad_answer',
    ),
  }
}

/**
 * Reads a whole JSON answer that must hold the list `list` (choices, data, results): the body, or
 * why not — the transport broke (transportFailure), or it is no such answer (badAnswer).
 */
export async function readAnswer(
  provider: Provider,
  res: UpstreamResponse,
  list: string,
  signal?: AbortSignal,
): Promise<{ body: Record<string, unknown> } | { failure: Failure }> {
  let text: string
  try {
    text = await readText(res.body)
  } catch (err) {
    return { failure: transportFailure(provider, err, signal) }
  }
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    return { failure: badAnswer(provider, 'bad_answer', 'not JSON') }
  }
  if (parsed == null || typeof parsed !== 'object' || !Array.isArray((parsed as Record<string, unknown>)[list])) {
    return { failure: badAnswer(provider, 'bad_answer', `no '${list}' list`) }
  }
  return { body: parsed as Record<string, unknown> }
}

/** An upstream answer that is not a success, as the error we would pass on. */
export async function httpFailure(provider: Provider, res: UpstreamResponse): Promise<Failure> {
  let text = ''
  try {
    text = await readText(res.body, 64 * 1024)
  } catch {
    // the status is what matters
  }
  let message = ''
  let code: string | undefined
  let type: string | undefined
  try {
    const body = JSON.parse(text) as { error?: unknown; message?: unknown; detail?: unknown }
    const e = body.error
    if (typeof e === 'string') message = e
    else if (e != null && typeof e === 'object') {
      const o = e as { message?: unknown; code?: unknown; type?: unknown }
      if (typeof o.message === 'string') message = o.message
      if (typeof o.code === 'string') code = o.code
      if (typeof o.type === 'string') type = o.type
    }
    if (message === '' && typeof body.message === 'string') message = body.message
    if (message === '' && typeof body.detail === 'string') message = body.detail
  } catch {
    message = text.slice(0, 200)
  }
  // Never echo anything that might carry our key back to a client.
  if (provider.holdsKey(message)) message = ''
  const detail = message !== '' ? `: ${message.slice(0, 1000)}` : ''
  const status = res.status
  if (status === 401 || status === 403) {
    return {
      outcome: `http_${status}`,
      providerFault: true,
      error: new ApiError(
        502,
        `The provider '${provider.name}' refused this gateway's credentials (${status}).`,
        'server_error',
        'provider_auth_failed',
      ),
    }
  }
  if (status === 429) {
    const err = new ApiError(
      429,
      `The provider '${provider.name}' is rate limiting${detail}`,
      'rate_limit_error',
      code ?? 'rate_limited',
    )
    const retry = res.headers['retry-after']
    if (typeof retry === 'string' && /^[\w ,:+-]{1,64}$/.test(retry)) err.headers['Retry-After'] = retry
    return { outcome: 'http_429', providerFault: true, error: err }
  }
  if (status >= 400 && status < 500) {
    const err = new ApiError(
      status as ApiError['status'],
      `The provider '${provider.name}' rejected the request (${status})${detail}`,
      status === 404 ? 'not_found_error' : ((type as ApiError['type'] | undefined) ?? 'invalid_request_error'),
      code ?? (status === 404 ? 'model_not_found' : 'upstream_rejected'),
    )
    // A 4xx is about the request, not the provider's health: not cooled down.
    return { outcome: `http_${status}`, providerFault: false, error: err }
  }
  return {
    outcome: `http_${status}`,
    providerFault: true,
    error: new ApiError(
      502,
      `The provider '${provider.name}' failed (${status})${detail}`,
      'server_error',
      'provider_error',
    ),
  }
}

/** Sends and classifies: a 2xx response, or a Failure. */
export async function callUpstream(
  provider: Provider,
  endpoint: Endpoint,
  req: UpstreamRequest,
): Promise<{ res: UpstreamResponse } | { failure: Failure }> {
  let res: UpstreamResponse
  try {
    res = await provider.send(endpoint, req)
  } catch (err) {
    return { failure: transportFailure(provider, err, req.signal) }
  }
  if (res.status >= 200 && res.status < 300) return { res }
  return { failure: await httpFailure(provider, res) }
}

/** The server-sent events of a streaming answer, as they arrive. */
export async function* sseEvents(body: Readable): AsyncGenerator<EventSourceMessage, void, undefined> {
  const queue: EventSourceMessage[] = []
  const parser = createParser({ onEvent: (e) => queue.push(e) })
  const decoder = new TextDecoder()
  for await (const chunk of body) {
    parser.feed(decoder.decode(chunk as Buffer, { stream: true }))
    while (queue.length > 0) yield queue.shift() as EventSourceMessage
  }
  parser.feed(decoder.decode())
  while (queue.length > 0) yield queue.shift() as EventSourceMessage
}
