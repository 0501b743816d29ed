// Helia on the peer's own libp2p node: content-addressed storage for model weights. Blocks live on
// disk in the data dir; they move between our peers by bitswap, and provider records go into our
// private DHT. Nothing here reaches public IPFS: no public bootstrap, delegated routing, HTTP
// gateways, mDNS or UPnP — only the peer we are given, with the transports it was built with.
import { mkdir } from 'node:fs/promises'
import { join } from 'node:path'
import { type BitswapOptions, withBitswap } from '@helia/bitswap'
import type { BlockBroker, Helia, Peer, Provider, Routing, RoutingOptions } from '@helia/interface'
import { type UnixFS, unixfs } from '@helia/unixfs'
import * as dagPb from '@ipld/dag-pb'
import type { AbortOptions, Libp2p } from '@libp2p/interface'
import { peerIdFromCID } from '@libp2p/peer-id'
import type { Multiaddr } from '@multiformats/multiaddr'
import { FsBlockstore } from 'blockstore-fs'
import { LevelDatastore } from 'datastore-level'
import { createHeliaLight } from 'helia'
import { CID } from 'multiformats/cid'
import { BlockStreamBroker, type BlockStreamOptions } from './block-stream.ts'
import { DEFAULT_BLOCK_READ_CONCURRENCY } from './constants.ts'

/** Import settings for weights: IPIP-499's modern profile (CIDv1, raw 1 MiB leaves, 1024 links a node). */
export const WEIGHTS_PROFILE = 'unixfs-v1-2025' as const

export interface ContentStoreOptions {
  /** Blocks and Helia's datastore go under `<dataDir>/ipfs`. */
  dataDir: string
  /** The mesh peer: Helia runs on it (no second libp2p node). */
  libp2p: Libp2p
  /** Bitswap serves peers that ask with it, and fetches when no peer speaks the blocks protocol. */
  bitswap?: BitswapOptions
  /**
   * The blocks protocol (src/storage/block-stream.ts), in front of bitswap for every fetch; `false`
   * leaves bitswap alone (what the `weights` bench compares against). @default {}
   */
  blockStream?: BlockStreamOptions | false
  /** Blocks fetched in parallel while exporting a file. @default DEFAULT_BLOCK_READ_CONCURRENCY */
  blockReadConcurrency?: number
}

/** Called with the bytes done so far. */
export type ProgressSink = (bytes: number) => void

/** A CID string that parses, or an Error saying why not. */
export function parseCid(text: string): CID {
  try {
    return CID.parse(text)
  } catch (err) {
    throw new InvalidCidError(text, err)
  }
}

export class InvalidCidError extends Error {
  override name = 'InvalidCidError'
  constructor(text: string, cause: unknown) {
    super(`not a CID: ${JSON.stringify(text.slice(0, 100))}`, { cause })
  }
}

/** One block whatever CID names it: the blockstore keys blocks by multihash. */
const blockKey = (cid: CID): string => Buffer.from(cid.multihash.bytes).toString('hex')

/** Our peer's kad-dht as Helia's only router: provider records and peer lookups stay on the mesh. */
class MeshRouter implements Partial<Routing> {
  readonly name = 'cluster-mesh-router'
  constructor(private readonly libp2p: Libp2p) {}

  async provide(cid: CID, options?: RoutingOptions): Promise<void> {
    await this.libp2p.contentRouting.provide(cid, options)
  }

  async *findProviders(cid: CID, options?: RoutingOptions): AsyncGenerator<Provider> {
    for await (const p of this.libp2p.contentRouting.findProviders(cid, options)) {
      yield { id: p.id.toCID(), multiaddrs: p.multiaddrs, router: this.name, fallback: false } as Provider
    }
  }

  async findPeer(peerId: CID, options?: RoutingOptions): Promise<Peer> {
    const info = await this.libp2p.peerRouting.findPeer(peerIdFromCID(peerId), options)
    return { id: info.id.toCID(), multiaddrs: info.multiaddrs, router: this.name } as Peer
  }
}

/**
 * Replaces Helia's bitswap broker, once bitswap's mixin has started it, by the blocks protocol with
 * bitswap behind it. Helia asks every broker for every missing block at once: side by side, bitswap
 * would fetch each block a second time from the same provider.
 */
