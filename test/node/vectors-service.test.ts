// The vectors service on a real libp2p peer, asked by a real gateway-side MeshVectors over loopback,
// in front of a gated engine double (the llama engine itself is tested in vectors.test.ts and in
// the e2e test): one request at a time per engine, a bounded queue, busy beyond it, cancellation
// when the requester goes away, unit-length vectors, receipts, and error frames for every bad input.
import { generateKeyPair } from '@libp2p/crypto/keys'
import { peerIdFromPrivateKey } from '@libp2p/peer-id'
import * as lp from 'it-length-prefixed'
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest'
import { MeshVectors, MeshVectorsError } from '../../gateway/mesh-vectors.ts'
import type { EmbedResult, Engine, TokenStream } from '../../node/engine.ts'
import { EngineError } from '../../node/engine.ts'
import { serveVectors, type VectorsService } from '../../node/vectors-service.ts'
import {
  decodeFrames,
  MAX_FRAME_BYTES,
  type ServedModel,
  VECTORS_PROTOCOL,
  type VectorsResponseFrame,
  VectorsResponseFrameSchema,
} from '../../protocols/index.ts'
import { Directory } from '../../src/mesh/directory.ts'
import { createMeshPeer, type MeshPeer } from '../../src/mesh/peer.ts'
import { verifyReceipt } from '../../src/mesh/receipts.ts'
import { tempDir, waitFor } from '../helpers/fixtures.ts'

interface Call {
  input: string[]
  signal: AbortSignal | undefined
  release: () => void
}

/** An embeddings-only engine whose calls wait until the test releases them (unless `gated` is off). */
class GatedEngine implements Engine {
  readonly modelId = 'gated'
  readonly slots = 1
  readonly generatedTokens = 0
  readonly embeddingDimensions = 4
  readonly calls: Call[] = []
  gated = false
  vector = new Float32Array([3, 4, 0, 0])
  failWith: Error | undefined

  describe(): ServedModel {
    return { id: this.modelId, contextSize: 64, state: 'ready', tasks: ['embeddings'] }
  }

  openChat(): Promise<TokenStream> {
    return Promise.reject(new EngineError('invalid_request', 'no chat here'))
  }

  embed(input: string[], signal?: AbortSignal): Promise<EmbedResult> {
    return new Promise((resolve, reject) => {
      const release = (): void => {
        if (this.failWith) reject(this.failWith)
        else resolve({ vectors: input.map(() => this.vector), tokens: 2 * input.length })
      }
      signal?.addEventListener('abort', () => reject(signal.reason), { once: true })
      this.calls.push({ input, signal, release })
      if (!this.gated) release()
    })
  }

  async close(): Promise<void> {}
}

/** A varint length prefix, alone: what a peer announcing a frame of `n` bytes sends first. */
function varint(n: number): Uint8Array {
  const out: number[] = []
  let v = n
  while (v >= 0x80) {
    out.push((v & 0x7f) | 0x80)
    v = Math.floor(v / 128)
  }
  out.push(v)
  return new Uint8Array(out)
}

