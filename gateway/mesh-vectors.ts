// The gateway's side of the vectors protocol: which mesh nodes embed or rerank a model, and one
// request to one of them, answered with the result, its usage and the node's signed receipt, or a
// MeshVectorsError carrying the node's error code, so the caller can fail over or answer 400.
import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import {
  decodeFrames,
  decodeVector,
  type EmbeddingsFrame,
  type EmbedRequestFrame,
  encodeOwnFrame,
  type InferenceErrorCode,
  InvalidMessageError,
  MAX_VECTORS_REPLY_BYTES,
  MessageTooLargeError,
  type Receipt,
  type RerankRequestFrame,
  type ScoresFrame,
  VECTORS_PROTOCOL,
  type VectorsRequestFrame,
  VectorsResponseFrameSchema,
  type VectorsUsage,
} from '../protocols/index.ts'
import type { Directory, NodeEntry } from '../src/mesh/directory.ts'
import type { MeshPeer } from '../src/mesh/peer.ts'
import { sendBytes } from '../src/mesh/streams.ts'

export type VectorsTask = 'embeddings' | 'rerank'

/**
 * Why a request to one node failed: the node's own error code, or
 * - `unreachable`: no stream could be opened, it broke, or no answer came in time;
 * - `bad_reply`: the node answered something that is not a valid answer to this request;
 * - `aborted`: the caller's signal aborted.
 */
export type MeshVectorsErrorCode = InferenceErrorCode | 'unreachable' | 'bad_reply' | 'aborted'

/** Codes after which another node serving the model may well succeed. */
const FAILOVER_CODES: ReadonlySet<MeshVectorsErrorCode> = new Set(['busy', 'internal', 'unreachable', 'bad_reply'])

export class MeshVectorsError extends Error {
  override name = 'MeshVectorsError'
  constructor(
    readonly code: MeshVectorsErrorCode,
    message: string,
    /** The node the request went to. */
    readonly peerId: string,
    options?: ErrorOptions,
    /** invalid_request: the request field the node's refusal is about. */
    readonly param?: string,
  ) {
    super(message, options)
  }

  /** Whether the caller should try the next node rather than give the client this error. */
  get failover(): boolean {
    return FAILOVER_CODES.has(this.code)
  }
}

export interface MeshVectorsOptions {
  /** Time allowed to open a stream to a node. @default 5000 */
  dialTimeoutMs?: number
  /** Time allowed between sending a request and the node's answer, queueing included. @default 300000 */
  replyTimeoutMs?: number
}

export type EmbedRequest = Omit<EmbedRequestFrame, 'type'>
export type RerankRequest = Omit<RerankRequestFrame, 'type'>

export interface EmbedResult {
  /** One per input, in input order, each of unit length. */
  vectors: Float32Array[]
  dimensions: number
  usage: VectorsUsage
  receipt: Receipt
}

export interface RerankResult {
  /** One per document, in document order: the probability that it is relevant to the query (0–1). */
  scores: number[]
  usage: VectorsUsage
  receipt: Receipt
}

export class MeshVectors {
  private readonly inflight = new Map<string, number>()
  private readonly dialTimeoutMs: number
  private readonly replyTimeoutMs: number

  constructor(
    private readonly peer: MeshPeer,
    private readonly directory: Directory,
    options: MeshVectorsOptions = {},
  ) {
    this.dialTimeoutMs = options.dialTimeoutMs ?? 5_000
    this.replyTimeoutMs = options.replyTimeoutMs ?? 300_000
  }

  /**
   * Nodes whose capabilities list `task` for `model`, ready, least loaded first: (active + queued +
   * our vectors requests in flight) per slot. A node's capabilities follow its heartbeat by one beat.
   */
  nodesFor(model: string, task: VectorsTask): NodeEntry[] {
    const serves = (n: NodeEntry): boolean =>
      n.capabilities?.models.some((m) => m.id === model && m.state === 'ready' && m.tasks.includes(task)) === true
    const score = (n: NodeEntry): number => {
      const { active, queued, slots } = n.heartbeat.load
      return (active + queued + (this.inflight.get(n.peerId) ?? 0)) / Math.max(1, slots)
    }
    return this.directory
      .nodesServing(model)
      .filter(serves)
      .map((n) => ({ n, s: score(n) }))
      .sort((a, b) => a.s - b.s || a.n.peerId.localeCompare(b.n.peerId))
      .map(({ n }) => n)
  }

