// The admin WebSocket, as the docs' JavaScript example uses it (a WebSocket, an auth message, then
// JSON events): a monitor on one gateway sees the whole mesh — a node joining and beating, a model
// deployed, an inference served through a second gateway, the model undeployed, the node leaving —
// in order, from gossip. Refusals close with the policy-violation code.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import type { AdminEvent } from '../../protocols/index.ts'
import { monitor } from '../helpers/admin-monitor.ts'
import { fundedUser, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { uploadModel } from '../helpers/models.ts'

const LOOP = ['/ip4/127.0.0.1/tcp/0']

describe('/ws/admin', () => {
  let gw1: RunningGateway
  let gw2: RunningGateway
  let node: RunningNode | undefined
  let adminKey: string
  const dirs: Array<{ remove: () => Promise<void> }> = []
  const dir = async (name: string): Promise<string> => {
    const d = await tempDir(name)
    dirs.push(d)
    return d.path
  }

  beforeAll(async () => {
    const d1 = await dir('admin-ws-gw1')
    gw1 = await startGateway({ dataDir: d1, listen: LOOP, port: 0, adminFeed: { authTimeoutMs: 500 } })
    gw2 = await startGateway({ dataDir: await dir('admin-ws-gw2'), listen: LOOP, port: 0, bootstrap: gw1.multiaddrs() })
    adminKey = (await readFile(join(d1, 'admin.key'), 'utf8')).trim()
  })

  afterAll(async () => {
    await node?.stop()
    await gw2?.stop()
    await gw1?.stop()
    for (const d of dirs) await d.remove()
  })

  it('shows the whole mesh, in order: join, heartbeat, deploy, an inference through another gateway, undeploy, leave', async () => {
    const m = monitor(`${gw1.url}/ws/admin`, { type: 'auth', token: adminKey })
    await waitFor(() => m.messages.some((x) => x.type === 'authenticated'), 5_000, 'authenticated')
    const events = () => m.messages.filter((x) => x.type !== 'authenticated') as AdminEvent[]
    const of = <T extends AdminEvent['type']>(type: T) =>
      events().filter((e) => e.type === type) as Array<Extract<AdminEvent, { type: T }>>

    // The node joins through the second gateway only.
    node = await startNode({
      dataDir: await dir('admin-ws-node'),
      listen: LOOP,
      bootstrap: gw2.multiaddrs(),
      models: [],
      threads: 1,
      gpu: false,
      heartbeatIntervalMs: 200,
    })
    const nodeId = node.peerId
    await waitFor(() => of('node:heartbeat').length >= 2, 10_000, 'heartbeats')
    expect(of('node:joined')[0]).toMatchObject({ nodeId, models: [] })
    expect(of('node:heartbeat')[0]).toMatchObject({ nodeId, load: { active: 0, queued: 0 } })

    // A model uploaded to and deployed through the second gateway.
    const user = await fundedUser(gw2, 'admin-ws@example.com')
    const up = await uploadModel(gw2.url, user, { name: 'watched' }, { path: await tinyModelPath() })
    expect(up.status).toBe(201)
    const { cid } = (await up.json()) as { cid: string }
    const deploy = await fetch(`${gw2.url}/api/models/watched/deploy`, {
      method: 'POST',
      headers: { authorization: `Bearer ${user}` },
    })
    expect(deploy.status).toBe(202)
    await waitFor(() => of('model:deployed').length === 1, 20_000, 'model:deployed')
    expect(of('model:deployed')[0]).toMatchObject({ modelId: 'watched', cid, version: 1, nodeId })

    // An inference served through the second gateway.
    await waitFor(() => gw2.directory.nodesServing('watched').length === 1, 10_000, 'served at gw2')
    const client = new OpenAI({ baseURL: `${gw2.url}/v1`, apiKey: user, maxRetries: 0 })
    const done = await client.chat.completions.create({
      model: 'watched',
      messages: [{ role: 'user', content: 'hi' }],
      max_tokens: 3,
    })
    await waitFor(() => of('inference:complete').length === 1, 10_000, 'inference:complete')
    expect(of('inference:complete')[0]).toMatchObject({
      requestId: done.id,
      model: 'watched',
      nodeId,
      gateway: gw2.peerId,
      tokens: { promptTokens: done.usage?.prompt_tokens, completionTokens: done.usage?.completion_tokens },
      payer: 'api_key',
    })

    const undeploy = await fetch(`${gw2.url}/api/models/watched/undeploy`, {
      method: 'POST',
      headers: { authorization: `Bearer ${user}` },
    })
    expect(undeploy.status).toBe(200)
    await waitFor(() => of('model:undeployed').length === 1, 10_000, 'model:undeployed')

    await node.stop()
    node = undefined
    await waitFor(() => of('node:left').length === 1, 10_000, 'node:left')
    expect(of('node:left')[0]).toMatchObject({ nodeId, reason: 'leaving' })

    // In order, each with an id and a timestamp.
    const order = events().map((e) => e.type)
    const first = (t: string) => order.indexOf(t as AdminEvent['type'])
    expect(first('node:joined')).toBeLessThan(first('node:heartbeat'))
    expect(first('node:heartbeat')).toBeLessThan(first('model:deployed'))
    expect(first('model:deployed')).toBeLessThan(first('inference:complete'))
    expect(first('inference:complete')).toBeLessThan(first('model:undeployed'))
    expect(first('model:undeployed')).toBeLessThan(first('node:left'))
    const ids = new Set(events().map((e) => e.id))
    expect(ids.size).toBe(events().length)
    for (const e of events()) expect(Number.isNaN(Date.parse(e.timestamp))).toBe(false)
    m.ws.close()
  }, 90_000)

  it('a filter message selects event types', async () => {
    const m = monitor(`${gw1.url}/ws/admin`, { type: 'auth', token: adminKey })
    await waitFor(() => m.messages.some((x) => x.type === 'authenticated'), 5_000, 'authenticated')
    m.ws.send(JSON.stringify({ type: 'filter', events: ['node:joined', 'node:left'] }))
    await waitFor(() => m.messages.some((x) => x.type === 'filtered'), 5_000, 'filtered')
    const n = await startNode({
      dataDir: await dir('admin-ws-node2'),
      listen: LOOP,
      bootstrap: gw1.multiaddrs(),
      models: [],
      gpu: false,
      heartbeatIntervalMs: 100,
    })
    await waitFor(() => m.messages.some((x) => x.type === 'node:joined'), 10_000, 'joined')
    await new Promise((r) => setTimeout(r, 500))
    await n.stop()
    await waitFor(() => m.messages.some((x) => x.type === 'node:left'), 10_000, 'left')
    expect(m.messages.filter((x) => x.type === 'node:heartbeat')).toEqual([])
    m.ws.close()
  }, 30_000)

  it('refuses a missing, wrong or non-admin token with an error and close code 1008; no auth in time → closed', async () => {
    const user = await fundedUser(gw1, 'not-admin@example.com')
    for (const [first, code] of [
      [{ type: 'auth' }, 'UNAUTHORIZED'],
      [{ type: 'auth', token: 'sk-cluster-wrong' }, 'UNAUTHORIZED'],
      // A valid key without the admin role: authenticated but not allowed.
      [{ type: 'auth', token: user }, 'FORBIDDEN'],
      [{ type: 'filter', events: ['node:joined'] }, 'UNAUTHORIZED'],
      ['not json at all', 'UNAUTHORIZED'],
    ] as const) {
      const m = monitor(`${gw1.url}/ws/admin`, first)
      const closed = await m.closed
      expect(closed.code, JSON.stringify(first)).toBe(1008)
      expect(m.messages[0], JSON.stringify(first)).toMatchObject({ type: 'error', code })
    }
    const silent = monitor(`${gw1.url}/ws/admin`)
    const t = Date.now()
    expect((await silent.closed).code).toBe(1008)
    expect(Date.now() - t).toBeLessThan(3_000)
    expect(silent.messages[0]).toMatchObject({ type: 'error', error: expect.stringMatching(/no auth/) })
  })

  it('limits connections per key', async () => {
    const gwDir = await dir('admin-ws-gw3')
    const gw3 = await startGateway({ dataDir: gwDir, listen: LOOP, port: 0, adminFeed: { maxConnectionsPerKey: 2 } })
    try {
      const key = (await readFile(join(gwDir, 'admin.key'), 'utf8')).trim()
      const ok = [
        monitor(`${gw3.url}/ws/admin`, { type: 'auth', token: key }),
        monitor(`${gw3.url}/ws/admin`, { type: 'auth', token: key }),
      ]
      for (const m of ok)
        await waitFor(() => m.messages.some((x) => x.type === 'authenticated'), 5_000, 'authenticated')
      const third = monitor(`${gw3.url}/ws/admin`, { type: 'auth', token: key })
      expect((await third.closed).code).toBe(4029)
      for (const m of ok) m.ws.close()
    } finally {
      await gw3.stop()
    }
  })
})
