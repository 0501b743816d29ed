// Reads and vets GGUF model files before llama.cpp sees them: llama.cpp aborts the whole process
// (an uncatchable assert) on some malformed models, so anything not produced by us is checked here first.
import { createHash } from 'node:crypto'
import type { FileHandle } from 'node:fs/promises'
import { open, stat } from 'node:fs/promises'
import { basename } from 'node:path'
import type { GgufFileInfo } from 'node-llama-cpp'
import { GgufFileType, readGgufFileInfo } from 'node-llama-cpp'
import {
  alignUp,
  GGML_TYPE_LAYOUT,
  GGUF_DEFAULT_ALIGNMENT,
  GGUF_MAGIC,
  GgufValueType,
  tensorByteSize,
} from './gguf-format.ts'

export type GgufSummary = {
  name: string
  architecture: string
  contextLength: number
  embeddingLength: number
  blockCount: number
  /** Label of `general.file_type` ("Q8_0", "Q4_K_M", "F16"…), else of the dominant tensor type. */
  quantization: string
  /** Sum of all tensor element counts (for a split model: this part only). */
  parameterCount: number
  sizeBytes: number
  hasChatTemplate: boolean
}

/** The file is not a model we can hand to llama.cpp. The message says why, for humans. */
export class InvalidModelError extends Error {
  override name = 'InvalidModelError'
  readonly path: string

  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super(`${path}: ${message}`, options)
    this.path = path
  }
}

/**
 * Architectures we accept, with the keys llama.cpp reads without a default for them (all are
 * RMSNorm transformers; a missing feed_forward_length or head_count kills the process).
 */
const ARCHITECTURE_KEYS: ReadonlyMap<string, readonly string[]> = new Map(
  ['llama', 'qwen2', 'qwen3', 'mistral3', 'phi3', 'gemma2', 'gemma3'].map((arch) => [
    arch,
    [
      'context_length',
      'embedding_length',
      'block_count',
      'feed_forward_length',
      'attention.head_count',
      'attention.layer_norm_rms_epsilon',
    ].map((key) => `${arch}.${key}`),
  ]),
)

export const SUPPORTED_ARCHITECTURES: readonly string[] = [...ARCHITECTURE_KEYS.keys()]

/** llama.cpp's LLAMA_MAX_LAYERS; more layers is an assert, not an error. */
const MAX_LAYERS = 512
const MAX_TENSORS = 1_000_000
const MAX_KVS = 1_000_000
const GGML_MAX_DIMS = 4
const GGML_MAX_NAME = 64

type ScannedTensor = { name: string; dims: bigint[]; ggmlType: number; offset: bigint }
type HeaderScan = { version: number; alignment: number; dataStart: number; tensors: ScannedTensor[] }

class Truncated extends Error {}
class Malformed extends Error {}

const SCALAR_SIZES: ReadonlyMap<number, number> = new Map([
  [GgufValueType.UINT8, 1],
  [GgufValueType.INT8, 1],
  [GgufValueType.BOOL, 1],
  [GgufValueType.UINT16, 2],
  [GgufValueType.INT16, 2],
  [GgufValueType.UINT32, 4],
  [GgufValueType.INT32, 4],
  [GgufValueType.FLOAT32, 4],
  [GgufValueType.UINT64, 8],
  [GgufValueType.INT64, 8],
  [GgufValueType.FLOAT64, 8],
])

/**
 * Bounds-checked sequential reader over the header. node-llama-cpp's parser trusts lengths and
 * counts (it reads zeros past the end and allocates whatever a length says), so a hostile or
 * truncated file is walked here first.
 */
