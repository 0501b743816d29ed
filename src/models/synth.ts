// Writes llama-architecture GGUF models with random weights, so demos, tests and benches can run
// real node-llama-cpp inference with the shape (and cost) of a real model but no download. One
// preset is a qwen3 reranker (ranking head, rank pooling) for the embeddings and rerank paths.

import type { FileHandle } from 'node:fs/promises'
import { mkdir, open, rename, rm } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import type { GgufKv, GgufTensorHeader } from './gguf-format.ts'
import {
  alignUp,
  encodeGgufHeader,
  FILE_TYPE_MOSTLY_Q8_0,
  GGML_TYPE_F32,
  GGML_TYPE_Q8_0,
  GGUF_DEFAULT_ALIGNMENT,
  kv,
  tensorByteSize,
} from './gguf-format.ts'

export type SynthPresetName = 'tiny' | 'small' | '1b' | 'rerank-tiny'

export type SynthPreset = {
  /** Human label used in `general.name`. */
  label: string
  /** llama, or qwen3: llama's layout plus an RMSNorm over each attention head's queries and keys. */
  architecture: 'llama' | 'qwen3'
  /**
   * A ranking head, laid out as llama.cpp's conversions of Qwen3-Reranker are: `cls.output.weight`
   * with one row per label (yes, no), rank pooling and a rerank prompt template. qwen3 only: llama.cpp
   * reads `cls.output` for that architecture and ends its rank pooling in a softmax over the labels.
   */
  rerank?: boolean
  contextLength: number
  embeddingLength: number
  blockCount: number
  feedForwardLength: number
  headCount: number
  headCountKv: number
  /** Total tokens, special tokens included. */
  vocabSize: number
  /** Llama-3-style control tokens at the end of the vocabulary (the first 11 are the named ones). */
  specialTokenCount: number
  ropeFreqBase: number
  rmsEpsilon: number
}

export const SYNTH_PRESETS: Readonly<Record<SynthPresetName, SynthPreset>> = {
  tiny: {
    label: 'Cluster demo tiny (random weights)',
    architecture: 'llama',
    contextLength: 4096,
    embeddingLength: 128,
    blockCount: 2,
    feedForwardLength: 384,
    headCount: 4,
    headCountKv: 2,
    vocabSize: 2048,
    specialTokenCount: 16,
    ropeFreqBase: 500_000,
    rmsEpsilon: 1e-5,
  },
  /** ~60 MB: big enough to span many IPFS blocks (deploy and fetch tests), still quick to load. */
  small: {
    label: 'Cluster demo small (random weights)',
    architecture: 'llama',
    contextLength: 4096,
    embeddingLength: 512,
    blockCount: 12,
    feedForwardLength: 2048,
    headCount: 8,
    headCountKv: 4,
    vocabSize: 8192,
    specialTokenCount: 16,
    ropeFreqBase: 500_000,
    rmsEpsilon: 1e-5,
  },
  '1b': {
    label: 'Cluster demo 1B (random weights)',
    architecture: 'llama',
    contextLength: 131_072,
    embeddingLength: 2048,
    blockCount: 16,
    feedForwardLength: 8192,
    headCount: 32,
    headCountKv: 8,
    vocabSize: 128_256,
    specialTokenCount: 256,
    ropeFreqBase: 500_000,
    rmsEpsilon: 1e-5,
  },
  /** The tiny shape as a qwen3 reranker (~0.7 MB): scores query/document pairs in [0, 1]. */
  'rerank-tiny': {
    label: 'Cluster demo rerank tiny (random weights)',
    architecture: 'qwen3',
    rerank: true,
    contextLength: 4096,
    embeddingLength: 128,
    blockCount: 2,
    feedForwardLength: 384,
    headCount: 4,
    headCountKv: 2,
    vocabSize: 2048,
    specialTokenCount: 16,
    ropeFreqBase: 1_000_000,
    rmsEpsilon: 1e-6,
  },
}

export type SynthesizeOptions = {
  preset: SynthPresetName
  out: string
  seed?: number
  name?: string
  signal?: AbortSignal
  /**
   * Metadata keys to leave out. Only for tests of the validator: llama.cpp aborts the whole
   * process on some of these files, so never load what this produces.
   */
  omitKeys?: readonly string[]
}

