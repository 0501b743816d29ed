// Providers from config and env, and the routing plan: which candidates, in which order, the errors
// when there are none, cool-down that doubles, and what the route header says.
import { inspect } from 'node:util'
import { afterEach, describe, expect, it } from 'vitest'
import type { ApiError } from '../../gateway/errors.ts'
import { enabledProviders, type Provider } from '../../gateway/providers/provider.ts'
import { type CooldownEvent, Routing, StartupGrace } from '../../gateway/routing.ts'
import { Directory } from '../../src/mesh/directory.ts'
import { parseUsd } from '../../src/payments/money.ts'

const meshPrice = () => ({ inputPerMillion: parseUsd('0.10'), outputPerMillion: parseUsd('0.20') })

describe('providers from config and env', () => {
  let opened: Provider[] = []
  afterEach(async () => {
    await Promise.all(opened.map((p) => p.close()))
    opened = []
  })

  it('a provider is enabled by its key (env or config); its base URL comes from config, env, or the catalog', () => {
    opened = enabledProviders(
      { groq: { apiKey: 'from-config' }, openrouter: { apiKey: 'k', enabled: false } },
      {
        VENICE_API_KEY: 'from-env',
        CLUSTER_PROVIDER_VENICE_BASE_URL: 'http://127.0.0.1:9/api/v1',
        TOGETHER_API_KEY: '   ',
        OPENROUTER_API_KEY: 'ignored-when-disabled',
      },
    )
    expect(opened.map((p) => p.name)).toEqual(['venice', 'groq'])
    expect(opened[0]?.baseUrl).toBe('http://127.0.0.1:9/api/v1')
    expect(opened[1]?.baseUrl).toBe('https://api.groq.com/openai/v1')
    expect(opened[0]?.holdsKey('Bearer from-env')).toBe(true)
    // The key is not in anything that could be printed by accident.
    expect(inspect(opened[0], { depth: 6, showHidden: true })).not.toContain('from-env')
  })

  it('unknown names and base URLs with credentials or a query are refused', () => {
    expect(() => enabledProviders({ nonesuch: { apiKey: 'k' } } as never, {})).toThrow(/unknown provider 'nonesuch'/)
    expect(() => enabledProviders({ groq: { apiKey: 'k', baseUrl: 'http://u:p@127.0.0.1/v1' } }, {})).toThrow(
      /credentials/,
    )
    expect(() => enabledProviders({ groq: { apiKey: 'k', baseUrl: 'ftp://127.0.0.1/v1' } }, {})).toThrow(/http/)
  })

  it('maps our slugs to the provider’s; a pinned request may name the provider’s own id', () => {
    opened = enabledProviders({ venice: { apiKey: 'k' } }, {})
    const venice = opened[0] as Provider
    expect(venice.upstreamModel('llama-3.3-70b-instruct', false)).toBe('llama-3.3-70b')
    expect(venice.upstreamModel('some-venice-only-id', false)).toBeUndefined()
    expect(venice.upstreamModel('some-venice-only-id', true)).toBe('some-venice-only-id')
  })
})

