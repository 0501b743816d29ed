// The llama engine's embeddings and rerank on the synthetic models, really run by node-llama-cpp:
// what describe() lists, vector shapes, determinism, token counts (checked against the model's
// tokenizer loaded separately), context limits, cancellation and unloading under way.
import { getLlama, LlamaLogLevel, type LlamaModel } from 'node-llama-cpp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { EngineError } from '../../node/engine.ts'
import { LlamaEngine } from '../../node/llama-engine.ts'
import { RERANK_TEMPLATE, SYNTH_PRESETS } from '../../src/models/synth.ts'
import { rerankModelPath, tinyModelPath } from '../helpers/fixtures.ts'

const load = async (modelPath: string, extra: { vectorContextSize?: number } = {}): Promise<LlamaEngine> =>
  LlamaEngine.load({ modelPath, threads: 1, slots: 1, contextSize: 512, gpu: false, ...extra })

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection')
    },
    (err: unknown) => err,
  )
}

/** A vocabulary-only copy of a model: its tokenizer, to count tokens independently of the engine. */
async function vocabOf(path: string): Promise<LlamaModel> {
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error })
  return llama.loadModel({ modelPath: path, vocabOnly: true })
}

describe('LlamaEngine embeddings (tiny llama)', () => {
  let engine: LlamaEngine
  let vocab: LlamaModel

  beforeAll(async () => {
    engine = await load(await tinyModelPath(), { vectorContextSize: 64 })
    vocab = await vocabOf(await tinyModelPath())
  })

  afterAll(async () => {
    await engine?.close()
    await vocab?.dispose()
  })

  it('lists chat and embeddings, not rerank', () => {
    expect(engine.describe().tasks).toEqual(['chat', 'embeddings'])
    expect(engine.embeddingDimensions).toBe(SYNTH_PRESETS.tiny.embeddingLength)
  })

  it('gives one vector of the embedding length per input: equal for equal inputs, different otherwise', async () => {
    const input = ['hello world', 'the cluster answers', 'hello world']
    const { vectors, tokens } = await engine.embed(input)
    expect(vectors).toHaveLength(3)
    for (const v of vectors) {
      expect(v).toBeInstanceOf(Float32Array)
      expect(v).toHaveLength(SYNTH_PRESETS.tiny.embeddingLength)
      expect(v.every(Number.isFinite)).toBe(true)
      expect(v.some((x) => x !== 0)).toBe(true)
    }
    expect([...(vectors[2] ?? [])]).toEqual([...(vectors[0] ?? [])])
    expect([...(vectors[1] ?? [])]).not.toEqual([...(vectors[0] ?? [])])
    // BOS + the text's tokens for each input (the tiny model adds no EOS).
    expect(tokens).toBe(input.reduce((n, text) => n + 1 + vocab.tokenize(text).length, 0))

    // The same input in a later call, after other inputs went through the context: the same vector.
    const again = await engine.embed(['hello world'])
    expect([...(again.vectors[0] ?? [])]).toEqual([...(vectors[0] ?? [])])
  })

  it('refuses an input longer than its context, naming which one', async () => {
    const long = 'the cluster answers a question about water '.repeat(20)
    const err = await rejection(engine.embed(['short', long]))
    expect(err).toBeInstanceOf(EngineError)
    expect((err as EngineError).code).toBe('context_length_exceeded')
    expect((err as EngineError).message).toMatch(/^input 1 is \d+ tokens; this model takes at most 63/)
  })

  it('refuses rerank: the model has no ranking head', async () => {
    const err = await rejection(engine.rank('query', ['document']))
    expect(err).toBeInstanceOf(EngineError)
    expect((err as EngineError).code).toBe('invalid_request')
    expect((err as EngineError).message).toMatch(/does not serve rerank/)
  })

  it('stops when its signal aborts, and serves the next call', async () => {
    const controller = new AbortController()
    controller.abort(new Error('caller left'))
    await expect(engine.embed(['hello world'], controller.signal)).rejects.toThrow('caller left')
    const { vectors } = await engine.embed(['hello world'])
    expect(vectors).toHaveLength(1)
  })

  it('ends a call under way with EngineError internal when the engine closes', async () => {
    const other = await load(await tinyModelPath())
    const many = Array.from({ length: 400 }, (_, i) => `input number ${i} about the cluster`)
    // embed() has registered its call by the time it returns its promise: close() must wait for it.
    const running = rejection(other.embed(many))
    await other.close()
    const err = await running
    expect(err).toBeInstanceOf(EngineError)
    expect((err as EngineError).code).toBe('internal')
    expect((err as EngineError).message).toMatch(/unloaded/)
    await expect(other.embed(['hello'])).rejects.toThrow(/unloaded/)
  })
})

describe('LlamaEngine rerank (rerank-tiny qwen3)', () => {
  let engine: LlamaEngine
  let vocab: LlamaModel

  beforeAll(async () => {
    engine = await load(await rerankModelPath())
    vocab = await vocabOf(await rerankModelPath())
  })

  afterAll(async () => {
    await engine?.close()
    await vocab?.dispose()
  })

  it('lists chat and rerank, not embeddings (its pooled output is label scores)', () => {
    const described = engine.describe()
    expect(described.tasks).toEqual(['chat', 'rerank'])
    expect(described.architecture).toBe('qwen3')
    expect(engine.embeddingDimensions).toBeUndefined()
  })

  it('scores each document in [0, 1], in order, the same on every call', async () => {
    const query = 'what does the cluster do'
    const documents = ['the cluster answers a question', 'water is wet', '', 'hello world', 'a peer node']
    const first = await engine.rank(query, documents)
    expect(first.scores).toHaveLength(documents.length)
    for (const s of first.scores) {
      expect(Number.isFinite(s)).toBe(true)
      expect(s).toBeGreaterThanOrEqual(0)
      expect(s).toBeLessThanOrEqual(1)
    }
    // Random weights still tell documents apart.
    expect(new Set(first.scores).size).toBeGreaterThan(1)
    const second = await engine.rank(query, [...documents].reverse())
    expect(second.scores).toEqual([...first.scores].reverse())

    // Tokens: per pair, BOS + the template's text around the query and the document + both texts.
    const pieces = RERANK_TEMPLATE.split(/\{query\}|\{document\}/)
    const templateTokens = pieces.reduce((n, piece) => n + vocab.tokenize(piece, true, 'trimLeadingSpace').length, 0)
    const text = (t: string): number => vocab.tokenize(t, false, 'trimLeadingSpace').length
    const expected = documents.reduce((n, d) => n + 1 + templateTokens + text(query) + text(d), 0)
    expect(first.tokens).toBe(expected)
  })

  it('refuses embeddings', async () => {
    const err = await rejection(engine.embed(['hello']))
    expect(err).toBeInstanceOf(EngineError)
    expect((err as EngineError).code).toBe('invalid_request')
    expect((err as EngineError).message).toMatch(/does not serve embeddings/)
  })

  it('refuses a query/document pair longer than its context', async () => {
    const small = await load(await rerankModelPath(), { vectorContextSize: 64 })
    try {
      const err = await rejection(small.rank('query', ['short', 'long document about water '.repeat(30)]))
      expect(err).toBeInstanceOf(EngineError)
      expect((err as EngineError).code).toBe('context_length_exceeded')
      expect((err as EngineError).message).toMatch(/^query \+ document 1 is \d+ tokens/)
    } finally {
      await small.close()
    }
  })
})
