// Noise's message decoder stops at the end of every received chunk by throwing (and catching) a
// RangeError from its 2-byte length decoder; stopWithoutThrowing (on every connection, src/mesh/peer.ts) makes it stop without one. The
// messages read must be exactly the same (split prefixes, split bodies, several per chunk, empty
// ones), and on real libp2p connections no such error may be thrown any more.
import { LengthPrefixedDecoder } from '@libp2p/utils'
import type { Uint8ArrayList } from 'uint8arraylist'
import { afterEach, describe, expect, it } from 'vitest'
import { stopWithoutThrowing } from '../../src/mesh/noise-frames.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { tempDir } from '../helpers/fixtures.ts'

/** Noise's own length decoder (encoder.js): big-endian uint16, RangeError when short. */
const uint16BEDecode = (data: Uint8Array | Uint8ArrayList): number => {
  if (data.length < 2) throw RangeError('Could not decode int16BE')
  if (data instanceof Uint8Array) return (data[0] as number) * 256 + (data[1] as number)
  return data.getUint16(0)
}

function noiseDecoder(): LengthPrefixedDecoder {
  return new LengthPrefixedDecoder({
    lengthDecoder: uint16BEDecode,
    maxBufferSize: 16 * 1024 * 1024,
    encodingLength: () => 2,
  })
}

/** Runs `decoder` over the chunks; the messages it gives, as arrays of bytes. */
function run(decoder: LengthPrefixedDecoder, chunks: Uint8Array[]): number[][] {
  const out: number[][] = []
  for (const chunk of chunks) for (const msg of decoder.decode(chunk)) out.push([...msg.subarray()])
  return out
}

const framed = (...bodies: number[][]): Uint8Array =>
  Uint8Array.from(bodies.flatMap((b) => [b.length >> 8, b.length & 0xff, ...b]))

describe('stopWithoutThrowing', () => {
  it('reads the same messages as noise does, however the bytes are cut', () => {
    const stream = framed(
      [1, 2, 3],
      [],
      [4],
      Array.from({ length: 300 }, (_, i) => i % 256),
      [5, 6],
    )
    // Every way of cutting the stream in three: prefixes and bodies split anywhere.
    for (let a = 0; a <= stream.length; a += 7) {
      for (let b = a; b <= stream.length; b += 5) {
        const chunks = [stream.subarray(0, a), stream.subarray(a, b), stream.subarray(b)]
        const quiet = noiseDecoder()
        stopWithoutThrowing({ connection: { decoder: quiet } } as never)
        expect(run(quiet, chunks)).toEqual(run(noiseDecoder(), chunks))
      }
    }
  })

  it('leaves a varint-prefixed decoder alone (a 0 there would announce a 1-byte frame)', () => {
    const decoder = new LengthPrefixedDecoder()
    const before = (decoder as unknown as { lengthDecoder: unknown }).lengthDecoder
    stopWithoutThrowing({ connection: { decoder } } as never)
    expect((decoder as unknown as { lengthDecoder: unknown }).lengthDecoder).toBe(before)
  })
})

describe('mesh connections', () => {
  const peers: MeshPeer[] = []
  const cleanups: Array<() => Promise<void>> = []
  const Original = globalThis.RangeError
  afterEach(async () => {
    globalThis.RangeError = Original
    for (const p of peers.splice(0)) await Promise.resolve(p.stop())
    for (const c of cleanups.splice(0)) await c()
  })

  it('carry messages back and forth without noise throwing at the end of each chunk', async () => {
    const dirs = [await tempDir('nf-a'), await tempDir('nf-b')]
    cleanups.push(...dirs.map((d) => d.remove))
    const [a, b] = await Promise.all(
      dirs.map((d) => createMeshPeer({ dataDir: d.path, listen: ['/ip4/127.0.0.1/tcp/0'] })),
    )
    peers.push(a as MeshPeer, b as MeshPeer)
    await (b as MeshPeer).handle('/test/echo/1.0.0', (stream) => {
      stream.addEventListener('message', (evt) => stream.send(evt.data))
    })
    const addr = (b as MeshPeer).getMultiaddrs()[0]
    if (addr == null) throw new Error('no address')
    await (a as MeshPeer).dial(addr)
    const stream = await (a as MeshPeer).dialProtocol((b as MeshPeer).peerId, '/test/echo/1.0.0')

    // Count noise's "short buffer" errors from here on, on both peers (one process).
    let thrown = 0
    globalThis.RangeError = new Proxy(Original, {
      apply(target, self, args) {
        if (String(args[0]).includes('int16BE')) thrown++
        return Reflect.apply(target, self, args)
      },
      construct(target, args, newTarget) {
        if (String(args[0]).includes('int16BE')) thrown++
        return Reflect.construct(target, args, newTarget)
      },
    })
    let echoed = 0
    const all = new Promise<void>((resolve) => {
      stream.addEventListener('message', (evt) => {
        echoed += evt.data.byteLength
        if (echoed >= 40 * 16) resolve()
      })
    })
    for (let i = 0; i < 40; i++) {
      stream.send(new Uint8Array(16).fill(i))
      await new Promise((r) => setTimeout(r, 2))
    }
    await all
    expect(echoed).toBe(40 * 16)
    expect(thrown).toBe(0)
  })
})
