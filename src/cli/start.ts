// `cluster start` (= `npm start`): one gateway and one node on 127.0.0.1, data under .cluster/,
// serving a given model or a generated random-weights demo model; writes dev.json for clients.
import { existsSync } from 'node:fs'
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { startGateway } from '../../gateway/gateway.ts'
import { startNode } from '../../node/node.ts'
import { type Config, gatewayExtras } from '../config/config.ts'
import { synthesizeGguf } from '../models/synth.ts'
import { formatUsd } from '../payments/money.ts'

/** The id of the demo model: its name says what it is. */
export const DEMO_MODEL_ID = 'cluster-demo-tiny-random'
export const DEMO_EMAIL = 'demo@cluster.local'
/** $5.00 of credit for the demo user. */
const DEMO_CREDIT = 5_000_000n

export interface LocalSystem {
  gatewayUrl: string
  devJsonPath: string
  stop(): Promise<void>
}

export async function startLocal(config: Config, modelPath?: string): Promise<LocalSystem> {
  const dataDir = resolve(config.dataDir)
  await mkdir(dataDir, { recursive: true })
  let model: { path: string; id?: string }
  if (modelPath) {
    model = { path: resolve(modelPath) }
  } else {
    const path = join(dataDir, 'models', 'demo-tiny.gguf')
    if (!existsSync(path)) {
      await mkdir(join(dataDir, 'models'), { recursive: true })
      process.stdout.write('generating the demo model (tiny llama, random weights: its answers are noise)…\n')
      await synthesizeGguf({ preset: 'tiny', out: path })
    }
    model = { path, id: DEMO_MODEL_ID }
  }

  const gatewayDir = join(dataDir, 'gateway')
  const gateway = await startGateway({
    dataDir: gatewayDir,
    listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'],
    port: config.gateway.port,
    host: config.gateway.host,
    ...gatewayExtras(config),
  })
  let node: Awaited<ReturnType<typeof startNode>>
  try {
    node = await startNode({
      dataDir: join(dataDir, 'node'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gateway.multiaddrs(),
      models: [model],
      ...(config.node.threads ? { threads: config.node.threads } : {}),
      slots: config.node.slots,
      maxQueue: config.node.maxQueue,
      gpu: config.node.gpu === 'off' ? false : 'auto',
      ...(config.heartbeatIntervalMs ? { heartbeatIntervalMs: config.heartbeatIntervalMs } : {}),
    })
  } catch (err) {
    await gateway.stop()
    throw err
  }
  const models = [...node.engines.keys()]

  // Ready when the gateway's Directory lists the node's models: then a first request works.
  await new Promise<void>((ok, fail) => {
    const check = (): boolean => models.every((m) => gateway.directory.nodesServing(m).length > 0)
    if (check()) return ok()
    const timer = setTimeout(() => fail(new Error('the node did not reach the gateway within 30 s')), 30_000)
    const on = (): void => {
      if (!check()) return
      clearTimeout(timer)
      gateway.directory.off('node:heartbeat', on)
      ok()
    }
    gateway.directory.on('node:heartbeat', on)
  })

  // The operator's key, and a demo user with some credit, so a first call works as printed.
  const adminApiKey = (await readFile(join(gatewayDir, 'admin.key'), 'utf8')).trim()
  let demo = await gateway.ledger.findAccountByEmail(DEMO_EMAIL)
  if (demo == null) {
    demo = (await gateway.accounts.register(DEMO_EMAIL, null)).account
    await gateway.ledger.credit(demo.id, DEMO_CREDIT, {
      type: 'credit',
      memo: 'demo credit',
      ref: `demo-credit:${demo.id}`,
    })
  }
  const demoApiKey = await gateway.accounts.loginKey(demo.id)

  const devJsonPath = join(dataDir, 'dev.json')
  const dev = {
    gatewayUrl: gateway.url,
    adminApiKey,
    demoApiKey,
    openaiBaseUrl: `${gateway.url}/v1`,
    models,
    peers: [
      { role: 'gateway', peerId: gateway.peerId, multiaddrs: gateway.multiaddrs() },
      { role: 'node', peerId: node.peerId, multiaddrs: node.multiaddrs() },
    ],
  }
  // Written whole then renamed: a client polling for dev.json never reads half of it.
  await writeFile(`${devJsonPath}.tmp`, `${JSON.stringify(dev, null, 2)}\n`)
  await rename(`${devJsonPath}.tmp`, devJsonPath)
  const first = models[0] ?? DEMO_MODEL_ID
  process.stdout.write(
    [
      '',
      `Cluster is running: gateway ${gateway.url}  (OpenAI base URL ${gateway.url}/v1)`,
      `  node ${node.peerId} serves: ${models.join(', ')}${modelPath ? '' : '  (demo model: random weights, the text is noise)'}`,
      `  demo user ${DEMO_EMAIL}: $${formatUsd(DEMO_CREDIT)} of credit, key in dev.json (demoApiKey)`,
      `  admin key: ${join(gatewayDir, 'admin.key')} (and adminApiKey in dev.json)`,
      `  dev.json: ${devJsonPath}`,
      '',
      'Try it:',
      `  curl ${gateway.url}/v1/chat/completions -H 'Content-Type: application/json' \\`,
      // The key stays in dev.json: secrets are not printed.
      `    -H "Authorization: Bearer $(node -p 'require(${JSON.stringify(devJsonPath)}).demoApiKey')" \\`,
      `    -d '{"model": "${first}", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'`,
      '',
      'Ctrl-C stops everything.',
      '',
    ].join('\n'),
  )

  let stopped: Promise<void> | undefined
  return {
    gatewayUrl: gateway.url,
    devJsonPath,
    stop: () => {
      stopped ??= (async () => {
        await node.stop()
        await gateway.stop()
      })()
      return stopped
    },
  }
}
