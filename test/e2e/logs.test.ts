// Structured logs: one JSON line per request with its id, and a chat completion's id followed from
// the gateway's log into the node's; the id is answered in X-Request-Id; no secret in any line.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { createLogger } from '../../src/log.ts'
import { fundedUser, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { memoryLog as memory } from '../helpers/memory-log.ts'

describe('structured logs', () => {
  let gw: RunningGateway
  let node: RunningNode
  const gwLog = memory()
  const nodeLog = memory()
  const dirs: Array<{ remove: () => Promise<void> }> = []

  beforeAll(async () => {
    const g = await tempDir('logs-gw')
    const n = await tempDir('logs-node')
    dirs.push(g, n)
    gw = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      logger: createLogger({ role: 'gateway', level: 'info', destination: gwLog.stream }),
    })
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [{ path: await tinyModelPath(), id: 'logged' }],
      threads: 1,
      gpu: false,
      heartbeatIntervalMs: 200,
      logger: createLogger({ role: 'node', level: 'info', destination: nodeLog.stream }),
    })
    await waitFor(() => gw.directory.nodesServing('logged').length === 1, 15_000, 'the node')
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    for (const d of dirs) await d.remove()
  })

  it('follows a chat completion from the gateway to the node by its id, and logs no secret', async () => {
    const key = await fundedUser(gw, 'logs@example.com')
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'logged', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 }),
    })
    expect(res.status).toBe(200)
    const { id } = (await res.json()) as { id: string }
    expect(res.headers.get('x-request-id')).toBe(id)
    await waitFor(() => nodeLog.lines().some((l) => l.reqId === id), 5_000, 'the node line')
    await waitFor(() => gwLog.lines().some((l) => l.reqId === id && l.msg === 'request'), 5_000, 'the gateway line')

    expect(gwLog.lines().find((l) => l.reqId === id && l.msg === 'request')).toMatchObject({
      role: 'gateway',
      method: 'POST',
      path: '/v1/chat/completions',
      status: 200,
      level: 30,
    })
    expect(gwLog.lines().find((l) => l.reqId === id && l.msg === 'inference complete')).toMatchObject({
      model: 'logged',
      node: node.peerId,
      payer: 'api_key',
    })
    expect(nodeLog.lines().find((l) => l.reqId === id)).toMatchObject({
      role: 'node',
      msg: 'inference served',
      model: 'logged',
    })

    // A wrong key, a login with a password, a client's own request id.
    await fetch(`${gw.url}/v1/models`, { headers: { authorization: 'Bearer sk-cluster-not-a-real-key-at-all' } })
    await fetch(`${gw.url}/api/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: 'logs@example.com', password: 'correct horse battery' }),
    })
    const mine = await fetch(`${gw.url}/health`, { headers: { 'x-request-id': 'trace-42' } })
    expect(mine.headers.get('x-request-id')).toBe('trace-42')
    await waitFor(() => gwLog.lines().some((l) => l.reqId === 'trace-42'), 5_000, 'the client id logged')
    const bad = await fetch(`${gw.url}/health`, { headers: { 'x-request-id': 'no spaces or \u00e9 allowed' } })
    expect(bad.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/)

    const everything = gwLog.raw() + nodeLog.raw()
    for (const secret of [key, 'sk-cluster-not-a-real-key-at-all', 'correct horse battery', 'Bearer']) {
      expect(everything).not.toContain(secret)
    }
  })
})
