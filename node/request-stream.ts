// The opening of a request stream, shared by the node's services: read the one request frame (in
// time, valid, not too large), or answer an error frame and close.
import type { Stream } from '@libp2p/interface'
import type { z } from 'zod'
import {
  decodeFrames,
  ErrorFrameSchema,
  encodeFrame,
  type InferenceErrorCode,
  InvalidMessageError,
  MessageTooLargeError,
} from '../protocols/index.ts'
import { sendBytes } from '../src/mesh/streams.ts'

/** A requester has this long to send its request frame after opening the stream. */
export const REQUEST_TIMEOUT_MS = 10_000

/** Answers an error frame and closes the stream (nothing if the requester is gone). */
export async function sendError(
  stream: Stream,
  code: InferenceErrorCode,
  message: string,
  param?: string,
): Promise<void> {
  if (stream.writeStatus !== 'writable') return
  await sendBytes(stream, encodeFrame(ErrorFrameSchema, { type: 'error', code, message, ...(param ? { param } : {}) }))
  await stream.close().catch(() => stream.abort(new Error('close failed')))
}

/**
 * Reads the stream's request frame, and gives the rest of the stream (anything more means cancel).
 * Undefined when there is none to serve: the requester closed first, sent something invalid
 * (answered invalid_request), or nothing in time (reset).
 */
export async function readRequest<S extends z.ZodType>(
  stream: Stream,
  schema: S,
): Promise<{ request: z.output<S>; rest: AsyncGenerator<z.output<S>, void, undefined> } | undefined> {
  const frames = decodeFrames(stream, schema)
  const timer = setTimeout(() => stream.abort(new Error('no request frame in time')), REQUEST_TIMEOUT_MS)
  try {
    const first = await frames.next()
    if (first.done) {
      await stream.close().catch(() => undefined)
      return undefined
    }
    return { request: first.value, rest: frames }
  } catch (err) {
    const why =
      err instanceof MessageTooLargeError || err instanceof InvalidMessageError ? err.message : 'unreadable request'
    await sendError(stream, 'invalid_request', why).catch(() => stream.abort(err as Error))
    return undefined
  } finally {
    clearTimeout(timer)
  }
}