export type SynthesizeResult = { path: string; bytes: number; preset: string }

/** Labels of the ranking head's rows, in the order llama.cpp's Qwen3-Reranker conversion writes them. */
export const RERANK_LABELS = ['yes', 'no'] as const

/**
 * The rerank prompt (`tokenizer.chat_template.rerank`); node-llama-cpp and llama-server fill in
 * {query} and {document}. The score is the probability of the first label after it.
 */
export const RERANK_TEMPLATE = 'Query: {query}\nDocument: {document}\nIs the document relevant to the query? Answer:'

/** Llama 3 instruct chat template: node-llama-cpp recognises it and picks its Llama 3 wrapper. */
export const LLAMA3_CHAT_TEMPLATE =
  "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"

const TOKEN_TYPE_NORMAL = 1
const TOKEN_TYPE_CONTROL = 3

/** Llama 3's first special tokens, in their real order (offsets from the first special id). */
const NAMED_SPECIALS = [
  '<|begin_of_text|>',
  '<|end_of_text|>',
  '<|reserved_special_token_0|>',
  '<|reserved_special_token_1|>',
  '<|finetune_right_pad_id|>',
  '<|reserved_special_token_2|>',
  '<|start_header_id|>',
  '<|end_header_id|>',
  '<|eom_id|>',
  '<|eot_id|>',
  '<|python_tag|>',
] as const

/** Words that get whole-word merges, so ordinary English tokenizes into a few tokens per word. */
const COMMON_WORDS = (
  'the and to of a in is you that it for on with as are this be at have from or one by not but what ' +
  'all were we when your can said there use an each which she do how their if will up other about out ' +
  'many then them these so some her would make like him into time has look two more write go see number ' +
  'no way could people my than first water been call who its now find long down day did get come made ' +
  'may part over new sound take only little work know place year live me back give most very after thing ' +
  'our just name good sentence man think say great where help through much before line right too mean ' +
  'old any same tell boy follow came want show also around form three small set put end does another ' +
  'well large must big even such because turn here why ask went men read need land different home us ' +
  'move try kind hand picture again change off play spell air away animal house point page letter ' +
  'mother answer found study still learn should world hello model cluster node peer token request ' +
  'response message user assistant system question data file network compute price pay test demo ' +
  'ing ed er ly tion ment ness able est'
).split(' ')

/** GPT-2's reversible byte → printable character mapping used by byte-level BPE vocabularies. */
function byteLevelAlphabet(): string[] {
  const direct: number[] = []
  for (let b = 33; b <= 126; b++) direct.push(b)
  for (let b = 161; b <= 172; b++) direct.push(b)
  for (let b = 174; b <= 255; b++) direct.push(b)
  const isDirect = new Set(direct)
  const out: string[] = new Array<string>(256)
  let shifted = 0
  for (let b = 0; b < 256; b++) {
    out[b] = String.fromCharCode(isDirect.has(b) ? b : 256 + shifted++)
  }
  return out
}

export type SynthVocab = {
  tokens: string[]
  tokenTypes: Int32Array
  merges: string[]
  bosId: number
  eosId: number
  eotId: number
  eomId: number
}

/**
 * Byte-level BPE vocabulary in Llama 3's layout: normal tokens first (256 bytes, merge results,
 * then filler words up to the size), special control tokens at the end.
 */
