// The bits of the GGUF container format that both the synthesizer and the validator need:
// value type tags, ggml tensor type sizes, file-type codes and a header encoder.

/** Value type tags of GGUF metadata (gguf.h `enum gguf_type`). */
export const GgufValueType = {
  UINT8: 0,
  INT8: 1,
  UINT16: 2,
  INT16: 3,
  UINT32: 4,
  INT32: 5,
  FLOAT32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
  UINT64: 10,
  INT64: 11,
  FLOAT64: 12,
} as const

/** ggml tensor types the synthesizer writes. */
export const GGML_TYPE_F32 = 0
export const GGML_TYPE_Q8_0 = 8

/** `general.file_type` values the synthesizer writes (llama.h `enum llama_ftype`). */
export const FILE_TYPE_ALL_F32 = 0
export const FILE_TYPE_MOSTLY_Q8_0 = 7

export const GGUF_MAGIC = 0x46554747 // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3
export const GGUF_DEFAULT_ALIGNMENT = 32

/**
 * Elements per block and bytes per block of each ggml type (ggml-common.h). The validator needs
 * them to know where each tensor's data ends; types removed from ggml are left out on purpose so
 * that a file using them is rejected instead of being handed to llama.cpp.
 */
export const GGML_TYPE_LAYOUT: ReadonlyMap<number, { name: string; blockSize: number; typeSize: number }> = new Map([
  [0, { name: 'F32', blockSize: 1, typeSize: 4 }],
  [1, { name: 'F16', blockSize: 1, typeSize: 2 }],
  [2, { name: 'Q4_0', blockSize: 32, typeSize: 18 }],
  [3, { name: 'Q4_1', blockSize: 32, typeSize: 20 }],
  [6, { name: 'Q5_0', blockSize: 32, typeSize: 22 }],
  [7, { name: 'Q5_1', blockSize: 32, typeSize: 24 }],
  [8, { name: 'Q8_0', blockSize: 32, typeSize: 34 }],
  [9, { name: 'Q8_1', blockSize: 32, typeSize: 36 }],
  [10, { name: 'Q2_K', blockSize: 256, typeSize: 84 }],
  [11, { name: 'Q3_K', blockSize: 256, typeSize: 110 }],
  [12, { name: 'Q4_K', blockSize: 256, typeSize: 144 }],
  [13, { name: 'Q5_K', blockSize: 256, typeSize: 176 }],
  [14, { name: 'Q6_K', blockSize: 256, typeSize: 210 }],
  [15, { name: 'Q8_K', blockSize: 256, typeSize: 292 }],
  [16, { name: 'IQ2_XXS', blockSize: 256, typeSize: 66 }],
  [17, { name: 'IQ2_XS', blockSize: 256, typeSize: 74 }],
  [18, { name: 'IQ3_XXS', blockSize: 256, typeSize: 98 }],
  [19, { name: 'IQ1_S', blockSize: 256, typeSize: 50 }],
  [20, { name: 'IQ4_NL', blockSize: 32, typeSize: 18 }],
  [21, { name: 'IQ3_S', blockSize: 256, typeSize: 110 }],
  [22, { name: 'IQ2_S', blockSize: 256, typeSize: 82 }],
  [23, { name: 'IQ4_XS', blockSize: 256, typeSize: 136 }],
  [24, { name: 'I8', blockSize: 1, typeSize: 1 }],
  [25, { name: 'I16', blockSize: 1, typeSize: 2 }],
  [26, { name: 'I32', blockSize: 1, typeSize: 4 }],
  [27, { name: 'I64', blockSize: 1, typeSize: 8 }],
  [28, { name: 'F64', blockSize: 1, typeSize: 8 }],
  [29, { name: 'IQ1_M', blockSize: 256, typeSize: 56 }],
  [30, { name: 'BF16', blockSize: 1, typeSize: 2 }],
  [34, { name: 'TQ1_0', blockSize: 256, typeSize: 54 }],
  [35, { name: 'TQ2_0', blockSize: 256, typeSize: 66 }],
  [39, { name: 'MXFP4', blockSize: 32, typeSize: 17 }],
  [40, { name: 'NVFP4', blockSize: 64, typeSize: 36 }],
  [41, { name: 'Q1_0', blockSize: 128, typeSize: 18 }],
  [42, { name: 'Q2_0', blockSize: 64, typeSize: 18 }],
])

/** Bytes of one tensor's data, or undefined when the type is unknown or the row is not whole blocks. */
export function tensorByteSize(ggmlType: number, dims: readonly (number | bigint)[]): bigint | undefined {
  const layout = GGML_TYPE_LAYOUT.get(ggmlType)
  if (!layout || dims.length === 0) return undefined
  const first = BigInt(dims[0] ?? 0)
  if (first % BigInt(layout.blockSize) !== 0n) return undefined
  let elements = 1n
  for (const d of dims) elements *= BigInt(d)
  return (elements / BigInt(layout.blockSize)) * BigInt(layout.typeSize)
}

