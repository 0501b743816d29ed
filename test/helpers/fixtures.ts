// Shared fixtures for tests: the tiny synthetic model (generated once per machine into the temp
// dir; the generator is deterministic) and temp data dirs that are removed after the run.
import { existsSync, unlinkSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { synthesizeGguf } from '../../src/models/synth.ts'

let tiny: Promise<string> | undefined

export function tinyModelPath(): Promise<string> {
  tiny ??= (async () => {
    const path = join(tmpdir(), 'cluster-test-models', `tiny-${process.pid}.gguf`)
    if (!existsSync(path)) await synthesizeGguf({ preset: 'tiny', out: path, seed: 7 })
    process.once('exit', () => {
      try {
        unlinkSync(path)
      } catch {
        // already gone
      }
    })
    return path
  })()
  return tiny
}

export async function tempDir(prefix: string): Promise<{ path: string; remove: () => Promise<void> }> {
  const path = await mkdtemp(join(tmpdir(), `cluster-${prefix}-`))
  return { path, remove: () => rm(path, { recursive: true, force: true }) }
}

/** Polls `check` until it returns true or `timeoutMs` passes. */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 25))
  }
}
