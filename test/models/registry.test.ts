// The model registry replica: signed records only (forged or altered ones are dropped), version 1
// fixes the owner, conflicts resolve the same way on every peer, records and counts survive a
// reopen, and a peer that connects later syncs every record while new ones spread by gossip. An id
// belongs to the gateway whose record for it came first: another gateway's record for it is refused
// whatever its createdAt (no takeover by backdating), on disk across a reopen too.
import { generateKeyPair } from '@libp2p/crypto/keys'
import type { PrivateKey } from '@libp2p/interface'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { ModelRecord, UnsignedModelRecord } from '../../protocols/index.ts'
import { GossipBus } from '../../src/mesh/gossip.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { ModelRegistry, signModelRecord, slugOf, verifyModelRecord } from '../../src/models/registry.ts'
import { replicateRegistry } from '../../src/models/registry-sync.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

const CID = 'bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi'
const CID2 = 'bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku'

let keyA: PrivateKey
let keyB: PrivateKey
const idOf = (k: PrivateKey): string => peerIdFromPrivateKey(k).toString()

const unsigned = (key: PrivateKey, over: Partial<UnsignedModelRecord> = {}): UnsignedModelRecord => ({
  v: 1,
  id: 'llama-demo',
  version: 1,
  cid: CID,
  sizeBytes: 1234,
  sha256: 'a'.repeat(64),
  name: 'Llama Demo',
  category: 'chat',
  description: '',
  owner: 'usr_1',
  gateway: idOf(key),
  gguf: { name: 'demo', architecture: 'llama', parameters: 10, quantization: 'Q8_0', contextLength: 4096 },
  createdAt: 1_000,
  ...over,
})

const cleanups: Array<() => Promise<void>> = []
async function openRegistry(
  path?: string,
  log?: (line: string) => void,
): Promise<{ registry: ModelRegistry; path: string }> {
  const dir = path ?? (await tempDir('registry')).path
  if (path == null)
    cleanups.push(() => import('node:fs/promises').then((fs) => fs.rm(dir, { recursive: true, force: true })))
  return { registry: await ModelRegistry.open(dir, log), path: dir }
}

beforeAll(async () => {
  keyA = await generateKeyPair('Ed25519')
  keyB = await generateKeyPair('Ed25519')
})
afterAll(async () => {
  for (const c of cleanups) await c()
})

describe('model records', () => {
  it('verify only when signed by the gateway they name, unaltered', async () => {
    const record = await signModelRecord(keyA, unsigned(keyA))
    expect(await verifyModelRecord(record)).toBe(true)
    expect(await verifyModelRecord({ ...record, cid: CID2 })).toBe(false)
    expect(await verifyModelRecord({ ...record, owner: 'usr_2' })).toBe(false)
    expect(await verifyModelRecord({ ...record, gguf: { ...record.gguf, parameters: 11 } })).toBe(false)
    // Signed by B while claiming to be A's.
    const forged = await signModelRecord(keyB, unsigned(keyA))
    expect(await verifyModelRecord(forged)).toBe(false)
    expect(await verifyModelRecord({ ...record, signature: 'x' })).toBe(false)
    expect(await verifyModelRecord({ ...record, id: 'Not A Slug' })).toBe(false)
  })

  it('slugs names into ids', () => {
    expect(slugOf('My Small Model')).toBe('my-small-model')
    expect(slugOf('  Llama 3.1 (70B) ')).toBe('llama-3.1-70b')
    expect(slugOf('Ünïcode Nämé')).toBe('unicode-name')
    expect(slugOf('!!!')).toBe('')
  })
})