class HeaderReader {
  private buf: Buffer = Buffer.alloc(0)
  private bufStart = 0
  pos = 0

  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    private readonly signal: AbortSignal | undefined,
  ) {}

  private async ensure(n: number): Promise<number> {
    if (this.pos + n > this.size) throw new Truncated(`header ends past the end of the file (at byte ${this.pos})`)
    const at = this.pos - this.bufStart
    if (at >= 0 && at + n <= this.buf.length) return at
    this.signal?.throwIfAborted()
    const len = Math.min(Math.max(n, 1 << 20), this.size - this.pos)
    const b = Buffer.allocUnsafe(len)
    const { bytesRead } = await this.fh.read(b, 0, len, this.pos)
    if (bytesRead < n) throw new Truncated(`file shrank while reading (at byte ${this.pos})`)
    this.buf = b.subarray(0, bytesRead)
    this.bufStart = this.pos
    return 0
  }

  async u32(): Promise<number> {
    const at = await this.ensure(4)
    this.pos += 4
    return this.buf.readUInt32LE(at)
  }

  async u64(): Promise<bigint> {
    const at = await this.ensure(8)
    this.pos += 8
    return this.buf.readBigUInt64LE(at)
  }

  /** A u64 length or count that must fit in what is left of the file (`unit` bytes per item at least). */
  async count(what: string, unit: number): Promise<number> {
    const n = await this.u64()
    if (n * BigInt(unit) > BigInt(this.size - this.pos)) {
      throw new Truncated(`${what} (${n}) runs past the end of the file`)
    }
    return Number(n)
  }

  skip(n: number): void {
    if (this.pos + n > this.size) throw new Truncated(`header ends past the end of the file (at byte ${this.pos})`)
    this.pos += n
  }

  async string(what: string): Promise<string> {
    const len = await this.count(`${what} length`, 1)
    const at = await this.ensure(len)
    this.pos += len
    return this.buf.toString('utf8', at, at + len)
  }

  async skipString(what: string): Promise<void> {
    this.skip(await this.count(`${what} length`, 1))
  }
}

async function scanHeader(fh: FileHandle, size: number, signal: AbortSignal | undefined): Promise<HeaderScan> {
  const r = new HeaderReader(fh, size, signal)
  if (size < 4 || (await r.u32()) !== GGUF_MAGIC) throw new Malformed('not a GGUF file (bad magic)')
  const version = await r.u32()
  if (version !== 2 && version !== 3) throw new Malformed(`unsupported GGUF version ${version}`)
  const tensorCount = await r.u64()
  const kvCount = await r.u64()
  if (tensorCount > BigInt(MAX_TENSORS)) throw new Malformed(`implausible tensor count ${tensorCount}`)
  if (kvCount > BigInt(MAX_KVS)) throw new Malformed(`implausible metadata count ${kvCount}`)

  let alignment = GGUF_DEFAULT_ALIGNMENT
  const keys = new Set<string>()
  for (let i = 0; i < Number(kvCount); i++) {
    const key = await r.string('metadata key')
    if (key === '' || keys.has(key)) throw new Malformed(`empty or duplicate metadata key "${key}"`)
    keys.add(key)
    const type = await r.u32()
    if (type === GgufValueType.STRING) {
      await r.skipString(key)
    } else if (type === GgufValueType.ARRAY) {
      const itemType = await r.u32()
      if (itemType === GgufValueType.STRING) {
        const n = await r.count(`${key} item count`, 8)
        for (let j = 0; j < n; j++) await r.skipString(key)
      } else {
        const itemSize = SCALAR_SIZES.get(itemType)
        if (itemSize === undefined)
          throw new Malformed(`metadata "${key}" has an array of unsupported type ${itemType}`)
        r.skip((await r.count(`${key} item count`, itemSize)) * itemSize)
      }
    } else {
      const valueSize = SCALAR_SIZES.get(type)
      if (valueSize === undefined) throw new Malformed(`metadata "${key}" has unsupported type ${type}`)
      if (key === 'general.alignment') {
        if (type !== GgufValueType.UINT32) throw new Malformed('general.alignment must be a uint32')
        alignment = await r.u32()
        if (alignment === 0 || (alignment & (alignment - 1)) !== 0) {
          throw new Malformed(`alignment ${alignment} is not a power of two`)
        }
      } else {
        r.skip(valueSize)
      }
    }
  }

  const tensors: ScannedTensor[] = []
  const names = new Set<string>()
  for (let i = 0; i < Number(tensorCount); i++) {
    const name = await r.string('tensor name')
    if (Buffer.byteLength(name) >= GGML_MAX_NAME) throw new Malformed(`tensor name too long: "${name.slice(0, 80)}"`)
    if (names.has(name)) throw new Malformed(`duplicate tensor "${name}"`)
    names.add(name)
    const nDims = await r.u32()
    if (nDims === 0 || nDims > GGML_MAX_DIMS) throw new Malformed(`tensor "${name}" has ${nDims} dimensions`)
    const dims: bigint[] = []
    for (let d = 0; d < nDims; d++) dims.push(await r.u64())
    const ggmlType = await r.u32()
    const offset = await r.u64()
    tensors.push({ name, dims, ggmlType, offset })
  }
  return { version, alignment, dataStart: alignUp(r.pos, alignment), tensors }
}

/**
 * Checks every tensor's type and that the data section is laid out the way llama.cpp expects
 * (contiguous, aligned) and is all there.
 */
