// /v1/embeddings and /v1/rerank through the whole system: a real node embedding with the tiny model
// and ranking with rerank-tiny (node-llama-cpp), a provider stood in for on loopback; the official
// openai client for embeddings, plain HTTP for rerank; billing from the node's receipt or the
// provider's usage; bad input refused before any money moves.
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { costOf, parseUsd } from '../../src/payments/money.ts'
import { fundedUser, rerankModelPath, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { type StandIn, standInEmbedding, startStandIn } from '../helpers/upstream.ts'

const EMBED = 'tiny-embed'
const RERANK = 'tiny-rerank'
const PRICE = { inputPerMillion: parseUsd('0.10'), outputPerMillion: parseUsd('0.20') }

describe('embeddings and rerank', () => {
  let gw: RunningGateway
  let node: RunningNode
  let together: StandIn
  let key = ''
  let client: OpenAI
  const dirs: Array<{ remove: () => Promise<void> }> = []

  const post = (path: string, body: unknown): Promise<Response> =>
    fetch(`${gw.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify(body),
    })
  const usageRows = async () => {
    const account = await gw.accounts.ledger.findAccountByEmail('vectors@example.com')
    const page = await gw.ledger.transactions(account?.id as string, { limit: 100 })
    return page.transactions.filter((t) => t.type === 'usage')
  }

  beforeAll(async () => {
    together = await startStandIn({ name: 'together', apiKey: 'together-key' })
    const g = await tempDir('vec-gw')
    const n = await tempDir('vec-node')
    dirs.push(g, n)
    gw = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      env: {},
      providers: { together: { apiKey: 'together-key', baseUrl: together.url } },
    })
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [
        { path: await tinyModelPath(), id: EMBED },
        { path: await rerankModelPath(), id: RERANK },
      ],
      threads: 1,
      slots: 2,
      gpu: false,
      heartbeatIntervalMs: 200,
    })
    await waitFor(
      () => gw.directory.get(node.peerId)?.capabilities?.models.filter((m) => m.state === 'ready').length === 2,
      20_000,
      'both models ready in the capabilities',
    )
    key = await fundedUser(gw, 'vectors@example.com')
    client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 })
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    await together?.close()
    await Promise.all(dirs.map((d) => d.remove()))
  })

  it('embeddings on a mesh node with the openai client: unit vectors, usage from the receipt, billed', async () => {
    const dims = gw.directory.get(node.peerId)?.capabilities?.models.find((m) => m.id === EMBED)
    expect(dims?.tasks).toContain('embeddings')
    const res = await client.embeddings.create({ model: EMBED, input: ['the quick brown fox', 'jumps over'] })
    expect(res.data).toHaveLength(2)
    expect(res.model).toBe(EMBED)
    const [a, b] = res.data.map((d) => d.embedding)
    expect(a?.length).toBeGreaterThan(8)
    const norm = Math.sqrt((a as number[]).reduce((s, x) => s + x * x, 0))
    expect(norm).toBeCloseTo(1, 4)
    expect(a).not.toEqual(b)
    // The same again, as floats over plain HTTP: the same vector (the client asked base64).
    const plain = await post('/v1/embeddings', { model: EMBED, input: 'the quick brown fox', encoding_format: 'float' })
    expect(plain.headers.get('x-cluster-provider')).toBe('cluster')
    expect(plain.headers.get('x-cluster-node')).toBe(node.peerId)
    const body = (await plain.json()) as { data: Array<{ embedding: number[] }>; usage: { prompt_tokens: number } }
    expect(body.data[0]?.embedding.length).toBe(a?.length)
    for (let i = 0; i < (a?.length ?? 0); i++) expect(body.data[0]?.embedding[i]).toBeCloseTo(a?.[i] as number, 5)
    // Billed per prompt token, from the node's signed receipt.
    expect(res.usage.prompt_tokens).toBeGreaterThan(0)
    const rows = await usageRows()
    const row = rows.find((t) => t.tokensIn === res.usage.prompt_tokens && t.model === EMBED)
    expect(row?.amount).toBe(-costOf({ promptTokens: res.usage.prompt_tokens, completionTokens: 0 }, PRICE))
  })

  it('rerank on a mesh node: results best first, top_n, documents returned on request', async () => {
    const documents = ['paris is the capital of france', 'bananas are yellow', 'the eiffel tower is in paris']
    const r = await post('/v1/rerank', {
      model: RERANK,
      query: 'where is the eiffel tower',
      documents,
      top_n: 2,
      return_documents: true,
    })
    expect(r.status).toBe(200)
    const body = (await r.json()) as {
      model: string
      results: Array<{ index: number; relevance_score: number; document?: { text: string } }>
      usage: { prompt_tokens: number }
    }
    expect(body.model).toBe(RERANK)
    expect(body.results).toHaveLength(2)
    const [first, second] = body.results
    expect(first?.relevance_score).toBeGreaterThanOrEqual(second?.relevance_score ?? 2)
    for (const x of body.results) {
      expect(x.relevance_score).toBeGreaterThanOrEqual(0)
      expect(x.relevance_score).toBeLessThanOrEqual(1)
      expect(x.document?.text).toBe(documents[x.index])
    }
    expect(body.usage.prompt_tokens).toBeGreaterThan(0)
    expect((await usageRows()).some((t) => t.model === RERANK && t.tokensIn === body.usage.prompt_tokens)).toBe(true)
  })

  it('providers serve them too: passed through, billed from their usage', async () => {
    const res = await client.embeddings.create({
      model: 'bge-base-en-v1.5',
      input: 'hello world',
      encoding_format: 'float',
    })
    expect(res.data[0]?.embedding).toEqual(standInEmbedding('hello world'))
    expect(together.requestsTo('/v1/embeddings').at(-1)?.body).toMatchObject({ model: 'BAAI/bge-base-en-v1.5' })
    const r = await post('/v1/rerank', { model: 'bge-reranker-v2-m3', query: 'apple', documents: ['apple pie', 'car'] })
    expect(r.status).toBe(200)
    expect(r.headers.get('x-cluster-provider')).toBe('together')
    const body = (await r.json()) as { results: Array<{ index: number }>; usage: { prompt_tokens: number } }
    expect(body.results[0]?.index).toBe(0)
    const rows = await usageRows()
    expect(rows.some((t) => t.model === 'bge-reranker-v2-m3' && t.tokensIn === body.usage.prompt_tokens)).toBe(true)
  })

  it('bad input → 400 naming the field; a model without the task → 400; nothing is charged', async () => {
    const before = (await usageRows()).length
    for (const [path, body, param] of [
      ['/v1/embeddings', { model: EMBED, input: [] }, 'input'],
      ['/v1/embeddings', { model: EMBED, input: [''] }, 'input[0]'],
      ['/v1/embeddings', { model: EMBED, input: 42 }, 'input'],
      ['/v1/rerank', { model: RERANK, query: 'q' }, 'documents'],
      ['/v1/rerank', { model: RERANK, query: '', documents: ['a'] }, 'query'],
      ['/v1/rerank', { model: RERANK, query: 'q', documents: ['a'], top_n: 0 }, 'top_n'],
    ] as const) {
      const r = await post(path, body)
      expect(r.status, JSON.stringify(body)).toBe(400)
      expect(((await r.json()) as { error: { param: string } }).error.param).toBe(param)
    }
    const noRank = await post('/v1/rerank', { model: EMBED, query: 'q', documents: ['a'] })
    expect(noRank.status).toBe(400)
    expect(((await noRank.json()) as { error: { message: string } }).error.message).toContain('does not support rerank')
    const unknown = await post('/v1/embeddings', { model: 'no-such-model', input: 'x' })
    expect(unknown.status).toBe(404)
    expect((await usageRows()).length).toBe(before)
  })

  it("more dimensions than the model's own: the node refuses, the client hears it by field name; not charged", async () => {
    const native = (await (await post('/v1/embeddings', { model: EMBED, input: 'x' })).json()) as {
      data: Array<{ embedding: number[] }>
    }
    const dimensions = (native.data[0]?.embedding.length ?? 0) + 1
    const before = (await usageRows()).length
    const tooMany = await post('/v1/embeddings', { model: EMBED, input: 'x', dimensions })
    expect(tooMany.status).toBe(400)
    const { error } = (await tooMany.json()) as { error: { message: string; param: string | null } }
    expect(error.param).toBe('dimensions')
    expect(error.message).toBe(
      `'dimensions' must be at most ${dimensions - 1} for the model '${EMBED}' (its embeddings have ${dimensions - 1} dimensions).`,
    )
    expect((await usageRows()).length).toBe(before)
  })
})
