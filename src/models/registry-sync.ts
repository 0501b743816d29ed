// Keeps a peer's registry replica in step with the mesh: new records arrive by gossip, and a peer
// that connects to another one that serves the registry asks it for every record it holds (so a
// gateway that joins late, or was down, lists the same models and versions).
import { join } from 'node:path'
import type { IdentifyResult } from '@libp2p/interface'
import {
  decodeFrames,
  encodeFrame,
  type ModelRecord,
  ModelRecordSchema,
  REGISTRY_PROTOCOL,
  STREAM_LIMITS,
} from '../../protocols/index.ts'
import type { Teardown } from '../lifecycle.ts'
import type { GossipBus } from '../mesh/gossip.ts'
import type { MeshPeer } from '../mesh/peer.ts'
import { sendBytes } from '../mesh/streams.ts'
import { ContentStore } from '../storage/content.ts'
import { ModelRegistry } from './registry.ts'

/** Most records one sync reads (a bound against a peer that never stops sending). */
const MAX_SYNC_RECORDS = 100_000
const SYNC_TIMEOUT_MS = 30_000

export interface RegistryReplica {
  /** Publishes a record this peer made (after accepting it locally). */
  publish(record: ModelRecord): Promise<void>
  /** Asks one peer for all its records now; resolves with how many were new. */
  syncFrom(peerId: string): Promise<number>
  stop(): Promise<void>
}

export async function replicateRegistry(
  peer: MeshPeer,
  bus: GossipBus,
  registry: ModelRegistry,
  log: (line: string) => void = () => undefined,
): Promise<RegistryReplica> {
  await peer.handle(
    REGISTRY_PROTOCOL,
    async (stream) => {
      try {
        for (const record of registry.records()) await sendBytes(stream, encodeFrame(ModelRecordSchema, record))
        await stream.close()
      } catch (err) {
        stream.abort(err as Error)
      }
    },
    STREAM_LIMITS.registry,
  )
  const offGossip = bus.subscribe('models', ModelRecordSchema, (record, from) => {
    void registry.accept(record).then((result) => {
      if (result === 'invalid') log(`registry: dropped a model record from ${from} whose signature does not verify`)
    })
  })

  const syncFrom = async (peerId: string): Promise<number> => {
    const conn = peer.getConnections().find((c) => c.remotePeer.toString() === peerId)
    if (conn == null) return 0
    const signal = AbortSignal.timeout(SYNC_TIMEOUT_MS)
    const stream = await conn.newStream(REGISTRY_PROTOCOL, { signal })
    let added = 0
    let seen = 0
    try {
      await stream.close({ signal })
      for await (const record of decodeFrames(stream, ModelRecordSchema)) {
        if (++seen > MAX_SYNC_RECORDS) break
        if ((await registry.accept(record)) === 'added') added++
      }
    } finally {
      if (stream.status === 'open') stream.abort(new Error('sync done'))
    }
    return added
  }

  const syncing = new Set<string>()
  const syncIfServed = (id: string, protocols: readonly string[]): void => {
    if (!protocols.includes(REGISTRY_PROTOCOL) || syncing.has(id)) return
    syncing.add(id)
    void syncFrom(id)
      .catch((err: unknown) => log(`registry: sync from ${id} failed: ${(err as Error).message}`))
      .finally(() => syncing.delete(id))
  }
  const onIdentify = (evt: CustomEvent<IdentifyResult>): void => {
    syncIfServed(evt.detail.peerId.toString(), evt.detail.protocols)
  }
  peer.addEventListener('peer:identify', onIdentify)
  // Peers identified before this started (bootstrap dials happen while the peer starts).
  for (const conn of peer.getConnections()) {
    void peer.peerStore
      .get(conn.remotePeer)
      .then((p) => syncIfServed(conn.remotePeer.toString(), p.protocols))
      .catch(() => undefined)
  }

  return {
    publish: async (record) => {
      await bus.publish('models', ModelRecordSchema, record)
    },
    syncFrom,
    stop: async () => {
      peer.removeEventListener('peer:identify', onIdentify)
      offGossip()
      await peer.unhandle(REGISTRY_PROTOCOL).catch(() => undefined)
    },
  }
}

/**
 * What every peer opens for models, in order, each pushing its own stop onto `teardown`: the
 * content store (Helia on the peer), the registry's local replica and its replication.
 */
export async function openModelStores(
  o: { peer: MeshPeer; bus: GossipBus; dataDir: string; log: (line: string) => void },
  teardown: Teardown,
): Promise<{ store: ContentStore; registry: ModelRegistry; replica: RegistryReplica }> {
  const store = await ContentStore.open({ dataDir: o.dataDir, libp2p: o.peer })
  teardown.push(() => store.stop())
  const registry = await ModelRegistry.open(join(o.dataDir, 'registry'), o.log)
  teardown.push(() => registry.close())
  const replica = await replicateRegistry(o.peer, o.bus, registry, o.log)
  teardown.push(() => replica.stop())
  return { store, registry, replica }
}
