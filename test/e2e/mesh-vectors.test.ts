// End to end on loopback: a gateway and a node as separate libp2p peers, the node serving the tiny
// llama (embeddings) and the tiny qwen3 reranker, both really loaded by node-llama-cpp, and the
// gateway's MeshVectors asking it over the vectors protocol. Nothing of ours is faked.
import { getLlama, LlamaLogLevel, type LlamaModel } from 'node-llama-cpp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { type RunningGateway, startGateway } from '../../gateway/gateway.ts'
import { MeshVectors, MeshVectorsError } from '../../gateway/mesh-vectors.ts'
import { type RunningNode, startNode } from '../../node/node.ts'
import { verifyReceipt } from '../../src/mesh/receipts.ts'
import { sha256File } from '../../src/models/gguf.ts'
import { SYNTH_PRESETS } from '../../src/models/synth.ts'
import { rerankModelPath, tempDir, tinyModelPath, waitFor } from '../helpers/fixtures.ts'

const EMBED_MODEL = 'tiny-vectors'
const RERANK_MODEL = 'rerank-vectors'
const DIMENSIONS = SYNTH_PRESETS.tiny.embeddingLength

const norm = (v: Float32Array): number => Math.sqrt(v.reduce((s, x) => s + x * x, 0))

/** `v` scaled to unit length: what the node does to the engine's vectors before sending them. */
const unit = (v: Float32Array): number[] => {
  const n = norm(v)
  return [...v].map((x) => x / n)
}

function expectClose(got: Float32Array | undefined, want: number[]): void {
  expect(got).toHaveLength(want.length)
  want.forEach((w, i) => {
    expect(got?.[i]).toBeCloseTo(w, 6)
  })
}

