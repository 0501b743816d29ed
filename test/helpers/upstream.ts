// A stand-in for an OpenAI-compatible provider (Venice, Groq, Together, …) in tests: a node:http
// server on 127.0.0.1 that answers the OpenAI shapes deterministically and records every request it
// receives. Tests script failures per path (queue) or for every request (always): an error status,
// a hang, a hang-up, a delay, or a stream that dies midway.
//
// Order of a request: the body is read in full and the request recorded; then the next behavior for
// its path is taken (queue, else always, else 'ok') — whatever the authorization, so a queued 429 is
// answered even to a wrong key; 'ok' checks the key (401), the route (404), the body (400) and the
// model (404 model_not_found), then answers.
import { createHash, randomBytes, randomUUID } from 'node:crypto'
import { once } from 'node:events'
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { deflateSync } from 'node:zlib'
import busboy from 'busboy'

export interface RecordedFile {
  field: string
  filename: string
  contentType: string
  size: number
  sha256: string
}

/** A multipart/form-data body as recorded: text fields, and each file part's name, type, size and hash. */
export interface MultipartBody {
  fields: Record<string, string>
  files: RecordedFile[]
}

export interface RecordedRequest {
  method: string
  /** The request target, query included. */
  path: string
  /** Lower-case names; repeated headers joined with ', '. */
  headers: Record<string, string>
  /** Parsed JSON, a MultipartBody for multipart/form-data, or undefined (no body, or one that did not parse). */
  body: unknown
  raw: Buffer
  /** Date.now() when the request arrived (its headers, before the body was read). */
  at: number
}

export type Behavior =
  /** The default answer for the path. */
  | { kind: 'ok' }
  /** This status; body: an object (JSON), a string (text/plain) or bytes; default an OpenAI-shaped error. */
  | { kind: 'status'; status: number; body?: unknown; headers?: Record<string, string> }
  /** Accept the request and never answer (until close() or the client leaves). */
  | { kind: 'hang' }
  /** Destroy the socket without any response. */
  | { kind: 'hangup' }
  /** Wait, then behave as `then` (default 'ok'). */
  | { kind: 'delay'; ms: number; then?: Behavior }
  /**
   * Answer as 'ok' but destroy the socket after `afterChunks` content chunks: streamed chat sends its
   * role chunk and that many word chunks; speech that many audio chunks; a whole (JSON) answer sends
   * its headers and half its body.
   */
  | { kind: 'die-mid-stream'; afterChunks: number }

export interface StandInOptions {
  /** Appears in default answers, e.g. "Hello from venice", and as owned_by in /v1/models. */
  name: string
  /** Required as "Authorization: Bearer <apiKey>"; anything else → 401 (OpenAI-shaped error). */
  apiKey: string
  /** Served by GET /v1/models; a request for another model → 404 model_not_found. Default: any model accepted (and an empty list). */
  models?: string[]
  /** The content of chat answers, one streamed chunk each; default ['Hello', 'from', name]. */
  words?: string[]
  /** Between streamed chunks (chat events, speech chunks); default 0. */
  chunkDelayMs?: number
  /** Include usage in answers (stream: a usage chunk when stream_options.include_usage); default true. */
  usage?: boolean
}

export interface StandIn {
  /** Base URL including /v1, e.g. http://127.0.0.1:PORT/v1 */
  url: string
  /** http://127.0.0.1:PORT */
  origin: string
  /** Every request received, in order (of their bodies completing), including ones answered with errors. */
  requests: RecordedRequest[]
  /** The recorded requests whose path (without query) is `path`. */
  requestsTo(path: string): RecordedRequest[]
  /** Behaviors for the next requests to `path` (e.g. '/v1/chat/completions', no query), used once each in order; after the queue, 'ok'. */
  queue(path: string, ...behaviors: Behavior[]): void
  /** Behavior for every request (until cleared with undefined); queue() entries win. */
  always(behavior: Behavior | undefined): void
  /** Forgets the recorded requests, the queues and the always() behavior. */
  reset(): void
  /** Closes the server and destroys open sockets (hanging requests too). Idempotent. */
  close(): Promise<void>
}

const OK: Behavior = { kind: 'ok' }
const EMBEDDING_DIMENSIONS = 8
const SPEECH_CHUNK_BYTES = 8 * 1024
const SPEECH_CHUNKS = 4
/** Where a response_format 'url' image is served (no key needed, as a provider's signed URL). */
export const STANDIN_IMAGE_PATH = '/files/standin.png'

