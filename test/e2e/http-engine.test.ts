// A node serving a model through an OpenAI-compatible HTTP server its operator runs (vLLM,
// llama-server, Ollama…; stood in for on loopback): chats go gateway → libp2p → node → server and
// back, plain and streamed, several at once; usage and the signed receipt carry the server's counts;
// the server's failures reach the client as the documented errors.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { fundedUser, tempDir, waitFor } from '../helpers/fixtures.ts'
import { cluster, killAll } from '../helpers/processes.ts'
import { type StandIn, startStandIn } from '../helpers/upstream.ts'

const MODEL = 'llama-local'
const UPSTREAM_MODEL = 'meta-llama/Llama-3.1-8B-Instruct'

describe('a node in front of an OpenAI-compatible server', () => {
  let gw: RunningGateway
  let node: RunningNode
  let server: StandIn
  let key = ''
  const dirs: Array<{ remove: () => Promise<void> }> = []

  const chat = (body: Record<string, unknown>): Promise<Response> =>
    fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'one two three' }], ...body }),
    })

  beforeAll(async () => {
    server = await startStandIn({ name: 'vllm', apiKey: 'local-server-key', chunkDelayMs: 5 })
    const g = await tempDir('http-engine-gw')
    const n = await tempDir('http-engine-node')
    dirs.push(g, n)
    gw = await startGateway({ dataDir: g.path, listen: ['/ip4/127.0.0.1/tcp/0'], port: 0, env: {} })
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [],
      upstreams: [{ baseUrl: server.url, upstreamModel: UPSTREAM_MODEL, modelId: MODEL, apiKey: 'local-server-key' }],
      heartbeatIntervalMs: 200,
    })
    await waitFor(() => gw.directory.nodesServing(MODEL).length === 1, 15_000, 'the node')
    key = await fundedUser(gw, 'http-engine@example.com')
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    await server?.close()
    await Promise.all(dirs.map((d) => d.remove()))
  })

  it('serves a plain and a streamed chat through the mesh; usage is the server’s, billed from the node’s receipt', async () => {
    const r = await chat({ max_tokens: 64 })
    expect(r.status).toBe(200)
    expect(r.headers.get('x-cluster-provider')).toBe('cluster')
    expect(r.headers.get('x-cluster-node')).toBe(node.peerId)
    const body = (await r.json()) as { choices: Array<{ message: { content: string } }>; usage: Record<string, number> }
    expect(body.choices[0]?.message.content).toBe('Hello from vllm')
    // The stand-in counts words: 3 in, 3 out.
    expect(body.usage).toMatchObject({ prompt_tokens: 3, completion_tokens: 3 })
    const sent = server.requestsTo('/v1/chat/completions').at(-1)
    expect(sent?.headers.authorization).toBe('Bearer local-server-key')
    expect(sent?.body).toMatchObject({ model: UPSTREAM_MODEL, stream: true, max_tokens: 64 })
    const account = await gw.accounts.ledger.findAccountByEmail('http-engine@example.com')
    const rows = (await gw.ledger.transactions(account?.id as string, { limit: 5 })).transactions
    expect(rows.find((t) => t.type === 'usage')).toMatchObject({ model: MODEL, tokensIn: 3, tokensOut: 3 })

    const s = await chat({ stream: true, stream_options: { include_usage: true } })
    const text = await s.text()
    const content = text
      .split('\n\n')
      .filter((e) => e.startsWith('data: {'))
      .map((e) => JSON.parse(e.slice(6)) as { choices: Array<{ delta?: { content?: string } }> })
      .map((c) => c.choices[0]?.delta?.content ?? '')
      .join('')
    expect(content).toBe('Hello from vllm')
    expect(text).toMatch(/"usage":\{"prompt_tokens":3,"completion_tokens":3/)
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true)
  })

  it('several at once all complete', async () => {
    const answers = await Promise.all([1, 2, 3, 4].map(() => chat({ stream: true }).then((r) => r.text())))
    for (const a of answers) {
      expect(a).toContain('"content":"Hello"')
      expect(a.trimEnd().endsWith('data: [DONE]')).toBe(true)
    }
  })

  it("the server's failures: before the answer → 503; mid-stream → an error event", async () => {
    server.queue('/v1/chat/completions', { kind: 'status', status: 500 })
    const r = await chat({})
    expect(r.status).toBe(503)
    // A server that is full (429) makes the node busy, as a full GGUF node is.
    server.queue('/v1/chat/completions', { kind: 'status', status: 429 })
    const full = await chat({})
    expect(full.status).toBe(503)
    expect(((await full.json()) as { error: { message: string } }).error.message).toContain('at capacity')
    server.queue('/v1/chat/completions', { kind: 'die-mid-stream', afterChunks: 1 })
    const s = await chat({ stream: true })
    const text = await s.text()
    expect(text).toContain('node_failed')
    // And it serves again afterwards.
    expect((await chat({})).status).toBe(200)
  })
})

describe('cluster node --upstream (the command, as an operator runs it)', () => {
  const dirs: Array<{ remove: () => Promise<void> }> = []
  afterAll(async () => {
    await killAll()
    // The gateway and the server stop before their dirs go.
    for (const d of dirs.reverse()) await d.remove()
  })

  it('joins, serves the server’s model under its id, and its key comes from CLUSTER_UPSTREAM_API_KEY', async () => {
    const server = await startStandIn({ name: 'ollama', apiKey: 'ollama-key' })
    const g = await tempDir('http-cli-gw')
    const n = await tempDir('http-cli-node')
    dirs.push(g, n, { remove: () => server.close() })
    const gw = await startGateway({ dataDir: g.path, listen: ['/ip4/127.0.0.1/tcp/0'], port: 0, env: {} })
    dirs.push({ remove: () => gw.stop() })
    const proc = cluster(
      [
        'node',
        ...['--data-dir', n.path, '--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', gw.multiaddrs()[0] as string],
        ...['--upstream', server.url, '--upstream-model', 'llama3.2:3b', '--model-id', 'llama-3.2-3b-local'],
      ],
      { CLUSTER_UPSTREAM_API_KEY: 'ollama-key' },
    )
    await waitFor(() => gw.directory.nodesServing('llama-3.2-3b-local').length === 1, 30_000, 'the node serving')
    const key = await fundedUser(gw, 'cli-upstream@example.com')
    const r = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({ model: 'llama-3.2-3b-local', messages: [{ role: 'user', content: 'hi' }] }),
    })
    expect(r.status).toBe(200)
    expect(((await r.json()) as { choices: Array<{ message: { content: string } }> }).choices[0]?.message.content).toBe(
      'Hello from ollama',
    )
    expect(server.requestsTo('/v1/chat/completions').at(-1)?.body).toMatchObject({ model: 'llama3.2:3b' })
    // The key is not in anything the node printed.
    expect(proc.output()).not.toContain('ollama-key')
  })
})