describe('embeddings and rerank over the mesh', () => {
  let gw: RunningGateway
  let node: RunningNode
  let vectors: MeshVectors
  let vocab: LlamaModel
  const dirs: Array<{ remove: () => Promise<void> }> = []
  let n = 0
  const id = (): string => `vec-${++n}`
  const signal = (): AbortSignal => AbortSignal.timeout(30_000)

  const dir = async (name: string): Promise<string> => {
    const d = await tempDir(name)
    dirs.push(d)
    return d.path
  }

  const rejection = async (p: Promise<unknown>): Promise<MeshVectorsError> => {
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    )
    if (!(err instanceof MeshVectorsError)) throw new Error(`expected a MeshVectorsError, got ${String(err)}`)
    return err
  }

  const engine = (model: string) => {
    const e = node.engines.get(model)
    if (e?.embed == null || e.rank == null) throw new Error(`${model} is not loaded`)
    return { embed: e.embed.bind(e), rank: e.rank.bind(e) }
  }

  beforeAll(async () => {
    gw = await startGateway({ dataDir: await dir('gw'), listen: ['/ip4/127.0.0.1/tcp/0'], port: 0 })
    node = await startNode({
      dataDir: await dir('node'),
      listen: ['/ip4/127.0.0.1/tcp/0'],
      bootstrap: gw.multiaddrs(),
      models: [
        { path: await tinyModelPath(), id: EMBED_MODEL },
        { path: await rerankModelPath(), id: RERANK_MODEL },
      ],
      threads: 1,
      slots: 1,
      contextSize: 512,
      gpu: false,
      heartbeatIntervalMs: 200,
    })
    vectors = new MeshVectors(gw.peer, gw.directory)
    const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error })
    vocab = await llama.loadModel({ modelPath: await tinyModelPath(), vocabOnly: true })
  })

  afterAll(async () => {
    await vocab?.dispose()
    await node?.stop()
    await gw?.stop()
    await Promise.all(dirs.map((d) => d.remove()))
  })

  it('finds the node by model and task once its capabilities arrive', async () => {
    // Heartbeats name the models first; the capabilities record (with the tasks) follows a beat later.
    await waitFor(
      () =>
        vectors.nodesFor(EMBED_MODEL, 'embeddings').length === 1 &&
        vectors.nodesFor(RERANK_MODEL, 'rerank').length === 1,
      15_000,
      'the node listed for embeddings and rerank',
    )
    expect(vectors.nodesFor(EMBED_MODEL, 'embeddings')[0]?.peerId).toBe(node.peerId)
    expect(vectors.nodesFor(EMBED_MODEL, 'rerank')).toEqual([])
    expect(vectors.nodesFor(RERANK_MODEL, 'embeddings')).toEqual([])
    expect(vectors.nodesFor('no-such-model', 'embeddings')).toEqual([])
    const caps = gw.directory.get(node.peerId)?.capabilities?.models
    expect(caps?.find((m) => m.id === EMBED_MODEL)?.tasks).toEqual(['chat', 'embeddings'])
    expect(caps?.find((m) => m.id === RERANK_MODEL)).toMatchObject({ architecture: 'qwen3', tasks: ['chat', 'rerank'] })
  })

  it("embeds: unit-length vectors equal to the engine's own, and a receipt for the tokens evaluated", async () => {
    const sha256 = await sha256File(await tinyModelPath())
    await waitFor(
      () => gw.directory.get(node.peerId)?.capabilities?.models.find((m) => m.id === EMBED_MODEL)?.sha256 === sha256,
      15_000,
      'the model hashed',
    )
    const input = ['hello world', 'the cluster answers', 'hello world']
    const requestId = id()
    const res = await vectors.embed(node.peerId, { id: requestId, model: EMBED_MODEL, input }, signal())
    expect(res.dimensions).toBe(DIMENSIONS)
    expect(res.vectors).toHaveLength(3)
    for (const v of res.vectors) expect(norm(v)).toBeCloseTo(1, 5)
    expect([...(res.vectors[2] ?? [])]).toEqual([...(res.vectors[0] ?? [])])
    expect([...(res.vectors[1] ?? [])]).not.toEqual([...(res.vectors[0] ?? [])])

    const direct = await engine(EMBED_MODEL).embed(input)
    direct.vectors.forEach((v, i) => {
      expectClose(res.vectors[i], unit(v))
    })
    // BOS + each text's tokens, counted with the model's tokenizer loaded apart from the node.
    const tokens = input.reduce((sum, text) => sum + 1 + vocab.tokenize(text).length, 0)
    expect(res.usage).toEqual({ promptTokens: tokens, completionTokens: 0 })
    expect(direct.tokens).toBe(tokens)
    expect(res.receipt.modelSha256).toBe(sha256)
    expect(
      await verifyReceipt(res.receipt, {
        requestId,
        model: EMBED_MODEL,
        gateway: gw.peerId,
        node: node.peerId,
        promptTokens: tokens,
        completionTokens: 0,
      }),
    ).toEqual({ ok: true })

    // Shortened: the first 16 values, scaled back to unit length.
    const short = await vectors.embed(node.peerId, { id: id(), model: EMBED_MODEL, input, dimensions: 16 }, signal())
    expect(short.dimensions).toBe(16)
    direct.vectors.forEach((v, i) => {
      expectClose(short.vectors[i], unit(v.subarray(0, 16)))
    })
  })

  it("reranks: one score in [0, 1] per document, the engine's own, and a receipt", async () => {
    const query = 'what does the cluster do'
    const documents = ['the cluster answers a question', 'water is wet', 'hello world']
    const requestId = id()
    const res = await vectors.rerank(node.peerId, { id: requestId, model: RERANK_MODEL, query, documents }, signal())
    expect(res.scores).toHaveLength(3)
    for (const s of res.scores) {
      expect(s).toBeGreaterThanOrEqual(0)
      expect(s).toBeLessThanOrEqual(1)
    }
    const direct = await engine(RERANK_MODEL).rank(query, documents)
    expect(res.scores).toEqual(direct.scores)
    expect(res.usage).toEqual({ promptTokens: direct.tokens, completionTokens: 0 })
    expect(direct.tokens).toBeGreaterThan(documents.length * 3)
    expect(
      await verifyReceipt(res.receipt, {
        requestId,
        model: RERANK_MODEL,
        gateway: gw.peerId,
        node: node.peerId,
        promptTokens: direct.tokens,
        completionTokens: 0,
      }),
    ).toEqual({ ok: true })
  })

  it('refuses bad input with invalid_request (context_length_exceeded for a long input) and keeps serving', async () => {
    const embed = (input: string[], extra: { dimensions?: number } = {}) =>
      rejection(vectors.embed(node.peerId, { id: id(), model: EMBED_MODEL, input, ...extra }, signal()))
    const rerank = (query: string, documents: string[]) =>
      rejection(vectors.rerank(node.peerId, { id: id(), model: RERANK_MODEL, query, documents }, signal()))
    const cases: Array<[Promise<MeshVectorsError>, RegExp]> = [
      [embed([]), /at least one input/],
      [embed(['fine', '']), /at input\.1: an input must not be an empty string/],
      [embed(Array.from({ length: 2049 }, () => 'x')), /at most 2048 inputs/],
      [
        embed(['fine'], { dimensions: DIMENSIONS + 1 }),
        new RegExp(`^'dimensions' must be at most ${DIMENSIONS} for the model`),
      ],
      [embed(['fine'], { dimensions: 0 }), /at dimensions/],
      [embed(['x'.repeat(5 * 1024 * 1024)]), /too large/],
      [rerank('', ['doc']), /the query must not be an empty string/],
      [rerank('query', []), /at least one document/],
    ]
    for (const [pending, why] of cases) {
      const err = await pending
      expect(err.code).toBe('invalid_request')
      expect(err.failover).toBe(false)
      expect(err.message).toMatch(why)
    }
    const long = await embed(['fine', 'water is wet and '.repeat(700)])
    expect(long.code).toBe('context_length_exceeded')
    expect(long.message).toMatch(/^input 1 is \d+ tokens; this model takes at most 2047 per input/)

    const ok = await vectors.embed(node.peerId, { id: id(), model: EMBED_MODEL, input: ['still here'] }, signal())
    expect(ok.vectors).toHaveLength(1)
    const scored = await vectors.rerank(
      node.peerId,
      { id: id(), model: RERANK_MODEL, query: 'q', documents: ['d'] },
      signal(),
    )
    expect(scored.scores).toHaveLength(1)
  })

  it('answers model_not_found for a model the node does not serve', async () => {
    const err = await rejection(
      vectors.embed(node.peerId, { id: id(), model: 'no-such-model', input: ['a'] }, signal()),
    )
    expect(err.code).toBe('model_not_found')
    expect(err.peerId).toBe(node.peerId)
  })

  it('answers invalid_request naming the task a model lacks', async () => {
    const noRerank = await rejection(
      vectors.rerank(node.peerId, { id: id(), model: EMBED_MODEL, query: 'q', documents: ['d'] }, signal()),
    )
    expect(noRerank.code).toBe('invalid_request')
    expect(noRerank.message).toBe(`The model '${EMBED_MODEL}' does not serve rerank.`)
    expect(noRerank.param).toBe('model')
    const noEmbed = await rejection(
      vectors.embed(node.peerId, { id: id(), model: RERANK_MODEL, input: ['a'] }, signal()),
    )
    expect(noEmbed.code).toBe('invalid_request')
    expect(noEmbed.message).toBe(`The model '${RERANK_MODEL}' does not serve embeddings.`)
  })
})
