// A gateway peer: joins the mesh, builds the Directory from gossip, and serves the public HTTP API,
// routing each request to a node over libp2p.
import { mkdir } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { type ServerType, serve } from '@hono/node-server'
import type { LevelWithSilent } from 'pino'
import type { Hex } from 'viem'
import { ClusterEventSchema } from '../protocols/index.ts'
import { EscrowClient } from '../src/chain/escrow.ts'
import { Settler } from '../src/chain/settler.ts'
import { WalletChallenges } from '../src/chain/wallet-link.ts'
import { DepositWatcher } from '../src/chain/watcher.ts'
import { parsePublicUrl } from '../src/config/public-url.ts'
import type { Ledger } from '../src/ledger/ledger.ts'
import { LevelLedger } from '../src/ledger/level-ledger.ts'
import { configureKdf, GatewaySecret, type KdfLimits } from '../src/ledger/secrets.ts'
import { startWithTeardown, type Teardown } from '../src/lifecycle.ts'
import { createLogger, type Logger, lineLogger } from '../src/log.ts'
import { Directory } from '../src/mesh/directory.ts'
import { GossipBus } from '../src/mesh/gossip.ts'
import { createMeshPeer, type MeshPeer } from '../src/mesh/peer.ts'
import { loadOrCreatePeerKey } from '../src/mesh/peer-key.ts'
import { fetchCapabilities } from '../src/mesh/streams.ts'
import type { ModelRegistry } from '../src/models/registry.ts'
import { openModelStores } from '../src/models/registry-sync.ts'
import type { Facilitator, X402Settings } from '../src/payments/x402.ts'
import type { ContentStore } from '../src/storage/content.ts'
import { Accounts } from './accounts.ts'
import { AdminFeed, type AdminFeedOptions } from './admin-ws.ts'
import { type CompletedInference, createApp } from './app.ts'
import { Billing } from './billing.ts'
import type { ChainDeps } from './chain-routes.ts'
import { EventBatcher } from './event-batcher.ts'
import { MeshVectors } from './mesh-vectors.ts'
import { GatewayMetrics, type MetricsAccess } from './metrics.ts'
import type { ModelsConfig } from './models.ts'
import { Pricing, type PricingConfig } from './pricing.ts'
import { enabledProviders, type ProvidersConfig, type UpstreamTimeouts } from './providers/provider.ts'
import {
  LoginFailures,
  type RateLimitConfig,
  RegistrationLimits,
  type RegistrationLimitsConfig,
  TokenBuckets,
} from './rate-limit.ts'
import { MeshRouter, type RouterOptions } from './router.ts'
import { Routing, type RoutingOptions } from './routing.ts'
import { warmTokenCounter } from './tokens.ts'
import { X402Gate } from './x402.ts'

export interface GatewayConfig {
  dataDir: string
  listen?: string[]
  bootstrap?: string[]
  /** HTTP port; 0 picks a free one. @default 8787 */
  port?: number
  /** HTTP host. @default 127.0.0.1 */
  host?: string
  router?: RouterOptions
  pricing?: PricingConfig
  rateLimit?: RateLimitConfig
  /**
   * Failed logins allowed per (email, client address) and per address before 429 (@default 5, one back
   * every 3 minutes); per email from all addresses together, a burst 10 times that (see LoginFailures).
   */
  loginFailures?: RateLimitConfig
  /** Sign-ups per client address (@default 20, one back every 3 minutes) and in all (@default 20, then 2/s). */
  registrationLimit?: RegistrationLimitsConfig
  /** Password hashes running at once (process-wide; @default 2) and how many logins (64) and sign-ups (8) may wait. */
  passwordHashing?: KdfLimits
  /** Charge calls to balances. Off only for benchmarks. @default true */
  billing?: boolean
  /** Email of the admin created on an empty data dir. */
  adminEmail?: string
  /**
   * The gateway's public URL when it is reached through a proxy (e.g. https://api.example.com): model
   * download links, the x402 resource and the wallet-link message use it. @default each request's own origin
   */
  publicUrl?: string
  /** Operational messages (never secrets). @default info lines of `logger` */
  log?: (line: string) => void
  /** Structured JSON logs. @default pino to stderr at `logLevel` */
  logger?: Logger
  /** @default 'info' */
  logLevel?: LevelWithSilent
  /** On-chain settlement against the escrow; off when absent. */
  chain?: GatewayChainConfig
  /** Pay per request with x402 (no account needed); off when absent. */
  x402?: GatewayX402Config
  /** Model uploads and downloads. */
  models?: ModelsConfig
  /** Who may read GET /metrics. @default 'loopback-or-admin' */
  metricsAccess?: MetricsAccess
  /** The admin WebSocket's bounds (auth timeout, buffered bytes, connections per key). */
  adminFeed?: Omit<AdminFeedOptions, 'accounts' | 'directory'>
  /** External providers: keys (else from env, e.g. VENICE_API_KEY), base URLs, extra models. */
  providers?: ProvidersConfig
  /** Where provider keys and base URLs are read from. @default process.env */
  env?: NodeJS.ProcessEnv
  /** Time limits of calls to providers. */
  providerTimeouts?: UpstreamTimeouts
  /** Scoring and cool-down of routing candidates. */
  routing?: RoutingOptions
}

