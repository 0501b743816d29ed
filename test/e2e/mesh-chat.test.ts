// End to end on loopback: a gateway and two nodes as separate libp2p peers, the tiny model really
// loaded by node-llama-cpp, and the official openai client. Nothing of ours is faked.
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { sha256File } from '../../src/models/gguf.ts'
import { fundedUser, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'

const MODEL = 'tiny-e2e'
const INTERVAL = 300

describe('gateway + two nodes over libp2p', () => {
  let gw: RunningGateway
  let nodeA: RunningNode
  let nodeB: RunningNode
  let client: OpenAI
  let apiKey: string
  const dirs: Array<{ remove: () => Promise<void> }> = []

  const dir = async (name: string): Promise<string> => {
    const d = await tempDir(name)
    dirs.push(d)
    return d.path
  }

  const startTestNode = async (name: string, bootstrap: string[]): Promise<RunningNode> =>
    startNode({
      dataDir: await dir(name),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap,
      models: [{ path: await tinyModelPath(), id: MODEL }],
      threads: 1,
      slots: 2,
      gpu: false,
      heartbeatIntervalMs: INTERVAL,
    })

  beforeAll(async () => {
    gw = await startGateway({
      dataDir: await dir('gw'),
      listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'],
      port: 0,
    })
    // One node joins over TCP, the other over WebSockets.
    nodeA = await startTestNode(
      'node-a',
      gw.multiaddrs().filter((a) => !a.includes('/ws')),
    )
    nodeB = await startTestNode(
      'node-b',
      gw.multiaddrs().filter((a) => a.includes('/ws')),
    )
    await waitFor(() => gw.directory.nodesServing(MODEL).length === 2, 15_000, 'both nodes in the Directory')
    apiKey = await fundedUser(gw, 'e2e@example.com')
    client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey, maxRetries: 0 })
  })

  afterAll(async () => {
    await Promise.allSettled([nodeA?.stop(), nodeB?.stop()])
    await gw?.stop()
    await Promise.all(dirs.map((d) => d.remove()))
  })

  it('joins one node over WebSockets', () => {
    const conns = gw.peer.getConnections().filter((c) => c.remotePeer.toString() === nodeB.peerId)
    expect(conns.some((c) => c.remoteAddr.toString().includes('/ws'))).toBe(true)
  })

  it("learns each node's capabilities, including the model file's sha256 once hashed", async () => {
    const expected = await sha256File(await tinyModelPath())
    await waitFor(
      () => gw.directory.get(nodeA.peerId)?.capabilities?.models[0]?.sha256 === expected,
      10_000,
      'capabilities with the sha256',
    )
    const caps = gw.directory.get(nodeA.peerId)?.capabilities
    expect(caps?.models[0]).toMatchObject({
      id: MODEL,
      state: 'ready',
      tasks: ['chat', 'embeddings'],
      architecture: 'llama',
    })
    expect(caps?.hardware.cpu.cores).toBeGreaterThan(0)
    expect(caps?.hardware.ramBytes).toBeGreaterThan(0)
    expect(caps?.prices[0]?.model).toBe(MODEL)
    expect(caps?.software.name).toBe('cluster')
  })

  it('lists the model from the Directory', async () => {
    const list = await client.models.list()
    const ids = list.data.map((m) => m.id)
    expect(ids).toContain(MODEL)
    expect(list.data.find((m) => m.id === MODEL)?.object).toBe('model')
  })

  it('retrieves one model, and 404s an unknown one', async () => {
    const model = await client.models.retrieve(MODEL)
    expect(model.id).toBe(MODEL)
    await expect(client.models.retrieve('no-such-model')).rejects.toBeInstanceOf(OpenAI.NotFoundError)
  })

  it('a body over the limit → 413 in the OpenAI shape', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(9 * 1024 * 1024) }] }),
    })
    expect(res.status).toBe(413)
    const json = (await res.json()) as { error: { type: string; code: string } }
    expect(json.error.code).toBe('body_too_large')
    // A refused body is a request like any other: counted, with the rate-limit headers.
    expect(res.headers.get('x-ratelimit-limit')).not.toBeNull()
    expect(res.headers.get('x-ratelimit-remaining')).not.toBeNull()
  })

  it('answers a non-streaming chat completion in the documented shape', async () => {
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: [
        { role: 'system', content: 'You are a helpful assistant.' },
        { role: 'user', content: [{ type: 'text', text: 'Say hello.' }] },
      ],
      max_tokens: 12,
      // Greedy and seeded: the random-weight model must not draw an end token by chance here.
      temperature: 0,
      seed: 5,
    })
    expect(res.id).toMatch(/^chatcmpl-/)
    expect(res.object).toBe('chat.completion')
    expect(res.model).toBe(MODEL)
    expect(typeof res.created).toBe('number')
    expect(res.choices).toHaveLength(1)
    expect(res.choices[0]?.message.role).toBe('assistant')
    expect(res.choices[0]?.message.content?.length).toBeGreaterThan(0)
    expect(res.choices[0]?.finish_reason).toBe('length')
    expect(res.usage?.completion_tokens).toBe(12)
    expect(res.usage?.prompt_tokens).toBeGreaterThan(0)
    expect(res.usage?.total_tokens).toBe((res.usage?.prompt_tokens ?? 0) + 12)
  })

  it('streams: role first, content deltas, finish_reason, usage when asked, then [DONE]', async () => {
    const { data: stream, response } = await client.chat.completions
      .create({
        model: MODEL,
        messages: [{ role: 'user', content: 'Write a haiku about AI' }],
        max_tokens: 10,
        temperature: 0,
        seed: 5,
        stream: true,
        stream_options: { include_usage: true },
      })
      .withResponse()
    // The stream is written straight to the socket: the headers it carries are the ones set before.
    expect(response.headers.get('content-type')).toBe('text/event-stream')
    expect([nodeA.peerId, nodeB.peerId]).toContain(response.headers.get('x-cluster-node'))
    expect(Number(response.headers.get('x-ratelimit-limit'))).toBeGreaterThan(0)
    expect(response.headers.get('x-ratelimit-remaining')).not.toBeNull()
    expect(response.headers.get('x-ratelimit-reset')).not.toBeNull()
    const chunks = []
    for await (const chunk of stream) chunks.push(chunk)
    expect(chunks[0]?.choices[0]?.delta.role).toBe('assistant')
    expect(chunks.every((c) => c.object === 'chat.completion.chunk')).toBe(true)
    expect(new Set(chunks.map((c) => c.id)).size).toBe(1)
    const content = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')
    expect(content.length).toBeGreaterThan(0)
    const finishes = chunks.map((c) => c.choices[0]?.finish_reason).filter((f) => f != null)
    expect(finishes).toEqual(['length'])
    const last = chunks.at(-1)
    expect(last?.choices).toEqual([])
    expect(last?.usage?.completion_tokens).toBe(10)
  })

  it('with the same seed and temperature 0, streaming and non-streaming give the same text; stop ends it', async () => {
    const base = {
      model: MODEL,
      messages: [{ role: 'user' as const, content: 'Count.' }],
      max_tokens: 24,
      temperature: 0,
      seed: 1,
    }
    const full = await client.chat.completions.create(base)
    const text = full.choices[0]?.message.content ?? ''
    const stream = await client.chat.completions.create({ ...base, stream: true })
    let streamed = ''
    for await (const c of stream) streamed += c.choices[0]?.delta.content ?? ''
    expect(streamed).toBe(text)
    // A stop sequence taken from the middle of that text ends the answer just before it.
    const stop = text.slice(8, 11)
    expect(stop.length).toBe(3)
    const stopped = await client.chat.completions.create({ ...base, stop: [stop] })
    expect(stopped.choices[0]?.finish_reason).toBe('stop')
    expect(stopped.choices[0]?.message.content).toBe(text.slice(0, text.indexOf(stop)))
  })

  it('unknown model → 404 in the OpenAI shape', async () => {
    await expect(
      client.chat.completions.create({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }),
    ).rejects.toBeInstanceOf(OpenAI.NotFoundError)
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] }),
    })
    expect(res.status).toBe(404)
    const body = (await res.json()) as { error: { message: string; type: string; code: string } }
    expect(body.error.code).toBe('model_not_found')
    expect(body.error.type).toBe('invalid_request_error')
  })

  it.each([
    ['not JSON', '{"model": ', null],
    ['an array', '[]', null],
    ['no model', JSON.stringify({ messages: [{ role: 'user', content: 'x' }] }), 'model'],
    ['no messages', JSON.stringify({ model: MODEL }), 'messages'],
    ['empty messages', JSON.stringify({ model: MODEL, messages: [] }), 'messages'],
    ['bad role', JSON.stringify({ model: MODEL, messages: [{ role: 'robot', content: 'x' }] }), 'messages[0].role'],
    [
      'temperature 3',
      JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], temperature: 3 }),
      'temperature',
    ],
    [
      'max_tokens 0',
      JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], max_tokens: 0 }),
      'max_tokens',
    ],
    ['stop as number', JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], stop: 5 }), 'stop'],
    [
      'stream as string',
      JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x' }], stream: 'yes' }),
      'stream',
    ],
    [
      'a user message without content',
      JSON.stringify({ model: MODEL, messages: [{ role: 'user' }] }),
      'messages[0].content',
    ],
    [
      'content over the wire limit',
      JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'x'.repeat(2_000_001) }] }),
      'messages[0].content',
    ],
    [
      'more messages than the wire takes',
      JSON.stringify({
        model: MODEL,
        messages: Array.from({ length: 10_001 }, () => ({ role: 'user', content: 'x' })),
      }),
      'messages',
    ],
  ])('malformed body (%s) → 400 naming the field', async (_name, body, param) => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body,
    })
    expect(res.status).toBe(400)
    const json = (await res.json()) as { error: { message: string; type: string; code: string; param: string | null } }
    expect(json.error.type).toBe('invalid_request_error')
    expect(json.error.param).toBe(param)
    if (param) expect(json.error.message).toContain(`'${param}'`)
    expect(json.error.message).not.toMatch(/schema mismatch/)
  })

  it('a prompt longer than the context → 400, not a 500', async () => {
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'word '.repeat(20_000) }] }),
    })
    expect(res.status).toBe(400)
    const json = (await res.json()) as { error: { code: string } }
    expect(json.error.code).toBe('context_length_exceeded')
  })

  it('a client that aborts mid-stream stops generation on the node', async () => {
    const engines = [nodeA, nodeB].map((n) => [...n.engines.values()][0]!)
    const total = (): number => engines.reduce((s, e) => s + e.generatedTokens, 0)
    const served = async (): Promise<number> => {
      const m = /cluster_inferences_total\{endpoint="chat",provider="cluster"\} (\d+)/.exec(
        await (await fetch(`${gw.url}/metrics`)).text(),
      )
      return Number(m?.[1] ?? 0)
    }
    const servedBefore = await served()
    const before = total()
    const controller = new AbortController()
    const stream = await client.chat.completions.create(
      {
        model: MODEL,
        messages: [{ role: 'user', content: 'Go on forever.' }],
        max_tokens: 3000,
        temperature: 0,
        seed: 3,
        stream: true,
      },
      { signal: controller.signal },
    )
    let seen = 0
    // The openai client ends its iterator quietly when its signal aborts.
    for await (const c of stream) {
      if (c.choices[0]?.delta.content) seen++
      if (seen === 5) controller.abort()
    }
    expect(seen).toBe(5)
    // The node notices within a token or so; then its count must stop growing.
    await waitFor(
      () => [nodeA, nodeB].every((n) => [...n.schedulers.values()][0]!.load().active === 0),
      5_000,
      'idle nodes',
    )
    const after = total()
    await new Promise((r) => setTimeout(r, 400))
    expect(total()).toBe(after)
    // Without the abort reaching the node it would have run on towards 3000 tokens.
    expect(after - before).toBeLessThan(200)
    // Billed for what it got, so counted as a call like any other.
    await waitFor(async () => (await served()) === servedBefore + 1, 5_000, 'the call in the metrics')
  })

  it('concurrent requests are spread over both nodes (least loaded first)', async () => {
    const served = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const res = await fetch(`${gw.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
          body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 40 }),
        })
        expect(res.status).toBe(200)
        await res.json()
        return res.headers.get('x-cluster-node')
      }),
    )
    expect(new Set(served)).toEqual(new Set([nodeA.peerId, nodeB.peerId]))
  })

  it('a node that dies is skipped before its lease ends, leaves the Directory in time, and requests go to the other', async () => {
    const left: string[] = []
    gw.directory.on('node:left', (e) => left.push(e.peerId))
    // A crash, not a goodbye: the peer goes away without telling anyone.
    const crashedAt = Date.now()
    await nodeA.peer.stop()
    for (let i = 0; i < 3; i++) {
      const res = await client.chat.completions
        .create({
          model: MODEL,
          messages: [{ role: 'user', content: 'still there?' }],
          max_tokens: 4,
        })
        .withResponse()
      expect(res.response.headers.get('x-cluster-node')).toBe(nodeB.peerId)
    }
    await waitFor(() => left.includes(nodeA.peerId), 4 * INTERVAL + 1_000, 'node A to leave')
    expect(Date.now() - crashedAt).toBeLessThanOrEqual(3 * INTERVAL + 500)
    expect(gw.directory.nodesServing(MODEL).map((n) => n.peerId)).toEqual([nodeB.peerId])
  })

  it('with no node left for a known model → 503 with the documented message', async () => {
    await nodeB.stop()
    await waitFor(() => gw.directory.nodesServing(MODEL).length === 0, 5_000, 'no nodes')
    const res = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }] }),
    })
    expect(res.status).toBe(503)
    const json = (await res.json()) as { error: { message: string } }
    expect(json.error.message).toContain('No GPU nodes available for the requested model')
  })
})
