// The random-weight GGUF synthesizer and the GGUF validator: the tiny preset must load and run in
// node-llama-cpp, and every kind of bad file must be refused with InvalidModelError before loading.
import { copyFile, mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises'
import os from 'node:os'
import { join } from 'node:path'
import { getLlama, Llama3_1ChatWrapper, Llama3ChatWrapper, LlamaLogLevel, resolveChatWrapper } from 'node-llama-cpp'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { InvalidModelError, inspectGguf, sha256File, validateGguf } from '../../src/models/gguf.ts'
import { encodeGgufHeader, GGUF_DEFAULT_ALIGNMENT, kv } from '../../src/models/gguf-format.ts'
import { RERANK_LABELS, RERANK_TEMPLATE, SYNTH_PRESETS, synthesizeGguf } from '../../src/models/synth.ts'

let dir = ''
let tinyPath = ''
let tinyBytes = 0

beforeAll(async () => {
  dir = await mkdtemp(join(os.tmpdir(), 'cluster-synth-'))
  const res = await synthesizeGguf({ preset: 'tiny', out: join(dir, 'tiny.gguf'), seed: 7 })
  tinyPath = res.path
  tinyBytes = res.bytes
})

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true })
})

/** Element count of the llama tensors the synthesizer writes (tied embeddings, no output.weight). */
function expectedParams(p: (typeof SYNTH_PRESETS)['tiny']): number {
  const kvDim = (p.embeddingLength / p.headCount) * p.headCountKv
  const perBlock =
    2 * p.embeddingLength +
    2 * p.embeddingLength * p.embeddingLength +
    2 * p.embeddingLength * kvDim +
    3 * p.embeddingLength * p.feedForwardLength
  return p.vocabSize * p.embeddingLength + p.embeddingLength + p.blockCount * perBlock
}

async function expectInvalid(path: string, message: RegExp): Promise<void> {
  const err = await validateGguf(path).then(
    () => undefined,
    (e: unknown) => e,
  )
  expect(err).toBeInstanceOf(InvalidModelError)
  expect((err as InvalidModelError).name).toBe('InvalidModelError')
  expect((err as InvalidModelError).message).toMatch(message)
}