export function buildVocab(vocabSize: number, specialTokenCount: number): SynthVocab {
  if (specialTokenCount < NAMED_SPECIALS.length) throw new Error('too few special tokens')
  const normalCount = vocabSize - specialTokenCount
  const alphabet = byteLevelAlphabet()
  if (normalCount < alphabet.length) throw new Error('vocabulary too small for the byte tokens')

  const tokens: string[] = [...alphabet]
  const present = new Set(tokens)
  const merges: string[] = []

  const toByteLevel = (text: string): string[] => [...Buffer.from(text, 'utf8')].map((b) => alphabet[b] ?? '')

  // Left-branching merges: each merge joins an already-known token with the next character, so
  // every prefix of the merge list is self-consistent and can be cut to fit a small vocabulary.
  const addWord = (text: string): void => {
    const chars = toByteLevel(text)
    let acc = chars[0] ?? ''
    for (let i = 1; i < chars.length; i++) {
      const next = chars[i] ?? ''
      const joined = acc + next
      if (!present.has(joined)) {
        if (tokens.length >= normalCount) return
        merges.push(`${acc} ${next}`)
        tokens.push(joined)
        present.add(joined)
      }
      acc = joined
    }
  }
  addWord('\n\n')
  addWord('  ')
  addWord('    ')
  for (const word of COMMON_WORDS) {
    addWord(` ${word}`)
    addWord(word)
  }
  for (const word of COMMON_WORDS.slice(0, 40)) addWord(` ${word[0]?.toUpperCase() ?? ''}${word.slice(1)}`)

  // Fillers: pronounceable syllable words, so a random model's output reads as varied gibberish
  // rather than control bytes. They are never produced by tokenizing (no merges lead to them).
  const consonants = 'bcdfghjklmnprstvwz'
  const vowels = 'aeiou'
  const syllables: string[] = []
  for (const c of consonants) for (const v of vowels) syllables.push(c + v)
  const addFiller = (word: string): void => {
    for (const candidate of [alphabet[32] + word, word]) {
      if (tokens.length >= normalCount) return
      if (present.has(candidate)) continue
      tokens.push(candidate)
      present.add(candidate)
    }
  }
  for (const a of syllables) addFiller(a)
  for (const a of syllables) for (const b of syllables) addFiller(a + b)
  outer: for (const a of syllables) {
    for (const b of syllables) {
      for (const c of syllables) {
        if (tokens.length >= normalCount) break outer
        addFiller(a + b + c)
      }
    }
  }
  if (tokens.length < normalCount) throw new Error('vocabulary too large for the filler generator')

  for (let i = 0; i < specialTokenCount; i++) {
    tokens.push(NAMED_SPECIALS[i] ?? `<|reserved_special_token_${i - NAMED_SPECIALS.length + 3}|>`)
  }
  const tokenTypes = new Int32Array(vocabSize)
  tokenTypes.fill(TOKEN_TYPE_NORMAL, 0, normalCount)
  tokenTypes.fill(TOKEN_TYPE_CONTROL, normalCount)
  const special = (name: (typeof NAMED_SPECIALS)[number]): number => normalCount + NAMED_SPECIALS.indexOf(name)
  return {
    tokens,
    tokenTypes,
    merges,
    bosId: special('<|begin_of_text|>'),
    // Llama 3.x instruct GGUFs end generation on <|eot_id|>, so that is the EOS here too.
    eosId: special('<|eot_id|>'),
    eotId: special('<|eot_id|>'),
    eomId: special('<|eom_id|>'),
  }
}

type TensorPlan = GgufTensorHeader & { fill: 'ones' | 'random' }