function putBlockStreamInFront(helia: Helia, libp2p: Libp2p, options: BlockStreamOptions): void {
  helia.addMixin({
    name: 'cluster-blocks',
    start: async () => {
      // Helia 7 keeps its brokers in this array (the one its networked storage reads); no public setter.
      const brokers = (helia as unknown as { blockBrokers: BlockBroker[] }).blockBrokers
      const i = brokers.findIndex((b) => b.name === 'bitswap')
      const bitswap = brokers[i]
      if (bitswap == null) throw new Error('bitswap broker missing: withBitswap must come first')
      const broker = new BlockStreamBroker(
        { libp2p, blockstore: helia.blockstore, routing: helia.routing },
        bitswap,
        options,
      )
      await broker.start()
      brokers[i] = broker
    },
  })
}

export class ContentStore {
  /** CIDs whose every block is known to be local. */
  private readonly complete = new Set<string>()
  private constructor(
    readonly helia: Helia,
    private readonly fs: UnixFS,
    private readonly blockReadConcurrency: number,
    private readonly closeStores: () => Promise<void>,
    /** The blockstore on disk, under Helia: reads here never reach the network. */
    private readonly local: FsBlockstore,
    private readonly libp2p: Libp2p,
  ) {}

  static async open(options: ContentStoreOptions): Promise<ContentStore> {
    const root = join(options.dataDir, 'ipfs')
    await mkdir(join(root, 'blocks'), { recursive: true })
    const blockstore = new FsBlockstore(join(root, 'blocks'))
    const datastore = new LevelDatastore(join(root, 'datastore'))
    await blockstore.open()
    await datastore.open()
    const close = async (): Promise<void> => {
      await datastore.close().catch(() => undefined)
      await blockstore.close().catch(() => undefined)
    }
    const libp2p = options.libp2p
    const helia = createHeliaLight({
      blockstore,
      datastore,
      // biome-ignore lint/suspicious/noExplicitAny: Helia types a router as a full Routing; ours implements the part it uses.
      routers: [new MeshRouter(libp2p) as any],
      components: { libp2p },
    })
    // Helia 7 has no option for an existing libp2p node: bitswap reads it from `helia.libp2p`.
    Object.defineProperty(helia, 'libp2p', { value: libp2p, enumerable: true })
    // biome-ignore lint/suspicious/noExplicitAny: see above — HeliaWithLibp2p is what withBitswap expects.
    withBitswap(helia as any, options.bitswap ?? {})
    if (options.blockStream !== false) putBlockStreamInFront(helia, libp2p, options.blockStream ?? {})
    try {
      await helia.start()
    } catch (err) {
      await close()
      throw err
    }
    return new ContentStore(
      helia,
      unixfs(helia),
      options.blockReadConcurrency ?? DEFAULT_BLOCK_READ_CONCURRENCY,
      close,
      blockstore,
      libp2p,
    )
  }

  /**
   * Imports a byte stream (a file being uploaded) block by block: nothing holds the whole file.
   * Returns the root CID and the byte count. Blocks are kept until remove() names their DAG (no
   * garbage collection: Helia's pinning walks and re-reads the whole DAG — 30 s for 1.25 GiB here —
   * so it is not used on this path).
   */
  async add(source: AsyncIterable<Uint8Array>, opts: AbortOptions & { onProgress?: ProgressSink } = {}) {
    let size = 0
    const counted = async function* (): AsyncGenerator<Uint8Array> {
      for await (const chunk of source) {
        size += chunk.byteLength
        opts.onProgress?.(size)
        yield chunk
      }
    }
    const cid = await this.fs.addByteStream(counted(), {
      profile: WEIGHTS_PROFILE,
      ...(opts.signal ? { signal: opts.signal } : {}),
    })
    return { cid, size }
  }

  /** Pins a DAG (fetching whatever is missing), so it is kept and can be served to others. */
  async pin(cid: CID, opts: AbortOptions = {}): Promise<void> {
    if (await this.helia.pins.isPinned(cid, opts)) return
    for await (const _ of this.helia.pins.add(cid, opts)) {
      // each yielded CID is one block pinned
    }
  }

  async unpin(cid: CID, opts: AbortOptions = {}): Promise<void> {
    if (!(await this.helia.pins.isPinned(cid, opts))) return
    for await (const _ of this.helia.pins.rm(cid, opts)) {
      // each yielded CID is one block unpinned
    }
  }

