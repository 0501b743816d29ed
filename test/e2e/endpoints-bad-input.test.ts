// Bad input on the new endpoints, and providers that answer nonsense: always a 4xx (or a 5xx naming
// the provider's fault) in OpenAI's error shape — never an internal error — and never a cent moved.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { accountOf, fundedUser, rng, tempDir } from '../helpers/fixtures.ts'
import { type StandIn, startStandIn } from '../helpers/upstream.ts'

const PATHS = [
  '/v1/chat/completions',
  '/v1/embeddings',
  '/v1/rerank',
  '/v1/images/generations',
  '/v1/audio/speech',
  '/v1/audio/transcriptions',
] as const

describe('bad input on every inference endpoint', () => {
  let gw: RunningGateway
  let together: StandIn
  let key = ''
  const dirs: Array<{ remove: () => Promise<void> }> = []

  const balance = async (): Promise<bigint> => (await accountOf(gw, 'bad@example.com')).balance
  const send = (path: string, body: string, type = 'application/json'): Promise<Response> =>
    fetch(`${gw.url}${path}`, {
      method: 'POST',
      headers: { 'content-type': type, authorization: `Bearer ${key}` },
      body,
    })
  const expectShape = async (r: Response, what: string): Promise<void> => {
    expect(r.status, what).toBeGreaterThanOrEqual(400)
    expect(r.status, what).not.toBe(500)
    const body = (await r.json()) as { error?: { message?: unknown; type?: unknown; code?: unknown } }
    expect(typeof body.error?.message, what).toBe('string')
    expect(typeof body.error?.code, what).toBe('string')
  }

  beforeAll(async () => {
    together = await startStandIn({ name: 'together', apiKey: 'together-key' })
    const d = await tempDir('bad-gw')
    dirs.push(d)
    gw = await startGateway({
      dataDir: d.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      env: {},
      rateLimit: { capacity: 100_000, refillPerSecond: 100_000 },
      providers: { together: { apiKey: 'together-key', baseUrl: together.url, models: { 'tts-1': 'tts' } } },
    })
    key = await fundedUser(gw, 'bad@example.com')
  })

  afterAll(async () => {
    await gw?.stop()
    await together?.close()
    await Promise.all(dirs.map((x) => x.remove()))
  })

  it('hand-picked bad fields → 400 naming them', async () => {
    const before = await balance()
    const cases: Array<[string, unknown, string]> = [
      ['/v1/embeddings', { model: 'bge-base-en-v1.5', input: 'x', dimensions: 0 }, 'dimensions'],
      ['/v1/embeddings', { model: 'bge-base-en-v1.5', input: 'x', encoding_format: 'hex' }, 'encoding_format'],
      ['/v1/embeddings', { model: 'bge-base-en-v1.5', input: 'x', provider: 7 }, 'provider'],
      ['/v1/rerank', { model: 'bge-reranker-v2-m3', query: 'q', documents: [{ title: 'no text' }] }, 'documents[0]'],
      ['/v1/rerank', { model: 'bge-reranker-v2-m3', query: 'q', documents: 'one' }, 'documents'],
      ['/v1/images/generations', { model: 'flux-schnell', prompt: 'x', n: 'two' }, 'n'],
      ['/v1/images/generations', { model: 'flux-schnell', prompt: 'x', response_format: 'gif' }, 'response_format'],
      ['/v1/audio/speech', { model: 'tts-1', input: 'x', voice: 'a', speed: 10 }, 'speed'],
      ['/v1/audio/speech', { model: 'tts-1', input: 'x', voice: 'a', response_format: 'midi' }, 'response_format'],
      [
        '/v1/chat/completions',
        { model: 'm', messages: [{ role: 'user', content: 'x' }], provider: ['venice'] },
        'provider',
      ],
    ]
    for (const [path, body, param] of cases) {
      const r = await send(path, JSON.stringify(body))
      expect(r.status, `${path} ${JSON.stringify(body)}`).toBe(400)
      expect(((await r.json()) as { error: { param: string } }).error.param).toBe(param)
    }
    expect(await balance()).toBe(before)
  })

  it('a present field of the wrong type says what is wrong, not that it is required; absent ones are required', async () => {
    const before = await balance()
    const chat = { model: 'llama-3.3-70b-instruct', provider: 'together', messages: [{ role: 'user', content: 'x' }] }
    const cases: Array<[string, unknown, string, string]> = [
      [
        '/v1/chat/completions',
        { ...chat, temperature: 'hot' },
        'temperature',
        "'temperature' must be a number between 0 and 2.",
      ],
      ['/v1/chat/completions', { ...chat, max_tokens: 2.5 }, 'max_tokens', "'max_tokens' must be an integer"],
      ['/v1/chat/completions', { ...chat, stream: 'yes' }, 'stream', "'stream' must be true or false."],
      ['/v1/chat/completions', { ...chat, seed: 'x' }, 'seed', "'seed' must be an integer"],
      ['/v1/chat/completions', { ...chat, model: 5 }, 'model', "'model' must be a string."],
      ['/v1/chat/completions', { ...chat, provider: null }, 'provider', "'provider' must be a string."],
      ['/v1/chat/completions', { ...chat, messages: 'hi' }, 'messages', "'messages' must be an array."],
      ['/v1/chat/completions', { provider: 'together', messages: chat.messages }, 'model', "'model' is required."],
      ['/v1/images/generations', { model: 'flux-schnell', prompt: 'x', n: 2.5 }, 'n', "'n' must be an integer"],
      [
        '/v1/rerank',
        { model: 'bge-reranker-v2-m3', query: 'q', documents: ['a'], return_documents: 'yes' },
        'return_documents',
        "'return_documents' must be true or false.",
      ],
      ['/v1/embeddings', { input: 'x' }, 'model', "'model' is required."],
    ]
    for (const [path, body, param, message] of cases) {
      const r = await send(path, JSON.stringify(body))
      expect(r.status, `${path} ${JSON.stringify(body)}`).toBe(400)
      const { error } = (await r.json()) as { error: { message: string; param: string; type: string } }
      expect(error.param, JSON.stringify(body)).toBe(param)
      expect(error.type).toBe('invalid_request_error')
      expect(error.message.startsWith(message), `${error.message} starts with ${message}`).toBe(true)
      if (!message.endsWith('is required.')) expect(error.message).not.toContain('is required')
    }
    expect(await balance()).toBe(before)
  })

  it('chat messages follow OpenAI: content required (an assistant may omit it only with tool_calls); limits by field', async () => {
    const before = await balance()
    const send1 = (messages: unknown) =>
      send('/v1/chat/completions', JSON.stringify({ model: 'llama-3.3-70b-instruct', provider: 'together', messages }))
    const expectRefusal = async (r: Response, param: string, message: RegExp): Promise<void> => {
      expect(r.status, param).toBe(400)
      const { error } = (await r.json()) as { error: { message: string; param: string } }
      expect(error.param).toBe(param)
      expect(error.message).toMatch(message)
      expect(error.message).not.toMatch(/schema mismatch/)
    }
    await expectRefusal(
      await send1([{ role: 'user' }]),
      'messages[0].content',
      /^'messages\[0\]\.content' is required\.$/,
    )
    await expectRefusal(await send1([{ role: 'user', content: null }]), 'messages[0].content', /must be a string/)
    await expectRefusal(
      await send1([{ role: 'system' }, { role: 'user', content: 'x' }]),
      'messages[0].content',
      /is required/,
    )
    await expectRefusal(
      await send1([
        { role: 'user', content: 'x' },
        { role: 'assistant', content: null },
      ]),
      'messages[1].content',
      /is required unless the message has tool_calls/,
    )
    await expectRefusal(
      await send1([{ role: 'user', content: 'x'.repeat(2_000_001) }]),
      'messages[0].content',
      /^'messages\[0\]\.content' must be at most 2000000 characters long\.$/,
    )
    await expectRefusal(
      await send1(Array.from({ length: 10_001 }, () => ({ role: 'user', content: 'x' }))),
      'messages',
      /^'messages' must contain at most 10000 messages\.$/,
    )
    expect(await balance()).toBe(before)
    // An assistant turn with tool_calls and no content is a valid conversation (served by the provider).
    const call = { id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }
    const ok = await send1([
      { role: 'user', content: 'x' },
      { role: 'assistant', tool_calls: [call] },
      { role: 'tool', tool_call_id: 'c1', content: 'y' },
    ])
    expect(ok.status).toBe(200)
    await ok.arrayBuffer()
  })

  it('not JSON, not an object, the wrong content type → 400 on every endpoint', async () => {
    for (const path of PATHS) {
      for (const body of ['{', '[]', 'null', '"text"', '42'])
        await expectShape(await send(path, body), `${path} ${body}`)
    }
    const form = await send(
      '/v1/audio/transcriptions',
      '--x\r\nnot really multipart',
      'multipart/form-data; boundary=x',
    )
    await expectShape(form, 'broken multipart')
  })

  it('random JSON bodies never cause an internal error', async () => {
    const random = rng(8)
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T
    const values = [null, 0, -1, 1.5, 1e308, '', 'x', 'flux-schnell', [], [''], ['a', 1], {}, { text: 1 }, true]
    const fields = [
      'model',
      'input',
      'prompt',
      'n',
      'size',
      'query',
      'documents',
      'top_n',
      'voice',
      'messages',
      'provider',
      'dimensions',
      'stream',
    ]
    const before = await balance()
    const startedAt = Date.now()
    for (let i = 0; i < 120; i++) {
      const body: Record<string, unknown> = {}
      for (let f = 0; f < 1 + Math.floor(random() * 5); f++) body[pick(fields)] = pick(values)
      const path = pick(PATHS.filter((p) => p !== '/v1/audio/transcriptions'))
      const r = await send(path, JSON.stringify(body))
      if (r.status >= 400) await expectShape(r, `${path} ${JSON.stringify(body)}`)
      else await r.arrayBuffer()
    }
    // Whatever got through was served and paid: the balance moved by exactly the usage rows written
    // meanwhile, and nothing is left held.
    const account = await accountOf(gw, 'bad@example.com')
    expect(account.held).toBe(0n)
    const rows = (await gw.ledger.transactions(account.id, { limit: 100 })).transactions
    const charged = rows
      .filter((t) => t.type === 'usage' && t.createdAt >= startedAt)
      .reduce((n, t) => n + t.amount, 0n)
    expect(await balance()).toBe(before + charged)
  })

  it('a provider answering nonsense: a 5xx naming the provider, nothing charged', async () => {
    const before = await balance()
    const nonsense = [
      { kind: 'status', status: 200, body: 'not json at all' },
      { kind: 'status', status: 200, body: [1, 2, 3] },
      { kind: 'status', status: 200, body: { choices: 'no' } },
    ] as const
    for (const b of nonsense) {
      for (const path of ['/v1/chat/completions', '/v1/embeddings', '/v1/images/generations']) {
        together.queue(path, b)
        const body =
          path === '/v1/chat/completions'
            ? { model: 'llama-3.3-70b-instruct', provider: 'together', messages: [{ role: 'user', content: 'x' }] }
            : path === '/v1/embeddings'
              ? { model: 'bge-base-en-v1.5', input: 'x' }
              : { model: 'flux-schnell', prompt: 'x' }
        const r = await send(path, JSON.stringify(body))
        expect(r.status, `${path} ${JSON.stringify(b)}`).toBeGreaterThanOrEqual(502)
        const err = (await r.json()) as { error: { message: string } }
        expect(err.error.message).toContain('together')
      }
    }
    const account = await accountOf(gw, 'bad@example.com')
    expect(account.held).toBe(0n)
    expect(await balance()).toBe(before)
  })
})
