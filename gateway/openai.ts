// The OpenAI wire format for chat completions: the request schema (with field-precise errors),
// and the builders of the non-streaming body and the streaming chunks.
import { randomUUID } from 'node:crypto'
import { z } from 'zod'
import { type FinishReason, type Sampling, type Usage, WIRE_LIMITS, type WireChatMessage } from '../protocols/index.ts'
import { invalidRequest, parseFields } from './errors.ts'

/**
 * A content part: a text part with its text, or any other kind (image_url, input_audio, file, …),
 * passed on to providers, which understand them.
 */
const Part = z.looseObject({ type: z.string().min(1).max(64), text: z.unknown().optional() }).superRefine((p, ctx) => {
  if (p.type === 'text' && typeof p.text !== 'string') {
    ctx.addIssue({ code: 'custom', path: ['text'], message: p.text === undefined ? 'is required' : 'must be a string' })
  }
})

const Content = z.union([z.string(), z.array(Part).min(1)], 'must be a string or an array of content parts')

/**
 * The wire's limits (protocols/schemas.ts: ChatMessageSchema, InferenceRequestFrameSchema, SamplingSchema),
 * checked here so that a client hears them by field name rather than as a node's refusal.
 */
export const MAX_MESSAGES = WIRE_LIMITS.messages
export const MAX_CONTENT_CHARS = WIRE_LIMITS.contentChars
const MAX_TOKENS = WIRE_LIMITS.maxTokens
const MAX_STOP_CHARS = WIRE_LIMITS.stopChars

/** Characters of a message's text, as the wire carries it (text parts joined). */
const textLength = (content: z.infer<typeof Content>): number =>
  typeof content === 'string'
    ? content.length
    : content.reduce((n, p) => n + ('text' in p && typeof p.text === 'string' ? p.text.length : 0), 0)

/**
 * One message, as OpenAI takes it: content is required, except on an assistant message that has
 * tool_calls (then it may be null or absent); a tool message names the call it answers.
 */
const Message = z
  .looseObject({
    role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
    content: Content.nullish(),
    name: z.string().optional(),
    /** An assistant's calls to tools (providers only). */
    tool_calls: z.array(z.unknown()).max(128).optional(),
    tool_call_id: z.string().max(256).optional(),
  })
  .superRefine((m, ctx) => {
    if (m.content == null) {
      if (m.role === 'assistant' && m.tool_calls != null && m.tool_calls.length > 0) return
      const message =
        m.role === 'assistant'
          ? 'is required unless the message has tool_calls'
          : m.content === null
            ? `must be a string or an array of content parts (null only on an assistant message with tool_calls)`
            : 'is required'
      ctx.addIssue({ code: 'custom', path: ['content'], message })
    } else if (textLength(m.content) > MAX_CONTENT_CHARS) {
      ctx.addIssue({
        code: 'custom',
        path: ['content'],
        message: `must be at most ${MAX_CONTENT_CHARS} characters long`,
      })
    }
    if (m.role === 'tool' && m.tool_call_id == null) {
      ctx.addIssue({ code: 'custom', path: ['tool_call_id'], message: 'is required on a tool message' })
    }
  })

export const ChatCompletionRequestSchema = z
  .object({
    model: z.string().min(1, 'must be a non-empty string'),
    messages: z
      .array(Message)
      .min(1, 'must contain at least one message')
      .max(MAX_MESSAGES, `must contain at most ${MAX_MESSAGES} messages`),
    stream: z.boolean().optional(),
    stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
    temperature: z.number().min(0).max(2).nullish(),
    top_p: z.number().min(0).max(1).nullish(),
    max_tokens: z.number().int().min(1).max(MAX_TOKENS).nullish(),
    max_completion_tokens: z.number().int().min(1).max(MAX_TOKENS).nullish(),
    stop: z
      .union(
        [
          z.string().min(1).max(MAX_STOP_CHARS),
          z.array(z.string().min(1).max(MAX_STOP_CHARS)).max(16, 'must have at most 16 stop sequences'),
        ],
        `must be a string or an array of up to 16 strings, each of 1 to ${MAX_STOP_CHARS} characters`,
      )
      .nullish(),
    seed: z.number().int().min(0).max(0xffffffff).nullish(),
    n: z.literal(1, 'must be 1 (only one choice is supported)').nullish(),
    provider: z.string().min(1).optional(),
    user: z.string().optional(),
    /** Tools and structured output: providers only (the mesh's nodes generate plain text). */
    tools: z.array(z.unknown()).max(512).optional(),
    tool_choice: z.unknown().optional(),
    response_format: z.looseObject({ type: z.string() }).nullish(),
  })
  // Both go to a provider as sent, and the hold is taken on one: two different limits are refused.
  .refine((r) => r.max_tokens == null || r.max_completion_tokens == null || r.max_tokens === r.max_completion_tokens, {
    path: ['max_completion_tokens'],
    message: "must equal 'max_tokens' when both are given (give one of them)",
  })
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>