describe('ModelRegistry', () => {
  it('keeps versions under the owner that version 1 fixed; others are left out', async () => {
    const { registry } = await openRegistry()
    expect(await registry.accept(await signModelRecord(keyA, unsigned(keyA)))).toBe('added')
    expect(await registry.accept(await signModelRecord(keyA, unsigned(keyA, { version: 2, cid: CID2 })))).toBe('added')
    // Another gateway (or another owner) cannot add version 3 of A's model.
    await registry.accept(await signModelRecord(keyB, unsigned(keyB, { version: 3 })))
    await registry.accept(await signModelRecord(keyA, unsigned(keyA, { version: 4, owner: 'usr_2' })))
    const model = registry.get('llama-demo')
    expect(model?.versions.map((v) => v.version)).toEqual([1, 2])
    expect(model?.latest.cid).toBe(CID2)
    expect(registry.byCid(CID)?.version).toBe(1)
    await registry.close()
  })

  it('drops forged records and resolves a clash on (id, version) the same way in any order', async () => {
    const early = await signModelRecord(keyA, unsigned(keyA, { createdAt: 1 }))
    const late = await signModelRecord(keyA, unsigned(keyA, { createdAt: 2, cid: CID2 }))
    const one = (await openRegistry()).registry
    const two = (await openRegistry()).registry
    expect(await one.accept(early)).toBe('added')
    expect(await one.accept(late)).toBe('lost')
    expect(await two.accept(late)).toBe('added')
    expect(await two.accept(early)).toBe('added')
    expect(one.get('llama-demo')?.latest.signature).toBe(two.get('llama-demo')?.latest.signature)
    expect(await one.accept(early)).toBe('known')
    expect(await one.accept({ ...early, description: 'changed' })).toBe('invalid')
    expect(await one.accept({ nonsense: true })).toBe('invalid')
    await one.close()
    await two.close()
  })

  it('a model without version 1 is not listed until version 1 arrives', async () => {
    const { registry } = await openRegistry()
    await registry.accept(await signModelRecord(keyA, unsigned(keyA, { version: 2 })))
    expect(registry.get('llama-demo')).toBeUndefined()
    expect(registry.models()).toEqual([])
    await registry.accept(await signModelRecord(keyA, unsigned(keyA)))
    expect(registry.get('llama-demo')?.versions).toHaveLength(2)
    await registry.close()
  })

  it('keeps records and inference counts across a reopen', async () => {
    const { registry, path } = await openRegistry()
    await registry.accept(await signModelRecord(keyA, unsigned(keyA)))
    await registry.countInference('llama-demo')
    await registry.countInference('llama-demo')
    await registry.close()
    const again = (await openRegistry(path)).registry
    expect(again.get('llama-demo')?.versions).toHaveLength(1)
    expect(again.inferences('llama-demo')).toBe(2)
    await again.close()
  })
})

describe('ModelRegistry: an id belongs to the gateway whose record came first', () => {
  it('only a first version claims an id: a lone later version for an unknown id cannot squat it', async () => {
    const { registry } = await openRegistry()
    const squat = await signModelRecord(keyB, unsigned(keyB, { id: 'not-yet', version: 9 }))
    expect(await registry.accept(squat)).toBe('orphan')
    expect(registry.signerOf('not-yet')).toBeUndefined()
    expect(await registry.accept(await signModelRecord(keyA, unsigned(keyA, { id: 'not-yet' })))).toBe('added')
    expect(registry.get('not-yet')?.gateway).toBe(idOf(keyA))
    await registry.close()
  })

  it('a later version that came before its version 1 is taken with it, if the same gateway signed both', async () => {
    const { registry } = await openRegistry()
    const v2 = await signModelRecord(keyA, unsigned(keyA, { id: 'early', version: 2, cid: CID2 }))
    expect(await registry.accept(v2)).toBe('orphan')
    expect(await registry.accept(v2)).toBe('orphan') // brought again (gossip and sync): waits once
    const squat = await signModelRecord(keyB, unsigned(keyB, { id: 'early', version: 3 }))
    expect(await registry.accept(squat)).toBe('orphan')
    expect(await registry.accept(await signModelRecord(keyA, unsigned(keyA, { id: 'early' })))).toBe('added')
    expect(registry.get('early')?.versions.map((v) => v.version)).toEqual([1, 2])
    expect(registry.records().filter((r) => r.id === 'early')).toHaveLength(2) // not another gateway's 3
    await registry.close()
  })

  it('refuses a backdated version 1 (or any version) of the id signed by another gateway; says why', async () => {
    const logs: string[] = []
    const { registry, path } = await openRegistry(undefined, (l) => logs.push(l))
    const real = await signModelRecord(keyA, unsigned(keyA, { createdAt: 1_000 }))
    expect(await registry.accept(real)).toBe('added')
    const hijack = await signModelRecord(
      keyB,
      unsigned(keyB, { createdAt: 1, owner: 'usr_attacker', sha256: 'b'.repeat(64), cid: CID2 }),
    )
    expect(await registry.accept(hijack)).toBe('foreign')
    expect(await registry.accept(await signModelRecord(keyB, unsigned(keyB, { version: 2 })))).toBe('foreign')
    expect(registry.get('llama-demo')).toMatchObject({ owner: 'usr_1', gateway: idOf(keyA) })
    expect(registry.get('llama-demo')?.latest.sha256).toBe('a'.repeat(64))
    expect(registry.records()).toHaveLength(1)
    expect(logs.filter((l) => l.includes('refused version 1 of llama-demo'))).toHaveLength(1)
    expect(logs[0]).toMatch(new RegExp(`signed by gateway ${idOf(keyB)}.*belongs to gateway ${idOf(keyA)}`))
    // The original signer adds versions; another gateway's new id is taken.
    expect(await registry.accept(await signModelRecord(keyA, unsigned(keyA, { version: 2, cid: CID2 })))).toBe('added')
    expect(await registry.accept(await signModelRecord(keyB, unsigned(keyB, { id: 'b-model' })))).toBe('added')
    expect(registry.signerOf('b-model')).toBe(idOf(keyB))
    await registry.close()
    // Kept across a reopen.
    const again = (await openRegistry(path)).registry
    expect(await again.accept(hijack)).toBe('foreign')
    expect(again.get('llama-demo')?.versions.map((v) => v.version)).toEqual([1, 2])
    expect(again.get('b-model')?.gateway).toBe(idOf(keyB))
    await again.close()
  })
})

