// A node that dies mid-stream (SIGKILL, a real process): the answer goes on on another node serving
// the model, continued from what the client already has, and the client's stream ends normally with
// [DONE]; billed from the second node's receipt only.
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { adminMonitor } from '../helpers/admin-monitor.ts'
import { fundedUser, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { type ClusterProcess, cluster, exited, killAll } from '../helpers/processes.ts'

const MODEL = 'cont-tiny'

describe('mid-stream continuation', () => {
  let gw: RunningGateway
  let key = ''
  const nodes = new Map<string, ClusterProcess>()
  const dirs: Array<{ remove: () => Promise<void> }> = []

  beforeAll(async () => {
    const g = await tempDir('cont-gw')
    dirs.push(g)
    gw = await startGateway({ dataDir: g.path, listen: ['/ip4/127.0.0.1/tcp/0'], port: 0, env: {} })
    const model = await tinyModelPath()
    for (const name of ['a', 'b']) {
      const d = await tempDir(`cont-node-${name}`)
      dirs.push(d)
      const proc = cluster([
        'node',
        ...['--data-dir', d.path, '--listen', '/ip4/127.0.0.1/tcp/0', '--bootstrap', gw.multiaddrs()[0] as string],
        ...['--model', model, '--model-id', MODEL, '--threads', '1', '--slots', '2', '--gpu', 'off'],
      ])
      await waitFor(
        () => {
          try {
            return JSON.parse(readFileSync(join(d.path, 'peer.json'), 'utf8')).peerId != null
          } catch {
            return false
          }
        },
        30_000,
        `node ${name} up`,
      )
      const { peerId } = JSON.parse(readFileSync(join(d.path, 'peer.json'), 'utf8')) as { peerId: string }
      nodes.set(peerId, proc)
    }
    await waitFor(() => gw.directory.nodesServing(MODEL).length === 2, 30_000, 'both nodes serving')
    key = await fundedUser(gw, 'cont@example.com')
  }, 90_000)

  afterAll(async () => {
    await killAll()
    await gw?.stop()
    await Promise.all(dirs.map((d) => d.remove()))
  })

  it('the stream goes on on the other node and ends with [DONE]', async () => {
    const adminKey = readFileSync(gw.adminKeyFile as string, 'utf8').trim()
    const monitor = await adminMonitor(gw.url, adminKey)
    const r = await fetch(`${gw.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
      body: JSON.stringify({
        model: MODEL,
        messages: [{ role: 'user', content: 'Write a long story.' }],
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: 3000,
        temperature: 0,
      }),
    })
    expect(r.status).toBe(200)
    const first = r.headers.get('x-cluster-node') as string
    const victim = nodes.get(first)
    expect(victim).toBeDefined()
    const reader = (r.body as ReadableStream<Uint8Array>).getReader()
    const decoder = new TextDecoder()
    let raw = ''
    let killed = false
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      raw += decoder.decode(value, { stream: true })
      // Kill the serving node as soon as some content has arrived.
      if (!killed && /"content":"[^"]+"/.test(raw)) {
        killed = true
        victim?.kill('SIGKILL')
      }
    }
    await exited(victim as ClusterProcess)
    expect(killed).toBe(true)
    const other = [...nodes.keys()].find((p) => p !== first) as string
    expect(raw).toContain(`: x-cluster-continued-on: ${other}`)
    expect(raw).not.toContain('node_failed')
    expect(raw.trimEnd().endsWith('data: [DONE]')).toBe(true)
    const events = raw
      .split('\n\n')
      .filter((e) => e.startsWith('data: {'))
      .map(
        (e) =>
          JSON.parse(e.slice(6)) as { id: string; choices: Array<{ finish_reason: string | null }>; usage?: unknown },
      )
    expect(new Set(events.map((e) => e.id)).size).toBe(1)
    expect(events.some((e) => e.choices[0]?.finish_reason != null)).toBe(true)
    // Billed once, from the node that finished (its receipt).
    const account = await gw.accounts.ledger.findAccountByEmail('cont@example.com')
    const rows = (await gw.ledger.transactions(account?.id as string, { limit: 10 })).transactions
    expect(rows.filter((t) => t.type === 'usage')).toHaveLength(1)
    // The completed inference names the node that finished it.
    await waitFor(() => monitor.messages.some((m) => m.type === 'inference:complete'), 5_000, 'the event')
    expect(monitor.messages.find((m) => m.type === 'inference:complete')).toMatchObject({ nodeId: other })
    monitor.ws.close()
    // Nothing left held.
    expect((await gw.ledger.getAccount(account?.id as string))?.held).toBe(0n)
  })
})
