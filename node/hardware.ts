// What a node has to offer: CPU, RAM and GPUs with their VRAM, for its capabilities record.
import { availableParallelism, cpus, totalmem } from 'node:os'
import type { Hardware } from '../protocols/index.ts'

export async function detectHardware(gpuInfo?: () => Promise<Hardware['gpus']>): Promise<Hardware> {
  const cpu = cpus()[0]
  let gpus: Hardware['gpus'] = []
  try {
    gpus = (await gpuInfo?.()) ?? []
  } catch {
    gpus = []
  }
  return {
    cpu: { model: cpu?.model ?? 'unknown', cores: availableParallelism() },
    ramBytes: totalmem(),
    gpus,
  }
}
