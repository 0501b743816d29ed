// The mesh router: opens an inference on one node (routing.ts picks which, and fails over), on a
// stream negotiated ahead when it can. A node that is full says busy at once; one that queued the
// request says so (a queued frame), and then running out of time before its first token is "busy"
// too, not a failure of the node.
import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import {
  checkDeltaFrame,
  type DeltaFrame,
  type DoneFrame,
  decodeFrames,
  encodeOwnFrame,
  INFERENCE_PROTOCOL,
  InferenceReplyFrameSchema,
  type InferenceRequestFrame,
  type InferenceResponseFrame,
  MAX_FRAME_BYTES,
} from '../protocols/index.ts'
import type { Directory } from '../src/mesh/directory.ts'
import type { MeshPeer } from '../src/mesh/peer.ts'
import { sendBytes } from '../src/mesh/streams.ts'
import { type ApiError, invalidRequest } from './errors.ts'

export interface RouterOptions {
  /** Time allowed to open a stream to a node. @default 5000 */
  dialTimeoutMs?: number
  /** Time allowed between sending a request and the node's first frame (queueing included). @default 120000 */
  firstFrameTimeoutMs?: number
  /**
   * The longest a request may wait in a node's queue (sent with it; the node refuses it as busy when
   * it cannot start it in this time, and applies its own bound too).
   * @default firstFrameTimeoutMs less a margin for the prompt's evaluation (a quarter, at most 10 s)
   */
  maxQueueMs?: number
  /** A spare stream older than this is not used (the node drops a stream without a request after 10 s). @default 5000 */
  spareMaxAgeMs?: number
}

/** An inference under way on one node. */
export interface InferenceCall {
  nodePeerId: string
  /** The first frame: the first delta, or done when nothing was generated. */
  first: DeltaFrame | DoneFrame
  /** The frames after the first. */
  rest: AsyncGenerator<InferenceResponseFrame, void, undefined>
  /**
   * After the call's signal aborted (the client went away; the node was asked to stop by closing
   * our end), reads what the node still sends up to its done frame, which carries the receipt for
   * the work done. Undefined when the node ends without one in time.
   */
  drain(): Promise<DoneFrame | undefined>
  /** Drops the call: resets the stream (frees the node at once, no receipt). */
  abort(): void
  /** Ends the call normally (after done). */
  close(): void
}

/** Spare streams older than this are not used (the node drops a stream without a request after 10 s). */
const SPARE_MAX_AGE_MS = 5_000
/** At most this many spare streams per node (and never more than its slots). */
const MAX_SPARES_PER_NODE = 8

/** How long a cancelled call waits for the node's done frame (and receipt) before resetting. */
const RECEIPT_WAIT_MS = 2_000

export class MeshRouter {
  private readonly spares = new Map<string, Array<{ stream: Promise<Stream>; at: number }>>()
  private readonly dialTimeoutMs: number
  private readonly firstFrameTimeoutMs: number
  private readonly maxQueueMs: number
  private readonly spareMaxAgeMs: number

  constructor(
    private readonly peer: MeshPeer,
    private readonly directory: Directory,
    options: RouterOptions = {},
  ) {
    this.dialTimeoutMs = options.dialTimeoutMs ?? 5_000
    this.firstFrameTimeoutMs = options.firstFrameTimeoutMs ?? 120_000
    this.maxQueueMs =
      options.maxQueueMs ??
      Math.max(0, this.firstFrameTimeoutMs - Math.min(10_000, Math.floor(this.firstFrameTimeoutMs / 4)))
    this.spareMaxAgeMs = options.spareMaxAgeMs ?? SPARE_MAX_AGE_MS
    // A node that left takes its spare streams with it.
    directory.on('node:left', ({ peerId }) => this.dropStaleSpares(peerId, true))
  }

