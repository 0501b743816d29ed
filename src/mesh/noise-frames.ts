// Noise reads its messages with @libp2p/utils' LengthPrefixedDecoder and a 2-byte length decoder that
// throws a RangeError when fewer than 2 bytes are buffered; the decoder's loop catches that to stop.
// So every chunk received on a connection ends in a thrown and caught exception once its last
// message is out (the buffer is empty), and creating the error (its stack trace) is what it costs:
// tens of µs per chunk here, on both sides of every streamed token, right after the token's message
// is delivered and before the code waiting for it runs. A length of 0 for a buffer shorter than the
// prefix stops the same loop without one: the frame it announces (2 + 0 bytes) is not complete
// either, so nothing is read or consumed; a real length is decoded as before.
import type { SecuredConnection } from '@libp2p/interface'

interface LengthDecoding {
  lengthDecoder?: (data: { byteLength: number }) => number
  encodingLength?: (value: number) => number
}

/** Lets a noise connection's message decoder stop on a short buffer without throwing (see above). */
export function stopWithoutThrowing<T>(secured: SecuredConnection<T>): SecuredConnection<T> {
  const decoder = (secured.connection as unknown as { decoder?: LengthDecoding }).decoder
  const decode = decoder?.lengthDecoder
  // Only noise's fixed 2-byte prefix: for a varint prefix a 0 would announce a 1-byte frame.
  if (decoder == null || decode == null || decoder.encodingLength?.(0) !== 2) return secured
  decoder.lengthDecoder = (data) => (data.byteLength < 2 ? 0 : decode(data))
  return secured
}