describe('the routing plan', () => {
  let opened: Provider[] = []
  afterEach(async () => {
    await Promise.all(opened.map((p) => p.close()))
    opened = []
  })

  const setup = (now: { t: number }) => {
    opened = enabledProviders(
      {
        groq: { apiKey: 'g', models: { m: 'g-m' } },
        together: { apiKey: 't', models: { m: 't-m' } },
      },
      {},
    )
    const events: CooldownEvent[] = []
    const routing = new Routing(new Directory(), opened, meshPrice, (e) => events.push(e), {
      now: () => now.t,
      cooldownBaseMs: 1000,
      cooldownMaxMs: 3000,
      // Steady state: the start-up grace has its own test.
      startupGraceMs: 0,
    })
    return { routing, events }
  }

  it('just after start an unknown model is 503 (a node may not have been heard yet), 404 once the grace ends', () => {
    const now = { t: 1_000 }
    const directory = new Directory()
    const routing = new Routing(directory, [], meshPrice, () => undefined, { now: () => now.t, startupGraceMs: 5_000 })
    const err = (f: () => unknown): ApiError => {
      try {
        f()
      } catch (e) {
        return e as ApiError
      }
      throw new Error('no error')
    }
    const early = err(() => routing.plan('unheard', 'chat'))
    expect(early.status).toBe(503)
    expect(early.code).toBe('no_nodes_available')
    expect(early.message).toContain('heard from yet since the gateway started')
    now.t = 6_000
    expect(err(() => routing.plan('unheard', 'chat')).status).toBe(404)
    expect(err(() => routing.plan('unheard', 'chat')).code).toBe('model_not_found')
  })

  it('the grace ends one heartbeat interval after the first heartbeat heard, if that is sooner', () => {
    const now = { t: 1_000 }
    const directory = new Directory({ now: () => now.t })
    const grace = new StartupGrace(directory, 60_000, () => now.t)
    expect(grace.active).toBe(true)
    now.t = 2_000
    directory.handleHeartbeat({
      v: 1,
      peerId: '12D3KooWAaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
      incarnation: 1,
      seq: 0,
      sentAt: 0,
      intervalMs: 1_000,
      state: 'serving',
      load: { active: 0, queued: 0, slots: 1, maxQueue: 8 },
      capabilitiesVersion: 0,
      models: ['m'],
    })
    now.t = 2_999
    expect(grace.active).toBe(true)
    now.t = 3_000 // one interval after that heartbeat, long before the 60 s
    expect(grace.active).toBe(false)
  })

  it('errors: unknown provider 400 (listing all), a provider without a key 503, no candidate 404, mesh-only endpoint 400', () => {
    const { routing } = setup({ t: 0 })
    const err = (f: () => unknown): ApiError => {
      try {
        f()
      } catch (e) {
        return e as ApiError
      }
      throw new Error('no error')
    }
    const unknown = err(() => routing.plan('m', 'chat', 'nope'))
    expect(unknown.status).toBe(400)
    expect(unknown.message).toContain('cluster, venice, groq, together, fireworks')
    const disabled = err(() => routing.plan('m', 'chat', 'venice'))
    expect(disabled.status).toBe(503)
    expect(disabled.code).toBe('provider_unavailable')
    expect(err(() => routing.plan('not-listed', 'chat')).status).toBe(404)
    expect(err(() => routing.plan('m', 'images', 'cluster')).status).toBe(400)
    expect(err(() => routing.plan('m', 'rerank', 'groq')).status).toBe(400)
  })

  it('unmeasured first, then by measured speed; a failure cools down, doubling, and is shown', () => {
    const now = { t: 1_000_000 }
    const { routing, events } = setup(now)
    const order = () => routing.plan('m', 'chat').ordered.map((s) => s.candidate.key)
    // Cheaper first while unmeasured (groq's catalog price is lower).
    expect(order()).toEqual(['groq', 'together'])
    const [groq, together] = routing.plan('m', 'chat').ordered.map((s) => s.candidate)
    routing.success(groq as never, 'm', { ttftMs: 400 })
    expect(order()).toEqual(['together', 'groq'])
    routing.success(together as never, 'm', { ttftMs: 100 })
    expect(order()).toEqual(['together', 'groq'])
    // Measured per model: another model starts unmeasured.
    routing.failure(together as never, 'm', 'http_500')
    expect(order()).toEqual(['groq', 'together'])
    expect(routing.plan('m', 'chat').ordered[1]?.cooling).toBe(true)
    routing.failure(together as never, 'm', 'timeout')
    routing.failure(together as never, 'm', 'timeout')
    expect(events.map((e) => [e.candidate, e.model, e.reason, e.failures, e.cooldownMs])).toEqual([
      ['together', 'm', 'http_500', 1, 1000],
      ['together', 'm', 'timeout', 2, 2000],
      ['together', 'm', 'timeout', 3, 3000],
    ])
    now.t += 3001
    expect(routing.plan('m', 'chat').ordered.every((s) => !s.cooling)).toBe(true)
    const plan = routing.plan('m', 'chat')
    const header = routing.describe(plan, plan.ordered[0] as never, [{ key: 'x', outcome: 'refused' }])
    expect(header).toMatch(
      /^auto; chosen=together; reason=failover; candidates=together=\d+ms,groq=\d+ms; tried=x:refused$/,
    )
    expect(header).toMatch(/^[\x20-\x7e]+$/)
  })

  it('forgets candidates not measured for long, so departed nodes do not pile up', () => {
    const now = { t: 0 }
    const { routing } = setup(now)
    const [groq] = routing.plan('m', 'chat').ordered.map((s) => s.candidate)
    for (let i = 0; i < 1024; i++) routing.success(groq as never, `old-${i}`, { ttftMs: 10 })
    const old = routing.measuredCount
    expect(old).toBe(1026) // and the plan's two
    now.t += 700_000
    for (let i = 0; i < 1100; i++) routing.success(groq as never, `new-${i}`, { ttftMs: 10 })
    // The old ones went at the next prune; the new ones stay.
    expect(routing.measuredCount).toBe(1100)
  })
})