function checkTensorData(path: string, scan: HeaderScan, size: number): void {
  let expected = 0n
  const alignment = BigInt(scan.alignment)
  for (const t of scan.tensors) {
    const layout = GGML_TYPE_LAYOUT.get(t.ggmlType)
    if (!layout) throw new InvalidModelError(path, `tensor "${t.name}" has unsupported ggml type ${t.ggmlType}`)
    const bytes = tensorByteSize(t.ggmlType, t.dims)
    if (bytes === undefined) {
      throw new InvalidModelError(path, `tensor "${t.name}" rows are not whole ${layout.name} blocks`)
    }
    if (t.offset !== expected) {
      throw new InvalidModelError(path, `tensor "${t.name}" is at offset ${t.offset}, expected ${expected}`)
    }
    const end = BigInt(scan.dataStart) + t.offset + bytes
    if (end > BigInt(size)) {
      throw new InvalidModelError(
        path,
        `truncated: tensor "${t.name}" ends at byte ${end} but the file has ${size} bytes`,
      )
    }
    expected = ((t.offset + bytes + alignment - 1n) / alignment) * alignment
  }
}

type ReadModel = { info: GgufFileInfo; scan: HeaderScan; size: number }

async function readModel(path: string, signal: AbortSignal | undefined): Promise<ReadModel> {
  let size: number
  try {
    const st = await stat(path)
    if (!st.isFile()) throw new InvalidModelError(path, 'not a regular file')
    size = st.size
  } catch (err) {
    if (err instanceof InvalidModelError) throw err
    const code = (err as NodeJS.ErrnoException).code
    throw new InvalidModelError(path, code === 'ENOENT' ? 'model file not found' : `cannot read model file (${code})`, {
      cause: err,
    })
  }
  let scan: HeaderScan
  const fh = await open(path, 'r').catch((err: unknown) => {
    throw new InvalidModelError(path, `cannot open model file (${(err as NodeJS.ErrnoException).code})`, { cause: err })
  })
  try {
    scan = await scanHeader(fh, size, signal)
  } catch (err) {
    signal?.throwIfAborted()
    if (err instanceof Truncated) throw new InvalidModelError(path, `truncated: ${err.message}`)
    if (err instanceof Malformed) throw new InvalidModelError(path, err.message)
    throw err
  } finally {
    await fh.close()
  }
  try {
    const info = await readGgufFileInfo(path, {
      sourceType: 'filesystem',
      spliceSplitFiles: false,
      logWarnings: false,
      ...(signal ? { signal } : {}),
    })
    return { info, scan, size }
  } catch (err) {
    signal?.throwIfAborted()
    throw new InvalidModelError(path, `unreadable GGUF header: ${(err as Error).message}`, { cause: err })
  }
}

/** Reads a dotted key ("llama.attention.head_count") out of node-llama-cpp's nested metadata. */
function metaValue(info: GgufFileInfo, key: string): unknown {
  let node: unknown = info.metadata
  for (const part of key.split('.')) {
    if (node === null || typeof node !== 'object') return undefined
    node = (node as Record<string, unknown>)[part]
  }
  return node
}

function asNumber(v: unknown): number | undefined {
  if (typeof v === 'number') return v
  if (typeof v === 'bigint') return Number(v)
  return undefined
}

function quantizationLabel(info: GgufFileInfo, scan: HeaderScan): string {
  const fileType = asNumber(metaValue(info, 'general.file_type'))
  const named = fileType === undefined ? undefined : (GgufFileType as unknown as Record<number, string>)[fileType]
  if (named) return named.replace(/^(MOSTLY|ALL)_/, '')
  // No (or an unknown) file type: name it after the type holding the most bytes.
  const bytesByType = new Map<number, bigint>()
  for (const t of scan.tensors) {
    const bytes = tensorByteSize(t.ggmlType, t.dims) ?? 0n
    bytesByType.set(t.ggmlType, (bytesByType.get(t.ggmlType) ?? 0n) + bytes)
  }
  let best: number | undefined
  for (const [type, bytes] of bytesByType) if (best === undefined || bytes > (bytesByType.get(best) ?? 0n)) best = type
  return best === undefined ? 'unknown' : (GGML_TYPE_LAYOUT.get(best)?.name ?? `type ${best}`)
}

