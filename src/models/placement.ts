// Where a model fits: the memory a node offers for weights and what its models already take. The
// gateway uses it to pick a node for a deploy; the node uses the same rule to accept or refuse.
import type { Capabilities, Hardware, ServedModel } from '../../protocols/index.ts'

/** Share of RAM a CPU-only node offers for weights (the rest is the OS, contexts and KV caches). */
const RAM_SHARE_NUM = 3n
const RAM_SHARE_DEN = 4n

/** Memory for weights: all VRAM when the node has GPUs with memory, else three quarters of its RAM. */
export function memoryForModels(hardware: Hardware): bigint {
  const vram = hardware.gpus.reduce((sum, g) => sum + BigInt(g.vramBytes), 0n)
  if (vram > 0n) return vram
  return (BigInt(hardware.ramBytes) * RAM_SHARE_NUM) / RAM_SHARE_DEN
}

/** Bytes the models a node holds (or is fetching and loading) take; failed ones take none. */
export function memoryInUse(models: readonly Pick<ServedModel, 'sizeBytes' | 'state'>[]): bigint {
  return models.reduce((sum, m) => (m.state === 'failed' ? sum : sum + BigInt(m.sizeBytes ?? 0)), 0n)
}

/** Free memory for weights on a node, from its capabilities record. */
export function freeMemory(caps: Pick<Capabilities, 'hardware' | 'models' | 'memoryForModels'>): bigint {
  const budget = caps.memoryForModels != null ? BigInt(caps.memoryForModels) : memoryForModels(caps.hardware)
  const free = budget - memoryInUse(caps.models)
  return free > 0n ? free : 0n
}