  /** The file's size, from its root block (fetched from the mesh if it is not here). */
  async size(cid: CID, opts: AbortOptions & { providers?: Multiaddr[] } = {}): Promise<number> {
    const st = await this.fs.stat(cid, opts)
    return Number(st.type === 'directory' ? 0n : st.size)
  }

  /**
   * True when every block of the file is in the local blockstore. Leaves are checked by presence
   * only; inner nodes (a few per GiB) are read to find them. No network.
   */
  async hasAll(cid: CID, opts: AbortOptions = {}): Promise<boolean> {
    const walk = async (c: CID): Promise<boolean> => {
      opts.signal?.throwIfAborted()
      if (!(await this.local.has(c))) return false
      if (c.code !== dagPb.code) return true
      const parts: Uint8Array[] = []
      for await (const part of this.local.get(c, opts)) parts.push(part)
      for (const link of dagPb.decode(Buffer.concat(parts)).Links) {
        if (!(await walk(link.Hash))) return false
      }
      return true
    }
    return walk(cid)
  }

  /**
   * Streams a file's bytes (or a range of them), fetching missing blocks from providers as it
   * goes: from `providers` when given, else from whoever the DHT names.
   */
  async *cat(
    cid: CID,
    opts: AbortOptions & { offset?: number; length?: number; providers?: Multiaddr[] } = {},
  ): AsyncGenerator<Uint8Array> {
    // Blocks in flight help only while they come from the network; from the local disk one at a
    // time reads fastest (1.25 GiB here: 338 MiB/s at 1, 90 MiB/s at 8 or 64).
    // Checked once per CID until blocks are removed (remove() forgets it), so a complete DAG is not
    // walked again by each download or range request (161 ms for 1.25 GiB).
    const key = cid.toString()
    if (!this.complete.has(key) && (await this.hasAll(cid, opts))) this.complete.add(key)
    const concurrency = this.complete.has(key) ? 1 : this.blockReadConcurrency
    yield* this.fs.cat(cid, { blockReadConcurrency: concurrency, ...opts } as never)
  }

  /**
   * Deletes the local blocks of the DAG rooted at `cid`, but not those that DAGs still wanted share
   * (`keep`: their roots; identical leaves are one block) nor any block Helia has pinned, and stops
   * providing it. Only local blocks are walked: nothing is fetched. Returns the blocks deleted.
   */
  async remove(cid: CID, opts: AbortOptions & { keep?: CID[] } = {}): Promise<number> {
    const kept = new Set<string>()
    for (const root of opts.keep ?? []) {
      for await (const c of this.localDag(root, opts)) kept.add(blockKey(c))
    }
    const doomed: CID[] = []
    for await (const c of this.localDag(cid, opts)) {
      if (!kept.has(blockKey(c)) && !(await this.helia.pins.isPinned(c, opts))) doomed.push(c)
    }
    // A DAG sharing blocks with this one may no longer be whole: known-complete is asked again.
    this.complete.clear()
    let deleted = 0
    for (const c of doomed) {
      opts.signal?.throwIfAborted()
      await this.local.delete(c, opts)
      deleted++
    }
    if (!kept.has(blockKey(cid))) {
      await this.libp2p.contentRouting.cancelReprovide(cid, opts).catch(() => undefined)
    }
    return deleted
  }

  /** The CIDs of the DAG rooted at `cid` that are in the local blockstore (leaves by presence only). */
  private async *localDag(cid: CID, opts: AbortOptions): AsyncGenerator<CID> {
    opts.signal?.throwIfAborted()
    if (!(await this.local.has(cid))) return
    yield cid
    if (cid.code !== dagPb.code) return
    const parts: Uint8Array[] = []
    for await (const part of this.local.get(cid, opts)) parts.push(part)
    for (const link of dagPb.decode(Buffer.concat(parts)).Links) yield* this.localDag(link.Hash, opts)
  }

  /** Tells the mesh (our DHT) that this peer can provide the DAG rooted at `cid`. */
  async provide(cid: CID, opts: AbortOptions = {}): Promise<void> {
    await this.helia.routing.provide(cid, opts)
  }

  async stop(): Promise<void> {
    await this.helia.stop()
    await this.closeStores()
  }
}