  /** Embeds `request.input` on the node `peerId`. Throws MeshVectorsError. */
  async embed(peerId: string, request: EmbedRequest, signal: AbortSignal): Promise<EmbedResult> {
    const reply = await this.call(peerId, { type: 'embed', ...request }, signal)
    if (reply.type !== 'embeddings') throw badReply(peerId, `a ${reply.type} frame answered an embed request`)
    if (reply.vectors.length !== request.input.length) {
      throw badReply(peerId, `${reply.vectors.length} vectors for ${request.input.length} inputs`)
    }
    if (request.dimensions != null && reply.dimensions !== request.dimensions) {
      throw badReply(peerId, `vectors of ${reply.dimensions} dimensions where ${request.dimensions} were asked`)
    }
    let vectors: Float32Array[]
    try {
      vectors = reply.vectors.map((v) => decodeVector(v, reply.dimensions))
    } catch (err) {
      throw badReply(peerId, (err as Error).message, err)
    }
    return { vectors, dimensions: reply.dimensions, usage: reply.usage, receipt: reply.receipt }
  }

  /** Scores `request.documents` against `request.query` on the node `peerId`. Throws MeshVectorsError. */
  async rerank(peerId: string, request: RerankRequest, signal: AbortSignal): Promise<RerankResult> {
    const reply = await this.call(peerId, { type: 'rerank', ...request }, signal)
    if (reply.type !== 'scores') throw badReply(peerId, `a ${reply.type} frame answered a rerank request`)
    if (reply.scores.length !== request.documents.length) {
      throw badReply(peerId, `${reply.scores.length} scores for ${request.documents.length} documents`)
    }
    return { scores: reply.scores, usage: reply.usage, receipt: reply.receipt }
  }

  /**
   * One request on a new stream, and the node's one answer. Our end stays open until the answer
   * is read: the node takes its closing (or a reset, as when `signal` aborts) as a cancel.
   */
  private async call(
    peerId: string,
    frame: VectorsRequestFrame,
    signal: AbortSignal,
  ): Promise<EmbeddingsFrame | ScoresFrame> {
    const aborted = (): MeshVectorsError =>
      new MeshVectorsError('aborted', 'the request was cancelled', peerId, { cause: signal.reason })
    if (signal.aborted) throw aborted()
    let bytes: Uint8Array
    try {
      bytes = encodeOwnFrame(frame)
    } catch (err) {
      if (err instanceof MessageTooLargeError) {
        throw new MeshVectorsError('invalid_request', `the request is too large: ${err.message}`, peerId)
      }
      throw err
    }
    let stream: Stream
    try {
      stream = await this.peer.dialProtocol(peerIdFromString(peerId), VECTORS_PROTOCOL, {
        signal: AbortSignal.any([signal, AbortSignal.timeout(this.dialTimeoutMs)]),
      })
    } catch (err) {
      if (signal.aborted) throw aborted()
      throw new MeshVectorsError('unreachable', `no vectors stream to ${peerId} could be opened`, peerId, {
        cause: err,
      })
    }

    this.inflight.set(peerId, (this.inflight.get(peerId) ?? 0) + 1)
    let timedOut = false
    const timer = setTimeout(() => {
      timedOut = true
      stream.abort(new Error('no answer in time'))
    }, this.replyTimeoutMs)
    const onAbort = (): void => stream.abort(new Error('cancelled'))
    signal.addEventListener('abort', onAbort, { once: true })
    let answered = false
    try {
      await sendBytes(stream, bytes, signal)
      const first = await decodeFrames(stream, VectorsResponseFrameSchema, MAX_VECTORS_REPLY_BYTES).next()
      if (first.done) throw new MeshVectorsError('unreachable', `${peerId} closed the stream without an answer`, peerId)
      const reply = first.value
      if (reply.type === 'error') throw new MeshVectorsError(reply.code, reply.message, peerId, undefined, reply.param)
      answered = true
      return reply
    } catch (err) {
      if (err instanceof MeshVectorsError) throw err
      if (signal.aborted) throw aborted()
      if (timedOut) {
        throw new MeshVectorsError('unreachable', `no answer from ${peerId} within ${this.replyTimeoutMs} ms`, peerId)
      }
      if (err instanceof InvalidMessageError || err instanceof MessageTooLargeError) {
        throw badReply(peerId, err.message, err)
      }
      throw new MeshVectorsError('unreachable', `the vectors stream to ${peerId} failed`, peerId, { cause: err })
    } finally {
      clearTimeout(timer)
      signal.removeEventListener('abort', onAbort)
      const n = (this.inflight.get(peerId) ?? 1) - 1
      if (n <= 0) this.inflight.delete(peerId)
      else this.inflight.set(peerId, n)
      if (answered) void stream.close().catch(() => undefined)
      else stream.abort(new Error('no answer'))
    }
  }
}

function badReply(peerId: string, why: string, cause?: unknown): MeshVectorsError {
  return new MeshVectorsError('bad_reply', `${peerId} answered wrongly: ${why}`, peerId, cause ? { cause } : undefined)
}
