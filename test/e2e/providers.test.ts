// Routing to external providers: every provider stood in for by a loopback server that records what
// it receives, a real node for the mesh. Pinned routing to each provider and to the mesh, auto
// routing that learns which candidate is better, failover (500, timeout, refused) with the cooled
// candidate on /ws/admin, 429 and 4xx passed on, streams passed through as they come, usage billed
// from the provider's numbers (counted by us when it sends none), and keys that go nowhere else.
import { readFileSync } from 'node:fs'
import OpenAI from 'openai'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { PROVIDER_NAMES, PROVIDERS, type ProviderName } from '../../gateway/providers/catalog.ts'
import type { ProvidersConfig } from '../../gateway/providers/provider.ts'
import { countTokens } from '../../gateway/tokens.ts'
import type { RunningNode } from '../../node/node.ts'
import { createLogger } from '../../src/log.ts'
import { costOf, parseUsd } from '../../src/payments/money.ts'
import { adminMonitor, type Monitor } from '../helpers/admin-monitor.ts'
import { fundedUser, startTinyNode, tempDir, waitFor } from '../helpers/fixtures.ts'
import { memoryLog } from '../helpers/memory-log.ts'
import { delayThen, type StandIn, startStandIn } from '../helpers/upstream.ts'

const CHAT = '/v1/chat/completions'
const keyOf = (name: string): string => `sk-${name}-provider-secret-${name.length * 7919}`

