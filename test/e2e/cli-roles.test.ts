// `cluster gateway` and `cluster node` as separate processes, joined through peer.json: the node
// serves through the gateway, and a restarted node keeps its peer id and replaces its old entry.
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { cluster, killAll, runCluster, exited as stopped } from '../helpers/processes.ts'

interface PeerJson {
  peerId: string
  multiaddrs: string[]
  httpUrl?: string
}

const readPeer = (dir: string): PeerJson => JSON.parse(readFileSync(join(dir, 'peer.json'), 'utf8')) as PeerJson

describe('cluster gateway + cluster node as processes', () => {
  const cleanups: Array<() => Promise<void>> = []
  afterAll(async () => {
    await killAll()
    await Promise.all(cleanups.map((f) => f()))
  })

  it('joins through peer.json, serves, and a restarted node keeps its id without a duplicate entry', async () => {
    const g = await tempDir('cli-gw')
    const n = await tempDir('cli-node')
    cleanups.push(g.remove, n.remove)
    const model = await tinyModelPath()

    // The test polls /v1/models quickly: a roomy rate limit, set the way an operator would.
    const gwConfig = join(g.path, 'config.json')
    writeFileSync(gwConfig, JSON.stringify({ gateway: { rateLimit: { capacity: 10_000, refillPerSecond: 1000 } } }))
    const gw = cluster([
      'gateway',
      '--config',
      gwConfig,
      '--data-dir',
      g.path,
      '--listen',
      '/ip4/127.0.0.1/tcp/0',
      '--port',
      '0',
    ])
    await waitFor(() => existsSync(join(g.path, 'peer.json')), 30_000, 'gateway peer.json')
    const gwInfo = readPeer(g.path)
    expect(gwInfo.multiaddrs.length).toBeGreaterThan(0)
    expect(gwInfo.multiaddrs[0]).toContain(`/p2p/${gwInfo.peerId}`)
    const url = gwInfo.httpUrl as string

    // The operator makes an account and credits it with the CLI, against the running gateway.
    const create = await runCluster(['accounts', 'create', '--email', 'cli@example.com', '--data-dir', g.path])
    expect(create.code, create.out).toBe(0)
    const apiKey = (JSON.parse(create.out) as { apiKey: string }).apiKey
    expect(apiKey).toMatch(/^sk-cluster-/)
    const credit = await runCluster([
      'accounts',
      'credit',
      '--email',
      'cli@example.com',
      '--amount',
      '2.50',
      '--data-dir',
      g.path,
    ])
    expect(credit.code, credit.out).toBe(0)
    expect(JSON.parse(credit.out)).toMatchObject({ amount: '2.50', balance: '2.50' })
    const refused = await runCluster([
      'accounts',
      'credit',
      '--email',
      'cli@example.com',
      '--amount',
      '-1',
      '--data-dir',
      g.path,
    ])
    expect(refused.code).toBe(1)
    expect(refused.err).toContain('400')

    // A 5 s heartbeat: the lease (15 s) of a crashed run outlasts the restart below.
    const config = join(n.path, 'config.json')
    writeFileSync(config, JSON.stringify({ heartbeatIntervalMs: 5000 }))
    const nodeArgs = [
      'node',
      '--config',
      config,
      '--data-dir',
      n.path,
      '--listen',
      '/ip4/127.0.0.1/tcp/0',
      '--bootstrap',
      join(g.path, 'peer.json'),
      '--model',
      model,
      '--model-id',
      'cli-tiny',
      '--threads',
      '1',
      '--gpu',
      'off',
    ]
    const models = async (): Promise<Array<{ id: string; nodes: number }>> =>
      (
        (await (await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${apiKey}` } })).json()) as {
          data: Array<{ id: string; nodes: number }>
        }
      ).data

    let node = cluster(nodeArgs)
    await waitFor(async () => (await models()).some((m) => m.id === 'cli-tiny'), 30_000, 'the node in /v1/models')
    const firstId = readPeer(n.path).peerId

    const chat = async (): Promise<Response> =>
      fetch(`${url}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
        body: JSON.stringify({ model: 'cli-tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 }),
      })
    const first = await chat()
    expect(first.status).toBe(200)
    expect(first.headers.get('x-cluster-node')).toBe(firstId)

    // Restart after a crash (SIGKILL: no goodbye, the old entry's lease is still running), same data dir.
    node.kill('SIGKILL')
    await stopped(node)
    rmSync(join(n.path, 'peer.json'))
    const crashedAt = Date.now()
    node = cluster(nodeArgs)
    await waitFor(() => existsSync(join(n.path, 'peer.json')), 30_000, 'restarted node peer.json')
    expect(readPeer(n.path).peerId).toBe(firstId)
    await waitFor(async () => (await models()).some((m) => m.id === 'cli-tiny'), 30_000, 'the restarted node')
    // The new incarnation replaced the old entry (still within its lease): one node, not two.
    expect(Date.now() - crashedAt).toBeLessThan(15_000)
    const list = await models()
    expect(list.find((m) => m.id === 'cli-tiny')?.nodes).toBe(1)
    const again = await chat()
    expect(again.status).toBe(200)
    expect(again.headers.get('x-cluster-node')).toBe(firstId)

    gw.kill('SIGTERM')
    node.kill('SIGTERM')
    await Promise.all([stopped(gw), stopped(node)])
    expect(gw.exitCode).toBe(0)
    expect(node.exitCode).toBe(0)
  })
})