const SPEECH_TYPES: Record<string, string> = {
  mp3: 'audio/mpeg',
  opus: 'audio/ogg',
  aac: 'audio/aac',
  flac: 'audio/flac',
  wav: 'audio/wav',
  pcm: 'audio/pcm',
}

/**
 * { kind: 'delay', ms, then }, built here so that callers need no object literal with a `then`
 * property (biome's noThenProperty would flag each one).
 */
export function delayThen(ms: number, then: Behavior): Behavior {
  return { kind: 'delay', ms, then }
}

/** Whitespace-separated words in a text (the stand-in's token count). */
export const countWords = (text: string): number => text.split(/\s+/).filter((w) => w !== '').length

/** The embedding the stand-in answers for `text`: from its sha256 (chained for more dimensions), values in [-1, 1). */
export function standInEmbedding(text: string, dimensions = EMBEDDING_DIMENSIONS): number[] {
  const out: number[] = []
  let block = createHash('sha256').update(text).digest()
  while (out.length < dimensions) {
    for (const byte of block) {
      if (out.length === dimensions) break
      // Multiples of 1/128: exact in float32, so the base64 encoding decodes to the same numbers.
      out.push((byte - 128) / 128)
    }
    block = createHash('sha256').update(block).digest()
  }
  return out
}

/** The audio bytes the stand-in answers for `input` (4 chunks of 8 KiB, sha256 chained from the input). */
export function standInSpeech(input: string): Buffer {
  const blocks: Buffer[] = []
  let block = createHash('sha256').update(input).digest()
  for (let size = 0; size < SPEECH_CHUNKS * SPEECH_CHUNK_BYTES; size += block.length) {
    blocks.push(block)
    block = createHash('sha256').update(block).digest()
  }
  return Buffer.concat(blocks)
}

/** A valid 4×4 RGB PNG (every generated image). */
export const STANDIN_PNG: Buffer = makePng(4, 4, [0x33, 0x99, 0xcc])

function makePng(width: number, height: number, rgb: [number, number, number]): Buffer {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1
    return c >>> 0
  })
  const crc32 = (data: Buffer): number => {
    let c = 0xffffffff
    for (const byte of data) c = crcTable[(c ^ byte) & 0xff]! ^ (c >>> 8)
    return (c ^ 0xffffffff) >>> 0
  }
  const chunk = (type: string, data: Buffer): Buffer => {
    const length = Buffer.alloc(4)
    length.writeUInt32BE(data.length)
    const typed = Buffer.concat([Buffer.from(type, 'latin1'), data])
    const crc = Buffer.alloc(4)
    crc.writeUInt32BE(crc32(typed))
    return Buffer.concat([length, typed, crc])
  }
  const header = Buffer.alloc(13)
  header.writeUInt32BE(width, 0)
  header.writeUInt32BE(height, 4)
  header.set([8, 2, 0, 0, 0], 8) // 8-bit, truecolour, deflate, no filter method, no interlace
  const row = Buffer.concat([Buffer.from([0]), Buffer.from(Array.from({ length: width }, () => rgb).flat())])
  const pixels = Buffer.concat(Array.from({ length: height }, () => row))
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', deflateSync(pixels)),
    chunk('IEND', Buffer.alloc(0)),
  ])
}

/** The exchange being answered. */
interface Exchange {
  req: IncomingMessage
  res: ServerResponse
  record: RecordedRequest
  pathname: string
  /** Why the body could not be parsed (answered 400 once the key and route are checked). */
  bodyError: string | undefined
  /** Aborted when the response closes (answered, or the socket ended by the client or close()). */
  signal: AbortSignal
  /** die-mid-stream: content chunks to send before the socket is destroyed. */
  dieAfter: number | undefined
}

type Json = Record<string, unknown>

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v)

export const isMultipart = (body: unknown): body is MultipartBody =>
  isObject(body) && isObject(body.fields) && Array.isArray(body.files)

function flatHeaders(headers: IncomingHttpHeaders): Record<string, string> {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : value
  }
  return out
}

