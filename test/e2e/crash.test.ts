// kill -9 of a gateway in the middle of paid traffic: after a restart every account's balance is
// the sum of its transactions and no hold is left open. Also: no key or password in any output.
import { existsSync, readFileSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { LevelLedger } from '../../src/ledger/level-ledger.ts'
import { tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { allOutput, cluster, exited, killAll } from '../helpers/processes.ts'

describe('a gateway killed with -9 under paid load', () => {
  const cleanups: Array<() => Promise<void>> = []
  afterAll(async () => {
    await killAll()
    await Promise.all(cleanups.map((f) => f()))
  })

  it('restarts with every balance equal to the sum of its transactions and no hold open', async () => {
    const g = await tempDir('crash-gw')
    const n = await tempDir('crash-node')
    cleanups.push(g.remove, n.remove)
    const gwArgs = ['gateway', '--data-dir', g.path, '--listen', '/ip4/127.0.0.1/tcp/0', '--port', '0']
    const gw = cluster(gwArgs)
    await waitFor(() => existsSync(join(g.path, 'peer.json')), 30_000, 'gateway up')
    const url = (JSON.parse(readFileSync(join(g.path, 'peer.json'), 'utf8')) as { httpUrl: string }).httpUrl
    const adminKey = readFileSync(join(g.path, 'admin.key'), 'utf8').trim()
    const node = cluster([
      'node',
      '--data-dir',
      n.path,
      '--listen',
      '/ip4/127.0.0.1/tcp/0',
      '--bootstrap',
      join(g.path, 'peer.json'),
      '--model',
      await tinyModelPath(),
      '--model-id',
      'crash-tiny',
      '--threads',
      '1',
      '--slots',
      '4',
      '--max-queue',
      '200',
      '--gpu',
      'off',
    ])

    const post = (path: string, body: unknown, key?: string): Promise<Response> =>
      fetch(`${url}${path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(key ? { authorization: `Bearer ${key}` } : {}) },
        body: JSON.stringify(body),
      })
    const users: Array<{ email: string; password: string; key: string }> = []
    for (let i = 0; i < 3; i++) {
      const email = `crash${i}@example.com`
      const password = `pw-${i}-correct-horse`
      const r = await post('/api/auth/register', { email, password })
      expect(r.status).toBe(201)
      const { apiKey } = (await r.json()) as { apiKey: string }
      users.push({ email, password, key: apiKey })
      expect((await post('/api/admin/credit', { email, amount: '0.05' }, adminKey)).status).toBe(200)
    }
    const modelsOf = async (key: string): Promise<string[]> => {
      const res = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${key}` } })
      return ((await res.json()) as { data: Array<{ id: string }> }).data.map((m) => m.id)
    }
    await waitFor(async () => (await modelsOf(users[0]?.key as string)).includes('crash-tiny'), 30_000, 'node joined')

    // Load: streamed and plain calls from every user; the gateway dies in the middle of it.
    const load = Array.from({ length: 60 }, (_, i) => {
      const u = users[i % users.length] as (typeof users)[number]
      return post(
        '/v1/chat/completions',
        {
          model: 'crash-tiny',
          messages: [{ role: 'user', content: `call ${i}` }],
          max_tokens: 200,
          stream: i % 2 === 0,
        },
        u.key,
      )
        .then(async (r) => {
          await r.text()
          return r.status
        })
        .catch(() => 0)
    })
    await new Promise((r) => setTimeout(r, 400))
    gw.kill('SIGKILL')
    await exited(gw)
    const statuses = await Promise.all(load)
    expect(statuses.some((s) => s === 0)).toBe(true) // some calls really were cut off

    // Restart on the same data dir.
    rmSync(join(g.path, 'peer.json'))
    const again = cluster(gwArgs)
    await waitFor(() => existsSync(join(g.path, 'peer.json')), 30_000, 'gateway back')
    const url2 = (JSON.parse(readFileSync(join(g.path, 'peer.json'), 'utf8')) as { httpUrl: string }).httpUrl
    for (const u of users) {
      const me = await fetch(`${url2}/api/auth/me`, { headers: { authorization: `Bearer ${u.key}` } })
      expect(me.status).toBe(200)
    }
    again.kill('SIGTERM')
    node.kill('SIGTERM')
    await Promise.all([exited(again), exited(node)])

    // The books, read directly.
    const ledger = new LevelLedger(join(g.path, 'ledger'))
    await ledger.open()
    try {
      expect(await ledger.reconcileHolds()).toBe(0)
      for (const u of users) {
        const account = await ledger.findAccountByEmail(u.email)
        expect(account).toBeDefined()
        let sum = 0n
        let cursor: string | undefined
        for (;;) {
          const page = await ledger.transactions(account?.id as string, { limit: 100, ...(cursor ? { cursor } : {}) })
          for (const t of page.transactions) sum += t.amount
          if (page.nextCursor == null) break
          cursor = page.nextCursor
        }
        expect(account?.held).toBe(0n)
        expect(account?.balance).toBe(sum)
        expect(account?.balance).toBeGreaterThanOrEqual(0n)
      }
    } finally {
      await ledger.close()
    }

    // No secret in any output.
    const logs = allOutput()
    for (const u of users) {
      expect(logs).not.toContain(u.key)
      expect(logs).not.toContain(u.password)
    }
    expect(logs).not.toContain(adminKey)
  })
})
