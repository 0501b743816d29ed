// local-read: reading a model whose blocks are all on this peer's disk (a download from the
// gateway, a node re-reading its weights). ContentStore.cat reads one block at a time when every
// block is local; the baseline is Helia's exporter with the blocks-in-flight setting used for
// network fetches (64). Same file, same process, rounds alternate; the file is read once before
// (page cache warm for both).
import { randomFillSync } from 'node:crypto'
import { createMeshPeer } from '../src/mesh/peer.ts'
import { DEFAULT_BLOCK_READ_CONCURRENCY } from '../src/storage/constants.ts'
import { ContentStore } from '../src/storage/content.ts'
import { figure, fmt, loadavg, median, table, withScope } from './lib.ts'

const MIB = 1024 * 1024

export async function localReadBench(): Promise<void> {
  const size = Number(process.env.BENCH_LOCAL_READ_MIB ?? 512) * MIB
  const rounds = Number(process.env.BENCH_LOCAL_READ_ROUNDS ?? 4)
  await withScope('local-read', async (dir) => {
    const peer = await createMeshPeer({ dataDir: dir, listen: ['/ip4/127.0.0.1/tcp/0'] })
    const store = await ContentStore.open({ dataDir: dir, libp2p: peer })
    try {
      const chunk = Buffer.alloc(4 * MIB)
      const { cid } = await store.add(
        (async function* () {
          for (let done = 0; done < size; done += chunk.length)
            yield randomFillSync(chunk).subarray(0, Math.min(chunk.length, size - done))
        })(),
      )
      // What the exporter does with a fixed number of blocks in flight (the path before this choice).
      const unixfs = (store as unknown as { fs: { cat(c: unknown, o: object): AsyncIterable<Uint8Array> } }).fs
      const timed = async (read: () => AsyncIterable<Uint8Array>): Promise<number> => {
        const t = performance.now()
        let n = 0
        for await (const c of read()) n += c.byteLength
        if (n !== size) throw new Error(`read ${n} bytes, expected ${size}`)
        return size / MIB / ((performance.now() - t) / 1000)
      }
      await timed(() => store.cat(cid)) // warm the page cache
      const ours: number[] = []
      const base: number[] = []
      for (let r = 0; r < rounds; r++) {
        ours.push(await timed(() => store.cat(cid)))
        base.push(await timed(() => unixfs.cat(cid, { blockReadConcurrency: DEFAULT_BLOCK_READ_CONCURRENCY })))
      }
      console.log(`\nlocal-read: ${size / MIB} MiB, ${rounds} rounds, load ${loadavg()}`)
      table(
        ['path', 'MiB/s (median)', 'all rounds'],
        [
          ['ContentStore.cat (local: 1 block at a time)', fmt(median(ours), 0), ours.map((x) => fmt(x, 0)).join(' ')],
          [
            `exporter, ${DEFAULT_BLOCK_READ_CONCURRENCY} blocks in flight`,
            fmt(median(base), 0),
            base.map((x) => fmt(x, 0)).join(' '),
          ],
        ],
      )
      figure('local_read.ratio', median(ours) / median(base), 2)
    } finally {
      await store.stop()
      await peer.stop()
    }
  })
}