function planTensors(p: SynthPreset): TensorPlan[] {
  const headDim = p.embeddingLength / p.headCount
  const kvDim = headDim * p.headCountKv
  const list: Omit<TensorPlan, 'offset'>[] = []
  const matrix = (name: string, dims: number[]): void => {
    list.push({ name, dims, ggmlType: GGML_TYPE_Q8_0, fill: 'random' })
  }
  const norm = (name: string, width = p.embeddingLength): void => {
    list.push({ name, dims: [width], ggmlType: GGML_TYPE_F32, fill: 'ones' })
  }
  // Embeddings are tied (no output.weight), as in Llama 3.2 1B: llama.cpp reuses token_embd.
  matrix('token_embd.weight', [p.embeddingLength, p.vocabSize])
  norm('output_norm.weight')
  // The ranking head maps the last token's hidden state to one logit per label.
  if (p.rerank) matrix('cls.output.weight', [p.embeddingLength, RERANK_LABELS.length])
  for (let i = 0; i < p.blockCount; i++) {
    norm(`blk.${i}.attn_norm.weight`)
    matrix(`blk.${i}.attn_q.weight`, [p.embeddingLength, p.embeddingLength])
    if (p.architecture === 'qwen3') {
      norm(`blk.${i}.attn_q_norm.weight`, headDim)
      norm(`blk.${i}.attn_k_norm.weight`, headDim)
    }
    matrix(`blk.${i}.attn_k.weight`, [p.embeddingLength, kvDim])
    matrix(`blk.${i}.attn_v.weight`, [p.embeddingLength, kvDim])
    matrix(`blk.${i}.attn_output.weight`, [p.embeddingLength, p.embeddingLength])
    norm(`blk.${i}.ffn_norm.weight`)
    matrix(`blk.${i}.ffn_gate.weight`, [p.embeddingLength, p.feedForwardLength])
    matrix(`blk.${i}.ffn_up.weight`, [p.embeddingLength, p.feedForwardLength])
    matrix(`blk.${i}.ffn_down.weight`, [p.feedForwardLength, p.embeddingLength])
  }
  let offset = 0
  return list.map((t) => {
    const planned = { ...t, offset }
    offset = alignUp(offset + byteSize(t), GGUF_DEFAULT_ALIGNMENT)
    return planned
  })
}

function byteSize(t: Pick<GgufTensorHeader, 'ggmlType' | 'dims'>): number {
  const size = tensorByteSize(t.ggmlType, t.dims)
  if (size === undefined) throw new Error(`tensor shape [${t.dims.join(', ')}] does not fit its type`)
  return Number(size)
}

function buildMetadata(p: SynthPreset, name: string, vocab: SynthVocab): Map<string, GgufKv> {
  const headDim = p.embeddingLength / p.headCount
  const arch = p.architecture
  const metadata = new Map<string, GgufKv>([
    ['general.architecture', kv.string(arch)],
    ['general.type', kv.string('model')],
    ['general.name', kv.string(name)],
    ['general.file_type', kv.u32(FILE_TYPE_MOSTLY_Q8_0)],
    ['general.quantization_version', kv.u32(2)],
    ['general.alignment', kv.u32(GGUF_DEFAULT_ALIGNMENT)],
    [`${arch}.vocab_size`, kv.u32(p.vocabSize)],
    [`${arch}.context_length`, kv.u32(p.contextLength)],
    [`${arch}.embedding_length`, kv.u32(p.embeddingLength)],
    [`${arch}.block_count`, kv.u32(p.blockCount)],
    [`${arch}.feed_forward_length`, kv.u32(p.feedForwardLength)],
    [`${arch}.rope.dimension_count`, kv.u32(headDim)],
    [`${arch}.rope.freq_base`, kv.f32(p.ropeFreqBase)],
    [`${arch}.attention.head_count`, kv.u32(p.headCount)],
    [`${arch}.attention.head_count_kv`, kv.u32(p.headCountKv)],
    [`${arch}.attention.layer_norm_rms_epsilon`, kv.f32(p.rmsEpsilon)],
    ['tokenizer.ggml.model', kv.string('gpt2')],
    ['tokenizer.ggml.pre', kv.string('llama-bpe')],
    ['tokenizer.ggml.tokens', kv.strings(vocab.tokens)],
    ['tokenizer.ggml.token_type', kv.i32s(vocab.tokenTypes)],
    ['tokenizer.ggml.merges', kv.strings(vocab.merges)],
    ['tokenizer.ggml.bos_token_id', kv.u32(vocab.bosId)],
    ['tokenizer.ggml.eos_token_id', kv.u32(vocab.eosId)],
    ['tokenizer.ggml.eot_token_id', kv.u32(vocab.eotId)],
    ['tokenizer.ggml.eom_token_id', kv.u32(vocab.eomId)],
    ['tokenizer.ggml.add_bos_token', kv.bool(true)],
    ['tokenizer.ggml.add_eos_token', kv.bool(false)],
    ['tokenizer.chat_template', kv.string(LLAMA3_CHAT_TEMPLATE)],
  ])
  if (p.rerank) {
    metadata.set(`${arch}.pooling_type`, kv.u32(POOLING_TYPE_RANK))
    metadata.set(`${arch}.classifier.output_labels`, kv.strings(RERANK_LABELS))
    metadata.set('tokenizer.chat_template.rerank', kv.string(RERANK_TEMPLATE))
  }
  return metadata
}