describe('synthesizeGguf (tiny)', () => {
  it('writes a file validateGguf accepts, with the preset shape', async () => {
    const p = SYNTH_PRESETS.tiny
    const summary = await validateGguf(tinyPath)
    expect(summary).toEqual({
      name: p.label,
      architecture: 'llama',
      contextLength: p.contextLength,
      embeddingLength: p.embeddingLength,
      blockCount: p.blockCount,
      quantization: 'Q8_0',
      parameterCount: expectedParams(p),
      sizeBytes: tinyBytes,
      hasChatTemplate: true,
    })
    expect(summary.name).toMatch(/random weights/)
    expect(await inspectGguf(tinyPath)).toEqual(summary)
  })

  it('is deterministic for a seed and differs across seeds', async () => {
    const again = await synthesizeGguf({ preset: 'tiny', out: join(dir, 'again.gguf'), seed: 7, name: 'x' })
    const other = await synthesizeGguf({ preset: 'tiny', out: join(dir, 'other.gguf'), seed: 8, name: 'x' })
    const same = await synthesizeGguf({ preset: 'tiny', out: join(dir, 'same.gguf'), seed: 7, name: 'x' })
    expect(await sha256File(again.path)).toBe(await sha256File(same.path))
    expect(await sha256File(again.path)).not.toBe(await sha256File(other.path))
    expect((await inspectGguf(again.path)).name).toBe('x')
  })

  it('stops and leaves nothing behind when aborted', async () => {
    const out = join(dir, 'aborted.gguf')
    const controller = new AbortController()
    // Aborted once the write is under way, so the partial file has to be cleaned up.
    const running = synthesizeGguf({ preset: 'tiny', out, signal: controller.signal })
    controller.abort(new Error('stop'))
    await expect(running).rejects.toThrow('stop')
    await expectInvalid(out, /not found/)
    expect((await readdir(dir)).filter((f) => f.includes('aborted'))).toEqual([])
  })

  it('loads and runs in node-llama-cpp', async () => {
    const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error })
    try {
      const model = await llama.loadModel({ modelPath: tinyPath })
      // The default thread count is several times slower on small CPU-only machines.
      const context = await model.createContext({ contextSize: 512, threads: os.availableParallelism() })
      const sequence = context.getSequence()

      const text = 'Hello world, the cluster answers.\n\nNon-ASCII: déjà vu 🎉'
      const tokens = model.tokenize(text)
      expect(tokens.length).toBeGreaterThan(0)
      expect(tokens.length).toBeLessThan(Buffer.byteLength(text))
      expect(model.detokenize(tokens)).toBe(text)

      const vocab = SYNTH_PRESETS.tiny.vocabSize
      const bos = model.tokens.bos
      if (bos === null) throw new Error('the model has no BOS token')
      expect(bos).toBe(vocab - SYNTH_PRESETS.tiny.specialTokenCount)
      expect(model.detokenize([bos], true)).toBe('<|begin_of_text|>')
      expect(model.tokenize('<|eot_id|>', true)).toEqual([model.tokens.eos])

      const generated: number[] = []
      for await (const token of sequence.evaluate([bos, ...tokens], { temperature: 0.8, seed: 1 })) {
        generated.push(token)
        if (generated.length >= 8) break
      }
      expect(generated).toHaveLength(8)
      for (const t of generated) {
        expect(Number.isInteger(t)).toBe(true)
        expect(t).toBeGreaterThanOrEqual(0)
        expect(t).toBeLessThan(vocab)
      }

      expect(model.fileInfo.metadata.tokenizer.chat_template).toContain('<|start_header_id|>')
      const wrapper = resolveChatWrapper(model)
      expect(wrapper instanceof Llama3_1ChatWrapper || wrapper instanceof Llama3ChatWrapper).toBe(true)

      await context.dispose()
      await model.dispose()
    } finally {
      await llama.dispose()
    }
  })
})

describe('synthesizeGguf (rerank-tiny)', () => {
  it('writes a qwen3 with per-head Q/K norms and a two-label ranking head that node-llama-cpp can rank with', async () => {
    const p = SYNTH_PRESETS['rerank-tiny']
    const res = await synthesizeGguf({ preset: 'rerank-tiny', out: join(dir, 'rerank.gguf'), seed: 3 })
    const headDim = p.embeddingLength / p.headCount
    const summary = await validateGguf(res.path)
    expect(summary).toMatchObject({
      architecture: 'qwen3',
      embeddingLength: p.embeddingLength,
      // The llama tensors, plus q/k norms in each block and the ranking head (one row per label).
      parameterCount: expectedParams(p) + p.blockCount * 2 * headDim + p.embeddingLength * RERANK_LABELS.length,
    })
    const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error })
    try {
      const model = await llama.loadModel({ modelPath: res.path })
      expect(model.fileInsights.supportsRanking).toBe(true)
      expect(model.fileInfo.metadata.tokenizer['chat_template.rerank']).toBe(RERANK_TEMPLATE)
      const context = await model.createRankingContext({ contextSize: 256, threads: 1 })
      const scores = await context.rankAll('what is the cluster', ['the cluster answers', 'water is wet'])
      expect(scores).toHaveLength(2)
      for (const s of scores) {
        expect(s).toBeGreaterThan(0)
        expect(s).toBeLessThan(1)
      }
      await context.dispose()
      await model.dispose()
    } finally {
      await llama.dispose()
    }
  })
})

