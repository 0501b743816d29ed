// /v1/images/generations, /v1/audio/transcriptions and /v1/audio/speech: served by the external
// providers that offer them (the mesh's nodes serve text), with OpenAI's request and response
// shapes, failover before anything is answered, and billing per unit for API keys (per image, per
// transcription, per 1,000 characters of speech) or per request with x402.
import { Readable } from 'node:stream'
import type { Hono } from 'hono'
import { z } from 'zod'
import type { AuthVars } from './api-routes.ts'
import { type Answered, tryCandidates } from './attempts.ts'
import type { ChatDeps } from './chat.ts'
import { invalidRequest } from './errors.ts'
import { clientSignal, readJsonObject } from './node-request.ts'
import { parseBody } from './openai.ts'
import { PaidCall } from './paid-call.ts'
import type { Pricing } from './pricing.ts'
import { type Endpoint, PROVIDER_ONLY_FIELDS } from './providers/catalog.ts'
import type { UpstreamResponse } from './providers/provider.ts'
import {
  callUpstream,
  type Failure,
  forwardBody,
  readAnswer,
  readText,
  transportFailure,
} from './providers/upstream-call.ts'
import type { Candidate, RoutePlan } from './routing.ts'

export interface MediaDeps extends ChatDeps {
  pricing: Pricing
}

/** Largest audio file accepted for transcription (OpenAI's limit). */
export const MAX_AUDIO_BYTES = 25 * 1024 * 1024

const provider = z.string().min(1).optional()

const ImagesSchema = z.object({
  model: z.string().min(1, 'must be a non-empty string'),
  prompt: z.string().min(1, 'must be a non-empty string').max(32_000),
  n: z.number().int().min(1).max(4, 'must be at most 4 (images per request)').nullish(),
  size: z
    .string()
    .regex(/^(\d{2,5}x\d{2,5}|auto)$/, 'must be WIDTHxHEIGHT, e.g. 1024x1024')
    .nullish(),
  response_format: z.enum(['url', 'b64_json']).nullish(),
  quality: z.string().max(32).nullish(),
  style: z.string().max(32).nullish(),
  user: z.string().max(256).optional(),
  provider,
})

const SpeechSchema = z.object({
  model: z.string().min(1, 'must be a non-empty string'),
  input: z.string().min(1, 'must be a non-empty string').max(4096, 'must be at most 4096 characters long'),
  voice: z.string().min(1).max(64),
  response_format: z.enum(['mp3', 'opus', 'aac', 'flac', 'wav', 'pcm']).nullish(),
  speed: z.number().min(0.25).max(4).nullish(),
  instructions: z.string().max(4096).nullish(),
  provider,
})

const TranscriptionFields = z.object({
  model: z.string().min(1, 'must be a non-empty string'),
  language: z
    .string()
    .regex(/^[a-z]{2,3}(-[A-Za-z]{2,4})?$/, 'must be an ISO-639 code, e.g. en')
    .optional(),
  prompt: z.string().max(4096).optional(),
  response_format: z.enum(['json', 'text', 'srt', 'verbose_json', 'vtt']).optional(),
  temperature: z.coerce.number().min(0).max(1).optional(),
  provider,
})

type ProviderCandidate = Extract<Candidate, { kind: 'provider' }>

/** Sends to the plan's providers in turn until one gives an answer `read` accepts. */
function sendToProviders<T>(
  deps: MediaDeps,
  plan: RoutePlan,
  model: string,
  endpoint: Endpoint,
  signal: AbortSignal,
  build: (candidate: ProviderCandidate) => Promise<{ body: string | Buffer; contentType: string }>,
  read: (candidate: ProviderCandidate, res: UpstreamResponse) => Promise<{ value: T } | { failure: Failure }>,
): Promise<Answered<T>> {
  return tryCandidates<T>(deps.routing, plan, model, signal, async ({ candidate }) => {
    // These endpoints have no mesh candidates (plan() gives none).
    if (candidate.kind === 'node') return { nodeOutcome: 'unsupported' }
    const req = await build(candidate)
    const sent = await callUpstream(candidate.upstream, endpoint, { ...req, signal })
    if ('failure' in sent) return sent
    return read(candidate, sent.res)
  })
}

const jsonFor =
  (json: Record<string, unknown>) =>
  async (candidate: ProviderCandidate): Promise<{ body: string; contentType: string }> => ({
    body: JSON.stringify(forwardBody(candidate.upstream, json, candidate.upstreamModel, PROVIDER_ONLY_FIELDS)),
    contentType: 'application/json',
  })

