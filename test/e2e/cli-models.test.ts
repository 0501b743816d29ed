// `cluster models …` and `cluster node --model cid:…` as a user runs them, against real processes on
// loopback: upload, list, versions, deploy to a node started with no model, download byte for byte,
// a second node serving by CID, and the CLI's answers to bad input.
import { createHash } from 'node:crypto'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'
import { type ClusterProcess, cluster, exited, killAll, runCluster } from '../helpers/processes.ts'

interface Run {
  code: number | null
  out: string
  err: string
}

describe('cluster models … against a running gateway', () => {
  const cleanups: Array<() => Promise<void>> = []
  const servers: ClusterProcess[] = []
  let gwDir: string
  let url: string
  let apiKey: string
  let model: string
  let cid: string

  /** `cluster models ARGS…` with the gateway and key from the environment, as a user would set them. */
  const models = async (args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> => {
    const child = cluster(['models', ...args], { CLUSTER_GATEWAY_URL: url, CLUSTER_API_KEY: apiKey, ...env })
    await exited(child)
    return { code: child.exitCode, out: child.stdoutText(), err: child.stderrText() }
  }
  const dir = async (name: string): Promise<string> => {
    const d = await tempDir(name)
    cleanups.push(d.remove)
    return d.path
  }
  const served = async (): Promise<string[]> => {
    const res = await fetch(`${url}/v1/models`, { headers: { authorization: `Bearer ${apiKey}` } })
    return ((await res.json()) as { data: Array<{ id: string }> }).data.map((m) => m.id)
  }
  /** A node on loopback joined to the gateway, with fast heartbeats. */
  const startNode = async (name: string, extra: string[]): Promise<ClusterProcess> => {
    const path = await dir(name)
    const config = join(path, 'config.json')
    writeFileSync(config, JSON.stringify({ heartbeatIntervalMs: 200 }))
    const node = cluster([
      'node',
      '--config',
      config,
      '--data-dir',
      path,
      '--listen',
      '/ip4/127.0.0.1/tcp/0',
      '--bootstrap',
      join(gwDir, 'peer.json'),
      '--threads',
      '1',
      '--gpu',
      'off',
      ...extra,
    ])
    servers.push(node)
    return node
  }

  beforeAll(async () => {
    model = await tinyModelPath()
    gwDir = await dir('cli-models-gw')
    // The test polls the gateway: a roomy rate limit, set the way an operator would.
    const config = join(gwDir, 'config.json')
    writeFileSync(config, JSON.stringify({ gateway: { rateLimit: { capacity: 10_000, refillPerSecond: 1000 } } }))
    servers.push(
      cluster([
        'gateway',
        '--config',
        config,
        '--data-dir',
        gwDir,
        '--listen',
        '/ip4/127.0.0.1/tcp/0',
        '--host',
        '127.0.0.1',
        '--port',
        '0',
      ]),
    )
    await waitFor(() => existsSync(join(gwDir, 'peer.json')), 30_000, 'gateway peer.json')
    url = (JSON.parse(readFileSync(join(gwDir, 'peer.json'), 'utf8')) as { httpUrl: string }).httpUrl
    const create = await runCluster(['accounts', 'create', '--email', 'models-cli@example.com', '--data-dir', gwDir])
    expect(create.code, create.err).toBe(0)
    apiKey = (JSON.parse(create.out) as { apiKey: string }).apiKey
  })

  afterAll(async () => {
    for (const s of servers) s.kill('SIGTERM')
    await Promise.race([Promise.all(servers.map(exited)), new Promise((r) => setTimeout(r, 6_000))])
    await killAll()
    await Promise.all(cleanups.map((f) => f()))
  })

  it('`models add` uploads with progress and prints id, version, CID and size; the gateway lists it', async () => {
    const bytes = readFileSync(model)
    const run = await models([
      'add',
      model,
      '--name',
      'CLI Tiny',
      '--category',
      'chat',
      '--description',
      'from the cli — ünïcode',
    ])
    expect(run.code, run.err).toBe(0)
    // stderr is not a terminal here: plain progress lines instead of a bar.
    expect(run.err).toMatch(/uploading .*\.gguf: 100% /)
    expect(run.out).toContain('uploaded CLI Tiny as cli-tiny version 1')
    expect(run.out).toMatch(/^ {2}id {7}cli-tiny$/m)
    expect(run.out).toMatch(/^ {2}version {2}1$/m)
    expect(run.out).toContain(`(${bytes.length} bytes)`)
    expect(run.out).toContain(createHash('sha256').update(bytes).digest('hex'))
    cid = /^ {2}cid {6}(\S+)$/m.exec(run.out)?.[1] ?? ''
    expect(cid).toMatch(/^baf/)
    expect(`${run.out}${run.err}`).not.toContain(apiKey)

    const listed = (await (await fetch(`${url}/api/models/public`)).json()) as {
      models: Array<Record<string, unknown>>
    }
    expect(listed.models.find((m) => m.id === 'cli-tiny')).toMatchObject({
      name: 'CLI Tiny',
      description: 'from the cli — ünïcode',
      category: 'chat',
      version: 1,
      cid,
      size: bytes.length,
    })
  })

  it('`models ls` (table and --json, with --gateway) and `models versions`', async () => {
    // The flags instead of the environment.
    const json = await runCluster(['models', 'ls', '--json', '--gateway', url])
    expect(json.code, json.err).toBe(0)
    const listed = JSON.parse(json.out) as { models: Array<{ id: string; cid: string }>; total: number }
    expect(listed.total).toBe(1)
    expect(listed.models[0]).toMatchObject({ id: 'cli-tiny', cid })

    const table = await models(['ls'])
    expect(table.code, table.err).toBe(0)
    const [header, row] = table.out.trim().split('\n')
    expect(header?.split(/\s+/)).toEqual(['ID', 'VERSION', 'SIZE', 'ARCH/QUANT', 'NODES', 'CID'])
    expect(row?.split(/\s{2,}/)).toEqual(['cli-tiny', 'v1', '733.8 KiB', 'llama/Q8_0', '0', cid])

    const versions = await models(['versions', 'cli-tiny', '--json'])
    expect(versions.code, versions.err).toBe(0)
    expect(JSON.parse(versions.out)).toMatchObject({ id: 'cli-tiny', versions: [{ version: 1, cid }] })
    const text = await models(['versions', 'cli-tiny'])
    expect(text.out).toMatch(new RegExp(`^v1\\s+733\\.8 KiB\\s+\\S+Z\\s+${cid}$`, 'm'))
  })

  it('`models deploy` to a node started with no --model: it fetches the weights and serves them', async () => {
    const node = await startNode('cli-models-n1', [])
    await waitFor(() => node.stdoutText().includes('waiting for deployments'), 30_000, 'the node to start')
    // The gateway needs the node's capabilities before it can choose it: retry while it has none.
    let deploy: Run = { code: null, out: '', err: '' }
    await waitFor(
      async () => {
        deploy = await models(['deploy', 'cli-tiny'])
        if (deploy.code !== 0 && !deploy.err.includes('No GPU nodes available')) throw new Error(deploy.err)
        return deploy.code === 0
      },
      20_000,
      'the deploy to be accepted',
    )
    expect(deploy.out).toMatch(/^deploy(ing|ed) cli-tiny version 1 \(.+\) on node 12D3/)
    await waitFor(async () => (await served()).includes('cli-tiny'), 30_000, 'cli-tiny in /v1/models')
    const ls = JSON.parse((await models(['ls', '--json'])).out) as { models: Array<{ stats: { nodes: number } }> }
    expect(ls.models[0]?.stats.nodes).toBe(1)
  })

  it('`models download` streams the weights to a file and checks them: byte for byte the upload', async () => {
    const out = join(await dir('cli-models-dl'), 'copy.gguf')
    const run = await models(['download', 'cli-tiny', '--out', out])
    expect(run.code, run.err).toBe(0)
    expect(run.out).toContain('verified')
    expect(run.err).toMatch(/downloading cli-tiny v1: 100% /)
    expect(readFileSync(out).equals(readFileSync(model))).toBe(true)
    expect(existsSync(`${out}.partial`)).toBe(false)
  })

  it('`cluster node --model cid:<CID> --model-id ID` fetches the weights over IPFS and serves them as ID', async () => {
    const node = await startNode('cli-models-n2', ['--model', `cid:${cid}`, '--model-id', 'other-name'])
    await waitFor(() => node.stdoutText().includes(`fetching cid:${cid}`), 30_000, 'the second node to start')
    await waitFor(async () => (await served()).includes('other-name'), 30_000, 'other-name in /v1/models')
  })

  it('bad input: a non-GGUF file gets the gateway message, a wrong key its 401, a missing --name a usage error', async () => {
    const bad = join(await dir('cli-models-bad'), 'notes.gguf')
    writeFileSync(bad, 'these are notes, not weights\n'.repeat(100))
    const refused = await models(['add', bad, '--name', 'notes'])
    expect(refused.code).toBe(1)
    expect(refused.err).toContain('cluster models add: The file is not a GGUF model')
    expect(refused.err).toContain('(400 INVALID_MODEL)')

    const wrongKey = await models(['deploy', 'cli-tiny'], { CLUSTER_API_KEY: 'sk-cluster-not-a-key' })
    expect(wrongKey.code).toBe(1)
    expect(wrongKey.err).toMatch(/cluster models deploy: .*\(401 UNAUTHORIZED\)/)
    expect(wrongKey.err).not.toContain('sk-cluster-not-a-key')

    const usage = await models(['add', model])
    expect(usage.code).not.toBe(0)
    expect(usage.err).toContain("required option '--name <name>' not specified")
    expect(usage.out).toBe('')

    const total = ((await (await fetch(`${url}/api/models/public`)).json()) as { total: number }).total
    expect(total).toBe(1)
  })
})