function parseMultipart(contentType: string, raw: Buffer): Promise<MultipartBody> {
  return new Promise((resolve, reject) => {
    const fields: Record<string, string> = {}
    const files: RecordedFile[] = []
    const reading: Promise<void>[] = []
    const parser = busboy({ headers: { 'content-type': contentType } })
    parser.on('field', (name, value) => {
      fields[name] = value
    })
    parser.on('file', (field, stream, info) => {
      const hash = createHash('sha256')
      const file: RecordedFile = {
        field,
        filename: info.filename ?? '',
        contentType: info.mimeType,
        size: 0,
        sha256: '',
      }
      files.push(file)
      reading.push(
        new Promise((done, fail) => {
          stream.on('data', (chunk: Buffer) => {
            file.size += chunk.length
            hash.update(chunk)
          })
          stream.on('end', () => {
            file.sha256 = hash.digest('hex')
            done()
          })
          stream.on('error', fail)
        }),
      )
    })
    parser.on('error', reject)
    parser.on('close', () => {
      Promise.all(reading).then(() => resolve({ fields, files }), reject)
    })
    parser.end(raw)
  })
}

async function parseBody(
  contentType: string | undefined,
  raw: Buffer,
): Promise<{ body: unknown; error: string | undefined }> {
  if (raw.length === 0) return { body: undefined, error: undefined }
  if (contentType != null && /^multipart\/form-data/i.test(contentType)) {
    try {
      return { body: await parseMultipart(contentType, raw), error: undefined }
    } catch (err) {
      return { body: undefined, error: `The multipart body could not be parsed: ${(err as Error).message}` }
    }
  }
  try {
    return { body: JSON.parse(raw.toString('utf8')) as unknown, error: undefined }
  } catch {
    return {
      body: undefined,
      error:
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
    }
  }
}

/** Resolves true after `ms`, or false as soon as `signal` aborts. */
function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  if (signal.aborted) return Promise.resolve(false)
  return new Promise((resolve) => {
    const onAbort = () => {
      clearTimeout(timer)
      resolve(false)
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort)
      resolve(true)
    }, ms)
    signal.addEventListener('abort', onAbort, { once: true })
  })
}

/** Writes and waits until the bytes are handed to the socket: true, or false once the response has closed. */
function write(ex: Exchange, data: string | Buffer): Promise<boolean> {
  if (ex.signal.aborted) return Promise.resolve(false)
  return new Promise((resolve) => {
    const done = () => {
      ex.signal.removeEventListener('abort', done)
      resolve(!ex.signal.aborted)
    }
    ex.signal.addEventListener('abort', done, { once: true })
    ex.res.write(data, () => done())
  })
}

function errorBody(message: string, type: string, code: string | null, param: string | null = null): Json {
  return { error: { message, type, param, code } }
}

function defaultErrorBody(name: string, status: number): Json {
  const text = `stand-in ${name}: ${status} ${STATUS_CODES[status] ?? ''}`.trim()
  if (status === 429) return errorBody(text, 'rate_limit_error', 'rate_limit_exceeded')
  if (status >= 500) return errorBody(text, 'server_error', null)
  if (status === 401) return errorBody(text, 'invalid_request_error', 'invalid_api_key')
  return errorBody(text, 'invalid_request_error', null)
}

function created(): number {
  return Math.floor(Date.now() / 1000)
}

/** The text of a chat message's content: a string, or the text parts of an array of parts. */
function contentText(content: unknown): string {
  if (typeof content === 'string') return content
  if (Array.isArray(content)) {
    return content
      .map((part) => (isObject(part) && typeof part.text === 'string' ? part.text : ''))
      .filter((t) => t !== '')
      .join(' ')
  }
  return ''
}

const rerankTerms = (text: string): Set<string> =>
  new Set(
    text
      .toLowerCase()
      .split(/[^\p{L}\p{N}]+/u)
      .filter((w) => w !== ''),
  )

