// The vectors protocol on a node: one embed or rerank request per stream, run on the engine that
// serves the model one at a time behind a short queue, answered with the result, its usage and a
// receipt signed by the node's peer key, or with an error frame. Closing the stream cancels.
import type { Connection, PrivateKey, Stream } from '@libp2p/interface'
import {
  type EmbeddingsFrame,
  type EmbedRequestFrame,
  encodeOwnFrame,
  encodeVector,
  MAX_VECTORS_REPLY_BYTES,
  type RerankRequestFrame,
  type ScoresFrame,
  STREAM_LIMITS,
  VECTORS_PROTOCOL,
  type VectorsRequestFrame,
  VectorsRequestFrameSchema,
} from '../protocols/index.ts'
import type { MeshPeer } from '../src/mesh/peer.ts'
import { signReceipt } from '../src/mesh/receipts.ts'
import { sendBytes } from '../src/mesh/streams.ts'
import { type Engine, EngineError } from './engine.ts'
import { readRequest, sendError } from './request-stream.ts'

/** How long a requester may take to send its request frame after opening the stream. */

/** Requests that may wait per engine behind the one it runs; one more is refused as busy. */
export const DEFAULT_VECTORS_MAX_QUEUE = 4

export interface VectorsServiceOptions {
  /** The engine serving each model id. */
  engines: () => ReadonlyMap<string, Engine>
  /** The node's peer key: it signs the receipts. */
  privateKey: PrivateKey
  /** sha256 of a model's weights once known, for receipts. */
  modelSha256?: (model: string) => string | undefined
  /** Requests waiting per engine. @default DEFAULT_VECTORS_MAX_QUEUE */
  maxQueue?: number
  /** A request answered (its reply sent). */
  onComplete?: (info: { request: VectorsRequestFrame; promptTokens: number }) => void
  /** Why a request failed inside the node (not the requester's fault), for the operator. */
  onFailure?: (info: { request: VectorsRequestFrame; error: unknown }) => void
}

/**
 * Runs one job at a time with at most `maxQueue` waiting. A waiting job whose signal aborts leaves
 * the queue at once.
 */
export class OneAtATime {
  private running = false
  private readonly waiting: Array<() => void> = []

  constructor(readonly maxQueue: number) {}

  get queued(): number {
    return this.waiting.length
  }

  get busy(): boolean {
    return this.running
  }

  async run<T>(job: () => Promise<T>, signal: AbortSignal): Promise<T> {
    signal.throwIfAborted()
    if (this.running) {
      if (this.waiting.length >= this.maxQueue) {
        throw new EngineError('busy', `node busy: 1 request running and ${this.waiting.length} queued for this model`)
      }
      await new Promise<void>((resolve, reject) => {
        const start = (): void => {
          signal.removeEventListener('abort', leave)
          resolve()
        }
        const leave = (): void => {
          const i = this.waiting.indexOf(start)
          if (i >= 0) this.waiting.splice(i, 1)
          reject(signal.reason)
        }
        signal.addEventListener('abort', leave, { once: true })
        this.waiting.push(start)
      })
    }
    // Here the slot is ours: either it was free, or the job before handed it over without freeing it.
    this.running = true
    try {
      return await job()
    } finally {
      const next = this.waiting.shift()
      if (next != null) next()
      else this.running = false
    }
  }
}

export interface VectorsService {
  /** Requests running (0 or 1) and waiting on one engine. */
  load(engine: Engine): { running: number; queued: number }
}

export async function serveVectors(peer: MeshPeer, options: VectorsServiceOptions): Promise<VectorsService> {
  const node = peer.peerId.toString()
  const queues = new WeakMap<Engine, OneAtATime>()
  const queueOf = (engine: Engine): OneAtATime => {
    let queue = queues.get(engine)
    if (queue == null) {
      queue = new OneAtATime(options.maxQueue ?? DEFAULT_VECTORS_MAX_QUEUE)
      queues.set(engine, queue)
    }
    return queue
  }
  await peer.handle(
    VECTORS_PROTOCOL,
    (stream, connection) => handleStream(stream, connection, node, options, queueOf),
    STREAM_LIMITS.vectors,
  )
  return {
    load: (engine) => {
      const queue = queues.get(engine)
      return { running: queue?.busy ? 1 : 0, queued: queue?.queued ?? 0 }
    },
  }
}

