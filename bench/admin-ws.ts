// admin-ws: what 500 monitors on /ws/admin cost the gateway. The feed and its HTTP server run in
// this process on a real Directory fed heartbeats at a fixed rate; the subscribers run in another
// process. Figures: the gateway's heap and RSS with 500 authenticated subscribers while events flow,
// against the same with none (same event rate, same run), and the events delivered per second.
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { Accounts } from '../gateway/accounts.ts'
import { AdminFeed } from '../gateway/admin-ws.ts'
import type { Heartbeat } from '../protocols/index.ts'
import { LevelLedger } from '../src/ledger/level-ledger.ts'
import { GatewaySecret } from '../src/ledger/secrets.ts'
import { Directory } from '../src/mesh/directory.ts'
import { figure, fmt, loadavg, spawnNode, table, withScope } from './lib.ts'

const MIB = 1024 * 1024

export async function adminWsBench(): Promise<void> {
  const subscribers = Number(process.env.BENCH_ADMIN_WS_SUBSCRIBERS ?? 500)
  const rate = Number(process.env.BENCH_ADMIN_WS_EVENTS_PER_S ?? 200)
  const seconds = Number(process.env.BENCH_ADMIN_WS_SECONDS ?? 10)
  await withScope('admin-ws', async (dir) => {
    const ledger = new LevelLedger(`${dir}/ledger`)
    await ledger.open()
    const accounts = new Accounts(ledger, await GatewaySecret.load(dir, {}))
    const token = (await accounts.register('bench@example.com', null, 'admin')).apiKey
    const directory = new Directory()
    const feed = new AdminFeed({ accounts, directory, maxConnectionsPerKey: subscribers + 1 })
    const server = createServer((_req, res) => res.end())
    feed.attach(server)
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const url = `ws://127.0.0.1:${(server.address() as AddressInfo).port}/ws/admin`
    let seq = 0
    const beat = (): Heartbeat => ({
      v: 1,
      peerId: '12D3KooWBenchNode',
      incarnation: 1,
      seq: seq++,
      sentAt: Date.now(),
      intervalMs: 1000,
      state: 'serving',
      load: { active: 1, queued: 0, slots: 4, maxQueue: 32 },
      capabilitiesVersion: 1,
      models: ['llama-3.3-70b-instruct'],
    })
    const pump = setInterval(() => directory.handleHeartbeat(beat()), 1000 / rate)
    /** Heap and RSS after a GC, sampled over `seconds`: the peak of each. */
    const measure = async (): Promise<{ heap: number; rss: number }> => {
      let heap = 0
      let rss = 0
      for (let i = 0; i < seconds * 4; i++) {
        await new Promise((r) => setTimeout(r, 250))
        globalThis.gc?.()
        const m = process.memoryUsage()
        heap = Math.max(heap, m.heapUsed)
        rss = Math.max(rss, m.rss)
      }
      return { heap, rss }
    }
    try {
      const idle = await measure()
      const clients = spawnNode('admin-ws-clients', [
        'bin/run-ts.js',
        'bench/admin-ws-clients.ts',
        url,
        token,
        String(subscribers),
      ])
      await clients.waitFor(new RegExp(`authenticated ${subscribers}`), 60_000)
      const sentBefore = feed.stats.sent
      const t = performance.now()
      const loaded = await measure()
      const perSecond = (feed.stats.sent - sentBefore) / ((performance.now() - t) / 1000)
      console.log(`\nadmin-ws: ${subscribers} subscribers, ${rate} events/s for ${seconds} s, load ${loadavg()}`)
      table(
        ['', 'heap MiB (peak)', 'RSS MiB (peak)'],
        [
          ['no subscribers', fmt(idle.heap / MIB, 1), fmt(idle.rss / MIB, 1)],
          [`${subscribers} subscribers`, fmt(loaded.heap / MIB, 1), fmt(loaded.rss / MIB, 1)],
        ],
      )
      console.log(
        `events delivered: ${fmt(perSecond, 0)}/s (${subscribers} × ${rate} offered); slow drops: ${feed.stats.droppedSlow}`,
      )
      figure('admin_ws.rss_ratio', loaded.rss / idle.rss, 2)
      figure('admin_ws.heap_kib_per_subscriber', (loaded.heap - idle.heap) / 1024 / subscribers, 1)
      figure('admin_ws.delivered_ratio', perSecond / (subscribers * rate), 2)
      await clients.stop()
    } finally {
      clearInterval(pump)
      feed.close()
      server.closeAllConnections()
      await new Promise((r) => server.close(r))
      await ledger.close()
    }
  })
}