  private openStream(peerId: string, signal: AbortSignal): Promise<Stream> {
    return this.peer.dialProtocol(peerIdFromString(peerId), INFERENCE_PROTOCOL, {
      signal: AbortSignal.any([signal, AbortSignal.timeout(this.dialTimeoutMs)]),
      // Meant to send the protocol name with the request frame instead of waiting a round trip,
      // but libp2p 3.3 ignores it (newStream always runs mss.select): the spare streams below are
      // what takes the negotiation off the request's path.
      negotiateFully: false,
    })
  }

  /**
   * Opening a libp2p stream costs ~2 ms here (a round trip to negotiate the protocol), most of the
   * mesh's share of time to first token. So once a call to a node has its first token, a stream to
   * it is opened in the background and kept for the next request: one per answered call, up to the
   * node's slots, so a burst of concurrent requests finds one each next time instead of opening
   * them one round trip apart (which also made the node start their prefills apart). Opened while
   * the answer streams rather than when it ends: a client that sends its next request as soon as
   * an answer ends (the usual loop) finds the stream negotiated, instead of waiting for the round
   * trip that started with the end. A spare older than SPARE_MAX_AGE_MS is dropped: the node gives
   * up on streams that carry no request. So when a call ends, spares that went stale meanwhile (an
   * answer longer than that) are dropped and replaced.
   */
  private prepareSpare(peerId: string): void {
    // Not to a node that left (a call to it may end after it said so).
    if (this.peer.status !== 'started' || this.directory.get(peerId) == null) return
    this.dropStaleSpares(peerId)
    const list = this.spares.get(peerId) ?? []
    const slots = this.directory.get(peerId)?.heartbeat.load.slots ?? 1
    if (list.length >= Math.min(MAX_SPARES_PER_NODE, Math.max(1, slots))) return
    const spare = { stream: this.openStream(peerId, AbortSignal.timeout(this.dialTimeoutMs)), at: Date.now() }
    spare.stream.catch(() => {
      const i = list.indexOf(spare)
      if (i >= 0) list.splice(i, 1)
      if (list.length === 0 && this.spares.get(peerId) === list) this.spares.delete(peerId)
    })
    list.push(spare)
    this.spares.set(peerId, list)
  }

  /** Drops the node's spares too old to use (or, with `all`, every one: the node left). */
  private dropStaleSpares(peerId: string, all = false): void {
    const list = this.spares.get(peerId)
    if (list == null) return
    const now = Date.now()
    for (const spare of [...list]) {
      if (!all && now - spare.at <= this.spareMaxAgeMs) continue
      list.splice(list.indexOf(spare), 1)
      void spare.stream.then((s) => s.abort(new Error('stale spare stream'))).catch(() => undefined)
    }
    if (list.length === 0) this.spares.delete(peerId)
  }

  private async takeSpare(peerId: string): Promise<Stream | undefined> {
    const list = this.spares.get(peerId)
    for (let spare = list?.shift(); spare != null; spare = list?.shift()) {
      const stream = await spare.stream.catch(() => undefined)
      if (stream == null) continue
      if (Date.now() - spare.at > this.spareMaxAgeMs || stream.status !== 'open' || stream.writeStatus !== 'writable') {
        stream.abort(new Error('stale spare stream'))
        continue
      }
      return stream
    }
    if (list?.length === 0) this.spares.delete(peerId)
    return undefined
  }

