// Every /api route fed bad input: malformed JSON, wrong types, missing fields, huge and odd
// strings, wrong content types. Each answer is a 4xx in the docs' {error, code} shape, never a 5xx.
import { readFileSync } from 'node:fs'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { tempDir } from '../helpers/fixtures.ts'

const bodies: Array<[string, string, string]> = [
  ['malformed JSON', '{"email": ', 'application/json'],
  ['a JSON array', '[1,2,3]', 'application/json'],
  ['a JSON string', '"hello"', 'application/json'],
  ['null', 'null', 'application/json'],
  ['wrong types', JSON.stringify({ email: 5, password: ['x'], amount: { a: 1 }, name: 7 }), 'application/json'],
  ['missing fields', '{}', 'application/json'],
  [
    'huge strings',
    JSON.stringify({
      email: `${'a'.repeat(20_000)}@x.com`,
      password: 'p'.repeat(20_000),
      amount: '9'.repeat(5000),
      name: 'n'.repeat(5000),
    }),
    'application/json',
  ],
  [
    'over the body limit',
    JSON.stringify({ email: 'x@example.com', password: 'x'.repeat(200_000) }),
    'application/json',
  ],
  [
    'unicode and control characters',
    JSON.stringify({ email: 'ü\u0000@例え.テスト', password: '🔑\u202e\ud800x', amount: '١٠' }),
    'application/json',
  ],
  ['form encoding', 'email=a%40b.com&password=12345678', 'application/x-www-form-urlencoded'],
  ['plain text', 'hello', 'text/plain'],
  ['no content type', '{"email":"a@b.com","password":"12345678"}', ''],
]

describe('bad input on every /api route', () => {
  let gw: RunningGateway
  let adminKey: string
  let userKey: string
  let cleanup: () => Promise<void>

  beforeAll(async () => {
    const d = await tempDir('bad-input')
    cleanup = d.remove
    gw = await startGateway({
      dataDir: d.path,
      listen: ['/ip4/127.0.0.1/tcp/0'],
      port: 0,
      rateLimit: { capacity: 10_000, refillPerSecond: 10_000 },
      loginFailures: { capacity: 10_000, refillPerSecond: 10_000 },
    })
    adminKey = readFileSync(gw.adminKeyFile as string, 'utf8').trim()
    const r = await fetch(`${gw.url}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ email: 'user@example.com', password: 'securepassword' }),
    })
    userKey = ((await r.json()) as { apiKey: string }).apiKey
  })

  afterAll(async () => {
    await gw?.stop()
    await cleanup?.()
  })

  const routes: Array<{ method: string; path: string; key: 'none' | 'user' | 'admin' }> = [
    { method: 'POST', path: '/api/auth/register', key: 'none' },
    { method: 'POST', path: '/api/auth/login', key: 'none' },
    { method: 'POST', path: '/api/keys', key: 'user' },
    { method: 'POST', path: '/api/admin/credit', key: 'admin' },
    { method: 'POST', path: '/api/admin/accounts', key: 'admin' },
  ]

  for (const route of routes) {
    for (const [what, body, type] of bodies) {
      it(`${route.method} ${route.path} with ${what} → 4xx in the documented shape`, async () => {
        const key = route.key === 'admin' ? adminKey : route.key === 'user' ? userKey : undefined
        const res = await fetch(`${gw.url}${route.path}`, {
          method: route.method,
          headers: { ...(type ? { 'content-type': type } : {}), ...(key ? { authorization: `Bearer ${key}` } : {}) },
          body,
        })
        // POST /api/keys takes an optional name only: a body without one (or with any printable one) is fine.
        if (route.path === '/api/keys' && (what === 'missing fields' || what === 'unicode and control characters')) {
          expect(res.status).toBe(201)
          return
        }
        expect(res.status).toBeGreaterThanOrEqual(400)
        expect(res.status).toBeLessThan(500)
        const json = (await res.json()) as { error: unknown; code: unknown }
        expect(typeof json.error).toBe('string')
        expect(json.code).toMatch(/^[A-Z_0-9]+$/)
      })
    }
  }

  it.each([
    ['GET', '/api/auth/me'],
    ['GET', '/api/keys'],
    ['DELETE', '/api/keys/key_nope'],
    ['GET', '/api/user/stats'],
    ['GET', '/api/user/transactions'],
    ['POST', '/api/admin/credit'],
    ['POST', '/api/admin/accounts'],
  ])('%s %s without a key → 401 UNAUTHORIZED', async (method, path) => {
    const res = await fetch(`${gw.url}${path}`, { method, headers: { authorization: 'Bearer sk-cluster-!!' } })
    expect(res.status).toBe(401)
    expect(await res.json()).toEqual({ error: expect.any(String), code: 'UNAUTHORIZED' })
  })

  it.each([
    ['POST', '/api/admin/credit', { email: 'user@example.com', amount: '5.00' }],
    ['POST', '/api/admin/accounts', { email: 'other@example.com' }],
  ])('%s %s with a valid non-admin key → 403 FORBIDDEN', async (method, path, body) => {
    const res = await fetch(`${gw.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${userKey}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    expect(res.status).toBe(403)
    expect(await res.json()).toEqual({ error: expect.any(String), code: 'FORBIDDEN' })
  })

  it.each([
    [{ email: 5, password: 'securepassword' }, 'email', "'email' must be a string."],
    [{ email: null, password: 'securepassword' }, 'email', "'email' must be a string."],
    [{ email: 'new@example.com', password: 12345678 }, 'password', "'password' must be a string."],
    [{ email: 'not-an-email', password: 'securepassword' }, 'email', "'email' must be a valid email address."],
    [{ password: 'securepassword' }, 'email', "'email' is required."],
    [{ email: 'new@example.com' }, 'password', "'password' is required."],
  ])('POST /api/auth/register %j → 400 saying what is wrong with the field', async (body, _field, message) => {
    const res = await fetch(`${gw.url}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    expect(res.status).toBe(400)
    expect(await res.json()).toEqual({ error: message, code: 'INVALID_REQUEST' })
  })

  it.each([
    '/api/user/transactions?limit=abc',
    '/api/user/transactions?limit=-1',
    '/api/user/transactions?limit=1.5',
    '/api/user/transactions?cursor=%00%FF',
    `/api/user/transactions?cursor=${'9'.repeat(5000)}`,
  ])('GET %s → 400', async (path) => {
    const res = await fetch(`${gw.url}${path}`, { headers: { authorization: `Bearer ${userKey}` } })
    expect(res.status).toBe(400)
    expect(((await res.json()) as { code: string }).code).toBe('INVALID_REQUEST')
  })

  it('unknown routes → 404 NOT_FOUND; public routes answer without a key', async () => {
    const res = await fetch(`${gw.url}/api/nope`)
    expect(res.status).toBe(404)
    expect(((await res.json()) as { code: string }).code).toBe('NOT_FOUND')
    expect((await fetch(`${gw.url}/api/pricing`)).status).toBe(200)
    expect((await fetch(`${gw.url}/api/stats`)).status).toBe(200)
    expect((await fetch(`${gw.url}/health`)).status).toBe(200)
  })
})