describe('provider routing', () => {
  let gw: RunningGateway
  let node: RunningNode
  let user = ''
  let adminKey = ''
  const up = {} as Record<ProviderName, StandIn>
  const log = memoryLog()
  const dirs: Array<{ remove: () => Promise<void> }> = []
  let events: Array<Record<string, unknown>> = []
  let monitor: Monitor | undefined

  const chat = (body: Record<string, unknown>, key = user): Promise<Response> =>
    fetch(`${gw.url}${CHAT}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'Say hello to the test' }], ...body }),
    })
  const route = (r: Response): string => r.headers.get('x-cluster-route') ?? ''

  beforeAll(async () => {
    for (const name of PROVIDER_NAMES) {
      up[name] = await startStandIn({
        name,
        apiKey: keyOf(name),
        // Fireworks here reports no usage: the gateway counts it.
        ...(name === 'fireworks' ? { usage: false } : {}),
        // SambaNova here streams slowly: the test sees events arrive apart.
        ...(name === 'sambanova' ? { chunkDelayMs: 80, words: ['one', 'two', 'three', 'four', 'five', 'six'] } : {}),
      })
    }
    const providers: ProvidersConfig = {}
    for (const name of PROVIDER_NAMES) providers[name] = { apiKey: keyOf(name), baseUrl: up[name].url }
    // Models listed by only some providers, one per scenario, so each starts unmeasured.
    const also = (name: ProviderName, models: Record<string, string>): void => {
      providers[name] = { ...providers[name], models: { ...providers[name]?.models, ...models } }
    }
    also('groq', {
      'auto-model': 'g-auto',
      'fo500-model': 'g-500',
      'fotimeout-model': 'g-timeout',
      'mix-model': 'g-mix',
    })
    also('groq', { 'refused-model': 'g-refused' })
    also('together', { 'auto-model': 't-auto', 'fo500-model': 't-500', 'fotimeout-model': 't-timeout' })
    also('deepinfra', { 'limited-model': 'd-limited', 'rejected-model': 'd-rejected', 'badkey-model': 'd-badkey' })
    also('openrouter', { 'refused-model': 'o-refused' })
    const g = await tempDir('prov-gw')
    const n = await tempDir('prov-node')
    dirs.push(g, n)
    gw = await startGateway({
      dataDir: g.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      providers,
      env: {},
      providerTimeouts: { headersMs: 3_000 },
      logger: createLogger({ role: 'gateway', level: 'info', destination: log.stream }),
    })
    node = await startTinyNode({ dataDir: n.path, bootstrap: gw.multiaddrs(), model: 'mix-model' })
    await waitFor(() => gw.directory.nodesServing('mix-model').length === 1, 15_000, 'the node')
    user = await fundedUser(gw, 'routing@example.com')
    adminKey = readFileSync(gw.adminKeyFile as string, 'utf8').trim()
    monitor = await adminMonitor(gw.url, adminKey)
    events = monitor.messages
  })

  afterAll(async () => {
    monitor?.ws.close()
    await node?.stop()
    await gw?.stop()
    await Promise.all(Object.values(up).map((s) => s.close()))
    await Promise.all(dirs.map((d) => d.remove()))
  })

  it('pinned: each provider gets the request at its own URL, with its own key and its own model id', async () => {
    for (const name of PROVIDER_NAMES) {
      const before = up[name].requestsTo(CHAT).length
      const r = await chat({ model: 'llama-3.3-70b-instruct', provider: name, max_tokens: 16 })
      expect(r.status, name).toBe(200)
      expect(r.headers.get('x-cluster-provider')).toBe(name)
      expect(route(r)).toMatch(new RegExp(`^pinned; chosen=${name}; reason=pinned`))
      const body = (await r.json()) as { choices: Array<{ message: { content: string } }> }
      const words = name === 'sambanova' ? 'one two three four five six' : `Hello from ${name}`
      expect(body.choices[0]?.message.content).toBe(words)
      const got = up[name].requestsTo(CHAT)
      expect(got.length).toBe(before + 1)
      const sent = got.at(-1)
      expect(sent?.headers.authorization).toBe(`Bearer ${keyOf(name)}`)
      expect(sent?.body).toMatchObject({ model: PROVIDERS[name].models['llama-3.3-70b-instruct'], max_tokens: 16 })
      expect(sent?.body).not.toHaveProperty('provider')
    }
  })

  it("the docs' own model, llama-3.1-70b, is served by the providers that list it, under their ids", async () => {
    const listing = PROVIDER_NAMES.filter((name) => PROVIDERS[name].models['llama-3.1-70b'] != null)
    expect(listing.length).toBeGreaterThan(1)
    for (const name of listing) {
      const r = await chat({ model: 'llama-3.1-70b', provider: name })
      expect(r.status, name).toBe(200)
      expect(up[name].requestsTo(CHAT).at(-1)?.body).toMatchObject({ model: PROVIDERS[name].models['llama-3.1-70b'] })
    }
    // Unpinned, as the docs' quick start sends it: one of them answers.
    const auto = await chat({ model: 'llama-3.1-70b' })
    expect(auto.status).toBe(200)
    expect(listing).toContain(auto.headers.get('x-cluster-provider'))
  })

  it('pinned "cluster": a mesh node serves it; a pinned request never goes anywhere else', async () => {
    const r = await chat({ model: 'mix-model', provider: 'cluster', max_tokens: 4 })
    expect(r.status).toBe(200)
    expect(r.headers.get('x-cluster-provider')).toBe('cluster')
    expect(r.headers.get('x-cluster-node')).toBe(node.peerId)
    expect(route(r)).toContain(`chosen=cluster:${node.peerId}`)
    // Groq lists mix-model too, but was not asked.
    expect(up.groq.requestsTo(CHAT).filter((q) => (q.body as { model?: string }).model === 'g-mix')).toHaveLength(0)
  })

  it('an unknown provider → 400 listing the valid ones; a provider that lacks the endpoint → 400', async () => {
    const r = await chat({ model: 'llama-3.3-70b-instruct', provider: 'nonesuch' })
    expect(r.status).toBe(400)
    const body = (await r.json()) as { error: { message: string; param: string; code: string } }
    expect(body.error.param).toBe('provider')
    for (const name of ['cluster', ...PROVIDER_NAMES]) expect(body.error.message).toContain(name)
  })

  it('auto: unmeasured candidates are tried, then the measured best wins', async () => {
    up.groq.always(delayThen(400, { kind: 'ok' }))
    try {
      const chosen: string[] = []
      const reasons: string[] = []
      for (let i = 0; i < 5; i++) {
        const r = await chat({ model: 'auto-model', max_tokens: 8 })
        expect(r.status).toBe(200)
        chosen.push(r.headers.get('x-cluster-provider') ?? '')
        reasons.push(/reason=([\w-]+)/.exec(route(r))?.[1] ?? '')
        await r.arrayBuffer()
      }
      // Both tried once while unmeasured, then the faster one (together) every time.
      expect(new Set(chosen.slice(0, 2))).toEqual(new Set(['groq', 'together']))
      expect(reasons.slice(0, 2)).toEqual(['unmeasured-first', 'unmeasured-first'])
      expect(chosen.slice(2)).toEqual(['together', 'together', 'together'])
      expect(reasons.slice(2)).toEqual(['best-score', 'best-score', 'best-score'])
    } finally {
      up.groq.always(undefined)
    }
  })

  it('auto: a fast mesh node beats a slow provider once both are measured', async () => {
    up.groq.always(delayThen(2_000, { kind: 'ok' }))
    try {
      const chosen: string[] = []
      for (let i = 0; i < 4; i++) {
        const r = await chat({ model: 'mix-model', max_tokens: 4 })
        expect(r.status).toBe(200)
        chosen.push(r.headers.get('x-cluster-provider') ?? '')
        expect(route(r)).toMatch(/candidates=.*cluster:.*groq=|candidates=.*groq=.*cluster:/)
        await r.arrayBuffer()
      }
      expect(chosen.slice(0, 2).sort()).toEqual(['cluster', 'groq'])
      expect(chosen.slice(2)).toEqual(['cluster', 'cluster'])
    } finally {
      up.groq.always(undefined)
    }
  })

  it('failover on a 500: the next candidate answers; the failed one is cooled down and shown on /ws/admin', async () => {
    up.groq.queue(CHAT, { kind: 'status', status: 500 })
    const r = await chat({ model: 'fo500-model', max_tokens: 8 })
    expect(r.status).toBe(200)
    expect(r.headers.get('x-cluster-provider')).toBe('together')
    expect(route(r)).toContain('reason=failover')
    expect(route(r)).toContain('tried=groq:http_500')
    await waitFor(
      () => events.some((e) => e.type === 'route:cooldown' && e.candidate === 'groq' && e.model === 'fo500-model'),
      5_000,
      'the cooldown event',
    )
    const ev = events.find((e) => e.type === 'route:cooldown' && e.model === 'fo500-model')
    expect(ev).toMatchObject({ provider: 'groq', reason: 'http_500', failures: 1, gateway: gw.peerId })
    expect(ev?.cooldownMs).toBeGreaterThan(0)
    // Cooled down: the next request goes to the other candidate first, and says so.
    const again = await chat({ model: 'fo500-model', max_tokens: 8 })
    expect(again.headers.get('x-cluster-provider')).toBe('together')
    expect(route(again)).toContain('groq=cooldown')
    // And in the metrics: the cool-down, and the calls each provider served.
    const metrics = await (await fetch(`${gw.url}/metrics`)).text()
    expect(metrics).toMatch(/cluster_route_cooldowns_total\{provider="groq",reason="http_500"\} [1-9]/)
    expect(metrics).toMatch(/cluster_inferences_total\{endpoint="chat",provider="together"\} [1-9]/)
  })

  it('failover on a timeout (no answer within the first-token time)', async () => {
    up.groq.queue(CHAT, { kind: 'hang' })
    const r = await chat({ model: 'fotimeout-model', max_tokens: 8 })
    expect(r.status).toBe(200)
    expect(r.headers.get('x-cluster-provider')).toBe('together')
    expect(route(r)).toContain('tried=groq:timeout')
  })

  it('a 429 from the last candidate is passed on with its status and Retry-After', async () => {
    up.deepinfra.queue(CHAT, {
      kind: 'status',
      status: 429,
      headers: { 'retry-after': '7' },
      body: { error: { message: 'slow down', type: 'rate_limit_error', code: 'rate_limit_exceeded' } },
    })
    const r = await chat({ model: 'limited-model' })
    expect(r.status).toBe(429)
    expect(r.headers.get('retry-after')).toBe('7')
    const body = (await r.json()) as { error: { message: string; type: string } }
    expect(body.error.type).toBe('rate_limit_error')
    expect(body.error.message).toContain('deepinfra')
    expect(body.error.message).toContain('slow down')
    // Even a failed answer says where it went.
    expect(route(r)).toBe(
      'auto; chosen=none; reason=all-failed; candidates=deepinfra=unmeasured; tried=deepinfra:http_429',
    )
    // The answer came from deepinfra (its 429), and carries our rate-limit headers like any other.
    expect(r.headers.get('x-cluster-provider')).toBe('deepinfra')
    expect(r.headers.get('x-ratelimit-limit')).not.toBeNull()
  })

  it("a provider's 4xx is passed on; its refusal of our key is a 502, never a 401 to the client", async () => {
    up.deepinfra.queue(CHAT, {
      kind: 'status',
      status: 400,
      body: { error: { message: 'max_tokens too large', type: 'invalid_request_error', code: 'bad_max' } },
    })
    const bad = await chat({ model: 'rejected-model' })
    expect(bad.status).toBe(400)
    expect(((await bad.json()) as { error: { message: string; code: string } }).error).toMatchObject({
      code: 'bad_max',
      message: expect.stringContaining('max_tokens too large'),
    })
    up.deepinfra.queue(CHAT, { kind: 'status', status: 401 })
    const key = await chat({ model: 'badkey-model' })
    expect(key.status).toBe(502)
    expect(((await key.json()) as { error: { code: string } }).error.code).toBe('provider_auth_failed')
  })

  it('streams pass through as they arrive, and the usage chunk only when the client asked', async () => {
    const before = up.sambanova.requestsTo(CHAT).length
    const r = await chat({ model: 'llama-3.3-70b-instruct', provider: 'sambanova', stream: true })
    expect(r.status).toBe(200)
    expect(r.headers.get('content-type')).toContain('text/event-stream')
    const arrivals: Array<{ at: number; data: string }> = []
    const reader = (r.body as ReadableStream<Uint8Array>).getReader()
    const decoder = new TextDecoder()
    let buffer = ''
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      buffer += decoder.decode(value, { stream: true })
      for (let i = buffer.indexOf('\n\n'); i >= 0; i = buffer.indexOf('\n\n')) {
        const event = buffer.slice(0, i)
        buffer = buffer.slice(i + 2)
        if (event.startsWith('data: ')) arrivals.push({ at: performance.now(), data: event.slice(6) })
      }
    }
    expect(arrivals.at(-1)?.data).toBe('[DONE]')
    const chunks = arrivals.slice(0, -1).map((a) => JSON.parse(a.data) as { choices: unknown[]; usage?: unknown })
    const content = chunks.map((c) => (c.choices[0] as { delta?: { content?: string } })?.delta?.content ?? '').join('')
    expect(content).toBe('one two three four five six')
    // Six words, 80 ms apart upstream: the client saw them spread out, not in one piece at the end.
    const words = arrivals.filter((a) => /"content":"\s?\w+"/.test(a.data))
    expect(words).toHaveLength(6)
    expect((words.at(-1)?.at ?? 0) - (words[0]?.at ?? 0)).toBeGreaterThan(250)
    // The gateway asked for usage (to bill it) but the client did not: no usage chunk reached it.
    expect(chunks.some((c) => c.usage != null)).toBe(false)
    const sent = up.sambanova.requestsTo(CHAT)[before]?.body as { stream_options?: { include_usage?: boolean } }
    expect(sent.stream_options?.include_usage).toBe(true)

    const withUsage = await chat({
      model: 'llama-3.3-70b-instruct',
      provider: 'sambanova',
      stream: true,
      stream_options: { include_usage: true },
    })
    const text = await withUsage.text()
    expect(text).toMatch(/"usage":\{"prompt_tokens":\d+,"completion_tokens":6/)
  })

  it('a client that leaves a provider stream pays for what it got; nothing stays held', async () => {
    const key = await fundedUser(gw, 'leaver@example.com')
    const controller = new AbortController()
    const r = await fetch(`${gw.url}${CHAT}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({
        model: 'llama-3.3-70b-instruct',
        provider: 'sambanova',
        stream: true,
        messages: [{ role: 'user', content: 'count' }],
      }),
      signal: controller.signal,
    })
    const reader = (r.body as ReadableStream<Uint8Array>).getReader()
    let text = ''
    while (!/"content":"\s?two"/.test(text)) text += new TextDecoder().decode((await reader.read()).value)
    controller.abort()
    const account = await gw.accounts.ledger.findAccountByEmail('leaver@example.com')
    await waitFor(
      async () =>
        (await gw.ledger.transactions(account?.id as string, { limit: 5 })).transactions.some(
          (t) => t.type === 'usage',
        ),
      5_000,
      'the usage row',
    )
    const row = (await gw.ledger.transactions(account?.id as string, { limit: 5 })).transactions.find(
      (t) => t.type === 'usage',
    )
    // Two or three of six words reached it: counted by us (the provider's usage comes only at the end).
    expect(row?.tokensOut).toBeGreaterThanOrEqual(2)
    expect(row?.tokensOut).toBeLessThan(6)
    expect((await gw.ledger.getAccount(account?.id as string))?.held).toBe(0n)
    // Charged, so a call like any other: told on /ws/admin (and so counted in the metrics and logged).
    const told = () =>
      events.find((e) => e.type === 'inference:complete' && e.requestId === r.headers.get('x-request-id')) as
        | { finishReason: string; usage: { completionTokens: number } }
        | undefined
    await waitFor(() => told() != null, 5_000, 'the inference:complete event')
    expect(told()).toMatchObject({
      finishReason: 'abort',
      tokens: { promptTokens: row?.tokensIn, completionTokens: row?.tokensOut },
    })
  })

  it('a provider cannot start events of its own inside one: multi-line data is framed again', async () => {
    const chunk = (content: string) =>
      JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }] })
    // One event whose data spans lines, the last of them looking like an event of its own.
    const forged = `data: ${chunk('hello')}\ndata:\ndata: data: {"id":"FAKE","choices":[{"delta":{"content":"INJECTED"}}]}\n\n`
    const body = `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { role: 'assistant', content: '' } }] })}\n\n${forged}data: ${chunk('')}\n\ndata: [DONE]\n\n`
    up.groq.queue(CHAT, { kind: 'status', status: 200, headers: { 'content-type': 'text/event-stream' }, body })
    const r = await chat({ model: 'llama-3.3-70b-instruct', provider: 'groq', stream: true })
    expect(r.status).toBe(200)
    const text = await r.text()
    // Every line of the forged event still belongs to it: none starts a data line with '{"id":"FAKE"'.
    expect(text.split('\n').some((line) => line.startsWith('data: {"id":"FAKE"'))).toBe(false)
    expect(text).toContain('data: data: {"id":"FAKE"')
    // And a client's SSE parser sees it as one event with the provider's three lines joined.
    const events = text.split('\n\n').filter((e) => e.includes('FAKE'))
    expect(events).toHaveLength(1)
  })

  it('the hold covers everything a provider is sent (tools too), and two different max token limits are refused', async () => {
    const key = await fundedUser(gw, 'holds@example.com')
    const account = await gw.accounts.ledger.findAccountByEmail('holds@example.com')
    const description = 'x'.repeat(1_000_000)
    const tools = [{ type: 'function', function: { name: 'f', description, parameters: { type: 'object' } } }]
    up.groq.queue(CHAT, delayThen(400, { kind: 'ok' }))
    const pending = chat({ model: 'llama-3.3-70b-instruct', provider: 'groq', max_tokens: 1, tools }, key)
    await waitFor(async () => ((await gw.ledger.getAccount(account?.id as string))?.held ?? 0n) > 0n, 5_000, 'a hold')
    const held = (await gw.ledger.getAccount(account?.id as string))?.held ?? 0n
    // At least a token per byte of the tools it forwards (the messages alone are a few bytes).
    const price = { inputPerMillion: parseUsd('0.10'), outputPerMillion: parseUsd('0.20') }
    expect(held >= costOf({ promptTokens: description.length, completionTokens: 1 }, price)).toBe(true)
    expect((await pending).status).toBe(200)
    // The limit the hold is taken on is the one the provider gets: two that differ are refused.
    const both = await chat(
      { model: 'llama-3.3-70b-instruct', provider: 'groq', max_tokens: 100_000, max_completion_tokens: 1 },
      key,
    )
    expect(both.status).toBe(400)
    expect(((await both.json()) as { error: { param: string } }).error.param).toBe('max_completion_tokens')
  })

  it("usage is billed from the provider's numbers", async () => {
    const key = await fundedUser(gw, 'usage@example.com')
    const r = await chat({ model: 'llama-3.3-70b-instruct', provider: 'groq' }, key)
    const body = (await r.json()) as { id: string; usage: { prompt_tokens: number; completion_tokens: number } }
    // The stand-in counts words: 5 in the prompt, 3 in "Hello from groq".
    expect(body.usage).toMatchObject({ prompt_tokens: 5, completion_tokens: 3 })
    const account = await gw.accounts.ledger.findAccountByEmail('usage@example.com')
    const page = await gw.ledger.transactions(account?.id as string, { limit: 10 })
    const usage = page.transactions.find((t) => t.type === 'usage')
    expect(usage).toMatchObject({ model: 'llama-3.3-70b-instruct', tokensIn: 5, tokensOut: 3 })
    const price = { inputPerMillion: parseUsd('0.10'), outputPerMillion: parseUsd('0.20') }
    expect(usage?.amount).toBe(-costOf({ promptTokens: 5, completionTokens: 3 }, price))
  })

  it('a provider that reports no usage: counted by us, billed and shown', async () => {
    const key = await fundedUser(gw, 'counted@example.com')
    const r = await chat({ model: 'llama-3.3-70b-instruct', provider: 'fireworks' }, key)
    expect(r.status).toBe(200)
    const body = (await r.json()) as { usage: { prompt_tokens: number; completion_tokens: number } }
    const expectedOut = await countTokens('Hello from fireworks')
    expect(body.usage.completion_tokens).toBe(expectedOut)
    expect(body.usage.prompt_tokens).toBeGreaterThan(0)
    const account = await gw.accounts.ledger.findAccountByEmail('counted@example.com')
    const page = await gw.ledger.transactions(account?.id as string, { limit: 10 })
    const usage = page.transactions.find((t) => t.type === 'usage')
    expect(usage).toMatchObject({ tokensIn: body.usage.prompt_tokens, tokensOut: expectedOut })
    expect(usage?.amount).toBeLessThan(0n)
    // Streamed, with no usage from upstream: the stream's tokens are counted the same way.
    const s = await chat({ model: 'llama-3.3-70b-instruct', provider: 'fireworks', stream: true }, key)
    expect(await s.text()).toContain('data: [DONE]')
    const after = await gw.ledger.transactions(account?.id as string, { limit: 10 })
    expect(after.transactions.filter((t) => t.type === 'usage')).toHaveLength(2)
    expect(after.transactions[0]?.tokensOut).toBe(expectedOut)
    // Streamed with include_usage: the client asked for usage the provider does not send — it gets ours,
    // as the last chunk before [DONE], equal to what was billed.
    const u = await chat(
      {
        model: 'llama-3.3-70b-instruct',
        provider: 'fireworks',
        stream: true,
        stream_options: { include_usage: true },
      },
      key,
    )
    const events = (await u.text())
      .split('\n\n')
      .filter((e) => e.startsWith('data: '))
      .map((e) => e.slice('data: '.length))
    expect(events.at(-1)).toBe('[DONE]')
    const last = JSON.parse(events.at(-2) as string) as {
      id: string
      object: string
      choices: unknown[]
      usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number }
    }
    const first = JSON.parse(events[0] as string) as { id: string }
    expect(last).toMatchObject({ object: 'chat.completion.chunk', choices: [], id: first.id })
    const billed = (await gw.ledger.transactions(account?.id as string, { limit: 1 })).transactions[0]
    expect(last.usage).toEqual({
      prompt_tokens: billed?.tokensIn,
      completion_tokens: billed?.tokensOut,
      total_tokens: (billed?.tokensIn ?? 0) + (billed?.tokensOut ?? 0),
    })
    expect(last.usage.completion_tokens).toBe(expectedOut)
  })

  it('tools and image parts go to providers as sent; the mesh is never given what it cannot do', async () => {
    const body = {
      model: 'mix-model',
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'What is here?' },
            { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } },
          ],
        },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c1', type: 'function', function: { name: 'look', arguments: '{}' } }],
        },
        { role: 'tool', tool_call_id: 'c1', content: 'a cat' },
      ],
      tools: [{ type: 'function', function: { name: 'look', parameters: { type: 'object' } } }],
    }
    const r = await chat(body)
    expect(r.status).toBe(200)
    expect(r.headers.get('x-cluster-provider')).toBe('groq')
    expect(route(r)).not.toContain('cluster:')
    const sent = up.groq.requestsTo(CHAT).at(-1)?.body as typeof body
    expect(sent.tools).toEqual(body.tools)
    expect(sent.messages).toEqual(body.messages)
    const mesh = await chat({ ...body, provider: 'cluster' })
    expect(mesh.status).toBe(400)
    const err = (await mesh.json()) as { error: { code: string; message: string } }
    expect(err.error.code).toBe('unsupported_by_mesh')
    expect(err.error.message).toContain('tools')
  })

  it('venice_parameters go to Venice and come back in its answer; never to another provider', async () => {
    const params = { include_venice_system_prompt: false, enable_e2ee: true }
    const r = await chat({ model: 'llama-3.3-70b-instruct', provider: 'venice', venice_parameters: params })
    const body = (await r.json()) as { venice_parameters?: unknown }
    expect(body.venice_parameters).toEqual(params)
    expect(up.venice.requestsTo(CHAT).at(-1)?.body).toMatchObject({ venice_parameters: params })
    const g = await chat({ model: 'llama-3.3-70b-instruct', provider: 'groq', venice_parameters: params })
    expect(g.status).toBe(200)
    expect(up.groq.requestsTo(CHAT).at(-1)?.body).not.toHaveProperty('venice_parameters')
  })

  it('the official openai client, plain and streamed, through a provider', async () => {
    const client = new OpenAI({ baseURL: `${gw.url}/v1`, apiKey: user, maxRetries: 0 })
    // `provider` is ours, not in OpenAI's types: passed as an extra body field.
    const extra = { provider: 'together' } as unknown as Record<string, never>
    const plain = await client.chat.completions.create({
      model: 'llama-3.3-70b-instruct',
      messages: [{ role: 'user', content: 'hi' }],
      ...extra,
    })
    expect(plain.choices[0]?.message.content).toBe('Hello from together')
    const stream = await client.chat.completions.create({
      model: 'llama-3.3-70b-instruct',
      messages: [{ role: 'user', content: 'hi' }],
      stream: true,
      ...extra,
    })
    let text = ''
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? ''
    expect(text).toBe('Hello from together')
  })

  it('a pinned provider that is down → 503 saying so; auto fails over from a refused connection', async () => {
    await up.openrouter.close()
    const r = await chat({ model: 'llama-3.3-70b-instruct', provider: 'openrouter' })
    expect(r.status).toBe(503)
    const body = (await r.json()) as { error: { message: string; code: string } }
    expect(body.error.code).toBe('provider_unavailable')
    expect(body.error.message).toContain("'openrouter' is unavailable (refused)")
    const auto = await chat({ model: 'refused-model', max_tokens: 8 })
    expect(auto.status).toBe(200)
    expect(auto.headers.get('x-cluster-provider')).toBe('groq')
    expect(route(auto)).toContain('tried=openrouter:refused')
  })

  it('no provider key is ever sent to another host or written to a log', async () => {
    for (const name of PROVIDER_NAMES) {
      for (const req of up[name].requests) {
        expect(req.headers.authorization).toBe(`Bearer ${keyOf(name)}`)
        const seen = `${JSON.stringify(req.headers)}\n${req.raw.toString('latin1')}`
        for (const other of PROVIDER_NAMES) if (other !== name) expect(seen).not.toContain(keyOf(other))
      }
    }
    expect(up.venice.requests.length).toBeGreaterThan(0)
    const text = log.raw()
    expect(text.length).toBeGreaterThan(0)
    for (const name of PROVIDER_NAMES) expect(text).not.toContain(keyOf(name))
  })
})
