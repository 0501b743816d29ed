// x402 on every inference endpoint: a wallet with no account pays each endpoint's price from the
// docs' table with the official @x402/fetch client — chat pinned to Venice (the docs' "private +
// permissionless" example), embeddings and rerank on a real mesh node, images, transcription and
// speech through a provider stood in for on loopback. Exactly that price moves on chain, once.
import { ExactEvmScheme } from '@x402/evm/exact/client'
import { wrapFetchWithPayment, x402Client } from '@x402/fetch'
import { type Address, createPublicClient, http } from 'viem'
import { generatePrivateKey, privateKeyToAccount } from 'viem/accounts'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import type { RunningNode } from '../../node/node.ts'
import { startNode } from '../../node/node.ts'
import { testUsdcAbi } from '../../src/chain/artifacts.ts'
import { type DevChain, devChainViem, fundWallet, startDevChain } from '../../src/chain/devchain.ts'
import type { Network } from '../../src/payments/x402.ts'
import { rerankModelPath, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { delayThen, type StandIn, standInSpeech, startStandIn } from '../helpers/upstream.ts'
import { x402Sections } from '../helpers/x402-gateway.ts'

describe('x402 on every endpoint', () => {
  let chain: DevChain
  let gw: RunningGateway
  let node: RunningNode
  let venice: StandIn
  let together: StandIn
  let network: Network
  let publicClient: ReturnType<typeof createPublicClient>
  const cleanups: Array<() => Promise<void>> = []

  const usdcOf = (address: Address): Promise<bigint> =>
    publicClient.readContract({ address: chain.usdc, abi: testUsdcAbi, functionName: 'balanceOf', args: [address] })

  /** A fresh wallet with 1 USDC, and fetch paying from it. */
  const payer = async () => {
    const account = privateKeyToAccount(generatePrivateKey())
    await fundWallet(chain, account.address, { usdc: 1_000_000n })
    const client = new x402Client()
      .register(network, new ExactEvmScheme(account))
      .setSpendControls({ allowedAssets: [{ network, asset: chain.usdc }] })
    return { address: account.address, pay: wrapFetchWithPayment(fetch, client) }
  }

  beforeAll(async () => {
    chain = await startDevChain()
    cleanups.push(() => chain.stop())
    network = `eip155:${chain.chainId}`
    publicClient = createPublicClient({ chain: devChainViem(chain), transport: http(chain.rpcUrl) })
    venice = await startStandIn({ name: 'venice', apiKey: 'venice-key' })
    together = await startStandIn({ name: 'together', apiKey: 'together-key' })
    cleanups.push(
      () => venice.close(),
      () => together.close(),
    )
    const dir = await tempDir('x402-endpoints')
    cleanups.push(dir.remove)
    gw = await startGateway({
      dataDir: `${dir.path}/gateway`,
      port: 0,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      env: {},
      log: () => undefined,
      providers: {
        venice: { apiKey: 'venice-key', baseUrl: venice.url },
        together: { apiKey: 'together-key', baseUrl: together.url, models: { 'tts-1': 'tg-tts' } },
      },
      ...x402Sections(chain),
    })
    cleanups.unshift(() => gw.stop())
    node = await startNode({
      dataDir: `${dir.path}/node`,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [
        { path: await tinyModelPath(), id: 'tiny-embed' },
        { path: await rerankModelPath(), id: 'tiny-rerank' },
      ],
      threads: 1,
      slots: 2,
      gpu: false,
      heartbeatIntervalMs: 200,
    })
    cleanups.unshift(() => node.stop())
    await waitFor(
      () => gw.directory.get(node.peerId)?.capabilities?.models.filter((m) => m.state === 'ready').length === 2,
      20_000,
      'the node',
    )
  }, 120_000)

  afterAll(async () => {
    for (const c of cleanups) await c().catch(() => undefined)
  })

  const json = (body: unknown): RequestInit => ({
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })

  it('each endpoint without a key answers 402 with its own price from the docs', async () => {
    for (const [path, price] of [
      ['/v1/embeddings', 500n],
      ['/v1/images/generations', 20_000n],
      ['/v1/audio/transcriptions', 6_000n],
      ['/v1/audio/speech', 15_000n],
      ['/v1/rerank', 1_000n],
    ] as const) {
      const r = await fetch(`${gw.url}${path}`, json({ model: 'x' }))
      expect(r.status, path).toBe(402)
      const header = JSON.parse(Buffer.from(r.headers.get('payment-required') ?? '', 'base64').toString()) as {
        accepts: Array<{ amount: string }>
      }
      expect(header.accepts[0]?.amount).toBe(price.toString())
    }
  })

  it('a browser can pay: preflights are answered, the 402 header is readable; only a POST is a paid call', async () => {
    const origin = 'https://agent.example'
    const pre = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'OPTIONS',
      headers: {
        origin,
        'access-control-request-method': 'POST',
        'access-control-request-headers': 'content-type,payment-signature',
      },
    })
    expect(pre.status).toBe(204)
    expect(pre.headers.get('access-control-allow-origin')).toBe('*')
    expect(pre.headers.get('access-control-allow-methods')).toContain('POST')
    expect(pre.headers.get('access-control-allow-headers')).toContain('payment-signature')
    expect(pre.headers.get('payment-required')).toBeNull()
    const r = await fetch(`${gw.url}/v1/embeddings`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', origin },
      body: JSON.stringify({ model: 'x' }),
    })
    expect(r.status).toBe(402)
    expect(r.headers.get('access-control-allow-origin')).toBe('*')
    const exposed = (r.headers.get('access-control-expose-headers') ?? '').split(',').map((h) => h.trim())
    expect(exposed).toEqual(expect.arrayContaining(['payment-required', 'payment-response', 'x-cluster-provider']))
    // A method no paid endpoint has is no call to pay for: without a key it is the plain 401.
    const get = await fetch(`${gw.url}/v1/chat/completions`)
    expect(get.status).toBe(401)
    expect(get.headers.get('payment-required')).toBeNull()
  })

  it("the docs' example: x402 + Venice pinning, no account — $0.003 moves and Venice answers", async () => {
    const p = await payer()
    const before = await usdcOf(p.address)
    const r = await p.pay(
      `${gw.url}/v1/chat/completions`,
      json({
        model: 'llama-3.3-70b-instruct',
        provider: 'venice',
        messages: [{ role: 'user', content: 'Explain ERC-7710 delegation' }],
        max_tokens: 512,
      }),
    )
    expect(r.status).toBe(200)
    const data = (await r.json()) as { choices: Array<{ message: { content: string } }> }
    expect(data.choices[0]?.message.content).toBe('Hello from venice')
    expect(r.headers.get('x-cluster-provider')).toBe('venice')
    expect(venice.requestsTo('/v1/chat/completions').at(-1)?.body).toMatchObject({ model: 'llama-3.3-70b' })
    expect(await usdcOf(p.address)).toBe(before - 3_000n)
  })

  it('a call that fails after its payment settled leaves credit, and the credit pays the next call', async () => {
    const p = await payer()
    const before = await usdcOf(p.address)
    // Venice dies mid-answer: the payment was taken (a candidate had answered), the answer was not given.
    venice.queue('/v1/chat/completions', { kind: 'die-mid-stream', afterChunks: 1 })
    const body = { model: 'llama-3.3-70b-instruct', provider: 'venice', messages: [{ role: 'user', content: 'hi' }] }
    const failed = await p.pay(`${gw.url}/v1/chat/completions`, json({ ...body, stream: true }))
    expect(failed.status).toBe(200)
    expect(await failed.text()).toContain('provider_failed')
    await waitFor(async () => (await usdcOf(p.address)) === before - 3_000n, 10_000, 'the payment settled')
    await waitFor(() => gw.ledger.x402Credit(p.address) === 3_000n, 5_000, 'the credit left')
    // The next call: its payment only proves who pays; the credit pays, no USDC moves.
    const next = await p.pay(`${gw.url}/v1/chat/completions`, json(body))
    expect(next.status).toBe(200)
    expect(
      ((await next.json()) as { choices: Array<{ message: { content: string } }> }).choices[0]?.message.content,
    ).toBe('Hello from venice')
    expect(gw.ledger.x402Credit(p.address)).toBe(0n)
    expect(await usdcOf(p.address)).toBe(before - 3_000n)

    // Credit for one call, two calls at once: one is paid from it, the other's payment is taken — both served.
    venice.queue('/v1/chat/completions', { kind: 'die-mid-stream', afterChunks: 1 })
    await (await p.pay(`${gw.url}/v1/chat/completions`, json({ ...body, stream: true }))).text()
    await waitFor(() => gw.ledger.x402Credit(p.address) === 3_000n, 10_000, 'the credit left again')
    // The provider holds both answers a while, so both payments are verified — each seeing the credit that can
    // pay for one — before either is used: the race is forced, not left to timing.
    const seen = venice.requestsTo('/v1/chat/completions').length
    venice.queue('/v1/chat/completions', delayThen(400, { kind: 'ok' }), delayThen(400, { kind: 'ok' }))
    const both = await Promise.all([
      p.pay(`${gw.url}/v1/chat/completions`, json(body)),
      p.pay(`${gw.url}/v1/chat/completions`, json(body)),
    ])
    const upstream = venice.requestsTo('/v1/chat/completions').slice(seen)
    expect(upstream).toHaveLength(2)
    expect(Math.abs((upstream[1]?.at ?? 0) - (upstream[0]?.at ?? 0))).toBeLessThan(400) // both held at once
    expect(both.map((r) => r.status)).toEqual([200, 200])
    await waitFor(async () => (await usdcOf(p.address)) === before - 3n * 3_000n, 10_000, 'one more payment settled')
    const account = await gw.ledger.x402Account(p.address)
    await waitFor(async () => (await gw.ledger.getAccount(account.id))?.held === 0n, 5_000, 'no hold left')
    expect(gw.ledger.x402Credit(p.address)).toBe(0n)
  })

  it('embeddings and rerank on the mesh node, paid per request', async () => {
    const p = await payer()
    const before = await usdcOf(p.address)
    const e = await p.pay(`${gw.url}/v1/embeddings`, json({ model: 'tiny-embed', input: 'hello' }))
    expect(e.status).toBe(200)
    expect(e.headers.get('x-cluster-node')).toBe(node.peerId)
    expect(e.headers.get('payment-response')).toBeTruthy()
    expect(((await e.json()) as { data: unknown[] }).data).toHaveLength(1)
    const r = await p.pay(`${gw.url}/v1/rerank`, json({ model: 'tiny-rerank', query: 'q', documents: ['a', 'b'] }))
    expect(r.status).toBe(200)
    expect(((await r.json()) as { results: unknown[] }).results).toHaveLength(2)
    expect(await usdcOf(p.address)).toBe(before - 500n - 1_000n)
  })

  it('images, transcription and speech through a provider, each paid its price', async () => {
    const p = await payer()
    const before = await usdcOf(p.address)
    const img = await p.pay(`${gw.url}/v1/images/generations`, json({ model: 'flux-schnell', prompt: 'a boat' }))
    expect(img.status).toBe(200)
    expect(((await img.json()) as { data: unknown[] }).data).toHaveLength(1)

    const form = new FormData()
    form.append('model', 'whisper-large-v3')
    form.append('file', new Blob([Buffer.alloc(1000, 1)]), 'x402.wav')
    const stt = await p.pay(`${gw.url}/v1/audio/transcriptions`, { method: 'POST', body: form })
    expect(stt.status).toBe(200)
    expect(((await stt.json()) as { text: string }).text).toBe('transcribed x402.wav (1000 bytes)')

    const tts = await p.pay(`${gw.url}/v1/audio/speech`, json({ model: 'tts-1', input: 'paid speech', voice: 'alloy' }))
    expect(tts.status).toBe(200)
    expect(Buffer.from(await tts.arrayBuffer()).equals(standInSpeech('paid speech'))).toBe(true)
    await waitFor(
      async () => (await usdcOf(p.address)) === before - 20_000n - 6_000n - 15_000n,
      10_000,
      'all three settled',
    )
    // Each payment recorded once, at its endpoint's price.
    const mine = gw.ledger.x402Payments().filter((x) => x.payer.toLowerCase() === p.address.toLowerCase())
    expect(mine.map((x) => x.amount).sort()).toEqual([6_000n, 15_000n, 20_000n].sort())
  })
})