/** llama.cpp's LLAMA_POOLING_TYPE_RANK. */
const POOLING_TYPE_RANK = 4

/** xorshift128: fast, seedable, and plenty random for weights nobody will train. */
function makeRng(seed: number): () => number {
  // splitmix32 spreads a small seed over the whole state, which must not be all zero.
  let s = seed >>> 0
  const mix = (): number => {
    s = (s + 0x9e3779b9) >>> 0
    let z = s
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
    return (z ^ (z >>> 16)) >>> 0
  }
  let a = mix() | 1
  let b = mix()
  let c = mix()
  let d = mix()
  return () => {
    const t = a ^ (a << 11)
    a = b
    b = c
    c = d
    d = (d ^ (d >>> 19) ^ (t ^ (t >>> 8))) >>> 0
    return d
  }
}

const f32Scratch = new Float32Array(1)
const u32Scratch = new Uint32Array(f32Scratch.buffer)

/** float32 → IEEE half bits (truncating); q8_0 block scales are halves. */
function toHalfBits(value: number): number {
  f32Scratch[0] = value
  const x = u32Scratch[0] ?? 0
  const sign = (x >>> 16) & 0x8000
  const exp = ((x >>> 23) & 0xff) - 127 + 15
  const mant = x & 0x7fffff
  if (exp >= 31) return sign | 0x7c00
  if (exp <= 0) {
    if (exp < -10) return sign
    return sign | ((mant | 0x800000) >>> (14 - exp))
  }
  return sign | (exp << 10) | (mant >>> 13)
}

const Q8_0_BLOCK_BYTES = 34
const POOL_BLOCKS = 1 << 16
const RUN_BLOCKS = 512

/**
 * A pool of random q8_0 blocks. Tensors are assembled from runs copied out of it at random
 * offsets: a memcpy per run instead of a PRNG call per weight is what lets 1.3 GB go out in
 * seconds. Every q8_0 block is self-contained, so any sequence of pool blocks is a valid tensor.
 */
function makeQ8Pool(rng: () => number): Buffer {
  const pool = Buffer.allocUnsafe(POOL_BLOCKS * Q8_0_BLOCK_BYTES)
  // Uniform int8 has a std of ~73; scaling to ~0.02 per weight keeps activations in range with
  // RMSNorm in front of every matmul, so logits stay finite and fairly flat (varied sampling).
  const baseScale = 0.02 / 73
  for (let blk = 0; blk < POOL_BLOCKS; blk++) {
    const at = blk * Q8_0_BLOCK_BYTES
    const jitter = 0.75 + (rng() / 0x1_0000_0000) * 0.5
    pool.writeUInt16LE(toHalfBits(baseScale * jitter), at)
    for (let i = 0; i < 32; i += 4) {
      const r = rng()
      pool[at + 2 + i] = r & 0xff
      pool[at + 3 + i] = (r >>> 8) & 0xff
      pool[at + 4 + i] = (r >>> 16) & 0xff
      pool[at + 5 + i] = r >>> 24
    }
  }
  return pool
}

const CHUNK_BYTES = 8 * 1024 * 1024

/**
 * Sequential writer with two alternating buffers: one fills while the other is being written, so
 * memory stays at two chunks and the disk never waits on the generator (or the reverse).
 */
class ChunkWriter {
  private readonly bufs = [Buffer.allocUnsafe(CHUNK_BYTES), Buffer.allocUnsafe(CHUNK_BYTES)] as const
  private current: 0 | 1 = 0
  private used = 0
  private pending: Promise<void> | undefined
  private failure: unknown
  written = 0

  /** Bytes handed to the writer so far, flushed or not. */
  get position(): number {
    return this.written + this.used
  }

  constructor(
    private readonly fh: FileHandle,
    private readonly signal: AbortSignal | undefined,
  ) {}

