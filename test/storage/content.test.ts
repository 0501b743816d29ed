// Helia on our mesh peers: a file added on one peer is fetched by another over bitswap, found
// through our private DHT or from named providers, byte for byte; ranges read; restart keeps blocks;
// a DAG removed leaves the blocks another kept DAG shares.
import { createHash, randomBytes } from 'node:crypto'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { ContentStore, parseCid } from '../../src/storage/content.ts'
import { tempDir } from '../helpers/fixtures.ts'

const LOOP = ['/ip4/127.0.0.1/tcp/0']

async function* chunks(buf: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size)
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const c of it) parts.push(c)
  return Buffer.concat(parts)
}

describe('ContentStore on mesh peers', () => {
  const dirs: { remove: () => Promise<void> }[] = []
  const peers: MeshPeer[] = []
  const stores: ContentStore[] = []
  let a: ContentStore
  let b: ContentStore
  let bDir: string
  const data = randomBytes(5 * 1024 * 1024 + 12345)

  async function open(prefix: string, bootstrap: string[] = []) {
    const dir = await tempDir(prefix)
    dirs.push(dir)
    const peer = await createMeshPeer({ dataDir: dir.path, listen: LOOP, bootstrap })
    peers.push(peer)
    const store = await ContentStore.open({ dataDir: dir.path, libp2p: peer })
    stores.push(store)
    return { dir: dir.path, peer, store }
  }

  beforeAll(async () => {
    const pa = await open('content-a')
    a = pa.store
    const pb = await open('content-b', pa.peer.getMultiaddrs().map(String))
    b = pb.store
    bDir = pb.dir
  })

  afterAll(async () => {
    for (const s of stores) await s.stop().catch(() => undefined)
    for (const p of peers) await Promise.resolve(p.stop()).catch(() => undefined)
    for (const d of dirs) await d.remove()
  })

  it('adds a stream, and another peer reads the same bytes from the DHT-found provider', async () => {
    const { cid, size } = await a.add(chunks(data, 64 * 1024))
    expect(size).toBe(data.length)
    expect(cid.version).toBe(1)
    // the same bytes always give the same address
    const again = await a.add(chunks(data, 1000 * 1000))
    expect(again.cid.equals(cid)).toBe(true)
    await a.provide(cid)
    expect(await b.hasAll(cid)).toBe(false)
    const got = await collect(b.cat(parseCid(cid.toString()), { signal: AbortSignal.timeout(30_000) }))
    expect(createHash('sha256').update(got).digest('hex')).toBe(createHash('sha256').update(data).digest('hex'))
    expect(await b.size(cid)).toBe(data.length)
    // ranges across a block boundary
    const off = 1024 * 1024 - 10
    const part = await collect(b.cat(cid, { offset: off, length: 100 }))
    expect(part.equals(data.subarray(off, off + 100))).toBe(true)
    await b.pin(cid)
    expect(await b.hasAll(cid)).toBe(true)
  })

  it('keeps blocks on disk across a restart', async () => {
    const small = randomBytes(3 * 1024 * 1024)
    const { cid } = await b.add(chunks(small, 4096))
    await b.stop()
    const peer = await createMeshPeer({ dataDir: bDir, listen: LOOP })
    peers.push(peer)
    const reopened = await ContentStore.open({ dataDir: bDir, libp2p: peer })
    stores.push(reopened)
    expect(await reopened.hasAll(cid)).toBe(true)
    expect((await collect(reopened.cat(cid))).equals(small)).toBe(true)
  })

  it('removes the blocks of a DAG, but not those a DAG still kept shares', async () => {
    const mib = 1024 * 1024
    const shared = randomBytes(2 * mib)
    const one = Buffer.concat([shared, randomBytes(mib / 2 + 7)])
    const two = Buffer.concat([shared, randomBytes(mib / 2 + 9)])
    const c1 = (await a.add(chunks(one, 64 * 1024))).cid
    const c2 = (await a.add(chunks(two, 64 * 1024))).cid
    expect((await collect(a.cat(c1))).equals(one)).toBe(true)
    // 3 leaves and a root each; the first two leaves are the same blocks in both.
    expect(await a.remove(c1, { keep: [c2] })).toBe(2)
    expect(await a.hasAll(c1)).toBe(false)
    expect(await a.hasAll(c2)).toBe(true)
    expect((await collect(a.cat(c2))).equals(two)).toBe(true)
    expect(await a.remove(c2)).toBe(4)
    expect(await a.hasAll(c2)).toBe(false)
    // Nothing of it left to remove, and nothing fetched to find out.
    expect(await a.remove(c2)).toBe(0)
  })

  it('refuses text that is not a CID', () => {
    expect(() => parseCid('not-a-cid')).toThrow(/not a CID/)
  })
})
