// Helia stays on our mesh: its only router is our private kad-dht, its only block source our
// peers. A peer given only another peer's address finds the one holding a file through the DHT
// and fetches the bytes.
import { randomBytes } from 'node:crypto'
import { afterAll, describe, expect, it } from 'vitest'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { ContentStore } from '../../src/storage/content.ts'
import { tempDir } from '../helpers/fixtures.ts'

describe('Helia on the mesh, found through the private DHT', () => {
  const peers: MeshPeer[] = []
  const stores: ContentStore[] = []
  const dirs: Array<() => Promise<void>> = []
  afterAll(async () => {
    for (const s of stores) await s.stop().catch(() => undefined)
    for (const p of peers) await Promise.resolve(p.stop()).catch(() => undefined)
    for (const d of dirs) await d()
  })

  const open = async (bootstrap: string[] = []) => {
    const dir = await tempDir('dht-providers')
    dirs.push(dir.remove)
    const peer = await createMeshPeer({ dataDir: dir.path, listen: ['/ip4/127.0.0.1/tcp/0'], bootstrap })
    peers.push(peer)
    const store = await ContentStore.open({ dataDir: dir.path, libp2p: peer })
    stores.push(store)
    return { peer, store }
  }

  it('uses only our router and no HTTP gateway or public bootstrap', async () => {
    const { store } = await open()
    const helia = store.helia as unknown as {
      routing: { routers: Array<{ name?: string }> }
      blockBrokers: Array<{ name: string }>
    }
    expect(helia.routing.routers.map((r) => r.name)).toEqual(['cluster-mesh-router'])
    // Our blocks protocol, with bitswap behind it: no HTTP gateway broker.
    expect(helia.blockBrokers.map((b) => b.name)).toEqual(['cluster-blocks'])
  })

  it('a peer bootstrapped to another finds the provider through the DHT and fetches the file', async () => {
    const a = await open()
    const b = await open(a.peer.getMultiaddrs().map(String))
    const c = await open(b.peer.getMultiaddrs().map(String))
    const connected = (x: MeshPeer, y: MeshPeer) => x.getConnections().some((conn) => conn.remotePeer.equals(y.peerId))
    const until = async (f: () => boolean) => {
      for (let i = 0; i < 200 && !f(); i++) await new Promise((r) => setTimeout(r, 25))
    }
    await until(() => connected(b.peer, a.peer) && connected(c.peer, b.peer))
    const data = randomBytes(2 * 1024 * 1024 + 7)
    const { cid } = await a.store.add(
      (async function* () {
        yield data
      })(),
    )
    await a.store.provide(cid)
    // C was given only B's address: whatever it knows of A came through the DHT.
    const parts: Uint8Array[] = []
    for await (const chunk of c.store.cat(cid, { signal: AbortSignal.timeout(20_000) })) parts.push(chunk)
    expect(Buffer.concat(parts).equals(data)).toBe(true)
    // B never held the blocks: C got them from A, whom only the DHT named.
    expect(await b.store.hasAll(cid)).toBe(false)
    expect(await c.store.hasAll(cid)).toBe(true)
  })
})