function summarize(path: string, { info, scan, size }: ReadModel): GgufSummary {
  const architecture = String(metaValue(info, 'general.architecture') ?? 'unknown')
  const name = metaValue(info, 'general.name')
  const template = metaValue(info, 'tokenizer.chat_template')
  let parameterCount = 0n
  for (const t of scan.tensors) parameterCount += t.dims.reduce((a, b) => a * b, 1n)
  return {
    name: typeof name === 'string' && name !== '' ? name : basename(path).replace(/\.gguf$/i, ''),
    architecture,
    contextLength: asNumber(metaValue(info, `${architecture}.context_length`)) ?? 0,
    embeddingLength: asNumber(metaValue(info, `${architecture}.embedding_length`)) ?? 0,
    blockCount: asNumber(metaValue(info, `${architecture}.block_count`)) ?? 0,
    quantization: quantizationLabel(info, scan),
    parameterCount: Number(parameterCount),
    sizeBytes: size,
    hasChatTemplate: typeof template === 'string' && template.trim() !== '',
  }
}

/** Header-only summary of a GGUF file. Does not vouch that llama.cpp can load it: see validateGguf. */
export async function inspectGguf(path: string, opts?: { signal?: AbortSignal }): Promise<GgufSummary> {
  return summarize(path, await readModel(path, opts?.signal))
}

const isPositiveInt = (v: unknown): boolean => {
  const n = asNumber(v)
  return n !== undefined && Number.isInteger(n) && n > 0
}

/** A per-layer array is allowed where llama.cpp reads the key "or array". */
const isPositiveIntOrArray = (v: unknown): boolean =>
  Array.isArray(v) ? v.length > 0 && v.every(isPositiveInt) : isPositiveInt(v)

function checkArchitecture(path: string, info: GgufFileInfo, scan: HeaderScan): void {
  const arch = metaValue(info, 'general.architecture')
  if (typeof arch !== 'string' || arch === '') throw new InvalidModelError(path, 'missing general.architecture')
  const keys = ARCHITECTURE_KEYS.get(arch)
  if (!keys) {
    throw new InvalidModelError(
      path,
      `unsupported architecture "${arch}" (supported: ${SUPPORTED_ARCHITECTURES.join(', ')})`,
    )
  }
  const missing = keys.filter((k) => metaValue(info, k) === undefined)
  if (missing.length > 0) throw new InvalidModelError(path, `missing required metadata: ${missing.join(', ')}`)

  for (const k of [`${arch}.context_length`, `${arch}.embedding_length`, `${arch}.block_count`]) {
    if (!isPositiveInt(metaValue(info, k))) throw new InvalidModelError(path, `${k} must be a positive integer`)
  }
  for (const k of [`${arch}.feed_forward_length`, `${arch}.attention.head_count`]) {
    if (!isPositiveIntOrArray(metaValue(info, k))) {
      throw new InvalidModelError(path, `${k} must be a positive integer (or one per layer)`)
    }
  }
  const headCountKv = metaValue(info, `${arch}.attention.head_count_kv`)
  if (headCountKv !== undefined && !isPositiveIntOrArray(headCountKv)) {
    throw new InvalidModelError(path, `${arch}.attention.head_count_kv must be a positive integer (or one per layer)`)
  }
  const eps = asNumber(metaValue(info, `${arch}.attention.layer_norm_rms_epsilon`))
  if (eps === undefined || !Number.isFinite(eps) || eps <= 0) {
    throw new InvalidModelError(path, `${arch}.attention.layer_norm_rms_epsilon must be a positive number`)
  }
  const blockCount = asNumber(metaValue(info, `${arch}.block_count`)) ?? 0
  if (blockCount > MAX_LAYERS)
    throw new InvalidModelError(path, `${blockCount} layers is more than llama.cpp's ${MAX_LAYERS}`)

  // Expert counts are asserted on, not checked, by llama.cpp.
  const experts = asNumber(metaValue(info, `${arch}.expert_count`)) ?? 0
  const expertsUsed = metaValue(info, `${arch}.expert_used_count`)
  const usedMax = Array.isArray(expertsUsed)
    ? Math.max(0, ...expertsUsed.map((v) => asNumber(v) ?? 0))
    : (asNumber(expertsUsed) ?? 0)
  if (experts > 1024 || usedMax > experts || (experts > 0 && usedMax === 0)) {
    throw new InvalidModelError(path, `inconsistent expert counts (${experts} experts, ${usedMax} used)`)
  }

  // A head size that truncates to 0, or K/V heads that do not divide the query heads, end in
  // ggml asserts (at load or at the first decode), so they are caught here.
  const embd = asNumber(metaValue(info, `${arch}.embedding_length`)) ?? 0
  const nHead = asNumber(metaValue(info, `${arch}.attention.head_count`))
  const nHeadKv = asNumber(headCountKv)
  if (nHead !== undefined) {
    if (metaValue(info, `${arch}.attention.key_length`) === undefined && embd % nHead !== 0) {
      throw new InvalidModelError(path, `embedding_length ${embd} is not a multiple of head_count ${nHead}`)
    }
    if (nHeadKv !== undefined && nHead % nHeadKv !== 0) {
      throw new InvalidModelError(path, `head_count ${nHead} is not a multiple of head_count_kv ${nHeadKv}`)
    }
  }

  if (arch === 'llama') checkLlama(path, info, scan)
}