export function alignUp(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment
}

/** A metadata value with the exact GGUF type llama.cpp expects (it rejects e.g. an INT32 where it wants UINT32). */
export type GgufKv =
  | { type: 'u32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'string'; value: string }
  | { type: 'string[]'; value: readonly string[] }
  | { type: 'i32[]'; value: ArrayLike<number> }

export const kv = {
  u32: (value: number): GgufKv => ({ type: 'u32', value }),
  f32: (value: number): GgufKv => ({ type: 'f32', value }),
  bool: (value: boolean): GgufKv => ({ type: 'bool', value }),
  string: (value: string): GgufKv => ({ type: 'string', value }),
  strings: (value: readonly string[]): GgufKv => ({ type: 'string[]', value }),
  i32s: (value: ArrayLike<number>): GgufKv => ({ type: 'i32[]', value }),
}

export type GgufTensorHeader = {
  name: string
  /** ne[0] first: the innermost (row) dimension. */
  dims: readonly number[]
  ggmlType: number
  /** Offset inside the data section; a multiple of the alignment. */
  offset: number
}

/**
 * Growable little-endian byte sink. The 1B vocabulary makes a header of a few MB, which is fine to
 * build in memory; only tensor data has to be streamed.
 */
class ByteSink {
  private buf = Buffer.allocUnsafe(64 * 1024)
  length = 0

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return
    let size = this.buf.length * 2
    while (size < this.length + n) size *= 2
    const next = Buffer.allocUnsafe(size)
    this.buf.copy(next, 0, 0, this.length)
    this.buf = next
  }

  u32(v: number): void {
    this.reserve(4)
    this.buf.writeUInt32LE(v, this.length)
    this.length += 4
  }

  i32(v: number): void {
    this.reserve(4)
    this.buf.writeInt32LE(v, this.length)
    this.length += 4
  }

  u64(v: number): void {
    this.reserve(8)
    this.buf.writeBigUInt64LE(BigInt(v), this.length)
    this.length += 8
  }

  f32(v: number): void {
    this.reserve(4)
    this.buf.writeFloatLE(v, this.length)
    this.length += 4
  }

  u8(v: number): void {
    this.reserve(1)
    this.buf[this.length++] = v
  }

  string(s: string): void {
    const n = Buffer.byteLength(s, 'utf8')
    this.u64(n)
    this.reserve(n)
    this.buf.write(s, this.length, 'utf8')
    this.length += n
  }

  zeros(n: number): void {
    this.reserve(n)
    this.buf.fill(0, this.length, this.length + n)
    this.length += n
  }

  take(): Buffer {
    return this.buf.subarray(0, this.length)
  }
}

function writeValue(sink: ByteSink, value: GgufKv): void {
  switch (value.type) {
    case 'u32':
      sink.u32(GgufValueType.UINT32)
      sink.u32(value.value)
      return
    case 'f32':
      sink.u32(GgufValueType.FLOAT32)
      sink.f32(value.value)
      return
    case 'bool':
      sink.u32(GgufValueType.BOOL)
      sink.u8(value.value ? 1 : 0)
      return
    case 'string':
      sink.u32(GgufValueType.STRING)
      sink.string(value.value)
      return
    case 'string[]':
      sink.u32(GgufValueType.ARRAY)
      sink.u32(GgufValueType.STRING)
      sink.u64(value.value.length)
      for (const s of value.value) sink.string(s)
      return
    case 'i32[]':
      sink.u32(GgufValueType.ARRAY)
      sink.u32(GgufValueType.INT32)
      sink.u64(value.value.length)
      for (let i = 0; i < value.value.length; i++) sink.i32(value.value[i] ?? 0)
      return
  }
}

/**
 * Encodes everything before the tensor data: header, metadata, tensor infos and the padding that
 * puts the data section on the alignment boundary.
 */
export function encodeGgufHeader(
  metadata: ReadonlyMap<string, GgufKv>,
  tensors: readonly GgufTensorHeader[],
  alignment: number,
): Buffer {
  const sink = new ByteSink()
  sink.u32(GGUF_MAGIC)
  sink.u32(GGUF_VERSION)
  sink.u64(tensors.length)
  sink.u64(metadata.size)
  for (const [key, value] of metadata) {
    sink.string(key)
    writeValue(sink, value)
  }
  for (const t of tensors) {
    sink.string(t.name)
    sink.u32(t.dims.length)
    for (const d of t.dims) sink.u64(d)
    sink.u32(t.ggmlType)
    sink.u64(t.offset)
  }
  sink.zeros(alignUp(sink.length, alignment) - sink.length)
  return sink.take()
}
