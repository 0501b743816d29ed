// The chat route's event stream on a real @hono/node-server: headers set by middleware before the
// route travel in the same socket write as the first event, a client that stops reading holds the
// writer back (drain), a client that leaves releases it, and off Node it is hono's streamSSE.
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { connect, type Socket } from 'node:net'
import { type ServerType, serve } from '@hono/node-server'
import { Hono } from 'hono'
import { afterEach, describe, expect, it } from 'vitest'
import { clientSignal } from '../../gateway/node-request.ts'
import { type EventSink, streamEvents } from '../../gateway/sse.ts'

interface Served {
  port: number
  /** Every write the server made on its sockets, in order. */
  writes: string[]
  server: ServerType
}

const servers: ServerType[] = []
afterEach(async () => {
  for (const s of servers.splice(0)) {
    ;(s as unknown as { closeAllConnections(): void }).closeAllConnections()
    await new Promise((r) => s.close(r))
  }
})

async function serveApp(app: Hono): Promise<Served> {
  const writes: string[] = []
  const server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' })
  servers.push(server)
  server.on('connection', (socket: Socket) => {
    const s = socket as unknown as {
      _write(chunk: Buffer, enc: string, cb: () => void): void
      _writev(chunks: Array<{ chunk: Buffer | string }>, cb: () => void): void
    }
    const write = s._write.bind(socket)
    const writev = s._writev.bind(socket)
    s._write = (chunk, enc, cb) => {
      writes.push(chunk.toString())
      write(chunk, enc, cb)
    }
    s._writev = (chunks, cb) => {
      writes.push(chunks.map((c) => c.chunk.toString()).join(''))
      writev(chunks, cb)
    }
  })
  await once(server, 'listening')
  return { port: (server.address() as AddressInfo).port, writes, server }
}

/** A raw HTTP/1.1 client: what it received, as text. */
function rawGet(
  port: number,
  path: string,
): { socket: Socket; received: () => string; until: (s: string) => Promise<void> } {
  const socket = connect(port, '127.0.0.1')
  let text = ''
  socket.setEncoding('utf8').on('data', (d: string) => {
    text += d
  })
  socket.write(`GET ${path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`)
  // The answer is the end of the stream (the server keeps the connection alive after it).
  const until = async (end: string): Promise<void> => {
    while (!text.includes(end)) await new Promise((r) => setTimeout(r, 5))
  }
  return { socket, received: () => text, until }
}

function appWith(route: (sink: EventSink, signal: AbortSignal) => Promise<void>): Hono {
  const app = new Hono()
  app.use('*', async (c, next) => {
    c.header('X-Before', 'set-before-next')
    await next()
  })
  app.get('/events', (c) => {
    const signal = clientSignal(c)
    c.header('X-Route', 'route')
    return streamEvents(c, new AbortController(), (sink) => route(sink, signal))
  })
  return app
}

describe('streamEvents on @hono/node-server', () => {
  it('sends the status line, the headers set so far and the first event in one socket write', async () => {
    const { port, writes } = await serveApp(
      appWith(async (sink) => {
        await sink.write('data: first\n\n')
        await sink.write('data: [DONE]\n\n')
      }),
    )
    const client = rawGet(port, '/events')
    await client.until('data: [DONE]\n\n')
    const first = writes[0] ?? ''
    expect(first).toMatch(/^HTTP\/1\.1 200 OK\r\n/)
    expect(first.toLowerCase()).toContain('x-before: set-before-next')
    expect(first.toLowerCase()).toContain('x-route: route')
    expect(first.toLowerCase()).toContain('content-type: text/event-stream')
    expect(first.toLowerCase()).toContain('transfer-encoding: chunked')
    expect(first).toContain('data: first\n\n')
  })

  it('waits for drain when the client stops reading, and goes on when it reads again', async () => {
    const event = `data: ${'x'.repeat(64 * 1024)}\n\n`
    let written = 0
    let finished = false
    const { port } = await serveApp(
      appWith(async (sink) => {
        for (let i = 0; i < 200; i++) {
          await sink.write(event)
          written++
        }
        await sink.write('data: [DONE]\n\n')
        finished = true
      }),
    )
    const client = rawGet(port, '/events')
    client.socket.pause()
    await new Promise((r) => setTimeout(r, 300))
    // 200 × 64 KiB = 12.5 MiB: far more than the socket buffers hold.
    expect(written).toBeLessThan(200)
    const held = written
    await new Promise((r) => setTimeout(r, 200))
    expect(written).toBe(held)
    client.socket.resume()
    await client.until('data: [DONE]\n\n')
    expect(finished).toBe(true)
    expect(client.received().split(event).length - 1).toBe(200)
  })

  it('a client that leaves aborts the signal and releases a writer waiting for drain', async () => {
    const event = `data: ${'y'.repeat(64 * 1024)}\n\n`
    let aborted = false
    let done!: () => void
    const routeEnded = new Promise<void>((r) => {
      done = r
    })
    const { port } = await serveApp(
      appWith(async (sink, signal) => {
        signal.addEventListener('abort', () => {
          aborted = true
        })
        try {
          // Writes after the client left resolve at once: the loop ends instead of hanging.
          for (let i = 0; i < 1000; i++) await sink.write(event)
        } finally {
          done()
        }
      }),
    )
    const client = rawGet(port, '/events')
    client.socket.pause()
    await new Promise((r) => setTimeout(r, 200))
    client.socket.destroy()
    await routeEnded
    expect(aborted).toBe(true)
  })
})

describe('streamEvents elsewhere (app.request)', () => {
  it('is streamSSE: same headers and bytes', async () => {
    const app = appWith(async (sink) => {
      await sink.write('data: first\n\n')
      await sink.write('data: [DONE]\n\n')
    })
    const res = await app.request('/events')
    expect(res.status).toBe(200)
    expect(res.headers.get('x-before')).toBe('set-before-next')
    expect(res.headers.get('x-route')).toBe('route')
    expect(res.headers.get('content-type')).toBe('text/event-stream')
    expect(await res.text()).toBe('data: first\n\ndata: [DONE]\n\n')
  })
})