describe('validateGguf rejects', () => {
  it('a missing file', async () => {
    await expectInvalid(join(dir, 'nope.gguf'), /not found/)
  })

  it('random bytes', async () => {
    const path = join(dir, 'random.gguf')
    await writeFile(path, Buffer.from(Array.from({ length: 64 * 1024 }, (_, i) => (i * 2654435761) >>> 24)))
    await expectInvalid(path, /bad magic/)
  })

  it('a copy truncated inside the tensor data', async () => {
    const path = join(dir, 'truncated-data.gguf')
    await copyFile(tinyPath, path)
    await truncate(path, tinyBytes - 1000)
    await expectInvalid(path, /truncated/)
  })

  it('a copy truncated inside the header', async () => {
    const path = join(dir, 'truncated-header.gguf')
    await copyFile(tinyPath, path)
    await truncate(path, 5000)
    await expectInvalid(path, /truncated/)
  })

  it('a llama GGUF without llama.feed_forward_length', async () => {
    // Loading this one would abort the whole process inside llama.cpp: it must never get there.
    const { path } = await synthesizeGguf({
      preset: 'tiny',
      out: join(dir, 'no-ffn.gguf'),
      omitKeys: ['llama.feed_forward_length'],
    })
    await expectInvalid(path, /llama\.feed_forward_length/)
  })

  it('a llama GGUF without a tokenizer', async () => {
    const { path } = await synthesizeGguf({
      preset: 'tiny',
      out: join(dir, 'no-tokens.gguf'),
      omitKeys: ['tokenizer.ggml.tokens'],
    })
    await expectInvalid(path, /tokenizer\.ggml\.tokens/)
  })

  it('an unsupported architecture', async () => {
    const path = join(dir, 'gpt2.gguf')
    const metadata = new Map([
      ['general.architecture', kv.string('gpt2')],
      ['gpt2.context_length', kv.u32(1024)],
    ])
    await writeFile(path, encodeGgufHeader(metadata, [], GGUF_DEFAULT_ALIGNMENT))
    await expectInvalid(path, /unsupported architecture "gpt2"/)
  })

  it('a header whose counts run past the end of the file', async () => {
    const path = join(dir, 'hostile.gguf')
    const header = encodeGgufHeader(new Map([['general.name', kv.string('x')]]), [], GGUF_DEFAULT_ALIGNMENT)
    // Claim a 2^40-byte string for the first key: a trusting parser would try to allocate it.
    header.writeBigUInt64LE(1n << 40n, 24)
    await writeFile(path, header)
    await expectInvalid(path, /truncated/)
  })
})

// Opt-in (CLUSTER_TEST_1B=1): writes ~1.3 GB and needs ~1.5 GB of RAM to run.
describe.runIf(process.env.CLUSTER_TEST_1B === '1')('synthesizeGguf (1b)', () => {
  it('writes a Llama-3.2-1B-shaped model that loads and generates', { timeout: 300_000 }, async () => {
    const p = SYNTH_PRESETS['1b']
    const res = await synthesizeGguf({ preset: '1b', out: join(dir, '1b.gguf') })
    try {
      const summary = await validateGguf(res.path)
      expect(summary).toMatchObject({
        architecture: 'llama',
        contextLength: 131_072,
        embeddingLength: 2048,
        blockCount: 16,
        quantization: 'Q8_0',
        parameterCount: expectedParams(p),
        sizeBytes: res.bytes,
      })
      const llama = await getLlama({ gpu: false, logLevel: LlamaLogLevel.error })
      try {
        const model = await llama.loadModel({ modelPath: res.path })
        expect(model.tokens.bos).toBe(128_000)
        expect(model.tokens.eos).toBe(128_009)
        const context = await model.createContext({ contextSize: 512, threads: os.availableParallelism() })
        const generated: number[] = []
        for await (const token of context.getSequence().evaluate(model.tokenize('The cluster'), { temperature: 0.8 })) {
          generated.push(token)
          if (generated.length >= 4) break
        }
        for (const t of generated) expect(t).toBeLessThan(p.vocabSize)
      } finally {
        await llama.dispose()
      }
    } finally {
      await rm(res.path, { force: true })
    }
  })
})