function checkLlama(path: string, info: GgufFileInfo, scan: HeaderScan): void {
  const embd = asNumber(metaValue(info, 'llama.embedding_length')) ?? 0
  const heads = metaValue(info, 'llama.attention.head_count')
  const blocks = asNumber(metaValue(info, 'llama.block_count')) ?? 0
  const nHead = asNumber(heads)
  const keyLength = asNumber(metaValue(info, 'llama.attention.key_length'))
  const rot = asNumber(metaValue(info, 'llama.rope.dimension_count'))
  if (nHead !== undefined && rot !== undefined) {
    const headDim = keyLength ?? embd / nHead
    if (rot !== headDim) {
      throw new InvalidModelError(path, `rope.dimension_count ${rot} differs from the head size ${headDim}`)
    }
  }
  const names = new Map(scan.tensors.map((t) => [t.name, t]))
  const required = ['token_embd.weight', 'output_norm.weight']
  for (let i = 0; i < blocks; i++) {
    required.push(`blk.${i}.attn_norm.weight`, `blk.${i}.attn_output.weight`, `blk.${i}.ffn_norm.weight`)
  }
  const absent = required.filter((n) => !names.has(n))
  if (absent.length > 0) {
    const shown = absent.slice(0, 5).join(', ') + (absent.length > 5 ? `, … (${absent.length} in all)` : '')
    throw new InvalidModelError(path, `missing tensors: ${shown}`)
  }
  const embdDims = names.get('token_embd.weight')?.dims
  if (embdDims?.[0] !== BigInt(embd)) {
    throw new InvalidModelError(path, `token_embd.weight rows are ${embdDims?.[0]} wide, expected ${embd}`)
  }
}

function checkTokenizer(path: string, info: GgufFileInfo): void {
  const model = metaValue(info, 'tokenizer.ggml.model')
  if (typeof model !== 'string' || model === '') throw new InvalidModelError(path, 'missing tokenizer.ggml.model')
  const tokens = metaValue(info, 'tokenizer.ggml.tokens')
  if (!Array.isArray(tokens) || tokens.length === 0 || typeof tokens[0] !== 'string') {
    throw new InvalidModelError(path, 'missing tokenizer.ggml.tokens')
  }
  if (model === 'gpt2') {
    const merges = metaValue(info, 'tokenizer.ggml.merges')
    if (!Array.isArray(merges)) throw new InvalidModelError(path, 'gpt2 tokenizer without tokenizer.ggml.merges')
  }
  const types = metaValue(info, 'tokenizer.ggml.token_type')
  if (types !== undefined && (!Array.isArray(types) || types.length < tokens.length)) {
    throw new InvalidModelError(path, 'tokenizer.ggml.token_type is shorter than the token list')
  }
}

/**
 * Throws InvalidModelError unless the file is a complete GGUF of a supported architecture with
 * the metadata llama.cpp needs; returns its summary. Reads the header only (plus the file size).
 */
export async function validateGguf(path: string, opts?: { signal?: AbortSignal }): Promise<GgufSummary> {
  const model = await readModel(path, opts?.signal)
  checkTensorData(path, model.scan, model.size)
  checkArchitecture(path, model.info, model.scan)
  checkTokenizer(path, model.info)
  return summarize(path, model)
}

/** Streaming SHA-256 of a file, hex-encoded; a model is never held in memory to hash it. */
export async function sha256File(path: string, opts?: { signal?: AbortSignal }): Promise<string> {
  const hash = createHash('sha256')
  const fh = await open(path, 'r')
  try {
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024)
    for (;;) {
      opts?.signal?.throwIfAborted()
      const { bytesRead } = await fh.read(buf, 0, buf.length, null)
      if (bytesRead === 0) break
      hash.update(buf.subarray(0, bytesRead))
    }
  } finally {
    await fh.close()
  }
  return hash.digest('hex')
}
