// Every streamed token crosses two libp2p connections, and each frame reaches the TCP socket as
// several small buffers. coalesceSocketWrites must turn the buffers written in one run of code into
// one socket write (one syscall, one segment) without changing a byte, send it as soon as that code
// has run (not at the end of the event-loop turn), and must leave connections that are not raw
// sockets alone. Checked on a real loopback socket.
import { once } from 'node:events'
import { createServer, type Server, Socket } from 'node:net'
import type { MessageStream } from '@libp2p/interface'
import { afterEach, describe, expect, it } from 'vitest'
import { coalesceSocketWrites } from '../../src/mesh/coalesce.ts'

/** What @libp2p/tcp's connection does: one socket.write per buffer it is given. */
class FakeSocketConnection {
  constructor(readonly socket: Socket) {}
  sendData(data: Uint8Array[]): { sentBytes: number; canSendMore: boolean } {
    let sentBytes = 0
    let canSendMore = true
    for (const buf of data) {
      sentBytes += buf.byteLength
      canSendMore = this.socket.write(buf)
    }
    return { sentBytes, canSendMore }
  }
}

let server: Server | undefined
const sockets: Socket[] = []
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy()
  server?.close()
  server = undefined
})

/** A connected client socket, and everything the server side receives. */
async function connected(): Promise<{ client: Socket; received: () => Buffer }> {
  const chunks: Buffer[] = []
  server = createServer((s) => {
    sockets.push(s)
    s.on('data', (d: Buffer) => chunks.push(d))
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const { port } = server.address() as { port: number }
  const client = new Socket()
  sockets.push(client)
  client.setNoDelay(true)
  client.connect(port, '127.0.0.1')
  await once(client, 'connect')
  return { client, received: () => Buffer.concat(chunks) }
}

/** Counts the writes the socket hands to the OS (one per _write, one per _writev). */
function countWrites(socket: Socket): { writes: number; buffers: number } {
  const counts = { writes: 0, buffers: 0 }
  const s = socket as unknown as {
    _write: (...a: unknown[]) => void
    _writev: (chunks: unknown[], cb: unknown) => void
  }
  const write = s._write.bind(socket)
  const writev = s._writev.bind(socket)
  s._write = (...a) => {
    counts.writes++
    counts.buffers++
    write(...a)
  }
  s._writev = (chunks, cb) => {
    counts.writes++
    counts.buffers += chunks.length
    writev(chunks, cb)
  }
  return counts
}

const frame = (n: number): Uint8Array[] => [
  Uint8Array.of(0, 30 + n),
  new Uint8Array(12).fill(n),
  new Uint8Array(20).fill(100 + n),
  new Uint8Array(16).fill(200 + n),
]

async function until(check: () => boolean): Promise<void> {
  const deadline = Date.now() + 2_000
  while (!check()) {
    if (Date.now() > deadline) throw new Error('timed out')
    await new Promise((r) => setTimeout(r, 5))
  }
}

describe('coalesceSocketWrites', () => {
  it('sends the buffers of one run of code as one write, at once, bytes and order unchanged', async () => {
    const { client, received } = await connected()
    const conn = new FakeSocketConnection(client)
    expect(coalesceSocketWrites(conn as unknown as MessageStream)).toBe(conn)
    const counts = countWrites(client)

    // Two frames written one after the other (two streams' tokens of one decode step): one write.
    const result = conn.sendData(frame(1))
    expect(result).toEqual({ sentBytes: 50, canSendMore: true })
    conn.sendData(frame(2))
    expect(counts.writes).toBe(0) // held while that code runs…
    await Promise.resolve()
    expect(counts).toEqual({ writes: 1, buffers: 8 }) // …and not a moment longer: no event-loop turn

    // Later code gets its own write.
    conn.sendData(frame(3))
    await Promise.resolve()
    expect(counts).toEqual({ writes: 2, buffers: 12 })

    const expected = Buffer.concat([...frame(1), ...frame(2), ...frame(3)])
    await until(() => received().length >= expected.length)
    expect(received().equals(expected)).toBe(true)
  })

  it('without it, the same frame is four writes', async () => {
    const { client } = await connected()
    const conn = new FakeSocketConnection(client)
    const counts = countWrites(client)
    conn.sendData(frame(1))
    await new Promise((r) => setImmediate(r))
    expect(counts.writes).toBe(4)
  })

  it('leaves a connection without a socket untouched', () => {
    const sendData = (): void => undefined
    const other = { sendData }
    expect(coalesceSocketWrites(other as unknown as MessageStream)).toBe(other)
    expect(other.sendData).toBe(sendData)
  })
})
