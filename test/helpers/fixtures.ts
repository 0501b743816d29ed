// Shared fixtures for tests: the synthetic models (generated once per test process into the temp
// dir; the generator is deterministic) and temp data dirs that are removed after the run.
import { existsSync, unlinkSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { type SynthPresetName, synthesizeGguf } from '../../src/models/synth.ts'

const generated = new Map<string, Promise<string>>()

/** A synthetic model of a preset, generated once per test process (removed at exit). */
function presetModel(preset: SynthPresetName, seed: number): Promise<string> {
  let path = generated.get(preset)
  if (path == null) {
    path = (async () => {
      const out = join(tmpdir(), 'cluster-test-models', `${preset}-${process.pid}.gguf`)
      if (!existsSync(out)) await synthesizeGguf({ preset, out, seed })
      process.once('exit', () => {
        try {
          unlinkSync(out)
        } catch {
          // already gone
        }
      })
      return out
    })()
    generated.set(preset, path)
  }
  return path
}

/** The tiny model (~0.7 MB, one IPFS block). */
export const tinyModelPath = (): Promise<string> => presetModel('tiny', 7)

/** The small model (~55 MB, many IPFS blocks): for fetch and deploy tests. */
export const smallModelPath = (): Promise<string> => presetModel('small', 11)

/** The tiny qwen3 reranker (~0.7 MB): chat and rerank, no embeddings. */
export const rerankModelPath = (): Promise<string> => presetModel('rerank-tiny', 13)

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

/** Registers a user on a running gateway and credits it; returns its API key. */
export async function fundedUser(
  gw: {
    url: string
    accounts: {
      ledger: {
        findAccountByEmail(e: string): Promise<{ id: string } | undefined>
        credit(id: string, amount: bigint, meta: { type: 'credit' }): Promise<unknown>
      }
    }
  },
  email: string,
  dollars = 10n,
): Promise<string> {
  const res = await fetch(`${gw.url}/api/auth/register`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email, password: 'correct horse battery' }),
  })
  if (res.status !== 201) throw new Error(`register failed: ${res.status} ${await res.text()}`)
  const { apiKey } = (await res.json()) as { apiKey: string }
  const account = await gw.accounts.ledger.findAccountByEmail(email)
  if (account == null) throw new Error('registered account not found')
  if (dollars > 0n) await gw.accounts.ledger.credit(account.id, dollars * 1_000_000n, { type: 'credit' })
  return apiKey
}

/** mulberry32: a small seeded PRNG, so "random" test cases are the same on every run. */
export function rng(seed: number): () => number {
  let s = seed | 0
  return () => {
    s = (s + 0x6d2b79f5) | 0
    let t = Math.imul(s ^ (s >>> 15), 1 | s)
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** A real node serving the tiny test model to a gateway, tuned for tests (1 thread, fast heartbeats). */
export async function startTinyNode(options: {
  dataDir: string
  bootstrap: string[]
  model: string
  payoutAddress?: string
}): Promise<import('../../node/node.ts').RunningNode> {
  const { startNode } = await import('../../node/node.ts')
  return startNode({
    dataDir: options.dataDir,
    listen: ['/ip4/127.0.0.1/tcp/0'],
    bootstrap: options.bootstrap,
    models: [{ path: await tinyModelPath(), id: options.model }],
    threads: 1,
    slots: 2,
    gpu: false,
    heartbeatIntervalMs: 200,
    ...(options.payoutAddress ? { payoutAddress: options.payoutAddress } : {}),
  })
}

/** The ledger's account of `email` on a running gateway (balance, held, totals). */
export async function accountOf(
  gw: { accounts: { ledger: Pick<import('../../src/ledger/ledger.ts').Ledger, 'findAccountByEmail' | 'getAccount'> } },
  email: string,
): Promise<import('../../src/ledger/ledger.ts').Account> {
  const found = await gw.accounts.ledger.findAccountByEmail(email)
  const account = found != null ? await gw.accounts.ledger.getAccount(found.id) : undefined
  if (account == null) throw new Error(`no account for ${email}`)
  return account
}
