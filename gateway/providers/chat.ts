// A chat completion served by an external provider: the client's request passed on (its model
// mapped to the provider's id, `provider` removed, fields only another provider understands
// dropped), and the answer passed back as it came — the JSON body, or the event stream event by
// event as it arrives. Usage comes from the provider (a stream is asked for it); when the
// provider sends none it is counted by us.
import type { Readable } from 'node:stream'
import type { EventSourceMessage } from 'eventsource-parser'
import type { Usage } from '../../protocols/index.ts'
import type { Provider } from './provider.ts'
import {
  badAnswer,
  callUpstream,
  type Failure,
  forwardBody,
  readAnswer,
  sseEvents,
  transportFailure,
} from './upstream-call.ts'

export type ProviderChatAnswer =
  | { stream: false; body: Record<string, unknown>; usage: Usage | undefined; content: string }
  | {
      stream: true
      /** Events received up to and including the first that carries a token (sent to the client first). */
      held: EventSourceMessage[]
      rest: AsyncGenerator<EventSourceMessage, void, undefined>
      body: Readable
    }

/** The body sent upstream for a chat: forwardBody, and a stream asks for usage (to bill it). */
export function upstreamChatBody(
  provider: Provider,
  clientBody: Record<string, unknown>,
  upstreamModel: string,
  foreignFields: ReadonlySet<string>,
): Record<string, unknown> {
  const out = forwardBody(provider, clientBody, upstreamModel, foreignFields)
  if (clientBody.stream === true) {
    const opts = clientBody.stream_options
    out.stream_options = { ...(opts != null && typeof opts === 'object' ? opts : {}), include_usage: true }
  }
  return out
}

/** Whether an event of a chat stream carries something of the answer (content, a tool call, the end). */
export function carriesToken(data: unknown): boolean {
  const choices = (data as { choices?: unknown })?.choices
  if (!Array.isArray(choices)) return false
  for (const c of choices) {
    const ch = c as { delta?: Record<string, unknown>; finish_reason?: unknown }
    if (ch.finish_reason != null) return true
    const d = ch.delta
    if (d == null) continue
    if (typeof d.content === 'string' && d.content.length > 0) return true
    if (d.tool_calls != null || (typeof d.reasoning_content === 'string' && d.reasoning_content.length > 0)) return true
  }
  return false
}

export function parseEvent(e: EventSourceMessage): unknown {
  if (e.data === '[DONE]') return undefined
  try {
    return JSON.parse(e.data)
  } catch {
    return undefined
  }
}

export function usageOf(body: unknown): Usage | undefined {
  const u = (body as { usage?: { prompt_tokens?: unknown; completion_tokens?: unknown } } | null)?.usage
  if (u == null || typeof u.prompt_tokens !== 'number' || typeof u.completion_tokens !== 'number') return undefined
  if (!Number.isSafeInteger(u.prompt_tokens) || !Number.isSafeInteger(u.completion_tokens)) return undefined
  if (u.prompt_tokens < 0 || u.completion_tokens < 0) return undefined
  return { promptTokens: u.prompt_tokens, completionTokens: u.completion_tokens }
}

/** The text of a chunk's or a message's choices (what we count when the provider sends no usage). */
export function contentOf(body: unknown): string {
  const choices = (body as { choices?: unknown })?.choices
  if (!Array.isArray(choices)) return ''
  let text = ''
  for (const c of choices) {
    const ch = c as { delta?: { content?: unknown }; message?: { content?: unknown } }
    const content = ch.delta?.content ?? ch.message?.content
    if (typeof content === 'string') text += content
  }
  return text
}

/**
 * Opens the chat upstream and waits until it has answered: the whole JSON body, or the stream's
 * first event carrying a token. Anything before that is a Failure the caller may fail over from.
 */
export async function openProviderChat(
  provider: Provider,
  body: Record<string, unknown>,
  signal: AbortSignal,
): Promise<{ answer: ProviderChatAnswer } | { failure: Failure }> {
  const stream = body.stream === true
  const sent = await callUpstream(provider, 'chat', {
    body: JSON.stringify(body),
    contentType: 'application/json',
    accept: stream ? 'text/event-stream' : 'application/json',
    signal,
  })
  if ('failure' in sent) return sent
  const { res } = sent
  const bad = (what: string): { failure: Failure } => {
    res.body.destroy()
    if (signal.aborted) return { failure: transportFailure(provider, new Error(what), signal) }
    return { failure: badAnswer(provider, what, what.replaceAll('_', ' ')) }
  }
  if (!stream) {
    const read = await readAnswer(provider, res, 'choices', signal)
    if ('failure' in read) return read
    return {
      answer: { stream: false, body: read.body, usage: usageOf(read.body), content: contentOf(read.body) },
    }
  }
  const type = String(res.headers['content-type'] ?? '')
  if (!type.startsWith('text/event-stream')) return bad('not_a_stream')
  const events = sseEvents(res.body)
  const held: EventSourceMessage[] = []
  try {
    for (;;) {
      const next = await events.next()
      if (next.done) return bad('ended_before_answer')
      held.push(next.value)
      if (next.value.data === '[DONE]') return { answer: { stream: true, held, rest: events, body: res.body } }
      if (carriesToken(parseEvent(next.value))) return { answer: { stream: true, held, rest: events, body: res.body } }
      if (held.length > 64) return bad('no_token')
    }
  } catch (err) {
    res.body.destroy()
    return { failure: transportFailure(provider, err, signal) }
  }
}