  async write(src: Uint8Array): Promise<void> {
    let from = 0
    while (from < src.length) {
      const buf = this.bufs[this.current]
      const n = Math.min(CHUNK_BYTES - this.used, src.length - from)
      buf.set(src.subarray(from, from + n), this.used)
      this.used += n
      from += n
      if (this.used === CHUNK_BYTES) await this.flush()
    }
  }

  async fill(byte: number, count: number): Promise<void> {
    let left = count
    while (left > 0) {
      const n = Math.min(CHUNK_BYTES - this.used, left)
      this.bufs[this.current].fill(byte, this.used, this.used + n)
      this.used += n
      left -= n
      if (this.used === CHUNK_BYTES) await this.flush()
    }
  }

  async flush(): Promise<void> {
    this.signal?.throwIfAborted()
    await this.settle()
    if (this.used === 0) return
    const data = this.bufs[this.current].subarray(0, this.used)
    // Caught at once and rethrown by the next settle(): a write failing (ENOSPC) while the other
    // buffer fills must not surface as an unhandled rejection, which would kill the process.
    this.pending = writeAll(this.fh, data).catch((err: unknown) => {
      this.failure ??= err
    })
    this.written += data.length
    this.current = this.current === 0 ? 1 : 0
    this.used = 0
  }

  async finish(): Promise<void> {
    await this.flush()
    await this.settle()
  }

  /** Waits for the in-flight write; also used before closing the file after an error. */
  async settle(): Promise<void> {
    await this.pending
    this.pending = undefined
    if (this.failure !== undefined) throw this.failure
  }
}

async function writeAll(fh: FileHandle, data: Uint8Array): Promise<void> {
  let from = 0
  while (from < data.length) {
    const { bytesWritten } = await fh.write(data, from, data.length - from)
    from += bytesWritten
  }
}

/**
 * Writes a random-weight GGUF (llama or qwen3) for a preset. The file appears under its final name only when
 * complete (written beside it, then renamed), so a reader never sees a half-written model.
 */
export async function synthesizeGguf(opts: SynthesizeOptions): Promise<SynthesizeResult> {
  const preset = SYNTH_PRESETS[opts.preset]
  if (!preset) throw new Error(`unknown synth preset: ${String(opts.preset)}`)
  opts.signal?.throwIfAborted()
  const out = resolve(opts.out)
  const rng = makeRng(opts.seed ?? 0x5eed)

  const vocab = buildVocab(preset.vocabSize, preset.specialTokenCount)
  const tensors = planTensors(preset)
  const metadata = buildMetadata(preset, opts.name ?? preset.label, vocab)
  for (const key of opts.omitKeys ?? []) metadata.delete(key)
  const header = encodeGgufHeader(metadata, tensors, GGUF_DEFAULT_ALIGNMENT)

  await mkdir(dirname(out), { recursive: true })
  const partial = `${out}.${process.pid}.${Date.now()}.partial`
  const fh = await open(partial, 'w')
  const writer = new ChunkWriter(fh, opts.signal)
  try {
    await writer.write(header)
    const pool = makeQ8Pool(rng)
    const ones = Buffer.alloc(preset.embeddingLength * 4)
    for (let i = 0; i < preset.embeddingLength; i++) ones.writeFloatLE(1, i * 4)

    const dataStart = header.length
    for (const t of tensors) {
      await writer.fill(0, dataStart + t.offset - writer.position)
      if (t.fill === 'ones') {
        await writer.write(ones.subarray(0, byteSize(t)))
        continue
      }
      let blocks = byteSize(t) / Q8_0_BLOCK_BYTES
      while (blocks > 0) {
        const run = Math.min(RUN_BLOCKS, blocks)
        const start = rng() % (POOL_BLOCKS - run + 1)
        await writer.write(pool.subarray(start * Q8_0_BLOCK_BYTES, (start + run) * Q8_0_BLOCK_BYTES))
        blocks -= run
      }
    }
    await writer.finish()
    await fh.close()
    await rename(partial, out)
    return { path: out, bytes: writer.written, preset: opts.preset }
  } catch (err) {
    await writer.settle().catch(() => undefined)
    await fh.close().catch(() => undefined)
    await rm(partial, { force: true })
    throw err
  }
}
