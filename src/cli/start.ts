// `cluster start` (= `npm start`): one gateway and one node on 127.0.0.1, data under .cluster/,
// serving a given model or a generated random-weights demo model; writes dev.json for clients.
import { existsSync } from 'node:fs'
import { chmod, mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { type Address, createPublicClient, createWalletClient, type Hex, http, maxUint256 } from 'viem'
import { privateKeyToAccount } from 'viem/accounts'
import { startGateway } from '../../gateway/gateway.ts'
import { startNode } from '../../node/node.ts'
import { clusterEscrowAbi, testUsdcAbi } from '../chain/artifacts.ts'
import { type DevChain, devChainViem, fundWallet, startDevChain, testAccounts } from '../chain/devchain.ts'
import { type Config, gatewayExtras } from '../config/config.ts'
import { sha256File } from '../models/gguf.ts'
import { synthesizeGguf } from '../models/synth.ts'
import { formatUsd } from '../payments/money.ts'
import { embeddedFacilitator } from '../payments/x402.ts'
import { dataDirInUse, isDataDirLocked } from './errors.ts'
import { Shutdown, StartupAborted } from './shutdown.ts'

/** The id of the demo model: its name says what it is. */
export const DEMO_MODEL_ID = 'cluster-demo-tiny-random'
export const DEMO_EMAIL = 'demo@cluster.local'
/** The demo wallet gets $100 of test USDC and deposits $5.00 of it. */
const DEMO_WALLET_USDC = 100_000_000n
const DEMO_DEPOSIT = 5_000_000n

type DevAccount = { address: Address; privateKey: Hex }

/** On a fresh chain: test USDC for the demo wallet, a $5 deposit, and the gateway authorized. */
async function fundDemoWallet(chain: DevChain, wallet: DevAccount, gateway: Address): Promise<void> {
  await fundWallet(chain, wallet.address, { usdc: DEMO_WALLET_USDC })
  const transport = http(chain.rpcUrl)
  const viemChain = devChainViem(chain)
  const publicClient = createPublicClient({ chain: viemChain, transport })
  const client = createWalletClient({ chain: viemChain, transport, account: privateKeyToAccount(wallet.privateKey) })
  const calls = [
    { address: chain.usdc, abi: testUsdcAbi, functionName: 'approve', args: [chain.escrow, DEMO_DEPOSIT] },
    { address: chain.escrow, abi: clusterEscrowAbi, functionName: 'deposit', args: [DEMO_DEPOSIT] },
    { address: chain.escrow, abi: clusterEscrowAbi, functionName: 'authorizeGateway', args: [gateway, maxUint256] },
  ] as const
  for (const call of calls) {
    const hash = await client.writeContract(call as Parameters<typeof client.writeContract>[0])
    const receipt = await publicClient.waitForTransactionReceipt({ hash })
    if (receipt.status !== 'success') throw new Error(`demo wallet setup: ${call.functionName} reverted`)
  }
}

/**
 * Uploads the demo model through the Models API (once: a restart finds it in the registry) and
 * deploys it to the node (once: the node keeps its deployments).
 */
async function deployDemo(
  gateway: Awaited<ReturnType<typeof startGateway>>,
  nodeId: string,
  adminApiKey: string,
  path: string,
  shutdown: Shutdown,
): Promise<void> {
  const auth = { authorization: `Bearer ${adminApiKey}` }
  const sha256 = await sha256File(path)
  const known = gateway.registry.get(DEMO_MODEL_ID)
  if (known?.latest.sha256 !== sha256) {
    const form = new FormData()
    form.append('file', new Blob([new Uint8Array(await readFile(path))]), 'demo-tiny.gguf')
    form.append('name', DEMO_MODEL_ID)
    form.append('category', 'chat')
    form.append('description', 'Demo: a tiny llama with random weights (its answers are noise).')
    const res = await fetch(`${gateway.url}/api/models/upload`, { method: 'POST', headers: auth, body: form })
    if (res.status !== 201) throw new Error(`uploading the demo model: ${res.status} ${await res.text()}`)
  }
  // Ready once the gateway's Directory has the node; its capabilities say whether it holds the model.
  await waitUntil(
    () => gateway.directory.get(nodeId)?.capabilities != null,
    30_000,
    'the node to reach the gateway',
    shutdown,
  )
  const holds = (gateway.directory.get(nodeId)?.capabilities?.models ?? []).some(
    (m) => m.id === DEMO_MODEL_ID && m.state !== 'failed',
  )
  if (!holds) {
    const res = await fetch(`${gateway.url}/api/models/${DEMO_MODEL_ID}/deploy`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ nodeId }),
    })
    if (res.status !== 202) throw new Error(`deploying the demo model: ${res.status} ${await res.text()}`)
  }
}

