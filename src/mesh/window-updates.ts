// Yamux window updates once half the receive window is used, not after every data frame.
// @chainsafe/libp2p-yamux 8 answers every data frame it receives with a window update, written
// (encrypted by noise, framed) synchronously while the frame is being received, before the reader
// gets it: on a streamed answer that is one more encrypted frame per token each way, a socket
// write on one side and a wake-up of the other's process, with the first token waiting behind it.
// Go's yamux (the reference implementation) sends one only when at least half the window has been
// consumed; the sender then still holds at least half a window of credit (128 KiB by default), so
// no sender ever waits for it. Updates that carry flags (SYN/ACK) and paused streams go through
// unchanged.
import { StreamState, YamuxStream } from '@chainsafe/libp2p-yamux/stream'

interface WindowState {
  state: StreamState
  recvWindow: number
  recvWindowCapacity: number
}

let installed = false

/** Installs the rule for every yamux stream of this process (idempotent). */
export function sendWindowUpdatesAtHalf(): void {
  if (installed) return
  installed = true
  const proto = YamuxStream.prototype as unknown as { sendWindowUpdate(): void }
  const sendWindowUpdate = proto.sendWindowUpdate
  proto.sendWindowUpdate = function (this: WindowState & { sendWindowUpdate(): void }): void {
    if (this.state === StreamState.Established && this.recvWindowCapacity > this.recvWindow / 2) return
    sendWindowUpdate.call(this)
  }
}
