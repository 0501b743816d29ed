// The admin feed under load: a monitor that stops reading is closed with 4008 once its unsent
// events pass the bound (memory stays bounded), while a monitor that reads gets every event.
// A real Directory fed heartbeats as fast as it takes them, a real HTTP server, real ws clients.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { WebSocket } from 'ws'
import { Accounts } from '../../gateway/accounts.ts'
import { AdminFeed } from '../../gateway/admin-ws.ts'
import type { Heartbeat } from '../../protocols/index.ts'
import { LevelLedger } from '../../src/ledger/level-ledger.ts'
import { GatewaySecret } from '../../src/ledger/secrets.ts'
import { Directory } from '../../src/mesh/directory.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

const MAX_BUFFERED = 64 * 1024

describe('AdminFeed bounds', () => {
  let server: Server
  let feed: AdminFeed
  let directory: Directory
  let ledger: LevelLedger
  let key: string
  let url: string
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    const dir = await tempDir('admin-feed')
    cleanups.push(dir.remove)
    ledger = new LevelLedger(`${dir.path}/ledger`)
    await ledger.open()
    const accounts = new Accounts(ledger, await GatewaySecret.load(dir.path, {}))
    key = (await accounts.register('ops@example.com', null, 'admin')).apiKey
    directory = new Directory()
    feed = new AdminFeed({ accounts, directory, maxBufferedBytes: MAX_BUFFERED })
    server = createServer((_req, res) => res.end())
    feed.attach(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/ws/admin`
  })

  afterAll(async () => {
    feed.close()
    server.closeAllConnections()
    await new Promise((r) => server.close(r))
    await ledger.close()
    for (const c of cleanups) await c()
  })

  const connect = async (): Promise<{ ws: WebSocket; got: () => number; closed: Promise<number> }> => {
    const ws = new WebSocket(url)
    let n = 0
    let authed: () => void = () => undefined
    const ready = new Promise<void>((r) => {
      authed = r
    })
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as { type: string }
      if (m.type === 'authenticated') authed()
      else if (m.type === 'node:heartbeat') n++
    })
    const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)))
    await new Promise((r) => ws.once('open', r))
    ws.send(JSON.stringify({ type: 'auth', token: key }))
    await ready
    return { ws, got: () => n, closed }
  }

  const beat = (seq: number): Heartbeat => ({
    v: 1,
    peerId: '12D3KooWLoadGenerator',
    incarnation: 1,
    seq,
    sentAt: Date.now(),
    intervalMs: 1000,
    state: 'serving',
    load: { active: 1, queued: 0, slots: 4, maxQueue: 32 },
    capabilitiesVersion: 1,
    models: ['a-model-with-a-long-enough-name-to-make-events-a-few-hundred-bytes'],
  })

  it('closes a monitor that does not read (4008) and keeps serving one that does', async () => {
    const reader = await connect()
    const stalled = await connect()
    // Stop reading from the socket: the server's writes pile up behind it.
    ;(stalled.ws as unknown as { _socket: { pause(): void } })._socket.pause()
    let seq = 0
    const sent = (): number => seq
    // Heartbeats as fast as the event loop allows, in bursts, until the stalled one is dropped.
    const deadline = Date.now() + 20_000
    while (feed.stats.droppedSlow === 0 && Date.now() < deadline) {
      for (let i = 0; i < 500; i++) directory.handleHeartbeat(beat(seq++))
      await new Promise((r) => setImmediate(r))
    }
    expect(feed.stats.droppedSlow).toBe(1)
    expect(feed.connections).toBe(1)
    ;(stalled.ws as unknown as { _socket: { resume(): void } })._socket.resume()
    expect(await stalled.closed).toBe(4008)
    // The reader got every heartbeat, the last one included.
    await waitFor(() => reader.got() === sent(), 10_000, 'the reader to catch up')
    reader.ws.close()
  }, 30_000)
})
