// GET /metrics: Prometheus text that parses, counters that move with traffic (requests by route and
// status, tokens, time to first token, errors by code, nodes), and access as configured: open on
// loopback (or with an admin key), admin-only when so configured.
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { parseUsd } from '../../src/payments/money.ts'
import { fundedUser, startTinyNode, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'

const LINE =
  /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/

/** Parses the exposition format strictly enough to fail on anything malformed: name{labels} → value. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>()
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('# HELP ') || line.startsWith('# TYPE ')) continue
    const m = LINE.exec(line)
    if (m == null) throw new Error(`not Prometheus text: ${line}`)
    out.set(`${m[1]}${m[2] ?? ''}`, Number(m[3]))
  }
  return out
}

describe('GET /metrics', () => {
  let gw: RunningGateway
  let node: RunningNode
  let key: string
  const dirs: Array<{ remove: () => Promise<void> }> = []

  beforeAll(async () => {
    const g = await tempDir('metrics-gw')
    const n = await tempDir('metrics-node')
    dirs.push(g, n)
    gw = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      // An unknown model counts as a 404 below at once, not after the start-up grace (503 meanwhile).
      routing: { startupGraceMs: 0 },
    })
    node = await startTinyNode({ dataDir: n.path, bootstrap: gw.multiaddrs(), model: 'metered' })
    await waitFor(() => gw.directory.nodesServing('metered').length === 1, 15_000, 'the node')
    key = await fundedUser(gw, 'metrics@example.com')
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    for (const d of dirs) await d.remove()
  })

  const scrape = async (): Promise<Map<string, number>> => {
    const res = await fetch(`${gw.url}/metrics`)
    expect(res.status).toBe(200)
    expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/)
    return parse(await res.text())
  }
  const value = (m: Map<string, number>, key: string): number => m.get(key) ?? 0

  it('parses, and its counters move with traffic', async () => {
    const before = await scrape()
    expect(value(before, 'cluster_nodes')).toBe(1)
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 })
    const done = await client.chat.completions.create({
      model: 'metered',
      messages: [{ role: 'user', content: 'count me' }],
      max_tokens: 4,
    })
    await expect(
      client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'x' }] }),
    ).rejects.toThrow()
    const after = await scrape()
    const ok = 'cluster_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}'
    expect(value(after, ok) - value(before, ok)).toBe(1)
    const notFound = 'cluster_http_requests_total{method="POST",route="/v1/chat/completions",status="404"}'
    expect(value(after, notFound) - value(before, notFound)).toBe(1)
    expect(value(after, 'cluster_errors_total{code="model_not_found"}')).toBe(1)
    expect(value(after, 'cluster_tokens_total{model="metered",direction="in"}')).toBe(done.usage?.prompt_tokens)
    expect(value(after, 'cluster_tokens_total{model="metered",direction="out"}')).toBe(done.usage?.completion_tokens)
    expect(value(after, 'cluster_time_to_first_token_seconds_count{model="metered"}')).toBe(1)
    expect(value(after, 'cluster_inference_duration_seconds_count{model="metered"}')).toBe(1)
    expect(value(after, 'cluster_ledger_inferences')).toBe(1)
    // Money moved by exactly what the user was charged (the account's spent, in USDC units).
    const spent = (await (
      await fetch(`${gw.url}/api/auth/me`, { headers: { authorization: `Bearer ${key}` } })
    ).json()) as {
      balance: string
    }
    expect(
      value(after, 'cluster_ledger_usdc_units{kind="spent"}') -
        value(before, 'cluster_ledger_usdc_units{kind="spent"}'),
    ).toBe(Number(10_000_000n - parseUsd(spent.balance)))
    expect(value(after, 'cluster_ledger_usdc_units{kind="held"}')).toBe(0)
    // The node's load comes from its heartbeats: the next one after the answer says it is idle.
    await waitFor(
      async () => value(await scrape(), `cluster_node_active_sequences{node="${node.peerId}"}`) === 0,
      5_000,
      'an idle heartbeat',
    )
    expect(value(after, 'cluster_gossip_messages{topic="/cluster/heartbeat/1.0.0",kind="received"}')).toBeGreaterThan(0)
  })

  it('is open on loopback; configured admin-only, it needs an admin key', async () => {
    const g = await tempDir('metrics-admin')
    dirs.push(g)
    const locked = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      metricsAccess: 'admin',
    })
    try {
      const admin = (await readFile(join(g.path, 'admin.key'), 'utf8')).trim()
      const user = await fundedUser(locked, 'locked@example.com')
      expect((await fetch(`${locked.url}/metrics`)).status).toBe(401)
      expect((await fetch(`${locked.url}/metrics`, { headers: { authorization: `Bearer ${user}` } })).status).toBe(403)
      const res = await fetch(`${locked.url}/metrics`, { headers: { authorization: `Bearer ${admin}` } })
      expect(res.status).toBe(200)
      expect(parse(await res.text()).has('cluster_nodes')).toBe(true)
    } finally {
      await locked.stop()
    }
  })

  it('a node serves its own /metrics when asked: queue, active sequences, tokens generated', async () => {
    const n = await tempDir('metrics-node2')
    dirs.push(n)
    const own = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [{ path: await tinyModelPath(), id: 'self-metered' }],
      threads: 1,
      gpu: false,
      heartbeatIntervalMs: 200,
      metricsPort: 0,
    })
    try {
      expect(own.metricsPort).toBeGreaterThan(0)
      await waitFor(() => gw.directory.nodesServing('self-metered').length === 1, 15_000, 'the node')
      const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 })
      const done = await client.chat.completions.create({
        model: 'self-metered',
        messages: [{ role: 'user', content: 'count' }],
        max_tokens: 5,
      })
      const res = await fetch(`http://127.0.0.1:${own.metricsPort}/metrics`)
      expect(res.status).toBe(200)
      const m = parse(await res.text())
      expect(m.get('cluster_node_tokens_generated_total{model="self-metered"}')).toBe(done.usage?.completion_tokens)
      expect(m.get('cluster_node_queue_depth{model="self-metered"}')).toBe(0)
      expect(m.get('cluster_node_active_sequences{model="self-metered"}')).toBe(0)
      expect((await fetch(`http://127.0.0.1:${own.metricsPort}/other`)).status).toBe(404)
    } finally {
      await own.stop()
    }
  })
})
