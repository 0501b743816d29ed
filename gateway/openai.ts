// The OpenAI wire format for chat completions: the request schema (with field-precise errors),
// and the builders of the non-streaming body and the streaming chunks.
import { randomUUID } from 'node:crypto'
import { z } from 'zod'
import type { FinishReason, Sampling, Usage, WireChatMessage } from '../protocols/index.ts'
import { invalidRequest } from './errors.ts'

const TextPart = z.object({ type: z.literal('text'), text: z.string() })
/** Any other part (image_url, input_audio, file, …): passed on to providers, which understand them. */
const OtherPart = z.looseObject({ type: z.string().min(1).max(64) })

const Content = z.union([z.string(), z.array(z.union([TextPart, OtherPart])).min(1)])

const Message = z.looseObject({
  role: z.enum(['system', 'developer', 'user', 'assistant', 'tool']),
  content: Content.nullish(),
  name: z.string().optional(),
  /** An assistant's calls to tools (providers only). */
  tool_calls: z.array(z.unknown()).max(128).optional(),
  tool_call_id: z.string().max(256).optional(),
})

export const ChatCompletionRequestSchema = z.object({
  model: z.string().min(1, 'must be a non-empty string'),
  messages: z.array(Message).min(1, 'must contain at least one message'),
  stream: z.boolean().optional(),
  stream_options: z.object({ include_usage: z.boolean().optional() }).nullish(),
  temperature: z.number().min(0).max(2).nullish(),
  top_p: z.number().min(0).max(1).nullish(),
  max_tokens: z.number().int().min(1).nullish(),
  max_completion_tokens: z.number().int().min(1).nullish(),
  stop: z.union([z.string().min(1), z.array(z.string().min(1)).max(16)]).nullish(),
  seed: z.number().int().min(0).max(0xffffffff).nullish(),
  n: z.literal(1, 'only n = 1 is supported').nullish(),
  provider: z.string().min(1).optional(),
  user: z.string().optional(),
  /** Tools and structured output: providers only (the mesh's nodes generate plain text). */
  tools: z.array(z.unknown()).max(512).optional(),
  tool_choice: z.unknown().optional(),
  response_format: z.looseObject({ type: z.string() }).nullish(),
})
export type ChatCompletionRequest = z.infer<typeof ChatCompletionRequestSchema>

/** Parses a JSON body with `schema`, or throws a 400 naming the first bad field. */
export function parseBody<T extends z.ZodType>(schema: T, body: unknown): z.infer<T> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw invalidRequest('The request body must be a JSON object.')
  }
  const parsed = schema.safeParse(body)
  if (!parsed.success) {
    const issue = parsed.error.issues[0]
    const path = issue?.path.map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`)).join('') ?? ''
    const param = path.replace(/^\./, '')
    const missing = issue?.code === 'invalid_type' && (issue as { input?: unknown }).input === undefined
    const message = missing ? `'${param}' is required.` : `Invalid '${param}': ${issue?.message ?? 'invalid value'}.`
    throw invalidRequest(message, param || null)
  }
  return parsed.data
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
