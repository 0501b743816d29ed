// The bytes of our wire: JSON payloads, unsigned-varint length-prefixed frames on streams, and
// size-bounded gossip payloads. Decoding always validates against a schema and bounds the size.
import * as lp from 'it-length-prefixed'
import type { Uint8ArrayList } from 'uint8arraylist'
import type { z } from 'zod'
import { MAX_FRAME_BYTES, MAX_GOSSIP_BYTES } from './ids.ts'

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

/** A frame or message that is not valid JSON or does not match its schema. */
export class InvalidMessageError extends Error {
  override name = 'InvalidMessageError'
}

/** A frame or message larger than the limit for its channel. */
export class MessageTooLargeError extends Error {
  override name = 'MessageTooLargeError'
}

function toJsonBytes(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value))
}

/**
 * A check that accepts a subset of what a schema accepts, returning the schema's output for it, or
 * undefined to leave the value to the schema (protocols/fast-frames.ts).
 */
export type FastCheck<T> = (value: unknown) => T | undefined

function parseJsonBytes<S extends z.ZodType>(bytes: Uint8Array, schema: S, fast?: FastCheck<z.output<S>>): z.output<S> {
  let json: unknown
  try {
    json = JSON.parse(decoder.decode(bytes))
  } catch (err) {
    throw new InvalidMessageError('not valid UTF-8 JSON', { cause: err })
  }
  const quick = fast?.(json)
  if (quick !== undefined) return quick
  const parsed = schema.safeParse(json)
  if (!parsed.success) {
    const first = parsed.error.issues[0]
    const where = first?.path.length ? ` at ${first.path.join('.')}` : ''
    throw new InvalidMessageError(`schema mismatch${where}: ${first?.message ?? 'invalid'}`)
  }
  return parsed.data
}

/** Encodes one frame: varint length, then the JSON bytes. Refuses frames over the limit. */
export function encodeFrame<S extends z.ZodType>(schema: S, value: z.input<S>, maxBytes = MAX_FRAME_BYTES): Uint8Array {
  const checked = schema.parse(value)
  const body = toJsonBytes(checked)
  if (body.byteLength > maxBytes) {
    throw new MessageTooLargeError(`frame of ${body.byteLength} bytes exceeds ${maxBytes}`)
  }
  return lp.encode.single(body).subarray()
}

/**
 * Encodes a frame this peer built itself from typed values: no schema pass (inside, types are
 * trusted; receivers validate every frame anyway), only the size limit. For the per-token path.
 */
export function encodeOwnFrame<T>(value: T, maxBytes = MAX_FRAME_BYTES): Uint8Array {
  const body = toJsonBytes(value)
  if (body.byteLength > maxBytes) {
    throw new MessageTooLargeError(`frame of ${body.byteLength} bytes exceeds ${maxBytes}`)
  }
  return lp.encode.single(body).subarray()
}

/**
 * Reads frames from a byte stream, each validated against `schema` (`fast` first, when given: a
 * check as strict as the schema for the frames that come often). Throws MessageTooLargeError as
 * soon as a length prefix announces more than `maxBytes` (before reading the body), and
 * InvalidMessageError for a frame that does not parse.
 */
export async function* decodeFrames<S extends z.ZodType>(
  source: AsyncIterable<Uint8Array | Uint8ArrayList> | Iterable<Uint8Array | Uint8ArrayList>,
  schema: S,
  maxBytes = MAX_FRAME_BYTES,
  fast?: FastCheck<z.output<S>>,
): AsyncGenerator<z.output<S>, void, undefined> {
  // it-length-prefixed drops a prefix from its buffer before the body arrives, so an end right
  // after a prefix looks clean to it: track whether a frame is open ourselves.
  let inFrame = false
  try {
    const frames = lp.decode(source, {
      maxDataLength: maxBytes,
      onLength: () => {
        inFrame = true
      },
      onData: () => {
        inFrame = false
      },
    })
    for await (const frame of frames) {
      yield parseJsonBytes(frame.subarray(), schema, fast)
    }
    if (inFrame) throw new InvalidMessageError('stream ended inside a frame')
  } catch (err) {
    if (err instanceof InvalidMessageError) throw err
    const name = (err as { name?: string } | null)?.name
    if (name === 'InvalidDataLengthError' || name === 'InvalidDataLengthLengthError') {
      throw new MessageTooLargeError(`frame exceeds ${maxBytes} bytes`, { cause: err })
    }
    if (name === 'UnexpectedEOFError') {
      throw new InvalidMessageError('stream ended inside a frame', { cause: err })
    }
    throw err
  }
}

/** Encodes a gossip payload, refusing one over the gossip limit. */
export function encodeGossip<S extends z.ZodType>(schema: S, value: z.input<S>): Uint8Array {
  const body = toJsonBytes(schema.parse(value))
  if (body.byteLength > MAX_GOSSIP_BYTES) {
    throw new MessageTooLargeError(`gossip message of ${body.byteLength} bytes exceeds ${MAX_GOSSIP_BYTES}`)
  }
  return body
}

/** Decodes a gossip payload: bounded, JSON, schema-checked. */
export function decodeGossip<S extends z.ZodType>(schema: S, bytes: Uint8Array): z.output<S> {
  if (bytes.byteLength > MAX_GOSSIP_BYTES) {
    throw new MessageTooLargeError(`gossip message of ${bytes.byteLength} bytes exceeds ${MAX_GOSSIP_BYTES}`)
  }
  return parseJsonBytes(bytes, schema)
}
