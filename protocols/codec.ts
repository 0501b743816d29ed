// The bytes of our wire: JSON payloads, unsigned-varint length-prefixed frames on streams, and
// size-bounded gossip payloads. Decoding always validates against a schema and bounds the size.
import * as lp from 'it-length-prefixed'
import { Uint8ArrayList } from 'uint8arraylist'
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
  // Decoded here rather than with it-length-prefixed's decoder: one async generator less per frame
  // (every token crosses this twice), and a stream that ends right after a prefix is an error.
  const buffer = new Uint8ArrayList()
  let length = -1 // body length of the frame being read, once its prefix is complete
  for await (const chunk of source) {
    buffer.append(chunk)
    for (;;) {
      if (length < 0) {
        length = takeLength(buffer, maxBytes)
        if (length < 0) break
      }
      if (buffer.byteLength < length) break
      const body = buffer.subarray(0, length)
      buffer.consume(length)
      length = -1
      yield parseJsonBytes(body, schema, fast)
    }
  }
  if (length >= 0 || buffer.byteLength > 0) throw new InvalidMessageError('stream ended inside a frame')
}

/** An unsigned varint needs at most 8 bytes for any length we could accept (as it-length-prefixed). */
const MAX_PREFIX_BYTES = 8

/**
 * Reads and consumes the varint length prefix at the start of `buffer`: -1 when it is not complete
 * yet; MessageTooLargeError as soon as it announces more than `maxBytes`.
 */
function takeLength(buffer: Uint8ArrayList, maxBytes: number): number {
  let value = 0
  const n = Math.min(buffer.byteLength, MAX_PREFIX_BYTES)
  for (let i = 0; i < n; i++) {
    const byte = buffer.get(i)
    value += (byte & 0x7f) * 2 ** (7 * i)
    if (value > maxBytes) throw new MessageTooLargeError(`frame exceeds ${maxBytes} bytes`)
    if (byte < 0x80) {
      buffer.consume(i + 1)
      return value
    }
  }
  if (buffer.byteLength >= MAX_PREFIX_BYTES) throw new MessageTooLargeError(`frame exceeds ${maxBytes} bytes`)
  return -1
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
