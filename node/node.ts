// A node peer: joins the mesh, loads its models, serves inference (chat, embeddings, rerank) over
// libp2p, and keeps the mesh told what it serves and how loaded it is.
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { LevelWithSilent } from 'pino'
import {
  type Capabilities,
  CapabilitiesSchema,
  DeploymentEventSchema,
  HeartbeatSchema,
  type Load,
} from '../protocols/index.ts'
import { startWithTeardown, type Teardown } from '../src/lifecycle.ts'
import { createLogger, type Logger, lineLogger } from '../src/log.ts'
import { DEFAULT_HEARTBEAT_INTERVAL_MS } from '../src/mesh/constants.ts'
import { GossipBus } from '../src/mesh/gossip.ts'
import { createMeshPeer, type MeshPeer } from '../src/mesh/peer.ts'
import { loadOrCreatePeerKey } from '../src/mesh/peer-key.ts'
import { serveCapabilities } from '../src/mesh/streams.ts'
import { freeMemory } from '../src/models/placement.ts'
import type { ModelRegistry } from '../src/models/registry.ts'
import { openModelStores } from '../src/models/registry-sync.ts'
import type { ContentStore } from '../src/storage/content.ts'
import { SOFTWARE } from '../src/version.ts'
import { Deployer, type DeploymentSpec } from './deployer.ts'
import type { Engine } from './engine.ts'
import { FileHashes } from './file-hashes.ts'
import { detectHardware } from './hardware.ts'
import { HeartbeatPublisher } from './heartbeat.ts'
import { HttpEngine, type HttpEngineOptions } from './http-engine.ts'
import { serveInference } from './inference-service.ts'
import { LlamaEngine, llamaGpus } from './llama-engine.ts'
import { nodeMetricsRegistry, serveNodeMetrics } from './metrics.ts'
import { Scheduler } from './scheduler.ts'
import { deployTrust } from './trust.ts'
import { serveVectors, type VectorsService } from './vectors-service.ts'

export interface NodeModelConfig {
  /** A GGUF file, or `cid:<CID>` to fetch the weights over IPFS from the mesh. */
  path: string
  id?: string | undefined
  cid?: string | undefined
}

const CID_PREFIX = 'cid:'

/** How long an undeployed (or replaced) model may finish the requests it has before it is closed. */
const UNDEPLOY_DRAIN_MS = 30_000

export interface NodeConfig {
  dataDir: string
  listen?: string[]
  /** Multiaddrs, or paths of a peer.json to re-read at every redial (see MeshConfig.bootstrap). */
  bootstrap?: string[]
  /** @default BOOTSTRAP_REDIAL_MS */
  bootstrapRedialMs?: number
  /** @default BOOTSTRAP_WARN_AFTER_MS */
  bootstrapWarnAfterMs?: number
  models: NodeModelConfig[]
  /** Models served by an OpenAI-compatible HTTP server the operator runs (vLLM, llama-server, Ollama, …). */
  upstreams?: HttpEngineOptions[]
  /** @default os.availableParallelism() */
  threads?: number
  /** Parallel sequences per model. @default 4 */
  slots?: number
  /** @default 32 */
  maxQueue?: number
  /** The longest a request may wait for a sequence before it is refused as busy. @default 30000 */
  maxQueueWaitMs?: number
  contextSize?: number
  gpu?: 'auto' | false
  heartbeatIntervalMs?: number
  /** EVM address for earnings; empty until set. */
  payoutAddress?: string
  /** Prices per million tokens, in USDC's smallest unit. */
  prices?: { inputPerMillion: bigint; outputPerMillion: bigint }
  /** Take deploy requests from gateways. @default true */
  acceptDeploys?: boolean
  /**
   * Peer ids of gateways whose deploy and undeploy requests are taken, beside the bootstrap peers
   * (the /p2p/ id of a bootstrap multiaddr, the peerId of a bootstrap peer.json). Other peers are
   * refused.
   */
  trustedGateways?: string[]
  /** Bytes offered for model weights. @default all VRAM, else three quarters of RAM */
  modelMemoryBytes?: number
  /** Operational messages. @default info lines of `logger` */
  log?: (line: string) => void
  /** Structured JSON logs. @default pino to stderr at `logLevel` */
  logger?: Logger
  /** @default 'info' */
  logLevel?: LevelWithSilent
  /** Serve Prometheus /metrics on this port (0: any free one), on 127.0.0.1 unless `metricsHost`. Off when absent. */
  metricsPort?: number
  /** @default 127.0.0.1 */
  metricsHost?: string
}

