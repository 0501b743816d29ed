// One peer of the `weights` bench, in a process of its own (as a real node is): a mesh peer with a
// ContentStore, driven over IPC by bench/weights.ts. Every time is taken here, around the transfer.
// Usage: node bin/run-ts.js bench/weights-child.ts '<WeightsChildInit JSON>'

import { once } from 'node:events'
import { createReadStream, createWriteStream } from 'node:fs'
import type { Stream } from '@libp2p/interface'
import { multiaddr } from '@multiformats/multiaddr'
import { createMeshPeer } from '../src/mesh/peer.ts'
import { ContentStore, type ContentStoreOptions, parseCid } from '../src/storage/content.ts'

/** The baseline's protocol: the provider writes the file it added, as is, on one stream. Bench only. */
export const RAW_PROTOCOL = '/cluster-bench/raw-file/1.0.0'

export interface WeightsChildInit {
  dataDir: string
  /** ContentStore options other than dataDir and libp2p (JSON-able). */
  store?: Omit<ContentStoreOptions, 'dataDir' | 'libp2p'>
}

export type WeightsRequest =
  | { type: 'add'; id: number; path: string }
  | { type: 'fetch-helia'; id: number; cid: string; out: string; providers: string[] }
  | { type: 'fetch-raw'; id: number; from: string; out: string }
  | { type: 'dial'; id: number; to: string }

export type WeightsReply =
  | { type: 'ready'; multiaddrs: string[]; peerId: string }
  | { type: 'done'; id: number; ms: number; bytes: number; cid?: string }
  | { type: 'error'; id: number; message: string }

const init = JSON.parse(process.argv[2] ?? '{}') as WeightsChildInit
const send = (m: WeightsReply): void => {
  process.send?.(m)
}

const peer = await createMeshPeer({ dataDir: init.dataDir, listen: ['/ip4/127.0.0.1/tcp/0'] })
const store = await ContentStore.open({ dataDir: init.dataDir, libp2p: peer, ...init.store })
/** The file this peer added: what the raw baseline sends. */
let added: string | undefined

async function write(stream: Stream, bytes: Uint8Array): Promise<void> {
  if (!stream.send(bytes)) await stream.onDrain()
}

await peer.handle(
  RAW_PROTOCOL,
  async (stream) => {
    try {
      if (added == null) throw new Error('nothing added')
      for await (const chunk of createReadStream(added, { highWaterMark: 1024 * 1024 })) {
        await write(stream, chunk as Buffer)
      }
      await stream.close()
    } catch (err) {
      stream.abort(err as Error)
    }
  },
  { maxInboundStreams: 4 },
)

/** Writes chunks to a file, waiting for the disk when its buffer is full; returns the byte count. */
async function toFile(source: AsyncIterable<Uint8Array | { subarray(): Uint8Array }>, out: string): Promise<number> {
  const file = createWriteStream(out, { highWaterMark: 4 * 1024 * 1024 })
  let bytes = 0
  for await (const chunk of source) {
    const b = chunk instanceof Uint8Array ? chunk : chunk.subarray()
    bytes += b.byteLength
    if (!file.write(b)) await once(file, 'drain')
  }
  file.end()
  await once(file, 'finish')
  return bytes
}

async function handle(req: WeightsRequest): Promise<WeightsReply> {
  switch (req.type) {
    case 'add': {
      const t = performance.now()
      const { cid, size } = await store.add(createReadStream(req.path, { highWaterMark: 1024 * 1024 }))
      added = req.path
      return { type: 'done', id: req.id, ms: performance.now() - t, bytes: size, cid: cid.toString() }
    }
    case 'dial': {
      await peer.dial(multiaddr(req.to))
      return { type: 'done', id: req.id, ms: 0, bytes: 0 }
    }
    case 'fetch-helia': {
      const t = performance.now()
      const bytes = await toFile(
        store.cat(parseCid(req.cid), { providers: req.providers.map((a) => multiaddr(a)) }),
        req.out,
      )
      return { type: 'done', id: req.id, ms: performance.now() - t, bytes }
    }
    case 'fetch-raw': {
      const t = performance.now()
      const stream = await peer.dialProtocol(multiaddr(req.from), RAW_PROTOCOL)
      const bytes = await toFile(stream, req.out)
      return { type: 'done', id: req.id, ms: performance.now() - t, bytes }
    }
  }
}

process.on('message', (req: WeightsRequest) => {
  handle(req).then(send, (err: unknown) =>
    send({ type: 'error', id: req.id, message: err instanceof Error ? (err.stack ?? err.message) : String(err) }),
  )
})
process.on('SIGTERM', () => {
  void store
    .stop()
    .then(() => peer.stop())
    .finally(() => process.exit(0))
})
send({ type: 'ready', multiaddrs: peer.getMultiaddrs().map(String), peerId: peer.peerId.toString() })