export async function startStandIn(options: StandInOptions): Promise<StandIn> {
  const { name, apiKey } = options
  const models = options.models
  const words = options.words ?? ['Hello', 'from', name]
  const chunkDelayMs = options.chunkDelayMs ?? 0
  const withUsage = options.usage ?? true

  const requests: RecordedRequest[] = []
  const queues = new Map<string, Behavior[]>()
  let standing: Behavior | undefined
  const sockets = new Set<Socket>()
  const shutdown = new AbortController()
  let closing: Promise<void> | undefined

  const nextBehavior = (pathname: string): Behavior => queues.get(pathname)?.shift() ?? standing ?? OK

  // ---- answering ----

  async function sendJson(ex: Exchange, status: number, value: unknown, headers: Record<string, string> = {}) {
    await sendBytes(ex, status, Buffer.from(JSON.stringify(value)), { 'content-type': 'application/json', ...headers })
  }

  async function sendBytes(ex: Exchange, status: number, data: Buffer, headers: Record<string, string>) {
    if (ex.signal.aborted) return
    ex.res.writeHead(status, { ...headers, 'content-length': String(data.length) })
    if (ex.dieAfter !== undefined) {
      await write(ex, data.subarray(0, Math.floor(data.length / 2)))
      ex.req.socket.destroy()
      return
    }
    ex.res.end(data)
  }

  const sendError = (
    ex: Exchange,
    status: number,
    message: string,
    type: string,
    code: string | null,
    param: string | null = null,
  ) => sendJson(ex, status, errorBody(message, type, code, param))

  const invalid = (ex: Exchange, message: string, param: string | null = null) =>
    sendError(ex, 400, message, 'invalid_request_error', null, param)

  /** The JSON object body, or undefined once a 400 is answered. */
  async function objectBody(ex: Exchange): Promise<Json | undefined> {
    if (isObject(ex.record.body) && !isMultipart(ex.record.body)) return ex.record.body
    await invalid(ex, 'The request body must be a JSON object.')
    return undefined
  }

  /** The requested model if it is given and served, or undefined once a 400/404 is answered. */
  async function checkModel(ex: Exchange, model: unknown, required = true): Promise<string | null | undefined> {
    if (model === undefined && !required) return null
    if (typeof model !== 'string' || model === '') {
      await invalid(ex, 'you must provide a model parameter', 'model')
      return undefined
    }
    if (models != null && !models.includes(model)) {
      await sendError(
        ex,
        404,
        `The model \`${model}\` does not exist or you do not have access to it.`,
        'invalid_request_error',
        'model_not_found',
        'model',
      )
      return undefined
    }
    return model
  }

  async function chat(ex: Exchange): Promise<void> {
    const body = await objectBody(ex)
    if (body == null) return
    const model = await checkModel(ex, body.model)
    if (model == null) return
    const messages = body.messages
    if (!Array.isArray(messages) || messages.length === 0) {
      return invalid(ex, "'messages' must be a non-empty array.", 'messages')
    }
    const maxParam = body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens'
    const max = body[maxParam]
    if (max != null && !(typeof max === 'number' && Number.isInteger(max) && max >= 1)) {
      return invalid(ex, `'${maxParam}' must be a positive integer.`, maxParam)
    }
    let out = words
    let finish = 'stop'
    if (typeof max === 'number' && max < words.length) {
      out = words.slice(0, max)
      finish = 'length'
    }
    const promptTokens = messages.reduce<number>(
      (n, m) => n + countWords(contentText(isObject(m) ? m.content : undefined)),
      0,
    )
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: out.length,
      total_tokens: promptTokens + out.length,
    }
    const id = `chatcmpl-${randomBytes(12).toString('hex')}`
    const venice = body.venice_parameters !== undefined ? { venice_parameters: body.venice_parameters } : {}

    if (body.stream !== true) {
      return sendJson(ex, 200, {
        id,
        object: 'chat.completion',
        created: created(),
        model,
        choices: [
          {
            index: 0,
            message: { role: 'assistant', content: out.join(' '), refusal: null },
            logprobs: null,
            finish_reason: finish,
          },
        ],
        ...(withUsage ? { usage } : {}),
        ...venice,
      })
    }

    const includeUsage = withUsage && isObject(body.stream_options) && body.stream_options.include_usage === true
    const base = { id, object: 'chat.completion.chunk', created: created(), model }
    const chunk = (delta: Json, finishReason: string | null, extra: Json = {}) => ({
      ...base,
      choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }],
      // As OpenAI: with include_usage every chunk carries usage, null until the last one.
      ...(includeUsage ? { usage: null } : {}),
      ...extra,
    })
    const events: unknown[] = [
      chunk({ role: 'assistant', content: '' }, null, venice),
      ...out.map((word, i) => chunk({ content: i === 0 ? word : ` ${word}` }, null)),
      chunk({}, finish),
    ]
    if (includeUsage) events.push({ ...base, choices: [], usage })

    ex.res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' })
    ex.res.flushHeaders()
    // The role chunk is event 0, content chunks are events 1..out.length: die after the last one asked for.
    const dieAt = ex.dieAfter === undefined ? undefined : Math.min(ex.dieAfter, out.length)
    for (const [i, event] of events.entries()) {
      if (i > 0 && chunkDelayMs > 0 && !(await sleep(chunkDelayMs, ex.signal))) return
      if (!(await write(ex, `data: ${JSON.stringify(event)}\n\n`))) return
      if (dieAt !== undefined && i >= dieAt) {
        ex.req.socket.destroy()
        return
      }
    }
    if (chunkDelayMs > 0 && !(await sleep(chunkDelayMs, ex.signal))) return
    ex.res.end('data: [DONE]\n\n')
  }

  async function embeddings(ex: Exchange): Promise<void> {
    const body = await objectBody(ex)
    if (body == null) return
    const model = await checkModel(ex, body.model)
    if (model == null) return
    const input = body.input
    const texts = typeof input === 'string' ? [input] : input
    if (!Array.isArray(texts) || texts.length === 0 || !texts.every((t): t is string => typeof t === 'string')) {
      return invalid(ex, "'input' must be a string or a non-empty array of strings.", 'input')
    }
    const dimensions = body.dimensions ?? EMBEDDING_DIMENSIONS
    if (!(typeof dimensions === 'number' && Number.isInteger(dimensions) && dimensions >= 1 && dimensions <= 4096)) {
      return invalid(ex, "'dimensions' must be an integer from 1 to 4096.", 'dimensions')
    }
    const format = body.encoding_format ?? 'float'
    if (format !== 'float' && format !== 'base64') {
      return invalid(ex, "'encoding_format' must be 'float' or 'base64'.", 'encoding_format')
    }
    const tokens = texts.reduce((n, t) => n + countWords(t), 0)
    return sendJson(ex, 200, {
      object: 'list',
      data: texts.map((text, index) => {
        const vector = standInEmbedding(text, dimensions)
        return {
          object: 'embedding',
          index,
          embedding: format === 'base64' ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector,
        }
      }),
      model,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    })
  }

  async function rerank(ex: Exchange): Promise<void> {
    const body = await objectBody(ex)
    if (body == null) return
    const model = await checkModel(ex, body.model)
    if (model == null) return
    if (typeof body.query !== 'string' || body.query === '') return invalid(ex, "'query' must be a string.", 'query')
    const documents = Array.isArray(body.documents)
      ? body.documents.map((d) =>
          typeof d === 'string' ? d : isObject(d) && typeof d.text === 'string' ? d.text : null,
        )
      : null
    if (documents == null || documents.length === 0 || documents.some((d) => d == null)) {
      return invalid(ex, "'documents' must be a non-empty array of strings.", 'documents')
    }
    const docs = documents as string[]
    const topN = body.top_n ?? docs.length
    if (!(typeof topN === 'number' && Number.isInteger(topN) && topN >= 1)) {
      return invalid(ex, "'top_n' must be a positive integer.", 'top_n')
    }
    const query = rerankTerms(body.query)
    const results = docs
      .map((doc, index) => {
        const terms = rerankTerms(doc)
        let shared = 0
        for (const t of query) if (terms.has(t)) shared++
        // Share of the query's terms found in the document; ties keep the documents' order.
        return {
          index,
          relevance_score: query.size === 0 ? 0 : shared / query.size,
          ...(body.return_documents === true ? { document: { text: doc } } : {}),
        }
      })
      .sort((a, b) => b.relevance_score - a.relevance_score || a.index - b.index)
      .slice(0, topN)
    const tokens = countWords(body.query) + docs.reduce((n, d) => n + countWords(d), 0)
    return sendJson(ex, 200, {
      id: randomUUID(),
      object: 'list',
      model,
      results,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    })
  }

  async function images(ex: Exchange): Promise<void> {
    const body = await objectBody(ex)
    if (body == null) return
    if ((await checkModel(ex, body.model, false)) === undefined) return
    if (typeof body.prompt !== 'string' || body.prompt === '')
      return invalid(ex, "'prompt' must be a string.", 'prompt')
    const n = body.n ?? 1
    if (!(typeof n === 'number' && Number.isInteger(n) && n >= 1 && n <= 4)) {
      return invalid(ex, "'n' must be an integer from 1 to 4.", 'n')
    }
    if (body.size != null && !(typeof body.size === 'string' && /^(\d+x\d+|auto)$/.test(body.size))) {
      return invalid(ex, "'size' must be WIDTHxHEIGHT or 'auto'.", 'size')
    }
    const format = body.response_format ?? 'b64_json'
    if (format !== 'b64_json' && format !== 'url') {
      return invalid(ex, "'response_format' must be 'b64_json' or 'url'.", 'response_format')
    }
    const image =
      format === 'url' ? { url: `${origin}${STANDIN_IMAGE_PATH}` } : { b64_json: STANDIN_PNG.toString('base64') }
    return sendJson(ex, 200, { created: created(), data: Array.from({ length: n }, () => ({ ...image })) })
  }

  async function transcriptions(ex: Exchange): Promise<void> {
    const body = ex.record.body
    if (!isMultipart(body)) return invalid(ex, 'Send the audio as multipart/form-data.')
    const file = body.files.find((f) => f.field === 'file')
    if (file == null) return invalid(ex, "The 'file' part is missing.", 'file')
    if ((await checkModel(ex, body.fields.model)) == null) return
    const text = `transcribed ${file.filename} (${file.size} bytes)`
    const format = body.fields.response_format ?? 'json'
    const plain = { 'content-type': 'text/plain; charset=utf-8' }
    switch (format) {
      case 'json':
        return sendJson(ex, 200, { text })
      case 'verbose_json':
        return sendJson(ex, 200, {
          task: 'transcribe',
          language: body.fields.language ?? 'english',
          duration: 1,
          text,
          segments: [],
        })
      case 'text':
        return sendBytes(ex, 200, Buffer.from(`${text}\n`), plain)
      case 'srt':
        return sendBytes(ex, 200, Buffer.from(`1\n00:00:00,000 --> 00:00:01,000\n${text}\n\n`), plain)
      case 'vtt':
        return sendBytes(ex, 200, Buffer.from(`WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n${text}\n\n`), plain)
      default:
        return invalid(ex, "'response_format' must be json, text, srt, verbose_json or vtt.", 'response_format')
    }
  }

  async function speech(ex: Exchange): Promise<void> {
    const body = await objectBody(ex)
    if (body == null) return
    if ((await checkModel(ex, body.model)) == null) return
    if (typeof body.input !== 'string' || body.input === '') return invalid(ex, "'input' must be a string.", 'input')
    if (typeof body.voice !== 'string' || body.voice === '') return invalid(ex, "'voice' must be a string.", 'voice')
    const format = body.response_format ?? 'mp3'
    const type = typeof format === 'string' ? SPEECH_TYPES[format] : undefined
    if (type == null) {
      return invalid(ex, `'response_format' must be one of ${Object.keys(SPEECH_TYPES).join(', ')}.`, 'response_format')
    }
    const audio = standInSpeech(body.input)
    // No content-length: the body goes out chunked, chunk by chunk.
    ex.res.writeHead(200, { 'content-type': type })
    ex.res.flushHeaders()
    for (let i = 0; i < SPEECH_CHUNKS; i++) {
      if (i > 0 && chunkDelayMs > 0 && !(await sleep(chunkDelayMs, ex.signal))) return
      if (ex.dieAfter !== undefined && i >= ex.dieAfter) {
        ex.req.socket.destroy()
        return
      }
      if (!(await write(ex, audio.subarray(i * SPEECH_CHUNK_BYTES, (i + 1) * SPEECH_CHUNK_BYTES)))) return
    }
    if (ex.dieAfter !== undefined) {
      ex.req.socket.destroy()
      return
    }
    ex.res.end()
  }

  const listModels = (ex: Exchange) =>
    sendJson(ex, 200, {
      object: 'list',
      data: (models ?? []).map((id) => ({ id, object: 'model', created: 0, owned_by: name })),
    })

  const routes: Record<string, (ex: Exchange) => Promise<void>> = {
    'POST /v1/chat/completions': chat,
    'POST /v1/embeddings': embeddings,
    'POST /v1/rerank': rerank,
    'POST /v1/images/generations': images,
    'POST /v1/audio/transcriptions': transcriptions,
    'POST /v1/audio/speech': speech,
    'GET /v1/models': listModels,
  }

  function authorized(header: string | undefined): boolean {
    const match = /^Bearer\s+(.+)$/i.exec(header ?? '')
    return match != null && match[1] === apiKey
  }

  async function answer(ex: Exchange): Promise<void> {
    const method = ex.req.method ?? 'GET'
    if (method === 'GET' && ex.pathname === STANDIN_IMAGE_PATH) {
      return sendBytes(ex, 200, STANDIN_PNG, { 'content-type': 'image/png' })
    }
    if (!authorized(ex.req.headers.authorization)) {
      return sendError(
        ex,
        401,
        'Incorrect API key provided. You can find your API key in your provider settings.',
        'invalid_request_error',
        'invalid_api_key',
      )
    }
    const route = routes[`${method} ${ex.pathname}`]
    if (route == null) {
      return sendError(ex, 404, `Invalid URL (${method} ${ex.pathname})`, 'invalid_request_error', 'unknown_url')
    }
    if (ex.bodyError != null) return invalid(ex, ex.bodyError)
    return route(ex)
  }

  async function perform(behavior: Behavior, ex: Exchange): Promise<void> {
    switch (behavior.kind) {
      case 'ok':
        return answer(ex)
      case 'status': {
        const headers: Record<string, string> = {}
        for (const [k, v] of Object.entries(behavior.headers ?? {})) headers[k.toLowerCase()] = v
        const { body } = behavior
        if (body === undefined) return sendJson(ex, behavior.status, defaultErrorBody(name, behavior.status), headers)
        if (typeof body === 'string') {
          return sendBytes(ex, behavior.status, Buffer.from(body), { 'content-type': 'text/plain', ...headers })
        }
        if (body instanceof Uint8Array) {
          return sendBytes(ex, behavior.status, Buffer.from(body), {
            'content-type': 'application/octet-stream',
            ...headers,
          })
        }
        return sendJson(ex, behavior.status, body, headers)
      }
      case 'hang':
        return
      case 'hangup':
        ex.req.socket.destroy()
        return
      case 'delay':
        if (await sleep(behavior.ms, ex.signal)) return perform(behavior.then ?? OK, ex)
        return
      case 'die-mid-stream':
        return answer({ ...ex, dieAfter: behavior.afterChunks })
    }
  }

  async function receive(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const at = Date.now()
    const closed = new AbortController()
    res.on('close', () => closed.abort())
    const signal = AbortSignal.any([closed.signal, shutdown.signal])
    const chunks: Buffer[] = []
    for await (const chunk of req) chunks.push(chunk as Buffer)
    const raw = Buffer.concat(chunks)
    const { body, error } = await parseBody(req.headers['content-type'], raw)
    const path = req.url ?? '/'
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      path,
      headers: flatHeaders(req.headers),
      body,
      raw,
      at,
    }
    requests.push(record)
    const pathname = new URL(path, 'http://stand-in').pathname
    const ex: Exchange = { req, res, record, pathname, bodyError: error, signal, dieAfter: undefined }
    await perform(nextBehavior(pathname), ex)
  }

  const server = createServer({ noDelay: true }, (req, res) => {
    receive(req, res).catch((err: unknown) => {
      // A client that left mid-body, or a bug here: answer 500 if still possible, else drop the socket.
      if (!res.headersSent && !res.destroyed) {
        res.writeHead(500, { 'content-type': 'application/json' })
        res.end(JSON.stringify(errorBody(`stand-in ${name}: ${(err as Error).message}`, 'server_error', null)))
      } else {
        res.destroy()
      }
    })
  })
  server.on('connection', (socket: Socket) => {
    sockets.add(socket)
    socket.once('close', () => sockets.delete(socket))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`

  return {
    url: `${origin}/v1`,
    origin,
    requests,
    requestsTo: (path) => requests.filter((r) => new URL(r.path, 'http://stand-in').pathname === path),
    queue(path, ...behaviors) {
      const queued = queues.get(path) ?? []
      queued.push(...behaviors)
      queues.set(path, queued)
    },
    always(behavior) {
      standing = behavior
    },
    reset() {
      requests.length = 0
      queues.clear()
      standing = undefined
    },
    close() {
      closing ??= new Promise<void>((resolve) => {
        shutdown.abort()
        server.close(() => resolve())
        for (const socket of sockets) socket.destroy()
      })
      return closing
    },
  }
}