export function mediaRoutes(app: Hono<AuthVars>, deps: MediaDeps): void {
  app.post('/v1/images/generations', async (c) => {
    const json = await readJsonObject(c)
    const req = parseBody(ImagesSchema, json)
    const n = req.n ?? 1
    const plan = deps.routing.plan(req.model, 'images', req.provider)
    const call = await PaidCall.open(c, deps, 'images', req.model, BigInt(n) * deps.pricing.units.image, 'img')
    const signal = clientSignal(c)
    let answer: Answered<Record<string, unknown>>
    try {
      answer = await sendToProviders(deps, plan, req.model, 'images', signal, jsonFor(json), async (candidate, res) => {
        const read = await readAnswer(candidate.upstream, res, 'data', signal)
        return 'failure' in read ? read : { value: read.body }
      })
    } catch (err) {
      await call.release()
      throw err
    }
    try {
      const body = answer.value
      const images = Math.min((body.data as unknown[]).length, n)
      await call.answered(plan, answer)
      // x402: paid before it is charged or counted (a payment that failed gets a 402 and costs nothing).
      await call.settledHeaders('/v1/images/generations')
      await call.meter?.finishProvider(
        { promptTokens: 0, completionTokens: 0 },
        BigInt(images) * deps.pricing.units.image,
      )
      deps.routing.success(answer.scored.candidate, req.model, { ttftMs: performance.now() - answer.t0 })
      call.complete({ provider: answer.scored.candidate.provider }, { promptTokens: 0, completionTokens: 0 }, 0)
      return c.json(body)
    } finally {
      answer.end()
      await call.release()
    }
  })

  app.post('/v1/audio/speech', async (c) => {
    const json = await readJsonObject(c)
    const req = parseBody(SpeechSchema, json)
    const plan = deps.routing.plan(req.model, 'speech', req.provider)
    const cost = deps.pricing.speechCost(req.input.length)
    const call = await PaidCall.open(c, deps, 'speech', req.model, cost, 'speech')
    const signal = clientSignal(c)
    let answer: Answered<UpstreamResponse>
    try {
      // The audio streams back as it comes: the answer is the response itself.
      answer = await sendToProviders(deps, plan, req.model, 'speech', signal, jsonFor(json), async (_, res) => ({
        value: res,
      }))
      await call.answered(plan, answer)
      // The provider took the work: it is charged now (its price depends only on the input).
      await call.meter?.finishProvider({ promptTokens: 0, completionTokens: 0 }, cost)
    } catch (err) {
      await call.release()
      throw err
    }
    const ttft = performance.now() - answer.t0
    const res = answer.value
    const ended = (ok: boolean): void => {
      answer.end()
      if (!ok) return
      deps.routing.success(answer.scored.candidate, req.model, { ttftMs: ttft })
      call.complete({ provider: answer.scored.candidate.provider }, { promptTokens: 0, completionTokens: 0 }, ttft)
    }
    res.body.once('end', () => ended(true))
    res.body.once('error', () => ended(false))
    res.body.once('close', () => answer.end())
    const type = res.headers['content-type']
    // The audio streams back as it arrives.
    return c.body(Readable.toWeb(res.body) as ReadableStream<Uint8Array>, 200, {
      'content-type': typeof type === 'string' ? type : 'application/octet-stream',
    })
  })

  app.post('/v1/audio/transcriptions', async (c) => {
    const type = c.req.header('content-type') ?? ''
    if (!type.startsWith('multipart/form-data')) {
      throw invalidRequest('Send the audio as multipart/form-data with a `file` and a `model`.', 'file')
    }
    let form: FormData
    try {
      form = await c.req.formData()
    } catch {
      throw invalidRequest('The multipart body could not be read.', 'file')
    }
    const file = form.get('file')
    if (!(file instanceof Blob) || file.size === 0)
      throw invalidRequest("'file' is required: the audio to transcribe.", 'file')
    if (file.size > MAX_AUDIO_BYTES) {
      throw invalidRequest(`The audio file exceeds ${MAX_AUDIO_BYTES} bytes.`, 'file', 'file_too_large')
    }
    const fields: Record<string, string> = {}
    form.forEach((v, k) => {
      if (typeof v === 'string') fields[k] = v
    })
    const req = parseBody(TranscriptionFields, fields)
    const plan = deps.routing.plan(req.model, 'transcriptions', req.provider)
    const cost = deps.pricing.units.transcription
    const call = await PaidCall.open(c, deps, 'transcriptions', req.model, cost, 'stt')
    const signal = clientSignal(c)
    const name = (file as File).name || 'audio'
    let answer: Answered<{ text: string; type: string }>
    try {
      answer = await sendToProviders(
        deps,
        plan,
        req.model,
        'transcriptions',
        signal,
        async (candidate) => {
          const out = new FormData()
          for (const [k, v] of Object.entries(fields)) if (k !== 'provider' && k !== 'model') out.append(k, v)
          out.append('model', candidate.upstreamModel)
          out.append('file', file, name)
          // Serialized by the platform's own multipart encoder (boundary included).
          const encoded = new Response(out)
          return {
            body: Buffer.from(await encoded.arrayBuffer()),
            contentType: encoded.headers.get('content-type') ?? 'multipart/form-data',
          }
        },
        async (candidate, res) => {
          // JSON or text (srt, vtt, text), as the format asked: passed on with its type.
          try {
            const type = res.headers['content-type']
            return {
              value: { text: await readText(res.body), type: typeof type === 'string' ? type : 'application/json' },
            }
          } catch (err) {
            return { failure: transportFailure(candidate.upstream, err, signal) }
          }
        },
      )
    } catch (err) {
      await call.release()
      throw err
    }
    try {
      await call.answered(plan, answer)
      await call.settledHeaders('/v1/audio/transcriptions')
      await call.meter?.finishProvider({ promptTokens: 0, completionTokens: 0 }, cost)
      deps.routing.success(answer.scored.candidate, req.model, { ttftMs: performance.now() - answer.t0 })
      call.complete({ provider: answer.scored.candidate.provider }, { promptTokens: 0, completionTokens: 0 }, 0)
      return c.body(answer.value.text, 200, { 'content-type': answer.value.type })
    } finally {
      answer.end()
      await call.release()
    }
  })
}