export interface GatewayX402Config {
  settings: X402Settings
  facilitator: Facilitator
  /** The payment chain's RPC, to reconcile settlements by nonce. */
  rpcUrl: string
  settleTimeoutMs?: number
  /** How often pending settlements are reconciled. @default 15000 */
  reconcileIntervalMs?: number
}

export interface GatewayChainConfig {
  rpcUrl: string
  chainId: number
  usdc: string
  escrow: string
  /** The gateway's signing key (from CLUSTER_GATEWAY_KEY or a key file; never from the config). */
  signerKey: Hex
  confirmations: number
  pollIntervalMs: number
  settleIntervalMs: number
  fromBlock?: number
  payoutAddress?: string | undefined
}

export interface GatewayChain {
  client: EscrowClient
  watcher: DepositWatcher
  settler: Settler
}

export interface RunningGateway {
  peer: MeshPeer
  peerId: string
  directory: Directory
  bus: GossipBus
  accounts: Accounts
  ledger: Ledger
  store: ContentStore
  registry: ModelRegistry
  /** Where the first admin's key was written, when this start created it. */
  adminKeyFile: string | undefined
  /** Holds a previous run left open (a crash), freed at this start. */
  reconciledHolds: number
  /** Present when on-chain settlement is on. */
  chain: GatewayChain | undefined
  /** Base URL of the HTTP API, e.g. http://127.0.0.1:8787 */
  url: string
  port: number
  multiaddrs(): string[]
  stop(): Promise<void>
}

export async function startGateway(config: GatewayConfig): Promise<RunningGateway> {
  // A bad public URL is an error at start, not wrong links later.
  const publicUrl = config.publicUrl != null ? parsePublicUrl(config.publicUrl) : undefined
  await mkdir(config.dataDir, { recursive: true })
  return startWithTeardown((teardown, undo) => startParts(config, publicUrl, teardown, undo))
}

