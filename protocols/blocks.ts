// Frames of the blocks protocol (BLOCKS_PROTOCOL): the requester sends wants (a CID each), the
// provider answers every want, in order, with the block or "absent". Binary, length-prefixed with
// an unsigned varint: a block is bytes, and JSON would inflate it by a third.
import { CID } from 'multiformats/cid'
import { Uint8ArrayList } from 'uint8arraylist'
import { InvalidMessageError } from './codec.ts'

/** Largest want frame: a CID (CIDv1 with a sha2-256 multihash is 36 bytes). */
export const MAX_WANT_BYTES = 128

/** Largest block a provider sends or a requester accepts (Helia's and bitswap's own limit). */
export const MAX_BLOCK_BYTES = 2 * 1024 * 1024

/** Largest answer frame: its kind byte and a block. */
export const MAX_ANSWER_BYTES = MAX_BLOCK_BYTES + 1

/** The first byte of an answer frame. */
export const ANSWER_KIND = { block: 0, absent: 1 } as const

export type BlockAnswer = { type: 'block'; bytes: Uint8Array } | { type: 'absent' }

export function encodeWant(cid: CID): Uint8Array {
  return cid.bytes
}

export function decodeWant(frame: Uint8ArrayList | Uint8Array): CID {
  if (frame.byteLength > MAX_WANT_BYTES) throw new InvalidMessageError(`want of ${frame.byteLength} bytes`)
  try {
    return CID.decode(frame.subarray())
  } catch (err) {
    throw new InvalidMessageError('want is not a CID', { cause: err })
  }
}

/** A block answer; the block's own buffers are kept as they are (no copy). */
export function encodeBlockAnswer(block: Uint8Array | Uint8ArrayList): Uint8ArrayList {
  if (block.byteLength > MAX_BLOCK_BYTES) throw new InvalidMessageError(`block of ${block.byteLength} bytes`)
  return new Uint8ArrayList(Uint8Array.of(ANSWER_KIND.block), block)
}

export function encodeAbsentAnswer(): Uint8Array {
  return Uint8Array.of(ANSWER_KIND.absent)
}

export function decodeAnswer(frame: Uint8ArrayList): BlockAnswer {
  if (frame.byteLength < 1 || frame.byteLength > MAX_ANSWER_BYTES) {
    throw new InvalidMessageError(`answer of ${frame.byteLength} bytes`)
  }
  const kind = frame.get(0)
  if (kind === ANSWER_KIND.absent && frame.byteLength === 1) return { type: 'absent' }
  if (kind === ANSWER_KIND.block) return { type: 'block', bytes: frame.subarray(1) }
  throw new InvalidMessageError(`answer of kind ${kind} and ${frame.byteLength} bytes`)
}
