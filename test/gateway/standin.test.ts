// The stand-in upstream (test/helpers/upstream.ts) as the official openai client sees it: every
// endpoint answers the OpenAI shapes, every request is recorded, and scripted behaviors (error
// statuses, hang-ups, delays, streams that die midway, hangs ended by close()) reach the client as a
// real provider's would.
import { createHash } from 'node:crypto'
import { inflateSync } from 'node:zlib'
import OpenAI, {
  APIConnectionError,
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  RateLimitError,
  toFile,
} from 'openai'
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionCreateParamsNonStreaming } from 'openai/resources'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import {
  delayThen,
  isMultipart,
  STANDIN_PNG,
  type StandIn,
  standInEmbedding,
  standInSpeech,
  startStandIn,
} from '../helpers/upstream.ts'

const KEY = 'sk-venice-test-key'
const MODELS = ['llama-3.3-70b', 'bge-m3', 'bge-reranker', 'flux-dev', 'whisper-large-v3', 'tts-kokoro']
const CHAT = '/v1/chat/completions'

let up: StandIn
let client: OpenAI
const extra: StandIn[] = []

beforeAll(async () => {
  up = await startStandIn({ name: 'venice', apiKey: KEY, models: MODELS })
  client = new OpenAI({ apiKey: KEY, baseURL: up.url, maxRetries: 0, timeout: 5_000 })
})
afterEach(async () => {
  up.reset()
  await Promise.all(extra.splice(0).map((s) => s.close()))
})
afterAll(() => up.close())

async function another(options: Partial<Parameters<typeof startStandIn>[0]> = {}): Promise<StandIn> {
  const s = await startStandIn({ name: 'groq', apiKey: KEY, ...options })
  extra.push(s)
  return s
}

async function until(check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 2_000
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 5))
  }
}

