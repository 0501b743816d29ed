// The inference protocol on a node: one request per stream, deltas streamed as they are generated,
// done with usage and a receipt signed by the node's peer key, or an error frame with a code. The
// requester closing its end cancels the generation at the next token and still gets done + receipt
// for what was generated; a reset cancels without an answer. A request the scheduler cannot start
// within its queue wait is refused as busy at once; a requester that sent maxQueueMs is told with a
// queued frame when its request waits in the queue, so it knows the node is alive and not failing.
import type { Connection, PrivateKey, Stream } from '@libp2p/interface'
import {
  type encodeFrame,
  encodeOwnFrame,
  INFERENCE_PROTOCOL,
  type InferenceReplyFrame,
  type InferenceReplyFrameSchema,
  type InferenceRequestFrame,
  InferenceRequestFrameSchema,
  STREAM_LIMITS,
} from '../protocols/index.ts'
import type { MeshPeer } from '../src/mesh/peer.ts'
import { signReceipt } from '../src/mesh/receipts.ts'
import { EngineError } from './engine.ts'
import { readRequest, sendError } from './request-stream.ts'
import type { Scheduler } from './scheduler.ts'

export interface InferenceServiceOptions {
  /** The scheduler serving each model id. */
  schedulers: () => ReadonlyMap<string, Scheduler>
  /** The node's peer key: it signs the receipts. */
  privateKey: PrivateKey
  /** sha256 of a model's weights once known, for receipts. */
  modelSha256?: (model: string) => string | undefined
  onComplete?: (info: { request: InferenceRequestFrame; promptTokens: number; completionTokens: number }) => void
}

export async function serveInference(peer: MeshPeer, options: InferenceServiceOptions): Promise<void> {
  const node = peer.peerId.toString()
  await peer.handle(
    INFERENCE_PROTOCOL,
    (stream, connection) => handleStream(stream, connection, node, options),
    STREAM_LIMITS.inference,
  )
}

function send(stream: Stream, frame: Parameters<typeof encodeFrame<typeof InferenceReplyFrameSchema>>[1]): void {
  if (stream.writeStatus !== 'writable') return
  // Frames are small and produced no faster than tokens: the stream's own buffer bounds them.
  stream.send(encodeOwnFrame<InferenceReplyFrame>(frame))
}

async function handleStream(
  stream: Stream,
  connection: Connection,
  node: string,
  options: InferenceServiceOptions,
): Promise<void> {
  const opened = await readRequest(stream, InferenceRequestFrameSchema)
  if (opened == null) return
  const { request, rest: frames } = opened

  const scheduler = options.schedulers().get(request.model)
  if (scheduler == null) {
    await sendError(stream, 'model_not_found', `this node does not serve ${request.model}`)
    return
  }

  // Anything after the request frame, the requester's end of the stream, or a reset: cancel.
  const cancel = new AbortController()
  const stop = (): void => cancel.abort()
  stream.addEventListener('close', stop, { once: true })
  void (async () => {
    try {
      for await (const _ of frames) break
    } catch {
      // reset or garbage: cancel below
    }
    stop()
  })()

  let first = true
  try {
    const result = await scheduler.submit(
      { messages: request.messages, sampling: request.sampling },
      {
        signal: cancel.signal,
        // Only a requester that said how long it waits understands a queued frame.
        ...(request.maxQueueMs != null
          ? {
              maxWaitMs: request.maxQueueMs,
              onQueued: ({ position, etaMs }) => {
                // Told at submit, before any delta.
                send(stream, { type: 'queued', position, ...(etaMs != null ? { etaMs } : {}) })
              },
            }
          : {}),
        onDelta: (text, tokens, promptTokens) => {
          send(stream, { type: 'delta', text, tokens, ...(first ? { promptTokens } : {}) })
          first = false
        },
      },
    )
    options.onComplete?.({ request, ...result.usage })
    // Also after a cancel: a requester that closed its end still reads the receipt of the work done.
    if (stream.writeStatus === 'writable') {
      const receipt = await signReceipt(options.privateKey, {
        v: 1,
        requestId: request.id,
        model: request.model,
        modelSha256: options.modelSha256?.(request.model) ?? '',
        promptTokens: result.usage.promptTokens,
        completionTokens: result.usage.completionTokens,
        gateway: connection.remotePeer.toString(),
        node,
        issuedAt: Date.now(),
      })
      send(stream, { type: 'done', finishReason: result.finishReason, usage: result.usage, receipt })
      await stream.close().catch(() => undefined)
    }
  } catch (err) {
    const code = err instanceof EngineError ? err.code : 'internal'
    const message = err instanceof EngineError ? err.message : 'generation failed'
    await sendError(stream, code, message).catch(() => stream.abort(err as Error))
  } finally {
    stream.removeEventListener('close', stop)
  }
}
