// Abuse bounds on a real gateway: sign-ups have their own limits (per client address and in all,
// 429 with Retry-After and X-RateLimit-*; nothing created), a flood of sign-ups is refused rather
// than queued behind the password hash so a login still answers promptly, and an admin socket
// whose key is revoked is closed at once (1008) and gets no further event.

import { readFile } from 'node:fs/promises'
import { request } from 'node:http'
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { configureKdf } from '../../src/ledger/secrets.ts'
import { adminMonitor } from '../helpers/admin-monitor.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

const LOOP = ['/ip4/127.0.0.1/tcp/0']

interface Answer {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: Record<string, unknown>
}

/** A JSON POST from a chosen loopback source address (Linux routes all of 127/8 to lo). */
function post(url: string, body: unknown, localAddress = '127.0.0.1', key?: string): Promise<Answer> {
  const data = JSON.stringify(body)
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method: 'POST',
        localAddress,
        agent: false,
        headers: {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(data),
          ...(key ? { authorization: `Bearer ${key}` } : {}),
        },
      },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (chunk: string) => {
          text += chunk
        })
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: JSON.parse(text || '{}') }),
        )
      },
    )
    req.on('error', reject)
    req.end(data)
  })
}

const PASSWORD = 'correct horse battery'

describe('sign-up limits', () => {
  const gateways: RunningGateway[] = []
  const dirs: Array<{ remove: () => Promise<void> }> = []
  const start = async (config: Partial<Parameters<typeof startGateway>[0]>): Promise<RunningGateway> => {
    const d = await tempDir('abuse-limits')
    dirs.push(d)
    const gw = await startGateway({ dataDir: d.path, listen: LOOP, port: 0, ...config })
    gateways.push(gw)
    return gw
  }

  afterEach(() => configureKdf({ maxConcurrent: 2, maxQueuedChecks: 64, maxQueuedHashes: 8 }))
  afterAll(async () => {
    for (const gw of gateways) await gw.stop()
    for (const d of dirs) await d.remove()
  })

  it('per client address: the N+1th sign-up → 429 with Retry-After and X-RateLimit-*, nothing created; another address still may', async () => {
    const gw = await start({
      registrationLimit: {
        perAddress: { capacity: 3, refillPerSecond: 1 / 3600 },
        global: { capacity: 100, refillPerSecond: 100 },
      },
    })
    const url = `${gw.url}/api/auth/register`
    for (let i = 0; i < 3; i++) {
      const r = await post(url, { email: `a${i}@example.com`, password: PASSWORD })
      expect(r.status).toBe(201)
    }
    const refused = await post(url, { email: 'a3@example.com', password: PASSWORD })
    expect(refused.status).toBe(429)
    expect(refused.body).toEqual({ error: expect.stringMatching(/Too many sign-ups/), code: 'RATE_LIMITED' })
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    expect(refused.headers['x-ratelimit-limit']).toBe('3')
    expect(refused.headers['x-ratelimit-remaining']).toBe('0')
    expect(Number(refused.headers['x-ratelimit-reset'])).toBeGreaterThan(Date.now() / 1000)
    expect(await gw.accounts.ledger.findAccountByEmail('a3@example.com')).toBeUndefined()

    // Its own bucket: another address signs up, and the refused address may still log in.
    const other = await post(url, { email: 'b0@example.com', password: PASSWORD }, '127.0.0.2')
    expect(other.status).toBe(201)
    const login = await post(`${gw.url}/api/auth/login`, { email: 'a0@example.com', password: PASSWORD })
    expect(login.status).toBe(200)
  })

  it('in all: past the global burst every address is refused (429, Retry-After)', async () => {
    const gw = await start({
      registrationLimit: {
        perAddress: { capacity: 100, refillPerSecond: 100 },
        global: { capacity: 2, refillPerSecond: 1 / 60 },
      },
    })
    const url = `${gw.url}/api/auth/register`
    expect((await post(url, { email: 'g0@example.com', password: PASSWORD }, '127.0.0.3')).status).toBe(201)
    expect((await post(url, { email: 'g1@example.com', password: PASSWORD }, '127.0.0.4')).status).toBe(201)
    const refused = await post(url, { email: 'g2@example.com', password: PASSWORD }, '127.0.0.5')
    expect(refused.status).toBe(429)
    expect(refused.body.code).toBe('RATE_LIMITED')
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    expect(refused.headers['x-ratelimit-limit']).toBe('2')
    expect(await gw.accounts.ledger.findAccountByEmail('g2@example.com')).toBeUndefined()
  })

  it('a flood of sign-ups from many addresses is refused at once, and a login meanwhile answers promptly', async () => {
    const gw = await start({
      registrationLimit: {
        perAddress: { capacity: 5, refillPerSecond: 1 / 720 },
        global: { capacity: 10, refillPerSecond: 2 },
      },
      passwordHashing: { maxConcurrent: 2, maxQueuedHashes: 4 },
    })
    const first = await post(`${gw.url}/api/auth/register`, { email: 'legit@example.com', password: PASSWORD })
    expect(first.status).toBe(201)

    const flood = Array.from({ length: 200 }, (_, i) =>
      post(
        `${gw.url}/api/auth/register`,
        { email: `flood${i}@example.com`, password: PASSWORD },
        `127.0.${10 + Math.floor(i / 250)}.${(i % 250) + 1}`,
      ),
    )
    const t0 = performance.now()
    const login = await post(`${gw.url}/api/auth/login`, { email: 'legit@example.com', password: PASSWORD })
    const loginMs = performance.now() - t0
    const answers = await Promise.all(flood)
    expect(login.status).toBe(200)
    expect(loginMs).toBeLessThan(2000)

    const statuses = answers.map((a) => a.status)
    const created = statuses.filter((s) => s === 201).length
    // The global burst (10, plus what refills during the flood) bounds what gets through.
    expect(created).toBeLessThanOrEqual(14)
    // Refused at once: over the sign-up limits (429) or beyond the hashing bound (503, no sign-up spent).
    expect(statuses.filter((s) => s === 429 || s === 503).length).toBeGreaterThan(180)
    for (const a of answers.filter((x) => x.status === 429 || x.status === 503)) {
      expect(Number(a.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    }
    expect(statuses.every((s) => s === 201 || s === 429 || s === 503)).toBe(true)
  })

  it('sign-ups beyond the hashing bound are refused with 503 busy, not queued', async () => {
    const gw = await start({
      registrationLimit: {
        // Exactly the burst's worth, never refilled in the test: a busy refusal must not spend one.
        perAddress: { capacity: 20, refillPerSecond: 1 / 3600 },
        global: { capacity: 1000, refillPerSecond: 1000 },
      },
      passwordHashing: { maxConcurrent: 2, maxQueuedHashes: 1 },
    })
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        post(`${gw.url}/api/auth/register`, { email: `busy${i}@example.com`, password: PASSWORD }),
      ),
    )
    const busy = answers.filter((a) => a.status === 503)
    expect(answers.filter((a) => a.status === 201).length).toBeGreaterThanOrEqual(1)
    expect(busy.length).toBeGreaterThan(0)
    expect(busy[0]?.body.code).toBe('BUSY')
    expect(busy[0]?.headers['retry-after']).toBe('1')
    expect(answers.every((a) => a.status === 201 || a.status === 503)).toBe(true)
    // Those refused as busy kept their sign-ups: the address can still sign up now.
    const later = await post(`${gw.url}/api/auth/register`, { email: 'busy-later@example.com', password: PASSWORD })
    expect(later.status).toBe(201)
  })
})