  /** Opens the inference on one node: its call, or why it failed (fatal: the request is at fault). */
  async tryNode(
    peerId: string,
    request: InferenceRequestFrame,
    signal: AbortSignal,
  ): Promise<{ call: InferenceCall } | { outcome: string; fatal?: ApiError }> {
    let stream: Stream
    try {
      stream = (await this.takeSpare(peerId)) ?? (await this.openStream(peerId, signal))
    } catch {
      return { outcome: 'unreachable' }
    }
    // A node that goes silent mid-answer is dropped rather than waited on for ever.
    stream.inactivityTimeout = this.firstFrameTimeoutMs
    const fail = (outcome: string, fatal?: ApiError): { outcome: string; fatal?: ApiError } => {
      signal.removeEventListener('abort', onAbort)
      stream.abort(new Error(outcome))
      return fatal ? { outcome, fatal } : { outcome }
    }
    // Deltas (one per token) are checked by hand, exactly as the schema would; the rest by zod.
    const frames = decodeFrames(stream, InferenceReplyFrameSchema, MAX_FRAME_BYTES, checkDeltaFrame)
    let timedOut = false
    let timer: ReturnType<typeof setTimeout> | undefined
    const startTimer = (): void => {
      clearTimeout(timer)
      timer = setTimeout(() => {
        timedOut = true
        stream.abort(new Error('first frame timeout'))
      }, this.firstFrameTimeoutMs)
    }
    startTimer()
    let answered = false
    /** The node said it queued the request: it is alive, only full. */
    let queued = false
    const onAbort = (): void => {
      // Before any answer there is nothing to pay for: reset. After it, close our end: the node
      // stops within a token and still sends done with the receipt for what it generated.
      if (!answered) {
        stream.abort(new Error('client closed'))
        return
      }
      void stream.close().catch(() => undefined)
      setTimeout(() => stream.abort(new Error('no done frame after cancel')), RECEIPT_WAIT_MS).unref()
    }
    signal.addEventListener('abort', onAbort, { once: true })
    try {
      await sendBytes(
        stream,
        encodeOwnFrame<InferenceRequestFrame>({ ...request, maxQueueMs: this.maxQueueMs }),
        signal,
      )
      let first = await frames.next()
      while (!first.done && first.value.type === 'queued') {
        // The node starts it, or refuses it as busy, within maxQueueMs: wait for that afresh (once:
        // a node repeating queued frames does not hold the request longer).
        if (!queued) startTimer()
        queued = true
        first = await frames.next()
      }
      if (first.done) return fail('closed')
      const frame = first.value
      if (frame.type === 'queued') return fail('closed') // not reached: the loop above reads past them
      if (frame.type === 'error') {
        if (frame.code === 'invalid_request' || frame.code === 'context_length_exceeded') {
          return fail(
            frame.code,
            invalidRequest(frame.message, frame.code === 'context_length_exceeded' ? 'messages' : null, frame.code),
          )
        }
        return fail(frame.code)
      }
      answered = true
      // After the first token has gone on to the client (this turn's writes), not in front of it.
      setImmediate(() => this.prepareSpare(peerId))
      return {
        call: {
          nodePeerId: peerId,
          first: frame,
          // A node sends queued frames only before its first delta: the rest are response frames.
          rest: frames as AsyncGenerator<InferenceResponseFrame, void, undefined>,
          drain: async () => {
            try {
              for await (const next of frames) {
                if (next.type === 'done') return next
                if (next.type === 'error') return undefined
              }
            } catch {
              // reset (timeout) or garbage: no receipt
            }
            return undefined
          },
          abort: () => {
            signal.removeEventListener('abort', onAbort)
            stream.abort(new Error('cancelled'))
          },
          close: () => {
            signal.removeEventListener('abort', onAbort)
            void stream.close().catch(() => undefined)
            // After a long answer the spare opened at its first token is stale: a fresh one.
            this.dropStaleSpares(peerId)
            if (!this.spares.has(peerId)) this.prepareSpare(peerId)
          },
        },
      }
    } catch {
      if (signal.aborted) return fail('client closed')
      // Out of time before the first token on a node that queued the request (it said so, or its
      // heartbeat shows a queue): it is alive and full — busy, not failed, and not cooled down.
      if (timedOut && (queued || (this.directory.get(peerId)?.heartbeat.load.queued ?? 0) > 0)) return fail('busy')
      return fail(timedOut ? 'timeout' : 'failed')
    } finally {
      clearTimeout(timer)
    }
  }
}