export interface RunningNode {
  /** The port of /metrics, when served. */
  metricsPort: number | undefined
  peer: MeshPeer
  peerId: string
  store: ContentStore
  deployer: Deployer
  registry: ModelRegistry
  engines: ReadonlyMap<string, Engine>
  schedulers: ReadonlyMap<string, Scheduler>
  multiaddrs(): string[]
  stop(): Promise<void>
}

/** Default prices per million tokens (USDC smallest units): $0.10 in, $0.20 out. */
export const DEFAULT_NODE_PRICES = { inputPerMillion: 100_000n, outputPerMillion: 200_000n }

async function nextIncarnation(dataDir: string): Promise<number> {
  const file = join(dataDir, 'incarnation')
  let previous = 0
  try {
    previous = Number.parseInt(await readFile(file, 'utf8'), 10) || 0
  } catch {
    previous = 0
  }
  // Monotonic across restarts even if the clock steps back.
  const next = Math.max(Date.now(), previous + 1)
  await writeFile(file, String(next))
  return next
}

export async function startNode(config: NodeConfig): Promise<RunningNode> {
  await mkdir(config.dataDir, { recursive: true })
  return startWithTeardown((teardown, undo) => startParts(config, teardown, undo))
}

async function startParts(config: NodeConfig, teardown: Teardown, undo: () => Promise<void>): Promise<RunningNode> {
  const engines = new Map<string, Engine>()
  // Engines are closed last, whichever way they came (files or deployments).
  teardown.push(async () => {
    for (const e of engines.values()) await e.close()
  })
  const schedulers = new Map<string, Scheduler>()
  const logger = config.logger ?? createLogger({ role: 'node', ...(config.logLevel ? { level: config.logLevel } : {}) })
  teardown.push(() => logger.flush())
  const log = config.log ?? lineLogger(logger)
  const fromFiles = config.models.filter((m) => !m.path.startsWith(CID_PREFIX))
  const fromCids: DeploymentSpec[] = config.models
    .filter((m) => m.path.startsWith(CID_PREFIX))
    .map((m) => ({ cid: m.path.slice(CID_PREFIX.length), id: m.id }))
  const loadEngine = (path: string, extra: { id?: string | undefined; cid?: string | undefined }) =>
    LlamaEngine.load({
      modelPath: path,
      ...(extra.id ? { modelId: extra.id } : {}),
      ...(extra.cid ? { cid: extra.cid } : {}),
      ...(config.threads != null ? { threads: config.threads } : {}),
      ...(config.slots != null ? { slots: config.slots } : {}),
      ...(config.contextSize ? { contextSize: config.contextSize } : {}),
      gpu: config.gpu ?? 'auto',
    })
  const schedulerOf = new WeakMap<Engine, Scheduler>()
  const serveEngine = (engine: Engine): void => {
    const scheduler = new Scheduler(engine, {
      ...(config.maxQueue != null ? { maxQueue: config.maxQueue } : {}),
      ...(config.maxQueueWaitMs != null ? { maxQueueWaitMs: config.maxQueueWaitMs } : {}),
      // A server of its own batches as it arrives: no admission window (it measures no prefill).
      ...(engine instanceof HttpEngine ? { admissionShare: 0 } : {}),
    })
    schedulerOf.set(engine, scheduler)
    engines.set(engine.modelId, engine)
    schedulers.set(engine.modelId, scheduler)
  }

  for (const u of config.upstreams ?? []) {
    const engine = new HttpEngine(u)
    if (engines.has(engine.modelId)) {
      await engine.close()
      throw new Error(`two models share the id ${engine.modelId}: give one an explicit id`)
    }
    serveEngine(engine)
  }

  for (const m of fromFiles) {
    const engine = await loadEngine(m.path, m)
    if (engines.has(engine.modelId)) {
      await engine.close()
      throw new Error(`two models share the id ${engine.modelId}: give one an explicit id`)
    }
    serveEngine(engine)
  }

  const privateKey = await loadOrCreatePeerKey(config.dataDir)
  const peer = await createMeshPeer({
    dataDir: config.dataDir,
    privateKey,
    ...(config.listen ? { listen: config.listen } : {}),
    ...(config.bootstrap ? { bootstrap: config.bootstrap } : {}),
    ...(config.bootstrapRedialMs != null ? { bootstrapRedialMs: config.bootstrapRedialMs } : {}),
    ...(config.bootstrapWarnAfterMs != null ? { bootstrapWarnAfterMs: config.bootstrapWarnAfterMs } : {}),
    log: logger,
  })
  teardown.push(() => peer.stop())
  const peerId = peer.peerId.toString()
  const fileModelIds = new Set(engines.keys())
  const bus = new GossipBus(peer.services.pubsub)
  teardown.push(() => bus.close())
  const { store, registry } = await openModelStores({ peer, bus, dataDir: config.dataDir, log }, teardown)
  const hardware = await detectHardware(() => llamaGpus(config.gpu ?? 'auto'))
  const prices = config.prices ?? DEFAULT_NODE_PRICES
  const incarnation = await nextIncarnation(config.dataDir)
  let capsVersion = 1
  const sha256 = new Map<string, string>()

  let deployer: Deployer | undefined
  let vectors: VectorsService | undefined
  const capabilities = (): Capabilities => ({
    v: 1,
    peerId,
    incarnation,
    version: capsVersion,
    models: [
      ...[...engines.values()].map((e) => {
        const hash = sha256.get(e.modelId)
        const origin = deployer?.origin(e.modelId)
        return { ...e.describe(), ...(origin ?? {}), ...(hash ? { sha256: hash } : {}) }
      }),
      ...(deployer?.pending() ?? []),
    ],
    hardware,
    prices: [...engines.keys()].map((model) => ({
      model,
      inputPerMillion: prices.inputPerMillion.toString(),
      outputPerMillion: prices.outputPerMillion.toString(),
    })),
    payoutAddress: config.payoutAddress ?? '',
    ...(config.modelMemoryBytes != null ? { memoryForModels: config.modelMemoryBytes } : {}),
    acceptsDeploys: config.acceptDeploys ?? true,
    software: SOFTWARE,
  })
  const load = (): Load => {
    const total: Load = { active: 0, queued: 0, slots: 0, maxQueue: 0 }
    for (const s of schedulers.values()) {
      const l = s.load()
      total.active += l.active
      total.queued += l.queued
      total.slots += l.slots
      total.maxQueue += l.maxQueue
    }
    return total
  }

  deployer = new Deployer({
    dataDir: config.dataDir,
    peer,
    store,
    acceptDeploys: config.acceptDeploys ?? true,
    trusts: deployTrust(config.bootstrap ?? [], config.trustedGateways),
    load: (path, spec) => loadEngine(path, spec),
    serve: (engine, spec) => {
      serveEngine(engine)
      if (spec.sha256) sha256.set(engine.modelId, spec.sha256)
    },
    unserve: async (id, engine) => {
      // New requests stop finding it at once (unless a newer version already took its place);
      // those in flight finish, within a bound, before it is closed.
      if (engines.get(id) === engine) {
        schedulers.delete(id)
        engines.delete(id)
        sha256.delete(id)
      }
      const scheduler = schedulerOf.get(engine)
      const deadline = Date.now() + UNDEPLOY_DRAIN_MS
      while (scheduler != null && Date.now() < deadline) {
        const l = scheduler.load()
        const v = vectors?.load(engine) ?? { running: 0, queued: 0 }
        if (l.active + l.queued + v.running + v.queued === 0) break
        await new Promise((r) => setTimeout(r, 50))
      }
    },
    freeMemory: () => freeMemory(capabilities()),
    reservedIds: () => fileModelIds,
    changed: () => {
      capsVersion++
    },
    announce: (type, model) => {
      void bus
        .publish('deployments', DeploymentEventSchema, { v: 1, type, peerId, incarnation, model, at: Date.now() })
        .catch(() => undefined)
    },
    idForCid: (cid) => registry.byCid(cid)?.id,
    // Only what the registry signed: a peer cannot put other weights under a model's name.
    verify: async (spec, records) => {
      for (const r of records) await registry.accept(r)
      const listed = registry
        .get(spec.id ?? '')
        ?.versions.some(
          (v) =>
            v.cid === spec.cid &&
            v.version === spec.version &&
            v.sizeBytes === spec.sizeBytes &&
            v.sha256 === spec.sha256,
        )
      return listed === true
        ? undefined
        : `the registry has no version ${spec.version} of ${spec.id} with CID ${spec.cid} (and this size and sha256)`
    },
    log,
  })

  await serveInference(peer, {
    schedulers: () => schedulers,
    privateKey,
    modelSha256: (m) => sha256.get(m),
    // The request id is the gateway's (its completion id): one id across both logs.
    onComplete: ({ request, promptTokens, completionTokens }) =>
      logger.info({ reqId: request.id, model: request.model, promptTokens, completionTokens }, 'inference served'),
  })
  vectors = await serveVectors(peer, {
    engines: () => engines,
    privateKey,
    modelSha256: (m) => sha256.get(m),
    onComplete: ({ request, promptTokens }) =>
      logger.info({ reqId: request.id, model: request.model, task: request.type, promptTokens }, 'vectors served'),
    onFailure: ({ request, error }) =>
      logger.warn({ reqId: request.id, model: request.model, task: request.type, err: error }, 'vectors failed'),
  })
  await serveCapabilities(peer, capabilities)
  const heartbeat = new HeartbeatPublisher({
    bus,
    peerId,
    incarnation,
    intervalMs: config.heartbeatIntervalMs ?? DEFAULT_HEARTBEAT_INTERVAL_MS,
    load,
    readyModels: () => [...engines.keys()],
    capabilities,
  })
  heartbeat.start()
  teardown.push(() => heartbeat.stop())
  // Nodes join the topics too, so gossip can relay through them in a mesh without a direct link.
  bus.subscribe('heartbeat', HeartbeatSchema, () => undefined)
  bus.subscribe('capabilities', CapabilitiesSchema, () => undefined)
  bus.subscribe('deployments', DeploymentEventSchema, () => undefined)
  const started = deployer
  teardown.push(() => started.stop())
  await deployer.start(fromCids)

  let metricsPort: number | undefined
  if (config.metricsPort != null) {
    const registry = nodeMetricsRegistry({
      schedulers: () => schedulers,
      engines: () => engines,
      pending: () => started.pending(),
    })
    const served = await serveNodeMetrics(registry, config.metricsHost ?? '127.0.0.1', config.metricsPort)
    metricsPort = served.port
    teardown.push(() => new Promise((r) => served.server.close(r)))
  }

  // Hash the weights in the background; the next heartbeat announces the new capabilities version.
  const hashing = new AbortController()
  teardown.push(() => hashing.abort())
  const hashes = new FileHashes(config.dataDir)
  void (async () => {
    for (const [i, m] of fromFiles.entries()) {
      const id = [...engines.keys()][i]
      if (id == null) continue
      const hash = await hashes.hash(m.path, hashing.signal)
      sha256.set(id, hash)
      capsVersion++
    }
  })().catch(() => undefined)

  let stopped: Promise<void> | undefined
  const running: RunningNode = {
    metricsPort,
    peer,
    peerId,
    store,
    deployer,
    registry,
    engines,
    schedulers,
    multiaddrs: () => peer.getMultiaddrs().map((a) => a.toString()),
    stop: () => {
      stopped ??= undo()
      return stopped
    },
  }
  return running
}
