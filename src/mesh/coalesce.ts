// One TCP write per run of code instead of one per buffer. A libp2p frame on our connections
// reaches the socket as several small buffers (noise: 2-byte length, encrypted yamux header,
// encrypted data, tag), and @libp2p/tcp writes each with its own socket.write: four syscalls and
// four TCP segments per streamed token, each of which may wake the peer's process on its own.
// Corking the socket until the code that is running now has finished (a microtask) sends all of
// it as one writev: the same bytes, in the same order, and every frame written in one go (a batch
// of tokens, one per stream) in the same write. The write leaves as soon as that code ends, not at
// the end of the event-loop turn: a node that has just sent a token goes on to start the next
// decode step in the same run, and an end-of-turn flush (setImmediate, as this was first) held
// the token until that was done (~0.1 ms on the path to the first token).
import { Socket } from 'node:net'
import type { MessageStream } from '@libp2p/interface'

interface SocketConnection {
  socket?: unknown
  sendData?: (data: unknown) => unknown
}

/**
 * Makes a raw TCP connection (libp2p's socket-backed MultiaddrConnection) flush what it is given
 * during one run of code in a single write. Any other kind of connection is left as it is.
 */
export function coalesceSocketWrites<T extends MessageStream>(connection: T): T {
  const conn = connection as unknown as SocketConnection
  const socket = conn.socket
  const sendData = conn.sendData
  if (!(socket instanceof Socket) || typeof sendData !== 'function') return connection
  let corked = false
  const uncork = (): void => {
    corked = false
    socket.uncork()
  }
  conn.sendData = (data: unknown): unknown => {
    if (!corked && !socket.destroyed) {
      corked = true
      socket.cork()
      queueMicrotask(uncork)
    }
    return sendData.call(connection, data)
  }
  return connection
}
