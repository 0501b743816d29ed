// Accounts and metered billing through a real gateway and node: the documented account surface,
// exact charges for plain, streamed and aborted calls, 402s, and 200 concurrent calls against a
// balance that covers about 50 — never below zero, never served unpaid, never double-charged.
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { Billing } from '../../gateway/billing.ts'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { Pricing } from '../../gateway/pricing.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { costOf, formatUsd, parseUsd } from '../../src/payments/money.ts'
import { tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'

const MODEL = 'tiny-billing'
const PRICES = { input: '0.50', output: '1.50' } // dollars per million tokens

interface Tx {
  id: string
  type: string
  amount: string
  balanceAfter: string
  model?: string
  tokensIn?: number
  tokensOut?: number
  requestId?: string
}

describe('accounts and billing', () => {
  let gw: RunningGateway
  let node: RunningNode
  const cleanups: Array<() => Promise<void>> = []
  let adminKey: string

  const api = async (
    path: string,
    init: { method?: string; key?: string; body?: unknown; raw?: string; type?: string } = {},
  ): Promise<{ status: number; body: Record<string, unknown>; headers: Headers }> => {
    const res = await fetch(`${gw.url}${path}`, {
      method: init.method ?? (init.body !== undefined || init.raw !== undefined ? 'POST' : 'GET'),
      headers: {
        ...(init.body !== undefined || init.raw !== undefined
          ? { 'content-type': init.type ?? 'application/json' }
          : {}),
        ...(init.key ? { authorization: `Bearer ${init.key}` } : {}),
      },
      ...(init.raw !== undefined
        ? { body: init.raw }
        : init.body !== undefined
          ? { body: JSON.stringify(init.body) }
          : {}),
    })
    const text = await res.text()
    return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {}, headers: res.headers }
  }

  const register = async (email: string): Promise<string> => {
    const r = await api('/api/auth/register', { body: { email, password: 'securepassword' } })
    expect(r.status).toBe(201)
    return r.body.apiKey as string
  }

  const credit = async (email: string, amount: string): Promise<void> => {
    const r = await api('/api/admin/credit', { key: adminKey, body: { email, amount } })
    expect(r.status, JSON.stringify(r.body)).toBe(200)
  }

  const allTransactions = async (key: string): Promise<Tx[]> => {
    const out: Tx[] = []
    let cursor: string | null = null
    do {
      const r = await api(`/api/user/transactions?limit=100${cursor ? `&cursor=${cursor}` : ''}`, { key })
      expect(r.status).toBe(200)
      out.push(...(r.body.transactions as Tx[]))
      cursor = r.body.nextCursor as string | null
    } while (cursor != null)
    return out
  }

  const micro = (dollars: string): bigint => (dollars.startsWith('-') ? -parseUsd(dollars.slice(1)) : parseUsd(dollars))

  beforeAll(async () => {
    const g = await tempDir('bill-gw')
    const n = await tempDir('bill-node')
    cleanups.push(g.remove, n.remove)
    gw = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      pricing: { models: { [MODEL]: PRICES } },
      rateLimit: { capacity: 1000, refillPerSecond: 1000 },
      // Many sign-ups from one address here; the limits themselves are tested in abuse-limits.
      registrationLimit: { perAddress: { capacity: 100, refillPerSecond: 100 } },
    })
    adminKey = (await import('node:fs')).readFileSync(gw.adminKeyFile as string, 'utf8').trim()
    node = await startNode({
      dataDir: n.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [{ path: await tinyModelPath(), id: MODEL }],
      threads: 1,
      slots: 4,
      maxQueue: 256,
      gpu: false,
      heartbeatIntervalMs: 300,
    })
    await waitFor(() => (gw.directory.get(node.peerId)?.capabilities?.models.length ?? 0) > 0, 15_000, 'the node')
  })

  afterAll(async () => {
    await node?.stop()
    await gw?.stop()
    await Promise.all(cleanups.map((f) => f()))
  })

  it('the first admin key was written with mode 0600', async () => {
    const { statSync } = await import('node:fs')
    expect(statSync(gw.adminKeyFile as string).mode & 0o777).toBe(0o600)
    const me = await api('/api/auth/me', { key: adminKey })
    expect(me.body.role).toBe('admin')
  })

  it('register, login and me work as the docs show', async () => {
    const r = await api('/api/auth/register', { body: { email: 'dev@example.com', password: 'securepassword' } })
    expect(r.status).toBe(201)
    expect(Object.keys(r.body).sort()).toEqual(['apiKey', 'balance', 'email', 'userId'])
    expect(r.body.email).toBe('dev@example.com')
    expect(r.body.balance).toBe('0.00')
    expect(r.body.apiKey).toMatch(/^sk-cluster-[A-Za-z0-9_-]{43}$/)

    const dup = await api('/api/auth/register', { body: { email: 'DEV@example.com', password: 'securepassword' } })
    expect(dup.status).toBe(409)
    expect(dup.body).toEqual({ error: expect.any(String), code: 'CONFLICT' })

    const login = await api('/api/auth/login', { body: { email: 'dev@example.com', password: 'securepassword' } })
    expect(login.status).toBe(200)
    expect(login.body).toEqual(r.body)

    const me = await api('/api/auth/me', { key: r.body.apiKey as string })
    expect(me.status).toBe(200)
    expect(me.body).toMatchObject({ userId: r.body.userId, email: 'dev@example.com', balance: '0.00', role: 'user' })
    expect(me.body.apiKey).toBeUndefined()

    for (const key of [undefined, 'sk-cluster-nope', `sk-cluster-${'A'.repeat(43)}`]) {
      const bad = await api('/api/auth/me', key ? { key } : {})
      expect(bad.status).toBe(401)
      expect(bad.body.code).toBe('UNAUTHORIZED')
    }
  })

  it.each([
    [{ email: 'not-an-email', password: 'securepassword' }, 'email'],
    [{ email: 'short@example.com', password: 'short' }, 'password'],
    [{ password: 'securepassword' }, 'email'],
    [{ email: 'x@example.com' }, 'password'],
    [{ email: 42, password: 'securepassword' }, 'email'],
  ])('register with %j → 400 naming %s', async (payload, field) => {
    const r = await api('/api/auth/register', { body: payload })
    expect(r.status).toBe(400)
    expect(r.body.code).toBe('INVALID_REQUEST')
    expect(r.body.error).toContain(field)
  })

  it('wrong credentials → 401, and repeated failures are rate limited', async () => {
    await register('victim@example.com')
    const statuses: number[] = []
    for (let i = 0; i < 7; i++) {
      const r = await api('/api/auth/login', { body: { email: 'victim@example.com', password: `wrong-${i}-password` } })
      statuses.push(r.status)
    }
    expect(statuses.slice(0, 5)).toEqual([401, 401, 401, 401, 401])
    expect(statuses.slice(5)).toEqual([429, 429])
    // Even the right password waits now.
    const r = await api('/api/auth/login', { body: { email: 'victim@example.com', password: 'securepassword' } })
    expect(r.status).toBe(429)
    expect(r.body.code).toBe('RATE_LIMITED')
    expect(Number(r.headers.get('retry-after'))).toBeGreaterThan(0)
  })

  it('keys: create another, list by prefix only, revoke', async () => {
    const key = await register('keys@example.com')
    const created = await api('/api/keys', { key, body: { name: 'ci' } })
    expect(created.status).toBe(201)
    const second = created.body.apiKey as string
    expect(second).not.toBe(key)
    expect((await api('/api/auth/me', { key: second })).status).toBe(200)
    const list = await api('/api/keys', { key })
    const keys = list.body.keys as Array<{ id: string; prefix: string; name: string }>
    expect(keys).toHaveLength(2)
    for (const k of keys) {
      expect(key.startsWith(k.prefix) || second.startsWith(k.prefix)).toBe(true)
      expect(k.prefix.length).toBeLessThan(24)
    }
    expect(JSON.stringify(list.body)).not.toContain(key)
    expect(JSON.stringify(list.body)).not.toContain(second)
    const revoke = await api(`/api/keys/${created.body.id}`, { key, method: 'DELETE' })
    expect(revoke.status).toBe(200)
    expect((await api('/api/auth/me', { key: second })).status).toBe(401)
    expect((await api(`/api/keys/${created.body.id}`, { key, method: 'DELETE' })).status).toBe(404)
  })

  it('/v1 needs a key: none or a wrong one → 401 in the OpenAI shape', async () => {
    for (const key of [undefined, 'sk-cluster-wrong']) {
      const r = await api('/v1/chat/completions', {
        ...(key ? { key } : {}),
        body: { model: MODEL, messages: [{ role: 'user', content: 'hi' }] },
      })
      expect(r.status).toBe(401)
      expect((r.body.error as { type: string }).type).toBe('authentication_error')
    }
    expect((await api('/v1/models')).status).toBe(401)
  })

  it('every response carries rate-limit headers', async () => {
    const r = await api('/health')
    expect(r.headers.get('x-ratelimit-limit')).toBe('1000')
    expect(Number(r.headers.get('x-ratelimit-remaining'))).toBeGreaterThan(0)
    expect(Number(r.headers.get('x-ratelimit-reset'))).toBeGreaterThan(Date.now() / 1000 - 1)
    const err = await api('/api/auth/me')
    expect(err.headers.get('x-ratelimit-limit')).toBe('1000')
  })

  it('no balance → 402 with the documented message, on /v1 in the OpenAI shape with the code at both levels', async () => {
    const key = await register('broke@example.com')
    const r = await api('/v1/chat/completions', {
      key,
      body: { model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 10 },
    })
    expect(r.status).toBe(402)
    const error = r.body.error as { message: string; code: string }
    expect(error.message).toMatch(/^Insufficient balance\. Current: \$0\.00, required: \$\d+\.\d{2,6}$/)
    expect(error.code).toBe('INSUFFICIENT_BALANCE')
    expect(r.body.code).toBe('INSUFFICIENT_BALANCE')
  })

  it('a plain call is charged exactly its usage at the model price, once', async () => {
    const key = await register('exact@example.com')
    await credit('exact@example.com', '1.00')
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 })
    const res = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 9,
    })
    const usage = res.usage as { prompt_tokens: number; completion_tokens: number }
    const expected = costOf(
      { promptTokens: usage.prompt_tokens, completionTokens: usage.completion_tokens },
      { inputPerMillion: parseUsd(PRICES.input), outputPerMillion: parseUsd(PRICES.output) },
    )
    const txs = await allTransactions(key)
    const usageTxs = txs.filter((t) => t.type === 'usage')
    expect(usageTxs).toHaveLength(1)
    expect(usageTxs[0]).toMatchObject({
      requestId: res.id,
      model: MODEL,
      tokensIn: usage.prompt_tokens,
      tokensOut: usage.completion_tokens,
    })
    expect(micro(usageTxs[0]?.amount as string)).toBe(-expected)
    const me = await api('/api/auth/me', { key })
    expect(micro(me.body.balance as string)).toBe(1_000_000n - expected)
    const stats = await api('/api/user/stats', { key })
    expect(stats.body).toMatchObject({ totalCalls: 1, totalSpent: formatUsd(expected), modelsDeployed: 0 })
  })

  it('a streamed call is charged too (never zero), and an aborted stream pays for what it received', async () => {
    const key = await register('stream@example.com')
    await credit('stream@example.com', '1.00')
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: key, maxRetries: 0 })
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: 'Hello' }],
      max_tokens: 7,
      stream: true,
      stream_options: { include_usage: true },
    })
    let usage: { prompt_tokens: number; completion_tokens: number } | undefined
    for await (const c of stream) if (c.usage) usage = c.usage
    let txs = (await allTransactions(key)).filter((t) => t.type === 'usage')
    expect(txs).toHaveLength(1)
    expect(txs[0]?.tokensOut).toBe(usage?.completion_tokens)
    expect(usage?.completion_tokens).toBeGreaterThan(0)
    expect(txs[0]?.tokensIn).toBe(usage?.prompt_tokens)
    expect(micro(txs[0]?.amount as string)).toBeLessThan(0n)

    const controller = new AbortController()
    const long = await client.chat.completions.create(
      {
        model: MODEL,
        messages: [{ role: 'user', content: 'go' }],
        max_tokens: 3000,
        temperature: 0,
        seed: 3,
        stream: true,
      },
      { signal: controller.signal },
    )
    let received = 0
    for await (const c of long) {
      if (c.choices[0]?.delta.content) received++
      if (received === 6) controller.abort()
    }
    await waitFor(
      async () => (await allTransactions(key)).filter((t) => t.type === 'usage').length === 2,
      5_000,
      'the abort settled',
    )
    txs = (await allTransactions(key)).filter((t) => t.type === 'usage')
    const aborted = txs[0] as Tx // newest first
    // Paid for what was delivered: at least what the client read, far from the 3000 reserved.
    expect(aborted.tokensOut).toBeGreaterThanOrEqual(6)
    expect(aborted.tokensOut).toBeLessThan(100)
    const balance = micro((await api('/api/auth/me', { key })).body.balance as string)
    const spent = txs.reduce((s, t) => s + micro(t.amount), 0n)
    expect(balance).toBe(1_000_000n + spent)
  })

  it('200 parallel calls against a balance for about 50: no overdraft, none unpaid, charges add up', async () => {
    const key = await register('crowd@example.com')
    const messages = [{ role: 'user' as const, content: 'hi' }]
    const billing = new Billing(gw.ledger, new Pricing({ models: { [MODEL]: PRICES } }), {
      gatewayPeerId: '',
      payeeOf: () => '',
    })
    const body = { model: MODEL, messages, max_tokens: 4 }
    const hold = billing.maxCost(MODEL, messages, 4, undefined, Buffer.byteLength(JSON.stringify(body)))
    await credit('crowd@example.com', formatUsd(hold * 50n))
    const results = await Promise.all(
      Array.from({ length: 200 }, async () => {
        const r = await api('/v1/chat/completions', { key, body })
        return r
      }),
    )
    const ok = results.filter((r) => r.status === 200)
    const refused = results.filter((r) => r.status === 402)
    const other = results.filter((r) => r.status !== 200 && r.status !== 402)
    expect(
      other.map((r) => [r.status, r.body]),
      'neither served nor refused',
    ).toEqual([])
    expect(ok.length).toBeGreaterThanOrEqual(50)
    for (const r of refused) expect(r.body.code).toBe('INSUFFICIENT_BALANCE')

    const txs = await allTransactions(key)
    const usage = txs.filter((t) => t.type === 'usage')
    // Every served call has exactly one charge, and nothing else was charged.
    expect(usage.map((t) => t.requestId).sort()).toEqual(ok.map((r) => r.body.id as string).sort())
    const spent = -usage.reduce((s, t) => s + micro(t.amount), 0n)
    const balance = micro((await api('/api/auth/me', { key })).body.balance as string)
    expect(balance).toBeGreaterThanOrEqual(0n)
    expect(balance).toBe(hold * 50n - spent)
    for (const t of usage) expect(micro(t.balanceAfter)).toBeGreaterThanOrEqual(0n)
  })

  it('pricing and public stats', async () => {
    const p = await api('/api/pricing')
    expect(p.status).toBe(200)
    const models = p.body.models as Array<{ model: string; input: string; output: string }>
    expect(models.find((m) => m.model === MODEL)).toEqual({ model: MODEL, input: '0.50', output: '1.50' })
    const x402 = p.body.x402 as Array<{ endpoint: string; price: string }>
    expect(x402.find((e) => e.endpoint === '/v1/chat/completions')?.price).toBe('0.003')
    const s = await api('/api/stats')
    expect(s.status).toBe(200)
    expect(s.body.nodes).toBe(1)
    expect(s.body.totalModels).toBe(1)
    expect(s.body.users as number).toBeGreaterThanOrEqual(8)
    expect(s.body.inferences as number).toBeGreaterThanOrEqual(50)
  })

  it('transactions page newest first with a cursor', async () => {
    const key = await register('pages@example.com')
    for (let i = 1; i <= 5; i++) await credit('pages@example.com', `0.0${i}`)
    const first = await api('/api/user/transactions?limit=2', { key })
    const rows = first.body.transactions as Tx[]
    expect(rows.map((t) => t.amount)).toEqual(['0.05', '0.04'])
    expect(rows[0]?.balanceAfter).toBe('0.15')
    const second = await api(`/api/user/transactions?limit=2&cursor=${first.body.nextCursor}`, { key })
    expect((second.body.transactions as Tx[]).map((t) => t.amount)).toEqual(['0.03', '0.02'])
    const third = await api(`/api/user/transactions?limit=2&cursor=${second.body.nextCursor}`, { key })
    expect((third.body.transactions as Tx[]).map((t) => t.amount)).toEqual(['0.01'])
    expect(third.body.nextCursor).toBeNull()
    expect((await api('/api/user/transactions?limit=0', { key })).status).toBe(400)
    expect((await api('/api/user/transactions?cursor=abc', { key })).status).toBe(400)
  })

  it('admin routes need an admin key; credit validates the amount', async () => {
    const user = await register('notadmin@example.com')
    const r = await api('/api/admin/credit', { key: user, body: { email: 'notadmin@example.com', amount: '5.00' } })
    expect(r.status).toBe(403)
    expect(r.body.code).toBe('FORBIDDEN')
    for (const amount of ['-1', '0', '1e3', 'abc', '1.0000001', '']) {
      const bad = await api('/api/admin/credit', { key: adminKey, body: { email: 'notadmin@example.com', amount } })
      expect(bad.status, amount).toBe(400)
      expect(bad.body.code).toBe('INVALID_REQUEST')
    }
    const missing = await api('/api/admin/credit', {
      key: adminKey,
      body: { email: 'nobody@example.com', amount: '1.00' },
    })
    expect(missing.status).toBe(404)
  })

  // Last: it takes the node down.
  it('a plain call cut off by a node failure is a 502 and costs nothing', async () => {
    const key = await register('cutoff@example.com')
    await credit('cutoff@example.com', '1.00')
    const pending = api('/v1/chat/completions', {
      key,
      body: { model: MODEL, messages: [{ role: 'user', content: 'go' }], max_tokens: 3000, temperature: 0, seed: 3 },
    })
    await waitFor(() => ([...node.schedulers.values()][0]?.load().active ?? 0) > 0, 5_000, 'generation under way')
    await node.peer.stop()
    const r = await pending
    expect(r.status).toBe(502)
    expect((r.body.error as { code: string }).code).toBe('node_failed')
    const txs = await allTransactions(key)
    expect(txs.filter((t) => t.type === 'usage')).toEqual([])
    expect((await api('/api/auth/me', { key })).body.balance).toBe('1.00')
  })
})