const post = (s: StandIn, path: string, body: unknown, key = KEY): Promise<Response> =>
  fetch(`${s.origin}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  })

const ask = { model: 'llama-3.3-70b', messages: [{ role: 'user' as const, content: 'Say hello  to me' }] }

async function collect(stream: AsyncIterable<ChatCompletionChunk>, into: ChatCompletionChunk[]): Promise<void> {
  for await (const chunk of stream) into.push(chunk)
}

describe('chat completions', () => {
  it('answers the words, counts prompt words, echoes venice_parameters, and records the request', async () => {
    const params = {
      ...ask,
      messages: [
        { role: 'system' as const, content: 'Be brief.' },
        { role: 'user' as const, content: [{ type: 'text' as const, text: 'Say hello  to me' }] },
      ],
      venice_parameters: { include_venice_system_prompt: false },
    }
    const answer = await client.chat.completions.create(params as ChatCompletionCreateParamsNonStreaming)
    expect(answer.id).toMatch(/^chatcmpl-/)
    expect(answer.object).toBe('chat.completion')
    expect(answer.model).toBe('llama-3.3-70b')
    expect(answer.choices[0]?.message).toMatchObject({ role: 'assistant', content: 'Hello from venice' })
    expect(answer.choices[0]?.finish_reason).toBe('stop')
    expect(answer.usage).toEqual({ prompt_tokens: 6, completion_tokens: 3, total_tokens: 9 })
    expect((answer as ChatCompletion & { venice_parameters: unknown }).venice_parameters).toEqual({
      include_venice_system_prompt: false,
    })

    expect(up.requests).toHaveLength(1)
    const [seen] = up.requests
    expect(seen?.method).toBe('POST')
    expect(seen?.path).toBe(CHAT)
    expect(seen?.headers.authorization).toBe(`Bearer ${KEY}`)
    expect(seen?.headers['content-type']).toBe('application/json')
    expect(seen?.body).toEqual(params)
    expect(JSON.parse(seen!.raw.toString())).toEqual(params)
    expect(seen?.at).toBeLessThanOrEqual(Date.now())
  })

  it('stops at max_tokens with finish_reason length', async () => {
    const answer = await client.chat.completions.create({ ...ask, max_tokens: 2 })
    expect(answer.choices[0]?.message.content).toBe('Hello from')
    expect(answer.choices[0]?.finish_reason).toBe('length')
    expect(answer.usage?.completion_tokens).toBe(2)
    await expect(client.chat.completions.create({ ...ask, max_tokens: 0 })).rejects.toBeInstanceOf(BadRequestError)
  })

  it('streams a role chunk, one chunk per word, the finish chunk, the usage chunk and [DONE]', async () => {
    const chunks: ChatCompletionChunk[] = []
    await collect(
      await client.chat.completions.create({ ...ask, stream: true, stream_options: { include_usage: true } }),
      chunks,
    )
    expect(chunks.map((c) => c.choices[0]?.delta)).toEqual([
      { role: 'assistant', content: '' },
      { content: 'Hello' },
      { content: ' from' },
      { content: ' venice' },
      {},
      undefined,
    ])
    expect(chunks[4]?.choices[0]?.finish_reason).toBe('stop')
    expect(chunks[5]?.choices).toEqual([])
    expect(chunks[5]?.usage).toEqual({ prompt_tokens: 4, completion_tokens: 3, total_tokens: 7 })
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1)
    expect(up.requests[0]?.body).toMatchObject({ stream: true, stream_options: { include_usage: true } })

    // On the wire: an event stream ending in [DONE]; without include_usage, no usage chunk.
    const res = await post(up, CHAT, { ...ask, stream: true })
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/)
    const text = await res.text()
    const events = text.split('\n\n').filter((e) => e !== '')
    expect(events).toHaveLength(6)
    expect(events.at(-1)).toBe('data: [DONE]')
    expect(text).not.toContain('usage')

    // venice_parameters come back in the first chunk.
    const venice = await (await post(up, CHAT, { ...ask, stream: true, venice_parameters: { a: 1 } })).text()
    expect(JSON.parse(venice.split('\n\n')[0]!.slice('data: '.length))).toMatchObject({ venice_parameters: { a: 1 } })
  })

  it('sends each event as it is made (chunkDelayMs apart)', async () => {
    const slow = await another({ chunkDelayMs: 40, words: ['a', 'b'] })
    const started = Date.now()
    const res = await post(slow, CHAT, { ...ask, stream: true })
    const reader = res.body!.getReader()
    const arrivals: number[] = []
    for (;;) {
      const { done } = await reader.read()
      if (done) break
      arrivals.push(Date.now() - started)
    }
    // role, a, b, finish, [DONE]: 5 events, 4 gaps of 40 ms; the first arrives well before the last.
    expect(arrivals.length).toBeGreaterThanOrEqual(4)
    expect(arrivals.at(-1)! - arrivals[0]!).toBeGreaterThanOrEqual(100)
  })

  it('refuses unknown models (404 model_not_found), wrong keys (401), bad JSON (400) and unknown paths (404)', async () => {
    const missing = await client.chat.completions.create({ ...ask, model: 'gpt-9' }).catch((e: unknown) => e)
    expect(missing).toBeInstanceOf(NotFoundError)
    expect((missing as NotFoundError).code).toBe('model_not_found')
    expect((missing as NotFoundError).error).toMatchObject({ code: 'model_not_found', type: 'invalid_request_error' })

    const stranger = new OpenAI({ apiKey: 'sk-wrong', baseURL: up.url, maxRetries: 0 })
    const denied = await stranger.chat.completions.create(ask).catch((e: unknown) => e)
    expect(denied).toBeInstanceOf(AuthenticationError)
    expect((denied as AuthenticationError).status).toBe(401)
    expect((denied as AuthenticationError).code).toBe('invalid_api_key')

    const badJson = await post(up, CHAT, '{"model":')
    expect(badJson.status).toBe(400)
    expect(((await badJson.json()) as { error: { type: string } }).error.type).toBe('invalid_request_error')

    const nowhere = await post(up, '/v1/completions', { model: 'x', prompt: 'y' })
    expect(nowhere.status).toBe(404)
    expect(await nowhere.json()).toMatchObject({ error: { message: 'Invalid URL (POST /v1/completions)' } })

    // All recorded, refusals included; the bad body as raw bytes only.
    expect(up.requests.map((r) => r.headers.authorization)).toEqual([
      `Bearer ${KEY}`,
      'Bearer sk-wrong',
      `Bearer ${KEY}`,
      `Bearer ${KEY}`,
    ])
    expect(up.requests[2]?.body).toBeUndefined()
    expect(up.requests[2]?.raw.toString()).toBe('{"model":')
  })

  it('accepts any model when none are configured', async () => {
    const open = await another()
    const answer = await new OpenAI({ apiKey: KEY, baseURL: open.url, maxRetries: 0 }).chat.completions.create({
      ...ask,
      model: 'whatever/model',
    })
    expect(answer.choices[0]?.message.content).toBe('Hello from groq')
    expect(answer.model).toBe('whatever/model')
  })
})

describe('other endpoints', () => {
  it('embeddings: deterministic 8-dimension vectors, as base64 (the client default) or floats', async () => {
    const answer = await client.embeddings.create({ model: 'bge-m3', input: ['hello world', 'second text here'] })
    expect(answer.data.map((d) => d.index)).toEqual([0, 1])
    expect(answer.data[0]?.embedding).toEqual(standInEmbedding('hello world'))
    expect(answer.data[1]?.embedding).toEqual(standInEmbedding('second text here'))
    expect(answer.data[0]?.embedding).toHaveLength(8)
    expect(answer.usage).toEqual({ prompt_tokens: 5, total_tokens: 5 })
    expect(up.requests[0]?.body).toMatchObject({ encoding_format: 'base64' })

    const floats = await client.embeddings.create({ model: 'bge-m3', input: 'hello world', encoding_format: 'float' })
    expect(floats.data[0]?.embedding).toEqual(standInEmbedding('hello world'))
    expect(floats.model).toBe('bge-m3')
  })

  it('rerank: scores by shared words, sorted, cut to top_n', async () => {
    const res = await post(up, '/v1/rerank', {
      model: 'bge-reranker',
      query: 'red apple pie',
      documents: ['blue sky', 'apple pie recipe with red apples', 'an apple a day'],
      top_n: 2,
    })
    expect(res.status).toBe(200)
    const body = (await res.json()) as { model: string; results: unknown[]; usage: unknown }
    expect(body.model).toBe('bge-reranker')
    expect(body.results).toEqual([
      { index: 1, relevance_score: 1 },
      { index: 2, relevance_score: 1 / 3 },
    ])
    expect(body.usage).toEqual({ prompt_tokens: 3 + 2 + 6 + 4, total_tokens: 15 })
  })

  it('images: n valid PNGs as b64_json', async () => {
    const answer = await client.images.generate({ model: 'flux-dev', prompt: 'a lighthouse', n: 2, size: '256x256' })
    expect(answer.data).toHaveLength(2)
    const png = Buffer.from(answer.data![0]!.b64_json!, 'base64')
    expect(png.equals(STANDIN_PNG)).toBe(true)
    expect(png.subarray(0, 8).toString('hex')).toBe('89504e470d0a1a0a')
    expect(png.subarray(12, 16).toString('latin1')).toBe('IHDR')
    const [width, height] = [png.readUInt32BE(16), png.readUInt32BE(20)]
    const idatLength = png.readUInt32BE(33)
    expect(png.subarray(37, 41).toString('latin1')).toBe('IDAT')
    expect(inflateSync(png.subarray(41, 41 + idatLength))).toHaveLength(height * (1 + width * 3))
    const linked = await client.images.generate({ model: 'flux-dev', prompt: 'x', response_format: 'url' })
    const served = await fetch(linked.data![0]!.url!)
    expect(served.headers.get('content-type')).toBe('image/png')
    expect(Buffer.from(await served.arrayBuffer()).equals(STANDIN_PNG)).toBe(true)
    await expect(client.images.generate({ model: 'flux-dev', prompt: 'x', n: 5 })).rejects.toBeInstanceOf(
      BadRequestError,
    )
  })

  it('audio transcription: multipart file and fields recorded; a missing file is a 400', async () => {
    const audio = Buffer.from('RIFF....WAVEfmt fake audio bytes')
    const file = await toFile(audio, 'clip.wav', { type: 'audio/wav' })
    const answer = await client.audio.transcriptions.create({ file, model: 'whisper-large-v3', language: 'en' })
    expect(answer.text).toBe(`transcribed clip.wav (${audio.length} bytes)`)
    const body = up.requests[0]?.body
    expect(isMultipart(body)).toBe(true)
    expect(body).toEqual({
      fields: { model: 'whisper-large-v3', language: 'en' },
      files: [
        {
          field: 'file',
          filename: 'clip.wav',
          contentType: 'audio/wav',
          size: audio.length,
          sha256: createHash('sha256').update(audio).digest('hex'),
        },
      ],
    })
    expect(up.requests[0]?.headers['content-type']).toMatch(/^multipart\/form-data; boundary=/)

    const form = new FormData()
    form.append('model', 'whisper-large-v3')
    const res = await fetch(`${up.url}/audio/transcriptions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${KEY}` },
      body: form,
    })
    expect(res.status).toBe(400)
    expect(await res.json()).toMatchObject({ error: { param: 'file' } })
  })

  it('audio speech: 32 KiB derived from the input, chunked, typed by format', async () => {
    const res = await client.audio.speech.create({ model: 'tts-kokoro', input: 'Hello there', voice: 'af_sky' })
    expect(res.headers.get('content-type')).toBe('audio/mpeg')
    expect(res.headers.get('content-length')).toBeNull()
    expect(res.headers.get('transfer-encoding')).toBe('chunked')
    const bytes = Buffer.from(await res.arrayBuffer())
    expect(bytes).toHaveLength(32 * 1024)
    expect(bytes.equals(standInSpeech('Hello there'))).toBe(true)

    const wav = await client.audio.speech.create({
      model: 'tts-kokoro',
      input: 'Hello there',
      voice: 'af_sky',
      response_format: 'wav',
    })
    expect(wav.headers.get('content-type')).toBe('audio/wav')
    await wav.arrayBuffer()
  })

  it('models: the configured list, owned by the provider', async () => {
    const page = await client.models.list()
    expect(page.data.map((m) => m.id)).toEqual(MODELS)
    expect(page.data[0]).toMatchObject({ object: 'model', owned_by: 'venice' })
    expect(up.requests[0]).toMatchObject({ method: 'GET', path: '/v1/models' })
  })
})

describe('behaviors', () => {
  it('queued statuses come in order (429 with Retry-After, 500), then ok; queue() beats always()', async () => {
    up.queue(
      CHAT,
      { kind: 'status', status: 429, headers: { 'Retry-After': '1' } },
      { kind: 'status', status: 500, body: { error: { message: 'boom', type: 'server_error', code: null } } },
    )
    const limited = await client.chat.completions.create(ask).catch((e: unknown) => e)
    expect(limited).toBeInstanceOf(RateLimitError)
    expect((limited as RateLimitError).status).toBe(429)
    expect((limited as RateLimitError).headers.get('retry-after')).toBe('1')
    expect((limited as RateLimitError).code).toBe('rate_limit_exceeded')
    const broken = await client.chat.completions.create(ask).catch((e: unknown) => e)
    expect(broken).toBeInstanceOf(InternalServerError)
    expect((broken as InternalServerError).message).toContain('boom')
    expect((await client.chat.completions.create(ask)).choices[0]?.message.content).toBe('Hello from venice')

    up.always({ kind: 'status', status: 503 })
    up.queue(CHAT, { kind: 'ok' })
    expect((await client.chat.completions.create(ask)).choices[0]?.message.content).toBe('Hello from venice')
    await expect(client.chat.completions.create(ask)).rejects.toMatchObject({ status: 503 })
    await expect(client.models.list()).rejects.toMatchObject({ status: 503 })
    up.always(undefined)
    await client.models.list()
    expect(up.requests).toHaveLength(7)
  })

  it('hangup: the client sees a connection error; a retrying client succeeds on the next try', async () => {
    up.queue(CHAT, { kind: 'hangup' })
    await expect(client.chat.completions.create(ask)).rejects.toBeInstanceOf(APIConnectionError)
    up.queue(CHAT, { kind: 'hangup' })
    const patient = new OpenAI({ apiKey: KEY, baseURL: up.url, maxRetries: 1 })
    expect((await patient.chat.completions.create(ask)).choices[0]?.message.content).toBe('Hello from venice')
    expect(up.requests).toHaveLength(3)
    // The retry is recorded as its own request, with the client's retry count.
    expect(up.requests[2]?.headers['x-stainless-retry-count']).toBe('1')
  })

  it('delay: answers after the wait, then as `then`', async () => {
    up.queue(CHAT, { kind: 'delay', ms: 150 }, delayThen(50, { kind: 'status', status: 400 }))
    const started = Date.now()
    await client.chat.completions.create(ask)
    expect(Date.now() - started).toBeGreaterThanOrEqual(140)
    await expect(client.chat.completions.create(ask)).rejects.toBeInstanceOf(BadRequestError)
  })

  it('die-mid-stream: fewer chunks, then an error (chat stream, speech, a whole answer)', async () => {
    up.queue(CHAT, { kind: 'die-mid-stream', afterChunks: 1 })
    const chunks: ChatCompletionChunk[] = []
    await expect(collect(await client.chat.completions.create({ ...ask, stream: true }), chunks)).rejects.toThrow()
    expect(chunks.map((c) => c.choices[0]?.delta.content)).toEqual(['', 'Hello'])

    up.queue('/v1/audio/speech', { kind: 'die-mid-stream', afterChunks: 2 })
    const res = await post(up, '/v1/audio/speech', { model: 'tts-kokoro', input: 'hi', voice: 'af_sky' })
    expect(res.status).toBe(200)
    const reader = res.body!.getReader()
    let received = 0
    const reading = (async () => {
      for (;;) {
        const { done, value } = await reader.read()
        if (done) return
        received += value.length
      }
    })()
    await expect(reading).rejects.toThrow()
    expect(received).toBe(16 * 1024)

    up.queue(CHAT, { kind: 'die-mid-stream', afterChunks: 0 })
    await expect(client.chat.completions.create(ask)).rejects.toThrow()
    expect(up.requests).toHaveLength(3)
  })

  it('hang: the request waits until close() ends it', async () => {
    const quiet = await another()
    quiet.always({ kind: 'hang' })
    const pending = post(quiet, CHAT, ask).then(
      (r) => r.text(),
      (e: unknown) => e,
    )
    await until(() => quiet.requests.length === 1, 'the request')
    let settled = false
    void pending.then(() => {
      settled = true
    })
    await new Promise((r) => setTimeout(r, 50))
    expect(settled).toBe(false)
    await quiet.close()
    expect(await pending).toBeInstanceOf(Error)
    await quiet.close() // idempotent
    await expect(fetch(`${quiet.url}/models`)).rejects.toThrow()
  })
})