async function startParts(
  config: GatewayConfig,
  publicUrl: URL | undefined,
  teardown: Teardown,
  undo: () => Promise<void>,
): Promise<RunningGateway> {
  const ledger = new LevelLedger(join(config.dataDir, 'ledger'))
  await ledger.open()
  teardown.push(() => ledger.close())
  const reconciledHolds = await ledger.reconcileHolds()
  const secret = await GatewaySecret.load(config.dataDir)
  if (config.passwordHashing != null) configureKdf(config.passwordHashing)
  const accounts = new Accounts(ledger, secret)
  const adminKeyFile = await accounts.ensureFirstAdmin(config.dataDir, config.adminEmail)
  const pricing = new Pricing(config.pricing)
  const logger =
    config.logger ?? createLogger({ role: 'gateway', ...(config.logLevel ? { level: config.logLevel } : {}) })
  teardown.push(() => logger.flush())
  const log = config.log ?? lineLogger(logger)
  const privateKey = await loadOrCreatePeerKey(config.dataDir)
  const peer = await createMeshPeer({
    dataDir: config.dataDir,
    privateKey,
    ...(config.listen ? { listen: config.listen } : {}),
    ...(config.bootstrap ? { bootstrap: config.bootstrap } : {}),
    // Its bootstrap outage warnings go to the gateway's own log (level and destination).
    log: logger,
  })
  teardown.push(() => peer.stop())
  const bus = new GossipBus(peer.services.pubsub)
  teardown.push(() => bus.close())
  const directory = new Directory({ fetchCapabilities: (id) => fetchCapabilities(peer, id) })
  directory.start(bus)
  teardown.push(() => directory.stop())
  const { store, registry, replica } = await openModelStores({ peer, bus, dataDir: config.dataDir, log }, teardown)
  const countInference = (model: string): void => {
    void registry.countInference(model).catch(() => undefined)
  }
  const metrics = new GatewayMetrics({ directory, bus, ledger })
  const feed = new AdminFeed({ accounts, directory, ...config.adminFeed })
  teardown.push(() => feed.close())
  bus.subscribe('events', ClusterEventSchema, (event, from) => {
    const list = event.type === 'inference:batch' ? event.events : event.type === 'inference:complete' ? [event] : []
    for (const e of list) {
      countInference(e.model)
      feed.inference(e, from)
    }
  })
  const events = new EventBatcher((event) => {
    void bus.publish('events', ClusterEventSchema, event).catch(() => undefined)
  })
  teardown.push(() => events.flush())
  const router = new MeshRouter(peer, directory, config.router)
  const providers = enabledProviders(config.providers, config.env ?? process.env, config.providerTimeouts)
  teardown.push(() => Promise.all(providers.map((p) => p.close())).then(() => undefined))
  if (providers.length > 0) {
    log(`providers: ${providers.map((p) => `${p.name} (${p.baseUrl})`).join(', ')}`)
    // Counting tokens for a provider that sends no usage needs the encoding loaded.
    warmTokenCounter()
  }
  const gatewayId = peer.peerId.toString()
  const routing = new Routing(
    directory,
    providers,
    (model) => pricing.priceOf(model),
    (event) => {
      logger.warn({ ...event }, 'route candidate cooled down')
      metrics.cooldown(event.provider, event.reason)
      feed.cooldown({ gateway: gatewayId, ...event })
    },
    config.routing,
  )
  // What a completed call leaves behind (counts, metrics, a log line, events) runs after its answer has
  // been written, not in front of it.
  const onComplete = (info: CompletedInference): void => {
    setImmediate(recordCompleted, info)
  }
  const recordCompleted = (info: CompletedInference): void => {
    countInference(info.model)
    metrics.inference(info.model, info.ttftMs, info.durationMs, info.usage.promptTokens, info.usage.completionTokens, {
      endpoint: info.endpoint,
      provider: info.provider ?? 'cluster',
    })
    logger.info(
      {
        reqId: info.requestId,
        model: info.model,
        node: info.nodePeerId,
        promptTokens: info.usage.promptTokens,
        completionTokens: info.usage.completionTokens,
        finishReason: info.finishReason,
        ttftMs: info.ttftMs,
        ms: info.durationMs,
        payer: info.payer,
        endpoint: info.endpoint,
        ...(info.provider != null ? { provider: info.provider } : {}),
      },
      'inference complete',
    )
    const event = {
      v: 1 as const,
      type: 'inference:complete' as const,
      requestId: info.requestId,
      model: info.model,
      nodePeerId: info.nodePeerId,
      usage: info.usage,
      finishReason: info.finishReason,
      ttftMs: info.ttftMs,
      durationMs: info.durationMs,
      payer: info.payer,
      ...(info.provider != null ? { provider: info.provider } : {}),
      endpoint: info.endpoint,
      at: Date.now(),
    }
    // Our own gossip does not come back to us: the local feed hears it here.
    feed.inference(event, peer.peerId.toString())
    events.add(event)
  }
  let chain: (GatewayChain & { deps: ChainDeps }) | undefined
  if (config.chain != null) {
    chain = await startChain(config.chain, ledger, log)
    const started = chain
    teardown.push(async () => {
      await started.watcher.stop()
      await started.settler.stop()
    })
  }
  const x402 =
    config.x402 != null
      ? new X402Gate({
          ...(publicUrl ? { publicUrl } : {}),
          settings: config.x402.settings,
          facilitator: config.x402.facilitator,
          ledger,
          prices: pricing.x402,
          rpcUrl: config.x402.rpcUrl,
          ...(config.x402.settleTimeoutMs != null ? { settleTimeoutMs: config.x402.settleTimeoutMs } : {}),
          log,
        })
      : undefined
  // Payments a previous run left pending (a crash mid-settlement) are reconciled by their nonce.
  const reconcile = (): void => {
    void x402?.reconcile().catch((err: unknown) => log(`x402 reconcile: ${(err as Error).message.split('\n')[0]}`))
  }
  reconcile()
  const reconciler = x402 != null ? setInterval(reconcile, config.x402?.reconcileIntervalMs ?? 15_000) : undefined
  reconciler?.unref()
  teardown.push(() => clearInterval(reconciler))
  const app = createApp({
    ...(chain ? { chain: { ...chain.deps, ...(publicUrl ? { publicUrl } : {}) } } : {}),
    ...(x402 ? { x402 } : {}),
    directory,
    router,
    routing,
    vectors: new MeshVectors(peer, directory),
    onComplete,
    accounts,
    pricing,
    metrics: { registry: metrics, access: config.metricsAccess ?? 'loopback-or-admin' },
    logger,
    models: {
      dataDir: config.dataDir,
      ...(publicUrl ? { publicUrl } : {}),
      peer,
      privateKey,
      store,
      registry,
      replica,
      directory,
      pricing,
      secret,
      ...(config.models ? { config: config.models } : {}),
      log,
      providerModels: () => routing.providerModelIds(),
    },
    billing:
      config.billing === false
        ? undefined
        : new Billing(
            ledger,
            pricing,
            {
              gatewayPeerId: peer.peerId.toString(),
              payeeOf: (node) => directory.get(node)?.capabilities?.payoutAddress ?? '',
            },
            log,
          ),
    limits: new TokenBuckets(config.rateLimit),
    loginFailures: new LoginFailures(config.loginFailures),
    registrations: new RegistrationLimits(config.registrationLimit),
    onKeyRevoked: (keyId) => feed.revoked(keyId),
  })

  const host = config.host ?? '127.0.0.1'
  let server: ServerType | undefined
  const port = await new Promise<number>((resolve, reject) => {
    server = serve({ fetch: app.fetch, port: config.port ?? 8787, hostname: host }, (info: AddressInfo) =>
      resolve(info.port),
    )
    server.once('error', reject)
  })
  feed.attach(server as unknown as import('node:http').Server)
  teardown.push(
    () =>
      new Promise<void>((resolve) => {
        if (server == null) return resolve()
        server.close(() => resolve())
        // Open keep-alive and streaming connections would hold close() back.
        ;(server as unknown as { closeAllConnections?: () => void }).closeAllConnections?.()
      }),
  )

  let stopped: Promise<void> | undefined
  return {
    peer,
    peerId: peer.peerId.toString(),
    directory,
    bus,
    accounts,
    ledger,
    store,
    registry,
    adminKeyFile,
    reconciledHolds,
    chain: chain ? { client: chain.client, watcher: chain.watcher, settler: chain.settler } : undefined,
    url: `http://${host}:${port}`,
    port,
    multiaddrs: () => peer.getMultiaddrs().map((a) => a.toString()),
    stop: () => {
      stopped ??= undo()
      return stopped
    },
  }
}