describe('/ws/admin and revoked keys', () => {
  let gw: RunningGateway
  let adminKey: string
  let dir: { path: string; remove: () => Promise<void> }

  beforeAll(async () => {
    dir = await tempDir('abuse-ws')
    gw = await startGateway({ dataDir: dir.path, listen: LOOP, port: 0 })
    adminKey = (await readFile(gw.adminKeyFile as string, 'utf8')).trim()
  })
  afterAll(async () => {
    await gw?.stop()
    await dir?.remove()
  })

  it('revoking a key closes its sockets at once with 1008; they get no further event', async () => {
    const created = await post(`${gw.url}/api/keys`, { name: 'second admin' }, '127.0.0.1', adminKey)
    expect(created.status).toBe(201)
    const { id, apiKey } = created.body as { id: string; apiKey: string }

    const watched = await adminMonitor(gw.url, apiKey)
    const witness = await adminMonitor(gw.url, adminKey)
    const leave = (peerId: string) => gw.directory.emit('node:left', { peerId, incarnation: 1, reason: 'leaving' })
    const left = (m: typeof watched, peerId: string) =>
      m.messages.some((x) => x.type === 'node:left' && x.nodeId === peerId)
    leave('before')
    await waitFor(() => left(watched, 'before') && left(witness, 'before'), 2_000, 'event before revocation')

    const revoked = await fetch(`${gw.url}/api/keys/${id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${adminKey}` },
    })
    expect(revoked.status).toBe(200)
    const t0 = performance.now()
    const closed = await Promise.race([
      watched.closed,
      new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 1000)),
    ])
    expect(closed).toBeDefined()
    expect(performance.now() - t0).toBeLessThan(1000)
    expect(closed?.code).toBe(1008)
    expect(closed?.reason).toMatch(/revoked/)

    leave('after')
    await waitFor(() => left(witness, 'after'), 2_000, 'event after revocation, to the other key')
    expect(left(watched, 'after')).toBe(false)
    witness.ws.close()
  })

  it('a key revoked outside the API (straight in the ledger) loses its socket at the next re-check', async () => {
    const created = await post(`${gw.url}/api/keys`, { name: 'third admin' }, '127.0.0.1', adminKey)
    const { id, apiKey } = created.body as { id: string; apiKey: string }
    const watched = await adminMonitor(gw.url, apiKey)
    const admin = await gw.accounts.authenticate(adminKey)
    expect(await gw.accounts.ledger.revokeKey(admin?.account.id as string, id)).toBe(true)
    const closed = await Promise.race([
      watched.closed,
      new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 8000)),
    ])
    expect(closed?.code).toBe(1008)
    expect(closed?.reason).toMatch(/revoked/)
  })
})