async function waitUntil(check: () => boolean, timeoutMs: number, what: string, shutdown: Shutdown): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!check()) {
    shutdown.check()
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

export interface LocalSystem {
  gatewayUrl: string
  devJsonPath: string
  stop(): Promise<void>
}

/**
 * Starts the chain, the gateway and the node, registering each with `shutdown` as soon as it runs: a
 * signal during start-up stops what was started so far (the start-up then throws StartupAborted),
 * and so does a failure part-way. The system's stop() is shutdown.stop().
 */
export async function startLocal(
  config: Config,
  modelPath?: string,
  shutdown: Shutdown = new Shutdown(),
): Promise<LocalSystem> {
  try {
    return await startParts(config, modelPath, shutdown)
  } catch (err) {
    await shutdown.stop()
    throw err
  }
}

/**
 * Another instance running on this data dir holds its gateway's ledger (LevelDB's lock): said before
 * anything starts, rather than when the gateway opens it after the chain (on the same state file).
 */
async function refuseIfInUse(dataDir: string): Promise<void> {
  const path = join(dataDir, 'gateway', 'ledger')
  if (!existsSync(path)) return
  const { Level } = await import('level')
  const db = new Level(path, { createIfMissing: false })
  try {
    await db.open()
  } catch (err) {
    if (isDataDirLocked(err)) throw dataDirInUse(dataDir)
    return // anything else is for the gateway to report when it opens it
  }
  await db.close()
}

async function startParts(config: Config, modelPath: string | undefined, shutdown: Shutdown): Promise<LocalSystem> {
  const dataDir = resolve(config.dataDir)
  await mkdir(dataDir, { recursive: true })
  await refuseIfInUse(dataDir)
  shutdown.check()
  // A local chain (its state kept under .cluster/chain, so balances survive a restart) with the
  // test USDC, the escrow and Multicall3. Its accounts are anvil's public test accounts.
  const chain: DevChain = await shutdown.track(
    startDevChain({ statePath: join(dataDir, 'chain', 'anvil-state.json') }),
    (c) => c.stop(),
  )

  const [, gatewayAccount, demoWallet, nodePayout, , facilitatorAccount, x402Payer] =
    testAccounts() as DevAccount[] as [
      DevAccount,
      DevAccount,
      DevAccount,
      DevAccount,
      DevAccount,
      DevAccount,
      DevAccount,
    ]
  // x402 on the local chain: the embedded facilitator (its own key pays the gas), paid to the
  // gateway's address; a demo payer with test USDC and no account.
  const x402 = {
    network: `eip155:${chain.chainId}` as const,
    asset: chain.usdc,
    assetDomain: { name: 'USD Coin', version: '2' },
    payTo: gatewayAccount.address,
    maxTimeoutSeconds: 60,
  }
  // A model given by path is served from its file. The demo model goes the way any uploaded model
  // does: into the registry (IPFS), then deployed to the node, which fetches it by CID.
  let demoPath: string | undefined
  if (!modelPath) {
    demoPath = join(dataDir, 'models', 'demo-tiny.gguf')
    if (!existsSync(demoPath)) {
      await mkdir(join(dataDir, 'models'), { recursive: true })
      process.stdout.write('generating the demo model (tiny llama, random weights: its answers are noise)…\n')
      await synthesizeGguf({ preset: 'tiny', out: demoPath })
    }
  }
  shutdown.check()

  const gatewayDir = join(dataDir, 'gateway')
  const gateway = await shutdown.track(
    startGateway({
      ...(config.logLevel ? { logLevel: config.logLevel } : {}),
      dataDir: gatewayDir,
      listen: ['/ip4/127.0.0.1/tcp/0', '/ip4/127.0.0.1/tcp/0/ws'],
      port: config.gateway.port,
      host: config.gateway.host,
      ...gatewayExtras(config),
      chain: {
        rpcUrl: chain.rpcUrl,
        chainId: chain.chainId,
        usdc: chain.usdc,
        escrow: chain.escrow,
        signerKey: gatewayAccount.privateKey,
        confirmations: 0,
        pollIntervalMs: 500,
        settleIntervalMs: 10_000,
      },
      x402: {
        settings: x402,
        facilitator: embeddedFacilitator({
          rpcUrl: chain.rpcUrl,
          chainId: chain.chainId,
          privateKey: facilitatorAccount.privateKey,
          multicall3: chain.multicall3,
          // anvil mines each transaction at once: a receipt poll every 200 ms (the default, for real
          // block times) would add up to that to every paid plain answer.
          pollingIntervalMs: 25,
        }),
        rpcUrl: chain.rpcUrl,
      },
    }),
    (g) => g.stop(),
  )
  const node = await shutdown.track(
    startNode({
      ...(config.logLevel ? { logLevel: config.logLevel } : {}),
      dataDir: join(dataDir, 'node'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gateway.multiaddrs(),
      models: modelPath ? [{ path: resolve(modelPath) }] : [],
      ...(config.node.threads ? { threads: config.node.threads } : {}),
      slots: config.node.slots,
      maxQueue: config.node.maxQueue,
      gpu: config.node.gpu === 'off' ? false : 'auto',
      ...(config.heartbeatIntervalMs ? { heartbeatIntervalMs: config.heartbeatIntervalMs } : {}),
      payoutAddress: config.node.payoutAddress || nodePayout.address,
    }),
    (n) => n.stop(),
  )
  const adminApiKey = (await readFile(join(gatewayDir, 'admin.key'), 'utf8')).trim()
  if (demoPath != null) await deployDemo(gateway, node.peerId, adminApiKey, demoPath, shutdown)
  shutdown.check()
  const models = demoPath != null ? [DEMO_MODEL_ID] : [...node.engines.keys()]

  // Ready when the gateway's Directory lists the node's models: then a first request works.
  await new Promise<void>((ok, fail) => {
    // Served (heartbeat) and, for the demo model, shown ready in the node's capabilities, so the
    // Models API says what /v1/models says when dev.json appears.
    const check = (): boolean =>
      models.every((m) => gateway.directory.nodesServing(m).length > 0) &&
      (demoPath == null ||
        (gateway.directory.get(node.peerId)?.capabilities?.models ?? []).some(
          (m) => m.id === DEMO_MODEL_ID && m.state === 'ready',
        ))
    if (check()) return ok()
    const done = (err?: Error): void => {
      clearTimeout(timer)
      gateway.directory.off('node:heartbeat', on)
      gateway.directory.off('node:capabilities', on)
      shutdown.signal.removeEventListener('abort', aborted)
      if (err) fail(err)
      else ok()
    }
    const timer = setTimeout(() => done(new Error('the node did not reach the gateway within 30 s')), 30_000)
    const on = (): void => {
      if (check()) done()
    }
    const aborted = (): void => done(new StartupAborted())
    gateway.directory.on('node:heartbeat', on)
    gateway.directory.on('node:capabilities', on)
    shutdown.signal.addEventListener('abort', aborted)
    if (shutdown.signal.aborted) aborted()
  })
  shutdown.check()

  // A demo user with some credit, so a first call works as printed.
  // The demo user's money is real on the local chain: its wallet is linked, deposits $5 into the
  // escrow and lets the gateway settle its usage; the watcher credits the deposit.
  const demo =
    (await gateway.ledger.findAccountByEmail(DEMO_EMAIL)) ?? (await gateway.accounts.register(DEMO_EMAIL, null)).account
  await gateway.ledger.linkWallet(demo.id, demoWallet.address)
  if (chain.deployed) {
    await fundDemoWallet(chain, demoWallet, gatewayAccount.address)
    await fundWallet(chain, x402Payer.address, { usdc: DEMO_WALLET_USDC })
  }
  await gateway.chain?.watcher.poll()
  const demoApiKey = await gateway.accounts.loginKey(demo.id)

  const devJsonPath = join(dataDir, 'dev.json')
  const dev = {
    gatewayUrl: gateway.url,
    adminApiKey,
    demoApiKey,
    openaiBaseUrl: `${gateway.url}/v1`,
    models,
    chain: {
      rpcUrl: chain.rpcUrl,
      chainId: chain.chainId,
      usdc: chain.usdc,
      escrow: chain.escrow,
      multicall3: chain.multicall3,
      thawPeriod: Number(chain.thawPeriod),
      gateway: gatewayAccount.address,
      nodePayoutAddress: config.node.payoutAddress || nodePayout.address,
      demoWalletAddress: demoWallet.address,
      // anvil's public test key #2: worthless anywhere but this local chain
      demoWalletPrivateKey: demoWallet.privateKey,
    },
    x402: {
      network: x402.network,
      asset: x402.asset,
      payTo: x402.payTo,
      payerAddress: x402Payer.address,
      // anvil's public test key #6: a payer with test USDC and no account, for x402 clients
      payerPrivateKey: x402Payer.privateKey,
    },
    peers: [
      { role: 'gateway', peerId: gateway.peerId, multiaddrs: gateway.multiaddrs() },
      { role: 'node', peerId: node.peerId, multiaddrs: node.multiaddrs() },
    ],
  }
  // Written whole then renamed: a client polling for dev.json never reads half of it.
  shutdown.check()
  // It holds keys (the admin's, the demo user's, the local chain's test accounts): the owner's only.
  await writeFile(`${devJsonPath}.tmp`, `${JSON.stringify(dev, null, 2)}\n`, { mode: 0o600 })
  await chmod(`${devJsonPath}.tmp`, 0o600)
  await rename(`${devJsonPath}.tmp`, devJsonPath)
  const first = models[0] ?? DEMO_MODEL_ID
  const me = await gateway.ledger.getAccount(demo.id)
  const balance = me ? me.balance - me.held : 0n
  process.stdout.write(
    [
      '',
      `Cluster is running: gateway ${gateway.url}  (OpenAI base URL ${gateway.url}/v1)`,
      `  node ${node.peerId} serves: ${models.join(', ')}${modelPath ? '' : '  (demo model: random weights, the text is noise)'}`,
      `  demo user ${DEMO_EMAIL}: $${formatUsd(balance)} in the escrow from wallet ${demoWallet.address}, key in dev.json (demoApiKey)`,
      `  local chain ${chain.rpcUrl} (id ${chain.chainId}): USDC ${chain.usdc}, escrow ${chain.escrow} (dev.json: chain)`,
      `  admin key: ${join(gatewayDir, 'admin.key')} (and adminApiKey in dev.json)`,
      `  dev.json: ${devJsonPath}`,
      '',
      'Try it:',
      `  curl ${gateway.url}/v1/chat/completions -H 'Content-Type: application/json' \\`,
      // The key stays in dev.json: secrets are not printed.
      `    -H "Authorization: Bearer $(node -p 'require(${JSON.stringify(devJsonPath)}).demoApiKey')" \\`,
      `    -d '{"model": "${first}", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 32}'`,
      '',
      'Ctrl-C (or SIGTERM) stops everything.',
      '',
    ].join('\n'),
  )

  return { gatewayUrl: gateway.url, devJsonPath, stop: () => shutdown.stop() }
}