/** Connects to the escrow, checks it is the contract configured, and starts watching and settling. */
async function startChain(
  config: GatewayChainConfig,
  ledger: Ledger,
  log: (line: string) => void,
): Promise<GatewayChain & { deps: ChainDeps }> {
  const client = new EscrowClient(config, config.signerKey)
  const chainId = await client.publicClient.getChainId()
  if (chainId !== config.chainId) throw new Error(`the RPC serves chain ${chainId}, not ${config.chainId}`)
  const [token, thawPeriod] = await Promise.all([
    client.publicClient.readContract({ address: client.escrow, abi: client.abi, functionName: 'token' }),
    client.publicClient.readContract({ address: client.escrow, abi: client.abi, functionName: 'thawPeriod' }),
  ]).catch((err: unknown) => {
    throw new Error(`no escrow at ${config.escrow} on chain ${chainId}: ${(err as Error).message.split('\n')[0]}`)
  })
  if (token.toLowerCase() !== client.usdc.toLowerCase()) {
    throw new Error(`the escrow at ${config.escrow} holds ${token}, not the configured USDC ${config.usdc}`)
  }
  const fromBlock = BigInt(config.fromBlock ?? 0)
  const watcher = new DepositWatcher(ledger, client, {
    confirmations: config.confirmations,
    pollIntervalMs: config.pollIntervalMs,
    fromBlock,
    log,
  })
  const settler = new Settler(ledger, client, {
    intervalMs: config.settleIntervalMs,
    payoutAddress: config.payoutAddress,
    fromBlock,
    log,
  })
  watcher.start()
  settler.start()
  const deps: ChainDeps = {
    ledger,
    client,
    challenges: new WalletChallenges(client),
    watcher,
    settler,
    thawPeriod,
    confirmations: config.confirmations,
  }
  return { client, watcher, settler, deps }
}