describe('vectors service', () => {
  let node: MeshPeer
  let gateway: MeshPeer
  let service: VectorsService
  let vectors: MeshVectors
  const engine = new GatedEngine()
  const failures: unknown[] = []
  const cleanups: Array<() => Promise<void>> = []
  let n = 0
  const id = (): string => `req-${++n}`
  const signal = (): AbortSignal => AbortSignal.timeout(10_000)

  const rejection = async (p: Promise<unknown>): Promise<MeshVectorsError> => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    )
    if (!(err instanceof MeshVectorsError)) throw new Error(`expected a MeshVectorsError, got ${String(err)}`)
    return err
  }

  /** Sends raw bytes on a new vectors stream and reads every frame the node answers with. */
  const raw = async (bytes: Uint8Array): Promise<VectorsResponseFrame[]> => {
    const stream = await gateway.dialProtocol(node.peerId, VECTORS_PROTOCOL)
    stream.send(bytes)
    const frames: VectorsResponseFrame[] = []
    for await (const f of decodeFrames(stream, VectorsResponseFrameSchema)) frames.push(f)
    return frames
  }

  beforeAll(async () => {
    const nodeDir = await tempDir('vectors-node')
    const gwDir = await tempDir('vectors-gw')
    cleanups.push(nodeDir.remove, gwDir.remove)
    const privateKey = await generateKeyPair('Ed25519')
    node = await createMeshPeer({ dataDir: nodeDir.path, privateKey, listen: ['/ip4/127.0.0.1/tcp/0'] })
    gateway = await createMeshPeer({ dataDir: gwDir.path, listen: ['/ip4/127.0.0.1/tcp/0'] })
    service = await serveVectors(node, {
      engines: () => new Map([[engine.modelId, engine]]),
      privateKey,
      maxQueue: 1,
      onFailure: ({ error }) => failures.push(error),
    })
    const addr = node.getMultiaddrs()[0]
    if (addr == null) throw new Error('the node listens nowhere')
    await gateway.dial(addr)
    vectors = new MeshVectors(gateway, new Directory())
  })

  afterAll(async () => {
    await Promise.resolve(gateway?.stop())
    await Promise.resolve(node?.stop())
    for (const c of cleanups) await c()
  })

  beforeEach(() => {
    engine.gated = false
    engine.vector = new Float32Array([3, 4, 0, 0])
    engine.failWith = undefined
  })

  it('answers with unit-length vectors (shortened ones renormalized) and a receipt for the tokens', async () => {
    const requestId = id()
    const res = await vectors.embed(
      node.peerId.toString(),
      { id: requestId, model: 'gated', input: ['a', 'b'] },
      signal(),
    )
    expect(res.dimensions).toBe(4)
    expect(res.vectors.map((v) => [...v])).toEqual([
      [Math.fround(0.6), Math.fround(0.8), 0, 0],
      [Math.fround(0.6), Math.fround(0.8), 0, 0],
    ])
    expect(res.usage).toEqual({ promptTokens: 4, completionTokens: 0 })
    expect(
      await verifyReceipt(res.receipt, {
        requestId,
        model: 'gated',
        gateway: gateway.peerId.toString(),
        node: node.peerId.toString(),
        promptTokens: 4,
        completionTokens: 0,
      }),
    ).toEqual({ ok: true })

    const one = await vectors.embed(
      node.peerId.toString(),
      { id: id(), model: 'gated', input: ['a'], dimensions: 1 },
      signal(),
    )
    expect(one.dimensions).toBe(1)
    expect([...(one.vectors[0] ?? [])]).toEqual([1])

    const err = await rejection(
      vectors.embed(node.peerId.toString(), { id: id(), model: 'gated', input: ['a'], dimensions: 5 }, signal()),
    )
    expect(err.code).toBe('invalid_request')
    expect(err.failover).toBe(false)
    expect(err.message).toBe("'dimensions' must be at most 4 for the model 'gated' (its embeddings have 4 dimensions).")
    // The field it is about travels in the error frame (the gateway gives it to the client as `param`).
    expect(err.param).toBe('dimensions')
  })

  it('runs one request at a time per engine, queues maxQueue more, and refuses the next as busy', async () => {
    engine.gated = true
    const before = engine.calls.length
    const peer = node.peerId.toString()
    const first = vectors.embed(peer, { id: id(), model: 'gated', input: ['first'] }, signal())
    await waitFor(() => engine.calls.length === before + 1, 5_000, 'the first request running')
    const second = vectors.embed(peer, { id: id(), model: 'gated', input: ['second'] }, signal())
    await waitFor(() => service.load(engine).queued === 1, 5_000, 'the second request queued')
    expect(service.load(engine)).toEqual({ running: 1, queued: 1 })

    const busy = await rejection(vectors.embed(peer, { id: id(), model: 'gated', input: ['third'] }, signal()))
    expect(busy.code).toBe('busy')
    expect(busy.failover).toBe(true)

    engine.calls[before]?.release()
    expect((await first).vectors).toHaveLength(1)
    await waitFor(() => engine.calls.length === before + 2, 5_000, 'the second request running')
    expect(engine.calls[before + 1]?.input).toEqual(['second'])
    engine.calls[before + 1]?.release()
    expect((await second).vectors).toHaveLength(1)
    expect(engine.calls).toHaveLength(before + 2)
    expect(service.load(engine)).toEqual({ running: 0, queued: 0 })
  })

  it('cancels when the requester goes away: the running call is told to stop, a queued one leaves the queue', async () => {
    engine.gated = true
    const before = engine.calls.length
    const peer = node.peerId.toString()
    const runningCaller = new AbortController()
    const queuedCaller = new AbortController()
    const running = rejection(vectors.embed(peer, { id: id(), model: 'gated', input: ['run'] }, runningCaller.signal))
    await waitFor(() => engine.calls.length === before + 1, 5_000, 'the request running')
    const queued = rejection(vectors.embed(peer, { id: id(), model: 'gated', input: ['wait'] }, queuedCaller.signal))
    await waitFor(() => service.load(engine).queued === 1, 5_000, 'the request queued')

    queuedCaller.abort()
    expect((await queued).code).toBe('aborted')
    await waitFor(() => service.load(engine).queued === 0, 5_000, 'the queue emptied')

    runningCaller.abort()
    expect((await running).code).toBe('aborted')
    await waitFor(() => engine.calls[before]?.signal?.aborted === true, 5_000, "the engine call's signal aborted")
    await waitFor(() => service.load(engine).running === 0, 5_000, 'the engine freed')
    // The queued request never reached the engine, and the next one is served.
    expect(engine.calls).toHaveLength(before + 1)
    engine.gated = false
    const res = await vectors.embed(peer, { id: id(), model: 'gated', input: ['after'] }, signal())
    expect(res.vectors).toHaveLength(1)
  })

  it('answers invalid_request to bad frames and keeps serving', async () => {
    const notJson = await raw(lp.encode.single(new TextEncoder().encode('not json')).subarray())
    expect(notJson).toEqual([{ type: 'error', code: 'invalid_request', message: 'not valid UTF-8 JSON' }])

    const empty = await raw(
      lp.encode
        .single(new TextEncoder().encode(JSON.stringify({ type: 'embed', id: 'x', model: 'gated', input: [''] })))
        .subarray(),
    )
    expect(empty[0]).toMatchObject({ type: 'error', code: 'invalid_request' })
    expect(empty[0]?.type === 'error' && empty[0].message).toMatch(/at input\.0: an input must not be an empty string/)

    const huge = await raw(varint(MAX_FRAME_BYTES + 1))
    expect(huge[0]).toMatchObject({ type: 'error', code: 'invalid_request' })
    expect(huge[0]?.type === 'error' && huge[0].message).toMatch(/exceeds/)

    for (const [input, why] of [
      [[], /at least one input/],
      [Array.from({ length: 2049 }, () => 'x'), /at most 2048 inputs/],
    ] as const) {
      const err = await rejection(
        vectors.embed(node.peerId.toString(), { id: id(), model: 'gated', input: [...input] }, signal()),
      )
      expect(err.code).toBe('invalid_request')
      expect(err.message).toMatch(why)
    }

    const res = await vectors.embed(node.peerId.toString(), { id: id(), model: 'gated', input: ['fine'] }, signal())
    expect(res.vectors).toHaveLength(1)
  })

  it('answers model_not_found for a model it does not serve, invalid_request for a task the model lacks', async () => {
    const peer = node.peerId.toString()
    const missing = await rejection(vectors.embed(peer, { id: id(), model: 'nope', input: ['a'] }, signal()))
    expect(missing.code).toBe('model_not_found')
    expect(missing.failover).toBe(false)
    const rerank = await rejection(
      vectors.rerank(peer, { id: id(), model: 'gated', query: 'q', documents: ['d'] }, signal()),
    )
    expect(rerank.code).toBe('invalid_request')
    expect(rerank.message).toBe("The model 'gated' does not serve rerank.")
    expect(rerank.param).toBe('model')
  })

  it('answers internal when the engine fails or gives values that are not finite, and tells the operator', async () => {
    const peer = node.peerId.toString()
    const before = failures.length
    engine.failWith = new Error('the engine broke')
    const broke = await rejection(vectors.embed(peer, { id: id(), model: 'gated', input: ['a'] }, signal()))
    expect(broke.code).toBe('internal')
    expect(broke.message).toBe('embeddings failed')
    expect(broke.failover).toBe(true)
    engine.failWith = undefined
    engine.vector = new Float32Array([Number.NaN, 1, 0, 0])
    const nan = await rejection(vectors.embed(peer, { id: id(), model: 'gated', input: ['a'] }, signal()))
    expect(nan.code).toBe('internal')
    expect(nan.message).toMatch(/not finite/)
    expect(failures.slice(before).map((e) => (e as Error).message)).toEqual([
      'the engine broke',
      'the model gave a vector with values that are not finite',
    ])
  })

  it('reports an unreachable node as unreachable, a cancelled call as aborted', async () => {
    // A peer nobody knows an address of.
    const stranger = peerIdFromPrivateKey(await generateKeyPair('Ed25519')).toString()
    const quick = new MeshVectors(gateway, new Directory(), { dialTimeoutMs: 500 })
    const err = await rejection(quick.embed(stranger, { id: id(), model: 'gated', input: ['a'] }, signal()))
    expect(err.code).toBe('unreachable')
    expect(err.failover).toBe(true)
    const controller = new AbortController()
    controller.abort()
    const aborted = await rejection(
      vectors.embed(node.peerId.toString(), { id: id(), model: 'gated', input: ['a'] }, controller.signal),
    )
    expect(aborted.code).toBe('aborted')
  })
})
