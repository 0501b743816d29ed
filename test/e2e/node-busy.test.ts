// A node that is full answers "busy" in time: it does not queue what it could not start before the
// gateway gives up, so the client gets the documented 503 quickly (not a 2-minute wait for a vague
// one), and the gateway does not cool the healthy node down. And just after a gateway starts, a
// model it has not heard of yet is "no nodes available" (retryable), not "model not found".
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { fundedUser, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'

const MODEL = 'tiny-busy'

function chat(gw: RunningGateway, apiKey: string, body: Record<string, unknown>, signal?: AbortSignal) {
  return fetch(`${gw.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'go' }], ...body }),
    ...(signal ? { signal } : {}),
  })
}

describe('a busy node', () => {
  let gw: RunningGateway
  let node: RunningNode
  let apiKey: string
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    const g = await tempDir('busy-gw')
    const n = await tempDir('busy-node')
    cleanups.push(g.remove, n.remove)
    gw = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      // The gateway waits long for a first token, but lets a request wait only 400 ms in a node's queue.
      router: { firstFrameTimeoutMs: 20_000, maxQueueMs: 400 },
    })
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [{ path: await tinyModelPath(), id: MODEL }],
      threads: 1,
      slots: 1,
      maxQueue: 8,
      // The node's own bound (the operator's --max-queue-wait); the gateway asks for less.
      maxQueueWaitMs: 5_000,
      gpu: false,
      heartbeatIntervalMs: 300,
    })
    expect(node.schedulers.get(MODEL)?.maxQueueWaitMs).toBe(5_000)
    await waitFor(() => gw.directory.nodesServing(MODEL).length === 1, 15_000, 'the node')
    apiKey = await fundedUser(gw, 'busy@example.com')
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    await Promise.all(cleanups.map((f) => f()))
  })

  it('a burst beyond what the node can start in time gets an immediate 503 at capacity, and the node is not cooled down', async () => {
    // One answer first: the node measures its speed.
    const warm = await chat(gw, apiKey, { max_tokens: 30, temperature: 0, seed: 3 })
    expect(warm.status).toBe(200)

    const controller = new AbortController()
    const long = await chat(gw, apiKey, { max_tokens: 3000, temperature: 0, seed: 3, stream: true }, controller.signal)
    expect(long.status).toBe(200)
    const reader = long.body?.getReader()
    await reader?.read() // generating now: the only slot is taken for seconds

    const t0 = performance.now()
    const burst = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const res = await chat(gw, apiKey, { max_tokens: 3000 })
        const body = (await res.json()) as { error: { message: string; code: string } }
        return { status: res.status, body, route: res.headers.get('x-cluster-route') ?? '', ms: performance.now() - t0 }
      }),
    )
    controller.abort()
    for (const r of burst) {
      expect(r.status).toBe(503)
      expect(r.body.error.code).toBe('no_nodes_available')
      expect(r.body.error.message).toContain('at capacity')
      expect(r.route).toContain(':busy')
      // Within the node's queue wait (400 ms) and some, never the gateway's first-token timeout.
      expect(r.ms).toBeLessThan(3_000)
    }

    // The node was busy, not failing: once its slot is free it is the route again, not cooling down.
    const scheduler = [...node.schedulers.values()][0]
    await waitFor(() => scheduler?.load().active === 0, 5_000, 'the slot to free')
    const ok = await chat(gw, apiKey, { max_tokens: 4 })
    expect(ok.status).toBe(200)
    const route = ok.headers.get('x-cluster-route') ?? ''
    expect(route).toContain(`chosen=cluster:${node.peerId}`)
    expect(route).not.toContain('cooldown')
  })
})

describe('a gateway just started', () => {
  it('answers 503 for a model it has not heard of during the start-up grace, 404 after', async () => {
    const g = await tempDir('grace-gw')
    const started = Date.now()
    const gw = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      routing: { startupGraceMs: 2_000 },
    })
    try {
      const apiKey = await fundedUser(gw, 'grace@example.com')
      const ask = () =>
        fetch(`${gw.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
          body: JSON.stringify({ model: 'not-heard-of', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
        })
      const early = await ask()
      expect(Date.now() - started).toBeLessThan(2_000)
      expect(early.status).toBe(503)
      const earlyBody = (await early.json()) as { error: { message: string; code: string } }
      expect(earlyBody.error.code).toBe('no_nodes_available')
      expect(earlyBody.error.message).toContain('heard from yet since the gateway started')
      await new Promise((r) => setTimeout(r, Math.max(0, started + 2_100 - Date.now())))
      const late = await ask()
      expect(late.status).toBe(404)
      expect(((await late.json()) as { error: { code: string } }).error.code).toBe('model_not_found')
    } finally {
      await gw.stop()
      await g.remove()
    }
  })
})
