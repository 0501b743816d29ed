// Reading a stream to its end ends, also when the remote closed its side before the reader started
// (libp2p 3's readers would wait forever: see src/mesh/stream-end.ts). The case that found it: a
// handler that, while answering one stream, opens another to the asker and reads it to the end.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { tempDir } from '../helpers/fixtures.ts'

const withTimeout = <T>(p: Promise<T>, ms: number, what: string): Promise<T> =>
  Promise.race([
    p,
    new Promise<T>((_, reject) => setTimeout(() => reject(new Error(`${what}: no end after ${ms} ms`)), ms)),
  ])

async function readAll(stream: AsyncIterable<{ byteLength: number }>): Promise<number> {
  let n = 0
  for await (const chunk of stream) n += chunk.byteLength
  return n
}

describe('streams read to their end', () => {
  let a: MeshPeer
  let b: MeshPeer
  const cleanups: Array<() => Promise<void>> = []

  beforeAll(async () => {
    const da = await tempDir('stream-end-a')
    const db = await tempDir('stream-end-b')
    cleanups.push(da.remove, db.remove)
    a = await createMeshPeer({ dataDir: da.path, listen: ['/ip4/127.0.0.1/tcp/0'] })
    b = await createMeshPeer({ dataDir: db.path, listen: ['/ip4/127.0.0.1/tcp/0'] })
    // B answers /answer with 4 bytes and closes.
    await b.handle('/test/answer/1.0.0', async (stream) => {
      stream.send(new Uint8Array([1, 2, 3, 4]))
      await stream.close()
    })
    // A, asked on /outer, reads B's /answer to its end on the same connection, then replies.
    await a.handle('/test/outer/1.0.0', async (stream, connection) => {
      const inner = await connection.newStream('/test/answer/1.0.0')
      await inner.close()
      const n = await readAll(inner)
      stream.send(new Uint8Array([n]))
      await stream.close()
    })
    await b.dial(a.getMultiaddrs()[0] as NonNullable<ReturnType<MeshPeer['getMultiaddrs']>[0]>)
  })

  afterAll(async () => {
    await Promise.resolve(a?.stop())
    await Promise.resolve(b?.stop())
    for (const c of cleanups) await c()
  })

  it('a stream opened inside a handler, back to the asker, is read to its end (20 times)', async () => {
    for (let i = 0; i < 20; i++) {
      const outer = await b.dialProtocol(a.peerId, '/test/outer/1.0.0')
      outer.send(new Uint8Array([0]))
      await outer.close()
      const got: number[] = []
      await withTimeout(
        (async () => {
          for await (const chunk of outer) got.push(...chunk.subarray())
        })(),
        3000,
        `round ${i}`,
      )
      expect(got).toEqual([4])
    }
  })

  it('a reader that starts after the remote sent and closed gets the data and the end', async () => {
    for (let i = 0; i < 10; i++) {
      const stream = await a.dialProtocol(b.peerId, '/test/answer/1.0.0')
      await stream.close()
      await new Promise((r) => setTimeout(r, 50))
      expect(await withTimeout(readAll(stream), 3000, `round ${i}`)).toBe(4)
    }
  })
})
