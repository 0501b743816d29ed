// Reading a libp2p stream to its end must end. In @libp2p/utils 7.4 readers (the stream's own async
// iterator, byte streams, bitswap) learn that the remote closed its write side from one
// 'remoteCloseWrite' event. If it fires before they listen — while protocol negotiation was still
// reading the stream (which then hands the unread bytes back), or while nobody read yet — they get
// the buffered data once they start, then only an 'end' event that they do not listen to, and
// `for await (… of stream)` waits forever. Seen as a registry sync that never finished when its
// answer arrived during `await stream.close()`.
// The fix: when buffered data is delivered after the remote closed its write side, leaving nothing
// buffered, 'remoteCloseWrite' is announced again, so the reader that just got that data ends too.
// A reader that already heard it ends only once (ending an ended reader does nothing).
import { AbstractMessageStream } from '@libp2p/utils'

interface StreamInternals {
  readBuffer: { byteLength: number }
  remoteWriteStatus: string
  dispatchReadBuffer(): void
  safeDispatchEvent(type: string): void
}

let installed = false

/** Installs the fix for every stream of this process (idempotent). */
export function endReadersAfterBufferedData(): void {
  if (installed) return
  installed = true
  const proto = AbstractMessageStream.prototype as unknown as StreamInternals
  const dispatchReadBuffer = proto.dispatchReadBuffer
  proto.dispatchReadBuffer = function (this: StreamInternals): void {
    const buffered = this.readBuffer.byteLength
    dispatchReadBuffer.call(this)
    if (buffered > 0 && this.readBuffer.byteLength === 0 && this.remoteWriteStatus === 'closed') {
      this.safeDispatchEvent('remoteCloseWrite')
    }
  }
}