async function handleStream(
  stream: Stream,
  connection: Connection,
  node: string,
  options: VectorsServiceOptions,
  queueOf: (engine: Engine) => OneAtATime,
): Promise<void> {
  const opened = await readRequest(stream, VectorsRequestFrameSchema)
  if (opened == null) return
  const { request, rest: frames } = opened

  const engine = options.engines().get(request.model)
  if (engine == null) {
    await sendError(stream, 'model_not_found', `this node does not serve ${request.model}`)
    return
  }
  const task = request.type === 'embed' ? 'embeddings' : 'rerank'
  const runs = request.type === 'embed' ? engine.embed != null : engine.rank != null
  if (!runs || !engine.describe().tasks.includes(task)) {
    await sendError(stream, 'invalid_request', `The model '${request.model}' does not serve ${task}.`, 'model')
    return
  }
  const refusal = request.type === 'embed' ? checkEmbed(request, engine) : undefined
  if (refusal != null) {
    await sendError(stream, 'invalid_request', refusal.message, refusal.param)
    return
  }

  // Anything after the request frame, the requester's end of the stream, or a reset: cancel.
  const cancel = new AbortController()
  const stop = (): void => cancel.abort(new Error('the requester closed the stream'))
  stream.addEventListener('close', stop, { once: true })
  void (async () => {
    try {
      for await (const _ of frames) break
    } catch {
      // reset or garbage: cancel below
    }
    stop()
  })()

  try {
    const reply = await queueOf(engine).run(() => answer(request, engine, cancel.signal), cancel.signal)
    if (stream.writeStatus !== 'writable') return
    const receipt = await signReceipt(options.privateKey, {
      v: 1,
      requestId: request.id,
      model: request.model,
      modelSha256: options.modelSha256?.(request.model) ?? '',
      promptTokens: reply.promptTokens,
      completionTokens: 0,
      gateway: connection.remotePeer.toString(),
      node,
      issuedAt: Date.now(),
    })
    const usage = { promptTokens: reply.promptTokens, completionTokens: 0 as const }
    const frame: EmbeddingsFrame | ScoresFrame =
      reply.type === 'embeddings'
        ? { type: 'embeddings', vectors: reply.vectors, dimensions: reply.dimensions, usage, receipt }
        : { type: 'scores', scores: reply.scores, usage, receipt }
    await sendBytes(stream, encodeOwnFrame(frame, MAX_VECTORS_REPLY_BYTES), cancel.signal)
    options.onComplete?.({ request, promptTokens: reply.promptTokens })
    await stream.close().catch(() => undefined)
  } catch (err) {
    if (cancel.signal.aborted) {
      stream.abort(new Error('cancelled'))
      return
    }
    if (!(err instanceof EngineError) || err.code === 'internal') options.onFailure?.({ request, error: err })
    const code = err instanceof EngineError ? err.code : 'internal'
    const message = err instanceof EngineError ? err.message : `${task} failed`
    await sendError(stream, code, message).catch(() => stream.abort(err as Error))
  } finally {
    stream.removeEventListener('close', stop)
  }
}

/** Bytes of an embeddings reply besides the vectors: usage, receipt, punctuation. */
const REPLY_OVERHEAD_BYTES = 4096

/**
 * Why an embed request cannot be answered, found before any work, said to the client as it is (with
 * the field it is about); undefined when it can.
 */
function checkEmbed(request: EmbedRequestFrame, engine: Engine): { message: string; param?: string } | undefined {
  const native = engine.embeddingDimensions
  if (native == null) return { message: `The model '${request.model}' does not serve embeddings.`, param: 'model' }
  if (request.dimensions != null && request.dimensions > native) {
    return {
      message: `'dimensions' must be at most ${native} for the model '${request.model}' (its embeddings have ${native} dimensions).`,
      param: 'dimensions',
    }
  }
  const dimensions = request.dimensions ?? native
  // base64 text of one vector, its quotes and comma.
  const perVector = 4 * Math.ceil((dimensions * 4) / 3) + 3
  const fits = Math.floor((MAX_VECTORS_REPLY_BYTES - REPLY_OVERHEAD_BYTES) / perVector)
  if (request.input.length > fits) {
    return {
      message: `'input' has too many items: ${request.input.length} inputs of ${dimensions} dimensions exceed one reply; send at most ${fits} per request.`,
      param: 'input',
    }
  }
  return undefined
}

type Reply =
  | { type: 'embeddings'; vectors: string[]; dimensions: number; promptTokens: number }
  | { type: 'scores'; scores: number[]; promptTokens: number }

async function answer(request: VectorsRequestFrame, engine: Engine, signal: AbortSignal): Promise<Reply> {
  return request.type === 'embed' ? embed(request, engine, signal) : rerank(request, engine, signal)
}

async function embed(request: EmbedRequestFrame, engine: Engine, signal: AbortSignal): Promise<Reply> {
  if (engine.embed == null)
    throw new EngineError('invalid_request', `the model ${request.model} does not serve embeddings`)
  const result = await engine.embed(request.input, signal)
  if (result.vectors.length !== request.input.length) {
    throw new EngineError(
      'internal',
      `the engine gave ${result.vectors.length} vectors for ${request.input.length} inputs`,
    )
  }
  const dimensions = request.dimensions ?? engine.embeddingDimensions ?? 0
  const vectors = result.vectors.map((v) => encodeVector(unitLength(v.subarray(0, dimensions))))
  return { type: 'embeddings', vectors, dimensions, promptTokens: result.tokens }
}

async function rerank(request: RerankRequestFrame, engine: Engine, signal: AbortSignal): Promise<Reply> {
  if (engine.rank == null) throw new EngineError('invalid_request', `the model ${request.model} does not serve rerank`)
  const result = await engine.rank(request.query, request.documents, signal)
  if (result.scores.length !== request.documents.length || !result.scores.every((s) => s >= 0 && s <= 1)) {
    throw new EngineError('internal', 'the engine gave scores that are not one probability per document')
  }
  return { type: 'scores', scores: result.scores, promptTokens: result.tokens }
}

/**
 * The vector scaled to length 1, as OpenAI's embeddings are (cosine similarity is then a dot
 * product); a shortened vector (`dimensions`) is scaled after shortening. An all-zero vector stays zero.
 */
function unitLength(vector: Float32Array): Float32Array {
  let sum = 0
  for (const x of vector) sum += x * x
  if (!Number.isFinite(sum))
    throw new EngineError('internal', 'the model gave a vector with values that are not finite')
  const out = new Float32Array(vector.length)
  if (sum === 0) return out
  const scale = 1 / Math.sqrt(sum)
  for (let i = 0; i < vector.length; i++) out[i] = (vector[i] ?? 0) * scale
  return out
}
