// Small helpers for our request protocols on libp2p 3 streams: write frames with backpressure,
// serve and fetch the capabilities record.
import type { Stream } from '@libp2p/interface'
import { peerIdFromString } from '@libp2p/peer-id'
import {
  CAPABILITIES_PROTOCOL,
  type Capabilities,
  CapabilitiesSchema,
  decodeFrames,
  encodeFrame,
  STREAM_LIMITS,
} from '../../protocols/index.ts'
import { CAPABILITIES_FETCH_TIMEOUT_MS } from './constants.ts'
import type { MeshPeer } from './peer.ts'

/** Sends bytes, waiting for the stream to drain when its buffer is full. */
export async function sendBytes(stream: Stream, bytes: Uint8Array, signal?: AbortSignal): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain(signal ? { signal } : {})
}

/** Answers capabilities requests with the current record. */
export async function serveCapabilities(peer: MeshPeer, current: () => Capabilities): Promise<void> {
  await peer.handle(
    CAPABILITIES_PROTOCOL,
    async (stream) => {
      try {
        await sendBytes(stream, encodeFrame(CapabilitiesSchema, current()))
        await stream.close()
      } catch (err) {
        stream.abort(err as Error)
      }
    },
    STREAM_LIMITS.capabilities,
  )
}

/** Asks a node for its capabilities record. */
export async function fetchCapabilities(
  peer: MeshPeer,
  peerId: string,
  timeoutMs = CAPABILITIES_FETCH_TIMEOUT_MS,
): Promise<Capabilities> {
  const signal = AbortSignal.timeout(timeoutMs)
  const stream = await peer.dialProtocol(peerIdFromString(peerId), CAPABILITIES_PROTOCOL, { signal })
  try {
    await stream.close({ signal })
    for await (const caps of decodeFrames(stream, CapabilitiesSchema)) {
      return caps
    }
    throw new Error(`${peerId} closed the capabilities stream without an answer`)
  } finally {
    if (stream.status === 'open') stream.abort(new Error('done'))
  }
}