/** Parses a JSON body with `schema`, or throws a 400 naming the first bad field (errors.ts parseFields). */
export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw invalidRequest('The request body must be a JSON object.')
  }
  return parseFields(schema, body)
}

/** Parses a JSON body into a chat request, or throws a 400 naming the first bad field. */
export function parseChatRequest(body: unknown): ChatCompletionRequest {
  return parseBody(ChatCompletionRequestSchema, body)
}

/**
 * Why a mesh node cannot serve this request (nodes take plain-text chats), or undefined when one can:
 * tools, structured output, tool messages, or content parts other than text go to providers only.
 */
export function meshUnsupported(req: ChatCompletionRequest): string | undefined {
  if (req.tools != null && req.tools.length > 0) return 'tools'
  if (req.tool_choice != null && req.tool_choice !== 'none') return 'tool_choice'
  if (req.response_format != null && req.response_format.type !== 'text') return 'response_format'
  for (const m of req.messages) {
    if (m.role === 'tool' || (m.tool_calls != null && m.tool_calls.length > 0)) return 'tool messages'
    if (Array.isArray(m.content) && m.content.some((p) => p.type !== 'text')) return 'non-text content parts'
  }
  return undefined
}

/** Flattens OpenAI messages to the wire's plain-text messages (for a request meshUnsupported() accepts). */
export function toWireMessages(messages: ChatCompletionRequest['messages']): WireChatMessage[] {
  return messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role === 'tool' ? 'user' : m.role,
    content:
      m.content == null
        ? ''
        : typeof m.content === 'string'
          ? m.content
          : m.content.map((p) => ('text' in p && typeof p.text === 'string' ? p.text : '')).join(''),
  }))
}

export function toSampling(req: ChatCompletionRequest): Sampling {
  const stop = req.stop == null ? undefined : typeof req.stop === 'string' ? [req.stop] : req.stop
  const maxTokens = req.max_completion_tokens ?? req.max_tokens
  return {
    ...(maxTokens != null ? { maxTokens } : {}),
    ...(req.temperature != null ? { temperature: req.temperature } : {}),
    // top_p = 0 means "only the most likely token"; the wire requires > 0.
    ...(req.top_p != null ? { topP: Math.max(req.top_p, 1e-6) } : {}),
    ...(stop != null && stop.length > 0 ? { stop } : {}),
    ...(req.seed != null ? { seed: req.seed } : {}),
  }
}

export function newCompletionId(): string {
  // randomUUID draws from a cached pool; randomBytes asks the OS every call (~20 µs on the request path).
  return `chatcmpl-${randomUUID().replaceAll('-', '')}`
}

export interface CompletionMeta {
  id: string
  created: number
  model: string
}

const openAIFinish = (f: FinishReason): 'stop' | 'length' => (f === 'length' ? 'length' : 'stop')

export function usageBody(u: Usage): { prompt_tokens: number; completion_tokens: number; total_tokens: number } {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
  }
}

export function completionBody(meta: CompletionMeta, content: string, finish: FinishReason, usage: Usage) {
  return {
    id: meta.id,
    object: 'chat.completion' as const,
    created: meta.created,
    model: meta.model,
    choices: [
      {
        index: 0,
        message: { role: 'assistant' as const, content },
        logprobs: null,
        finish_reason: openAIFinish(finish),
      },
    ],
    usage: usageBody(usage),
  }
}

type Delta = { role?: 'assistant'; content?: string }

export function chunkBody(
  meta: CompletionMeta,
  delta: Delta,
  finish: FinishReason | null,
  includeUsage: boolean,
): Record<string, unknown> {
  return {
    id: meta.id,
    object: 'chat.completion.chunk',
    created: meta.created,
    model: meta.model,
    choices: [{ index: 0, delta, logprobs: null, finish_reason: finish == null ? null : openAIFinish(finish) }],
    ...(includeUsage ? { usage: null } : {}),
  }
}

export function usageChunkBody(meta: CompletionMeta, usage: Usage): Record<string, unknown> {
  return {
    id: meta.id,
    object: 'chat.completion.chunk',
    created: meta.created,
    model: meta.model,
    choices: [],
    usage: usageBody(usage),
  }
}
