// A node peer: joins the mesh, loads its models, serves inference over libp2p, and keeps the mesh
// told what it serves and how loaded it is.
import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { type Capabilities, CapabilitiesSchema, HeartbeatSchema, type Load } from '../protocols/index.ts'
import { DEFAULT_HEARTBEAT_INTERVAL_MS } from '../src/mesh/constants.ts'
import { GossipBus } from '../src/mesh/gossip.ts'
import { createMeshPeer, type MeshPeer } from '../src/mesh/peer.ts'
import { loadOrCreatePeerKey } from '../src/mesh/peer-key.ts'
import { serveCapabilities } from '../src/mesh/streams.ts'
import { SOFTWARE } from '../src/version.ts'
import type { Engine } from './engine.ts'
import { FileHashes } from './file-hashes.ts'
import { detectHardware } from './hardware.ts'
import { HeartbeatPublisher } from './heartbeat.ts'
import { serveInference } from './inference-service.ts'
import { LlamaEngine, llamaGpus } from './llama-engine.ts'
import { Scheduler } from './scheduler.ts'

export interface NodeModelConfig {
  path: string
  id?: string | undefined
  cid?: string | undefined
}

export interface NodeConfig {
  dataDir: string
  listen?: string[]
  bootstrap?: string[]
  models: NodeModelConfig[]
  /** @default os.availableParallelism() */
  threads?: number
  /** Parallel sequences per model. @default 4 */
  slots?: number
  /** @default 32 */
  maxQueue?: number
  contextSize?: number
  gpu?: 'auto' | false
  heartbeatIntervalMs?: number
  /** EVM address for earnings; empty until set. */
  payoutAddress?: string
  /** Prices per million tokens, in USDC's smallest unit. */
  prices?: { inputPerMillion: bigint; outputPerMillion: bigint }
}

export interface RunningNode {
  peer: MeshPeer
  peerId: string
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
  const engines = new Map<string, Engine>()
  const schedulers = new Map<string, Scheduler>()
  try {
    for (const m of config.models) {
      const engine = await LlamaEngine.load({
        modelPath: m.path,
        ...(m.id ? { modelId: m.id } : {}),
        ...(m.cid ? { cid: m.cid } : {}),
        ...(config.threads != null ? { threads: config.threads } : {}),
        ...(config.slots != null ? { slots: config.slots } : {}),
        ...(config.contextSize ? { contextSize: config.contextSize } : {}),
        gpu: config.gpu ?? 'auto',
      })
      if (engines.has(engine.modelId)) {
        await engine.close()
        throw new Error(`two models share the id ${engine.modelId}: give one an explicit id`)
      }
      engines.set(engine.modelId, engine)
      schedulers.set(
        engine.modelId,
        new Scheduler(engine, config.maxQueue != null ? { maxQueue: config.maxQueue } : {}),
      )
    }
  } catch (err) {
    for (const e of engines.values()) await e.close()
    throw err
  }

  const privateKey = await loadOrCreatePeerKey(config.dataDir)
  const peer = await createMeshPeer({
    dataDir: config.dataDir,
    privateKey,
    ...(config.listen ? { listen: config.listen } : {}),
    ...(config.bootstrap ? { bootstrap: config.bootstrap } : {}),
  })
  const peerId = peer.peerId.toString()
  const bus = new GossipBus(peer.services.pubsub)
  const hardware = await detectHardware(() => llamaGpus(config.gpu ?? 'auto'))
  const prices = config.prices ?? DEFAULT_NODE_PRICES
  const incarnation = await nextIncarnation(config.dataDir)
  let capsVersion = 1
  const sha256 = new Map<string, string>()

  const capabilities = (): Capabilities => ({
    v: 1,
    peerId,
    incarnation,
    version: capsVersion,
    models: [...engines.values()].map((e) => {
      const hash = sha256.get(e.modelId)
      return hash ? { ...e.describe(), sha256: hash } : e.describe()
    }),
    hardware,
    prices: [...engines.keys()].map((model) => ({
      model,
      inputPerMillion: prices.inputPerMillion.toString(),
      outputPerMillion: prices.outputPerMillion.toString(),
    })),
    payoutAddress: config.payoutAddress ?? '',
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

  await serveInference(peer, { schedulers: () => schedulers, privateKey, modelSha256: (m) => sha256.get(m) })
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
  // Nodes join the topics too, so gossip can relay through them in a mesh without a direct link.
  bus.subscribe('heartbeat', HeartbeatSchema, () => undefined)
  bus.subscribe('capabilities', CapabilitiesSchema, () => undefined)

  // Hash the weights in the background; the next heartbeat announces the new capabilities version.
  const hashing = new AbortController()
  const hashes = new FileHashes(config.dataDir)
  void (async () => {
    for (const [i, m] of config.models.entries()) {
      const id = [...engines.keys()][i]
      if (id == null) continue
      const hash = await hashes.hash(m.path, hashing.signal)
      sha256.set(id, hash)
      capsVersion++
    }
  })().catch(() => undefined)

  let stopped: Promise<void> | undefined
  return {
    peer,
    peerId,
    engines,
    schedulers,
    multiaddrs: () => peer.getMultiaddrs().map((a) => a.toString()),
    stop: () => {
      stopped ??= (async () => {
        hashing.abort()
        await heartbeat.stop()
        bus.close()
        await peer.stop()
        for (const e of engines.values()) await e.close()
      })()
      return stopped
    },
  }
}