describe('login failures', () => {
  let gw: RunningGateway
  let dir: { remove: () => Promise<void> }
  const login = (email: string, password: string, from: string): Promise<Answer> =>
    post(`${gw.url}/api/auth/login`, { email, password }, from)

  beforeAll(async () => {
    const d = await tempDir('login-failures')
    dir = d
    // 2 per (email, address) and per address; 10 × 2 = 20 per email from all addresses together.
    gw = await startGateway({
      dataDir: d.path,
      listen: LOOP,
      port: 0,
      loginFailures: { capacity: 2, refillPerSecond: 1 / 3600 },
      registrationLimit: { perAddress: { capacity: 100, refillPerSecond: 100 } },
    })
    for (const email of ['owner@example.com', 'spread@example.com']) {
      expect((await post(`${gw.url}/api/auth/register`, { email, password: PASSWORD }, '127.0.1.1')).status).toBe(201)
    }
  })
  afterAll(async () => {
    await gw?.stop()
    await dir?.remove()
  })

  it('one address that keeps failing is refused (429), and the owner still logs in from another', async () => {
    for (let i = 0; i < 2; i++) expect((await login('owner@example.com', 'wrong', '127.0.2.1')).status).toBe(401)
    const refused = await login('owner@example.com', PASSWORD, '127.0.2.1') // even the right one, from there
    expect(refused.status).toBe(429)
    expect(refused.body.code).toBe('RATE_LIMITED')
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    // The owner, elsewhere, is not locked out by a stranger's failures.
    const owner = await login('owner@example.com', PASSWORD, '127.0.2.2')
    expect(owner.status).toBe(200)
    expect(owner.body.apiKey).toMatch(/^sk-cluster-/)
    // The failing address is also bounded across emails (its own bucket is spent).
    expect((await login('spread@example.com', 'wrong', '127.0.2.1')).status).toBe(429)
  })

  it('wrong passwords sent all at once from one address: no more are checked than its allowance', async () => {
    const answers = await Promise.all(
      Array.from({ length: 30 }, () => login('owner@example.com', 'wrong', '127.0.4.1')),
    )
    const statuses = answers.map((a) => a.status)
    expect(statuses.filter((s) => s === 401).length).toBeLessThanOrEqual(2)
    expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(28)
    expect(statuses.every((s) => s === 401 || s === 429)).toBe(true)
    // The owner, from elsewhere, is still in.
    expect((await login('owner@example.com', PASSWORD, '127.0.4.2')).status).toBe(200)
  })

  it('failures spread over many addresses are bounded per email', async () => {
    // 10 addresses × 2 failures = the email's 20; each address alone stays within its own allowance.
    for (let a = 0; a < 10; a++) {
      for (let i = 0; i < 2; i++) {
        expect((await login('spread@example.com', 'wrong', `127.0.3.${a + 1}`)).status).toBe(401)
      }
    }
    const refused = await login('spread@example.com', PASSWORD, '127.0.3.100')
    expect(refused.status).toBe(429)
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1)
    // Another email is untouched.
    expect((await login('owner@example.com', PASSWORD, '127.0.3.100')).status).toBe(200)
  })
})
