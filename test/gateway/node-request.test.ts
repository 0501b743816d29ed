// The inference routes read their JSON body from Node's own request on @hono/node-server: a body
// that came whole with the headers is taken from the stream's buffer at once, one that arrives in
// parts is read to its end; both must give the same JSON, and a body that is not JSON a 400.
import { once } from 'node:events'
import type { AddressInfo } from 'node:net'
import { connect } from 'node:net'
import { type ServerType, serve } from '@hono/node-server'
import { Hono } from 'hono'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ApiError } from '../../gateway/errors.ts'
import { readJsonObject, requestHeader } from '../../gateway/node-request.ts'

let server: ServerType
let headersApp: Hono
let port: number

beforeAll(async () => {
  const app = new Hono()
  app.post('/echo', async (c) => {
    try {
      return c.json({ got: await readJsonObject(c) })
    } catch (err) {
      if (err instanceof ApiError) return c.json({ error: err.message }, 400)
      throw err
    }
  })
  app.get('/headers', (c) =>
    c.json({
      id: requestHeader(c, 'x-request-id') ?? null,
      idAnyCase: requestHeader(c, 'X-Request-ID') ?? null,
      auth: requestHeader(c, 'authorization') ?? null,
      accept: requestHeader(c, 'accept') ?? null,
      missing: requestHeader(c, 'x-missing') ?? null,
    }),
  )
  headersApp = app
  server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' })
  await once(server, 'listening')
  port = (server.address() as AddressInfo).port
})

afterAll(() => {
  server.close()
})

/** Sends a raw HTTP request, the body in the given parts with a pause between them; the response text. */
async function post(
  parts: Array<string | Buffer>,
  headers: Record<string, string>,
): Promise<{ status: number; body: string }> {
  const socket = connect(port, '127.0.0.1')
  await once(socket, 'connect')
  const head = Object.entries({ host: 'x', connection: 'close', ...headers })
    .map(([k, v]) => `${k}: ${v}\r\n`)
    .join('')
  socket.write(`POST /echo HTTP/1.1\r\n${head}\r\n`)
  socket.write(parts[0] ?? '')
  for (const part of parts.slice(1)) {
    await new Promise((r) => setTimeout(r, 30))
    socket.write(part)
  }
  const chunks: Buffer[] = []
  socket.on('data', (d: Buffer) => chunks.push(d))
  await once(socket, 'end')
  const text = Buffer.concat(chunks).toString('utf8')
  const status = Number(text.slice(9, 12))
  return { status, body: text.slice(text.indexOf('\r\n\r\n') + 4) }
}

describe('readJsonObject on @hono/node-server', () => {
  const json = JSON.stringify({ model: 'm', messages: [{ role: 'user', content: 'héllo' }] })
  const length = String(Buffer.byteLength(json))

  it('reads a body that came with the headers', async () => {
    const r = await post([json], { 'content-type': 'application/json', 'content-length': length })
    expect(r.status).toBe(200)
    expect(JSON.parse(r.body)).toEqual({ got: JSON.parse(json) })
  })

  it('reads a body that arrives in parts, the split inside a character', async () => {
    const bytes = Buffer.from(json)
    const cut = bytes.indexOf(Buffer.from('é')) + 1
    const r = await post([bytes.subarray(0, cut), bytes.subarray(cut)], {
      'content-type': 'application/json',
      'content-length': length,
    })
    expect(r.status).toBe(200)
    expect(JSON.parse(r.body)).toEqual({ got: JSON.parse(json) })
  })

  it('reads a chunked body', async () => {
    const a = json.slice(0, 10)
    const b = json.slice(10)
    const r = await post(
      [`${Buffer.byteLength(a).toString(16)}\r\n${a}\r\n`, `${Buffer.byteLength(b).toString(16)}\r\n${b}\r\n0\r\n\r\n`],
      { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
    )
    expect(r.status).toBe(200)
    expect(JSON.parse(r.body)).toEqual({ got: JSON.parse(json) })
  })

  it('says 400 for a body that is not JSON, whole or empty', async () => {
    for (const body of ['{"model":', '']) {
      const r = await post([body], { 'content-type': 'application/json', 'content-length': String(body.length) })
      expect(r.status).toBe(400)
      expect(JSON.parse(r.body)).toEqual({ error: 'The request body is not valid JSON.' })
    }
  })
})

describe('requestHeader', () => {
  it("reads Node's parsed headers as hono would: repeats joined (Authorization too), a missing one undefined", async () => {
    const socket = connect(port, '127.0.0.1')
    await once(socket, 'connect')
    socket.write(
      'GET /headers HTTP/1.1\r\nhost: x\r\nconnection: close\r\nX-Request-Id: abc\r\n' +
        'Authorization: Bearer one\r\nAuthorization: Bearer two\r\naccept: text/a\r\naccept: text/b\r\n\r\n',
    )
    const chunks: Buffer[] = []
    socket.on('data', (d: Buffer) => chunks.push(d))
    await once(socket, 'end')
    const text = Buffer.concat(chunks).toString('utf8')
    expect(JSON.parse(text.slice(text.indexOf('\r\n\r\n') + 4))).toEqual({
      id: 'abc',
      idAnyCase: 'abc',
      auth: 'Bearer one, Bearer two',
      accept: 'text/a, text/b',
      missing: null,
    })
  })

  it('falls back to hono where there is no Node request (app.request)', async () => {
    const res = await headersApp.request('/headers', { headers: { 'x-request-id': 'def', authorization: 'Bearer k' } })
    expect(await res.json()).toEqual({ id: 'def', idAnyCase: 'def', auth: 'Bearer k', accept: null, missing: null })
  })
})
