// The blocks protocol between real peers on loopback: a file crosses with bitswap unable to help,
// a provider that sends wrong bytes is refused (nothing of it stored) and another one is used, and
// a block nobody has fails at once with BlockNotFoundError instead of waiting.
import { createHash, randomBytes } from 'node:crypto'
import type { BitswapOptions } from '@helia/bitswap'
import type { Stream } from '@libp2p/interface'
import { lpStream } from '@libp2p/utils'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import {
  BLOCKS_PROTOCOL,
  decodeWant,
  encodeAbsentAnswer,
  encodeBlockAnswer,
  MAX_WANT_BYTES,
} from '../../protocols/index.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { ContentStore, type ContentStoreOptions } from '../../src/storage/content.ts'
import { tempDir } from '../helpers/fixtures.ts'

const LOOP = ['/ip4/127.0.0.1/tcp/0']
/**
 * Bitswap on a protocol id nobody else speaks: whatever such a store fetches came by the blocks
 * protocol. (@helia/bitswap 4 reads `protocols`; its typed `protocol` option is not used.)
 */
const NO_BITSWAP = { bitswap: { protocols: ['/cluster-test/no-bitswap/1.0.0'] } as BitswapOptions }

async function* chunks(buf: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < buf.length; i += size) yield buf.subarray(i, i + size)
}

async function collect(it: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const parts: Uint8Array[] = []
  for await (const c of it) parts.push(c)
  return Buffer.concat(parts)
}

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex')

/** The first inner error of Helia's LoadBlockFailedError (or the error itself). */
function innerError(err: unknown): Error {
  const inner = (err as { errors?: unknown[] }).errors?.[0]
  return (inner ?? err) as Error
}

describe('blocks protocol', () => {
  const cleanup: Array<() => Promise<unknown>> = []
  let provider: { peer: MeshPeer; store: ContentStore }
  const data = randomBytes(6 * 1024 * 1024 + 777)
  let cid: CID

  async function open(prefix: string, options: Partial<ContentStoreOptions> = {}) {
    const dir = await tempDir(prefix)
    const peer = await createMeshPeer({ dataDir: dir.path, listen: LOOP })
    const store = await ContentStore.open({ dataDir: dir.path, libp2p: peer, ...options })
    cleanup.push(
      () => dir.remove(),
      async () => peer.stop(),
      () => store.stop(),
    )
    return { peer, store }
  }

  /** A peer that answers every want on the blocks protocol with `answer(want)`. */
  async function impostor(answer: (cid: CID) => Uint8Array | ReturnType<typeof encodeBlockAnswer>) {
    const dir = await tempDir('blocks-impostor')
    const peer = await createMeshPeer({ dataDir: dir.path, listen: LOOP })
    cleanup.push(
      () => dir.remove(),
      async () => peer.stop(),
    )
    let wants = 0
    await peer.handle(BLOCKS_PROTOCOL, async (stream: Stream) => {
      const lp = lpStream(stream, { maxDataLength: MAX_WANT_BYTES })
      try {
        for (;;) {
          const want = decodeWant(await lp.read())
          wants++
          await lp.write(answer(want))
        }
      } catch {
        stream.abort(new Error('done'))
      }
    })
    return { peer, wants: () => wants }
  }

  beforeAll(async () => {
    provider = await open('blocks-provider')
    cid = (await provider.store.add(chunks(data, 256 * 1024))).cid
  })

  afterAll(async () => {
    for (const c of cleanup.reverse()) await c().catch(() => undefined)
  })

  it('moves a file between two peers with bitswap out of the way', async () => {
    const fetcher = await open('blocks-fetcher', NO_BITSWAP)
    const got = await collect(
      fetcher.store.cat(cid, { providers: provider.peer.getMultiaddrs(), signal: AbortSignal.timeout(10_000) }),
    )
    expect(got.length).toBe(data.length)
    expect(sha(got)).toBe(sha(data))
    expect(await fetcher.store.hasAll(cid)).toBe(true)
  })

  it('refuses a block that does not match its CID and stores nothing of it', async () => {
    const liar = await impostor(() => encodeBlockAnswer(randomBytes(1024)))
    const fetcher = await open('blocks-fooled', NO_BITSWAP)
    const err = await collect(
      fetcher.store.cat(cid, { providers: liar.peer.getMultiaddrs(), signal: AbortSignal.timeout(10_000) }),
    ).catch((e: unknown) => e)
    expect(liar.wants()).toBeGreaterThan(0)
    expect(innerError(err).name).toBe('BlockNotFoundError')
    expect(innerError(err).message).toMatch(/did not match/)
    for await (const _ of fetcher.store.helia.blockstore.getAll()) throw new Error('a block was stored')
  })

  it('turns from a provider that lied to one that has the blocks', async () => {
    const liar = await impostor(() => encodeBlockAnswer(randomBytes(1024)))
    const fetcher = await open('blocks-recovers', NO_BITSWAP)
    // The liar is named first, so it is asked first.
    const providers = [...liar.peer.getMultiaddrs(), ...provider.peer.getMultiaddrs()]
    const got = await collect(fetcher.store.cat(cid, { providers, signal: AbortSignal.timeout(10_000) }))
    expect(liar.wants()).toBeGreaterThan(0)
    expect(sha(got)).toBe(sha(data))
  })

  it('fails at once, with BlockNotFoundError, for a block nobody has', async () => {
    const fetcher = await open('blocks-absent')
    const missing = CID.createV1(raw.code, await sha256.digest(randomBytes(64)))
    const t = performance.now()
    const err = await collect(
      fetcher.store.cat(missing, { providers: provider.peer.getMultiaddrs(), signal: AbortSignal.timeout(20_000) }),
    ).catch((e: unknown) => e)
    expect(innerError(err).name).toBe('BlockNotFoundError')
    expect(performance.now() - t).toBeLessThan(5_000)
  })

  it('fails with BlockNotFoundError when the only provider answers "absent"', async () => {
    const empty = await impostor(() => encodeAbsentAnswer())
    const fetcher = await open('blocks-empty', NO_BITSWAP)
    const err = await collect(
      fetcher.store.cat(cid, { providers: empty.peer.getMultiaddrs(), signal: AbortSignal.timeout(20_000) }),
    ).catch((e: unknown) => e)
    expect(empty.wants()).toBe(1)
    expect(innerError(err).name).toBe('BlockNotFoundError')
  })
})