describe('registry replication between peers', () => {
  const peers: MeshPeer[] = []
  afterAll(async () => {
    for (const p of peers) await Promise.resolve(p.stop()).catch(() => undefined)
  })

  it('a peer that connects later syncs every record; new ones arrive by gossip; forged gossip is dropped', async () => {
    const start = async () => {
      const dir = await tempDir('registry-peer')
      cleanups.push(dir.remove)
      const peer = await createMeshPeer({ dataDir: dir.path, listen: ['/ip4/127.0.0.1/tcp/0'] })
      peers.push(peer)
      const bus = new GossipBus(peer.services.pubsub)
      const logs: string[] = []
      const { registry } = await openRegistry(undefined, (l) => logs.push(l))
      const replica = await replicateRegistry(peer, bus, registry, (l) => logs.push(l))
      return { peer, bus, registry, replica, logs }
    }
    const a = await start()
    await a.registry.accept(await signModelRecord(keyA, unsigned(keyA)))
    await a.registry.accept(await signModelRecord(keyA, unsigned(keyA, { version: 2, cid: CID2 })))
    const b = await start()
    await b.peer.dial(a.peer.getMultiaddrs()[0] as NonNullable<ReturnType<MeshPeer['getMultiaddrs']>[0]>)
    await waitFor(() => b.registry.records().length === 2, 10_000, 'the sync')
    expect(b.registry.get('llama-demo')?.versions.map((v) => v.version)).toEqual([1, 2])

    // Gossip: A publishes version 3; B takes it. A forged record (B's key, A's name) is dropped by A.
    await waitFor(() => a.peer.services.pubsub.getSubscribers('/cluster/models/1.0.0').length > 0, 10_000, 'subscribed')
    const v3: ModelRecord = await signModelRecord(keyA, unsigned(keyA, { version: 3, createdAt: 5 }))
    await a.registry.accept(v3)
    await a.replica.publish(v3)
    await waitFor(() => b.registry.get('llama-demo')?.latest.version === 3, 10_000, 'the gossiped version')
    const forged = await signModelRecord(keyB, unsigned(keyA, { id: 'forged-model' }))
    await b.replica.publish(forged)
    await waitFor(() => a.logs.some((l) => l.includes('does not verify')), 10_000, 'the forged record dropped')
    expect(a.registry.get('forged-model')).toBeUndefined()

    // A peer serving a backdated version 1 of A's model under its own key, and a model of its own:
    // B syncs from it, takes the new id, refuses the takeover and says so.
    const c = await start()
    const hijack = await signModelRecord(
      keyB,
      unsigned(keyB, { createdAt: 1, owner: 'usr_attacker', sha256: 'b'.repeat(64), cid: CID2 }),
    )
    expect(await c.registry.accept(hijack)).toBe('added')
    expect(await c.registry.accept(await signModelRecord(keyB, unsigned(keyB, { id: 'c-model' })))).toBe('added')
    await b.peer.dial(c.peer.getMultiaddrs()[0] as NonNullable<ReturnType<MeshPeer['getMultiaddrs']>[0]>)
    await waitFor(() => b.registry.get('c-model') != null, 10_000, 'the new id synced')
    await waitFor(() => b.logs.some((l) => l.includes('refused version 1 of llama-demo')), 10_000, 'the refusal')
    expect(b.registry.get('llama-demo')).toMatchObject({ owner: 'usr_1', gateway: idOf(keyA) })
    expect(b.registry.get('llama-demo')?.versions.every((v) => v.sha256 === 'a'.repeat(64))).toBe(true)
    await c.replica.stop()
    await c.registry.close()
    await a.replica.stop()
    await b.replica.stop()
    await a.registry.close()
    await b.registry.close()
  })
})
